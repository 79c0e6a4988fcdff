//! Shared support for the end-to-end tests: spawning weir, mock upstreams, raw clients.
//!
//! Everything binds `127.0.0.1:0`. Nothing here sleeps to let things settle: waits are on events
//! (a readiness line, a recorded request, a process exit) and bounded by [`within`].
//!
//! - [`weir`]: locating the binary, [`Weir`] (a running `weir run`), `weir check`, manifest builder.
//! - [`upstream`]: mock upstreams: one echo server (h1/h2c; gRPC-style replies with trailers;
//!   upgrades echoing bytes; held replies), misbehaving raw TCP servers, a controllable server
//!   (resets, statuses, delays, stalls, a health endpoint to flip), hanging connects, a closed
//!   port.
//! - [`chain`]: manifests with several listeners and clusters, filter chains and filters.
//! - [`client`]: hyper h1 / h2c clients and a raw TCP client for malformed requests.
//! - [`otlp`]: an in-test OpenTelemetry collector (OTLP/HTTP trace exports, decoded spans).
//! - [`prom`]: a strict Prometheus text parser for `/metrics`.

pub mod chain;
pub mod client;
pub mod otlp;
pub mod prom;
pub mod tls;
pub mod upstream;
pub mod weir;

use std::future::Future;
use std::time::Duration;

pub use chain::{ChainManifest, FilterDef, add_to_listener};
pub use client::{H1Client, H2Client, RawClient, RawResponse, body_empty, body_full, collect};
pub use upstream::{
    BlackholeListener, ControlledServer, EchoServer, Fault, FaultyServer, Recorded, closed_port,
};
pub use weir::{Manifest, Weir, check, weir_bin};

/// Upper bound for any single awaited event in a test. Generous: CI machines are slow and shared.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `fut`, panicking with `what` if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(TIMEOUT, what, fut).await
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for: {what}"),
    }
}
