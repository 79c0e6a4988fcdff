//! Telemetry: what every request leaves behind, vendor-neutral.
//!
//! * [`metrics`]: the core's Prometheus metrics — per-worker shards of counters and fixed-bucket
//!   histograms, label sets resolved to slot indexes as they appear, summed by the admin `/metrics`.
//! * [`trace`]: OpenTelemetry spans (a server span per request, a client span per upstream
//!   attempt), W3C trace context in and out, exported over OTLP/HTTP by [`otlp`]'s client.
//! * [`access_log`]: one JSON line per request, buffered per worker, written by one thread.
//! * [`logs`]: the proxy's own `tracing` logs and their level, changeable at run time.
//! * [`Exchange`]: one request's record, from its head to its last response byte. The data path
//!   holds it and calls a few hooks; everything it does with them lives here.
//!
//! Cost model: metrics are always on and cost a few plain stores per request plus one clock read
//! at each end. Traces and the access log are off unless the manifest's `telemetry:` section
//! turns them on; off, a request carries no span, no log record and no extra clock read (one
//! `Option` check per hook).

pub mod access_log;
mod exchange;
pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod trace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

pub use exchange::{Exchange, H2Body, declared_length};
pub use metrics::flags;

use crate::config::Config;
use metrics::{Layout, Shard};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.tracing: {0}")]
    Tracing(String),
    #[error("telemetry.access_log.path: cannot open {path}: {source}")]
    AccessLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Process-wide telemetry: the metric layout and every worker's shard, the tracer, the access
/// log's writer.
pub struct Telemetry {
    /// Slot assignments; grown on the control thread (never touched by a request).
    layout: Mutex<Layout>,
    shards: Vec<Arc<Shard>>,
    tracing: Option<Arc<trace::Tracing>>,
    access_log: Option<Arc<access_log::Sink>>,
}

impl Telemetry {
    /// Builds the metric layout for `cfg`'s listeners (clusters and endpoints get their slots
    /// as their versions are built), one shard per worker, and starts the exporter and log
    /// writer the manifest asks for. `rt` runs the exporter's HTTP requests (the control runtime).
    pub fn new(
        cfg: &Config,
        workers: usize,
        rt: tokio::runtime::Handle,
    ) -> Result<Self, TelemetryError> {
        let Self { layout, shards, .. } = Self::metrics_only(cfg, workers);
        let tracing = match &cfg.telemetry.tracing {
            Some(t) => Some(Arc::new(
                trace::Tracing::new(t, rt).map_err(TelemetryError::Tracing)?,
            )),
            None => None,
        };
        let access_log = match &cfg.telemetry.access_log {
            Some(a) => Some(Arc::new(access_log::Sink::start(a).map_err(|source| {
                TelemetryError::AccessLog {
                    path: match &a.path {
                        crate::config::AccessLogPath::File(p) => p.clone(),
                        crate::config::AccessLogPath::Stdout => PathBuf::from("stdout"),
                    },
                    source,
                }
            })?)),
            None => None,
        };
        Ok(Self {
            layout,
            shards,
            tracing,
            access_log,
        })
    }

    /// Telemetry with metrics only (no tracer, no access log), for tests and tools.
    pub fn metrics_only(cfg: &Config, workers: usize) -> Self {
        let mut layout = Layout::new();
        // The manifest's listeners first, in order (their slots are their ids).
        for l in &cfg.listeners {
            layout.listener_slots(&l.name);
        }
        Self {
            shards: (0..workers.max(1))
                .map(|_| Arc::new(Shard::new(layout.len())))
                .collect(),
            layout: Mutex::new(layout),
            tracing: None,
            access_log: None,
        }
    }

    /// Metrics only, for no listener (tests and tools that build clusters on their own).
    pub fn bare(workers: usize) -> Self {
        let layout = Layout::new();
        Self {
            shards: (0..workers.max(1))
                .map(|_| Arc::new(Shard::new(0)))
                .collect(),
            layout: Mutex::new(layout),
            tracing: None,
            access_log: None,
        }
    }

    /// The first metric slot of listener `name`, which is also its stable id (control thread;
    /// kept for the process's life).
    pub fn listener_slots(&self, name: &str) -> usize {
        let mut l = self.layout.lock().unwrap_or_else(|e| e.into_inner());
        let b = l.listener_slots(name);
        self.reserve(l.len());
        b
    }

    /// The first metric slot of cluster `name` (control thread; kept for the process's life).
    pub fn cluster_slots(&self, name: &str) -> usize {
        let mut l = self.layout.lock().unwrap_or_else(|e| e.into_inner());
        let b = l.cluster_slots(name);
        self.reserve(l.len());
        b
    }

    /// The first metric slot of endpoint `addr` of cluster `cluster` (control thread).
    pub fn endpoint_slots(&self, cluster: &str, addr: SocketAddr) -> usize {
        let mut l = self.layout.lock().unwrap_or_else(|e| e.into_inner());
        let b = l.endpoint_slots(cluster, addr);
        self.reserve(l.len());
        b
    }

    fn reserve(&self, len: usize) {
        for s in &self.shards {
            s.reserve(len);
        }
    }

    /// Worker `id`'s handle (made on the worker's own thread).
    pub fn worker(&self, id: usize) -> Rc<WorkerTelemetry> {
        Rc::new(WorkerTelemetry {
            shard: self.shards[id % self.shards.len()].clone(),
            tracing: self.tracing.clone(),
            log: self
                .access_log
                .as_ref()
                .map(|s| access_log::WorkerLog::new(s.clone())),
        })
    }

    /// Every core metric as Prometheus text; `listeners` (name, first slot) and `clusters` are
    /// the live ones.
    pub fn render(
        &self,
        out: &mut String,
        listeners: &[(&str, usize)],
        clusters: &[metrics::LiveCluster<'_>],
    ) {
        metrics::render(out, listeners, clusters, &self.shards);
        if let Some(s) = &self.access_log {
            s.render(out);
        }
    }

    /// Exports the spans still queued and writes the access-log lines still buffered. Blocks:
    /// call it off the control runtime (the exporter's requests run there).
    pub fn shutdown(&self) {
        if let Some(t) = &self.tracing {
            t.shutdown();
        }
        if let Some(s) = &self.access_log {
            s.shutdown();
        }
    }
}

thread_local! {
    /// This thread's worker telemetry (absent off the workers), for hooks deep in the upstream
    /// code that have no worker handle at hand.
    static WORKER: std::cell::RefCell<Option<Rc<WorkerTelemetry>>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes `t` this thread's worker telemetry.
pub fn set_worker(t: Rc<WorkerTelemetry>) {
    WORKER.with(|w| *w.borrow_mut() = Some(t));
}

/// Runs `f` on this thread's worker telemetry, if it is a worker's.
fn on_worker(f: impl FnOnce(&WorkerTelemetry)) {
    WORKER.with(|w| {
        if let Some(t) = &*w.borrow() {
            f(t);
        }
    });
}

/// Counts a new upstream connection to the endpoint whose metric slots start at `ep` (on this
/// worker).
pub fn upstream_connect(ep: usize) {
    on_worker(|t| t.upstream_connect(ep));
}

/// Counts the endpoint whose slots start at `ep` ejected by outlier detection (on the worker
/// that saw the error that ejected it).
pub fn upstream_ejection(ep: usize) {
    on_worker(|t| t.upstream_ejection(ep));
}

/// Counts a request to the cluster whose slots start at `c` refused by a circuit breaker.
pub fn upstream_overflow(c: usize) {
    on_worker(|t| t.upstream_overflow(c));
}

/// Counts a request to the cluster at `c` that failed with its retries used up.
pub fn upstream_retry_limit(c: usize) {
    on_worker(|t| t.upstream_retry_limit(c));
}

/// Counts a request to the cluster at `c` that found no endpoint to pick.
pub fn upstream_no_healthy(c: usize) {
    on_worker(|t| t.upstream_no_healthy(c));
}

/// One worker's view: its shard (it is the only writer), and the tracer and log buffer when on.
pub struct WorkerTelemetry {
    pub shard: Arc<Shard>,
    tracing: Option<Arc<trace::Tracing>>,
    log: Option<access_log::WorkerLog>,
}

impl WorkerTelemetry {
    /// Whether requests carry a detailed record (spans or access-log fields), which reads the
    /// request's fields.
    pub fn detailed(&self) -> bool {
        self.tracing.is_some() || self.log.is_some()
    }

    /// A downstream connection was accepted on the listener whose slots start at `base`.
    pub fn connection_opened(&self, base: usize) {
        self.shard.add(base + metrics::listener::CX_TOTAL, 1);
        self.shard.add(base + metrics::listener::CX_ACTIVE, 1);
    }

    /// A downstream connection of the listener at `base` closed after moving `rx`/`tx` bytes.
    pub fn connection_closed(&self, base: usize, (rx, tx): (u64, u64)) {
        self.shard.sub(base + metrics::listener::CX_ACTIVE, 1);
        self.shard.add(base + metrics::listener::CX_RX_BYTES, rx);
        self.shard.add(base + metrics::listener::CX_TX_BYTES, tx);
    }

    /// A new upstream connection to the endpoint at `ep` (a pool miss).
    pub fn upstream_connect(&self, ep: usize) {
        self.shard.add(ep + metrics::endpoint::CX_TOTAL, 1);
    }

    /// Outlier detection ejected the endpoint at `ep` (resilience hook).
    pub fn upstream_ejection(&self, ep: usize) {
        self.shard.add(ep + metrics::endpoint::EJECTIONS, 1);
    }

    /// A circuit breaker of the cluster at `c` refused a request (resilience hook; flag it `UO`
    /// on the request's [`Exchange`]).
    pub fn upstream_overflow(&self, c: usize) {
        self.shard.add(c + metrics::cluster::RQ_OVERFLOW, 1);
    }

    /// A request to the cluster at `c` ran out of retries (resilience hook; flag `URX`).
    pub fn upstream_retry_limit(&self, c: usize) {
        self.shard.add(c + metrics::cluster::RQ_RETRY_LIMIT, 1);
    }

    /// The cluster at `c` had no endpoint to pick (resilience hook; flag `UH`).
    pub fn upstream_no_healthy(&self, c: usize) {
        self.shard.add(c + metrics::cluster::RQ_NO_HEALTHY, 1);
    }

    /// Writes out this worker's buffered access-log lines.
    pub fn flush(&self) {
        if let Some(l) = &self.log {
            l.flush();
        }
    }

    /// Runs on the worker: flushes the access log every `flush_interval` (absent: returns).
    pub async fn run_flusher(self: Rc<Self>) {
        let Some(every) = self.log.as_ref().map(|l| l.flush_interval()) else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush();
        }
    }
}
