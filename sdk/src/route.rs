//! The route decision: properties a filter sets during the request-header phase and the proxy
//! reads once that phase has run through the whole chain (a later filter overrides an earlier one).
//! The names are fixed; they are Weir's contract with filters.
//!
//! | property | value | effect |
//! |---|---|---|
//! | `weir.route.cluster` | UTF-8 cluster name | send the request to this cluster instead of the listener's default |
//! | `weir.route.timeout_ms` | decimal ASCII milliseconds | overrides the cluster's response timeout for this request |
//! | `weir.route.path` | UTF-8 path, query included | replaces the upstream request's `:path` |
//! | `weir.route.retries` | decimal ASCII count | retries after the first try for this request (0: none), under the cluster's `retries` policy, or its defaults when the cluster has none; still bounded by the cluster's retry budget and `max_retries` breaker |
//! | `weir.route.per_try_timeout_ms` | decimal ASCII milliseconds | bounds each attempt (connect included) instead of the cluster's `timeouts.per_try`; a timed-out attempt is retried under the `reset` condition |
//!
//! Each setter is `proxy_set_property(["weir", "route", <name>], value)`; a filter written without
//! this crate can do the same call itself. Setting a property again replaces it.

use std::time::Duration;

use proxy_wasm::types::Status;

/// Dotted name of the cluster decision.
pub const CLUSTER: &str = "weir.route.cluster";
/// Dotted name of the response-timeout decision.
pub const TIMEOUT_MS: &str = "weir.route.timeout_ms";
/// Dotted name of the upstream `:path` rewrite.
pub const PATH: &str = "weir.route.path";
/// Dotted name of the retry count.
pub const RETRIES: &str = "weir.route.retries";
/// Dotted name of the per-try timeout.
pub const PER_TRY_TIMEOUT_MS: &str = "weir.route.per_try_timeout_ms";

/// Routes the request to `cluster`.
pub fn set_cluster(cluster: &str) -> Result<(), Status> {
    set("cluster", cluster.as_bytes())
}

/// Overrides the response timeout (sent as whole milliseconds, rounded up so a sub-millisecond
/// timeout never becomes 0).
pub fn set_timeout(timeout: Duration) -> Result<(), Status> {
    set("timeout_ms", timeout_ms(timeout).to_string().as_bytes())
}

/// Replaces the upstream request's `:path` (query included), e.g. `/v2/items?x=1`.
pub fn set_path(path: &str) -> Result<(), Status> {
    set("path", path.as_bytes())
}

/// Sets the number of retries after the first attempt (0 turns retries off for this request).
pub fn set_retries(retries: u32) -> Result<(), Status> {
    set("retries", retries.to_string().as_bytes())
}

/// Bounds each attempt (sent as whole milliseconds, rounded up).
pub fn set_per_try_timeout(timeout: Duration) -> Result<(), Status> {
    set(
        "per_try_timeout_ms",
        timeout_ms(timeout).to_string().as_bytes(),
    )
}

/// The cluster decided so far by this or an earlier filter of the chain, if any.
pub fn cluster() -> Option<String> {
    crate::properties::string(&["weir", "route", "cluster"])
}

fn set(name: &str, value: &[u8]) -> Result<(), Status> {
    crate::properties::set(&["weir", "route", name], value)
}

fn timeout_ms(timeout: Duration) -> u128 {
    timeout.as_nanos().div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(timeout_ms(Duration::from_millis(250)), 250);
        assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1500)), 2);
        assert_eq!(timeout_ms(Duration::ZERO), 0);
    }
}
