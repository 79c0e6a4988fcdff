//! Cluster state shared by every worker, the health checker, the outlier sweeper and the admin
//! endpoint, in three lifetimes:
//!
//! - [`ClusterShared`]: one **version** of a cluster, immutable once published (its settings,
//!   its endpoint set with each endpoint's weight, priority, zone and reported health, its TLS
//!   context). A reload or an endpoint update that changes a cluster publishes a new version;
//!   requests in flight finish on the version they started with.
//! - [`ClusterCore`]: what a cluster keeps **across its versions** (breaker gauges and statistics,
//!   the retry budget, ejection counts, its metric slots, the availability version workers
//!   watch). A version reaches it through `Deref`: a version *is* its cluster plus this version's
//!   membership, and code that reads `shared.budget` or `shared.version` should not care which.
//! - [`EndpointState`]: what an endpoint keeps across versions while its address stays in the
//!   cluster (health, ejection and its run counts, per-worker statistics, its metric slots), so
//!   a reload never cold-starts or re-ejects an endpoint that did not change.
//!
//! Two kinds of state, chosen for what the request path pays:
//! - **Per-worker shards** ([`WorkerStats`], [`EndpointStats`]): counters and gauges each written
//!   by one worker only, with a plain load and store ([`Local`]); no locked instruction, no
//!   shared cache line on the request path. The admin endpoint and the circuit breakers sum them.
//! - **Cluster-wide atomics**: health, ejection and consecutive-error counts, written rarely (on
//!   errors, by the checker, by the sweeper) and read by every worker only when
//!   [`ClusterCore::version`] moves.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::config::{
    CircuitBreakerConfig, ClusterConfig, EndpointConfig, EndpointHealth, FailoverConfig,
    OutlierConfig, RetryBudgetConfig, RetryPolicy,
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
}

impl WorkerStats {
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

/// One worker's figures for one endpoint (aligned like [`WorkerStats`]).
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub rq_total: Local,
    /// 5xx answers and local failures (connect, reset, timeout).
    pub rq_error: Local,
    pub rq_active: Local,
}

/// What an endpoint keeps across its cluster's versions while its address stays in it.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
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
    /// Indexed by worker id; each written by its worker only.
    pub stats: Box<[EndpointStats]>,
    /// Its first metric slot (`telemetry::metrics::endpoint`).
    pub metrics: usize,
}

impl EndpointState {
    fn new(addr: SocketAddr, workers: usize, metrics: usize) -> Self {
        Self {
            addr,
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
            stats: (0..workers.max(1))
                .map(|_| EndpointStats::default())
                .collect(),
            metrics,
        }
    }

    /// A figure summed over every worker.
    pub fn sum(&self, f: impl Fn(&EndpointStats) -> &Local) -> u64 {
        self.stats.iter().map(|e| f(e).get()).sum()
    }
}

/// An endpoint as one version of its cluster has it.
#[derive(Debug)]
pub struct EndpointShared {
    pub state: Arc<EndpointState>,
    pub weight: u32,
    pub priority: u32,
    /// Index of its priority level in [`ClusterShared::levels`].
    pub level: usize,
    pub zone: Option<Arc<str>>,
    /// What its source reports (`draining` and `unhealthy` get no new requests).
    pub health: EndpointHealth,
}

impl Deref for EndpointShared {
    type Target = EndpointState;
    fn deref(&self) -> &EndpointState {
        &self.state
    }
}

impl EndpointShared {
    /// Whether the balancer may send to it (outside panic mode).
    pub fn available(&self) -> bool {
        self.health == EndpointHealth::Healthy
            && self.state.healthy.load(Relaxed)
            && !self.state.ejected.load(Relaxed)
    }

    /// Whether even a level in panic may use it: only endpoints their source calls healthy
    /// (a draining one is on its way out whatever the balancer thinks of its peers).
    pub fn usable(&self) -> bool {
        self.health == EndpointHealth::Healthy
    }
}

/// Finds an endpoint of a version by address: a scan for a few, a map for many (a cluster of
/// thousands of endpoints changed by one must not cost a scan per endpoint).
pub(crate) struct AddrIndex(Option<std::collections::HashMap<SocketAddr, usize>>);

impl AddrIndex {
    /// Below this many endpoints a scan is cheaper than building a map.
    const SCAN: usize = 16;

    pub(crate) fn new<T>(items: &[T], addr: impl Fn(&T) -> SocketAddr) -> Self {
        Self((items.len() > Self::SCAN).then(|| {
            items
                .iter()
                .enumerate()
                .map(|(i, x)| (addr(x), i))
                .collect()
        }))
    }

    pub(crate) fn find<'a, T>(
        &self,
        want: SocketAddr,
        items: &'a [T],
        addr: impl Fn(&T) -> SocketAddr,
    ) -> Option<&'a T> {
        match &self.0 {
            Some(map) => map.get(&want).map(|&i| &items[i]),
            None => items.iter().find(|x| addr(x) == want),
        }
    }
}

/// Where a cluster version's endpoints came from (`/clusters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointSource {
    /// The manifest's `endpoints:` (or the built-in demo upstream).
    Static,
    /// `PUT /clusters/NAME/endpoints`.
    Admin,
    /// DNS discovery.
    Dns,
    /// A control plane (xDS: a CDS cluster's own endpoints, or EDS).
    Xds,
}

/// What a cluster keeps across its versions (see the module docs).
#[derive(Debug)]
pub struct ClusterCore {
    /// Indexed by worker id.
    pub workers: Box<[Arc<WorkerStats>]>,
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
    /// The retry-budget settings `budget` was made with (a change makes a new core).
    budget_cfg: RetryBudgetConfig,
    /// Its first metric slot (`telemetry::metrics::cluster`).
    pub metrics: usize,
}

/// One version of a cluster, shared by all workers (see the module docs).
#[derive(Debug)]
pub struct ClusterShared {
    pub name: String,
    pub config: Arc<ClusterConfig>,
    pub core: Arc<ClusterCore>,
    pub endpoints: Box<[EndpointShared]>,
    /// The distinct priorities, ascending; an endpoint's `level` indexes this.
    pub levels: Box<[u32]>,
    pub limits: CircuitBreakerConfig,
    pub outlier: Option<OutlierConfig>,
    pub failover: FailoverConfig,
    /// TLS origination (its material rotates on its own).
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    pub source: EndpointSource,
    /// DNS discovery's figures (a `dns` or `logical_dns` cluster), kept across versions.
    pub dns: Option<Arc<DnsStatus>>,
    /// The generation that made this version (`/config_dump`).
    pub generation: u64,
    /// Set once a newer version (or none) replaced it: its health checker and sweeper stop.
    pub retired: AtomicBool,
}

impl Deref for ClusterShared {
    type Target = ClusterCore;
    fn deref(&self) -> &ClusterCore {
        &self.core
    }
}

/// What DNS discovery did for a cluster (`/clusters`, `/metrics`).
#[derive(Debug, Default)]
pub struct DnsStatus {
    pub resolutions: AtomicU64,
    pub failures: AtomicU64,
    /// When the last resolution ended (unix ms; 0: none yet) and whether it succeeded.
    pub last_at_ms: AtomicU64,
    pub last_ok: AtomicBool,
    /// The last failure's message.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl DnsStatus {
    /// Records one resolution's outcome.
    pub fn record(&self, r: Result<(), String>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.resolutions.fetch_add(1, Relaxed);
        self.last_at_ms.store(now, Relaxed);
        self.last_ok.store(r.is_ok(), Relaxed);
        if let Err(e) = r {
            self.failures.fetch_add(1, Relaxed);
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    }
}

/// What a new version of a cluster is made of.
pub struct VersionSpec<'a> {
    pub config: Arc<ClusterConfig>,
    pub endpoints: &'a [EndpointConfig],
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    pub source: EndpointSource,
    pub dns: Option<Arc<DnsStatus>>,
    pub generation: u64,
    pub workers: usize,
}

impl ClusterShared {
    /// A version of a cluster. With `prev` (the cluster's running version), it keeps the
    /// cluster's core (unless the retry budget's settings changed) and the state of every
    /// endpoint whose address is still in it. `slots` hands out metric slots: `None` for the
    /// cluster's, `Some(addr)` for an endpoint's.
    pub fn build(
        spec: VersionSpec<'_>,
        prev: Option<&ClusterShared>,
        slots: &mut dyn FnMut(Option<SocketAddr>) -> usize,
    ) -> Self {
        let VersionSpec {
            config: cfg,
            endpoints: eps,
            tls,
            source,
            dns,
            generation,
            workers,
        } = spec;
        let mut levels: Vec<u32> = eps.iter().map(|e| e.priority).collect();
        levels.sort_unstable();
        levels.dedup();
        let budget_cfg: RetryBudgetConfig = cfg
            .retries
            .as_ref()
            .map_or_else(|| RetryPolicy::default().budget, |r| r.budget);
        let core = match prev {
            Some(p) if p.core.budget_cfg == budget_cfg => p.core.clone(),
            _ => Arc::new(ClusterCore {
                workers: (0..workers.max(1))
                    .map(|_| Arc::new(WorkerStats::default()))
                    .collect(),
                version: AtomicU64::new(prev.map_or(0, |p| p.version.load(Relaxed) + 1)),
                ejected: AtomicU32::new(0),
                ejections: Default::default(),
                hc_success: AtomicU64::new(0),
                hc_failure: AtomicU64::new(0),
                budget: super::retry::RetryBudget::new(&budget_cfg),
                budget_cfg,
                metrics: slots(None),
            }),
        };
        let by_addr = prev.map(|p| AddrIndex::new(&p.endpoints, |e| e.addr));
        let kept = |addr: SocketAddr| {
            let (p, idx) = (prev?, by_addr.as_ref()?);
            idx.find(addr, &p.endpoints, |e| e.addr)
                .map(|e| e.state.clone())
        };
        let endpoints: Box<[EndpointShared]> = eps
            .iter()
            .map(|e| EndpointShared {
                state: kept(e.address).unwrap_or_else(|| {
                    Arc::new(EndpointState::new(
                        e.address,
                        workers,
                        slots(Some(e.address)),
                    ))
                }),
                weight: e.weight,
                priority: e.priority,
                level: levels.binary_search(&e.priority).unwrap_or(0),
                zone: e.zone.as_deref().map(Arc::from),
                health: e.health,
            })
            .collect();
        // Ejections of endpoints that left no longer count against the cluster's share.
        let ejected = endpoints.iter().filter(|e| e.ejected.load(Relaxed)).count();
        core.ejected.store(ejected as u32, Relaxed);
        Self {
            name: cfg.name.clone(),
            limits: cfg.circuit_breaker,
            outlier: cfg.outlier,
            failover: cfg.failover,
            config: cfg,
            core,
            endpoints,
            levels: levels.into(),
            tls,
            source,
            dns,
            generation,
            retired: AtomicBool::new(false),
        }
    }

    /// A first version over plain addresses, with metric slots from `tel` (tests and tools).
    pub fn simple(
        cfg: &Arc<ClusterConfig>,
        addrs: &[SocketAddr],
        workers: usize,
        tel: &crate::telemetry::Telemetry,
    ) -> Self {
        let eps: Vec<EndpointConfig> = addrs
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let (weight, priority) = cfg.endpoint_meta(i);
                EndpointConfig {
                    weight,
                    priority,
                    ..EndpointConfig::at(a)
                }
            })
            .collect();
        let name = cfg.name.clone();
        Self::build(
            VersionSpec {
                config: cfg.clone(),
                endpoints: &eps,
                tls: None,
                source: EndpointSource::Static,
                dns: None,
                generation: 1,
                workers,
            },
            None,
            &mut tel.slots_of(&name),
        )
    }

    /// A shard's figure summed over every worker.
    pub fn sum(&self, f: impl Fn(&WorkerStats) -> &Local) -> u64 {
        self.workers.iter().map(|w| f(w).get()).sum()
    }

    /// An endpoint's figure summed over every worker.
    pub fn sum_endpoint(&self, i: usize, f: impl Fn(&EndpointStats) -> &Local) -> u64 {
        self.endpoints.get(i).map_or(0, |e| e.sum(f))
    }

    /// Tells every worker that an endpoint's availability changed.
    pub fn bump(&self) {
        self.version.fetch_add(1, Relaxed);
    }

    /// The load each priority level gets now, from the endpoints' availability.
    pub fn priority_loads(&self) -> Vec<super::balance::LevelLoad> {
        let mut counts = vec![(0u32, 0u32); self.levels.len()];
        for e in self.endpoints.iter().filter(|e| e.usable()) {
            let c = &mut counts[e.level];
            c.1 += 1;
            if e.available() {
                c.0 += 1;
            }
        }
        super::balance::priority_loads(&counts, &self.failover)
    }
}
