//! The core's metrics: per-worker shards of counters and fixed-bucket histograms, summed into
//! Prometheus text when `/metrics` is scraped.
//!
//! Every label set (listener; cluster and endpoint; status class; response flag) is resolved to a
//! slot index when it appears (at start-up, or on the control thread when a reload or an endpoint
//! update brings a new cluster or endpoint), so recording is an index computation and a counter bump:
//! no lock, no hash lookup, no allocation, no formatting on the request path. Each worker owns one
//! [`Shard`] and is its only writer, so a bump is a `Relaxed` load and store of the worker's own
//! cache lines (not even a locked read-modify-write); the admin thread only reads and sums.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

/// Upper bounds (nanoseconds) of the request-latency histogram buckets, then `+Inf`. Finer than
/// Envoy's millisecond buckets at the low end: a proxy hop on a fast network is sub-millisecond.
pub const LATENCY_BUCKETS_NS: [u64; 18] = [
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
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// Slots of one histogram: a count per finite bucket, the `+Inf` bucket, the sum (ns).
pub const HIST_SLOTS: usize = LATENCY_BUCKETS_NS.len() + 2;

/// Response classes counted per listener and endpoint: `1xx`…`5xx`, and no response at all.
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The class slot of a status (0 = no response).
pub fn class_of(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

pub use crate::proto::error::flags;

/// Per-listener slots.
pub mod listener {
    /// Downstream connections accepted.
    pub const CX_TOTAL: usize = 0;
    /// Downstream connections open (a gauge: up and down).
    pub const CX_ACTIVE: usize = 1;
    /// Bytes read from / written to downstream connections (counted when a connection ends).
    pub const CX_RX_BYTES: usize = 2;
    pub const CX_TX_BYTES: usize = 3;
    /// Requests in flight (a gauge).
    pub const RQ_ACTIVE: usize = 4;
    /// Requests by response class (`CLASSES`).
    pub const RQ_CLASS: usize = 5;
    /// Request latency: from the request head to the last byte of the response.
    pub const RQ_TIME: usize = RQ_CLASS + super::CLASSES.len();
    /// Requests by response flag (`flags::NAMES` order).
    pub const RQ_FLAG: usize = RQ_TIME + super::HIST_SLOTS;
    pub const SLOTS: usize = RQ_FLAG + super::flags::NAMES.len();
}

/// Per-endpoint slots (an endpoint of a cluster).
pub mod endpoint {
    /// Upstream requests by response class (`none`: the attempt got no response).
    pub const RQ_CLASS: usize = 0;
    /// Upstream request latency: from the attempt to the end of the response.
    pub const RQ_TIME: usize = RQ_CLASS + super::CLASSES.len();
    /// Connections opened (pool misses).
    pub const CX_TOTAL: usize = RQ_TIME + super::HIST_SLOTS;
    /// Connects refused, unreachable or failed in TLS.
    pub const CX_CONNECT_FAIL: usize = CX_TOTAL + 1;
    /// Connects over the cluster's connect timeout.
    pub const CX_CONNECT_TIMEOUT: usize = CX_TOTAL + 2;
    /// No response head within the response timeout.
    pub const RQ_TIMEOUT: usize = CX_TOTAL + 3;
    /// Closed or reset before a complete response, or a response that was not HTTP.
    pub const RQ_RESET: usize = CX_TOTAL + 4;
    /// Attempts that were retries of an earlier one.
    pub const RQ_RETRY: usize = CX_TOTAL + 5;
    /// Times outlier detection ejected the endpoint.
    pub const EJECTIONS: usize = CX_TOTAL + 6;
    pub const SLOTS: usize = CX_TOTAL + 7;
}

/// Per-cluster slots.
pub mod cluster {
    /// Requests a circuit breaker refused (flag UO).
    pub const RQ_OVERFLOW: usize = 0;
    /// Requests that ran out of retries (flag URX).
    pub const RQ_RETRY_LIMIT: usize = 1;
    /// Requests that found no endpoint to pick (flag UH).
    pub const RQ_NO_HEALTHY: usize = 2;
    pub const SLOTS: usize = 3;
}

/// Where each label set's slots start; the same for every worker's shard.
///
/// Listeners, clusters and endpoints come and go with reloads and endpoint updates, so their
/// slots are handed out by [`Layout::listener_slots`], [`Layout::cluster_slots`] and
/// [`Layout::endpoint_slots`] (on the control thread, before the version that uses them is
/// published) and kept per name for the life of the process: one that comes back continues its
/// counters, as Prometheus expects of a counter. Only the live ones are rendered (the caller
/// names them).
#[derive(Debug, Default)]
pub struct Layout {
    listeners: HashMap<String, usize>,
    clusters: HashMap<String, usize>,
    endpoints: HashMap<(String, SocketAddr), usize>,
    len: usize,
}

impl Layout {
    pub fn new() -> Self {
        Self::default()
    }

    /// The first slot of listener `name`'s counters (allocated on first use). A listener's
    /// first slot is also its stable id.
    pub fn listener_slots(&mut self, name: &str) -> usize {
        if let Some(&b) = self.listeners.get(name) {
            return b;
        }
        let b = self.grow(listener::SLOTS);
        self.listeners.insert(name.to_owned(), b);
        b
    }

    /// Slots in use (the shards hold at least this many).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no slot at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first slot of cluster `name`'s counters (allocated on first use).
    pub fn cluster_slots(&mut self, name: &str) -> usize {
        if let Some(&b) = self.clusters.get(name) {
            return b;
        }
        let b = self.grow(cluster::SLOTS);
        self.clusters.insert(name.to_owned(), b);
        b
    }

    /// The first slot of endpoint `addr` of cluster `cluster` (allocated on first use).
    pub fn endpoint_slots(&mut self, cluster: &str, addr: SocketAddr) -> usize {
        if let Some(&b) = self.endpoints.get(&(cluster.to_owned(), addr)) {
            return b;
        }
        let b = self.grow(endpoint::SLOTS);
        self.endpoints.insert((cluster.to_owned(), addr), b);
        b
    }

    fn grow(&mut self, n: usize) -> usize {
        let b = self.len;
        self.len += n;
        b
    }
}

/// A live cluster as `/metrics` renders it: its name, its first slot, and each endpoint's
/// address and first slot.
pub struct LiveCluster<'a> {
    pub name: &'a str,
    pub slots: usize,
    pub endpoints: Vec<(SocketAddr, usize)>,
}

/// 16 counters: one 128-byte block (two cache lines, the prefetch pair), so no two shards ever
/// share a line.
#[repr(align(128))]
struct Block([AtomicU64; 16]);

/// Blocks per chunk: a chunk is 8 KiB, 1,024 slots.
const CHUNK_BLOCKS: usize = 64;
const CHUNK_SLOTS: usize = CHUNK_BLOCKS * 16;
/// Chunks a shard can hold: 4 Mi slots, about 120,000 endpoints. The table of chunk pointers
/// is 64 KiB per worker; chunks are allocated as slots are handed out.
const MAX_CHUNKS: usize = 4096;

/// One worker's counters. Written only by its worker (see the module docs); read by anyone.
///
/// Chunked so that it can grow while workers write to it: a chunk, once set, never moves, and
/// slots are handed out (and their chunks allocated, [`Shard::reserve`]) before any worker can
/// know of them.
pub struct Shard {
    chunks: Box<[OnceLock<Box<[Block; CHUNK_BLOCKS]>>]>,
}

impl Shard {
    /// A shard with room for `slots` slots now (more are reserved as they are handed out).
    pub fn new(slots: usize) -> Self {
        let s = Self {
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
        };
        s.reserve(slots);
        s
    }

    /// Makes sure slots `0..slots` exist. Control thread only, before the slots are published.
    pub fn reserve(&self, slots: usize) {
        for c in &self.chunks[..slots.div_ceil(CHUNK_SLOTS).min(MAX_CHUNKS)] {
            c.get_or_init(|| {
                Box::new(std::array::from_fn(|_| {
                    Block(std::array::from_fn(|_| AtomicU64::new(0)))
                }))
            });
        }
    }

    #[inline]
    fn slot(&self, i: usize) -> Option<&AtomicU64> {
        let chunk = self.chunks.get(i / CHUNK_SLOTS)?.get()?;
        let j = i % CHUNK_SLOTS;
        Some(&chunk[j / 16].0[j % 16])
    }

    /// Adds `n` to slot `i`. Only the owning worker calls this: a plain load and store suffice.
    #[inline]
    pub fn add(&self, i: usize, n: u64) {
        if let Some(s) = self.slot(i) {
            s.store(s.load(Relaxed).wrapping_add(n), Relaxed);
        }
    }

    /// Subtracts `n` from a gauge slot.
    #[inline]
    pub fn sub(&self, i: usize, n: u64) {
        if let Some(s) = self.slot(i) {
            s.store(s.load(Relaxed).wrapping_sub(n), Relaxed);
        }
    }

    /// Records one observation of `nanos` in the histogram at `base`.
    #[inline]
    pub fn observe(&self, base: usize, nanos: u64) {
        let bucket = LATENCY_BUCKETS_NS.partition_point(|&b| b < nanos);
        self.add(base + bucket, 1);
        self.add(base + LATENCY_BUCKETS_NS.len() + 1, nanos);
    }

    pub fn read(&self, i: usize) -> u64 {
        self.slot(i).map_or(0, |s| s.load(Relaxed))
    }
}

/// Sums of every worker's shard at one scrape.
struct Sums<'a>(&'a [Arc<Shard>]);

impl Sums<'_> {
    fn get(&self, i: usize) -> u64 {
        self.0.iter().fold(0u64, |a, s| a.wrapping_add(s.read(i)))
    }

    /// A gauge kept as up/down counts in wrapping arithmetic.
    fn gauge(&self, i: usize) -> i64 {
        self.get(i) as i64
    }
}

/// Escapes a label value (Prometheus text format).
pub fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one histogram's series. `slots(i)` reads its i-th slot (counts per bucket, then
/// `+Inf`, then the sum in nanoseconds); `bounds` are the bucket upper bounds in seconds, as `le`
/// label text.
pub fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[&str],
    slots: impl Fn(usize) -> u64,
) {
    let mut cumulative = 0u64;
    for (i, le) in bounds.iter().enumerate() {
        cumulative += slots(i);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    cumulative += slots(bounds.len());
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(
        out,
        "{name}_sum{{{labels}}} {}",
        seconds(slots(bounds.len() + 1))
    );
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

/// Nanoseconds as exact decimal seconds (no float rounding in the text).
fn seconds(ns: u64) -> String {
    let (s, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if frac == 0 {
        return s.to_string();
    }
    let f = format!("{frac:09}");
    format!("{s}.{}", f.trim_end_matches('0'))
}

/// The latency buckets as `le` values in seconds.
pub const LATENCY_LE: [&str; 18] = [
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25", "0.5", "1", "2.5", "5", "10", "30", "60",
];

/// Writes every core metric, summed over `shards`, as Prometheus text.
pub fn render(
    out: &mut String,
    listeners: &[(&str, usize)],
    clusters: &[LiveCluster<'_>],
    shards: &[Arc<Shard>],
) {
    let s = Sums(shards);
    let listeners: Vec<(usize, String)> = listeners
        .iter()
        .map(|(n, base)| (*base, format!("listener=\"{}\"", label(n))))
        .collect();
    let counter = |out: &mut String, name: &str, help: &str, slot: usize| {
        header(out, name, "counter", help);
        for (base, l) in &listeners {
            let _ = writeln!(out, "{name}{{{l}}} {}", s.get(base + slot));
        }
    };
    let gauge = |out: &mut String, name: &str, help: &str, slot: usize| {
        header(out, name, "gauge", help);
        for (base, l) in &listeners {
            let _ = writeln!(out, "{name}{{{l}}} {}", s.gauge(base + slot));
        }
    };
    counter(
        out,
        "weir_downstream_cx_total",
        "Downstream connections accepted.",
        listener::CX_TOTAL,
    );
    gauge(
        out,
        "weir_downstream_cx_active",
        "Downstream connections open.",
        listener::CX_ACTIVE,
    );
    counter(
        out,
        "weir_downstream_cx_rx_bytes_total",
        "Bytes received on downstream connections that have closed.",
        listener::CX_RX_BYTES,
    );
    counter(
        out,
        "weir_downstream_cx_tx_bytes_total",
        "Bytes sent on downstream connections that have closed.",
        listener::CX_TX_BYTES,
    );
    gauge(
        out,
        "weir_downstream_rq_active",
        "Downstream requests in flight.",
        listener::RQ_ACTIVE,
    );
    header(
        out,
        "weir_downstream_rq_total",
        "counter",
        "Downstream requests by response class (none: the stream ended without a response).",
    );
    for (base, l) in &listeners {
        for (c, class) in CLASSES.iter().enumerate() {
            let v = s.get(base + listener::RQ_CLASS + c);
            let _ = writeln!(out, "weir_downstream_rq_total{{{l},class=\"{class}\"}} {v}");
        }
    }
    header(
        out,
        "weir_downstream_rq_time_seconds",
        "histogram",
        "Downstream request time: request head received to last response byte sent.",
    );
    for (base, l) in &listeners {
        write_histogram(
            out,
            "weir_downstream_rq_time_seconds",
            l,
            &LATENCY_LE,
            |i| s.get(base + listener::RQ_TIME + i),
        );
    }
    header(
        out,
        "weir_downstream_rq_flags_total",
        "counter",
        "Downstream requests by response flag (Envoy's letters; FF: a filter failed).",
    );
    for (base, l) in &listeners {
        for (i, (_, f)) in flags::NAMES.iter().enumerate() {
            let v = s.get(base + listener::RQ_FLAG + i);
            let _ = writeln!(
                out,
                "weir_downstream_rq_flags_total{{{l},flag=\"{f}\"}} {v}"
            );
        }
    }

    let endpoints: Vec<(usize, String)> = clusters
        .iter()
        .flat_map(|c| {
            c.endpoints.iter().map(move |(addr, base)| {
                (
                    *base,
                    format!("cluster=\"{}\",endpoint=\"{addr}\"", label(c.name)),
                )
            })
        })
        .collect();
    header(
        out,
        "weir_upstream_rq_total",
        "counter",
        "Upstream request attempts by response class (none: no response, see the error counters).",
    );
    for (base, l) in &endpoints {
        for (c, class) in CLASSES.iter().enumerate() {
            let v = s.get(base + endpoint::RQ_CLASS + c);
            let _ = writeln!(out, "weir_upstream_rq_total{{{l},class=\"{class}\"}} {v}");
        }
    }
    header(
        out,
        "weir_upstream_rq_time_seconds",
        "histogram",
        "Upstream request time: attempt started to last response byte.",
    );
    for (base, l) in &endpoints {
        write_histogram(out, "weir_upstream_rq_time_seconds", l, &LATENCY_LE, |i| {
            s.get(base + endpoint::RQ_TIME + i)
        });
    }
    let per_endpoint: [(&str, &str, usize); 7] = [
        (
            "weir_upstream_cx_total",
            "Upstream connections opened (pool misses).",
            endpoint::CX_TOTAL,
        ),
        (
            "weir_upstream_cx_connect_fail_total",
            "Upstream connects refused, unreachable or failed in TLS.",
            endpoint::CX_CONNECT_FAIL,
        ),
        (
            "weir_upstream_cx_connect_timeout_total",
            "Upstream connects over the connect timeout.",
            endpoint::CX_CONNECT_TIMEOUT,
        ),
        (
            "weir_upstream_rq_timeout_total",
            "Upstream attempts with no response head within the response timeout.",
            endpoint::RQ_TIMEOUT,
        ),
        (
            "weir_upstream_rq_reset_total",
            "Upstream attempts closed, reset or answered with something not HTTP.",
            endpoint::RQ_RESET,
        ),
        (
            "weir_upstream_rq_retry_total",
            "Upstream attempts that retried an earlier one.",
            endpoint::RQ_RETRY,
        ),
        (
            "weir_upstream_ejections_total",
            "Times outlier detection ejected the endpoint.",
            endpoint::EJECTIONS,
        ),
    ];
    for (name, help, slot) in per_endpoint {
        header(out, name, "counter", help);
        for (base, l) in &endpoints {
            let _ = writeln!(out, "{name}{{{l}}} {}", s.get(base + slot));
        }
    }
    let per_cluster: [(&str, &str, usize); 3] = [
        (
            "weir_upstream_rq_overflow_total",
            "Requests a circuit breaker refused (flag UO).",
            cluster::RQ_OVERFLOW,
        ),
        (
            "weir_upstream_rq_retry_limit_exceeded_total",
            "Requests that ran out of retries (flag URX).",
            cluster::RQ_RETRY_LIMIT,
        ),
        (
            "weir_upstream_rq_no_healthy_total",
            "Requests that found no endpoint to pick (flag UH).",
            cluster::RQ_NO_HEALTHY,
        ),
    ];
    for (name, help, slot) in per_cluster {
        header(out, name, "counter", help);
        for c in clusters {
            let v = s.get(c.slots + slot);
            let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {v}", label(c.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class_of(101), 0);
        assert_eq!(class_of(204), 1);
        assert_eq!(class_of(399), 2);
        assert_eq!(class_of(404), 3);
        assert_eq!(class_of(503), 4);
        assert_eq!(class_of(0), 5);
        assert_eq!(class_of(600), 5);
    }

    #[test]
    fn shards_sum_and_histograms_are_cumulative() {
        let mut layout = Layout::new();
        let l = layout.listener_slots("main");
        let web = layout.cluster_slots("web");
        let (a1, a2) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let e1 = layout.endpoint_slots("web", a1);
        let e2 = layout.endpoint_slots("web", a2);
        assert_eq!(
            layout.endpoint_slots("web", a2),
            e2,
            "one slot range per name"
        );
        let live = [LiveCluster {
            name: "web",
            slots: web,
            endpoints: vec![(a1, e1), (a2, e2)],
        }];
        let shards: Vec<Arc<Shard>> = (0..2).map(|_| Arc::new(Shard::new(layout.len))).collect();
        shards[0].add(l + listener::RQ_CLASS + class_of(200), 3);
        shards[1].add(l + listener::RQ_CLASS + class_of(200), 2);
        shards[1].add(l + listener::RQ_CLASS + class_of(502), 1);
        // Gauges may go "negative" on one shard and positive on another.
        shards[0].add(l + listener::CX_ACTIVE, 1);
        shards[1].sub(l + listener::CX_ACTIVE, 1);
        shards[1].add(l + listener::CX_ACTIVE, 2);
        shards[0].observe(l + listener::RQ_TIME, 50_000); // ≤ 100 µs
        shards[1].observe(l + listener::RQ_TIME, 300_000); // ≤ 500 µs
        shards[1].observe(l + listener::RQ_TIME, 100_000_000_000); // +Inf
        shards[0].add(e2 + endpoint::CX_TOTAL, 4);
        let mut out = String::new();
        render(&mut out, &[("main", l)], &live, &shards);
        for want in [
            "weir_downstream_rq_total{listener=\"main\",class=\"2xx\"} 5",
            "weir_downstream_rq_total{listener=\"main\",class=\"5xx\"} 1",
            "weir_downstream_cx_active{listener=\"main\"} 2",
            "weir_downstream_rq_time_seconds_bucket{listener=\"main\",le=\"0.0001\"} 1",
            "weir_downstream_rq_time_seconds_bucket{listener=\"main\",le=\"0.00025\"} 1",
            "weir_downstream_rq_time_seconds_bucket{listener=\"main\",le=\"0.0005\"} 2",
            "weir_downstream_rq_time_seconds_bucket{listener=\"main\",le=\"60\"} 2",
            "weir_downstream_rq_time_seconds_bucket{listener=\"main\",le=\"+Inf\"} 3",
            "weir_downstream_rq_time_seconds_count{listener=\"main\"} 3",
            "weir_downstream_rq_time_seconds_sum{listener=\"main\"} 100.00035",
            "weir_upstream_cx_total{cluster=\"web\",endpoint=\"127.0.0.1:2\"} 4",
            "weir_upstream_cx_total{cluster=\"web\",endpoint=\"127.0.0.1:1\"} 0",
        ] {
            assert!(out.lines().any(|l| l == want), "missing {want:?} in\n{out}");
        }
    }

    #[test]
    fn a_shard_grows_without_moving_what_it_holds() {
        let s = Shard::new(10);
        s.add(3, 7);
        let before = s.slot(3).unwrap() as *const AtomicU64;
        s.reserve(CHUNK_SLOTS * 3 + 1);
        assert_eq!(s.slot(3).unwrap() as *const AtomicU64, before);
        s.add(CHUNK_SLOTS * 3, 2);
        assert_eq!((s.read(3), s.read(CHUNK_SLOTS * 3)), (7, 2));
        // A slot past what was reserved is dropped, never a panic on a worker.
        s.add(CHUNK_SLOTS * 5, 1);
        assert_eq!(s.read(CHUNK_SLOTS * 5), 0);
    }

    #[test]
    fn shards_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<Block>(), 128);
        assert_eq!(std::mem::size_of::<Block>(), 128);
    }
}
