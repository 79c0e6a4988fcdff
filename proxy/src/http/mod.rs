//! The HTTP layer of a downstream connection: the per-request proxy service, the body type, header
//! rules and the error-to-response mapping.

pub mod body;
pub mod framing;
pub mod headers;
pub mod respond;
pub mod service;
