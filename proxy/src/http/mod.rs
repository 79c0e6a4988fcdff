//! The HTTP layer of a downstream connection: Weir's HTTP/1.1 server (`h1`), the per-request
//! proxy service, the body type, header rules and the error-to-response mapping.

pub mod body;
pub mod h1;
pub mod headers;
pub mod respond;
pub mod service;
