//! EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment` → Weir's endpoint list (what the
//! endpoint-update path takes). The same walk reads the `load_assignment` of STATIC and DNS
//! clusters (`cluster.rs`), and [`ip_port`] reads a listener's address.
//!
//! | field | Weir | notes |
//! |---|---|---|
//! | `cluster_name` | accepted | a name: the client matched it already |
//! | `endpoints[].locality` | `zone` | `region/zone/sub_zone`, empty parts skipped; none: no zone |
//! | `endpoints[].priority` | `priority` | 0–127 |
//! | `endpoints[].load_balancing_weight` | accepted and ignored | Envoy reads it only with `locality_weighted_lb_config`, which a cluster cannot have in Weir |
//! | `endpoints[].lb_endpoints[].endpoint.address.socket_address` | `address` | an IP literal and `port_value`, TCP (hostnames only in DNS clusters) |
//! | `…lb_endpoints[].endpoint.hostname`, `.observability_name` | accepted and ignored | names |
//! | `…lb_endpoints[].health_status` | `health` | UNKNOWN, HEALTHY → healthy; DRAINING → draining; UNHEALTHY, TIMEOUT, DEGRADED → unhealthy (Weir has no degraded tier: a degraded endpoint gets requests only when its level panics) |
//! | `…lb_endpoints[].load_balancing_weight` | `weight` | default 1; 1–10000 |
//! | `policy.overprovisioning_factor` | checked | absent or 140 (Envoy's default, and Weir's 1.4) |
//!
//! Refused when set: `named_endpoints`, `policy.drop_overloads`, `policy.endpoint_stale_after`,
//! `policy.weighted_priority_health`, any `metadata` that is not empty (it drives subsets and
//! transport-socket matches), `endpoint_name`, `health_check_config`, `additional_addresses`,
//! `proximity`, LEDS (`leds_cluster_locality_config`, `load_balancer_endpoints`), pipe and
//! internal addresses, named ports, `resolver_name`, `ipv4_compat`, `network_namespace_filepath`,
//! UDP. An address listed twice is refused (Weir keys endpoints by address).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality, Metadata, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, cluster_load_assignment,
    lb_endpoint, locality_lb_endpoints::LbConfig,
};

use super::{At, Rejection, unsupported};
use crate::config::{EndpointConfig, EndpointHealth, MAX_PRIORITY, MAX_WEIGHT};

/// An EDS assignment as Weir's endpoints.
pub fn load_assignment(cla: &ClusterLoadAssignment) -> Result<Vec<EndpointConfig>, Rejection> {
    let hosts = hosts(cla, ip_port)?;
    let mut seen = HashMap::with_capacity(hosts.len());
    for h in &hosts {
        if let Some(first) = seen.insert(h.address, &h.field) {
            return Err(Rejection::new(
                format!("{}.endpoint.address", h.field),
                format!("{} is listed twice (also at {first})", h.address),
            ));
        }
    }
    Ok(hosts
        .into_iter()
        .map(|h| EndpointConfig {
            address: h.address,
            weight: h.weight,
            priority: h.priority,
            zone: h.zone,
            health: h.health,
        })
        .collect())
}

/// One endpoint of an assignment, its address read by the caller's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Host<A> {
    pub address: A,
    pub weight: u32,
    pub priority: u32,
    pub zone: Option<String>,
    pub health: EndpointHealth,
    /// `endpoints[i].lb_endpoints[j]`, for a caller's rejection.
    pub field: String,
}

/// Every endpoint of `cla`, in order, each address read by `address` (which names fields
/// relative to the `socket_address`).
pub(super) fn hosts<A>(
    cla: &ClusterLoadAssignment,
    address: fn(&SocketAddress) -> Result<A, Rejection>,
) -> Result<Vec<Host<A>>, Rejection> {
    let ClusterLoadAssignment {
        cluster_name: _, // the client matched the assignment to its cluster by this name
        endpoints,
        named_endpoints,
        policy,
    } = cla;
    unsupported!(named_endpoints);
    if let Some(p) = policy {
        check_policy(p).at("policy")?;
    }
    let mut out = Vec::new();
    for (i, l) in endpoints.iter().enumerate() {
        locality(l, i, address, &mut out).at(format_args!("endpoints[{i}]"))?;
    }
    Ok(out)
}

fn check_policy(p: &cluster_load_assignment::Policy) -> Result<(), Rejection> {
    let cluster_load_assignment::Policy {
        drop_overloads,
        overprovisioning_factor,
        endpoint_stale_after,
        weighted_priority_health,
    } = p;
    unsupported!(
        drop_overloads,
        endpoint_stale_after,
        weighted_priority_health
    );
    match overprovisioning_factor {
        None => Ok(()),
        Some(f) if f.value == 140 => Ok(()),
        Some(_) => Err(Rejection::new(
            "overprovisioning_factor",
            "only Envoy's default, 140, is supported",
        )),
    }
}

fn locality<A>(
    l: &LocalityLbEndpoints,
    i: usize,
    address: fn(&SocketAddress) -> Result<A, Rejection>,
    out: &mut Vec<Host<A>>,
) -> Result<(), Rejection> {
    let LocalityLbEndpoints {
        locality,
        metadata,
        lb_endpoints,
        // Envoy reads locality weights only with `locality_weighted_lb_config`, which no
        // cluster Weir accepts has: ignoring them is what Envoy does.
        load_balancing_weight: _,
        priority,
        proximity,
        lb_config,
    } = l;
    unsupported!(proximity);
    match lb_config {
        None => {}
        Some(LbConfig::LoadBalancerEndpoints(_)) => {
            return Err(Rejection::unsupported("load_balancer_endpoints"));
        }
        Some(LbConfig::LedsClusterLocalityConfig(_)) => {
            return Err(Rejection::unsupported("leds_cluster_locality_config"));
        }
    }
    check_metadata(metadata.as_ref()).at("metadata")?;
    if *priority > MAX_PRIORITY {
        return Err(Rejection::new(
            "priority",
            format!("must be between 0 and {MAX_PRIORITY}"),
        ));
    }
    let zone = locality.as_ref().and_then(zone);
    for (j, e) in lb_endpoints.iter().enumerate() {
        let (addr, weight, health) =
            lb_endpoint(e, address).at(format_args!("lb_endpoints[{j}]"))?;
        out.push(Host {
            address: addr,
            weight,
            priority: *priority,
            zone: zone.clone(),
            health,
            field: format!("endpoints[{i}].lb_endpoints[{j}]"),
        });
    }
    Ok(())
}

/// `region/zone/sub_zone` without its empty parts; `None` when all are empty.
fn zone(l: &Locality) -> Option<String> {
    let Locality {
        region,
        zone,
        sub_zone,
    } = l;
    let parts: Vec<&str> = [region, zone, sub_zone]
        .into_iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Metadata is accepted only when empty: it is what subsets, transport-socket matches and
/// filters read, none of which Weir has.
pub(super) fn check_metadata(m: Option<&Metadata>) -> Result<(), Rejection> {
    let Some(Metadata {
        filter_metadata,
        typed_filter_metadata,
    }) = m
    else {
        return Ok(());
    };
    unsupported!(filter_metadata, typed_filter_metadata);
    Ok(())
}

fn lb_endpoint<A>(
    e: &LbEndpoint,
    address: fn(&SocketAddress) -> Result<A, Rejection>,
) -> Result<(A, u32, EndpointHealth), Rejection> {
    let LbEndpoint {
        health_status,
        metadata,
        load_balancing_weight,
        host_identifier,
    } = e;
    check_metadata(metadata.as_ref()).at("metadata")?;
    let health = match HealthStatus::try_from(*health_status) {
        Ok(HealthStatus::Unknown | HealthStatus::Healthy) => EndpointHealth::Healthy,
        Ok(HealthStatus::Draining) => EndpointHealth::Draining,
        Ok(HealthStatus::Unhealthy | HealthStatus::Timeout | HealthStatus::Degraded) => {
            EndpointHealth::Unhealthy
        }
        Err(_) => return Err(Rejection::new("health_status", "is not a known status")),
    };
    let weight = load_balancing_weight.as_ref().map_or(1, |w| w.value);
    if !(1..=MAX_WEIGHT).contains(&weight) {
        return Err(Rejection::new(
            "load_balancing_weight",
            format!("must be between 1 and {MAX_WEIGHT}"),
        ));
    }
    let endpoint = match host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e,
        Some(lb_endpoint::HostIdentifier::EndpointName(_)) => {
            return Err(Rejection::new(
                "endpoint_name",
                "named endpoints are not supported by Weir",
            ));
        }
        None => return Err(Rejection::new("endpoint", "is required")),
    };
    let addr = endpoint_address(endpoint, address).at("endpoint")?;
    Ok((addr, weight, health))
}

fn endpoint_address<A>(
    e: &Endpoint,
    address: fn(&SocketAddress) -> Result<A, Rejection>,
) -> Result<A, Rejection> {
    let Endpoint {
        address: addr,
        health_check_config,
        hostname: _, // a name for logs and `auto_host_rewrite`, which Weir refuses
        additional_addresses,
        observability_name: _, // a name for stats
    } = e;
    unsupported!(health_check_config, additional_addresses);
    let a = addr
        .as_ref()
        .ok_or_else(|| Rejection::new("address", "is required"))?;
    socket_address(a, address).at("address")
}

/// The socket address inside an `Address` (pipes and internal addresses are refused).
pub(super) fn socket_address<A>(
    a: &Address,
    read: fn(&SocketAddress) -> Result<A, Rejection>,
) -> Result<A, Rejection> {
    match &a.address {
        Some(address::Address::SocketAddress(sa)) => read(sa).at("socket_address"),
        Some(address::Address::Pipe(_)) => Err(Rejection::unsupported("pipe")),
        Some(address::Address::EnvoyInternalAddress(_)) => {
            Err(Rejection::unsupported("envoy_internal_address"))
        }
        None => Err(Rejection::new("socket_address", "is required")),
    }
}

/// The parts of a `SocketAddress` every use shares: TCP, a numeric port, nothing else set.
fn host_and_port(sa: &SocketAddress) -> Result<(&str, u16), Rejection> {
    let SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    } = sa;
    if *protocol != socket_address::Protocol::Tcp as i32 {
        return Err(Rejection::new("protocol", "Weir speaks TCP only"));
    }
    unsupported!(resolver_name, ipv4_compat, network_namespace_filepath);
    let port = match port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p)
            .map_err(|_| Rejection::new("port_value", "must be between 0 and 65535"))?,
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(Rejection::unsupported("named_port"));
        }
        None => return Err(Rejection::new("port_value", "is required")),
    };
    if address.is_empty() {
        return Err(Rejection::new("address", "is required"));
    }
    Ok((address, port))
}

/// An IP literal and a port (EDS and STATIC endpoints, listener addresses).
pub(super) fn ip_port(sa: &SocketAddress) -> Result<SocketAddr, Rejection> {
    let (host, port) = host_and_port(sa)?;
    let ip: IpAddr = host.parse().map_err(|_| {
        Rejection::new(
            "address",
            format!("`{host}` is not an IP address (only DNS clusters resolve names)"),
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// `host:port` for a DNS cluster (`[v6]:port` for an IPv6 literal).
pub(super) fn host_port(sa: &SocketAddress) -> Result<String, Rejection> {
    let (host, port) = host_and_port(sa)?;
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
    use envoy_types::pb::google::protobuf::{Struct, UInt32Value};

    use super::*;

    pub(in crate::xds::translate) fn sock(addr: &str, port: u32) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: addr.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }
    }

    fn lbe(addr: &str, port: u32) -> LbEndpoint {
        LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(sock(addr, port)),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn cla(localities: Vec<LocalityLbEndpoints>) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: localities,
            ..Default::default()
        }
    }

    #[test]
    fn maps_addresses_weights_priorities_zones_and_health() {
        let a = cla(vec![
            LocalityLbEndpoints {
                locality: Some(Locality {
                    region: "eu".into(),
                    zone: "eu-1a".into(),
                    sub_zone: String::new(),
                }),
                lb_endpoints: vec![
                    lbe("10.0.0.1", 80),
                    LbEndpoint {
                        health_status: HealthStatus::Draining as i32,
                        load_balancing_weight: Some(UInt32Value { value: 7 }),
                        ..lbe("::1", 8080)
                    },
                ],
                load_balancing_weight: Some(UInt32Value { value: 3 }),
                ..Default::default()
            },
            LocalityLbEndpoints {
                priority: 1,
                lb_endpoints: vec![LbEndpoint {
                    health_status: HealthStatus::Degraded as i32,
                    ..lbe("10.0.0.2", 80)
                }],
                ..Default::default()
            },
        ]);
        let eps = load_assignment(&a).unwrap();
        assert_eq!(
            eps,
            [
                EndpointConfig {
                    zone: Some("eu/eu-1a".into()),
                    ..EndpointConfig::at("10.0.0.1:80".parse().unwrap())
                },
                EndpointConfig {
                    address: "[::1]:8080".parse().unwrap(),
                    weight: 7,
                    priority: 0,
                    zone: Some("eu/eu-1a".into()),
                    health: EndpointHealth::Draining,
                },
                EndpointConfig {
                    priority: 1,
                    health: EndpointHealth::Unhealthy,
                    ..EndpointConfig::at("10.0.0.2:80".parse().unwrap())
                },
            ]
        );
        assert_eq!(load_assignment(&cla(vec![])).unwrap(), []);
    }

    fn refused(a: &ClusterLoadAssignment) -> String {
        load_assignment(a).unwrap_err().field
    }

    #[test]
    fn refuses_what_weir_cannot_honour_by_field() {
        let one = |e: LbEndpoint| {
            cla(vec![LocalityLbEndpoints {
                lb_endpoints: vec![e],
                ..Default::default()
            }])
        };
        assert_eq!(
            refused(&one(lbe("backend.example", 80))),
            "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
        );
        assert_eq!(
            refused(&one(LbEndpoint {
                load_balancing_weight: Some(UInt32Value { value: 0 }),
                ..lbe("10.0.0.1", 80)
            })),
            "endpoints[0].lb_endpoints[0].load_balancing_weight"
        );
        assert_eq!(
            refused(&one(LbEndpoint {
                load_balancing_weight: Some(UInt32Value { value: 10_001 }),
                ..lbe("10.0.0.1", 80)
            })),
            "endpoints[0].lb_endpoints[0].load_balancing_weight"
        );
        let mut named = lbe("10.0.0.1", 80);
        if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &mut named.host_identifier {
            e.address = Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "10.0.0.1".into(),
                    port_specifier: Some(socket_address::PortSpecifier::NamedPort("http".into())),
                    ..Default::default()
                })),
            });
        }
        assert_eq!(
            refused(&one(named)),
            "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.named_port"
        );
        let meta = Metadata {
            filter_metadata: [("istio".to_owned(), Struct::default())].into(),
            ..Default::default()
        };
        assert_eq!(
            refused(&one(LbEndpoint {
                metadata: Some(meta),
                ..lbe("10.0.0.1", 80)
            })),
            "endpoints[0].lb_endpoints[0].metadata.filter_metadata"
        );
        // Empty metadata means nothing.
        assert!(
            load_assignment(&one(LbEndpoint {
                metadata: Some(Metadata::default()),
                ..lbe("10.0.0.1", 80)
            }))
            .is_ok()
        );
        let pipe = LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::Pipe(Default::default())),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            refused(&one(pipe)),
            "endpoints[0].lb_endpoints[0].endpoint.address.pipe"
        );
        let high = cla(vec![LocalityLbEndpoints {
            priority: 128,
            ..Default::default()
        }]);
        assert_eq!(refused(&high), "endpoints[0].priority");
        let twice = cla(vec![LocalityLbEndpoints {
            lb_endpoints: vec![lbe("10.0.0.1", 80), lbe("10.0.0.1", 80)],
            ..Default::default()
        }]);
        let r = load_assignment(&twice).unwrap_err();
        assert_eq!(r.field, "endpoints[0].lb_endpoints[1].endpoint.address");
        assert!(r.message.contains("endpoints[0].lb_endpoints[0]"), "{r}");
    }

    #[test]
    fn policy_keeps_envoys_default_only() {
        let with = |f: u32| ClusterLoadAssignment {
            policy: Some(Policy {
                overprovisioning_factor: Some(UInt32Value { value: f }),
                ..Default::default()
            }),
            ..cla(vec![])
        };
        assert!(load_assignment(&with(140)).is_ok());
        assert_eq!(refused(&with(100)), "policy.overprovisioning_factor");
        let drops = ClusterLoadAssignment {
            policy: Some(Policy {
                drop_overloads: vec![Default::default()],
                ..Default::default()
            }),
            ..cla(vec![])
        };
        assert_eq!(refused(&drops), "policy.drop_overloads");
        let named = ClusterLoadAssignment {
            named_endpoints: [("a".to_owned(), Endpoint::default())].into(),
            ..cla(vec![])
        };
        assert_eq!(refused(&named), "named_endpoints");
    }

    #[test]
    fn dns_hosts_keep_names_and_bracket_v6() {
        let sa = |a: &str| SocketAddress {
            address: a.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(443)),
            ..Default::default()
        };
        assert_eq!(
            host_port(&sa("api.example.com")).unwrap(),
            "api.example.com:443"
        );
        assert_eq!(host_port(&sa("2001:db8::1")).unwrap(), "[2001:db8::1]:443");
        assert_eq!(host_port(&sa("")).unwrap_err().field, "address");
        let udp = SocketAddress {
            protocol: socket_address::Protocol::Udp as i32,
            ..sa("10.0.0.1")
        };
        assert_eq!(ip_port(&udp).unwrap_err().field, "protocol");
    }
}
