//! Configuration: the YAML manifest (`raw`), human units (`units`) and the validated runtime types
//! the rest of the proxy uses (this module). Parsing never panics; every problem comes back as a
//! [`ConfigError`] listing each field path and what is wrong with it.

pub mod raw;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use raw::{ClientAuth, FailurePolicy, ForwardClientCert, LbPolicy, Protocol};
pub use validate::validate;

/// The manifest `weir run` uses when no `--config` is given: a working proxy in front of the
/// built-in demo upstream.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.yaml");

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_REQUEST_HEADERS_SIZE: u64 = 60 * 1024;
pub const DEFAULT_MAX_REQUEST_HEADERS: usize = 100;
pub const DEFAULT_MAX_URI_LENGTH: u64 = 16 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_POOL_MAX_IDLE: usize = 128;
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_FILTER_MEMORY: u64 = 64 << 20;
pub const DEFAULT_FILTER_CALLBACK_DEADLINE: Duration = Duration::from_millis(10);
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_TLS_WATCH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_TRACE_SAMPLE_RATIO: f64 = 1.0;
pub const DEFAULT_TRACE_SERVICE_NAME: &str = "weir";
/// OpenTelemetry's batch span processor defaults (`OTEL_BSP_*`).
pub const DEFAULT_TRACE_BATCH_DELAY: Duration = Duration::from_secs(5);
pub const DEFAULT_TRACE_MAX_BATCH: usize = 512;
pub const DEFAULT_TRACE_MAX_QUEUE: usize = 2048;
pub const DEFAULT_TRACE_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's access-log file flush interval.
pub const DEFAULT_ACCESS_LOG_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

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
    pub clusters: Vec<ClusterConfig>,
    pub chains: Vec<ChainConfig>,
    pub filters: Vec<FilterConfig>,
    pub telemetry: TelemetryConfig,
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

#[derive(Debug, Clone, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// Index into [`Config::clusters`].
    #[serde(skip)]
    pub default_cluster: usize,
    #[serde(rename = "default_cluster")]
    pub default_cluster_name: String,
    pub chain: Option<String>,
    pub limits: ListenerLimits,
    pub tls: Option<ListenerTlsConfig>,
}

/// Downstream TLS of one listener. Paths are absolute (resolved against the manifest's folder).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// Empty: any trust domain (the chain is still verified).
    pub trust_domains: Vec<String>,
    pub alpn: Vec<String>,
    /// Only TLS 1.3 (otherwise 1.2 and 1.3).
    pub tls13_only: bool,
    #[serde(serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,
    pub forward_client_cert: ForwardClientCert,
}

/// Upstream TLS of one cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterTlsConfig {
    pub ca: PathBuf,
    /// Client certificate chain and key, for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub sni: Option<String>,
    pub expect: ExpectedIdentity,
}

/// Who the upstream must prove to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedIdentity {
    /// This exact SPIFFE ID as a URI SAN.
    Spiffe(String),
    /// Any SPIFFE ID of this trust domain.
    TrustDomain(String),
    /// A certificate valid for this DNS name.
    Dns(String),
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

#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    pub name: String,
    /// Position in [`Config::clusters`] (metric slots are found by it).
    #[serde(skip)]
    pub index: usize,
    pub endpoints: Endpoints,
    pub protocol: Protocol,
    pub lb: LbPolicy,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub response_timeout: Duration,
    pub pool_max_idle: usize,
    #[serde(serialize_with = "ser_duration")]
    pub pool_idle_timeout: Duration,
    pub tls: Option<ClusterTlsConfig>,
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoints {
    Static(Vec<SocketAddr>),
    /// The built-in demo upstream with this label; started by the proxy on 127.0.0.1:0.
    Demo(String),
}

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

/// Traces and the access log (both off unless configured). Metrics need no configuration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TelemetryConfig {
    pub tracing: Option<TracingConfig>,
    pub access_log: Option<AccessLogConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TracingConfig {
    /// The OTLP/HTTP traces URL (`http://…/v1/traces`).
    pub collector: String,
    pub sample_ratio: f64,
    pub service_name: String,
    #[serde(serialize_with = "ser_duration")]
    pub batch_delay: Duration,
    pub max_batch: usize,
    pub max_queue: usize,
    #[serde(serialize_with = "ser_duration")]
    pub export_timeout: Duration,
    /// Header names only: values may be credentials and `/config_dump` shows this.
    #[serde(serialize_with = "ser_header_names")]
    pub headers: Vec<(String, String)>,
}

fn ser_header_names<S: serde::Serializer>(h: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|(k, _)| k))
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessLogConfig {
    pub path: AccessLogPath,
    pub fields: Vec<AccessLogField>,
    #[serde(serialize_with = "ser_duration")]
    pub flush_interval: Duration,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogPath {
    Stdout,
    /// Appended to (absolute).
    File(PathBuf),
}

macro_rules! access_log_fields {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// One field of an access-log line (named like the JSON key it writes).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum AccessLogField { $($variant),* }

        impl AccessLogField {
            /// Every field, in the default order.
            pub const ALL: &'static [AccessLogField] = &[$(AccessLogField::$variant),*];

            /// The JSON key (and manifest name).
            pub fn name(self) -> &'static str {
                match self { $(AccessLogField::$variant => $name),* }
            }

            /// The field called `name`.
            pub fn parse(name: &str) -> Option<Self> {
                match name { $($name => Some(AccessLogField::$variant),)* _ => None }
            }
        }
    };
}

access_log_fields! {
    StartTime => "start_time",
    Method => "method",
    Path => "path",
    Protocol => "protocol",
    Authority => "authority",
    UserAgent => "user_agent",
    RequestId => "request_id",
    Status => "status",
    ResponseFlags => "response_flags",
    BytesReceived => "bytes_received",
    BytesSent => "bytes_sent",
    DurationMs => "duration_ms",
    UpstreamServiceTimeMs => "upstream_service_time_ms",
    UpstreamHost => "upstream_host",
    UpstreamCluster => "upstream_cluster",
    Route => "route",
    Listener => "listener",
    DownstreamRemoteAddress => "downstream_remote_address",
    PeerIdentity => "peer_identity",
    TraceId => "trace_id",
    Error => "error",
}

impl Serialize for AccessLogField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
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

/// Reads, parses and validates a manifest file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(&name, "", format!("cannot read: {e}")))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    parse(&text, &name, base)
}

/// The embedded default manifest, validated.
pub fn embedded_default() -> Config {
    parse(EMBEDDED_DEFAULT, "<embedded default>", Path::new("."))
        .expect("the embedded default manifest is valid (covered by a unit test)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(yaml: &str) -> Vec<String> {
        match parse(yaml, "t", Path::new(".")) {
            Ok(_) => vec![],
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

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

    #[test]
    fn tls_sections_are_checked_field_by_field() {
        let e = errs(concat!(
            "listeners:\n",
            "  - name: a\n    address: 127.0.0.1:0\n    default_cluster: c\n",
            "    tls: {cert: nope.pem, key: nope-key.pem, client_auth: required, trust_domains: [Bad!], alpn: [spdy], min_version: \"1.1\", handshake_timeout: 0s}\n",
            "clusters:\n",
            "  c: {endpoints: [127.0.0.1:1], tls: {ca: nope-ca.pem, cert: x.pem}}\n",
            "  d: {endpoints: [127.0.0.1:1], tls: {ca: nope-ca.pem, expect_identity: \"spiffe://example.org/a/../b\"}}\n",
        ));
        let joined = e.join("\n");
        for want in [
            "listeners[0].tls.cert: no file at",
            "listeners[0].tls.key: no file at",
            "listeners[0].tls.client_auth: verifying client certificates needs `client_ca`",
            "listeners[0].tls.trust_domains[0]",
            "listeners[0].tls.alpn[0]",
            "listeners[0].tls.min_version",
            "listeners[0].tls.handshake_timeout",
            "clusters.c.tls.ca: no file at",
            "clusters.c.tls.key: `cert` needs its `key`",
            "clusters.c.tls: needs `expect_identity`",
            "clusters.d.tls.expect_identity",
        ] {
            assert!(joined.contains(want), "missing {want} in:\n{joined}");
        }
    }

    #[test]
    fn tls_defaults_and_identities() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["c.pem", "k.pem", "ca.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let c = parse(
            concat!(
                "listeners:\n",
                "  - {name: a, address: 127.0.0.1:0, default_cluster: s, tls: {cert: c.pem, key: k.pem, client_ca: ca.pem}}\n",
                "  - {name: b, address: 127.0.0.1:0, default_cluster: s, tls: {cert: c.pem, key: k.pem}}\n",
                "clusters:\n",
                "  s: {endpoints: [127.0.0.1:1], tls: {ca: ca.pem, expect_identity: \"spiffe://example.org/ns/x/sa/y\"}}\n",
                "  t: {endpoints: [127.0.0.1:1], tls: {ca: ca.pem, expect_identity: \"spiffe://example.org\"}}\n",
                "  u: {endpoints: [127.0.0.1:1], tls: {ca: ca.pem, sni: svc.local}}\n",
            ),
            "t",
            dir.path(),
        )
        .unwrap();
        let a = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(
            a.client_auth,
            ClientAuth::Required,
            "a client_ca means mTLS"
        );
        assert_eq!(a.alpn, ["h2", "http/1.1"]);
        assert!(!a.tls13_only);
        assert_eq!(a.handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT);
        assert_eq!(a.cert, dir.path().join("c.pem"));
        let b = c.listeners[1].tls.as_ref().unwrap();
        assert_eq!(b.client_auth, ClientAuth::None);
        let expect = |i: usize| c.clusters[i].tls.as_ref().unwrap().expect.clone();
        assert_eq!(
            expect(0),
            ExpectedIdentity::Spiffe("spiffe://example.org/ns/x/sa/y".into())
        );
        assert_eq!(
            expect(1),
            ExpectedIdentity::TrustDomain("example.org".into())
        );
        assert_eq!(expect(2), ExpectedIdentity::Dns("svc.local".into()));
        assert_eq!(c.tls_watch_interval, DEFAULT_TLS_WATCH_INTERVAL);
    }
}
