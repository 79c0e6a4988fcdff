//! TLS test support: a throw-away PKI minted per test ([`TestCa`], [`Leaf`]), TLS clients with and
//! without client certificates ([`TlsClient`], [`https_get`], [`h2_get_with`], [`peer_certificate`]),
//! atomic file writes for rotation ([`write_atomic`]), a hand-built TLS 1.1 ClientHello
//! ([`tls11_client_hello`], [`send_raw`]), and readers for weir's admin `/certs` and `/metrics`
//! ([`admin_get`], [`parse_certs`], [`metric_values`]).
//!
//! Certificates are ECDSA P-256. A CA carries the URI SAN `spiffe://<trust domain>`; a leaf has
//! `O=weir, CN=<name>` (so its RFC 4514 subject is `CN=<name>,O=weir`), EKU server and client auth,
//! an optional SPIFFE ID (URI SAN), optional DNS SANs, and a serial of 16 bytes whose first byte
//! is in `0x40..=0x7f` (so the hex of the serial's DER content is just the hex of those bytes).
//!
//! The clients verify the server certificate's chain against their roots but not its name: weir's
//! workload certificates carry a SPIFFE ID and often no DNS name. Tests that care which
//! certificate a server presented compare [`TlsInfo::peer_certs`] with the expected [`Leaf`].
//! Session resumption is off, so every connection is a full handshake that presents certificates.
//!
//! Long (1.35k lines): certificate minting, TLS clients and servers for the e2e tests, kept
//! together so one test can mix them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::client::{Body, Collected, body_empty};
use crate::{RawClient, RawResponse};

/// Lower-case hex of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A counter making CA names, serials and temp file names unique within the test process.
static UNIQUE: AtomicU64 = AtomicU64::new(1);

fn unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

/// A 16-byte serial, first byte in `0x40..=0x7f` (positive, no DER padding), unique per call.
fn serial_for(key: &KeyPair) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(key.public_key_raw());
    h.update(unique().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let mut b = h.finalize()[..16].to_vec();
    b[0] = (b[0] & 0x3f) | 0x40;
    b
}

/// A test certificate authority for one SPIFFE trust domain.
pub struct TestCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
    subject: String,
    not_after: i64,
}

impl TestCa {
    /// A new self-signed CA (ECDSA P-256) with URI SAN `spiffe://<trust_domain>`, valid from a day
    /// ago for a year, `O=weir, CN=weir test CA <n> <trust_domain>` (unique per CA).
    pub fn new(trust_domain: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let cn = format!("weir test CA {} {trust_domain}", unique());
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "weir");
        dn.push(DnType::CommonName, cn.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .expect("ia5 URI"),
        )];
        let now = unix_now();
        let not_after = now + 365 * 86_400;
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + Duration::from_secs((now - 86_400) as u64);
        params.not_after = epoch + Duration::from_secs(not_after as u64);
        params.serial_number = Some(SerialNumber::from_slice(&serial_for(&key)));
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            trust_domain: trust_domain.to_string(),
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            subject: format!("CN={cn},O=weir"),
            not_after,
        }
    }

    /// The trust domain (`example.org`).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate as PEM (a trust bundle of one).
    pub fn pem(&self) -> String {
        self.pem.clone()
    }

    /// The CA certificate as DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// Lower-case hex SHA-256 of the CA certificate's DER.
    pub fn sha256_hex(&self) -> String {
        sha256_hex(&self.der)
    }

    /// RFC 4514 subject of the CA (`CN=weir test CA <n> <td>,O=weir`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// `notAfter` of the CA certificate, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// A leaf valid from an hour ago for 30 days: `O=weir, CN=<name>`, URI SAN `spiffe_id` if
    /// given, DNS SANs `dns`, EKU server and client auth.
    pub fn leaf(&self, name: &str, spiffe_id: Option<&str>, dns: &[&str]) -> Leaf {
        let now = unix_now();
        self.leaf_valid(name, spiffe_id, dns, now - 3600, now + 30 * 86_400)
    }

    /// Like [`TestCa::leaf`], but expired: valid from two days ago until one day ago.
    pub fn leaf_expired(&self, name: &str, spiffe_id: Option<&str>, dns: &[&str]) -> Leaf {
        let now = unix_now();
        self.leaf_valid(name, spiffe_id, dns, now - 2 * 86_400, now - 86_400)
    }

    /// A leaf valid from `not_before` to `not_after` (Unix seconds).
    pub fn leaf_valid(
        &self,
        name: &str,
        spiffe_id: Option<&str>,
        dns: &[&str],
        not_before: i64,
        not_after: i64,
    ) -> Leaf {
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "weir");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        if let Some(id) = spiffe_id {
            sans.push(SanType::URI(id.try_into().expect("ia5 URI")));
        }
        for d in dns {
            sans.push(SanType::DnsName((*d).try_into().expect("ia5 DNS name")));
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + Duration::from_secs(not_before.max(0) as u64);
        params.not_after = epoch + Duration::from_secs(not_after.max(0) as u64);
        let serial = serial_for(&key);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            not_after,
            serial_hex: hex::encode(serial),
            subject: format!("CN={name},O=weir"),
            spiffe_id: spiffe_id.map(str::to_string),
        }
    }
}

/// A leaf certificate and its private key.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The certificate as PEM (leaf only; the CA is its direct issuer).
    pub cert_pem: String,
    /// The private key as PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate as DER.
    pub der: CertificateDer<'static>,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// Lower-case hex of the serial number (its DER content bytes).
    pub serial_hex: String,
    /// RFC 4514 subject: `CN=<name>,O=weir`.
    pub subject: String,
    /// The SPIFFE ID (URI SAN), if any.
    pub spiffe_id: Option<String>,
}

impl Leaf {
    /// Lower-case hex SHA-256 of the certificate's DER.
    pub fn sha256_hex(&self) -> String {
        sha256_hex(&self.der)
    }
}

/// A TLS terminator in front of a plaintext server: accepts TLS (ALPN `h2`, the certificate
/// `leaf`, client certificates from `client_ca` required when given) on 127.0.0.1 and pipes the
/// decrypted bytes to `backend`. It puts TLS in front of a test server that has none (the
/// scripted ADS server) without the server knowing. Stops when dropped.
pub struct TlsFront {
    pub addr: SocketAddr,
    /// Handshakes completed (a client that failed verification is not counted).
    pub handshakes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(backend: SocketAddr, leaf: &Leaf, client_ca: Option<&TestCa>) -> TlsFront {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der().clone()).expect("CA certificate");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("leaf key");
        let mut cfg = builder
            .with_single_cert(vec![leaf.der.clone()], key)
            .expect("server certificate");
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS front");
        let addr = listener.local_addr().expect("local address");
        let handshakes = Arc::new(AtomicU64::new(0));
        let counted = handshakes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::Relaxed);
                    let Ok(mut up) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        TlsFront {
            addr,
            handshakes,
            task,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Concatenates PEM bundles (e.g. `CA1+CA2`).
pub fn bundle(pems: &[&str]) -> String {
    let mut out = String::new();
    for p in pems {
        out.push_str(p);
        if !p.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Writes `bytes` to `dir/name` atomically: a temp file in the same folder, then a rename over
/// the target (a reader sees the old or the new content, never a partial file).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp-{}", unique()));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    let dst = dir.join(name);
    std::fs::rename(&tmp, &dst).unwrap_or_else(|e| panic!("rename to {}: {e}", dst.display()));
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Which TLS versions a [`TlsClient`] offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.2 and 1.3.
    #[default]
    Both,
    /// TLS 1.2 only.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// A TLS client configuration: roots, optional client certificate, ALPN, SNI, versions.
#[derive(Clone, Debug, Default)]
pub struct TlsClient {
    roots: Vec<String>,
    identity: Option<(String, String)>,
    alpn: Vec<Vec<u8>>,
    server_name: Option<String>,
    versions: Versions,
}

impl TlsClient {
    /// A client trusting the certificates of PEM bundle `roots_pem` (one or several CAs).
    pub fn new(roots_pem: &str) -> TlsClient {
        TlsClient {
            roots: vec![roots_pem.to_string()],
            ..TlsClient::default()
        }
    }

    /// Also trusts the certificates of `pem`.
    pub fn trust(mut self, pem: &str) -> TlsClient {
        self.roots.push(pem.to_string());
        self
    }

    /// Presents `leaf` as the client certificate.
    pub fn identity(self, leaf: &Leaf) -> TlsClient {
        self.client_cert(&leaf.cert_pem, &leaf.key_pem)
    }

    /// Presents the certificate chain `cert_pem` with key `key_pem`.
    pub fn client_cert(mut self, cert_pem: &str, key_pem: &str) -> TlsClient {
        self.identity = Some((cert_pem.to_string(), key_pem.to_string()));
        self
    }

    /// Offers these ALPN protocols (e.g. `["h2"]`); none by default.
    pub fn alpn(mut self, protocols: &[&str]) -> TlsClient {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Sends SNI `name` (by default the server's IP address is the name: no SNI is sent).
    pub fn server_name(mut self, name: &str) -> TlsClient {
        self.server_name = Some(name.to_string());
        self
    }

    /// Offers only these TLS versions.
    pub fn versions(mut self, v: Versions) -> TlsClient {
        self.versions = v;
        self
    }

    /// The rustls configuration (ring provider; chain-only server verification; no resumption).
    /// Panics on unusable PEM.
    pub fn config(&self) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for pem in &self.roots {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(c.expect("root PEM parses"))
                    .expect("root certificate accepted");
            }
        }
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.versions {
            Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
            Versions::Tls12 => &[&rustls::version::TLS12],
            Versions::Tls13 => &[&rustls::version::TLS13],
        };
        let verifier = Arc::new(ChainOnly {
            roots: Arc::new(roots),
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut cfg = match &self.identity {
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<_, _>>()
                        .expect("client cert PEM parses");
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key PEM");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client cert and key match")
            }
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = self.alpn.clone();
        cfg.resumption = Resumption::disabled();
        Arc::new(cfg)
    }

    /// The name used for a connection to `addr`: the configured SNI, else the IP address.
    pub fn server_name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        match &self.server_name {
            Some(n) => ServerName::try_from(n.clone()).expect("valid server name"),
            None => ServerName::IpAddress(addr.ip().into()),
        }
    }
}

/// Verifies that the server certificate chains to the roots (validity, EKU, signatures), not
/// which name it is valid for.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
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
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a client learnt of a TLS session.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    /// The server's certificate chain, leaf first.
    pub peer_certs: Vec<CertificateDer<'static>>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The negotiated version.
    pub version: Option<ProtocolVersion>,
}

impl TlsInfo {
    /// Reads the session of `stream`.
    pub fn of(stream: &TlsStream<TcpStream>) -> TlsInfo {
        let conn = stream.get_ref().1;
        TlsInfo {
            peer_certs: conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: conn.protocol_version(),
        }
    }

    /// SHA-256 (hex) of the server's leaf certificate.
    pub fn peer_sha256(&self) -> Option<String> {
        self.peer_certs.first().map(|c| sha256_hex(c))
    }
}

/// Connects to `addr` and completes the TLS handshake (bounded by [`crate::TIMEOUT`]).
///
/// With TLS 1.3 a server that rejects the client certificate does so after the client finished
/// its side: this succeeds and the first read fails.
pub async fn tls_connect(
    addr: SocketAddr,
    client: &TlsClient,
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(client.config());
    let name = client.server_name_for(addr);
    let fut = async move {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        connector.connect(name, tcp).await
    };
    match tokio::time::timeout(crate::TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("TLS handshake with {addr} timed out"),
        )),
    }
}

/// The leaf certificate a new handshake with `addr` presents.
pub async fn peer_certificate(
    addr: SocketAddr,
    client: &TlsClient,
) -> std::io::Result<CertificateDer<'static>> {
    let s = tls_connect(addr, client).await?;
    TlsInfo::of(&s)
        .peer_certs
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::other("no peer certificate"))
}

/// Reads a response to its end, returning transport errors instead of panicking.
pub async fn collect_checked(resp: Response<Incoming>) -> anyhow::Result<Collected> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.context("response body")?;
    let trailers = collected.trailers().cloned();
    Ok(Collected {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// `GET path` over HTTP/1.1 on a new TLS connection to `addr`.
pub async fn https_get(
    addr: SocketAddr,
    client: &TlsClient,
    path: &str,
) -> anyhow::Result<Collected> {
    https_get_with(addr, client, path, &[])
        .await
        .map(|(c, _)| c)
}

/// `GET path` with extra request headers over HTTP/1.1 on a new TLS connection to `addr`;
/// returns the response and what the client learnt of the TLS session. Any failure (handshake,
/// no response, timeout after [`crate::TIMEOUT`]) is an error.
pub async fn https_get_with(
    addr: SocketAddr,
    client: &TlsClient,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(Collected, TlsInfo)> {
    let mut req = Request::builder()
        .method("GET")
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body_empty()).context("build request")?;
    https_request(addr, client, req).await
}

/// Sends `req` over HTTP/1.1 on a new TLS connection to `addr` and reads the response.
pub async fn https_request(
    addr: SocketAddr,
    client: &TlsClient,
    req: Request<Body>,
) -> anyhow::Result<(Collected, TlsInfo)> {
    let fut = async {
        let stream = tls_connect(addr, client).await.context("TLS handshake")?;
        let info = TlsInfo::of(&stream);
        let (mut send, conn) = http1::handshake::<_, Body>(TokioIo::new(stream))
            .await
            .context("h1 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = send.send_request(req).await.context("h1 request")?;
        Ok((collect_checked(resp).await?, info))
    };
    match tokio::time::timeout(crate::TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("https request to {addr} timed out")),
    }
}

/// `GET path` with extra request headers over HTTP/2 on a new TLS connection to `addr` (the
/// client should offer ALPN `h2`); returns the response and the TLS session.
pub async fn h2_get_with(
    addr: SocketAddr,
    client: &TlsClient,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(Collected, TlsInfo)> {
    let fut = async {
        let stream = tls_connect(addr, client).await.context("TLS handshake")?;
        let info = TlsInfo::of(&stream);
        let (mut send, conn) =
            http2::handshake::<_, _, Body>(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .context("h2 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method("GET")
            .uri(format!("https://{addr}{path}"))
            .version(http::Version::HTTP_2);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body_empty()).context("build request")?;
        let resp = send.send_request(req).await.context("h2 request")?;
        Ok((collect_checked(resp).await?, info))
    };
    match tokio::time::timeout(crate::TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("h2 request to {addr} timed out")),
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy ClientHello
// ---------------------------------------------------------------------------------------------

/// A TLS 1.1 ClientHello record: record version 0x0302, `client_version` 0x0302, no
/// `supported_versions` extension, cipher suites `TLS_RSA_WITH_AES_128_CBC_SHA` (0x002f) and
/// `TLS_RSA_WITH_AES_256_CBC_SHA` (0x0035), null compression, and an SNI extension if `sni`.
pub fn tls11_client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x02]); // client_version TLS 1.1
    body.extend((0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11))); // random
    body.push(0); // session_id: empty
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        let list_len = 3 + n.len();
        ext.extend_from_slice(&[0x00, 0x00]); // server_name
        ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list_len as u16).to_be_bytes());
        ext.push(0); // host_name
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
    }
    if !ext.is_empty() {
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
    }
    let mut hs = vec![0x01]; // client_hello
    let len = body.len() as u32;
    hs.extend_from_slice(&len.to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x02]; // handshake record, TLS 1.1
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// What came back for bytes sent on a raw TCP connection.
#[derive(Clone, Debug)]
pub struct RawReply {
    /// Every byte received.
    pub bytes: Vec<u8>,
    /// The peer closed (EOF or reset) before the deadline.
    pub closed: bool,
}

impl RawReply {
    /// TLS record content types of the records received, in order (21 = alert, 22 = handshake).
    pub fn record_types(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 5 <= self.bytes.len() {
            out.push(self.bytes[i]);
            let len = u16::from_be_bytes([self.bytes[i + 3], self.bytes[i + 4]]) as usize;
            i += 5 + len;
        }
        out
    }
}

/// Connects to `addr`, writes `bytes`, and reads until EOF (or a reset) or until `limit` passed.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> RawReply {
    let mut tcp = crate::within("raw connect", TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.set_nodelay(true).unwrap();
    let mut out = Vec::new();
    if tcp.write_all(bytes).await.is_err() {
        return RawReply {
            bytes: out,
            closed: true,
        };
    }
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    RawReply { bytes: out, closed }
}

// ---------------------------------------------------------------------------------------------
// Admin: /certs and /metrics
// ---------------------------------------------------------------------------------------------

/// `GET path` on the admin listener (`Connection: close`).
pub async fn admin_get(admin: SocketAddr, path: &str) -> RawResponse {
    let mut c = RawClient::connect(admin).await;
    c.write(
        format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write admin request");
    c.read_response().await
}

/// Values of metric `name` on lines whose labels include all of `labels`, in order of
/// appearance (Prometheus text format).
pub fn metric_values(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.rfind('}') {
                Some(end) => (&r[..end], r[end + 1..].trim()),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue; // another metric whose name starts with `name`
        };
        let have = parse_labels(label_text);
        let all = labels
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v));
        if !all {
            continue;
        }
        let value = value.split_whitespace().next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            out.push(v);
        }
    }
    out
}

/// `k="v",k2="v2"` → pairs (backslash escapes in values undone).
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',' | ' ')) {
            chars.next();
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            return out;
        }
        if chars.next() != Some('"') {
            return out;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => break,
                },
                '"' => break,
                o => val.push(o),
            }
        }
        out.push((key.trim().to_string(), val));
    }
}

/// One entry of `GET /certs` → `certificates`.
#[derive(Clone, Debug, Default)]
pub struct CertEntry {
    /// `listener:<name>` or `cluster:<name>`.
    pub context: String,
    /// `cert` or `ca`.
    pub role: String,
    /// The file it was read from.
    pub path: String,
    /// RFC 4514 subject.
    pub subject: String,
    /// Lower-case hex of the serial.
    pub serial: String,
    /// URI SANs.
    pub uri_sans: Vec<String>,
    /// DNS SANs.
    pub dns_sans: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Lower-case hex SHA-256 of the DER.
    pub sha256: String,
}

/// One entry of `GET /certs` → `contexts`.
#[derive(Clone, Debug, Default)]
pub struct CertContext {
    /// `listener:<name>` or `cluster:<name>`.
    pub name: String,
    /// Successful reloads.
    pub reloads: i64,
    /// Failed reloads.
    pub reload_errors: i64,
    /// The last reload error, if any.
    pub last_error: Option<String>,
}

/// The `GET /certs` document.
#[derive(Clone, Debug, Default)]
pub struct Certs {
    /// Every loaded certificate.
    pub certificates: Vec<CertEntry>,
    /// Every TLS context.
    pub contexts: Vec<CertContext>,
}

impl Certs {
    /// Entries of `context` with `role`.
    pub fn of(&self, context: &str, role: &str) -> Vec<&CertEntry> {
        self.certificates
            .iter()
            .filter(|c| c.context == context && c.role == role)
            .collect()
    }

    /// SHA-256s of the entries of `context` with `role`, sorted.
    pub fn sha256s(&self, context: &str, role: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .of(context, role)
            .iter()
            .map(|c| c.sha256.clone())
            .collect();
        v.sort();
        v
    }

    /// The context called `name`.
    pub fn context(&self, name: &str) -> Option<&CertContext> {
        self.contexts.iter().find(|c| c.name == name)
    }
}

/// Parses the `GET /certs` JSON document.
pub fn parse_certs(text: &str) -> Result<Certs, String> {
    let doc = Json::parse(text)?;
    let s = |v: &Json, k: &str| v.get(k).and_then(Json::as_str).unwrap_or("").to_string();
    let n = |v: &Json, k: &str| v.get(k).and_then(Json::as_i64).unwrap_or(i64::MIN);
    let list = |v: &Json, k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Json::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let certificates = doc
        .get("certificates")
        .and_then(Json::as_array)
        .ok_or("no `certificates` array")?
        .iter()
        .map(|c| CertEntry {
            context: s(c, "context"),
            role: s(c, "role"),
            path: s(c, "path"),
            subject: s(c, "subject"),
            serial: s(c, "serial"),
            uri_sans: list(c, "uri_sans"),
            dns_sans: list(c, "dns_sans"),
            not_before: n(c, "not_before"),
            not_after: n(c, "not_after"),
            sha256: s(c, "sha256"),
        })
        .collect();
    let contexts = doc
        .get("contexts")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .map(|c| CertContext {
                    name: s(c, "name"),
                    reloads: n(c, "reloads"),
                    reload_errors: n(c, "reload_errors"),
                    last_error: c
                        .get("last_error")
                        .and_then(Json::as_str)
                        .map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Certs {
        certificates,
        contexts,
    })
}

/// `GET /certs` on `admin`, parsed; panics on a non-200 answer or bad JSON.
pub async fn get_certs(admin: SocketAddr) -> Certs {
    let r = admin_get(admin, "/certs").await;
    assert_eq!(r.status, 200, "GET /certs: {}", r.text());
    parse_certs(&r.text()).unwrap_or_else(|e| panic!("GET /certs: {e}: {}", r.text()))
}

/// `GET /metrics` on `admin` as text; panics on a non-200 answer.
pub async fn get_metrics(admin: SocketAddr) -> String {
    let r = admin_get(admin, "/metrics").await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    r.text()
}

/// A JSON value (a minimal parser: the tests read weir's admin documents).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number.
    Num(f64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object, members in order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Parses a whole document.
    pub fn parse(text: &str) -> Result<Json, String> {
        let b = text.as_bytes();
        let mut i = 0;
        let v = parse_value(b, &mut i)?;
        skip_ws(b, &mut i);
        if i != b.len() {
            return Err(format!("trailing characters at {i}"));
        }
        Ok(v)
    }

    /// Member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The number as an integer, if this is an integral number.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Num(n) if n.fract() == 0.0 => Some(*n as i64),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
        *i += 1;
    }
}

fn parse_value(b: &[u8], i: &mut usize) -> Result<Json, String> {
    skip_ws(b, i);
    let Some(&c) = b.get(*i) else {
        return Err("unexpected end".into());
    };
    match c {
        b'{' => {
            *i += 1;
            let mut members = Vec::new();
            skip_ws(b, i);
            if b.get(*i) == Some(&b'}') {
                *i += 1;
                return Ok(Json::Obj(members));
            }
            loop {
                skip_ws(b, i);
                let k = parse_string(b, i)?;
                skip_ws(b, i);
                if b.get(*i) != Some(&b':') {
                    return Err(format!("expected ':' at {i}"));
                }
                *i += 1;
                let v = parse_value(b, i)?;
                members.push((k, v));
                skip_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b'}') => {
                        *i += 1;
                        return Ok(Json::Obj(members));
                    }
                    _ => return Err(format!("expected ',' or '}}' at {i}")),
                }
            }
        }
        b'[' => {
            *i += 1;
            let mut items = Vec::new();
            skip_ws(b, i);
            if b.get(*i) == Some(&b']') {
                *i += 1;
                return Ok(Json::Arr(items));
            }
            loop {
                items.push(parse_value(b, i)?);
                skip_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b']') => {
                        *i += 1;
                        return Ok(Json::Arr(items));
                    }
                    _ => return Err(format!("expected ',' or ']' at {i}")),
                }
            }
        }
        b'"' => parse_string(b, i).map(Json::Str),
        b't' if b[*i..].starts_with(b"true") => {
            *i += 4;
            Ok(Json::Bool(true))
        }
        b'f' if b[*i..].starts_with(b"false") => {
            *i += 5;
            Ok(Json::Bool(false))
        }
        b'n' if b[*i..].starts_with(b"null") => {
            *i += 4;
            Ok(Json::Null)
        }
        _ => {
            let start = *i;
            while *i < b.len() && matches!(b[*i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                *i += 1;
            }
            let t = std::str::from_utf8(&b[start..*i]).map_err(|e| e.to_string())?;
            t.parse::<f64>()
                .map(Json::Num)
                .map_err(|_| format!("bad value at {start}"))
        }
    }
}

fn parse_string(b: &[u8], i: &mut usize) -> Result<String, String> {
    if b.get(*i) != Some(&b'"') {
        return Err(format!("expected a string at {i}"));
    }
    *i += 1;
    let mut out: Vec<u8> = Vec::new();
    loop {
        let Some(&c) = b.get(*i) else {
            return Err("unterminated string".into());
        };
        *i += 1;
        match c {
            b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
            b'\\' => {
                let Some(&e) = b.get(*i) else {
                    return Err("unterminated escape".into());
                };
                *i += 1;
                match e {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'u' => {
                        let hex = b.get(*i..*i + 4).ok_or("short \\u escape")?;
                        *i += 4;
                        let code = u32::from_str_radix(
                            std::str::from_utf8(hex).map_err(|e| e.to_string())?,
                            16,
                        )
                        .map_err(|e| e.to_string())?;
                        let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    other => out.push(other),
                }
            }
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;

    use hyper::service::service_fn;
    use hyper_util::server::conn::auto;
    use rustls::server::WebPkiClientVerifier;
    use tokio::net::TcpListener;

    /// A plain rustls + hyper server requiring client certificates from `ca`, serving `leaf`,
    /// answering 200 with `x-peer-sha` (the client certificate's SHA-256) and `x-version`: it
    /// checks the client helpers independently of weir.
    async fn mini_server(ca: &TestCa, leaf: &Leaf) -> SocketAddr {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![leaf.der.clone()], key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let sha = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| sha256_hex(c))
                        .unwrap_or_default();
                    let version = format!("{:?}", conn.protocol_version());
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let (sha, version) = (sha.clone(), version.clone());
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("x-peer-sha", sha)
                                    .header("x-version", version)
                                    .body(body_empty())
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn clients_against_a_plain_rustls_server() {
        let ca = TestCa::new("example.org");
        let server = ca.leaf("back", Some("spiffe://example.org/ns/test/sa/back"), &[]);
        let front = ca.leaf("front", Some("spiffe://example.org/ns/test/sa/front"), &[]);
        let addr = mini_server(&ca, &server).await;
        let good = TlsClient::new(&ca.pem()).identity(&front);

        let (r, info) = https_get_with(addr, &good, "/", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-peer-sha"), Some(front.sha256_hex().as_str()));
        assert_eq!(info.peer_sha256(), Some(server.sha256_hex()));
        assert_eq!(info.alpn, None);

        let (r, info) = h2_get_with(addr, &good.clone().alpn(&["h2"]), "/", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(info.alpn.as_deref(), Some(&b"h2"[..]));

        let (r, info) = https_get_with(addr, &good.clone().versions(Versions::Tls12), "/", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(info.version, Some(ProtocolVersion::TLSv1_2));

        let cert = peer_certificate(addr, &TlsClient::new(&ca.pem()))
            .await
            .unwrap();
        assert_eq!(sha256_hex(&cert), server.sha256_hex());

        // Refusals surface as errors (TLS 1.3: at the first read), not hangs.
        let other = TestCa::new("example.org");
        for client in [
            TlsClient::new(&ca.pem()),
            TlsClient::new(&ca.pem()).identity(&other.leaf("x", None, &["x.local"])),
            TlsClient::new(&ca.pem()).identity(&ca.leaf_expired("x", None, &["x.local"])),
        ] {
            let e = https_get(addr, &client, "/").await.unwrap_err();
            assert!(!format!("{e:#}").contains("timed out"), "{e:#}");
        }
        // A client not trusting the server's CA fails the handshake itself.
        assert!(
            tls_connect(addr, &TlsClient::new(&other.pem()))
                .await
                .is_err()
        );

        // TLS 1.1: an alert, no ServerHello.
        let reply = send_raw(addr, &tls11_client_hello(Some("back.local")), TIMEOUT_RAW).await;
        assert_eq!(reply.record_types(), [21], "{:02x?}", reply.bytes);
        assert!(reply.closed);
    }

    const TIMEOUT_RAW: Duration = Duration::from_secs(5);

    #[test]
    fn json_parses_a_certs_document() {
        let doc = r#"{"certificates":[{"context":"listener:back","role":"cert","path":"/x/back.pem",
            "subject":"CN=back,O=weir","serial":"4a01","uri_sans":["spiffe://example.org/ns/test/sa/back"],
            "dns_sans":[],"not_before":1700000000,"not_after":1800000000,"expires_in_seconds":-5,
            "sha256":"ab\u0063"}],
            "contexts":[{"name":"listener:back","reloads":2,"reload_errors":0,"last_error":null}]}"#;
        let c = parse_certs(doc).unwrap();
        assert_eq!(c.certificates.len(), 1);
        let e = &c.certificates[0];
        assert_eq!(e.context, "listener:back");
        assert_eq!(e.sha256, "abc");
        assert_eq!(e.not_after, 1_800_000_000);
        assert_eq!(e.uri_sans, ["spiffe://example.org/ns/test/sa/back"]);
        assert_eq!(c.context("listener:back").unwrap().reloads, 2);
        assert_eq!(c.context("listener:back").unwrap().last_error, None);
    }

    #[test]
    fn metric_values_match_label_subsets() {
        let text = "# HELP x\nweir_tls_handshake_errors_total{listener=\"back\"} 5\n\
                    weir_tls_handshake_errors_total_other 9\n\
                    weir_tls_certificate_expiry_timestamp_seconds{context=\"listener:back\",role=\"cert\",serial=\"4a\",subject=\"CN=back,O=weir\"} 1800000000\n";
        assert_eq!(
            metric_values(
                text,
                "weir_tls_handshake_errors_total",
                &[("listener", "back")]
            ),
            [5.0]
        );
        assert_eq!(
            metric_values(
                text,
                "weir_tls_certificate_expiry_timestamp_seconds",
                &[("role", "cert"), ("subject", "CN=back,O=weir")]
            ),
            [1.8e9]
        );
    }

    #[test]
    fn tls11_hello_is_a_well_formed_record() {
        let h = tls11_client_hello(Some("back.local"));
        assert_eq!(&h[..3], &[0x16, 0x03, 0x02]);
        let len = u16::from_be_bytes([h[3], h[4]]) as usize;
        assert_eq!(h.len(), 5 + len);
        assert_eq!(h[5], 0x01);
        let hs_len = u32::from_be_bytes([0, h[6], h[7], h[8]]) as usize;
        assert_eq!(len, 4 + hs_len);
        assert_eq!(&h[9..11], &[0x03, 0x02]);
    }

    #[test]
    fn leaves_chain_to_their_ca_and_expose_their_identity() {
        let ca = TestCa::new("example.org");
        let leaf = ca.leaf("back", Some("spiffe://example.org/ns/test/sa/back"), &[]);
        assert_eq!(leaf.subject, "CN=back,O=weir");
        assert_eq!(leaf.serial_hex.len(), 32);
        assert_ne!(leaf.sha256_hex(), ca.sha256_hex());
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let parsed = ParsedCertificate::try_from(&leaf.der).unwrap();
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .unwrap();
        let expired = ca.leaf_expired("old", None, &["old.local"]);
        let parsed = ParsedCertificate::try_from(&expired.der).unwrap();
        assert!(
            verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &roots,
                &[],
                UnixTime::now(),
                provider.signature_verification_algorithms.all,
            )
            .is_err()
        );
        // The client configuration accepts the leaf as a client identity.
        let _ = TlsClient::new(&ca.pem()).identity(&leaf).config();
    }
}
