//! Workers: one OS thread each with a current-thread tokio runtime and a `LocalSet`. A worker owns
//! its listener sockets, its view of every cluster (pools, balancer state) and, later, its filter
//! VMs; a stream lives on one worker from accept to log, so nothing on the request path is shared.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

use crate::config::Config;
use crate::control::Published;
use crate::filter::runtime::WorkerFilters;
use crate::listener::{ListenerCtx, accept_loop};
use crate::upstream::Cluster;

/// One published generation as this worker runs it: its filter VMs and each listener's chain.
/// A request takes the current one when it starts and keeps it to its end, so a swap never
/// touches a stream in flight; a replaced generation (and its VMs) goes when its last stream
/// does.
pub struct Generation {
    pub id: u64,
    /// The filters' VMs on this worker (absent when the generation has no filters).
    pub filters: Option<Rc<WorkerFilters>>,
    /// Per listener (indexed like `Config::listeners`): its chain's filter indexes.
    pub chains: Vec<Option<Arc<[usize]>>>,
}

impl Generation {
    fn build(p: &Published, clusters: &Rc<Vec<Cluster>>) -> Self {
        let filters = p
            .filters
            .as_ref()
            .map(|set| WorkerFilters::start(set.clone(), clusters.clone()));
        let chains = p
            .config
            .listeners
            .iter()
            .map(|lc| {
                let name = lc.chain.as_ref()?;
                let ci = p.config.chains.iter().position(|c| &c.name == name)?;
                p.filters.as_ref().map(|f| f.chains[ci].clone())
            })
            .collect();
        Self {
            id: p.id,
            filters,
            chains,
        }
    }
}

/// One worker's state, shared by its tasks through `Rc`.
pub struct WorkerCtx {
    pub id: usize,
    /// Indexed like `Config::clusters`.
    pub clusters: std::rc::Rc<Vec<Cluster>>,
    /// The generation new requests use.
    current: RefCell<Rc<Generation>>,
    /// The clocks of this worker's connections.
    pub watchdog: Rc<crate::conn::Watchdog>,
    /// This worker's metrics shard, and its tracer and access-log buffer when on.
    pub telemetry: Rc<crate::telemetry::WorkerTelemetry>,
    conns: Cell<usize>,
    all_closed: Notify,
    next_conn: Cell<u64>,
}

impl WorkerCtx {
    /// The generation a new request runs on.
    pub fn generation(&self) -> Rc<Generation> {
        self.current.borrow().clone()
    }

    /// A process-unique id for a new downstream connection (`connection.id`).
    pub fn next_connection_id(&self) -> u64 {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        ((self.id as u64) << 48) | n
    }

    pub(crate) fn conn_opened(&self) {
        self.conns.set(self.conns.get() + 1);
    }

    pub(crate) fn conn_closed(&self) {
        let n = self.conns.get() - 1;
        self.conns.set(n);
        if n == 0 {
            self.all_closed.notify_waiters();
        }
    }

    async fn all_connections_closed(&self) {
        while self.conns.get() > 0 {
            self.all_closed.notified().await;
        }
    }
}

/// What a worker thread starts with.
pub struct WorkerSpec {
    pub id: usize,
    pub workers: usize,
    pub config: Arc<Config>,
    /// Resolved endpoint addresses, indexed like `Config::clusters`.
    pub endpoints: Arc<Vec<Vec<SocketAddr>>>,
    /// `(listener index, socket)` pairs for this worker.
    pub sockets: Vec<(usize, std::net::TcpListener)>,
    pub drain: watch::Receiver<bool>,
    /// Published generations (filters and chains); the worker follows the latest.
    pub generations: watch::Receiver<Arc<Published>>,
    /// `(worker id, generation id)` once this worker serves a generation.
    pub acks: mpsc::UnboundedSender<(usize, u64)>,
    /// TLS contexts of listeners and clusters (indexed like the config's).
    pub tls: Arc<crate::tls::TlsContexts>,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Each cluster's state shared by all workers (indexed like `Config::clusters`).
    pub cluster_state: Arc<Vec<Arc<crate::upstream::ClusterShared>>>,
}

/// Starts a worker thread; it returns once drained.
pub fn spawn(spec: WorkerSpec) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("weir-worker-{}", spec.id))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(spec));
        })
}

async fn run(spec: WorkerSpec) {
    let WorkerSpec {
        id,
        workers,
        config,
        endpoints,
        sockets,
        mut drain,
        mut generations,
        acks,
        tls,
        telemetry,
        cluster_state,
    } = spec;
    let telemetry = telemetry.worker(id);
    crate::telemetry::set_worker(telemetry.clone());
    // Callouts go through the same clusters (and pools) as requests.
    let first = generations.borrow_and_update().clone();
    let worker = context(
        id,
        &config,
        &endpoints,
        &tls,
        &cluster_state,
        telemetry.clone(),
        &first,
    );
    let _ = acks.send((id, first.id));
    for (li, sock) in sockets {
        let listener = match TcpListener::from_std(sock) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "cannot register listener socket");
                continue;
            }
        };
        let lc = &config.listeners[li];
        let local = listener.local_addr().unwrap_or(lc.address);
        let ctx = std::rc::Rc::new(ListenerCtx::new(
            lc,
            li,
            workers,
            local,
            tls.listeners.get(li).cloned().flatten(),
        ));
        tokio::task::spawn_local(accept_loop(listener, ctx, worker.clone(), drain.clone()));
    }
    tokio::task::spawn_local(sweep_pools(worker.clone()));
    tokio::task::spawn_local(follow_generations(worker.clone(), generations, acks));
    tokio::task::spawn_local(crate::proto::body::run_drainer());
    tokio::task::spawn_local(crate::timer::run_driver());
    tokio::task::spawn_local(telemetry.clone().run_flusher());
    let tick = config
        .listeners
        .iter()
        .map(|l| l.limits.header_read_timeout.min(l.limits.idle_timeout) / 4)
        .min()
        .unwrap_or(std::time::Duration::from_secs(1));
    tokio::task::spawn_local(worker.watchdog.clone().run(tick));
    tracing::debug!(worker = id, "worker started");
    let _ = drain.wait_for(|d| *d).await;
    worker.watchdog.drain();
    // The accept loops have seen the same signal and dropped their sockets; connections are
    // finishing their in-flight requests. Bound the wait, then drop whatever is left.
    if tokio::time::timeout(config.drain_timeout, worker.all_connections_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            worker = id,
            open = worker.conns.get(),
            "drain timeout: closing remaining connections"
        );
    }
    worker.telemetry.flush();
    tracing::debug!(worker = id, "worker drained");
}

/// A worker's context: its clusters (and so its pools) and its first generation's VMs.
pub(crate) fn context(
    id: usize,
    config: &Config,
    endpoints: &[Vec<SocketAddr>],
    tls: &crate::tls::TlsContexts,
    cluster_state: &[Arc<crate::upstream::ClusterShared>],
    telemetry: Rc<crate::telemetry::WorkerTelemetry>,
    first: &Published,
) -> Rc<WorkerCtx> {
    let clusters: Rc<Vec<Cluster>> = Rc::new(
        config
            .clusters
            .iter()
            .zip(endpoints.iter())
            .enumerate()
            .map(|(i, (c, addrs))| {
                Cluster::new(
                    c,
                    addrs,
                    tls.clusters.get(i).cloned().flatten(),
                    cluster_state[i].clone(),
                    id,
                )
            })
            .collect(),
    );
    let current = Rc::new(Generation::build(first, &clusters));
    Rc::new(WorkerCtx {
        id,
        clusters,
        current: RefCell::new(current),
        watchdog: Rc::default(),
        telemetry,
        conns: Cell::new(0),
        all_closed: Notify::new(),
        next_conn: Cell::new(0),
    })
}

/// Switches new requests to each newly published generation (its VMs are started here, on the
/// worker thread) and acknowledges it to the control thread.
async fn follow_generations(
    worker: Rc<WorkerCtx>,
    mut generations: watch::Receiver<Arc<Published>>,
    acks: mpsc::UnboundedSender<(usize, u64)>,
) {
    while generations.changed().await.is_ok() {
        let p = generations.borrow_and_update().clone();
        let next = Rc::new(Generation::build(&p, &worker.clusters));
        // The old generation stays alive in the requests that hold it.
        *worker.current.borrow_mut() = next;
        let _ = acks.send((worker.id, p.id));
    }
}

/// Closes pooled upstream connections once idle past their cluster's `pool.idle_timeout`, so idle
/// connections do not linger when traffic stops (checkout and checkin also drop stale ones).
async fn sweep_pools(worker: std::rc::Rc<WorkerCtx>) {
    let shortest = worker
        .clusters
        .iter()
        .flat_map(|c| c.endpoints.iter().map(|e| e.pool.idle_timeout()))
        .min();
    let Some(shortest) = shortest else { return };
    let mut every = tokio::time::interval((shortest / 4).max(std::time::Duration::from_millis(10)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = crate::timer::now_ms();
        for c in worker.clusters.iter() {
            for e in &c.endpoints {
                e.pool.evict_stale(now);
            }
        }
    }
}
