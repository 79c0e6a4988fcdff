//! TLS: downstream termination with optional client-certificate verification (mutual TLS),
//! upstream origination with a checked server identity, and rotation of every certificate, key
//! and trust bundle without a restart.
//!
//! - [`server`]: a listener's rustls configuration, the SPIFFE trust-domain check on client
//!   certificates, the handshake (bounded by its timeout) and what a connection learns from it
//!   ([`server::ConnTls`]: the peer's identity for filters and `x-forwarded-client-cert`).
//! - [`client`]: a cluster's rustls configuration and the verifier that checks the upstream's
//!   certificate against the bundle and the expected SPIFFE ID or DNS name.
//! - [`material`]: PEM parsing and what a certificate says about itself.
//! - [`spiffe`]: SPIFFE ID syntax.
//!
//! Rotation: each context ([`Watched`]) re-reads its files every `tls_watch_interval` on the
//! control thread. New, valid content is built into a new rustls configuration and swapped in
//! atomically (`ArcSwap`); a handshake takes the configuration current when it starts, so new
//! handshakes use new material and established connections keep theirs. Content that does not
//! build (a half-written file, a certificate that does not match its key) is refused, counted and
//! logged; the old material keeps serving and the files are read again at the next interval.

pub mod client;
pub mod material;
pub mod server;
pub mod spiffe;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::json;
use sha2::{Digest, Sha256};

pub use client::ClientTls;
pub use material::CertInfo;
pub use server::{ConnTls, ServerTls};

use crate::config::Config;

/// Why TLS material could not be loaded or built into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Material { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Rustls {
        context: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{context}: {reason}")]
    Verifier { context: String, reason: String },
}

impl TlsError {
    fn pem(path: &Path, e: &rustls::pki_types::pem::Error) -> Self {
        TlsError::Material {
            path: path.to_owned(),
            reason: format!("not valid PEM: {e}"),
        }
    }
}

/// The process's cryptography: ring, as the workspace's rustls features choose.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a certificate is to its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The context's own certificate (server certificate, or client certificate upstream).
    Cert,
    /// A trust anchor of its bundle.
    Ca,
}

/// One certificate of a context's current material, for admin and metrics.
#[derive(Debug, Clone)]
pub struct CertEntry {
    pub role: Role,
    pub path: PathBuf,
    pub info: CertInfo,
}

/// A context's material as built from one reading of its files.
pub struct Loaded<T> {
    pub value: T,
    pub certs: Vec<CertEntry>,
}

/// A TLS context that follows its files: the current material and the reload bookkeeping.
pub struct Watched<T> {
    /// `listener:NAME` or `cluster:NAME`.
    pub name: String,
    files: Vec<PathBuf>,
    current: ArcSwap<Loaded<T>>,
    /// Digest of the file contents last looked at (built or refused), so unchanged files cost
    /// one read and one hash per interval and a refused version is reported once.
    seen: Mutex<[u8; 32]>,
    reloads: AtomicU64,
    reload_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl<T> Watched<T> {
    /// Reads `files` and builds the first material; an error here stops start-up.
    fn load(
        name: String,
        files: Vec<PathBuf>,
        build: impl Fn(&[Vec<u8>]) -> Result<Loaded<T>, TlsError>,
    ) -> Result<Self, TlsError> {
        let contents = read_all(&files)?;
        let loaded = build(&contents)?;
        Ok(Self {
            name,
            seen: Mutex::new(digest(&contents)),
            files,
            current: ArcSwap::from_pointee(loaded),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// The material new handshakes use.
    pub fn current(&self) -> Arc<Loaded<T>> {
        self.current.load_full()
    }

    /// Re-reads the files; swaps in new material that builds. Returns whether it swapped.
    fn refresh(&self, build: impl Fn(&[Vec<u8>]) -> Result<Loaded<T>, TlsError>) -> bool {
        let contents = match read_all(&self.files) {
            Ok(c) => c,
            Err(e) => {
                // A file briefly missing (a rename in progress): try again next interval.
                self.refused(&e, None);
                return false;
            }
        };
        let d = digest(&contents);
        if *lock(&self.seen) == d {
            return false;
        }
        match build(&contents) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                *lock(&self.seen) = d;
                *lock(&self.last_error) = None;
                self.reloads.fetch_add(1, Relaxed);
                tracing::info!(context = %self.name, "TLS material rotated: new handshakes use it");
                true
            }
            Err(e) => {
                self.refused(&e, Some(d));
                false
            }
        }
    }

    fn refused(&self, e: &TlsError, d: Option<[u8; 32]>) {
        let msg = e.to_string();
        let mut last = lock(&self.last_error);
        if last.as_deref() != Some(msg.as_str()) {
            tracing::warn!(context = %self.name, error = %msg, "TLS material not rotated: the current material keeps serving");
            self.reload_errors.fetch_add(1, Relaxed);
            *last = Some(msg);
        }
        // A refused version is not built again until the files change; a read error is retried.
        if let Some(d) = d {
            *lock(&self.seen) = d;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_all(files: &[PathBuf]) -> Result<Vec<Vec<u8>>, TlsError> {
    files
        .iter()
        .map(|p| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.clone(),
                source,
            })
        })
        .collect()
}

fn digest(contents: &[Vec<u8>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for c in contents {
        h.update((c.len() as u64).to_le_bytes());
        h.update(c);
    }
    h.finalize().into()
}

/// The TLS contexts in use: the live listeners' and clusters' (each set by the control plane
/// when the published listeners or clusters change; the contexts themselves are loaded with
/// their listener's or cluster's version). Shared by the admin endpoint (reads) and the control
/// thread (rotation); handshakes use the contexts their versions hold.
#[derive(Default)]
pub struct TlsContexts {
    listeners: std::sync::RwLock<Vec<Arc<ServerTls>>>,
    clusters: std::sync::RwLock<Vec<Arc<ClientTls>>>,
    /// `tls_watch_interval` in milliseconds (a reload may change it).
    watch_ms: std::sync::atomic::AtomicU64,
}

impl TlsContexts {
    /// No context yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How often the files are looked at (`tls_watch_interval`; the next look uses it).
    pub fn set_watch_interval(&self, d: Duration) {
        self.watch_ms.store(d.as_millis().max(1) as u64, Relaxed);
    }

    /// Loads every context `cfg` names (listeners' and clusters'), to check the material; the
    /// first error names its file (`weir check`).
    pub fn check(cfg: &Config) -> Result<(), TlsError> {
        for l in &cfg.listeners {
            if let Some(t) = &l.tls {
                ServerTls::load(&l.name, t)?;
            }
        }
        for c in &cfg.clusters {
            if let Some(t) = &c.tls {
                ClientTls::load(&c.name, t, c.protocol)?;
            }
        }
        Ok(())
    }

    /// The listener contexts in use now.
    pub fn set_listeners(&self, live: Vec<Arc<ServerTls>>) {
        *self.listeners.write().unwrap_or_else(|e| e.into_inner()) = live;
    }

    fn listeners(&self) -> Vec<Arc<ServerTls>> {
        self.listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The cluster contexts in use now (the cluster manager calls this as versions change).
    pub fn set_clusters(&self, live: Vec<Arc<ClientTls>>) {
        *self.clusters.write().unwrap_or_else(|e| e.into_inner()) = live;
    }

    fn clusters(&self) -> Vec<Arc<ClientTls>> {
        self.clusters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_empty(&self) -> bool {
        self.listeners().is_empty() && self.clusters().is_empty()
    }

    /// Re-reads every context's files once. Returns how many rotated.
    pub fn refresh(&self) -> usize {
        let mut n = 0;
        for s in self.listeners() {
            n += usize::from(s.refresh());
        }
        for c in self.clusters() {
            n += usize::from(c.refresh());
        }
        n
    }

    /// Follows the files until the process exits (on the control runtime; reads are blocking
    /// but small, so they run on its blocking pool).
    pub async fn watch(self: Arc<Self>) {
        loop {
            let ms = self.watch_ms.load(Relaxed).max(1);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.refresh()).await;
        }
    }

    /// Every context's bookkeeping and certificates.
    fn each(&self) -> Vec<ContextStats> {
        let mut out = Vec::new();
        for s in self.listeners() {
            let w = &s.watched;
            out.push(stats(w, w.current().certs.clone()));
        }
        for c in self.clusters() {
            let w = &c.watched;
            out.push(stats(w, w.current().certs.clone()));
        }
        out
    }

    /// `GET /certs`.
    pub fn certs_json(&self) -> serde_json::Value {
        let now = unix_now();
        let mut certs = Vec::new();
        let mut contexts = Vec::new();
        for c in self.each() {
            let name = &c.name;
            contexts.push(json!({
                "name": name,
                "reloads": c.reloads,
                "reload_errors": c.errors,
                "last_error": c.last_error,
            }));
            for e in c.certs {
                certs.push(json!({
                    "context": name,
                    "role": e.role,
                    "path": e.path,
                    "subject": e.info.subject,
                    "serial": e.info.serial,
                    "uri_sans": e.info.uri_sans,
                    "dns_sans": e.info.dns_sans,
                    "not_before": e.info.not_before,
                    "not_after": e.info.not_after,
                    "expires_in_seconds": e.info.not_after - now,
                    "sha256": e.info.sha256,
                }));
            }
        }
        json!({ "certificates": certs, "contexts": contexts })
    }

    /// The TLS series of `GET /metrics`.
    pub fn metrics(&self, out: &mut String) {
        if self.is_empty() {
            return;
        }
        let each = self.each();
        out.push_str("# HELP weir_tls_certificate_expiry_timestamp_seconds When each certificate in use expires (unix time).\n# TYPE weir_tls_certificate_expiry_timestamp_seconds gauge\n");
        for c in &each {
            let name = &c.name;
            for e in &c.certs {
                let _ = writeln!(
                    out,
                    "weir_tls_certificate_expiry_timestamp_seconds{{context=\"{}\",role=\"{}\",serial=\"{}\",subject=\"{}\"}} {}",
                    label(name),
                    match e.role {
                        Role::Cert => "cert",
                        Role::Ca => "ca",
                    },
                    e.info.serial,
                    label(&e.info.subject),
                    e.info.not_after
                );
            }
        }
        out.push_str("# HELP weir_tls_reloads_total TLS material rotations applied.\n# TYPE weir_tls_reloads_total counter\n");
        for c in &each {
            let _ = writeln!(
                out,
                "weir_tls_reloads_total{{context=\"{}\"}} {}",
                label(&c.name),
                c.reloads
            );
        }
        out.push_str("# HELP weir_tls_reload_errors_total TLS material that did not load (the old kept serving).\n# TYPE weir_tls_reload_errors_total counter\n");
        for c in &each {
            let _ = writeln!(
                out,
                "weir_tls_reload_errors_total{{context=\"{}\"}} {}",
                label(&c.name),
                c.errors
            );
        }
        let servers = self.listeners();
        if !servers.is_empty() {
            out.push_str("# HELP weir_tls_handshakes_total Downstream TLS handshakes completed.\n# TYPE weir_tls_handshakes_total counter\n");
            for s in &servers {
                let _ = writeln!(
                    out,
                    "weir_tls_handshakes_total{{listener=\"{}\"}} {}",
                    label(&s.listener),
                    s.handshakes.load(Relaxed)
                );
            }
            out.push_str("# HELP weir_tls_handshake_errors_total Downstream TLS handshakes refused, failed or timed out.\n# TYPE weir_tls_handshake_errors_total counter\n");
            for s in &servers {
                let _ = writeln!(
                    out,
                    "weir_tls_handshake_errors_total{{listener=\"{}\"}} {}",
                    label(&s.listener),
                    s.handshake_errors.load(Relaxed)
                );
            }
        }
    }
}

/// One context as admin and metrics show it.
struct ContextStats {
    name: String,
    reloads: u64,
    errors: u64,
    last_error: Option<String>,
    certs: Vec<CertEntry>,
}

fn stats<T>(w: &Watched<T>, certs: Vec<CertEntry>) -> ContextStats {
    ContextStats {
        name: w.name.clone(),
        reloads: w.reloads.load(Relaxed),
        errors: w.reload_errors.load(Relaxed),
        last_error: lock(&w.last_error).clone(),
        certs,
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The certificate entries of a chain file (its leaf) and of a bundle (every anchor).
fn entries(
    role: Role,
    path: &Path,
    certs: &[rustls::pki_types::CertificateDer<'_>],
) -> Vec<CertEntry> {
    let take = if role == Role::Cert { 1 } else { certs.len() };
    certs
        .iter()
        .take(take)
        .filter_map(|c| CertInfo::parse(c))
        .map(|info| CertEntry {
            role,
            path: path.to_owned(),
            info,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientAuth, ForwardClientCert, ListenerTlsConfig};

    fn leaf(cn: &str) -> (String, String, String) {
        let mut p = rcgen::CertificateParams::new(vec![format!("{cn}.local")]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        let sha = CertInfo::parse(c.der()).unwrap().sha256;
        (c.pem(), k.serialize_pem(), sha)
    }

    #[test]
    fn rotation_swaps_valid_material_and_keeps_serving_through_bad() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (c1, k1, sha1) = leaf("one");
        std::fs::write(&cert, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let cfg = ListenerTlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
            client_auth: ClientAuth::None,
            trust_domains: vec![],
            alpn: vec!["http/1.1".into()],
            tls13_only: false,
            handshake_timeout: Duration::from_secs(1),
            forward_client_cert: ForwardClientCert::SanitizeSet,
        };
        let s = ServerTls::load("l", &cfg).unwrap();
        let sha = |s: &ServerTls| s.watched.current().certs[0].info.sha256.clone();
        assert_eq!(sha(&s), sha1);
        assert!(!s.refresh(), "unchanged files are not rebuilt");

        // Half a rotation: the new certificate beside the old key. Refused, counted once, the
        // old material stays.
        let (c2, k2, sha2) = leaf("two");
        std::fs::write(&cert, &c2).unwrap();
        assert!(!s.refresh());
        assert!(!s.refresh());
        assert_eq!(sha(&s), sha1);
        assert_eq!(s.watched.reload_errors.load(Relaxed), 1);
        assert!(lock(&s.watched.last_error).is_some());

        // The key arrives: swapped.
        std::fs::write(&key, &k2).unwrap();
        assert!(s.refresh());
        assert_eq!(sha(&s), sha2);
        assert_eq!(s.watched.reloads.load(Relaxed), 1);
        assert!(lock(&s.watched.last_error).is_none());

        // Garbage and a missing file are refused as well.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
        assert!(!s.refresh());
        std::fs::remove_file(&key).unwrap();
        assert!(!s.refresh());
        assert_eq!(sha(&s), sha2);

        let contexts = TlsContexts::new();
        contexts.set_listeners(vec![Arc::new(s)]);
        let mut m = String::new();
        contexts.metrics(&mut m);
        assert!(
            m.contains("weir_tls_reloads_total{context=\"listener:l\"} 1"),
            "{m}"
        );
        assert!(
            m.contains(
                "weir_tls_certificate_expiry_timestamp_seconds{context=\"listener:l\",role=\"cert\""
            ),
            "{m}"
        );
        let j = contexts.certs_json();
        assert_eq!(j["certificates"][0]["sha256"], sha2.as_str());
        assert_eq!(j["contexts"][0]["reloads"], 1);
    }
}
