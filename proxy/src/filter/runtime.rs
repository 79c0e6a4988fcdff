//! One worker's filters: a `Plugin` (VM + failure policy) per filter, and the event loop for what
//! filters start outside a stream callback.
//!
//! A VM lives on its worker thread; everything it asks for that completes later — an HTTP callout,
//! a tick, a shared-queue notification from another thread — comes back through this worker's
//! event channel and is delivered on this thread, between callbacks, never re-entrantly. Effects
//! that such a delivery produces for a stream (continue, local reply, close) are queued on that
//! stream's [`ChainShared`] and wake it.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use tokio::sync::{Notify, mpsc};
use weir_host_abi::{
    Availability, CalloutResponse, ContextId, Effect, GrpcCallRequest, HttpCallRequest, LogLevel,
    Outcome, Plugin, PluginHost, QueueNotifier, Status, StreamBox, Verdict, VmError,
};

use super::FilterSet;
use super::grpc_callout::{self, GrpcEvent, StreamCmd};
use crate::proto::body::ProxyBody;
use crate::proto::error::ProxyError;
use crate::upstream::{self, ClusterTable, CurrentClusters};

/// Largest callout response body delivered to a filter.
const MAX_CALLOUT_BODY: usize = 1 << 20;

/// Something that happened to a stream outside its own callbacks.
#[derive(Debug)]
pub enum StreamEvent {
    /// A deferred effect for the stream's context of filter `filter`.
    Effect { filter: usize, effect: Effect },
    /// Filter `filter`'s VM failed while holding this stream.
    Failed { filter: usize, verdict: Verdict },
}

/// What a paused stream waits on; the registry of streams holds it weakly.
pub struct ChainShared {
    pub stream: RefCell<StreamBox>,
    pub events: RefCell<Vec<StreamEvent>>,
    pub wake: Notify,
}

impl ChainShared {
    pub fn push(&self, e: StreamEvent) {
        self.events.borrow_mut().push(e);
        self.wake.notify_one();
    }
}

/// Requests from plugin hosts to their worker.
enum Event {
    HttpCall {
        filter: usize,
        generation: u64,
        req: HttpCallRequest,
    },
    GrpcCall {
        filter: usize,
        generation: u64,
        req: GrpcCallRequest,
    },
    GrpcCmd {
        filter: usize,
        generation: u64,
        token: u32,
        cmd: StreamCmd,
    },
    Tick {
        filter: usize,
        generation: u64,
        period: Option<Duration>,
    },
    QueueReady {
        filter: usize,
        generation: u64,
        queue: u32,
    },
}

/// One worker's filters.
pub struct WorkerFilters {
    pub set: Arc<FilterSet>,
    /// Indexed like `FilterSet::filters`; `None` if the VM could not be started on this worker
    /// (its streams then fail closed).
    pub plugins: Vec<RefCell<Option<Plugin>>>,
    /// Per filter: which VM instance is current. Bumped each time the plugin builds a VM (its
    /// host factory runs), so anything tagged with an older generation — a callout answer, a
    /// stream context — is known to belong to a VM that is gone: context ids and callout tokens
    /// start over in a rebuilt VM and must never be confused across instances.
    generations: Vec<Arc<AtomicU64>>,
    streams: RefCell<rustc_hash::FxHashMap<(usize, u64, ContextId), Weak<ChainShared>>>,
    tickers: RefCell<Vec<Option<tokio::task::AbortHandle>>>,
    /// Open gRPC streams, by filter, VM generation and token: where the filter's sends, closes
    /// and cancels go. Dropping a sender (or this value) cancels the stream.
    grpc_streams:
        RefCell<rustc_hash::FxHashMap<(usize, u64, u32), mpsc::UnboundedSender<StreamCmd>>>,
    /// The event loop; it holds this value weakly, and is stopped when the value goes (a
    /// replaced generation is freed when its last stream ends).
    events: RefCell<Option<tokio::task::AbortHandle>>,
}

impl Drop for WorkerFilters {
    fn drop(&mut self) {
        if let Some(h) = self.events.get_mut().take() {
            h.abort();
        }
        for h in self.tickers.get_mut().iter_mut().filter_map(Option::take) {
            h.abort();
        }
    }
}

impl WorkerFilters {
    /// Starts every filter's VM on this worker and the worker's filter event loop. Callouts go
    /// to the clusters of the worker's current generation (`clusters`).
    pub fn start(set: Arc<FilterSet>, clusters: CurrentClusters) -> Rc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let generations: Vec<Arc<AtomicU64>> =
            (0..set.filters.len()).map(|_| Arc::default()).collect();
        let plugins = set
            .filters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let host = WorkerPluginHost {
                    filter: i,
                    generation: 0,
                    name: f.name.clone().into(),
                    clusters: set.clusters.clone(),
                    node: set.node.clone(),
                    tx: tx.clone(),
                };
                let generation = generations[i].clone();
                let factory = Box::new(move || {
                    let mut h = host.clone();
                    h.generation = generation.fetch_add(1, Relaxed) + 1;
                    Box::new(h) as Box<dyn PluginHost>
                });
                match Plugin::new(&set.runtime, f.module.clone(), f.plugin.clone(), factory) {
                    Ok(p) => RefCell::new(Some(p)),
                    Err(e) => {
                        tracing::error!(filter = %f.name, error = %e, "filter VM did not start on this worker; its streams fail closed");
                        RefCell::new(None)
                    }
                }
            })
            .collect();
        let n = set.filters.len();
        let me = Rc::new(Self {
            set,
            plugins,
            generations,
            streams: RefCell::new(rustc_hash::FxHashMap::default()),
            tickers: RefCell::new(vec![None; n]),
            grpc_streams: RefCell::new(rustc_hash::FxHashMap::default()),
            events: RefCell::new(None),
        });
        let task = tokio::task::spawn_local(Self::run(Rc::downgrade(&me), rx, clusters));
        *me.events.borrow_mut() = Some(task.abort_handle());
        me
    }

    /// The filter set these VMs run.
    pub fn set(&self) -> &Arc<FilterSet> {
        &self.set
    }

    /// The generation of the filter's current VM.
    pub fn generation(&self, filter: usize) -> u64 {
        self.generations[filter].load(Relaxed)
    }

    /// Registers a stream context (of the current VM) so asynchronous deliveries can reach it.
    pub fn register(&self, filter: usize, ctx: ContextId, shared: &Rc<ChainShared>) {
        let g = self.generation(filter);
        self.streams
            .borrow_mut()
            .insert((filter, g, ctx), Rc::downgrade(shared));
    }

    pub fn unregister(&self, filter: usize, generation: u64, ctx: ContextId) {
        self.streams.borrow_mut().remove(&(filter, generation, ctx));
    }

    fn stream(&self, filter: usize, ctx: ContextId) -> Option<Rc<ChainShared>> {
        let g = self.generation(filter);
        self.streams
            .borrow()
            .get(&(filter, g, ctx))
            .and_then(Weak::upgrade)
    }

    /// Routes a callback's deferred effects to the streams they name.
    pub fn route_effects(&self, filter: usize, outcome: Outcome) {
        for d in outcome.effects {
            if let Some(s) = self.stream(filter, d.context) {
                s.push(StreamEvent::Effect {
                    filter,
                    effect: d.effect,
                });
            }
        }
    }

    /// A VM failed: apply the policy and tell every stream it held.
    pub fn vm_failed(&self, filter: usize, failure: &weir_host_abi::VmFailed) -> Verdict {
        let verdict = match self.plugins[filter].borrow_mut().as_mut() {
            Some(p) => p.on_failure(failure),
            None => Verdict::FailClosed,
        };
        for ctx in &failure.live_streams {
            if let Some(s) = self.stream(filter, *ctx) {
                s.push(StreamEvent::Failed { filter, verdict });
            }
        }
        verdict
    }

    /// Runs `f` on the filter's VM (outside any stream callback) and routes what it produced.
    fn deliver(
        &self,
        filter: usize,
        generation: u64,
        f: impl FnOnce(&mut weir_host_abi::Vm) -> Result<Outcome, VmError>,
    ) {
        if generation != self.generation(filter) {
            return; // meant for a VM that is gone
        }
        let result = {
            let mut slot = self.plugins[filter].borrow_mut();
            let Some(plugin) = slot.as_mut() else { return };
            match plugin.vm() {
                Availability::Ready(vm) => f(vm),
                Availability::Unavailable(_) => return,
            }
        };
        match result {
            Ok(outcome) => self.route_effects(filter, outcome),
            Err(VmError::Failed(failure)) => {
                self.vm_failed(filter, &failure);
            }
            Err(e) => {
                tracing::warn!(filter = %self.set.filters[filter].name, error = %e, "filter callback refused")
            }
        }
    }

    async fn run(me: Weak<Self>, mut rx: mpsc::UnboundedReceiver<Event>, current: CurrentClusters) {
        while let Some(ev) = rx.recv().await {
            let Some(this) = me.upgrade() else { return };
            let clusters = current.borrow().clone();
            match ev {
                Event::HttpCall {
                    filter,
                    generation,
                    req,
                } => {
                    let me = this.clone();
                    tokio::task::spawn_local(async move {
                        let token = req.token;
                        let resp = callout(&clusters, &req).await;
                        me.deliver_callout(filter, generation, token, resp);
                    });
                }
                Event::GrpcCall {
                    filter,
                    generation,
                    req,
                } => this.start_grpc(filter, generation, req, &clusters),
                Event::GrpcCmd {
                    filter,
                    generation,
                    token,
                    cmd,
                } => {
                    let streams = this.grpc_streams.borrow();
                    if let Some(tx) = streams.get(&(filter, generation, token)) {
                        let _ = tx.send(cmd);
                    }
                }
                Event::Tick {
                    filter,
                    generation,
                    period,
                } => this.set_ticker(filter, generation, period),
                Event::QueueReady {
                    filter,
                    generation,
                    queue,
                } => {
                    this.deliver(filter, generation, |vm| vm.on_queue_ready(queue));
                }
            }
        }
    }

    fn deliver_callout(&self, filter: usize, generation: u64, token: u32, resp: CalloutResponse) {
        // `deliver` drops an answer of a VM that has since been replaced: its token may already
        // name another call of the new VM.
        self.deliver(filter, generation, |vm| {
            // Lend the dispatching stream, if it still exists, so the filter can edit and resume it.
            match vm
                .http_call_context(token)
                .and_then(|c| self.stream(filter, c))
            {
                Some(s) => {
                    let mut stream = s.stream.borrow_mut();
                    vm.on_http_call_response(token, resp, Some(&mut stream))
                }
                None => vm.on_http_call_response(token, resp, None),
            }
        });
    }

    /// Starts a filter's gRPC call or stream on its task; an unusable cluster is answered at once.
    fn start_grpc(
        self: &Rc<Self>,
        filter: usize,
        generation: u64,
        req: GrpcCallRequest,
        clusters: &Rc<ClusterTable>,
    ) {
        let found = std::str::from_utf8(&req.upstream)
            .ok()
            .and_then(|n| clusters.get(n))
            .cloned();
        let cluster = match found {
            Some(c) if grpc_callout::usable(&c) => c,
            other => {
                let why = match other {
                    Some(c) => {
                        tracing::warn!(cluster = %c.name, "a gRPC callout needs a cluster with protocol: http2");
                        "the cluster does not speak HTTP/2"
                    }
                    None => "unknown cluster",
                };
                let ev = GrpcEvent::Close(grpc_callout::code::UNAVAILABLE, why.into());
                return self.deliver_grpc(filter, generation, req.token, ev);
            }
        };
        if !req.streaming {
            let me = self.clone();
            tokio::task::spawn_local(async move {
                let ev = grpc_callout::call(&cluster, &req).await;
                me.deliver_grpc(filter, generation, req.token, ev);
            });
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let key = (filter, generation, req.token);
        self.grpc_streams.borrow_mut().insert(key, tx);
        // Weak: an open stream must not keep a replaced generation alive (whose drop cancels it).
        let me = Rc::downgrade(self);
        tokio::task::spawn_local(async move {
            let token = req.token;
            grpc_callout::stream(&cluster, &req, rx, |ev| {
                if let Some(me) = me.upgrade() {
                    me.deliver_grpc(filter, generation, token, ev);
                }
            })
            .await;
            if let Some(me) = me.upgrade() {
                me.grpc_streams.borrow_mut().remove(&key);
            }
        });
    }

    /// Hands a gRPC event to the filter, lending the dispatching stream if it still exists.
    fn deliver_grpc(&self, filter: usize, generation: u64, token: u32, ev: GrpcEvent) {
        self.deliver(filter, generation, |vm| {
            let origin = vm.grpc_call_context(token);
            let stream = origin.and_then(|c| self.stream(filter, c));
            let mut lent = stream.as_ref().map(|s| s.stream.borrow_mut());
            let lent = lent.as_deref_mut();
            match ev {
                GrpcEvent::InitialMetadata(m) => {
                    vm.on_grpc_receive_initial_metadata(token, m, lent)
                }
                GrpcEvent::Message(m) => vm.on_grpc_receive(token, m, lent),
                GrpcEvent::TrailingMetadata(m) => {
                    vm.on_grpc_receive_trailing_metadata(token, m, lent)
                }
                GrpcEvent::Close(code, message) => vm.on_grpc_close(token, code, message, lent),
                GrpcEvent::Reply(m) => vm.on_grpc_call_response(token, m, lent),
            }
        });
    }

    fn set_ticker(self: &Rc<Self>, filter: usize, generation: u64, period: Option<Duration>) {
        if let Some(h) = self.tickers.borrow_mut()[filter].take() {
            h.abort();
        }
        let Some(period) = period else { return };
        let me = Rc::downgrade(self);
        let task = tokio::task::spawn_local(async move {
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await; // the first tick completes at once
            loop {
                every.tick().await;
                let Some(me) = me.upgrade() else { return };
                if generation != me.generation(filter) {
                    return; // the VM that asked for ticks is gone
                }
                me.deliver(filter, generation, |vm| vm.on_tick());
            }
        });
        self.tickers.borrow_mut()[filter] = Some(task.abort_handle());
    }
}

/// Performs an HTTP callout on a manifest cluster, through the worker's pools. Like Envoy, a
/// timeout or an unreachable cluster comes back as a response (504 / 503); a reset as a failure.
async fn callout(clusters: &ClusterTable, req: &HttpCallRequest) -> CalloutResponse {
    let Some(cluster) = clusters.get(&req.upstream) else {
        return CalloutResponse::failure("unknown cluster");
    };
    let mut builder = Request::builder();
    let mut authority = None;
    for (k, v) in &req.headers {
        match k.as_slice() {
            b":method" => builder = builder.method(Method::from_bytes(v).unwrap_or(Method::GET)),
            b":path" => builder = builder.uri(String::from_utf8_lossy(v).into_owned()),
            b":authority" => authority = Some(v.clone()),
            b":scheme" => {}
            _ => builder = builder.header(k.as_slice(), v.as_slice()),
        }
    }
    if let Some(a) = authority
        && let Ok(v) = HeaderValue::from_bytes(&a)
    {
        builder = builder.header(http::header::HOST, v);
    }
    let body = if req.trailers.is_empty() {
        ProxyBody::from(Bytes::from(req.body.clone()))
    } else {
        let mut t = http::HeaderMap::new();
        for (k, v) in &req.trailers {
            if let (Ok(k), Ok(v)) = (
                http::header::HeaderName::from_bytes(k),
                HeaderValue::from_bytes(v),
            ) {
                t.append(k, v);
            }
        }
        let data = (!req.body.is_empty()).then(|| Bytes::from(req.body.clone()));
        ProxyBody::Complete(Box::new((data, Some(t))))
    };
    let Ok(request) = builder.body(body) else {
        return CalloutResponse::failure("invalid callout request");
    };
    let timeout = req.timeout.unwrap_or(cluster.response_timeout);
    let exchange = async {
        let resp = upstream::callout(
            cluster,
            request,
            &upstream::Route {
                response_timeout: timeout,
                ..upstream::Route::of(cluster)
            },
        )
        .await?;
        let (parts, body) = resp.into_parts();
        let collected = Limited::new(body, MAX_CALLOUT_BODY)
            .collect()
            .await
            .map_err(|_| ProxyError::Internal("callout body"))?;
        Ok::<_, ProxyError>((parts, collected))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => local_response(504, "upstream request timeout"),
        Ok(Err(e)) => match e {
            ProxyError::NoHealthyUpstream(_) => local_response(503, "no healthy upstream"),
            ProxyError::Overflow(_) => local_response(503, "upstream overflow"),
            e if e.status() == 503 => local_response(503, "upstream connect error"),
            e if e.status() == 504 => local_response(504, "upstream request timeout"),
            e => CalloutResponse::failure(e.reason()),
        },
        Ok(Ok((parts, collected))) => {
            let mut headers = vec![(
                b":status".to_vec(),
                parts.status.as_str().as_bytes().to_vec(),
            )];
            headers.extend(
                parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
            );
            let trailers = collected
                .trailers()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            CalloutResponse {
                headers,
                body: collected.to_bytes().to_vec(),
                trailers,
                status: None,
            }
        }
    }
}

fn local_response(status: u16, body: &str) -> CalloutResponse {
    CalloutResponse {
        headers: vec![(b":status".to_vec(), status.to_string().into_bytes())],
        body: body.as_bytes().to_vec(),
        trailers: Vec::new(),
        status: None,
    }
}

impl WorkerPluginHost {
    /// Hands a stream command to the worker's event loop (the VM has checked the token).
    fn grpc_cmd(&mut self, token: u32, cmd: StreamCmd) -> Result<(), Status> {
        self.tx
            .send(Event::GrpcCmd {
                filter: self.filter,
                generation: self.generation,
                token,
                cmd,
            })
            .map_err(|_| Status::InternalFailure)
    }
}

/// The `PluginHost` of every VM on a worker: logs through `tracing`, sends callouts, ticks and
/// queue notifications to the worker's event loop.
#[derive(Clone)]
struct WorkerPluginHost {
    filter: usize,
    generation: u64,
    name: Arc<str>,
    clusters: Arc<arc_swap::ArcSwap<Vec<String>>>,
    /// What the xDS node says of this proxy (`xds.node.*`, `node.*`).
    node: Arc<super::NodeProperties>,
    tx: mpsc::UnboundedSender<Event>,
}

impl PluginHost for WorkerPluginHost {
    /// Properties no stream has: the xDS node's (`xds.node.id`, `node.metadata.KEY`, …).
    fn get_property(&mut self, path: &[&[u8]]) -> Option<Vec<u8>> {
        if self.node.is_empty() {
            return None;
        }
        let mut dotted = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
        for (i, seg) in path.iter().enumerate() {
            if i > 0 {
                dotted.push(b'.');
            }
            dotted.extend_from_slice(seg);
        }
        self.node.get(dotted.as_slice()).cloned()
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        let f = &*self.name;
        match level {
            LogLevel::Trace => tracing::trace!(filter = f, "{message}"),
            LogLevel::Debug => tracing::debug!(filter = f, "{message}"),
            LogLevel::Info => tracing::info!(filter = f, "{message}"),
            LogLevel::Warn => tracing::warn!(filter = f, "{message}"),
            LogLevel::Error | LogLevel::Critical => tracing::error!(filter = f, "{message}"),
        }
    }

    fn log_level(&self) -> LogLevel {
        if tracing::enabled!(tracing::Level::TRACE) {
            LogLevel::Trace
        } else if tracing::enabled!(tracing::Level::DEBUG) {
            LogLevel::Debug
        } else if tracing::enabled!(tracing::Level::INFO) {
            LogLevel::Info
        } else {
            LogLevel::Warn
        }
    }

    fn dispatch_http_call(&mut self, request: HttpCallRequest) -> Result<(), Status> {
        // Callouts reach configured clusters only (hardening.md: a filter is untrusted code).
        if !self.clusters.load().contains(&request.upstream) {
            return Err(Status::BadArgument);
        }
        self.tx
            .send(Event::HttpCall {
                filter: self.filter,
                generation: self.generation,
                req: request,
            })
            .map_err(|_| Status::InternalFailure)
    }

    fn dispatch_grpc(&mut self, request: GrpcCallRequest) -> Result<(), Status> {
        // Configured clusters only (hardening.md: a filter is untrusted code).
        if !self
            .clusters
            .load()
            .iter()
            .any(|c| c.as_bytes() == request.upstream)
        {
            return Err(Status::ParseFailure);
        }
        self.tx
            .send(Event::GrpcCall {
                filter: self.filter,
                generation: self.generation,
                req: request,
            })
            .map_err(|_| Status::InternalFailure)
    }

    fn grpc_send(&mut self, token: u32, message: &[u8], end_stream: bool) -> Result<(), Status> {
        // Only a stream takes messages (a unary call's token: BadArgument, as in Envoy).
        if token & 3 != 2 {
            return Err(Status::BadArgument);
        }
        self.grpc_cmd(token, StreamCmd::Send(message.to_vec(), end_stream))
    }

    /// A stream is reset. A unary call's token is already forgotten by the VM, so its answer is
    /// dropped on arrival.
    fn grpc_cancel(&mut self, token: u32) -> Result<(), Status> {
        self.grpc_cmd(token, StreamCmd::Cancel)
    }

    fn grpc_close(&mut self, token: u32) -> Result<(), Status> {
        self.grpc_cmd(token, StreamCmd::Close)
    }

    fn set_tick_period(&mut self, period: Option<Duration>) {
        let _ = self.tx.send(Event::Tick {
            filter: self.filter,
            generation: self.generation,
            period,
        });
    }

    fn queue_notifier(&mut self) -> Option<QueueNotifier> {
        let (tx, filter, generation) = (self.tx.clone(), self.filter, self.generation);
        Some(Arc::new(move |queue| {
            let _ = tx.send(Event::QueueReady {
                filter,
                generation,
                queue,
            });
        }))
    }
}
