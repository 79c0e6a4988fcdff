//! `Vm`: one instance of a filter module (one wasmtime `Store`), driven by one thread.
//!
//! It runs the lifecycle in Envoy's order, sets a deadline before every callback, lends the
//! embedder's stream to the store for stream callbacks, collects deferred effects into an
//! [`Outcome`], and turns any trap into a permanent [`VmFailed`].
//!
//! This file keeps the instance itself: instantiation and the start sequence, the store, the
//! context table, and `invoke`, the one way into the guest (deadline, stream lending, timing,
//! failure). What a callback hands back lives in `outcome`, the table of guest exports in
//! `exports`; the public callbacks are grouped by the context they run on (`streams`, `root`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use wasmtime::{Store, TypedFunc, WasmParams, WasmResults};

use crate::config::PluginConfig;
use crate::embedder::{PluginHost, StreamBox};
use crate::error::{FailureReason, StartError, VmError, VmFailed};
use crate::metrics::VmMetrics;
use crate::phases::HttpPhases;
use crate::runtime::{Module, Runtime};
use crate::state::{CallState, ContextKind, Finished, HostState, PluginShared};
use crate::stats::FilterStats;
use crate::types::ContextId;

mod exports;
mod outcome;
mod root;
mod streams;

use exports::Exports;
use outcome::failure_reason;
pub use outcome::{Deferred, Effect, LocalReply, Outcome};

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
    /// Each call borrows its export from here (never clones it) while the store is lent to the
    /// call: cloning a `TypedFunc` clones its wasmtime `FuncType` (a registry round trip).
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
        let alloc = exports::allocator(&instance, &mut store);
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc.map(Arc::new);
        let exports = Exports::lookup(&instance, &mut store);
        let exported = exports.http_phases();
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

    /// Which of this VM's outstanding callouts would be cancelled by dropping it.
    pub fn outstanding_callouts(&self) -> HashMap<u32, ContextId> {
        let st = self.store.data();
        st.http_calls
            .iter()
            .chain(st.grpc_calls.iter())
            .map(|(t, c)| (*t, *c))
            .collect()
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
        let (reason, message) = failure_reason(e, self.store.data().limiter.hit);
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
