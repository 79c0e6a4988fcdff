//! Filter chains: proxy-wasm filters (via `weir-host-abi`) in the data path.
//!
//! * [`FilterSet`] (process-wide, built on the control thread): the wasmtime runtime, every
//!   filter's compiled module and plugin configuration, validated by a canary VM
//!   (`on_vm_start` + `on_configure` must succeed) before anything serves.
//! * [`runtime::WorkerFilters`] (per worker): one `Plugin` (VM + failure policy) per filter, and the
//!   worker's event loop for what filters start outside a stream callback — HTTP callouts, ticks,
//!   shared-queue notifications.
//! * [`chain::ChainRun`] (per request): the request phases in chain order, the response phases in
//!   reverse, body phases as the bodies stream ([`body`]), `on_log` when the stream ends.
//! * [`stream::HttpStream`]: what a filter sees of the request (`StreamHost`): header maps with
//!   pseudo-headers, body buffers, Envoy's attributes, and the route decision (`weir.route.*`);
//!   the properties filters set live in its [`props::Props`].

pub mod body;
pub mod builtin;
pub mod chain;
pub mod grpc_callout;
pub mod props;
pub mod runtime;
pub mod stream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_host_abi::{
    Deadlines, DefaultPluginHost, FailurePolicy as AbiPolicy, Limits, Module, PluginConfig,
    Runtime, Vm,
};

use crate::config::{Config, FailurePolicy, ModuleRef};

/// Why the filters of a manifest cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filters.{filter}.module: no built-in filter `{name}` (built-ins: {available})")]
    UnknownBuiltin {
        filter: String,
        name: String,
        available: String,
    },
    #[error("filters.{filter}.module: cannot read {path}: {source}")]
    Read {
        filter: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("filters.{filter}.sha256: the module's sha256 is {actual}, the manifest pins {pinned}")]
    Pin {
        filter: String,
        actual: String,
        pinned: String,
    },
    #[error("filters.{filter}.module: {source}")]
    Load {
        filter: String,
        #[source]
        source: weir_host_abi::LoadError,
    },
    #[error("filters.{filter}: the filter did not start: {source}")]
    Start {
        filter: String,
        /// Boxed: a start failure carries the guest's trap report (keeps `Result`s small).
        #[source]
        source: Box<weir_host_abi::StartError>,
    },
    #[error("cannot start the Wasm runtime: {0}")]
    Runtime(#[source] weir_host_abi::RuntimeError),
    #[error("filters.{filter}.module: no uploaded module with sha256 {digest}")]
    UnknownDigest { filter: String, digest: String },
}

/// Modules uploaded through the admin endpoint, by sha256 (hex).
pub type Uploads = std::collections::HashMap<String, Arc<Module>>;

/// One filter of the manifest, compiled.
pub struct LoadedFilter {
    pub name: String,
    pub module: Arc<Module>,
    pub plugin: PluginConfig,
}

/// Every filter and chain of a manifest, compiled and validated.
pub struct FilterSet {
    pub runtime: Runtime,
    /// Indexed like `Config::filters`.
    pub filters: Vec<LoadedFilter>,
    /// Indexed like `Config::chains`: filter indexes in chain order.
    pub chains: Vec<Arc<[usize]>>,
    /// The clusters callouts may reach: the names of the generation serving now. Shared and
    /// swapped (not part of the set's identity), so a change that only adds or removes clusters
    /// (a control plane's CDS update) keeps every filter's VMs.
    pub clusters: Arc<arc_swap::ArcSwap<Vec<String>>>,
    /// The xDS node's properties for filters (empty without `xds:`).
    pub node: Arc<NodeProperties>,
    /// The generation that built this set: workers started its VMs then, and keep them while
    /// later generations reuse the set (`/filters` shows it as `vms_since`).
    pub since: u64,
}

impl FilterSet {
    /// Lets callouts reach the clusters of `cfg` (the generation being published).
    pub fn allow_clusters(&self, cfg: &Config) {
        let names = cluster_names(cfg);
        if **self.clusters.load() != names {
            self.clusters.store(Arc::new(names));
        }
    }
}

fn cluster_names(cfg: &Config) -> Vec<String> {
    cfg.clusters.iter().map(|c| c.name.clone()).collect()
}

/// Property path (dotted) → value: what filters read of the xDS node.
pub type NodeProperties = std::collections::HashMap<Box<[u8]>, Vec<u8>>;

/// The node's properties, under `xds.node.` and Envoy's older `node.`: `id`, `cluster`,
/// `locality.zone` and `metadata.KEY` (a string as itself, any other value as JSON).
fn node_properties(xds: Option<&crate::config::XdsConfig>) -> NodeProperties {
    let mut out = NodeProperties::new();
    let Some(x) = xds else { return out };
    let n = &x.node;
    for prefix in ["xds.node", "node"] {
        let mut put = |key: &str, v: Vec<u8>| {
            out.insert(format!("{prefix}.{key}").into_bytes().into(), v);
        };
        put("id", n.id.clone().into_bytes());
        put("cluster", n.cluster.clone().into_bytes());
        if let Some(z) = &n.zone {
            put("locality.zone", z.clone().into_bytes());
        }
        for (k, v) in &n.metadata {
            let bytes = match v {
                serde_json::Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            put(&format!("metadata.{k}"), bytes);
        }
    }
    out
}

impl FilterSet {
    /// A Wasm runtime for filter sets. One per process: generations share its compile cache
    /// (by sha256), its epoch ticker and the shared data and queues filters see.
    pub fn runtime() -> Result<Runtime, FilterError> {
        Runtime::new().map_err(FilterError::Runtime)
    }

    /// Compiles every filter (off the data path; a module already compiled is reused by its
    /// sha256) and runs a canary VM of each.
    pub fn load(cfg: &Config, runtime: &Runtime, uploads: &Uploads) -> Result<Self, FilterError> {
        let runtime = runtime.clone();
        let mut filters = Vec::with_capacity(cfg.filters.len());
        for f in &cfg.filters {
            let module = Self::module_of(f, &runtime, uploads)?;
            if let Some(pinned) = &f.sha256
                && module.sha256_hex() != *pinned
            {
                return Err(FilterError::Pin {
                    filter: f.name.clone(),
                    actual: module.sha256_hex(),
                    pinned: pinned.clone(),
                });
            }
            filters.push(Self::start_one(&runtime, f, module)?);
        }
        let chains = cfg
            .chains
            .iter()
            .map(|c| {
                c.filters
                    .iter()
                    .map(|n| {
                        cfg.filters
                            .iter()
                            .position(|f| &f.name == n)
                            .expect("validated")
                    })
                    .collect::<Arc<[usize]>>()
            })
            .collect();
        Ok(Self {
            runtime,
            filters,
            chains,
            clusters: Arc::new(arc_swap::ArcSwap::from_pointee(cluster_names(cfg))),
            node: Arc::new(node_properties(cfg.xds.as_ref())),
            since: 0,
        })
    }

    /// A filter's compiled module: an upload by digest, or a built-in or file compiled (or
    /// found in the runtime's cache by its sha256).
    fn module_of(
        f: &crate::config::FilterConfig,
        runtime: &Runtime,
        uploads: &Uploads,
    ) -> Result<Arc<Module>, FilterError> {
        let bytes: std::borrow::Cow<'static, [u8]> = match &f.module {
            ModuleRef::Digest(digest) => {
                return uploads
                    .get(digest)
                    .cloned()
                    .ok_or_else(|| FilterError::UnknownDigest {
                        filter: f.name.clone(),
                        digest: digest.clone(),
                    });
            }
            ModuleRef::Builtin(name) => builtin::lookup(name).map(Into::into).ok_or_else(|| {
                FilterError::UnknownBuiltin {
                    filter: f.name.clone(),
                    name: name.clone(),
                    available: builtin::names().collect::<Vec<_>>().join(", "),
                }
            })?,
            ModuleRef::File(path) => std::fs::read(path)
                .map_err(|source| FilterError::Read {
                    filter: f.name.clone(),
                    path: path.clone(),
                    source,
                })?
                .into(),
        };
        runtime.compile(&bytes).map_err(|source| FilterError::Load {
            filter: f.name.clone(),
            source,
        })
    }

    /// The plugin configuration of one filter, validated by a canary VM.
    fn start_one(
        runtime: &Runtime,
        f: &crate::config::FilterConfig,
        module: Arc<Module>,
    ) -> Result<LoadedFilter, FilterError> {
        let mut plugin = PluginConfig::new(f.name.clone()).with_root_id(f.name.clone());
        if let Some(c) = &f.config {
            plugin.configuration = json_bytes(c);
        }
        if let Some(c) = &f.vm_config {
            plugin.vm_configuration = json_bytes(c);
        }
        plugin.failure_policy = match f.failure_policy {
            FailurePolicy::FailClosed => AbiPolicy::FailClosed,
            FailurePolicy::FailOpen => AbiPolicy::FailOpen,
            FailurePolicy::Reload => AbiPolicy::Reload,
        };
        plugin.limits = Limits {
            memory_bytes: usize::try_from(f.memory_limit).unwrap_or(usize::MAX),
            deadlines: deadlines(f.callback_deadline),
            ..Limits::default()
        };
        // The canary: a filter that cannot start never goes live.
        Vm::new(
            runtime,
            module.clone(),
            plugin.clone(),
            Box::new(DefaultPluginHost),
        )
        .map_err(|source| FilterError::Start {
            filter: f.name.clone(),
            source: Box::new(source),
        })?;
        Ok(LoadedFilter {
            name: f.name.clone(),
            module,
            plugin,
        })
    }
}

/// The manifest's per-callback deadline applies to header-sized callbacks; body chunks get
/// twice that (hardening.md's 10 ms / 20 ms split), start-up keeps its own second.
fn deadlines(d: Duration) -> Deadlines {
    Deadlines {
        headers: d,
        body: d * 2,
        other: d,
        ..Deadlines::default()
    }
}

/// Configuration handed to the filter: JSON text, except that a YAML string is passed as is
/// (Envoy unwraps `StringValue` the same way).
fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}
