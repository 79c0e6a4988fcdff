//! The control plane: generations of filters, chains and clusters, and the one transaction that
//! changes them (design.md §5) — for start-up, `POST /reload`, `PUT /filters/NAME`,
//! `PUT /chains/NAME`, `PUT /clusters/NAME/endpoints`, `POST /rollback` and `--watch` alike:
//!
//! parse → validate → compile (cached by sha256) → link → canary VM (`on_vm_start`,
//! `on_configure`) → cluster versions ([`ClusterManager::plan`]) → publish → every worker
//! acknowledges.
//!
//! Mutations are single-flight (a second one while one runs is refused, `Busy`); a failure at any
//! step leaves the running generation untouched. Workers start the new generation's VMs on their
//! own threads and switch new requests to it; requests in flight finish on theirs, whose VMs and
//! cluster versions are freed when the last of them ends. A change that leaves the filters and
//! chains as they are (an endpoint update, a cluster setting) reuses the running filter set, so
//! workers keep their VMs; a cluster it does not touch keeps its version, so workers keep its
//! pools and balancer state. A reload may change filters, chains, clusters and each listener's
//! `chain`; the rest of a listener, the worker count and the admin endpoint need a restart.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{Mutex, mpsc, watch};
use weir_host_abi::{Module, Runtime};

use crate::config::{
    self, ChainConfig, Config, EndpointConfig, Endpoints, FailurePolicy, FilterConfig, ModuleRef,
};
use crate::filter::{FilterError, FilterSet, Uploads};
use crate::listener::ListenerVersion;
use crate::tls::ServerTls;
use crate::upstream::manager::{ClusterManager, ManagerError};
use crate::upstream::{ClusterShared, EndpointSource};

/// How many earlier generations `POST /rollback` can go back to.
const HISTORY: usize = 8;
/// Uploaded modules kept for reference by digest (besides the ones in use).
const MAX_UPLOADS: usize = 16;
/// How long a publish waits for every worker to serve the new generation.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A generation as the control thread publishes it to the workers.
pub struct Published {
    pub id: u64,
    pub config: Arc<Config>,
    /// Compiled filters and chains (absent when the config has no filters).
    pub filters: Option<Arc<FilterSet>>,
    /// Each cluster's version, indexed like `config.clusters`.
    pub clusters: Arc<[Arc<ClusterShared>]>,
    /// Each listener's version, indexed like `config.listeners`.
    pub listeners: Arc<[Arc<ListenerVersion>]>,
    /// The tracer and access log `config.telemetry` turns on.
    pub telemetry: Arc<crate::telemetry::Outputs>,
    /// The part of `config` a control plane (xDS) supplied; the rest is the manifest's.
    pub dynamic: Arc<config::Dynamic>,
}

/// Why a change was refused. The running generation is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another change is in progress")]
    Busy,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Cluster(#[from] ManagerError),
    #[error("clusters.{0}: no such cluster")]
    UnknownCluster(String),
    #[error("listeners.{listener}.address: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listeners.{listener}.tls: {source}")]
    ListenerTls {
        listener: String,
        #[source]
        source: crate::tls::TlsError,
    },
    #[error("no earlier generation to roll back to")]
    NoHistory,
    #[error("this weir runs the embedded default manifest: there is no file to reload")]
    NoManifest,
    #[error("workers did not all switch to generation {0} in time")]
    Timeout(u64),
    #[error("internal error: {0}")]
    Internal(String),
}

/// [`Control::start`]'s result: the control plane, what workers follow, where they acknowledge.
pub type Started = (
    Arc<Control>,
    watch::Receiver<Arc<Published>>,
    mpsc::UnboundedSender<(usize, u64)>,
);

/// What a successful change did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    /// The generation now serving (or, for a dry run, the one that still is).
    pub generation: u64,
    pub dry_run: bool,
    /// sha256 of each filter's module, in manifest order (`name`, `sha256`).
    pub modules: Vec<(String, String)>,
    /// Time from the start of the transaction to every worker serving it, in microseconds.
    pub micros: u64,
    /// Of that, the time up to the publish (validation, filters, cluster versions): the
    /// control thread's work; the rest is the workers switching.
    pub prepare_micros: u64,
}

/// A filter change from `PUT /filters/NAME` (JSON form). Every field is optional; absent ones
/// keep their value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterPatch {
    /// `builtin:NAME` or `sha256:HEX` (an uploaded module). Never a path.
    pub module: Option<String>,
    pub config: Option<serde_json::Value>,
    pub vm_config: Option<serde_json::Value>,
    pub failure_policy: Option<FailurePolicy>,
}

/// A module for `PUT /filters/NAME`: new bytes, or a patch.
pub enum FilterChange {
    Module(Vec<u8>),
    Patch(FilterPatch),
}

struct State {
    current: Arc<Published>,
    history: Vec<Arc<Published>>,
    uploads: Uploads,
    /// Order the uploads came in (oldest first), to bound them.
    upload_order: Vec<String>,
}

/// The control plane (lives on the control thread; the admin endpoint and `--watch` call it).
pub struct Control {
    runtime: Runtime,
    workers: usize,
    manifest: Option<PathBuf>,
    /// [`config::digest`] of the manifest text the last reload read (published or refused; at
    /// start, the text weir started from). `--watch` reloads only when the file differs from it,
    /// so a `POST /reload` is not followed by a second, identical reload from the watcher.
    manifest_seen: AtomicU64,
    /// How many times `--watch` has looked at the file (`/metrics`).
    pub watch_checks: AtomicU64,
    state: Mutex<State>,
    /// Builds cluster versions and keeps their tasks.
    pub clusters: Arc<ClusterManager>,
    publish: watch::Sender<Arc<Published>>,
    acks: Mutex<mpsc::UnboundedReceiver<(usize, u64)>>,
    next_id: AtomicU64,
    /// Counters for `/metrics`.
    pub reloads_ok: AtomicU64,
    /// Listeners added, removed and updated by published changes.
    pub listener_changes: [AtomicU64; 3],
    pub reloads_failed: AtomicU64,
    /// Built-in modules compiled ahead of need (the compile cache holds modules only while
    /// something uses them).
    kept: std::sync::Mutex<Vec<Arc<Module>>>,
}

impl Control {
    /// Builds generation 1 from the start-up config (its filters compiled and canaried; its
    /// cluster versions `clusters`, planned by `manager`) and the channels the workers follow.
    pub fn start(
        config: Arc<Config>,
        workers: usize,
        manifest: Option<config::ManifestFile>,
        manager: Arc<ClusterManager>,
        (listeners, clusters): (Vec<Arc<ListenerVersion>>, Vec<Arc<ClusterShared>>),
    ) -> Result<Started, ControlError> {
        let runtime = FilterSet::runtime()?;
        let filters = build_filters(&config, &runtime, &Uploads::new(), 1)?;
        let first = Arc::new(Published {
            id: 1,
            listeners: listeners.into(),
            telemetry: manager.telemetry().outputs(),
            config,
            filters,
            clusters: clusters.into(),
            dynamic: Arc::default(),
        });
        let (publish, rx) = watch::channel(first.clone());
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let control = Arc::new(Self {
            runtime,
            workers,
            manifest_seen: AtomicU64::new(manifest.as_ref().map_or(0, |m| m.digest)),
            watch_checks: AtomicU64::new(0),
            manifest: manifest.map(|m| m.path),
            state: Mutex::new(State {
                current: first,
                history: Vec::new(),
                uploads: Uploads::new(),
                upload_order: Vec::new(),
            }),
            clusters: manager,
            publish,
            acks: Mutex::new(ack_rx),
            next_id: AtomicU64::new(2),
            reloads_ok: AtomicU64::new(0),
            listener_changes: Default::default(),
            reloads_failed: AtomicU64::new(0),
            kept: std::sync::Mutex::new(Vec::new()),
        });
        Ok((control, rx, ack_tx))
    }

    /// Waits until every worker serves generation 1 (and starts its clusters' health checkers
    /// and sweepers).
    pub async fn wait_started(&self) -> Result<(), ControlError> {
        self.commit(&self.current());
        self.wait_acks(1).await
    }

    /// Compiles built-in filter `name` now, off the control thread, and keeps it: a later
    /// change that uses it (the xDS client's first routes) finds it compiled.
    pub async fn keep_builtin(&self, name: &str) {
        let Some(bytes) = crate::filter::builtin::lookup(name) else {
            return;
        };
        let runtime = self.runtime.clone();
        let compiled = tokio::task::spawn_blocking(move || compile(&runtime, bytes));
        if let Ok(Ok(m)) = compiled.await {
            self.kept.lock().unwrap_or_else(|e| e.into_inner()).push(m);
        }
    }

    /// The generation serving now.
    pub fn current(&self) -> Arc<Published> {
        self.publish.borrow().clone()
    }

    /// The manifest file, if weir runs one.
    pub fn manifest(&self) -> Option<&PathBuf> {
        self.manifest.as_ref()
    }

    /// The [`config::digest`] of the manifest text the last reload read (see `manifest_seen`).
    pub fn manifest_seen(&self) -> u64 {
        self.manifest_seen.load(Relaxed)
    }

    /// `POST /reload` and `--watch`: re-reads the manifest file.
    pub async fn reload(&self, dry_run: bool) -> Result<Applied, ControlError> {
        let path = self.manifest.clone().ok_or(ControlError::NoManifest)?;
        let mut st = self.state.try_lock().map_err(|_| ControlError::Busy)?;
        let read = tokio::task::spawn_blocking(move || config::read_manifest(&path))
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let next = read.and_then(|(seen, parsed)| {
            if !dry_run {
                self.manifest_seen.store(seen, Relaxed);
            }
            parsed
        });
        // The control plane's part stays as it is over the new manifest.
        let next = next.and_then(|c| {
            config::merge(&c, &st.current.dynamic).map_err(|errors| config::ConfigError {
                source_name: "manifest and xds".into(),
                errors,
            })
        });
        match next {
            Ok(next) => self.transact(&mut st, next, dry_run).await,
            Err(e) => {
                // Refused like any other change: counted, and the running generation serves on.
                self.reloads_failed.fetch_add(1, Relaxed);
                Err(e.into())
            }
        }
    }

    /// `PUT /filters/NAME`: new module bytes, or a patch of one filter (created if absent).
    pub async fn put_filter(
        &self,
        name: &str,
        change: FilterChange,
        dry_run: bool,
    ) -> Result<Applied, ControlError> {
        let started = Instant::now();
        let mut st = self.state.try_lock().map_err(|_| ControlError::Busy)?;
        let mut next = (*st.current.config).clone();
        let pos = match next.filters.iter().position(|f| f.name == name) {
            Some(p) => p,
            None => {
                let has_module = match &change {
                    FilterChange::Module(_) => true,
                    FilterChange::Patch(p) => p.module.is_some(),
                };
                if !has_module {
                    return Err(ControlError::Invalid(format!(
                        "filters.{name}.module: a new filter needs a module"
                    )));
                }
                next.filters.push(new_filter(name));
                next.filters.len() - 1
            }
        };
        let filter = &mut next.filters[pos];
        match change {
            FilterChange::Module(bytes) => {
                let runtime = self.runtime.clone();
                let module = tokio::task::spawn_blocking(move || compile(&runtime, &bytes))
                    .await
                    .map_err(|e| ControlError::Internal(e.to_string()))?
                    .map_err(|source| FilterError::Load {
                        filter: name.to_owned(),
                        source,
                    })?;
                let digest = module.sha256_hex();
                if !dry_run {
                    remember_upload(&mut st, &digest, module.clone());
                }
                filter.module = ModuleRef::Digest(digest.clone());
                filter.sha256 = None;
                // A dry run still needs the module for the canary.
                let mut uploads = st.uploads.clone();
                uploads.insert(digest, module);
                return self
                    .transact_with(&mut st, next, dry_run, uploads, started)
                    .await;
            }
            FilterChange::Patch(p) => {
                if let Some(m) = p.module {
                    filter.module = module_ref(&m, name, &st.uploads)?;
                    filter.sha256 = None;
                }
                if let Some(c) = p.config {
                    filter.config = Some(c);
                }
                if let Some(c) = p.vm_config {
                    filter.vm_config = Some(c);
                }
                if let Some(f) = p.failure_policy {
                    filter.failure_policy = f;
                }
            }
        }
        self.transact(&mut st, next, dry_run).await
    }

    /// `PUT /chains/NAME`: a chain's filters, in order (created if absent).
    pub async fn put_chain(
        &self,
        name: &str,
        filters: Vec<String>,
        dry_run: bool,
    ) -> Result<Applied, ControlError> {
        let mut st = self.state.try_lock().map_err(|_| ControlError::Busy)?;
        let mut next = (*st.current.config).clone();
        match next.chains.iter_mut().find(|c| c.name == name) {
            Some(c) => c.filters = filters,
            None => next.chains.push(ChainConfig {
                name: name.to_owned(),
                filters,
            }),
        }
        self.transact(&mut st, next, dry_run).await
    }

    /// `POST /rollback`: publishes the previous generation's config and filters again (as a new
    /// generation; the compiled modules are the same).
    pub async fn rollback(&self) -> Result<Applied, ControlError> {
        let mut st = self.state.try_lock().map_err(|_| ControlError::Busy)?;
        let prev = st.history.last().cloned().ok_or(ControlError::NoHistory)?;
        let started = Instant::now();
        // Listeners and telemetry outputs hold resources the generation since has let go of
        // (sockets taken by workers, a stopped log writer): they are made again from the old
        // config, reusing what runs now where it is the same. Filters and cluster versions are
        // immutable and come back as they were.
        let (listeners, telemetry) = self
            .edges(&prev.config, &st.current, self.next_id.load(Relaxed))
            .await?;
        st.history.pop();
        let id = self.next_id.fetch_add(1, Relaxed);
        let p = Arc::new(Published {
            id,
            config: prev.config.clone(),
            filters: prev.filters.clone(),
            clusters: prev.clusters.clone(),
            listeners: listeners.into(),
            telemetry,
            dynamic: prev.dynamic.clone(),
        });
        let prepared = started.elapsed();
        self.publish_and_wait(&mut st, p.clone(), false).await?;
        Ok(applied(&p, false, started, prepared))
    }

    /// `PUT /clusters/NAME/endpoints`: replaces a cluster's endpoint set (Envoy's
    /// `ClusterLoadAssignment`). Only that cluster gets a new version; the filters are reused, so
    /// workers swap one cluster view and nothing else.
    pub async fn set_endpoints(
        &self,
        cluster: &str,
        endpoints: Vec<EndpointConfig>,
        dry_run: bool,
    ) -> Result<Applied, ControlError> {
        self.replace_endpoints(cluster, endpoints, dry_run, EndpointSource::Admin)
            .await
    }

    /// A cluster's endpoint set replaced through the transaction (only that cluster gets a new
    /// version). From xDS, the control plane's part remembers the new set too, so a reload
    /// that lays it over the manifest again keeps it.
    async fn replace_endpoints(
        &self,
        cluster: &str,
        endpoints: Vec<EndpointConfig>,
        dry_run: bool,
        source: EndpointSource,
    ) -> Result<Applied, ControlError> {
        let mut st = self.state.try_lock().map_err(|_| ControlError::Busy)?;
        let mut next = (*st.current.config).clone();
        let c = next
            .clusters
            .iter_mut()
            .find(|c| c.name == cluster)
            .ok_or_else(|| ControlError::UnknownCluster(cluster.to_owned()))?;
        check_endpoints(&endpoints)?;
        Arc::make_mut(c).endpoints = Endpoints::Static(endpoints);
        let dynamic = (source == EndpointSource::Xds).then(|| {
            let mut dynamic = (*st.current.dynamic).clone();
            if let Some(d) = dynamic.clusters.iter_mut().find(|d| d.name == cluster) {
                *d = c.clone();
            }
            Arc::new(dynamic)
        });
        let uploads = st.uploads.clone();
        let r = self
            .transact_from(
                &mut st,
                next,
                dry_run,
                uploads,
                Instant::now(),
                (source, None, dynamic),
            )
            .await;
        if r.is_ok() && !dry_run {
            self.clusters.counts.endpoint_updates.fetch_add(1, Relaxed);
        }
        r
    }

    async fn transact(
        &self,
        st: &mut State,
        next: Config,
        dry_run: bool,
    ) -> Result<Applied, ControlError> {
        let uploads = st.uploads.clone();
        self.transact_with(st, next, dry_run, uploads, Instant::now())
            .await
    }

    async fn transact_with(
        &self,
        st: &mut State,
        next: Config,
        dry_run: bool,
        uploads: Uploads,
        started: Instant,
    ) -> Result<Applied, ControlError> {
        self.transact_from(
            st,
            next,
            dry_run,
            uploads,
            started,
            (EndpointSource::Static, None, None),
        )
        .await
    }

    /// The xDS client's update: the control plane's whole part (`parts`), validated and laid over
    /// the manifest's part of the running configuration, through the one transaction. A refusal
    /// names the manifest field of the translated resource; nothing changes then.
    pub async fn apply_dynamic(
        &self,
        parts: config::DynamicParts,
        dry_run: bool,
    ) -> Result<Applied, ControlError> {
        let started = Instant::now();
        let mut st = self.state.try_lock().map_err(|_| ControlError::Busy)?;
        let statics = config::strip(&st.current.config, &st.current.dynamic);
        let refused = |errors| config::ConfigError {
            source_name: "xds".into(),
            errors,
        };
        let dynamic = match config::dynamic(parts, &statics)
            .and_then(|d| config::merge(&statics, &d).map(|next| (d, next)))
        {
            Ok(v) => v,
            Err(errors) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                return Err(refused(errors).into());
            }
        };
        let (dynamic, next) = dynamic;
        let uploads = st.uploads.clone();
        self.transact_from(
            &mut st,
            next,
            dry_run,
            uploads,
            started,
            (EndpointSource::Xds, None, Some(Arc::new(dynamic))),
        )
        .await
    }

    /// An xDS endpoint update (EDS) for a cluster the control plane supplied: the endpoint
    /// path of [`Control::set_endpoints`], and the control plane's part remembers the set.
    pub async fn set_xds_endpoints(
        &self,
        cluster: &str,
        endpoints: Vec<EndpointConfig>,
    ) -> Result<Applied, ControlError> {
        self.replace_endpoints(cluster, endpoints, false, EndpointSource::Xds)
            .await
    }

    /// Publishes the endpoints DNS discovery found for `cluster` (only it gets a new version).
    pub async fn apply_discovered(&self, cluster: &str) -> Result<Applied, ControlError> {
        let mut st = self.state.try_lock().map_err(|_| ControlError::Busy)?;
        let next = (*st.current.config).clone();
        let uploads = st.uploads.clone();
        self.transact_from(
            &mut st,
            next,
            false,
            uploads,
            Instant::now(),
            (EndpointSource::Dns, Some(cluster), None),
        )
        .await
    }

    /// Follows DNS discovery on the control runtime: each cluster whose answer changed is
    /// published as soon as no other change is running.
    pub fn follow_discovery(self: &Arc<Self>) {
        let Some(mut rx) = self.clusters.discovered() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(name) = rx.recv().await {
                loop {
                    match me.apply_discovered(&name).await {
                        Err(ControlError::Busy) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => {
                            tracing::warn!(cluster = %name, error = %e, "discovered endpoints not applied");
                            break;
                        }
                        Ok(a) => {
                            tracing::debug!(cluster = %name, generation = a.generation, "discovered endpoints published");
                            break;
                        }
                    }
                }
            }
        });
    }

    /// The transaction; `source` says where the endpoints of clusters it changes come from,
    /// `rediscovered` names a cluster to rebuild over its newly discovered endpoints, and
    /// `dynamic` is the control plane's part of `next` (absent: it stays what it is).
    async fn transact_from(
        &self,
        st: &mut State,
        next: Config,
        dry_run: bool,
        uploads: Uploads,
        started: Instant,
        (source, rediscovered, dynamic): (
            EndpointSource,
            Option<&str>,
            Option<Arc<config::Dynamic>>,
        ),
    ) -> Result<Applied, ControlError> {
        let result = async {
            check_reloadable(&st.current.config, &next)?;
            check_references(&next)?;
            let next = Arc::new(next);
            // The id this change will publish as (a dry run publishes nothing).
            let id = if dry_run {
                st.current.id
            } else {
                self.next_id.load(Relaxed)
            };
            let filters = if same_filters(&st.current.config, &next) {
                // Nothing the filters see changed: workers keep their VMs.
                st.current.filters.clone()
            } else {
                let runtime = self.runtime.clone();
                let cfg = next.clone();
                tokio::task::spawn_blocking(move || build_filters(&cfg, &runtime, &uploads, id))
                    .await
                    .map_err(|e| ControlError::Internal(e.to_string()))??
            };
            let plan = self
                .clusters
                .plan(&next, &st.current.clusters, id, source, rediscovered)
                .await?;
            // A version reused because its settings compare equal keeps its own copy of them;
            // the published configuration shares that copy, so the next endpoint update finds
            // every unchanged cluster by a pointer comparison instead of by value.
            let mut next = next;
            if next
                .clusters
                .iter()
                .zip(plan.clusters.iter())
                .any(|(c, v)| !Arc::ptr_eq(c, &v.config))
            {
                let cfg = Arc::make_mut(&mut next);
                for (c, v) in cfg.clusters.iter_mut().zip(plan.clusters.iter()) {
                    if !Arc::ptr_eq(c, &v.config) {
                        *c = v.config.clone();
                    }
                }
            }
            let (listeners, telemetry) = self.edges(&next, &st.current, id).await?;
            if dry_run {
                return Ok(Applied {
                    generation: st.current.id,
                    dry_run: true,
                    modules: modules_of(filters.as_deref()),
                    micros: started.elapsed().as_micros() as u64,
                    prepare_micros: started.elapsed().as_micros() as u64,
                });
            }
            let id = self.next_id.fetch_add(1, Relaxed);
            let p = Arc::new(Published {
                id,
                listeners: listeners.into(),
                telemetry,
                config: next,
                filters,
                clusters: plan.clusters.clone().into(),
                dynamic: dynamic.unwrap_or_else(|| st.current.dynamic.clone()),
            });
            self.clusters.count(&plan);
            self.count_listeners(&st.current.listeners, &p.listeners);
            let prepared = started.elapsed();
            self.publish_and_wait(st, p.clone(), true).await?;
            Ok(applied(&p, false, started, prepared))
        }
        .await;
        match &result {
            Ok(_) => self.reloads_ok.fetch_add(1, Relaxed),
            Err(_) => self.reloads_failed.fetch_add(1, Relaxed),
        };
        result
    }

    /// Publishes `p`, keeps the old generation for rollback (when `remember`), and waits until
    /// every worker serves `p`.
    async fn publish_and_wait(
        &self,
        st: &mut State,
        p: Arc<Published>,
        remember: bool,
    ) -> Result<(), ControlError> {
        let old = std::mem::replace(&mut st.current, p.clone());
        if remember {
            st.history.push(old);
            if st.history.len() > HISTORY {
                st.history.remove(0);
            }
        }
        // Callouts may reach the new clusters from the moment a worker serves them.
        if let Some(f) = &p.filters {
            f.allow_clusters(&p.config);
        }
        self.publish.send_replace(p.clone());
        self.commit(&p);
        self.wait_acks(p.id).await
    }

    /// What `config` needs at the process's edges, made from what runs now (`current`): its
    /// listener versions (sockets of new and moved listeners are bound here, so a bind failure
    /// refuses the change and an address listens before the change is answered) and its
    /// telemetry outputs.
    async fn edges(
        &self,
        config: &Config,
        current: &Published,
        generation: u64,
    ) -> Result<(Vec<Arc<ListenerVersion>>, Arc<crate::telemetry::Outputs>), ControlError> {
        let telemetry = self.clusters.telemetry();
        let listeners = plan_listeners(
            config,
            &current.listeners,
            self.workers,
            generation,
            telemetry,
        )
        .await?;
        let outputs = telemetry
            .outputs_for(&config.telemetry)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        Ok((listeners, outputs))
    }

    /// Counts what a change did to the listeners (`weir_listener_changes_total`).
    fn count_listeners(&self, old: &[Arc<ListenerVersion>], new: &[Arc<ListenerVersion>]) {
        for n in new {
            match old.iter().find(|o| o.name == n.name) {
                None => self.listener_changes[0].fetch_add(1, Relaxed),
                Some(o) if !Arc::ptr_eq(o, n) => self.listener_changes[2].fetch_add(1, Relaxed),
                Some(_) => 0,
            };
        }
        let removed = old
            .iter()
            .filter(|o| !new.iter().any(|n| n.name == o.name))
            .count();
        self.listener_changes[1].fetch_add(removed as u64, Relaxed);
    }

    /// What runs beside a published generation follows it: cluster tasks, and the TLS contexts
    /// `/certs` and rotation see.
    fn commit(&self, p: &Published) {
        self.clusters.commit(&p.clusters);
        self.clusters.telemetry().set_outputs(&p.telemetry);
        let tls = self.clusters.tls();
        tls.set_listeners(p.listeners.iter().filter_map(|l| l.tls.clone()).collect());
        tls.set_watch_interval(p.config.tls_watch_interval);
    }

    async fn wait_acks(&self, id: u64) -> Result<(), ControlError> {
        let mut acks = self.acks.lock().await;
        let mut seen = HashSet::new();
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        while seen.len() < self.workers {
            match tokio::time::timeout_at(deadline, acks.recv()).await {
                Ok(Some((worker, g))) if g == id => {
                    seen.insert(worker);
                }
                Ok(Some(_)) => {} // an older generation's ack
                Ok(None) => return Err(ControlError::Internal("workers are gone".into())),
                Err(_) => return Err(ControlError::Timeout(id)),
            }
        }
        Ok(())
    }
}

fn applied(p: &Published, dry_run: bool, started: Instant, prepared: Duration) -> Applied {
    Applied {
        generation: p.id,
        dry_run,
        modules: modules_of(p.filters.as_deref()),
        micros: started.elapsed().as_micros() as u64,
        prepare_micros: prepared.as_micros() as u64,
    }
}

fn modules_of(set: Option<&FilterSet>) -> Vec<(String, String)> {
    set.map(|s| {
        s.filters
            .iter()
            .map(|f| (f.name.clone(), f.module.sha256_hex()))
            .collect()
    })
    .unwrap_or_default()
}

/// Runs `f`, which may compile modules (off the workers); if it compiled any, gives what
/// compiling freed back to the OS.
fn compiling<T>(runtime: &Runtime, f: impl FnOnce() -> T) -> T {
    let before = runtime.compiles();
    let r = f();
    crate::memory::release_after_compile(runtime.compiles() != before);
    r
}

/// Compiles `wasm` (or finds it in the module cache): see [`compiling`].
fn compile(runtime: &Runtime, wasm: &[u8]) -> Result<Arc<Module>, weir_host_abi::LoadError> {
    compiling(runtime, || runtime.compile(wasm))
}

/// The filter set of `config`, to be published as `generation`.
fn build_filters(
    config: &Config,
    runtime: &Runtime,
    uploads: &Uploads,
    generation: u64,
) -> Result<Option<Arc<FilterSet>>, ControlError> {
    if config.filters.is_empty() {
        return Ok(None);
    }
    let mut set = compiling(runtime, || FilterSet::load(config, runtime, uploads))?;
    set.since = generation;
    Ok(Some(Arc::new(set)))
}

fn remember_upload(st: &mut State, digest: &str, module: Arc<Module>) {
    if st.uploads.insert(digest.to_owned(), module).is_none() {
        st.upload_order.push(digest.to_owned());
    }
    while st.upload_order.len() > MAX_UPLOADS {
        let gone = st.upload_order.remove(0);
        st.uploads.remove(&gone);
    }
}

/// A module reference from an admin request: `builtin:NAME` or `sha256:HEX` (never a path).
fn module_ref(m: &str, filter: &str, uploads: &Uploads) -> Result<ModuleRef, ControlError> {
    // An unknown built-in is refused by the load, which lists the ones there are.
    if let Some(b) = m.strip_prefix("builtin:") {
        return Ok(ModuleRef::Builtin(b.to_owned()));
    }
    if let Some(h) = m.strip_prefix("sha256:") {
        let h = h.to_ascii_lowercase();
        if !uploads.contains_key(&h) {
            return Err(ControlError::Invalid(format!(
                "filters.{filter}.module: no uploaded module with sha256 {h} (PUT the module bytes first)"
            )));
        }
        return Ok(ModuleRef::Digest(h));
    }
    Err(ControlError::Invalid(format!(
        "filters.{filter}.module: `{m}` is not `builtin:NAME` or `sha256:HEX` (admin requests never name files)"
    )))
}

/// A filter added by `PUT /filters/NAME`, with the manifest's defaults (its module is set by the
/// change that adds it).
fn new_filter(name: &str) -> FilterConfig {
    FilterConfig {
        name: name.to_owned(),
        module: ModuleRef::Builtin(String::new()),
        sha256: None,
        config: None,
        vm_config: None,
        failure_policy: FailurePolicy::FailClosed,
        memory_limit: config::DEFAULT_FILTER_MEMORY,
        callback_deadline: config::DEFAULT_FILTER_CALLBACK_DEADLINE,
    }
}

/// Whether `next` leaves everything the filter set is built from as it is (filters, chains, and
/// the cluster names callouts may reach), so the running set can be reused.
fn same_filters(running: &Config, next: &Config) -> bool {
    // The clusters callouts may reach follow each publish (`FilterSet::allow_clusters`); the
    // node is restart-only.
    let json = |c: &Config| {
        (
            serde_json::to_value(&c.filters).ok(),
            serde_json::to_value(&c.chains).ok(),
        )
    };
    json(running) == json(next)
}

/// The listener versions for `next` at generation `generation`: `current`'s where a listener
/// did not change; a new version (with its TLS context loaded again if its settings changed)
/// that keeps the running sockets where its address is the same; freshly bound sockets
/// (`workers` of them, `SO_REUSEPORT`) for a new or moved listener.
pub async fn plan_listeners(
    next: &Config,
    current: &[Arc<ListenerVersion>],
    workers: usize,
    generation: u64,
    telemetry: &crate::telemetry::Telemetry,
) -> Result<Vec<Arc<ListenerVersion>>, ControlError> {
    let mut out = Vec::with_capacity(next.listeners.len());
    for l in &next.listeners {
        let prev = current.iter().find(|v| *v.name == *l.name);
        if let Some(p) = prev
            && serde_json::to_value(&p.config).ok() == serde_json::to_value(l).ok()
        {
            out.push(p.clone());
            continue;
        }
        let tls = match (&l.tls, prev) {
            (None, _) => None,
            (Some(t), Some(p)) if p.config.tls.as_ref() == Some(t) && p.tls.is_some() => {
                p.tls.clone()
            }
            (Some(t), _) => {
                let (name, t) = (l.name.clone(), t.clone());
                let loaded = tokio::task::spawn_blocking(move || ServerTls::load(&name, &t))
                    .await
                    .map_err(|e| ControlError::Internal(e.to_string()))?
                    .map_err(|source| ControlError::ListenerTls {
                        listener: l.name.clone(),
                        source,
                    })?;
                Some(Arc::new(loaded))
            }
        };
        let (local, sockets) = match prev {
            Some(p) if p.config.address == l.address => (p.local, None),
            _ => {
                let socks =
                    crate::listener::bind_reuseport(l.address, workers).map_err(|source| {
                        ControlError::Bind {
                            listener: l.name.clone(),
                            addr: l.address,
                            source,
                        }
                    })?;
                let local = socks
                    .first()
                    .and_then(|s| s.local_addr().ok())
                    .unwrap_or(l.address);
                (local, Some(socks))
            }
        };
        out.push(Arc::new(ListenerVersion::new(
            l.clone(),
            telemetry.listener_slots(&l.name),
            local,
            sockets,
            tls,
            generation,
        )));
    }
    Ok(out)
}

/// An endpoint set from the endpoint API: every field within its range, no address twice.
fn check_endpoints(eps: &[EndpointConfig]) -> Result<(), ControlError> {
    let mut errs = Vec::new();
    let mut seen = HashSet::new();
    for (i, e) in eps.iter().enumerate() {
        if e.address.port() == 0 {
            errs.push(format!("endpoints[{i}].address: port must not be 0"));
        }
        if !seen.insert(e.address) {
            errs.push(format!(
                "endpoints[{i}].address: {} listed twice",
                e.address
            ));
        }
        if !(1..=config::MAX_WEIGHT).contains(&e.weight) {
            errs.push(format!(
                "endpoints[{i}].weight: must be between 1 and {}",
                config::MAX_WEIGHT
            ));
        }
        if e.priority > config::MAX_PRIORITY {
            errs.push(format!(
                "endpoints[{i}].priority: must be between 0 and {}",
                config::MAX_PRIORITY
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ControlError::Invalid(errs.join("; ")))
    }
}

/// A reload changes everything but `workers` and `admin`, which need a restart.
fn check_reloadable(running: &Config, next: &Config) -> Result<(), ControlError> {
    let fixed = |c: &Config| -> serde_json::Map<String, serde_json::Value> {
        // What may change is left out before serializing (a proxy may hold thousands of
        // clusters; an endpoint update must not serialize them all).
        let mut c = c.clone();
        c.clusters.clear();
        c.filters.clear();
        c.chains.clear();
        c.listeners.clear();
        let mut v = match serde_json::to_value(&c) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        v.remove("filters");
        v.remove("chains");
        v.remove("clusters");
        v.remove("dns");
        v.remove("listeners");
        v.remove("drain_timeout");
        v.remove("tls_watch_interval");
        v.remove("telemetry");
        v
    };
    let (a, b) = (fixed(running), fixed(next));
    let mut changed: Vec<&str> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .map(String::as_str)
        .collect();
    changed.sort_unstable();
    changed.dedup();
    if changed.is_empty() {
        return Ok(());
    }
    Err(ControlError::Invalid(format!(
        "{}: changed, which needs a restart (a reload applies everything but workers, admin and xds)",
        changed.join(", ")
    )))
}

/// Every chain names existing filters, every listener an existing chain; names are unique.
fn check_references(c: &Config) -> Result<(), ControlError> {
    let mut errs = Vec::new();
    let mut seen = HashSet::new();
    for f in &c.filters {
        if !seen.insert(f.name.as_str()) {
            errs.push(format!("filters.{}: defined twice", f.name));
        }
    }
    let mut chains = HashSet::new();
    for ch in &c.chains {
        if !chains.insert(ch.name.as_str()) {
            errs.push(format!("chains.{}: defined twice", ch.name));
        }
        if ch.filters.is_empty() {
            errs.push(format!("chains.{}: needs at least one filter", ch.name));
        }
        for (i, f) in ch.filters.iter().enumerate() {
            if !seen.contains(f.as_str()) {
                errs.push(format!("chains.{}[{i}]: unknown filter `{f}`", ch.name));
            }
        }
    }
    for l in &c.listeners {
        if let Some(ch) = &l.chain
            && !chains.contains(ch.as_str())
        {
            errs.push(format!("listeners.{}.chain: unknown chain `{ch}`", l.name));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ControlError::Invalid(errs.join("; ")))
    }
}
