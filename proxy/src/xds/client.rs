//! The ADS stream to the control plane, on the control thread.
//!
//! One session per connection: the client says who it is (the node, on its first message only),
//! subscribes to clusters and listeners as a wildcard and to the endpoints, routes and filter
//! configs they name, and answers each response with an ACK, or a NACK whose `error_detail`
//! names the resource and field it refused. A response is all or nothing: every resource in it
//! is checked on its own (type, decoding, translation), then the whole control-plane part is
//! assembled and offered to the transaction; a refusal at any step leaves the cache and the
//! running configuration as they were. When the stream ends the last accepted configuration
//! keeps serving and the client reconnects with jittered exponential backoff; a Delta session
//! resumes with `initial_resource_versions`.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{self as pbuf, Any};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::sds::SdsDir;
use super::state::{self, Cache, Entry};
use super::{KINDS, Kind, XdsStatus, translate};
use crate::config::{XdsConfig, XdsMode};
use crate::control::{Control, ControlError};
use crate::tls::ClientTls;

/// Reconnect backoff (Envoy's defaults: 500 ms doubling to 30 s, with jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest response accepted (tonic's default is 4 MiB; 1,000 clusters with their endpoints
/// is more).
const MAX_MESSAGE: usize = 256 << 20;
/// gRPC's INVALID_ARGUMENT, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// Starts the client on the current (control) runtime.
pub fn start(control: Arc<Control>, cfg: XdsConfig, status: Arc<XdsStatus>) {
    // Ready after `initial_fetch_timeout` whatever happens: a proxy whose control plane never
    // answers serves its static part.
    let (s, timeout) = (status.clone(), cfg.initial_fetch_timeout);
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if !s.ready.swap(true, Relaxed) {
            tracing::warn!(
                ?timeout,
                "xds: no complete configuration within initial_fetch_timeout; serving what there is"
            );
        }
    });
    let sds = match SdsDir::create() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "xds: cannot create the directory for SDS secrets; not following the control plane");
            return;
        }
    };
    // Every listener from a control plane ends in the stock router: compiling it while the
    // stream connects takes it off the time to the first configuration.
    let warm = control.clone();
    tokio::spawn(async move { warm.keep_builtin("router").await });
    tokio::spawn(async move {
        let mut client = Client {
            control,
            status,
            cache: Cache::default(),
            subs: Default::default(),
            got: [false; KINDS],
            applied: None,
            tls: None,
            sds,
            warming: Vec::new(),
            was_warming: false,
            deadline: None,
            wanted: Default::default(),
            cfg,
        };
        client.run().await;
    });
}

struct Client {
    control: Arc<Control>,
    cfg: XdsConfig,
    status: Arc<XdsStatus>,
    /// Accepted resources.
    cache: Cache,
    /// Names subscribed to, per named type (wildcard types have none).
    subs: [BTreeSet<String>; KINDS],
    /// Whether a first response of each type was accepted.
    got: [bool; KINDS],
    /// What the running configuration holds of the control plane's part.
    applied: Option<Shape>,
    tls: Option<Arc<ClientTls>>,
    /// Where accepted secrets are written.
    sds: SdsDir,
    /// What the last applied assembly held back, when the first of it stops waiting, and the
    /// names it wants of each named type.
    warming: Vec<(Kind, String)>,
    /// Whether `/config_dump` shows something warming (so marks are cleared once).
    was_warming: bool,
    deadline: Option<tokio::time::Instant>,
    wanted: std::collections::BTreeMap<Kind, BTreeSet<String>>,
}

/// The outline of an applied assembly: which clusters and listeners serve, and which clusters
/// each endpoint set feeds. An endpoint update that leaves it as it is takes the endpoint path.
#[derive(Debug, PartialEq)]
struct Shape {
    clusters: Vec<String>,
    listeners: Vec<String>,
    eds_users: std::collections::BTreeMap<String, Vec<String>>,
}

/// How a session ended.
enum Ended {
    /// The stream carried at least one response (the backoff starts over).
    AfterResponses(String),
    Early(String),
}

impl Client {
    async fn run(&mut self) {
        let mut delay = BACKOFF_BASE;
        loop {
            match self.session().await {
                Ended::AfterResponses(why) => {
                    tracing::warn!(server = %self.cfg.server, reason = %why, "xds: stream ended; reconnecting");
                    delay = BACKOFF_BASE;
                }
                Ended::Early(why) => {
                    self.status.failures.fetch_add(1, Relaxed);
                    tracing::warn!(server = %self.cfg.server, reason = %why, retry_in = ?delay, "xds: cannot reach the control plane");
                }
            }
            self.status.connected.store(false, Relaxed);
            // Full jitter over the current step, never less than a tenth of it.
            let wait = delay.mul_f64(0.1 + 0.9 * fastrand::f64());
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    async fn session(&mut self) -> Ended {
        let channel = match self.connect().await {
            Ok(c) => c,
            Err(e) => return Ended::Early(e),
        };
        let client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        match self.cfg.mode {
            XdsMode::Delta => self.delta(client).await,
            XdsMode::Sotw => self.sotw(client).await,
        }
    }

    async fn connect(&mut self) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.cfg.server))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let Some(tls_cfg) = &self.cfg.tls else {
            return endpoint.connect().await.map_err(|e| error_chain(&e));
        };
        if self.tls.is_none() {
            let t = ClientTls::load("xds", tls_cfg, crate::config::Protocol::Http2)
                .map_err(|e| e.to_string())?;
            self.tls = Some(Arc::new(t));
        }
        let tls = self.tls.clone().expect("loaded above");
        // A short-lived client certificate: each connection uses the files as they are now.
        tls.refresh();
        endpoint
            .connect_with_connector(TlsConnector(tls))
            .await
            .map_err(|e| error_chain(&e))
    }

    /// The node, as the first message of a stream carries it.
    fn node(&self) -> Node {
        let n = &self.cfg.node;
        Node {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
            metadata: (!n.metadata.is_empty()).then(|| json_struct(&n.metadata)),
            locality: n.zone.as_ref().map(|z| Locality {
                zone: z.clone(),
                ..Default::default()
            }),
            user_agent_name: "weir".into(),
            user_agent_version_type: Some(
                envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
                    env!("CARGO_PKG_VERSION").into(),
                ),
            ),
            ..Default::default()
        }
    }

    // -----------------------------------------------------------------------------------------
    // Delta
    // -----------------------------------------------------------------------------------------

    async fn delta(&mut self, mut client: AggregatedDiscoveryServiceClient<Channel>) -> Ended {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut node = Some(self.node());
        for kind in Kind::ALL {
            if !kind.wildcard() && self.subs[kind.index()].is_empty() {
                continue;
            }
            let _ = tx.send(DeltaDiscoveryRequest {
                node: node.take(),
                type_url: kind.type_url().into(),
                resource_names_subscribe: self.subs[kind.index()].iter().cloned().collect(),
                initial_resource_versions: self
                    .cache
                    .of(kind)
                    .iter()
                    .map(|(n, e)| (n.clone(), e.version.clone()))
                    .collect(),
                ..Default::default()
            });
        }
        let mut stream = match client
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => return Ended::Early(e.to_string()),
        };
        self.connected();
        let mut responses = 0u64;
        loop {
            let deadline = self.warming_deadline();
            let msg = tokio::select! {
                m = stream.message() => m,
                () = sleep_until(deadline) => {
                    self.reassemble().await;
                    continue;
                }
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return ended(responses, "the server closed the stream".into()),
                Err(e) => return ended(responses, e.to_string()),
            };
            responses += 1;
            let ack = self.on_delta(resp).await;
            let _ = tx.send(ack);
            for (kind, sub, unsub) in self.resubscribe() {
                let _ = tx.send(DeltaDiscoveryRequest {
                    type_url: kind.type_url().into(),
                    resource_names_subscribe: sub,
                    resource_names_unsubscribe: unsub,
                    ..Default::default()
                });
            }
        }
    }

    async fn on_delta(&mut self, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let reply = |error: Option<String>| DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        };
        let Some(kind) = Kind::of_url(&resp.type_url) else {
            return reply(Some(format!(
                "type {} is not supported by Weir",
                resp.type_url
            )));
        };
        let mut changed = Vec::with_capacity(resp.resources.len());
        let mut problems = Vec::new();
        for r in &resp.resources {
            let checked = match &r.resource {
                Some(any) => state::check(kind, any).map(|(_, t)| (any.clone(), t)),
                None => Err(translate::Rejection {
                    field: "resource".into(),
                    message: "is missing".into(),
                }),
            };
            match checked {
                Ok((any, t)) => changed.push((r.name.clone(), r.version.clone(), any, t)),
                Err(rej) => problems.push(format!("{} {}: {rej}", kind.name(), r.name)),
            }
        }
        let names: Vec<String> = resp.resources.iter().map(|r| r.name.clone()).collect();
        if !problems.is_empty() {
            let message = problems.join("; ");
            self.refused(kind, &names, &message);
            return reply(Some(message));
        }
        match self
            .update(kind, changed, resp.removed_resources.clone(), false)
            .await
        {
            Ok(()) => reply(None),
            Err(message) => {
                self.refused(kind, &names, &message);
                reply(Some(message))
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // State of the world
    // -----------------------------------------------------------------------------------------

    async fn sotw(&mut self, mut client: AggregatedDiscoveryServiceClient<Channel>) -> Ended {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut node = Some(self.node());
        // The version and nonce each type last saw on this stream.
        let mut versions: [String; KINDS] = Default::default();
        let mut nonces: [String; KINDS] = Default::default();
        for kind in Kind::ALL {
            if !kind.wildcard() && self.subs[kind.index()].is_empty() {
                continue;
            }
            let _ = tx.send(DiscoveryRequest {
                node: node.take(),
                type_url: kind.type_url().into(),
                resource_names: self.subs[kind.index()].iter().cloned().collect(),
                ..Default::default()
            });
        }
        let mut stream = match client
            .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => return Ended::Early(e.to_string()),
        };
        self.connected();
        let mut responses = 0u64;
        loop {
            let deadline = self.warming_deadline();
            let msg = tokio::select! {
                m = stream.message() => m,
                () = sleep_until(deadline) => {
                    self.reassemble().await;
                    continue;
                }
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return ended(responses, "the server closed the stream".into()),
                Err(e) => return ended(responses, e.to_string()),
            };
            responses += 1;
            let kind = Kind::of_url(&resp.type_url);
            let error = self.on_sotw(kind, &resp).await;
            if let Some(k) = kind {
                nonces[k.index()] = resp.nonce.clone();
                if error.is_none() {
                    versions[k.index()] = resp.version_info.clone();
                }
            }
            let _ = tx.send(DiscoveryRequest {
                type_url: resp.type_url.clone(),
                version_info: kind.map_or_else(String::new, |k| versions[k.index()].clone()),
                resource_names: kind
                    .map(|k| self.subs[k.index()].iter().cloned().collect())
                    .unwrap_or_default(),
                response_nonce: resp.nonce.clone(),
                error_detail: error.map(|message| Status {
                    code: INVALID_ARGUMENT,
                    message,
                    details: Vec::new(),
                }),
                ..Default::default()
            });
            for (kind, _, _) in self.resubscribe() {
                let _ = tx.send(DiscoveryRequest {
                    type_url: kind.type_url().into(),
                    version_info: versions[kind.index()].clone(),
                    resource_names: self.subs[kind.index()].iter().cloned().collect(),
                    response_nonce: nonces[kind.index()].clone(),
                    ..Default::default()
                });
            }
        }
    }

    /// Applies a state-of-the-world response; the NACK's message when it is refused.
    async fn on_sotw(&mut self, kind: Option<Kind>, resp: &DiscoveryResponse) -> Option<String> {
        let Some(kind) = kind else {
            return Some(format!("type {} is not supported by Weir", resp.type_url));
        };
        let mut changed = Vec::with_capacity(resp.resources.len());
        let mut unchanged = Vec::new();
        let mut problems = Vec::new();
        let mut names = Vec::with_capacity(resp.resources.len());
        for (i, any) in resp.resources.iter().enumerate() {
            // Every response resends every resource: one identical to what was accepted is
            // neither decoded nor checked again (one endpoint change among 1,000 assignments
            // translates one).
            if let Some(name) = resource_name(any)
                && self
                    .cache
                    .of(kind)
                    .get(&name)
                    .is_some_and(|e| e.resource == *any)
            {
                names.push(name.clone());
                unchanged.push(name);
                continue;
            }
            match state::check(kind, any) {
                Ok((name, t)) => {
                    names.push(name.clone());
                    changed.push((name, resp.version_info.clone(), any.clone(), t));
                }
                Err(rej) => {
                    let name = resource_name(any).unwrap_or_else(|| format!("[{i}]"));
                    problems.push(format!("{} {name}: {rej}", kind.name()));
                    names.push(name);
                }
            }
        }
        if !problems.is_empty() {
            let message = problems.join("; ");
            self.refused(kind, &names, &message);
            return Some(message);
        }
        // Listeners and clusters come as the whole set: one not sent is removed. The other
        // types come by name; one not sent is unchanged.
        let removed = if kind.wildcard() {
            let sent: BTreeSet<&str> = names.iter().map(String::as_str).collect();
            self.cache
                .of(kind)
                .keys()
                .filter(|n| !sent.contains(n.as_str()))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        match self.update(kind, changed, removed, true).await {
            Ok(()) => {
                let map = self.cache.of_mut(kind);
                for name in unchanged {
                    if let Some(e) = map.get_mut(&name) {
                        e.version.clone_from(&resp.version_info);
                    }
                }
                None
            }
            Err(message) => {
                self.refused(kind, &names, &message);
                Some(message)
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Both
    // -----------------------------------------------------------------------------------------

    fn connected(&self) {
        self.status.connected.store(true, Relaxed);
        self.status.streams.fetch_add(1, Relaxed);
        tracing::info!(server = %self.cfg.server, mode = ?self.cfg.mode, "xds: stream open");
    }

    fn refused(&self, kind: Kind, names: &[String], message: &str) {
        tracing::warn!(r#type = kind.name(), error = %message, "xds: update rejected (NACK)");
        self.status.rejected(kind, names, message);
    }

    /// Applies checked resources of `kind` (`changed`: name, version, resource, translation)
    /// and removals. On a refusal the cache is left as it was.
    async fn update(
        &mut self,
        kind: Kind,
        changed: Vec<(String, String, Any, state::Translated)>,
        removed: Vec<String>,
        sotw: bool,
    ) -> Result<(), String> {
        // What to put back on a refusal: the previous entry of each name touched (not a copy of
        // the whole type: an endpoint update of one cluster among thousands copies one entry).
        let mut undo: Vec<(String, Option<Entry>)> = Vec::with_capacity(changed.len());
        let now = Instant::now();
        let mut names = Vec::with_capacity(changed.len());
        {
            let map = self.cache.of_mut(kind);
            for (name, version, resource, spec) in changed {
                // An unchanged resource in a state-of-the-world response keeps its history.
                let since = map.get(&name).map_or(now, |e| e.since);
                if sotw && map.get(&name).is_some_and(|e| e.resource == resource) {
                    map.get_mut(&name).expect("present").version = version.clone();
                    continue;
                }
                names.push((name.clone(), version.clone()));
                let old = map.insert(
                    name.clone(),
                    Entry {
                        version,
                        resource,
                        spec: Arc::new(spec),
                        since,
                    },
                );
                undo.push((name, old));
            }
            for name in &removed {
                let old = map.remove(name);
                undo.push((name.clone(), old));
            }
        }
        let first = !self.got[kind.index()];
        if names.is_empty() && removed.is_empty() && !first {
            return Ok(()); // nothing changed
        }
        let result = match kind {
            Kind::Endpoint => self.apply_endpoints(&names).await,
            Kind::Secret => self.apply_secrets(&names).await,
            _ => self.apply_all().await,
        };
        match result {
            Ok(()) => {
                self.got[kind.index()] = true;
                self.status.accepted(kind, &names, &removed);
                // Resources seen for the first time are marked now that they are listed.
                if !self.warming.is_empty() || self.was_warming {
                    self.status.set_warming(&self.warming);
                    self.was_warming = !self.warming.is_empty();
                }
                self.check_ready();
                Ok(())
            }
            Err(e) => {
                // Back in reverse order, so a name touched twice ends as it began.
                let map = self.cache.of_mut(kind);
                for (name, old) in undo.into_iter().rev() {
                    match old {
                        Some(entry) => map.insert(name, entry),
                        None => map.remove(&name),
                    };
                }
                Err(e)
            }
        }
    }

    /// An endpoint update: through the endpoint path for the serving clusters it feeds (no
    /// assembly: the translation was made when it arrived); the whole part again when something
    /// warms (it may be waiting for these endpoints).
    async fn apply_endpoints(&mut self, changed: &[(String, String)]) -> Result<(), String> {
        if !self.warming.is_empty() || self.applied.is_none() {
            return self.apply_all().await;
        }
        for (name, _) in changed {
            let users = self
                .applied
                .as_ref()
                .and_then(|a| a.eds_users.get(name))
                .cloned()
                .unwrap_or_default();
            let spec = self
                .cache
                .of(Kind::Endpoint)
                .get(name)
                .map(|e| e.spec.clone());
            let Some(state::Translated::Endpoint(endpoints)) = spec.as_deref() else {
                continue;
            };
            for cluster in &users {
                match retry_busy(|| self.control.set_xds_endpoints(cluster, endpoints.clone()))
                    .await
                {
                    Ok(_) => {}
                    // The running configuration is not the one last applied (a rollback):
                    // the whole part again.
                    Err(ControlError::UnknownCluster(_)) => return self.apply_all().await,
                    Err(e) => return Err(format!("endpoint {name}: {e}")),
                }
            }
        }
        Ok(())
    }

    /// New or changed secrets: their files are written (all checked first: a bad one writes
    /// nothing), and the TLS contexts that read them rotate; when a secret lets a warming
    /// listener or cluster in, the whole part goes to the transaction.
    async fn apply_secrets(&mut self, changed: &[(String, String)]) -> Result<(), String> {
        let mut files = Vec::new();
        for (name, _) in changed {
            let Some(e) = self.cache.of(Kind::Secret).get(name) else {
                continue;
            };
            let state::Translated::Secret(spec) = &*e.spec else {
                continue;
            };
            files.extend(
                self.sds
                    .prepare(spec)
                    .map_err(|e| format!("secret {name}: {e}"))?,
            );
        }
        self.sds.write(&files)?;
        let rotated = self.control.clusters.tls().refresh();
        if rotated > 0 {
            tracing::info!(contexts = rotated, "xds: secrets rotated");
        }
        // A listener or cluster may be waiting for these secrets.
        if !self.warming.is_empty() || self.applied.is_none() {
            return self.apply_all().await;
        }
        Ok(())
    }

    fn assemble(&self) -> state::Assembly {
        state::assemble(
            &self.cache,
            Instant::now(),
            self.cfg.initial_fetch_timeout,
            &self.sds,
        )
    }

    /// Assembles the control plane's whole part and offers it to the transaction.
    async fn apply_all(&mut self) -> Result<(), String> {
        let a = self.assemble();
        let shape = shape_of(&a);
        let (warming, deadline, wanted) = (a.warming, a.next_deadline, a.wanted);
        let parts = a.parts;
        let applied = retry_busy(|| self.control.apply_dynamic(parts.clone(), false)).await;
        match applied {
            Ok(done) => {
                tracing::info!(
                    generation = done.generation,
                    clusters = shape.clusters.len(),
                    listeners = shape.listeners.len(),
                    warming = warming.len(),
                    "xds: configuration applied"
                );
                self.applied = Some(shape);
                self.warming = warming;
                self.deadline = deadline.map(tokio::time::Instant::from_std);
                self.wanted = wanted;
                self.status.set_warming(&self.warming);
                self.was_warming = !self.warming.is_empty();
                Ok(())
            }
            Err(e) => Err(format!("weir refused the configuration: {e}")),
        }
    }

    /// A warming deadline passed: what stopped waiting joins the configuration.
    async fn reassemble(&mut self) {
        if let Err(e) = self.apply_all().await {
            tracing::warn!(error = %e, "xds: configuration after warming timeout refused");
        }
        self.check_ready();
    }

    /// When the first resource still warming stops waiting.
    fn warming_deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// Ready once clusters and listeners arrived and nothing warms.
    fn check_ready(&self) {
        if self.status.ready()
            || !self.got[Kind::Cluster.index()]
            || !self.got[Kind::Listener.index()]
        {
            return;
        }
        if self.warming.is_empty() {
            self.status.ready.store(true, Relaxed);
            tracing::info!("xds: first complete configuration applied; ready");
        }
    }

    /// Brings the named subscriptions in line with what the cache's clusters and listeners
    /// use: `(type, subscribe, unsubscribe)` for each type that changed. Resources no longer
    /// wanted leave the cache.
    fn resubscribe(&mut self) -> Vec<(Kind, Vec<String>, Vec<String>)> {
        let mut out = Vec::new();
        for (&kind, want) in &self.wanted {
            let have = &self.subs[kind.index()];
            // The usual case (an endpoint update): nothing to compare beyond the sizes' walk.
            if have == want {
                continue;
            }
            let sub: Vec<String> = want.difference(have).cloned().collect();
            let unsub: Vec<String> = have.difference(want).cloned().collect();
            out.push((kind, sub, unsub));
        }
        for (kind, _, unsub) in &out {
            let kind = *kind;
            for n in unsub {
                self.cache.of_mut(kind).remove(n);
                if kind == Kind::Secret {
                    self.sds.remove(n);
                }
            }
            self.subs[kind.index()] = self.wanted[&kind].clone();
        }
        out
    }
}

fn shape_of(a: &state::Assembly) -> Shape {
    Shape {
        clusters: a.parts.clusters.keys().cloned().collect(),
        listeners: a.parts.listeners.iter().map(|l| l.name.clone()).collect(),
        eds_users: a.eds_users.clone(),
    }
}

fn ended(responses: u64, why: String) -> Ended {
    if responses > 0 {
        Ended::AfterResponses(why)
    } else {
        Ended::Early(why)
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs a control-plane change, waiting out another change in progress (an admin mutation).
async fn retry_busy<T, F, Fut>(mut f: F) -> Result<T, ControlError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ControlError>>,
{
    loop {
        match f().await {
            Err(ControlError::Busy) => tokio::time::sleep(Duration::from_millis(10)).await,
            r => return r,
        }
    }
}

/// Field 1 of every resource type Weir follows: its name (`Cluster.name`,
/// `ClusterLoadAssignment.cluster_name`, `Listener.name`, `RouteConfiguration.name`,
/// `Secret.name`, `TypedExtensionConfig.name`). Decoding only it skips the rest unread.
#[derive(Clone, PartialEq, prost::Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

/// The name a resource carries (for a NACK of one that could not be checked, and to find an
/// unchanged resource of a state-of-the-world response without decoding it).
fn resource_name(any: &Any) -> Option<String> {
    let name = <NameOnly as prost::Message>::decode(any.value.as_slice())
        .ok()?
        .name;
    (!name.is_empty()).then_some(name)
}

/// An error with its causes (tonic's transport errors say little at the top).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Node metadata as a protobuf `Struct`.
fn json_struct(map: &serde_json::Map<String, serde_json::Value>) -> pbuf::Struct {
    pbuf::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect(),
    }
}

fn json_value(v: &serde_json::Value) -> pbuf::Value {
    use pbuf::value::Kind as K;
    let kind = match v {
        serde_json::Value::Null => K::NullValue(0),
        serde_json::Value::Bool(b) => K::BoolValue(*b),
        serde_json::Value::Number(n) => K::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => K::StringValue(s.clone()),
        serde_json::Value::Array(a) => K::ListValue(pbuf::ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(m) => K::StructValue(json_struct(m)),
    };
    pbuf::Value { kind: Some(kind) }
}

/// Connects to the control plane over TCP and Weir's own TLS (the server's certificate must
/// chain to `xds.server.tls.ca` and name its expected identity; ALPN `h2`).
#[derive(Clone)]
struct TlsConnector(Arc<ClientTls>);

type Connecting = Pin<
    Box<
        dyn Future<
                Output = std::io::Result<
                    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.0.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let addr = tcp.peer_addr()?;
            let stream = tls.connect(tcp, addr).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}
