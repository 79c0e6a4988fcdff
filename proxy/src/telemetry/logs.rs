//! The proxy's own logs (`tracing`, to stderr) and their filter, which the admin endpoint can
//! change while Weir runs (`POST /logging?level=debug`, Envoy's endpoint) without a restart.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The levels `?level=` takes (Envoy's names; `critical` and `off` map to `error` / `off`).
pub const LEVELS: [&str; 7] = ["trace", "debug", "info", "warn", "error", "critical", "off"];

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Why a log filter change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("unknown level `{0}` (levels: trace, debug, info, warn, error, critical, off)")]
    Level(String),
    #[error("invalid filter `{0}`: {1}")]
    Filter(String, String),
    #[error("logging was not set up with a reloadable filter")]
    NotReloadable,
    #[error("the filter could not be swapped: {0}")]
    Reload(String),
}

/// Installs the stderr logger with `filter` (`RUST_LOG` wins when set), reloadable at run time.
pub fn init(filter: &str) {
    let env = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(env);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = HANDLE.set(handle);
    }
}

/// The filter in force (`EnvFilter` syntax), if logging is reloadable.
pub fn current() -> Option<String> {
    HANDLE.get()?.with_current(ToString::to_string).ok()
}

/// Sets every target to `level`.
pub fn set_level(level: &str) -> Result<String, LogError> {
    let directive = match level {
        "critical" => "error",
        l if LEVELS.contains(&l) => l,
        other => return Err(LogError::Level(other.to_owned())),
    };
    set_filter(directive)
}

/// Replaces the filter with `spec` (`EnvFilter` syntax: `info,weir::audit=debug`).
pub fn set_filter(spec: &str) -> Result<String, LogError> {
    let filter =
        EnvFilter::try_new(spec).map_err(|e| LogError::Filter(spec.to_owned(), e.to_string()))?;
    let handle = HANDLE.get().ok_or(LogError::NotReloadable)?;
    handle
        .reload(filter)
        .map_err(|e| LogError::Reload(e.to_string()))?;
    Ok(current().unwrap_or_else(|| spec.to_owned()))
}
