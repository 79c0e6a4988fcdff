//! Downstream TLS of one listener: its rustls configuration (rebuilt on rotation), the client
//! certificate verifier (the bundle's chain check plus the SPIFFE trust-domain check), the
//! handshake bounded by its timeout, and what a connection learns from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::HeaderValue;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ProtocolVersion, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::material::{self, CertInfo};
use super::{Loaded, Role, TlsError, Watched, entries, provider, spiffe};
use crate::config::{ClientAuth, ForwardClientCert, ListenerTlsConfig};

/// A listener's TLS context, shared by every worker.
pub struct ServerTls {
    pub listener: String,
    handshake_timeout: Duration,
    forward_client_cert: ForwardClientCert,
    pub watched: Watched<ServerSide>,
    cfg: ListenerTlsConfig,
    pub handshakes: AtomicU64,
    pub handshake_errors: AtomicU64,
}

/// One version of a listener's material, built.
pub struct ServerSide {
    config: Arc<ServerConfig>,
    /// The listener's own certificate (`connection.*_local_certificate`, XFCC `By=`).
    local: Arc<CertInfo>,
}

/// Why a downstream handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(#[source] std::io::Error),
}

impl ServerTls {
    pub fn load(listener: &str, cfg: &ListenerTlsConfig) -> Result<Self, TlsError> {
        let cfg = cfg.clone();
        let watched = Watched::load(format!("listener:{listener}"), files(&cfg), |c| {
            build(&cfg, c)
        })?;
        Ok(Self {
            listener: listener.to_owned(),
            handshake_timeout: cfg.handshake_timeout,
            forward_client_cert: cfg.forward_client_cert,
            watched,
            cfg,
            handshakes: AtomicU64::new(0),
            handshake_errors: AtomicU64::new(0),
        })
    }

    pub(super) fn refresh(&self) -> bool {
        self.watched.refresh(|c| build(&self.cfg, c))
    }

    /// The handshake with the material current now, bounded by the handshake timeout. A client
    /// certificate that fails verification fails the handshake: no HTTP is read.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, ConnTls), HandshakeError> {
        let side = self.watched.current();
        let acceptor = TlsAcceptor::from(side.value.config.clone());
        let r = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await {
            Err(_) => Err(HandshakeError::Timeout(self.handshake_timeout)),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Ok(Ok(s)) => Ok(s),
        };
        match r {
            Ok(stream) => {
                self.handshakes.fetch_add(1, Relaxed);
                let conn = ConnTls::new(
                    stream.get_ref().1,
                    side.value.local.clone(),
                    self.forward_client_cert,
                );
                Ok((stream, conn))
            }
            Err(e) => {
                self.handshake_errors.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }
}

/// The files a listener's material is read from, in the order `build` expects.
fn files(cfg: &ListenerTlsConfig) -> Vec<std::path::PathBuf> {
    let mut f = vec![cfg.cert.clone(), cfg.key.clone()];
    if let (Some(ca), true) = (&cfg.client_ca, cfg.client_auth != ClientAuth::None) {
        f.push(ca.clone());
    }
    f
}

fn build(cfg: &ListenerTlsConfig, contents: &[Vec<u8>]) -> Result<Loaded<ServerSide>, TlsError> {
    let chain = material::chain(&contents[0], &cfg.cert)?;
    let key = material::key(&contents[1], &cfg.key)?;
    let context = || format!("{} with {}", cfg.cert.display(), cfg.key.display());
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if cfg.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|source| TlsError::Rustls {
            context: context(),
            source,
        })?;
    let mut certs = entries(Role::Cert, &cfg.cert, &chain);
    let builder = match (&cfg.client_ca, contents.get(2)) {
        (Some(ca), Some(pem)) => {
            let (roots, anchors) = material::bundle(pem, ca)?;
            certs.extend(entries(Role::Ca, ca, &anchors));
            let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if cfg.client_auth == ClientAuth::Optional {
                vb = vb.allow_unauthenticated();
            }
            let inner = vb.build().map_err(|e| TlsError::Verifier {
                context: ca.display().to_string(),
                reason: e.to_string(),
            })?;
            let verifier: Arc<dyn ClientCertVerifier> = if cfg.trust_domains.is_empty() {
                inner
            } else {
                Arc::new(TrustDomainVerifier {
                    inner,
                    trust_domains: cfg.trust_domains.clone(),
                })
            };
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let local = Arc::new(CertInfo::parse(&chain[0]).unwrap_or_default());
    // Fails when the key does not match the certificate (a rotation caught between the two
    // files): the old material keeps serving until both are new.
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            context: context(),
            source,
        })?;
    config.alpn_protocols = cfg.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(Loaded {
        value: ServerSide {
            config: Arc::new(config),
            local,
        },
        certs,
    })
}

/// The bundle's verdict, then: the certificate must carry a SPIFFE ID of an allowed trust domain.
#[derive(Debug)]
struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domains: Vec<String>,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = CertInfo::parse(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        let allowed = info
            .uri_sans
            .iter()
            .filter_map(|u| spiffe::trust_domain_of(u))
            .any(|td| self.trust_domains.iter().any(|t| t == td));
        if allowed {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What one TLS connection knows of itself, read once after its handshake.
#[derive(Debug)]
pub struct ConnTls {
    /// `TLSv1.2` / `TLSv1.3`.
    pub version: &'static str,
    pub sni: Option<String>,
    /// The client's verified certificate (absent: none was asked for or presented).
    pub peer: Option<CertInfo>,
    /// The listener's certificate this connection was served with.
    pub local: Arc<CertInfo>,
    /// The `x-forwarded-client-cert` value the core sets on this connection's requests.
    pub xfcc: Option<HeaderValue>,
}

impl ConnTls {
    fn new(conn: &rustls::ServerConnection, local: Arc<CertInfo>, fcc: ForwardClientCert) -> Self {
        let version = match conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        // rustls hands out peer certificates only once they are verified.
        let peer = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| CertInfo::parse(c));
        let xfcc = match (&peer, fcc) {
            (Some(p), ForwardClientCert::SanitizeSet) => xfcc(p, &local),
            _ => None,
        };
        Self {
            version,
            sni: conn.server_name().map(str::to_owned),
            peer,
            local,
            xfcc,
        }
    }
}

/// Envoy's `x-forwarded-client-cert` element for a verified peer: `By` (our URI SAN), `Hash`,
/// `Subject` (quoted), `URI`, and one `DNS` per DNS SAN.
fn xfcc(peer: &CertInfo, local: &CertInfo) -> Option<HeaderValue> {
    let mut v = String::with_capacity(256);
    if let Some(by) = local.uri_sans.first() {
        v.push_str("By=");
        v.push_str(by);
        v.push(';');
    }
    v.push_str("Hash=");
    v.push_str(&peer.sha256);
    v.push_str(";Subject=\"");
    v.push_str(&peer.subject.replace('\\', "\\\\").replace('"', "\\\""));
    v.push('"');
    if let Some(uri) = peer.uri_sans.first() {
        v.push_str(";URI=");
        v.push_str(uri);
    }
    for dns in &peer.dns_sans {
        v.push_str(";DNS=");
        v.push_str(dns);
    }
    HeaderValue::from_str(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_names_the_peer_and_quotes_the_subject() {
        let peer = CertInfo {
            subject: "CN=a\"b,O=weir".into(),
            uri_sans: vec!["spiffe://td/front".into()],
            dns_sans: vec!["front.local".into()],
            sha256: "ab".into(),
            ..CertInfo::default()
        };
        let local = CertInfo {
            uri_sans: vec!["spiffe://td/back".into()],
            ..CertInfo::default()
        };
        assert_eq!(
            xfcc(&peer, &local).unwrap(),
            "By=spiffe://td/back;Hash=ab;Subject=\"CN=a\\\"b,O=weir\";URI=spiffe://td/front;DNS=front.local"
        );
    }
}
