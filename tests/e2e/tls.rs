//! mTLS end to end (issue 6): two weir processes talking mutual TLS with SPIFFE identities,
//! refused handshakes, upstream identity checks, `x-forwarded-client-cert`, ALPN, legacy
//! versions, certificate rotation under load, and the expiry metric.
//!
//! Every test mints its own PKI ([`TestCa`]). The usual shape is a *pair*:
//!
//! ```text
//! client --h1--> weir A (front: plain listener `front`, cluster `back` over mTLS as
//!                        spiffe://example.org/ns/test/sa/front, expecting .../sa/back)
//!        --mTLS--> weir B (back: TLS listener `back`, client_ca + trust_domains [example.org],
//!                          chain `edge` = conformance `trace` (tag b) + conformance `properties`)
//!        --h1--> echo
//! ```
//!
//! The `properties` filter copies the connection's identity properties to `x-prop-*` response
//! headers, which travel back through A to the client; the `trace` filter records every final
//! status in shared data (read back with `x-read-log: b`), so a refused handshake that ran a
//! filter would show up there.
//!
//! Long (1.2k lines) because each test mints its own certificates and states its own manifest; a
//! new TLS area gets a module of its own.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_test_artifacts::CONFORMANCE;
use weir_tests::client::Collected;
use weir_tests::tls::{
    Certs, Leaf, TestCa, TlsClient, Versions, bundle, collect_checked, get_certs, get_metrics,
    h2_get_with, https_get, https_get_with, metric_values, peer_certificate, send_raw, sha256_hex,
    tls11_client_hello, write_atomic,
};
use weir_tests::{
    ChainManifest, EchoServer, FilterDef, H1Client, Weir, add_to_listener, body_empty, eventually,
    eventually_for, within,
};

use crate::assert_error;

const TD: &str = "example.org";
const FRONT_ID: &str = "spiffe://example.org/ns/test/sa/front";
const BACK_ID: &str = "spiffe://example.org/ns/test/sa/back";
const ADMIN_ID: &str = "spiffe://example.org/ns/test/sa/admin";
/// The SNI weir A sends to B (B's certificate does not need to carry it: A checks the SPIFFE ID).
const BACK_SNI: &str = "back.local";

/// The PKI of a pair: one CA, B's serving certificate, A's client certificate. Both leaves are
/// SPIFFE-only (no DNS SAN), as workload certificates usually are.
struct Pki {
    ca: TestCa,
    back: Leaf,
    front: Leaf,
}

fn pki() -> Pki {
    let ca = TestCa::new(TD);
    let back = ca.leaf("back", Some(BACK_ID), &[]);
    let front = ca.leaf("front", Some(FRONT_ID), &[]);
    Pki { ca, back, front }
}

/// The conformance `trace` filter with tag `b`.
fn trace_b() -> FilterDef {
    FilterDef::new("trace", CONFORMANCE).config(r#"{"scenario":"trace","tag":"b"}"#)
}

/// The conformance `properties` filter (routing to cluster `app`, as the listener does anyway).
fn props() -> FilterDef {
    FilterDef::new("props", CONFORMANCE).config(r#"{"scenario":"properties","cluster":"app"}"#)
}

/// The `tls:` block of B's listener (files `back.pem`, `back-key.pem`, `ca.pem` in its folder).
fn back_tls_lines(extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "    tls:".to_string(),
        "      cert: back.pem".to_string(),
        "      key: back-key.pem".to_string(),
        "      client_ca: ca.pem".to_string(),
        format!("      trust_domains: [{TD}]"),
    ];
    v.extend(extra.iter().map(|l| format!("      {l}")));
    v
}

/// Weir B: TLS listener `back` → cluster `app` (`echo`), chain `edge` = `filters` (none: no
/// chain), `tls_watch_interval: 100ms`, extra listener TLS lines `tls_extra`.
async fn start_back(
    echo: SocketAddr,
    pki: &Pki,
    filters: Vec<FilterDef>,
    tls_extra: &[&str],
) -> Weir {
    let names: Vec<String> = filters.iter().map(|f| f.name().to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let chain = if filters.is_empty() {
        None
    } else {
        Some("edge")
    };
    let mut m = ChainManifest::new()
        .listener("back", "app", chain)
        .cluster("app", &[echo]);
    if !filters.is_empty() {
        m = m.chain("edge", &names);
    }
    for f in filters {
        m = m.filter(f);
    }
    let yaml = format!(
        "tls_watch_interval: 100ms\n{}",
        add_to_listener(&m.yaml(), "back", &back_tls_lines(tls_extra))
    );
    Weir::start_with_files(
        &yaml,
        &[
            ("back.pem", pki.back.cert_pem.as_bytes()),
            ("back-key.pem", pki.back.key_pem.as_bytes()),
            ("ca.pem", pki.ca.pem().as_bytes()),
        ],
        &[],
    )
    .await
}

/// The `tls:` lines of a cluster of A (files `ca`, `front.pem`, `front-key.pem` in A's folder),
/// expecting `identity`, sending SNI [`BACK_SNI`].
fn front_cluster_tls(ca: &str, identity: &str) -> Vec<String> {
    vec![
        "tls:".to_string(),
        format!("  ca: {ca}"),
        "  cert: front.pem".to_string(),
        "  key: front-key.pem".to_string(),
        format!("  sni: {BACK_SNI}"),
        format!("  expect_identity: {identity}"),
    ]
}

/// Weir A: for each `(listener, cluster, cluster lines)` a plain listener sending to a cluster
/// whose one endpoint is `back`; files `front.pem`, `front-key.pem`, `ca.pem` (= `pki.ca`) and
/// `extra_files`; `tls_watch_interval: 100ms`.
async fn start_front(
    back: SocketAddr,
    pki: &Pki,
    routes: &[(&str, &str, Vec<String>)],
    extra_files: &[(&str, &[u8])],
) -> Weir {
    let mut m = ChainManifest::new();
    for (listener, cluster, lines) in routes {
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        m = m
            .listener(listener, cluster, None)
            .cluster_with(cluster, &[back], &lines);
    }
    let yaml = format!("tls_watch_interval: 100ms\n{}", m.yaml());
    let ca = pki.ca.pem();
    let mut files: Vec<(&str, &[u8])> = vec![
        ("front.pem", pki.front.cert_pem.as_bytes()),
        ("front-key.pem", pki.front.key_pem.as_bytes()),
        ("ca.pem", ca.as_bytes()),
    ];
    files.extend_from_slice(extra_files);
    Weir::start_with_files(&yaml, &files, &[]).await
}

/// A with the one usual route: listener `front` → cluster `back` (expects [`BACK_ID`]).
async fn start_front_default(back: SocketAddr, pki: &Pki) -> Weir {
    start_front(
        back,
        pki,
        &[("front", "back", front_cluster_tls("ca.pem", BACK_ID))],
        &[],
    )
    .await
}

/// A client of B presenting `front`'s certificate and trusting `pki.ca`.
fn good_client(pki: &Pki) -> TlsClient {
    TlsClient::new(&pki.ca.pem()).identity(&pki.front)
}

/// `GET path` with extra headers on a fresh plain HTTP/1.1 connection to `addr`.
async fn h1_get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Collected {
    let mut c = H1Client::connect(addr).await;
    let mut req = c.request("GET", path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .send(req.body(body_empty()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
    weir_tests::collect(resp).await
}

/// Every value of request header `name` the upstream saw.
fn all_values(r: &weir_tests::Recorded, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// The XFCC value B's core sets for a client presenting `peer` on B's listener (whose own
/// certificate has SPIFFE ID [`BACK_ID`]); `peer` has no DNS SAN.
fn expected_xfcc(peer: &Leaf) -> String {
    format!(
        "By={BACK_ID};Hash={};Subject=\"{}\";URI={}",
        peer.sha256_hex(),
        peer.subject,
        peer.spiffe_id.as_deref().unwrap()
    )
}

/// Waits until the `trace` filter's log on B (read by `client`) is exactly `want`; fails at once
/// if it is ever something `want` does not start with (an entry that should not be there).
async fn wait_trace_log(back: SocketAddr, client: &TlsClient, want: &str) {
    eventually(&format!("B's trace log to read {want:?}"), async || {
        let (r, _) = https_get_with(back, client, "/", &[("x-read-log", "b")])
            .await
            .expect("log read over mTLS");
        assert_eq!(r.status, 200, "log read: {r:?}");
        let log = r.text();
        assert!(
            want.starts_with(&log),
            "trace log is {log:?}, expected {want:?}: a refused connection ran a filter?"
        );
        if log == want { Ok(()) } else { Err(log) }
    })
    .await;
}

/// Polls `GET /metrics` on `admin` until metric `name{labels}` is at least `min`.
async fn wait_metric_at_least(admin: SocketAddr, name: &str, labels: &[(&str, &str)], min: f64) {
    eventually(&format!("{name}{labels:?} >= {min}"), async || {
        let v = metric_values(&get_metrics(admin).await, name, labels);
        if v.iter().any(|v| *v >= min) {
            Ok(())
        } else {
            Err(v)
        }
    })
    .await;
}

/// Polls `GET /certs` on `admin` until `pred` holds (bounded: the watch interval is 100 ms).
async fn wait_certs(admin: SocketAddr, what: &str, pred: impl Fn(&Certs) -> bool) -> Certs {
    eventually(&format!("/certs: {what}"), async || {
        let c = get_certs(admin).await;
        if pred(&c) { Ok(c) } else { Err(c) }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 1. Two weirs over mTLS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_weirs_talk_mtls_and_forward_the_client_identity() {
    let pki = pki();
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &pki, vec![trace_b(), props()], &[]).await;
    let front = start_front_default(back.listener_addr("back"), &pki).await;

    let resp = h1_get_with(front.listener_addr("front"), "/hello", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}\nA:\n{}", front.stderr());
    let prop = |n: &str| resp.header(&format!("x-prop-{n}"));
    assert_eq!(prop("connection.mtls"), Some("true"), "{resp:?}");
    assert_eq!(prop("connection.uri_san_peer_certificate"), Some(FRONT_ID));
    assert_eq!(
        prop("connection.subject_peer_certificate"),
        Some("CN=front,O=weir")
    );
    let front_sha = pki.front.sha256_hex();
    assert_eq!(
        prop("connection.sha256_peer_certificate_digest"),
        Some(front_sha.as_str())
    );
    assert_eq!(prop("connection.uri_san_local_certificate"), Some(BACK_ID));
    assert_eq!(
        prop("connection.subject_local_certificate"),
        Some("CN=back,O=weir")
    );
    assert_eq!(
        prop("connection.requested_server_name"),
        Some(BACK_SNI),
        "A sends its cluster's `sni`"
    );
    assert_eq!(prop("connection.tls_version"), Some("TLSv1.3"));
    assert_eq!(prop("request.scheme"), Some("https"));
    let dns = prop("connection.dns_san_peer_certificate");
    assert!(
        dns.is_none() || dns == Some(""),
        "front's certificate has no DNS SAN, got {dns:?}"
    );
    // The response went through B's chain.
    assert_eq!(resp.header("x-trace-b-status"), Some("200"));

    let seen = &echo.wait_requests(1).await[0];
    assert_eq!(seen.uri.path(), "/hello");
    assert_eq!(
        all_values(seen, "x-forwarded-client-cert"),
        [expected_xfcc(&pki.front)],
        "B sets XFCC from the verified peer (A's client certificate)"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    // B counted the handshake.
    wait_metric_at_least(
        back.admin_addr(),
        "weir_tls_handshakes_total",
        &[("listener", "back")],
        1.0,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Refused handshakes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_client_certificates_are_refused_before_any_filter_runs() {
    let pki = pki();
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &pki, vec![trace_b(), props()], &[]).await;
    let addr = back.listener_addr("back");
    let good = good_client(&pki);

    let (r, info) = https_get_with(addr, &good, "/good-1", &[])
        .await
        .unwrap_or_else(|e| panic!("good client: {e:#}\nB:\n{}", back.stderr()));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        info.peer_sha256().as_deref(),
        Some(pki.back.sha256_hex().as_str()),
        "B presents its certificate"
    );
    wait_trace_log(addr, &good, "200").await;

    let other_ca = TestCa::new(TD);
    let roots = pki.ca.pem();
    let cases: Vec<(&str, TlsClient)> = vec![
        (
            "client certificate from another CA",
            TlsClient::new(&roots).identity(&other_ca.leaf("front", Some(FRONT_ID), &[])),
        ),
        (
            "expired client certificate",
            TlsClient::new(&roots).identity(&pki.ca.leaf_expired("front", Some(FRONT_ID), &[])),
        ),
        ("no client certificate", TlsClient::new(&roots)),
        (
            "SPIFFE ID in another trust domain",
            TlsClient::new(&roots).identity(&pki.ca.leaf(
                "front",
                Some("spiffe://other.org/ns/test/sa/front"),
                &[],
            )),
        ),
        (
            "no SPIFFE ID at all (DNS SAN only)",
            TlsClient::new(&roots).identity(&pki.ca.leaf("front", None, &["front.local"])),
        ),
    ];
    let n = cases.len();
    for (what, client) in &cases {
        match https_get(addr, client, "/refused").await {
            Ok(r) => panic!("{what}: got an HTTP response {r:?}"),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(
                    !msg.contains("timed out"),
                    "{what}: B should refuse the handshake and close, not hang: {msg}"
                );
            }
        }
    }

    // No filter ran for them (trace's on_log would have logged a status), nothing went upstream.
    let (r, _) = https_get_with(addr, &good, "/good-2", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    wait_trace_log(addr, &good, "200,200").await;
    let paths: Vec<String> = echo
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert_eq!(paths, ["/good-1", "/good-2"]);

    wait_metric_at_least(
        back.admin_addr(),
        "weir_tls_handshake_errors_total",
        &[("listener", "back")],
        n as f64,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. TLS 1.1
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tls11_client_hello_gets_no_server_hello() {
    let pki = pki();
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &pki, vec![], &[]).await;
    let addr = back.listener_addr("back");

    for sni in [Some(BACK_SNI), None] {
        let reply = send_raw(addr, &tls11_client_hello(sni), Duration::from_secs(5)).await;
        let types = reply.record_types();
        assert!(
            !types.contains(&22),
            "B answered a TLS 1.1 ClientHello (SNI {sni:?}) with a handshake record: {:02x?}",
            reply.bytes
        );
        assert!(
            reply.bytes.is_empty() || reply.bytes[0] == 21,
            "the only acceptable reply is an alert record (21), got {:02x?}",
            reply.bytes
        );
        assert!(
            reply.closed,
            "B should close the connection after refusing TLS 1.1 (got {:02x?})",
            reply.bytes
        );
    }
    // B still serves.
    let r = https_get(addr, &good_client(&pki), "/after").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 4. ALPN and versions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn alpn_h2_and_tls12_are_served() {
    let pki = pki();
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &pki, vec![props()], &[]).await;
    let addr = back.listener_addr("back");

    // h2 by ALPN.
    let h2 = good_client(&pki).alpn(&["h2"]);
    let (r, info) = h2_get_with(addr, &h2, "/over-h2", &[])
        .await
        .unwrap_or_else(|e| panic!("h2 over TLS: {e:#}\nB:\n{}", back.stderr()));
    assert_eq!(info.alpn.as_deref(), Some(&b"h2"[..]), "negotiated ALPN");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-prop-connection.tls_version"), Some("TLSv1.3"));
    assert_eq!(r.header("x-prop-connection.mtls"), Some("true"));
    assert_eq!(r.header("x-prop-request.scheme"), Some("https"));
    assert_eq!(
        r.header("x-prop-connection.uri_san_peer_certificate"),
        Some(FRONT_ID)
    );
    assert_eq!(echo.wait_requests(1).await[0].uri.path(), "/over-h2");

    // http/1.1 by ALPN.
    let h1 = good_client(&pki).alpn(&["http/1.1"]);
    let (r, info) = https_get_with(addr, &h1, "/over-h1", &[]).await.unwrap();
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.status, 200, "{r:?}");

    // No ALPN at all: HTTP/1.1.
    let (r, info) = https_get_with(addr, &good_client(&pki), "/no-alpn", &[])
        .await
        .unwrap();
    assert_eq!(info.alpn, None);
    assert_eq!(r.status, 200, "{r:?}");

    // TLS 1.2 (the default minimum).
    let tls12 = good_client(&pki).versions(Versions::Tls12);
    let (r, info) = https_get_with(addr, &tls12, "/tls12", &[])
        .await
        .unwrap_or_else(|e| panic!("TLS 1.2 client: {e:#}"));
    assert_eq!(info.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-prop-connection.tls_version"), Some("TLSv1.2"));
    assert_eq!(
        r.header("x-prop-connection.uri_san_peer_certificate"),
        Some(FRONT_ID)
    );

    // SNI the client sends is visible.
    let sni = good_client(&pki).server_name("back.example.org");
    let (r, _) = https_get_with(addr, &sni, "/sni", &[]).await.unwrap();
    assert_eq!(
        r.header("x-prop-connection.requested_server_name"),
        Some("back.example.org")
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Upstream identity
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn upstream_identity_mismatch_is_a_503_and_reaches_nothing() {
    let pki = pki();
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &pki, vec![props()], &[]).await;
    let other_ca = TestCa::new(TD);
    let other_pem = other_ca.pem();
    let front = start_front(
        back.listener_addr("back"),
        &pki,
        &[
            ("ok", "ok", front_cluster_tls("ca.pem", BACK_ID)),
            (
                "td",
                "td",
                front_cluster_tls("ca.pem", "spiffe://example.org"),
            ),
            (
                "wrong_id",
                "wrong_id",
                front_cluster_tls("ca.pem", "spiffe://example.org/ns/test/sa/other"),
            ),
            (
                "wrong_td",
                "wrong_td",
                front_cluster_tls("ca.pem", "spiffe://other.org"),
            ),
            (
                "wrong_ca",
                "wrong_ca",
                front_cluster_tls("other-ca.pem", BACK_ID),
            ),
            // A DNS identity: B's certificate has no DNS SAN at all.
            (
                "wrong_dns",
                "wrong_dns",
                front_cluster_tls("ca.pem", BACK_SNI),
            ),
        ],
        &[("other-ca.pem", other_pem.as_bytes())],
    )
    .await;

    for listener in ["wrong_id", "wrong_td", "wrong_ca", "wrong_dns"] {
        let r = h1_get_with(front.listener_addr(listener), "/must-not-arrive", &[]).await;
        assert_error(&r, 503, "upstream_connect_failure");
    }
    assert!(
        echo.requests().is_empty(),
        "a server failing the identity check got requests: {:?}",
        echo.requests()
    );

    for listener in ["ok", "td"] {
        let r = h1_get_with(front.listener_addr(listener), &format!("/{listener}"), &[]).await;
        assert_eq!(r.status, 200, "{listener}: {r:?}\nA:\n{}", front.stderr());
        assert_eq!(
            r.header("x-prop-connection.uri_san_peer_certificate"),
            Some(FRONT_ID)
        );
    }
    let paths: Vec<String> = echo
        .wait_requests(2)
        .await
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert_eq!(paths, ["/ok", "/td"]);
}

// ---------------------------------------------------------------------------------------------
// 6. XFCC spoofing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_and_filter_xfcc_values_are_replaced_by_the_core() {
    let pki = pki();
    let echo = EchoServer::start().await;
    // `mint` appends a forged XFCC after copying what it saw to `x-seen-xfcc`.
    let mint = FilterDef::new("mint", "builtin:add-header").config(&format!(
        r#"{{"copy":[{{"from":"x-forwarded-client-cert","to":"x-seen-xfcc"}}],"request":{{"x-forwarded-client-cert":"URI={ADMIN_ID}"}}}}"#
    ));
    let back = start_back(echo.addr, &pki, vec![trace_b(), props(), mint], &[]).await;
    let front = start_front_default(back.listener_addr("back"), &pki).await;
    let want = expected_xfcc(&pki.front);

    // Through A: the client's forged value is dropped (by A, and again by B).
    let forged = format!("By=evil;URI={ADMIN_ID}");
    let r = h1_get_with(
        front.listener_addr("front"),
        "/via-a",
        &[("x-forwarded-client-cert", forged.as_str())],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &echo.wait_requests(1).await[0];
    assert_eq!(
        all_values(seen, "x-forwarded-client-cert"),
        [want.as_str()],
        "exactly one XFCC value, the core's (not the client's, not the filter's)"
    );
    assert_eq!(
        all_values(seen, "x-seen-xfcc"),
        [want.as_str()],
        "filters see the core's value in the request headers"
    );

    // Directly at B over mTLS: the same.
    let (r, _) = https_get_with(
        back.listener_addr("back"),
        &good_client(&pki),
        "/direct",
        &[("x-forwarded-client-cert", forged.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &echo.wait_requests(2).await[1];
    assert_eq!(all_values(seen, "x-forwarded-client-cert"), [want.as_str()]);
    assert_eq!(all_values(seen, "x-seen-xfcc"), [want.as_str()]);
}

#[tokio::test]
async fn sanitize_mode_forwards_no_client_cert_header() {
    let pki = pki();
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &pki, vec![], &["forward_client_cert: sanitize"]).await;
    let (r, _) = https_get_with(
        back.listener_addr("back"),
        &good_client(&pki),
        "/s",
        &[(
            "x-forwarded-client-cert",
            "By=evil;URI=spiffe://example.org/x",
        )],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &echo.wait_requests(1).await[0];
    assert!(
        all_values(seen, "x-forwarded-client-cert").is_empty(),
        "sanitize: removed, nothing set: {:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

// ---------------------------------------------------------------------------------------------
// 7. Rotation under load
// ---------------------------------------------------------------------------------------------

/// Request loops running for the whole rotation test. Kinds: 0 = client → A `front` (A pools
/// its mTLS connections to B), 1 = client → A `fresh` (cluster `pool: { max_idle: 0 }`: a new
/// mTLS handshake to B per request), 2 = a new TLS connection straight to B per request with the
/// current [`Load::direct`] client.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<[AtomicU64; 3]>,
    failures: Arc<Mutex<Vec<String>>>,
    direct: Arc<Mutex<TlsClient>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const KINDS: [&str; 3] = ["A pooled", "A fresh handshake", "direct to B"];

impl Load {
    fn start(a_front: SocketAddr, a_fresh: SocketAddr, b: SocketAddr, direct: TlsClient) -> Load {
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]),
            failures: Arc::new(Mutex::new(Vec::new())),
            direct: Arc::new(Mutex::new(direct)),
            tasks: Vec::new(),
        };
        for (kind, addr) in [(0, a_front), (0, a_front), (1, a_fresh), (1, a_fresh)] {
            let (stop, ok, failures) = (load.stop.clone(), load.ok.clone(), load.failures.clone());
            load.tasks.push(tokio::spawn(async move {
                let mut c: Option<H1Client> = None;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let client = match &mut c {
                        Some(c) if !c.is_closed() => c,
                        _ => c.insert(H1Client::connect(addr).await),
                    };
                    let path = format!("/load/{kind}/{n}");
                    let req = client.request("GET", &path).body(body_empty()).unwrap();
                    let result = match client.send(req).await {
                        Ok(resp) => collect_checked(resp).await.map_err(|e| format!("{e:#}")),
                        Err(e) => Err(format!("{e:?}")),
                    };
                    match result {
                        Ok(r)
                            if r.status == 200
                                && r.header("x-prop-connection.uri_san_peer_certificate")
                                    == Some(FRONT_ID) =>
                        {
                            ok[kind].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            failures.lock().unwrap().push(format!(
                                "{} {path}: {} {:?} {}",
                                KINDS[kind],
                                r.status,
                                r.headers,
                                r.text()
                            ));
                            c = None;
                        }
                        Err(e) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{} {path}: {e}", KINDS[kind]));
                            c = None;
                        }
                    }
                }
            }));
        }
        let (stop, ok, failures, direct) = (
            load.stop.clone(),
            load.ok.clone(),
            load.failures.clone(),
            load.direct.clone(),
        );
        load.tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let client = direct.lock().unwrap().clone();
                let path = format!("/load/2/{n}");
                match https_get(b, &client, &path).await {
                    Ok(r)
                        if r.status == 200
                            && r.header("x-prop-connection.uri_san_peer_certificate")
                                == Some(FRONT_ID) =>
                    {
                        ok[2].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} {path}: {} {:?}", KINDS[2], r.status, r.headers)),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} {path}: {e:#}", KINDS[2])),
                }
            }
        }));
        load
    }

    fn counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.ok[i].load(Ordering::Relaxed))
    }

    #[track_caller]
    fn assert_no_failures(&self, phase: &str) {
        let f = self.failures.lock().unwrap();
        assert!(
            f.is_empty(),
            "{phase}: {} failed requests (ok so far {:?}); first ones:\n{}",
            f.len(),
            self.counts(),
            f.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
    }

    /// Waits until every kind of loop completed at least `min` more successful requests.
    async fn progress(&self, min: u64, phase: &str) {
        let start = self.counts();
        eventually_for(
            Duration::from_secs(30),
            &format!("{phase}: {min} more successful requests of each kind"),
            async || {
                self.assert_no_failures(phase);
                let now = self.counts();
                let done: [u64; 3] = std::array::from_fn(|i| now[i] - start[i]);
                if done.iter().all(|n| *n >= min) {
                    Ok(())
                } else {
                    Err(done)
                }
            },
        )
        .await;
    }

    /// Stops the loops; returns the successful requests per kind and every failure.
    async fn stop(mut self) -> ([u64; 3], Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            if let Err(e) = within("load loop to stop", t).await {
                self.failures
                    .lock()
                    .unwrap()
                    .push(format!("a load loop panicked: {e}"));
            }
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (self.counts(), failures)
    }
}

/// Writes a new key and certificate into `dir` (key first: until the certificate follows, the
/// proxy sees a mismatched pair and must keep serving the old one).
fn write_identity(dir: &Path, cert: &str, key: &str, leaf: &Leaf) {
    write_atomic(dir, key, leaf.key_pem.as_bytes());
    write_atomic(dir, cert, leaf.cert_pem.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_of_leaves_and_cas_under_load_fails_no_request() {
    const MIN: u64 = 10;
    let pki = pki();
    let ca1 = &pki.ca;
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &pki, vec![props()], &[]).await;
    let b = back.listener_addr("back");
    let mut fresh = front_cluster_tls("ca.pem", BACK_ID);
    fresh.push("pool: { max_idle: 0 }".to_string());
    let front = start_front(
        b,
        &pki,
        &[
            ("front", "back", front_cluster_tls("ca.pem", BACK_ID)),
            ("fresh", "back_fresh", fresh),
        ],
        &[],
    )
    .await;
    let (b_admin, a_admin) = (back.admin_addr(), front.admin_addr());
    let (b_dir, a_dir) = (back.dir().to_path_buf(), front.dir().to_path_buf());
    const A_CONTEXTS: [&str; 2] = ["cluster:back", "cluster:back_fresh"];

    // Starting point as /certs reports it.
    let certs = get_certs(b_admin).await;
    assert_eq!(
        certs.sha256s("listener:back", "cert"),
        [pki.back.sha256_hex()]
    );
    assert_eq!(certs.sha256s("listener:back", "ca"), [ca1.sha256_hex()]);

    let load = Load::start(
        front.listener_addr("front"),
        front.listener_addr("fresh"),
        b,
        good_client(&pki),
    );
    load.progress(MIN, "before any rotation").await;

    // (a) B's leaf, same CA.
    let back2 = ca1.leaf("back", Some(BACK_ID), &[]);
    write_identity(&b_dir, "back.pem", "back-key.pem", &back2);
    wait_certs(b_admin, "B serves leaf 2", |c| {
        c.sha256s("listener:back", "cert") == [back2.sha256_hex()]
    })
    .await;
    let presented = peer_certificate(b, &TlsClient::new(&ca1.pem()))
        .await
        .expect("handshake with B after the leaf rotation");
    assert_eq!(
        sha256_hex(&presented),
        back2.sha256_hex(),
        "a new handshake presents the new leaf once /certs shows it"
    );
    load.progress(MIN, "after B's leaf rotation").await;

    // (b1) Trust CA1 + CA2 everywhere.
    let ca2 = TestCa::new(TD);
    let both = bundle(&[&ca1.pem(), &ca2.pem()]);
    let mut both_sha = vec![ca1.sha256_hex(), ca2.sha256_hex()];
    both_sha.sort();
    write_atomic(&b_dir, "ca.pem", both.as_bytes());
    write_atomic(&a_dir, "ca.pem", both.as_bytes());
    {
        let mut d = load.direct.lock().unwrap();
        *d = d.clone().trust(&ca2.pem());
    }
    wait_certs(b_admin, "B trusts CA1+CA2", |c| {
        c.sha256s("listener:back", "ca") == both_sha
    })
    .await;
    wait_certs(a_admin, "A trusts CA1+CA2", |c| {
        A_CONTEXTS
            .iter()
            .all(|ctx| c.sha256s(ctx, "ca") == both_sha)
    })
    .await;
    load.progress(MIN, "with both CAs trusted").await;

    // (b2) Reissue both leaves from CA2.
    let back3 = ca2.leaf("back", Some(BACK_ID), &[]);
    let front2 = ca2.leaf("front", Some(FRONT_ID), &[]);
    write_identity(&b_dir, "back.pem", "back-key.pem", &back3);
    write_identity(&a_dir, "front.pem", "front-key.pem", &front2);
    {
        let mut d = load.direct.lock().unwrap();
        *d = d.clone().identity(&front2);
    }
    wait_certs(b_admin, "B serves the CA2 leaf", |c| {
        c.sha256s("listener:back", "cert") == [back3.sha256_hex()]
    })
    .await;
    wait_certs(a_admin, "A presents the CA2 client certificate", |c| {
        A_CONTEXTS
            .iter()
            .all(|ctx| c.sha256s(ctx, "cert") == [front2.sha256_hex()])
    })
    .await;
    let presented = peer_certificate(b, &TlsClient::new(&ca2.pem()))
        .await
        .expect("handshake with B trusting CA2 only");
    assert_eq!(sha256_hex(&presented), back3.sha256_hex());
    // A's next new handshake (fresh path) presents the new client certificate to B.
    let r = h1_get_with(front.listener_addr("fresh"), "/after-reissue", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("x-prop-connection.sha256_peer_certificate_digest"),
        Some(front2.sha256_hex().as_str()),
        "A's new handshakes use the CA2 client certificate"
    );
    load.progress(MIN, "after reissuing from CA2").await;

    // (b3) Drop CA1.
    let only2 = ca2.pem();
    write_atomic(&b_dir, "ca.pem", only2.as_bytes());
    write_atomic(&a_dir, "ca.pem", only2.as_bytes());
    *load.direct.lock().unwrap() = TlsClient::new(&only2).identity(&front2);
    wait_certs(b_admin, "B trusts CA2 only", |c| {
        c.sha256s("listener:back", "ca") == [ca2.sha256_hex()]
    })
    .await;
    wait_certs(a_admin, "A trusts CA2 only", |c| {
        A_CONTEXTS
            .iter()
            .all(|ctx| c.sha256s(ctx, "ca") == [ca2.sha256_hex()])
    })
    .await;
    load.progress(MIN, "with CA1 dropped").await;
    // CA1 is really gone from B's client trust: the old CA1 client certificate is refused.
    assert!(
        https_get(b, &TlsClient::new(&only2).identity(&pki.front), "/old-ca")
            .await
            .is_err(),
        "B still accepts a CA1 client certificate after CA1 was dropped"
    );

    let (counts, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed requests during rotation (ok {counts:?}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        counts.iter().all(|n| *n >= 5 * MIN),
        "every kind of loop ran through all five phases: {counts:?}"
    );
    eprintln!("rotation: successful requests per kind {KINDS:?}: {counts:?}");
}

// ---------------------------------------------------------------------------------------------
// 8. Expiry visible
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn certificate_expiry_is_exported() {
    let pki = pki();
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &pki, vec![], &[]).await;
    let front = start_front_default(back.listener_addr("back"), &pki).await;

    let text = get_metrics(back.admin_addr()).await;
    const EXPIRY: &str = "weir_tls_certificate_expiry_timestamp_seconds";
    assert_eq!(
        metric_values(
            &text,
            EXPIRY,
            &[
                ("context", "listener:back"),
                ("role", "cert"),
                ("serial", pki.back.serial_hex.as_str()),
                ("subject", "CN=back,O=weir"),
            ]
        ),
        [pki.back.not_after as f64],
        "B's leaf expiry (its notAfter) in:\n{text}"
    );
    assert_eq!(
        metric_values(
            &text,
            EXPIRY,
            &[("context", "listener:back"), ("role", "ca")]
        ),
        [pki.ca.not_after() as f64],
        "B's client CA expiry in:\n{text}"
    );
    let text = get_metrics(front.admin_addr()).await;
    assert_eq!(
        metric_values(
            &text,
            EXPIRY,
            &[
                ("context", "cluster:back"),
                ("role", "cert"),
                ("serial", pki.front.serial_hex.as_str()),
            ]
        ),
        [pki.front.not_after as f64],
        "A's client certificate expiry in:\n{text}"
    );

    // /certs describes the same certificates.
    let certs = get_certs(back.admin_addr()).await;
    let leaf = certs.of("listener:back", "cert");
    assert_eq!(leaf.len(), 1, "{certs:#?}");
    let leaf = leaf[0];
    assert_eq!(leaf.sha256, pki.back.sha256_hex());
    assert_eq!(leaf.serial, pki.back.serial_hex);
    assert_eq!(leaf.subject, "CN=back,O=weir");
    assert_eq!(leaf.uri_sans, [BACK_ID]);
    assert!(leaf.dns_sans.is_empty());
    assert_eq!(leaf.not_after, pki.back.not_after);
    assert!(
        leaf.path.ends_with("back.pem"),
        "path {:?} names the file",
        leaf.path
    );
    let ca = certs.of("listener:back", "ca");
    assert_eq!(ca.len(), 1, "{certs:#?}");
    assert_eq!(ca[0].sha256, pki.ca.sha256_hex());
    assert_eq!(ca[0].subject, pki.ca.subject());
    assert_eq!(ca[0].uri_sans, [format!("spiffe://{TD}")]);
    let ctx = certs
        .context("listener:back")
        .unwrap_or_else(|| panic!("no context listener:back in {certs:#?}"));
    assert_eq!(ctx.reload_errors, 0);
    assert_eq!(ctx.last_error, None);
    let certs = get_certs(front.admin_addr()).await;
    assert_eq!(
        certs.sha256s("cluster:back", "cert"),
        [pki.front.sha256_hex()]
    );
    assert_eq!(certs.sha256s("cluster:back", "ca"), [pki.ca.sha256_hex()]);
}

/// An `http2` cluster offers only ALPN `h2` and speaks HTTP/2 over mutual TLS: it works against a
/// listener that serves h2, and a listener that serves only `http/1.1` refuses the handshake
/// (no common protocol), which is a 503 at the sender — never a silent fallback.
#[tokio::test]
async fn an_http2_cluster_speaks_h2_over_mtls() {
    let pki = pki();
    let echo = EchoServer::start().await;
    let h2_back = start_back(echo.addr, &pki, vec![props()], &[]).await;
    let h1_back = start_back(echo.addr, &pki, vec![], &["alpn: [http/1.1]"]).await;
    let mut lines = front_cluster_tls("ca.pem", BACK_ID);
    lines.push("protocol: http2".to_string());
    let to_h2 = start_front(
        h2_back.listener_addr("back"),
        &pki,
        &[("front", "back", lines.clone())],
        &[],
    )
    .await;
    let to_h1 = start_front(
        h1_back.listener_addr("back"),
        &pki,
        &[("front", "back", lines)],
        &[],
    )
    .await;

    let r = h1_get_with(to_h2.listener_addr("front"), "/h2", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-prop-connection.uri_san_peer_certificate"),
        Some(FRONT_ID)
    );
    assert_eq!(r.header("x-prop-request.scheme"), Some("https"));

    let r = h1_get_with(to_h1.listener_addr("front"), "/h1-only", &[]).await;
    assert_error(&r, 503, "upstream_connect_failure");
    let seen: Vec<String> = echo.requests().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(seen, ["/h2"], "only the h2 request reached the backend");
}

/// A client that connects and never starts the handshake is dropped at `handshake_timeout` and
/// counted; the listener keeps serving.
#[tokio::test]
async fn a_silent_client_is_dropped_at_the_handshake_timeout() {
    let pki = pki();
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &pki, vec![], &["handshake_timeout: 300ms"]).await;
    let addr = back.listener_addr("back");
    let start = std::time::Instant::now();
    let reply = send_raw(addr, b"", Duration::from_secs(8)).await;
    let waited = start.elapsed();
    assert!(reply.closed, "the silent connection must be closed by weir");
    assert!(
        reply.bytes.is_empty(),
        "nothing is sent to a client that said nothing"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}, before the 300ms handshake timeout"
    );
    wait_metric_at_least(
        back.admin_addr(),
        "weir_tls_handshake_errors_total",
        &[("listener", "back")],
        1.0,
    )
    .await;
    let r = https_get(addr, &good_client(&pki), "/after")
        .await
        .expect("served after");
    assert_eq!(r.status, 200);
}

/// `client_auth: optional`: a client without a certificate is served as anonymous
/// (`connection.mtls` false, no XFCC), one with a certificate is verified and identified.
#[tokio::test]
async fn optional_client_auth_serves_anonymous_and_identified_clients() {
    let pki = pki();
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &pki, vec![props()], &["client_auth: optional"]).await;
    let addr = back.listener_addr("back");

    let anonymous = TlsClient::new(&pki.ca.pem());
    let r = https_get(addr, &anonymous, "/anon")
        .await
        .expect("anonymous is served");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-prop-connection.mtls"), Some("false"));
    assert_eq!(r.header("x-prop-connection.uri_san_peer_certificate"), None);

    let r = https_get(addr, &good_client(&pki), "/known")
        .await
        .expect("identified is served");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-prop-connection.mtls"), Some("true"));
    assert_eq!(
        r.header("x-prop-connection.uri_san_peer_certificate"),
        Some(FRONT_ID)
    );

    let seen = echo.requests();
    assert_eq!(seen.len(), 2);
    assert!(all_values(&seen[0], "x-forwarded-client-cert").is_empty());
    assert_eq!(
        all_values(&seen[1], "x-forwarded-client-cert"),
        [expected_xfcc(&pki.front)]
    );

    // Optional is not "anything goes": a certificate from another CA is still refused.
    let stranger = TestCa::new(TD).leaf("front", Some(FRONT_ID), &[]);
    let bad = TlsClient::new(&pki.ca.pem()).identity(&stranger);
    assert!(https_get(addr, &bad, "/stranger").await.is_err());
}

/// `weir check` loads the TLS material: a certificate beside the wrong key, or a bundle that is
/// not PEM, is an error naming the file (and `weir run` refuses to start the same way); matching
/// material is `ok`.
#[test]
fn weir_check_loads_the_tls_material() {
    let pki = pki();
    let other = pki.ca.leaf("other", Some(FRONT_ID), &[]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).unwrap();
    write("back.pem", &pki.back.cert_pem);
    write("back-key.pem", &pki.back.key_pem);
    write("other-key.pem", &other.key_pem);
    write("ca.pem", &pki.ca.pem());
    write("junk.pem", "not a certificate\n");
    let manifest = |key: &str, ca: &str| {
        format!(
            "listeners:\n  - name: back\n    address: 127.0.0.1:0\n    default_cluster: app\n    tls: {{cert: back.pem, key: {key}, client_ca: {ca}}}\nclusters:\n  app: {{endpoints: [127.0.0.1:1]}}\n"
        )
    };
    let run = |yaml: String| {
        let path = dir.path().join("weir.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = std::process::Command::new(weir_tests::weir_bin())
            .arg("check")
            .arg(&path)
            .output()
            .expect("run weir check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = run(manifest("back-key.pem", "ca.pem"));
    assert_eq!((code, stdout.as_str()), (Some(0), "ok\n"));
    let (code, _, stderr) = run(manifest("other-key.pem", "ca.pem"));
    assert_eq!(code, Some(1));
    assert!(stderr.starts_with("error: TLS: "), "{stderr}");
    assert!(
        stderr.contains("back.pem") && stderr.contains("other-key.pem"),
        "{stderr}"
    );
    let (code, _, stderr) = run(manifest("back-key.pem", "junk.pem"));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("junk.pem"), "{stderr}");
}
