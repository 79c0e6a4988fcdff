//! Upstream failures become weir errors: a status, `x-weir-error: <reason>` and a body
//! `weir: <reason>…`.

use std::time::{Duration, Instant};

use weir_tests::{
    BlackholeListener, EchoServer, Fault, FaultyServer, H1Client, H2Client, Manifest, closed_port,
    within,
};

use crate::assert_error;

#[tokio::test]
async fn refused_connect_is_503_connect_failure() {
    let weir = Manifest::new(&[closed_port()]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_error(&c.get("/").await, 503, "upstream_connect_failure");
    // The client connection survives an upstream failure.
    assert_error(&c.get("/again").await, 503, "upstream_connect_failure");
}

#[tokio::test]
async fn refused_connect_over_h2_is_503() {
    let weir = Manifest::new(&[closed_port()]).start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    assert_error(&c.get("/").await, 503, "upstream_connect_failure");
}

#[tokio::test]
async fn hanging_connect_is_503_connect_timeout() {
    let Some(hole) = BlackholeListener::start().await else {
        eprintln!("SKIPPED: could not make a loopback connect hang on this kernel");
        return;
    };
    let weir = Manifest::new(&[hole.addr])
        .connect_timeout("300ms")
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let t0 = Instant::now();
    let r = c.get("/").await;
    assert_error(&r, 503, "upstream_connect_timeout");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?} for a 300ms connect timeout",
        t0.elapsed()
    );
}

#[tokio::test]
async fn silent_upstream_is_504_response_timeout() {
    let up = FaultyServer::start(Fault::Silent).await;
    let weir = Manifest::new(&[up.addr])
        .response_timeout("300ms")
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let t0 = Instant::now();
    let r = c.get("/").await;
    assert_error(&r, 504, "upstream_response_timeout");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?} for a 300ms response timeout",
        t0.elapsed()
    );
    assert_eq!(
        up.wait_heads(1).await.len(),
        1,
        "the request reached the upstream"
    );
}

#[tokio::test]
async fn slow_upstream_within_the_timeout_is_fine() {
    let up = FaultyServer::start(Fault::Slow(Duration::from_millis(100))).await;
    let weir = Manifest::new(&[up.addr])
        .response_timeout("5s")
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let r = c.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "slow");
}

#[tokio::test]
async fn garbage_from_upstream_is_502_protocol_error() {
    let up = FaultyServer::start(Fault::Garbage).await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_error(&c.get("/").await, 502, "upstream_protocol_error");
}

#[tokio::test]
async fn reset_before_response_is_502_upstream_reset() {
    let up = FaultyServer::start(Fault::ResetBeforeResponse).await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_error(&c.get("/").await, 502, "upstream_reset");
}

#[tokio::test]
async fn close_before_response_is_502() {
    let up = FaultyServer::start(Fault::CloseBeforeResponse).await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let r = c.get("/").await;
    assert_eq!(r.status, 502, "body {:?}", r.text());
    let reason = r.header("x-weir-error").unwrap_or_default();
    assert!(
        reason == "upstream_reset" || reason == "upstream_protocol_error",
        "x-weir-error {reason:?}"
    );
}

#[tokio::test]
async fn proxy_keeps_serving_after_upstream_errors() {
    let bad = FaultyServer::start(Fault::Garbage).await;
    let good = EchoServer::start().await;
    // Round robin over a bad and a good endpoint: the good one keeps answering.
    let weir = Manifest::new(&[bad.addr, good.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let mut ok = 0;
    for _ in 0..6 {
        let r = c.get("/").await;
        if r.status == 200 {
            ok += 1;
        } else {
            assert_error(&r, 502, "upstream_protocol_error");
        }
    }
    assert_eq!(ok, 3, "round robin over one good and one bad endpoint");
}

/// What a client made of a response whose upstream body was cut short.
async fn truncated_outcome(resp: hyper::Result<http::Response<hyper::body::Incoming>>) -> String {
    use http_body_util::BodyExt;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return format!("abort before head: {e}"),
    };
    let status = resp.status();
    match within("truncated body", resp.into_body().collect()).await {
        Ok(b) => format!(
            "clean end: status {status}, {} body bytes",
            b.to_bytes().len()
        ),
        Err(e) => format!("abort: status {status}, {e}"),
    }
}

#[tokio::test]
async fn truncated_upstream_body_is_an_abort_never_a_clean_end() {
    for chunked in [false, true] {
        let up = FaultyServer::start(Fault::TruncatedBody { chunked }).await;
        let weir = Manifest::new(&[up.addr]).start().await;
        let addr = weir.listener_addr("main");

        let mut c = H1Client::connect(addr).await;
        let req = c
            .request("GET", "/cut")
            .body(weir_tests::body_empty())
            .unwrap();
        let h1 = truncated_outcome(c.send(req).await).await;
        let mut c = H2Client::connect(addr).await;
        let req = c
            .request("GET", "/cut")
            .body(weir_tests::body_empty())
            .unwrap();
        let h2 = truncated_outcome(c.send(req).await).await;

        // A 502 before the head is fine; a 200 whose body ends cleanly is a silent truncation.
        for (proto, outcome) in [("h1", &h1), ("h2", &h2)] {
            assert!(
                !outcome.starts_with("clean end: status 200"),
                "{proto} client, upstream {} body cut short: {outcome}",
                if chunked { "chunked" } else { "content-length" }
            );
        }
    }
}

#[tokio::test]
async fn upstream_errors_over_h2_downstream() {
    let silent = FaultyServer::start(Fault::Silent).await;
    let weir = Manifest::new(&[silent.addr])
        .response_timeout("300ms")
        .start()
        .await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    assert_error(&c.get("/").await, 504, "upstream_response_timeout");

    let garbage = FaultyServer::start(Fault::Garbage).await;
    let weir = Manifest::new(&[garbage.addr]).start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    assert_error(&c.get("/").await, 502, "upstream_protocol_error");

    let reset = FaultyServer::start(Fault::ResetBeforeResponse).await;
    let weir = Manifest::new(&[reset.addr]).start().await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    assert_error(&c.get("/").await, 502, "upstream_reset");
}

#[tokio::test]
async fn refused_h2_cluster_is_503() {
    let weir = Manifest::new(&[closed_port()])
        .protocol("http2")
        .start()
        .await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    assert_error(&c.get("/").await, 503, "upstream_connect_failure");
}

/// Sends two requests through weir to an upstream whose every connection answers `reply` first
/// and a valid `200` second: both must be 502 `upstream_protocol_error`, each on a connection of
/// its own (the one that carried the bad response is never reused).
async fn refused_and_never_reused(name: &str, reply: &'static [u8]) -> Option<String> {
    static VALID: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let script: &'static [&'static [u8]] = Box::leak(Box::new([reply, VALID]));
    let up = FaultyServer::start(Fault::Script(script)).await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for i in 0..2 {
        let r = c.get("/").await;
        if r.status != 502 || r.header("x-weir-error") != Some("upstream_protocol_error") {
            return Some(format!(
                "{name}: request {i} answered {} {:?}",
                r.status,
                r.header("x-weir-error")
            ));
        }
    }
    (up.accepts() != 2).then(|| {
        format!(
            "{name}: {} upstream connections for 2 requests",
            up.accepts()
        )
    })
}

#[tokio::test]
async fn hostile_upstream_framing_is_502_and_the_connection_is_dropped() {
    let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
    while big.len() < 100 * 1024 {
        big.extend_from_slice(b"x-pad: 0123456789abcdef0123456789abcdef\r\n");
    }
    big.extend_from_slice(b"\r\nok");
    let shapes: [(&str, &'static [u8]); 6] = [
        (
            "both Content-Length and Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("100 KiB of response headers", Box::leak(big.into_boxed_slice())),
        (
            "bare LF line ends",
            b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: 1\n\nok",
        ),
        (
            "a bare LF before a field",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\nSet-Cookie: injected=1\r\n\r\nok",
        ),
        (
            "obs-fold",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n folded\r\n\r\nok",
        ),
        (
            "a signed Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, reply) in shapes {
        wrong.extend(refused_and_never_reused(name, reply).await);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn hostile_upstream_chunked_framing_aborts_the_response() {
    // The head is fine; the chunked body is not (the same rules as for request bodies). The
    // client sees the response cut, never a clean end.
    for reply in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    ] {
        let reply: &'static [u8] = Box::leak(reply.to_vec().into_boxed_slice());
        let up = FaultyServer::start(Fault::Respond(reply)).await;
        let weir = Manifest::new(&[up.addr]).start().await;
        let mut c = H1Client::connect(weir.listener_addr("main")).await;
        let req = c
            .request("GET", "/")
            .body(weir_tests::body_empty())
            .unwrap();
        let outcome = truncated_outcome(c.send(req).await).await;
        assert!(
            !outcome.starts_with("clean end: status 200"),
            "{:?}: {outcome}",
            String::from_utf8_lossy(reply)
        );
    }
}

#[tokio::test]
async fn invalid_upstream_responses_are_502() {
    let shapes: &[(&str, &'static [u8])] = &[
        (
            "two different Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "bad status code",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        ("no status line", b"Content-Length: 0\r\n\r\n"),
        (
            "header without colon",
            b"HTTP/1.1 200 OK\r\nnot a header\r\nContent-Length: 0\r\n\r\n",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, bytes) in shapes {
        let up = FaultyServer::start(Fault::Respond(bytes)).await;
        let weir = Manifest::new(&[up.addr]).start().await;
        let mut c = H1Client::connect(weir.listener_addr("main")).await;
        let r = c.get("/").await;
        if r.status != 502 || r.header("x-weir-error") != Some("upstream_protocol_error") {
            wrong.push(format!(
                "{name}: {} {:?}",
                r.status,
                r.header("x-weir-error")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "expected 502 upstream_protocol_error: {wrong:#?}"
    );
}

#[tokio::test]
async fn error_responses_never_reveal_upstream_addresses() {
    let refused = closed_port();
    let silent = FaultyServer::start(Fault::Silent).await;
    let garbage = FaultyServer::start(Fault::Garbage).await;
    for (addr, timeout) in [
        (refused, "1s"),
        (silent.addr, "300ms"),
        (garbage.addr, "1s"),
    ] {
        let weir = Manifest::new(&[addr])
            .response_timeout(timeout)
            .start()
            .await;
        let mut c = H1Client::connect(weir.listener_addr("main")).await;
        let r = c.get("/").await;
        assert!(r.status.is_server_error(), "{addr}: {}", r.status);
        let port = format!(":{}", addr.port());
        let all = format!("{:?} {}", r.headers, r.text());
        assert!(
            !all.contains(&port),
            "the error response names the upstream ({addr}): {all}"
        );
    }
}

#[tokio::test]
async fn unusual_but_valid_upstream_responses_pass() {
    let shapes: &[(&str, &'static [u8], &str)] = &[
        (
            "103 Early Hints before the response",
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "ok",
        ),
        (
            "a close-delimited body (no length, no chunking)",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until the upstream closes",
            "read until the upstream closes",
        ),
        (
            "chunk extensions and a trailer section",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=v\r\nchun\r\n3\r\nked\r\n0\r\nX-Trailer: t\r\n\r\n",
            "chunked",
        ),
        (
            "an HTTP/1.0 response",
            b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nold ok",
            "old ok",
        ),
    ];
    for (name, bytes, body) in shapes {
        let up = FaultyServer::start(Fault::Respond(bytes)).await;
        let weir = Manifest::new(&[up.addr]).start().await;
        let addr = weir.listener_addr("main");
        let r = H1Client::connect(addr).await.get("/").await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, *body),
            "{name} (h1 client)"
        );
        let r = H2Client::connect(addr).await.get("/").await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, *body),
            "{name} (h2 client)"
        );
    }
}

#[tokio::test]
async fn upstream_head_response_with_a_length_has_no_body() {
    // A HEAD response announces the length of the GET body but carries none; weir must not wait
    // for those bytes (or call the upstream broken).
    let up = FaultyServer::start(Fault::Respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Head: yes\r\n\r\n",
    ))
    .await;
    let weir = Manifest::new(&[up.addr])
        .response_timeout("5s")
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("HEAD", "/")
        .body(weir_tests::body_empty())
        .unwrap();
    let t0 = Instant::now();
    let r = weir_tests::collect(c.send(req).await.expect("HEAD response")).await;
    assert_eq!((r.status.as_u16(), r.header("x-head")), (200, Some("yes")));
    assert!(r.body.is_empty());
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "HEAD took {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn repeated_response_headers_are_preserved() {
    let up = FaultyServer::start(Fault::Respond(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await;
    let weir = Manifest::new(&[up.addr]).start().await;
    for h2 in [false, true] {
        let r = if h2 {
            H2Client::connect(weir.listener_addr("main"))
                .await
                .get("/")
                .await
        } else {
            H1Client::connect(weir.listener_addr("main"))
                .await
                .get("/")
                .await
        };
        let cookies: Vec<_> = r
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["a=1", "b=2"], "h2={h2}");
    }
}

#[tokio::test]
async fn upload_to_an_upstream_that_stops_reading_does_not_hang() {
    // The upstream takes the head, then neither reads the body nor answers. The upload stalls;
    // the idle timeout (no byte either way) must end the exchange instead of leaving it forever.
    let up = FaultyServer::start(Fault::Stall).await;
    let weir = Manifest::new(&[up.addr])
        .limit("idle_timeout", "500ms")
        .response_timeout("1s")
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = c.request("POST", "/upload").body(body).unwrap();
    let feeder = tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'u'; 1 << 20]);
        for _ in 0..256 {
            if tx.send_data(chunk.clone()).await.is_err() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(8), c.send(req)).await;
    feeder.abort();
    match outcome {
        Err(_) => panic!("a stalled upload was still pending after 8s"),
        Ok(Ok(r)) => eprintln!(
            "stalled upload answered {} after {:?}",
            r.status(),
            t0.elapsed()
        ),
        Ok(Err(e)) => eprintln!("stalled upload ended with {e} after {:?}", t0.elapsed()),
    }
}

/// An h2c upstream that answers every stream with a 200 head and 5 body bytes, then resets the
/// stream once `go` is signalled (so the reset is sure to come mid-body).
async fn h2_upstream_resetting_mid_body(
    go: std::sync::Arc<tokio::sync::Semaphore>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let go = go.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let go = go.clone();
                    tokio::spawn(async move {
                        let resp = http::Response::builder().status(200).body(()).unwrap();
                        if let Ok(mut stream) = respond.send_response(resp, false) {
                            let _ = stream.send_data(bytes::Bytes::from_static(b"part-"), false);
                            go.acquire().await.unwrap().forget();
                            stream.send_reset(h2::Reason::INTERNAL_ERROR);
                        }
                    });
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn h2_upstream_reset_mid_body_is_an_abort_never_a_clean_end() {
    use http_body_util::BodyExt;
    let go = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let (up, _task) = h2_upstream_resetting_mid_body(go.clone()).await;
    let weir = Manifest::new(&[up]).protocol("http2").start().await;
    let addr = weir.listener_addr("main");
    for h2 in [false, true] {
        let resp = if h2 {
            let mut c = H2Client::connect(addr).await;
            let req = c
                .request("GET", "/cut")
                .body(weir_tests::body_empty())
                .unwrap();
            c.send(req).await
        } else {
            let mut c = H1Client::connect(addr).await;
            let req = c
                .request("GET", "/cut")
                .body(weir_tests::body_empty())
                .unwrap();
            c.send(req).await
        }
        .expect("response head");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = within("first body bytes", body.frame()).await;
        assert!(
            matches!(&first, Some(Ok(f)) if f.data_ref().is_some_and(|d| d == "part-")),
            "{first:?}"
        );
        // Now the upstream resets the stream: the client must see an error, not a clean end.
        go.add_permits(1);
        let rest = within("end of the cut body", body.collect()).await;
        assert!(
            rest.is_err(),
            "h2 client={h2}: a reset upstream body ended cleanly: {rest:?}"
        );
    }
}
