//! `conformance`: one proxy-wasm filter, written against the upstream `proxy-wasm` 0.2.5 SDK only,
//! whose behaviour is chosen by its plugin configuration so that one module exercises every host
//! function and callback of ABI 0.2.1.
//!
//! The plugin configuration is JSON: `{"scenario": "<name>", ...options}`. An empty configuration
//! means scenario `none` (the filter only logs its lifecycle). Invalid JSON, or `"reject": true`,
//! makes `on_configure` return false. The VM configuration may hold `{"reject_vm_start": true}`
//! (then `on_vm_start` returns false) or `{"panic_in": "on_vm_start"}`.
//!
//! # Always on
//! * **Lifecycle log.** Every callback first logs `lifecycle: <callback> ctx=<id>` at TRACE, e.g.
//!   `lifecycle: on_context_create root ctx=1`, `lifecycle: on_vm_start ctx=1`,
//!   `lifecycle: on_configure ctx=1`, `lifecycle: on_context_create http ctx=2 root=1`,
//!   `lifecycle: on_request_headers ctx=2`, … `lifecycle: on_log ctx=2`, `lifecycle: on_done ctx=2`,
//!   and `lifecycle: on_delete ctx=2` (logged when the SDK drops the context, which it does in
//!   `proxy_on_delete`). Tick, queue and callout callbacks are logged the same way
//!   (`on_tick`, `on_queue_ready`, `on_http_call_response`, `on_grpc_*`, TCP `on_new_connection`,
//!   `on_downstream_data`, `on_upstream_data`, `on_downstream_close`, `on_upstream_close`).
//! * **`"panic_in": "<callback>"`** (any scenario): the named callback panics with
//!   `conformance: panic in <callback>` right after its lifecycle line. Names are those of the
//!   lifecycle log (`on_configure`, `on_context_create`, `on_request_headers`, `on_request_body`,
//!   `on_request_trailers`, `on_response_headers`, `on_response_body`, `on_response_trailers`,
//!   `on_log`, `on_done`, `on_tick`, `on_queue_ready`, `on_http_call_response`, …). The SDK's panic
//!   hook logs the message at CRITICAL and the module traps (`unreachable`).
//! * **`"delay_done": true`** (any scenario): the root's `on_done` returns false and sets a 10 ms
//!   tick; the next `on_tick` disables the tick, logs `lifecycle: proxy_done ctx=<root>` and calls
//!   `proxy_done` (the delayed root shutdown of the ABI).
//! * **`"declare_phases": "<names>"`** (any scenario): `on_configure` declares those HTTP phases
//!   to Weir (`call_foreign_function("weir.declare_http_phases", names)`) and logs
//!   `phases: declared <names> -> ok` (or `-> refused`).
//! * **Foreign-function callback** (any scenario): the root's `on_foreign_function(id, size)` reads
//!   buffer 8 (`CallData`) and logs `foreign: on_foreign_function id=<id> args=<text>`.
//! * The log crate is enabled at TRACE (`proxy_wasm::set_log_level`), so every `log::*!` line
//!   below reaches `proxy_log`.
//!
//! # Scenarios
//! | scenario | options (defaults) | what the filter does |
//! |---|---|---|
//! | `none` | | lifecycle log only; every callback returns Continue |
//! | `headers` | | request headers: reads `x-a` and `x-b` (missing = empty); adds `x-num-headers: <num_headers argument>`; adds `x-sum: <a><b>`; replaces `x-replace` with `replaced` (`set_http_request_header`); removes `x-remove`; then `get_http_request_headers` → `set_http_request_headers` with the identical list (order, duplicates and values must survive the round trip). Response headers: adds `x-filter: conformance` and `x-status-seen: <:status>`. Both return Continue. |
//! | `body` | `body_op`: `prepend`, `append`, `prepend_append`, `replace`, `partial`, `remove` (`replace`); `keep_content_length` (false); `reply_on_body` (false); `response_op`: `upper`, `append` (`upper`) | request headers: removes `content-length`. Request body: returns Pause until `end_of_stream`, logs `body: request chunk size=<n> eos=<b>` each time; at the end reads the whole body (`body: request body=<text>`) and edits it: `prepend` → `set(0,0,"prepend.")`; `append` → `set(len,0,".append")`; `prepend_append` → both (Envoy's `prepend.hello.append`); `replace` → `set(0,len,"replace")`; `partial` → `set(0,1,"partial.replace.")` (`hello` → `partial.replace.ello`); `remove` → `set(0,len,"")`. Response headers: removes `content-length`. Response body: Pause until `end_of_stream`, then replaces the whole body by its ASCII upper-case (`set(0,len,UPPER)`), or with `response_op: append` appends `.append` (`set(len,0,".append")`). With `reply_on_body: true` the request body at `end_of_stream` is answered locally instead of edited: `send_http_response(422, [("x-body-size", <n>)], "rejected")`, Pause. With `keep_content_length: true` neither `content-length` is removed (a filter that forgets to: the proxy must still frame the rewritten body correctly). |
//! | `trailers` | | request trailers: reads `x-trailer-in`, adds `x-trailer-seen: <value or "none">`, logs `trailers: request trailers=<n>`. Response body at `end_of_stream`: adds response trailer `x-response-trailer: added` (Envoy allows adding trailers at end of stream when there are none). Response trailers: adds `x-filter-trailer: conformance`. |
//! | `local_reply` | `grpc` (false), `status` (403) | request headers: `send_http_response(status, [("x-denied","1")], "denied")` and Pause; with `grpc: true`: `send_grpc_response(PermissionDenied (7), "denied", [("x-denied","1")])`. Response headers (the local reply flowing back through the filter) log `local_reply: response status=<:status>`. |
//! | `properties` | `cluster` (`v2`) | request headers: `get_property` of `request.path`, `request.method`, `request.scheme`, `source.address`, `plugin_name`, `plugin_root_id`, `plugin_vm_id`, `xds.node.id`, `node.id`, `xds.node.cluster`, `xds.node.metadata.team`, `node.metadata.team`, and the TLS identity of the connection `connection.tls_version`, `connection.requested_server_name`, `connection.uri_san_peer_certificate`, `connection.dns_san_peer_certificate`, `connection.subject_peer_certificate`, `connection.sha256_peer_certificate_digest`, `connection.uri_san_local_certificate`, `connection.subject_local_certificate` (strings, raw), `source.port` (int, 8-byte LE), `connection.mtls` (bool, 1 byte); logs `properties: <name>=<value>` or `properties: <name> not found`; `set_property(["weir","route","cluster"], cluster)` then reads it back as `weir.route.cluster`. Response headers: adds `x-prop-<name>: <value>` for every property found (ints in decimal, bools `true`/`false`, a wrong length as `bad-length-<n>`) and `x-prop-response.code: <int>`. `on_log`: logs `properties: on_log response.code=<int>`. `on_configure` logs `properties: root <name>=<value>` for the three `plugin_*` properties. |
//! | `callout` | `upstream` (`auth`), `path` (`/check`), `echo_token` (false: the callout body is `check`; true: it is the request's `x-token`), `timeout_ms` (1000), `from_tick` (false), `tick_ms` (10) | request headers: `dispatch_http_call(upstream, [(":method","GET"), (":path",<path>), (":authority","auth"), ("x-token", <request x-token or "">)], body "check", trailers [("x-callout-trailer","1")], timeout)`, logs `callout: dispatched token=<t>`, returns Pause (a request with `x-trap: callout` panics instead, before dispatching); a dispatch error sends 500 with `x-callout-error: <Status:?>`. `on_http_call_response`: reads the callout headers, body and trailers, logs `callout: response token=<t> headers=<n> body=<text> trailers=<n> status=<:status or none>` and then `callout: get_status code=<c> message=<m>` (`proxy_get_status`); `:status` 200 → adds request headers `x-auth: ok`, `x-auth-body: <body>`, `x-auth-trailers: <k=v,...>` and resumes the request; anything else (incl. a failed call: no headers) → `send_http_response(403, [("x-auth","denied"), ("x-auth-status", <:status or "none">)], "forbidden")`. With `from_tick: true` the stream does nothing; the root sets `tick_ms` in `on_configure`, dispatches the same call from its first `on_tick` (logs `callout: tick dispatched token=<t>`), disables the tick, and logs `callout: root response status=<s> body=<text>` when the answer arrives. |
//! | `grpc` | `mode`: `call`, `stream`, `cancel` (`call`); `upstream` (`grpc`), `timeout_ms` (1000), `method` (`Say` for calls, `Chat` for streams) | `call`: request headers dispatch `dispatch_grpc_call(upstream, "weir.test.Echo", method, [("x-md","1")], "ping", timeout)` and Pause; `on_grpc_call_response` with status 0 adds request header `x-grpc-reply: <message>` and resumes; a non-zero status sends 503 with `x-grpc-status: <status>` and `x-grpc-message: <get_grpc_status message or "">`. `stream`: opens `open_grpc_stream(upstream, "weir.test.Echo", method, [("x-md","1")])`, sends `hello` (not end of stream) and Pauses; initial/trailing metadata are logged as `grpc: initial <k>=<v>` / `grpc: trailing <k>=<v>`; every received message `m` is logged (`grpc: message <m>`) and answered with `ack:<m>`, except `bye`, which half-closes the stream (`close_grpc_stream`); on close adds `x-grpc-messages: <m1,m2,...>` and `x-grpc-close: <status>` and resumes. `cancel`: dispatches the unary call and cancels it at once (`cancel_grpc_call`), adds `x-grpc: cancelled`, Continue. |
//! | `body_callout` | `side`: `request`, `response` (`request`); `upstream` (`auth`) | that side's body: Pause on every chunk; at `end_of_stream` POSTs the whole body to `upstream` `/verify` and Pauses. `on_http_call_response`: a 200 replaces the body with `verified:<answer body>` and resumes that side; anything else answers 403 `unverified` with `x-verify-status: <status>`. |
//! | `trailers_callout` | | request trailers: GETs `auth` `/check` and Pauses; `on_http_call_response` adds request trailer `x-verified: <status>` and resumes. |
//! | `shared_data` | `mode`: `increment`, `cas_conflict`, `remove` (`increment`); `key` (`conformance.counter`) | `increment`: CAS loop `get_shared_data(key)` → `set_shared_data(key, n+1, cas)` retrying on CasMismatch (max 100); adds `x-shared-value: <n+1>` and `x-shared-retries: <retries>`. `cas_conflict`: `set(key,"init",None)`, `get` → cas1, `set(key,"first",cas1)` → `x-shared-cas-first: ok`, `set(key,"second",cas1)` (stale) → `x-shared-cas-second: mismatch` (or `ok` / `error:<Status:?>` if the host got it wrong), final `get` → `x-shared-final: <value>`. `remove`: `set(key,"x",None)`, `remove_shared_data(key, None)`, `get` → `x-shared-removed: value=<none or text> cas=<none or some>`. All Continue. |
//! | `queue` | `mode`: `register`, `resolve` (`register`); `queue` (`q`); `vm_id` (`""`, for resolve) | `register`: the root registers `queue` in `on_configure` (logs `queue: registered id=<id>`); each request enqueues its `:path` and adds `x-queue: enqueued`. `resolve`: registers nothing; each request calls `resolve_shared_queue(vm_id, queue)` and enqueues its `:path` (`x-queue: enqueued`), or adds `x-queue: not-found`. `on_queue_ready(id)` (root) dequeues until empty, logging `queue: dequeued <item>` each, then `queue: drained <n> from <id>`. |
//! | `metrics` | `prefix` (`conformance`) | `on_configure` defines counter `<prefix>.requests`, gauge `<prefix>.path_len`, histogram `<prefix>.sizes`. Each request: counter `+1`; gauge `record(len(:path))`, then `increment(+5)` and `increment(-5)`; histogram `record(x-value header or len(:path))`; then adds `x-metric-counter`, `x-metric-gauge` (via `get_metric`) and `x-metric-histogram` (`bad-argument` expected: histograms cannot be read). |
//! | `tick` | `tick_ms` (10), `max_ticks` (0 = unlimited), `prefix` (`conformance`) | `on_configure` defines counter `<prefix>.ticks` and sets the tick period; each `on_tick` increments it and logs `tick: n=<n>`; after `max_ticks` ticks it sets the period to 0 and logs `tick: stopped`. |
//! | `logging` | | request headers: logs `logging: trace|debug|info|warn|error` at those levels and `logging: critical` at CRITICAL, writes `logging: stdout` / `logging: stderr` with `println!`/`eprintln!` (WASI `fd_write` 1/2); adds `x-log-level: <get_log_level as number>`, `x-time-ns: <get_current_time in ns>` and `x-wasi-time-ns: <std::time::SystemTime::now in ns>` (WASI realtime clock). |
//! | `lifecycle` | | like `none`, but every HTTP callback (headers, body, trailers, both directions) is implemented and returns Continue, so the lifecycle log shows Envoy's full order. |
//! | `close_stream` | `side`: `request`, `response` (`request`) | `request`: request headers call `reset_http_request` and Pause. `response`: response headers call `reset_http_response` and Pause. |
//! | `foreign` | `function` (`unknown_fn`) | request headers: `call_foreign_function(function, "args")` → `x-foreign: not-found` (NOT_FOUND), `ok:<result>` or `error:<Status:?>`. |
//! | `env` | `var` (`WEIR_TEST`) | request headers: `std::env::var(var)` (WASI environ) → `x-env: <value>` or `x-env: <unset>`; `on_configure` logs `env: <var>=<value or <unset>>`. |
//! | `random` | | request headers: hashes `"weir"` with a fresh `std::hash::RandomState` (keys from WASI `random_get`) and adds `x-random: <16 hex digits>`; Continue. Two VMs give different values unless the host's randomness is constant. |
//! | `trace` | `tag` (`t`) | for chain tests through a proxy. Request headers: with request header `x-read-log: <tag>` answers locally `200` with body and header `x-trace-log` = shared data `trace.<tag>.log` (Pause); with `x-trap: <tag>` panics (the VM traps). With `x-spin-ms: <n>` it first spins (busy loop) for n ms of wall time. Otherwise: appends `<tag>` to request header `x-order` (comma-separated, set with `set_http_request_header`); copies request headers `x-route-cluster`, `x-route-path`, `x-route-timeout-ms` (when present) to properties `weir.route.cluster`, `weir.route.path`, `weir.route.timeout_ms`; adds `x-trace-<tag>-vm: <16 hex digits, random per VM>`, `x-trace-<tag>-vm-requests: <requests this VM saw>` and `x-trace-<tag>-count: <n>` (CAS increment of shared data `trace.<tag>.count`); Continue. Response headers: appends `<tag>` to response header `x-order`, adds `x-trace-<tag>-status: <:status>` and `x-trace-<tag>-response-calls: <n>` (how many times `on_response_headers` ran on this stream, this one included); Continue. `on_log`: appends `response.code` (decimal, or `none`) to shared data `trace.<tag>.log` (comma-separated, CAS loop), except for a stream that read the log. |
//! | `tcp` | | the root's `get_type` returns StreamContext. `on_new_connection` logs `tcp: source.address=<v>`; `on_downstream_data` logs `tcp: downstream <data> eos=<b>` and prepends `D:` (`set_downstream_data(0,0,..)`); `on_upstream_data` logs `tcp: upstream <data> eos=<b>` and appends `:U` (`set_upstream_data(len,0,..)`); both return Continue; closes log `tcp: downstream close peer=<PeerType:?>` / `tcp: upstream close peer=<..>`. |
//!
//! Long (1.3k lines): one guest program exercising every ABI call the conformance tests check, as
//! one table of cases.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, trace, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{
    Action, BufferType, ContextType, GrpcStatusCode, LogLevel, MetricType, PeerType, Status,
};
use serde_json::Value;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| Box::new(Root::new(context_id)));
}}

/// The parsed plugin configuration.
#[derive(Default)]
struct Config {
    raw: Value,
    scenario: String,
}

impl Config {
    fn parse(bytes: Option<&[u8]>) -> Result<Self, String> {
        let raw: Value = match bytes {
            None | Some([]) => Value::Object(Default::default()),
            Some(b) => serde_json::from_slice(b).map_err(|e| e.to_string())?,
        };
        let scenario = raw
            .get("scenario")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_string();
        Ok(Self { raw, scenario })
    }

    fn str_or(&self, key: &str, default: &str) -> String {
        self.raw
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    }

    fn u64_or(&self, key: &str, default: u64) -> u64 {
        self.raw.get(key).and_then(Value::as_u64).unwrap_or(default)
    }

    fn bool_or(&self, key: &str, default: bool) -> bool {
        self.raw
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or(default)
    }

    fn is(&self, scenario: &str) -> bool {
        self.scenario == scenario
    }

    /// Logs the lifecycle line of `callback` and panics there if configured to.
    fn enter(&self, callback: &str, ctx: u32) {
        trace!("lifecycle: {callback} ctx={ctx}");
        self.maybe_panic(callback);
    }

    fn maybe_panic(&self, callback: &str) {
        if self.raw.get("panic_in").and_then(Value::as_str) == Some(callback) {
            panic!("conformance: panic in {callback}");
        }
    }
}

/// Metric ids defined by the root in the `metrics` scenario.
#[derive(Clone, Copy)]
struct Metrics {
    counter: u32,
    gauge: u32,
    histogram: u32,
}

fn path_of(parts: &str) -> Vec<&str> {
    parts.split('.').collect()
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn le_u64(bytes: &[u8]) -> String {
    match <[u8; 8]>::try_from(bytes) {
        Ok(b) => u64::from_le_bytes(b).to_string(),
        Err(_) => format!("bad-length-{}", bytes.len()),
    }
}

fn metric_value(result: Result<u64, Status>) -> String {
    match result {
        Ok(v) => v.to_string(),
        Err(Status::BadArgument) => "bad-argument".to_string(),
        Err(Status::NotFound) => "not-found".to_string(),
        Err(s) => format!("error:{s:?}"),
    }
}

/// Replaces shared data `key` by `f(old text)` with a CAS retry loop (max 100 retries); returns
/// the value written, or `error:<Status:?>`.
fn cas_update(ctx: &dyn Context, key: &str, f: impl Fn(&str) -> String) -> String {
    for _ in 0..=100 {
        let (value, cas) = ctx.get_shared_data(key);
        let new = f(&text(&value.unwrap_or_default()));
        match ctx.set_shared_data(key, Some(new.as_bytes()), cas) {
            Ok(()) => return new,
            Err(Status::CasMismatch) => continue,
            Err(s) => return format!("error:{s:?}"),
        }
    }
    "error:CasMismatch".to_string()
}

// ---------------------------------------------------------------------------------------------
// Root context
// ---------------------------------------------------------------------------------------------

struct Root {
    id: u32,
    config: Rc<Config>,
    metrics: Option<Metrics>,
    tick_counter: Option<u32>,
    ticks: u64,
    tick_callout: Option<u32>,
    queue: Option<u32>,
    /// `trace`: this VM's random identity and the number of requests it saw.
    vm_tag: u64,
    vm_requests: Rc<Cell<u64>>,
    /// `delay_done`: `on_done` returned false; the next tick calls `proxy_done`.
    done_pending: bool,
}

impl Root {
    fn new(id: u32) -> Self {
        trace!("lifecycle: on_context_create root ctx={id}");
        Self {
            id,
            config: Rc::new(Config::default()),
            metrics: None,
            tick_counter: None,
            ticks: 0,
            tick_callout: None,
            queue: None,
            done_pending: false,
            vm_tag: 0,
            vm_requests: Rc::new(Cell::new(0)),
        }
    }

    fn callout_timeout(&self) -> Duration {
        Duration::from_millis(self.config.u64_or("timeout_ms", 1000))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        trace!("lifecycle: on_delete ctx={}", self.id);
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.config.enter("on_http_call_response", self.id);
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "none".to_string());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        info!(
            "callout: root response token={token_id} status={status} body={}",
            text(&body)
        );
    }

    fn on_done(&mut self) -> bool {
        self.config.enter("on_done", self.id);
        if self.config.bool_or("delay_done", false) {
            // Finish later, from a tick, as a plugin flushing state at shutdown would.
            self.done_pending = true;
            self.set_tick_period(Duration::from_millis(10));
            return false;
        }
        true
    }

    fn on_foreign_function(&mut self, function_id: u32, arguments_size: usize) {
        self.config.enter("on_foreign_function", self.id);
        let args = hostcalls::get_buffer(BufferType::CallData, 0, arguments_size)
            .unwrap()
            .unwrap_or_default();
        info!(
            "foreign: on_foreign_function id={function_id} args={}",
            text(&args)
        );
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        trace!("lifecycle: on_vm_start ctx={}", self.id);
        let vm_config = Config::parse(self.get_vm_configuration().as_deref()).unwrap_or_default();
        vm_config.maybe_panic("on_vm_start");
        !vm_config.bool_or("reject_vm_start", false)
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        trace!("lifecycle: on_configure ctx={}", self.id);
        let config = match Config::parse(self.get_plugin_configuration().as_deref()) {
            Ok(c) => c,
            Err(e) => {
                error!("conformance: invalid configuration: {e}");
                return false;
            }
        };
        config.maybe_panic("on_configure");
        if let Some(phases) = config.raw.get("declare_phases").and_then(Value::as_str) {
            let r = hostcalls::call_foreign_function(
                "weir.declare_http_phases",
                Some(phases.as_bytes()),
            );
            info!(
                "phases: declared {phases} -> {}",
                if r.is_ok() { "ok" } else { "refused" }
            );
        }
        let prefix = config.str_or("prefix", "conformance");
        match config.scenario.as_str() {
            "metrics" => {
                self.metrics = Some(Metrics {
                    counter: hostcalls::define_metric(
                        MetricType::Counter,
                        &format!("{prefix}.requests"),
                    )
                    .unwrap(),
                    gauge: hostcalls::define_metric(
                        MetricType::Gauge,
                        &format!("{prefix}.path_len"),
                    )
                    .unwrap(),
                    histogram: hostcalls::define_metric(
                        MetricType::Histogram,
                        &format!("{prefix}.sizes"),
                    )
                    .unwrap(),
                });
            }
            "tick" => {
                self.tick_counter = Some(
                    hostcalls::define_metric(MetricType::Counter, &format!("{prefix}.ticks"))
                        .unwrap(),
                );
                self.set_tick_period(Duration::from_millis(config.u64_or("tick_ms", 10)));
            }
            "callout" if config.bool_or("from_tick", false) => {
                self.set_tick_period(Duration::from_millis(config.u64_or("tick_ms", 10)));
            }
            "queue" if config.str_or("mode", "register") == "register" => {
                let id = self.register_shared_queue(&config.str_or("queue", "q"));
                self.queue = Some(id);
                info!("queue: registered id={id}");
            }
            "properties" => {
                for name in ["plugin_name", "plugin_root_id", "plugin_vm_id"] {
                    match self.get_property(vec![name]) {
                        Some(v) => info!("properties: root {name}={}", text(&v)),
                        None => info!("properties: root {name} not found"),
                    }
                }
            }
            "env" => {
                let var = config.str_or("var", "WEIR_TEST");
                let value = std::env::var(&var).unwrap_or_else(|_| "<unset>".to_string());
                info!("env: {var}={value}");
            }
            "trace" => {
                self.vm_tag =
                    std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), "weir-vm");
            }
            _ => {}
        }
        let reject = config.bool_or("reject", false);
        self.config = Rc::new(config);
        !reject
    }

    fn on_tick(&mut self) {
        self.config.enter("on_tick", self.id);
        if self.done_pending {
            self.done_pending = false;
            self.set_tick_period(Duration::ZERO);
            info!("lifecycle: proxy_done ctx={}", self.id);
            self.done();
        } else if self.config.is("tick") {
            self.ticks += 1;
            if let Some(id) = self.tick_counter {
                hostcalls::increment_metric(id, 1).unwrap();
            }
            info!("tick: n={}", self.ticks);
            let max = self.config.u64_or("max_ticks", 0);
            if max > 0 && self.ticks >= max {
                self.set_tick_period(Duration::ZERO);
                info!("tick: stopped");
            }
        } else if self.config.is("callout") && self.tick_callout.is_none() {
            let upstream = self.config.str_or("upstream", "auth");
            let headers = vec![
                (":method", "GET"),
                (":path", "/check"),
                (":authority", "auth"),
                ("x-token", ""),
            ];
            match self.dispatch_http_call(
                &upstream,
                headers,
                Some(b"check"),
                vec![("x-callout-trailer", "1")],
                self.callout_timeout(),
            ) {
                Ok(token) => {
                    self.tick_callout = Some(token);
                    info!("callout: tick dispatched token={token}");
                }
                Err(s) => error!("callout: tick dispatch failed: {s:?}"),
            }
            self.set_tick_period(Duration::ZERO);
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        self.config.enter("on_queue_ready", self.id);
        let mut n = 0;
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            info!("queue: dequeued {}", text(&item));
            n += 1;
        }
        info!("queue: drained {n} from {queue_id}");
    }

    fn on_log(&mut self) {
        self.config.enter("on_log", self.id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        trace!(
            "lifecycle: on_context_create http ctx={context_id} root={}",
            self.id
        );
        self.config.maybe_panic("on_context_create");
        Some(Box::new(Http {
            id: context_id,
            config: self.config.clone(),
            metrics: self.metrics,
            queue: Cell::new(self.queue),
            props: Vec::new(),
            grpc_messages: Vec::new(),
            vm_tag: self.vm_tag,
            vm_requests: self.vm_requests.clone(),
            log_read: false,
            response_calls: 0,
        }))
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        trace!(
            "lifecycle: on_context_create stream ctx={context_id} root={}",
            self.id
        );
        self.config.maybe_panic("on_context_create");
        Some(Box::new(Tcp {
            id: context_id,
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        if self.config.is("tcp") {
            Some(ContextType::StreamContext)
        } else {
            Some(ContextType::HttpContext)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP context
// ---------------------------------------------------------------------------------------------

struct Http {
    id: u32,
    config: Rc<Config>,
    metrics: Option<Metrics>,
    queue: Cell<Option<u32>>,
    /// `properties`: (name, rendered value) read in the request phase, echoed on the response.
    props: Vec<(String, String)>,
    /// `grpc` stream mode: messages received so far.
    grpc_messages: Vec<String>,
    /// `trace`: the root's VM identity and request count.
    vm_tag: u64,
    vm_requests: Rc<Cell<u64>>,
    /// `trace`: this stream read the log (and is not logged itself).
    log_read: bool,
    /// `trace`: how many times `on_response_headers` ran on this stream.
    response_calls: u32,
}

impl Drop for Http {
    fn drop(&mut self) {
        trace!("lifecycle: on_delete ctx={}", self.id);
    }
}

impl Http {
    fn request_headers_headers(&mut self, num_headers: usize) -> Action {
        let a = self.get_http_request_header("x-a").unwrap_or_default();
        let b = self.get_http_request_header("x-b").unwrap_or_default();
        self.add_http_request_header("x-num-headers", &num_headers.to_string());
        self.add_http_request_header("x-sum", &format!("{a}{b}"));
        self.set_http_request_header("x-replace", Some("replaced"));
        self.remove_http_request_header("x-remove");
        let all = self.get_http_request_headers_bytes();
        self.set_http_request_headers_bytes(
            all.iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect(),
        );
        Action::Continue
    }

    fn request_headers_properties(&mut self) -> Action {
        const STRINGS: [&str; 20] = [
            "request.path",
            "request.method",
            "request.scheme",
            "source.address",
            "plugin_name",
            "plugin_root_id",
            "plugin_vm_id",
            "xds.node.id",
            "node.id",
            "xds.node.cluster",
            "xds.node.metadata.team",
            "node.metadata.team",
            // The downstream connection's TLS identity (absent on plain connections).
            "connection.tls_version",
            "connection.requested_server_name",
            "connection.uri_san_peer_certificate",
            "connection.dns_san_peer_certificate",
            "connection.subject_peer_certificate",
            "connection.sha256_peer_certificate_digest",
            "connection.uri_san_local_certificate",
            "connection.subject_local_certificate",
        ];
        for name in STRINGS {
            self.record_property(name, text);
        }
        self.record_property("source.port", le_u64);
        self.record_property("connection.mtls", |b| match b {
            [0] => "false".to_string(),
            [1] => "true".to_string(),
            other => format!("bad-length-{}", other.len()),
        });
        let cluster = self.config.str_or("cluster", "v2");
        self.set_property(vec!["weir", "route", "cluster"], Some(cluster.as_bytes()));
        self.record_property("weir.route.cluster", text);
        Action::Continue
    }

    fn record_property(&mut self, name: &str, render: fn(&[u8]) -> String) {
        match self.get_property(path_of(name)) {
            Some(v) => {
                let value = render(&v);
                info!("properties: {name}={value}");
                self.props.push((name.to_string(), value));
            }
            None => info!("properties: {name} not found"),
        }
    }

    fn request_headers_callout(&mut self) -> Action {
        if self.config.bool_or("from_tick", false) {
            return Action::Continue;
        }
        if self.get_http_request_header("x-trap").as_deref() == Some("callout") {
            panic!("conformance: trap requested");
        }
        let token = self.get_http_request_header("x-token").unwrap_or_default();
        let upstream = self.config.str_or("upstream", "auth");
        let timeout = Duration::from_millis(self.config.u64_or("timeout_ms", 1000));
        let path = self.config.str_or("path", "/check");
        let body = if self.config.bool_or("echo_token", false) {
            token.clone()
        } else {
            "check".to_string()
        };
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", "auth"),
            ("x-token", token.as_str()),
        ];
        match self.dispatch_http_call(
            &upstream,
            headers,
            Some(body.as_bytes()),
            vec![("x-callout-trailer", "1")],
            timeout,
        ) {
            Ok(t) => info!("callout: dispatched token={t}"),
            Err(s) => {
                error!("callout: dispatch failed: {s:?}");
                self.send_http_response(500, vec![("x-callout-error", &format!("{s:?}"))], None);
            }
        }
        Action::Pause
    }

    /// `body_callout`: buffers the whole body, sends it to the `upstream` cluster's `/verify`,
    /// and pauses on the end of the body until the answer (see `body_callout_answer`).
    fn body_callout(&mut self, body_size: usize, end_of_stream: bool, response: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = if response {
            self.get_http_response_body(0, body_size)
        } else {
            self.get_http_request_body(0, body_size)
        }
        .unwrap_or_default();
        let upstream = self.config.str_or("upstream", "auth");
        let headers = vec![
            (":method", "POST"),
            (":path", "/verify"),
            (":authority", "auth"),
        ];
        match self.dispatch_http_call(
            &upstream,
            headers,
            Some(&body),
            vec![],
            Duration::from_secs(5),
        ) {
            Ok(t) => info!("body_callout: dispatched token={t} size={body_size}"),
            Err(s) => error!("body_callout: dispatch failed: {s:?}"),
        }
        Action::Pause
    }

    /// A 200 answer replaces the paused body with `verified:` and the answer's body, then the
    /// stream goes on; any other answer is a 403 local reply.
    fn body_callout_answer(&mut self, body_size: usize) {
        let status = self.get_http_call_response_header(":status");
        if status.as_deref() != Some("200") {
            let status = status.unwrap_or_else(|| "none".to_string());
            self.send_http_response(403, vec![("x-verify-status", &status)], Some(b"unverified"));
            return;
        }
        let mut body = b"verified:".to_vec();
        body.extend(
            self.get_http_call_response_body(0, body_size)
                .unwrap_or_default(),
        );
        if self.config.str_or("side", "request") == "response" {
            let len = self
                .get_http_response_body(0, usize::MAX)
                .map_or(0, |b| b.len());
            self.set_http_response_body(0, len, &body);
            self.resume_http_response();
        } else {
            let len = self
                .get_http_request_body(0, usize::MAX)
                .map_or(0, |b| b.len());
            self.set_http_request_body(0, len, &body);
            self.resume_http_request();
        }
    }

    fn request_headers_grpc(&mut self) -> Action {
        let upstream = self.config.str_or("upstream", "grpc");
        let timeout = Duration::from_millis(self.config.u64_or("timeout_ms", 1000));
        let md: Vec<(&str, &[u8])> = vec![("x-md", b"1")];
        match self.config.str_or("mode", "call").as_str() {
            "stream" => match self.open_grpc_stream(
                &upstream,
                "weir.test.Echo",
                &self.config.str_or("method", "Chat"),
                md,
            ) {
                Ok(t) => {
                    info!("grpc: stream opened token={t}");
                    self.send_grpc_stream_message(t, Some(b"hello"), false);
                    Action::Pause
                }
                Err(s) => self.grpc_error(s),
            },
            "cancel" => match self.dispatch_grpc_call(
                &upstream,
                "weir.test.Echo",
                "Say",
                md,
                Some(b"ping"),
                timeout,
            ) {
                Ok(t) => {
                    self.cancel_grpc_call(t);
                    self.add_http_request_header("x-grpc", "cancelled");
                    Action::Continue
                }
                Err(s) => self.grpc_error(s),
            },
            _ => match self.dispatch_grpc_call(
                &upstream,
                "weir.test.Echo",
                &self.config.str_or("method", "Say"),
                md,
                Some(b"ping"),
                timeout,
            ) {
                Ok(t) => {
                    info!("grpc: call dispatched token={t}");
                    Action::Pause
                }
                Err(s) => self.grpc_error(s),
            },
        }
    }

    fn grpc_error(&self, s: Status) -> Action {
        error!("grpc: dispatch failed: {s:?}");
        self.send_http_response(500, vec![("x-grpc-error", &format!("{s:?}"))], None);
        Action::Pause
    }

    fn request_headers_shared_data(&mut self) -> Action {
        let key = self.config.str_or("key", "conformance.counter");
        match self.config.str_or("mode", "increment").as_str() {
            "cas_conflict" => {
                let show = |r: Result<(), Status>| match r {
                    Ok(()) => "ok".to_string(),
                    Err(Status::CasMismatch) => "mismatch".to_string(),
                    Err(s) => format!("error:{s:?}"),
                };
                self.set_shared_data(&key, Some(b"init"), None).unwrap();
                let (_, cas1) = self.get_shared_data(&key);
                let first = show(self.set_shared_data(&key, Some(b"first"), cas1));
                let second = show(self.set_shared_data(&key, Some(b"second"), cas1));
                let (value, _) = self.get_shared_data(&key);
                self.add_http_request_header("x-shared-cas-first", &first);
                self.add_http_request_header("x-shared-cas-second", &second);
                self.add_http_request_header("x-shared-final", &text(&value.unwrap_or_default()));
            }
            "remove" => {
                self.set_shared_data(&key, Some(b"x"), None).unwrap();
                self.remove_shared_data(&key, None).unwrap();
                let (value, cas) = self.get_shared_data(&key);
                let value = value.map_or("none".to_string(), |v| text(&v));
                let cas = if cas.is_some() { "some" } else { "none" };
                self.add_http_request_header(
                    "x-shared-removed",
                    &format!("value={value} cas={cas}"),
                );
            }
            _ => {
                let mut retries = 0;
                let value = loop {
                    let (value, cas) = self.get_shared_data(&key);
                    let n: u64 = value.and_then(|v| text(&v).parse().ok()).unwrap_or(0) + 1;
                    match self.set_shared_data(&key, Some(n.to_string().as_bytes()), cas) {
                        Ok(()) => break n.to_string(),
                        Err(Status::CasMismatch) if retries < 100 => retries += 1,
                        Err(s) => break format!("error:{s:?}"),
                    }
                };
                self.add_http_request_header("x-shared-value", &value);
                self.add_http_request_header("x-shared-retries", &retries.to_string());
            }
        }
        Action::Continue
    }

    fn request_headers_queue(&mut self) -> Action {
        let name = self.config.str_or("queue", "q");
        let id = match self.config.str_or("mode", "register").as_str() {
            "resolve" => self.resolve_shared_queue(&self.config.str_or("vm_id", ""), &name),
            // The root registered it in on_configure and handed the id to this context.
            _ => self.queue.get(),
        };
        self.queue.set(id);
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let result = match id {
            None => "not-found".to_string(),
            Some(id) => match self.enqueue_shared_queue(id, Some(path.as_bytes())) {
                Ok(()) => "enqueued".to_string(),
                Err(s) => format!("error:{s:?}"),
            },
        };
        self.add_http_request_header("x-queue", &result);
        Action::Continue
    }

    fn request_headers_metrics(&mut self) -> Action {
        let Some(m) = self.metrics else {
            return Action::Continue;
        };
        let path_len = self
            .get_http_request_header(":path")
            .unwrap_or_default()
            .len() as u64;
        let sample = self
            .get_http_request_header("x-value")
            .and_then(|v| v.parse().ok())
            .unwrap_or(path_len);
        hostcalls::increment_metric(m.counter, 1).unwrap();
        hostcalls::record_metric(m.gauge, path_len).unwrap();
        hostcalls::increment_metric(m.gauge, 5).unwrap();
        hostcalls::increment_metric(m.gauge, -5).unwrap();
        hostcalls::record_metric(m.histogram, sample).unwrap();
        self.add_http_request_header(
            "x-metric-counter",
            &metric_value(hostcalls::get_metric(m.counter)),
        );
        self.add_http_request_header(
            "x-metric-gauge",
            &metric_value(hostcalls::get_metric(m.gauge)),
        );
        self.add_http_request_header(
            "x-metric-histogram",
            &metric_value(hostcalls::get_metric(m.histogram)),
        );
        Action::Continue
    }

    fn request_headers_trace(&mut self) -> Action {
        let tag = self.config.str_or("tag", "t");
        if self.get_http_request_header("x-read-log").as_deref() == Some(tag.as_str()) {
            let (value, _) = self.get_shared_data(&format!("trace.{tag}.log"));
            let log = text(&value.unwrap_or_default());
            self.log_read = true;
            self.send_http_response(200, vec![("x-trace-log", &log)], Some(log.as_bytes()));
            return Action::Pause;
        }
        if self.get_http_request_header("x-trap").as_deref() == Some(tag.as_str()) {
            panic!("conformance: trap requested");
        }
        if let Some(ms) = self
            .get_http_request_header("x-spin-ms")
            .and_then(|v| v.parse::<u64>().ok())
        {
            // Busy for `ms` of wall time (a filter stuck in a loop, as the callback deadline sees it).
            let end = SystemTime::now() + Duration::from_millis(ms);
            while SystemTime::now() < end {}
        }
        let order = match self.get_http_request_header("x-order") {
            Some(o) if !o.is_empty() => format!("{o},{tag}"),
            _ => tag.clone(),
        };
        self.set_http_request_header("x-order", Some(&order));
        for (header, property) in [
            ("x-route-cluster", "weir.route.cluster"),
            ("x-route-path", "weir.route.path"),
            ("x-route-timeout-ms", "weir.route.timeout_ms"),
        ] {
            if let Some(v) = self.get_http_request_header(header) {
                self.set_property(path_of(property), Some(v.as_bytes()));
            }
        }
        let seen = self.vm_requests.get() + 1;
        self.vm_requests.set(seen);
        self.add_http_request_header(
            &format!("x-trace-{tag}-vm"),
            &format!("{:016x}", self.vm_tag),
        );
        self.add_http_request_header(&format!("x-trace-{tag}-vm-requests"), &seen.to_string());
        let count = cas_update(&*self, &format!("trace.{tag}.count"), |old| {
            (old.parse::<u64>().unwrap_or(0) + 1).to_string()
        });
        self.add_http_request_header(&format!("x-trace-{tag}-count"), &count);
        Action::Continue
    }

    fn request_headers_logging(&mut self) -> Action {
        trace!("logging: trace");
        debug!("logging: debug");
        info!("logging: info");
        warn!("logging: warn");
        error!("logging: error");
        hostcalls::log(LogLevel::Critical, "logging: critical").unwrap();
        println!("logging: stdout");
        eprintln!("logging: stderr");
        let level = hostcalls::get_log_level().unwrap();
        self.add_http_request_header("x-log-level", &(level as u32).to_string());
        self.add_http_request_header("x-time-ns", &nanos(self.get_current_time()).to_string());
        self.add_http_request_header("x-wasi-time-ns", &nanos(SystemTime::now()).to_string());
        Action::Continue
    }

    fn request_headers_foreign(&mut self) -> Action {
        let name = self.config.str_or("function", "unknown_fn");
        let result = match self.call_foreign_function(&name, Some(b"args")) {
            Ok(v) => format!("ok:{}", text(&v.unwrap_or_default())),
            Err(Status::NotFound) => "not-found".to_string(),
            Err(s) => format!("error:{s:?}"),
        };
        self.add_http_request_header("x-foreign", &result);
        Action::Continue
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        self.config.enter("on_http_call_response", self.id);
        if self.config.is("body_callout") {
            return self.body_callout_answer(body_size);
        }
        if self.config.is("trailers_callout") {
            let status = self
                .get_http_call_response_header(":status")
                .unwrap_or_else(|| "none".to_string());
            self.add_http_request_trailer("x-verified", &status);
            self.resume_http_request();
            return;
        }
        let headers = self.get_http_call_response_headers();
        let body = text(
            &self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default(),
        );
        let trailers = self.get_http_call_response_trailers();
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .map(|(_, v)| v.clone());
        info!(
            "callout: response token={token_id} headers={num_headers} body={body} trailers={num_trailers} status={}",
            status.as_deref().unwrap_or("none")
        );
        let (code, message) = self.get_grpc_status();
        info!(
            "callout: get_status code={code} message={}",
            message.unwrap_or_default()
        );
        if status.as_deref() == Some("200") {
            let trailers: Vec<String> = trailers.iter().map(|(k, v)| format!("{k}={v}")).collect();
            self.add_http_request_header("x-auth", "ok");
            self.add_http_request_header("x-auth-body", &body);
            self.add_http_request_header("x-auth-trailers", &trailers.join(","));
            self.resume_http_request();
        } else {
            let status = status.unwrap_or_else(|| "none".to_string());
            self.send_http_response(
                403,
                vec![("x-auth", "denied"), ("x-auth-status", &status)],
                Some(b"forbidden"),
            );
        }
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.config.enter("on_grpc_call_response", self.id);
        info!("grpc: call response token={token_id} status={status_code} size={response_size}");
        if status_code == 0 {
            let reply = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            self.add_http_request_header("x-grpc-reply", &text(&reply));
            self.resume_http_request();
        } else {
            let (_, message) = self.get_grpc_status();
            let message = message.unwrap_or_default();
            self.send_http_response(
                503,
                vec![
                    ("x-grpc-status", &status_code.to_string()),
                    ("x-grpc-message", &message),
                ],
                None,
            );
        }
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token_id: u32, _num_elements: u32) {
        self.config
            .enter("on_grpc_stream_initial_metadata", self.id);
        for (k, v) in self.get_grpc_stream_initial_metadata() {
            info!("grpc: initial {k}={}", text(&v));
        }
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        self.config.enter("on_grpc_stream_message", self.id);
        let message = text(
            &self
                .get_grpc_stream_message(0, message_size)
                .unwrap_or_default(),
        );
        info!("grpc: message {message}");
        if message == "bye" {
            self.close_grpc_stream(token_id);
        } else {
            self.send_grpc_stream_message(
                token_id,
                Some(format!("ack:{message}").as_bytes()),
                false,
            );
        }
        self.grpc_messages.push(message);
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token_id: u32, _num_elements: u32) {
        self.config
            .enter("on_grpc_stream_trailing_metadata", self.id);
        for (k, v) in self.get_grpc_stream_trailing_metadata() {
            info!("grpc: trailing {k}={}", text(&v));
        }
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        self.config.enter("on_grpc_stream_close", self.id);
        info!("grpc: stream close token={token_id} status={status_code}");
        self.add_http_request_header("x-grpc-messages", &self.grpc_messages.join(","));
        self.add_http_request_header("x-grpc-close", &status_code.to_string());
        self.resume_http_request();
    }

    fn on_done(&mut self) -> bool {
        self.config.enter("on_done", self.id);
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        self.config.enter("on_request_headers", self.id);
        match self.config.scenario.as_str() {
            "headers" => self.request_headers_headers(num_headers),
            "body" => {
                if !self.config.bool_or("keep_content_length", false) {
                    self.remove_http_request_header("content-length");
                }
                Action::Continue
            }
            "local_reply" => {
                if self.config.bool_or("grpc", false) {
                    self.send_grpc_response(
                        GrpcStatusCode::PermissionDenied,
                        Some("denied"),
                        vec![("x-denied", b"1")],
                    );
                } else {
                    let status = self.config.u64_or("status", 403) as u32;
                    self.send_http_response(status, vec![("x-denied", "1")], Some(b"denied"));
                }
                Action::Pause
            }
            "properties" => self.request_headers_properties(),
            "callout" => self.request_headers_callout(),
            "grpc" => self.request_headers_grpc(),
            "shared_data" => self.request_headers_shared_data(),
            "queue" => self.request_headers_queue(),
            "metrics" => self.request_headers_metrics(),
            "logging" => self.request_headers_logging(),
            "close_stream" if self.config.str_or("side", "request") == "request" => {
                self.reset_http_request();
                Action::Pause
            }
            "foreign" => self.request_headers_foreign(),
            "trace" => self.request_headers_trace(),
            "random" => {
                // std's RandomState takes its keys from WASI random_get once per instance.
                let hash = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), "weir");
                self.add_http_request_header("x-random", &format!("{hash:016x}"));
                Action::Continue
            }
            "env" => {
                let var = self.config.str_or("var", "WEIR_TEST");
                let value = std::env::var(&var).unwrap_or_else(|_| "<unset>".to_string());
                self.add_http_request_header("x-env", &value);
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.config.enter("on_request_body", self.id);
        if self.config.is("body_callout") && self.config.str_or("side", "request") == "request" {
            return self.body_callout(body_size, end_of_stream, false);
        }
        if !self.config.is("body") {
            return Action::Continue;
        }
        info!("body: request chunk size={body_size} eos={end_of_stream}");
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        info!("body: request body={}", text(&body));
        if self.config.bool_or("reply_on_body", false) {
            let size = body_size.to_string();
            self.send_http_response(422, vec![("x-body-size", size.as_str())], Some(b"rejected"));
            return Action::Pause;
        }
        match self.config.str_or("body_op", "replace").as_str() {
            "prepend" => self.set_http_request_body(0, 0, b"prepend."),
            "append" => self.set_http_request_body(body_size, 0, b".append"),
            "prepend_append" => {
                self.set_http_request_body(0, 0, b"prepend.");
                // The body grew by the prepended bytes; start at (or past) its end appends.
                self.set_http_request_body(body_size + b"prepend.".len(), 0, b".append");
            }
            "partial" => self.set_http_request_body(0, 1, b"partial.replace."),
            "remove" => self.set_http_request_body(0, body_size, b""),
            _ => self.set_http_request_body(0, body_size, b"replace"),
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        self.config.enter("on_request_trailers", self.id);
        if self.config.is("trailers_callout") {
            // Asks `auth` about the request before its trailers go on (see on_http_call_response).
            let headers = vec![
                (":method", "GET"),
                (":path", "/check"),
                (":authority", "auth"),
            ];
            return match self.dispatch_http_call(
                "auth",
                headers,
                None,
                vec![],
                Duration::from_secs(5),
            ) {
                Ok(_) => Action::Pause,
                Err(_) => Action::Continue,
            };
        }
        if self.config.is("trailers") {
            info!("trailers: request trailers={num_trailers}");
            let seen = self
                .get_http_request_trailer("x-trailer-in")
                .unwrap_or_else(|| "none".to_string());
            self.add_http_request_trailer("x-trailer-seen", &seen);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.config.enter("on_response_headers", self.id);
        match self.config.scenario.as_str() {
            "headers" => {
                self.add_http_response_header("x-filter", "conformance");
                let status = self
                    .get_http_response_header(":status")
                    .unwrap_or_else(|| "none".to_string());
                self.add_http_response_header("x-status-seen", &status);
                Action::Continue
            }
            "body" => {
                if !self.config.bool_or("keep_content_length", false) {
                    self.remove_http_response_header("content-length");
                }
                Action::Continue
            }
            "local_reply" => {
                let status = self
                    .get_http_response_header(":status")
                    .unwrap_or_else(|| "none".to_string());
                info!("local_reply: response status={status}");
                Action::Continue
            }
            "properties" => {
                for (name, value) in &self.props {
                    self.add_http_response_header(&format!("x-prop-{name}"), value);
                }
                if let Some(code) = self.get_property(vec!["response", "code"]) {
                    self.add_http_response_header("x-prop-response.code", &le_u64(&code));
                }
                Action::Continue
            }
            "trace" => {
                let tag = self.config.str_or("tag", "t");
                let order = match self.get_http_response_header("x-order") {
                    Some(o) if !o.is_empty() => format!("{o},{tag}"),
                    _ => tag.clone(),
                };
                self.set_http_response_header("x-order", Some(&order));
                let status = self
                    .get_http_response_header(":status")
                    .unwrap_or_else(|| "none".to_string());
                self.add_http_response_header(&format!("x-trace-{tag}-status"), &status);
                self.response_calls += 1;
                self.add_http_response_header(
                    &format!("x-trace-{tag}-response-calls"),
                    &self.response_calls.to_string(),
                );
                Action::Continue
            }
            "close_stream" if self.config.str_or("side", "request") == "response" => {
                self.reset_http_response();
                Action::Pause
            }
            _ => Action::Continue,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.config.enter("on_response_body", self.id);
        match self.config.scenario.as_str() {
            "body_callout" if self.config.str_or("side", "request") == "response" => {
                self.body_callout(body_size, end_of_stream, true)
            }
            "body" => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let body = self
                    .get_http_response_body(0, body_size)
                    .unwrap_or_default();
                if self.config.str_or("response_op", "upper") == "append" {
                    self.set_http_response_body(body_size, 0, b".append");
                } else {
                    self.set_http_response_body(0, body_size, &body.to_ascii_uppercase());
                }
                Action::Continue
            }
            "trailers" => {
                if end_of_stream {
                    self.add_http_response_trailer("x-response-trailer", "added");
                }
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.config.enter("on_response_trailers", self.id);
        if self.config.is("trailers") {
            self.add_http_response_trailer("x-filter-trailer", "conformance");
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.config.enter("on_log", self.id);
        if self.config.is("trace") && !self.log_read {
            let code = self
                .get_property(vec!["response", "code"])
                .map_or("none".to_string(), |c| le_u64(&c));
            let key = format!("trace.{}.log", self.config.str_or("tag", "t"));
            cas_update(&*self, &key, |old| {
                if old.is_empty() {
                    code.clone()
                } else {
                    format!("{old},{code}")
                }
            });
        }
        if self.config.is("properties") {
            match self.get_property(vec!["response", "code"]) {
                Some(code) => info!("properties: on_log response.code={}", le_u64(&code)),
                None => info!("properties: on_log response.code not found"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP (L4) context
// ---------------------------------------------------------------------------------------------

struct Tcp {
    id: u32,
    config: Rc<Config>,
}

impl Drop for Tcp {
    fn drop(&mut self) {
        trace!("lifecycle: on_delete ctx={}", self.id);
    }
}

impl Context for Tcp {
    fn on_done(&mut self) -> bool {
        self.config.enter("on_done", self.id);
        true
    }
}

impl StreamContext for Tcp {
    fn on_new_connection(&mut self) -> Action {
        self.config.enter("on_new_connection", self.id);
        let address = self
            .get_property(vec!["source", "address"])
            .map_or("none".to_string(), |v| text(&v));
        info!("tcp: source.address={address}");
        Action::Continue
    }

    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        self.config.enter("on_downstream_data", self.id);
        let data = self.get_downstream_data(0, data_size).unwrap_or_default();
        info!("tcp: downstream {} eos={end_of_stream}", text(&data));
        self.set_downstream_data(0, 0, b"D:");
        Action::Continue
    }

    fn on_downstream_close(&mut self, peer_type: PeerType) {
        self.config.enter("on_downstream_close", self.id);
        info!("tcp: downstream close peer={peer_type:?}");
    }

    fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        self.config.enter("on_upstream_data", self.id);
        let data = self.get_upstream_data(0, data_size).unwrap_or_default();
        info!("tcp: upstream {} eos={end_of_stream}", text(&data));
        self.set_upstream_data(data_size, 0, b":U");
        Action::Continue
    }

    fn on_upstream_close(&mut self, peer_type: PeerType) {
        self.config.enter("on_upstream_close", self.id);
        info!("tcp: upstream close peer={peer_type:?}");
    }

    fn on_log(&mut self) {
        self.config.enter("on_log", self.id);
    }
}
