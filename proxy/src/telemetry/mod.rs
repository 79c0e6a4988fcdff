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

use std::cell::RefCell;
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

/// What a `telemetry:` section turns on: the tracer and the access log's writer. Published
/// with each generation; workers switch to a new one with it, so a reload can turn tracing or
/// the access log on, off, or to other settings.
pub struct Outputs {
    /// The settings these outputs were made from (a reload with the same ones keeps them).
    config: serde_json::Value,
    tracing: Option<Arc<trace::Tracing>>,
    access_log: Option<Arc<access_log::Sink>>,
}

impl Outputs {
    fn none() -> Self {
        Self {
            config: serde_json::Value::Null,
            tracing: None,
            access_log: None,
        }
    }
}

/// Process-wide telemetry: the metric layout and every worker's shard, and the outputs (tracer,
/// access-log writer) in use.
pub struct Telemetry {
    /// Slot assignments; grown on the control thread (never touched by a request).
    layout: Mutex<Layout>,
    shards: Vec<Arc<Shard>>,
    /// Slots the shards hold already (callers hold `layout`'s lock).
    reserved: std::sync::atomic::AtomicUsize,
    /// Runs the exporter's HTTP requests (the control runtime).
    rt: Option<tokio::runtime::Handle>,
    outputs: Mutex<Arc<Outputs>>,
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
        let mut t = Self::metrics_only(cfg, workers);
        t.rt = Some(rt);
        let outputs = t.outputs_for(&cfg.telemetry)?;
        t.set_outputs(&outputs);
        Ok(t)
    }

    /// The outputs for `cfg`: the ones in use when the settings are the same, else new ones
    /// (started, not yet in use: [`Telemetry::set_outputs`]).
    pub fn outputs_for(
        &self,
        cfg: &crate::config::TelemetryConfig,
    ) -> Result<Arc<Outputs>, TelemetryError> {
        let key = serde_json::to_value(cfg).unwrap_or_default();
        let current = self.outputs();
        if current.config == key {
            return Ok(current);
        }
        let tracing = match (&cfg.tracing, &self.rt) {
            (Some(t), Some(rt)) => Some(Arc::new(
                trace::Tracing::new(t, rt.clone()).map_err(TelemetryError::Tracing)?,
            )),
            _ => None,
        };
        let access_log = match &cfg.access_log {
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
        Ok(Arc::new(Outputs {
            config: key,
            tracing,
            access_log,
        }))
    }

    /// Makes `o` the outputs in use (`/metrics`, shutdown). The ones replaced stop once the
    /// workers have switched: their last spans and lines go out then.
    pub fn set_outputs(&self, o: &Arc<Outputs>) {
        let old = std::mem::replace(
            &mut *self.outputs.lock().unwrap_or_else(|e| e.into_inner()),
            o.clone(),
        );
        if !Arc::ptr_eq(&old, o) && (old.tracing.is_some() || old.access_log.is_some()) {
            // Blocking (a final export, the writer's join): off the control thread.
            std::thread::spawn(move || {
                if let Some(t) = &old.tracing {
                    t.shutdown();
                }
                if let Some(s) = &old.access_log {
                    s.shutdown();
                }
            });
        }
    }

    /// The outputs in use.
    pub fn outputs(&self) -> Arc<Outputs> {
        self.outputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
            reserved: Default::default(),
            rt: None,
            outputs: Mutex::new(Arc::new(Outputs::none())),
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
            reserved: Default::default(),
            rt: None,
            outputs: Mutex::new(Arc::new(Outputs::none())),
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

    /// Hands out cluster `name`'s metric slots: `None` asks for the cluster's, `Some(addr)`
    /// for an endpoint's (what building a cluster version needs).
    pub fn slots_of<'a>(&'a self, name: &'a str) -> impl FnMut(Option<SocketAddr>) -> usize + 'a {
        move |a| match a {
            None => self.cluster_slots(name),
            Some(a) => self.endpoint_slots(name, a),
        }
    }

    fn reserve(&self, len: usize) {
        if len <= self.reserved.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        for s in &self.shards {
            s.reserve(len);
        }
        self.reserved
            .store(len, std::sync::atomic::Ordering::Relaxed);
    }

    /// Worker `id`'s handle (made on the worker's own thread).
    pub fn worker(&self, id: usize) -> Rc<WorkerTelemetry> {
        let t = WorkerTelemetry {
            shard: self.shards[id % self.shards.len()].clone(),
            current: RefCell::new(WorkerOutputs::default()),
        };
        t.apply(&self.outputs());
        Rc::new(t)
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
        if let Some(s) = &self.outputs().access_log {
            s.render(out);
        }
    }

    /// Exports the spans still queued and writes the access-log lines still buffered. Blocks:
    /// call it off the control runtime (the exporter's requests run there).
    pub fn shutdown(&self) {
        let o = self.outputs();
        if let Some(t) = &o.tracing {
            t.shutdown();
        }
        if let Some(s) = &o.access_log {
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
    current: RefCell<WorkerOutputs>,
}

/// The outputs a worker uses now.
#[derive(Default)]
struct WorkerOutputs {
    from: Option<Arc<Outputs>>,
    tracing: Option<Arc<trace::Tracing>>,
    log: Option<access_log::WorkerLog>,
}

impl WorkerTelemetry {
    /// Switches to the outputs `o` (a generation's): the lines buffered for the old access log
    /// go out first. New requests use `o`; a request in flight keeps the tracer it started with.
    pub fn apply(&self, o: &Arc<Outputs>) {
        let mut c = self.current.borrow_mut();
        if c.from.as_ref().is_some_and(|f| Arc::ptr_eq(f, o)) {
            return;
        }
        if let Some(l) = &c.log {
            l.flush();
        }
        *c = WorkerOutputs {
            from: Some(o.clone()),
            tracing: o.tracing.clone(),
            log: o
                .access_log
                .as_ref()
                .map(|s| access_log::WorkerLog::new(s.clone())),
        };
    }

    /// Whether requests carry a detailed record (spans or access-log fields), which reads the
    /// request's fields.
    pub fn detailed(&self) -> bool {
        let c = self.current.borrow();
        c.tracing.is_some() || c.log.is_some()
    }

    /// The tracer, when tracing is on.
    fn tracing(&self) -> Option<Arc<trace::Tracing>> {
        self.current.borrow().tracing.clone()
    }

    /// Whether the access log is on.
    fn logging(&self) -> bool {
        self.current.borrow().log.is_some()
    }

    /// Buffers one access-log line (dropped when the log was turned off meanwhile).
    fn push_log(&self, rec: &access_log::Record) {
        if let Some(l) = &self.current.borrow().log {
            l.push(rec);
        }
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
        if let Some(l) = &self.current.borrow().log {
            l.flush();
        }
    }

    /// Runs on the worker: flushes the access log every `flush_interval` of the log in use
    /// (looking again each second while there is none).
    pub async fn run_flusher(self: Rc<Self>) {
        loop {
            let every = self
                .current
                .borrow()
                .log
                .as_ref()
                .map_or(std::time::Duration::from_secs(1), |l| l.flush_interval());
            tokio::time::sleep(every).await;
            self.flush();
        }
    }
}
