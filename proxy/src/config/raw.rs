//! The manifest exactly as written: serde types with unknown fields rejected. Nothing here is
//! trusted; `validate` turns it into runtime types and names the path of every problem.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::units::{HumanDuration, HumanSize};

/// Top level of a manifest (v1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub workers: Option<usize>,
    pub drain_timeout: Option<HumanDuration>,
    /// How often certificate, key and trust-bundle files are re-read for rotation.
    pub tls_watch_interval: Option<HumanDuration>,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    #[serde(default)]
    pub chains: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub filters: BTreeMap<String, Filter>,
    /// Traces and access logs (metrics are always on at the admin `/metrics`).
    pub telemetry: Option<Telemetry>,
    /// How clusters with `discovery: dns | logical_dns` resolve their hosts.
    pub dns: Option<Dns>,
    /// A control plane that streams listeners, routes, clusters and endpoints (xDS).
    pub xds: Option<Xds>,
}

/// `xds:` — Envoy's `dynamic_resources` (one ADS server) and `node`, in Weir's style.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Xds {
    pub server: XdsServer,
    pub node: XdsNode,
    /// `delta` (the default, Envoy's DeltaAggregatedResources) or `sotw` (state of the world).
    pub mode: Option<XdsMode>,
    /// How long start-up waits for the first complete configuration before `/ready` answers
    /// and warming clusters are used without their endpoints (Envoy: 15s).
    pub initial_fetch_timeout: Option<HumanDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsServer {
    /// `host:port` or `ip:port` of the ADS (gRPC) server.
    pub address: String,
    /// TLS or mutual TLS to the server (absent: plaintext HTTP/2).
    pub tls: Option<ClusterTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsNode {
    pub id: String,
    pub cluster: Option<String>,
    /// Sent to the control plane, and readable by filters as `xds.node.metadata.KEY`.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The node's locality zone (`node.locality.zone`).
    pub zone: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdsMode {
    #[default]
    Delta,
    Sotw,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Nameservers (`ip:port`); absent: the system's (`/etc/resolv.conf`, `/etc/hosts`).
    pub resolvers: Option<Vec<String>>,
    /// How long one resolution may take.
    pub timeout: Option<HumanDuration>,
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// The addresses listed (a `host:port` is resolved once, at load).
    #[default]
    Static,
    /// Every A/AAAA record of each host is an endpoint, re-resolved (Envoy's STRICT_DNS).
    Dns,
    /// One address of the first host at a time (Envoy's LOGICAL_DNS).
    LogicalDns,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// OpenTelemetry traces exported over OTLP/HTTP; absent: tracing is off.
    pub tracing: Option<Tracing>,
    /// One JSON line per request; absent: no access log.
    pub access_log: Option<AccessLog>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The collector's OTLP/HTTP address: `http://HOST:PORT` (then `/v1/traces`) or a full URL.
    pub collector: String,
    /// Share of new traces sampled, 0.0–1.0 (a trace continued from a `traceparent` keeps its
    /// caller's decision).
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    /// Longest a finished span waits before its batch is exported.
    pub batch_delay: Option<HumanDuration>,
    pub max_batch: Option<usize>,
    /// Spans waiting for export at most; past it new spans are dropped (and counted).
    pub max_queue: Option<usize>,
    pub export_timeout: Option<HumanDuration>,
    /// Extra HTTP headers on every export request (e.g. a collector's auth token).
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout` (the default) or a file path (appended to; relative to the manifest).
    pub path: Option<String>,
    /// The fields of each line, in order (default: all of them).
    pub fields: Option<Vec<String>>,
    /// How long a written line may wait in its worker's buffer.
    pub flush_interval: Option<HumanDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: String,
    /// File holding the bearer token that admin mutations must present (absent: mutations off).
    pub token_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: String,
    /// Where a request goes when no filter chose a cluster. Required in a manifest; a listener
    /// from xDS has none (its routes decide, and a request no route matches gets a 404).
    pub default_cluster: Option<String>,
    pub chain: Option<String>,
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Terminate TLS (and optionally verify client certificates) on this listener.
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// PEM trust bundle for client certificates.
    pub client_ca: Option<String>,
    pub client_auth: Option<ClientAuth>,
    /// A client certificate must carry a SPIFFE ID in one of these trust domains.
    pub trust_domains: Option<Vec<String>>,
    pub alpn: Option<Vec<String>>,
    pub min_version: Option<String>,
    pub handshake_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub forward_client_cert: ForwardClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

/// What happens to `x-forwarded-client-cert` (a client's value is always removed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardClientCert {
    /// Remove the client's value and set the core's from the verified peer certificate.
    #[default]
    SanitizeSet,
    /// Remove it and set nothing.
    Sanitize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// PEM trust bundle the upstream's certificate must chain to.
    pub ca: String,
    /// Client certificate chain and key (mutual TLS).
    pub cert: Option<String>,
    pub key: Option<String>,
    pub sni: Option<String>,
    /// `spiffe://TD/PATH`, `spiffe://TD` (any workload of TD) or a DNS name.
    pub expect_identity: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub endpoints: Option<Vec<Endpoint>>,
    #[serde(default)]
    pub discovery: Discovery,
    /// How often `dns`/`logical_dns` hosts are resolved again (sooner when a TTL runs out).
    pub dns_refresh: Option<HumanDuration>,
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
    /// Originate TLS (or mutual TLS) to the endpoints.
    pub tls: Option<ClusterTls>,
    pub retries: Option<Retries>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub outlier: Option<Outlier>,
    pub health_check: Option<HealthCheck>,
    pub failover: Option<Failover>,
    pub ewma: Option<Ewma>,
}

/// One endpoint: `ip:port` / `host:port`, or `{address, weight, priority}`.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Address(String),
    Detailed(EndpointSpec),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: String,
    pub weight: Option<u32>,
    pub priority: Option<u32>,
    pub zone: Option<String>,
    pub health: Option<super::EndpointHealth>,
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // By hand rather than `untagged`: a typo inside the map then gets serde's precise message
        // (unknown field `wieght`) instead of "did not match any variant".
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address (ip:port or host:port) or {address, weight, priority}")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Endpoint, E> {
                Ok(Endpoint::Address(s.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Endpoint, A::Error> {
                EndpointSpec::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(Endpoint::Detailed)
            }
        }
        d.deserialize_any(V)
    }
}

/// `retries:` — the cluster's retry policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first try (Istio's `attempts`).
    pub attempts: Option<u32>,
    /// Conditions: `connect_failure`, `refused_stream`, `reset`, `5xx`, `gateway_error`, or a
    /// status code (`503` or `"503"`).
    pub on: Option<Vec<RetryOn>>,
    /// Retry POST/PATCH (non-idempotent methods) on every condition, not only on those where the
    /// request provably never reached the upstream.
    pub non_idempotent: Option<bool>,
    /// Request bodies up to this size are kept for replay; a larger one is not retried.
    pub max_body: Option<HumanSize>,
    pub backoff: Option<Backoff>,
    pub budget: Option<Budget>,
}

/// A `retries.on` entry: a condition name or a status code.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RetryOn {
    Status(u16),
    Name(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub base: Option<HumanDuration>,
    pub max: Option<HumanDuration>,
}

/// Linkerd's retry budget: retries ≤ `percent` of requests plus `min_per_second`, over `ttl`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub percent: Option<f64>,
    pub min_per_second: Option<u32>,
    pub ttl: Option<HumanDuration>,
}

/// `circuit_breaker:` — cluster-wide limits; past one a request gets a fast 503.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    pub max_connections: Option<u32>,
    pub max_pending: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
}

/// `outlier:` — passive ejection of endpoints that keep failing.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive_connect_failures: Option<u32>,
    pub interval: Option<HumanDuration>,
    pub base_ejection: Option<HumanDuration>,
    pub max_ejection: Option<HumanDuration>,
    pub max_ejection_percent: Option<u32>,
}

/// `health_check:` — active probes of every endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http` (the default: `GET path`, a 2xx passes) or `tcp` (a connection passes).
    pub kind: Option<HealthCheckKind>,
    /// The probe's path (HTTP checks only, and required there).
    pub path: Option<String>,
    pub interval: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub unhealthy_threshold: Option<u32>,
    pub healthy_threshold: Option<u32>,
    /// `Host` of the probe (default: the endpoint's address).
    pub host: Option<String>,
}

/// What a health check probes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// `GET path`: a 2xx answer passes.
    #[default]
    Http,
    /// A TCP connection (and the TLS handshake, for a TLS cluster) passes.
    Tcp,
}

/// `failover:` — how load spills from one priority to the next.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    pub overprovisioning_factor: Option<f64>,
    pub panic_threshold: Option<u32>,
}

/// `ewma:` — peak-EWMA latency tracking (`lb: p2c_ewma`).
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ewma {
    pub decay: Option<HumanDuration>,
    pub default_rtt: Option<HumanDuration>,
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
    /// Power of two choices over peak-EWMA latency × requests in flight (Linkerd's default).
    P2cEwma,
    /// A random endpoint, by weight (Envoy's RANDOM).
    Random,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTimeouts {
    pub connect: Option<HumanDuration>,
    pub response: Option<HumanDuration>,
    pub per_try: Option<HumanDuration>,
    pub request: Option<HumanDuration>,
    pub idle: Option<HumanDuration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    pub max_idle: Option<usize>,
    pub idle_timeout: Option<HumanDuration>,
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterLimits {
    pub memory: Option<HumanSize>,
    pub callback_deadline: Option<HumanDuration>,
}
