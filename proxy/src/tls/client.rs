//! Upstream TLS of one cluster: its rustls configuration (rebuilt on rotation; with a client
//! certificate for mutual TLS) and the verifier that accepts a server only when its certificate
//! chains to the cluster's bundle *and* names the expected identity — a SPIFFE ID, any ID of a
//! trust domain, or a DNS name.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::material::{self, CertInfo};
use super::{Loaded, Role, TlsError, Watched, entries, provider, spiffe};
use crate::config::{ClusterTlsConfig, ExpectedIdentity, Protocol};

/// A cluster's TLS context, shared by every worker.
pub struct ClientTls {
    pub watched: Watched<Arc<ClientConfig>>,
    cfg: ClusterTlsConfig,
    protocol: Protocol,
    /// What the handshake names (and sends as SNI when it is a DNS name); `None`: the endpoint's
    /// IP address, which sends no SNI.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("context", &self.watched.name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    pub fn load(
        cluster: &str,
        cfg: &ClusterTlsConfig,
        protocol: Protocol,
    ) -> Result<Self, TlsError> {
        let cfg = cfg.clone();
        let watched = Watched::load(format!("cluster:{cluster}"), files(&cfg), |c| {
            build(&cfg, protocol, c)
        })?;
        let name = cfg.sni.clone().or(match &cfg.expect {
            ExpectedIdentity::Dns(n) => Some(n.clone()),
            _ => None,
        });
        let server_name = name.and_then(|n| ServerName::try_from(n).ok());
        Ok(Self {
            watched,
            cfg,
            protocol,
            server_name,
        })
    }

    /// Re-reads the files; new handshakes use new material that builds. Whether it changed.
    pub fn refresh(&self) -> bool {
        self.watched.refresh(|c| build(&self.cfg, self.protocol, c))
    }

    /// The TLS handshake over a connected socket, with the material current now.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let config = self.watched.current().value.clone();
        let name = self
            .server_name
            .clone()
            .unwrap_or(ServerName::IpAddress(addr.ip().into()));
        TlsConnector::from(config).connect(name, tcp).await
    }
}

fn files(cfg: &ClusterTlsConfig) -> Vec<std::path::PathBuf> {
    let mut f = vec![cfg.ca.clone()];
    if let Some((c, k)) = &cfg.client_cert {
        f.push(c.clone());
        f.push(k.clone());
    }
    f
}

fn build(
    cfg: &ClusterTlsConfig,
    protocol: Protocol,
    contents: &[Vec<u8>],
) -> Result<Loaded<Arc<ClientConfig>>, TlsError> {
    let (roots, anchors) = material::bundle(&contents[0], &cfg.ca)?;
    let mut certs = entries(Role::Ca, &cfg.ca, &anchors);
    let provider = provider();
    let verifier = Arc::new(IdentityVerifier {
        roots: Arc::new(roots),
        expect: cfg.expect.clone(),
        algs: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            context: cfg.ca.display().to_string(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&cfg.client_cert, contents.get(1), contents.get(2)) {
        (Some((cert_path, key_path)), Some(cert), Some(key)) => {
            let chain = material::chain(cert, cert_path)?;
            let key = material::key(key, key_path)?;
            certs.splice(0..0, entries(Role::Cert, cert_path, &chain));
            // Fails when the key does not match the certificate (caught mid-rotation).
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    context: format!("{} with {}", cert_path.display(), key_path.display()),
                    source,
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![match protocol {
        Protocol::Http1 => b"http/1.1".to_vec(),
        Protocol::Http2 => b"h2".to_vec(),
    }];
    Ok(Loaded {
        value: Arc::new(config),
        certs,
    })
}

/// Chain to the bundle, then the expected identity.
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expect: ExpectedIdentity,
    algs: WebPkiSupportedAlgorithms,
}

fn identity_error(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::other(msg),
    ))))
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let uris = || {
            CertInfo::parse(end_entity)
                .map(|i| i.uri_sans)
                .unwrap_or_default()
        };
        match &self.expect {
            ExpectedIdentity::Dns(name) => {
                let name = ServerName::try_from(name.as_str())
                    .map_err(|_| identity_error(format!("`{name}` is not a DNS name")))?;
                verify_server_name(&cert, &name)?;
            }
            ExpectedIdentity::Spiffe(id) => {
                let uris = uris();
                if !uris.iter().any(|u| u == id) {
                    return Err(identity_error(format!(
                        "the upstream is {uris:?}, not the expected {id}"
                    )));
                }
            }
            ExpectedIdentity::TrustDomain(td) => {
                let uris = uris();
                if !uris.iter().any(|u| spiffe::trust_domain_of(u) == Some(td)) {
                    return Err(identity_error(format!(
                        "the upstream is {uris:?}, not of trust domain {td}"
                    )));
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
