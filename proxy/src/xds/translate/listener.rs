//! LDS: `envoy.config.listener.v3.Listener` → [`ListenerSpec`] (a manifest listener, the Wasm
//! filters before its router, and where its routes come from), and the Wasm HTTP filter
//! ([`wasm_filter`]), which ECDS's `TypedExtensionConfig` uses too.
//!
//! Listener:
//!
//! | field | Weir | notes |
//! |---|---|---|
//! | `name` | the listener's name | required |
//! | `address.socket_address` | `address` | IP literal and `port_value`, TCP |
//! | `filter_chains` | the listener | exactly one, with an empty `filter_chain_match` and one network filter, the HTTP connection manager |
//! | `filter_chains[0].transport_socket` | `tls` | `DownstreamTlsContext` (or `RawBuffer`: plain), below |
//! | `filter_chains[0].transport_socket_connect_timeout` | `tls.handshake_timeout` | positive |
//! | `listener_filters` | checked | `envoy.filters.listener.tls_inspector` only, with default settings: accepted and ignored (Weir reads the ClientHello itself) |
//! | `enable_reuse_port`, `reuse_port` (deprecated), `bind_to_port` | checked | absent or true (Weir always binds with `SO_REUSEPORT`) |
//! | `stat_prefix`, `stats_matcher`, `traffic_direction`, `filter_chains[0].name` | accepted and ignored | stats naming, and an informational direction |
//!
//! Refused when set: `additional_addresses`, `filter_chain_matcher`, `default_filter_chain`,
//! `fcds_config`, `use_original_dst`, `per_connection_buffer_limit_bytes` (it also bounds what a
//! filter may buffer), `metadata`, `drain_type` MODIFY_ONLY, `listener_filters_timeout`,
//! `transparent`, `freebind`, `socket_options`, `tcp_fast_open_queue_length`, UDP and API
//! listeners, `connection_balance_config`, `access_log`, `tcp_backlog_size`, `enable_mptcp`,
//! `tcp_keepalive`, internal listeners, and a filter chain's `metadata` or `use_proxy_proto`.
//!
//! `DownstreamTlsContext`: `common_tls_context` (see `mod.rs`) → `cert`, `key` (required),
//! `validation_context.trusted_ca` → `client_ca`, subject-alt-name matchers `spiffe://TD/`
//! (prefix, URI or untyped) → `trust_domains` (other matchers are refused: a listener admits
//! clients by trust domain), `alpn_protocols` → `alpn` (`h2`, `http/1.1`; absent: Weir offers
//! both, where Envoy offers none and tells h2 by its preface), `tls_minimum_protocol_version` →
//! `min_version`; `require_client_certificate` true → `client_auth: required`, otherwise
//! `optional` with a trust bundle and `none` without. Refused: `require_sni`, session settings,
//! OCSP policies other than the default, `prefer_client_ciphers`.
//!
//! HTTP connection manager (`envoy.extensions.filters.network.http_connection_manager.v3`):
//!
//! | field | Weir | notes |
//! |---|---|---|
//! | `codec_type` | checked | AUTO, HTTP1, HTTP2 (Weir serves both HTTP/1.1 and HTTP/2 on every listener, AUTO's behaviour); HTTP3 refused |
//! | `rds` | [`RouteSource::Rds`] | `route_config_name`; `config_source` `ads {}` or `self {}` |
//! | `route_config` | [`RouteSource::Inline`] | see `route.rs` |
//! | `http_filters` | `filters` | in order: `envoy.extensions.filters.http.wasm.v3.Wasm` → a Wasm filter, `config_discovery` → ECDS (its `type_urls` must be the Wasm type only); the router (`envoy.extensions.filters.http.router.v3.Router`) must come last; another type is refused unless `is_optional`, then skipped (Envoy's rule); `disabled` refused for now |
//! | `common_http_protocol_options` | `limits` | `idle_timeout` → `idle_timeout`, `max_headers_count` → `max_request_headers` |
//! | `max_request_headers_kb` | `limits.max_request_headers_size` | |
//! | `request_headers_timeout` | `limits.header_read_timeout` | positive |
//! | `http2_protocol_options.max_concurrent_streams` | `limits.h2_max_concurrent_streams` | other HTTP/2 options refused |
//! | `forward_client_cert_details` | `tls.forward_client_cert` | SANITIZE (Envoy's default) → `sanitize`, SANITIZE_SET → `sanitize_set`; others refused. A client's header is always removed |
//! | `generate_request_id` | checked | absent or true: Weir always sets `x-request-id` |
//! | `stat_prefix` | accepted and ignored | stats naming |
//!
//! Limits not given keep Weir's defaults: the header size and count are Envoy's (60 KiB, 100);
//! Weir also bounds the header read (10 s), idle connections (5 min) and HTTP/2 streams per
//! connection (100), where Envoy has no bound, 1 h and 2³¹. Envoy's 5-minute
//! `stream_idle_timeout` has no Weir equivalent; setting it is refused. Everything else set
//! (tracing, access logs, `use_remote_address` and the other forwarding settings, path
//! normalisation, upgrades, local reply mapping, `server_name`, …) is refused by name.
//!
//! Router filter: `suppress_envoy_headers` and `dynamic_stats`,
//! `suppress_grpc_request_failure_code_stats` are accepted (Weir adds no `x-envoy-*` headers
//! and its stats are fixed); everything else must be unset.
//!
//! Wasm filter (`envoy.extensions.filters.http.wasm.v3.Wasm`, its `config`):
//!
//! | field | Weir | notes |
//! |---|---|---|
//! | `vm_config.code.local.filename` | `module` | an absolute path, or `builtin:NAME` for one of Weir's stock filters |
//! | `vm_config.runtime` | checked | empty or `envoy.wasm.runtime.{v8,wasmtime,wamr,wavm}`: Weir runs every module on wasmtime; `null` refused |
//! | `configuration`, `vm_config.configuration` | `config`, `vm_config` | a `StringValue` or `BytesValue` holding JSON, or a `Struct` (which Envoy hands over as JSON too); Weir's filters read JSON, so anything else is refused |
//! | `failure_policy`, `fail_open` (deprecated) | `failure_policy` | FAIL_CLOSED (and UNSPECIFIED) → fail_closed, FAIL_OPEN → fail_open, FAIL_RELOAD → reload; `fail_open: true` → fail_open; the two must agree |
//! | `name`, `vm_config.vm_id`, `vm_config.allow_precompiled`, `vm_config.nack_on_code_cache_miss` | accepted and ignored | names; Weir gives each filter its own VM; it never loads precompiled code; it fetches no remote code |
//! | `allow_on_headers_stop_iteration` | checked | absent or false |
//!
//! Refused: a non-empty `root_id` (Weir runs one root context per filter), inline
//! (`inline_bytes`, `inline_string`) and remote modules ("not supported yet"),
//! `environment_variables`, `capability_restriction_config`, `reload_config`.

use envoy_types::pb::envoy::config::core::v3::{
    ExtensionConfigSource, HttpProtocolOptions as CoreHttpOptions, TransportSocket,
    async_data_source, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener,
    listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
    http_connection_manager::{CodecType, ForwardClientCertDetails, RouteSpecifier},
    http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, downstream_tls_context::OcspStaplePolicy,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig, VmConfig, plugin_config,
};
use envoy_types::pb::google::protobuf::{Any, BytesValue, StringValue, Struct, value};
use prost::Name;

use super::endpoint::{check_metadata, ip_port, socket_address};
use super::{
    At, HttpFilterSpec, ListenerSpec, Rejection, RouteSource, common_tls, config_source,
    http1_options, http2_options, keep_bool, positive, route_config, type_name, unpack,
    unsupported,
};
use crate::config::raw;
use crate::config::units::HumanSize;

/// Runtimes whose modules are ordinary Wasm, which Weir runs on wasmtime.
const RUNTIMES: [&str; 4] = [
    "envoy.wasm.runtime.v8",
    "envoy.wasm.runtime.wasmtime",
    "envoy.wasm.runtime.wamr",
    "envoy.wasm.runtime.wavm",
];

/// An LDS listener as a manifest listener, its filters and its route source.
pub fn listener(l: &Listener) -> Result<ListenerSpec, Rejection> {
    let Listener {
        name,
        address,
        additional_addresses,
        stat_prefix: _,   // stats naming
        stats_matcher: _, // stats selection
        filter_chains,
        fcds_config,
        filter_chain_matcher,
        use_original_dst,
        default_filter_chain,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        metadata,
        deprecated_v1,
        drain_type,
        listener_filters,
        listener_filters_timeout,
        continue_on_listener_filters_timeout,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        traffic_direction: _, // informational
        udp_listener_config,
        api_listener,
        connection_balance_config,
        reuse_port: _, // deprecated; Weir always uses SO_REUSEPORT
        enable_reuse_port,
        access_log,
        tcp_backlog_size,
        max_connections_to_accept_per_socket_event,
        bind_to_port,
        enable_mptcp,
        ignore_global_conn_limit,
        bypass_overload_manager,
        tcp_keepalive,
        listener_specifier,
    } = l;
    if name.is_empty() {
        return Err(Rejection::new("name", "is required"));
    }
    unsupported!(
        additional_addresses,
        fcds_config,
        filter_chain_matcher,
        use_original_dst,
        default_filter_chain,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        deprecated_v1,
        drain_type,
        listener_filters_timeout,
        continue_on_listener_filters_timeout,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        udp_listener_config,
        api_listener,
        connection_balance_config,
        access_log,
        tcp_backlog_size,
        max_connections_to_accept_per_socket_event,
        enable_mptcp,
        ignore_global_conn_limit,
        bypass_overload_manager,
        tcp_keepalive,
    );
    if let Some(listener::ListenerSpecifier::InternalListener(_)) = listener_specifier {
        return Err(Rejection::unsupported("internal_listener"));
    }
    check_metadata(metadata.as_ref()).at("metadata")?;
    keep_bool(enable_reuse_port.as_ref(), true, "enable_reuse_port")?;
    keep_bool(bind_to_port.as_ref(), true, "bind_to_port")?;
    for (i, f) in listener_filters.iter().enumerate() {
        listener_filter(f).at(format_args!("listener_filters[{i}]"))?;
    }
    let address = address
        .as_ref()
        .ok_or_else(|| Rejection::new("address", "is required"))?;
    let address = socket_address(address, ip_port).at("address")?;
    let chain = match filter_chains.as_slice() {
        [one] => one,
        [] => return Err(Rejection::new("filter_chains", "needs one filter chain")),
        [_, ..] => {
            return Err(Rejection::new(
                "filter_chains[1]",
                "Weir serves one filter chain per listener",
            ));
        }
    };
    let (tls, hcm) = filter_chain(chain).at("filter_chains[0]")?;
    let mut out = raw::Listener {
        name: name.clone(),
        address: address.to_string(),
        default_cluster: None,
        chain: None,
        limits: hcm.limits,
        tls,
    };
    if let Some(tls) = &mut out.tls {
        tls.forward_client_cert = hcm.forward_client_cert;
    }
    Ok(ListenerSpec {
        name: name.clone(),
        listener: out,
        filters: hcm.filters,
        routes: hcm.routes,
    })
}

fn listener_filter(f: &ListenerFilter) -> Result<(), Rejection> {
    let ListenerFilter {
        name: _,
        filter_disabled,
        config_type,
    } = f;
    unsupported!(filter_disabled);
    let any = match config_type {
        Some(listener_filter::ConfigType::TypedConfig(any)) => any,
        Some(listener_filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(Rejection::unsupported("config_discovery"));
        }
        None => return Err(Rejection::new("typed_config", "is required")),
    };
    if type_name(any) != TlsInspector::full_name() {
        return Err(Rejection::new(
            "typed_config",
            format!(
                "`{}` is not supported by Weir (only the TLS inspector)",
                any.type_url
            ),
        ));
    }
    let TlsInspector {
        enable_ja3_fingerprinting,
        enable_ja4_fingerprinting,
        initial_read_buffer_size,
        close_connection_on_client_hello_parsing_errors,
        max_client_hello_size,
    } = &unpack::<TlsInspector>(any, "typed_config")?;
    keep_bool(
        enable_ja3_fingerprinting.as_ref(),
        false,
        "typed_config.enable_ja3_fingerprinting",
    )?;
    keep_bool(
        enable_ja4_fingerprinting.as_ref(),
        false,
        "typed_config.enable_ja4_fingerprinting",
    )?;
    unsupported!(
        "typed_config.";
        initial_read_buffer_size,
        close_connection_on_client_hello_parsing_errors,
        max_client_hello_size,
    );
    Ok(())
}

/// What the HTTP connection manager gives the listener.
struct Hcm {
    limits: raw::ListenerLimits,
    forward_client_cert: raw::ForwardClientCert,
    filters: Vec<HttpFilterSpec>,
    routes: RouteSource,
}

fn filter_chain(c: &FilterChain) -> Result<(Option<raw::ListenerTls>, Hcm), Rejection> {
    let FilterChain {
        filter_chain_match,
        filters,
        use_proxy_proto,
        metadata,
        transport_socket,
        transport_socket_connect_timeout,
        name: _, // a name
    } = c;
    unsupported!(use_proxy_proto);
    check_metadata(metadata.as_ref()).at("metadata")?;
    if let Some(m) = filter_chain_match {
        empty_match(m).at("filter_chain_match")?;
    }
    let mut tls = transport_socket
        .as_ref()
        .map(|ts| downstream_tls(ts).at("transport_socket"))
        .transpose()?
        .flatten();
    if let Some(t) = positive(transport_socket_connect_timeout.as_ref())
        .at("transport_socket_connect_timeout")?
    {
        match &mut tls {
            Some(tls) => tls.handshake_timeout = Some(t),
            None => {
                return Err(Rejection::new(
                    "transport_socket_connect_timeout",
                    "bounds a TLS handshake: the chain has no TLS",
                ));
            }
        }
    }
    let filter = match filters.as_slice() {
        [one] => one,
        [] => {
            return Err(Rejection::new(
                "filters",
                "needs the HTTP connection manager",
            ));
        }
        [_, ..] => {
            return Err(Rejection::new(
                "filters[1]",
                "Weir runs one network filter, the HTTP connection manager",
            ));
        }
    };
    let hcm = network_filter(filter).at("filters[0]")?;
    Ok((tls, hcm))
}

/// A filter chain's match must match everything: Weir serves one chain.
fn empty_match(m: &FilterChainMatch) -> Result<(), Rejection> {
    let FilterChainMatch {
        destination_port,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
        server_names,
        transport_protocol,
        application_protocols,
    } = m;
    unsupported!(
        destination_port,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
        server_names,
        transport_protocol,
        application_protocols,
    );
    Ok(())
}

/// `None`: a plain (raw buffer) socket.
fn downstream_tls(ts: &TransportSocket) -> Result<Option<raw::ListenerTls>, Rejection> {
    let TransportSocket { name, config_type } = ts;
    let any = match config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => any,
        None if name == "envoy.transport_sockets.raw_buffer" => return Ok(None),
        None => return Err(Rejection::new("typed_config", "is required")),
    };
    if type_name(any) == RawBuffer::full_name() {
        return Ok(None);
    }
    if type_name(any) != DownstreamTlsContext::full_name() {
        return Err(Rejection::new(
            "typed_config",
            format!(
                "`{}` is not supported by Weir (only TLS and raw buffer)",
                any.type_url
            ),
        ));
    }
    let ctx: DownstreamTlsContext = unpack(any, "typed_config")?;
    tls_context(&ctx).map(Some).at("typed_config")
}

fn tls_context(t: &DownstreamTlsContext) -> Result<raw::ListenerTls, Rejection> {
    let DownstreamTlsContext {
        common_tls_context,
        require_client_certificate,
        require_sni,
        disable_stateful_session_resumption,
        session_timeout,
        ocsp_staple_policy,
        full_scan_certs_on_sni_mismatch,
        prefer_client_ciphers,
        session_ticket_keys_type,
    } = t;
    unsupported!(
        require_sni,
        disable_stateful_session_resumption,
        session_timeout,
        full_scan_certs_on_sni_mismatch,
        prefer_client_ciphers,
        session_ticket_keys_type,
    );
    if *ocsp_staple_policy != OcspStaplePolicy::LenientStapling as i32 {
        return Err(Rejection::unsupported("ocsp_staple_policy"));
    }
    const CTX: &str = "common_tls_context";
    let common = common_tls_context
        .as_ref()
        .map(common_tls)
        .transpose()
        .at(CTX)?
        .unwrap_or_default();
    let (cert, key) = common.cert.ok_or_else(|| {
        Rejection::new(
            format!("{CTX}.tls_certificates"),
            "a TLS listener needs its certificate",
        )
    })?;
    let required = require_client_certificate.is_some_and(|b| b.value);
    let client_auth = match (&common.ca, required) {
        (None, true) => {
            return Err(Rejection::new(
                "require_client_certificate",
                "needs common_tls_context.validation_context.trusted_ca",
            ));
        }
        (None, false) => raw::ClientAuth::None,
        (Some(_), true) => raw::ClientAuth::Required,
        (Some(_), false) => raw::ClientAuth::Optional,
    };
    let mut trust_domains = Vec::with_capacity(common.sans.len());
    for san in &common.sans {
        let td = san.trust_domain().ok_or_else(|| {
            Rejection::new(
                format!("{CTX}.validation_context.{}", san.field),
                "a listener admits clients by SPIFFE trust domain: give a `spiffe://TD/` prefix",
            )
        })?;
        trust_domains.push(td.to_owned());
    }
    for (i, a) in common.alpn.iter().enumerate() {
        if a != "h2" && a != "http/1.1" {
            return Err(Rejection::new(
                format!("{CTX}.alpn_protocols[{i}]"),
                format!("`{a}`: Weir serves h2 and http/1.1 only"),
            ));
        }
    }
    Ok(raw::ListenerTls {
        cert,
        key,
        client_ca: common.ca,
        client_auth: Some(client_auth),
        trust_domains: (!trust_domains.is_empty()).then_some(trust_domains),
        alpn: (!common.alpn.is_empty()).then_some(common.alpn),
        min_version: common.min_version.map(str::to_owned),
        handshake_timeout: None,
        forward_client_cert: raw::ForwardClientCert::Sanitize,
    })
}

fn network_filter(f: &Filter) -> Result<Hcm, Rejection> {
    let Filter {
        name: _,
        config_type,
    } = f;
    let any = match config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(Rejection::unsupported("config_discovery"));
        }
        None => return Err(Rejection::new("typed_config", "is required")),
    };
    if type_name(any) != HttpConnectionManager::full_name() {
        return Err(Rejection::new(
            "typed_config",
            format!(
                "`{}` is not supported by Weir: the one network filter must be the HTTP \
                 connection manager",
                any.type_url
            ),
        ));
    }
    let hcm: HttpConnectionManager = unpack(any, "typed_config")?;
    connection_manager(&hcm).at("typed_config")
}

fn connection_manager(h: &HttpConnectionManager) -> Result<Hcm, Rejection> {
    let HttpConnectionManager {
        codec_type,
        stat_prefix: _, // stats naming
        http_filters,
        add_user_agent,
        tracing,
        common_http_protocol_options,
        http1_safe_max_connection_duration,
        http_protocol_options,
        http2_protocol_options,
        http3_protocol_options,
        server_name,
        server_header_transformation,
        scheme_header_transformation,
        max_request_headers_kb,
        stream_idle_timeout,
        stream_flush_timeout,
        request_timeout,
        request_headers_timeout,
        drain_timeout,
        drain_timeout_jitter,
        delayed_close_timeout,
        access_log,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        use_remote_address,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        forward_proto_config,
        route_specifier,
        strip_port_mode,
    } = h;
    unsupported!(
        add_user_agent,
        tracing,
        http1_safe_max_connection_duration,
        http3_protocol_options,
        server_name,
        server_header_transformation,
        scheme_header_transformation,
        stream_idle_timeout,
        stream_flush_timeout,
        request_timeout,
        drain_timeout,
        drain_timeout_jitter,
        delayed_close_timeout,
        access_log,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        use_remote_address,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        preserve_external_request_id,
        always_set_request_id_in_response,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        forward_proto_config,
        strip_port_mode,
    );
    keep_bool(generate_request_id.as_ref(), true, "generate_request_id")?;
    match CodecType::try_from(*codec_type) {
        Ok(CodecType::Auto | CodecType::Http1 | CodecType::Http2) => {}
        _ => {
            return Err(Rejection::new(
                "codec_type",
                "Weir serves HTTP/1.1 and HTTP/2: give AUTO, HTTP1 or HTTP2",
            ));
        }
    }
    let forward_client_cert = match ForwardClientCertDetails::try_from(*forward_client_cert_details)
    {
        Ok(ForwardClientCertDetails::Sanitize) => raw::ForwardClientCert::Sanitize,
        Ok(ForwardClientCertDetails::SanitizeSet) => raw::ForwardClientCert::SanitizeSet,
        _ => {
            return Err(Rejection::new(
                "forward_client_cert_details",
                "Weir always removes a client's x-forwarded-client-cert: give SANITIZE or \
                 SANITIZE_SET",
            ));
        }
    };
    let mut limits = raw::ListenerLimits::default();
    if let Some(o) = common_http_protocol_options {
        common_options(o, &mut limits).at("common_http_protocol_options")?;
    }
    if let Some(o) = http_protocol_options {
        http1_options(o).at("http_protocol_options")?;
    }
    if let Some(o) = http2_protocol_options {
        limits.h2_max_concurrent_streams = http2_options(o).at("http2_protocol_options")?;
    }
    if let Some(kb) = max_request_headers_kb {
        if kb.value == 0 {
            return Err(Rejection::new("max_request_headers_kb", "must be positive"));
        }
        limits.max_request_headers_size = Some(HumanSize(u64::from(kb.value) * 1024));
    }
    limits.header_read_timeout =
        positive(request_headers_timeout.as_ref()).at("request_headers_timeout")?;
    let routes = match route_specifier {
        Some(RouteSpecifier::Rds(Rds {
            config_source: cs,
            route_config_name,
        })) => {
            if let Some(cs) = cs {
                config_source(cs).at("rds.config_source")?;
            }
            if route_config_name.is_empty() {
                return Err(Rejection::new("rds.route_config_name", "is required"));
            }
            RouteSource::Rds(route_config_name.clone())
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(route_config(rc).at("route_config")?)
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(Rejection::unsupported("scoped_routes"));
        }
        None => {
            return Err(Rejection::new("route_config", "needs rds or route_config"));
        }
    };
    Ok(Hcm {
        limits,
        forward_client_cert,
        filters: filters(http_filters).at("http_filters")?,
        routes,
    })
}

fn common_options(o: &CoreHttpOptions, limits: &mut raw::ListenerLimits) -> Result<(), Rejection> {
    let CoreHttpOptions {
        idle_timeout,
        max_connection_duration,
        max_connection_duration_jitter,
        max_headers_count,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    } = o;
    unsupported!(
        max_connection_duration,
        max_connection_duration_jitter,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    );
    limits.idle_timeout = positive(idle_timeout.as_ref()).at("idle_timeout")?;
    if let Some(n) = max_headers_count {
        if n.value == 0 {
            return Err(Rejection::new("max_headers_count", "must be positive"));
        }
        limits.max_request_headers = Some(n.value as usize);
    }
    Ok(())
}

/// The HTTP filters before the router (paths relative to `http_filters`).
fn filters(fs: &[HttpFilter]) -> Result<Vec<HttpFilterSpec>, Rejection> {
    let mut out = Vec::new();
    let mut router = false;
    for (i, f) in fs.iter().enumerate() {
        let at = format!("[{i}]");
        if router {
            return Err(Rejection::new(
                format!("[{}]", i - 1),
                "the router must be the last filter",
            ));
        }
        let HttpFilter {
            name,
            is_optional,
            disabled,
            config_type,
        } = f;
        if *disabled {
            return Err(Rejection::new(
                format!("{at}.disabled"),
                "disabled filters are not supported yet",
            ));
        }
        match config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => {
                let ty = type_name(any);
                if ty == Router::full_name() {
                    check_router(&unpack(any, "typed_config").at(&at)?)
                        .at(format_args!("{at}.typed_config"))?;
                    router = true;
                } else if ty == Wasm::full_name() {
                    named(name).at(&at)?;
                    out.push(HttpFilterSpec::Wasm {
                        name: name.clone(),
                        filter: wasm_filter(name, any).at(format_args!("{at}.typed_config"))?,
                    });
                } else if !*is_optional {
                    return Err(Rejection::new(
                        at,
                        format!(
                            "`{}` ({name}) is not supported by Weir: only Wasm filters and the \
                             router (mark a filter is_optional to have it skipped)",
                            any.type_url
                        ),
                    ));
                }
                // An optional filter of a type Weir does not know is skipped, as Envoy does.
            }
            Some(http_filter::ConfigType::ConfigDiscovery(ecs)) => {
                named(name).at(&at)?;
                discovered(ecs).at(format_args!("{at}.config_discovery"))?;
                out.push(HttpFilterSpec::Ecds {
                    name: name.clone(),
                    config_name: name.clone(),
                });
            }
            None => {
                return Err(Rejection::new(at, "needs typed_config or config_discovery"));
            }
        }
    }
    if !router {
        return Err(Rejection::new(
            "",
            "the last filter must be the router (envoy.extensions.filters.http.router.v3.Router)",
        ));
    }
    Ok(out)
}

fn named(name: &str) -> Result<(), Rejection> {
    if name.is_empty() {
        return Err(Rejection::new("name", "is required"));
    }
    Ok(())
}

fn check_router(r: &Router) -> Result<(), Rejection> {
    let Router {
        dynamic_stats: _, // stats
        start_child_span,
        upstream_log,
        upstream_log_options,
        suppress_envoy_headers: _, // Weir adds no x-envoy-* headers
        strict_check_headers,
        respect_expected_rq_timeout,
        suppress_grpc_request_failure_code_stats: _, // stats
        upstream_http_filters,
        reject_connect_request_early_data,
    } = r;
    unsupported!(
        start_child_span,
        upstream_log,
        upstream_log_options,
        strict_check_headers,
        respect_expected_rq_timeout,
        upstream_http_filters,
        reject_connect_request_early_data,
    );
    Ok(())
}

/// An ECDS filter: from the ADS stream, and of the Wasm type (what Weir can load).
fn discovered(e: &ExtensionConfigSource) -> Result<(), Rejection> {
    let ExtensionConfigSource {
        config_source: cs,
        default_config,
        apply_default_config_without_warming,
        type_urls,
    } = e;
    unsupported!(default_config, apply_default_config_without_warming);
    let cs = cs
        .as_ref()
        .ok_or_else(|| Rejection::new("config_source", "is required"))?;
    config_source(cs).at("config_source")?;
    let wasm = Wasm::type_url();
    if type_urls.is_empty() {
        return Err(Rejection::new("type_urls", format!("must list `{wasm}`")));
    }
    for (i, url) in type_urls.iter().enumerate() {
        if *url != wasm {
            return Err(Rejection::new(
                format!("type_urls[{i}]"),
                format!("`{url}`: Weir discovers Wasm filters only (`{wasm}`)"),
            ));
        }
    }
    Ok(())
}

/// An `envoy.extensions.filters.http.wasm.v3.Wasm` (an HTTP filter's `typed_config`, or an ECDS
/// `TypedExtensionConfig`'s) as a manifest filter. Rejections name fields inside the `Wasm`
/// message (`config.vm_config.runtime`); an empty field is the `Any` itself. The filter's name
/// is the caller's to use (the chain names the filter, not its configuration).
pub fn wasm_filter(_name: &str, any: &Any) -> Result<raw::Filter, Rejection> {
    let Wasm { config } = unpack::<Wasm>(any, "")?;
    let config = config.ok_or_else(|| Rejection::new("config", "is required"))?;
    plugin(&config).at("config")
}

fn plugin(p: &PluginConfig) -> Result<raw::Filter, Rejection> {
    let PluginConfig {
        name: _, // a name for logs
        root_id,
        configuration,
        fail_open,
        failure_policy,
        reload_config,
        capability_restriction_config,
        allow_on_headers_stop_iteration,
        vm,
    } = p;
    if !root_id.is_empty() {
        return Err(Rejection::new(
            "root_id",
            "Weir runs one root context per filter: leave root_id empty",
        ));
    }
    unsupported!(reload_config, capability_restriction_config);
    keep_bool(
        allow_on_headers_stop_iteration.as_ref(),
        false,
        "allow_on_headers_stop_iteration",
    )?;
    let policy = match FailurePolicy::try_from(*failure_policy) {
        Ok(FailurePolicy::Unspecified) => None,
        Ok(FailurePolicy::FailClosed) => Some(raw::FailurePolicy::FailClosed),
        Ok(FailurePolicy::FailOpen) => Some(raw::FailurePolicy::FailOpen),
        Ok(FailurePolicy::FailReload) => Some(raw::FailurePolicy::Reload),
        Err(_) => return Err(Rejection::new("failure_policy", "is not a known policy")),
    };
    let failure_policy = match (policy, *fail_open) {
        (None, false) => raw::FailurePolicy::FailClosed,
        (None, true) | (Some(raw::FailurePolicy::FailOpen), true) => raw::FailurePolicy::FailOpen,
        (Some(p), false) => p,
        (Some(_), true) => {
            return Err(Rejection::new(
                "fail_open",
                "contradicts failure_policy (fail_open is deprecated: use failure_policy only)",
            ));
        }
    };
    let vm = match vm {
        Some(plugin_config::Vm::VmConfig(v)) => v,
        None => return Err(Rejection::new("vm_config", "is required")),
    };
    let (module, vm_config) = vm_settings(vm).at("vm_config")?;
    Ok(raw::Filter {
        module,
        sha256: None,
        config: json_configuration(configuration.as_ref()).at("configuration")?,
        vm_config,
        failure_policy,
        limits: raw::FilterLimits::default(),
    })
}

/// The module's path and the VM's configuration.
fn vm_settings(v: &VmConfig) -> Result<(String, Option<serde_json::Value>), Rejection> {
    let VmConfig {
        vm_id: _, // Weir gives each filter its own VM
        runtime,
        code,
        configuration,
        allow_precompiled: _,       // Weir never loads precompiled code
        nack_on_code_cache_miss: _, // only for remote code, which is refused
        environment_variables,
        capability_restriction_config,
    } = v;
    unsupported!(environment_variables, capability_restriction_config);
    if runtime == "envoy.wasm.runtime.null" {
        return Err(Rejection::new(
            "runtime",
            "the null runtime runs code built into Envoy; Weir runs Wasm modules",
        ));
    }
    if !runtime.is_empty() && !RUNTIMES.contains(&runtime.as_str()) {
        return Err(Rejection::new(
            "runtime",
            format!("`{runtime}` is not a Wasm runtime Weir knows"),
        ));
    }
    let code = code
        .as_ref()
        .ok_or_else(|| Rejection::new("code", "is required"))?;
    let module = match &code.specifier {
        Some(async_data_source::Specifier::Local(ds)) => match &ds.specifier {
            Some(data_source::Specifier::InlineBytes(_)) => {
                return Err(inline_module("code.local.inline_bytes"));
            }
            Some(data_source::Specifier::InlineString(_)) => {
                return Err(inline_module("code.local.inline_string"));
            }
            // Weir's stock filters, by name (not a path).
            Some(data_source::Specifier::Filename(f))
                if f.starts_with("builtin:") && ds.watched_directory.is_none() =>
            {
                f.clone()
            }
            _ => super::file(ds).at("code.local")?,
        },
        Some(async_data_source::Specifier::Remote(_)) => {
            return Err(Rejection::new(
                "code.remote",
                "remote modules are not supported yet; use a file",
            ));
        }
        None => return Err(Rejection::new("code", "needs local")),
    };
    let vm_config = json_configuration(configuration.as_ref()).at("configuration")?;
    Ok((module, vm_config))
}

fn inline_module(field: &str) -> Rejection {
    Rejection::new(field, "inline modules are not supported yet; use a file")
}

/// A plugin's or VM's configuration as the JSON Weir's filters read.
fn json_configuration(any: Option<&Any>) -> Result<Option<serde_json::Value>, Rejection> {
    let Some(any) = any else {
        return Ok(None);
    };
    let ty = type_name(any);
    let parse = |bytes: &[u8]| -> Result<Option<serde_json::Value>, Rejection> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(bytes).map(Some).map_err(|e| {
            Rejection::new(
                "",
                format!("configuration must be JSON for Weir's filters: {e}"),
            )
        })
    };
    if ty == StringValue::full_name() {
        parse(unpack::<StringValue>(any, "")?.value.as_bytes())
    } else if ty == BytesValue::full_name() {
        parse(&unpack::<BytesValue>(any, "")?.value)
    } else if ty == Struct::full_name() {
        // Envoy hands a Struct to the plugin as JSON, so Weir's JSON is the same.
        struct_json(&unpack::<Struct>(any, "")?).map(Some)
    } else {
        Err(Rejection::new(
            "",
            format!(
                "is `{}`: Weir's filters take JSON in a google.protobuf.StringValue, BytesValue \
                 or Struct",
                any.type_url
            ),
        ))
    }
}

fn struct_json(s: &Struct) -> Result<serde_json::Value, Rejection> {
    let mut map = serde_json::Map::new();
    for (k, v) in &s.fields {
        map.insert(k.clone(), value_json(v).at(k)?);
    }
    Ok(serde_json::Value::Object(map))
}

fn value_json(
    v: &envoy_types::pb::google::protobuf::Value,
) -> Result<serde_json::Value, Rejection> {
    use serde_json::Value as J;
    Ok(match &v.kind {
        None | Some(value::Kind::NullValue(_)) => J::Null,
        Some(value::Kind::BoolValue(b)) => J::Bool(*b),
        Some(value::Kind::StringValue(s)) => J::String(s.clone()),
        // Whole numbers are written as integers, as protobuf's JSON writes them (a filter reading
        // a `u32` would refuse `3.0`).
        Some(value::Kind::NumberValue(n))
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 =>
        {
            J::from(*n as i64)
        }
        Some(value::Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(J::Number)
            .ok_or_else(|| Rejection::new("", "is not a finite number"))?,
        Some(value::Kind::StructValue(s)) => struct_json(s)?,
        Some(value::Kind::ListValue(l)) => J::Array(
            l.values
                .iter()
                .enumerate()
                .map(|(i, v)| value_json(v).at(format_args!("[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{
        AggregatedConfigSource, AsyncDataSource, ConfigSource, DataSource, Http2ProtocolOptions,
        RemoteDataSource, config_source::ConfigSourceSpecifier,
    };
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
        TlsCertificate, common_tls_context::ValidationContextType,
        subject_alt_name_matcher::SanType,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
    use envoy_types::pb::google::protobuf::{
        BoolValue, Duration as PbDuration, ListValue, UInt32Value, Value as PbValue,
    };
    use envoy_types::util::pack_any;

    use super::super::endpoint::tests::sock;
    use super::*;

    fn ads() -> Option<ConfigSource> {
        Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        })
    }

    fn file(f: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(data_source::Specifier::Filename(f.into())),
            ..Default::default()
        })
    }

    fn string_any(s: &str) -> Option<Any> {
        Some(pack_any(StringValue { value: s.into() }))
    }

    fn vm(code: AsyncDataSource) -> VmConfig {
        VmConfig {
            runtime: "envoy.wasm.runtime.v8".into(),
            code: Some(code),
            ..Default::default()
        }
    }

    fn local(f: &str) -> AsyncDataSource {
        AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Local(file(f).unwrap())),
        }
    }

    fn plugin(p: PluginConfig) -> Any {
        pack_any(Wasm { config: Some(p) })
    }

    fn basic_plugin() -> PluginConfig {
        PluginConfig {
            name: "auth".into(),
            configuration: string_any(r#"{"issuer": "me", "max": 3}"#),
            vm: Some(plugin_config::Vm::VmConfig(VmConfig {
                configuration: string_any(r#"{"warm": true}"#),
                ..vm(local("/filters/auth.wasm"))
            })),
            ..Default::default()
        }
    }

    fn typed(name: &str, any: Any) -> HttpFilter {
        HttpFilter {
            name: name.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any)),
            ..Default::default()
        }
    }

    fn router() -> HttpFilter {
        typed("envoy.filters.http.router", pack_any(Router::default()))
    }

    fn hcm(filters: Vec<HttpFilter>) -> HttpConnectionManager {
        HttpConnectionManager {
            stat_prefix: "ingress_http".into(),
            http_filters: filters,
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                config_source: ads(),
                route_config_name: "routes-8080".into(),
            })),
            ..Default::default()
        }
    }

    fn with_hcm(h: HttpConnectionManager) -> Listener {
        Listener {
            name: "http-8080".into(),
            address: Some(sock("0.0.0.0", 8080)),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(h))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn refused(l: &Listener) -> String {
        listener(l).unwrap_err().field
    }

    const HCM: &str = "filter_chains[0].filters[0].typed_config";

    #[test]
    fn a_listener_with_wasm_filters_and_rds() {
        let l = with_hcm(hcm(vec![
            typed("auth", plugin(basic_plugin())),
            HttpFilter {
                name: "ratelimit".into(),
                config_type: Some(http_filter::ConfigType::ConfigDiscovery(
                    ExtensionConfigSource {
                        config_source: ads(),
                        type_urls: vec![Wasm::type_url()],
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
            router(),
        ]));
        let spec = listener(&l).unwrap();
        assert_eq!(spec.name, "http-8080");
        assert_eq!(spec.listener.address, "0.0.0.0:8080");
        assert!(spec.listener.default_cluster.is_none() && spec.listener.chain.is_none());
        assert!(spec.listener.tls.is_none());
        assert_eq!(spec.routes, RouteSource::Rds("routes-8080".into()));
        let [
            HttpFilterSpec::Wasm { name, filter },
            HttpFilterSpec::Ecds {
                name: ecds,
                config_name,
            },
        ] = spec.filters.as_slice()
        else {
            panic!("{:?}", spec.filters);
        };
        assert_eq!(name, "auth");
        assert_eq!(filter.module, "/filters/auth.wasm");
        assert_eq!(
            filter.config,
            Some(serde_json::json!({"issuer": "me", "max": 3}))
        );
        assert_eq!(filter.vm_config, Some(serde_json::json!({"warm": true})));
        assert_eq!(filter.failure_policy, raw::FailurePolicy::FailClosed);
        assert_eq!(
            (ecds.as_str(), config_name.as_str()),
            ("ratelimit", "ratelimit")
        );
    }

    #[test]
    fn an_inline_route_config_is_translated() {
        let mut h = hcm(vec![router()]);
        h.route_specifier = Some(RouteSpecifier::RouteConfig(RouteConfiguration::default()));
        let spec = listener(&with_hcm(h)).unwrap();
        assert_eq!(
            spec.routes,
            RouteSource::Inline(serde_json::json!({"virtual_hosts": [], "ignore_port": false}))
        );
        let mut scoped = hcm(vec![router()]);
        scoped.route_specifier = Some(RouteSpecifier::ScopedRoutes(Default::default()));
        assert_eq!(refused(&with_hcm(scoped)), format!("{HCM}.scoped_routes"));
    }

    #[test]
    fn http_filters_follow_envoys_rules() {
        let unknown = || {
            typed(
                "envoy.filters.http.cors",
                Any {
                    type_url: "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
                        .into(),
                    value: vec![],
                },
            )
        };
        let r = listener(&with_hcm(hcm(vec![unknown(), router()]))).unwrap_err();
        assert_eq!(r.field, format!("{HCM}.http_filters[0]"));
        assert!(r.message.contains("Cors"), "{r}");
        // An optional filter Weir does not know is skipped.
        let optional = HttpFilter {
            is_optional: true,
            ..unknown()
        };
        let spec = listener(&with_hcm(hcm(vec![optional, router()]))).unwrap();
        assert!(spec.filters.is_empty());
        assert_eq!(
            refused(&with_hcm(hcm(vec![typed("auth", plugin(basic_plugin()))]))),
            format!("{HCM}.http_filters")
        );
        assert_eq!(
            refused(&with_hcm(hcm(vec![
                router(),
                typed("auth", plugin(basic_plugin()))
            ]))),
            format!("{HCM}.http_filters[0]")
        );
        let disabled = HttpFilter {
            disabled: true,
            ..typed("auth", plugin(basic_plugin()))
        };
        assert_eq!(
            refused(&with_hcm(hcm(vec![disabled, router()]))),
            format!("{HCM}.http_filters[0].disabled")
        );
        let other_ecds = HttpFilter {
            name: "rbac".into(),
            config_type: Some(http_filter::ConfigType::ConfigDiscovery(
                ExtensionConfigSource {
                    config_source: ads(),
                    type_urls: vec![
                        "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC".into(),
                    ],
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        assert_eq!(
            refused(&with_hcm(hcm(vec![other_ecds, router()]))),
            format!("{HCM}.http_filters[0].config_discovery.type_urls[0]")
        );
        let logging_router = typed(
            "router",
            pack_any(Router {
                start_child_span: true,
                ..Default::default()
            }),
        );
        assert_eq!(
            refused(&with_hcm(hcm(vec![logging_router]))),
            format!("{HCM}.http_filters[0].typed_config.start_child_span")
        );
    }

    #[test]
    fn wasm_filter_refusals_carry_the_whole_path() {
        let null = PluginConfig {
            vm: Some(plugin_config::Vm::VmConfig(VmConfig {
                runtime: "envoy.wasm.runtime.null".into(),
                ..vm(local("/f.wasm"))
            })),
            ..basic_plugin()
        };
        assert_eq!(
            refused(&with_hcm(hcm(vec![
                typed("auth", plugin(basic_plugin())),
                typed("null", plugin(null)),
                router(),
            ]))),
            format!("{HCM}.http_filters[1].typed_config.config.vm_config.runtime")
        );
    }

    fn wasm_err(p: PluginConfig) -> Rejection {
        wasm_filter("f", &plugin(p)).unwrap_err()
    }

    #[test]
    fn wasm_modules_configuration_and_failure_policy() {
        let with_code = |c: AsyncDataSource| PluginConfig {
            vm: Some(plugin_config::Vm::VmConfig(vm(c))),
            ..basic_plugin()
        };
        let inline = AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Local(DataSource {
                specifier: Some(data_source::Specifier::InlineBytes(b"\0asm".to_vec())),
                ..Default::default()
            })),
        };
        let r = wasm_err(with_code(inline));
        assert_eq!(r.field, "config.vm_config.code.local.inline_bytes");
        assert!(r.message.contains("not supported yet"));
        let builtin = wasm_filter("f", &plugin(with_code(local("builtin:router")))).unwrap();
        assert_eq!(builtin.module, "builtin:router");
        assert_eq!(
            wasm_err(with_code(local("filters/auth.wasm"))).field,
            "config.vm_config.code.local.filename"
        );
        let remote = AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Remote(
                RemoteDataSource::default(),
            )),
        };
        assert_eq!(
            wasm_err(with_code(remote)).field,
            "config.vm_config.code.remote"
        );
        assert_eq!(
            wasm_err(PluginConfig {
                root_id: "my_root".into(),
                ..basic_plugin()
            })
            .field,
            "config.root_id"
        );
        let bad_json = wasm_err(PluginConfig {
            configuration: string_any("issuer=me"),
            ..basic_plugin()
        });
        assert_eq!(bad_json.field, "config.configuration");
        assert!(bad_json.message.contains("must be JSON"), "{bad_json}");
        let bytes = wasm_filter(
            "f",
            &plugin(PluginConfig {
                configuration: Some(pack_any(BytesValue {
                    value: br#"["a"]"#.to_vec(),
                })),
                ..basic_plugin()
            }),
        )
        .unwrap();
        assert_eq!(bytes.config, Some(serde_json::json!(["a"])));
        let s = Struct {
            fields: [
                (
                    "n".to_owned(),
                    PbValue {
                        kind: Some(value::Kind::NumberValue(3.0)),
                    },
                ),
                (
                    "ratio".to_owned(),
                    PbValue {
                        kind: Some(value::Kind::NumberValue(0.5)),
                    },
                ),
                (
                    "tags".to_owned(),
                    PbValue {
                        kind: Some(value::Kind::ListValue(ListValue {
                            values: vec![PbValue {
                                kind: Some(value::Kind::StringValue("x".into())),
                            }],
                        })),
                    },
                ),
            ]
            .into(),
        };
        let structured = wasm_filter(
            "f",
            &plugin(PluginConfig {
                configuration: Some(pack_any(s)),
                ..basic_plugin()
            }),
        )
        .unwrap();
        assert_eq!(
            structured.config,
            Some(serde_json::json!({"n": 3, "ratio": 0.5, "tags": ["x"]}))
        );
        let empty = wasm_filter(
            "f",
            &plugin(PluginConfig {
                configuration: string_any(""),
                ..basic_plugin()
            }),
        )
        .unwrap();
        assert_eq!(empty.config, None);
        let policy = |fail_open: bool, p: FailurePolicy| {
            wasm_filter(
                "f",
                &plugin(PluginConfig {
                    fail_open,
                    failure_policy: p as i32,
                    ..basic_plugin()
                }),
            )
            .map(|f| f.failure_policy)
        };
        assert_eq!(
            policy(true, FailurePolicy::Unspecified),
            Ok(raw::FailurePolicy::FailOpen)
        );
        assert_eq!(
            policy(false, FailurePolicy::FailOpen),
            Ok(raw::FailurePolicy::FailOpen)
        );
        assert_eq!(
            policy(false, FailurePolicy::FailReload),
            Ok(raw::FailurePolicy::Reload)
        );
        assert_eq!(
            policy(false, FailurePolicy::FailClosed),
            Ok(raw::FailurePolicy::FailClosed)
        );
        assert_eq!(
            policy(true, FailurePolicy::FailClosed).unwrap_err().field,
            "config.fail_open"
        );
        // The Any must hold a Wasm.
        let r = wasm_filter("f", &pack_any(Router::default())).unwrap_err();
        assert_eq!(r.field, "");
        assert!(
            r.message
                .contains("envoy.extensions.filters.http.wasm.v3.Wasm"),
            "{r}"
        );
        assert_eq!(
            wasm_err(PluginConfig {
                vm: None,
                ..basic_plugin()
            })
            .field,
            "config.vm_config"
        );
    }

    fn tls_listener(t: DownstreamTlsContext) -> Listener {
        let mut l = with_hcm(hcm(vec![router()]));
        l.filter_chains[0].transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(t))),
        });
        l
    }

    fn downstream(sans: Vec<SubjectAltNameMatcher>, require: bool) -> DownstreamTlsContext {
        DownstreamTlsContext {
            require_client_certificate: Some(BoolValue { value: require }),
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: file("/certs/server.pem"),
                    private_key: file("/certs/server-key.pem"),
                    ..Default::default()
                }],
                alpn_protocols: vec!["h2".into(), "http/1.1".into()],
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

    fn uri(p: MatchPattern) -> SubjectAltNameMatcher {
        SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(p),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn downstream_tls_maps_to_the_listener() {
        let mut l = tls_listener(downstream(
            vec![uri(MatchPattern::Prefix("spiffe://prod.example/".into()))],
            true,
        ));
        l.filter_chains[0].transport_socket_connect_timeout = Some(PbDuration {
            seconds: 3,
            nanos: 0,
        });
        let t = listener(&l).unwrap().listener.tls.unwrap();
        assert_eq!(
            (t.cert.as_str(), t.key.as_str()),
            ("/certs/server.pem", "/certs/server-key.pem")
        );
        assert_eq!(t.client_ca.as_deref(), Some("/certs/ca.pem"));
        assert_eq!(t.client_auth, Some(raw::ClientAuth::Required));
        assert_eq!(t.trust_domains, Some(vec!["prod.example".to_owned()]));
        assert_eq!(t.alpn, Some(vec!["h2".to_owned(), "http/1.1".to_owned()]));
        assert_eq!(
            t.handshake_timeout,
            Some(crate::config::units::HumanDuration(
                std::time::Duration::from_secs(3)
            ))
        );
        // Envoy's default SANITIZE, written out (Weir's own default is sanitize_set).
        assert_eq!(t.forward_client_cert, raw::ForwardClientCert::Sanitize);
        let optional = listener(&tls_listener(downstream(vec![], false))).unwrap();
        assert_eq!(
            optional.listener.tls.unwrap().client_auth,
            Some(raw::ClientAuth::Optional)
        );
        let mut set = hcm(vec![router()]);
        set.forward_client_cert_details = ForwardClientCertDetails::SanitizeSet as i32;
        let mut l = tls_listener(downstream(vec![], false));
        l.filter_chains[0].filters[0].config_type =
            Some(filter::ConfigType::TypedConfig(pack_any(set)));
        assert_eq!(
            listener(&l)
                .unwrap()
                .listener
                .tls
                .unwrap()
                .forward_client_cert,
            raw::ForwardClientCert::SanitizeSet
        );
    }

    #[test]
    fn downstream_tls_refusals() {
        const CTX: &str = "filter_chains[0].transport_socket.typed_config.common_tls_context";
        let exact = downstream(
            vec![uri(MatchPattern::Exact("spiffe://td/ns/a/sa/b".into()))],
            true,
        );
        assert_eq!(
            refused(&tls_listener(exact)),
            format!("{CTX}.validation_context.match_typed_subject_alt_names[0]")
        );
        let mut sds = downstream(vec![], false);
        let ctx = sds.common_tls_context.as_mut().unwrap();
        ctx.tls_certificates.clear();
        ctx.tls_certificate_sds_secret_configs = vec![SdsSecretConfig::default()];
        let r = listener(&tls_listener(sds.clone())).unwrap_err();
        assert_eq!(
            r.field,
            format!("{CTX}.tls_certificate_sds_secret_configs[0].name")
        );
        // A named SDS secret: the context reads the client's files for it.
        sds.common_tls_context
            .as_mut()
            .unwrap()
            .tls_certificate_sds_secret_configs[0]
            .name = "default".into();
        let l = listener(&tls_listener(sds)).unwrap();
        let t = l.listener.tls.unwrap();
        assert_eq!(
            crate::xds::translate::secret::parse_sds_path(&t.cert),
            Some((crate::xds::translate::secret::Part::Cert, "default"))
        );
        let sni = DownstreamTlsContext {
            require_sni: Some(BoolValue { value: true }),
            ..downstream(vec![], false)
        };
        assert_eq!(
            refused(&tls_listener(sni)),
            "filter_chains[0].transport_socket.typed_config.require_sni"
        );
        let mut spdy = downstream(vec![], false);
        spdy.common_tls_context.as_mut().unwrap().alpn_protocols = vec!["spdy/3".into()];
        assert_eq!(
            refused(&tls_listener(spdy)),
            format!("{CTX}.alpn_protocols[0]")
        );
    }

    #[test]
    fn connection_manager_limits() {
        let mut h = hcm(vec![router()]);
        h.common_http_protocol_options = Some(CoreHttpOptions {
            idle_timeout: Some(PbDuration {
                seconds: 120,
                nanos: 0,
            }),
            max_headers_count: Some(UInt32Value { value: 50 }),
            ..Default::default()
        });
        h.max_request_headers_kb = Some(UInt32Value { value: 96 });
        h.request_headers_timeout = Some(PbDuration {
            seconds: 5,
            nanos: 0,
        });
        h.http2_protocol_options = Some(Http2ProtocolOptions {
            max_concurrent_streams: Some(UInt32Value { value: 250 }),
            ..Default::default()
        });
        let limits = listener(&with_hcm(h)).unwrap().listener.limits;
        let secs = |s| {
            Some(crate::config::units::HumanDuration(
                std::time::Duration::from_secs(s),
            ))
        };
        assert_eq!(limits.idle_timeout, secs(120));
        assert_eq!(limits.header_read_timeout, secs(5));
        assert_eq!(limits.max_request_headers, Some(50));
        assert_eq!(limits.max_request_headers_size, Some(HumanSize(96 * 1024)));
        assert_eq!(limits.h2_max_concurrent_streams, Some(250));
        let mut zero = hcm(vec![router()]);
        zero.common_http_protocol_options = Some(CoreHttpOptions {
            idle_timeout: Some(PbDuration::default()),
            ..Default::default()
        });
        assert_eq!(
            refused(&with_hcm(zero)),
            format!("{HCM}.common_http_protocol_options.idle_timeout")
        );
    }

    #[test]
    fn unsupported_listener_and_manager_fields_are_refused_by_name() {
        let base = || with_hcm(hcm(vec![router()]));
        let mut two = base();
        two.filter_chains.push(two.filter_chains[0].clone());
        assert_eq!(refused(&two), "filter_chains[1]");
        let mut sni = base();
        sni.filter_chains[0].filter_chain_match = Some(FilterChainMatch {
            server_names: vec!["a.example".into()],
            ..Default::default()
        });
        assert_eq!(
            refused(&sni),
            "filter_chains[0].filter_chain_match.server_names"
        );
        // An empty match matches everything.
        let mut any = base();
        any.filter_chains[0].filter_chain_match = Some(FilterChainMatch::default());
        assert!(listener(&any).is_ok());
        let mut traced = hcm(vec![router()]);
        traced.tracing = Some(Tracing::default());
        assert_eq!(refused(&with_hcm(traced)), format!("{HCM}.tracing"));
        let mut xff = hcm(vec![router()]);
        xff.use_remote_address = Some(BoolValue { value: true });
        assert_eq!(refused(&with_hcm(xff)), format!("{HCM}.use_remote_address"));
        let mut h3 = hcm(vec![router()]);
        h3.codec_type = CodecType::Http3 as i32;
        assert_eq!(refused(&with_hcm(h3)), format!("{HCM}.codec_type"));
        let mut inspected = base();
        inspected.listener_filters = vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                TlsInspector::default(),
            ))),
            ..Default::default()
        }];
        inspected.traffic_direction = 1;
        inspected.stat_prefix = "in".into();
        assert!(listener(&inspected).is_ok());
        let mut proxy_protocol = base();
        proxy_protocol.listener_filters = vec![ListenerFilter {
            name: "envoy.filters.listener.proxy_protocol".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol".into(),
                value: vec![],
            })),
            ..Default::default()
        }];
        assert_eq!(refused(&proxy_protocol), "listener_filters[0].typed_config");
        let mut tcp = base();
        tcp.filter_chains[0].filters[0].config_type = Some(filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
                .into(),
            value: vec![],
        }));
        assert_eq!(refused(&tcp), HCM);
        let mut buffered = base();
        buffered.per_connection_buffer_limit_bytes = Some(UInt32Value { value: 32768 });
        assert_eq!(refused(&buffered), "per_connection_buffer_limit_bytes");
        let mut no_reuse = base();
        no_reuse.enable_reuse_port = Some(BoolValue { value: false });
        assert_eq!(refused(&no_reuse), "enable_reuse_port");
        let mut named = base();
        named.address = Some(sock("localhost", 80));
        assert_eq!(refused(&named), "address.socket_address.address");
        assert_eq!(
            refused(&Listener {
                name: String::new(),
                ..base()
            }),
            "name"
        );
    }
}
