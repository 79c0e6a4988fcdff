//! Body rewrites both ways (whole and streamed), rewritten bodies framed by their new length, the
//! per-stream buffer limit (413), and bodies streaming through filters that do not pause on them.

use weir_tests::{EchoServer, H1Client, H2Client, body_empty, collect, within};

use super::common::{conformance, one_chain, trace};

#[tokio::test]
async fn body_rewrite_both_directions() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "body",
            r#"{"scenario":"body","body_op":"prepend_append"}"#,
        )],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let resp = c.post("/b", "hello").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // The request body went up rewritten; the echoed response body came back upper-cased.
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(&r.body[..], b"prepend.hello.append");
    assert_eq!(resp.text(), "PREPEND.HELLO.APPEND");

    // A streamed request body in several chunks is offered cumulatively and rewritten once.
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = c.request("POST", "/b2").body(body).unwrap();
    let send = tokio::spawn(async move {
        for part in ["he", "ll", "o!"] {
            tx.send_data(bytes::Bytes::from(part)).await.unwrap();
        }
    });
    let resp = collect(c.send(req).await.unwrap()).await;
    send.await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        &echo.wait_requests(2).await[1].body[..],
        b"prepend.hello!.append"
    );
    assert_eq!(resp.text(), "PREPEND.HELLO!.APPEND");

    // Over h2 as well.
    let mut h2 = H2Client::connect(addr).await;
    let resp = h2.post("/b3", "abc").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        &echo.wait_requests(3).await[2].body[..],
        b"prepend.abc.append"
    );
    assert_eq!(resp.text(), "PREPEND.ABC.APPEND");
}

/// A body filter that forgets to drop `content-length` (the proxy-wasm SDK leaves it to the
/// filter) must not make weir frame the rewritten body with the stale length: the upstream would
/// read a truncated body and take the rest as the next request on a pooled connection.
#[tokio::test]
async fn a_request_body_rewrite_keeping_content_length_is_framed_by_its_new_length() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "body",
            r#"{"scenario":"body","body_op":"prepend_append","keep_content_length":true}"#,
        )],
    )
    .start()
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let resp = c.post("/k", "hello").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "prepend.hello.append",
        "the upstream must get the whole rewritten body (sent content-length: {:?})",
        r.header("content-length")
    );
    // The pooled upstream connection is still in sync for the next request.
    let resp = c.get("/next").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let reqs = echo.wait_requests(2).await;
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].uri.path(), "/next");
}

/// The same on the response side: the client must get the rewritten body, framed by its length.
#[tokio::test]
async fn a_response_body_rewrite_keeping_content_length_is_framed_by_its_new_length() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "body",
            r#"{"scenario":"body","keep_content_length":true,"response_op":"append"}"#,
        )],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let req = c.request("GET", "/status/200").body(body_empty()).unwrap();
    let resp = c.send(req).await.expect("response head");
    let upstream_len = resp
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_string());
    let body = within(
        "rewritten response body",
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .map(|b| b.to_bytes());
    let body = body.unwrap_or_else(|e| {
        panic!("the rewritten response body failed ({e:?}); content-length sent: {upstream_len:?}")
    });
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.ends_with(".append"),
        "client got {text:?} with content-length {upstream_len:?}"
    );
}

/// A filter that buffers a request body past the per-stream limit (1 MiB) gets a 413, as Envoy
/// answers a request buffer overflow; the upstream gets no truncated body.
#[tokio::test]
async fn a_request_body_buffered_past_the_limit_is_413() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "body",
            r#"{"scenario":"body","body_op":"append"}"#,
        )],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = c.request("POST", "/huge").body(body).unwrap();
    let feed = tokio::spawn(async move {
        for _ in 0..48 {
            if tx
                .send_data(bytes::Bytes::from(vec![b'x'; 64 * 1024]))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let resp = collect(c.send(req).await.expect("a response, not a reset")).await;
    feed.abort();
    assert_eq!(resp.status, 413, "{resp:?}");
    // Whatever reached the upstream, it was not presented as a complete request.
    assert!(
        echo.requests().iter().all(|r| r.body.is_empty()),
        "upstream got a (truncated) body"
    );
}

/// Filters that do not pause on bodies keep them streaming: a full-duplex exchange works through
/// a chain (the first chunk's echo arrives before the second chunk is sent), and 1 MiB bodies
/// arrive intact both ways.
#[tokio::test]
async fn bodies_stream_through_non_pausing_filters() {
    use http_body_util::BodyExt;
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("a", "a"),
            conformance("hdr", r#"{"scenario":"headers"}"#),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut h2 = H2Client::connect(addr).await;
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = h2.request("POST", "/stream").body(body).unwrap();
    tx.send_data(bytes::Bytes::from_static(b"ping-1"))
        .await
        .unwrap();
    let resp = h2.send(req).await.expect("response head while uploading");
    let mut body = resp.into_body();
    let first = within("the echo of the first chunk", body.frame())
        .await
        .expect("a frame")
        .expect("no error");
    assert_eq!(first.data_ref().map(|d| &d[..]), Some(&b"ping-1"[..]));
    tx.send_data(bytes::Bytes::from_static(b"ping-2"))
        .await
        .unwrap();
    drop(tx);
    let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"ping-2");

    let big = crate::pattern(1 << 20);
    let mut c = H1Client::connect(addr).await;
    let resp = c.post("/big", big.clone()).await;
    assert_eq!(resp.status, 200);
    assert!(resp.body == big, "1 MiB echoed through the chain differs");
    let resp = h2.post("/big2", big.clone()).await;
    assert!(resp.body == big, "1 MiB over h2 differs");
}
