//! Upstream connection pooling: keep-alive reuse per worker, counted as upstream accepts.

use weir_tests::{EchoServer, H1Client, H2Client, Manifest};

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).workers(Some(1)).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for i in 0..20 {
        let r = c.get(&format!("/r/{i}")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.wait_requests(20).await.len(), 20);
    assert_eq!(
        up.accepts(),
        1,
        "20 sequential requests through 1 worker opened {} upstream connections",
        up.accepts()
    );
}

#[tokio::test]
async fn pooled_connection_is_shared_across_client_connections() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).workers(Some(1)).start().await;
    for i in 0..5 {
        let mut c = H1Client::connect(weir.listener_addr("main")).await;
        assert_eq!(c.get(&format!("/c/{i}")).await.status, 200);
    }
    for i in 0..5 {
        let mut c = H2Client::connect(weir.listener_addr("main")).await;
        assert_eq!(c.get(&format!("/h2/{i}")).await.status, 200);
    }
    up.wait_requests(10).await;
    assert_eq!(
        up.accepts(),
        1,
        "one worker, sequential requests: expected 1 upstream connection"
    );
}

#[tokio::test]
async fn http2_cluster_reuses_one_connection() {
    let up = EchoServer::start_h2().await;
    let weir = Manifest::new(&[up.addr])
        .protocol("http2")
        .workers(Some(1))
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for i in 0..10 {
        assert_eq!(c.get(&format!("/r/{i}")).await.status, 200);
    }
    up.wait_requests(10).await;
    assert_eq!(up.accepts(), 1);
}

#[tokio::test]
async fn upstream_close_is_survived_by_opening_a_new_connection() {
    // The upstream answers and closes (Connection: close); the next request must not fail on the
    // dead pooled connection.
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).workers(Some(1)).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for i in 0..5 {
        let req = c
            .request("GET", &format!("/close/{i}"))
            .body(weir_tests::body_empty())
            .unwrap();
        let r = weir_tests::collect(c.send(req).await.unwrap()).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.wait_requests(5).await.len(), 5);
}

#[tokio::test]
async fn idle_upstream_connection_is_closed_after_pool_idle_timeout() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr])
        .pool("idle_timeout", "300ms")
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_eq!(c.get("/once").await.status, 200);
    assert_eq!(up.accepts(), 1);
    // No further traffic: the idle pooled connection must be closed by weir, not kept forever.
    up.wait_closes(1).await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    for h2 in [false, true] {
        let up = EchoServer::start().await;
        let weir = Manifest::new(&[up.addr]).start().await;
        let addr = weir.listener_addr("main");
        let pending = tokio::spawn(async move {
            if h2 {
                let mut c = H2Client::connect(addr).await;
                let _ = c.get("/hold").await;
            } else {
                let mut c = H1Client::connect(addr).await;
                let _ = c.get("/hold").await;
            }
        });
        up.wait_requests(1).await;
        assert_eq!(up.in_flight(), 1);
        // The client goes away (its task and connection are dropped) while the upstream holds.
        pending.abort();
        let _ = pending.await;
        up.wait_in_flight(0).await;
        assert_eq!(up.requests().len(), 1, "h2={h2}");
    }
}

#[tokio::test]
async fn pooled_connection_closed_by_the_upstream_is_not_reused() {
    for protocol in ["http1", "http2"] {
        let up = EchoServer::start().await;
        let weir = Manifest::new(&[up.addr]).protocol(protocol).start().await;
        let mut c = H1Client::connect(weir.listener_addr("main")).await;
        assert_eq!(c.get("/before").await.status, 200);
        // The upstream restarts its connections while weir holds one idle in its pool.
        up.drop_connections().await;
        let r = c.get("/after").await;
        assert_eq!(
            r.status,
            200,
            "cluster {protocol}: {:?} {:?}",
            r.header("x-weir-error"),
            r.text()
        );
        assert_eq!(up.accepts(), 2, "cluster {protocol}");
    }
}

#[tokio::test]
async fn client_abort_mid_body_never_desyncs_a_pooled_connection() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).workers(Some(1)).start().await;
    let addr = weir.listener_addr("main");
    // Warm the pool so the aborted request rides a pooled connection.
    let mut c = H1Client::connect(addr).await;
    assert_eq!(c.get("/warm").await.status, 200);
    // A request announcing 100 body bytes, sending 10, then the client vanishes.
    let mut raw = weir_tests::RawClient::connect(addr).await;
    raw.write(b"POST /partial HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // Once the upstream handler is running, drop the client.
    up.wait_in_flight(1).await;
    drop(raw);
    // Weir must abandon the half-sent upstream request (not leave it waiting for 90 bytes)...
    up.wait_in_flight(0).await;
    // ...and the next request must arrive as a request of its own, not as the missing body.
    for i in 0..3 {
        let r = c.post(&format!("/next/{i}"), "fresh").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "fresh".to_string()));
    }
    let seen: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert!(
        !seen.contains(&"/partial".to_string()),
        "the aborted request completed upstream: {seen:?}"
    );
    assert!(
        seen.ends_with(&["/next/0".into(), "/next/1".into(), "/next/2".into()]),
        "{seen:?}"
    );
}

#[tokio::test]
async fn client_abort_mid_response_never_desyncs_a_pooled_connection() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).workers(Some(1)).start().await;
    let addr = weir.listener_addr("main");
    // A 4 MiB response; the client reads its head and a little, then goes away.
    let mut c = H1Client::connect(addr).await;
    let req = c
        .request("POST", "/big-echo")
        .body(weir_tests::body_full(vec![b'x'; 4 << 20]))
        .unwrap();
    let resp = c.send(req).await.expect("response head");
    assert_eq!(resp.status(), 200);
    drop(resp);
    drop(c);
    // Requests after it get their own, complete responses.
    let mut c = H1Client::connect(addr).await;
    for i in 0..3 {
        let r = c.post(&format!("/after/{i}"), format!("fresh {i}")).await;
        assert_eq!((r.status.as_u16(), r.text()), (200, format!("fresh {i}")));
    }
}

#[tokio::test]
async fn bytes_past_a_response_never_answer_the_next_request() {
    use weir_tests::{Fault, FaultyServer};
    // The upstream's first reply carries a whole extra response after its declared length; a
    // pooled connection must not serve those bytes to the next client (response desync).
    static SCRIPT: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
    ];
    for h2_client in [false, true] {
        let up = FaultyServer::start(Fault::Script(SCRIPT)).await;
        let weir = Manifest::new(&[up.addr]).workers(Some(1)).start().await;
        let addr = weir.listener_addr("main");
        let first = H1Client::connect(addr).await.get("/1").await;
        assert_eq!(first.text(), "first");
        let second = if h2_client {
            H2Client::connect(addr).await.get("/2").await
        } else {
            H1Client::connect(addr).await.get("/2").await
        };
        assert_ne!(
            second.text(),
            "smuggled",
            "the next client got the upstream's extra response"
        );
    }
}

#[tokio::test]
async fn non_idempotent_request_that_reached_the_upstream_is_never_retried() {
    use weir_tests::{Fault, FaultyServer};
    // On a pooled connection the upstream reads the second request, then closes without an
    // answer. It may have acted on it, so a POST or PATCH must not be sent again (RFC 9110
    // §9.2.2); a 502 is the honest answer.
    static SCRIPT: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nwarm", b""];
    let mut wrong = Vec::new();
    for method in ["POST", "PATCH"] {
        let up = FaultyServer::start(Fault::Script(SCRIPT)).await;
        let weir = Manifest::new(&[up.addr]).workers(Some(1)).start().await;
        let mut c = H1Client::connect(weir.listener_addr("main")).await;
        assert_eq!(c.get("/warm").await.text(), "warm");
        let req = c
            .request(method, "/resource")
            .body(weir_tests::body_empty())
            .unwrap();
        let r = weir_tests::collect(c.send(req).await.expect("a response")).await;
        let sent = up.heads().iter().filter(|h| h.starts_with(method)).count();
        if sent != 1 || r.status != 502 {
            wrong.push(format!(
                "{method}: sent upstream {sent} times, answered {}",
                r.status
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "non-idempotent requests retried: {wrong:?}"
    );
}
