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
use weir_tests::{
    ChainManifest, ControlledServer, EchoServer, FilterDef, H1Client, Weir, add_to_listener,
    eventually,
};

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
    eventually("the first JWKS fetch", async || match idp.hits() {
        0 => Err("no request at the IdP"),
        _ => Ok(()),
    })
    .await;
    // A request that comes before the root's answer is in fetches for itself (and is accepted
    // with those keys). Once the keys are cached, a valid token is accepted without a fetch: that
    // is the signal, rather than a pause hoping the root's answer has landed.
    let fetched = eventually("a valid token accepted from the cached JWKS", async || {
        let before = idp.hits();
        let r = get_with_token(&mut c, RS_VALID).await;
        assert_eq!(r.status, 200, "{r:?}");
        match idp.hits() {
            after if after == before => Ok(after),
            after => Err(format!(
                "the request fetched the JWKS ({before} → {after} fetches)"
            )),
        }
    })
    .await;
    assert!(
        fetched <= 2,
        "{fetched} fetches: the root's and at most one request's"
    );
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
    // The valid tokens above (as many as the wait took); the refused ones never reached it.
    let served = echo.requests().len();

    // The IdP rotates: a token signed by the new key triggers a refresh and is accepted.
    *doc.lock().unwrap() = JWKS_V2.to_string();
    let r = get_with_token(&mut c, RS_ROTATED).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(idp.hits(), before + 1, "one refresh");
    let seen = echo.wait_requests(served + 1).await;
    assert_eq!(seen[served].header("x-jwt-sub"), Some("dave"));
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

#[tokio::test]
async fn ext_authz_callouts_count_for_outlier_detection_like_requests() {
    // A callout takes the same upstream path as a request: an authorization endpoint answering
    // 500s is ejected by the cluster's outlier detection, and the healthy one takes over.
    let echo = EchoServer::start().await;
    let bad = ControlledServer::start().await;
    bad.set_status(500);
    let good = MockServer::start(Arc::new(|_| Reply::new(200, ""))).await;
    let config = r#"{"ext_authz": {"cluster": "authz", "path": "/check", "timeout": "2s"}}"#;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster_with(
            "authz",
            &[bad.addr, good.addr],
            &["outlier: { consecutive_5xx: 3, interval: 50ms, base_ejection: 30s, max_ejection_percent: 50 }"],
        )
        .chain("edge", &["auth"])
        .filter(FilterDef::new("auth", "builtin:auth").config(config))
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    // Round robin: three of these six callouts reach the endpoint answering 500.
    let mut allowed = 0;
    for _ in 0..6 {
        if get(&mut c, "/api", &[]).await.status == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3, "the healthy endpoint allowed its three");
    let m = crate::observability::scrape(weir.admin_addr()).await;
    assert_eq!(
        m.sum("weir_upstream_ejections_total", &[("cluster", "authz")]),
        1.0,
        "the 500s of callouts ejected their endpoint"
    );
    // Ejected: every callout now reaches the healthy endpoint.
    for _ in 0..4 {
        assert_eq!(get(&mut c, "/api", &[]).await.status, 200);
    }
}

// The keys and tokens (shared with the harness tests).
#[path = "../fixtures/jwt.rs"]
mod jwt;
use jwt::*;
