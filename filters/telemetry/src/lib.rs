//! `builtin:telemetry`: W3C Trace Context propagation, request metrics and a structured access
//! log — what Envoy's tracing (`x-request-id`, `traceparent`), cluster stats and access log give,
//! in one filter. Put it first in the chain so it sees every request.
//!
//! Configuration (JSON plugin configuration; every field optional, unknown fields are rejected):
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `sample_percent` | number 0–100 | `100` | share of *new* traces marked sampled (flag `01`); an incoming valid `traceparent` keeps its own decision |
//! | `access_log` | bool | `true` | write one JSON access-log line per request (info level) |
//! | `service_name` | string | `"weir"` | the `service` field of the access log |
//!
//! Trace context (W3C Trace Context, <https://www.w3.org/TR/trace-context/>), request-header phase:
//! * `traceparent` version `00` must be exactly `00-<32 hex>-<16 hex>-<2 hex>`, lower-case hex,
//!   trace-id and parent-id not all zeros. A higher version (not `ff`) is parsed as §4.3 says: at
//!   least 55 characters, the same first four fields, followed by the end or a `-`; only its
//!   sampled flag is kept. Version `ff`, upper-case hex or any other deviation is invalid.
//! * Valid: the trace continues. Weir is one hop (span): it draws a new span id and sends
//!   `traceparent: 00-<trace-id>-<new span id>-<flags>` upstream (flags: the sampled bit and the
//!   Level 2 random bit kept, the reserved bits cleared). The incoming parent id is recorded as
//!   `weir.trace.parent_id`. `tracestate` is forwarded unchanged unless it is longer than 512
//!   bytes or has more than 32 list members: then it is removed.
//! * Absent or invalid: a new trace — 16 random bytes of trace id, 8 of span id (a per-VM
//!   splitmix64 PRNG seeded from WASI randomness through std's `RandomState`, never the clock),
//!   sampled with probability `sample_percent`; any `tracestate` is removed (it belonged to the
//!   discarded trace).
//! * Properties for later filters: `weir.trace.trace_id`, `weir.trace.span_id` (32 / 16 lower-case
//!   hex), `weir.trace.parent_id` (only when continuing a trace), `weir.trace.sampled` (`1`/`0`).
//! * Only the first `traceparent` / `tracestate` value is read.
//!
//! Metrics (`proxy_define_metric`, each name defined lazily on first use and cached in the VM's
//! root): labels are flattened into the name as `|key=value` pairs (the lead's `/metrics`
//! exporter can split them; label values have `|`, `=`, spaces and control characters replaced by
//! `_`):
//! * counter `telemetry.requests_total|cluster=<cluster>|class=<1xx..5xx|none>`;
//! * histogram `telemetry.request_duration_ms|cluster=<cluster>` (whole milliseconds).
//!
//! `<cluster>` is the property `weir.route.cluster` (a router earlier in the chain), else
//! `upstream.address`, else `default`; at most 1000 series per VM, the rest count under
//! cluster `_other`. `class` comes from `response.code` (`none` when the stream ended without a
//! response). Duration: the `request.duration` property (nanoseconds), else the clock from the
//! request headers to `on_log`.
//!
//! Access log (from `on_log`, one line through `proxy_log` at info level), a JSON object whose
//! fields are always present (`null` when unknown): `ts` (request start, RFC 3339 UTC with
//! milliseconds), `service`, `method`, `authority`, `path`, `status`, `duration_ms` (fractional),
//! `bytes_in`, `bytes_out` (`request.total_size`, `response.total_size`), `upstream`
//! (`upstream.address`), `cluster`, `trace_id`, `span_id`, `parent_id`, `sampled`, `request_id`
//! (the `x-request-id` the proxy sets), `principal` (`weir.auth.principal`, set by
//! `builtin:auth`), `peer` (`connection.uri_san_peer_certificate`).
//!
//! A bad configuration is logged at error level and fails `on_configure` (the plugin does not load).
//!
//! Cost: per request a handful of header reads, one header write, four small property writes,
//! two PRNG draws (three for a new trace); in `on_log` a few property reads, two metric updates
//! (a `HashMap` lookup each) and one formatted log line.
//!
//! Over 700 lines only with its unit tests (the code is about 650): one filter, read in request
//! order.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use weir_sdk::phases::Phase;
use weir_sdk::properties;
use weir_sdk::proxy_wasm;
use weir_sdk::proxy_wasm::hostcalls;
use weir_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use weir_sdk::proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use weir_sdk::random::Rng;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_root_context_id| Box::new(TelemetryRoot {
        config: None,
        state: Rc::new(RefCell::new(State::default())),
    }));
}}

/// The longest `tracestate` forwarded (W3C: vendors may drop a longer one).
const MAX_TRACESTATE_BYTES: usize = 512;
/// The most `tracestate` list members forwarded.
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Metric series per VM before new label combinations fold into cluster `_other`.
const MAX_SERIES: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "hundred")]
    sample_percent: f64,
    #[serde(default = "yes")]
    access_log: bool,
    #[serde(default = "weir")]
    service_name: String,
}

fn hundred() -> f64 {
    100.0
}

fn yes() -> bool {
    true
}

fn weir() -> String {
    "weir".into()
}

/// The validated configuration.
struct Config {
    sample_percent: f64,
    access_log: bool,
    service_name: String,
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            bytes
        };
        let raw: RawConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid configuration: {e}"))?;
        if !(raw.sample_percent.is_finite() && (0.0..=100.0).contains(&raw.sample_percent)) {
            return Err(format!(
                "sample_percent: {} is not a percentage (0-100)",
                raw.sample_percent
            ));
        }
        Ok(Self {
            sample_percent: raw.sample_percent,
            access_log: raw.access_log,
            service_name: raw.service_name,
        })
    }
}

/// A parsed incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Lower-case hex only (W3C: upper case is invalid).
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(out)
}

/// Lower-case hex of `bytes` into `out` (twice as long), by table: the per-request ids are
/// written in place, with no `String` and no per-byte capacity check (the `Vec::push` version was
/// this filter's largest self cost per request).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

/// A `traceparent` value, version 00 (W3C Trace Context §3.2): `00-{trace}-{span}-{flags}`.
/// The trace and span ids are its slices [`TRACE_HEX`] and [`SPAN_HEX`].
fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(trace_id, &mut out[TRACE_HEX]);
    hex_into(span_id, &mut out[SPAN_HEX]);
    hex_into(&[flags], &mut out[53..55]);
    out
}

/// Where the trace id's hex sits in a version-00 `traceparent`.
const TRACE_HEX: std::ops::Range<usize> = 3..35;
/// Where the span (parent) id's hex sits in a version-00 `traceparent`.
const SPAN_HEX: std::ops::Range<usize> = 36..52;

/// Hex digits as text (they are ASCII by construction).
fn ascii(hex: &[u8]) -> &str {
    std::str::from_utf8(hex).unwrap_or_default()
}

/// Parses a `traceparent` value (W3C Trace Context §3.2, §4.3 for higher versions).
fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    // Optional whitespace around a header value is not part of it.
    let value = value.trim_ascii();
    if value.len() < 55 {
        return None;
    }
    let version = parse_hex::<1>(&value[0..2])?[0];
    if version == 0xff {
        return None;
    }
    if version == 0 && value.len() != 55 {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = parse_hex::<16>(&value[3..35])?;
    let parent_id = parse_hex::<8>(&value[36..52])?;
    let flags = parse_hex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    // Version 00 defines sampled (0x01) and, in Level 2, random (0x02); the other bits are
    // reserved and must be sent as zero. Of a higher version only the sampled bit is understood.
    let flags = if version == 0 {
        flags & 0x03
    } else {
        flags & 0x01
    };
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// Whether a `tracestate` value may be forwarded as is (size and member-count limits).
fn tracestate_fits(value: &[u8]) -> bool {
    if value.len() > MAX_TRACESTATE_BYTES {
        return false;
    }
    let members = value
        .split(|b| *b == b',')
        .filter(|m| !m.trim_ascii().is_empty())
        .count();
    members <= MAX_TRACESTATE_MEMBERS
}

/// A metric label value: no separators, spaces or control characters.
fn label(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c == '|' || c == '=' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Status classes, as metric label values.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The index of `status`'s class in [`CLASSES`].
fn status_class(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => usize::from(s / 100 - 1),
        _ => 5,
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-26T10:58:51.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The per-VM state shared by the root and its streams.
#[derive(Default)]
struct State {
    rng: Rng,
    /// Metric name → id (`None`: the host refused it; not asked again).
    metrics: HashMap<String, Option<u32>>,
    /// Cluster (as the request named it) → its metric ids, so that a request costs one lookup
    /// and no formatting once its cluster and class were seen.
    by_cluster: HashMap<String, ClusterMetrics>,
    /// The last answer of `cluster_metrics` (cluster, class, ids): consecutive requests mostly
    /// go to the same cluster with the same class, and then need no hashing at all.
    last: Option<(String, usize, MetricIds)>,
}

/// A request counter's and a duration histogram's ids (`None`: refused by the host).
type MetricIds = (Option<u32>, Option<u32>);

/// One cluster's metric ids.
struct ClusterMetrics {
    /// Per status class: `None` until first used; then the counter's id (or `None`, refused).
    counters: [Option<Option<u32>>; CLASSES.len()],
    histogram: Option<u32>,
}

impl State {
    fn trace_id(&mut self) -> [u8; 16] {
        loop {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&self.rng.next_u64().to_be_bytes());
            id[8..].copy_from_slice(&self.rng.next_u64().to_be_bytes());
            if id != [0; 16] {
                return id;
            }
        }
    }

    fn span_id(&mut self) -> [u8; 8] {
        loop {
            let id = self.rng.next_u64();
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }

    /// The request counter of `cluster` and `class` and the cluster's duration histogram,
    /// defined on first use. Past [`MAX_SERIES`] metric names a new cluster is counted as
    /// `_other`.
    fn cluster_metrics(&mut self, cluster: &str, class: usize) -> MetricIds {
        if let Some((c, k, ids)) = &self.last
            && *k == class
            && c == cluster
        {
            return *ids;
        }
        let ids = self.cluster_metrics_slow(cluster, class);
        self.last = Some((cluster.to_owned(), class, ids));
        ids
    }

    fn cluster_metrics_slow(&mut self, cluster: &str, class: usize) -> MetricIds {
        if let Some(c) = self.by_cluster.get(cluster)
            && let Some(id) = c.counters[class]
        {
            return (id, c.histogram);
        }
        let class_name = CLASSES[class];
        let mut key = label(cluster);
        let mut counter = format!("telemetry.requests_total|cluster={key}|class={class_name}");
        if self.metrics.len() >= MAX_SERIES && !self.metrics.contains_key(&counter) {
            key = "_other".to_owned();
            counter = format!("telemetry.requests_total|cluster={key}|class={class_name}");
        }
        let counter = self.metric(MetricType::Counter, counter);
        let histogram = self.metric(
            MetricType::Histogram,
            format!("telemetry.request_duration_ms|cluster={key}"),
        );
        // The cache is bounded like the series: past it, the slow path above still answers.
        if self.by_cluster.len() < MAX_SERIES || self.by_cluster.contains_key(cluster) {
            self.by_cluster
                .entry(cluster.to_owned())
                .or_insert(ClusterMetrics {
                    counters: [None; CLASSES.len()],
                    histogram,
                })
                .counters[class] = Some(counter);
        }
        (counter, histogram)
    }

    /// The metric `name` of `kind`, defined on first use.
    fn metric(&mut self, kind: MetricType, name: String) -> Option<u32> {
        if let Some(id) = self.metrics.get(&name) {
            return *id;
        }
        let id = hostcalls::define_metric(kind, &name).ok();
        self.metrics.insert(name, id);
        id
    }
}

fn now() -> SystemTime {
    hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
}

// Property paths in wire form (NUL-joined): read or written on every request, so built never.
const RESPONSE_CODE: &[u8] = b"response\0code";
const REQUEST_DURATION: &[u8] = b"request\0duration";
const ROUTE_CLUSTER: &[u8] = b"weir\0route\0cluster";
const UPSTREAM_ADDRESS: &[u8] = b"upstream\0address";
const PRINCIPAL: &[u8] = b"weir\0auth\0principal";
const PEER_URI_SAN: &[u8] = b"connection\0uri_san_peer_certificate";
const REQUEST_TOTAL_SIZE: &[u8] = b"request\0total_size";
const RESPONSE_TOTAL_SIZE: &[u8] = b"response\0total_size";
const TRACE_ID: &[u8] = b"weir\0trace\0trace_id";
const SPAN_ID: &[u8] = b"weir\0trace\0span_id";
const PARENT_ID: &[u8] = b"weir\0trace\0parent_id";
const SAMPLED: &[u8] = b"weir\0trace\0sampled";

fn prop_string(path: &[u8]) -> Option<String> {
    properties::get_raw(path).and_then(|b| String::from_utf8(b).ok())
}

fn prop_int(path: &[u8]) -> Option<i64> {
    properties::get_raw(path)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes)
}

struct TelemetryRoot {
    config: Option<Rc<Config>>,
    state: Rc<RefCell<State>>,
}

impl Context for TelemetryRoot {}

impl RootContext for TelemetryRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                weir_sdk::phases::declare(&[Phase::RequestHeaders, Phase::Log]);
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("telemetry: {e}"));
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Telemetry {
            config,
            state: self.state.clone(),
            seen: None,
        }))
    }
}

/// What the request-header phase captured for `on_log`.
struct Seen {
    start: SystemTime,
    method: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    request_id: Option<String>,
    /// The `traceparent` sent upstream; the trace and span ids are slices of it.
    traceparent: [u8; 55],
    /// The incoming parent span id as hex (only when continuing a trace).
    parent_id: Option<[u8; 16]>,
    sampled: bool,
}

struct Telemetry {
    config: Rc<Config>,
    state: Rc<RefCell<State>>,
    /// `None` until the request headers were seen.
    seen: Option<Seen>,
}

impl Telemetry {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_request_header_bytes(name)
    }

    fn header_string(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|b| String::from_utf8(b).ok())
    }
}

fn set_prop(path: &[u8], value: &[u8]) {
    let _ = properties::set_raw(path, value);
}

/// One access-log line.
#[derive(Serialize)]
struct AccessLog<'a> {
    ts: String,
    service: &'a str,
    method: Option<&'a str>,
    authority: Option<&'a str>,
    path: Option<&'a str>,
    status: Option<u16>,
    duration_ms: f64,
    bytes_in: Option<i64>,
    bytes_out: Option<i64>,
    upstream: Option<&'a str>,
    cluster: &'a str,
    trace_id: &'a str,
    span_id: &'a str,
    parent_id: Option<&'a str>,
    sampled: bool,
    request_id: Option<&'a str>,
    principal: Option<&'a str>,
    peer: Option<&'a str>,
}

impl Context for Telemetry {}

impl HttpContext for Telemetry {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let start = now();
        let incoming = self
            .header("traceparent")
            .and_then(|v| parse_traceparent(&v));
        let (trace_id, parent_id, flags, span_id) = {
            let mut st = self.state.borrow_mut();
            match incoming {
                Some(tp) => (tp.trace_id, Some(tp.parent_id), tp.flags, st.span_id()),
                None => {
                    let trace_id = st.trace_id();
                    let span_id = st.span_id();
                    let sampled = st.rng.percent(self.config.sample_percent);
                    (trace_id, None, u8::from(sampled), span_id)
                }
            }
        };
        let traceparent = traceparent(&trace_id, &span_id, flags);
        self.set_http_request_header_bytes("traceparent", Some(&traceparent));
        let keep_state = incoming.is_some()
            && self
                .header("tracestate")
                .is_none_or(|v| tracestate_fits(&v));
        if !keep_state {
            self.set_http_request_header("tracestate", None);
        }
        let parent_hex = parent_id.map(|p| {
            let mut hex = [0; 16];
            hex_into(&p, &mut hex);
            hex
        });
        let sampled = flags & 1 == 1;
        set_prop(TRACE_ID, &traceparent[TRACE_HEX]);
        set_prop(SPAN_ID, &traceparent[SPAN_HEX]);
        if let Some(p) = &parent_hex {
            set_prop(PARENT_ID, p);
        }
        set_prop(SAMPLED, if sampled { b"1" } else { b"0" });
        // Only the access log reads these: without it, no host calls and no copies for them.
        let log = self.config.access_log;
        let capture = |name: &str| if log { self.header_string(name) } else { None };
        self.seen = Some(Seen {
            start,
            method: capture(":method"),
            authority: capture(":authority"),
            path: capture(":path"),
            request_id: capture("x-request-id"),
            traceparent,
            parent_id: parent_hex,
            sampled,
        });
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(seen) = self.seen.as_ref() else {
            return;
        };
        let status = prop_int(RESPONSE_CODE).and_then(|c| u16::try_from(c).ok());
        let duration_ns = prop_int(REQUEST_DURATION)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or_else(|| {
                now()
                    .duration_since(seen.start)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
        let routed = prop_string(ROUTE_CLUSTER);
        // The upstream address is formatted by the host on request: only when the access log
        // wants it or it names the cluster.
        let upstream = if self.config.access_log || routed.is_none() {
            prop_string(UPSTREAM_ADDRESS)
        } else {
            None
        };
        let cluster = routed
            .or_else(|| upstream.clone())
            .unwrap_or_else(|| "default".to_owned());

        {
            let (counter, histogram) = self
                .state
                .borrow_mut()
                .cluster_metrics(&cluster, status_class(status));
            if let Some(id) = counter {
                let _ = hostcalls::increment_metric(id, 1);
            }
            if let Some(id) = histogram {
                let _ = hostcalls::record_metric(id, duration_ns / 1_000_000);
            }
        }

        if !self.config.access_log {
            return;
        }
        let principal = prop_string(PRINCIPAL);
        let peer = prop_string(PEER_URI_SAN);
        let line = AccessLog {
            ts: rfc3339(seen.start),
            service: &self.config.service_name,
            method: seen.method.as_deref(),
            authority: seen.authority.as_deref(),
            path: seen.path.as_deref(),
            status,
            duration_ms: (duration_ns / 1000) as f64 / 1000.0,
            bytes_in: prop_int(REQUEST_TOTAL_SIZE),
            bytes_out: prop_int(RESPONSE_TOTAL_SIZE),
            upstream: upstream.as_deref(),
            cluster: &cluster,
            trace_id: ascii(&seen.traceparent[TRACE_HEX]),
            span_id: ascii(&seen.traceparent[SPAN_HEX]),
            parent_id: seen.parent_id.as_ref().map(|p| ascii(p)),
            sampled: seen.sampled,
            request_id: seen.request_id.as_deref(),
            principal: principal.as_deref(),
            peer: peer.as_deref(),
        };
        if let Ok(json) = serde_json::to_string(&line) {
            let _ = hostcalls::log(LogLevel::Info, &json);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn version_00_parses() {
        let tp = parse_traceparent(VALID).unwrap();
        assert_eq!(tp.flags, 1);
        // Written back, the ids give the same value: hex, lower case, at the right offsets.
        let out = traceparent(&tp.trace_id, &tp.parent_id, tp.flags);
        assert_eq!(&out[..], VALID);
        assert_eq!(ascii(&out[TRACE_HEX]), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ascii(&out[SPAN_HEX]), "00f067aa0ba902b7");
        assert_eq!(&traceparent(&[0xab; 16], &[0x01; 8], 0)[50..], b"01-00");
        // Reserved flag bits are cleared, sampled and random kept.
        let tp = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff");
        assert_eq!(tp.unwrap().flags, 3);
    }

    #[test]
    fn invalid_values_are_rejected() {
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn higher_versions_follow_section_4_3() {
        let tp = parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03");
        assert_eq!(tp.unwrap().flags, 1);
        let tp = parse_traceparent(
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        );
        assert!(tp.is_some());
        assert_eq!(
            parse_traceparent(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            None
        );
    }

    #[test]
    fn tracestate_limits() {
        assert!(tracestate_fits(b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(!tracestate_fits(many.join(",").as_bytes()));
        assert!(tracestate_fits(many[..32].join(",").as_bytes()));
        assert!(!tracestate_fits(
            format!("a={}", "x".repeat(511)).as_bytes()
        ));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn labels_lose_separators() {
        assert_eq!(label("a|b=c d"), "a_b_c_d");
        assert_eq!(label("127.0.0.1:80"), "127.0.0.1:80");
    }
}
