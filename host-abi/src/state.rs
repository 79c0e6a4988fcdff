//! `HostState`: the data of one VM's wasmtime `Store` — what host functions see through `Caller`.

use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use crate::config::Limits;
use crate::deadline::DeadlineState;
use crate::embedder::{CalloutResponse, NoStream, PluginHost, StreamBox};
use crate::metrics::VmMetrics;
use crate::phases::HttpPhases;
use crate::shared_data::{KvSpace, SharedState};
use crate::types::{ContextId, Pairs, StreamType};
use crate::vm::{Deferred, Effect, LocalReply};

/// The immutable per-plugin data every VM of a plugin shares.
#[derive(Debug)]
pub(crate) struct PluginShared {
    pub(crate) name: String,
    pub(crate) root_id: String,
    pub(crate) vm_id: String,
    pub(crate) vm_configuration: Vec<u8>,
    pub(crate) configuration: Vec<u8>,
    /// `KEY=VALUE` strings for WASI environ (without the NULs).
    pub(crate) environ: Vec<Vec<u8>>,
    pub(crate) limits: Limits,
}

/// What kind of context an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContextKind {
    Root,
    Http,
    Tcp,
}

/// gRPC data visible during one gRPC callback.
#[derive(Debug, Default)]
pub(crate) struct GrpcData {
    pub(crate) initial_metadata: Option<Pairs>,
    pub(crate) trailing_metadata: Option<Pairs>,
    pub(crate) message: Option<Vec<u8>>,
}

/// State of the callback that is running (reset before every callback).
#[derive(Debug, Default)]
pub(crate) struct CallState {
    /// The callback's own context.
    pub(crate) current: ContextId,
    /// Set by `proxy_set_effective_context`; hostcalls act on it until the callback returns.
    pub(crate) effective: Option<ContextId>,
    /// Deferred effects, applied by the embedder after the callback returns.
    pub(crate) effects: Vec<Deferred>,
    /// A local reply was requested: the callback's result is forced to Pause.
    pub(crate) local_reply: bool,
    /// Buffer 7 is readable (only inside `on_configure`).
    pub(crate) in_configure: bool,
    /// Maps 6/7 and buffer 4 (only inside `on_http_call_response`). Boxed, like the other rare
    /// parts, so that the state every callback resets and moves stays small.
    pub(crate) callout: Option<Box<CalloutResponse>>,
    /// Maps 4/5 and buffer 5 (only inside gRPC callbacks).
    pub(crate) grpc: Option<Box<GrpcData>>,
    /// Buffer 8 (only inside `on_foreign_function`).
    pub(crate) call_data: Option<Vec<u8>>,
    /// `proxy_get_status` answer (`None`: `(0, "")`).
    pub(crate) status: Option<Box<(u32, String)>>,
}

/// What a callback left for the embedder.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    pub(crate) effects: Vec<Deferred>,
    pub(crate) local_reply: bool,
}

impl CallState {
    /// Ends a callback: hands over its effects and resets the state in place for the next one
    /// (cheaper than building and dropping a whole `CallState` per callback).
    #[inline]
    pub(crate) fn finish(&mut self) -> Finished {
        let done = Finished {
            effects: std::mem::take(&mut self.effects),
            local_reply: self.local_reply,
        };
        self.effective = None;
        self.local_reply = false;
        self.in_configure = false;
        // The rare parts are tested first, so the common callback drops nothing out of line.
        if self.callout.is_some() {
            self.callout = None;
        }
        if self.grpc.is_some() {
            self.grpc = None;
        }
        if self.call_data.is_some() {
            self.call_data = None;
        }
        if self.status.is_some() {
            self.status = None;
        }
        done
    }
}

/// Linear-memory cap; remembers that the cap was hit so a following trap is reported as
/// `MemoryLimit`.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub(crate) memory_cap: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; 64Ki entries is far beyond any real filter.
        Ok(desired <= 65_536)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }
}

/// The store data of one VM.
pub(crate) struct HostState {
    pub(crate) limiter: Limiter,
    pub(crate) memory: Option<Memory>,
    /// Behind an `Arc`: cloning a `TypedFunc` per allocation clones its `FuncType`.
    pub(crate) alloc: Option<std::sync::Arc<TypedFunc<u32, u32>>>,
    pub(crate) in_allocator: bool,
    pub(crate) plugin: Arc<PluginShared>,
    pub(crate) host: Box<dyn PluginHost>,
    pub(crate) root: ContextId,
    pub(crate) contexts: FxHashMap<ContextId, ContextKind>,
    pub(crate) call: CallState,
    /// The stream lent for the running callback (or `NoStream`), and the context it belongs to.
    pub(crate) stream: StreamBox,
    pub(crate) stream_ctx: Option<ContextId>,
    /// Outstanding HTTP callouts: token → dispatching context.
    pub(crate) http_calls: FxHashMap<u32, ContextId>,
    /// Outstanding gRPC calls/streams: token → dispatching context.
    pub(crate) grpc_calls: FxHashMap<u32, ContextId>,
    pub(crate) next_token: u32,
    pub(crate) tick_period: Option<Duration>,
    pub(crate) shared: SharedState,
    pub(crate) kv: Arc<KvSpace>,
    pub(crate) metrics: VmMetrics,
    /// The root returned false from `on_done` and may call `proxy_done`.
    pub(crate) root_done_pending: bool,
    pub(crate) root_done_called: bool,
    pub(crate) deadline: DeadlineState,
    /// The HTTP callbacks this VM gets: the exported ones, narrowed by a declaration
    /// (see [`crate::phases`]).
    pub(crate) http_phases: HttpPhases,
    /// The HTTP callbacks the module exports (a declaration cannot add others).
    pub(crate) exported_phases: HttpPhases,
}

impl HostState {
    pub(crate) fn new(
        plugin: Arc<PluginShared>,
        host: Box<dyn PluginHost>,
        shared: SharedState,
        metrics: VmMetrics,
    ) -> Self {
        let kv = shared.kv_space(&plugin.vm_id);
        Self {
            limiter: Limiter {
                memory_cap: plugin.limits.memory_bytes,
                hit: false,
            },
            memory: None,
            alloc: None,
            in_allocator: false,
            plugin,
            host,
            root: 0,
            contexts: FxHashMap::default(),
            call: CallState::default(),
            stream: Box::new(NoStream),
            stream_ctx: None,
            http_calls: FxHashMap::default(),
            grpc_calls: FxHashMap::default(),
            next_token: 0,
            tick_period: None,
            shared,
            kv,
            metrics,
            root_done_pending: false,
            root_done_called: false,
            deadline: DeadlineState::default(),
            http_phases: HttpPhases::ALL,
            exported_phases: HttpPhases::ALL,
        }
    }

    /// The context hostcalls act on now.
    pub(crate) fn acting_context(&self) -> ContextId {
        self.call.effective.unwrap_or(self.call.current)
    }

    /// The lent stream if it belongs to the acting context.
    pub(crate) fn acting_stream(&mut self) -> Option<&mut StreamBox> {
        let ctx = self.acting_context();
        if self.stream_ctx == Some(ctx) {
            Some(&mut self.stream)
        } else {
            None
        }
    }

    /// Records a deferred effect for the acting context.
    pub(crate) fn defer(&mut self, effect: Effect) {
        let context = self.acting_context();
        self.call.effects.push(Deferred { context, effect });
    }

    /// Records a local reply (which also forces the callback's result to Pause).
    pub(crate) fn defer_local_reply(&mut self, reply: LocalReply) {
        self.call.local_reply = true;
        self.defer(Effect::LocalReply(reply));
    }

    /// Allocates a callout token whose low 2 bits encode the kind (0 = HTTP, 1 = gRPC call,
    /// 2 = gRPC stream), as cpp-host does. Never 0.
    pub(crate) fn next_token(&mut self, kind: u32) -> u32 {
        self.next_token = self.next_token.wrapping_add(1);
        if self.next_token == 0 || self.next_token > (u32::MAX >> 2) {
            self.next_token = 1;
        }
        (self.next_token << 2) | kind
    }

    /// Continue/close effect helper.
    pub(crate) fn defer_stream(&mut self, close: bool, stream: StreamType) {
        self.defer(if close {
            Effect::CloseStream(stream)
        } else {
            Effect::ContinueStream(stream)
        });
    }
}
