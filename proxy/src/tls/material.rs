//! Certificate material from PEM bytes: chains, keys, trust bundles, and what an operator (and a
//! filter) needs to know of a certificate — its names, subject, validity and fingerprint — read
//! once with x509-parser when the material is loaded, never per request.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use super::TlsError;

/// A certificate chain (leaf first) from PEM.
pub fn chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::pem(path, &e))?;
    if certs.is_empty() {
        return Err(TlsError::Material {
            path: path.to_owned(),
            reason: "holds no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// A private key (PKCS#8, SEC1 or PKCS#1) from PEM.
pub fn key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::pem(path, &e))
}

/// A trust bundle: every certificate in the PEM becomes a trust anchor (a bundle may hold the old
/// and the new CA during a rotation).
pub fn bundle(
    pem: &[u8],
    path: &Path,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TlsError> {
    let certs = chain(pem, path)?;
    let mut roots = RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        roots.add(c.clone()).map_err(|e| TlsError::Material {
            path: path.to_owned(),
            reason: format!("certificate {i} is not a usable trust anchor: {e}"),
        })?;
    }
    Ok((roots, certs))
}

/// What a certificate says about itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CertInfo {
    /// RFC 4514 form, most specific first (`CN=web,O=weir`), as Envoy shows it.
    pub subject: String,
    /// Lower-case hex of the serial number's bytes.
    pub serial: String,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Lower-case hex SHA-256 of the DER.
    pub sha256: String,
}

impl CertInfo {
    /// Reads a DER certificate. `None` if it does not parse (rustls has already refused such a
    /// certificate wherever it matters).
    pub fn parse(der: &[u8]) -> Option<CertInfo> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut info = CertInfo {
            subject: rfc4514(cert.subject()),
            serial: hex::encode(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            sha256: hex::encode(Sha256::digest(der)),
            ..CertInfo::default()
        };
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => info.uri_sans.push((*u).to_owned()),
                        GeneralName::DNSName(d) => info.dns_sans.push((*d).to_owned()),
                        _ => {}
                    }
                }
            }
        }
        Some(info)
    }

    /// The SPIFFE ID among the URI SANs (a SPIFFE certificate has exactly one).
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uri_sans
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .map(String::as_str)
    }
}

/// A distinguished name as RFC 4514 text: RDNs in reverse order, `,` between them, `+` inside
/// one, special characters escaped.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<_> = name.iter_rdn().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(v) => escape_into(v, &mut out),
                Err(_) => {
                    out.push('#');
                    out.push_str(&hex::encode(attr.attr_value().data));
                }
            }
        }
    }
    out
}

fn escape_into(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_validity_and_fingerprint() {
        let mut params = rcgen::CertificateParams::new(vec!["web.local".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/ns/a/sa/web".try_into().unwrap(),
        ));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "weir");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "web, v2");
        let kp = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&kp).unwrap();
        let info = CertInfo::parse(cert.der()).unwrap();
        assert_eq!(info.subject, "CN=web\\, v2,O=weir");
        assert_eq!(info.uri_sans, ["spiffe://example.org/ns/a/sa/web"]);
        assert_eq!(info.dns_sans, ["web.local"]);
        assert_eq!(info.spiffe_id(), Some("spiffe://example.org/ns/a/sa/web"));
        assert_eq!(info.sha256, hex::encode(Sha256::digest(cert.der())));
        assert!(info.not_after > info.not_before);
        let pem = cert.pem();
        let c = chain(pem.as_bytes(), Path::new("x.pem")).unwrap();
        assert_eq!(c[0].as_ref(), cert.der().as_ref());
        assert!(key(b"nothing", Path::new("k.pem")).is_err());
        assert!(chain(b"", Path::new("c.pem")).is_err());
    }
}
