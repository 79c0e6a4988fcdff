//! `xds:`: the control plane Weir follows (one ADS server), the node it says it is, the protocol
//! variant and how long start-up waits for a first configuration.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::ClusterTlsConfig;
use super::check::{Errors, positive};
use super::raw::{self, XdsMode};
use super::tls::cluster_tls;
use super::units::ser_duration;

/// Envoy's default `initial_fetch_timeout`.
pub const DEFAULT_XDS_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize)]
pub struct XdsConfig {
    /// The ADS server's `host:port`.
    pub server: String,
    pub tls: Option<ClusterTlsConfig>,
    pub node: XdsNodeConfig,
    pub mode: XdsMode,
    #[serde(serialize_with = "ser_duration")]
    pub initial_fetch_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct XdsNodeConfig {
    pub id: String,
    pub cluster: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub zone: Option<String>,
}

pub(super) fn xds(x: raw::Xds, base_dir: &Path, errs: &mut Errors) -> XdsConfig {
    let server = x.server.address.trim().to_owned();
    match server.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        _ => errs.push(
            "xds.server.address",
            format!("`{server}` is not a host:port address"),
        ),
    }
    if x.node.id.trim().is_empty() {
        errs.push("xds.node.id", "must not be empty");
    }
    XdsConfig {
        server,
        tls: x
            .server
            .tls
            .map(|t| cluster_tls(t, base_dir, "xds.server.tls", errs)),
        node: XdsNodeConfig {
            id: x.node.id,
            cluster: x.node.cluster.unwrap_or_default(),
            metadata: x.node.metadata.unwrap_or_default(),
            zone: x.node.zone,
        },
        mode: x.mode.unwrap_or_default(),
        initial_fetch_timeout: positive(
            x.initial_fetch_timeout.map(|d| d.0),
            DEFAULT_XDS_INITIAL_FETCH_TIMEOUT,
            "xds.initial_fetch_timeout",
            errs,
        ),
    }
}
