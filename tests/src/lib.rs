//! Shared support for the end-to-end tests: spawning weir, mock upstreams, raw clients.
//!
//! Everything binds `127.0.0.1:0`. Nothing here sleeps to let things settle: waits are on events
//! (a readiness line, a recorded request, a process exit) and bounded by [`within`]. What only
//! shows from outside the process (a log line, a metric, a refused connect) is polled with
//! [`eventually`], bounded the same way.
//!
//! - [`weir`]: locating the binary, [`Weir`] (a running `weir run`), `weir check`, manifest builder.
//! - [`admin`]: the admin endpoint: [`Admin`] (requests with a bearer token, reload, rollback,
//!   endpoint sets, JSON reads, `/listeners`), the `generation` of a change, token manifests.
//! - [`upstream`]: mock upstreams: one echo server (h1/h2c; gRPC-style replies with trailers;
//!   upgrades echoing bytes; held replies), misbehaving raw TCP servers, a controllable server
//!   (resets, statuses, delays, stalls, a health endpoint to flip), hanging connects, a closed
//!   port.
//! - [`chain`]: manifests with several listeners and clusters, filter chains and filters.
//! - [`client`]: hyper h1 / h2c clients and a raw TCP client for malformed requests.
//! - [`dns`]: an authoritative DNS server for zone `test.` whose records a test changes (DNS
//!   discovery), and which can be made to stop answering.
//! - [`otlp`]: an in-test OpenTelemetry collector (OTLP/HTTP trace exports, decoded spans).
//! - [`prom`]: a strict Prometheus text parser for `/metrics`.
//! - [`load`]: continuous load (keep-alive and new-connection clients) for tests that change weir
//!   while it serves and must see no request fail.
//!
//! And [`rss_kib`]: a process's resident memory, for the tests that check memory comes back.

pub mod admin;
pub mod chain;
pub mod client;
pub mod dns;
pub mod envoy;
pub mod load;
pub mod otlp;
pub mod prom;
pub mod resources;
pub mod tls;
pub mod upstream;
pub mod weir;
pub mod xds;

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

pub use admin::Admin;
pub use chain::{ChainManifest, FilterDef, add_to_listener};
pub use client::{H1Client, H2Client, RawClient, RawResponse, body_empty, body_full, collect};
pub use load::Load;
pub use upstream::{
    BlackholeListener, ControlledServer, EchoServer, Fault, FaultyServer, Recorded, closed_port,
};
pub use weir::{Manifest, Weir, check, weir_bin};

/// Upper bound for any single awaited event in a test. Generous: CI machines are slow and shared.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`eventually`] waits between two looks: short next to [`TIMEOUT`], long enough not to
/// flood a log or an admin endpoint with reads.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// `VmRSS` of the process `pid` (from `/proc/PID/status`), KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"))
}

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

/// Looks with `probe` every [`POLL_INTERVAL`] until it returns `Ok(v)`, and returns `v`; panics
/// after [`TIMEOUT`] naming `what` and the last `Err` the probe returned (what it saw instead).
///
/// For conditions only observable from outside (a log line, a metric, a file): an event, when
/// there is one, is waited on with [`within`] instead. The probe may assert (a value that must
/// never be seen fails at once) and may be synchronous (`async || …` awaiting nothing). A probe
/// that hangs is cut off at the same bound.
pub async fn eventually<T, E: Debug>(what: &str, probe: impl AsyncFnMut() -> Result<T, E>) -> T {
    eventually_for(TIMEOUT, what, probe).await
}

/// [`eventually`] bounded by `limit` instead of [`TIMEOUT`].
pub async fn eventually_for<T, E: Debug>(
    limit: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let mut last = None;
    let mut looks = 0u32;
    let polled = tokio::time::timeout(limit, async {
        loop {
            match probe().await {
                Ok(v) => return v,
                Err(e) => last = Some(e),
            }
            looks += 1;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    })
    .await;
    match (polled, last) {
        (Ok(v), _) => v,
        (Err(_), Some(e)) => {
            panic!(
                "timed out after {limit:?} ({looks} looks) waiting for: {what}; last seen: {e:?}"
            )
        }
        (Err(_), None) => {
            panic!("timed out after {limit:?} waiting for: {what}; the first look never finished")
        }
    }
}
