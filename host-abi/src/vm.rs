//! `Vm`: one instance of a filter module (one wasmtime `Store`), driven by one thread.
//!
//! It runs the lifecycle in Envoy's order, sets a deadline before every callback, lends the
//! embedder's stream to the store for stream callbacks, collects deferred effects into an
//! [`Outcome`], and turns any trap into a permanent [`VmFailed`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, TypedFunc, WasmParams, WasmResults};

use crate::config::PluginConfig;
use crate::embedder::{CalloutResponse, PluginHost, StreamBox};
use crate::error::{FailureReason, StartError, VmError, VmFailed};
use crate::memory::HostTrap;
use crate::metrics::VmMetrics;
use crate::phases::HttpPhases;
use crate::runtime::{Module, Runtime};
use crate::state::{CallState, ContextKind, Finished, GrpcData, HostState, PluginShared};
use crate::stats::FilterStats;
use crate::types::{Action, ContextId, Pairs, PeerType, StreamType};

/// A local reply the guest asked for (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u32,
    /// Extra headers (names lower-cased).
    pub headers: Pairs,
    /// Body (for gRPC replies: the `grpc-message`).
    pub body: Vec<u8>,
    /// `Some(code)` for a gRPC reply (trailers-only with `grpc-status`), `None` for plain HTTP.
    pub grpc_status: Option<i32>,
    /// Details for access logs (spaces replaced by `_`).
    pub details: String,
}

/// An effect the guest requested during a callback; the embedder applies it after the callback
/// returned (never re-entrantly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `proxy_continue_stream`: resume a paused direction.
    ContinueStream(StreamType),
    /// `proxy_close_stream`: reset the HTTP stream / close the L4 side.
    CloseStream(StreamType),
    /// `proxy_send_local_response`: answer downstream, stop the chain.
    LocalReply(LocalReply),
}

/// An effect and the context it applies to (the effective context when it was requested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    /// Target context.
    pub context: ContextId,
    /// The effect.
    pub effect: Effect,
}

/// The result of a callback.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// What the callback returned (forced to `Pause` when it sent a local reply). Callbacks without
    /// a result report `Continue`.
    pub action: Action,
    /// Deferred effects, in the order requested.
    pub effects: Vec<Deferred>,
}

impl Outcome {
    /// The first local reply requested, if any.
    pub fn local_reply(&self) -> Option<&LocalReply> {
        self.effects.iter().find_map(|d| match &d.effect {
            Effect::LocalReply(r) => Some(r),
            _ => None,
        })
    }
}

/// `(context, size_or_count, end_of_stream) -> Action`, the shape of most stream callbacks.
type StreamCallback = TypedFunc<(u32, u32, u32), u32>;

/// `(root, token, size_count_or_status)`, the shape of the gRPC callbacks.
type GrpcCallback = TypedFunc<(u32, u32, u32), ()>;

/// The callback exports, looked up once per instance (absent ones behave like the SDK's defaults).
#[allow(clippy::type_complexity)] // one field per export, typed exactly as the ABI declares it
struct Exports {
    initialize: Option<TypedFunc<(), ()>>,
    context_create: Option<TypedFunc<(u32, u32), ()>>,
    vm_start: Option<TypedFunc<(u32, u32), u32>>,
    configure: Option<TypedFunc<(u32, u32), u32>>,
    tick: Option<TypedFunc<u32, ()>>,
    queue_ready: Option<TypedFunc<(u32, u32), ()>>,
    new_connection: Option<TypedFunc<u32, u32>>,
    downstream_data: Option<TypedFunc<(u32, u32, u32), u32>>,
    upstream_data: Option<TypedFunc<(u32, u32, u32), u32>>,
    downstream_close: Option<TypedFunc<(u32, u32), ()>>,
    upstream_close: Option<TypedFunc<(u32, u32), ()>>,
    request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    request_trailers: Option<TypedFunc<(u32, u32), u32>>,
    response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    response_trailers: Option<TypedFunc<(u32, u32), u32>>,
    http_call_response: Option<TypedFunc<(u32, u32, u32, u32, u32), ()>>,
    grpc_initial: Option<GrpcCallback>,
    grpc_trailing: Option<GrpcCallback>,
    grpc_receive: Option<GrpcCallback>,
    grpc_close: Option<GrpcCallback>,
    foreign: Option<TypedFunc<(u32, u32, u32), ()>>,
    log: Option<TypedFunc<u32, ()>>,
    done: Option<TypedFunc<u32, u32>>,
    delete: Option<TypedFunc<u32, ()>>,
}

/// One callback in this many is timed for `FilterStats::callback_nanos` (scaled up by as much).
const TIMING_SAMPLE: u64 = 16;

/// Which deadline applies to a callback (an index into `Vm::budgets`).
#[derive(Clone, Copy)]
enum Budget {
    Start,
    Headers,
    Body,
    Other,
}

/// One running instance of a filter. Use it from one thread at a time (it is `Send`, not `Sync`).
pub struct Vm {
    runtime: Runtime,
    module: Arc<Module>,
    store: Store<HostState>,
    /// Behind an `Arc` so a callback can hold its export while `self` is borrowed mutably:
    /// cloning a `TypedFunc` clones its wasmtime `FuncType` (a registry round trip) per call.
    exports: Exports,
    /// Callbacks made (for timing samples).
    calls: u64,
    root: ContextId,
    next_context: ContextId,
    failed: Option<Box<VmFailed>>,
    stats: Arc<FilterStats>,
    /// Per [`Budget`]: the CPU-time budget and its epoch tick count.
    budgets: [(Duration, u64); 4],
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("plugin", &self.store.data().plugin.name)
            .field("module", &self.module.sha256_hex())
            .field("root", &self.root)
            .field("failed", &self.failed.is_some())
            .finish()
    }
}

impl Vm {
    /// Instantiates `module` and runs the start sequence: `_initialize` (or `_start`),
    /// `proxy_on_context_create(root, 0)`, `proxy_on_vm_start`, `proxy_on_configure`.
    pub fn new(
        runtime: &Runtime,
        module: Arc<Module>,
        config: PluginConfig,
        host: Box<dyn PluginHost>,
    ) -> Result<Vm, StartError> {
        runtime
            .ensure_ticker()
            .map_err(|e| StartError::Instantiate(e.to_string()))?;
        let plugin = Arc::new(PluginShared {
            environ: config
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={v}").into_bytes())
                .collect(),
            name: config.name,
            root_id: config.root_id,
            vm_id: config.vm_id,
            vm_configuration: config.vm_configuration,
            configuration: config.configuration,
            limits: config.limits,
        });
        let state = HostState::new(
            plugin,
            host,
            runtime.shared().clone(),
            VmMetrics::new(runtime.metrics().clone()),
        );
        let mut store = Store::new(runtime.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut ctx| Ok(crate::deadline::on_expiry(ctx.data_mut())));
        let start_ticks = runtime.ticks(config.limits.deadlines.start);
        store
            .data_mut()
            .deadline
            .arm(start_ticks, config.limits.deadlines.start);
        store.set_epoch_deadline(start_ticks);
        let instance = module
            .pre()
            .instantiate(&mut store)
            .map_err(|e| StartError::Instantiate(format!("{e:?}")))?;

        let memory = instance.get_memory(&mut store, "memory");
        let alloc = instance
            .get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<u32, u32>(&mut store, "malloc"))
            .ok();
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc.map(Arc::new);
        macro_rules! export {
            ($name:literal) => {
                instance.get_typed_func(&mut store, $name).ok()
            };
        }
        let exports = Exports {
            initialize: instance
                .get_typed_func::<(), ()>(&mut store, "_initialize")
                .or_else(|_| instance.get_typed_func::<(), ()>(&mut store, "_start"))
                .ok(),
            context_create: export!("proxy_on_context_create"),
            vm_start: export!("proxy_on_vm_start"),
            configure: export!("proxy_on_configure"),
            tick: export!("proxy_on_tick"),
            queue_ready: export!("proxy_on_queue_ready"),
            new_connection: export!("proxy_on_new_connection"),
            downstream_data: export!("proxy_on_downstream_data"),
            upstream_data: export!("proxy_on_upstream_data"),
            downstream_close: export!("proxy_on_downstream_connection_close"),
            upstream_close: export!("proxy_on_upstream_connection_close"),
            request_headers: export!("proxy_on_request_headers"),
            request_body: export!("proxy_on_request_body"),
            request_trailers: export!("proxy_on_request_trailers"),
            response_headers: export!("proxy_on_response_headers"),
            response_body: export!("proxy_on_response_body"),
            response_trailers: export!("proxy_on_response_trailers"),
            http_call_response: export!("proxy_on_http_call_response"),
            grpc_initial: export!("proxy_on_grpc_receive_initial_metadata"),
            grpc_trailing: export!("proxy_on_grpc_receive_trailing_metadata"),
            grpc_receive: export!("proxy_on_grpc_receive"),
            grpc_close: export!("proxy_on_grpc_close"),
            foreign: export!("proxy_on_foreign_function"),
            log: export!("proxy_on_log"),
            done: export!("proxy_on_done"),
            delete: export!("proxy_on_delete"),
        };
        let exported = [
            (
                exports.request_headers.is_some(),
                HttpPhases::REQUEST_HEADERS,
            ),
            (exports.request_body.is_some(), HttpPhases::REQUEST_BODY),
            (
                exports.request_trailers.is_some(),
                HttpPhases::REQUEST_TRAILERS,
            ),
            (
                exports.response_headers.is_some(),
                HttpPhases::RESPONSE_HEADERS,
            ),
            (exports.response_body.is_some(), HttpPhases::RESPONSE_BODY),
            (
                exports.response_trailers.is_some(),
                HttpPhases::RESPONSE_TRAILERS,
            ),
            (exports.log.is_some(), HttpPhases::LOG),
            (exports.done.is_some(), HttpPhases::DONE),
        ]
        .into_iter()
        .filter(|(present, _)| *present)
        .fold(HttpPhases::NONE, |acc, (_, p)| acc | p);
        store.data_mut().exported_phases = exported;
        store.data_mut().http_phases = exported;
        let stats = config.stats;
        let mut vm = Vm {
            runtime: runtime.clone(),
            module,
            store,
            exports,
            calls: 0,
            root: 1,
            next_context: 2,
            failed: None,
            stats,
            budgets: [(Duration::ZERO, 0); 4],
        };
        {
            // Each budget's epoch tick count is computed once (a u128 division per callback
            // showed in profiles).
            let d = vm.store.data().plugin.limits.deadlines;
            for (i, budget) in [d.start, d.headers, d.body, d.other]
                .into_iter()
                .enumerate()
            {
                vm.budgets[i] = (budget, runtime.ticks(budget));
            }
        }
        vm.store.data_mut().root = 1;
        vm.store.data_mut().contexts.insert(1, ContextKind::Root);

        let fail = |phase: &'static str| {
            move |e: VmError| match e {
                VmError::Failed(failure) => StartError::Failed {
                    phase,
                    failure: *failure,
                },
                other => StartError::Instantiate(other.to_string()),
            }
        };
        vm.invoke(
            "_initialize",
            |ex| ex.initialize.as_ref(),
            0,
            Budget::Start,
            (),
            None,
            |_| {},
        )
        .map_err(fail("_initialize"))?;
        vm.invoke(
            "proxy_on_context_create",
            |ex| ex.context_create.as_ref(),
            1,
            Budget::Start,
            (1, 0),
            None,
            |_| {},
        )
        .map_err(fail("proxy_on_context_create"))?;
        let size = vm.store.data().plugin.vm_configuration.len() as u32;
        let (ok, _) = vm
            .invoke(
                "proxy_on_vm_start",
                |ex| ex.vm_start.as_ref(),
                1,
                Budget::Start,
                (1, size),
                None,
                |_| {},
            )
            .map_err(fail("proxy_on_vm_start"))?;
        if ok == Some(0) {
            return Err(StartError::VmStartRejected);
        }
        let size = vm.store.data().plugin.configuration.len() as u32;
        let (ok, _) = vm
            .invoke(
                "proxy_on_configure",
                |ex| ex.configure.as_ref(),
                1,
                Budget::Start,
                (1, size),
                None,
                |c| c.in_configure = true,
            )
            .map_err(fail("proxy_on_configure"))?;
        if ok == Some(0) {
            return Err(StartError::ConfigureRejected);
        }
        Ok(vm)
    }

    /// The HTTP callbacks this VM runs: the ones its module exports, narrowed by what it
    /// declared (see [`crate::phases`]). The others are skipped (they count as `Continue`).
    pub fn http_phases(&self) -> HttpPhases {
        self.store.data().http_phases
    }

    fn skips(&self, phase: HttpPhases) -> bool {
        !self.store.data().http_phases.contains(phase)
    }

    /// Whether an HTTP stream callback is skipped; its context is checked all the same.
    fn skipped(&self, ctx: ContextId, phase: HttpPhases) -> Result<bool, VmError> {
        if self.skips(phase) {
            self.check_stream(ctx, ContextKind::Http)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The root context id.
    pub fn root_context(&self) -> ContextId {
        self.root
    }

    /// The module this VM runs.
    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// The runtime this VM belongs to.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The plugin's counters.
    pub fn stats(&self) -> &Arc<FilterStats> {
        &self.stats
    }

    /// The failure, if the VM has failed (it will never run again).
    pub fn failure(&self) -> Option<&VmFailed> {
        self.failed.as_deref()
    }

    /// True once the VM failed.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// The tick period the guest asked for (`None` = no ticks).
    pub fn tick_period(&self) -> Option<Duration> {
        self.store.data().tick_period
    }

    /// Live stream contexts.
    pub fn live_streams(&self) -> Vec<ContextId> {
        let mut v: Vec<ContextId> = self
            .store
            .data()
            .contexts
            .iter()
            .filter(|(_, k)| **k != ContextKind::Root)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    /// The context that dispatched HTTP callout `token`, while it is outstanding (so the embedder
    /// can lend that stream to [`Vm::on_http_call_response`]).
    pub fn http_call_context(&self, token: u32) -> Option<ContextId> {
        self.store.data().http_calls.get(&token).copied()
    }

    /// The context that opened gRPC call/stream `token`, while it is outstanding.
    pub fn grpc_call_context(&self, token: u32) -> Option<ContextId> {
        self.store.data().grpc_calls.get(&token).copied()
    }

    /// Current linear memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store
            .data()
            .memory
            .map(|m| m.data_size(&self.store))
            .unwrap_or(0)
    }

    fn new_context(&mut self, kind: ContextKind) -> Result<ContextId, VmError> {
        self.check_alive()?;
        let id = self.next_context;
        self.next_context = self.next_context.checked_add(1).unwrap_or(2);
        self.store.data_mut().contexts.insert(id, kind);
        self.invoke(
            "proxy_on_context_create",
            |ex| ex.context_create.as_ref(),
            id,
            Budget::Other,
            (id, self.root),
            None,
            |_| {},
        )?;
        Ok(id)
    }

    /// Creates an HTTP stream context (`proxy_on_context_create(id, root)`).
    pub fn create_http_stream(&mut self) -> Result<ContextId, VmError> {
        self.new_context(ContextKind::Http)
    }

    /// Creates an L4 stream context (`proxy_on_context_create(id, root)`); call
    /// [`Vm::on_new_connection`] next.
    pub fn create_tcp_stream(&mut self) -> Result<ContextId, VmError> {
        self.new_context(ContextKind::Tcp)
    }

    fn check_alive(&self) -> Result<(), VmError> {
        match &self.failed {
            Some(f) => Err(VmError::Failed(f.clone())),
            None => Ok(()),
        }
    }

    fn check_stream(&self, ctx: ContextId, kind: ContextKind) -> Result<(), VmError> {
        self.check_alive()?;
        match self.store.data().contexts.get(&ctx) {
            Some(k) if *k == kind => Ok(()),
            _ => Err(VmError::UnknownContext(ctx)),
        }
    }

    /// Runs one callback: resets the per-call state, lends the stream, sets the deadline, calls,
    /// returns the stream, classifies failures. `Ok((None, _))` = export absent (not called).
    #[allow(clippy::too_many_arguments)]
    fn invoke<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        func: impl for<'a> FnOnce(&'a Exports) -> Option<&'a TypedFunc<P, R>>,
        ctx: ContextId,
        budget: Budget,
        params: P,
        stream: Option<(ContextId, &mut StreamBox)>,
        setup: impl FnOnce(&mut CallState),
    ) -> Result<(Option<R>, Finished), VmError> {
        self.check_alive()?;
        // Borrowed from its own field, so the store can be lent to the call at the same time.
        let Some(func) = func(&self.exports) else {
            return Ok((None, Finished::default()));
        };
        let (deadline, ticks) = self.budgets[budget as usize];
        {
            // The call state is clean here: every callback resets it when it returns.
            let st = self.store.data_mut();
            st.call.current = ctx;
            setup(&mut st.call);
        }
        let mut lent = stream;
        if let Some((sctx, s)) = lent.as_mut() {
            let st = self.store.data_mut();
            std::mem::swap(&mut st.stream, *s);
            st.stream_ctx = Some(*sctx);
        }
        self.store.data_mut().deadline.arm(ticks, deadline);
        self.store.set_epoch_deadline(ticks);
        // Callback time is sampled (one call in TIMING_SAMPLE, scaled up): two clock reads on
        // every callback were a visible share of a short filter chain's cost. The sample is the
        // top bits of a Weyl sequence rather than every 16th call: a stream makes a fixed number
        // of calls, and a plain modulus would time the same phases over and over (the per-phase
        // histograms would see some phases never).
        self.calls = self.calls.wrapping_add(1);
        let timed = self.calls.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60 == 0;
        let started = timed.then(Instant::now);
        let result = func.call(&mut self.store, params);
        let elapsed = started.map(|t| t.elapsed());
        if let Some((_, s)) = lent.as_mut() {
            let st = self.store.data_mut();
            std::mem::swap(&mut st.stream, *s);
            st.stream_ctx = None;
        }
        let call = self.store.data_mut().call.finish();
        FilterStats::add(&self.stats.callbacks, 1);
        if let Some(elapsed) = elapsed {
            let nanos = elapsed.as_nanos() as u64;
            FilterStats::add(&self.stats.callback_nanos, nanos * TIMING_SAMPLE);
            self.stats.observe_callback(name, nanos, TIMING_SAMPLE);
            // The memory gauge is refreshed on the sampled calls too: reading the memory size
            // on every callback showed in profiles.
            self.stats
                .memory_bytes
                .store(self.memory_bytes() as u64, Relaxed);
        }
        match result {
            Ok(r) => Ok((Some(r), call)),
            Err(e) => Err(VmError::Failed(self.fail(name, &e))),
        }
    }

    /// Marks the VM failed and builds the report.
    fn fail(&mut self, callback: &'static str, e: &wasmtime::Error) -> Box<VmFailed> {
        let (reason, message) = if let Some(t) = e.downcast_ref::<HostTrap>() {
            (t.reason, t.message.clone())
        } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            (FailureReason::Deadline, format!("{e:?}"))
        } else if self.store.data().limiter.hit {
            (FailureReason::MemoryLimit, format!("{e:?}"))
        } else {
            (FailureReason::Trap, format!("{e:?}"))
        };
        FilterStats::add(&self.stats.traps, 1);
        match reason {
            FailureReason::Deadline => FilterStats::add(&self.stats.deadline_hits, 1),
            FailureReason::MemoryLimit => FilterStats::add(&self.stats.memory_limit_hits, 1),
            _ => {}
        }
        let failed = Box::new(VmFailed {
            plugin: self.store.data().plugin.name.clone(),
            reason,
            callback,
            message,
            live_streams: self.live_streams(),
        });
        tracing::warn!(plugin = %failed.plugin, ?reason, callback, "filter VM failed: {}", failed.message);
        self.failed = Some(failed.clone());
        failed
    }

    fn outcome(&mut self, raw: Option<u32>, call: Finished) -> Outcome {
        let mut action = raw.map(|r| Action::from_raw(r as i32)).unwrap_or_default();
        if call.local_reply {
            action = Action::Pause;
        }
        Outcome {
            action,
            effects: call.effects,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_call3(
        &mut self,
        name: &'static str,
        pick: fn(&Exports) -> &Option<StreamCallback>,
        kind: ContextKind,
        ctx: ContextId,
        stream: &mut StreamBox,
        budget: Budget,
        a: u32,
        b: bool,
    ) -> Result<Outcome, VmError> {
        self.check_stream(ctx, kind)?;
        let (r, call) = self.invoke(
            name,
            |ex| pick(ex).as_ref(),
            ctx,
            budget,
            (ctx, a, u32::from(b)),
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(self.outcome(r, call))
    }

    /// `proxy_on_request_headers`.
    pub fn on_request_headers(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::REQUEST_HEADERS)? {
            return Ok(Outcome::default());
        }
        self.stream_call3(
            "proxy_on_request_headers",
            |e| &e.request_headers,
            ContextKind::Http,
            ctx,
            stream,
            Budget::Headers,
            clamp(num_headers),
            end_of_stream,
        )
    }

    /// `proxy_on_request_body` (`body_size` = bytes buffered so far, cumulative while paused).
    pub fn on_request_body(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::REQUEST_BODY)? {
            return Ok(Outcome::default());
        }
        self.stream_call3(
            "proxy_on_request_body",
            |e| &e.request_body,
            ContextKind::Http,
            ctx,
            stream,
            Budget::Body,
            clamp(body_size),
            end_of_stream,
        )
    }

    /// `proxy_on_response_headers`.
    pub fn on_response_headers(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::RESPONSE_HEADERS)? {
            return Ok(Outcome::default());
        }
        self.stream_call3(
            "proxy_on_response_headers",
            |e| &e.response_headers,
            ContextKind::Http,
            ctx,
            stream,
            Budget::Headers,
            clamp(num_headers),
            end_of_stream,
        )
    }

    /// `proxy_on_response_body`.
    pub fn on_response_body(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::RESPONSE_BODY)? {
            return Ok(Outcome::default());
        }
        self.stream_call3(
            "proxy_on_response_body",
            |e| &e.response_body,
            ContextKind::Http,
            ctx,
            stream,
            Budget::Body,
            clamp(body_size),
            end_of_stream,
        )
    }

    /// `proxy_on_downstream_data` (downstream → upstream bytes of an L4 stream).
    pub fn on_downstream_data(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        data_size: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        self.stream_call3(
            "proxy_on_downstream_data",
            |e| &e.downstream_data,
            ContextKind::Tcp,
            ctx,
            stream,
            Budget::Body,
            clamp(data_size),
            end_of_stream,
        )
    }

    /// `proxy_on_upstream_data` (upstream → downstream bytes of an L4 stream).
    pub fn on_upstream_data(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        data_size: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        self.stream_call3(
            "proxy_on_upstream_data",
            |e| &e.upstream_data,
            ContextKind::Tcp,
            ctx,
            stream,
            Budget::Body,
            clamp(data_size),
            end_of_stream,
        )
    }

    fn trailers(
        &mut self,
        name: &'static str,
        response: bool,
        ctx: ContextId,
        stream: &mut StreamBox,
        n: usize,
    ) -> Result<Outcome, VmError> {
        self.check_stream(ctx, ContextKind::Http)?;
        let (r, call) = self.invoke(
            name,
            |ex| {
                if response {
                    ex.response_trailers.as_ref()
                } else {
                    ex.request_trailers.as_ref()
                }
            },
            ctx,
            Budget::Headers,
            (ctx, clamp(n)),
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(self.outcome(r, call))
    }

    /// `proxy_on_request_trailers`.
    pub fn on_request_trailers(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        num_trailers: usize,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::REQUEST_TRAILERS)? {
            return Ok(Outcome::default());
        }
        self.trailers(
            "proxy_on_request_trailers",
            false,
            ctx,
            stream,
            num_trailers,
        )
    }

    /// `proxy_on_response_trailers`.
    pub fn on_response_trailers(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        num_trailers: usize,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::RESPONSE_TRAILERS)? {
            return Ok(Outcome::default());
        }
        self.trailers(
            "proxy_on_response_trailers",
            true,
            ctx,
            stream,
            num_trailers,
        )
    }

    /// `proxy_on_new_connection` for a context made by [`Vm::create_tcp_stream`].
    pub fn on_new_connection(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
    ) -> Result<Outcome, VmError> {
        self.check_stream(ctx, ContextKind::Tcp)?;
        let (r, call) = self.invoke(
            "proxy_on_new_connection",
            |ex| ex.new_connection.as_ref(),
            ctx,
            Budget::Headers,
            ctx,
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(self.outcome(r, call))
    }

    fn close(
        &mut self,
        name: &'static str,
        upstream: bool,
        ctx: ContextId,
        stream: &mut StreamBox,
        peer: PeerType,
    ) -> Result<Outcome, VmError> {
        self.check_stream(ctx, ContextKind::Tcp)?;
        let (_, call) = self.invoke(
            name,
            |ex| {
                if upstream {
                    ex.upstream_close.as_ref()
                } else {
                    ex.downstream_close.as_ref()
                }
            },
            ctx,
            Budget::Other,
            (ctx, peer as u32),
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(self.outcome(None, call))
    }

    /// `proxy_on_downstream_connection_close`.
    pub fn on_downstream_connection_close(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        peer: PeerType,
    ) -> Result<Outcome, VmError> {
        self.close(
            "proxy_on_downstream_connection_close",
            false,
            ctx,
            stream,
            peer,
        )
    }

    /// `proxy_on_upstream_connection_close`.
    pub fn on_upstream_connection_close(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        peer: PeerType,
    ) -> Result<Outcome, VmError> {
        self.close(
            "proxy_on_upstream_connection_close",
            true,
            ctx,
            stream,
            peer,
        )
    }

    fn any_stream(&self, ctx: ContextId) -> Result<ContextKind, VmError> {
        self.check_alive()?;
        match self.store.data().contexts.get(&ctx) {
            Some(k @ (ContextKind::Http | ContextKind::Tcp)) => Ok(*k),
            _ => Err(VmError::UnknownContext(ctx)),
        }
    }

    /// `proxy_on_log` for a stream (request complete; maps readable read-only).
    pub fn on_log(&mut self, ctx: ContextId, stream: &mut StreamBox) -> Result<(), VmError> {
        if self.any_stream(ctx)? == ContextKind::Http && self.skips(HttpPhases::LOG) {
            return Ok(());
        }
        self.invoke(
            "proxy_on_log",
            |ex| ex.log.as_ref(),
            ctx,
            Budget::Other,
            ctx,
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(())
    }

    /// `proxy_on_done` for a stream. Its result is ignored for streams, as Envoy does.
    pub fn on_done(&mut self, ctx: ContextId, stream: &mut StreamBox) -> Result<(), VmError> {
        if self.any_stream(ctx)? == ContextKind::Http && self.skips(HttpPhases::DONE) {
            return Ok(());
        }
        self.invoke(
            "proxy_on_done",
            |ex| ex.done.as_ref(),
            ctx,
            Budget::Other,
            ctx,
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(())
    }

    /// `proxy_on_delete` for a stream; the context id is gone afterwards (even if the guest trapped).
    pub fn on_delete(&mut self, ctx: ContextId) -> Result<(), VmError> {
        self.any_stream(ctx)?;
        let r = self.invoke(
            "proxy_on_delete",
            |ex| ex.delete.as_ref(),
            ctx,
            Budget::Other,
            ctx,
            None,
            |_| {},
        );
        if r.is_ok() {
            self.store.data_mut().contexts.remove(&ctx);
        }
        self.cancel_grpc_streams_of(ctx);
        r.map(|_| ())
    }

    /// The gRPC streams a deleted stream context opened are reset with it, as Envoy resets a
    /// context's streams when it is destroyed (a stream has no deadline; nothing else would end
    /// one whose server waits for the client). Unary calls run to their timeout.
    fn cancel_grpc_streams_of(&mut self, ctx: ContextId) {
        let st = self.store.data_mut();
        if st.grpc_calls.is_empty() {
            return;
        }
        let streams: Vec<u32> = st
            .grpc_calls
            .iter()
            .filter(|&(&token, &origin)| origin == ctx && token & 3 == 2)
            .map(|(&token, _)| token)
            .collect();
        for token in streams {
            st.grpc_calls.remove(&token);
            let _ = st.host.grpc_cancel(token);
        }
    }

    /// Ends an HTTP stream in Envoy's order: `on_log` → `on_done` → `on_delete`.
    pub fn finish_http_stream(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
    ) -> Result<(), VmError> {
        self.check_stream(ctx, ContextKind::Http)?;
        if !self.skips(HttpPhases::LOG) {
            self.on_log(ctx, stream)?;
        }
        if !self.skips(HttpPhases::DONE) {
            self.on_done(ctx, stream)?;
        }
        self.on_delete(ctx)
    }

    /// Ends an L4 stream in Envoy's order: `on_done` → `on_log` → `on_delete`.
    pub fn finish_tcp_stream(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
    ) -> Result<(), VmError> {
        self.check_stream(ctx, ContextKind::Tcp)?;
        self.on_done(ctx, stream)?;
        self.on_log(ctx, stream)?;
        self.on_delete(ctx)
    }

    /// `proxy_on_tick` on the root context.
    pub fn on_tick(&mut self) -> Result<Outcome, VmError> {
        let (_, call) = self.invoke(
            "proxy_on_tick",
            |ex| ex.tick.as_ref(),
            self.root,
            Budget::Other,
            self.root,
            None,
            |_| {},
        )?;
        Ok(self.outcome(None, call))
    }

    /// `proxy_on_queue_ready(root, queue_id)`; call it on the VM's thread when its notifier fired.
    pub fn on_queue_ready(&mut self, queue_id: u32) -> Result<Outcome, VmError> {
        let (_, call) = self.invoke(
            "proxy_on_queue_ready",
            |ex| ex.queue_ready.as_ref(),
            self.root,
            Budget::Other,
            (self.root, queue_id),
            None,
            |_| {},
        )?;
        Ok(self.outcome(None, call))
    }

    /// Delivers the answer to HTTP callout `token` (`proxy_on_http_call_response(root, token,
    /// #headers, body_len, #trailers)`), with maps 6/7 and buffer 4 available during the call.
    /// Pass the dispatching stream (see [`Vm::http_call_context`]) if it is still alive so the
    /// guest can edit it and resume it. An unknown token is `Ok` with an empty outcome and no call
    /// (the SDK would panic on it).
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        response: CalloutResponse,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        self.check_alive()?;
        let Some(origin) = self.store.data_mut().http_calls.remove(&token) else {
            return Ok(Outcome::default());
        };
        let params = (
            self.root,
            token,
            clamp(response.headers.len()),
            clamp(response.body.len()),
            clamp(response.trailers.len()),
        );
        let status = response.status.clone();
        let lent = stream.map(|s| (origin, s));
        let (_, call) = self.invoke(
            "proxy_on_http_call_response",
            |ex| ex.http_call_response.as_ref(),
            self.root,
            Budget::Headers,
            params,
            lent,
            |c| {
                c.callout = Some(Box::new(response));
                c.status = status.map(Box::new);
            },
        )?;
        Ok(self.outcome(None, call))
    }

    #[allow(clippy::too_many_arguments)]
    fn grpc_event(
        &mut self,
        name: &'static str,
        pick: fn(&Exports) -> &Option<GrpcCallback>,
        token: u32,
        arg: u32,
        data: GrpcData,
        status: (u32, String),
        stream: Option<&mut StreamBox>,
        close: bool,
    ) -> Result<Outcome, VmError> {
        self.check_alive()?;
        let origin = if close {
            self.store.data_mut().grpc_calls.remove(&token)
        } else {
            self.store.data().grpc_calls.get(&token).copied()
        };
        let Some(origin) = origin else {
            return Ok(Outcome::default());
        };
        let lent = stream.map(|s| (origin, s));
        let (_, call) = self.invoke(
            name,
            |ex| pick(ex).as_ref(),
            self.root,
            Budget::Other,
            (self.root, token, arg),
            lent,
            |c| {
                c.grpc = Some(Box::new(data));
                c.status = Some(Box::new(status));
            },
        )?;
        Ok(self.outcome(None, call))
    }

    /// gRPC initial metadata arrived (map 4 during the call).
    pub fn on_grpc_receive_initial_metadata(
        &mut self,
        token: u32,
        metadata: Pairs,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        let n = clamp(metadata.len());
        let data = GrpcData {
            initial_metadata: Some(metadata),
            ..GrpcData::default()
        };
        self.grpc_event(
            "proxy_on_grpc_receive_initial_metadata",
            |e| &e.grpc_initial,
            token,
            n,
            data,
            (0, String::new()),
            stream,
            false,
        )
    }

    /// A gRPC message arrived (buffer 5 during the call).
    pub fn on_grpc_receive(
        &mut self,
        token: u32,
        message: Vec<u8>,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        self.grpc_message(token, message, stream, false)
    }

    /// `proxy_on_grpc_receive` with `message`; `last`: the call is over with it.
    fn grpc_message(
        &mut self,
        token: u32,
        message: Vec<u8>,
        stream: Option<&mut StreamBox>,
        last: bool,
    ) -> Result<Outcome, VmError> {
        let n = clamp(message.len());
        let data = GrpcData {
            message: Some(message),
            ..GrpcData::default()
        };
        self.grpc_event(
            "proxy_on_grpc_receive",
            |e| &e.grpc_receive,
            token,
            n,
            data,
            (0, String::new()),
            stream,
            last,
        )
    }

    /// The answer of a unary gRPC call (`proxy_dispatch_grpc_call`): `proxy_on_grpc_receive`
    /// with the response message, after which the call is over (as in Envoy, no close follows a
    /// successful unary call). A failed call is answered with [`Vm::on_grpc_close`] instead.
    pub fn on_grpc_call_response(
        &mut self,
        token: u32,
        message: Vec<u8>,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        self.grpc_message(token, message, stream, true)
    }

    /// gRPC trailing metadata arrived (map 5 during the call).
    pub fn on_grpc_receive_trailing_metadata(
        &mut self,
        token: u32,
        metadata: Pairs,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        let n = clamp(metadata.len());
        let data = GrpcData {
            trailing_metadata: Some(metadata),
            ..GrpcData::default()
        };
        self.grpc_event(
            "proxy_on_grpc_receive_trailing_metadata",
            |e| &e.grpc_trailing,
            token,
            n,
            data,
            (0, String::new()),
            stream,
            false,
        )
    }

    /// The gRPC call/stream closed with `status` (`proxy_get_status` reports `(status, message)`).
    pub fn on_grpc_close(
        &mut self,
        token: u32,
        status: u32,
        message: impl Into<String>,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        self.grpc_event(
            "proxy_on_grpc_close",
            |e| &e.grpc_close,
            token,
            status,
            GrpcData::default(),
            (status, message.into()),
            stream,
            true,
        )
    }

    /// `proxy_on_foreign_function(root, function_id, args_size)` with buffer 8 = `args`.
    pub fn on_foreign_function(
        &mut self,
        function_id: u32,
        args: Vec<u8>,
    ) -> Result<Outcome, VmError> {
        let size = clamp(args.len());
        let (_, call) = self.invoke(
            "proxy_on_foreign_function",
            |ex| ex.foreign.as_ref(),
            self.root,
            Budget::Other,
            (self.root, function_id, size),
            None,
            |c| c.call_data = Some(args),
        )?;
        Ok(self.outcome(None, call))
    }

    /// Shuts the root context down: `proxy_on_done(root)`; `true` → `proxy_on_delete(root)` and
    /// `Ok(true)`. `false` → `Ok(false)`: the guest will call `proxy_done` later (from a tick or
    /// callout); call `shutdown` again after that to finish.
    pub fn shutdown(&mut self) -> Result<bool, VmError> {
        self.check_alive()?;
        let root = self.root;
        let finished = if self.store.data().root_done_called {
            true
        } else {
            let (r, _) = self.invoke(
                "proxy_on_done",
                |ex| ex.done.as_ref(),
                root,
                Budget::Other,
                root,
                None,
                |_| {},
            )?;
            let done = r.unwrap_or(1) != 0;
            self.store.data_mut().root_done_pending = !done;
            done
        };
        if !finished {
            return Ok(false);
        }
        self.invoke(
            "proxy_on_delete",
            |ex| ex.delete.as_ref(),
            root,
            Budget::Other,
            root,
            None,
            |_| {},
        )?;
        self.store.data_mut().contexts.remove(&root);
        Ok(true)
    }

    /// Which of this VM's outstanding callouts would be cancelled by dropping it.
    pub fn outstanding_callouts(&self) -> HashMap<u32, ContextId> {
        let st = self.store.data();
        st.http_calls
            .iter()
            .chain(st.grpc_calls.iter())
            .map(|(t, c)| (*t, *c))
            .collect()
    }
}

impl Drop for Vm {
    /// Outstanding callouts are cancelled with the VM (Envoy cancels them with the root context).
    fn drop(&mut self) {
        let st = self.store.data_mut();
        let http: Vec<u32> = st.http_calls.drain().map(|(t, _)| t).collect();
        let grpc: Vec<u32> = st.grpc_calls.drain().map(|(t, _)| t).collect();
        for t in http {
            st.host.cancel_http_call(t);
        }
        for t in grpc {
            let _ = st.host.grpc_cancel(t);
        }
    }
}

/// Sizes and counts are u32 on the wire.
fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    fn assert_send<T: Send>() {}

    #[test]
    fn vm_and_plugin_are_send_runtime_is_sync() {
        assert_send::<super::Vm>();
        assert_send::<crate::Plugin>();
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<crate::Runtime>();
        assert_sync::<crate::SharedState>();
        assert_sync::<crate::FilterStats>();
    }
}
