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
pub mod outlier;
pub mod pool;
pub mod report;
pub mod retry;
pub mod shared;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ClusterConfig, LbPolicy, Protocol, RetryPolicy};

pub use client::send;
pub use forward::{Observer, Route, callout, forward};
pub use shared::ClusterShared;
use shared::WorkerStats;

/// A cluster as one worker sees it.
pub struct Cluster {
    pub name: String,
    /// Position in `Config::clusters`.
    pub index: usize,
    pub protocol: Protocol,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub per_try_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub endpoints: Vec<Rc<Endpoint>>,
    /// TLS origination (shared by every worker; its material rotates on its own).
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// The cluster's retry policy (a route decision may enable retries without one: the
    /// defaults then apply).
    pub retries: Option<RetryPolicy>,
    /// State shared with the other workers, and this worker's shard of the statistics.
    pub shared: Arc<ClusterShared>,
    pub stats: Arc<WorkerStats>,
    /// Peak-EWMA constants, in milliseconds.
    ewma_decay_ms: f64,
    /// Round-robin cursor.
    rr: Cell<usize>,
    /// The balancing view, and the shared version it was built from.
    view: RefCell<balance::View>,
    view_version: Cell<u64>,
}

/// One upstream address with this worker's pool and load figures for it.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Its index in the cluster (and in the shared state).
    pub index: usize,
    pub weight: u32,
    pub pool: pool::Pool,
    /// This worker's shard of the cluster's statistics (`eps[index]` is this endpoint's).
    stats: Arc<WorkerStats>,
    /// Peak-EWMA latency estimate (`lb: p2c_ewma`).
    ewma: balance::Ewma,
    /// Smooth weighted round robin's running weight.
    wrr: Cell<i64>,
}

impl Endpoint {
    /// Requests in flight from this worker (least-request and peak-EWMA balancing).
    pub fn active(&self) -> u32 {
        u32::try_from(self.stats.eps[self.index].rq_active.get()).unwrap_or(u32::MAX)
    }

    /// An attempt starts: counted in flight, for this endpoint and the cluster.
    pub(crate) fn begin(&self) {
        let e = &self.stats.eps[self.index];
        e.rq_total.inc();
        e.rq_active.inc();
        self.stats.rq_total.inc();
        self.stats.rq_active.inc();
    }

    /// An attempt ended (its response body was read or dropped, or it failed).
    pub(crate) fn end(&self) {
        self.stats.eps[self.index].rq_active.dec();
        self.stats.rq_active.dec();
    }

    /// This worker's statistics for the cluster.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }
}

impl Cluster {
    /// Builds worker `worker`'s view of a cluster over resolved endpoint addresses.
    pub fn new(
        cfg: &ClusterConfig,
        addrs: &[SocketAddr],
        tls: Option<Arc<crate::tls::ClientTls>>,
        shared: Arc<ClusterShared>,
        worker: usize,
    ) -> Self {
        let stats = shared.workers[worker % shared.workers.len()].clone();
        let now = crate::timer::now_ms();
        let default_rtt = cfg.ewma.default_rtt.as_secs_f64() * 1000.0;
        let c = Self {
            name: cfg.name.clone(),
            index: cfg.index,
            protocol: cfg.protocol,
            lb: cfg.lb,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            per_try_timeout: cfg.per_try_timeout,
            request_timeout: cfg.request_timeout,
            idle_timeout: cfg.idle_timeout,
            endpoints: addrs
                .iter()
                .enumerate()
                .map(|(index, &addr)| {
                    Rc::new(Endpoint {
                        addr,
                        index,
                        weight: cfg.endpoint_meta(index).0,
                        pool: pool::Pool::new(cfg.pool_max_idle, cfg.pool_idle_timeout),
                        stats: stats.clone(),
                        ewma: balance::Ewma::new(default_rtt, now),
                        wrr: Cell::new(0),
                    })
                })
                .collect(),
            tls,
            retries: cfg.retries.clone(),
            ewma_decay_ms: cfg.ewma.decay.as_secs_f64() * 1000.0,
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
