//! The bottom layer of the data path: what every stage above shares and none of them owns.
//!
//! - [`body`]: the one body type and its wrappers; the stages above hook into it through small
//!   traits (a pooled connection's return, an endpoint's in-flight count, a chain's body phases).
//! - [`error`]: the one error type of a request, classified once (whose fault, status, reason,
//!   response flag, what a retry makes of it).
//! - [`h1`]: the one HTTP/1.1 codec, with a server role (requests in, responses out) and a client
//!   role (requests out, responses in) that share their parsing rules, field classes, chunked
//!   framing and limits — the rules that stop request smuggling and response splitting.
//!
//! This module imports nothing from the stages above it (`http`, `filter`, `upstream`, ...);
//! the layering test (`tests/layering.rs`) keeps it that way.

pub mod body;
pub mod error;
pub mod h1;

/// The error type of bodies inside Weir (hyper's, or Weir's own HTTP/1.1 codec's). Here rather
/// than in `body`, so that the codec's message bodies and the body type need not import each
/// other.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
