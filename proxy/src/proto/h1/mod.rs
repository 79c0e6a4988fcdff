//! Weir's one HTTP/1.1 codec, with a server role (`http::h1` reads requests and writes
//! responses with it) and a client role (`upstream::h1` writes requests and reads responses).
//!
//! - [`head`]: message heads and their framing, for both roles, with one strictness and the
//!   limits of each side.
//! - [`chunked`]: the chunked transfer coding, decoded and encoded once.
//! - [`fields`]: the field classes (framing, hop-by-hop, set by the proxy) both roles read.
//!
//! The rules here are the ones that stop request smuggling and response splitting, so there is
//! exactly one copy of each; `both_roles_refuse_the_same_hostile_framing` and the chunked tests
//! feed both roles the same hostile input.

pub mod body;
pub mod chunked;
pub mod fields;
pub mod head;
