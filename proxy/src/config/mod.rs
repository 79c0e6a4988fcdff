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

pub use raw::{ClientAuth, FailurePolicy, ForwardClientCert, HealthCheckKind, LbPolicy, Protocol};
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
// Resilience defaults: Envoy's where Envoy has one (breakers, outlier detection, priorities,
// backoff), Istio's retry count, Linkerd's retry budget and peak-EWMA constants.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_MAX_BODY: u64 = 64 * 1024;
pub const DEFAULT_RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
pub const DEFAULT_RETRY_BUDGET_PERCENT: f64 = 20.0;
pub const DEFAULT_RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;
pub const DEFAULT_RETRY_BUDGET_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_BREAKER_LIMIT: u32 = 1024;
pub const DEFAULT_OUTLIER_CONSECUTIVE_5XX: u32 = 5;
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(30);
pub const DEFAULT_OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
pub const DEFAULT_OUTLIER_MAX_EJECTION_PERCENT: u32 = 10;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTH_UNHEALTHY_THRESHOLD: u32 = 3;
pub const DEFAULT_HEALTH_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_OVERPROVISIONING_FACTOR: f64 = 1.4;
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);
pub const DEFAULT_EWMA_RTT: Duration = Duration::from_millis(30);

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
    /// Bounds each attempt from its start (connect included) to its response head.
    #[serde(serialize_with = "ser_opt_duration")]
    pub per_try_timeout: Option<Duration>,
    /// Bounds the whole exchange (every attempt and backoff) up to the response head.
    #[serde(serialize_with = "ser_opt_duration")]
    pub request_timeout: Option<Duration>,
    /// A response body that stalls this long is aborted.
    #[serde(serialize_with = "ser_opt_duration")]
    pub idle_timeout: Option<Duration>,
    pub pool_max_idle: usize,
    #[serde(serialize_with = "ser_duration")]
    pub pool_idle_timeout: Duration,
    pub tls: Option<ClusterTlsConfig>,
    pub retries: Option<RetryPolicy>,
    pub circuit_breaker: CircuitBreakerConfig,
    pub outlier: Option<OutlierConfig>,
    pub health_check: Option<HealthCheckConfig>,
    pub failover: FailoverConfig,
    pub ewma: EwmaConfig,
}

impl ClusterConfig {
    /// Weight and priority of the `i`-th endpoint (a demo upstream has weight 1, priority 0).
    pub fn endpoint_meta(&self, i: usize) -> (u32, u32) {
        match &self.endpoints {
            Endpoints::Static(eps) => eps.get(i).map_or((1, 0), |e| (e.weight, e.priority)),
            Endpoints::Demo(_) => (1, 0),
        }
    }
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoints {
    Static(Vec<EndpointConfig>),
    /// The built-in demo upstream with this label; started by the proxy on 127.0.0.1:0.
    Demo(String),
}

/// One static endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EndpointConfig {
    pub address: SocketAddr,
    /// Relative share of its priority level's traffic.
    pub weight: u32,
    /// 0 is served first; higher levels take the load that unhealthy lower levels cannot.
    pub priority: u32,
}

/// When and how a request is tried again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub on: RetryOn,
    pub non_idempotent: bool,
    pub max_body: u64,
    #[serde(serialize_with = "ser_duration")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub backoff_max: Duration,
    pub budget: RetryBudgetConfig,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            on: RetryOn::default(),
            non_idempotent: false,
            max_body: DEFAULT_RETRY_MAX_BODY,
            backoff_base: DEFAULT_RETRY_BACKOFF_BASE,
            backoff_max: DEFAULT_RETRY_BACKOFF_MAX,
            budget: RetryBudgetConfig::default(),
        }
    }
}

/// The conditions a retry is made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection could not be made (refused, unreachable, timeout, TLS).
    pub connect_failure: bool,
    /// An HTTP/2 upstream refused the stream (REFUSED_STREAM): it never processed it.
    pub refused_stream: bool,
    /// No response head: the connection was reset or closed, or an attempt timed out.
    pub reset: bool,
    /// Any 5xx answer, and every local failure (Envoy's `5xx`).
    pub server_error: bool,
    /// 502, 503 and 504 answers, and every local failure.
    pub gateway_error: bool,
    /// These exact statuses.
    pub statuses: Vec<u16>,
}

impl Default for RetryOn {
    fn default() -> Self {
        Self {
            connect_failure: true,
            refused_stream: true,
            reset: true,
            server_error: false,
            gateway_error: false,
            statuses: Vec::new(),
        }
    }
}

impl RetryOn {
    /// The condition names, as the manifest writes them.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            (self.connect_failure, "connect_failure"),
            (self.refused_stream, "refused_stream"),
            (self.reset, "reset"),
            (self.server_error, "5xx"),
            (self.gateway_error, "gateway_error"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| (*n).to_owned())
        .collect();
        v.extend(self.statuses.iter().map(u16::to_string));
        v
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

/// Retries ≤ `percent`% of requests + `min_per_second` × `ttl`, over a sliding `ttl` window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryBudgetConfig {
    pub percent: f64,
    pub min_per_second: u32,
    #[serde(serialize_with = "ser_duration")]
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: DEFAULT_RETRY_BUDGET_PERCENT,
            min_per_second: DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
            ttl: DEFAULT_RETRY_BUDGET_TTL,
        }
    }
}

/// Cluster-wide limits (summed over workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreakerConfig {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_BREAKER_LIMIT,
            max_pending: DEFAULT_BREAKER_LIMIT,
            max_requests: DEFAULT_BREAKER_LIMIT,
            max_retries: DEFAULT_BREAKER_LIMIT,
        }
    }
}

/// Passive outlier detection. A threshold of 0 is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_connect_failures: u32,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub base_ejection: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// Active health checking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    /// The HTTP probe's path (empty for a TCP check).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub host: Option<String>,
}

/// Priority failover (Envoy's overprovisioning factor and panic threshold).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FailoverConfig {
    pub overprovisioning_factor: f64,
    /// Percent of available endpoints below which a level ignores health (0: never).
    pub panic_threshold: u32,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
        }
    }
}

/// Peak-EWMA latency tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EwmaConfig {
    #[serde(serialize_with = "ser_duration")]
    pub decay: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub default_rtt: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            decay: DEFAULT_EWMA_DECAY,
            default_rtt: DEFAULT_EWMA_RTT,
        }
    }
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

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
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
    fn resilience_sections_take_defaults() {
        let c = parse(
            concat!(
                "listeners:\n  - {name: a, address: 127.0.0.1:0, default_cluster: c}\n",
                "clusters:\n",
                "  c:\n",
                "    endpoints: [127.0.0.1:1, {address: 127.0.0.1:2, weight: 3, priority: 1}]\n",
                "    lb: p2c_ewma\n",
                "    timeouts: {per_try: 200ms, request: 2s, idle: 30s}\n",
                "    retries: {on: [reset, 503, \"429\", gateway_error]}\n",
                "    circuit_breaker: {max_requests: 5}\n",
                "    outlier: {consecutive_5xx: 3}\n",
                "    health_check: {path: /healthz}\n",
            ),
            "t",
            Path::new("."),
        )
        .unwrap();
        let k = &c.clusters[0];
        assert_eq!(k.lb, LbPolicy::P2cEwma);
        assert_eq!(k.endpoint_meta(0), (1, 0));
        assert_eq!(k.endpoint_meta(1), (3, 1));
        assert_eq!(k.per_try_timeout, Some(Duration::from_millis(200)));
        assert_eq!(k.request_timeout, Some(Duration::from_secs(2)));
        assert_eq!(k.idle_timeout, Some(Duration::from_secs(30)));
        let r = k.retries.as_ref().unwrap();
        assert_eq!(r.attempts, DEFAULT_RETRY_ATTEMPTS);
        assert_eq!(r.on.names(), ["reset", "gateway_error", "503", "429"]);
        assert_eq!(r.budget, RetryBudgetConfig::default());
        assert_eq!(r.max_body, DEFAULT_RETRY_MAX_BODY);
        assert_eq!(k.circuit_breaker.max_requests, 5);
        assert_eq!(k.circuit_breaker.max_connections, DEFAULT_BREAKER_LIMIT);
        let o = k.outlier.unwrap();
        assert_eq!(o.consecutive_5xx, 3);
        assert_eq!(o.max_ejection_percent, DEFAULT_OUTLIER_MAX_EJECTION_PERCENT);
        let h = k.health_check.as_ref().unwrap();
        assert_eq!(h.interval, DEFAULT_HEALTH_INTERVAL);
        assert_eq!(h.unhealthy_threshold, DEFAULT_HEALTH_UNHEALTHY_THRESHOLD);
        assert_eq!(k.failover, FailoverConfig::default());
        // A cluster without the sections: no retries, no outlier detection, no health checks,
        // default breakers.
        let plain = parse(
            "listeners:\n  - {name: a, address: 127.0.0.1:0, default_cluster: c}\nclusters:\n  c: {endpoints: [127.0.0.1:1]}\n",
            "t",
            Path::new("."),
        )
        .unwrap();
        let k = &plain.clusters[0];
        assert!(k.retries.is_none() && k.outlier.is_none() && k.health_check.is_none());
        assert_eq!(k.circuit_breaker, CircuitBreakerConfig::default());
        // The dump names the retry conditions as the manifest does.
        let dump = serde_json::to_string(&c.clusters[0]).unwrap();
        assert!(
            dump.contains(r#""on":["reset","gateway_error","503","429"]"#),
            "{dump}"
        );
    }

    #[test]
    fn a_health_check_is_http_with_a_path_or_tcp_without_one() {
        let cluster = |hc: &str| {
            format!(
                "listeners:\n  - {{name: a, address: 127.0.0.1:0, default_cluster: c}}\nclusters:\n  c:\n    endpoints: [127.0.0.1:2]\n    health_check: {hc}\n"
            )
        };
        let c = parse(&cluster("{kind: tcp, interval: 1s}"), "t", Path::new(".")).unwrap();
        let h = c.clusters[0].health_check.as_ref().unwrap();
        assert_eq!((h.kind, h.path.as_str()), (HealthCheckKind::Tcp, ""));
        let c = parse(&cluster("{path: /healthz}"), "t", Path::new(".")).unwrap();
        let h = c.clusters[0].health_check.as_ref().unwrap();
        assert_eq!(
            (h.kind, h.path.as_str()),
            (HealthCheckKind::Http, "/healthz")
        );
        for (hc, want) in [
            (
                "{interval: 1s}",
                "clusters.c.health_check.path: an HTTP health check needs a path",
            ),
            (
                "{kind: tcp, path: /x}",
                "clusters.c.health_check.path: a tcp health check sends no request",
            ),
            (
                "{kind: tcp, host: a}",
                "clusters.c.health_check.host: a tcp health check sends no request",
            ),
            ("{kind: udp}", "clusters.c.health_check.kind"),
        ] {
            let joined = errs(&cluster(hc)).join("\n");
            assert!(joined.contains(want), "{hc}: missing {want} in:\n{joined}");
        }
    }

    #[test]
    fn resilience_sections_are_checked_field_by_field() {
        let e = errs(concat!(
            "listeners:\n  - {name: a, address: 127.0.0.1:0, default_cluster: c}\n",
            "clusters:\n",
            "  c:\n",
            "    endpoints: [{address: 127.0.0.1:2, weight: 0, priority: 500}]\n",
            "    timeouts: {per_try: 0s}\n",
            "    retries: {attempts: 99, on: [sometimes, 999], budget: {percent: 150, ttl: 2m}, backoff: {base: 100ms, max: 10ms}}\n",
            "    circuit_breaker: {max_pending: 0}\n",
            "    outlier: {consecutive_5xx: 0, max_ejection_percent: 101}\n",
            "    health_check: {path: healthz, unhealthy_threshold: 0}\n",
            "    failover: {overprovisioning_factor: 0.5, panic_threshold: 120}\n",
        ));
        let joined = e.join("\n");
        for want in [
            "clusters.c.endpoints[0].weight",
            "clusters.c.endpoints[0].priority",
            "clusters.c.timeouts.per_try",
            "clusters.c.retries.attempts",
            "clusters.c.retries.on[0]: `sometimes`",
            "clusters.c.retries.on[1]: `999`",
            "clusters.c.retries.budget.percent",
            "clusters.c.retries.budget.ttl",
            "clusters.c.retries.backoff.max",
            "clusters.c.circuit_breaker.max_pending",
            "clusters.c.outlier: every threshold is 0",
            "clusters.c.outlier.max_ejection_percent",
            "clusters.c.health_check.path",
            "clusters.c.health_check.unhealthy_threshold",
            "clusters.c.failover.overprovisioning_factor",
            "clusters.c.failover.panic_threshold",
        ] {
            assert!(joined.contains(want), "missing {want} in:\n{joined}");
        }
        // A typo inside an endpoint map is named precisely.
        let e = errs(
            "listeners:\n  - {name: a, address: 127.0.0.1:0, default_cluster: c}\nclusters:\n  c: {endpoints: [{address: 127.0.0.1:2, wieght: 2}]}\n",
        );
        assert!(e[0].contains("clusters.c.endpoints[0]"), "{e:?}");
        assert!(e[0].contains("unknown field `wieght`"), "{e:?}");
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
