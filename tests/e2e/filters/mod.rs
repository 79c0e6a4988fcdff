//! Filter chains in the data path (issue 4): proxy-wasm filters run by the real `weir` process
//! between real clients and echo upstreams, a module per area.
//!
//! The filters are the conformance guest (`tests/programs/conformance`, behaviour chosen by its
//! JSON configuration; the `trace` scenario was written for these tests: it stamps its tag on the
//! request and response `x-order` headers, copies `x-route-*` request headers to the route
//! decision, counts requests per VM and in shared data, and records each stream's final status
//! from `on_log` in shared data, read back with `x-read-log: <tag>`) and the built-in stock
//! filters (`builtin:add-header`, `builtin:local-reply`).
//!
//! - [`phases`]: which callbacks run, in what order, when (`on_log` at the end of the stream).
//! - [`headers`] / [`bodies`] / [`trailers`]: rewrites, and the framing the core keeps around them.
//! - [`replies`]: local replies and `proxy_close_stream`.
//! - [`callouts`]: pauses on HTTP and gRPC callouts.
//! - [`failure`]: traps, failure policies, the callback deadline, rebuilt VMs.
//! - [`properties`]: properties read and the route decision written.
//! - [`shared`]: shared data, shared queues and filter-defined metrics across workers.
//! - [`startup`]: filters that cannot start stop `weir run`.

mod bodies;
mod callouts;
mod common;
mod failure;
mod headers;
mod phases;
mod properties;
mod replies;
mod shared;
mod startup;
mod trailers;
