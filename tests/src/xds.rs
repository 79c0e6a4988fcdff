//! A scripted ADS server (Envoy's Aggregated Discovery Service, xDS v3) on `127.0.0.1`: the
//! control plane of the tests that run weir as an xDS client.
//!
//! A test starts an [`AdsServer`], points weir's bootstrap at [`AdsServer::addr`], and scripts the
//! resources with [`AdsServer::set`] and [`AdsServer::remove`] (each call is one new version of
//! that type, pushed at once to every stream subscribed to what changed). What weir sent back is
//! recorded, in order, as [`Seen`] requests: a test waits for an ACK or a NACK with
//! [`AdsServer::wait_for`] rather than sleeping, e.g.
//! `ads.wait_for(|s| s.is_ack_of(types::CLUSTER, &version))` with the version `set` returned.
//! [`AdsServer::hold`] keeps one type's responses back (to see weir warming, waiting on a
//! dependency), [`AdsServer::disconnect_all`] ends every stream without closing the port, and
//! [`AdsServer::stop`] followed by [`AdsServer::start_at`] on the same address is a control
//! plane restart.
//!
//! Both stream flavours are served, each tracked per type URL (a client may interleave types on
//! its one stream, e.g. subscribe to endpoints before it ACKs the clusters):
//!
//! - **State of the world** (`StreamAggregatedResources`): a response carries the type's whole
//!   set for a wildcard subscription (an empty name list for listeners and clusters, or `*`),
//!   else the subscribed names that exist; for listeners and clusters a missing resource is a
//!   removed one. The server answers a request that changes the subscription (the first one of a
//!   type included) and pushes when a resource the stream subscribes to was set or removed; a
//!   request whose nonce is not the last one sent for its type is stale: recorded, not answered,
//!   its subscription ignored (the client repeats it when it ACKs the newer response).
//! - **Incremental** (`DeltaAggregatedResources`): subscriptions change by
//!   `resource_names_subscribe` / `_unsubscribe` (`*`, or an empty first subscribe for listeners
//!   and clusters, is the wildcard); the server tracks which version of each resource the client
//!   has (from `initial_resource_versions` on the first request of a type, then from what it
//!   sent) and sends only resources whose version differs, and the names the client has that no
//!   longer exist as `removed_resources`. A resource's version is a digest of its packed bytes
//!   ([`AdsServer::resource_version`]), so a restarted server gives the same resources the same
//!   versions and setting identical content pushes nothing.
//!
//! A NACK is recorded and changes nothing else: the rejected version is not sent again, and what
//! comes next is the next change.
//!
//! The type's version (`version_info`, `system_version_info`) is a counter per type, bumped by
//! every `set` and `remove`; nonces are unique across the server. Types never `set` get no
//! response (as from a control plane that does not know them); `set(type, [])` makes a type exist
//! and empty. The server stops when the [`AdsServer`] is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
pub use envoy_types::pb::google::protobuf::Any;
use sha2::Digest as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Status, Streaming};

use crate::TIMEOUT;

/// The type URLs of the resources Weir takes over xDS.
pub mod types {
    /// `envoy.config.listener.v3.Listener` (LDS; a wildcard type).
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// `envoy.config.cluster.v3.Cluster` (CDS; a wildcard type).
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    /// `envoy.config.core.v3.TypedExtensionConfig` (ECDS).
    pub const EXTENSION_CONFIG: &str =
        "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

    /// Whether an empty subscription to `type_url` means "everything" (Envoy's legacy wildcard,
    /// which only listeners and clusters have).
    pub fn is_wildcard_type(type_url: &str) -> bool {
        type_url == LISTENER || type_url == CLUSTER
    }
}

/// Packs `m` into an [`Any`] with its type URL (`type.googleapis.com/…`).
pub fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Which ADS method a stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `StreamAggregatedResources`: state of the world.
    Sotw,
    /// `DeltaAggregatedResources`: incremental.
    Delta,
}

/// What a request was, judged by its `response_nonce` against what the server sent on its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No nonce: a subscription (a stream's first request of a type, or a delta subscription
    /// change) not answering any response.
    Request,
    /// Accepts the response its nonce names (no `error_detail`).
    Ack,
    /// Rejects the response its nonce names (`error_detail` set).
    Nack,
    /// A nonce that is not current: for state of the world, not the last one sent for the type;
    /// for delta, not one the server sent on this stream. Recorded, otherwise ignored.
    Stale,
}

/// One request a client sent, as recorded by the server.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which stream sent it: 1 for the first the server accepted, 2 for the next, …
    pub stream: u64,
    pub mode: Mode,
    pub kind: Kind,
    pub type_url: String,
    /// The node id of the stream: from the first of its messages that carried a `Node` (a client
    /// need send it only once per stream).
    pub node_id: Option<String>,
    /// Whether this very message carried a `Node`.
    pub has_node: bool,
    /// State of the world: the version the client last accepted (empty before any).
    pub version_info: String,
    pub response_nonce: String,
    /// The version (`version_info` / `system_version_info`) of the response `response_nonce`
    /// names, if the server sent that nonce on this stream.
    pub answers: Option<String>,
    /// State of the world: the full subscription.
    pub resource_names: Vec<String>,
    /// Delta: `resource_names_subscribe`.
    pub subscribe: Vec<String>,
    /// Delta: `resource_names_unsubscribe`.
    pub unsubscribe: Vec<String>,
    /// Delta: what the client says it already has, name → version.
    pub initial_resource_versions: BTreeMap<String, String>,
    /// `error_detail`: code and message of a NACK.
    pub error: Option<(i32, String)>,
}

impl Seen {
    /// An ACK of version `version` of `type_url`.
    pub fn is_ack_of(&self, type_url: &str, version: &str) -> bool {
        self.kind == Kind::Ack
            && self.type_url == type_url
            && self.answers.as_deref() == Some(version)
    }

    /// A NACK of version `version` of `type_url`.
    pub fn is_nack_of(&self, type_url: &str, version: &str) -> bool {
        self.kind == Kind::Nack
            && self.type_url == type_url
            && self.answers.as_deref() == Some(version)
    }
}

/// A running scripted ADS server. See the module docs.
pub struct AdsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl AdsServer {
    /// Starts a server with no resources on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<AdsServer> {
        AdsServer::start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server with no resources on `addr`: the address of a stopped one, to restart a
    /// control plane where its clients look for it.
    pub async fn start_at(addr: SocketAddr) -> anyhow::Result<AdsServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the ADS server to {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let service = AggregatedDiscoveryServiceServer::new(Service {
            shared: Arc::clone(&shared),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        // No Nagle, as a real control plane's gRPC server: a large response's last segment
        // would otherwise wait for the client's delayed ACK (40 ms).
        let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |s| {
            s.and_then(|s| s.set_nodelay(true).map(|()| s))
        });
        let task = tokio::spawn(async move {
            // On the signal the listener closes at once, then the server waits for its
            // connections to go (they do: `shutdown` has ended every stream first).
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(service, incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(AdsServer {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address to put in weir's bootstrap (`http://ADDR`, plaintext HTTP/2).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets (adds or replaces) resources of `type_url`, name → packed resource, as one new version
    /// of the type, and returns that version. Streams subscribed to any of them get it at once
    /// (unless the type is held). The resources are not checked: a wrongly typed or garbled one
    /// is how a test makes the client NACK.
    pub fn set<N: Into<String>>(
        &self,
        type_url: &str,
        resources: impl IntoIterator<Item = (N, Any)>,
    ) -> String {
        let version = {
            let mut state = self.shared.state.lock().unwrap();
            let ts = state.types.entry(type_url.to_owned()).or_default();
            ts.version += 1;
            for (name, any) in resources {
                let name = name.into();
                ts.removed.remove(&name);
                let entry = Entry {
                    version: digest(&any),
                    any,
                    changed_at: ts.version,
                };
                ts.resources.insert(name, entry);
            }
            ts.version.to_string()
        };
        self.shared.changed.send_modify(|n| *n += 1);
        version
    }

    /// Removes resources of `type_url` as one new version of the type, and returns that version.
    /// Names that do not exist are ignored.
    pub fn remove(&self, type_url: &str, names: &[&str]) -> String {
        let version = {
            let mut state = self.shared.state.lock().unwrap();
            let ts = state.types.entry(type_url.to_owned()).or_default();
            ts.version += 1;
            for name in names {
                if ts.resources.remove(*name).is_some() {
                    ts.removed.insert((*name).to_owned(), ts.version);
                }
            }
            ts.version.to_string()
        };
        self.shared.changed.send_modify(|n| *n += 1);
        version
    }

    /// `true`: no response of `type_url` is sent (requests are still recorded and subscriptions
    /// followed); `false`: every stream gets what it is owed now.
    pub fn hold(&self, type_url: &str, on: bool) {
        {
            let mut state = self.shared.state.lock().unwrap();
            if on {
                state.held.insert(type_url.to_owned());
            } else {
                state.held.remove(type_url);
            }
        }
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// The delta version of resource `name` of `type_url` (what a client that has it puts in
    /// `initial_resource_versions`), if it exists.
    pub fn resource_version(&self, type_url: &str, name: &str) -> Option<String> {
        let state = self.shared.state.lock().unwrap();
        let entry = state.types.get(type_url)?.resources.get(name)?;
        Some(entry.version.clone())
    }

    /// Every request the clients sent, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// Waits until a request for which `pred` holds has arrived (one already recorded counts),
    /// and returns the first such; an error, listing the last requests, after [`TIMEOUT`].
    pub async fn wait_for(&self, pred: impl Fn(&Seen) -> bool) -> anyhow::Result<Seen> {
        let mut arrivals = self.shared.arrivals.subscribe();
        let found = tokio::time::timeout(TIMEOUT, async {
            let mut from = 0;
            loop {
                {
                    let state = self.shared.state.lock().unwrap();
                    if let Some(seen) = state.requests[from..].iter().find(|s| pred(s)) {
                        return seen.clone();
                    }
                    from = state.requests.len();
                }
                // The sender lives as long as `self`: this only returns on a new request.
                let _ = arrivals.changed().await;
            }
        })
        .await;
        found.map_err(|_| {
            let requests = self.requests();
            let last = &requests[requests.len().saturating_sub(10)..];
            anyhow::anyhow!(
                "no matching ADS request within {TIMEOUT:?} ({} recorded); the last ones: {last:#?}",
                requests.len()
            )
        })
    }

    /// How many ADS streams are open now, and how many were accepted in all.
    pub fn streams(&self) -> (usize, u64) {
        *self.shared.streams.borrow()
    }

    /// Waits until `pred(open, total)` holds (see [`AdsServer::streams`]), and returns the
    /// counts; an error after [`TIMEOUT`].
    pub async fn wait_streams(
        &self,
        pred: impl Fn(usize, u64) -> bool,
    ) -> anyhow::Result<(usize, u64)> {
        let mut streams = self.shared.streams.subscribe();
        let waited = tokio::time::timeout(
            TIMEOUT,
            streams.wait_for(|&(open, total)| pred(open, total)),
        )
        .await;
        match waited {
            Ok(Ok(counts)) => Ok(*counts),
            _ => Err(anyhow::anyhow!(
                "the ADS stream counts did not get there within {TIMEOUT:?}: (open, total) = {:?}",
                self.streams()
            )),
        }
    }

    /// Ends every open stream with status UNAVAILABLE (the client sees its stream fail); the
    /// server keeps accepting new ones.
    pub fn disconnect_all(&self) {
        self.shared.disconnect.send_modify(|n| *n += 1);
    }

    /// Stops the server: every stream ends, the port closes, and this returns once the
    /// connections are gone (or after [`TIMEOUT`]).
    pub async fn stop(mut self) {
        self.shutdown();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(TIMEOUT, &mut task).await.is_err()
        {
            task.abort();
        }
    }

    fn shutdown(&mut self) {
        // Refuse streams first, then end the open ones: none slips in between to keep a
        // connection (and so the server) alive.
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.disconnect_all();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the server object and its streams share.
struct Shared {
    state: Mutex<State>,
    /// Bumped when resources or holds change: every stream works out what it now owes.
    changed: watch::Sender<u64>,
    /// Bumped per recorded request: wakes [`AdsServer::wait_for`].
    arrivals: watch::Sender<u64>,
    /// Bumped by `disconnect_all`: every stream open at that moment ends.
    disconnect: watch::Sender<u64>,
    /// (open, total) streams.
    streams: watch::Sender<(usize, u64)>,
    /// Set by `stop` (or drop): new streams are refused.
    stopped: AtomicBool,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            state: Mutex::default(),
            changed: watch::Sender::new(0),
            arrivals: watch::Sender::new(0),
            disconnect: watch::Sender::new(0),
            streams: watch::Sender::new((0, 0)),
            stopped: AtomicBool::new(false),
        }
    }
}

#[derive(Default)]
struct State {
    types: HashMap<String, TypeState>,
    held: HashSet<String>,
    requests: Vec<Seen>,
    /// The last nonce handed out.
    nonce: u64,
}

/// The next nonce from `counter` (`State::nonce`): a function of the field alone, so it can be
/// taken while a type's resources are borrowed from the same state.
fn next_nonce(counter: &mut u64) -> String {
    *counter += 1;
    counter.to_string()
}

/// One type's resources.
#[derive(Default)]
struct TypeState {
    /// Bumped by every `set` and `remove`; 0 until the first.
    version: u64,
    resources: BTreeMap<String, Entry>,
    /// Removed name → the type version that removed it (a state-of-the-world stream subscribed
    /// to it by name is pushed the removal).
    removed: BTreeMap<String, u64>,
}

impl TypeState {
    /// Whether something `sub` covers was set or removed after type version `since`.
    fn changed_since(&self, since: u64, sub: &Subscription) -> bool {
        self.resources
            .iter()
            .any(|(name, e)| e.changed_at > since && sub.covers(name))
            || self
                .removed
                .iter()
                .any(|(name, &at)| at > since && sub.covers(name))
    }
}

struct Entry {
    any: Any,
    /// Its delta version: a digest of `any`.
    version: String,
    /// The type version that last set it.
    changed_at: u64,
}

/// The first 16 hex digits of the SHA-256 of a packed resource.
fn digest(any: &Any) -> String {
    let mut h = sha2::Sha256::new();
    h.update(any.type_url.as_bytes());
    h.update([0]);
    h.update(&any.value);
    hex::encode(&h.finalize()[..8])
}

/// The names a stream subscribes to, for one type.
#[derive(Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
}

impl Subscription {
    fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

struct Service {
    shared: Arc<Shared>,
}

type ResponseStream<T> = UnboundedReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, Status> {
        spawn_stream::<Sotw>(&self.shared, request.into_inner()).map(tonic::Response::new)
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, Status> {
        spawn_stream::<Delta>(&self.shared, request.into_inner()).map(tonic::Response::new)
    }
}

/// One stream flavour: how a request changes the stream's state, and what the stream is owed.
trait Protocol: Default + Send + 'static {
    type Req: prost::Message + Default + Send + 'static;
    type Resp: Send + 'static;

    /// Records `req` (sent on stream number `stream`) and applies its subscription change.
    fn on_request(&mut self, stream: u64, req: Self::Req, state: &mut State);

    /// The responses the client is owed now, for every type not held; marks them sent.
    fn owed(&mut self, state: &mut State) -> Vec<Self::Resp>;
}

/// Runs one stream in a task of its own: requests, pushes and `disconnect_all`, in arrival order.
fn spawn_stream<P: Protocol>(
    shared: &Arc<Shared>,
    mut inbound: Streaming<P::Req>,
) -> Result<ResponseStream<P::Resp>, Status> {
    // Subscribed before the `stopped` check: a `disconnect_all` after it is seen by the task.
    let mut disconnect = shared.disconnect.subscribe();
    let mut changed = shared.changed.subscribe();
    if shared.stopped.load(Ordering::SeqCst) {
        return Err(Status::unavailable("the test ADS server is stopping"));
    }
    let mut id = 0;
    shared.streams.send_modify(|(open, total)| {
        *open += 1;
        *total += 1;
        id = *total;
    });
    let (tx, rx) = mpsc::unbounded_channel::<Result<P::Resp, Status>>();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut stream = P::default();
        loop {
            // Responses are queued under the state lock, so their order is the order in which
            // the state changed.
            tokio::select! {
                msg = inbound.message() => {
                    let Ok(Some(req)) = msg else { break };
                    {
                        let mut state = shared.state.lock().unwrap();
                        stream.on_request(id, req, &mut state);
                        for resp in stream.owed(&mut state) {
                            let _ = tx.send(Ok(resp));
                        }
                    }
                    shared.arrivals.send_modify(|n| *n += 1);
                }
                _ = changed.changed() => {
                    let mut state = shared.state.lock().unwrap();
                    for resp in stream.owed(&mut state) {
                        let _ = tx.send(Ok(resp));
                    }
                }
                _ = disconnect.changed() => {
                    let _ = tx.send(Err(Status::unavailable("disconnected by the test")));
                    break;
                }
                () = tx.closed() => break,
            }
        }
        shared.streams.send_modify(|(open, _)| *open -= 1);
    });
    Ok(UnboundedReceiverStream::new(rx))
}

fn error_of(detail: Option<&envoy_types::pb::google::rpc::Status>) -> Option<(i32, String)> {
    detail.map(|s| (s.code, s.message.clone()))
}

/// A state-of-the-world stream.
#[derive(Default)]
struct Sotw {
    node_id: Option<String>,
    types: BTreeMap<String, SotwType>,
    /// Nonce → version of every response sent on the stream.
    sent: HashMap<String, String>,
}

#[derive(Default)]
struct SotwType {
    sub: Subscription,
    /// The nonce of the last response of this type (empty before any).
    nonce: String,
    /// The type version of the last response.
    version: Option<u64>,
    /// The subscription changed since the last response: the next one is owed regardless.
    dirty: bool,
}

impl Protocol for Sotw {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;

    fn on_request(&mut self, stream: u64, req: DiscoveryRequest, state: &mut State) {
        if self.node_id.is_none() {
            self.node_id = req.node.as_ref().map(|n| n.id.clone());
        }
        let first = !self.types.contains_key(&req.type_url);
        let t = self.types.entry(req.type_url.clone()).or_default();
        let answers = self.sent.get(&req.response_nonce).cloned();
        let kind = if req.response_nonce != t.nonce {
            Kind::Stale
        } else if req.response_nonce.is_empty() {
            Kind::Request
        } else if req.error_detail.is_some() {
            Kind::Nack
        } else if answers.as_deref() == Some(req.version_info.as_str()) {
            Kind::Ack
        } else {
            // The current nonce with another version and no error: not an ACK of anything.
            Kind::Request
        };
        if kind != Kind::Stale {
            let wildcard = req.resource_names.iter().any(|n| n == "*")
                || (req.resource_names.is_empty() && types::is_wildcard_type(&req.type_url));
            let names: BTreeSet<String> = req
                .resource_names
                .iter()
                .filter(|n| *n != "*")
                .cloned()
                .collect();
            if first || wildcard != t.sub.wildcard || names != t.sub.names {
                t.sub = Subscription { wildcard, names };
                t.dirty = true;
            }
        }
        state.requests.push(Seen {
            stream,
            mode: Mode::Sotw,
            kind,
            type_url: req.type_url,
            node_id: self.node_id.clone(),
            has_node: req.node.is_some(),
            version_info: req.version_info,
            response_nonce: req.response_nonce,
            answers,
            resource_names: req.resource_names,
            subscribe: Vec::new(),
            unsubscribe: Vec::new(),
            initial_resource_versions: BTreeMap::new(),
            error: error_of(req.error_detail.as_ref()),
        });
    }

    fn owed(&mut self, state: &mut State) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        for (type_url, t) in &mut self.types {
            if state.held.contains(type_url) {
                continue;
            }
            let Some(ts) = state.types.get(type_url) else {
                continue;
            };
            let owed = t.dirty
                || match t.version {
                    None => true,
                    Some(v) => ts.changed_since(v, &t.sub),
                };
            if !owed {
                continue;
            }
            let nonce = next_nonce(&mut state.nonce);
            let version = ts.version.to_string();
            t.nonce = nonce.clone();
            t.version = Some(ts.version);
            t.dirty = false;
            self.sent.insert(nonce.clone(), version.clone());
            out.push(DiscoveryResponse {
                version_info: version,
                resources: ts
                    .resources
                    .iter()
                    .filter(|(name, _)| t.sub.covers(name))
                    .map(|(_, e)| e.any.clone())
                    .collect(),
                type_url: type_url.clone(),
                nonce,
                ..Default::default()
            });
        }
        out
    }
}

/// An incremental stream.
#[derive(Default)]
struct Delta {
    node_id: Option<String>,
    types: BTreeMap<String, DeltaType>,
    /// Nonce → system version of every response sent on the stream.
    sent: HashMap<String, String>,
}

#[derive(Default)]
struct DeltaType {
    sub: Subscription,
    /// What the client has: name → version.
    known: BTreeMap<String, String>,
    /// Whether a response of this type was sent (the first is sent even if empty, so a client
    /// waiting on its first answer gets one).
    responded: bool,
    /// The type version everything up to which the stream was last compared against; `None`
    /// after a subscription change (the next comparison looks at every resource). Keeps an
    /// update of one resource among thousands from costing a scan of all of them.
    scanned: Option<u64>,
}

impl Protocol for Delta {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;

    fn on_request(&mut self, stream: u64, req: DeltaDiscoveryRequest, state: &mut State) {
        if self.node_id.is_none() {
            self.node_id = req.node.as_ref().map(|n| n.id.clone());
        }
        let first = !self.types.contains_key(&req.type_url);
        let t = self.types.entry(req.type_url.clone()).or_default();
        let answers = self.sent.get(&req.response_nonce).cloned();
        let kind = match (&answers, req.response_nonce.is_empty()) {
            (_, true) => Kind::Request,
            (None, false) => Kind::Stale,
            (Some(_), false) if req.error_detail.is_some() => Kind::Nack,
            (Some(_), false) => Kind::Ack,
        };
        if first {
            t.known = req
                .initial_resource_versions
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            t.sub.wildcard =
                req.resource_names_subscribe.is_empty() && types::is_wildcard_type(&req.type_url);
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                t.sub.wildcard = true;
            } else {
                t.sub.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                t.sub.wildcard = false;
            } else {
                t.sub.names.remove(name);
            }
        }
        // The client drops what it no longer subscribes to: sent again if it subscribes again.
        let sub = &t.sub;
        t.known.retain(|name, _| sub.covers(name));
        if first
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty()
        {
            t.scanned = None;
        }
        state.requests.push(Seen {
            stream,
            mode: Mode::Delta,
            kind,
            type_url: req.type_url,
            node_id: self.node_id.clone(),
            has_node: req.node.is_some(),
            version_info: String::new(),
            response_nonce: req.response_nonce,
            answers,
            resource_names: Vec::new(),
            subscribe: req.resource_names_subscribe,
            unsubscribe: req.resource_names_unsubscribe,
            initial_resource_versions: req.initial_resource_versions.into_iter().collect(),
            error: error_of(req.error_detail.as_ref()),
        });
    }

    fn owed(&mut self, state: &mut State) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        for (type_url, t) in &mut self.types {
            if state.held.contains(type_url) {
                continue;
            }
            let Some(ts) = state.types.get(type_url) else {
                continue;
            };
            if t.responded && t.scanned == Some(ts.version) {
                continue;
            }
            // Only what changed since the last comparison, unless the subscription moved.
            let since = t.scanned.unwrap_or(0);
            let full = t.scanned.is_none();
            let resources: Vec<Resource> = ts
                .resources
                .iter()
                .filter(|(name, e)| {
                    (full || e.changed_at > since)
                        && t.sub.covers(name)
                        && t.known.get(name.as_str()) != Some(&e.version)
                })
                .map(|(name, e)| Resource {
                    name: name.clone(),
                    version: e.version.clone(),
                    resource: Some(e.any.clone()),
                    ..Default::default()
                })
                .collect();
            let removed: Vec<String> = if full {
                t.known
                    .keys()
                    .filter(|name| !ts.resources.contains_key(name.as_str()))
                    .cloned()
                    .collect()
            } else {
                ts.removed
                    .iter()
                    .filter(|(name, at)| **at > since && t.known.contains_key(name.as_str()))
                    .map(|(name, _)| name.clone())
                    .collect()
            };
            t.scanned = Some(ts.version);
            if resources.is_empty() && removed.is_empty() && t.responded {
                continue;
            }
            for r in &resources {
                t.known.insert(r.name.clone(), r.version.clone());
            }
            for name in &removed {
                t.known.remove(name);
            }
            t.responded = true;
            let nonce = next_nonce(&mut state.nonce);
            let version = ts.version.to_string();
            self.sent.insert(nonce.clone(), version.clone());
            out.push(DeltaDiscoveryResponse {
                system_version_info: version,
                resources,
                type_url: type_url.clone(),
                removed_resources: removed,
                nonce,
                ..Default::default()
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    //! The server, against the generated tonic client.

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::{Node, TypedExtensionConfig};
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::google::rpc;
    use prost::{Message as _, Name as _};
    use tonic::transport::Channel;

    use super::*;
    use crate::within;

    fn cluster(name: &str) -> (String, Any) {
        let c = Cluster {
            name: name.to_owned(),
            ..Default::default()
        };
        (name.to_owned(), any(&c))
    }

    /// A cluster of the same name with different content (another version of it).
    fn cluster_v2(name: &str) -> (String, Any) {
        let c = Cluster {
            name: name.to_owned(),
            alt_stat_name: "v2".to_owned(),
            ..Default::default()
        };
        (name.to_owned(), any(&c))
    }

    fn endpoints(name: &str) -> (String, Any) {
        let cla = ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            ..Default::default()
        };
        (name.to_owned(), any(&cla))
    }

    fn listener(name: &str) -> (String, Any) {
        let l = Listener {
            name: name.to_owned(),
            ..Default::default()
        };
        (name.to_owned(), any(&l))
    }

    fn node(id: &str) -> Option<Node> {
        Some(Node {
            id: id.to_owned(),
            ..Default::default()
        })
    }

    fn cluster_names(resources: &[Any]) -> Vec<String> {
        resources
            .iter()
            .map(|a| {
                assert_eq!(a.type_url, types::CLUSTER);
                Cluster::decode(a.value.as_slice()).unwrap().name
            })
            .collect()
    }

    /// One client stream: the requests to send and the responses.
    struct Client<Req, Resp> {
        tx: mpsc::UnboundedSender<Req>,
        rx: Streaming<Resp>,
        _client: AggregatedDiscoveryServiceClient<Channel>,
    }

    impl<Req, Resp> Client<Req, Resp> {
        fn send(&self, req: Req) {
            self.tx.send(req).unwrap();
        }

        async fn recv(&mut self) -> Resp {
            within("an ADS response", self.rx.message())
                .await
                .unwrap()
                .expect("the stream ended")
        }
    }

    async fn connect(ads: &AdsServer) -> AggregatedDiscoveryServiceClient<Channel> {
        let uri = format!("http://{}", ads.addr());
        within(
            "connecting to the ADS server",
            AggregatedDiscoveryServiceClient::connect(uri),
        )
        .await
        .unwrap()
    }

    async fn sotw(ads: &AdsServer) -> Client<DiscoveryRequest, DiscoveryResponse> {
        let mut client = connect(ads).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = within(
            "opening a SotW stream",
            client.stream_aggregated_resources(UnboundedReceiverStream::new(rx)),
        )
        .await
        .unwrap()
        .into_inner();
        Client {
            tx,
            rx,
            _client: client,
        }
    }

    async fn delta(ads: &AdsServer) -> Client<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
        let mut client = connect(ads).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = within(
            "opening a delta stream",
            client.delta_aggregated_resources(UnboundedReceiverStream::new(rx)),
        )
        .await
        .unwrap()
        .into_inner();
        Client {
            tx,
            rx,
            _client: client,
        }
    }

    fn ack(resp: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            type_url: resp.type_url.clone(),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn delta_ack(resp: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        }
    }

    fn names_of(resources: &[Resource]) -> Vec<&str> {
        resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn the_type_urls_are_those_of_the_prost_types() {
        assert_eq!(types::LISTENER, Listener::type_url());
        assert_eq!(types::CLUSTER, Cluster::type_url());
        assert_eq!(types::ROUTE, RouteConfiguration::type_url());
        assert_eq!(types::ENDPOINT, ClusterLoadAssignment::type_url());
        assert_eq!(types::SECRET, Secret::type_url());
        assert_eq!(types::EXTENSION_CONFIG, TypedExtensionConfig::type_url());
    }

    #[tokio::test]
    async fn sotw_wildcard_cds_gets_the_full_set_and_every_change_pushes_a_new_version() {
        let ads = AdsServer::start().await.unwrap();
        let v1 = ads.set(types::CLUSTER, [cluster("a"), cluster("b")]);
        let mut c = sotw(&ads).await;
        c.send(DiscoveryRequest {
            node: node("node-1"),
            type_url: types::CLUSTER.to_owned(),
            ..Default::default()
        });
        let r1 = c.recv().await;
        assert_eq!(
            (r1.version_info.as_str(), r1.type_url.as_str()),
            (v1.as_str(), types::CLUSTER)
        );
        assert_eq!(cluster_names(&r1.resources), ["a", "b"]);
        c.send(ack(&r1, &[]));
        let acked = ads
            .wait_for(|s| s.is_ack_of(types::CLUSTER, &v1))
            .await
            .unwrap();
        assert_eq!(acked.node_id.as_deref(), Some("node-1"));
        assert!(!acked.has_node, "only the first message carried the node");
        assert_eq!((acked.mode, acked.stream), (Mode::Sotw, 1));
        let first = &ads.requests()[0];
        assert_eq!((first.kind, first.has_node), (Kind::Request, true));

        // A change is pushed as the whole set, under a new version and a new nonce.
        let v2 = ads.set(types::CLUSTER, [cluster("c")]);
        let r2 = c.recv().await;
        assert_eq!(r2.version_info, v2);
        assert_ne!(r2.nonce, r1.nonce);
        assert_eq!(cluster_names(&r2.resources), ["a", "b", "c"]);
        c.send(ack(&r2, &[]));
        // A removal is the set without it.
        let v3 = ads.remove(types::CLUSTER, &["a"]);
        let r3 = c.recv().await;
        assert_eq!(r3.version_info, v3);
        assert_eq!(cluster_names(&r3.resources), ["b", "c"]);
        assert_eq!(ads.streams(), (1, 1));
    }

    #[tokio::test]
    async fn sotw_types_interleave_and_a_named_subscription_gets_only_its_names() {
        let ads = AdsServer::start().await.unwrap();
        ads.set(types::CLUSTER, [cluster("a")]);
        let v_eds = ads.set(types::ENDPOINT, [endpoints("a"), endpoints("z")]);
        let mut c = sotw(&ads).await;
        c.send(DiscoveryRequest {
            node: node("n"),
            type_url: types::CLUSTER.to_owned(),
            ..Default::default()
        });
        let cds = c.recv().await;
        // Endpoints asked for before the clusters are ACKed.
        c.send(DiscoveryRequest {
            type_url: types::ENDPOINT.to_owned(),
            resource_names: vec!["a".to_owned(), "missing".to_owned()],
            ..Default::default()
        });
        let eds = c.recv().await;
        assert_eq!(
            (eds.type_url.as_str(), eds.version_info.as_str()),
            (types::ENDPOINT, v_eds.as_str())
        );
        assert_eq!(eds.resources.len(), 1);
        let cla = ClusterLoadAssignment::decode(eds.resources[0].value.as_slice()).unwrap();
        assert_eq!(cla.cluster_name, "a");
        c.send(ack(&cds, &[]));
        c.send(ack(&eds, &["a", "missing"]));
        ads.wait_for(|s| s.is_ack_of(types::ENDPOINT, &v_eds))
            .await
            .unwrap();

        // A change to a resource nobody subscribes to pushes nothing; one to a subscribed name,
        // or its appearance, does.
        ads.set(types::ENDPOINT, [endpoints("z")]);
        let v = ads.set(types::ENDPOINT, [endpoints("missing")]);
        let pushed = c.recv().await;
        assert_eq!(
            (pushed.type_url.as_str(), pushed.version_info.as_str()),
            (types::ENDPOINT, v.as_str())
        );
        assert_eq!(pushed.resources.len(), 2);
        // A new subscription is answered at once, with the current version.
        c.send(ack(&pushed, &["z"]));
        let resub = c.recv().await;
        assert_eq!(resub.version_info, v);
        let cla = ClusterLoadAssignment::decode(resub.resources[0].value.as_slice()).unwrap();
        assert_eq!((resub.resources.len(), cla.cluster_name.as_str()), (1, "z"));
    }

    #[tokio::test]
    async fn a_sotw_nack_is_recorded_with_its_message_and_a_stale_nonce_is_not_answered() {
        let ads = AdsServer::start().await.unwrap();
        let v1 = ads.set(types::CLUSTER, [cluster("a")]);
        let mut c = sotw(&ads).await;
        c.send(DiscoveryRequest {
            node: node("n"),
            type_url: types::CLUSTER.to_owned(),
            ..Default::default()
        });
        let r1 = c.recv().await;
        c.send(DiscoveryRequest {
            error_detail: Some(rpc::Status {
                code: 3,
                message: "cluster a: unsupported field".to_owned(),
                details: Vec::new(),
            }),
            version_info: String::new(),
            ..ack(&r1, &[])
        });
        let nack = ads.wait_for(|s| s.kind == Kind::Nack).await.unwrap();
        assert!(nack.is_nack_of(types::CLUSTER, &v1));
        assert_eq!(
            nack.error,
            Some((3, "cluster a: unsupported field".to_owned()))
        );
        assert_eq!(nack.version_info, "");

        // A request naming an older nonce (with a subscription that would change things) is
        // recorded as stale and not answered: the next response is the next version's push.
        let v2 = ads.set(types::CLUSTER, [cluster_v2("a")]);
        let r2 = c.recv().await;
        assert_eq!(r2.version_info, v2);
        c.send(DiscoveryRequest {
            resource_names: vec!["a".to_owned()],
            ..ack(&r1, &[])
        });
        let stale = ads.wait_for(|s| s.kind == Kind::Stale).await.unwrap();
        assert_eq!(stale.answers.as_deref(), Some(v1.as_str()));
        let v3 = ads.set(types::CLUSTER, [cluster("b")]);
        let r3 = c.recv().await;
        assert_eq!(r3.version_info, v3);
        assert_eq!(
            cluster_names(&r3.resources),
            ["a", "b"],
            "still the wildcard"
        );
    }

    #[tokio::test]
    async fn delta_subscribe_unsubscribe_and_removal() {
        let ads = AdsServer::start().await.unwrap();
        let v1 = ads.set(
            types::ENDPOINT,
            [endpoints("a"), endpoints("b"), endpoints("c")],
        );
        let mut c = delta(&ads).await;
        c.send(DeltaDiscoveryRequest {
            node: node("delta-node"),
            type_url: types::ENDPOINT.to_owned(),
            resource_names_subscribe: vec!["a".to_owned(), "b".to_owned()],
            ..Default::default()
        });
        let r1 = c.recv().await;
        assert_eq!(r1.system_version_info, v1);
        assert_eq!(names_of(&r1.resources), ["a", "b"]);
        assert!(r1.removed_resources.is_empty());
        let a = &r1.resources[0];
        assert_eq!(
            a.version,
            ads.resource_version(types::ENDPOINT, "a").unwrap()
        );
        assert_eq!(a.resource.as_ref().unwrap().type_url, types::ENDPOINT);
        c.send(delta_ack(&r1));
        let acked = ads
            .wait_for(|s| s.is_ack_of(types::ENDPOINT, &v1))
            .await
            .unwrap();
        assert_eq!(
            (acked.mode, acked.node_id.as_deref()),
            (Mode::Delta, Some("delta-node"))
        );

        // Only what changed among the subscribed: `c` is not, and `b` is set unchanged.
        ads.set(types::ENDPOINT, [endpoints("c")]);
        let mut changed_a = ClusterLoadAssignment {
            cluster_name: "a".to_owned(),
            ..Default::default()
        };
        changed_a
            .named_endpoints
            .insert("e".to_owned(), Default::default());
        let v3 = ads.set(
            types::ENDPOINT,
            [("a".to_owned(), any(&changed_a)), endpoints("b")],
        );
        let r2 = c.recv().await;
        assert_eq!(r2.system_version_info, v3);
        assert_eq!(names_of(&r2.resources), ["a"]);
        c.send(delta_ack(&r2));

        // Unsubscribed names are not sent again, nor their removal.
        c.send(DeltaDiscoveryRequest {
            type_url: types::ENDPOINT.to_owned(),
            resource_names_unsubscribe: vec!["b".to_owned()],
            ..Default::default()
        });
        ads.wait_for(|s| s.unsubscribe == ["b"]).await.unwrap();
        let v4 = ads.remove(types::ENDPOINT, &["a", "b"]);
        let r3 = c.recv().await;
        assert_eq!(r3.system_version_info, v4);
        assert!(r3.resources.is_empty());
        assert_eq!(r3.removed_resources, ["a"]);

        // A new subscription to an existing name is sent at once.
        c.send(DeltaDiscoveryRequest {
            type_url: types::ENDPOINT.to_owned(),
            resource_names_subscribe: vec!["c".to_owned()],
            ..Default::default()
        });
        let r4 = c.recv().await;
        assert_eq!(names_of(&r4.resources), ["c"]);
        assert_ne!(r4.nonce, r3.nonce);
    }

    #[tokio::test]
    async fn delta_wildcard_and_initial_resource_versions_send_only_what_the_client_lacks() {
        let ads = AdsServer::start().await.unwrap();
        ads.set(types::CLUSTER, [cluster("a"), cluster("b")]);
        let a_version = ads.resource_version(types::CLUSTER, "a").unwrap();
        let mut c = delta(&ads).await;
        // A client back from a restart: it has `a` (current), `b` (an old version) and `gone`.
        c.send(DeltaDiscoveryRequest {
            node: node("n"),
            type_url: types::CLUSTER.to_owned(),
            initial_resource_versions: [
                ("a".to_owned(), a_version.clone()),
                ("b".to_owned(), "old".to_owned()),
                ("gone".to_owned(), "x".to_owned()),
            ]
            .into(),
            ..Default::default()
        });
        let r1 = c.recv().await;
        assert_eq!(names_of(&r1.resources), ["b"]);
        assert_eq!(r1.removed_resources, ["gone"]);
        let seen = &ads.requests()[0];
        assert_eq!(seen.initial_resource_versions.get("a"), Some(&a_version));
        c.send(delta_ack(&r1));

        // The empty first subscribe was the wildcard: a new cluster is pushed.
        ads.set(types::CLUSTER, [cluster("new")]);
        let r2 = c.recv().await;
        assert_eq!(names_of(&r2.resources), ["new"]);
    }

    #[tokio::test]
    async fn a_held_type_is_answered_only_once_released() {
        let ads = AdsServer::start().await.unwrap();
        ads.hold(types::CLUSTER, true);
        let v1 = ads.set(types::CLUSTER, [cluster("a")]);
        ads.set(types::LISTENER, [listener("l")]);
        let mut c = sotw(&ads).await;
        c.send(DiscoveryRequest {
            node: node("n"),
            type_url: types::CLUSTER.to_owned(),
            ..Default::default()
        });
        c.send(DiscoveryRequest {
            type_url: types::LISTENER.to_owned(),
            ..Default::default()
        });
        // Responses leave in order: had the clusters not been held, they would come first.
        let lds = c.recv().await;
        assert_eq!(lds.type_url, types::LISTENER);
        assert_eq!(ads.requests().len(), 2, "the held request was recorded");

        ads.hold(types::CLUSTER, false);
        let cds = c.recv().await;
        assert_eq!(
            (cds.type_url.as_str(), cds.version_info.as_str()),
            (types::CLUSTER, v1.as_str())
        );
        assert_eq!(cluster_names(&cds.resources), ["a"]);
    }

    #[tokio::test]
    async fn disconnect_all_ends_the_streams_and_the_server_takes_new_ones() {
        let ads = AdsServer::start().await.unwrap();
        ads.set(types::CLUSTER, [cluster("a")]);
        let mut c = sotw(&ads).await;
        let mut d = delta(&ads).await;
        ads.wait_streams(|open, _| open == 2).await.unwrap();

        ads.disconnect_all();
        let ended = [
            within("the SotW stream's end", c.rx.message())
                .await
                .map(|_| ()),
            within("the delta stream's end", d.rx.message())
                .await
                .map(|_| ()),
        ];
        for ended in ended {
            let status = ended.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }
        assert_eq!(ads.wait_streams(|open, _| open == 0).await.unwrap(), (0, 2));

        let mut again = sotw(&ads).await;
        again.send(DiscoveryRequest {
            node: node("n"),
            type_url: types::CLUSTER.to_owned(),
            ..Default::default()
        });
        assert_eq!(cluster_names(&again.recv().await.resources), ["a"]);
        assert_eq!(ads.streams(), (1, 3));
        assert_eq!(ads.requests()[0].stream, 3);
    }

    #[tokio::test]
    async fn a_stopped_server_ends_its_streams_and_restarts_on_the_same_port() {
        let ads = AdsServer::start().await.unwrap();
        let addr = ads.addr();
        let mut c = sotw(&ads).await;
        ads.wait_streams(|open, _| open == 1).await.unwrap();
        within("stopping the ADS server", ads.stop()).await;
        assert!(within("the stream's end", c.rx.message()).await.is_err());
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the port is closed"
        );

        let ads = AdsServer::start_at(addr).await.unwrap();
        assert_eq!(ads.addr(), addr);
        ads.set(types::CLUSTER, [cluster("a")]);
        let mut c = sotw(&ads).await;
        c.send(DiscoveryRequest {
            node: node("n"),
            type_url: types::CLUSTER.to_owned(),
            ..Default::default()
        });
        assert_eq!(c.recv().await.version_info, "1");
    }
}
