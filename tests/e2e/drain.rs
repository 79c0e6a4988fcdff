//! Graceful drain on SIGTERM/SIGINT: in-flight requests finish, new connections are refused,
//! weir exits 0; the drain timeout bounds how long it waits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use weir_tests::{EchoServer, H1Client, H2Client, Manifest, eventually, within};

/// Waits (bounded) until connecting to `addr` is refused, i.e. the listener socket is closed.
/// Polls: there is no event to wait on from outside the process.
async fn wait_refused(addr: SocketAddr) {
    eventually(
        &format!("connections to {addr} refused after SIGTERM"),
        async || match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr))
            .await
        {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Ok(Err(e)) => Err(format!("connect failed otherwise: {e}")),
            Ok(Ok(_)) => Err("connection accepted".to_string()),
            Err(_) => Err("connect pending after 500ms".to_string()),
        },
    )
    .await;
}

#[tokio::test]
async fn sigterm_finishes_in_flight_request_then_exits_zero() {
    let up = EchoServer::start().await;
    let mut weir = Manifest::new(&[up.addr]).drain_timeout("20s").start().await;
    let addr = weir.listener_addr("main");
    let held = tokio::spawn(async move {
        let mut c = H1Client::connect(addr).await;
        c.post("/hold", "in flight during drain").await
    });
    up.wait_requests(1).await;
    weir.sigterm();
    wait_refused(addr).await;
    up.release(1);
    let r = within("the in-flight response", held).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "in flight during drain");
    // Well under drain_timeout (20s): the drain ends when the last request does.
    let st = weir.wait_exit(Duration::from_secs(10)).await;
    assert!(st.success(), "weir exited with {st} after a graceful drain");
}

#[tokio::test]
async fn sigterm_drains_h2_streams_too() {
    let up = EchoServer::start().await;
    let mut weir = Manifest::new(&[up.addr]).drain_timeout("20s").start().await;
    let addr = weir.listener_addr("main");
    let c = H2Client::connect(addr).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = c.clone();
        held.push(tokio::spawn(async move {
            c.post("/hold", format!("stream {i}")).await
        }));
    }
    up.wait_requests(3).await;
    weir.sigint();
    wait_refused(addr).await;
    up.release(3);
    for (i, h) in held.into_iter().enumerate() {
        let r = within("held h2 stream", h).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("stream {i}"));
    }
    let st = weir.wait_exit(Duration::from_secs(10)).await;
    assert!(st.success(), "weir exited with {st} after SIGINT");
}

#[tokio::test]
async fn sigterm_when_idle_exits_zero_promptly() {
    let up = EchoServer::start().await;
    let mut weir = Manifest::new(&[up.addr]).start().await;
    // An idle keep-alive client must not hold the drain open.
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_eq!(c.get("/").await.status, 200);
    weir.sigterm();
    let st = weir.wait_exit(Duration::from_secs(10)).await;
    assert!(st.success(), "weir exited with {st}");
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait() {
    let up = EchoServer::start().await;
    let mut weir = Manifest::new(&[up.addr]).drain_timeout("1s").start().await;
    let addr = weir.listener_addr("main");
    let held = tokio::spawn(async move {
        let mut c = H1Client::connect(addr).await;
        let req = c
            .request("GET", "/hold")
            .body(weir_tests::body_empty())
            .unwrap();
        c.send(req).await.map(|_| ())
    });
    up.wait_requests(1).await;
    let t0 = Instant::now();
    weir.sigterm();
    // Never released: weir must give up at drain_timeout (1s), not hang.
    let st = weir.wait_exit(Duration::from_secs(10)).await;
    eprintln!(
        "exited {:?} after SIGTERM with a 1s drain_timeout: {st}",
        t0.elapsed()
    );
    assert!(
        st.success(),
        "weir exited with {st} after the drain timeout"
    );
    // The stuck client gets an error (connection closed), not a hang.
    let _ = within("client after forced close", held).await;
    up.release(1);
}

#[tokio::test]
async fn sigterm_right_after_ready_is_a_graceful_exit() {
    // The signal handlers must be in place before `weir: ready` is printed: a supervisor may
    // signal as soon as it reads that line.
    let up = EchoServer::start().await;
    for round in 0..5 {
        let mut weir = Manifest::new(&[up.addr]).start().await;
        weir.sigterm();
        let st = weir.wait_exit(Duration::from_secs(10)).await;
        assert!(
            st.success(),
            "round {round}: SIGTERM just after ready gave {st}"
        );
    }
}

#[tokio::test]
async fn request_on_an_idle_connection_during_drain_is_answered_or_closed() {
    let up = EchoServer::start().await;
    let mut weir = Manifest::new(&[up.addr]).drain_timeout("20s").start().await;
    let addr = weir.listener_addr("main");
    // An idle keep-alive connection, opened before the drain.
    let mut idle = weir_tests::RawClient::connect(addr).await;
    idle.write(b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(idle.read_response().await.status, 200);
    // A held request keeps the drain going.
    let held = tokio::spawn(async move { H1Client::connect(addr).await.get("/hold").await });
    up.wait_requests(2).await;
    weir.sigterm();
    wait_refused(addr).await;
    // A new request on the idle connection: served, or the connection is closed, never a hang.
    let _ = idle.write(b"GET /during HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // (None: closed by the drain, which is fine.)
    if let Some(r) = idle.try_read_response().await {
        assert_eq!(r.status, 200, "head {}", r.head);
    }
    up.release(1);
    assert_eq!(within("held", held).await.unwrap().status, 200);
    assert!(weir.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn admin_ready_turns_503_while_draining() {
    let up = EchoServer::start().await;
    let mut weir = Manifest::new(&[up.addr]).drain_timeout("20s").start().await;
    let addr = weir.listener_addr("main");
    let mut admin = H1Client::connect(weir.admin_addr()).await;
    assert_eq!(admin.get("/ready").await.status, 200);
    let held = tokio::spawn(async move { H1Client::connect(addr).await.get("/hold").await });
    up.wait_requests(1).await;
    weir.sigterm();
    wait_refused(addr).await;
    // The drain is held open by the in-flight request; the admin says "not ready".
    let mut admin = H1Client::connect(weir.admin_addr()).await;
    assert_eq!(admin.get("/ready").await.status, 503);
    up.release(1);
    assert_eq!(within("held", held).await.unwrap().status, 200);
    assert!(weir.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn open_websocket_tunnel_keeps_working_until_the_drain_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = EchoServer::start().await;
    let mut weir = Manifest::new(&[up.addr]).drain_timeout("3s").start().await;
    let mut ws = weir_tests::RawClient::connect(weir.listener_addr("main")).await;
    ws.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(ws.read_response().await.status, 101);
    let t0 = Instant::now();
    weir.sigterm();
    // In flight like any request: the tunnel still carries bytes during the drain...
    let echoed = async {
        ws.stream().write_all(b"during drain").await?;
        let mut buf = [0u8; 12];
        ws.stream().read_exact(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    let echoed = within("echo during the drain", echoed).await;
    // ...and the drain timeout then ends it, with a clean exit.
    let st = weir.wait_exit(Duration::from_secs(10)).await;
    eprintln!(
        "exited {:?} after SIGTERM with an open tunnel (drain_timeout 3s)",
        t0.elapsed()
    );
    assert!(
        matches!(&echoed, Ok(b) if b == b"during drain"),
        "the tunnel was cut at SIGTERM instead of at the drain timeout: {echoed:?}"
    );
    assert!(st.success(), "{st}");
    assert!(
        ws.wait_closed(Duration::from_secs(5)).await,
        "tunnel still open after weir exited"
    );
}

#[tokio::test]
async fn streaming_exchange_in_flight_completes_during_drain() {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    for h2 in [false, true] {
        let up = EchoServer::start().await;
        let mut weir = Manifest::new(&[up.addr]).drain_timeout("20s").start().await;
        let addr = weir.listener_addr("main");
        let (mut tx, body) = weir_tests::client::body_channel();
        tx.send_data(Bytes::from_static(b"before;")).await.unwrap();
        // The exchange runs in its own task; the response is read once the body is complete, so
        // this needs no full duplex (that is `proxy_h1`/`proxy_h2`'s business).
        let exchange = tokio::spawn(async move {
            let resp = if h2 {
                let mut c = H2Client::connect(addr).await;
                let req = c.request("POST", "/stream").body(body).unwrap();
                c.send(req).await
            } else {
                let mut c = H1Client::connect(addr).await;
                let req = c.request("POST", "/stream").body(body).unwrap();
                c.send(req).await
            };
            match resp {
                Ok(r) => r
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        });
        up.wait_requests(1).await;
        weir.sigterm();
        wait_refused(addr).await;
        // The request body is still streaming up: the exchange must still finish.
        tx.send_data(Bytes::from_static(b"during drain"))
            .await
            .unwrap();
        drop(tx);
        let got = within("streamed exchange", exchange).await.unwrap();
        assert!(
            matches!(&got, Ok(b) if b == "before;during drain"),
            "h2={h2}: the streaming exchange was cut by the drain: {got:?}"
        );
        let st = weir.wait_exit(Duration::from_secs(10)).await;
        assert!(st.success(), "h2={h2}: {st}");
    }
}
