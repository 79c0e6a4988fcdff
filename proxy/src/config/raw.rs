//! The manifest exactly as written: serde types with unknown fields rejected. Nothing here is
//! trusted; `validate` turns it into runtime types and names the path of every problem.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::units::{HumanDuration, HumanSize};

/// Top level of a manifest (v1).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub workers: Option<usize>,
    pub drain_timeout: Option<HumanDuration>,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    #[serde(default)]
    pub chains: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub filters: BTreeMap<String, Filter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: String,
    /// File holding the bearer token that admin mutations must present (absent: mutations off).
    pub token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: String,
    pub default_cluster: String,
    pub chain: Option<String>,
    #[serde(default)]
    pub limits: ListenerLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    pub max_request_headers_size: Option<HumanSize>,
    pub max_request_headers: Option<usize>,
    pub max_uri_length: Option<HumanSize>,
    pub header_read_timeout: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub max_connections: Option<usize>,
    pub h2_max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub endpoints: Option<Vec<String>>,
    /// The built-in demo upstream, labelled: `demo: v1`.
    pub demo: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub lb: LbPolicy,
    #[serde(default)]
    pub timeouts: ClusterTimeouts,
    #[serde(default)]
    pub pool: PoolSettings,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTimeouts {
    pub connect: Option<HumanDuration>,
    pub response: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    pub max_idle: Option<usize>,
    pub idle_timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// `builtin:NAME` or a path to a `.wasm` file (relative to the manifest's folder).
    pub module: String,
    /// Optional pin: the module's sha256 in hex.
    pub sha256: Option<String>,
    /// Handed to `on_configure` as JSON.
    pub config: Option<serde_json::Value>,
    /// Handed to `on_vm_start` as JSON.
    pub vm_config: Option<serde_json::Value>,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    #[serde(default)]
    pub limits: FilterLimits,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    #[default]
    FailClosed,
    FailOpen,
    Reload,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterLimits {
    pub memory: Option<HumanSize>,
    pub callback_deadline: Option<HumanDuration>,
}
