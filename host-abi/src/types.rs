//! The ABI's numeric enums and small value types (proxy-wasm-abi.md §2), shared by every area.
//!
//! Values are exactly those of the upstream SDK; conversions from raw guest integers are fallible
//! because a guest may pass anything.

/// A proxy-wasm context id (root and stream contexts share one per-VM id space; never 0).
pub type ContextId = u32;

/// A header map as ordered `(name, value)` byte pairs (duplicates allowed, order preserved).
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// `proxy_status_t`: what a host function returns to the guest.
///
/// Only the values the Rust SDK understands are listed; the host never returns others (the SDK
/// panics on an unknown status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The key, queue, metric, token or property does not exist.
    NotFound = 1,
    /// An argument is invalid (unknown enum value, malformed request, unknown cluster...).
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// A value could not be parsed.
    ParseFailure = 4,
    /// A queue is empty.
    Empty = 7,
    /// A compare-and-swap on shared data lost the race.
    CasMismatch = 8,
    /// The host failed for an internal reason.
    InternalFailure = 10,
}

impl Status {
    /// The raw value handed to the guest.
    pub fn raw(self) -> i32 {
        self as i32
    }

    /// The raw code of a host operation's result (`Ok` → 0).
    pub(crate) fn code(result: Result<(), Status>) -> i32 {
        match result {
            Ok(()) => Status::Ok.raw(),
            Err(s) => s.raw(),
        }
    }
}

/// Log levels of `proxy_log` (TRACE 0 .. CRITICAL 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Trace (0).
    Trace = 0,
    /// Debug (1).
    Debug = 1,
    /// Info (2).
    Info = 2,
    /// Warn (3).
    Warn = 3,
    /// Error (4).
    Error = 4,
    /// Critical (5); the SDK's panic hook logs at this level.
    Critical = 5,
}

impl LogLevel {
    /// Parses a raw guest value.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

/// What a stream callback asked for: go on, or hold the stream (never a bool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Action {
    /// Continue processing (raw 0).
    #[default]
    Continue,
    /// Pause the stream until the filter calls `proxy_continue_stream` (raw 1; any other non-zero
    /// value is clamped to Pause, as cpp-host does).
    Pause,
}

impl Action {
    pub(crate) fn from_raw(raw: i32) -> Self {
        if raw == 0 {
            Self::Continue
        } else {
            Self::Pause
        }
    }
}

/// Buffer types of `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferType {
    /// HTTP request body (embedder).
    HttpRequestBody = 0,
    /// HTTP response body (embedder).
    HttpResponseBody = 1,
    /// Downstream → upstream bytes of an L4 stream (embedder).
    DownstreamData = 2,
    /// Upstream → downstream bytes of an L4 stream (embedder).
    UpstreamData = 3,
    /// Body of an HTTP callout response (host-abi, only during `on_http_call_response`).
    HttpCallResponseBody = 4,
    /// A received gRPC message (host-abi, only during `on_grpc_receive`).
    GrpcReceiveBuffer = 5,
    /// The VM configuration (host-abi, any time).
    VmConfiguration = 6,
    /// The plugin configuration (host-abi, only during `on_configure`).
    PluginConfiguration = 7,
    /// Arguments of a foreign function call (host-abi, only during `on_foreign_function`).
    CallData = 8,
}

impl BufferType {
    /// Parses a raw guest value.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::HttpRequestBody,
            1 => Self::HttpResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::HttpCallResponseBody,
            5 => Self::GrpcReceiveBuffer,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::CallData,
            _ => return None,
        })
    }
}

/// Header map types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    /// Request headers (embedder).
    HttpRequestHeaders = 0,
    /// Request trailers (embedder).
    HttpRequestTrailers = 1,
    /// Response headers (embedder).
    HttpResponseHeaders = 2,
    /// Response trailers (embedder).
    HttpResponseTrailers = 3,
    /// gRPC initial metadata (host-abi, only during `on_grpc_receive_initial_metadata`).
    GrpcReceiveInitialMetadata = 4,
    /// gRPC trailing metadata (host-abi, only during `on_grpc_receive_trailing_metadata`).
    GrpcReceiveTrailingMetadata = 5,
    /// HTTP callout response headers (host-abi, only during `on_http_call_response`).
    HttpCallResponseHeaders = 6,
    /// HTTP callout response trailers (host-abi, only during `on_http_call_response`).
    HttpCallResponseTrailers = 7,
}

impl MapType {
    /// Parses a raw guest value.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::HttpRequestHeaders,
            1 => Self::HttpRequestTrailers,
            2 => Self::HttpResponseHeaders,
            3 => Self::HttpResponseTrailers,
            4 => Self::GrpcReceiveInitialMetadata,
            5 => Self::GrpcReceiveTrailingMetadata,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Stream directions of `proxy_continue_stream` / `proxy_close_stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// The HTTP request (decoder) side.
    HttpRequest = 0,
    /// The HTTP response (encoder) side.
    HttpResponse = 1,
    /// The downstream side of an L4 stream.
    Downstream = 2,
    /// The upstream side of an L4 stream.
    Upstream = 3,
}

impl StreamType {
    /// Parses a raw guest value.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::HttpRequest,
            1 => Self::HttpResponse,
            2 => Self::Downstream,
            3 => Self::Upstream,
            _ => return None,
        })
    }
}

/// Who closed an L4 connection (`on_*_connection_close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerType {
    /// Unknown (used for the synthesized upstream close).
    Unknown = 0,
    /// This proxy closed it.
    Local = 1,
    /// The peer closed it.
    Remote = 2,
}

/// Metric kinds of `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// Monotonic counter.
    Counter = 0,
    /// Gauge (may go up and down; `record` sets it).
    Gauge = 1,
    /// Histogram (record only).
    Histogram = 2,
}

impl MetricType {
    /// Parses a raw guest value.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}
