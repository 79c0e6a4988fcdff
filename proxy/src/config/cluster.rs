//! `clusters:`: the upstreams weir forwards to, their endpoints, protocol, balancing, timeouts
//! and pool. Their resilience sections are in `resilience.rs`, their `tls:` in `tls.rs`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::check::{Errors, Source, check_name_in, positive};
use super::resilience::{circuit_breaker, ewma, failover, health_check, outlier, retry_policy};
use super::tls::cluster_tls;
use super::units::{self, ser_duration, ser_opt_duration};
use super::{
    CircuitBreakerConfig, ClusterTlsConfig, EwmaConfig, FailoverConfig, HealthCheckConfig,
    LbPolicy, OutlierConfig, Protocol, RetryPolicy, raw,
};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_POOL_MAX_IDLE: usize = 128;
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterConfig {
    pub name: String,
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
            Endpoints::Demo(_) | Endpoints::Dns(_) => (1, 0),
        }
    }

    /// Whether connections made for `self` may serve `next` (same protocol, TLS and pool
    /// settings): a changed cluster keeps its endpoints' pools only then.
    pub fn pools_compatible(&self, next: &ClusterConfig) -> bool {
        self.protocol == next.protocol
            && self.tls == next.tls
            && self.pool_max_idle == next.pool_max_idle
            && self.pool_idle_timeout == next.pool_idle_timeout
    }
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoints {
    Static(Vec<EndpointConfig>),
    /// The built-in demo upstream with this label; started by the proxy on 127.0.0.1:0.
    Demo(String),
    /// Hosts resolved by DNS, again every `refresh` (`discovery: dns | logical_dns`).
    Dns(DnsEndpoints),
}

/// A DNS-discovered endpoint set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsEndpoints {
    /// Each host with the settings every address it resolves to gets (`address` unused).
    pub hosts: Vec<DnsHost>,
    /// `logical_dns`: one address (the first host's first) at a time.
    pub logical: bool,
    #[serde(serialize_with = "ser_duration")]
    pub refresh: Duration,
}

/// One host of a DNS-discovered cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsHost {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub priority: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

/// One static endpoint (from the manifest or `PUT /clusters/NAME/endpoints`): the fields of
/// Envoy's `LbEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointConfig {
    pub address: SocketAddr,
    /// Relative share of its priority level's traffic.
    pub weight: u32,
    /// 0 is served first; higher levels take the load that unhealthy lower levels cannot.
    pub priority: u32,
    /// The locality label (shown in `/clusters`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// What the source says of it; only `healthy` endpoints get new requests.
    pub health: EndpointHealth,
}

impl EndpointConfig {
    /// An endpoint with the defaults: weight 1, priority 0, healthy.
    pub fn at(address: SocketAddr) -> Self {
        Self {
            address,
            weight: 1,
            priority: 0,
            zone: None,
            health: EndpointHealth::Healthy,
        }
    }
}

/// An endpoint's health as its source reports it (Envoy's `HealthStatus`, reduced to what a
/// balancer acts on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointHealth {
    #[default]
    Healthy,
    /// Finishing what it has: no new requests, its idle pooled connections close.
    Draining,
    /// Gets no requests.
    Unhealthy,
}

/// The `clusters:` map, in name order (a cluster's index is its position).
pub(super) fn clusters(
    map: BTreeMap<String, raw::Cluster>,
    base_dir: &Path,
    source: Source,
    errs: &mut Errors,
) -> Vec<ClusterConfig> {
    let mut clusters = Vec::with_capacity(map.len());
    for (name, c) in map {
        let p = format!("clusters.{name}");
        check_name_in(&name, &p, source, errs);
        let endpoints = match (c.endpoints, c.demo) {
            (Some(list), None) if c.discovery != raw::Discovery::Static => {
                if list.is_empty() {
                    errs.push(format!("{p}.endpoints"), "must list at least one host");
                }
                let hosts = list
                    .iter()
                    .enumerate()
                    .map(|(i, e)| dns_host(e, &format!("{p}.endpoints[{i}]"), errs))
                    .collect();
                let refresh = positive(
                    c.dns_refresh.map(|d| d.0),
                    DEFAULT_DNS_REFRESH,
                    &format!("{p}.dns_refresh"),
                    errs,
                );
                Endpoints::Dns(DnsEndpoints {
                    hosts,
                    logical: c.discovery == raw::Discovery::LogicalDns,
                    refresh,
                })
            }
            (_, Some(_)) if c.discovery != raw::Discovery::Static => {
                errs.push(
                    format!("{p}.discovery"),
                    "a demo upstream is not discovered",
                );
                Endpoints::Static(vec![])
            }
            (Some(_), Some(_)) => {
                errs.push(&p, "give either `endpoints` or `demo`, not both");
                Endpoints::Static(vec![])
            }
            (None, None) => {
                errs.push(&p, "needs `endpoints` (a list of ip:port) or `demo: LABEL`");
                Endpoints::Static(vec![])
            }
            (None, Some(label)) => Endpoints::Demo(label),
            (Some(list), None) => {
                // A control plane may scale a cluster to nothing; a manifest that lists no
                // endpoint is a mistake.
                if list.is_empty() && source == Source::Manifest {
                    errs.push(format!("{p}.endpoints"), "must list at least one endpoint");
                }
                let mut eps = Vec::with_capacity(list.len());
                for (i, e) in list.iter().enumerate() {
                    eps.push(endpoint(e, &format!("{p}.endpoints[{i}]"), errs));
                }
                Endpoints::Static(eps)
            }
        };
        let connect_timeout = positive(
            c.timeouts.connect.map(|d| d.0),
            DEFAULT_CONNECT_TIMEOUT,
            &format!("{p}.timeouts.connect"),
            errs,
        );
        let response_timeout = positive(
            c.timeouts.response.map(|d| d.0),
            DEFAULT_RESPONSE_TIMEOUT,
            &format!("{p}.timeouts.response"),
            errs,
        );
        let pool_idle_timeout = positive(
            c.pool.idle_timeout.map(|d| d.0),
            DEFAULT_POOL_IDLE_TIMEOUT,
            &format!("{p}.pool.idle_timeout"),
            errs,
        );
        let opt = |d: Option<units::HumanDuration>, field: &str, errs: &mut Errors| {
            d.map(|d| positive(Some(d.0), d.0, &format!("{p}.timeouts.{field}"), errs))
        };
        let per_try_timeout = opt(c.timeouts.per_try, "per_try", errs);
        let request_timeout = opt(c.timeouts.request, "request", errs);
        let idle_timeout = opt(c.timeouts.idle, "idle", errs);
        clusters.push(ClusterConfig {
            name,
            endpoints,
            protocol: c.protocol,
            lb: c.lb,
            connect_timeout,
            response_timeout,
            per_try_timeout,
            request_timeout,
            idle_timeout,
            pool_max_idle: c.pool.max_idle.unwrap_or(DEFAULT_POOL_MAX_IDLE),
            pool_idle_timeout,
            tls: c
                .tls
                .map(|t| cluster_tls(t, base_dir, &format!("{p}.tls"), errs)),
            retries: c
                .retries
                .map(|r| retry_policy(r, &format!("{p}.retries"), errs)),
            circuit_breaker: circuit_breaker(
                c.circuit_breaker.unwrap_or_default(),
                &format!("{p}.circuit_breaker"),
                errs,
            ),
            outlier: c.outlier.map(|o| outlier(o, &format!("{p}.outlier"), errs)),
            health_check: c
                .health_check
                .map(|h| health_check(h, &format!("{p}.health_check"), errs)),
            failover: failover(
                c.failover.unwrap_or_default(),
                &format!("{p}.failover"),
                errs,
            ),
            ewma: ewma(c.ewma.unwrap_or_default(), &format!("{p}.ewma"), errs),
        });
    }
    clusters
}

/// One `endpoints` entry: an address, or `{address, weight, priority}`.
fn endpoint(e: &raw::Endpoint, p: &str, errs: &mut Errors) -> EndpointConfig {
    match e {
        raw::Endpoint::Address(a) => EndpointConfig::at(endpoint_addr(a, p, errs)),
        raw::Endpoint::Detailed(d) => {
            let weight = d.weight.unwrap_or(1);
            if !(1..=MAX_WEIGHT).contains(&weight) {
                errs.push(
                    format!("{p}.weight"),
                    format!("must be between 1 and {MAX_WEIGHT}"),
                );
            }
            let priority = d.priority.unwrap_or(0);
            if priority > MAX_PRIORITY {
                errs.push(
                    format!("{p}.priority"),
                    format!("must be between 0 and {MAX_PRIORITY}"),
                );
            }
            EndpointConfig {
                address: endpoint_addr(&d.address, &format!("{p}.address"), errs),
                weight,
                priority,
                zone: d.zone.clone(),
                health: d.health.unwrap_or_default(),
            }
        }
    }
}

pub const MAX_WEIGHT: u32 = 10_000;
pub const MAX_PRIORITY: u32 = 127;

/// An endpoint of a DNS-discovered cluster: `host:port`, or a map with `address: host:port`.
fn dns_host(e: &raw::Endpoint, p: &str, errs: &mut Errors) -> DnsHost {
    let (address, weight, priority, zone, path) = match e {
        raw::Endpoint::Address(a) => (a.as_str(), 1, 0, None, p.to_owned()),
        raw::Endpoint::Detailed(d) => {
            if d.health.is_some() {
                errs.push(
                    format!("{p}.health"),
                    "a discovered endpoint's health comes from its source",
                );
            }
            (
                d.address.as_str(),
                d.weight.unwrap_or(1),
                d.priority.unwrap_or(0),
                d.zone.clone(),
                format!("{p}.address"),
            )
        }
    };
    if !(1..=MAX_WEIGHT).contains(&weight) {
        errs.push(
            format!("{p}.weight"),
            format!("must be between 1 and {MAX_WEIGHT}"),
        );
    }
    if priority > MAX_PRIORITY {
        errs.push(
            format!("{p}.priority"),
            format!("must be between 0 and {MAX_PRIORITY}"),
        );
    }
    let (host, port) = match address.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() => (h.trim_start_matches('[').trim_end_matches(']'), port),
        _ => ("", ""),
    };
    let port = match port.parse::<u16>() {
        Ok(n) if n > 0 && !host.is_empty() => n,
        _ => {
            errs.push(path, format!("`{address}` is not host:port"));
            0
        }
    };
    DnsHost {
        host: host.to_owned(),
        port,
        weight,
        priority,
        zone,
    }
}

/// An endpoint is `ip:port` or `host:port` (resolved once, at load time).
fn endpoint_addr(s: &str, path: &str, errs: &mut Errors) -> SocketAddr {
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            errs.push(path, "endpoint port must not be 0");
        }
        return a;
    }
    match s.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(a)) => a,
        _ => {
            errs.push(
                path,
                format!("`{s}` is not an ip:port or resolvable host:port"),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    }
}
