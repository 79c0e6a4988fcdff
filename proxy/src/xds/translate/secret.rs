//! SDS `Secret` → the PEM material Weir writes for the TLS contexts that name it.
//!
//! Weir's TLS contexts follow files (rotation re-reads them), so a secret becomes files: the
//! client writes each accepted secret into a private directory and a context that names the
//! secret reads them there. A context translated here carries a placeholder path,
//! [`sds_path`], which the client resolves once the secret has arrived (until then the listener
//! or cluster warms, as in Envoy). A new version of a secret rewrites its files: new handshakes
//! use it, established connections keep theirs — exactly a file rotation.
//!
//! | field | supported |
//! |---|---|
//! | `name` | required |
//! | `tls_certificate` | `certificate_chain`, `private_key` as `inline_bytes`, `inline_string` or an absolute `filename` (the rest of `TlsCertificate` as in a context: refused when set) |
//! | `validation_context` | `trusted_ca` (the same data sources); subject-alt-name matchers are refused here (put them in the context that names the secret, as Istio does with `combined_validation_context`); the rest refused as in a context |
//! | `session_ticket_keys`, `generic_secret` | refused |

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};

use super::{At, Rejection, tls_certificate_with, validation_context_with};

/// Which file of a secret a context reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Cert,
    Key,
    Ca,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Cert => "cert",
            Part::Key => "key",
            Part::Ca => "ca",
        }
    }

    fn of(s: &str) -> Option<Part> {
        [Part::Cert, Part::Key, Part::Ca]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

/// Starts every placeholder path: never a real absolute path (those start with `/`).
const SDS_PREFIX: &str = "@sds/";

/// The placeholder a context carries for `part` of secret `name`.
pub fn sds_path(name: &str, part: Part) -> String {
    format!("{SDS_PREFIX}{}/{name}", part.name())
}

/// The secret and part a placeholder path names (`None`: a real path).
pub fn parse_sds_path(path: &str) -> Option<(Part, &str)> {
    let rest = path.strip_prefix(SDS_PREFIX)?;
    let (part, name) = rest.split_once('/')?;
    Some((Part::of(part)?, name))
}

/// Secret material: bytes sent inline, or a file the control plane names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Inline(Vec<u8>),
    File(String),
}

/// What a secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub name: String,
    /// Certificate chain and private key.
    pub cert: Option<(Data, Data)>,
    /// Trust bundle.
    pub ca: Option<Data>,
}

impl SecretSpec {
    /// Whether the secret has `part`.
    pub fn has(&self, part: Part) -> bool {
        match part {
            Part::Cert | Part::Key => self.cert.is_some(),
            Part::Ca => self.ca.is_some(),
        }
    }
}

/// An SDS secret.
pub fn secret(s: &Secret) -> Result<SecretSpec, Rejection> {
    let Secret { name, r#type } = s;
    if name.is_empty() {
        return Err(Rejection::new("name", "is required"));
    }
    let mut spec = SecretSpec {
        name: name.clone(),
        cert: None,
        ca: None,
    };
    match r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            spec.cert = Some(tls_certificate_with(c, data).at("tls_certificate")?);
        }
        Some(secret::Type::ValidationContext(v)) => {
            let (ca, sans) = validation_context_with(v, data).at("validation_context")?;
            if let Some(san) = sans.first() {
                return Err(Rejection::new(
                    format!("validation_context.{}", san.field),
                    "subject-alt-name matchers belong in the context that names this secret \
                     (combined_validation_context.default_validation_context)",
                ));
            }
            spec.ca =
                Some(ca.ok_or_else(|| {
                    Rejection::new("validation_context.trusted_ca", "is required")
                })?);
        }
        Some(secret::Type::SessionTicketKeys(_)) => {
            return Err(Rejection::unsupported("session_ticket_keys"));
        }
        Some(secret::Type::GenericSecret(_)) => {
            return Err(Rejection::unsupported("generic_secret"));
        }
        None => {
            return Err(Rejection::new(
                "type",
                "needs tls_certificate or validation_context",
            ));
        }
    }
    Ok(spec)
}

/// A secret's data source: inline, or an absolute file.
fn data(ds: &DataSource) -> Result<Data, Rejection> {
    let DataSource {
        watched_directory,
        specifier,
    } = ds;
    if watched_directory.is_some() {
        return Err(Rejection::unsupported("watched_directory"));
    }
    match specifier {
        Some(data_source::Specifier::InlineBytes(b)) if !b.is_empty() => {
            Ok(Data::Inline(b.clone()))
        }
        Some(data_source::Specifier::InlineString(s)) if !s.is_empty() => {
            Ok(Data::Inline(s.clone().into_bytes()))
        }
        Some(data_source::Specifier::Filename(f)) if f.starts_with('/') => {
            Ok(Data::File(f.clone()))
        }
        Some(data_source::Specifier::Filename(f)) if !f.is_empty() => Err(Rejection::new(
            "filename",
            format!("`{f}`: give an absolute path"),
        )),
        Some(data_source::Specifier::EnvironmentVariable(_)) => {
            Err(Rejection::unsupported("environment_variable"))
        }
        _ => Err(Rejection::new("", "is empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, SubjectAltNameMatcher, TlsCertificate,
    };

    fn inline(s: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(s.into())),
            ..Default::default()
        })
    }

    #[test]
    fn placeholders_round_trip_and_real_paths_are_not_placeholders() {
        for part in [Part::Cert, Part::Key, Part::Ca] {
            let p = sds_path("file-cert:/etc/certs/a~b", part);
            assert_eq!(parse_sds_path(&p), Some((part, "file-cert:/etc/certs/a~b")));
        }
        assert_eq!(parse_sds_path("/etc/certs/cert.pem"), None);
        assert_eq!(parse_sds_path("@sds/nope/x"), None);
    }

    #[test]
    fn certificates_and_bundles_inline_or_by_file() {
        let s = secret(&Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline("CERT"),
                private_key: Some(DataSource {
                    specifier: Some(data_source::Specifier::Filename("/k.pem".into())),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        })
        .unwrap();
        assert_eq!(
            s.cert,
            Some((Data::Inline(b"CERT".to_vec()), Data::File("/k.pem".into())))
        );
        assert!(s.has(Part::Key) && !s.has(Part::Ca));

        let s = secret(&Secret {
            name: "ROOTCA".into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline("CA"),
                    ..Default::default()
                },
            )),
        })
        .unwrap();
        assert_eq!(s.ca, Some(Data::Inline(b"CA".to_vec())));
    }

    #[test]
    fn what_a_secret_cannot_carry_is_named() {
        let r = secret(&Secret {
            name: "ROOTCA".into(),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: inline("CA"),
                match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                    san_type: 3,
                    matcher: Some(envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                        match_pattern: Some(
                            envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(
                                "spiffe://td/x".into(),
                            ),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        })
        .unwrap_err();
        assert_eq!(
            r.field,
            "validation_context.match_typed_subject_alt_names[0]"
        );
        let r = secret(&Secret {
            name: "x".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline("C"),
                private_key: inline("K"),
                password: inline("pw"),
                ..Default::default()
            })),
        })
        .unwrap_err();
        assert_eq!(r.field, "tls_certificate.password");
        let r = secret(&Secret {
            name: String::new(),
            r#type: None,
        })
        .unwrap_err();
        assert_eq!(r.field, "name");
    }
}
