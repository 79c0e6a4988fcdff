//! `Runtime`: the process-wide part — one `Engine` (epoch interruption, a ticker thread), one
//! `Linker` with every host function, a module cache keyed by sha256, shared data/queues and the
//! metrics registry. `Module`: a compiled, ABI-checked module with its `InstancePre`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, ExternType, FuncType, InstanceAllocationStrategy, InstancePre, Linker,
    PoolingAllocationConfig, Store,
};

use crate::config::{PluginConfig, RuntimeConfig};
use crate::embedder::DefaultPluginHost;
use crate::error::LoadError;
use crate::metrics::{MetricsRegistry, VmMetrics};
use crate::shared_data::SharedState;
use crate::state::{HostState, PluginShared};

/// Failure to build the engine.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot create the Wasm runtime: {0}")]
pub struct RuntimeError(String);

/// The process-wide Wasm host. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .field("cached_modules", &self.inner.cache.len())
            .finish()
    }
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    /// (module, name) → host function type, for load-time import checks.
    imports: HashMap<(String, String), FuncType>,
    cache: DashMap<[u8; 32], Weak<Module>>,
    /// One gate per module being compiled: a second caller with the same bytes waits for the
    /// first one's result instead of compiling them again beside it.
    compiling: DashMap<[u8; 32], Arc<std::sync::Mutex<()>>>,
    /// Modules compiled (not fetched from the cache) since start.
    compiles: std::sync::atomic::AtomicU64,
    shared: SharedState,
    metrics: MetricsRegistry,
    config: RuntimeConfig,
    stop_ticker: Arc<AtomicBool>,
    /// The epoch ticker starts with the first VM: a process with no filters pays no wake-ups.
    ticker: std::sync::OnceLock<Result<(), String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// A runtime with default settings and its own shared state.
    pub fn new() -> Result<Self, RuntimeError> {
        Self::with_config(RuntimeConfig::default(), SharedState::new())
    }

    /// A runtime with explicit settings and shared state (share one `SharedState` between
    /// runtimes only if their VMs should see each other's shared data and queues).
    pub fn with_config(config: RuntimeConfig, shared: SharedState) -> Result<Self, RuntimeError> {
        let mut wc = Config::new();
        wc.epoch_interruption(true);
        wc.max_wasm_stack(config.max_wasm_stack);
        // `WEIR_WASM_PERFMAP=1`: write /tmp/perf-PID.map so `perf report` names guest functions.
        if std::env::var_os("WEIR_WASM_PERFMAP").is_some_and(|v| v != "0") {
            wc.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if let Some(p) = config.pooling {
            let mut pool = PoolingAllocationConfig::new();
            pool.total_core_instances(p.max_instances)
                .total_memories(p.max_instances)
                .total_tables(p.max_instances)
                .max_memory_size(p.max_memory_bytes);
            wc.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wc).map_err(|e| RuntimeError(format!("{e:?}")))?;
        let mut linker = Linker::new(&engine);
        crate::add_to_linker(&mut linker).map_err(|e| RuntimeError(format!("{e:?}")))?;

        // Read the host functions' types back from the linker, so load checks can never disagree
        // with what is actually defined.
        let metrics = MetricsRegistry::new();
        let mut store = Store::new(&engine, dummy_state(&shared, &metrics));
        let funcs: Vec<_> = linker
            .iter(&mut store)
            .filter_map(|(m, n, ext)| match ext {
                wasmtime::Extern::Func(f) => Some(((m.to_owned(), n.to_owned()), f)),
                _ => None,
            })
            .collect();
        let imports = funcs.into_iter().map(|(k, f)| (k, f.ty(&store))).collect();
        drop(store);

        let stop = Arc::new(AtomicBool::new(false));
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                imports,
                cache: DashMap::new(),
                compiling: DashMap::new(),
                compiles: std::sync::atomic::AtomicU64::new(0),
                shared,
                metrics,
                config,
                stop_ticker: stop,
                ticker: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Starts the epoch ticker thread unless it runs already (callback deadlines need it).
    pub(crate) fn ensure_ticker(&self) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        inner
            .ticker
            .get_or_init(|| {
                spawn_ticker(
                    inner.engine.clone(),
                    inner.config.epoch_tick,
                    inner.stop_ticker.clone(),
                )
                .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(RuntimeError)
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Process-wide shared data and queues of this runtime.
    pub fn shared(&self) -> &SharedState {
        &self.inner.shared
    }

    /// Guest-defined metrics of every plugin on this runtime.
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.inner.metrics
    }

    /// The settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Epoch ticks for a deadline (rounded up, plus one for the partial current tick).
    pub(crate) fn ticks(&self, d: Duration) -> u64 {
        let tick = self.inner.config.epoch_tick.as_nanos().max(1);
        (d.as_nanos().div_ceil(tick) as u64).saturating_add(1)
    }

    /// Compiles (or fetches from the cache) and checks a module (binary, or WAT text). Do this
    /// off the data path: compiling takes milliseconds to seconds.
    pub fn compile(&self, wasm: &[u8]) -> Result<Arc<Module>, LoadError> {
        let limit = self.inner.config.max_module_bytes;
        if wasm.len() > limit {
            return Err(LoadError::TooLarge {
                size: wasm.len(),
                limit,
            });
        }
        let sha256: [u8; 32] = Sha256::digest(wasm).into();
        let cached = || self.inner.cache.get(&sha256).and_then(|w| w.upgrade());
        if let Some(m) = cached() {
            return Ok(m);
        }
        let gate = self.inner.compiling.entry(sha256).or_default().clone();
        let _compiling = gate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cached() {
            return Ok(m);
        }
        let m = self.compile_new(wasm, sha256);
        // Waiters find the module in the cache (or, if it failed, try once more themselves).
        self.inner.compiling.remove(&sha256);
        m
    }

    /// Modules compiled rather than found in the cache since the runtime started.
    pub fn compiles(&self) -> u64 {
        self.inner.compiles.load(Ordering::Relaxed)
    }

    fn compile_new(&self, wasm: &[u8], sha256: [u8; 32]) -> Result<Arc<Module>, LoadError> {
        self.inner.compiles.fetch_add(1, Ordering::Relaxed);
        let module = wasmtime::Module::new(&self.inner.engine, wasm)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        check_exports(&module)?;
        self.check_imports(&module)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let m = Arc::new(Module { sha256, pre });
        self.inner.cache.insert(sha256, Arc::downgrade(&m));
        self.inner.cache.retain(|_, w| w.strong_count() > 0);
        Ok(m)
    }

    fn check_imports(&self, module: &wasmtime::Module) -> Result<(), LoadError> {
        for import in module.imports() {
            let key = (import.module().to_owned(), import.name().to_owned());
            let unknown = || LoadError::UnknownImport {
                module: key.0.clone(),
                name: key.1.clone(),
            };
            let ExternType::Func(found) = import.ty() else {
                return Err(unknown());
            };
            let expected = self.inner.imports.get(&key).ok_or_else(unknown)?;
            if !same_type(expected, &found) {
                return Err(LoadError::ImportType {
                    module: key.0.clone(),
                    name: key.1.clone(),
                    expected: signature(expected),
                    found: signature(&found),
                });
            }
        }
        Ok(())
    }
}

fn dummy_state(shared: &SharedState, metrics: &MetricsRegistry) -> HostState {
    let cfg = PluginConfig::new("");
    let plugin = Arc::new(PluginShared {
        name: String::new(),
        root_id: String::new(),
        vm_id: String::new(),
        vm_configuration: Vec::new(),
        configuration: Vec::new(),
        environ: Vec::new(),
        limits: cfg.limits,
    });
    HostState::new(
        plugin,
        Box::new(DefaultPluginHost),
        shared.clone(),
        VmMetrics::new(metrics.clone()),
    )
}

fn spawn_ticker(engine: Engine, period: Duration, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("weir-wasm-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(period);
                engine.increment_epoch();
            }
        })?;
    Ok(())
}

fn same_type(a: &FuncType, b: &FuncType) -> bool {
    a.params().len() == b.params().len()
        && a.results().len() == b.results().len()
        && a.params()
            .zip(b.params())
            .all(|(x, y)| x.matches(&y) && y.matches(&x))
        && a.results()
            .zip(b.results())
            .all(|(x, y)| x.matches(&y) && y.matches(&x))
}

fn signature(f: &FuncType) -> String {
    let p: Vec<String> = f.params().map(|t| t.to_string()).collect();
    let r: Vec<String> = f.results().map(|t| t.to_string()).collect();
    format!("({}) -> ({})", p.join(", "), r.join(", "))
}

/// (params, results) of every callback export the host may call; all i32.
const CALLBACKS: &[(&str, usize, usize)] = &[
    ("proxy_on_memory_allocate", 1, 1),
    ("malloc", 1, 1),
    ("_initialize", 0, 0),
    ("_start", 0, 0),
    ("proxy_on_context_create", 2, 0),
    ("proxy_on_vm_start", 2, 1),
    ("proxy_on_configure", 2, 1),
    ("proxy_on_tick", 1, 0),
    ("proxy_on_queue_ready", 2, 0),
    ("proxy_on_new_connection", 1, 1),
    ("proxy_on_downstream_data", 3, 1),
    ("proxy_on_upstream_data", 3, 1),
    ("proxy_on_downstream_connection_close", 2, 0),
    ("proxy_on_upstream_connection_close", 2, 0),
    ("proxy_on_request_headers", 3, 1),
    ("proxy_on_request_body", 3, 1),
    ("proxy_on_request_trailers", 2, 1),
    ("proxy_on_response_headers", 3, 1),
    ("proxy_on_response_body", 3, 1),
    ("proxy_on_response_trailers", 2, 1),
    ("proxy_on_http_call_response", 5, 0),
    ("proxy_on_grpc_receive_initial_metadata", 3, 0),
    ("proxy_on_grpc_receive_trailing_metadata", 3, 0),
    ("proxy_on_grpc_receive", 3, 0),
    ("proxy_on_grpc_close", 3, 0),
    ("proxy_on_foreign_function", 3, 0),
    ("proxy_on_log", 1, 0),
    ("proxy_on_done", 1, 1),
    ("proxy_on_delete", 1, 0),
];

fn check_exports(module: &wasmtime::Module) -> Result<(), LoadError> {
    let has_func = |name: &str| matches!(module.get_export(name), Some(ExternType::Func(_)));
    if !has_func("proxy_abi_version_0_2_1") && !has_func("proxy_abi_version_0_2_0") {
        return Err(LoadError::MissingAbiVersion);
    }
    if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err(LoadError::MissingExport("memory"));
    }
    if !has_func("proxy_on_memory_allocate") && !has_func("malloc") {
        return Err(LoadError::MissingAllocator);
    }
    if !has_func("_initialize") && !has_func("_start") {
        return Err(LoadError::MissingInitialize);
    }
    for (name, params, results) in CALLBACKS {
        let Some(ty) = module.get_export(name) else {
            continue;
        };
        let expected = format!(
            "({}) -> ({})",
            vec!["i32"; *params].join(", "),
            vec!["i32"; *results].join(", ")
        );
        let ok = match &ty {
            ExternType::Func(f) => {
                f.params().len() == *params
                    && f.results().len() == *results
                    && f.params().chain(f.results()).all(|t| t.is_i32())
            }
            _ => false,
        };
        if !ok {
            let found = match &ty {
                ExternType::Func(f) => signature(f),
                other => format!("{other:?}")
                    .split('(')
                    .next()
                    .unwrap_or("non-function")
                    .to_owned(),
            };
            return Err(LoadError::ExportType {
                name: (*name).to_owned(),
                expected,
                found,
            });
        }
    }
    Ok(())
}

/// A compiled module that passed the ABI checks, ready to instantiate quickly.
pub struct Module {
    sha256: [u8; 32],
    pre: InstancePre<HostState>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("sha256", &self.sha256_hex())
            .finish()
    }
}

impl Module {
    /// SHA-256 of the module bytes (the cache key).
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// SHA-256 as lower-case hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    pub(crate) fn pre(&self) -> &InstancePre<HostState> {
        &self.pre
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"(module
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "_initialize"))
      (func (export "malloc") (param i32) (result i32) i32.const 8))"#;

    #[test]
    fn modules_are_cached_by_sha256_while_alive() {
        let rt = Runtime::new().unwrap();
        let a = rt.compile(MINIMAL.as_bytes()).unwrap();
        let b = rt.compile(MINIMAL.as_bytes()).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "same bytes, same compiled module");
        assert_eq!(
            a.sha256_hex(),
            hex::encode(Sha256::digest(MINIMAL.as_bytes()))
        );
        let other = format!("{MINIMAL} ");
        let c = rt.compile(other.as_bytes()).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        // Once every user is gone the entry is dropped at the next compile, not kept forever.
        let third = format!("{MINIMAL}  ");
        let _e = rt.compile(third.as_bytes()).unwrap();
        assert_eq!(rt.inner.cache.len(), 2, "only the live modules remain");
        drop(c);
    }

    #[test]
    fn concurrent_compiles_of_the_same_bytes_share_one() {
        let rt = Runtime::new().unwrap();
        let start = Arc::new(std::sync::Barrier::new(4));
        let modules: Vec<Arc<Module>> = (0..4)
            .map(|_| {
                let (rt, start) = (rt.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    rt.compile(MINIMAL.as_bytes()).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(rt.compiles(), 1, "one compile, three waiters");
        assert!(modules.iter().all(|m| Arc::ptr_eq(m, &modules[0])));
    }

    #[test]
    fn every_sdk_import_is_defined() {
        // The 0.2.5 SDK's imports (proxy-wasm-abi.md §5, §6); a missing one would make every real
        // filter fail to load.
        let rt = Runtime::new().unwrap();
        for name in [
            "proxy_log",
            "proxy_get_log_level",
            "proxy_get_current_time_nanoseconds",
            "proxy_set_tick_period_milliseconds",
            "proxy_get_buffer_bytes",
            "proxy_set_buffer_bytes",
            "proxy_get_header_map_pairs",
            "proxy_set_header_map_pairs",
            "proxy_get_header_map_value",
            "proxy_add_header_map_value",
            "proxy_replace_header_map_value",
            "proxy_remove_header_map_value",
            "proxy_get_property",
            "proxy_set_property",
            "proxy_get_shared_data",
            "proxy_set_shared_data",
            "proxy_register_shared_queue",
            "proxy_resolve_shared_queue",
            "proxy_enqueue_shared_queue",
            "proxy_dequeue_shared_queue",
            "proxy_continue_stream",
            "proxy_close_stream",
            "proxy_send_local_response",
            "proxy_http_call",
            "proxy_grpc_call",
            "proxy_grpc_stream",
            "proxy_grpc_send",
            "proxy_grpc_cancel",
            "proxy_grpc_close",
            "proxy_get_status",
            "proxy_set_effective_context",
            "proxy_call_foreign_function",
            "proxy_done",
            "proxy_define_metric",
            "proxy_get_metric",
            "proxy_record_metric",
            "proxy_increment_metric",
        ] {
            assert!(
                rt.inner
                    .imports
                    .contains_key(&("env".to_owned(), name.to_owned())),
                "{name}"
            );
        }
        for name in [
            "fd_write",
            "environ_get",
            "environ_sizes_get",
            "proc_exit",
            "clock_time_get",
            "random_get",
        ] {
            assert!(
                rt.inner
                    .imports
                    .contains_key(&("wasi_snapshot_preview1".to_owned(), name.to_owned())),
                "{name}"
            );
        }
    }
}
