//! Configuration: runtime-wide settings, per-plugin settings, limits and the failure policy.

use std::sync::Arc;
use std::time::Duration;

use crate::stats::FilterStats;

/// Default module size cap (hardening.md).
pub const DEFAULT_MAX_MODULE_BYTES: usize = 16 << 20;
/// Default guest stack cap.
pub const DEFAULT_MAX_WASM_STACK: usize = 512 << 10;
/// Default linear memory cap per VM.
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;
/// Default header-map copy caps.
pub const DEFAULT_MAX_MAP_BYTES: usize = 1 << 20;
/// Default header-map entry cap.
pub const DEFAULT_MAX_MAP_ENTRIES: usize = 1024;
/// Default cap on any other single host↔guest copy (bodies, shared data, queue items, logs).
pub const DEFAULT_MAX_COPY_BYTES: usize = 16 << 20;

/// Settings shared by every VM of a [`Runtime`](crate::Runtime) (they configure the `Engine`).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Largest module accepted by `compile`.
    pub max_module_bytes: usize,
    /// Guest stack cap (wasmtime's `max_wasm_stack`, engine-wide).
    pub max_wasm_stack: usize,
    /// Use wasmtime's pooling allocator (see benches/README.md for the measurement behind the default).
    pub pooling: Option<PoolingConfig>,
    /// Epoch tick period; callback deadlines are counted in these ticks.
    pub epoch_tick: Duration,
}

/// Pooling allocator sizing (only used when [`RuntimeConfig::pooling`] is set).
#[derive(Debug, Clone, Copy)]
pub struct PoolingConfig {
    /// Maximum number of live VMs.
    pub max_instances: u32,
    /// Largest linear memory a pooled VM may have (must cover every plugin's memory cap).
    pub max_memory_bytes: usize,
}

impl Default for PoolingConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_bytes: DEFAULT_MEMORY_BYTES,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            pooling: None,
            epoch_tick: Duration::from_millis(1),
        }
    }
}

/// Per-callback time budgets. A callback is interrupted (and its VM fails) once its wall-clock
/// budget has passed *and*, on Linux, it has since consumed a full budget of CPU time — so CPU
/// contention on a busy machine does not kill well-behaved filters; a spinning guest is stopped
/// after about twice its budget, and never later than 51 budgets of wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Request/response headers and trailers.
    pub headers: Duration,
    /// One body chunk (HTTP body, L4 data).
    pub body: Duration,
    /// `_initialize`, `on_vm_start`, `on_configure`.
    pub start: Duration,
    /// Everything else (context create, log, done, delete, tick, callouts, queues...).
    pub other: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            headers: Duration::from_millis(10),
            body: Duration::from_millis(20),
            start: Duration::from_secs(1),
            other: Duration::from_millis(10),
        }
    }
}

/// Resource limits of one filter's VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap in bytes (growth beyond it fails; the guest then usually traps).
    pub memory_bytes: usize,
    /// Callback deadlines.
    pub deadlines: Deadlines,
    /// Largest serialized header map copied either way.
    pub max_map_bytes: usize,
    /// Most entries in a header map copied either way.
    pub max_map_entries: usize,
    /// Largest other single copy (bodies, shared data, queue items, log lines, properties).
    pub max_copy_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            deadlines: Deadlines::default(),
            max_map_bytes: DEFAULT_MAX_MAP_BYTES,
            max_map_entries: DEFAULT_MAX_MAP_ENTRIES,
            max_copy_bytes: DEFAULT_MAX_COPY_BYTES,
        }
    }
}

/// What happens to a filter's streams when its VM fails (design.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// The embedder answers 503 (HTTP) / closes (TCP) every affected stream; the VM is not rebuilt
    /// until the plugin is reloaded.
    #[default]
    FailClosed,
    /// The filter is skipped for affected streams; new streams skip it too.
    FailOpen,
    /// Affected streams fail closed; the VM is rebuilt with exponential backoff.
    Reload,
}

/// Exponential backoff of the [`FailurePolicy::Reload`] policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// One plugin (filter instance): identity, configuration, limits and policy.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// `plugin_name` property; also the label of its metrics.
    pub name: String,
    /// `plugin_root_id` property.
    pub root_id: String,
    /// `plugin_vm_id` property: the sharing scope of shared data and queues.
    pub vm_id: String,
    /// Buffer 6 (`on_vm_start`'s size argument).
    pub vm_configuration: Vec<u8>,
    /// Buffer 7 (only during `on_configure`).
    pub configuration: Vec<u8>,
    /// WASI environment (`KEY`, `VALUE`); nothing of the proxy's own environment leaks.
    pub environment: Vec<(String, String)>,
    /// Limits.
    pub limits: Limits,
    /// Failure policy.
    pub failure_policy: FailurePolicy,
    /// Backoff for [`FailurePolicy::Reload`].
    pub backoff: Backoff,
    /// Counters; clone the `Arc` into every worker's VM of this filter to aggregate.
    pub stats: Arc<FilterStats>,
}

impl PluginConfig {
    /// A plugin with defaults: root id and vm id empty, no configuration, default limits,
    /// `FailClosed`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            root_id: String::new(),
            vm_id: String::new(),
            vm_configuration: Vec::new(),
            configuration: Vec::new(),
            environment: Vec::new(),
            limits: Limits::default(),
            failure_policy: FailurePolicy::default(),
            backoff: Backoff::default(),
            stats: Arc::new(FilterStats::default()),
        }
    }

    /// Sets the plugin configuration (buffer 7).
    pub fn with_configuration(mut self, configuration: impl Into<Vec<u8>>) -> Self {
        self.configuration = configuration.into();
        self
    }

    /// Sets the vm id.
    pub fn with_vm_id(mut self, vm_id: impl Into<String>) -> Self {
        self.vm_id = vm_id.into();
        self
    }

    /// Sets the root id.
    pub fn with_root_id(mut self, root_id: impl Into<String>) -> Self {
        self.root_id = root_id.into();
        self
    }
}
