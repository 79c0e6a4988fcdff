//! The HTTP layer of a downstream connection: Weir's HTTP/1.1 server (`h1`), the per-request
//! proxy service, header rules and the error-to-response mapping. (The body type and the
//! HTTP/1.1 codec live below, in [`crate::proto`].)

pub mod h1;
pub mod headers;
pub mod respond;
pub mod service;
