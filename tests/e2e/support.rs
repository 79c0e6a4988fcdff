//! Self-tests of the support library (no weir involved): the mock upstreams behave as the other
//! tests assume when spoken to directly.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use weir_tests::client::body_channel;
use weir_tests::{
    EchoServer, Fault, FaultyServer, H1Client, H2Client, RawClient, eventually, eventually_for,
    within,
};

#[tokio::test]
async fn echo_h1_and_h2_direct() {
    let up = EchoServer::start().await;
    let mut h1 = H1Client::connect(up.addr).await;
    let r = h1.post("/a?b=c", "hi").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hi");
    assert_eq!(r.header("x-upstream"), Some(up.addr.to_string().as_str()));
    let mut h2 = H2Client::connect(up.addr).await;
    let r = h2.post("/x", "yo").await;
    assert_eq!(r.body, "yo");
    let reqs = up.wait_requests(2).await;
    assert_eq!(reqs[0].uri, "/a?b=c");
    assert_eq!(reqs[1].version, http::Version::HTTP_2);
    assert_eq!(up.accepts(), 2);
}

#[tokio::test]
async fn echo_grpc_trailers_and_streaming_direct() {
    let up = EchoServer::start_h2().await;
    let mut h2 = H2Client::connect(up.addr).await;
    let req = h2
        .request("POST", "/svc/M")
        .header("content-type", "application/grpc")
        .body(weir_tests::body_full("msg"))
        .unwrap();
    let r = weir_tests::collect(h2.send(req).await.unwrap()).await;
    assert_eq!(r.trailers.unwrap()["grpc-status"], "0");

    let (mut tx, body) = body_channel();
    let req = h2.request("POST", "/stream").body(body).unwrap();
    tx.send_data(Bytes::from_static(b"one")).await.unwrap();
    let resp = h2.send(req).await.unwrap();
    let mut body = resp.into_body();
    let f = within("first frame", body.frame()).await.unwrap().unwrap();
    assert_eq!(f.into_data().unwrap(), "one");
    drop(tx);
}

#[tokio::test]
async fn faulty_servers_direct() {
    let up = FaultyServer::start(Fault::ResetBeforeResponse).await;
    let mut c = RawClient::connect(up.addr).await;
    c.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(c.wait_closed(Duration::from_secs(5)).await);
    assert_eq!(up.wait_heads(1).await.len(), 1);

    let up = FaultyServer::start(Fault::Slow(Duration::from_millis(10))).await;
    let (_c, r) =
        weir_tests::client::raw_request(up.addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
}

#[tokio::test]
async fn upgrade_echo_direct() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = EchoServer::start().await;
    let mut c = RawClient::connect(up.addr).await;
    c.write(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let r = c.read_response().await;
    assert_eq!(r.status, 101);
    c.stream().write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    within("echo", c.stream().read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
#[should_panic(expected = "error: listeners[0]")]
async fn failed_start_panics_with_weir_stderr() {
    // weir exits 1 on an invalid manifest: Weir::start must say so and show weir's stderr.
    let m = weir_tests::Manifest::new(&[weir_tests::closed_port()])
        .yaml()
        .replace(
            "address: 127.0.0.1:0\n    default_cluster",
            "adress: 127.0.0.1:0\n    default_cluster",
        );
    weir_tests::Weir::start(&m).await;
}

#[tokio::test]
async fn eventually_returns_what_the_probe_found() {
    let mut looks = 0;
    let found = eventually("the third look", async || {
        looks += 1;
        if looks == 3 { Ok("found") } else { Err(looks) }
    })
    .await;
    assert_eq!((found, looks), ("found", 3));
}

#[tokio::test]
#[should_panic(expected = "waiting for: a value that never comes; last seen: 7")]
async fn eventually_panics_with_what_and_the_last_value_seen() {
    eventually_for(
        Duration::from_millis(100),
        "a value that never comes",
        async || Err::<(), _>(7),
    )
    .await;
}
