//! `builtin:fault`: fault injection (Envoy's `envoy.filters.http.fault`, simplified): delays
//! and/or aborts a percentage of requests, optionally only requests matching a host and path
//! prefix, optionally on demand through request headers.
//!
//! Configuration (JSON plugin configuration; every field optional, unknown fields are rejected):
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `delay` | `{"fixed": duration, "percent": p}` | absent | hold `p`% of requests for `fixed` before they go on upstream |
//! | `abort` | `{"status": code, "percent": p}` or `{"grpc_status": code, "percent": p}` | absent | answer `p`% of requests locally with HTTP `status` (200–599), or with a gRPC reply (HTTP 200, `grpc-status: code`, 1–16) |
//! | `header_control` | bool | `false` | honour the request headers `x-weir-fault-delay-ms: N`, `x-weir-fault-abort: STATUS`, `x-weir-fault-percent: P` |
//! | `match` | `{"host": h, "path_prefix": p}` | absent | inject only into requests whose `:authority` is `h` (case-insensitive; the port is ignored unless `h` has one) and whose `:path` starts with `p` (either part optional) |
//! | `max_active` | integer | unlimited | at most this many requests delayed at once per VM; beyond it requests are not delayed (aborts still apply) |
//!
//! `percent` is a number from 0 to 100 (fractions allowed, e.g. `0.5`) and defaults to 100. A
//! `duration` is written as in the manifest (`weir_sdk::config::parse_duration`: `"200ms"`,
//! `"1.5s"`, `"1m30s"`), at most one hour.
//!
//! Example: `{"delay": {"fixed": "200ms", "percent": 10}, "abort": {"status": 503, "percent": 5},
//! "match": {"path_prefix": "/api"}}`.
//!
//! Behaviour:
//! * The dice are rolled in the request-headers phase with a per-VM PRNG (splitmix64) seeded from
//!   WASI randomness (std's `RandomState` keys), never from the clock; delay and abort are rolled
//!   independently.
//! * A delayed request is paused (`Pause`) and queued in the root context; the root's timer
//!   (5 ms, set only while requests are waiting) resumes each due request with
//!   `proxy_set_effective_context` + `proxy_continue_stream`. It then goes upstream as usual,
//!   unless its abort also triggered: then the abort follows the delay.
//! * An abort is a local reply with header `x-weir-fault: abort` and body `weir: fault_abort\n`
//!   (gRPC: `grpc-message: weir: fault_abort\n`); the request never reaches the upstream.
//! * Header control (only when `header_control` is true; Envoy's header-controlled faults): a
//!   valid `x-weir-fault-delay-ms` (0 to 3 600 000) replaces the configured delay for this request,
//!   a valid `x-weir-fault-abort` (200–599) replaces the configured abort, and
//!   `x-weir-fault-percent` (0–100, default 100) is the percentage for both. Invalid values are
//!   ignored. The headers are left on the request.
//! * Metrics (`proxy_define_metric`): counters `fault.delays_injected`, `fault.aborts_injected`,
//!   gauge `fault.active_delays`.
//! * A bad configuration (unparseable JSON, unknown field, percent outside 0–100, status outside
//!   200–599, gRPC status outside 1–16, both or neither of `status`/`grpc_status`, a bad duration)
//!   is logged at error level and fails `on_configure`, so the plugin does not load.
//!
//! Cost: the configuration is parsed once in `on_configure` and shared through an `Rc`; a request
//! that is not matched or not faulted allocates only what the SDK forces (its stream context, and
//! the header values read for `match` / header control).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use weir_sdk::phases::Phase;
use weir_sdk::proxy_wasm;
use weir_sdk::proxy_wasm::hostcalls;
use weir_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use weir_sdk::proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel, MetricType};
use weir_sdk::random::Rng;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_root_context_id| Box::new(FaultRoot {
        config: None,
        state: Rc::new(RefCell::new(State::default())),
    }));
}}

/// The root timer's period while requests are waiting.
const TICK: Duration = Duration::from_millis(5);
/// The longest delay (configured or asked for by header).
const MAX_DELAY_MS: u64 = 3_600_000;
/// The abort reply's body (Weir's error shape: `weir: reason`).
const ABORT_BODY: &str = "weir: fault_abort\n";
const HEADER_DELAY: &str = "x-weir-fault-delay-ms";
const HEADER_ABORT: &str = "x-weir-fault-abort";
const HEADER_PERCENT: &str = "x-weir-fault-percent";

/// The configuration as written by the operator.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    delay: Option<RawDelay>,
    #[serde(default)]
    abort: Option<RawAbort>,
    #[serde(default)]
    header_control: bool,
    #[serde(default, rename = "match")]
    matcher: Option<RawMatch>,
    #[serde(default)]
    max_active: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelay {
    fixed: String,
    #[serde(default = "hundred")]
    percent: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbort {
    #[serde(default)]
    status: Option<u32>,
    #[serde(default)]
    grpc_status: Option<u32>,
    #[serde(default = "hundred")]
    percent: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
}

fn hundred() -> f64 {
    100.0
}

/// How a request is aborted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Abort {
    /// A local reply with this HTTP status.
    Http(u32),
    /// A gRPC local reply (HTTP 200) with this `grpc-status`.
    Grpc(GrpcStatusCode),
}

/// The validated configuration.
struct Config {
    /// `(delay, percent)`.
    delay: Option<(Duration, f64)>,
    /// `(abort, percent)`.
    abort: Option<(Abort, f64)>,
    header_control: bool,
    /// Lower-cased.
    host: Option<String>,
    /// Whether `host` names a port (then the authority is compared whole).
    host_has_port: bool,
    path_prefix: Option<String>,
    max_active: usize,
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
            RawConfig::default()
        } else {
            serde_json::from_slice(bytes).map_err(|e| format!("invalid configuration: {e}"))?
        };
        let delay = raw
            .delay
            .map(|d| {
                let fixed = parse_duration(&d.fixed).map_err(|e| format!("delay.fixed: {e}"))?;
                let percent =
                    check_percent(d.percent).map_err(|e| format!("delay.percent: {e}"))?;
                Ok::<_, String>((fixed, percent))
            })
            .transpose()?;
        let abort = raw
            .abort
            .map(|a| {
                let percent =
                    check_percent(a.percent).map_err(|e| format!("abort.percent: {e}"))?;
                let abort = match (a.status, a.grpc_status) {
                    (Some(status), None) => {
                        if !(200..=599).contains(&status) {
                            return Err(format!(
                                "abort.status {status} is not a final HTTP status (200-599)"
                            ));
                        }
                        Abort::Http(status)
                    }
                    (None, Some(code)) => Abort::Grpc(grpc_code(code).ok_or_else(|| {
                        format!("abort.grpc_status {code} is not a gRPC error code (1-16)")
                    })?),
                    _ => return Err("abort needs exactly one of status and grpc_status".into()),
                };
                Ok((abort, percent))
            })
            .transpose()?;
        let (host, path_prefix) = match raw.matcher {
            Some(m) => (m.host.map(|h| h.to_ascii_lowercase()), m.path_prefix),
            None => (None, None),
        };
        if host.as_deref() == Some("") {
            return Err("match.host is empty".into());
        }
        Ok(Self {
            delay,
            abort,
            header_control: raw.header_control,
            host_has_port: host.as_deref().is_some_and(|h| split_port(h).1),
            host,
            path_prefix,
            max_active: raw.max_active.map_or(usize::MAX, |n| n as usize),
        })
    }
}

fn check_percent(p: f64) -> Result<f64, String> {
    if p.is_finite() && (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a percentage (0-100)"))
    }
}

/// A duration in the manifest's grammar (`"200ms"`, `"1.5s"`, `"1m"`), at most [`MAX_DELAY_MS`].
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = weir_sdk::config::parse_duration(s).map_err(|e| e.to_string())?;
    if d > Duration::from_millis(MAX_DELAY_MS) {
        return Err(format!("{s:?} is longer than one hour"));
    }
    Ok(d)
}

fn grpc_code(code: u32) -> Option<GrpcStatusCode> {
    use GrpcStatusCode::*;
    Some(match code {
        1 => Cancelled,
        2 => Unknown,
        3 => InvalidArgument,
        4 => DeadlineExceeded,
        5 => NotFound,
        6 => AlreadyExists,
        7 => PermissionDenied,
        8 => ResourceExhausted,
        9 => FailedPrecondition,
        10 => Aborted,
        11 => OutOfRange,
        12 => Unimplemented,
        13 => Internal,
        14 => Unavailable,
        15 => DataLoss,
        16 => Unauthenticated,
        _ => return None,
    })
}

/// Splits `host[:port]` into the host and whether a port was present (`[v6]:port` included).
fn split_port(authority: &str) -> (&str, bool) {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            (host, true)
        }
        _ => (authority, false),
    }
}

/// Parses a decimal header value (bytes, so a non-UTF-8 value is just invalid).
fn header_number<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// One delayed request.
struct Pending {
    /// Nanoseconds since the epoch.
    deadline: u128,
    context_id: u32,
    /// Aborted instead of resumed once due.
    abort: Option<Abort>,
}

/// Metric ids (`None` if the host refused to define one; the filter then just does not count).
#[derive(Default, Clone, Copy)]
struct Metrics {
    delays: Option<u32>,
    aborts: Option<u32>,
    active: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        let def = |kind, name| hostcalls::define_metric(kind, name).ok();
        Self {
            delays: def(MetricType::Counter, "fault.delays_injected"),
            aborts: def(MetricType::Counter, "fault.aborts_injected"),
            active: def(MetricType::Gauge, "fault.active_delays"),
        }
    }

    fn add(id: Option<u32>, delta: i64) {
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }
}

/// The per-VM state shared by the root and its streams.
#[derive(Default)]
struct State {
    rng: Rng,
    pending: Vec<Pending>,
    metrics: Metrics,
}

fn now_nanos() -> u128 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t: SystemTime| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// Sends the abort reply on the acting context (the stream, or the one made effective).
fn send_abort(abort: Abort) {
    let _ = match abort {
        Abort::Http(status) => hostcalls::send_http_response(
            status,
            vec![("x-weir-fault", "abort")],
            Some(ABORT_BODY.as_bytes()),
        ),
        Abort::Grpc(code) => hostcalls::send_grpc_response(
            code,
            Some(ABORT_BODY),
            vec![("x-weir-fault", b"abort".as_slice())],
        ),
    };
}

struct FaultRoot {
    /// `None` until `on_configure` succeeds.
    config: Option<Rc<Config>>,
    state: Rc<RefCell<State>>,
}

impl Context for FaultRoot {}

impl RootContext for FaultRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                let mut st = self.state.borrow_mut();
                if self.config.is_none() {
                    st.metrics = Metrics::define();
                }
                drop(st);
                self.config = Some(Rc::new(config));
                weir_sdk::phases::declare(&[Phase::RequestHeaders]);
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("fault: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let now = now_nanos();
        let mut st = self.state.borrow_mut();
        let metrics = st.metrics;
        st.pending.retain(|p| {
            if p.deadline > now {
                return true;
            }
            // The stream is gone only if its context was deleted, and then Drop removed it; a
            // refusal here is therefore unexpected, and the entry is dropped all the same.
            if hostcalls::set_effective_context(p.context_id).is_ok() {
                match p.abort {
                    Some(abort) => {
                        send_abort(abort);
                        Metrics::add(metrics.aborts, 1);
                    }
                    None => {
                        let _ = hostcalls::resume_http_request();
                    }
                }
            }
            Metrics::add(metrics.active, -1);
            false
        });
        if st.pending.is_empty() {
            let _ = hostcalls::set_tick_period(Duration::ZERO);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Fault {
            context_id,
            config: self.config.clone(),
            state: Rc::clone(&self.state),
            delayed: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Fault {
    context_id: u32,
    config: Option<Rc<Config>>,
    state: Rc<RefCell<State>>,
    /// Queued for a delay (perhaps already resumed by the root).
    delayed: bool,
}

impl Fault {
    fn matches(&self, config: &Config) -> bool {
        if let Some(want) = &config.host {
            let Some(authority) = self.get_http_request_header(":authority") else {
                return false;
            };
            let host = if config.host_has_port {
                authority.as_str()
            } else {
                split_port(&authority).0
            };
            if !host.eq_ignore_ascii_case(want) {
                return false;
            }
        }
        if let Some(prefix) = &config.path_prefix {
            let Some(path) = self.get_http_request_header(":path") else {
                return false;
            };
            if !path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        true
    }

    /// The faults this request asks for by header (`header_control`), overriding the configured
    /// ones: `(delay, abort)`.
    fn header_faults(&self, delay: &mut Option<(Duration, f64)>, abort: &mut Option<(Abort, f64)>) {
        let percent = match self.get_http_request_header_bytes(HEADER_PERCENT) {
            Some(v) => match header_number::<f64>(&v).and_then(|p| check_percent(p).ok()) {
                Some(p) => p,
                None => return,
            },
            None => 100.0,
        };
        if let Some(ms) = self
            .get_http_request_header_bytes(HEADER_DELAY)
            .and_then(|v| header_number::<u64>(&v))
            .filter(|ms| *ms <= MAX_DELAY_MS)
        {
            *delay = Some((Duration::from_millis(ms), percent));
        }
        if let Some(status) = self
            .get_http_request_header_bytes(HEADER_ABORT)
            .and_then(|v| header_number::<u32>(&v))
            .filter(|s| (200..=599).contains(s))
        {
            *abort = Some((Abort::Http(status), percent));
        }
    }
}

impl Context for Fault {}

impl HttpContext for Fault {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Unconfigured (the host ignored a failed on_configure): pass through rather than trap.
        let Some(config) = self.config.clone() else {
            return Action::Continue;
        };
        if (config.host.is_some() || config.path_prefix.is_some()) && !self.matches(&config) {
            return Action::Continue;
        }
        let (mut delay, mut abort) = (config.delay, config.abort);
        if config.header_control {
            self.header_faults(&mut delay, &mut abort);
        }
        if delay.is_none() && abort.is_none() {
            return Action::Continue;
        }
        let mut st = self.state.borrow_mut();
        let delay = delay
            .filter(|(d, p)| !d.is_zero() && st.rng.percent(*p))
            .map(|(d, _)| d);
        let abort = abort.filter(|(_, p)| st.rng.percent(*p)).map(|(a, _)| a);
        if let Some(delay) = delay
            && st.pending.len() < config.max_active
        {
            if st.pending.is_empty() {
                let _ = hostcalls::set_tick_period(TICK);
            }
            st.pending.push(Pending {
                deadline: now_nanos() + delay.as_nanos(),
                context_id: self.context_id,
                abort,
            });
            self.delayed = true;
            Metrics::add(st.metrics.delays, 1);
            Metrics::add(st.metrics.active, 1);
            return Action::Pause;
        }
        match abort {
            Some(abort) => {
                Metrics::add(st.metrics.aborts, 1);
                drop(st);
                send_abort(abort);
                Action::Pause
            }
            None => Action::Continue,
        }
    }
}

impl Drop for Fault {
    /// A delayed stream that ends before its delay (the client went away) leaves the queue.
    fn drop(&mut self) {
        if !self.delayed {
            return;
        }
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return;
        };
        if let Some(i) = st
            .pending
            .iter()
            .position(|p| p.context_id == self.context_id)
        {
            st.pending.swap_remove(i);
            Metrics::add(st.metrics.active, -1);
            if st.pending.is_empty() {
                let _ = hostcalls::set_tick_period(Duration::ZERO);
            }
        }
    }
}
