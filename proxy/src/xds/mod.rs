//! The xDS client: Weir as the data plane of an existing control plane (istiod, Envoy Gateway,
//! go-control-plane, …). One ADS stream (Delta by default, or state of the world) carries
//! clusters (CDS), endpoints (EDS), listeners (LDS), routes (RDS), TLS secrets (SDS) and Wasm
//! filter configs (ECDS). Every accepted update goes through the control plane's one transaction
//! ([`Control::apply_dynamic`](crate::control::Control::apply_dynamic)), or for an endpoint
//! change of a serving cluster its endpoint path
//! ([`Control::set_xds_endpoints`](crate::control::Control::set_xds_endpoints)), so xDS adds no
//! second way of changing the proxy.
//!
//! - `translate`: Envoy's v3 resources → the manifest's raw types (a field Weir does not support
//!   is a rejection naming it).
//! - `state`: what the client holds of each type, and the assembly of the control plane's whole
//!   part from it (with Envoy's warming: a cluster waits for its endpoints, a listener for its
//!   routes and filter configs, each at most `initial_fetch_timeout`; both wait for the SDS
//!   secrets their TLS names).
//! - `sds`: the private directory secrets are written to (TLS contexts follow files, so a new
//!   secret rotates exactly as a rotated file does).
//! - `client`: the stream: connect (plaintext or Weir's own TLS), subscribe, apply, ACK or NACK,
//!   reconnect with jittered exponential backoff. It runs on the control thread, never on a
//!   worker.
//!
//! [`XdsStatus`] is what the admin endpoint shows: connection state, readiness, and each
//! resource's version, last update and last rejection.

mod client;
mod sds;
mod state;
pub mod translate;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::config::XdsConfig;
use crate::control::Control;

/// The resource types Weir subscribes to, in the order it asks for them (clusters before
/// endpoints before listeners before routes, as Envoy does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
    Extension,
}

/// How many resource types there are.
const KINDS: usize = 6;

impl Kind {
    pub const ALL: [Kind; KINDS] = [
        Kind::Cluster,
        Kind::Endpoint,
        Kind::Listener,
        Kind::Route,
        Kind::Secret,
        Kind::Extension,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Kind::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            Kind::Extension => "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        }
    }

    pub fn of_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// The short name in `/config_dump`, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Endpoint => "endpoint",
            Kind::Listener => "listener",
            Kind::Route => "route",
            Kind::Secret => "secret",
            Kind::Extension => "extension_config",
        }
    }

    /// Listeners and clusters are asked for as a wildcard (every one the server has for this
    /// node); the rest by the names the listeners and clusters use.
    pub fn wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the admin endpoint shows of the client (updated by the client, read by `/config_dump`,
/// `/metrics` and `/ready`).
pub struct XdsStatus {
    pub server: String,
    pub mode: crate::config::XdsMode,
    connected: AtomicBool,
    /// The first complete configuration was applied (or `initial_fetch_timeout` passed).
    ready: AtomicBool,
    /// ADS streams opened, and connection attempts that failed.
    streams: AtomicU64,
    failures: AtomicU64,
    kinds: [KindStatus; KINDS],
    resources: Mutex<BTreeMap<(Kind, String), ResourceStatus>>,
}

#[derive(Default)]
struct KindStatus {
    accepted: AtomicU64,
    rejected: AtomicU64,
    /// Unix seconds of the last accepted update (0: none yet).
    last_update: AtomicU64,
}

/// One resource as `/config_dump` shows it.
#[derive(Debug, Clone, Default)]
struct ResourceStatus {
    /// Absent: never accepted (only a rejection is known).
    version: Option<String>,
    last_update: Option<SystemTime>,
    last_nack: Option<(SystemTime, String)>,
    /// Waiting for what it depends on (a cluster's endpoints, a listener's routes).
    warming: bool,
}

impl XdsStatus {
    pub fn new(cfg: &XdsConfig) -> Self {
        Self {
            server: cfg.server.clone(),
            mode: cfg.mode,
            connected: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            streams: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            kinds: Default::default(),
            resources: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether the first complete configuration arrived (`/ready` answers 503 until then).
    pub fn ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    fn resources(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Kind, String), ResourceStatus>> {
        self.resources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An accepted update of `kind`: `changed` got these versions, `removed` are gone.
    fn accepted(&self, kind: Kind, changed: &[(String, String)], removed: &[String]) {
        let now = SystemTime::now();
        let k = &self.kinds[kind.index()];
        k.accepted.fetch_add(1, Relaxed);
        k.last_update.store(unix(now), Relaxed);
        let mut r = self.resources();
        for (name, version) in changed {
            let e = r.entry((kind, name.clone())).or_default();
            e.version = Some(version.clone());
            e.last_update = Some(now);
        }
        for name in removed {
            r.remove(&(kind, name.clone()));
        }
    }

    /// A rejected update of `kind`; `names` are the resources it carried.
    fn rejected(&self, kind: Kind, names: &[String], message: &str) {
        let now = SystemTime::now();
        self.kinds[kind.index()].rejected.fetch_add(1, Relaxed);
        let mut r = self.resources();
        for name in names {
            r.entry((kind, name.clone())).or_default().last_nack = Some((now, message.to_owned()));
        }
    }

    /// Marks which resources wait for what they depend on.
    fn set_warming(&self, warming: &[(Kind, String)]) {
        let mut r = self.resources();
        for (key, e) in r.iter_mut() {
            e.warming = warming.contains(key);
        }
    }

    /// The `xds` section of `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let r = self.resources();
        let resources: Vec<_> = r
            .iter()
            .map(|((kind, name), s)| {
                json!({
                    "type": kind.name(),
                    "name": name,
                    "version": s.version,
                    "last_update": s.last_update.map(rfc3339),
                    "warming": s.warming,
                    "last_nack": s.last_nack.as_ref().map(|(t, m)| json!({"time": rfc3339(*t), "error": m})),
                })
            })
            .collect();
        json!({
            "server": self.server,
            "mode": self.mode,
            "connected": self.connected(),
            "ready": self.ready(),
            "streams": self.streams.load(Relaxed),
            "resources": resources,
        })
    }

    /// The client's series for `/metrics` (Prometheus text).
    pub fn metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP weir_xds_connected Whether the ADS stream to the control plane is up.\n\
             # TYPE weir_xds_connected gauge\nweir_xds_connected {}",
            u8::from(self.connected())
        );
        let _ = writeln!(
            out,
            "# HELP weir_xds_streams_total ADS streams opened.\n# TYPE weir_xds_streams_total counter\n\
             weir_xds_streams_total {}\n\
             # HELP weir_xds_connect_failures_total Connection attempts to the control plane that failed.\n\
             # TYPE weir_xds_connect_failures_total counter\nweir_xds_connect_failures_total {}",
            self.streams.load(Relaxed),
            self.failures.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weir_xds_updates_total Updates from the control plane, by type and outcome.\n\
             # TYPE weir_xds_updates_total counter"
        );
        for kind in Kind::ALL {
            let k = &self.kinds[kind.index()];
            for (outcome, v) in [("accepted", &k.accepted), ("rejected", &k.rejected)] {
                let _ = writeln!(
                    out,
                    "weir_xds_updates_total{{type=\"{}\",outcome=\"{outcome}\"}} {}",
                    kind.name(),
                    v.load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP weir_xds_last_update_seconds Unix time of the last accepted update, by type.\n\
             # TYPE weir_xds_last_update_seconds gauge"
        );
        for kind in Kind::ALL {
            let _ = writeln!(
                out,
                "weir_xds_last_update_seconds{{type=\"{}\"}} {}",
                kind.name(),
                self.kinds[kind.index()].last_update.load(Relaxed)
            );
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Starts following the control plane `cfg` names (on the current, control, runtime),
/// reporting to `status`.
pub fn follow(control: Arc<Control>, cfg: &XdsConfig, status: Arc<XdsStatus>) {
    client::start(control, cfg.clone(), status);
}
