//! The embedder traits: what host-abi needs from whoever runs the filter (the proxy over hyper
//! types, the sdk's harness over in-memory maps), in the manner of wasmtime-wasi's `WasiView`.
//!
//! * [`StreamHost`]: one HTTP or L4 stream — header maps, body buffers, per-stream properties. It is
//!   *lent* to the VM for each stream callback (`&mut Box<dyn StreamHost>`): wasmtime's `Store` can
//!   only hold `'static` data and the workspace forbids `unsafe`, so host-abi swaps the box into the
//!   store for the duration of the call (a zero-sized placeholder takes its place, no allocation) and
//!   swaps it back before returning. The embedder keeps ownership; one box can be lent to each filter
//!   of a chain in turn. Recover the concrete type with [`downcast_stream`].
//! * [`PluginHost`]: one VM — logging, clocks, callouts, foreign functions, root-level properties,
//!   timers and queue notification.
//!
//! Every method has a default so an embedder implements only what it supports.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::types::{BufferType, ContextId, LogLevel, MapType, Pairs, Status};

/// A boxed stream host, the unit the embedder lends to stream callbacks.
pub type StreamBox = Box<dyn StreamHost>;

/// Downcasts a lent stream box back to the embedder's concrete type.
pub fn downcast_stream<T: StreamHost>(stream: &mut StreamBox) -> Option<&mut T> {
    let any: &mut dyn Any = stream.as_mut();
    any.downcast_mut::<T>()
}

/// One stream (HTTP request/response or L4 connection) as a filter sees it.
///
/// Only the embedder's maps (0–3) and buffers (0–3) reach this trait; callout/gRPC maps and the
/// configuration/call-data buffers are served by host-abi itself. Availability rules (request
/// headers only during the request-header phase, read-only in `on_log`, ...) are the embedder's
/// to enforce: return `Err(Status::NotFound)` from map methods for a map that is not available now
/// (host-abi turns that into "empty map" for `get_header_map_pairs` and `NotFound` for
/// `get_header_map_value`, which the SDK maps to `None`), and `Err(Status::BadArgument)` for a
/// mutation that is not allowed.
pub trait StreamHost: Any + Send {
    /// All entries of a map, in order.
    fn header_map(&mut self, map: MapType) -> Result<Pairs, Status> {
        let _ = map;
        Err(Status::NotFound)
    }

    /// The first value of `key` (ASCII case-insensitive) in `map`, `Ok(None)` if absent.
    /// The default scans [`StreamHost::header_map`]; override it to avoid the copy.
    fn header_value(&mut self, map: MapType, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        Ok(self
            .header_map(map)?
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v))
    }

    /// Replaces the whole map.
    fn set_header_map(&mut self, map: MapType, pairs: Pairs) -> Result<(), Status> {
        let _ = (map, pairs);
        Err(Status::BadArgument)
    }

    /// Appends `key: value` (keeps existing values).
    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        let _ = (map, key, value);
        Err(Status::BadArgument)
    }

    /// Overwrites the first occurrence of `key` in place (dropping later ones), or appends it.
    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        let _ = (map, key, value);
        Err(Status::BadArgument)
    }

    /// Removes every occurrence of `key` (absent key is fine).
    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        let _ = (map, key);
        Err(Status::BadArgument)
    }

    /// The current contents of a body/data buffer, or `None` when not available now.
    fn buffer(&mut self, buffer: BufferType) -> Option<&[u8]> {
        let _ = buffer;
        None
    }

    /// Edits a buffer with Envoy's semantics (see [`edit_buffer`], which implementations can call).
    fn set_buffer(
        &mut self,
        buffer: BufferType,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), Status> {
        let _ = (buffer, start, size, data);
        Err(Status::NotFound)
    }

    /// A stream property (`path` = segments such as `["request", "path"]`), encoded as
    /// proxy-wasm-abi.md §4/§15 say (strings raw, ints 8-byte LE, ...). `None` = not found; host-abi
    /// then tries the plugin host and its own `plugin_*` properties.
    fn get_property(&mut self, path: &[&[u8]]) -> Option<Vec<u8>> {
        let _ = path;
        None
    }

    /// Stores a property so later filters of the same stream see it (Envoy: filter state
    /// `wasm.<path>`).
    fn set_property(&mut self, path: &[&[u8]], value: &[u8]) -> Result<(), Status> {
        let _ = (path, value);
        Err(Status::NotFound)
    }
}

/// Applies Envoy's `proxy_set_buffer_bytes` semantics to `buf`: `start == 0` drains `size` bytes
/// (clamped) then prepends `data`; `start >= len` appends; anything else is `BadArgument`.
pub fn edit_buffer(
    buf: &mut Vec<u8>,
    start: usize,
    size: usize,
    data: &[u8],
) -> Result<(), Status> {
    if start == 0 {
        let drain = size.min(buf.len());
        buf.splice(0..drain, data.iter().copied());
        Ok(())
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

/// The stand-in lent while no real stream is: every map and buffer is unavailable.
#[derive(Debug, Default)]
pub(crate) struct NoStream;
impl StreamHost for NoStream {}

/// An HTTP callout the guest asked for (`proxy_http_call`), already validated by host-abi
/// (`:method`, `:path`, `:authority` present, timeout in range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallRequest {
    /// Token allocated by host-abi; pass it back to `Vm::on_http_call_response`.
    pub token: u32,
    /// The context that dispatched it (the effective context: a stream, or the root).
    pub context: ContextId,
    /// Upstream cluster name.
    pub upstream: String,
    /// Request headers, pseudo-headers included.
    pub headers: Pairs,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Pairs,
    /// `None` when the guest passed 0 (no timeout).
    pub timeout: Option<Duration>,
}

/// A gRPC call or stream the guest opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCallRequest {
    /// Token (low 2 bits: 1 = unary call, 2 = stream).
    pub token: u32,
    /// Dispatching context.
    pub context: ContextId,
    /// `service` argument: a cluster name or a serialized `GrpcService`.
    pub upstream: Vec<u8>,
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Initial metadata.
    pub initial_metadata: Pairs,
    /// The request message (unary calls; empty for streams).
    pub message: Vec<u8>,
    /// Timeout (unary calls), `None` = none.
    pub timeout: Option<Duration>,
    /// True for `proxy_grpc_stream`.
    pub streaming: bool,
}

/// The outcome of an HTTP callout, handed to `Vm::on_http_call_response`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CalloutResponse {
    /// Response headers (`:status` included); empty on failure.
    pub headers: Pairs,
    /// Response body.
    pub body: Vec<u8>,
    /// Response trailers.
    pub trailers: Pairs,
    /// What `proxy_get_status` reports during the callback. `None` = success, `(0, "")`;
    /// [`CalloutResponse::failure`] sets Envoy's `(11, message)` (broken connection).
    pub status: Option<(u32, String)>,
}

impl CalloutResponse {
    /// A failed callout (reset / no upstream): the guest sees 0 headers, 0 body, 0 trailers.
    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            status: Some((11, message.into())),
            ..Self::default()
        }
    }
}

/// Called (from any thread) when an item is enqueued on a queue this VM registered; the embedder
/// must arrange for `Vm::on_queue_ready(queue_id)` to run on the VM's own thread.
pub type QueueNotifier = Arc<dyn Fn(u32) + Send + Sync>;

/// What host-abi needs from the embedder for one VM (given to `Vm::new`).
pub trait PluginHost: Send {
    /// A guest log line (`proxy_log`, or WASI stdout = Info / stderr = Error).
    fn log(&mut self, level: LogLevel, message: &str) {
        match level {
            LogLevel::Trace => tracing::trace!(target: "wasm", "{message}"),
            LogLevel::Debug => tracing::debug!(target: "wasm", "{message}"),
            LogLevel::Info => tracing::info!(target: "wasm", "{message}"),
            LogLevel::Warn => tracing::warn!(target: "wasm", "{message}"),
            LogLevel::Error | LogLevel::Critical => tracing::error!(target: "wasm", "{message}"),
        }
    }

    /// The level reported by `proxy_get_log_level`.
    fn log_level(&self) -> LogLevel {
        LogLevel::Info
    }

    /// Wall-clock time (`proxy_get_current_time_nanoseconds`, WASI realtime clock).
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    /// Monotonic time in nanoseconds (WASI monotonic clock); only differences matter.
    fn monotonic_nanos(&self) -> u64 {
        crate::time::monotonic_nanos()
    }

    /// Start an HTTP callout; answer later with `Vm::on_http_call_response(token, ..)`.
    /// Unknown cluster → `Err(Status::BadArgument)`; send failure → `Err(Status::InternalFailure)`.
    fn dispatch_http_call(&mut self, request: HttpCallRequest) -> Result<(), Status> {
        let _ = request;
        Err(Status::BadArgument)
    }

    /// Start a gRPC call or stream. Unknown service → `Err(Status::ParseFailure)`.
    fn dispatch_grpc(&mut self, request: GrpcCallRequest) -> Result<(), Status> {
        let _ = request;
        Err(Status::ParseFailure)
    }

    /// Send a message on a gRPC stream.
    fn grpc_send(&mut self, token: u32, message: &[u8], end_stream: bool) -> Result<(), Status> {
        let _ = (token, message, end_stream);
        Err(Status::NotFound)
    }

    /// Cancel (reset) a gRPC call or stream.
    fn grpc_cancel(&mut self, token: u32) -> Result<(), Status> {
        let _ = token;
        Err(Status::NotFound)
    }

    /// Half-close a gRPC stream.
    fn grpc_close(&mut self, token: u32) -> Result<(), Status> {
        let _ = token;
        Err(Status::NotFound)
    }

    /// Cancel an HTTP callout (its owning context went away or the VM is dropped).
    fn cancel_http_call(&mut self, token: u32) {
        let _ = token;
    }

    /// A named host extension. Unknown name → `Err(Status::NotFound)`.
    fn call_foreign_function(&mut self, name: &str, args: &[u8]) -> Result<Vec<u8>, Status> {
        let _ = (name, args);
        Err(Status::NotFound)
    }

    /// A property outside any stream (root context, ticks, callouts without a lent stream), or a
    /// fallback for paths the stream did not know (e.g. `xds.node.id`).
    fn get_property(&mut self, path: &[&[u8]]) -> Option<Vec<u8>> {
        let _ = path;
        None
    }

    /// `proxy_set_property` outside a stream. Envoy answers `NotFound`.
    fn set_property(&mut self, path: &[&[u8]], value: &[u8]) -> Result<(), Status> {
        let _ = (path, value);
        Err(Status::NotFound)
    }

    /// The tick period changed (`None` = ticks disabled). The embedder calls `Vm::on_tick` at that
    /// period; `Vm::tick_period` reports the same value.
    fn set_tick_period(&mut self, period: Option<Duration>) {
        let _ = period;
    }

    /// How this VM learns about enqueued items on queues it registers. `None` (default): no
    /// notification; the embedder may poll `Vm::on_queue_ready` itself.
    fn queue_notifier(&mut self) -> Option<QueueNotifier> {
        None
    }
}

/// A plugin host that supports nothing but logging via `tracing` and real clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultPluginHost;
impl PluginHost for DefaultPluginHost {}
