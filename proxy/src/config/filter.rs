//! `filters:` and `chains:`: each filter's module (builtin, file or uploaded digest), its
//! configuration and limits; each chain's filters, in order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::check::{Errors, Source, check_name_in, positive};
use super::units::ser_duration;
use super::{FailurePolicy, raw};

pub const DEFAULT_FILTER_MEMORY: u64 = 64 << 20;
pub const DEFAULT_FILTER_CALLBACK_DEADLINE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Serialize)]
pub struct ChainConfig {
    pub name: String,
    pub filters: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilterConfig {
    pub name: String,
    pub module: ModuleRef,
    pub sha256: Option<String>,
    pub config: Option<serde_json::Value>,
    pub vm_config: Option<serde_json::Value>,
    pub failure_policy: FailurePolicy,
    pub memory_limit: u64,
    #[serde(serialize_with = "ser_duration")]
    pub callback_deadline: Duration,
}

/// A filter's module: embedded in the binary, or a file.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleRef {
    Builtin(String),
    File(PathBuf),
    /// A module uploaded through the admin endpoint, by its sha256 (hex).
    Digest(String),
}

/// The `filters:` map, in name order. `base_dir` resolves module files.
pub(super) fn filters(
    map: BTreeMap<String, raw::Filter>,
    base_dir: &Path,
    source: Source,
    errs: &mut Errors,
) -> Vec<FilterConfig> {
    let mut filters = Vec::with_capacity(map.len());
    for (name, f) in map {
        let p = format!("filters.{name}");
        check_name_in(&name, &p, source, errs);
        let module = if let Some(b) = f.module.strip_prefix("builtin:") {
            if b.is_empty() {
                errs.push(format!("{p}.module"), "`builtin:` needs a filter name");
            }
            ModuleRef::Builtin(b.to_owned())
        } else {
            let path = base_dir.join(&f.module);
            if !path.is_file() {
                errs.push(
                    format!("{p}.module"),
                    format!(
                        "no module file at {} (or write builtin:NAME)",
                        path.display()
                    ),
                );
            }
            ModuleRef::File(path)
        };
        if let Some(h) = &f.sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            errs.push(format!("{p}.sha256"), "must be 64 hex digits");
        }
        let memory_limit = f.limits.memory.map_or(DEFAULT_FILTER_MEMORY, |s| s.0);
        if memory_limit < 64 * 1024 {
            errs.push(
                format!("{p}.limits.memory"),
                "must be at least 64KiB (one Wasm page)",
            );
        }
        let callback_deadline = positive(
            f.limits.callback_deadline.map(|d| d.0),
            DEFAULT_FILTER_CALLBACK_DEADLINE,
            &format!("{p}.limits.callback_deadline"),
            errs,
        );
        filters.push(FilterConfig {
            name,
            module,
            sha256: f.sha256.map(|h| h.to_ascii_lowercase()),
            config: f.config,
            vm_config: f.vm_config,
            failure_policy: f.failure_policy,
            memory_limit,
            callback_deadline,
        });
    }
    filters
}

/// The `chains:` map, in name order; every filter a chain names must be in `filters`.
pub(super) fn chains(
    map: BTreeMap<String, Vec<String>>,
    filters: &[&[FilterConfig]],
    source: Source,
    errs: &mut Errors,
) -> Vec<ChainConfig> {
    let mut chains = Vec::with_capacity(map.len());
    for (name, list) in map {
        let p = format!("chains.{name}");
        check_name_in(&name, &p, source, errs);
        for (i, f) in list.iter().enumerate() {
            if !filters.iter().any(|set| set.iter().any(|x| &x.name == f)) {
                errs.push(format!("{p}[{i}]"), format!("unknown filter `{f}`"));
            }
        }
        chains.push(ChainConfig {
            name,
            filters: list,
        });
    }
    chains
}
