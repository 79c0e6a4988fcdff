//! Wiring and lifecycle: load the TLS material, build the first cluster versions (starting the
//! built-in demo upstreams they name), bind every listener once per worker, start the workers
//! and the admin endpoint, announce readiness, and on SIGTERM/SIGINT drain.
//! The control work runs on the main thread's own runtime, never on a worker.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::upstream::EndpointSource;
use crate::upstream::manager::{ClusterManager, DemoStarter};
use crate::worker::{self, WorkerSpec};

/// Why the proxy could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind listener {name} on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
}

/// How `weir run` was started.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the manifest's `workers:`.
    pub workers: Option<usize>,
    /// The manifest file (absent: the embedded default); `POST /reload` re-reads it.
    pub manifest: Option<crate::config::ManifestFile>,
    /// Reload when the manifest file's content changes (`--watch`).
    pub watch: bool,
}

/// Runs the proxy until a signal drains it.
pub fn run(config: Config, opts: RunOptions) -> Result<(), AppError> {
    let workers = opts
        .workers
        .or(config.workers)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("weir-control")
        .build()?;
    rt.block_on(serve(Arc::new(config), workers, opts))
}

async fn serve(config: Arc<Config>, workers: usize, opts: RunOptions) -> Result<(), AppError> {
    // Handlers first: a SIGTERM that arrives right after "ready" must drain, not kill.
    let signals = Signals::install()?;
    // The TLS contexts in use, followed for rotation from here on (each is loaded with its
    // listener's or cluster's version: a missing or bad certificate stops start-up with its
    // file).
    let tls = Arc::new(crate::tls::TlsContexts::new());
    tls.set_watch_interval(config.tls_watch_interval);
    tokio::spawn(tls.clone().watch());

    // Metric slots, one shard per worker; the trace exporter's requests run on this (control)
    // runtime.
    let telemetry = Arc::new(crate::telemetry::Telemetry::new(
        &config,
        workers,
        tokio::runtime::Handle::current(),
    )?);
    // The cluster manager builds each cluster's versions (built-in demo origins are started
    // for the clusters that name one; their addresses become the endpoints) and runs their
    // health checkers and outlier sweepers here, on the control thread, never on a worker.
    let demo: DemoStarter = Arc::new(|label| Box::pin(crate::demo::start(label)));
    let manager = Arc::new(ClusterManager::new(
        workers,
        telemetry.clone(),
        tls.clone(),
        Some(demo),
    ));
    let first = manager
        .plan(&config, &[], 1, EndpointSource::Static, None)
        .await
        .map_err(crate::control::ControlError::from)?;
    // Every listener bound before any worker starts: a bind error stops start-up cleanly.
    let listeners = crate::control::plan_listeners(&config, &[], workers, 1, &telemetry).await?;
    let mut announce: Vec<String> = listeners
        .iter()
        .map(|l| format!("weir: listener {} listening on {}", l.name, l.local))
        .collect();

    // Filters are compiled (and each started once as a canary) before anything is bound: a bad
    // module or configuration stops start-up with the filter's name.
    let (control, generations, acks) = {
        let cfg = config.clone();
        let manifest = opts.manifest.clone();
        let clusters = first.clusters;
        let manager = manager.clone();
        tokio::task::spawn_blocking(move || {
            crate::control::Control::start(cfg, workers, manifest, manager, (listeners, clusters))
        })
        .await
        .map_err(|e| AppError::Runtime(std::io::Error::other(e)))??
    };

    let xds = config
        .xds
        .as_ref()
        .map(|x| Arc::new(crate::xds::XdsStatus::new(x)));
    let admin_state = Arc::new(AdminState {
        tls: tls.clone(),
        telemetry: Some(telemetry.clone()),
        xds: xds.clone(),
        ..AdminState::default()
    });
    if let Some(a) = &config.admin {
        let l = tokio::net::TcpListener::bind(a.address)
            .await
            .map_err(|source| AppError::Bind {
                name: "admin".into(),
                addr: a.address,
                source,
            })?;
        announce.push(format!("weir: admin listening on {}", l.local_addr()?));
        admin::start(l, admin_state.clone(), control.clone(), a.clone());
    }

    let (drain_tx, drain_rx) = watch::channel(false);
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        handles.push(worker::spawn(WorkerSpec {
            id,
            workers,
            drain: drain_rx.clone(),
            generations: generations.clone(),
            acks: acks.clone(),
            telemetry: telemetry.clone(),
        })?);
    }
    drop(acks);
    control.wait_started().await?;
    control.follow_discovery();
    // The control plane's configuration arrives from here on; the manifest's part serves
    // meanwhile (and `/ready` says 503 until the first complete configuration).
    if let (Some(cfg), Some(status)) = (&config.xds, xds) {
        crate::xds::follow(control.clone(), cfg, status);
    }
    if let (true, Some(m)) = (opts.watch, &opts.manifest) {
        tokio::spawn(crate::watch::follow(m.path.clone(), control.clone()));
    }

    {
        let mut out = std::io::stdout().lock();
        for line in &announce {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "weir: ready");
        let _ = out.flush();
    }
    tracing::info!(
        workers,
        listeners = config.listeners.len(),
        "weir is serving"
    );

    signals.wait().await;
    // The drain timeout in force now (a reload may have changed it).
    let drain_timeout = control.current().config.drain_timeout;
    tracing::info!(timeout = ?drain_timeout, "draining");
    admin_state.draining.store(true, Ordering::Relaxed);
    let _ = drain_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || {
        for h in handles {
            let _ = h.join();
        }
    });
    // Workers bound their own wait by the drain timeout; this is a backstop.
    let _ = tokio::time::timeout(drain_timeout + std::time::Duration::from_secs(5), joined).await;
    // The last spans and access-log lines go out before the process does (the exporter's
    // requests need this runtime, so the blocking flush runs beside it).
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tokio::task::spawn_blocking(move || telemetry.shutdown()),
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, both meaning "drain and exit".
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
