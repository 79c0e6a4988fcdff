//! Per-filter counters the proxy exports (atomics, shared by every worker's VM of a filter).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one filter. All fields are monotonic except `memory_bytes` (a gauge: the largest
/// linear memory of any of its VMs, last written wins).
#[derive(Debug, Default)]
pub struct FilterStats {
    /// Guest callbacks invoked.
    pub callbacks: AtomicU64,
    /// Total time spent in guest callbacks, in nanoseconds.
    /// (Sampled: one callback in 16 is timed and counted 16 times.)
    pub callback_nanos: AtomicU64,
    /// VM failures by trap (any reason, including deadline and memory).
    pub traps: AtomicU64,
    /// Failures by deadline.
    pub deadline_hits: AtomicU64,
    /// Failures by memory cap.
    pub memory_limit_hits: AtomicU64,
    /// Linear memory size of the most recently measured VM, in bytes.
    pub memory_bytes: AtomicU64,
    /// VMs rebuilt by the `Reload` policy.
    pub vm_rebuilds: AtomicU64,
    /// Callback time per phase ([`Phase`]), from the sampled (timed) callbacks only: each timed
    /// callback counts for the calls it stands for, so counts and sums estimate every call.
    pub phases: [PhaseHistogram; Phase::ALL.len()],
}

/// Upper bounds (nanoseconds) of the callback-time buckets, then `+Inf`: a healthy callback
/// takes microseconds; the deadline (10 ms by default) bounds the top.
pub const CALLBACK_BUCKETS_NS: [u64; 17] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
];

/// One phase's callback-time histogram: a count per bucket of [`CALLBACK_BUCKETS_NS`] plus
/// `+Inf`, and the sum in nanoseconds.
#[derive(Debug, Default)]
pub struct PhaseHistogram {
    /// Counts (not cumulative), the last one for `+Inf`.
    pub buckets: [AtomicU64; CALLBACK_BUCKETS_NS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    pub sum_nanos: AtomicU64,
}

/// The phase a guest callback belongs to (a label of the callback-time histograms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `proxy_on_request_headers`.
    RequestHeaders,
    /// `proxy_on_request_body`.
    RequestBody,
    /// `proxy_on_request_trailers`.
    RequestTrailers,
    /// `proxy_on_response_headers`.
    ResponseHeaders,
    /// `proxy_on_response_body`.
    ResponseBody,
    /// `proxy_on_response_trailers`.
    ResponseTrailers,
    /// `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`: the end of a stream.
    Log,
    /// `proxy_on_context_create`.
    ContextCreate,
    /// `proxy_on_http_call_response` and the gRPC callout callbacks.
    Callout,
    /// `proxy_on_tick`.
    Tick,
    /// Everything else (start, configure, queues, TCP, foreign functions).
    Other,
}

impl Phase {
    /// Every phase, in label order.
    pub const ALL: [Phase; 11] = [
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::RequestTrailers,
        Phase::ResponseHeaders,
        Phase::ResponseBody,
        Phase::ResponseTrailers,
        Phase::Log,
        Phase::ContextCreate,
        Phase::Callout,
        Phase::Tick,
        Phase::Other,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::RequestTrailers => "request_trailers",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::ResponseTrailers => "response_trailers",
            Phase::Log => "log",
            Phase::ContextCreate => "context_create",
            Phase::Callout => "callout",
            Phase::Tick => "tick",
            Phase::Other => "other",
        }
    }

    /// The phase of a callback, by its export name.
    pub fn of(callback: &str) -> Phase {
        match callback {
            "proxy_on_request_headers" => Phase::RequestHeaders,
            "proxy_on_request_body" => Phase::RequestBody,
            "proxy_on_request_trailers" => Phase::RequestTrailers,
            "proxy_on_response_headers" => Phase::ResponseHeaders,
            "proxy_on_response_body" => Phase::ResponseBody,
            "proxy_on_response_trailers" => Phase::ResponseTrailers,
            "proxy_on_log" | "proxy_on_done" | "proxy_on_delete" => Phase::Log,
            "proxy_on_context_create" => Phase::ContextCreate,
            "proxy_on_http_call_response"
            | "proxy_on_grpc_receive_initial_metadata"
            | "proxy_on_grpc_receive_trailing_metadata"
            | "proxy_on_grpc_receive"
            | "proxy_on_grpc_close" => Phase::Callout,
            "proxy_on_tick" => Phase::Tick,
            _ => Phase::Other,
        }
    }
}

/// A plain copy of [`FilterStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// See [`FilterStats::callbacks`].
    pub callbacks: u64,
    /// See [`FilterStats::callback_nanos`].
    pub callback_nanos: u64,
    /// See [`FilterStats::traps`].
    pub traps: u64,
    /// See [`FilterStats::deadline_hits`].
    pub deadline_hits: u64,
    /// See [`FilterStats::memory_limit_hits`].
    pub memory_limit_hits: u64,
    /// See [`FilterStats::memory_bytes`].
    pub memory_bytes: u64,
    /// See [`FilterStats::vm_rebuilds`].
    pub vm_rebuilds: u64,
}

impl FilterStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            callbacks: self.callbacks.load(Relaxed),
            callback_nanos: self.callback_nanos.load(Relaxed),
            traps: self.traps.load(Relaxed),
            deadline_hits: self.deadline_hits.load(Relaxed),
            memory_limit_hits: self.memory_limit_hits.load(Relaxed),
            memory_bytes: self.memory_bytes.load(Relaxed),
            vm_rebuilds: self.vm_rebuilds.load(Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Records a timed callback of `callback` that took `nanos` and stands for `weight` calls.
    /// Only sampled callbacks come here: no clock is read for this.
    pub(crate) fn observe_callback(&self, callback: &str, nanos: u64, weight: u64) {
        let h = &self.phases[Phase::of(callback) as usize];
        let bucket = CALLBACK_BUCKETS_NS.partition_point(|&b| b < nanos);
        h.buckets[bucket].fetch_add(weight, Relaxed);
        h.sum_nanos.fetch_add(nanos.saturating_mul(weight), Relaxed);
    }
}
