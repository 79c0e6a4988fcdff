//! CDS: `envoy.config.cluster.v3.Cluster` → [`ClusterSpec`] (a manifest cluster, and for EDS
//! the assignment to subscribe to). Where Envoy's default differs from Weir's, Envoy's is
//! written out: `connect_timeout` 5 s, the circuit breakers' 1024/1024/1024/3, the outlier
//! detector's 5 × 5xx, 10 s, 30 s, 10 %, 300 s, the health check's `Host` (the cluster's name).
//!
//! | field | Weir | notes |
//! |---|---|---|
//! | `name` | the cluster's name | required |
//! | `type` | `discovery` | STATIC (IP endpoints from `load_assignment`), STRICT_DNS → `dns`, LOGICAL_DNS → `logical_dns` (one `host:port` endpoint), EDS → endpoints from EDS; ORIGINAL_DST and `cluster_type` refused |
//! | `eds_cluster_config` | `eds` | `service_name`, else the cluster's name; `eds_config` must be `ads {}` or `self {}` (or absent) |
//! | `load_assignment` | `endpoints` | STATIC and DNS clusters, with the EDS rules (`endpoint.rs`); an EDS cluster must not have one |
//! | `connect_timeout` | `timeouts.connect` | default 5 s (Envoy's) |
//! | `lb_policy` | `lb` | ROUND_ROBIN, LEAST_REQUEST (Weir's is power-of-two-choices, Envoy's default `choice_count`), RANDOM (by weight); the rest refused |
//! | `round_robin_lb_config`, `least_request_lb_config` | checked | only when empty (`choice_count` 2 allowed), and only with their policy |
//! | `common_lb_config.healthy_panic_threshold` | `failover.panic_threshold` | a whole percent; default 50 |
//! | `circuit_breakers.thresholds[]` (DEFAULT priority) | `circuit_breaker` | `max_connections`, `max_pending_requests` → `max_pending`, `max_requests`, `max_retries`; Envoy's defaults 1024/1024/1024/3 when absent; `track_remaining` accepted (stats only) |
//! | `outlier_detection` | `outlier` | `consecutive_5xx` (when `enforcing_consecutive_5xx` is 100, its default; 0 turns it off), `consecutive_gateway_failure` (when `enforcing_consecutive_gateway_failure` is 100; its default 0 is off), `interval`, `base_ejection_time`, `max_ejection_time`, `max_ejection_percent`; `enforcing_success_rate` must be 0 or absent (Weir has no success-rate detector: absent, which Envoy reads as 100, is accepted without it) |
//! | `health_checks` (at most one) | `health_check` | `timeout`, `interval`, `unhealthy_threshold`, `healthy_threshold` (all required, as in Envoy); `http_health_check {path, host}` (`host` default: the cluster's name; `expected_statuses` absent or exactly 200–299: Weir passes any 2xx where Envoy's default is 200 only) or `tcp_health_check {}`; `reuse_connection` true; `always_log_health_check_*` accepted (logging) |
//! | `typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]` | `protocol`, `pool.idle_timeout` | `explicit_http_config` with `http_protocol_options {}` → http1 or `http2_protocol_options {}` → http2; `common_http_protocol_options.idle_timeout` → `pool.idle_timeout` (absent: Weir's 60 s, not Envoy's 1 h) |
//! | `http2_protocol_options` (deprecated) | `protocol: http2` | accepted, as Envoy still does; empty only |
//! | `transport_socket` | `tls` | `UpstreamTlsContext` (or `RawBuffer`: plain): `sni`; `common_tls_context` certificate → `cert`/`key`, `validation_context.trusted_ca` → `ca` (required: Weir always verifies); one subject-alt-name matcher → `expect_identity` (a SPIFFE ID as URI `exact`, `spiffe://TD/` as `prefix` → the trust domain, or a DNS name); with no matcher Weir checks the certificate against `sni`, stricter than Envoy, and refuses when there is no `sni` either; `alpn_protocols` empty or the one protocol the cluster speaks |
//! | `dns_refresh_rate` | `dns_refresh` | DNS clusters (others ignore it, as Envoy does) |
//! | `dns_lookup_family` | checked | DNS clusters: AUTO, V4_PREFERRED, ALL (Weir uses every A and AAAA record, Envoy's ALL; the others agree whenever a host has one family); V4_ONLY, V6_ONLY refused |
//! | `respect_dns_ttl` | accepted | Weir always re-resolves when a TTL runs out, sooner than `dns_refresh` |
//! | `wait_for_warm_on_init` | checked | absent or true |
//! | `alt_stat_name`, `stats_matcher`, `track_cluster_stats` | accepted and ignored | stats naming and selection |
//!
//! Everything else is refused when set, among them `transport_socket_matches`, `metadata`,
//! `per_connection_buffer_limit_bytes` (it also bounds what a filter may buffer),
//! `lb_subset_config`, `load_balancing_policy`, `upstream_connection_options`,
//! `typed_dns_resolver_config`, `cleanup_interval`, `filters`, `lrs_server`, `preconnect_policy`,
//! and the deprecated `http_protocol_options`, `common_http_protocol_options`,
//! `upstream_http_protocol_options`, `max_requests_per_connection`, `dns_resolvers`.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection,
    circuit_breakers::Thresholds,
    cluster::{
        ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig,
        LbConfig, LbPolicy, LeastRequestLbConfig, RoundRobinLbConfig,
        common_lb_config::LocalityConfigSpecifier,
    },
};
use envoy_types::pb::envoy::config::core::v3::{
    HealthCheck, Http2ProtocolOptions, HttpProtocolOptions as CoreHttpOptions, RequestMethod,
    RoutingPriority, TransportSocket, health_check, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    },
};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::Name;

use super::endpoint::{self, check_metadata, host_port};
use super::{
    At, ClusterSpec, Rejection, SanKind, SanPattern, common_tls, config_source, http1_options,
    http2_options, human, keep_bool, positive, type_name, unpack, unsupported,
};
use crate::config::units::HumanDuration;
use crate::config::{EndpointHealth, raw};

/// Envoy's `connect_timeout` when a cluster has none (Weir's own default is 1 s).
const ENVOY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's circuit-breaker defaults; Weir's `max_retries` default is 1024, Envoy's 3.
const ENVOY_BREAKER_LIMIT: u32 = 1024;
const ENVOY_BREAKER_RETRIES: u32 = 3;
/// Envoy's outlier-detection defaults.
const ENVOY_CONSECUTIVE_ERRORS: u32 = 5;
const ENVOY_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
const ENVOY_BASE_EJECTION: Duration = Duration::from_secs(30);
const ENVOY_MAX_EJECTION: Duration = Duration::from_secs(300);
const ENVOY_MAX_EJECTION_PERCENT: u32 = 10;
/// Envoy's `healthy_panic_threshold`.
const ENVOY_PANIC_THRESHOLD: u32 = 50;
/// The one key of `typed_extension_protocol_options` Weir reads.
const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A CDS cluster as a manifest cluster.
pub fn cluster(c: &Cluster) -> Result<ClusterSpec, Rejection> {
    let Cluster {
        transport_socket_matches,
        transport_socket_matcher,
        name,
        alt_stat_name: _, // stats naming
        stats_matcher: _, // stats selection
        eds_cluster_config,
        connect_timeout,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        lb_policy,
        load_assignment,
        health_checks,
        max_requests_per_connection,
        circuit_breakers,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        dns_refresh_rate,
        dns_jitter,
        dns_failure_refresh_rate,
        respect_dns_ttl: _, // Weir always honours TTLs (see the table)
        dns_lookup_family,
        dns_resolvers,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        wait_for_warm_on_init,
        outlier_detection,
        cleanup_interval,
        upstream_bind_config,
        lb_subset_config,
        common_lb_config,
        transport_socket,
        metadata,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        lrs_server,
        lrs_report_endpoint_metrics,
        track_timeout_budgets,
        upstream_config,
        track_cluster_stats: _, // stats selection
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        cluster_discovery_type,
        lb_config,
    } = c;
    if name.is_empty() {
        return Err(Rejection::new("name", "is required"));
    }
    unsupported!(
        transport_socket_matches,
        transport_socket_matcher,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        max_requests_per_connection,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        dns_jitter,
        dns_failure_refresh_rate,
        dns_resolvers,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        cleanup_interval,
        upstream_bind_config,
        lb_subset_config,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        lrs_server,
        lrs_report_endpoint_metrics,
        track_timeout_budgets,
        upstream_config,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
    );
    check_metadata(metadata.as_ref()).at("metadata")?;
    keep_bool(
        wait_for_warm_on_init.as_ref(),
        true,
        "wait_for_warm_on_init",
    )?;

    let kind = match cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
            .map_err(|_| Rejection::new("type", "is not a known discovery type"))?,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(Rejection::new(
                "cluster_type",
                "custom cluster types are not supported by Weir",
            ));
        }
    };
    let mut out = raw::Cluster {
        endpoints: None,
        discovery: raw::Discovery::Static,
        dns_refresh: None,
        demo: None,
        protocol: raw::Protocol::Http1,
        lb: lb(*lb_policy, lb_config.as_ref())?,
        timeouts: raw::ClusterTimeouts {
            connect: Some(
                positive(connect_timeout.as_ref())
                    .at("connect_timeout")?
                    .unwrap_or(HumanDuration(ENVOY_CONNECT_TIMEOUT)),
            ),
            ..Default::default()
        },
        pool: raw::PoolSettings::default(),
        tls: None,
        retries: None,
        circuit_breaker: Some(breakers(circuit_breakers.as_ref()).at("circuit_breakers")?),
        outlier: outlier_detection
            .as_ref()
            .map(|o| outlier(o).at("outlier_detection"))
            .transpose()?
            .flatten(),
        health_check: match health_checks.as_slice() {
            [] => None,
            [h] => Some(health_check(h, name).at("health_checks[0]")?),
            [_, ..] => {
                return Err(Rejection::new(
                    "health_checks[1]",
                    "Weir runs one health check per cluster",
                ));
            }
        },
        failover: Some(raw::Failover {
            overprovisioning_factor: Some(1.4), // Envoy's 140 %; EDS refuses any other
            panic_threshold: Some(match common_lb_config {
                Some(c) => panic_threshold(c).at("common_lb_config")?,
                None => ENVOY_PANIC_THRESHOLD,
            }),
        }),
        ewma: None,
    };
    let mut eds = None;
    match kind {
        DiscoveryType::Static => {
            no_eds_config(eds_cluster_config.as_ref())?;
            let cla = required_assignment(load_assignment.as_ref())?;
            let eps = endpoint::load_assignment(cla).at("load_assignment")?;
            out.endpoints = Some(
                eps.into_iter()
                    .map(|e| {
                        raw::Endpoint::Detailed(raw::EndpointSpec {
                            address: e.address.to_string(),
                            weight: Some(e.weight),
                            priority: Some(e.priority),
                            zone: e.zone,
                            health: Some(e.health),
                        })
                    })
                    .collect(),
            );
        }
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            no_eds_config(eds_cluster_config.as_ref())?;
            let logical = kind == DiscoveryType::LogicalDns;
            out.discovery = if logical {
                raw::Discovery::LogicalDns
            } else {
                raw::Discovery::Dns
            };
            out.endpoints = Some(dns_endpoints(load_assignment.as_ref(), logical)?);
            out.dns_refresh = dns_refresh_rate
                .as_ref()
                .map(human)
                .transpose()
                .at("dns_refresh_rate")?;
            if out.dns_refresh.is_some_and(|d| d.0.is_zero()) {
                return Err(Rejection::new("dns_refresh_rate", "must be positive"));
            }
            if !matches!(
                DnsLookupFamily::try_from(*dns_lookup_family),
                Ok(DnsLookupFamily::Auto | DnsLookupFamily::V4Preferred | DnsLookupFamily::All)
            ) {
                return Err(Rejection::new(
                    "dns_lookup_family",
                    "Weir uses every A and AAAA record: give AUTO, V4_PREFERRED or ALL",
                ));
            }
        }
        DiscoveryType::Eds => {
            if load_assignment.is_some() {
                return Err(Rejection::new(
                    "load_assignment",
                    "an EDS cluster's endpoints come from EDS",
                ));
            }
            eds = Some(eds_name(eds_cluster_config.as_ref(), name).at("eds_cluster_config")?);
        }
        DiscoveryType::OriginalDst => {
            return Err(Rejection::new(
                "type",
                "ORIGINAL_DST is not supported by Weir",
            ));
        }
    }

    let (protocol, idle) = protocol(
        typed_extension_protocol_options,
        http2_protocol_options.as_ref(),
    )?;
    out.protocol = protocol;
    out.pool.idle_timeout = idle;
    if let Some(ts) = transport_socket {
        out.tls = upstream_tls(ts, protocol).at("transport_socket")?;
    }
    Ok(ClusterSpec {
        name: name.clone(),
        cluster: out,
        eds,
    })
}

fn no_eds_config(e: Option<&EdsClusterConfig>) -> Result<(), Rejection> {
    match e {
        Some(_) => Err(Rejection::new(
            "eds_cluster_config",
            "only an EDS cluster has one",
        )),
        None => Ok(()),
    }
}

fn required_assignment(
    cla: Option<&ClusterLoadAssignment>,
) -> Result<&ClusterLoadAssignment, Rejection> {
    let cla = cla.ok_or_else(|| {
        Rejection::new(
            "load_assignment",
            "is required: Weir needs at least one endpoint",
        )
    })?;
    if cla.endpoints.iter().all(|l| l.lb_endpoints.is_empty()) {
        return Err(Rejection::new(
            "load_assignment.endpoints",
            "Weir needs at least one endpoint",
        ));
    }
    Ok(cla)
}

/// The hosts of a DNS cluster (their health comes from resolution and checks, not the
/// assignment).
fn dns_endpoints(
    cla: Option<&ClusterLoadAssignment>,
    logical: bool,
) -> Result<Vec<raw::Endpoint>, Rejection> {
    let cla = required_assignment(cla)?;
    let hosts = endpoint::hosts(cla, host_port).at("load_assignment")?;
    if logical && hosts.len() != 1 {
        return Err(Rejection::new(
            "load_assignment.endpoints",
            "a LOGICAL_DNS cluster has exactly one endpoint",
        ));
    }
    hosts
        .into_iter()
        .map(|h| {
            if h.health != EndpointHealth::Healthy {
                return Err(Rejection::new(
                    format!("load_assignment.{}.health_status", h.field),
                    "a DNS cluster's endpoints get their health from resolution and checks",
                ));
            }
            Ok(raw::Endpoint::Detailed(raw::EndpointSpec {
                address: h.address,
                weight: Some(h.weight),
                priority: Some(h.priority),
                zone: h.zone,
                health: None,
            }))
        })
        .collect()
}

/// The assignment an EDS cluster subscribes to.
fn eds_name(e: Option<&EdsClusterConfig>, cluster: &str) -> Result<String, Rejection> {
    let Some(EdsClusterConfig {
        eds_config,
        service_name,
    }) = e
    else {
        return Ok(cluster.to_owned());
    };
    if let Some(cs) = eds_config {
        config_source(cs).at("eds_config")?;
    }
    Ok(if service_name.is_empty() {
        cluster.to_owned()
    } else {
        service_name.clone()
    })
}

fn lb(policy: i32, config: Option<&LbConfig>) -> Result<raw::LbPolicy, Rejection> {
    let policy = LbPolicy::try_from(policy)
        .map_err(|_| Rejection::new("lb_policy", "is not a known policy"))?;
    let lb = match policy {
        LbPolicy::RoundRobin => raw::LbPolicy::RoundRobin,
        LbPolicy::LeastRequest => raw::LbPolicy::LeastRequest,
        LbPolicy::Random => raw::LbPolicy::Random,
        other => {
            return Err(Rejection::new(
                "lb_policy",
                format!(
                    "{} is not supported by Weir: use ROUND_ROBIN, LEAST_REQUEST or RANDOM",
                    other.as_str_name()
                ),
            ));
        }
    };
    match config {
        None => {}
        Some(LbConfig::RoundRobinLbConfig(c)) => {
            if policy != LbPolicy::RoundRobin {
                return Err(Rejection::new(
                    "round_robin_lb_config",
                    "goes with lb_policy ROUND_ROBIN only",
                ));
            }
            let RoundRobinLbConfig { slow_start_config } = c;
            unsupported!("round_robin_lb_config."; slow_start_config);
        }
        Some(LbConfig::LeastRequestLbConfig(c)) => {
            if policy != LbPolicy::LeastRequest {
                return Err(Rejection::new(
                    "least_request_lb_config",
                    "goes with lb_policy LEAST_REQUEST only",
                ));
            }
            let LeastRequestLbConfig {
                choice_count,
                active_request_bias,
                slow_start_config,
            } = c;
            unsupported!("least_request_lb_config."; active_request_bias, slow_start_config);
            if choice_count.is_some_and(|n| n.value != 2) {
                return Err(Rejection::new(
                    "least_request_lb_config.choice_count",
                    "Weir compares two choices (Envoy's default)",
                ));
            }
        }
        Some(LbConfig::RingHashLbConfig(_)) => {
            return Err(Rejection::unsupported("ring_hash_lb_config"));
        }
        Some(LbConfig::MaglevLbConfig(_)) => {
            return Err(Rejection::unsupported("maglev_lb_config"));
        }
        Some(LbConfig::OriginalDstLbConfig(_)) => {
            return Err(Rejection::unsupported("original_dst_lb_config"));
        }
    }
    Ok(lb)
}

fn panic_threshold(c: &CommonLbConfig) -> Result<u32, Rejection> {
    let CommonLbConfig {
        healthy_panic_threshold,
        update_merge_window,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    } = c;
    unsupported!(
        update_merge_window,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
    );
    match locality_config_specifier {
        None => {}
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => {
            return Err(Rejection::unsupported("zone_aware_lb_config"));
        }
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => {
            return Err(Rejection::unsupported("locality_weighted_lb_config"));
        }
    }
    match healthy_panic_threshold {
        None => Ok(ENVOY_PANIC_THRESHOLD),
        Some(p) if p.value.fract() == 0.0 && (0.0..=100.0).contains(&p.value) => {
            // A whole number from 0 to 100: the cast is exact.
            Ok(p.value as u32)
        }
        Some(_) => Err(Rejection::new(
            "healthy_panic_threshold",
            "Weir takes a whole percent from 0 to 100",
        )),
    }
}

fn breakers(cb: Option<&CircuitBreakers>) -> Result<raw::CircuitBreaker, Rejection> {
    let mut out = raw::CircuitBreaker {
        max_connections: Some(ENVOY_BREAKER_LIMIT),
        max_pending: Some(ENVOY_BREAKER_LIMIT),
        max_requests: Some(ENVOY_BREAKER_LIMIT),
        max_retries: Some(ENVOY_BREAKER_RETRIES),
    };
    let Some(CircuitBreakers {
        thresholds,
        per_host_thresholds,
    }) = cb
    else {
        return Ok(out);
    };
    unsupported!(per_host_thresholds);
    let mut seen_default = false;
    for (i, t) in thresholds.iter().enumerate() {
        let Thresholds {
            priority,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            retry_budget,
            track_remaining: _, // publishes remaining-capacity stats only
            max_connection_pools,
        } = t;
        let p = format!("thresholds[{i}]");
        match RoutingPriority::try_from(*priority) {
            Ok(RoutingPriority::Default) if !seen_default => seen_default = true,
            Ok(RoutingPriority::Default) => {
                return Err(Rejection::new(
                    format!("{p}.priority"),
                    "a second DEFAULT entry",
                ));
            }
            _ => {
                return Err(Rejection::new(
                    format!("{p}.priority"),
                    "Weir has one priority: only DEFAULT thresholds are supported",
                ));
            }
        }
        if retry_budget.is_some() {
            return Err(Rejection::unsupported(&format!("{p}.retry_budget")));
        }
        if max_connection_pools.is_some() {
            return Err(Rejection::unsupported(&format!("{p}.max_connection_pools")));
        }
        let limit = |v: &Option<UInt32Value>, field: &str, dflt: Option<u32>| match v {
            None => Ok(dflt),
            Some(UInt32Value { value: 0 }) => Err(Rejection::new(
                format!("{p}.{field}"),
                "Weir's limits are at least 1",
            )),
            Some(v) => Ok(Some(v.value)),
        };
        out.max_connections = limit(max_connections, "max_connections", out.max_connections)?;
        out.max_pending = limit(
            max_pending_requests,
            "max_pending_requests",
            out.max_pending,
        )?;
        out.max_requests = limit(max_requests, "max_requests", out.max_requests)?;
        out.max_retries = limit(max_retries, "max_retries", out.max_retries)?;
    }
    Ok(out)
}

/// `None` when no detector Weir has is enforced.
fn outlier(o: &OutlierDetection) -> Result<Option<raw::Outlier>, Rejection> {
    let OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    } = o;
    unsupported!(
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
    );
    keep_bool(
        always_eject_one_host.as_ref(),
        false,
        "always_eject_one_host",
    )?;
    keep_bool(
        detect_degraded_hosts.as_ref(),
        false,
        "detect_degraded_hosts",
    )?;
    // Detectors Weir lacks must be off (`None` of enforcing_success_rate is Envoy's 100: see the
    // module table).
    if enforcing_success_rate.is_some_and(|v| v.value != 0) {
        return Err(Rejection::new(
            "enforcing_success_rate",
            "Weir has no success-rate detector: set 0",
        ));
    }
    if enforcing_failure_percentage.is_some_and(|v| v.value != 0) {
        return Err(Rejection::new(
            "enforcing_failure_percentage",
            "Weir has no failure-percentage detector: set 0",
        ));
    }
    let consecutive = |enforcing: &Option<UInt32Value>,
                       enforcing_default: u32,
                       threshold: &Option<UInt32Value>,
                       fields: (&str, &str)|
     -> Result<u32, Rejection> {
        match enforcing.as_ref().map_or(enforcing_default, |v| v.value) {
            0 => Ok(0),
            100 => match threshold
                .as_ref()
                .map_or(ENVOY_CONSECUTIVE_ERRORS, |v| v.value)
            {
                0 => Err(Rejection::new(
                    fields.1,
                    format!("must be at least 1 (set {} to 0 to turn it off)", fields.0),
                )),
                n => Ok(n),
            },
            _ => Err(Rejection::new(
                fields.0,
                "Weir enforces a detector always (100) or never (0)",
            )),
        }
    };
    let c5xx = consecutive(
        enforcing_consecutive_5xx,
        100,
        consecutive_5xx,
        ("enforcing_consecutive_5xx", "consecutive_5xx"),
    )?;
    let gateway = consecutive(
        enforcing_consecutive_gateway_failure,
        0,
        consecutive_gateway_failure,
        (
            "enforcing_consecutive_gateway_failure",
            "consecutive_gateway_failure",
        ),
    )?;
    if c5xx == 0 && gateway == 0 {
        return Ok(None);
    }
    let interval = positive(interval.as_ref())
        .at("interval")?
        .unwrap_or(HumanDuration(ENVOY_OUTLIER_INTERVAL));
    let base = positive(base_ejection_time.as_ref())
        .at("base_ejection_time")?
        .unwrap_or(HumanDuration(ENVOY_BASE_EJECTION));
    let max = positive(max_ejection_time.as_ref())
        .at("max_ejection_time")?
        .unwrap_or(HumanDuration(ENVOY_MAX_EJECTION.max(base.0)));
    let percent = max_ejection_percent
        .as_ref()
        .map_or(ENVOY_MAX_EJECTION_PERCENT, |v| v.value);
    if percent > 100 {
        return Err(Rejection::new(
            "max_ejection_percent",
            "must be between 0 and 100",
        ));
    }
    Ok(Some(raw::Outlier {
        consecutive_5xx: Some(c5xx),
        consecutive_gateway_errors: Some(gateway),
        consecutive_connect_failures: None,
        interval: Some(interval),
        base_ejection: Some(base),
        max_ejection: Some(max),
        max_ejection_percent: Some(percent),
    }))
}

fn health_check(h: &HealthCheck, cluster: &str) -> Result<raw::HealthCheck, Rejection> {
    let HealthCheck {
        timeout,
        interval,
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        alt_port,
        reuse_connection,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        event_log_path,
        event_logger,
        event_service,
        always_log_health_check_failures: _, // logging only
        always_log_health_check_success: _,  // logging only
        tls_options,
        transport_socket_match_criteria,
        health_checker,
    } = h;
    unsupported!(
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        alt_port,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        event_log_path,
        event_logger,
        event_service,
        tls_options,
        transport_socket_match_criteria,
    );
    keep_bool(reuse_connection.as_ref(), true, "reuse_connection")?;
    let required = |field: &'static str| Rejection::new(field, "is required");
    let timeout = positive(timeout.as_ref())
        .at("timeout")?
        .ok_or_else(|| required("timeout"))?;
    let interval = positive(interval.as_ref())
        .at("interval")?
        .ok_or_else(|| required("interval"))?;
    let unhealthy = unhealthy_threshold
        .as_ref()
        .ok_or_else(|| required("unhealthy_threshold"))?
        .value;
    let healthy = healthy_threshold
        .as_ref()
        .ok_or_else(|| required("healthy_threshold"))?
        .value;
    let (kind, path, host) = match health_checker {
        Some(health_check::HealthChecker::HttpHealthCheck(c)) => {
            let (path, host) = http_check(c, cluster).at("http_health_check")?;
            (raw::HealthCheckKind::Http, Some(path), Some(host))
        }
        Some(health_check::HealthChecker::TcpHealthCheck(c)) => {
            let health_check::TcpHealthCheck {
                send,
                receive,
                proxy_protocol_config,
            } = c;
            unsupported!("tcp_health_check."; send, receive, proxy_protocol_config);
            (raw::HealthCheckKind::Tcp, None, None)
        }
        Some(health_check::HealthChecker::GrpcHealthCheck(_)) => {
            return Err(Rejection::unsupported("grpc_health_check"));
        }
        Some(health_check::HealthChecker::CustomHealthCheck(_)) => {
            return Err(Rejection::unsupported("custom_health_check"));
        }
        None => {
            return Err(Rejection::new(
                "health_checker",
                "needs http_health_check or tcp_health_check",
            ));
        }
    };
    Ok(raw::HealthCheck {
        kind: Some(kind),
        path,
        interval: Some(interval),
        timeout: Some(timeout),
        unhealthy_threshold: Some(unhealthy),
        healthy_threshold: Some(healthy),
        host,
    })
}

/// An HTTP check's path and `Host` (Envoy's default `Host` is the cluster's name).
fn http_check(
    c: &health_check::HttpHealthCheck,
    cluster: &str,
) -> Result<(String, String), Rejection> {
    let health_check::HttpHealthCheck {
        host,
        path,
        send,
        receive,
        response_buffer_size,
        request_headers_to_add,
        request_headers_to_remove,
        expected_statuses,
        retriable_statuses,
        codec_client_type,
        service_name_matcher,
        method,
    } = c;
    unsupported!(
        send,
        receive,
        response_buffer_size,
        request_headers_to_add,
        request_headers_to_remove,
        retriable_statuses,
        codec_client_type,
        service_name_matcher,
    );
    if !matches!(
        RequestMethod::try_from(*method),
        Ok(RequestMethod::MethodUnspecified | RequestMethod::Get)
    ) {
        return Err(Rejection::new("method", "Weir's health checks send GET"));
    }
    // Weir passes any 2xx: say so explicitly, or leave Envoy's 200-only default (a documented
    // difference).
    if !expected_statuses.is_empty()
        && *expected_statuses
            != [Int64Range {
                start: 200,
                end: 300,
            }]
    {
        return Err(Rejection::new(
            "expected_statuses",
            "Weir passes any 2xx: give [200, 300) or leave it unset",
        ));
    }
    if path.is_empty() {
        return Err(Rejection::new("path", "is required"));
    }
    let host = if host.is_empty() { cluster } else { host };
    Ok((path.clone(), host.to_owned()))
}

/// The upstream protocol and pool idle timeout, from the typed protocol options or the
/// deprecated `http2_protocol_options`.
fn protocol(
    typed: &HashMap<String, Any>,
    deprecated_h2: Option<&Http2ProtocolOptions>,
) -> Result<(raw::Protocol, Option<HumanDuration>), Rejection> {
    if let Some(h2) = deprecated_h2 {
        if http2_options(h2).at("http2_protocol_options")?.is_some() {
            return Err(Rejection::unsupported(
                "http2_protocol_options.max_concurrent_streams",
            ));
        }
        if !typed.is_empty() {
            return Err(Rejection::new(
                "http2_protocol_options",
                "set the protocol in typed_extension_protocol_options only",
            ));
        }
        return Ok((raw::Protocol::Http2, None));
    }
    // Sorted, so the rejection of several unknown keys is stable.
    let mut keys: Vec<&String> = typed.keys().collect();
    keys.sort();
    let mut out = (raw::Protocol::Http1, None);
    for key in keys {
        let field = format!("typed_extension_protocol_options[\"{key}\"]");
        if key != HTTP_OPTIONS_KEY {
            return Err(Rejection::unsupported(&field));
        }
        let o: HttpProtocolOptions = unpack(&typed[key], &field)?;
        out = http_protocol_options(&o).at(&field)?;
    }
    Ok(out)
}

fn http_protocol_options(
    o: &HttpProtocolOptions,
) -> Result<(raw::Protocol, Option<HumanDuration>), Rejection> {
    let HttpProtocolOptions {
        common_http_protocol_options,
        upstream_http_protocol_options,
        http_filters,
        header_validation_config,
        outlier_detection,
        request_mirror_policies,
        hash_policy,
        retry_policy,
        upstream_protocol_options,
    } = o;
    unsupported!(
        upstream_http_protocol_options,
        http_filters,
        header_validation_config,
        outlier_detection,
        request_mirror_policies,
        hash_policy,
        retry_policy,
    );
    let idle = match common_http_protocol_options {
        Some(c) => common_options(c).at("common_http_protocol_options")?,
        None => None,
    };
    let protocol = match upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config,
        })) => match protocol_config {
            Some(ProtocolConfig::HttpProtocolOptions(h1)) => {
                http1_options(h1).at("explicit_http_config.http_protocol_options")?;
                raw::Protocol::Http1
            }
            Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                let p = "explicit_http_config.http2_protocol_options";
                if http2_options(h2).at(p)?.is_some() {
                    return Err(Rejection::unsupported(&format!(
                        "{p}.max_concurrent_streams"
                    )));
                }
                raw::Protocol::Http2
            }
            Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                return Err(Rejection::unsupported(
                    "explicit_http_config.http3_protocol_options",
                ));
            }
            None => {
                return Err(Rejection::new(
                    "explicit_http_config",
                    "needs http_protocol_options or http2_protocol_options",
                ));
            }
        },
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
            return Err(Rejection::new(
                "use_downstream_protocol_config",
                "Weir speaks one protocol per cluster: use explicit_http_config",
            ));
        }
        Some(UpstreamProtocolOptions::AutoConfig(_)) => {
            return Err(Rejection::new(
                "auto_config",
                "Weir speaks one protocol per cluster: use explicit_http_config",
            ));
        }
        None => {
            return Err(Rejection::new(
                "upstream_protocol_options",
                "is required (explicit_http_config)",
            ));
        }
    };
    Ok((protocol, idle))
}

/// The pool idle timeout from the common options (everything else refused).
fn common_options(c: &CoreHttpOptions) -> Result<Option<HumanDuration>, Rejection> {
    let CoreHttpOptions {
        idle_timeout,
        max_connection_duration,
        max_connection_duration_jitter,
        max_headers_count,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    } = c;
    unsupported!(
        max_connection_duration,
        max_connection_duration_jitter,
        max_headers_count,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    );
    positive(idle_timeout.as_ref()).at("idle_timeout")
}

/// `None`: a plain (raw buffer) transport socket.
fn upstream_tls(
    ts: &TransportSocket,
    protocol: raw::Protocol,
) -> Result<Option<raw::ClusterTls>, Rejection> {
    let TransportSocket { name, config_type } = ts;
    let any = match config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => any,
        None if name == "envoy.transport_sockets.raw_buffer" => return Ok(None),
        None => return Err(Rejection::new("typed_config", "is required")),
    };
    if type_name(any) == RawBuffer::full_name() {
        return Ok(None);
    }
    if type_name(any) != UpstreamTlsContext::full_name() {
        return Err(Rejection::new(
            "typed_config",
            format!(
                "`{}` is not supported by Weir (only TLS and raw buffer)",
                any.type_url
            ),
        ));
    }
    let ctx: UpstreamTlsContext = unpack(any, "typed_config")?;
    tls_context(&ctx, protocol).at("typed_config")
}

fn tls_context(
    t: &UpstreamTlsContext,
    protocol: raw::Protocol,
) -> Result<Option<raw::ClusterTls>, Rejection> {
    let UpstreamTlsContext {
        common_tls_context,
        sni,
        auto_host_sni,
        auto_sni_san_validation,
        allow_renegotiation,
        max_session_keys,
        enforce_rsa_key_usage,
    } = t;
    unsupported!(auto_host_sni, auto_sni_san_validation, allow_renegotiation);
    if max_session_keys.is_some_and(|v| v.value != 1) {
        return Err(Rejection::unsupported("max_session_keys"));
    }
    keep_bool(
        enforce_rsa_key_usage.as_ref(),
        true,
        "enforce_rsa_key_usage",
    )?;
    let common = common_tls_context
        .as_ref()
        .map(common_tls)
        .transpose()
        .at("common_tls_context")?
        .unwrap_or_default();
    const CTX: &str = "common_tls_context";
    if common.min_version == Some("1.3") {
        return Err(Rejection::new(
            format!("{CTX}.tls_params.tls_minimum_protocol_version"),
            "Weir's upstream TLS always allows 1.2",
        ));
    }
    let speaks = match protocol {
        raw::Protocol::Http1 => "http/1.1",
        raw::Protocol::Http2 => "h2",
    };
    if !common.alpn.is_empty() && common.alpn != [speaks] {
        return Err(Rejection::new(
            format!("{CTX}.alpn_protocols"),
            format!("the cluster speaks {speaks}: give [\"{speaks}\"] or nothing"),
        ));
    }
    let ca = common.ca.ok_or_else(|| {
        Rejection::new(
            format!("{CTX}.validation_context.trusted_ca"),
            "is required: Weir always verifies an upstream's certificate",
        )
    })?;
    let expect_identity = match common.sans.as_slice() {
        [] if sni.is_empty() => {
            return Err(Rejection::new(
                format!("{CTX}.validation_context"),
                "Weir checks an upstream's certificate against an identity: add a \
                 subject-alt-name matcher or set sni",
            ));
        }
        [] => None,
        [san] => Some(identity(san).ok_or_else(|| {
            Rejection::new(
                format!("{CTX}.validation_context.{}", san.field),
                "Weir expects a SPIFFE ID (URI exact), a spiffe://TD/ prefix or a DNS name \
                 (exact)",
            )
        })?),
        [_, second, ..] => {
            return Err(Rejection::new(
                format!("{CTX}.validation_context.{}", second.field),
                "Weir checks one identity per cluster",
            ));
        }
    };
    let (cert, key) = common
        .cert
        .map_or((None, None), |(c, k)| (Some(c), Some(k)));
    Ok(Some(raw::ClusterTls {
        ca,
        cert,
        key,
        sni: (!sni.is_empty()).then(|| sni.clone()),
        expect_identity,
    }))
}

/// The identity one subject-alt-name matcher asks of an upstream, in `expect_identity`'s form.
fn identity(san: &super::San) -> Option<String> {
    if let Some(td) = san.trust_domain() {
        return Some(format!("spiffe://{td}"));
    }
    match (san.kind, &san.pattern) {
        (Some(SanKind::Uri) | None, SanPattern::Exact(id)) if id.starts_with("spiffe://") => {
            Some(id.clone())
        }
        (Some(SanKind::Dns) | None, SanPattern::Exact(name))
            if !name.is_empty() && !name.contains("://") =>
        {
            Some(name.clone())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{
        AggregatedConfigSource, ApiConfigSource, ConfigSource, DataSource, Http2ProtocolOptions,
        Metadata, config_source::ConfigSourceSpecifier, data_source,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
        TlsCertificate, common_tls_context::ValidationContextType,
        subject_alt_name_matcher::SanType,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        StringMatcher, string_matcher::MatchPattern,
    };
    use envoy_types::pb::envoy::r#type::v3::Percent;
    use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, Struct};
    use envoy_types::util::pack_any;

    use super::*;

    fn secs(s: i64) -> Option<PbDuration> {
        Some(PbDuration {
            seconds: s,
            nanos: 0,
        })
    }

    fn u32v(v: u32) -> Option<UInt32Value> {
        Some(UInt32Value { value: v })
    }

    fn cla(hosts: &[(&str, u32)]) -> ClusterLoadAssignment {
        let lb_endpoints = hosts
            .iter()
            .map(|(a, p)| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(super::super::endpoint::tests::sock(a, *p)),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect();
        ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn static_cluster() -> Cluster {
        Cluster {
            name: "web".into(),
            load_assignment: Some(cla(&[("10.0.0.1", 8080)])),
            ..Default::default()
        }
    }

    fn of_type(t: DiscoveryType) -> Option<ClusterDiscoveryType> {
        Some(ClusterDiscoveryType::Type(t as i32))
    }

    fn refused(c: &Cluster) -> String {
        cluster(c).unwrap_err().field
    }

    #[test]
    fn a_static_cluster_gets_envoys_defaults_written_out() {
        let spec = cluster(&static_cluster()).unwrap();
        assert_eq!(spec.name, "web");
        assert_eq!(spec.eds, None);
        let c = spec.cluster;
        assert_eq!(c.discovery, raw::Discovery::Static);
        let Some([raw::Endpoint::Detailed(e)]) = c.endpoints.as_deref() else {
            panic!("{:?}", c.endpoints);
        };
        assert_eq!(e.address, "10.0.0.1:8080");
        assert_eq!((e.weight, e.priority), (Some(1), Some(0)));
        assert_eq!(
            c.timeouts.connect,
            Some(HumanDuration(Duration::from_secs(5)))
        );
        let cb = c.circuit_breaker.unwrap();
        assert_eq!(
            (
                cb.max_connections,
                cb.max_pending,
                cb.max_requests,
                cb.max_retries
            ),
            (Some(1024), Some(1024), Some(1024), Some(3))
        );
        assert_eq!(c.lb, raw::LbPolicy::RoundRobin);
        assert_eq!(c.protocol, raw::Protocol::Http1);
        assert_eq!(c.failover.unwrap().panic_threshold, Some(50));
        assert!(c.outlier.is_none() && c.health_check.is_none() && c.tls.is_none());
        let timed = Cluster {
            connect_timeout: Some(PbDuration {
                seconds: 0,
                nanos: 250_000_000,
            }),
            ..static_cluster()
        };
        assert_eq!(
            cluster(&timed).unwrap().cluster.timeouts.connect,
            Some(HumanDuration(Duration::from_millis(250)))
        );
        assert_eq!(
            refused(&Cluster {
                connect_timeout: secs(0),
                ..static_cluster()
            }),
            "connect_timeout"
        );
    }

    #[test]
    fn eds_clusters_name_their_assignment() {
        let ads = ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        };
        let eds = |service: &str, source: ConfigSource| Cluster {
            name: "outbound|80||web".into(),
            cluster_discovery_type: of_type(DiscoveryType::Eds),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(source),
                service_name: service.into(),
            }),
            ..Default::default()
        };
        let spec = cluster(&eds("web-svc", ads.clone())).unwrap();
        assert_eq!(spec.eds.as_deref(), Some("web-svc"));
        assert!(spec.cluster.endpoints.is_none());
        assert_eq!(
            cluster(&eds("", ads.clone())).unwrap().eds.as_deref(),
            Some("outbound|80||web")
        );
        let bare = Cluster {
            name: "b".into(),
            cluster_discovery_type: of_type(DiscoveryType::Eds),
            ..Default::default()
        };
        assert_eq!(cluster(&bare).unwrap().eds.as_deref(), Some("b"));
        let api = ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource::default(),
            )),
            ..Default::default()
        };
        assert_eq!(
            refused(&eds("x", api)),
            "eds_cluster_config.eds_config.api_config_source"
        );
        let with_assignment = Cluster {
            load_assignment: Some(cla(&[("10.0.0.1", 80)])),
            ..eds("", ads)
        };
        assert_eq!(refused(&with_assignment), "load_assignment");
    }

    #[test]
    fn dns_clusters_keep_host_names() {
        let c = Cluster {
            name: "ext".into(),
            cluster_discovery_type: of_type(DiscoveryType::StrictDns),
            load_assignment: Some(cla(&[("api.example.com", 443), ("10.1.1.1", 443)])),
            dns_refresh_rate: secs(30),
            ..Default::default()
        };
        let out = cluster(&c).unwrap().cluster;
        assert_eq!(out.discovery, raw::Discovery::Dns);
        assert_eq!(
            out.dns_refresh,
            Some(HumanDuration(Duration::from_secs(30)))
        );
        let addrs: Vec<_> = out
            .endpoints
            .unwrap()
            .into_iter()
            .map(|e| match e {
                raw::Endpoint::Detailed(d) => (d.address, d.health.is_none()),
                raw::Endpoint::Address(a) => (a, false),
            })
            .collect();
        assert_eq!(
            addrs,
            [
                ("api.example.com:443".to_owned(), true),
                ("10.1.1.1:443".to_owned(), true)
            ]
        );
        let logical = Cluster {
            cluster_discovery_type: of_type(DiscoveryType::LogicalDns),
            ..c.clone()
        };
        assert_eq!(refused(&logical), "load_assignment.endpoints");
        let v4 = Cluster {
            dns_lookup_family: DnsLookupFamily::V4Only as i32,
            ..c.clone()
        };
        assert_eq!(refused(&v4), "dns_lookup_family");
        let original = Cluster {
            cluster_discovery_type: of_type(DiscoveryType::OriginalDst),
            ..c
        };
        assert_eq!(refused(&original), "type");
        // A static cluster's endpoints are IP addresses.
        let named = Cluster {
            load_assignment: Some(cla(&[("api.example.com", 443)])),
            ..static_cluster()
        };
        assert_eq!(
            refused(&named),
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
        );
        let empty = Cluster {
            load_assignment: Some(ClusterLoadAssignment::default()),
            ..static_cluster()
        };
        assert_eq!(refused(&empty), "load_assignment.endpoints");
    }

    #[test]
    fn load_balancing_policies() {
        let with = |p: LbPolicy, cfg: Option<LbConfig>| Cluster {
            lb_policy: p as i32,
            lb_config: cfg,
            ..static_cluster()
        };
        assert_eq!(
            cluster(&with(LbPolicy::LeastRequest, None))
                .unwrap()
                .cluster
                .lb,
            raw::LbPolicy::LeastRequest
        );
        assert_eq!(refused(&with(LbPolicy::RingHash, None)), "lb_policy");
        assert_eq!(
            cluster(&with(LbPolicy::Random, None)).unwrap().cluster.lb,
            raw::LbPolicy::Random
        );
        let ring = with(
            LbPolicy::LeastRequest,
            Some(LbConfig::RingHashLbConfig(Default::default())),
        );
        assert_eq!(refused(&ring), "ring_hash_lb_config");
        let two = with(
            LbPolicy::LeastRequest,
            Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                choice_count: u32v(2),
                ..Default::default()
            })),
        );
        assert!(cluster(&two).is_ok());
        let three = with(
            LbPolicy::LeastRequest,
            Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                choice_count: u32v(3),
                ..Default::default()
            })),
        );
        assert_eq!(refused(&three), "least_request_lb_config.choice_count");
        let panic = Cluster {
            common_lb_config: Some(CommonLbConfig {
                healthy_panic_threshold: Some(Percent { value: 0.0 }),
                ..Default::default()
            }),
            ..static_cluster()
        };
        assert_eq!(
            cluster(&panic)
                .unwrap()
                .cluster
                .failover
                .unwrap()
                .panic_threshold,
            Some(0)
        );
        let zone_aware = Cluster {
            common_lb_config: Some(CommonLbConfig {
                locality_config_specifier: Some(LocalityConfigSpecifier::ZoneAwareLbConfig(
                    Default::default(),
                )),
                ..Default::default()
            }),
            ..static_cluster()
        };
        assert_eq!(
            refused(&zone_aware),
            "common_lb_config.zone_aware_lb_config"
        );
    }

    #[test]
    fn circuit_breakers_take_the_default_priority() {
        let with = |ts: Vec<Thresholds>| Cluster {
            circuit_breakers: Some(CircuitBreakers {
                thresholds: ts,
                ..Default::default()
            }),
            ..static_cluster()
        };
        let cb = cluster(&with(vec![Thresholds {
            max_requests: u32v(100),
            track_remaining: true,
            ..Default::default()
        }]))
        .unwrap()
        .cluster
        .circuit_breaker
        .unwrap();
        assert_eq!(
            (
                cb.max_connections,
                cb.max_pending,
                cb.max_requests,
                cb.max_retries
            ),
            (Some(1024), Some(1024), Some(100), Some(3))
        );
        let high = with(vec![
            Thresholds::default(),
            Thresholds {
                priority: RoutingPriority::High as i32,
                ..Default::default()
            },
        ]);
        assert_eq!(refused(&high), "circuit_breakers.thresholds[1].priority");
        let budget = with(vec![Thresholds {
            retry_budget: Some(Default::default()),
            ..Default::default()
        }]);
        assert_eq!(
            refused(&budget),
            "circuit_breakers.thresholds[0].retry_budget"
        );
        let zero = with(vec![Thresholds {
            max_connections: u32v(0),
            ..Default::default()
        }]);
        assert_eq!(
            refused(&zero),
            "circuit_breakers.thresholds[0].max_connections"
        );
    }

    #[test]
    fn outlier_detection_follows_envoys_enforcement() {
        let with = |o: OutlierDetection| Cluster {
            outlier_detection: Some(o),
            ..static_cluster()
        };
        let o = cluster(&with(OutlierDetection::default()))
            .unwrap()
            .cluster
            .outlier
            .unwrap();
        assert_eq!(o.consecutive_5xx, Some(5));
        assert_eq!(o.consecutive_gateway_errors, Some(0));
        assert_eq!(o.interval, Some(HumanDuration(Duration::from_secs(10))));
        assert_eq!(
            o.base_ejection,
            Some(HumanDuration(Duration::from_secs(30)))
        );
        assert_eq!(
            o.max_ejection,
            Some(HumanDuration(Duration::from_secs(300)))
        );
        assert_eq!(o.max_ejection_percent, Some(10));
        let gw = cluster(&with(OutlierDetection {
            enforcing_consecutive_gateway_failure: u32v(100),
            consecutive_5xx: u32v(7),
            base_ejection_time: secs(400),
            ..Default::default()
        }))
        .unwrap()
        .cluster
        .outlier
        .unwrap();
        assert_eq!(gw.consecutive_gateway_errors, Some(5));
        assert_eq!(gw.consecutive_5xx, Some(7));
        // Envoy's max_ejection_time is at least base_ejection_time.
        assert_eq!(
            gw.max_ejection,
            Some(HumanDuration(Duration::from_secs(400)))
        );
        let off = with(OutlierDetection {
            enforcing_consecutive_5xx: u32v(0),
            enforcing_success_rate: u32v(0),
            ..Default::default()
        });
        assert!(cluster(&off).unwrap().cluster.outlier.is_none());
        assert_eq!(
            refused(&with(OutlierDetection {
                enforcing_success_rate: u32v(100),
                ..Default::default()
            })),
            "outlier_detection.enforcing_success_rate"
        );
        assert_eq!(
            refused(&with(OutlierDetection {
                success_rate_stdev_factor: u32v(1900),
                ..Default::default()
            })),
            "outlier_detection.success_rate_stdev_factor"
        );
        assert_eq!(
            refused(&with(OutlierDetection {
                enforcing_consecutive_5xx: u32v(50),
                ..Default::default()
            })),
            "outlier_detection.enforcing_consecutive_5xx"
        );
    }

    fn check(checker: health_check::HealthChecker) -> HealthCheck {
        HealthCheck {
            timeout: secs(1),
            interval: secs(5),
            unhealthy_threshold: u32v(3),
            healthy_threshold: u32v(2),
            health_checker: Some(checker),
            ..Default::default()
        }
    }

    #[test]
    fn health_checks_http_and_tcp() {
        let http = health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
            path: "/healthz".into(),
            ..Default::default()
        });
        let with = |hs: Vec<HealthCheck>| Cluster {
            health_checks: hs,
            ..static_cluster()
        };
        let h = cluster(&with(vec![check(http.clone())]))
            .unwrap()
            .cluster
            .health_check
            .unwrap();
        assert_eq!(h.kind, Some(raw::HealthCheckKind::Http));
        assert_eq!(h.path.as_deref(), Some("/healthz"));
        // Envoy's default Host is the cluster's name.
        assert_eq!(h.host.as_deref(), Some("web"));
        assert_eq!(h.interval, Some(HumanDuration(Duration::from_secs(5))));
        assert_eq!(
            (h.unhealthy_threshold, h.healthy_threshold),
            (Some(3), Some(2))
        );
        let tcp = check(health_check::HealthChecker::TcpHealthCheck(
            Default::default(),
        ));
        let t = cluster(&with(vec![tcp.clone()]))
            .unwrap()
            .cluster
            .health_check
            .unwrap();
        assert_eq!(
            (t.kind, t.path, t.host),
            (Some(raw::HealthCheckKind::Tcp), None, None)
        );
        assert_eq!(
            refused(&with(vec![HealthCheck {
                timeout: None,
                ..check(http.clone())
            }])),
            "health_checks[0].timeout"
        );
        assert_eq!(
            refused(&with(vec![check(
                health_check::HealthChecker::GrpcHealthCheck(Default::default())
            )])),
            "health_checks[0].grpc_health_check"
        );
        assert_eq!(refused(&with(vec![tcp.clone(), tcp])), "health_checks[1]");
        assert_eq!(
            refused(&with(vec![HealthCheck {
                reuse_connection: Some(BoolValue { value: false }),
                ..check(http.clone())
            }])),
            "health_checks[0].reuse_connection"
        );
        let post = health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
            path: "/".into(),
            method: RequestMethod::Post as i32,
            ..Default::default()
        });
        assert_eq!(
            refused(&with(vec![check(post)])),
            "health_checks[0].http_health_check.method"
        );
    }

    #[test]
    fn protocol_options_choose_http2() {
        let h2 = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            common_http_protocol_options: Some(CoreHttpOptions {
                idle_timeout: secs(90),
                ..Default::default()
            }),
            ..Default::default()
        };
        let with = |o: HttpProtocolOptions| Cluster {
            typed_extension_protocol_options: [(HTTP_OPTIONS_KEY.to_owned(), pack_any(o))].into(),
            ..static_cluster()
        };
        let c = cluster(&with(h2.clone())).unwrap().cluster;
        assert_eq!(c.protocol, raw::Protocol::Http2);
        assert_eq!(
            c.pool.idle_timeout,
            Some(HumanDuration(Duration::from_secs(90)))
        );
        let deprecated = Cluster {
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            ..static_cluster()
        };
        assert_eq!(
            cluster(&deprecated).unwrap().cluster.protocol,
            raw::Protocol::Http2
        );
        let downstream = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                Default::default(),
            )),
            ..Default::default()
        };
        assert_eq!(
            refused(&with(downstream)),
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].use_downstream_protocol_config"
        );
        let streams = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions {
                            initial_stream_window_size: u32v(65536),
                            ..Default::default()
                        },
                    )),
                },
            )),
            ..Default::default()
        };
        assert!(
            refused(&with(streams)).ends_with(
                "explicit_http_config.http2_protocol_options.initial_stream_window_size"
            )
        );
        let other = Cluster {
            typed_extension_protocol_options: [(
                "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions".to_owned(),
                Any::default(),
            )]
            .into(),
            ..static_cluster()
        };
        assert_eq!(
            refused(&other),
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions\"]"
        );
    }

    fn file(f: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(data_source::Specifier::Filename(f.into())),
            ..Default::default()
        })
    }

    fn tls(sans: Vec<SubjectAltNameMatcher>, sni: &str) -> UpstreamTlsContext {
        UpstreamTlsContext {
            sni: sni.into(),
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: file("/certs/client.pem"),
                    private_key: file("/certs/client-key.pem"),
                    ..Default::default()
                }],
                validation_context_type: Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: file("/certs/ca.pem"),
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn san(kind: SanType, pattern: MatchPattern) -> SubjectAltNameMatcher {
        SubjectAltNameMatcher {
            san_type: kind as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(pattern),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_tls(t: UpstreamTlsContext) -> Cluster {
        Cluster {
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(t))),
            }),
            ..static_cluster()
        }
    }

    #[test]
    fn upstream_tls_maps_files_and_identity() {
        let spiffe = "spiffe://cluster.local/ns/default/sa/web";
        let c = cluster(&with_tls(tls(
            vec![san(SanType::Uri, MatchPattern::Exact(spiffe.into()))],
            "web.default",
        )))
        .unwrap()
        .cluster;
        let t = c.tls.unwrap();
        assert_eq!(t.ca, "/certs/ca.pem");
        assert_eq!(t.cert.as_deref(), Some("/certs/client.pem"));
        assert_eq!(t.key.as_deref(), Some("/certs/client-key.pem"));
        assert_eq!(t.sni.as_deref(), Some("web.default"));
        assert_eq!(t.expect_identity.as_deref(), Some(spiffe));
        let domain = cluster(&with_tls(tls(
            vec![san(
                SanType::Uri,
                MatchPattern::Prefix("spiffe://cluster.local/".into()),
            )],
            "",
        )))
        .unwrap();
        assert_eq!(
            domain.cluster.tls.unwrap().expect_identity.as_deref(),
            Some("spiffe://cluster.local")
        );
        let dns = cluster(&with_tls(tls(
            vec![san(
                SanType::Dns,
                MatchPattern::Exact("api.example.com".into()),
            )],
            "",
        )))
        .unwrap();
        assert_eq!(
            dns.cluster.tls.unwrap().expect_identity.as_deref(),
            Some("api.example.com")
        );
        // No matcher: the SNI is the identity.
        let sni_only = cluster(&with_tls(tls(vec![], "api.example.com"))).unwrap();
        assert_eq!(sni_only.cluster.tls.unwrap().expect_identity, None);
        // A raw buffer is plain.
        let plain = Cluster {
            transport_socket: Some(TransportSocket {
                name: "raw".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
                    RawBuffer {},
                ))),
            }),
            ..static_cluster()
        };
        assert!(cluster(&plain).unwrap().cluster.tls.is_none());
    }

    #[test]
    fn upstream_tls_refusals_name_the_field() {
        const CTX: &str = "transport_socket.typed_config.common_tls_context";
        assert_eq!(
            refused(&with_tls(tls(vec![], ""))),
            format!("{CTX}.validation_context")
        );
        let regex_uri = tls(
            vec![san(
                SanType::Uri,
                MatchPattern::Prefix("spiffe://td/ns/".into()),
            )],
            "",
        );
        assert_eq!(
            refused(&with_tls(regex_uri)),
            format!("{CTX}.validation_context.match_typed_subject_alt_names[0]")
        );
        let mut no_ca = tls(vec![], "x.example");
        if let Some(ValidationContextType::ValidationContext(v)) = &mut no_ca
            .common_tls_context
            .as_mut()
            .unwrap()
            .validation_context_type
        {
            v.trusted_ca = None;
        }
        assert_eq!(
            refused(&with_tls(no_ca)),
            format!("{CTX}.validation_context.trusted_ca")
        );
        let mut sds = tls(vec![], "x.example");
        sds.common_tls_context
            .as_mut()
            .unwrap()
            .tls_certificate_sds_secret_configs = vec![SdsSecretConfig::default()];
        let r = cluster(&with_tls(sds)).unwrap_err();
        assert_eq!(r.field, format!("{CTX}.tls_certificate_sds_secret_configs"));
        assert_eq!(r.message, "give the certificate inline or by SDS, not both");
        let mut inline = tls(vec![], "x.example");
        inline.common_tls_context.as_mut().unwrap().tls_certificates[0].private_key =
            Some(DataSource {
                specifier: Some(data_source::Specifier::InlineBytes(b"KEY".to_vec())),
                ..Default::default()
            });
        let r = cluster(&with_tls(inline)).unwrap_err();
        assert_eq!(
            r.field,
            format!("{CTX}.tls_certificates[0].private_key.inline_bytes")
        );
        assert!(r.message.contains("use a file or SDS"));
        let mut alpn = tls(vec![], "x.example");
        alpn.common_tls_context.as_mut().unwrap().alpn_protocols = vec!["h2".into()];
        assert_eq!(refused(&with_tls(alpn)), format!("{CTX}.alpn_protocols"));
        let renegotiate = UpstreamTlsContext {
            allow_renegotiation: true,
            ..tls(vec![], "x.example")
        };
        assert_eq!(
            refused(&with_tls(renegotiate)),
            "transport_socket.typed_config.allow_renegotiation"
        );
    }

    #[test]
    fn unsupported_cluster_fields_are_refused_by_name() {
        assert_eq!(
            refused(&Cluster {
                name: String::new(),
                ..static_cluster()
            }),
            "name"
        );
        let meta = Metadata {
            filter_metadata: [("istio".to_owned(), Struct::default())].into(),
            ..Default::default()
        };
        assert_eq!(
            refused(&Cluster {
                metadata: Some(meta),
                ..static_cluster()
            }),
            "metadata.filter_metadata"
        );
        assert_eq!(
            refused(&Cluster {
                per_connection_buffer_limit_bytes: u32v(32768),
                ..static_cluster()
            }),
            "per_connection_buffer_limit_bytes"
        );
        assert_eq!(
            refused(&Cluster {
                transport_socket_matches: vec![Default::default()],
                ..static_cluster()
            }),
            "transport_socket_matches"
        );
        assert_eq!(
            refused(&Cluster {
                wait_for_warm_on_init: Some(BoolValue { value: false }),
                ..static_cluster()
            }),
            "wait_for_warm_on_init"
        );
        assert_eq!(
            refused(&Cluster {
                cluster_discovery_type: Some(ClusterDiscoveryType::ClusterType(Default::default())),
                ..static_cluster()
            }),
            "cluster_type"
        );
        assert_eq!(
            refused(&Cluster {
                eds_cluster_config: Some(Default::default()),
                ..static_cluster()
            }),
            "eds_cluster_config"
        );
        // Names and stats are accepted.
        assert!(
            cluster(&Cluster {
                alt_stat_name: "web_stats".into(),
                ..static_cluster()
            })
            .is_ok()
        );
    }
}
