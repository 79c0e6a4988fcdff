//! Workers: one OS thread each with a current-thread tokio runtime and a `LocalSet`. A worker owns
//! its listener sockets, its view of every cluster version (pools, balancer state) and its filter
//! VMs; a stream lives on one worker from accept to log, so nothing on the request path is shared.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

use crate::control::Published;
use crate::filter::runtime::WorkerFilters;
use crate::listener::{CurrentCtx, ListenerCtx, ListenerVersion, accept_loop};
use crate::upstream::{ClusterTable, CurrentClusters};

/// One published generation as this worker runs it: its cluster views, its filter VMs and each
/// listener's chain. A request takes the current one when it starts and keeps it to its end, so
/// a swap never touches a stream in flight; a replaced generation (its VMs, the cluster versions
/// only it used, and their pools) goes when its last stream does.
pub struct Generation {
    pub id: u64,
    /// This worker's view of each cluster, indexed like the generation's `Config::clusters`.
    pub clusters: Rc<ClusterTable>,
    /// Each listener's chain and default cluster, found by the listener's id (a handful: a
    /// scan beats a hash).
    pub listeners: Vec<ListenerRoute>,
    /// The filters' VMs on this worker (absent when the generation has no filters).
    pub filters: Option<Rc<WorkerFilters>>,
}

/// What a generation does with a listener's requests.
pub struct ListenerRoute {
    /// The listener's stable id ([`ListenerCtx::id`]).
    pub id: usize,
    /// Its chain's filter indexes.
    pub chain: Option<Arc<[usize]>>,
    /// Its default cluster's index in the generation's clusters (an xDS listener has none).
    pub default_cluster: Option<usize>,
}

impl Generation {
    /// Builds worker `worker`'s view of `p`, reusing what `prev` has: unchanged cluster
    /// versions keep their views, and an unchanged filter set keeps its VMs.
    fn build(
        p: &Published,
        prev: Option<&Generation>,
        worker: usize,
        current: &CurrentClusters,
    ) -> Self {
        let clusters = Rc::new(ClusterTable::build(
            &p.clusters,
            prev.map(|g| &*g.clusters),
            worker,
        ));
        // Callouts of running VMs use the clusters new requests do.
        *current.borrow_mut() = clusters.clone();
        let filters = match (&p.filters, prev) {
            (Some(set), Some(g))
                if g.filters
                    .as_ref()
                    .is_some_and(|f| Arc::ptr_eq(f.set(), set)) =>
            {
                g.filters.clone()
            }
            (Some(set), _) => Some(WorkerFilters::start(set.clone(), current.clone())),
            (None, _) => None,
        };
        let listeners = p
            .config
            .listeners
            .iter()
            .zip(p.listeners.iter())
            .map(|(lc, v)| ListenerRoute {
                id: v.id,
                chain: lc.chain.as_ref().and_then(|name| {
                    let ci = p.config.chains.iter().position(|c| &c.name == name)?;
                    p.filters.as_ref().map(|f| f.chains[ci].clone())
                }),
                default_cluster: lc.default_cluster,
            })
            .collect();
        Self {
            id: p.id,
            clusters,
            listeners,
            filters,
        }
    }

    /// What this generation does with listener `id`'s requests (`None`: the listener is gone
    /// from it; its last connections use the default cluster of the first listener).
    pub fn route(&self, id: usize) -> Option<&ListenerRoute> {
        self.listeners.iter().find(|l| l.id == id)
    }

    /// Listener `id`'s chain.
    pub fn chain(&self, id: usize) -> Option<&Arc<[usize]>> {
        self.route(id)?.chain.as_ref()
    }

    /// The default cluster of listener `id`, if it has one.
    pub fn default_cluster(&self, id: usize) -> Option<&Rc<crate::upstream::Cluster>> {
        self.clusters
            .at(self.route(id).map_or(Some(0), |r| r.default_cluster)?)
    }
}

/// One worker's state, shared by its tasks through `Rc`.
pub struct WorkerCtx {
    pub id: usize,
    /// The cluster table of the current generation (filter callouts read it).
    pub clusters: CurrentClusters,
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
    pub drain: watch::Receiver<bool>,
    /// Published generations (filters and chains); the worker follows the latest.
    pub generations: watch::Receiver<Arc<Published>>,
    /// `(worker id, generation id)` once this worker serves a generation.
    pub acks: mpsc::UnboundedSender<(usize, u64)>,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
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
        mut drain,
        mut generations,
        acks,
        telemetry,
    } = spec;
    let telemetry = telemetry.worker(id);
    crate::telemetry::set_worker(telemetry.clone());
    // Callouts go through the same clusters (and pools) as requests.
    let first = generations.borrow_and_update().clone();
    let worker = context(id, telemetry.clone(), &first);
    let listeners = Rc::new(Listeners {
        workers,
        drain: drain.clone(),
        running: RefCell::new(HashMap::new()),
        next_key: Cell::new(0),
    });
    listeners.apply(&worker, &first);
    let _ = acks.send((id, first.id));
    tokio::task::spawn_local(sweep_pools(worker.clone()));
    tokio::task::spawn_local(follow_generations(
        worker.clone(),
        listeners.clone(),
        generations.clone(),
        acks,
    ));
    tokio::task::spawn_local(crate::proto::body::run_drainer());
    tokio::task::spawn_local(crate::timer::run_driver());
    tokio::task::spawn_local(telemetry.clone().run_flusher());
    tokio::task::spawn_local(worker.watchdog.clone().run());
    tracing::debug!(worker = id, "worker started");
    let _ = drain.wait_for(|d| *d).await;
    worker.watchdog.drain();
    // The accept loops have seen the same signal and dropped their sockets; connections are
    // finishing their in-flight requests. Bound the wait (by the drain timeout in force now: a
    // reload may have changed it), then drop whatever is left.
    let drain_timeout = generations.borrow().config.drain_timeout;
    if tokio::time::timeout(drain_timeout, worker.all_connections_closed())
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

/// A worker's context: its first generation's cluster views (and so its pools) and VMs.
pub(crate) fn context(
    id: usize,
    telemetry: Rc<crate::telemetry::WorkerTelemetry>,
    first: &Published,
) -> Rc<WorkerCtx> {
    let clusters = CurrentClusters::default();
    let current = Rc::new(Generation::build(first, None, id, &clusters));
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
/// worker thread), follows its listeners, and acknowledges it to the control thread.
async fn follow_generations(
    worker: Rc<WorkerCtx>,
    listeners: Rc<Listeners>,
    mut generations: watch::Receiver<Arc<Published>>,
    acks: mpsc::UnboundedSender<(usize, u64)>,
) {
    while generations.changed().await.is_ok() {
        let p = generations.borrow_and_update().clone();
        let prev = worker.generation();
        let next = Rc::new(Generation::build(
            &p,
            Some(&prev),
            worker.id,
            &worker.clusters,
        ));
        drop(prev);
        // The old generation stays alive in the requests that hold it.
        *worker.current.borrow_mut() = next;
        worker.telemetry.apply(&p.telemetry);
        listeners.apply(&worker, &p);
        let _ = acks.send((worker.id, p.id));
    }
}

/// This worker's accept loops, one per listener, kept in step with the published listeners.
struct Listeners {
    workers: usize,
    drain: watch::Receiver<bool>,
    /// By listener id.
    running: RefCell<HashMap<usize, Accepting>>,
    /// The next accept loop's key (the watchdog knows a loop's connections by it).
    next_key: Cell<usize>,
}

/// One listener's accept loop on this worker.
struct Accepting {
    version: Arc<ListenerVersion>,
    ctx: CurrentCtx,
    task: tokio::task::AbortHandle,
    /// Raised when the listener's connections must drain.
    conn_drain: Rc<watch::Sender<bool>>,
    /// This loop's key in the watchdog.
    key: usize,
}

impl Listeners {
    /// Starts, re-sets and stops accept loops so that they serve `p`'s listeners (see the
    /// `listener` module docs).
    fn apply(&self, worker: &Rc<WorkerCtx>, p: &Published) {
        let mut running = self.running.borrow_mut();
        for v in p.listeners.iter() {
            match running.get_mut(&v.id) {
                Some(a) if Arc::ptr_eq(&a.version, v) => {}
                Some(a) if !v.rebinds() => {
                    // New settings, same sockets: new connections get them.
                    let old = a.ctx.borrow().clone();
                    *a.ctx.borrow_mut() = Rc::new(
                        ListenerCtx::new(&v.config, v.id, self.workers, old.local, v.tls.clone())
                            .counting_with(&old),
                    );
                    a.version = v.clone();
                }
                _ => {
                    // New or moved: the new socket accepts before the old one stops.
                    let Some(a) = self.start(worker, v) else {
                        continue;
                    };
                    if let Some(old) = running.insert(v.id, a) {
                        retire(worker, old, p.config.drain_timeout);
                    }
                }
            }
        }
        let gone: Vec<usize> = running
            .keys()
            .filter(|id| !p.listeners.iter().any(|v| v.id == **id))
            .copied()
            .collect();
        for id in gone {
            if let Some(old) = running.remove(&id) {
                retire(worker, old, p.config.drain_timeout);
            }
        }
        // The watchdog looks a quarter of the shortest timeout of the listeners served now.
        let tick = p
            .config
            .listeners
            .iter()
            .map(|l| l.limits.header_read_timeout.min(l.limits.idle_timeout) / 4)
            .min()
            .unwrap_or(std::time::Duration::from_secs(1));
        worker.watchdog.set_tick(tick);
    }

    fn start(&self, worker: &Rc<WorkerCtx>, v: &Arc<ListenerVersion>) -> Option<Accepting> {
        let sock = v.take_socket(worker.id)?;
        let listener = match TcpListener::from_std(sock) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(worker = worker.id, listener = %v.name, error = %e, "cannot register listener socket");
                return None;
            }
        };
        let ctx: CurrentCtx = Rc::new(RefCell::new(Rc::new(ListenerCtx::new(
            &v.config,
            v.id,
            self.workers,
            v.local,
            v.tls.clone(),
        ))));
        let conn_drain = Rc::new(watch::channel(false).0);
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        let task = tokio::task::spawn_local(accept_loop(
            listener,
            ctx.clone(),
            worker.clone(),
            (self.drain.clone(), conn_drain.clone()),
            key,
        ))
        .abort_handle();
        Some(Accepting {
            version: v.clone(),
            ctx,
            task,
            conn_drain,
            key,
        })
    }
}

/// A listener this worker no longer serves (removed, or moved to new sockets): it stops
/// accepting now (its socket closes with the aborted loop); its connections drain, and those
/// still open after `drain_timeout` are closed.
fn retire(worker: &Rc<WorkerCtx>, a: Accepting, drain_timeout: std::time::Duration) {
    a.task.abort();
    let _ = a.conn_drain.send(true);
    let key = a.key;
    worker.watchdog.drain_listener(key);
    let watchdog = worker.watchdog.clone();
    tokio::task::spawn_local(async move {
        tokio::time::sleep(drain_timeout).await;
        if watchdog.open_on(key) > 0 {
            tracing::warn!(listener = %a.version.name, "drain timeout: closing the removed listener's remaining connections");
        }
        watchdog.abort_listener(key);
    });
}

/// Closes pooled upstream connections once idle past their cluster's `pool.idle_timeout`, so idle
/// connections do not linger when traffic stops (checkout and checkin also drop stale ones).
/// Walks the current generation's clusters each round (pools of replaced versions close when
/// their last request ends).
async fn sweep_pools(worker: std::rc::Rc<WorkerCtx>) {
    loop {
        let shortest = {
            let g = worker.generation();
            g.clusters
                .clusters
                .iter()
                .flat_map(|c| c.endpoints.iter().map(|e| e.pool.idle_timeout()))
                .min()
        };
        let every = shortest
            .map_or(std::time::Duration::from_secs(1), |s| s / 4)
            .max(std::time::Duration::from_millis(10));
        crate::timer::deadline(every).await;
        let now = crate::timer::now_ms();
        let g = worker.generation();
        for c in &g.clusters.clusters {
            for e in &c.endpoints {
                e.pool.evict_stale(now);
            }
        }
    }
}
