//! Which callbacks run, in what order and when: declared phases only, request phases in chain
//! order and response phases reversed, one filter twice in a chain, `on_log` with the final
//! status at the end of the stream (also when the client leaves), upgrade requests through the
//! chain.

use weir_tests::{ChainManifest, EchoServer, FilterDef, H1Client, H2Client, collect};

use super::common::{conformance, get_with, one_chain, open_stream, trace, wait_log};

/// A filter that declares its HTTP phases (`weir.declare_http_phases`) gets only those: here
/// each filter declares request headers only and panics in one undeclared callback, which Weir
/// never calls. Without the declaration the same chain fails its streams.
#[tokio::test]
async fn undeclared_phases_are_never_called() {
    let echo = EchoServer::start().await;
    let chain = |declare: bool| {
        let filters = [
            "on_request_body",
            "on_response_headers",
            "on_response_body",
            "on_log",
            "on_done",
        ]
        .iter()
        .enumerate()
        .map(|(i, callback)| {
            let declare = if declare {
                r#","declare_phases":"request_headers""#
            } else {
                ""
            };
            conformance(
                &format!("p{i}"),
                &format!(r#"{{"scenario":"trace","tag":"p{i}","panic_in":"{callback}"{declare}}}"#),
            )
        })
        .collect();
        one_chain(echo.addr, filters)
    };
    let weir = chain(true).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    // Twice: a trap in on_log/on_done would only show on the next request (503 unavailable).
    for body in ["hello", "again"] {
        let resp = c.post("/echo", body).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), body);
        assert_eq!(
            resp.header("content-length"),
            Some("5"),
            "no body phase: upstream framing"
        );
        assert_eq!(resp.header("x-order"), None, "no response-header phase ran");
    }
    let seen = echo.wait_requests(2).await;
    let order = seen[1]
        .headers
        .get("x-order")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        order.as_deref(),
        Some("p0,p1,p2,p3,p4"),
        "the request phase ran"
    );
    drop(weir);

    let weir = chain(false).start().await;
    let resp = get_with(weir.listener_addr("main"), "/echo", &[]).await;
    assert_eq!(
        resp.status, 503,
        "the undeclared callbacks ran and trapped: {resp:?}"
    );
}

#[tokio::test]
async fn chain_order_request_forward_response_reversed() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("first", "a"),
            trace("second", "b"),
            trace("third", "c"),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/o", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        echo.wait_requests(1).await[0].header("x-order"),
        Some("a,b,c")
    );
    assert_eq!(resp.header("x-order"), Some("c,b,a"));
    // Over h2 the same.
    let mut h2 = H2Client::connect(addr).await;
    let resp = h2.get("/o2").await;
    assert_eq!(
        echo.wait_requests(2).await[1].header("x-order"),
        Some("a,b,c")
    );
    assert_eq!(resp.header("x-order"), Some("c,b,a"));
}

/// The same filter twice in a chain: two stream contexts of one VM, both in order.
#[tokio::test]
async fn one_filter_twice_in_a_chain() {
    let echo = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .chain("edge", &["t", "u", "t"])
        .filter(trace("t", "t"))
        .filter(trace("u", "u"))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/twice", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-order"), Some("t,u,t"));
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(r.header("x-order"), Some("t,u,t"));
    assert_eq!(wait_log(addr, "t", "200,200").await, "200,200");
}

#[tokio::test]
async fn on_log_sees_the_final_status() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("t", "t")]).start().await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    assert_eq!(c.get("/status/201").await.status, 201);
    assert_eq!(wait_log(addr, "t", "201").await, "201");
    assert_eq!(c.get("/status/404").await.status, 404);
    assert_eq!(wait_log(addr, "t", "201,404").await, "201,404");
    // A proxy error (the upstream is gone) is the final status too.
    drop(echo);
    let resp = c.get("/gone").await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(wait_log(addr, "t", "201,404,503").await, "201,404,503");
}

/// `on_log` runs when the stream ends, not when the response headers went out.
#[tokio::test]
async fn on_log_waits_for_the_end_of_a_streaming_response() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("t", "t")]).start().await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = c.request("POST", "/stream").body(body).unwrap();
    tx.send_data(bytes::Bytes::from_static(b"part one"))
        .await
        .unwrap();
    let resp = c.send(req).await.expect("streaming response head");
    assert_eq!(resp.status(), 200);
    // The exchange is still open: nothing logged yet.
    let r = get_with(addr, "/", &[("x-read-log", "t")]).await;
    assert_eq!(r.text(), "", "on_log ran before the stream ended");
    drop(tx);
    let done = collect(resp).await;
    assert_eq!(done.text(), "part one");
    assert_eq!(wait_log(addr, "t", "200").await, "200");
}

/// A client that goes away mid-response still ends the stream: on_log runs (with the status
/// that was sent).
#[tokio::test]
async fn on_log_runs_when_the_client_leaves_mid_response() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("t", "t")]).start().await;
    let addr = weir.listener_addr("main");
    let (tx, body) = open_stream(addr, "first").await.expect("stream opens");
    // The client drops everything with the exchange half done.
    drop(body);
    drop(tx);
    assert_eq!(wait_log(addr, "t", "200").await, "200");
}

/// A WebSocket upgrade is an HTTP request like any other for the chain (Envoy runs the HTTP
/// filters on upgrade requests): adding `Upgrade: websocket` must not skip an auth chain.
#[tokio::test]
async fn an_upgrade_request_runs_the_chain() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            FilterDef::new("deny", "builtin:local-reply")
                .config(r#"{"status":403,"body":"denied"}"#),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    assert_eq!(get_with(addr, "/plain", &[]).await.status, 403);
    let mut c = weir_tests::RawClient::connect(addr).await;
    c.write(
        b"GET /chat HTTP/1.1\r\nHost: weir.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let r = c.read_response().await;
    assert_eq!(
        r.status, 403,
        "an upgrade request bypassed the deny-all chain: {}",
        r.head
    );
    assert_eq!(echo.requests().len(), 0, "{:?}", echo.requests());
}
