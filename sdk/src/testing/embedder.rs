//! An in-memory embedder for `weir-host-abi`: what the proxy supplies over hyper types, supplied
//! here over plain collections, so that filters can be run and observed without a network.
//!
//! * [`MemStream`] implements [`StreamHost`] for one HTTP request/response or L4 connection:
//!   header maps are ordered `Vec<(String, Vec<u8>)>`, bodies and L4 data are `Vec<u8>`, properties
//!   a map keyed by the dotted path.
//! * [`MemPlugin`] implements [`PluginHost`] for one VM. It records what the filter asked for (log
//!   lines, HTTP and gRPC callouts, tick period, queue notifications) in a [`PluginRecord`] shared
//!   through an `Arc`, so the driver keeps a handle after the plugin host moved into the VM. The
//!   driver answers a recorded callout by calling the VM's callout API with the token.
//! * [`FakeClock`] is the plugin host's clock: frozen until advanced.
//! * [`super::driver`] runs a VM through Envoy's stream sequences over these types.
//!
//! host-abi's own integration tests use this same embedder (`host-abi/tests/support`). Nothing
//! here knows about tests: it is a small, complete embedder with documented semantics. Where Envoy's
//! behaviour is richer (per-phase map availability, buffering limits), the simplification is stated
//! on the item. The friendlier [`super::Filter`] / [`super::HttpStream`] API is built on it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_host_abi::{
    BufferType, GrpcCallRequest, HttpCallRequest, LogLevel, MapType, Pairs, PluginHost,
    QueueNotifier, Status, StreamHost, edit_buffer,
};

/// A header (or trailer) map: ordered, duplicates allowed, names as given.
pub type HeaderMap = Vec<(String, Vec<u8>)>;

/// Builds a [`HeaderMap`] from string pairs.
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// The first value of `name` (ASCII case-insensitive) in `map`, as text (`None` when absent or
/// not UTF-8: a filter may write any bytes, and the harness must not panic on them).
pub fn header<'a>(map: &'a HeaderMap, name: &str) -> Option<&'a str> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn to_pairs(map: &HeaderMap) -> Pairs {
    map.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
        .collect()
}

fn from_pairs(pairs: Pairs) -> HeaderMap {
    pairs
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
        .collect()
}

/// Joins property path segments with `.` (the form [`MemStream::properties`] is keyed by).
pub fn property_key(path: &[&[u8]]) -> String {
    let segments: Vec<String> = path
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    segments.join(".")
}

// ---------------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------------

/// One stream held in memory.
///
/// Maps are `None` until they exist (response headers before the response, trailers of a message
/// without trailers); reading a missing map is `NotFound`, which host-abi turns into an empty map
/// or `None` for the guest. Adding to a missing *trailer* map creates it (Envoy lets a filter add
/// trailers at end of stream); mutating a missing header map is `BadArgument`. Envoy's per-phase
/// availability (request headers read-only after the request phase, …) is not modelled: every map
/// the stream has is readable and writable. Header names are lower-cased on every mutation, as
/// Envoy does.
#[derive(Debug, Default, Clone)]
pub struct MemStream {
    /// Map 0.
    pub request_headers: Option<HeaderMap>,
    /// Map 1.
    pub request_trailers: Option<HeaderMap>,
    /// Map 2.
    pub response_headers: Option<HeaderMap>,
    /// Map 3.
    pub response_trailers: Option<HeaderMap>,
    /// Buffer 0: the request body the filter currently sees (the embedder replaces or extends it
    /// between body callbacks).
    pub request_body: Vec<u8>,
    /// Buffer 1.
    pub response_body: Vec<u8>,
    /// Buffer 2 (L4: downstream → upstream bytes).
    pub downstream_data: Vec<u8>,
    /// Buffer 3 (L4: upstream → downstream bytes).
    pub upstream_data: Vec<u8>,
    /// Properties by dotted path (`request.path`, `source.address`, `weir.route.cluster`, …),
    /// already encoded (strings raw, ints 8-byte LE, bools one byte). `set_property` writes here.
    pub properties: BTreeMap<String, Vec<u8>>,
}

impl MemStream {
    /// An HTTP stream whose request headers are `request_headers`.
    pub fn http(request_headers: &[(&str, &str)]) -> Self {
        Self {
            request_headers: Some(headers(request_headers)),
            ..Self::default()
        }
    }

    /// An L4 stream (no maps).
    pub fn tcp() -> Self {
        Self::default()
    }

    /// Sets a string property.
    pub fn with_property_str(mut self, path: &str, value: &str) -> Self {
        self.properties
            .insert(path.to_owned(), value.as_bytes().to_vec());
        self
    }

    /// Sets an integer property (8 bytes, little-endian, as Envoy serializes int64/uint64).
    pub fn with_property_u64(mut self, path: &str, value: u64) -> Self {
        self.properties
            .insert(path.to_owned(), value.to_le_bytes().to_vec());
        self
    }

    /// Sets a bool property (one byte).
    pub fn with_property_bool(mut self, path: &str, value: bool) -> Self {
        self.properties
            .insert(path.to_owned(), vec![u8::from(value)]);
        self
    }

    fn map(&self, map: MapType) -> Option<&HeaderMap> {
        match map {
            MapType::HttpRequestHeaders => self.request_headers.as_ref(),
            MapType::HttpRequestTrailers => self.request_trailers.as_ref(),
            MapType::HttpResponseHeaders => self.response_headers.as_ref(),
            MapType::HttpResponseTrailers => self.response_trailers.as_ref(),
            _ => None,
        }
    }

    /// The map to mutate; a missing trailer map is created, a missing header map is an error.
    fn map_mut(&mut self, map: MapType) -> Result<&mut HeaderMap, Status> {
        let slot = match map {
            MapType::HttpRequestHeaders => &mut self.request_headers,
            MapType::HttpResponseHeaders => &mut self.response_headers,
            MapType::HttpRequestTrailers => {
                return Ok(self.request_trailers.get_or_insert_with(Vec::new));
            }
            MapType::HttpResponseTrailers => {
                return Ok(self.response_trailers.get_or_insert_with(Vec::new));
            }
            _ => return Err(Status::BadArgument),
        };
        slot.as_mut().ok_or(Status::BadArgument)
    }

    fn buffer_mut(&mut self, buffer: BufferType) -> Option<&mut Vec<u8>> {
        match buffer {
            BufferType::HttpRequestBody => Some(&mut self.request_body),
            BufferType::HttpResponseBody => Some(&mut self.response_body),
            BufferType::DownstreamData => Some(&mut self.downstream_data),
            BufferType::UpstreamData => Some(&mut self.upstream_data),
            _ => None,
        }
    }

    /// Attributes Envoy derives from the header maps (`request.path`, `request.method`,
    /// `request.host`, `request.scheme`, `response.code`).
    fn derived_property(&self, key: &str) -> Option<Vec<u8>> {
        let request = |name| {
            self.request_headers
                .as_ref()
                .and_then(|m| header(m, name))
                .map(|v| v.as_bytes().to_vec())
        };
        match key {
            "request.path" => request(":path"),
            "request.method" => request(":method"),
            "request.host" => request(":authority"),
            "request.scheme" => request(":scheme"),
            "response.code" => {
                let status = self
                    .response_headers
                    .as_ref()
                    .and_then(|m| header(m, ":status"))?;
                Some(status.parse::<u64>().ok()?.to_le_bytes().to_vec())
            }
            _ => None,
        }
    }
}

impl StreamHost for MemStream {
    fn header_map(&mut self, map: MapType) -> Result<Pairs, Status> {
        self.map(map).map(to_pairs).ok_or(Status::NotFound)
    }

    fn set_header_map(&mut self, map: MapType, pairs: Pairs) -> Result<(), Status> {
        let mut pairs = from_pairs(pairs);
        for (k, _) in &mut pairs {
            k.make_ascii_lowercase();
        }
        *self.map_mut(map)? = pairs;
        Ok(())
    }

    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        let key = String::from_utf8_lossy(key).to_ascii_lowercase();
        self.map_mut(map)?.push((key, value.to_vec()));
        Ok(())
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        let key = String::from_utf8_lossy(key).to_ascii_lowercase();
        let entries = self.map_mut(map)?;
        match entries
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(&key))
        {
            Some(first) => {
                entries[first].1 = value.to_vec();
                let mut index = 0;
                entries.retain(|(k, _)| {
                    let keep = index <= first || !k.eq_ignore_ascii_case(&key);
                    index += 1;
                    keep
                });
            }
            None => entries.push((key, value.to_vec())),
        }
        Ok(())
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        let key = String::from_utf8_lossy(key).into_owned();
        // Removing from a map that does not exist removes nothing.
        if self.map(map).is_some() {
            self.map_mut(map)?
                .retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
        }
        Ok(())
    }

    fn buffer(&mut self, buffer: BufferType) -> Option<&[u8]> {
        self.buffer_mut(buffer).map(|b| b.as_slice())
    }

    fn set_buffer(
        &mut self,
        buffer: BufferType,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), Status> {
        edit_buffer(
            self.buffer_mut(buffer).ok_or(Status::NotFound)?,
            start,
            size,
            data,
        )
    }

    fn get_property(&mut self, path: &[&[u8]]) -> Option<Vec<u8>> {
        let key = property_key(path);
        self.properties
            .get(&key)
            .cloned()
            .or_else(|| self.derived_property(&key))
    }

    fn set_property(&mut self, path: &[&[u8]], value: &[u8]) -> Result<(), Status> {
        self.properties.insert(property_key(path), value.to_vec());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

/// A wall clock that only moves when told to (shared by clones).
#[derive(Debug, Clone)]
pub struct FakeClock {
    nanos: Arc<Mutex<u64>>,
}

impl FakeClock {
    /// A clock reading `since_epoch` after the Unix epoch.
    pub fn at(since_epoch: Duration) -> Self {
        Self {
            nanos: Arc::new(Mutex::new(since_epoch.as_nanos() as u64)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.nanos.lock().unwrap() += by.as_nanos() as u64;
    }

    /// Nanoseconds since the Unix epoch.
    pub fn nanos(&self) -> u64 {
        *self.nanos.lock().unwrap()
    }

    /// The current reading.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.nanos())
    }
}

// ---------------------------------------------------------------------------------------------
// Plugin host
// ---------------------------------------------------------------------------------------------

/// A foreign function the plugin host offers (`proxy_call_foreign_function`).
pub type ForeignFn = Box<dyn FnMut(&[u8]) -> Result<Vec<u8>, Status> + Send>;

/// An HTTP callout as the plugin host received it.
#[derive(Debug, Clone)]
pub struct DispatchedHttpCall {
    /// What the filter asked for.
    pub request: HttpCallRequest,
    /// When (by the plugin host's clock).
    pub at: SystemTime,
}

impl DispatchedHttpCall {
    /// True once `now` is at or past the call's deadline (never, without a timeout).
    pub fn is_due(&self, now: SystemTime) -> bool {
        self.request.timeout.is_some_and(|t| now >= self.at + t)
    }
}

/// Everything a [`MemPlugin`] observed, shared with whoever holds its [`PluginHandle`].
#[derive(Debug, Default)]
pub struct PluginRecord {
    /// Every log line (`proxy_log` and WASI stdout/stderr), in order.
    pub logs: Vec<(LogLevel, String)>,
    /// HTTP callouts the filter dispatched, in order (a history: answering one by token does not
    /// remove it).
    pub http_calls: Vec<DispatchedHttpCall>,
    /// HTTP callouts host-abi cancelled (their owner went away).
    pub cancelled_http_calls: Vec<u32>,
    /// gRPC calls and streams the filter opened.
    pub grpc_calls: Vec<GrpcCallRequest>,
    /// Messages sent on gRPC streams: (token, message, end_stream).
    pub grpc_sends: Vec<(u32, Vec<u8>, bool)>,
    /// gRPC calls/streams the filter cancelled.
    pub grpc_cancels: Vec<u32>,
    /// gRPC streams the filter half-closed.
    pub grpc_closes: Vec<u32>,
    /// The last tick period the filter set (`None` = disabled or never set).
    pub tick_period: Option<Duration>,
    /// Queue ids notified (one entry per enqueue) and not yet taken by the driver.
    pub queue_ready: VecDeque<u32>,
}

impl PluginRecord {
    /// Log messages (any level) that start with `prefix`, in order.
    pub fn logs_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.logs
            .iter()
            .filter(|(_, m)| m.starts_with(prefix))
            .map(|(_, m)| m.clone())
            .collect()
    }
}

#[derive(Debug, Default)]
struct Shared {
    record: Mutex<PluginRecord>,
    /// Signalled on every queue notification (they may come from another thread).
    queue_signal: Condvar,
}

/// The driver's handle on a [`MemPlugin`]'s record.
#[derive(Debug, Clone, Default)]
pub struct PluginHandle {
    shared: Arc<Shared>,
}

impl PluginHandle {
    /// Locks the record.
    pub fn record(&self) -> MutexGuard<'_, PluginRecord> {
        self.shared.record.lock().unwrap()
    }

    /// Log messages starting with `prefix`.
    pub fn logs_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.record().logs_with_prefix(prefix)
    }

    /// The HTTP callouts dispatched so far, in order.
    pub fn http_calls(&self) -> Vec<HttpCallRequest> {
        self.record()
            .http_calls
            .iter()
            .map(|c| c.request.clone())
            .collect()
    }

    /// Tokens of the callouts whose timeout has passed at `now`.
    pub fn due_http_calls(&self, now: SystemTime) -> Vec<u32> {
        self.record()
            .http_calls
            .iter()
            .filter(|c| c.is_due(now))
            .map(|c| c.request.token)
            .collect()
    }

    /// Waits (at most `timeout`) for a queue notification and takes it.
    pub fn wait_queue_ready(&self, timeout: Duration) -> Option<u32> {
        let guard = self.shared.record.lock().unwrap();
        let (mut guard, _) = self
            .shared
            .queue_signal
            .wait_timeout_while(guard, timeout, |r| r.queue_ready.is_empty())
            .unwrap();
        guard.queue_ready.pop_front()
    }

    /// Takes every pending queue notification without waiting.
    pub fn take_queue_ready(&self) -> Vec<u32> {
        self.record().queue_ready.drain(..).collect()
    }
}

/// A [`PluginHost`] over memory: records logs and callouts, serves root-level properties and
/// foreign functions, reads a [`FakeClock`].
pub struct MemPlugin {
    handle: PluginHandle,
    clock: FakeClock,
    log_level: LogLevel,
    /// Root-level properties by dotted path (e.g. `xds.node.id`), encoded like stream properties.
    properties: BTreeMap<String, Vec<u8>>,
    /// Upstream clusters callouts may target; others are rejected with `BadArgument` as Envoy
    /// rejects an unknown cluster. `None` accepts any name.
    clusters: Option<Vec<String>>,
    foreign: HashMap<String, ForeignFn>,
}

impl MemPlugin {
    /// A plugin host with `clock`, log level TRACE (every line is reported), no properties, any
    /// cluster accepted and no foreign functions.
    pub fn new(clock: FakeClock) -> (Self, PluginHandle) {
        let handle = PluginHandle::default();
        let plugin = Self {
            handle: handle.clone(),
            clock,
            log_level: LogLevel::Trace,
            properties: BTreeMap::new(),
            clusters: None,
            foreign: HashMap::new(),
        };
        (plugin, handle)
    }

    /// Sets the level `proxy_get_log_level` reports.
    pub fn with_log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// Adds a root-level string property.
    pub fn with_property_str(mut self, path: &str, value: &str) -> Self {
        self.properties
            .insert(path.to_owned(), value.as_bytes().to_vec());
        self
    }

    /// Adds a root-level property, already encoded (strings raw, ints 8-byte LE, bools one byte).
    pub fn with_property_bytes(mut self, path: &str, value: Vec<u8>) -> Self {
        self.properties.insert(path.to_owned(), value);
        self
    }

    /// Restricts callouts to these cluster names.
    pub fn with_clusters(mut self, clusters: &[&str]) -> Self {
        self.clusters = Some(clusters.iter().map(|c| (*c).to_owned()).collect());
        self
    }

    /// Offers a foreign function.
    pub fn with_foreign_function(mut self, name: &str, f: ForeignFn) -> Self {
        self.foreign.insert(name.to_owned(), f);
        self
    }

    fn record(&self) -> MutexGuard<'_, PluginRecord> {
        self.handle.record()
    }

    fn known_cluster(&self, name: &str) -> bool {
        self.clusters
            .as_ref()
            .is_none_or(|c| c.iter().any(|n| n == name))
    }
}

impl PluginHost for MemPlugin {
    fn log(&mut self, level: LogLevel, message: &str) {
        self.record().logs.push((level, message.to_owned()));
    }

    fn log_level(&self) -> LogLevel {
        self.log_level
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn monotonic_nanos(&self) -> u64 {
        self.clock.nanos()
    }

    fn dispatch_http_call(&mut self, request: HttpCallRequest) -> Result<(), Status> {
        if !self.known_cluster(&request.upstream) {
            return Err(Status::BadArgument);
        }
        let at = self.clock.now();
        self.record()
            .http_calls
            .push(DispatchedHttpCall { request, at });
        Ok(())
    }

    fn dispatch_grpc(&mut self, request: GrpcCallRequest) -> Result<(), Status> {
        if !self.known_cluster(&String::from_utf8_lossy(&request.upstream)) {
            return Err(Status::ParseFailure);
        }
        self.record().grpc_calls.push(request);
        Ok(())
    }

    fn grpc_send(&mut self, token: u32, message: &[u8], end_stream: bool) -> Result<(), Status> {
        let mut record = self.record();
        if !record.grpc_calls.iter().any(|c| c.token == token) {
            return Err(Status::NotFound);
        }
        record
            .grpc_sends
            .push((token, message.to_vec(), end_stream));
        Ok(())
    }

    fn grpc_cancel(&mut self, token: u32) -> Result<(), Status> {
        let mut record = self.record();
        if !record.grpc_calls.iter().any(|c| c.token == token) {
            return Err(Status::NotFound);
        }
        record.grpc_cancels.push(token);
        Ok(())
    }

    fn grpc_close(&mut self, token: u32) -> Result<(), Status> {
        let mut record = self.record();
        if !record.grpc_calls.iter().any(|c| c.token == token) {
            return Err(Status::NotFound);
        }
        record.grpc_closes.push(token);
        Ok(())
    }

    fn cancel_http_call(&mut self, token: u32) {
        self.record().cancelled_http_calls.push(token);
    }

    fn call_foreign_function(&mut self, name: &str, args: &[u8]) -> Result<Vec<u8>, Status> {
        match self.foreign.get_mut(name) {
            Some(f) => f(args),
            None => Err(Status::NotFound),
        }
    }

    fn get_property(&mut self, path: &[&[u8]]) -> Option<Vec<u8>> {
        self.properties.get(&property_key(path)).cloned()
    }

    fn set_tick_period(&mut self, period: Option<Duration>) {
        self.record().tick_period = period;
    }

    fn queue_notifier(&mut self) -> Option<QueueNotifier> {
        let shared = self.handle.shared.clone();
        Some(Arc::new(move |queue_id| {
            shared
                .record
                .lock()
                .unwrap()
                .queue_ready
                .push_back(queue_id);
            shared.queue_signal.notify_all();
        }))
    }
}
