//! The cluster manager (Envoy's name for it), on the control thread: turns the clusters of a
//! config about to be published into cluster versions ([`ClusterShared`]), reusing every version
//! that did not change, and once a generation is published keeps what runs beside the versions
//! (health checkers, outlier sweepers, the TLS contexts `/certs` and rotation follow).
//!
//! A version is reused (the same `Arc`, so every worker keeps its view, pools and balancer state)
//! when its cluster's settings and endpoints are equal to the running version's. A changed cluster
//! gets a new version that keeps the cluster's core and the state of every endpoint still in it
//! ([`ClusterShared::build`]); workers then keep those endpoints' pools too when the connection
//! settings allow ([`crate::upstream::Cluster::new`]). Nothing here runs on a worker, and nothing
//! a worker does waits for it: workers pick the new versions up with the generation.
//!
//! **DNS discovery** (`discovery: dns | logical_dns`): a version of such a cluster is built over
//! the last good resolution of its hosts. Beside each such version runs a refresher (like a
//! health checker) that resolves the hosts again every `dns_refresh`, or sooner when a record's
//! TTL runs out; when the answer differs, it stores the new set and names the cluster on the
//! [`ClusterManager::discovered`] channel, and the control plane publishes it through the usual
//! transaction (only that cluster gets a new version). A failed resolution changes nothing: the
//! last good endpoints keep serving, and the failure is counted ([`DnsStatus`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::shared::{ClusterShared, DnsStatus, EndpointSource, VersionSpec};
use crate::config::{
    ClusterConfig, Config, DnsConfig, DnsEndpoints, EndpointConfig, EndpointHealth, Endpoints,
};
use crate::discovery::{Nameservers, Resolver};
use crate::telemetry::Telemetry;
use crate::tls::{ClientTls, TlsContexts};

/// Why a cluster version could not be built; the running generation keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("clusters.{cluster}.tls: {source}")]
    Tls {
        cluster: String,
        #[source]
        source: crate::tls::TlsError,
    },
    #[error("clusters.{cluster}.demo: cannot start the demo upstream: {source}")]
    Demo {
        cluster: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dns: {0}")]
    Dns(#[from] crate::discovery::DnsError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A discovered cluster's state across its versions.
struct Discovered {
    /// The hosts' settings the set was resolved for (a changed config resolves again).
    spec: DnsEndpoints,
    /// The last good resolution: the endpoints its versions are built over.
    endpoints: Vec<EndpointConfig>,
    status: Arc<DnsStatus>,
}

/// Counts of what changes did (`/metrics`).
#[derive(Debug, Default)]
pub struct ChangeCounts {
    pub cluster_added: AtomicU64,
    pub cluster_removed: AtomicU64,
    pub cluster_updated: AtomicU64,
    /// Endpoint sets replaced by `PUT /clusters/NAME/endpoints`.
    pub endpoint_updates: AtomicU64,
}

/// What a planned change does to the clusters.
#[derive(Debug, Default)]
pub struct Plan {
    /// The new versions, indexed like the next config's clusters.
    pub clusters: Vec<Arc<ClusterShared>>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}

/// Starts a demo upstream for a label (`app` provides it; the manager only remembers them).
pub type DemoStarter = Arc<
    dyn Fn(String) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<SocketAddr>> + Send>>
        + Send
        + Sync,
>;

/// A published version and the tasks that run beside it.
struct Running {
    version: Arc<ClusterShared>,
    tasks: Vec<tokio::task::AbortHandle>,
    /// The commit that last saw it live.
    seen: u64,
}

/// See the module docs.
pub struct ClusterManager {
    workers: usize,
    telemetry: Arc<Telemetry>,
    tls: Arc<TlsContexts>,
    demo: Option<DemoStarter>,
    /// Demo upstreams started so far, by label (a reload naming the label again reuses it).
    demos: Mutex<HashMap<String, SocketAddr>>,
    running: Mutex<HashMap<String, Running>>,
    /// Counts commits (to find what a commit no longer names without building a set).
    commits: AtomicU64,
    /// The resolver for `dns:` and the settings it was made with.
    resolver: Mutex<Option<(DnsConfig, Option<Resolver>)>>,
    discovered: Mutex<HashMap<String, Discovered>>,
    /// Names of clusters whose discovered endpoints changed (the control plane publishes them).
    changed_tx: mpsc::UnboundedSender<String>,
    changed_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    pub counts: ChangeCounts,
}

impl ClusterManager {
    pub fn new(
        workers: usize,
        telemetry: Arc<Telemetry>,
        tls: Arc<TlsContexts>,
        demo: Option<DemoStarter>,
    ) -> Self {
        let (changed_tx, changed_rx) = mpsc::unbounded_channel();
        Self {
            workers,
            telemetry,
            tls,
            demo,
            demos: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            commits: AtomicU64::new(0),
            resolver: Mutex::new(None),
            discovered: Mutex::new(HashMap::new()),
            changed_tx,
            changed_rx: Mutex::new(Some(changed_rx)),
            counts: ChangeCounts::default(),
        }
    }

    /// The channel naming clusters whose discovered endpoints changed (taken once, by the
    /// control plane).
    pub fn discovered(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        lock(&self.changed_rx).take()
    }

    /// The versions for `next`'s clusters at generation `generation`, reusing `current`'s where
    /// nothing changed. `source` says where the endpoints of changed clusters come from;
    /// `rediscovered` names a cluster whose discovered endpoints changed (it gets a new version
    /// though its settings did not).
    pub async fn plan(
        &self,
        next: &Config,
        current: &[Arc<ClusterShared>],
        generation: u64,
        source: EndpointSource,
        rediscovered: Option<&str>,
    ) -> Result<Plan, ManagerError> {
        self.set_resolver(&next.dns)?;
        // Same position first: an endpoint update costs a name and a pointer comparison per
        // cluster, and no map is built unless the clusters moved.
        let mut by_name: Option<HashMap<&str, &Arc<ClusterShared>>> = None;
        let mut aligned = current.len() == next.clusters.len();
        let mut plan = Plan {
            clusters: Vec::with_capacity(next.clusters.len()),
            ..Plan::default()
        };
        for (i, cfg) in next.clusters.iter().enumerate() {
            let prev = match current.get(i).filter(|c| c.name == cfg.name) {
                Some(c) => Some(c),
                None => {
                    aligned = false;
                    by_name
                        .get_or_insert_with(|| {
                            current.iter().map(|c| (c.name.as_str(), c)).collect()
                        })
                        .get(cfg.name.as_str())
                        .copied()
                }
            };
            if let Some(p) = prev
                && (Arc::ptr_eq(&p.config, cfg) || *p.config == **cfg)
                && rediscovered != Some(cfg.name.as_str())
            {
                plan.clusters.push(p.clone());
                continue;
            }
            match prev {
                Some(_) => plan.updated.push(cfg.name.clone()),
                None => plan.added.push(cfg.name.clone()),
            }
            let v = self
                .version(cfg, prev.map(|p| &**p), generation, source)
                .await?;
            plan.clusters.push(Arc::new(v));
        }
        if !aligned {
            let next_names: std::collections::HashSet<&str> =
                next.clusters.iter().map(|c| c.name.as_str()).collect();
            plan.removed = current
                .iter()
                .filter(|c| !next_names.contains(c.name.as_str()))
                .map(|c| c.name.clone())
                .collect();
        }
        Ok(plan)
    }

    /// One new version of `cfg`.
    async fn version(
        &self,
        cfg: &Arc<ClusterConfig>,
        prev: Option<&ClusterShared>,
        generation: u64,
        source: EndpointSource,
    ) -> Result<ClusterShared, ManagerError> {
        let mut dns = None;
        let (endpoints, source) = match &cfg.endpoints {
            Endpoints::Static(list) => (list.clone(), source),
            Endpoints::Demo(label) => (
                vec![EndpointConfig::at(self.demo_addr(&cfg.name, label).await?)],
                EndpointSource::Static,
            ),
            Endpoints::Dns(spec) => {
                let (eps, status) = self.discovered_endpoints(&cfg.name, spec).await;
                dns = Some(status);
                (eps, EndpointSource::Dns)
            }
        };
        // The TLS context is kept while its settings are (rotation follows its files anyway).
        let tls = match (&cfg.tls, prev) {
            (None, _) => None,
            (Some(t), Some(p))
                if p.config.tls.as_ref() == Some(t)
                    && p.config.protocol == cfg.protocol
                    && p.tls.is_some() =>
            {
                p.tls.clone()
            }
            (Some(t), _) => {
                let (name, t, protocol) = (cfg.name.clone(), t.clone(), cfg.protocol);
                let loaded =
                    tokio::task::spawn_blocking(move || ClientTls::load(&name, &t, protocol))
                        .await
                        .map_err(|e| ManagerError::Internal(e.to_string()))?
                        .map_err(|source| ManagerError::Tls {
                            cluster: cfg.name.clone(),
                            source,
                        })?;
                Some(Arc::new(loaded))
            }
        };
        let tel = &self.telemetry;
        let name = cfg.name.as_str();
        Ok(ClusterShared::build(
            VersionSpec {
                config: cfg.clone(),
                endpoints: &endpoints,
                tls,
                source,
                dns,
                generation,
                workers: self.workers,
            },
            prev,
            &mut tel.slots_of(name),
        ))
    }

    /// (Re)makes the resolver when the `dns:` settings changed.
    fn set_resolver(&self, cfg: &DnsConfig) -> Result<(), ManagerError> {
        let mut r = lock(&self.resolver);
        if r.as_ref().is_some_and(|(c, _)| c == cfg) {
            return Ok(());
        }
        let ns = if cfg.resolvers.is_empty() {
            Nameservers::System
        } else {
            Nameservers::Servers(cfg.resolvers.clone())
        };
        match Resolver::new(&ns, cfg.timeout) {
            Ok(res) => {
                *r = Some((cfg.clone(), Some(res)));
                Ok(())
            }
            // No system configuration is only an error once a cluster needs DNS (and it is not
            // looked for again until the settings change).
            Err(e) if cfg.resolvers.is_empty() => {
                tracing::debug!(error = %e, "no system DNS configuration");
                *r = Some((cfg.clone(), None));
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn resolver(&self) -> Option<Resolver> {
        lock(&self.resolver).as_ref().and_then(|(_, r)| r.clone())
    }

    /// A discovered cluster's endpoints: the stored set, or (new cluster, changed hosts) a first
    /// resolution now. A first resolution that fails leaves the cluster empty until one works.
    async fn discovered_endpoints(
        &self,
        name: &str,
        spec: &DnsEndpoints,
    ) -> (Vec<EndpointConfig>, Arc<DnsStatus>) {
        let status = {
            let d = lock(&self.discovered);
            match d.get(name) {
                Some(x) if x.spec == *spec => return (x.endpoints.clone(), x.status.clone()),
                Some(x) => x.status.clone(),
                None => Arc::default(),
            }
        };
        let endpoints = match self.resolve(name, spec, &status).await {
            Some((eps, _)) => eps,
            None => Vec::new(),
        };
        lock(&self.discovered).insert(
            name.to_owned(),
            Discovered {
                spec: spec.clone(),
                endpoints: endpoints.clone(),
                status: status.clone(),
            },
        );
        (endpoints, status)
    }

    /// Resolves every host of `spec` once: the endpoint set and how long it is valid, or `None`
    /// (counted and logged) when any host failed.
    async fn resolve(
        &self,
        name: &str,
        spec: &DnsEndpoints,
        status: &DnsStatus,
    ) -> Option<(Vec<EndpointConfig>, Duration)> {
        let Some(resolver) = self.resolver() else {
            status.record(Err(
                "no DNS configuration (no /etc/resolv.conf, no dns.resolvers)".into(),
            ));
            return None;
        };
        let mut out: Vec<EndpointConfig> = Vec::new();
        let mut valid = spec.refresh;
        let hosts = if spec.logical {
            &spec.hosts[..spec.hosts.len().min(1)]
        } else {
            &spec.hosts[..]
        };
        for h in hosts {
            match resolver.resolve(&h.host, h.port).await {
                Ok(r) => {
                    valid = valid.min(r.valid_for);
                    let addrs = if spec.logical {
                        &r.addrs[..r.addrs.len().min(1)]
                    } else {
                        &r.addrs[..]
                    };
                    for &a in addrs {
                        if !out.iter().any(|e| e.address == a) {
                            out.push(EndpointConfig {
                                address: a,
                                weight: h.weight,
                                priority: h.priority,
                                zone: h.zone.clone(),
                                health: EndpointHealth::Healthy,
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(cluster = name, error = %e, "DNS resolution failed: the last good endpoints keep serving");
                    status.record(Err(e.to_string()));
                    return None;
                }
            }
        }
        status.record(Ok(()));
        Some((out, valid))
    }

    /// Resolves a discovered cluster's hosts again and again (its version's refresher), until
    /// the version retires; a changed answer is stored and the cluster named on the channel.
    async fn refresh(self: Arc<Self>, v: Arc<ClusterShared>, spec: DnsEndpoints) {
        let status = v.dns.clone().unwrap_or_default();
        let mut wait = spec.refresh;
        loop {
            tokio::time::sleep(wait).await;
            if v.retired.load(Relaxed) {
                return;
            }
            let Some((eps, valid)) = self.resolve(&v.name, &spec, &status).await else {
                wait = spec.refresh;
                continue;
            };
            wait = valid.max(Duration::from_millis(10));
            let mut d = lock(&self.discovered);
            let Some(x) = d.get_mut(&v.name) else { return };
            if x.spec != spec || x.endpoints == eps {
                continue;
            }
            tracing::info!(cluster = %v.name, endpoints = eps.len(), "DNS answer changed");
            x.endpoints = eps;
            let _ = self.changed_tx.send(v.name.clone());
        }
    }

    async fn demo_addr(&self, cluster: &str, label: &str) -> Result<SocketAddr, ManagerError> {
        if let Some(a) = lock(&self.demos).get(label) {
            return Ok(*a);
        }
        let Some(start) = &self.demo else {
            return Err(ManagerError::Demo {
                cluster: cluster.to_owned(),
                source: std::io::Error::other("no demo upstreams in this process"),
            });
        };
        let addr = start(label.to_owned())
            .await
            .map_err(|source| ManagerError::Demo {
                cluster: cluster.to_owned(),
                source,
            })?;
        lock(&self.demos).insert(label.to_owned(), addr);
        Ok(addr)
    }

    /// The published clusters are now `live`: versions no longer published retire (their health
    /// checker and sweeper stop), new ones get theirs, and the TLS contexts in use are updated.
    /// Runs on the control runtime (the tasks it starts run there).
    pub fn commit(self: &Arc<Self>, live: &[Arc<ClusterShared>]) {
        let stamp = self.commits.fetch_add(1, Relaxed) + 1;
        let mut running = lock(&self.running);
        for v in live {
            match running.get_mut(v.name.as_str()) {
                Some(r) if Arc::ptr_eq(&r.version, v) => r.seen = stamp,
                Some(r) => {
                    // A new version of a running cluster: the old one's tasks stop.
                    retire(r);
                    v.retired.store(false, Relaxed);
                    *r = Running {
                        version: v.clone(),
                        tasks: self.start_tasks(v),
                        seen: stamp,
                    };
                }
                None => {
                    v.retired.store(false, Relaxed);
                    running.insert(
                        v.name.clone(),
                        Running {
                            version: v.clone(),
                            tasks: self.start_tasks(v),
                            seen: stamp,
                        },
                    );
                }
            }
        }
        if running.len() != live.len() {
            running.retain(|_, r| {
                let keep = r.seen == stamp;
                if !keep {
                    retire(r);
                }
                keep
            });
        }
        drop(running);
        let mut discovered = lock(&self.discovered);
        if !discovered.is_empty() {
            let names: std::collections::HashSet<&str> =
                live.iter().map(|v| v.name.as_str()).collect();
            discovered.retain(|name, _| names.contains(name.as_str()));
        }
        drop(discovered);
        self.tls
            .set_clusters(live.iter().filter_map(|v| v.tls.clone()).collect());
    }

    /// The health checker, outlier sweeper and DNS refresher of a version (on the control
    /// runtime).
    fn start_tasks(self: &Arc<Self>, v: &Arc<ClusterShared>) -> Vec<tokio::task::AbortHandle> {
        let mut tasks = Vec::new();
        if let Some(hc) = &v.config.health_check {
            tasks.push(
                tokio::spawn(super::health::run(
                    v.clone(),
                    hc.clone(),
                    v.config.protocol,
                    v.tls.clone(),
                ))
                .abort_handle(),
            );
        }
        if v.outlier.is_some() {
            tasks.push(tokio::spawn(super::outlier::run_sweeper(v.clone())).abort_handle());
        }
        if let Endpoints::Dns(spec) = &v.config.endpoints {
            tasks.push(tokio::spawn(self.clone().refresh(v.clone(), spec.clone())).abort_handle());
        }
        tasks
    }

    /// Counts a plan's changes once it is published.
    pub fn count(&self, plan: &Plan) {
        let c = &self.counts;
        c.cluster_added.fetch_add(plan.added.len() as u64, Relaxed);
        c.cluster_removed
            .fetch_add(plan.removed.len() as u64, Relaxed);
        c.cluster_updated
            .fetch_add(plan.updated.len() as u64, Relaxed);
    }

    /// The telemetry metric slots come from.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The TLS contexts in use.
    pub fn tls(&self) -> &Arc<TlsContexts> {
        &self.tls
    }

    /// The `weir_cluster_*_total` change counters, as Prometheus text.
    pub fn metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = &self.counts;
        let _ = writeln!(
            out,
            "# HELP weir_cluster_changes_total Clusters added, removed and updated by reloads and endpoint updates.\n# TYPE weir_cluster_changes_total counter"
        );
        for (op, n) in [
            ("add", &c.cluster_added),
            ("remove", &c.cluster_removed),
            ("update", &c.cluster_updated),
        ] {
            let _ = writeln!(
                out,
                "weir_cluster_changes_total{{op=\"{op}\"}} {}",
                n.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP weir_endpoint_updates_total Endpoint sets replaced through the endpoint API or by xDS (EDS).\n# TYPE weir_endpoint_updates_total counter\nweir_endpoint_updates_total {}",
            c.endpoint_updates.load(Relaxed)
        );
    }
}

fn retire(r: &Running) {
    r.version.retired.store(true, Relaxed);
    for t in &r.tasks {
        t.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
