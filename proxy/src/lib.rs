//! Weir's data plane.
//!
//! ```text
//! listener ─▶ conn (limits, idle, drain) ─▶ tls (rustls; mTLS peer identity)
//!   ─▶ http (h1: Weir's own server; h2: hyper, by ALPN or the prior-knowledge preface) ─▶ service
//!   ─▶ filter chain: request phases (Wasm, in order) ─▶ route decision (weir.route.* or the
//!      listener's default cluster)
//!   ─▶ upstream (breakers ─▶ priority/health/ejection ─▶ balance ─▶ pooled connection h1/h2,
//!      plain/TLS/mTLS; timeouts, retries under a budget, outlier accounting) ─▶ filter chain:
//!      response phases (reverse)
//!   ─▶ downstream ─▶ on_log ─▶ telemetry (metrics, spans, access-log line)
//! ```
//! Modules follow that line: [`listener`], [`conn`], [`tls`], [`http`] (the HTTP/1.1 server's
//! connection loop and writer, the service, headers, the one error-to-response mapping in
//! `respond`), [`filter`] (chains of proxy-wasm filters), [`upstream`] (forward, balance, breaker,
//! retry, outlier, health, shared state, pool, connect, client, h1). Under all of them,
//! [`proto`] holds what they share and none of them owns: the error type, the body type and the
//! one HTTP/1.1 codec (both roles). Layers only point down (see `ARCHITECTURE.md` and
//! `tests/layering.rs`).
//! [`worker`] runs one copy of the data path per core; [`app`] wires them and owns the lifecycle;
//! [`config`] turns a manifest into validated types; [`admin`] serves the admin endpoint; [`cli`]
//! holds the `weir` subcommands beside the data plane (`certs`, `new-filter`, `admin`);
//! [`telemetry`] is what every request leaves behind (metrics, spans, access-log lines).

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod conn;
pub mod control;
pub mod demo;
pub mod discovery;
pub mod filter;
pub mod http;
pub mod listener;
pub mod memory;
pub mod proto;
pub mod rt;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
pub mod timer;
pub mod tls;
pub mod upstream;
pub mod watch;
pub mod worker;
pub mod xds;
