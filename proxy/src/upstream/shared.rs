//! Cluster state that outlives a worker's view: one [`ClusterShared`] per cluster, created once at
//! start-up (`app.rs`) and shared by every worker, the health checker, the outlier sweeper and the
//! admin endpoint.
//!
//! Two kinds of state, chosen for what the request path pays:
//! - **Per-worker shards** ([`WorkerStats`]): counters and gauges each written by one worker only,
//!   with a plain load and store ([`Local`]); no locked instruction, no shared cache line on the
//!   request path. The admin endpoint and the circuit breakers sum them.
//! - **Cluster-wide atomics** ([`EndpointShared`], [`ClusterShared::version`]): health, ejection
//!   and consecutive-error counts, written rarely (on errors, by the checker, by the sweeper) and
//!   read by every worker only when [`ClusterShared::version`] moves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::config::{
    CircuitBreakerConfig, ClusterConfig, FailoverConfig, OutlierConfig, RetryBudgetConfig,
    RetryPolicy,
};

/// A counter or gauge with one writer (its worker) and any number of readers. The writer's
/// update is a relaxed load and store: as cheap as a `Cell`, yet readable from another thread.
#[derive(Debug, Default)]
pub struct Local(AtomicU64);

impl Local {
    /// Adds one. Only the owning worker may call it.
    #[inline]
    pub fn inc(&self) {
        self.0.store(self.0.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// Takes one away (never below zero). Only the owning worker may call it.
    #[inline]
    pub fn dec(&self) {
        self.0
            .store(self.0.load(Relaxed).saturating_sub(1), Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

pub use crate::proto::error::Resource;

impl Resource {
    /// Its limit in a cluster's breaker settings.
    pub fn limit(self, c: &CircuitBreakerConfig) -> u64 {
        u64::from(match self {
            Resource::Connections => c.max_connections,
            Resource::Pending => c.max_pending,
            Resource::Requests => c.max_requests,
            Resource::Retries => c.max_retries,
        })
    }
}

/// Which timeout fired (counted per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    Connect = 0,
    Response = 1,
    PerTry = 2,
    Request = 3,
    Idle = 4,
}

impl TimeoutKind {
    pub const ALL: [TimeoutKind; 5] = [
        TimeoutKind::Connect,
        TimeoutKind::Response,
        TimeoutKind::PerTry,
        TimeoutKind::Request,
        TimeoutKind::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::Response => "response",
            TimeoutKind::PerTry => "per_try",
            TimeoutKind::Request => "request",
            TimeoutKind::Idle => "idle",
        }
    }
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectReason {
    Consecutive5xx = 0,
    ConsecutiveGatewayErrors = 1,
    ConsecutiveConnectFailures = 2,
}

impl EjectReason {
    pub const ALL: [EjectReason; 3] = [
        EjectReason::Consecutive5xx,
        EjectReason::ConsecutiveGatewayErrors,
        EjectReason::ConsecutiveConnectFailures,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EjectReason::Consecutive5xx => "consecutive_5xx",
            EjectReason::ConsecutiveGatewayErrors => "consecutive_gateway_errors",
            EjectReason::ConsecutiveConnectFailures => "consecutive_connect_failures",
        }
    }
}

/// One worker's figures for one cluster. Aligned so two workers' shards never share a cache line.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Upstream requests (attempts) sent, and in flight until their response body ends.
    pub rq_total: Local,
    pub rq_active: Local,
    /// Attempts waiting for a new connection.
    pub rq_pending: Local,
    /// Upstream connections open (pooled, in use, HTTP/2, tunnels).
    pub cx_active: Local,
    /// Retries sent, retries that brought the final answer, and retries between their decision
    /// and the end of their attempt.
    pub rq_retry: Local,
    pub rq_retry_success: Local,
    pub retries_active: Local,
    /// Retries not made because the budget was spent.
    pub retry_overflow_budget: Local,
    /// Refused by a breaker, by [`Resource`] (`Retries`: a retry not made at `max_retries`).
    pub overflow: [Local; 4],
    /// Timeouts, by [`TimeoutKind`].
    pub timeouts: [Local; 5],
    /// Per endpoint, indexed like the cluster's endpoints.
    pub eps: Box<[EndpointStats]>,
}

impl WorkerStats {
    fn new(endpoints: usize) -> Self {
        Self {
            eps: (0..endpoints).map(|_| EndpointStats::default()).collect(),
            ..Self::default()
        }
    }

    /// The gauge a breaker resource is measured by.
    pub fn gauge(&self, r: Resource) -> &Local {
        match r {
            Resource::Connections => &self.cx_active,
            Resource::Pending => &self.rq_pending,
            Resource::Requests => &self.rq_active,
            Resource::Retries => &self.retries_active,
        }
    }
}

/// One worker's figures for one endpoint.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub rq_total: Local,
    /// 5xx answers and local failures (connect, reset, timeout).
    pub rq_error: Local,
    pub rq_active: Local,
}

/// One endpoint's cluster-wide state.
#[derive(Debug)]
pub struct EndpointShared {
    pub addr: SocketAddr,
    pub weight: u32,
    pub priority: u32,
    /// Index of its priority level in [`ClusterShared::levels`].
    pub level: usize,
    /// The active health check's verdict (always true without one).
    pub healthy: AtomicBool,
    /// Ejected by outlier detection, until `ejected_until` (coarse ms).
    pub ejected: AtomicBool,
    pub ejected_until: AtomicU64,
    /// Ejections in a row (the next one lasts `base_ejection` × this, capped); decays while the
    /// endpoint behaves.
    pub times_ejected: AtomicU32,
    /// Ejections over the process's life.
    pub ejections_total: AtomicU64,
    pub consecutive_5xx: AtomicU32,
    pub consecutive_gateway: AtomicU32,
    pub consecutive_connect: AtomicU32,
    /// Consecutive health-check results of the current streak (for `/clusters`).
    pub hc_streak_failures: AtomicU32,
    pub hc_streak_successes: AtomicU32,
}

impl EndpointShared {
    /// Whether the balancer may send to it (outside panic mode).
    pub fn available(&self) -> bool {
        self.healthy.load(Relaxed) && !self.ejected.load(Relaxed)
    }
}

/// A cluster's state shared by all workers (see the module docs).
#[derive(Debug)]
pub struct ClusterShared {
    pub name: String,
    /// Indexed by worker id.
    pub workers: Box<[Arc<WorkerStats>]>,
    pub endpoints: Box<[EndpointShared]>,
    /// The distinct priorities, ascending; an endpoint's `level` indexes this.
    pub levels: Box<[u32]>,
    /// Bumped whenever an endpoint's availability changes; each worker rebuilds its balancing
    /// view when it sees a new value (one relaxed load per request otherwise).
    pub version: AtomicU64,
    /// Endpoints ejected right now.
    pub ejected: AtomicU32,
    /// Ejections by [`EjectReason`].
    pub ejections: [AtomicU64; 3],
    /// Health-check probes that passed / failed.
    pub hc_success: AtomicU64,
    pub hc_failure: AtomicU64,
    pub budget: super::retry::RetryBudget,
    pub limits: CircuitBreakerConfig,
    pub outlier: Option<OutlierConfig>,
    pub failover: FailoverConfig,
}

impl ClusterShared {
    /// The state of `cfg` over its resolved addresses, with a shard for each of `workers`.
    pub fn new(cfg: &ClusterConfig, addrs: &[SocketAddr], workers: usize) -> Self {
        let mut levels: Vec<u32> = (0..addrs.len()).map(|i| cfg.endpoint_meta(i).1).collect();
        levels.sort_unstable();
        levels.dedup();
        let endpoints = addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let (weight, priority) = cfg.endpoint_meta(i);
                EndpointShared {
                    addr,
                    weight,
                    priority,
                    level: levels.binary_search(&priority).unwrap_or(0),
                    healthy: AtomicBool::new(true),
                    ejected: AtomicBool::new(false),
                    ejected_until: AtomicU64::new(0),
                    times_ejected: AtomicU32::new(0),
                    ejections_total: AtomicU64::new(0),
                    consecutive_5xx: AtomicU32::new(0),
                    consecutive_gateway: AtomicU32::new(0),
                    consecutive_connect: AtomicU32::new(0),
                    hc_streak_failures: AtomicU32::new(0),
                    hc_streak_successes: AtomicU32::new(0),
                }
            })
            .collect();
        let budget: RetryBudgetConfig = cfg
            .retries
            .as_ref()
            .map_or_else(|| RetryPolicy::default().budget, |r| r.budget);
        Self {
            name: cfg.name.clone(),
            workers: (0..workers.max(1))
                .map(|_| Arc::new(WorkerStats::new(addrs.len())))
                .collect(),
            endpoints,
            levels: levels.into(),
            version: AtomicU64::new(0),
            ejected: AtomicU32::new(0),
            ejections: Default::default(),
            hc_success: AtomicU64::new(0),
            hc_failure: AtomicU64::new(0),
            budget: super::retry::RetryBudget::new(&budget),
            limits: cfg.circuit_breaker,
            outlier: cfg.outlier,
            failover: cfg.failover,
        }
    }

    /// A shard's figure summed over every worker.
    pub fn sum(&self, f: impl Fn(&WorkerStats) -> &Local) -> u64 {
        self.workers.iter().map(|w| f(w).get()).sum()
    }

    /// An endpoint's figure summed over every worker.
    pub fn sum_endpoint(&self, i: usize, f: impl Fn(&EndpointStats) -> &Local) -> u64 {
        self.workers
            .iter()
            .filter_map(|w| w.eps.get(i))
            .map(|e| f(e).get())
            .sum()
    }

    /// Tells every worker that an endpoint's availability changed.
    pub fn bump(&self) {
        self.version.fetch_add(1, Relaxed);
    }

    /// The load each priority level gets now, from the endpoints' availability.
    pub fn priority_loads(&self) -> Vec<super::balance::LevelLoad> {
        let mut counts = vec![(0u32, 0u32); self.levels.len()];
        for e in self.endpoints.iter() {
            let c = &mut counts[e.level];
            c.1 += 1;
            if e.available() {
                c.0 += 1;
            }
        }
        super::balance::priority_loads(&counts, &self.failover)
    }
}
