//! HTTP/1.1 `Upgrade: websocket` tunnelling: the 101 comes back and bytes flow both ways.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::{EchoServer, Manifest, RawClient, within};

use crate::pattern;

const UPGRADE_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: weir.test\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = RawClient::connect(weir.listener_addr("main")).await;
    c.write(UPGRADE_REQUEST).await.unwrap();
    let r = c.read_response().await;
    assert_eq!(r.status, 101, "head: {}", r.head);
    assert_eq!(
        r.header("upgrade").map(str::to_ascii_lowercase).as_deref(),
        Some("websocket")
    );
    assert!(
        c.buffered().is_empty(),
        "bytes after the 101 before any were sent"
    );

    let seen = &up.wait_requests(1).await[0];
    assert_eq!(
        seen.header("upgrade"),
        Some("websocket"),
        "Upgrade must be forwarded on upgrades"
    );
    assert!(
        seen.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "Connection: upgrade must be forwarded, got {:?}",
        seen.header("connection")
    );
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );

    // Small messages, one at a time: each echo must arrive before the next is sent.
    for i in 0..5 {
        let msg = format!("message {i}");
        c.stream().write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        within("echo over the tunnel", c.stream().read_exact(&mut buf))
            .await
            .unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    // A bigger payload, written and read concurrently.
    let data = pattern(256 * 1024);
    let (mut r, mut w) = c.stream().split();
    let write = async {
        w.write_all(&data).await.unwrap();
    };
    let read = async {
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), got) = within("256 KiB echo", async { tokio::join!(write, read) }).await;
    assert!(got == data, "tunnelled bytes differ");
}

#[tokio::test]
async fn tunnel_closes_when_the_client_closes() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = RawClient::connect(weir.listener_addr("main")).await;
    c.write(UPGRADE_REQUEST).await.unwrap();
    assert_eq!(c.read_response().await.status, 101);
    c.stream().shutdown().await.unwrap();
    // The upstream echo sees EOF, closes its side; weir must propagate that close to us.
    assert!(
        c.wait_closed(std::time::Duration::from_secs(5)).await,
        "tunnel still open 5s after the client half-closed"
    );
}

#[tokio::test]
async fn refused_upgrade_passes_through_and_the_connection_stays_usable() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = RawClient::connect(weir.listener_addr("main")).await;
    c.write(
        b"GET /no-upgrade/status/426 HTTP/1.1\r\nHost: weir.test\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let r = c.read_response().await;
    assert_eq!(r.status, 426, "head: {}", r.head);
    // No tunnel was set up: the same connection carries a normal request next.
    c.write(b"GET /after HTTP/1.1\r\nHost: weir.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.read_response().await.status, 200);
}

#[tokio::test]
async fn upgraded_upstream_connection_is_never_pooled() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let addr = weir.listener_addr("main");
    let mut ws = RawClient::connect(addr).await;
    ws.write(UPGRADE_REQUEST).await.unwrap();
    assert_eq!(ws.read_response().await.status, 101);
    // While the tunnel is open, a plain request needs (and gets) its own upstream connection.
    let mut c = weir_tests::H1Client::connect(addr).await;
    let r = c.get("/plain").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.accepts(), 2);
    ws.stream().write_all(b"still tunnelled").await.unwrap();
    let mut buf = [0u8; 15];
    within("tunnel echo", ws.stream().read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"still tunnelled");
}

#[tokio::test]
async fn websocket_over_an_http2_cluster_uses_its_own_http1_connection() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).protocol("http2").start().await;
    let mut c = RawClient::connect(weir.listener_addr("main")).await;
    c.write(UPGRADE_REQUEST).await.unwrap();
    assert_eq!(c.read_response().await.status, 101);
    assert_eq!(up.wait_requests(1).await[0].version, http::Version::HTTP_11);
    c.stream().write_all(b"over h1").await.unwrap();
    let mut buf = [0u8; 7];
    within("tunnel echo", c.stream().read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"over h1");
}
