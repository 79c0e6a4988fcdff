//! `listeners:`: where weir accepts connections, and each listener's limits. (Its `tls:` section
//! is in `tls.rs`.)

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::check::{Errors, Source, check_name_in, positive, socket_addr};
use super::tls::listener_tls;
use super::units::ser_duration;
use super::{ChainConfig, ClusterConfig, ListenerTlsConfig, raw};

pub const DEFAULT_MAX_REQUEST_HEADERS_SIZE: u64 = 60 * 1024;
pub const DEFAULT_MAX_REQUEST_HEADERS: usize = 100;
pub const DEFAULT_MAX_URI_LENGTH: u64 = 16 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;

#[derive(Debug, Clone, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// Index into [`Config::clusters`](super::Config::clusters); an xDS listener has none (its
    /// routes decide; a request they do not route gets a 404).
    #[serde(skip)]
    pub default_cluster: Option<usize>,
    #[serde(rename = "default_cluster", skip_serializing_if = "Option::is_none")]
    pub default_cluster_name: Option<String>,
    pub chain: Option<String>,
    pub limits: ListenerLimits,
    pub tls: Option<ListenerTlsConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerLimits {
    pub max_request_headers_size: u64,
    pub max_request_headers: usize,
    pub max_uri_length: u64,
    #[serde(serialize_with = "ser_duration")]
    pub header_read_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_request_headers_size: DEFAULT_MAX_REQUEST_HEADERS_SIZE,
            max_request_headers: DEFAULT_MAX_REQUEST_HEADERS,
            max_uri_length: DEFAULT_MAX_URI_LENGTH,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// The `listeners:` list; `clusters` and `chains` are the validated ones they may name (a
/// listener from xDS may name the manifest's as well as its own).
pub(super) fn listeners(
    list: Vec<raw::Listener>,
    clusters: &[&[std::sync::Arc<ClusterConfig>]],
    chains: &[&[ChainConfig]],
    base_dir: &Path,
    source: Source,
    errs: &mut Errors,
) -> Vec<ListenerConfig> {
    let mut names = BTreeSet::new();
    let mut listeners = Vec::with_capacity(list.len());
    for (i, l) in list.into_iter().enumerate() {
        // A control plane's listeners are named by name (their order is the client's).
        let p = match source {
            Source::Manifest => format!("listeners[{i}]"),
            Source::Xds => format!("listeners.{}", l.name),
        };
        check_name_in(&l.name, &format!("{p}.name"), source, errs);
        if !names.insert(l.name.clone()) {
            errs.push(
                format!("{p}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        let address = socket_addr(&l.address, &format!("{p}.address"), errs);
        let default_cluster = match &l.default_cluster {
            // The index is set when the manifest's and the control plane's parts are merged.
            Some(name)
                if clusters
                    .iter()
                    .any(|set| set.iter().any(|c| &c.name == name)) =>
            {
                None
            }
            Some(name) => {
                errs.push(
                    format!("{p}.default_cluster"),
                    format!("unknown cluster `{name}` (listener `{}` names it)", l.name),
                );
                None
            }
            None if source == Source::Manifest => {
                errs.push(format!("{p}.default_cluster"), "is required");
                None
            }
            None => None,
        };
        if let Some(ch) = &l.chain
            && !chains.iter().any(|set| set.iter().any(|c| &c.name == ch))
        {
            errs.push(format!("{p}.chain"), format!("unknown chain `{ch}`"));
        }
        let limits = listener_limits(&l.limits, &format!("{p}.limits"), errs);
        let tls = l
            .tls
            .map(|t| listener_tls(t, base_dir, &format!("{p}.tls"), errs));
        listeners.push(ListenerConfig {
            name: l.name,
            address,
            default_cluster,
            default_cluster_name: l.default_cluster,
            chain: l.chain,
            limits,
            tls,
        });
    }
    // Two listeners on one fixed address would fail to bind at start; say so now.
    let mut seen = BTreeSet::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.address.port() != 0 && !seen.insert(l.address) {
            errs.push(
                format!("listeners[{i}].address"),
                format!("{} is used twice", l.address),
            );
        }
    }
    listeners
}

fn listener_limits(r: &raw::ListenerLimits, p: &str, errs: &mut Errors) -> ListenerLimits {
    let d = ListenerLimits::default();
    let l = ListenerLimits {
        max_request_headers_size: r
            .max_request_headers_size
            .map_or(d.max_request_headers_size, |s| s.0),
        max_request_headers: r.max_request_headers.unwrap_or(d.max_request_headers),
        max_uri_length: r.max_uri_length.map_or(d.max_uri_length, |s| s.0),
        header_read_timeout: positive(
            r.header_read_timeout.map(|x| x.0),
            d.header_read_timeout,
            &format!("{p}.header_read_timeout"),
            errs,
        ),
        idle_timeout: positive(
            r.idle_timeout.map(|x| x.0),
            d.idle_timeout,
            &format!("{p}.idle_timeout"),
            errs,
        ),
        max_connections: r.max_connections.unwrap_or(d.max_connections),
        h2_max_concurrent_streams: r
            .h2_max_concurrent_streams
            .unwrap_or(d.h2_max_concurrent_streams),
    };
    // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
    if !(8 * 1024..=1024 * 1024).contains(&l.max_request_headers_size) {
        errs.push(
            format!("{p}.max_request_headers_size"),
            "must be between 8KiB and 1MiB",
        );
    }
    if l.max_request_headers == 0 || l.max_request_headers > 10_000 {
        errs.push(
            format!("{p}.max_request_headers"),
            "must be between 1 and 10000",
        );
    }
    if l.max_uri_length < 64 {
        errs.push(format!("{p}.max_uri_length"), "must be at least 64 bytes");
    }
    if l.max_connections == 0 {
        errs.push(format!("{p}.max_connections"), "must be at least 1");
    }
    if l.h2_max_concurrent_streams == 0 {
        errs.push(
            format!("{p}.h2_max_concurrent_streams"),
            "must be at least 1",
        );
    }
    l
}
