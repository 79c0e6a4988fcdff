//! gRPC-style exchanges over h2 end to end: h2c downstream → cluster `protocol: http2` → h2c
//! upstream, with request and response trailers carried through.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use weir_tests::client::body_channel;
use weir_tests::{EchoServer, H2Client, Manifest, body_full, collect};

/// A gRPC length-prefixed message (uncompressed).
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

#[tokio::test]
async fn grpc_unary_call_gets_trailers() {
    let up = EchoServer::start_h2().await;
    let weir = Manifest::new(&[up.addr]).protocol("http2").start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let msg = grpc_frame(b"hello grpc");
    let req = c
        .request("POST", "/weir.test.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body_full(msg.clone()))
        .unwrap();
    let r = collect(c.send(req).await.expect("grpc call")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.body, msg);
    let t = r.trailers.expect("response trailers reached the client");
    assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    assert_eq!(
        t.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"OK"[..])
    );

    let seen = &up.wait_requests(1).await[0];
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.uri.path(), "/weir.test.Echo/Say");
    assert_eq!(
        seen.header("te"),
        Some("trailers"),
        "`te: trailers` must reach a gRPC upstream"
    );
    assert_eq!(seen.header("content-type"), Some("application/grpc"));
}

#[tokio::test]
async fn request_trailers_reach_the_upstream_and_come_back() {
    let up = EchoServer::start_h2().await;
    let weir = Manifest::new(&[up.addr]).protocol("http2").start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let (mut tx, body) = body_channel();
    let req = c.request("POST", "/trailers").body(body).unwrap();
    let send = tokio::spawn(async move {
        tx.send_data(Bytes::from_static(b"payload")).await.unwrap();
        let mut t = HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_static("abc123"));
        tx.send_trailers(t).await.unwrap();
    });
    let r = collect(c.send(req).await.expect("response")).await;
    send.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "payload");
    let seen = &up.wait_requests(1).await[0];
    let t = seen
        .trailers
        .as_ref()
        .expect("request trailers reached the upstream");
    assert_eq!(t["x-checksum"], "abc123");
    let t = r.trailers.expect("echoed trailers reached the client");
    assert_eq!(t["x-checksum"], "abc123");
}

#[tokio::test]
async fn many_grpc_calls_multiplexed() {
    let up = EchoServer::start_h2().await;
    let weir = Manifest::new(&[up.addr]).protocol("http2").start().await;
    let c = H2Client::connect(weir.listener_addr("main")).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let msg = grpc_frame(format!("call {i}").as_bytes());
            let req = c
                .request("POST", "/weir.test.Echo/Say")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(body_full(msg.clone()))
                .unwrap();
            let r = collect(c.send(req).await.expect("grpc call")).await;
            assert_eq!(r.body, msg);
            assert_eq!(r.trailers.expect("trailers")["grpc-status"], "0");
        }));
    }
    for t in tasks {
        weir_tests::within("grpc call", t).await.unwrap();
    }
}

#[tokio::test]
async fn trailers_only_grpc_error_reaches_the_client() {
    let up = EchoServer::start_h2().await;
    let weir = Manifest::new(&[up.addr]).protocol("http2").start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("POST", "/weir.test.Echo/Fail")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body_full(grpc_frame(b"x")))
        .unwrap();
    let r = collect(c.send(req).await.expect("grpc call")).await;
    assert_eq!(r.status, 200);
    // Trailers-only: grpc-status arrives in the (only) header block.
    let status = r.header("grpc-status").map(str::to_string).or_else(|| {
        r.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string())
    });
    assert_eq!(
        status.as_deref(),
        Some("5"),
        "headers {:?} trailers {:?}",
        r.headers,
        r.trailers
    );
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn trailers_pass_through_an_http1_cluster() {
    // Request trailers go up as a chunked trailer section; the upstream's chunked response
    // trailers come back as h2 trailers.
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).protocol("http1").start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let (mut tx, body) = body_channel();
    let req = c
        .request("POST", "/trailers")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let send = tokio::spawn(async move {
        tx.send_data(Bytes::from_static(b"payload")).await.unwrap();
        let mut t = HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_static("abc123"));
        tx.send_trailers(t).await.unwrap();
    });
    let r = collect(c.send(req).await.expect("response")).await;
    send.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "payload");
    let seen = &up.wait_requests(1).await[0];
    assert_eq!(seen.version, http::Version::HTTP_11);
    let t = seen
        .trailers
        .as_ref()
        .expect("request trailers reached the HTTP/1.1 upstream");
    assert_eq!(t["x-checksum"], "abc123");
    let t = r
        .trailers
        .expect("response trailers came back from the HTTP/1.1 upstream");
    assert_eq!(t["x-checksum"], "abc123");
}
