//! Configuration: the YAML manifest (`raw`), human units (`units`) and the validated runtime types
//! the rest of the proxy uses. Parsing never panics; every problem comes back as a
//! [`ConfigError`] listing each field path and what is wrong with it.
//!
//! One file per area of the manifest holds that area's runtime types, their defaults, and the
//! raw → validated step beside them: `listener.rs`, `cluster.rs`, `resilience.rs` (a cluster's
//! retries, breakers, outlier detection, health checks, failover), `tls.rs` (both directions),
//! `filter.rs` (filters and chains) and `telemetry.rs`; `check.rs` has the checks they share.
//! This file holds the top level ([`Config`], `admin:`), the entry points ([`parse`],
//! [`load_file`], [`read_manifest`], [`validate`]) and re-exports every area's types, so the
//! rest of the proxy names them `crate::config::X`. `raw.rs` stays one file: it is the manifest
//! as an operator writes it, read top to bottom beside the README.

mod check;
mod cluster;
mod dynamic;
mod filter;
mod listener;
pub mod raw;
mod resilience;
mod telemetry;
mod tls;
pub mod units;
mod xds;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use check::{Errors, Source, positive, socket_addr};
use units::ser_duration;

pub use cluster::{
    ClusterConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DNS_REFRESH, DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_POOL_MAX_IDLE, DEFAULT_RESPONSE_TIMEOUT, DnsEndpoints, DnsHost, EndpointConfig,
    EndpointHealth, Endpoints, MAX_PRIORITY, MAX_WEIGHT,
};
pub use dynamic::{Dynamic, DynamicParts, dynamic, merge, strip};
pub use filter::{
    ChainConfig, DEFAULT_FILTER_CALLBACK_DEADLINE, DEFAULT_FILTER_MEMORY, FilterConfig, ModuleRef,
};
pub use listener::{
    DEFAULT_H2_MAX_CONCURRENT_STREAMS, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST_HEADERS, DEFAULT_MAX_REQUEST_HEADERS_SIZE,
    DEFAULT_MAX_URI_LENGTH, ListenerConfig, ListenerLimits,
};
pub use raw::XdsMode;
pub use raw::{ClientAuth, FailurePolicy, ForwardClientCert, HealthCheckKind, LbPolicy, Protocol};
pub use resilience::{
    CircuitBreakerConfig, DEFAULT_BREAKER_LIMIT, DEFAULT_EWMA_DECAY, DEFAULT_EWMA_RTT,
    DEFAULT_HEALTH_HEALTHY_THRESHOLD, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_HEALTH_UNHEALTHY_THRESHOLD, DEFAULT_OUTLIER_BASE_EJECTION,
    DEFAULT_OUTLIER_CONSECUTIVE_5XX, DEFAULT_OUTLIER_INTERVAL, DEFAULT_OUTLIER_MAX_EJECTION,
    DEFAULT_OUTLIER_MAX_EJECTION_PERCENT, DEFAULT_OVERPROVISIONING_FACTOR, DEFAULT_PANIC_THRESHOLD,
    DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_BACKOFF_BASE, DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_RETRY_BUDGET_MIN_PER_SECOND, DEFAULT_RETRY_BUDGET_PERCENT, DEFAULT_RETRY_BUDGET_TTL,
    DEFAULT_RETRY_MAX_BODY, EwmaConfig, FailoverConfig, HealthCheckConfig, OutlierConfig,
    RetryBudgetConfig, RetryOn, RetryPolicy,
};
pub use telemetry::{
    AccessLogConfig, AccessLogField, AccessLogPath, DEFAULT_ACCESS_LOG_FLUSH_INTERVAL,
    DEFAULT_TRACE_BATCH_DELAY, DEFAULT_TRACE_EXPORT_TIMEOUT, DEFAULT_TRACE_MAX_BATCH,
    DEFAULT_TRACE_MAX_QUEUE, DEFAULT_TRACE_SAMPLE_RATIO, DEFAULT_TRACE_SERVICE_NAME,
    TelemetryConfig, TracingConfig,
};
pub use tls::{
    ClusterTlsConfig, DEFAULT_TLS_HANDSHAKE_TIMEOUT, DEFAULT_TLS_WATCH_INTERVAL, ExpectedIdentity,
    ListenerTlsConfig,
};
pub use xds::{DEFAULT_XDS_INITIAL_FETCH_TIMEOUT, XdsConfig, XdsNodeConfig};

/// The manifest `weir run` uses when no `--config` is given: a working proxy in front of the
/// built-in demo upstream.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.yaml");

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Worker threads; `None` = one per available core.
    pub workers: Option<usize>,
    #[serde(serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub tls_watch_interval: Duration,
    pub admin: Option<AdminConfig>,
    pub listeners: Vec<ListenerConfig>,
    /// Shared so that a change to one cluster copies only that one.
    pub clusters: Vec<std::sync::Arc<ClusterConfig>>,
    pub chains: Vec<ChainConfig>,
    pub filters: Vec<FilterConfig>,
    pub telemetry: TelemetryConfig,
    pub dns: DnsConfig,
    /// The control plane weir follows, if any (restart-only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xds: Option<XdsConfig>,
}

/// `dns:`: how DNS-discovered clusters resolve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsConfig {
    /// Nameservers; empty: the system's (`/etc/resolv.conf`, `/etc/hosts`).
    pub resolvers: Vec<SocketAddr>,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
}

pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            resolvers: Vec::new(),
            timeout: DEFAULT_DNS_TIMEOUT,
        }
    }
}

impl Config {
    /// The index of a cluster by name.
    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| c.name == name)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// The bearer token for mutations is read from here at each mutation (so it can rotate).
    pub token_file: Option<PathBuf>,
}

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where: `listeners[0].address`, `clusters.web.timeouts.connect`, … (empty = whole document).
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a manifest.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid manifest {}:", self.source_name)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(source_name: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source_name: source_name.to_owned(),
            errors: vec![FieldError {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

/// Parses and validates manifest text. `base_dir` resolves relative module paths.
pub fn parse(text: &str, source_name: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let manifest: raw::Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        // serde_yaml_ng appends " at line L column C"; keep it, it is what an operator needs.
        if let Some(loc) = inner.location()
            && !message.contains("line")
        {
            message = format!("{message} (line {}, column {})", loc.line(), loc.column());
        }
        let path = if path == "." { String::new() } else { path };
        // serde_yaml_ng already prefixes some messages with the path; say it once.
        let message = message
            .strip_prefix(&format!("{path}: "))
            .map(str::to_owned)
            .unwrap_or(message);
        ConfigError::one(source_name, path, message)
    })?;
    validate(manifest, base_dir).map_err(|errors| ConfigError {
        source_name: source_name.to_owned(),
        errors,
    })
}

/// Validates a parsed manifest. `base_dir` resolves relative paths. Collects every problem rather
/// than stopping at the first, so `weir check` shows an operator the whole list at once.
pub fn validate(m: raw::Manifest, base_dir: &Path) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());

    if m.workers == Some(0) {
        errs.push("workers", "must be at least 1");
    }
    if m.workers.is_some_and(|w| w > 1024) {
        errs.push("workers", "must be at most 1024");
    }

    let admin = m.admin.map(|a| AdminConfig {
        address: socket_addr(&a.address, "admin.address", &mut errs),
        token_file: a.token_file.map(|f| {
            let path = base_dir.join(f);
            if !path.is_file() {
                errs.push(
                    "admin.token_file",
                    format!("no token file at {}", path.display()),
                );
            }
            path
        }),
    });

    // Clusters first: listeners refer to them.
    let clusters: Vec<std::sync::Arc<ClusterConfig>> =
        cluster::clusters(m.clusters, base_dir, Source::Manifest, &mut errs)
            .into_iter()
            .map(std::sync::Arc::new)
            .collect();
    // Filters, then the chains that name them.
    let filters = filter::filters(m.filters, base_dir, Source::Manifest, &mut errs);
    let chains = filter::chains(m.chains, &[&filters], Source::Manifest, &mut errs);
    // Under a control plane the listeners may all come from it.
    if m.listeners.is_empty() && m.xds.is_none() {
        errs.push(
            "listeners",
            "at least one listener is needed (or an `xds:` control plane that sends them)",
        );
    }
    let listeners = listener::listeners(
        m.listeners,
        &[&clusters],
        &[&chains],
        base_dir,
        Source::Manifest,
        &mut errs,
    );
    let xds = m.xds.map(|x| xds::xds(x, base_dir, &mut errs));

    let drain_timeout = positive(
        m.drain_timeout.map(|d| d.0),
        DEFAULT_DRAIN_TIMEOUT,
        "drain_timeout",
        &mut errs,
    );

    let tls_watch_interval = positive(
        m.tls_watch_interval.map(|d| d.0),
        DEFAULT_TLS_WATCH_INTERVAL,
        "tls_watch_interval",
        &mut errs,
    );

    let telemetry = m
        .telemetry
        .map(|t| telemetry::telemetry(t, base_dir, &mut errs))
        .unwrap_or_default();

    let dns = m.dns.unwrap_or_default();
    let dns = DnsConfig {
        resolvers: dns
            .resolvers
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, r)| socket_addr(r, &format!("dns.resolvers[{i}]"), &mut errs))
            .collect(),
        timeout: positive(
            dns.timeout.map(|d| d.0),
            DEFAULT_DNS_TIMEOUT,
            "dns.timeout",
            &mut errs,
        ),
    };

    let mut config = Config {
        workers: m.workers,
        drain_timeout,
        tls_watch_interval,
        admin,
        listeners,
        clusters,
        chains,
        filters,
        telemetry,
        dns,
        xds,
    };
    dynamic::resolve_default_clusters(&mut config, &mut Errors(Vec::new()));
    if errs.0.is_empty() {
        Ok(config)
    } else {
        Err(errs.0)
    }
}

/// The manifest file weir runs, and the [`digest`] of the text its running config came from.
#[derive(Debug, Clone)]
pub struct ManifestFile {
    pub path: PathBuf,
    pub digest: u64,
}

/// Reads, parses and validates a manifest file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    parse_file(&read_file(path)?, path)
}

/// Reads the manifest file at `path` once: the [`digest`] of its text, and that text parsed and
/// validated. `--watch` compares the file with the digest, so "what the running config came
/// from" is exactly the text that was parsed (a refused text has a digest too). Only an
/// unreadable file is the outer error.
pub fn read_manifest(path: &Path) -> Result<(u64, Result<Config, ConfigError>), ConfigError> {
    let text = read_file(path)?;
    Ok((digest(text.as_bytes()), parse_file(&text, path)))
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(&path.display().to_string(), "", format!("cannot read: {e}")))
}

/// Parses and validates `text`, read from the manifest file at `path` (errors name the file;
/// relative paths in it resolve from its folder).
fn parse_file(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    parse(text, &path.display().to_string(), base)
}

/// A fingerprint of manifest bytes, to tell "changed" from "the same" (not a security hash).
pub fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The embedded default manifest, validated.
pub fn embedded_default() -> Config {
    parse(EMBEDDED_DEFAULT, "<embedded default>", Path::new("."))
        .expect("the embedded default manifest is valid (covered by a unit test)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use check::errs;

    #[test]
    fn embedded_default_is_valid() {
        let c = embedded_default();
        assert!(!c.listeners.is_empty());
        assert!(c.admin.is_some());
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let e = errs(
            "listeners:\n  - name: a\n    adress: 127.0.0.1:0\n    default_cluster: c\nclusters:\n  c: {endpoints: [127.0.0.1:1]}\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("listeners[0]"), "{e:?}");
        assert!(e[0].contains("unknown field `adress`"), "{e:?}");
        assert!(e[0].contains("line 3"), "{e:?}");
    }

    #[test]
    fn all_semantic_errors_are_reported() {
        let e = errs(concat!(
            "listeners:\n",
            "  - {name: a, address: nope, default_cluster: missing, chain: nochain}\n",
            "  - {name: a, address: 127.0.0.1:0, default_cluster: c}\n",
            "clusters:\n",
            "  c: {endpoints: []}\n",
            "  d: {endpoints: [127.0.0.1:1], demo: v1, timeouts: {connect: 0s}}\n",
            "chains:\n  x: [nofilter]\n",
            "filters:\n  f: {module: builtin:router, sha256: abc}\n",
        ));
        let joined = e.join("\n");
        for want in [
            "listeners[0].address",
            "listeners[0].default_cluster",
            "listeners[0].chain",
            "listeners[1].name",
            "clusters.c.endpoints",
            "clusters.d",
            "clusters.d.timeouts.connect",
            "chains.x[0]",
            "filters.f.sha256",
        ] {
            assert!(joined.contains(want), "missing {want} in:\n{joined}");
        }
    }

    #[test]
    fn units_and_defaults() {
        let c = parse(
            "workers: 3\nlisteners:\n  - name: a\n    address: 127.0.0.1:0\n    default_cluster: c\n    limits: {max_request_headers_size: 8KiB, header_read_timeout: 500ms}\nclusters:\n  c: {endpoints: [127.0.0.1:1], protocol: http2, lb: least_request}\n",
            "t",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.workers, Some(3));
        let l = &c.listeners[0];
        assert_eq!(l.limits.max_request_headers_size, 8192);
        assert_eq!(l.limits.header_read_timeout, Duration::from_millis(500));
        assert_eq!(l.limits.max_request_headers, DEFAULT_MAX_REQUEST_HEADERS);
        assert_eq!(c.clusters[0].protocol, Protocol::Http2);
        assert_eq!(c.clusters[0].lb, LbPolicy::LeastRequest);
        assert_eq!(c.clusters[0].connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }
}
