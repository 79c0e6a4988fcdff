//! The `tls:` sections: a listener's (terminate TLS, verify client certificates) and a cluster's
//! (originate TLS or mTLS, check the upstream's identity). Files are only checked to exist here;
//! [`crate::tls`] reads them (and re-reads them on rotation).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::check::{Errors, positive};
use super::units::ser_duration;
use super::{ClientAuth, ForwardClientCert, raw};

pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_TLS_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Downstream TLS of one listener. Paths are absolute (resolved against the manifest's folder).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// Empty: any trust domain (the chain is still verified).
    pub trust_domains: Vec<String>,
    pub alpn: Vec<String>,
    /// Only TLS 1.3 (otherwise 1.2 and 1.3).
    pub tls13_only: bool,
    #[serde(serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,
    pub forward_client_cert: ForwardClientCert,
}

/// Upstream TLS of one cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterTlsConfig {
    pub ca: PathBuf,
    /// Client certificate chain and key, for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub sni: Option<String>,
    pub expect: ExpectedIdentity,
}

/// Who the upstream must prove to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedIdentity {
    /// This exact SPIFFE ID as a URI SAN.
    Spiffe(String),
    /// Any SPIFFE ID of this trust domain.
    TrustDomain(String),
    /// A certificate valid for this DNS name.
    Dns(String),
}

/// A PEM file the proxy will read: must exist now (it is read, and re-read on rotation, later).
fn pem_file(base_dir: &Path, f: &str, path: &str, errs: &mut Errors) -> PathBuf {
    let full = base_dir.join(f);
    if !full.is_file() {
        errs.push(path, format!("no file at {}", full.display()));
    }
    full
}

pub(super) fn listener_tls(
    t: raw::ListenerTls,
    base_dir: &Path,
    p: &str,
    errs: &mut Errors,
) -> ListenerTlsConfig {
    let cert = pem_file(base_dir, &t.cert, &format!("{p}.cert"), errs);
    let key = pem_file(base_dir, &t.key, &format!("{p}.key"), errs);
    let client_ca = t
        .client_ca
        .map(|f| pem_file(base_dir, &f, &format!("{p}.client_ca"), errs));
    let client_auth = match (t.client_auth, &client_ca) {
        (None, Some(_)) => ClientAuth::Required,
        (None, None) => ClientAuth::None,
        (Some(a @ (ClientAuth::Optional | ClientAuth::Required)), None) => {
            errs.push(
                format!("{p}.client_auth"),
                "verifying client certificates needs `client_ca` (a trust bundle)",
            );
            a
        }
        (Some(a), _) => a,
    };
    let trust_domains = t.trust_domains.unwrap_or_default();
    if !trust_domains.is_empty() && client_auth == ClientAuth::None {
        errs.push(
            format!("{p}.trust_domains"),
            "needs client certificates (`client_ca`, and `client_auth` not `none`)",
        );
    }
    for (i, td) in trust_domains.iter().enumerate() {
        if !crate::tls::spiffe::valid_trust_domain(td) {
            errs.push(
                format!("{p}.trust_domains[{i}]"),
                format!("`{td}` is not a trust domain (lower-case letters, digits, `.-_`)"),
            );
        }
    }
    let alpn = t
        .alpn
        .unwrap_or_else(|| vec!["h2".to_owned(), "http/1.1".to_owned()]);
    if alpn.is_empty() {
        errs.push(format!("{p}.alpn"), "must name at least one protocol");
    }
    for (i, a) in alpn.iter().enumerate() {
        if a != "h2" && a != "http/1.1" {
            errs.push(
                format!("{p}.alpn[{i}]"),
                format!("`{a}`: only `h2` and `http/1.1` are served"),
            );
        }
    }
    let tls13_only = match t.min_version.as_deref() {
        None | Some("1.2") => false,
        Some("1.3") => true,
        Some(v) => {
            errs.push(
                format!("{p}.min_version"),
                format!("`{v}`: must be \"1.2\" or \"1.3\" (older versions are never accepted)"),
            );
            false
        }
    };
    let handshake_timeout = positive(
        t.handshake_timeout.map(|d| d.0),
        DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        &format!("{p}.handshake_timeout"),
        errs,
    );
    ListenerTlsConfig {
        cert,
        key,
        client_ca,
        client_auth,
        trust_domains,
        alpn,
        tls13_only,
        handshake_timeout,
        forward_client_cert: t.forward_client_cert,
    }
}

pub(super) fn cluster_tls(
    t: raw::ClusterTls,
    base_dir: &Path,
    p: &str,
    errs: &mut Errors,
) -> ClusterTlsConfig {
    let ca = pem_file(base_dir, &t.ca, &format!("{p}.ca"), errs);
    let client_cert = match (t.cert, t.key) {
        (Some(c), Some(k)) => Some((
            pem_file(base_dir, &c, &format!("{p}.cert"), errs),
            pem_file(base_dir, &k, &format!("{p}.key"), errs),
        )),
        (None, None) => None,
        (Some(_), None) => {
            errs.push(format!("{p}.key"), "`cert` needs its `key`");
            None
        }
        (None, Some(_)) => {
            errs.push(format!("{p}.cert"), "`key` needs its `cert`");
            None
        }
    };
    if let Some(sni) = &t.sni
        && !crate::tls::spiffe::valid_dns_name(sni)
    {
        errs.push(format!("{p}.sni"), format!("`{sni}` is not a DNS name"));
    }
    let expect = match (t.expect_identity, &t.sni) {
        (Some(id), _) if id.starts_with("spiffe://") => match crate::tls::spiffe::parse(&id) {
            Ok(s) if s.path.is_empty() => ExpectedIdentity::TrustDomain(s.trust_domain.to_owned()),
            Ok(_) => ExpectedIdentity::Spiffe(id),
            Err(e) => {
                errs.push(format!("{p}.expect_identity"), format!("`{id}`: {e}"));
                ExpectedIdentity::Spiffe(id)
            }
        },
        (Some(name), _) => {
            if !crate::tls::spiffe::valid_dns_name(&name) {
                errs.push(
                    format!("{p}.expect_identity"),
                    format!("`{name}` is neither a spiffe:// ID nor a DNS name"),
                );
            }
            ExpectedIdentity::Dns(name)
        }
        (None, Some(sni)) => ExpectedIdentity::Dns(sni.clone()),
        (None, None) => {
            errs.push(
                p,
                "needs `expect_identity` (a SPIFFE ID or DNS name) or `sni`: an upstream's \
                 certificate is always checked against an identity",
            );
            ExpectedIdentity::Dns(String::new())
        }
    };
    ClusterTlsConfig {
        ca,
        client_cert,
        sni: t.sni,
        expect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check::errs;
    use crate::config::parse;

    #[test]
    fn tls_sections_are_checked_field_by_field() {
        let e = errs(concat!(
            "listeners:\n",
            "  - name: a\n    address: 127.0.0.1:0\n    default_cluster: c\n",
            "    tls: {cert: nope.pem, key: nope-key.pem, client_auth: required, trust_domains: [Bad!], alpn: [spdy], min_version: \"1.1\", handshake_timeout: 0s}\n",
            "clusters:\n",
            "  c: {endpoints: [127.0.0.1:1], tls: {ca: nope-ca.pem, cert: x.pem}}\n",
            "  d: {endpoints: [127.0.0.1:1], tls: {ca: nope-ca.pem, expect_identity: \"spiffe://example.org/a/../b\"}}\n",
        ));
        let joined = e.join("\n");
        for want in [
            "listeners[0].tls.cert: no file at",
            "listeners[0].tls.key: no file at",
            "listeners[0].tls.client_auth: verifying client certificates needs `client_ca`",
            "listeners[0].tls.trust_domains[0]",
            "listeners[0].tls.alpn[0]",
            "listeners[0].tls.min_version",
            "listeners[0].tls.handshake_timeout",
            "clusters.c.tls.ca: no file at",
            "clusters.c.tls.key: `cert` needs its `key`",
            "clusters.c.tls: needs `expect_identity`",
            "clusters.d.tls.expect_identity",
        ] {
            assert!(joined.contains(want), "missing {want} in:\n{joined}");
        }
    }

    #[test]
    fn tls_defaults_and_identities() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["c.pem", "k.pem", "ca.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let c = parse(
            concat!(
                "listeners:\n",
                "  - {name: a, address: 127.0.0.1:0, default_cluster: s, tls: {cert: c.pem, key: k.pem, client_ca: ca.pem}}\n",
                "  - {name: b, address: 127.0.0.1:0, default_cluster: s, tls: {cert: c.pem, key: k.pem}}\n",
                "clusters:\n",
                "  s: {endpoints: [127.0.0.1:1], tls: {ca: ca.pem, expect_identity: \"spiffe://example.org/ns/x/sa/y\"}}\n",
                "  t: {endpoints: [127.0.0.1:1], tls: {ca: ca.pem, expect_identity: \"spiffe://example.org\"}}\n",
                "  u: {endpoints: [127.0.0.1:1], tls: {ca: ca.pem, sni: svc.local}}\n",
            ),
            "t",
            dir.path(),
        )
        .unwrap();
        let a = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(
            a.client_auth,
            ClientAuth::Required,
            "a client_ca means mTLS"
        );
        assert_eq!(a.alpn, ["h2", "http/1.1"]);
        assert!(!a.tls13_only);
        assert_eq!(a.handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT);
        assert_eq!(a.cert, dir.path().join("c.pem"));
        let b = c.listeners[1].tls.as_ref().unwrap();
        assert_eq!(b.client_auth, ClientAuth::None);
        let expect = |i: usize| c.clusters[i].tls.as_ref().unwrap().expect.clone();
        assert_eq!(
            expect(0),
            ExpectedIdentity::Spiffe("spiffe://example.org/ns/x/sa/y".into())
        );
        assert_eq!(
            expect(1),
            ExpectedIdentity::TrustDomain("example.org".into())
        );
        assert_eq!(expect(2), ExpectedIdentity::Dns("svc.local".into()));
        assert_eq!(c.tls_watch_interval, DEFAULT_TLS_WATCH_INTERVAL);
    }
}
