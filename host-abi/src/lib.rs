//! weir-host-abi: a proxy-wasm ABI 0.2.1 host on wasmtime.
//! It owns the Wasm side of a filter; the embedder (the proxy, or the sdk's test harness) supplies
//! the stream through a trait, so this crate never depends on the proxy.
//!
//! # Shape
//! * [`Runtime`] (one per process, `Send + Sync`, cheap to clone): the `Engine` with epoch
//!   interruption and a 1 ms ticker thread, a `Linker` built once with every host function, a
//!   module cache keyed by sha256, [`SharedState`] (shared data and queues) and the
//!   [`MetricsRegistry`].
//! * [`Module`]: compiled by [`Runtime::compile`] (size cap, ABI checks naming the bad
//!   import/export, `InstancePre`). Compile off the data path.
//! * [`Vm`]: one instance (`Store`) per filter per worker thread. [`Vm::new`] runs `_initialize`,
//!   creates the root context, `on_vm_start`, `on_configure`. Stream callbacks borrow the
//!   embedder's [`StreamHost`] (as a `&mut StreamBox`) and return an [`Outcome`]: the [`Action`]
//!   plus deferred [`Effect`]s (continue, close, local reply) to apply after the callback.
//! * [`PluginHost`]: per-VM services (logging, clocks, callouts, foreign functions, timers, queue
//!   notification).
//! * [`Plugin`]: a `Vm` plus the [`FailurePolicy`]; a trapped VM is never re-entered.
//! * [`FilterStats`]: per-filter counters (callbacks, time, traps, deadline hits, memory, rebuilds).
//!
//! # Containment
//! Every guest pointer is bounds-checked in u64; a bad one to a `proxy_*` call traps (the SDK
//! cannot handle `INVALID_MEMORY_ACCESS`), to a WASI call returns errno `FAULT`. Host→guest copies
//! go through the guest allocator with the exact size; header maps and other copies are capped
//! ([`Limits`]). Each callback runs under a deadline (epoch interruption; CPU time is what counts,
//! see [`Deadlines`]) and the VM's memory is capped. Any trap, deadline or memory failure marks the
//! VM failed for good and reports the stream contexts it held ([`VmFailed::live_streams`]). No
//! guest callback ever runs from inside a host call (only the allocator is re-entrant): continue,
//! close and local replies are deferred into the [`Outcome`].
//!
//! # Threads
//! `Runtime`, `Module`, `SharedState`, `MetricsRegistry` and `FilterStats` are shared; a `Vm` (or
//! `Plugin`) is `Send` but used by one worker thread at a time. Shared data and queues are
//! process-wide per `vm_id` on a `SharedState`; queue notifications reach the receiving VM's
//! thread through the embedder's [`QueueNotifier`].
//!
//! # Example
//! ```
//! use weir_host_abi::{Runtime, PluginConfig, Vm, DefaultPluginHost, StreamBox, StreamHost, Action};
//!
//! // A minimal module in WAT: pauses every request.
//! let wat = r#"(module
//!   (memory (export "memory") 1)
//!   (func (export "proxy_abi_version_0_2_1"))
//!   (func (export "_initialize"))
//!   (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
//!   (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 1))"#;
//! let runtime = Runtime::new()?;
//! let module = runtime.compile(wat.as_bytes())?;
//! let mut vm = Vm::new(&runtime, module, PluginConfig::new("demo"), Box::new(DefaultPluginHost))?;
//!
//! #[derive(Default)]
//! struct MyStream; // a real embedder exposes its header maps and buffers here
//! impl StreamHost for MyStream {}
//!
//! let mut stream: StreamBox = Box::new(MyStream);
//! let ctx = vm.create_http_stream()?;
//! let outcome = vm.on_request_headers(ctx, &mut stream, 0, true)?;
//! assert_eq!(outcome.action, Action::Pause);
//! vm.finish_http_stream(ctx, &mut stream)?; // on_log → on_done → on_delete
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod buffers;
mod config;
mod deadline;
mod embedder;
mod error;
mod grpc;
mod headers;
mod http_call;
mod lifecycle;
mod logging;
mod memory;
mod metrics;
pub mod pairs;
pub mod phases;
mod plugin;
mod properties;
mod runtime;
mod shared_data;
mod shared_queue;
mod state;
mod stats;
mod stream;
mod time;
mod types;
mod vm;
mod wasi;

pub use config::{
    Backoff, DEFAULT_MAX_COPY_BYTES, DEFAULT_MAX_MAP_BYTES, DEFAULT_MAX_MAP_ENTRIES,
    DEFAULT_MAX_MODULE_BYTES, DEFAULT_MAX_WASM_STACK, DEFAULT_MEMORY_BYTES, Deadlines,
    FailurePolicy, Limits, PluginConfig, PoolingConfig, RuntimeConfig,
};
pub use embedder::{
    CalloutResponse, DefaultPluginHost, GrpcCallRequest, HttpCallRequest, PluginHost,
    QueueNotifier, StreamBox, StreamHost, downcast_stream, edit_buffer,
};
pub use error::{FailureReason, LoadError, StartError, VmError, VmFailed};
pub use metrics::{MetricSample, MetricValue, MetricsRegistry};
pub use phases::HttpPhases;
pub use plugin::{Availability, HostFactory, Plugin, Verdict};
pub use runtime::{Module, Runtime, RuntimeError};
pub use shared_data::SharedState;
pub use stats::{CALLBACK_BUCKETS_NS, FilterStats, Phase, PhaseHistogram, StatsSnapshot};
pub use time::monotonic_nanos;
pub use types::{
    Action, BufferType, ContextId, LogLevel, MapType, MetricType, Pairs, PeerType, Status,
    StreamType,
};
pub use vm::{Deferred, Effect, LocalReply, Outcome, Vm};

/// Registers every host function (one call per ABI area) on the runtime's linker.
fn add_to_linker(linker: &mut wasmtime::Linker<state::HostState>) -> wasmtime::Result<()> {
    logging::add_to_linker(linker)?;
    time::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    headers::add_to_linker(linker)?;
    stream::add_to_linker(linker)?;
    http_call::add_to_linker(linker)?;
    grpc::add_to_linker(linker)?;
    shared_data::add_to_linker(linker)?;
    shared_queue::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    lifecycle::add_to_linker(linker)?;
    wasi::add_to_linker(linker)?;
    Ok(())
}
