//! The stock filter `builtin:router` (issue 7) through the real `weir` process: a weighted canary
//! split across two echo upstreams, a header override, a prefix rewrite seen by the upstream, a
//! per-route timeout, a redirect and the no-route 404.

use std::net::SocketAddr;
use std::time::Duration;

use weir_tests::client::Collected;
use weir_tests::{ChainManifest, EchoServer, FilterDef, H1Client, within_for};

use crate::assert_error;

/// Listener `main` (default cluster `v1`) running chain `edge` = one router with `config`, and
/// clusters `v1` → `a`, `v2` → `b`; `extra_v1` are YAML lines under cluster `v1`.
async fn router(a: SocketAddr, b: SocketAddr, config: &str, extra_v1: &[&str]) -> weir_tests::Weir {
    ChainManifest::new()
        .listener("main", "v1", Some("edge"))
        .cluster_with("v1", &[a], extra_v1)
        .cluster("v2", &[b])
        .chain("edge", &["r"])
        .filter(FilterDef::new("r", "builtin:router").config(config))
        .start()
        .await
}

async fn send(c: &mut H1Client, path: &str, headers: &[(&str, &str)]) -> Collected {
    c.get_with(path, headers).await
}

const CANARY: &str = r#"{"routes": [
    {"match": {"path": {"prefix": "/"}, "headers": {"x-canary": "1"}}, "to": "v2",
     "response_headers": {"add": {"x-route": "canary"}}},
    {"match": {"path": {"prefix": "/api"}}, "rewrite": {"prefix": "/v1"}, "to": "v1",
     "request_headers": {"add": {"x-route": "api"}, "remove": ["x-internal"]}},
    {"match": {"path": {"prefix": "/old"}}, "redirect": {"location": "https://example.com/new", "status": 308}},
    {"match": {"path": {"exact": "/ping"}}, "direct": {"status": 200, "body": "pong"}},
    {"match": {"path": {"prefix": "/web"}}, "to": [{"cluster": "v1", "weight": 90}, {"cluster": "v2", "weight": 10}]}
]}"#;

#[tokio::test]
async fn a_canary_split_holds_90_10_within_3_percent() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let weir = router(a.addr, b.addr, CANARY, &[]).await;
    let addr = weir.listener_addr("main");
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 1250;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = H1Client::connect(addr).await;
                for _ in 0..PER_CLIENT {
                    let r = send(&mut c, "/web", &[]).await;
                    assert_eq!(r.status, 200, "{r:?}");
                }
            })
        })
        .collect();
    within_for(Duration::from_secs(120), "10 000 routed requests", async {
        for t in tasks {
            t.await.expect("client task");
        }
    })
    .await;
    let (to_a, to_b) = (a.requests().len(), b.requests().len());
    assert_eq!(to_a + to_b, CLIENTS * PER_CLIENT);
    let share = to_a as f64 / (CLIENTS * PER_CLIENT) as f64;
    assert!(
        (share - 0.9).abs() < 0.03,
        "v1 got {to_a}, v2 got {to_b}: share {share}"
    );
}

#[tokio::test]
async fn a_header_overrides_the_split_and_edits_the_response() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let weir = router(a.addr, b.addr, CANARY, &[]).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let want = b.addr.to_string();
    for _ in 0..50 {
        let r = send(&mut c, "/web", &[("x-canary", "1")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-upstream"), Some(want.as_str()));
        assert_eq!(r.header("x-route"), Some("canary"));
    }
    assert!(a.requests().is_empty());
}

#[tokio::test]
async fn a_prefix_rewrite_is_what_the_upstream_sees() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let weir = router(a.addr, b.addr, CANARY, &[]).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let r = send(&mut c, "/api/items?id=7&x", &[("x-internal", "secret")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some(a.addr.to_string().as_str()));
    let rec = &a.wait_requests(1).await[0];
    assert_eq!(rec.uri.to_string(), "/v1/items?id=7&x");
    assert_eq!(rec.header("x-route"), Some("api"));
    assert_eq!(rec.header("x-internal"), None);
}

#[tokio::test]
async fn a_per_route_timeout_gives_504() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let config = r#"{"routes": [
        {"match": {"path": {"prefix": "/hold"}}, "to": "v1", "timeout": "300ms"},
        {"match": {}, "to": "v1"}
    ]}"#;
    // The cluster's own timeout is long: only the route's can fire within the test.
    let weir = router(a.addr, b.addr, config, &["timeouts: { response: 60s }"]).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let started = std::time::Instant::now();
    let r = send(&mut c, "/hold/1", &[]).await;
    assert_error(&r, 504, "upstream_response_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(10),
        "504 after {took:?}"
    );
    a.release(1);
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_eq!(send(&mut c, "/fast", &[]).await.status, 200);
}

#[tokio::test]
async fn redirect_direct_and_no_route_are_answered_by_the_router() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let config = r#"{"routes": [
        {"match": {"path": {"prefix": "/old"}}, "redirect": {"location": "https://example.com/new", "status": 308}},
        {"match": {"path": {"exact": "/ping"}}, "direct": {"status": 200, "body": "pong", "headers": {"content-type": "text/plain"}}},
        {"match": {"path": {"prefix": "/web"}}, "to": "v2"}
    ]}"#;
    let weir = router(a.addr, b.addr, config, &[]).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;

    let r = send(&mut c, "/old/page", &[]).await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(r.header("location"), Some("https://example.com/new"));

    let r = send(&mut c, "/ping", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, "pong"),
        "{r:?}"
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));

    let r = send(&mut c, "/nowhere", &[]).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.header("x-weir-router"), Some("no_route"));
    assert_eq!(r.text(), "weir: no_route");
    // Flagged NR (no route), as Envoy does.
    weir_tests::eventually("the 404 is flagged NR", async || {
        let m = crate::observability::scrape(weir.admin_addr()).await;
        let n = m.sum("weir_downstream_rq_flags_total", &[("flag", "NR")]);
        if n >= 1.0 { Ok(()) } else { Err(n) }
    })
    .await;

    let r = send(&mut c, "/web", &[]).await;
    assert_eq!(r.header("x-upstream"), Some(b.addr.to_string().as_str()));
    assert!(a.requests().is_empty(), "a local reply reached an upstream");
    assert_eq!(b.requests().len(), 1);
}
