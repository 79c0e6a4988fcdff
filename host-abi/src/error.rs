//! Errors at the crate boundary: loading a module, starting a VM, and a VM failing mid-stream.
//!
//! Guest-visible `Status` values (see `types`) and these host-side errors are separate on purpose:
//! a guest mistake is a `Status` to the guest or a trap; a trap becomes [`VmFailed`] for the embedder.

use crate::types::ContextId;

/// Why a module was rejected at load time (compile + ABI checks). Every variant names the
/// offending export or import.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The module is bigger than the configured cap.
    #[error("module is {size} bytes, more than the cap of {limit} bytes")]
    TooLarge {
        /// Module size.
        size: usize,
        /// Cap.
        limit: usize,
    },
    /// wasmtime could not compile the module.
    #[error("module does not compile: {0}")]
    Compile(String),
    /// No `proxy_abi_version_0_2_1` (or `_0_2_0`) export.
    #[error("missing ABI version export `proxy_abi_version_0_2_1` (or `proxy_abi_version_0_2_0`)")]
    MissingAbiVersion,
    /// No allocator export.
    #[error("missing allocator export `proxy_on_memory_allocate` (or `malloc`)")]
    MissingAllocator,
    /// A required export is missing.
    #[error("missing export `{0}`")]
    MissingExport(&'static str),
    /// Neither `_initialize` nor `_start` is exported.
    #[error("missing export `_initialize` (or `_start`)")]
    MissingInitialize,
    /// An export has the wrong kind or signature.
    #[error("export `{name}` has type {found}, expected {expected}")]
    ExportType {
        /// Export name.
        name: String,
        /// What the host calls it with.
        expected: String,
        /// What the module declares.
        found: String,
    },
    /// The module imports something this host does not define.
    #[error("unknown import `{module}::{name}`")]
    UnknownImport {
        /// Import module (`env`, `wasi_snapshot_preview1`, ...).
        module: String,
        /// Import name.
        name: String,
    },
    /// The module imports a host function with a different signature.
    #[error("import `{module}::{name}` has type {found}, the host defines {expected}")]
    ImportType {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
        /// The host's signature.
        expected: String,
        /// The module's signature.
        found: String,
    },
    /// Linking failed for another reason.
    #[error("module does not link: {0}")]
    Link(String),
}

/// Why a VM could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// wasmtime refused to instantiate (e.g. initial memory above the cap, pool exhausted).
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// A start-up callback trapped or ran out of time or memory.
    #[error("{phase} failed: {failure}")]
    Failed {
        /// `_initialize`, `proxy_on_context_create`, `proxy_on_vm_start` or `proxy_on_configure`.
        phase: &'static str,
        /// What happened.
        failure: VmFailed,
    },
    /// `proxy_on_vm_start` returned false.
    #[error("proxy_on_vm_start returned false (VM configuration rejected)")]
    VmStartRejected,
    /// `proxy_on_configure` returned false.
    #[error("proxy_on_configure returned false (plugin configuration rejected)")]
    ConfigureRejected,
}

/// What made a VM fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The guest trapped (panic → `unreachable`, out-of-bounds access, stack overflow, a bad
    /// pointer passed to a host function, `proc_exit`...).
    Trap,
    /// The callback ran past its deadline (epoch interruption).
    Deadline,
    /// The guest tried to grow memory past its cap and then trapped.
    MemoryLimit,
    /// The guest broke the ABI in a way the host cannot answer with a `Status` (e.g. a host call from
    /// inside the allocator, an allocator returning an invalid pointer).
    AbiViolation,
}

/// A VM failed: it is never re-entered. `live_streams` are the stream contexts it held, which the
/// embedder must now terminate according to the filter's failure policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter `{plugin}` VM failed ({reason:?}) in {callback}: {message}")]
pub struct VmFailed {
    /// Plugin name.
    pub plugin: String,
    /// Category.
    pub reason: FailureReason,
    /// The callback that was running.
    pub callback: &'static str,
    /// Trap message (with the guest backtrace when wasmtime has one).
    pub message: String,
    /// Stream contexts that were alive in the VM when it failed.
    pub live_streams: Vec<ContextId>,
}

/// Error of a callback on a running VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmError {
    /// The VM failed now or earlier; it will not run again.
    #[error(transparent)]
    Failed(#[from] Box<VmFailed>),
    /// The embedder named a context this VM does not have (a bug in the embedder; the VM is fine).
    #[error("unknown or finished context id {0}")]
    UnknownContext(ContextId),
}

impl VmError {
    /// The failure, when the VM failed.
    pub fn failed(&self) -> Option<&VmFailed> {
        match self {
            Self::Failed(f) => Some(f),
            Self::UnknownContext(_) => None,
        }
    }
}
