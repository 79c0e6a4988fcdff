//! The native test harness: load a built filter (`.wasm`) through `weir-host-abi` — the same host
//! the proxy runs — with an in-memory embedder, and drive it from a `cargo test`.
//!
//! * [`build_filter`] compiles a filter crate to `wasm32-wasip1` (release) and returns the module's
//!   path, so a filter's own `cargo test` always runs its current source.
//! * [`Filter`] is one VM of the filter with its configuration; [`Filter::load`] returns a
//!   [`FilterBuilder`] for the plugin configuration, root properties, callout clusters, ….
//! * [`HttpStream`] is one request/response through the filter. Each phase call returns a [`Step`]
//!   (the [`Action`] and the effects the filter asked for); the stream keeps the header maps,
//!   bodies, properties and any [`LocalReply`] for assertions.
//! * Callouts are recorded ([`HttpStream::callouts`]) and answered by the test
//!   ([`HttpStream::answer_callout`] with [`callout_response`], [`CalloutResponse::failure`] or
//!   [`callout_timeout_response`]). Logs are captured with their levels ([`Filter::logs`]); the
//!   clock is fake and only moves on [`Filter::tick`] / [`Filter::advance_clock`].
//!
//! Phase methods panic when the VM fails (trap, deadline, memory): the panic message carries the
//! failure and the filter's last log lines (a Rust panic in the filter is logged at CRITICAL), which
//! is what a failing test should show. To assert a failure instead, use the `Result`-returning
//! [`driver`] through [`Filter::driver`].
//!
//! ```no_run
//! use weir_sdk::testing::{Action, Filter, build_filter};
//!
//! let wasm = build_filter(env!("CARGO_MANIFEST_DIR"));
//! let filter = Filter::load(&wasm)?
//!     .config(serde_json::json!({"required_header": "x-user"}))
//!     .build()?;
//! let mut s = filter.http_stream();
//! let step = s.request_headers(&[(":method", "GET"), (":path", "/"), ("x-user", "ana")], true);
//! assert_eq!(step.action, Action::Continue);
//! let step = s.response_headers(&[(":status", "200")], true);
//! assert_eq!(step.action, Action::Continue);
//! assert_eq!(s.response_header("x-filtered"), Some("1"));
//! # Ok::<(), weir_sdk::testing::HarnessError>(())
//! ```
//!
//! Simplifications (inherited from [`embedder::MemStream`]): every map the stream has is readable
//! and writable in every phase, and body buffering has no size limit.
//!
//! About 900 lines: the harness's whole public API (harness, streams, replies, callouts, clocks) in
//! one page a filter author reads top to bottom; the host side is in `embedder.rs`.

mod build;
pub mod driver;
pub mod embedder;

use std::any::Any;
use std::cell::{RefCell, RefMut};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use weir_host_abi::{
    ContextId, Deferred, Effect, LoadError, Module, Outcome, Pairs, Runtime, RuntimeError,
    StartError, VmError, VmFailed,
};

pub use build::{BuildError, build_filter, try_build_filter};
pub use driver::{callout_response, callout_timeout_response};
pub use embedder::{ForeignFn, MemStream};
pub use weir_host_abi::{
    self as host_abi, Action, CalloutResponse, Deadlines, Limits, LogLevel, Status, StreamType,
};

/// Why a filter could not be loaded or started.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The `.wasm` file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The wasmtime runtime could not be created.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The module was rejected (does not compile, or breaks the proxy-wasm ABI).
    #[error("{path} does not load: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<LoadError>,
    },
    /// The start sequence failed (`on_vm_start` / `on_configure` returned false, or trapped).
    #[error("the filter did not start: {source}{}", log_tail(.logs))]
    Start {
        /// Why.
        source: Box<StartError>,
        /// What the filter logged while starting (e.g. why its configuration was rejected).
        logs: Vec<LogLine>,
    },
}

impl HarnessError {
    /// The start failure, when the filter loaded but did not start.
    pub fn start_error(&self) -> Option<&StartError> {
        match self {
            Self::Start { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }

    /// What the filter logged while starting (empty for other errors).
    pub fn logs(&self) -> &[LogLine] {
        match self {
            Self::Start { logs, .. } => logs,
            _ => &[],
        }
    }
}

/// One log line of the filter (`proxy_log`, or WASI stdout = Info / stderr = Error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Level.
    pub level: LogLevel,
    /// Message.
    pub message: String,
}

fn log_tail(logs: &[LogLine]) -> String {
    const TAIL: usize = 20;
    if logs.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n--- filter log (last lines) ---");
    for line in &logs[logs.len().saturating_sub(TAIL)..] {
        out.push_str(&format!("\n[{:?}] {}", line.level, line.message));
    }
    out
}

/// One runtime per test process: compiled modules are cached by hash, so loading the same filter
/// in every test compiles it once. Tests stay apart because each [`Filter`] gets its own vm_id.
fn runtime() -> Result<&'static Runtime, HarnessError> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(r) = RUNTIME.get() {
        return Ok(r);
    }
    let r = Runtime::new()?;
    Ok(RUNTIME.get_or_init(|| r))
}

/// Deadlines for tests: generous, because tests check behaviour (often on a loaded CI machine),
/// not speed. Set [`FilterBuilder::limits`] to test the proxy's real deadlines.
fn test_deadlines() -> Deadlines {
    Deadlines {
        headers: Duration::from_secs(5),
        body: Duration::from_secs(5),
        start: Duration::from_secs(10),
        other: Duration::from_secs(5),
    }
}

/// Configures a [`Filter`] before it starts (returned by [`Filter::load`]).
pub struct FilterBuilder {
    path: PathBuf,
    module: Arc<Module>,
    config: host_abi::PluginConfig,
    vm_id_set: bool,
    plugin: embedder::MemPlugin,
    clock: embedder::FakeClock,
    handle: embedder::PluginHandle,
}

impl std::fmt::Debug for FilterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterBuilder")
            .field("path", &self.path)
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl FilterBuilder {
    /// The plugin configuration (what the manifest's `config:` becomes), serialized as JSON.
    /// Accepts `serde_json::json!({...})` or the filter's own config type.
    pub fn config(mut self, config: impl serde::Serialize) -> Self {
        self.config.configuration =
            serde_json::to_vec(&config).expect("the configuration serializes to JSON");
        self
    }

    /// The plugin configuration as raw bytes (e.g. to test how invalid JSON is rejected).
    pub fn config_bytes(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.config.configuration = config.into();
        self
    }

    /// The VM configuration (buffer 6, `on_vm_start`).
    pub fn vm_config(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.config.vm_configuration = config.into();
        self
    }

    /// The plugin name (`plugin_name`; default: the file name without `.wasm`).
    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.config.name);
        self
    }

    /// The vm id (`plugin_vm_id`). By default each filter gets a unique one, so shared data and
    /// queues never leak between tests; give two filters the same id to let them share.
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        vm_id.clone_into(&mut self.config.vm_id);
        self.vm_id_set = true;
        self
    }

    /// The root id (`plugin_root_id`).
    pub fn root_id(mut self, root_id: &str) -> Self {
        root_id.clone_into(&mut self.config.root_id);
        self
    }

    /// A WASI environment variable (`std::env::var` in the filter).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.config
            .environment
            .push((key.to_owned(), value.to_owned()));
        self
    }

    /// A string property outside any stream (root context, ticks), e.g. `xds.node.id`. Streams
    /// fall back to these too.
    pub fn property(mut self, path: &str, value: &str) -> Self {
        self.plugin = self.plugin.with_property_str(path, value);
        self
    }

    /// A root property already encoded (ints 8-byte LE, bools one byte).
    pub fn property_bytes(mut self, path: &str, value: impl Into<Vec<u8>>) -> Self {
        self.plugin = self.plugin.with_property_bytes(path, value.into());
        self
    }

    /// Only these clusters accept callouts; a callout to another one fails to dispatch
    /// (`BadArgument`), as the proxy rejects an unknown cluster. Default: any name is accepted.
    pub fn clusters(mut self, clusters: &[&str]) -> Self {
        self.plugin = self.plugin.with_clusters(clusters);
        self
    }

    /// The level `proxy_get_log_level` reports (default TRACE: every line is captured).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.plugin = self.plugin.with_log_level(level);
        self
    }

    /// A foreign function the filter can call (`proxy_call_foreign_function`).
    pub fn foreign_function(mut self, name: &str, f: ForeignFn) -> Self {
        self.plugin = self.plugin.with_foreign_function(name, f);
        self
    }

    /// Limits and deadlines (default: host-abi's limits with generous test deadlines).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Starts the VM: `_initialize`, `on_vm_start`, `on_configure`.
    pub fn build(mut self) -> Result<Filter, HarnessError> {
        static NEXT_VM: AtomicU64 = AtomicU64::new(1);
        if !self.vm_id_set {
            let n = NEXT_VM.fetch_add(1, Ordering::Relaxed);
            self.config.vm_id = format!("{}-test-{n}", self.config.name);
        }
        let runtime = runtime()?;
        match weir_host_abi::Vm::new(runtime, self.module, self.config, Box::new(self.plugin)) {
            Ok(vm) => Ok(Filter {
                inner: Rc::new(RefCell::new(driver::Filter {
                    vm,
                    plugin: self.handle,
                    clock: self.clock,
                })),
            }),
            Err(source) => Err(HarnessError::Start {
                source: Box::new(source),
                logs: logs_of(&self.handle),
            }),
        }
    }
}

fn logs_of(handle: &embedder::PluginHandle) -> Vec<LogLine> {
    handle
        .record()
        .logs
        .iter()
        .map(|(level, message)| LogLine {
            level: *level,
            message: message.clone(),
        })
        .collect()
}

fn pairs_to_strings(pairs: &Pairs) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A running filter: one VM with its configuration, captured logs, recorded callouts and fake
/// clock. Cheap to share with its streams (they hold a reference-counted handle).
pub struct Filter {
    inner: Rc<RefCell<driver::Filter>>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("vm", &self.inner.borrow().vm)
            .finish()
    }
}

impl Filter {
    /// Reads and compiles the `.wasm` at `path` (compiled once per test process) and returns a
    /// builder; finish with [`FilterBuilder::build`].
    pub fn load(path: impl AsRef<Path>) -> Result<FilterBuilder, HarnessError> {
        let path = path.as_ref().to_path_buf();
        let wasm = std::fs::read(&path).map_err(|source| HarnessError::Read {
            path: path.clone(),
            source,
        })?;
        let module = runtime()?
            .compile(&wasm)
            .map_err(|source| HarnessError::Load {
                path: path.clone(),
                source: Box::new(source),
            })?;
        let name = path
            .file_stem()
            .map_or_else(|| "filter".to_owned(), |s| s.to_string_lossy().into_owned());
        let mut config = host_abi::PluginConfig::new(name);
        config.limits.deadlines = test_deadlines();
        let clock = embedder::FakeClock::at(driver::EPOCH_START);
        let (plugin, handle) = embedder::MemPlugin::new(clock.clone());
        Ok(FilterBuilder {
            path,
            module,
            config,
            vm_id_set: false,
            plugin,
            clock,
            handle,
        })
    }

    /// Opens a new HTTP stream (a new stream context in the filter).
    pub fn http_stream(&self) -> HttpStream {
        let s = {
            let mut inner = self.inner.borrow_mut();
            let r = inner.open_http(MemStream::default());
            expect_vm(&inner, r, "creating an HTTP stream context")
        };
        HttpStream {
            filter: self.inner.clone(),
            s,
            local_reply: None,
            finished: false,
        }
    }

    /// Every line the filter logged so far, in order.
    pub fn logs(&self) -> Vec<LogLine> {
        logs_of(&self.inner.borrow().plugin)
    }

    /// The messages logged so far (any level), in order.
    pub fn log_messages(&self) -> Vec<String> {
        self.logs().into_iter().map(|l| l.message).collect()
    }

    /// True if some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs().iter().any(|l| l.message.contains(needle))
    }

    /// Forgets the logs captured so far (e.g. the start-up lines).
    pub fn clear_logs(&self) {
        self.inner.borrow().plugin.record().logs.clear();
    }

    /// Every HTTP callout dispatched so far by any context, in order (answered ones included).
    pub fn callouts(&self) -> Vec<Callout> {
        self.inner
            .borrow()
            .plugin
            .http_calls()
            .iter()
            .map(Callout::from_request)
            .collect()
    }

    /// Answers a callout dispatched outside a stream (e.g. from `on_tick`); no stream is lent.
    /// Answer a stream's callouts with [`HttpStream::answer_callout`].
    pub fn answer_callout(&self, token: u32, response: CalloutResponse) -> Step {
        let mut inner = self.inner.borrow_mut();
        let r = inner.answer_http_call(token, response, None);
        let out = expect_vm(&inner, r, "on_http_call_response");
        Step::new(out, None)
    }

    /// The tick period the filter asked for (`None`: no ticks).
    pub fn tick_period(&self) -> Option<Duration> {
        self.inner.borrow().vm.tick_period()
    }

    /// Advances the clock by the tick period and calls `on_tick`; `None` when no tick is set.
    pub fn tick(&self) -> Option<Step> {
        let mut inner = self.inner.borrow_mut();
        let r = inner.fire_tick();
        expect_vm(&inner, r, "on_tick").map(|out| Step::new(out, None))
    }

    /// Moves the filter's clock forward (what `get_current_time` and WASI clocks report).
    pub fn advance_clock(&self, by: Duration) {
        self.inner.borrow().clock.advance(by);
    }

    /// The filter's current wall-clock time (starts at [`driver::EPOCH_START`]).
    pub fn now(&self) -> SystemTime {
        self.inner.borrow().clock.now()
    }

    /// The failure, once the VM has failed (it never runs again).
    pub fn failure(&self) -> Option<VmFailed> {
        self.inner.borrow().vm.failure().cloned()
    }

    /// The lower-level driver (the `Vm`, the plugin record, the clock), for what this API does not
    /// cover: `Result`-returning calls, TCP streams, gRPC, queues. Do not hold it across calls to
    /// this filter's or its streams' methods (they borrow it too, and would panic).
    pub fn driver(&self) -> RefMut<'_, driver::Filter> {
        self.inner.borrow_mut()
    }
}

/// Unwraps a VM result, panicking with the failure and the filter's last log lines.
fn expect_vm<T>(filter: &driver::Filter, r: Result<T, VmError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!(
            "the filter failed during {what}: {e}{}",
            log_tail(&logs_of(&filter.plugin))
        ),
    }
}

/// A local reply the filter sent (`send_http_response` / `send_grpc_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u32,
    /// Headers the filter added (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Body (for gRPC replies, the `grpc-message`).
    pub body: Vec<u8>,
    /// `Some(code)` for a gRPC reply.
    pub grpc_status: Option<i32>,
    /// Details for access logs.
    pub details: String,
}

impl LocalReply {
    fn from_abi(r: &host_abi::LocalReply) -> Self {
        Self {
            status: r.status,
            headers: pairs_to_strings(&r.headers),
            body: r.body.clone(),
            grpc_status: r.grpc_status,
            details: r.details.clone(),
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// The body as text (lossy UTF-8).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What one callback did: its [`Action`] and the effects it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `Continue` or `Pause` (a local reply forces `Pause`).
    pub action: Action,
    /// The local reply sent in this callback, if any.
    pub local_reply: Option<LocalReply>,
    /// Directions this stream resumed (`proxy_continue_stream`), e.g. after a callout answer.
    pub resumed: Vec<StreamType>,
    /// Directions this stream closed (`proxy_close_stream`, a reset).
    pub closed: Vec<StreamType>,
    /// Every deferred effect, raw, with its target context.
    pub effects: Vec<Deferred>,
}

impl Step {
    /// `stream`: only effects targeting that context count as resumed/closed; `None`: all do.
    fn new(out: Outcome, stream: Option<ContextId>) -> Self {
        let mine = |d: &Deferred| stream.is_none_or(|c| c == d.context);
        let directions = |want: fn(&Effect) -> Option<StreamType>| {
            out.effects
                .iter()
                .filter(|d| mine(d))
                .filter_map(|d| want(&d.effect))
                .collect()
        };
        Self {
            action: out.action,
            local_reply: out.local_reply().map(LocalReply::from_abi),
            resumed: directions(|e| match e {
                Effect::ContinueStream(t) => Some(*t),
                _ => None,
            }),
            closed: directions(|e| match e {
                Effect::CloseStream(t) => Some(*t),
                _ => None,
            }),
            effects: out.effects,
        }
    }

    /// True if the callback returned `Continue`.
    pub fn is_continue(&self) -> bool {
        self.action == Action::Continue
    }

    /// True if the callback returned `Pause` (or sent a local reply).
    pub fn is_pause(&self) -> bool {
        self.action == Action::Pause
    }
}

/// An HTTP callout the filter dispatched (`dispatch_http_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    /// Token to answer with.
    pub token: u32,
    /// The dispatching context (a stream, or the root).
    pub context: ContextId,
    /// Upstream cluster.
    pub upstream: String,
    /// Request headers, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Vec<(String, String)>,
    /// Timeout (`None`: none).
    pub timeout: Option<Duration>,
}

impl Callout {
    fn from_request(r: &host_abi::HttpCallRequest) -> Self {
        Self {
            token: r.token,
            context: r.context,
            upstream: r.upstream.clone(),
            headers: pairs_to_strings(&r.headers),
            body: r.body.clone(),
            trailers: pairs_to_strings(&r.trailers),
            timeout: r.timeout,
        }
    }

    /// The first value of header `name` (case-insensitive; `:path`, `:method` included).
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
}

/// One HTTP request/response through the filter. Drive the phases in Envoy's order
/// (request headers → body → trailers → response headers → body → trailers) and inspect the
/// maps and bodies as the filter left them. Dropping an unfinished stream finishes it
/// ([`HttpStream::finish`]), ignoring errors.
pub struct HttpStream {
    filter: Rc<RefCell<driver::Filter>>,
    s: driver::HttpStream,
    local_reply: Option<LocalReply>,
    finished: bool,
}

impl std::fmt::Debug for HttpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStream")
            .field("context", &self.s.ctx)
            .field("stream", self.mem())
            .field("local_reply", &self.local_reply)
            .finish()
    }
}

impl HttpStream {
    /// Runs one callback through the driver and records its local reply.
    fn run(
        &mut self,
        what: &str,
        call: impl FnOnce(&mut driver::Filter, &mut driver::HttpStream) -> Result<Outcome, VmError>,
    ) -> Step {
        assert!(!self.finished, "{what} on a finished stream");
        let out = {
            let mut filter = self.filter.borrow_mut();
            let r = call(&mut filter, &mut self.s);
            expect_vm(&filter, r, what)
        };
        let step = Step::new(out, Some(self.s.ctx));
        if let Some(reply) = &step.local_reply {
            self.local_reply = Some(reply.clone());
        }
        step
    }

    /// The stream context id.
    pub fn context(&self) -> ContextId {
        self.s.ctx
    }

    /// Installs `headers` as the request headers and calls `on_request_headers`
    /// (`end_of_stream`: the request has no body).
    pub fn request_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Step {
        self.mem_mut().request_headers = Some(embedder::headers(headers));
        self.run("on_request_headers", |f, s| {
            f.request_headers(s, end_of_stream)
        })
    }

    /// Delivers one request body chunk (`on_request_body`). Envoy's buffering: while the filter
    /// returns `Pause` the chunks accumulate and each callback sees the whole body so far; on
    /// `Continue` the buffer is forwarded ([`HttpStream::forwarded_request_body`]).
    pub fn request_body(&mut self, chunk: impl AsRef<[u8]>, end_of_stream: bool) -> Step {
        self.run("on_request_body", |f, s| {
            f.request_body(s, chunk.as_ref(), end_of_stream)
        })
    }

    /// Installs `trailers` and calls `on_request_trailers`.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Step {
        self.run("on_request_trailers", |f, s| {
            f.request_trailers(s, trailers)
        })
    }

    /// Installs `headers` (include `:status`) as the response headers and calls
    /// `on_response_headers`.
    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Step {
        let headers = embedder::headers(headers);
        self.run("on_response_headers", |f, s| {
            f.response_headers(s, headers, end_of_stream)
        })
    }

    /// Delivers one response body chunk (`on_response_body`), with the same buffering as
    /// [`HttpStream::request_body`].
    pub fn response_body(&mut self, chunk: impl AsRef<[u8]>, end_of_stream: bool) -> Step {
        self.run("on_response_body", |f, s| {
            f.response_body(s, chunk.as_ref(), end_of_stream)
        })
    }

    /// Installs `trailers` and calls `on_response_trailers`.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Step {
        self.run("on_response_trailers", |f, s| {
            f.response_trailers(s, trailers)
        })
    }

    /// Ends the stream as the proxy does: `on_log` → `on_done` → `on_delete`.
    pub fn finish(&mut self) {
        assert!(!self.finished, "finish on a finished stream");
        self.finished = true;
        let mut filter = self.filter.borrow_mut();
        let r = filter.finish(&mut self.s);
        expect_vm(
            &filter,
            r,
            "finishing the stream (on_log/on_done/on_delete)",
        );
    }

    /// The callouts this stream dispatched, in order (answered ones included).
    pub fn callouts(&self) -> Vec<Callout> {
        self.filter
            .borrow()
            .plugin
            .http_calls()
            .iter()
            .filter(|c| c.context == self.s.ctx)
            .map(Callout::from_request)
            .collect()
    }

    /// Answers callout `token` with `response` (`on_http_call_response`, this stream lent): build
    /// it with [`callout_response`], [`CalloutResponse::failure`] (reset / no upstream) or
    /// [`callout_timeout_response`] (what the proxy delivers on a timeout: a 504).
    pub fn answer_callout(&mut self, token: u32, response: CalloutResponse) -> Step {
        self.run("on_http_call_response", |f, s| {
            f.answer_http_call(token, response, Some(s))
        })
    }

    /// The last local reply the filter sent on this stream, in any step.
    pub fn local_reply(&self) -> Option<&LocalReply> {
        self.local_reply.as_ref()
    }

    /// The first value of request header `name` (case-insensitive), as the filter left it.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        header_in(self.mem().request_headers.as_ref(), name)
    }

    /// Every request header, in order.
    pub fn request_header_list(&self) -> Vec<(String, String)> {
        header_list(self.mem().request_headers.as_ref())
    }

    /// The first value of request trailer `name`.
    pub fn request_trailer(&self, name: &str) -> Option<&str> {
        header_in(self.mem().request_trailers.as_ref(), name)
    }

    /// The first value of response header `name`.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        header_in(self.mem().response_headers.as_ref(), name)
    }

    /// Every response header, in order.
    pub fn response_header_list(&self) -> Vec<(String, String)> {
        header_list(self.mem().response_headers.as_ref())
    }

    /// The first value of response trailer `name` (trailers the filter added included).
    pub fn response_trailer(&self, name: &str) -> Option<&str> {
        header_in(self.mem().response_trailers.as_ref(), name)
    }

    /// Request body bytes the filter let through (`Continue`), in order, as edited.
    pub fn forwarded_request_body(&self) -> &[u8] {
        &self.s.forwarded_request_body
    }

    /// Request body bytes the filter holds buffered now (it returned `Pause`).
    pub fn buffered_request_body(&self) -> &[u8] {
        &self.mem().request_body
    }

    /// Response body bytes the filter let through, in order, as edited.
    pub fn forwarded_response_body(&self) -> &[u8] {
        &self.s.forwarded_response_body
    }

    /// Response body bytes the filter holds buffered now.
    pub fn buffered_response_body(&self) -> &[u8] {
        &self.mem().response_body
    }

    /// Sets a string property of this stream (`source.address` = `"10.0.0.1:4242"`,
    /// `connection.uri_san_peer_certificate`, …). `request.path`, `.method`, `.host`, `.scheme`
    /// and `response.code` are derived from the headers unless set here.
    pub fn set_property(&mut self, path: &str, value: &str) -> &mut Self {
        self.set_property_bytes(path, value.as_bytes().to_vec())
    }

    /// Sets an integer property (8 bytes little-endian, e.g. `source.port`).
    pub fn set_property_u64(&mut self, path: &str, value: u64) -> &mut Self {
        self.set_property_bytes(path, value.to_le_bytes().to_vec())
    }

    /// Sets a boolean property (one byte, e.g. `connection.mtls`).
    pub fn set_property_bool(&mut self, path: &str, value: bool) -> &mut Self {
        self.set_property_bytes(path, vec![u8::from(value)])
    }

    /// Sets a property already encoded.
    pub fn set_property_bytes(&mut self, path: &str, value: Vec<u8>) -> &mut Self {
        self.mem_mut().properties.insert(path.to_owned(), value);
        self
    }

    /// The raw value of a stream property set by the test or the filter (dotted path).
    pub fn property(&self, path: &str) -> Option<&[u8]> {
        self.mem().properties.get(path).map(Vec::as_slice)
    }

    /// A stream property as text.
    pub fn property_str(&self, path: &str) -> Option<&str> {
        self.property(path)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The cluster the filter routed to (`weir.route.cluster`).
    pub fn route_cluster(&self) -> Option<&str> {
        self.property_str(crate::route::CLUSTER)
    }

    /// The response timeout the filter set (`weir.route.timeout_ms`; `None` if unset or not a
    /// decimal number).
    pub fn route_timeout(&self) -> Option<Duration> {
        self.property_str(crate::route::TIMEOUT_MS)?
            .parse()
            .ok()
            .map(Duration::from_millis)
    }

    /// The upstream path the filter set (`weir.route.path`).
    pub fn route_path(&self) -> Option<&str> {
        self.property_str(crate::route::PATH)
    }

    /// The retry count the filter set (`weir.route.retries`).
    pub fn route_retries(&self) -> Option<u32> {
        self.property_str(crate::route::RETRIES)?.parse().ok()
    }

    /// The per-try timeout the filter set (`weir.route.per_try_timeout_ms`).
    pub fn route_per_try_timeout(&self) -> Option<Duration> {
        self.property_str(crate::route::PER_TRY_TIMEOUT_MS)?
            .parse()
            .ok()
            .map(Duration::from_millis)
    }

    /// The in-memory stream (every map, buffer and property).
    pub fn mem(&self) -> &MemStream {
        let any: &dyn Any = self.s.stream.as_ref();
        any.downcast_ref::<MemStream>()
            .expect("the lent stream is a MemStream")
    }

    /// The in-memory stream, to change it between phases.
    pub fn mem_mut(&mut self) -> &mut MemStream {
        self.s.mem()
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        if self.finished || std::thread::panicking() {
            return;
        }
        if let Ok(mut filter) = self.filter.try_borrow_mut()
            && !filter.vm.is_failed()
        {
            // Errors here would surface as a panic in drop; the test has already asserted what
            // it cares about, and an explicit finish() reports them.
            let _ = filter.finish(&mut self.s);
        }
    }
}

fn header_in<'a>(map: Option<&'a embedder::HeaderMap>, name: &str) -> Option<&'a str> {
    embedder::header(map?, name)
}

fn header_list(map: Option<&embedder::HeaderMap>) -> Vec<(String, String)> {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    })
    .unwrap_or_default()
}
