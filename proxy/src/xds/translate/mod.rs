//! Envoy v3 resources → Weir's manifest types. Pure functions: no I/O, no state. Each returns a
//! [`Rejection`] naming the first field Weir cannot honour; the client turns it into a NACK.
//!
//! One file per resource type, each opening with the table of the fields it maps:
//! `cluster.rs` (CDS `Cluster` → [`ClusterSpec`]), `endpoint.rs` (EDS `ClusterLoadAssignment` →
//! endpoints, also the endpoints of STATIC and DNS clusters), `listener.rs` (LDS `Listener` →
//! [`ListenerSpec`], with its HTTP connection manager and the Wasm filter, also for ECDS) and
//! `route.rs` (RDS `RouteConfiguration` → the configuration of `builtin:router`). This file holds
//! what they share: the rejection, `Any` unpacking, durations, config sources, data sources and
//! the TLS contexts' common part.
//!
//! **The rule.** A field Weir does not support is refused by name when it is set, never
//! ignored. Every message is destructured exhaustively (no `..`), so a field added by a newer
//! `envoy-types` fails to compile here until someone decides what it means for Weir. Fields
//! that only name or count things (stat prefixes, stats matchers, names) are accepted and
//! ignored; each file lists its own. A field Envoy has deprecated is refused unless its file
//! says otherwise. Where Envoy's default differs from Weir's, the translation writes Envoy's
//! value explicitly, so a resource means the same in both.
//!
//! **Paths.** A rejection's `field` is a path inside the resource in proto field names:
//! `filter_chains[0].filters[0].typed_config.http_filters[1].typed_config.config.vm_config.runtime`.
//! An `Any` adds no segment of its own (its field name is followed by the packed message's
//! fields), a oneof is named by its member (`ring_hash_lb_config`), a map entry by its key in
//! quotes (`typed_extension_protocol_options["…"]`). The client prefixes the resource's type
//! and name.
//!
//! Shared parts, used by several resources:
//!
//! | message | supported | refused |
//! |---|---|---|
//! | `ConfigSource` (EDS, RDS, ECDS sources) | `ads {}`, `self {}` (Weir reads everything from its one ADS stream); `resource_api_version` AUTO or V3; `initial_fetch_timeout` accepted and ignored (the client decides how long it waits) | `path`, `path_config_source`, `api_config_source`, `authorities`, V2 |
//! | `DataSource` (certificates, keys, CAs, Wasm code) | `filename`, an absolute path (Envoy would read a relative one from its working directory) | `inline_bytes`, `inline_string` ("not supported yet"), `environment_variable`, `watched_directory` |
//! | `CommonTlsContext` | `tls_certificates` (at most one: `certificate_chain`, `private_key`) or one `tls_certificate_sds_secret_configs` entry (an SDS secret from the ADS stream), `validation_context_sds_secret_config`, `combined_validation_context` (`default_validation_context` for subject-alt-names + `validation_context_sds_secret_config` for the trust bundle, Istio's form), `validation_context` (`trusted_ca`, subject-alt-name matchers: see `cluster.rs` and `listener.rs`), `alpn_protocols`, `tls_params.tls_minimum_protocol_version` TLSv1_2/TLSv1_3 (and AUTO), `tls_maximum_protocol_version` AUTO/TLSv1_3 | certificate providers, custom handshakers and selectors, `key_log`, cipher, curve and signature lists, TLS below 1.2 |
//! | `CertificateValidationContext` | `trusted_ca`, `match_typed_subject_alt_names` (URI and DNS types; `exact`, and `prefix` for SPIFFE trust domains), the deprecated `match_subject_alt_names` (the same matchers without a type) | everything else (SPKI/hash pins, CRLs, `allow_expired_certificate`, `max_verify_depth`, `system_root_certs`, …), `ignore_case` |

// Deprecated fields and oneof members are named in every exhaustive destructuring (to be
// refused, or where a file says so, accepted), so the lint would fire on each of them.
#![allow(deprecated)]

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    ConfigSource, DataSource, Http1ProtocolOptions, Http2ProtocolOptions,
    config_source::ConfigSourceSpecifier, data_source,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, TlsCertificate, TlsParameters,
    common_tls_context::CombinedCertificateValidationContext,
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration};

use crate::config::raw;
use crate::config::units::HumanDuration;

mod cluster;
mod endpoint;
mod listener;
mod route;
pub mod secret;

pub use cluster::cluster;
pub use endpoint::load_assignment;
pub use listener::{listener, wasm_filter};
pub use route::route_config;
pub use secret::secret;

/// Why a resource is refused: the field (a path inside the resource, e.g. `lb_policy`,
/// `filter_chains[0].filters[0].typed_config.http_filters[1].typed_config.config.vm_config.runtime`)
/// and what is wrong. The client prefixes the resource's type and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            return f.write_str(&self.message);
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Rejection {}

impl Rejection {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The standard refusal of a field that is set but has no meaning in Weir.
    pub fn unsupported(field: &str) -> Self {
        // `stringify!(r#match)` keeps the raw-identifier prefix; the proto field is `match`.
        Self::new(field.replace("r#", ""), "is not supported by Weir")
    }

    /// The same rejection seen from the message that holds this one's message in `prefix`.
    #[must_use]
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// Prefixes a failed translation's field path with where the translated message sits.
pub(super) trait At<T> {
    fn at(self, prefix: impl std::fmt::Display) -> Result<T, Rejection>;
}

impl<T> At<T> for Result<T, Rejection> {
    fn at(self, prefix: impl std::fmt::Display) -> Result<T, Rejection> {
        // The prefix is formatted only on the error path.
        self.map_err(|r| r.within(&prefix.to_string()))
    }
}

/// Refuses each named field (bound by an exhaustive destructuring, so a reference) that is not
/// at its default: `unsupported!(a, b)` or, for fields of a nested message destructured in
/// place, `unsupported!("nested."; a, b)`. Enums stored as `i32` default to 0.
macro_rules! unsupported {
    ($prefix:literal; $($field:ident),+ $(,)?) => {
        $(
            if !$crate::xds::translate::is_default($field) {
                return Err($crate::xds::translate::Rejection::unsupported(
                    concat!($prefix, stringify!($field)),
                ));
            }
        )+
    };
    ($($field:ident),+ $(,)?) => {
        unsupported!(""; $($field),+)
    };
}
pub(super) use unsupported;

/// Whether `v` is its type's default (proto3's "not set" for scalars, lists, maps and options).
pub(super) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The message packed in `any`, which must be a `T`. `field` names the `Any` in the rejection.
pub fn unpack<T: prost::Message + Default + prost::Name>(
    any: &Any,
    field: &str,
) -> Result<T, Rejection> {
    let want = T::full_name();
    if type_name(any) != want {
        let got = if any.type_url.is_empty() {
            "an Any without a type_url".to_owned()
        } else {
            format!("`{}`", any.type_url)
        };
        return Err(Rejection::new(
            field,
            format!("is {got}, expected `{}`", T::type_url()),
        ));
    }
    T::decode(any.value.as_slice())
        .map_err(|e| Rejection::new(field, format!("is not a valid `{want}`: {e}")))
}

/// The fully qualified message name of an `Any`'s type URL (what follows its last `/`).
pub(super) fn type_name(any: &Any) -> &str {
    any.type_url
        .rsplit_once('/')
        .map_or(any.type_url.as_str(), |(_, name)| name)
}

/// A protobuf duration as a std one (negative or out-of-range ones are refused).
pub(super) fn duration(d: &PbDuration) -> Result<Duration, Rejection> {
    let PbDuration { seconds, nanos } = *d;
    match (u64::try_from(seconds), u32::try_from(nanos)) {
        (Ok(s), Ok(n)) if n < 1_000_000_000 => Ok(Duration::new(s, n)),
        _ => Err(Rejection::new("", "must be a non-negative duration")),
    }
}

/// [`duration`] in the manifest's form.
pub(super) fn human(d: &PbDuration) -> Result<HumanDuration, Rejection> {
    duration(d).map(HumanDuration)
}

/// An optional protobuf duration that, when set, must be positive (Envoy's 0 often means
/// "no limit", which Weir does not offer where this is used).
pub(super) fn positive(d: Option<&PbDuration>) -> Result<Option<HumanDuration>, Rejection> {
    match d.map(human).transpose()? {
        Some(HumanDuration(Duration::ZERO)) => Err(Rejection::new(
            "",
            "0 (no limit) is not supported by Weir; give a positive duration",
        )),
        d => Ok(d),
    }
}

/// Checks a reference to another resource: Weir reads every resource from its one ADS stream,
/// so only `ads {}` and `self {}` are sources it can honour.
pub(super) fn config_source(cs: &ConfigSource) -> Result<(), Rejection> {
    let ConfigSource {
        authorities,
        initial_fetch_timeout: _, // the client decides how long it waits for a resource
        resource_api_version,
        config_source_specifier,
    } = cs;
    unsupported!(authorities);
    // AUTO (0) and V3 (2); V2 is gone from Envoy and from Weir.
    if ![0, 2].contains(resource_api_version) {
        return Err(Rejection::new(
            "resource_api_version",
            "only V3 resources exist",
        ));
    }
    let (field, what) = match config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_) | ConfigSourceSpecifier::Self_(_)) => return Ok(()),
        None => ("", "needs `ads {}` or `self {}`"),
        Some(ConfigSourceSpecifier::Path(_)) => ("path", "files"),
        Some(ConfigSourceSpecifier::PathConfigSource(_)) => ("path_config_source", "files"),
        Some(ConfigSourceSpecifier::ApiConfigSource(_)) => {
            ("api_config_source", "separate API servers")
        }
    };
    if field.is_empty() {
        return Err(Rejection::new(field, what));
    }
    Err(Rejection::new(
        field,
        format!("Weir reads every resource from its ADS stream, not from {what}: use `ads {{}}`"),
    ))
}

/// Accepts an optional `BoolValue` only when it says what Weir does (`None` is Envoy's default,
/// which the caller knows to be Weir's too).
pub(super) fn keep_bool(v: Option<&BoolValue>, weir: bool, field: &str) -> Result<(), Rejection> {
    match v {
        Some(b) if b.value != weir => Err(Rejection::new(
            field,
            format!("`{}` is not supported by Weir", b.value),
        )),
        _ => Ok(()),
    }
}

/// HTTP/1 options: Weir has none, so every field must be unset.
pub(super) fn http1_options(o: &Http1ProtocolOptions) -> Result<(), Rejection> {
    let Http1ProtocolOptions {
        allow_absolute_url,
        accept_http_10,
        default_host_for_http_10,
        header_key_format,
        enable_trailers,
        allow_chunked_length,
        override_stream_error_on_invalid_http_message,
        send_fully_qualified_url,
        use_balsa_parser,
        allow_custom_methods,
        ignore_http_11_upgrade,
    } = o;
    unsupported!(
        allow_absolute_url,
        accept_http_10,
        default_host_for_http_10,
        header_key_format,
        enable_trailers,
        allow_chunked_length,
        override_stream_error_on_invalid_http_message,
        send_fully_qualified_url,
        use_balsa_parser,
        allow_custom_methods,
        ignore_http_11_upgrade,
    );
    Ok(())
}

/// HTTP/2 options: only `max_concurrent_streams` is returned (a listener maps it; a cluster
/// refuses it); every other field must be unset.
pub(super) fn http2_options(o: &Http2ProtocolOptions) -> Result<Option<u32>, Rejection> {
    let Http2ProtocolOptions {
        hpack_table_size,
        max_concurrent_streams,
        initial_stream_window_size,
        initial_connection_window_size,
        allow_connect,
        allow_metadata,
        max_outbound_frames,
        max_outbound_control_frames,
        max_consecutive_inbound_frames_with_empty_payload,
        max_inbound_priority_frames_per_stream,
        max_inbound_window_update_frames_per_data_frame_sent,
        stream_error_on_invalid_http_messaging,
        override_stream_error_on_invalid_http_message,
        custom_settings_parameters,
        connection_keepalive,
        use_oghttp2_codec,
        max_metadata_size,
        enable_huffman_encoding,
        max_header_field_size_kb,
        disallow_obs_text,
        stream_reset_burst,
        stream_reset_rate,
    } = o;
    unsupported!(
        hpack_table_size,
        initial_stream_window_size,
        initial_connection_window_size,
        allow_connect,
        allow_metadata,
        max_outbound_frames,
        max_outbound_control_frames,
        max_consecutive_inbound_frames_with_empty_payload,
        max_inbound_priority_frames_per_stream,
        max_inbound_window_update_frames_per_data_frame_sent,
        stream_error_on_invalid_http_messaging,
        override_stream_error_on_invalid_http_message,
        custom_settings_parameters,
        connection_keepalive,
        use_oghttp2_codec,
        max_metadata_size,
        enable_huffman_encoding,
        max_header_field_size_kb,
        disallow_obs_text,
        stream_reset_burst,
        stream_reset_rate,
    );
    Ok(max_concurrent_streams.as_ref().map(|v| v.value))
}

/// A data source that must be a file (certificates, keys, trust bundles, Wasm modules).
pub(super) fn file(ds: &DataSource) -> Result<String, Rejection> {
    let DataSource {
        watched_directory,
        specifier,
    } = ds;
    unsupported!(watched_directory);
    match specifier {
        // Envoy reads a relative name from its working directory, which Weir does not share:
        // Weir takes a control plane's paths from `/`, so only an absolute one means the same.
        Some(data_source::Specifier::Filename(f)) if f.starts_with('/') => Ok(f.clone()),
        Some(data_source::Specifier::Filename(f)) if !f.is_empty() => Err(Rejection::new(
            "filename",
            format!("`{f}`: give an absolute path"),
        )),
        Some(data_source::Specifier::Filename(_)) | None => {
            Err(Rejection::new("filename", "is required"))
        }
        Some(data_source::Specifier::InlineBytes(_)) => Err(inline_not_yet("inline_bytes")),
        Some(data_source::Specifier::InlineString(_)) => Err(inline_not_yet("inline_string")),
        Some(data_source::Specifier::EnvironmentVariable(_)) => {
            Err(Rejection::unsupported("environment_variable"))
        }
    }
}

fn inline_not_yet(field: &str) -> Rejection {
    Rejection::new(field, "inline data is not supported yet; use a file or SDS")
}

/// What a `CommonTlsContext` says, before the upstream or downstream side reads it.
#[derive(Debug, Default)]
pub(super) struct CommonTls {
    /// Certificate chain and private key files.
    pub cert: Option<(String, String)>,
    /// The trust bundle file.
    pub ca: Option<String>,
    /// Subject-alt-name matchers; each side decides which it can honour.
    pub sans: Vec<San>,
    pub alpn: Vec<String>,
    /// `"1.2"` or `"1.3"` when the minimum is set.
    pub min_version: Option<&'static str>,
}

/// One subject-alt-name matcher, with its path for a rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct San {
    /// `None`: the deprecated untyped matcher (any SAN type).
    pub kind: Option<SanKind>,
    pub pattern: SanPattern,
    pub field: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SanKind {
    Dns,
    Uri,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SanPattern {
    Exact(String),
    Prefix(String),
}

impl San {
    /// `spiffe://TD/` as a prefix matcher on a URI (or untyped) SAN: the trust domain `TD`.
    pub fn trust_domain(&self) -> Option<&str> {
        match (&self.kind, &self.pattern) {
            (Some(SanKind::Uri) | None, SanPattern::Prefix(p)) => p
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.strip_suffix('/'))
                .filter(|td| !td.is_empty() && !td.contains('/')),
            _ => None,
        }
    }
}

/// The parts of a `CommonTlsContext` Weir supports (paths relative to it).
pub(super) fn common_tls(c: &CommonTlsContext) -> Result<CommonTls, Rejection> {
    let CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = c;
    unsupported!(
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        custom_handshaker,
        key_log,
    );
    let mut out = CommonTls {
        alpn: alpn_protocols.clone(),
        ..CommonTls::default()
    };
    if let Some(p) = tls_params {
        out.min_version = tls_parameters(p).at("tls_params")?;
    }
    match (
        tls_certificates.as_slice(),
        tls_certificate_sds_secret_configs.as_slice(),
    ) {
        ([], []) => {}
        ([one], []) => out.cert = Some(tls_certificate(one).at("tls_certificates[0]")?),
        ([], [one]) => {
            let name = sds_secret(one).at("tls_certificate_sds_secret_configs[0]")?;
            out.cert = Some((
                secret::sds_path(&name, secret::Part::Cert),
                secret::sds_path(&name, secret::Part::Key),
            ));
        }
        ([_, _, ..], _) => {
            return Err(Rejection::new(
                "tls_certificates[1]",
                "Weir serves one certificate per context",
            ));
        }
        (_, [_, _, ..]) => {
            return Err(Rejection::new(
                "tls_certificate_sds_secret_configs[1]",
                "Weir serves one certificate per context",
            ));
        }
        ([_], [_]) => {
            return Err(Rejection::new(
                "tls_certificate_sds_secret_configs",
                "give the certificate inline or by SDS, not both",
            ));
        }
    }
    match validation_context_type {
        None => {}
        Some(ValidationContextType::ValidationContext(v)) => {
            (out.ca, out.sans) = validation_context(v).at("validation_context")?;
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(c)) => {
            let name = sds_secret(c).at("validation_context_sds_secret_config")?;
            out.ca = Some(secret::sds_path(&name, secret::Part::Ca));
        }
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            // Istio's form: the subject-alt-names here, the trust bundle from SDS.
            let CombinedCertificateValidationContext {
                default_validation_context,
                validation_context_sds_secret_config,
                validation_context_certificate_provider,
                validation_context_certificate_provider_instance,
            } = c;
            let p = "combined_validation_context";
            unsupported!("combined_validation_context.";
                validation_context_certificate_provider,
                validation_context_certificate_provider_instance,
            );
            if let Some(v) = default_validation_context {
                let (ca, sans) =
                    validation_context(v).at(format!("{p}.default_validation_context"))?;
                if ca.is_some() {
                    return Err(Rejection::new(
                        format!("{p}.default_validation_context.trusted_ca"),
                        "the trust bundle comes from validation_context_sds_secret_config",
                    ));
                }
                out.sans = sans;
            }
            let sds = validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| {
                    Rejection::new(
                        format!("{p}.validation_context_sds_secret_config"),
                        "is required",
                    )
                })?;
            let name = sds_secret(sds).at(format!("{p}.validation_context_sds_secret_config"))?;
            out.ca = Some(secret::sds_path(&name, secret::Part::Ca));
        }
        Some(ValidationContextType::ValidationContextCertificateProvider(_)) => {
            return Err(Rejection::unsupported(
                "validation_context_certificate_provider",
            ));
        }
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(_)) => {
            return Err(Rejection::unsupported(
                "validation_context_certificate_provider_instance",
            ));
        }
    }
    Ok(out)
}

/// An SDS secret reference: its name (the secret comes on the ADS stream).
fn sds_secret(c: &SdsSecretConfig) -> Result<String, Rejection> {
    let SdsSecretConfig { name, sds_config } = c;
    if name.is_empty() {
        return Err(Rejection::new("name", "is required"));
    }
    if let Some(cs) = sds_config {
        config_source(cs).at("sds_config")?;
    }
    Ok(name.clone())
}

fn tls_parameters(p: &TlsParameters) -> Result<Option<&'static str>, Rejection> {
    let TlsParameters {
        tls_minimum_protocol_version,
        tls_maximum_protocol_version,
        cipher_suites,
        ecdh_curves,
        signature_algorithms,
        compliance_policies,
    } = p;
    unsupported!(
        cipher_suites,
        ecdh_curves,
        signature_algorithms,
        compliance_policies
    );
    let version = |v: i32| TlsProtocol::try_from(v).ok();
    let min = match version(*tls_minimum_protocol_version) {
        Some(TlsProtocol::TlsAuto) => None,
        Some(TlsProtocol::TlSv12) => Some("1.2"),
        Some(TlsProtocol::TlSv13) => Some("1.3"),
        _ => {
            return Err(Rejection::new(
                "tls_minimum_protocol_version",
                "Weir speaks TLS 1.2 and 1.3 only: give TLSv1_2 or TLSv1_3",
            ));
        }
    };
    if !matches!(
        version(*tls_maximum_protocol_version),
        Some(TlsProtocol::TlsAuto | TlsProtocol::TlSv13)
    ) {
        return Err(Rejection::new(
            "tls_maximum_protocol_version",
            "Weir always allows TLS 1.3: leave it unset or TLSv1_3",
        ));
    }
    Ok(min)
}

fn tls_certificate(c: &TlsCertificate) -> Result<(String, String), Rejection> {
    tls_certificate_with(c, file)
}

/// A `TlsCertificate` whose data sources `read` takes (files in a context, inline data in an
/// SDS secret too).
pub(super) fn tls_certificate_with<T>(
    c: &TlsCertificate,
    read: impl Fn(&DataSource) -> Result<T, Rejection>,
) -> Result<(T, T), Rejection> {
    let TlsCertificate {
        certificate_chain,
        private_key,
        pkcs12,
        watched_directory,
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
        tls_params,
    } = c;
    unsupported!(
        pkcs12,
        watched_directory,
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
        tls_params,
    );
    let chain = certificate_chain
        .as_ref()
        .ok_or_else(|| Rejection::new("certificate_chain", "is required"))?;
    let key = private_key
        .as_ref()
        .ok_or_else(|| Rejection::new("private_key", "is required"))?;
    Ok((
        read(chain).at("certificate_chain")?,
        read(key).at("private_key")?,
    ))
}

fn validation_context(
    v: &CertificateValidationContext,
) -> Result<(Option<String>, Vec<San>), Rejection> {
    validation_context_with(v, file)
}

/// A `CertificateValidationContext` whose trust bundle `read` takes.
#[allow(deprecated)] // match_subject_alt_names: still what many control planes send
pub(super) fn validation_context_with<T>(
    v: &CertificateValidationContext,
    read: impl Fn(&DataSource) -> Result<T, Rejection>,
) -> Result<(Option<T>, Vec<San>), Rejection> {
    let CertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        suppress_client_ca_list,
    } = v;
    unsupported!(
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        suppress_client_ca_list,
    );
    let ca = trusted_ca
        .as_ref()
        .map(|ds| read(ds).at("trusted_ca"))
        .transpose()?;
    if !match_typed_subject_alt_names.is_empty() && !match_subject_alt_names.is_empty() {
        return Err(Rejection::new(
            "match_subject_alt_names",
            "set either this (deprecated) or match_typed_subject_alt_names, not both",
        ));
    }
    let mut sans = Vec::new();
    for (i, m) in match_typed_subject_alt_names.iter().enumerate() {
        let field = format!("match_typed_subject_alt_names[{i}]");
        let kind = match SanType::try_from(m.san_type) {
            Ok(SanType::Dns) => SanKind::Dns,
            Ok(SanType::Uri) => SanKind::Uri,
            _ => {
                return Err(Rejection::new(
                    format!("{field}.san_type"),
                    "Weir matches DNS and URI subject-alt-names only",
                ));
            }
        };
        if !m.oid.is_empty() {
            return Err(Rejection::unsupported(&format!("{field}.oid")));
        }
        let matcher = m
            .matcher
            .as_ref()
            .ok_or_else(|| Rejection::new(format!("{field}.matcher"), "is required"))?;
        let pattern = san_pattern(matcher).at(format_args!("{field}.matcher"))?;
        sans.push(San {
            kind: Some(kind),
            pattern,
            field,
        });
    }
    for (i, m) in match_subject_alt_names.iter().enumerate() {
        let field = format!("match_subject_alt_names[{i}]");
        let pattern = san_pattern(m).at(&field)?;
        sans.push(San {
            kind: None,
            pattern,
            field,
        });
    }
    Ok((ca, sans))
}

/// A subject-alt-name matcher's pattern: `exact`, or `prefix` (only a SPIFFE trust domain is
/// useful as one, which the caller checks).
fn san_pattern(m: &StringMatcher) -> Result<SanPattern, Rejection> {
    let StringMatcher {
        ignore_case,
        match_pattern,
    } = m;
    unsupported!(ignore_case);
    match match_pattern {
        Some(MatchPattern::Exact(s)) => Ok(SanPattern::Exact(s.clone())),
        Some(MatchPattern::Prefix(s)) => Ok(SanPattern::Prefix(s.clone())),
        None => Err(Rejection::new("", "needs `exact` or `prefix`")),
        Some(other) => Err(Rejection::new(
            string_matcher_field(other),
            "Weir checks identities by `exact` match (or a `spiffe://TD/` prefix)",
        )),
    }
}

/// The proto name of a `StringMatcher`'s pattern.
pub(super) fn string_matcher_field(p: &MatchPattern) -> &'static str {
    match p {
        MatchPattern::Exact(_) => "exact",
        MatchPattern::Prefix(_) => "prefix",
        MatchPattern::Suffix(_) => "suffix",
        MatchPattern::SafeRegex(_) => "safe_regex",
        MatchPattern::Contains(_) => "contains",
        MatchPattern::Custom(_) => "custom",
    }
}

/// An Envoy cluster's settings and where its endpoints come from.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    /// The cluster's settings; for an EDS cluster `endpoints` is None (EDS supplies them).
    pub cluster: raw::Cluster,
    /// EDS clusters: the ClusterLoadAssignment name to subscribe to
    /// (`eds_cluster_config.service_name`, else the cluster name).
    pub eds: Option<String>,
}

/// An Envoy listener with one HTTP connection manager.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: String,
    /// address, tls, limits; `default_cluster` None, `chain` None (the client names the chain).
    pub listener: raw::Listener,
    /// The HTTP filters before the router, in order (each becomes a Weir filter in the
    /// listener's chain).
    pub filters: Vec<HttpFilterSpec>,
    pub routes: RouteSource,
}

/// Where a listener's routes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    /// RDS: the RouteConfiguration name to subscribe to.
    Rds(String),
    /// An inline route configuration, already the router's JSON (see [`route_config`]).
    Inline(serde_json::Value),
}

/// One HTTP filter before the router.
#[derive(Debug, Clone)]
pub enum HttpFilterSpec {
    /// envoy.filters.http.wasm inline: name = the HttpFilter's name.
    Wasm { name: String, filter: raw::Filter },
    /// config_discovery (ECDS): the extension config name to subscribe to.
    Ecds { name: String, config_name: String },
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ApiConfigSource};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        SdsSecretConfig, SubjectAltNameMatcher,
    };
    use envoy_types::pb::google::protobuf::StringValue;
    use prost::{Message, Name};

    use super::*;

    #[test]
    fn rejection_displays_field_then_message_and_nests() {
        let r = Rejection::unsupported("runtime")
            .within("vm_config")
            .within("http_filters[1].typed_config");
        assert_eq!(
            r.to_string(),
            "http_filters[1].typed_config.vm_config.runtime: is not supported by Weir"
        );
        assert_eq!(Rejection::new("", "x").within("a").field, "a");
        assert_eq!(Rejection::new("[2].b", "x").within("a").field, "a[2].b");
        assert_eq!(Rejection::unsupported("r#match").field, "match");
    }

    #[test]
    fn unpack_checks_the_type_url_and_decodes() {
        let s = StringValue { value: "hi".into() };
        let any = envoy_types::util::pack_any(s.clone());
        assert_eq!(unpack::<StringValue>(&any, "c"), Ok(s.clone()));
        // Any prefix before the last `/` is accepted, as protobuf defines it.
        let other = Any {
            type_url: "example.com/x/google.protobuf.StringValue".into(),
            value: s.encode_to_vec(),
        };
        assert!(unpack::<StringValue>(&other, "c").is_ok());
        let wrong = Any {
            type_url: "type.googleapis.com/google.protobuf.BytesValue".into(),
            value: vec![],
        };
        let r = unpack::<StringValue>(&wrong, "typed_config").unwrap_err();
        assert_eq!(r.field, "typed_config");
        assert!(r.message.contains("google.protobuf.BytesValue"), "{r}");
        let garbage = Any {
            type_url: StringValue::type_url(),
            value: vec![0xff, 0xff],
        };
        assert!(unpack::<StringValue>(&garbage, "c").is_err());
    }

    #[test]
    fn durations_must_be_non_negative() {
        let d = PbDuration {
            seconds: 1,
            nanos: 500_000_000,
        };
        assert_eq!(duration(&d), Ok(Duration::from_millis(1500)));
        let neg = PbDuration {
            seconds: -1,
            nanos: 0,
        };
        assert!(duration(&neg).is_err());
        let zero = PbDuration::default();
        assert!(positive(Some(&zero)).is_err());
        assert_eq!(positive(None), Ok(None));
    }

    #[test]
    fn config_sources_must_be_the_ads_stream() {
        let ads = ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            resource_api_version: 2,
            ..Default::default()
        };
        assert_eq!(config_source(&ads), Ok(()));
        let api = ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource::default(),
            )),
            ..Default::default()
        };
        assert_eq!(config_source(&api).unwrap_err().field, "api_config_source");
        let path = ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Path("/x".into())),
            ..Default::default()
        };
        assert_eq!(config_source(&path).unwrap_err().field, "path");
        let v2 = ConfigSource {
            resource_api_version: 1,
            ..ads
        };
        assert_eq!(
            config_source(&v2).unwrap_err().field,
            "resource_api_version"
        );
    }

    #[test]
    fn data_sources_are_files_only() {
        let f = DataSource {
            specifier: Some(data_source::Specifier::Filename("/etc/c.pem".into())),
            ..Default::default()
        };
        assert_eq!(file(&f), Ok("/etc/c.pem".into()));
        let inline = DataSource {
            specifier: Some(data_source::Specifier::InlineString("PEM".into())),
            ..Default::default()
        };
        let r = file(&inline).unwrap_err();
        assert_eq!(r.field, "inline_string");
        assert!(r.message.contains("not supported yet"));
        assert_eq!(file(&DataSource::default()).unwrap_err().field, "filename");
        let relative = DataSource {
            specifier: Some(data_source::Specifier::Filename("certs/c.pem".into())),
            ..Default::default()
        };
        assert_eq!(file(&relative).unwrap_err().field, "filename");
    }

    fn ds(f: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(data_source::Specifier::Filename(format!("/{f}"))),
            ..Default::default()
        })
    }

    #[test]
    fn common_tls_reads_files_sans_alpn_and_version() {
        let c = CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            tls_certificates: vec![TlsCertificate {
                certificate_chain: ds("c.pem"),
                private_key: ds("k.pem"),
                ..Default::default()
            }],
            alpn_protocols: vec!["h2".into()],
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: ds("ca.pem"),
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: SanType::Uri as i32,
                        matcher: Some(StringMatcher {
                            match_pattern: Some(MatchPattern::Prefix("spiffe://td/".into())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let t = common_tls(&c).unwrap();
        assert_eq!(t.cert, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(t.ca.as_deref(), Some("/ca.pem"));
        assert_eq!(t.alpn, ["h2"]);
        assert_eq!(t.min_version, Some("1.3"));
        assert_eq!(t.sans.len(), 1);
        assert_eq!(t.sans[0].trust_domain(), Some("td"));
        assert_eq!(t.sans[0].field, "match_typed_subject_alt_names[0]");
    }

    #[test]
    fn common_tls_takes_sds_and_refuses_unknown_fields_by_name() {
        let sds = CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig::default()],
            ..Default::default()
        };
        let r = common_tls(&sds).unwrap_err();
        assert_eq!(r.field, "tls_certificate_sds_secret_configs[0].name");
        // Istio's form: SANs in the context, the bundle from SDS.
        let combined = CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: "default".into(),
                sds_config: None,
            }],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext::default()),
                    validation_context_sds_secret_config: Some(SdsSecretConfig {
                        name: "ROOTCA".into(),
                        sds_config: None,
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let t = common_tls(&combined).unwrap();
        assert_eq!(t.ca.as_deref(), Some("@sds/ca/ROOTCA"));
        assert_eq!(
            t.cert,
            Some(("@sds/cert/default".into(), "@sds/key/default".into()))
        );
        let crl = CommonTlsContext {
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    crl: ds("crl.pem"),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        assert_eq!(
            common_tls(&crl).unwrap_err().field,
            "validation_context.crl"
        );
        let old = CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv11 as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            common_tls(&old).unwrap_err().field,
            "tls_params.tls_minimum_protocol_version"
        );
        let regex_san = CommonTlsContext {
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: SanType::Dns as i32,
                        matcher: Some(StringMatcher {
                            match_pattern: Some(MatchPattern::Suffix(".example.com".into())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        assert_eq!(
            common_tls(&regex_san).unwrap_err().field,
            "validation_context.match_typed_subject_alt_names[0].matcher.suffix"
        );
    }
}
