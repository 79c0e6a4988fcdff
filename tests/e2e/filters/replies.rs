//! A filter answering or ending the stream itself: local replies (through the response phases and
//! `on_log`, from the request-body phase, with an unread body, to `Expect: 100-continue`, with a
//! 1xx status, gRPC trailers-only) and `proxy_close_stream`.

use weir_tests::{
    ChainManifest, EchoServer, FilterDef, H1Client, H2Client, body_empty, collect, within,
};

use super::common::{conformance, get_with, one_chain, trace, wait_log};

#[tokio::test]
async fn local_reply_runs_response_phases_and_on_log() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("outer", "a"),
            conformance("deny", r#"{"scenario":"local_reply","status":418}"#),
            trace("inner", "c"),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/x", &[]).await;
    assert_eq!(resp.status, 418, "{resp:?}");
    assert_eq!(resp.text(), "denied");
    assert_eq!(resp.header("x-denied"), Some("1"));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    // The reply flowed back through the filter that saw the request, not the one after it.
    assert_eq!(resp.header("x-order"), Some("a"));
    assert_eq!(resp.header("x-trace-a-status"), Some("418"));
    assert_eq!(resp.header("x-trace-c-status"), None);
    // on_log ran for the filter that saw the request, with the final status.
    assert_eq!(wait_log(addr, "a", "418").await, "418");
    assert_eq!(
        echo.requests().len(),
        0,
        "a local reply never goes upstream"
    );
    // Over h2 too.
    let mut h2 = H2Client::connect(addr).await;
    let resp = h2.get("/y").await;
    assert_eq!(resp.status, 418, "{resp:?}");
    assert_eq!(resp.text(), "denied");
    assert_eq!(wait_log(addr, "a", "418,418").await, "418,418");
    assert_eq!(echo.requests().len(), 0);
}

#[tokio::test]
async fn builtin_local_reply_only_when_asked() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![FilterDef::new("lr", "builtin:local-reply").config(
            r#"{"status":403,"body":"no\n","headers":{"x-denied-by":"weir"},"when_header":"x-deny"}"#,
        )],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/a", &[("x-deny", "1")]).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.text(), "no\n");
    assert_eq!(resp.header("x-denied-by"), Some("weir"));
    let resp = get_with(addr, "/b", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let reqs = echo.wait_requests(1).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].uri.path(), "/b");
}

/// A local reply to a request whose body was never read leaves the client connection usable
/// (or closed), never out of sync.
#[tokio::test]
async fn local_reply_with_an_unread_request_body_keeps_the_connection_in_sync() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            FilterDef::new("lr", "builtin:local-reply")
                .config(r#"{"status":403,"body":"no","when_header":"x-deny"}"#),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let req = c
        .request("POST", "/big")
        .header("x-deny", "1")
        .body(weir_tests::body_full(crate::pattern(256 * 1024)))
        .unwrap();
    let resp = collect(c.send(req).await.expect("local reply")).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    // The next request, on this connection if it stayed open, else on a new one.
    let resp = if c.is_closed() {
        get_with(addr, "/after", &[]).await
    } else {
        match c
            .send(c.request("GET", "/after").body(body_empty()).unwrap())
            .await
        {
            Ok(r) => collect(r).await,
            Err(_) => get_with(addr, "/after", &[]).await,
        }
    };
    assert_eq!(resp.status, 200, "{resp:?}");
    let reqs = echo.wait_requests(1).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].uri.path(), "/after");
}

/// A local reply from the request-body phase (the filter read the whole body, then refused it):
/// the client gets that reply, through the response phases, and on_log sees its status.
#[tokio::test]
async fn a_local_reply_from_the_request_body_phase() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("outer", "a"),
            conformance("body", r#"{"scenario":"body","reply_on_body":true}"#),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let resp = c.post("/refused", "0123456789").await;
    assert_eq!(resp.status, 422, "{resp:?}");
    // The replying filter's own response-body phase (upper-casing) ran on its reply too.
    assert_eq!(resp.text(), "REJECTED");
    assert_eq!(resp.header("x-body-size"), Some("10"));
    assert_eq!(resp.header("x-order"), Some("a"));
    assert_eq!(wait_log(addr, "a", "422").await, "422");
    // Over h2 as well.
    let mut h2 = H2Client::connect(addr).await;
    let resp = h2.post("/refused2", "abc").await;
    assert_eq!(resp.status, 422, "{resp:?}");
    assert_eq!(resp.header("x-body-size"), Some("3"));
    // No complete request reached the upstream.
    assert!(
        echo.requests().iter().all(|r| r.body.is_empty()),
        "{:?}",
        echo.requests()
    );
}

/// `Expect: 100-continue` and a local reply: the reply comes without `100 Continue`, so the
/// client never has to send the body.
#[tokio::test]
async fn a_local_reply_answers_expect_100_without_continue() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![FilterDef::new("deny", "builtin:local-reply").config(r#"{"status":401}"#)],
    )
    .start()
    .await;
    let mut c = weir_tests::RawClient::connect(weir.listener_addr("main")).await;
    c.write(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    let r = c.read_response().await;
    assert_eq!(r.status, 401, "{}", r.head);
    assert_eq!(echo.requests().len(), 0);
}

/// A local reply with an informational status (1xx) cannot be a final response: the client gets
/// a final answer (not a hang, not a bare 1xx), and the connection stays usable or closes.
#[tokio::test]
async fn a_local_reply_with_a_1xx_status_is_still_a_final_answer() {
    let echo = EchoServer::start().await;
    for status in [100, 101, 103] {
        let weir = one_chain(
            echo.addr,
            vec![conformance(
                "deny",
                &format!(r#"{{"scenario":"local_reply","status":{status}}}"#),
            )],
        )
        .start()
        .await;
        let addr = weir.listener_addr("main");
        let mut c = weir_tests::RawClient::connect(addr).await;
        c.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let r = within(
            &format!("a final answer to a {status} local reply"),
            c.read_response(),
        )
        .await;
        assert!(
            r.status >= 200,
            "local reply {status}: the client got {} as the answer: {}",
            r.status,
            r.head
        );
        let mut h2 = H2Client::connect(addr).await;
        let req = h2.request("GET", "/y").body(body_empty()).unwrap();
        let got = within(
            &format!("h2 answer to a {status} local reply"),
            h2.send(req),
        )
        .await;
        if let Ok(resp) = got {
            assert!(resp.status().as_u16() >= 200, "h2 {status}: {resp:?}");
        }
    }
    assert_eq!(echo.requests().len(), 0);
}

/// A gRPC local reply is trailers-only: HTTP 200 with `grpc-status` / `grpc-message`.
#[tokio::test]
async fn grpc_local_reply_is_trailers_only() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "deny",
            r#"{"scenario":"local_reply","grpc":true}"#,
        )],
    )
    .start()
    .await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("POST", "/weir.test.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(weir_tests::body_full(&b"\0\0\0\0\0"[..]))
        .unwrap();
    let r = collect(c.send(req).await.expect("response")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.header("grpc-status"), Some("7"));
    assert_eq!(r.header("grpc-message"), Some("denied"));
    assert_eq!(r.header("x-denied"), Some("1"));
    assert!(r.body.is_empty());
    assert_eq!(echo.requests().len(), 0);
}

/// A gRPC local reply is trailers-only on the wire too: its HEADERS frame ends the stream.
#[tokio::test]
async fn grpc_local_reply_headers_end_the_stream() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "deny",
            r#"{"scenario":"local_reply","grpc":true}"#,
        )],
    )
    .start()
    .await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("POST", "/weir.test.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(weir_tests::body_full(&b"\0\0\0\0\0"[..]))
        .unwrap();
    let resp = c.send(req).await.expect("response");
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("7")
    );
    assert!(
        hyper::body::Body::is_end_stream(resp.body()),
        "the gRPC local reply's HEADERS frame did not end the stream"
    );
}

#[tokio::test]
async fn close_stream_resets_the_stream() {
    let echo = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("req", "web", Some("req"))
        .listener("resp", "web", Some("resp"))
        .cluster("web", &[echo.addr])
        .chain("req", &["close_req"])
        .chain("resp", &["close_resp"])
        .filter(conformance(
            "close_req",
            r#"{"scenario":"close_stream","side":"request"}"#,
        ))
        .filter(conformance(
            "close_resp",
            r#"{"scenario":"close_stream","side":"response"}"#,
        ))
        .start()
        .await;
    for listener in ["req", "resp"] {
        let addr = weir.listener_addr(listener);
        // HTTP/1.1: the connection closes without a response.
        let mut c = H1Client::connect(addr).await;
        let req = c.request("GET", "/r").body(body_empty()).unwrap();
        let got = c.send(req).await;
        assert!(got.is_err(), "{listener}: h1 got a response: {got:?}");
        // HTTP/2: the stream is reset; the connection keeps serving other streams.
        let mut h2 = H2Client::connect(addr).await;
        let req = h2.request("GET", "/r2").body(body_empty()).unwrap();
        let got = h2.send(req).await;
        assert!(got.is_err(), "{listener}: h2 got a response: {got:?}");
    }
    // Only the response-side resets reached the upstream.
    let reqs = echo.wait_requests(2).await;
    assert!(reqs.iter().all(|r| r.uri.path().starts_with("/r")));
    assert_eq!(echo.requests().len(), 2);
}
