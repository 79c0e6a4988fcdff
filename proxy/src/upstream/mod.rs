//! Upstream side of the data path, per worker: clusters, endpoint selection, pooled connections,
//! and the resilience layer around them.
//!
//! A request enters through [`forward()`](forward()) (`forward.rs`): circuit breakers (`breaker.rs`), endpoint
//! choice over priority levels and health (`balance.rs`), one attempt over a pooled connection
//! (`client.rs`, `h1.rs`, `pool.rs`, `connect.rs`), then outlier accounting (`outlier.rs`) and,
//! when a retry policy applies, retries with backoff under a budget (`retry.rs`).
//!
//! Everything a worker touches per request lives on that worker (`Rc`, `Cell`): a stream never
//! leaves its worker, so no lock is needed. What all workers must agree on (health, ejections,
//! the retry budget, breaker counts, statistics) is in one [`ClusterShared`] per cluster
//! (`shared.rs`), created at start-up, in atomics; active health checks (`health.rs`) and the
//! outlier sweeper run on the control thread, off the request path.

pub mod balance;
pub mod breaker;
pub mod client;
pub mod connect;
pub mod forward;
pub mod h1;
pub mod health;
pub mod manager;
pub mod outlier;
pub mod pool;
pub mod report;
pub mod retry;
pub mod shared;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{EndpointHealth, LbPolicy, Protocol, RetryPolicy};

pub use client::send;
pub use forward::{Observer, Route, callout, forward};
pub use shared::{ClusterShared, EndpointSource};
use shared::{EndpointState, EndpointStats, WorkerStats};

/// The cluster table a worker's running filter VMs reach for callouts: the current generation's
/// (set by the worker each time it switches).
pub type CurrentClusters = Rc<RefCell<Rc<ClusterTable>>>;

/// A worker's clusters at one generation, indexed like that generation's `Config::clusters`.
/// Requests hold the table they started with; a cluster a new generation did not change is the
/// same `Rc` in both tables (same pools, same balancer state).
#[derive(Default)]
pub struct ClusterTable {
    pub clusters: Vec<Rc<Cluster>>,
    /// Shared with the previous table while the names and their order stay (an endpoint
    /// update builds no map).
    by_name: Rc<HashMap<Arc<str>, usize>>,
}

impl ClusterTable {
    /// Builds worker `worker`'s table for `versions`, reusing what `prev` has: a cluster whose
    /// version is the same is taken as is; a changed one keeps each endpoint's pool and latency
    /// estimate while its address stays and its connections remain valid.
    pub fn build(
        versions: &[Arc<ClusterShared>],
        prev: Option<&ClusterTable>,
        worker: usize,
    ) -> Self {
        let mut aligned = prev.is_some_and(|p| p.clusters.len() == versions.len());
        let clusters: Vec<Rc<Cluster>> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let old = prev.and_then(|p| {
                    // Same position first (the common case), then by name.
                    match p.clusters.get(i).filter(|c| *c.name == *v.name) {
                        Some(c) => Some(c),
                        None => {
                            aligned = false;
                            p.get(&v.name)
                        }
                    }
                });
                match old {
                    Some(c) if Arc::ptr_eq(&c.shared, v) => c.clone(),
                    old => Rc::new(Cluster::new(v.clone(), worker, old.map(|c| &**c))),
                }
            })
            .collect();
        let by_name = match prev {
            Some(p) if aligned => p.by_name.clone(),
            _ => Rc::new(
                clusters
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name.clone(), i))
                    .collect(),
            ),
        };
        Self { clusters, by_name }
    }

    /// The cluster called `name`.
    pub fn get(&self, name: &str) -> Option<&Rc<Cluster>> {
        self.by_name.get(name).map(|&i| &self.clusters[i])
    }

    /// The cluster at index `i`, if there is one.
    pub fn at(&self, i: usize) -> Option<&Rc<Cluster>> {
        self.clusters.get(i)
    }

    /// The position of the cluster called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

impl std::ops::Index<usize> for ClusterTable {
    type Output = Rc<Cluster>;
    fn index(&self, i: usize) -> &Rc<Cluster> {
        &self.clusters[i]
    }
}

/// A cluster as one worker sees it (one version of it).
pub struct Cluster {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub per_try_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Indexed like the version's endpoints ([`ClusterShared::endpoints`]).
    pub endpoints: Vec<Rc<Endpoint>>,
    /// TLS origination (shared by every worker; its material rotates on its own).
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// The cluster's retry policy (a route decision may enable retries without one: the
    /// defaults then apply).
    pub retries: Option<RetryPolicy>,
    /// The version's state shared with the other workers, and this worker's shard of the
    /// statistics.
    pub shared: Arc<ClusterShared>,
    pub stats: Arc<WorkerStats>,
    /// Its first metric slot (`telemetry::metrics::cluster`).
    pub metrics: usize,
    /// Peak-EWMA constants, in milliseconds.
    ewma_decay_ms: f64,
    /// Round-robin cursor.
    rr: Cell<usize>,
    /// The balancing view, and the shared version it was built from.
    view: RefCell<balance::View>,
    view_version: Cell<u64>,
}

/// One upstream address with this worker's pool and load figures for it. Kept across versions
/// of its cluster while its address, weight and connection settings stay.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub pool: Rc<pool::Pool>,
    /// Cluster-wide state kept across versions (health, ejection, statistics).
    pub state: Arc<EndpointState>,
    /// This worker's shard of `state.stats` (its id, reduced once to the shard count).
    worker: usize,
    /// This worker's shard of its cluster's statistics.
    cluster_stats: Arc<WorkerStats>,
    /// Peak-EWMA latency estimate (`lb: p2c_ewma`).
    ewma: balance::Ewma,
    /// Smooth weighted round robin's running weight.
    wrr: Cell<i64>,
}

impl Endpoint {
    fn stats(&self) -> &EndpointStats {
        &self.state.stats[self.worker]
    }

    /// Requests in flight from this worker (least-request and peak-EWMA balancing).
    pub fn active(&self) -> u32 {
        u32::try_from(self.stats().rq_active.get()).unwrap_or(u32::MAX)
    }

    /// An attempt starts: counted in flight, for this endpoint and the cluster.
    pub(crate) fn begin(&self) {
        let e = self.stats();
        e.rq_total.inc();
        e.rq_active.inc();
        self.cluster_stats.rq_total.inc();
        self.cluster_stats.rq_active.inc();
    }

    /// An attempt ended (its response body was read or dropped, or it failed).
    pub(crate) fn end(&self) {
        self.stats().rq_active.dec();
        self.cluster_stats.rq_active.dec();
    }

    /// An attempt failed (5xx or a local failure), for its error rate.
    pub(crate) fn count_error(&self) {
        self.stats().rq_error.inc();
    }

    /// Its first metric slot (`telemetry::metrics::endpoint`).
    pub fn metric_slots(&self) -> usize {
        self.state.metrics
    }
}

impl Cluster {
    /// Builds worker `worker`'s view of a cluster version; with `prev` (its view of the
    /// version this one replaces) endpoints that stay keep their pools and estimates.
    pub fn new(shared: Arc<ClusterShared>, worker: usize, prev: Option<&Cluster>) -> Self {
        let cfg = shared.config.clone();
        let stats = shared.workers[worker % shared.workers.len()].clone();
        let now = crate::timer::now_ms();
        let default_rtt = cfg.ewma.default_rtt.as_secs_f64() * 1000.0;
        let pools_kept = prev.is_some_and(|p| p.shared.config.pools_compatible(&cfg));
        let by_addr = prev
            .filter(|_| pools_kept)
            .map(|p| shared::AddrIndex::new(&p.endpoints, |e| e.addr));
        let endpoints = shared
            .endpoints
            .iter()
            .map(|e| {
                let old = prev
                    .zip(by_addr.as_ref())
                    .and_then(|(p, idx)| idx.find(e.addr, &p.endpoints, |o| o.addr));
                let ep = match old {
                    Some(o)
                        if o.weight == e.weight
                            && Arc::ptr_eq(&o.state, &e.state)
                            && Arc::ptr_eq(&o.cluster_stats, &stats) =>
                    {
                        o.clone()
                    }
                    _ => Rc::new(Endpoint {
                        addr: e.addr,
                        weight: e.weight,
                        pool: old.map_or_else(
                            || Rc::new(pool::Pool::new(cfg.pool_max_idle, cfg.pool_idle_timeout)),
                            |o| o.pool.clone(),
                        ),
                        state: e.state.clone(),
                        worker: worker % e.state.stats.len(),
                        cluster_stats: stats.clone(),
                        ewma: balance::Ewma::new(old.map_or(default_rtt, |o| o.ewma.get()), now),
                        wrr: Cell::new(0),
                    }),
                };
                if e.health != EndpointHealth::Healthy {
                    // Draining or unhealthy: no new requests, and its idle connections go now.
                    ep.pool.close();
                } else {
                    ep.pool.reopen();
                }
                ep
            })
            .collect();
        let c = Self {
            name: Arc::from(cfg.name.as_str()),
            protocol: cfg.protocol,
            lb: cfg.lb,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            per_try_timeout: cfg.per_try_timeout,
            request_timeout: cfg.request_timeout,
            idle_timeout: cfg.idle_timeout,
            endpoints,
            tls: shared.tls.clone(),
            retries: cfg.retries.clone(),
            ewma_decay_ms: cfg.ewma.decay.as_secs_f64() * 1000.0,
            metrics: shared.metrics,
            stats,
            rr: Cell::new(fastrand::usize(..)),
            view: RefCell::new(balance::View::default()),
            view_version: Cell::new(shared.version.load(std::sync::atomic::Ordering::Relaxed)),
            shared,
        };
        *c.view.borrow_mut() = balance::View::build(&c);
        c
    }
}
