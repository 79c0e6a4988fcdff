//! `builtin:auth` end to end: the real `weir` process between real clients and an echo upstream.
//! JWTs verified against a JWKS served by an in-test HTTP server (valid, expired, wrong audience,
//! bad signature, key rotation picked up through an unknown `kid`), forwarded claims reaching the
//! upstream (and spoofed ones not), identity rules over real mTLS with two SPIFFE IDs, and the
//! ext_authz callout to an in-test authorization server (allow with copied headers, deny,
//! timeout).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use weir_tests::client::Collected;
use weir_tests::tls::{Leaf, TestCa, TlsClient, https_get};
use weir_tests::{ChainManifest, EchoServer, FilterDef, H1Client, Weir, within};

/// One answer of a [`MockServer`].
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn new(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = Arc<dyn Fn(&http::request::Parts) -> Reply + Send + Sync>;

/// A tiny HTTP server (h1 and h2c) answering with `handler`, counting requests and recording
/// their paths and headers (the echo server cannot serve fixed bodies).
struct MockServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<http::request::Parts>>>,
    task: JoinHandle<()>,
}

impl MockServer {
    async fn start(handler: Handler) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h2, s2) = (hits.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let (handler, hits, seen) = (handler.clone(), h2.clone(), s2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (handler, hits, seen) = (handler.clone(), hits.clone(), seen.clone());
                        async move {
                            let (parts, _body) = req.into_parts();
                            hits.fetch_add(1, Ordering::SeqCst);
                            let r = handler(&parts);
                            seen.lock().unwrap().push(parts);
                            if !r.delay.is_zero() {
                                tokio::time::sleep(r.delay).await;
                            }
                            let mut b = Response::builder().status(r.status);
                            for (k, v) in r.headers {
                                b = b.header(k, v);
                            }
                            Ok::<_, Infallible>(b.body(Full::new(Bytes::from(r.body))).unwrap())
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        MockServer {
            addr,
            hits,
            seen,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A JWKS server whose document the test can swap (key rotation).
async fn jwks_server(initial: &str) -> (MockServer, Arc<Mutex<String>>) {
    let doc = Arc::new(Mutex::new(initial.to_string()));
    let d = doc.clone();
    let server = MockServer::start(Arc::new(move |parts| {
        if parts.uri.path() == "/.well-known/jwks.json" {
            let mut r = Reply::new(200, d.lock().unwrap().clone());
            r.headers.push(("content-type", "application/json".into()));
            r
        } else {
            Reply::new(404, "")
        }
    }))
    .await;
    (server, doc)
}

/// Listener `main` → cluster `web` (echo) through chain `edge` = `builtin:auth` with `json`;
/// `extra` clusters for callouts.
async fn start(echo: SocketAddr, extra: &[(&str, SocketAddr)], json: &str) -> Weir {
    let mut m = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo]);
    for (name, addr) in extra {
        m = m.cluster(name, &[*addr]);
    }
    m.chain("edge", &["auth"])
        .filter(FilterDef::new("auth", "builtin:auth").config(json))
        .start()
        .await
}

async fn get(c: &mut H1Client, path: &str, headers: &[(&str, &str)]) -> Collected {
    c.get_with(path, headers).await
}

async fn get_with_token(c: &mut H1Client, token: &str) -> Collected {
    get(
        c,
        "/api/items",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[track_caller]
fn assert_refused(r: &Collected, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("x-weir-auth"), Some(reason), "{r:?}");
    assert_eq!(r.text(), format!("weir: {reason}\n"));
    if status == 401 {
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(www.starts_with("Bearer realm=\"weir\""), "{r:?}");
    }
}

fn jwt_config(jwks_addr: Option<SocketAddr>) -> String {
    let source = match jwks_addr {
        Some(_) => r#""jwks_cluster": {"cluster": "idp", "path": "/.well-known/jwks.json", "timeout": "2s"}"#.to_string(),
        None => format!(r#""jwks": {JWKS_V1}"#),
    };
    format!(
        r#"{{"jwt": {{"issuer": "https://issuer.example", "audiences": ["api"], {source}, "forward_claims": {{"sub": "x-jwt-sub", "tenant": "x-tenant"}}}}}}"#
    )
}

// ---------------------------------------------------------------------------------------------
// JWT.

#[tokio::test]
async fn jwt_inline_keys_valid_expired_wrong_audience_bad_signature() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, &[], &jwt_config(None)).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;

    let r = get(
        &mut c,
        "/api/items",
        &[
            ("authorization", &format!("Bearer {RS_VALID}")),
            ("x-tenant", "evil"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.wait_requests(1).await;
    assert_eq!(seen[0].header("x-jwt-sub"), Some("alice"));
    assert_eq!(
        seen[0].header("x-tenant"),
        Some("acme"),
        "the spoofed value is replaced"
    );
    assert_eq!(seen[0].headers.get_all("x-tenant").iter().count(), 1);

    for (token, reason) in [
        (RS_EXPIRED, "expired"),
        (RS_WRONG_AUD, "wrong_audience"),
        (RS_BAD_SIG, "bad_signature"),
        (ES_BAD_SIG, "bad_signature"),
        (RS_WRONG_ISS, "wrong_issuer"),
        (RS_NOT_YET_VALID, "not_yet_valid"),
        (NONE, "invalid_token"),
        (HS_WITH_RSA_KID, "unknown_key"),
    ] {
        let r = get_with_token(&mut c, token).await;
        assert_refused(&r, 401, reason);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"weir\", error=\"invalid_token\"")
        );
    }
    let r = get(&mut c, "/api/items", &[]).await;
    assert_refused(&r, 401, "missing_token");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"weir\""));
    assert!(!c.is_closed(), "refusals keep the connection");
    // ES256 and HS256 too.
    assert_eq!(get_with_token(&mut c, ES_VALID).await.status, 200);
    assert_eq!(get_with_token(&mut c, HS_VALID).await.status, 200);
    assert_eq!(get_with_token(&mut c, RS_NO_KID).await.status, 200);
    assert_eq!(
        echo.wait_requests(4).await.len(),
        4,
        "refused requests never reached it"
    );
}

#[tokio::test]
async fn jwt_with_fetched_jwks_and_rotation() {
    let echo = EchoServer::start().await;
    let (idp, doc) = jwks_server(JWKS_V1).await;
    let weir = start(echo.addr, &[("idp", idp.addr)], &jwt_config(Some(idp.addr))).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    // The root fetches on its own at start.
    within("the first JWKS fetch", async {
        while idp.hits() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let r = get_with_token(&mut c, RS_VALID).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(idp.hits(), 1, "served from the cache");
    assert_refused(&get_with_token(&mut c, RS_EXPIRED).await, 401, "expired");
    assert_refused(
        &get_with_token(&mut c, RS_WRONG_AUD).await,
        401,
        "wrong_audience",
    );
    assert_refused(
        &get_with_token(&mut c, RS_BAD_SIG).await,
        401,
        "bad_signature",
    );
    let before = idp.hits();
    assert!(before >= 1, "the JWKS was fetched");

    // The IdP rotates: a token signed by the new key triggers a refresh and is accepted.
    *doc.lock().unwrap() = JWKS_V2.to_string();
    let r = get_with_token(&mut c, RS_ROTATED).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(idp.hits(), before + 1, "one refresh");
    let seen = echo.wait_requests(2).await;
    assert_eq!(seen[1].header("x-jwt-sub"), Some("dave"));
    // Cached now; and the EC key that left the set is unknown (refresh rate-limited).
    assert_eq!(get_with_token(&mut c, RS_ROTATED).await.status, 200);
    assert_refused(&get_with_token(&mut c, ES_VALID).await, 401, "unknown_key");
    assert_eq!(idp.hits(), before + 1);
}

#[tokio::test]
async fn jwks_unavailable_is_503() {
    let echo = EchoServer::start().await;
    let idp = MockServer::start(Arc::new(|_| Reply::new(500, "down"))).await;
    let weir = start(echo.addr, &[("idp", idp.addr)], &jwt_config(Some(idp.addr))).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_refused(
        &get_with_token(&mut c, RS_VALID).await,
        503,
        "jwks_unavailable",
    );
}

// ---------------------------------------------------------------------------------------------
// Identity rules over mTLS.

const TD: &str = "example.org";
const FRONT_ID: &str = "spiffe://example.org/ns/test/sa/front";
const OTHER_ID: &str = "spiffe://example.org/ns/test/sa/other";

/// Inserts `lines` after the last line of listener `name` in `yaml`.
fn add_to_listener(yaml: &str, name: &str, lines: &[String]) -> String {
    let mut out: Vec<String> = yaml.lines().map(str::to_string).collect();
    let start = out
        .iter()
        .position(|l| *l == format!("  - name: {name}"))
        .unwrap_or_else(|| panic!("no listener {name} in:\n{yaml}"));
    let mut end = start + 1;
    while end < out.len() && out[end].starts_with("    ") {
        end += 1;
    }
    for (i, l) in lines.iter().enumerate() {
        out.insert(end + i, l.clone());
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

#[tokio::test]
async fn rules_allow_and_deny_by_spiffe_id_over_mtls() {
    let echo = EchoServer::start().await;
    let ca = TestCa::new(TD);
    let server: Leaf = ca.leaf("back", Some("spiffe://example.org/ns/test/sa/back"), &[]);
    let front = ca.leaf("front", Some(FRONT_ID), &[]);
    let other = ca.leaf("other", Some(OTHER_ID), &[]);
    let config = format!(
        r#"{{"rules": [
            {{"allow": true, "principals": ["{FRONT_ID}"], "paths": {{"prefix": "/api"}}, "methods": ["GET"]}},
            {{"allow": false, "principals": ["spiffe://example.org/*"]}}
        ]}}"#
    )
    .replace('\n', " ");
    let m = ChainManifest::new()
        .listener("back", "app", Some("edge"))
        .cluster("app", &[echo.addr])
        .chain("edge", &["auth"])
        .filter(FilterDef::new("auth", "builtin:auth").config(&config));
    let lines: Vec<String> = [
        "    tls:",
        "      cert: back.pem",
        "      key: back-key.pem",
        "      client_ca: ca.pem",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("      trust_domains: [{TD}]")])
    .collect();
    let yaml = add_to_listener(&m.yaml(), "back", &lines);
    let weir = Weir::start_with_files(
        &yaml,
        &[
            ("back.pem", server.cert_pem.as_bytes()),
            ("back-key.pem", server.key_pem.as_bytes()),
            ("ca.pem", ca.pem().as_bytes()),
        ],
        &[],
    )
    .await;
    let addr = weir.listener_addr("back");
    let as_front = TlsClient::new(&ca.pem()).identity(&front);
    let as_other = TlsClient::new(&ca.pem()).identity(&other);

    let r = https_get(addr, &as_front, "/api/items").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = https_get(addr, &as_front, "/admin").await.unwrap();
    assert_refused(&r, 403, "forbidden");
    let r = https_get(addr, &as_other, "/api/items").await.unwrap();
    assert_refused(&r, 403, "forbidden");
    assert_eq!(echo.wait_requests(1).await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// ext_authz.

#[tokio::test]
async fn ext_authz_allow_deny_and_timeout() {
    let echo = EchoServer::start().await;
    let authz = MockServer::start(Arc::new(|parts| {
        let user = parts
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match user {
            "ana" => {
                let mut r = Reply::new(200, "");
                r.headers.push(("x-authz-user", "ana@corp".into()));
                r.headers.push(("x-not-copied", "1".into()));
                r
            }
            "slow" => {
                let mut r = Reply::new(200, "");
                r.delay = Duration::from_secs(3);
                r
            }
            "anon" => Reply::new(401, "who?"),
            _ => Reply::new(403, "no"),
        }
    }))
    .await;
    let config = r#"{"ext_authz": {"cluster": "authz", "path": "/check", "timeout": "300ms", "forward_headers": ["x-user"], "allow_headers": ["x-authz-user"]}}"#;
    let weir = start(echo.addr, &[("authz", authz.addr)], config).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;

    let r = get(&mut c, "/api/orders?id=7", &[("x-user", "ana")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.wait_requests(1).await;
    assert_eq!(seen[0].header("x-authz-user"), Some("ana@corp"));
    assert_eq!(seen[0].header("x-not-copied"), None);
    {
        let asked = authz.seen.lock().unwrap();
        assert_eq!(asked[0].uri.path(), "/check/api/orders");
        assert_eq!(asked[0].method, "GET");
    }

    assert_refused(
        &get(&mut c, "/api", &[("x-user", "bob")]).await,
        403,
        "forbidden",
    );
    assert_refused(
        &get(&mut c, "/api", &[("x-user", "anon")]).await,
        401,
        "forbidden",
    );
    let r = get(&mut c, "/api", &[("x-user", "slow")]).await;
    assert_refused(&r, 403, "ext_authz_unavailable");
    assert_eq!(echo.wait_requests(1).await.len(), 1);
}

// The same fixtures as sdk/tests/auth.rs.
// Generated once with Python `cryptography` (throwaway script); private keys were discarded.
// iss https://issuer.example, aud api, exp 4102444800 (2100) unless the name says otherwise.
const JWKS_V1: &str = r#"{"keys":[{"kty":"RSA","kid":"rsa-1","alg":"RS256","use":"sig","n":"tkYZOm_qI7VeYz95q7XGtoMe5ZadFbTy1xp_3CnaSskWqnEVqnsSNBjSZ9ifp8tULQP1BVH5igFUJPJU809OgtdmWiL92IP_AnuWLngd53HKasFi8IGa7mzpSrN4hiSXpfX0BZG078UgRtNfhJWmU2nJdCETtlIhdhXAPLgVU9PM2QbOGWgD4Rh6QOIoRKeloOuqHsBQMR0CrneSbkDuK6qhTwyA_gEiPG-k4LMtsureKkt0pih0apL-pmgoZ2pY4VaAVr6D1rz8rmv2CChNlzBRPBI81YZ9pl3UjfcBIcjhU7v0a-Ti4YUHqX0Jqsn7mxT_dGLKlHsFyQNDZR7w9w","e":"AQAB"},{"kty":"EC","kid":"ec-1","crv":"P-256","x":"KS_c-54luQqJ3Wtdx0ndRoGf2k0owT4NOZtimyvTH-M","y":"3Z5Zve8WTlOzRG_PPvvcAMR7A2gQjYjCZgyrpgeXDgA"},{"kty":"oct","kid":"hs-1","alg":"HS256","k":"d2Vpci10ZXN0LWhtYWMtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY"}]}"#;
/// After rotation: rsa-1 and the new rsa-2.
const JWKS_V2: &str = r#"{"keys":[{"kty":"RSA","kid":"rsa-1","alg":"RS256","use":"sig","n":"tkYZOm_qI7VeYz95q7XGtoMe5ZadFbTy1xp_3CnaSskWqnEVqnsSNBjSZ9ifp8tULQP1BVH5igFUJPJU809OgtdmWiL92IP_AnuWLngd53HKasFi8IGa7mzpSrN4hiSXpfX0BZG078UgRtNfhJWmU2nJdCETtlIhdhXAPLgVU9PM2QbOGWgD4Rh6QOIoRKeloOuqHsBQMR0CrneSbkDuK6qhTwyA_gEiPG-k4LMtsureKkt0pih0apL-pmgoZ2pY4VaAVr6D1rz8rmv2CChNlzBRPBI81YZ9pl3UjfcBIcjhU7v0a-Ti4YUHqX0Jqsn7mxT_dGLKlHsFyQNDZR7w9w","e":"AQAB"},{"kty":"RSA","kid":"rsa-2","alg":"RS256","use":"sig","n":"zLzVj84yO9sn18T0TMzOrmP05feNXOhDkUqjEmrBA_NPpLtSDVGUqVjHpKJqxI9UeNjVsSE6gMtAshEVkUknmiGkeLEruEggEhE7KmJ2rmOa2znyshqnpSVv7F75ame1fJvg6nevtCWSF6n-sAd5EYFpNGMJNGmiEUShzC_qB22afhAlXfWKuGEhMIOi1sC8qWj5Co2B-MU1UXKSxqg6qrZnB1qKW5a6_F6jbPmuFjIpbjG33TmiInaLbCmIqPFl2FnBOARIkCcWYvBHL5WBPjLmUzLoQAzZDc_m0Pd-lWFMwSq7RWgaFCmxAwj4cz_1wA0kMxc3Ui5BN_tG0k1FJQ","e":"AQAB"}]}"#;
const RS_VALID: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImFsaWNlIiwidGVuYW50IjoiYWNtZSIsImxldmVsIjozfQ.TmyAUdat7nSuZ_XuuXOuWcfA9m5kgkxl37YzRyWDw1jCwYahVfDWiryAJfHai_gGPXSzI5X_hw2xlzZvboZNu2CRC54t-DEfIBElz1z_DazpG_iXUb-FBLFu3BFu14gANdtJHuhTGwM2MlFlQ-nVTGptVZDp8evP2iO37pFYIpHpFxdXtZu8j1mj9fGcig5RUEjnlweP9mdfrwyqB-WwjAUh_0Fyiqp4qgP0jyEywkE_K2lIj4HBIBq3KPM74t16_1S8RDg9IMzjhmtiPfzxJfZNpZf5ap323K9s_zwY2y_XYhNnfjhh-YPL9sWFekFhfof5jmynp64aXyq5luli7g";
const RS_NO_KID: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImFsaWNlIn0.kWdEK3Dodrj4XLJrCfX3_fLWoPrujNDUTRy12uYpUf9svf5RsSHssnm-CIU8NtsjcmGx2LvwEwkHCm2goxtXJp6VBVpQ0_IguUoH3qT_L1AHRVmxG_W7swONG68rhuffAvg7A7AThnW_6fj0Ddk3d76M7UWr-D2nbiAbYxQhX2SEWwPPPpjea1uQ5mizJw-BfRVVNJGqEcS4SVgYXdI_PnYa4Y82Ce5KY6NhP3O3x3JVK3guWn74riXDpoYxtUznTocEP6y2ClO3CmyxpqQhRQc_pucN0pbOd-fksl12MlztgJvQGqoYdLh8cEEbaOUVqD8jHef66dq-MrZOj-Hndw";
const ES_VALID: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImVjLTEifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjpbIm90aGVyIiwiYXBpIl0sImV4cCI6NDEwMjQ0NDgwMCwiaWF0IjoxNzAwMDAwMDAwLCJzdWIiOiJib2IifQ.4FGQcoc24pRba6wSP_D5KjgCIIAS4I2n2jmfQME5YvG7h9h--wIbYStBL2kjFCBYdKrVZQQNCNh8Va40RxY1yQ";
const HS_VALID: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImhzLTEifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImNhcm9sIn0.0EJDqbo8bkdvss8uEbXfVzJ75Nz5c2M0-cgY7g-ffV0";
const RS_EXPIRED: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwiZXhwIjoxNjAwMDAwMDAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImFsaWNlIn0.Z-ZgsbEA3evYDMUSydGtgN251gLOXwu1wqyPsOTGFVE12ljusiKA1qbB5pL-zykdAuPhpuLf9qKDOmkYT3rE7k0NtBWexGJ5IBD2uCpmVO8SHIGkBbiVyla9_9j4AlaPR8XSqxzr6E2OQKGMC62RhhG7W31SX7j00TFppQaI5Z1OzujHphzsPMP3AiwP7dEYZaybe2dKLu8fJxzx1BAJdoO6s8Nsb4e59NDreyknLh8-S1WF9JRwlOI4P2rYDQ_-mp93eczGOrJB9UWwuzLmTij94X6E63QWiF0awZqfZr6qbGi45JJRndi1E4WVDadWpEbH2qrxMEViW35KqItVMQ";
const RS_NOT_YET_VALID: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImFsaWNlIiwibmJmIjo0MDAwMDAwMDAwfQ.rTv6cdQV_U9eg_fUQJvNQXjPa_vNBveoClBi2rU3lZRVxkgrlC1AwSHdy_l23mCVTlvADD-3ck-gMxY66wArcN0biT_PeYaHrmRxoRYI8UPNIYbk_W097ahHXBioUfxqkpxMiqwXXvZxakcJM3NUbSX58uuVc882E2D70Tr60LlanVfDaXFPfTmTWLZRPHJZniGNqHTjYUTjiUOp4o6u9Hy6WOsTRpqciSVnEF5reBBMr2uVTQ849udsqdJ9D2_jm9zQNwuSj5X5XHs3PtlX17VL8yB3hSlAX77IUVURu0HB_6vjDZwe_D1DSZVPf46dOxgCcyBGs24Lj-C9ps4izA";
const RS_WRONG_AUD: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoid2ViIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImFsaWNlIn0.TN6wx_HVfMvvnqJnDtrekFeYh0TF_aiRur4-CA8yBjsDXxpAg8a4r5uHnpi_FrLD94c6c17oTdWxA0iMJnXyHDMY08yQqb1yxIaXYxjBB6RmK56kpVdrV8cBKEcg6GPbqotDIQp3vAG5eomyGdzIDdbCQ2363b4Gu-fR2l_Gmm5q2gfrLE04_5fgmAQ4tAdbhEwdaPLKMUUFsHiskJvJOSWRi5y9ruQMrJ_8JiBTikD2zv4DlmFYaXbjymLGXPq6zR4a42B7LrwEcdlNQJ3ZT1rVjKex1t28imvopHO09R2u3TfPnIBhsCyunTyA6-kQ9BE0jSVo8pvmCGu_IB2hxg";
const RS_WRONG_ISS: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2V2aWwuZXhhbXBsZSIsImF1ZCI6ImFwaSIsImV4cCI6NDEwMjQ0NDgwMCwiaWF0IjoxNzAwMDAwMDAwLCJzdWIiOiJhbGljZSJ9.mRypG1Gsgovk9OYt2wjbXQGASi10Qzyq39aFhImmXV74MdzAthLM4e3lQzWD4pChuS4hQpj41W6Iti--k1md6mQNgGxQjqcQqKfJY0T7N3NbGJkgGadhWlKDhVFfIRlfV5b7tmrweAeHdjmqgj57pubgSzrxjeFuyBfj8u9dHXifIK6h0Ac9629zceGpiG5-rt5zYHxRsfnnYJy6LHFayml6dFFTz6EL2oiEIcVyKw_kdwolD80-aZfZ4mKW3x5vMs8NhvUlpbbhAdh_VTlWt7i6bcORHcEUT1JuYjVA8VXs-05BjcWReyDJOEihgnbX-jwnuJBo7v7XPVm21xtlvA";
const RS_BAD_SIG: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6Im1hbGxvcnkiLCJ0ZW5hbnQiOiJhY21lIiwibGV2ZWwiOjN9.TmyAUdat7nSuZ_XuuXOuWcfA9m5kgkxl37YzRyWDw1jCwYahVfDWiryAJfHai_gGPXSzI5X_hw2xlzZvboZNu2CRC54t-DEfIBElz1z_DazpG_iXUb-FBLFu3BFu14gANdtJHuhTGwM2MlFlQ-nVTGptVZDp8evP2iO37pFYIpHpFxdXtZu8j1mj9fGcig5RUEjnlweP9mdfrwyqB-WwjAUh_0Fyiqp4qgP0jyEywkE_K2lIj4HBIBq3KPM74t16_1S8RDg9IMzjhmtiPfzxJfZNpZf5ap323K9s_zwY2y_XYhNnfjhh-YPL9sWFekFhfof5jmynp64aXyq5luli7g";
const ES_BAD_SIG: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImVjLTEifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImJvYiJ9._BhW3U2gTxRLvwo-pK44p4b1uAMVrcztFBF769aaPq9bSwUHveXbM4SfpDdi-siCiLfsPkiGDw03jIB40jyjRA";
const NONE: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImFsaWNlIn0.";
const HS_WITH_RSA_KID: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImFsaWNlIn0.DELkj3v-RrjjjPZg0Ccne7jNaabTjodVZoeV28BuKfU";
const RS_ROTATED: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0yIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsInN1YiI6ImRhdmUifQ.sIluSDfO7S7Hn0fuiK3OLP_AXyyH8QUTDbMAE6UlHsK31_Vi0GdizjxX7ifsfHgsjzF_7oqoDMJsg8SMk7qJvYHQDr734xeQnSuTASmZJbXTxfrg2A3F-mapo1Ixvs-GYOepiy4LilHj7kJpEqgCetc2gqjqB8NRgipyb7ShcSkUtBnLlrMCaZ9ZFY3CrTrmO7K7vbDrO3Th8537WcO8Oac7WUS-qnCkK0BuUJdrlx1uf1a2e5JLbY4DYrMScg77I-i3iOaD_VpskdnjN0JaYs8ydPE76YVZT5lK8KB2dmvrCACVaKadggta-kia1fSUfdbsXfQ7qbLf9YBA9EGTsQ";
