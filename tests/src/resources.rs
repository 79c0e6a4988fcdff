//! Envoy v3 resources, built the way a control plane sends them, for the xDS tests (the
//! scripted server in [`crate::xds`] serves them; Envoy and weir both read them).
//!
//! Each builder makes the smallest resource of its kind that does the job; a test changes what
//! it needs with struct update syntax on the result.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::config::listener::v3 as ls;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::Duration;

use crate::xds::any;

pub use cl::Cluster;
pub use ep::ClusterLoadAssignment;
pub use ls::Listener;
pub use rt::RouteConfiguration;

/// The ADS config source (`{ads: {}, resource_api_version: V3}`).
pub fn ads() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// A cluster whose endpoints come by EDS under its own name.
pub fn eds_cluster(name: &str) -> cl::Cluster {
    cl::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(
            cl::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A socket address.
pub fn address(a: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                a.port().into(),
            )),
            ..Default::default()
        })),
    }
}

/// One endpoint: address, weight, priority.
pub struct Ep {
    pub addr: SocketAddr,
    pub weight: u32,
    pub priority: u32,
}

impl From<SocketAddr> for Ep {
    fn from(addr: SocketAddr) -> Ep {
        Ep {
            addr,
            weight: 1,
            priority: 0,
        }
    }
}

/// A `ClusterLoadAssignment` for `cluster`: one locality per priority (zone `zone-P`).
pub fn load_assignment(
    cluster: &str,
    eps: impl IntoIterator<Item = Ep>,
) -> ep::ClusterLoadAssignment {
    let mut by_priority: std::collections::BTreeMap<u32, Vec<ep::LbEndpoint>> = Default::default();
    for e in eps {
        by_priority
            .entry(e.priority)
            .or_default()
            .push(ep::LbEndpoint {
                host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                    address: Some(address(e.addr)),
                    ..Default::default()
                })),
                load_balancing_weight: Some(envoy_types::pb::google::protobuf::UInt32Value {
                    value: e.weight,
                }),
                ..Default::default()
            });
    }
    ep::ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: by_priority
            .into_iter()
            .map(|(priority, lb_endpoints)| ep::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    zone: format!("zone-{priority}"),
                    ..Default::default()
                }),
                lb_endpoints,
                priority,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The router, the last HTTP filter.
pub fn router_filter() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
            &Router::default(),
        ))),
        ..Default::default()
    }
}

/// A listener on `addr` whose HTTP connection manager takes its routes from RDS `routes` and
/// runs `filters` before the router.
pub fn listener(
    name: &str,
    addr: SocketAddr,
    routes: &str,
    filters: Vec<hcm::HttpFilter>,
) -> ls::Listener {
    let mut http_filters = filters;
    http_filters.push(router_filter());
    let manager = hcm::HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: routes.into(),
            },
        )),
        http_filters,
        ..Default::default()
    };
    ls::Listener {
        name: name.into(),
        address: Some(address(addr)),
        filter_chains: vec![ls::FilterChain {
            filters: vec![ls::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ls::filter::ConfigType::TypedConfig(any(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route that sends a path prefix to one cluster.
pub fn prefix_route(prefix: &str, cluster: &str) -> rt::Route {
    rt::Route {
        r#match: Some(rt::RouteMatch {
            path_specifier: Some(rt::route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(rt::route::Action::Route(rt::RouteAction {
            cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A route configuration with one virtual host for every domain.
pub fn route_config(name: &str, routes: Vec<rt::Route>) -> rt::RouteConfiguration {
    rt::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![rt::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A data source holding `s` inline.
pub fn inline(s: &str) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineString(s.into())),
        ..Default::default()
    }
}

/// A data source naming the file at `path`.
pub fn file(path: &str) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path.into())),
        ..Default::default()
    }
}

/// A subject-alt-name matcher: a URI SAN equal to `san` (a SPIFFE ID).
fn uri_san(
    san: &str,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SubjectAltNameMatcher {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use envoy_types::pb::envoy::r#type::matcher::v3 as m;
    tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(m::StringMatcher {
            match_pattern: Some(m::string_matcher::MatchPattern::Exact(san.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `envoy.transport_sockets.tls` transport socket carrying `context` (a TLS context).
fn tls_socket<M: prost::Message + prost::Name>(context: &M) -> core::TransportSocket {
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(
            context,
        ))),
    }
}

/// A cluster's `transport_socket`: TLS to the endpoints, whose certificates must chain to the PEM
/// bundle at `ca` and carry the SPIFFE ID `san` (a URI SAN).
pub fn upstream_tls(ca: &str, san: &str) -> core::TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    let context = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::ValidationContext(
                    tls::CertificateValidationContext {
                        trusted_ca: Some(file(ca)),
                        match_typed_subject_alt_names: vec![uri_san(san)],
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    tls_socket(&context)
}

/// [`listener`] terminating TLS with the certificate of SDS secret `secret`.
pub fn tls_listener(name: &str, addr: SocketAddr, routes: &str, secret: &str) -> ls::Listener {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    let context = tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![tls::SdsSecretConfig {
                name: secret.into(),
                sds_config: Some(ads()),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut l = listener(name, addr, routes, vec![]);
    l.filter_chains[0].transport_socket = Some(tls_socket(&context));
    l
}

/// An SDS secret holding a certificate chain and its key (PEM, inline).
pub fn tls_secret(
    name: &str,
    cert_pem: &str,
    key_pem: &str,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    tls::Secret {
        name: name.into(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: Some(inline(cert_pem)),
            private_key: Some(inline(key_pem)),
            ..Default::default()
        })),
    }
}

/// An SDS secret holding a trust bundle (`validation_context.trusted_ca`, PEM, inline).
pub fn validation_secret(
    name: &str,
    ca_pem: &str,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    tls::Secret {
        name: name.into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: Some(inline(ca_pem)),
                ..Default::default()
            },
        )),
    }
}

/// A cluster's `transport_socket` as Istio writes it: mutual TLS to the endpoints with the client
/// certificate of SDS secret `cert`, the trust bundle of SDS secret `ca`
/// (`combined_validation_context`), and the upstream's SPIFFE ID `san` (URI `exact`) in the
/// context's `default_validation_context`.
pub fn upstream_mtls_sds(cert: &str, ca: &str, san: &str) -> core::TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    let sds = |name: &str| tls::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ads()),
    };
    let context = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(cert)],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            match_typed_subject_alt_names: vec![uri_san(san)],
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(ca)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    tls_socket(&context)
}

/// A cluster's `typed_extension_protocol_options` speaking HTTP/2 to the endpoints
/// (`explicit_http_config.http2_protocol_options {}`).
pub fn http2_protocol_options()
-> std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions,
        http_protocol_options::{
            ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
        },
    };
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
            },
        )),
        ..Default::default()
    };
    [(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
        any(&options),
    )]
    .into()
}

/// An HTTP filter whose configuration comes by ECDS under `name` (a Wasm filter).
pub fn ecds_filter(name: &str) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::ConfigDiscovery(
            core::ExtensionConfigSource {
                config_source: Some(ads()),
                type_urls: vec![
                    "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm".into(),
                ],
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// A Wasm filter's configuration (ECDS `TypedExtensionConfig`): the module at `module` (an
/// absolute path) with the plugin configuration `config` (JSON, as a StringValue).
pub fn wasm_extension(name: &str, module: &str, config: &str) -> core::TypedExtensionConfig {
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
    use envoy_types::pb::envoy::extensions::wasm::v3 as w;
    let plugin = w::PluginConfig {
        name: name.into(),
        configuration: Some(any(&envoy_types::pb::google::protobuf::StringValue {
            value: config.into(),
        })),
        vm: Some(w::plugin_config::Vm::VmConfig(w::VmConfig {
            runtime: "envoy.wasm.runtime.v8".into(),
            code: Some(core::AsyncDataSource {
                specifier: Some(core::async_data_source::Specifier::Local(file(module))),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    core::TypedExtensionConfig {
        name: name.into(),
        typed_config: Some(any(&Wasm {
            config: Some(plugin),
        })),
    }
}
