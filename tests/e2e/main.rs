//! End-to-end tests: weir as a real process between real clients and mock upstreams on
//! 127.0.0.1. One test binary, a module per area. Build the binary first: `cargo build -p weir`.

mod admin;
mod auth;
mod balance;
mod certs;
mod check;
mod churn;
mod discovery;
mod drain;
mod envoy_parity;
mod errors;
mod fault;
mod filters;
mod grpc;
mod limits;
mod listeners;
mod live;
mod observability;
mod pool;
mod proxy_h1;
mod proxy_h2;
mod quickstart;
mod ratelimit;
mod resilience;
mod router;
mod support;
mod telemetry;
mod tls;
mod websocket;
mod xds;

use weir_tests::RawResponse;
use weir_tests::client::Collected;

/// Asserts weir's error shape: `status`, `x-weir-error: reason`, body starting `weir: reason`.
#[track_caller]
fn assert_weir_error(status: u16, header: Option<&str>, body: &str, want: u16, reason: &str) {
    assert_eq!(
        status, want,
        "status (x-weir-error {header:?}, body {body:?})"
    );
    assert_eq!(header, Some(reason), "x-weir-error header (body {body:?})");
    assert!(
        body.starts_with(&format!("weir: {reason}")),
        "body should start with `weir: {reason}`, got {body:?}"
    );
}

/// [`assert_weir_error`] for a hyper response.
#[track_caller]
fn assert_error(resp: &Collected, want: u16, reason: &str) {
    assert_weir_error(
        resp.status.as_u16(),
        resp.header("x-weir-error"),
        &resp.text(),
        want,
        reason,
    );
}

/// [`assert_weir_error`] for a raw response.
#[track_caller]
fn assert_raw_error(resp: &RawResponse, want: u16, reason: &str) {
    assert_weir_error(
        resp.status,
        resp.header("x-weir-error"),
        &resp.text(),
        want,
        reason,
    );
}

/// Whether `s` has the UUID v4 textual form (8-4-4-4-12 hex, version 4, RFC 4122 variant).
fn is_uuid_v4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
        && parts[2].starts_with('4')
        && parts[3].starts_with(['8', '9', 'a', 'b', 'A', 'B'])
}

/// A body of `n` bytes that is not a short repetition, so misplaced chunks are detected.
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}
