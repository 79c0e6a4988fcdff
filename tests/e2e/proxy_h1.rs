//! HTTP/1.1 proxying: requests and bodies both ways, streaming, hop-by-hop stripping, the
//! forwarded headers, status pass-through, and the admin endpoints.
//!
//! Long (900 lines): one test per HTTP/1.1 behaviour, each with its own raw exchange.

use bytes::Bytes;
use std::time::Duration;
use weir_tests::client::body_channel;

use weir_tests::{EchoServer, H1Client, Manifest, within};

use crate::{is_uuid_v4, pattern};

#[tokio::test]
async fn get_is_forwarded_with_path_and_query() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let r = c.get("/hello/world?x=1&y=two").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some(up.addr.to_string().as_str()));
    let seen = up.wait_requests(1).await;
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].uri, "/hello/world?x=1&y=two");
    assert!(seen[0].body.is_empty());
}

#[tokio::test]
async fn post_body_goes_up_and_response_body_comes_back() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let r = c.post("/echo", "hello through weir").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello through weir");
    assert_eq!(up.wait_requests(1).await[0].body, "hello through weir");
}

#[tokio::test]
async fn one_mib_body_both_directions() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let data = Bytes::from(pattern(1 << 20));
    let r = c.post("/big", data.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), data.len(), "response body length");
    assert!(r.body == data, "response body differs from what was sent");
    let seen = up.wait_requests(1).await;
    assert!(
        seen[0].body == data,
        "upstream received a different body ({} bytes)",
        seen[0].body.len()
    );
}

#[tokio::test]
async fn chunked_request_body_is_streamed_not_buffered() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let (mut tx, body) = body_channel();
    let req = c.request("POST", "/stream").body(body).unwrap();
    tx.send_data(Bytes::from_static(b"first part;"))
        .await
        .unwrap();
    let pending = tokio::spawn(async move { c.send(req).await.map(|r| (r, c)) });
    // The upstream gets the request head while the client is still holding the body open.
    let seen = up.wait_requests(1).await;
    assert_eq!(seen[0].uri, "/stream");
    tx.send_data(Bytes::from_static(b"second part"))
        .await
        .unwrap();
    drop(tx);
    let (resp, _c) = within("response", pending)
        .await
        .unwrap()
        .expect("response");
    let r = weir_tests::collect(resp).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "first part;second part");
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped_and_forwarded_headers_set() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("GET", "/h")
        .header("connection", "keep-alive, x-hop-req")
        .header("x-hop-req", "named by Connection")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-end-to-end", "kept")
        .body(weir_tests::body_empty())
        .unwrap();
    let r = weir_tests::collect(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    let seen = &up.wait_requests(1).await[0];
    for h in [
        "x-hop-req",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(
            seen.headers.get(h).is_none(),
            "{h} reached the upstream: {:?}",
            seen.headers
        );
    }
    if let Some(conn) = seen.header("connection") {
        assert!(
            !conn.contains("x-hop-req"),
            "Connection forwarded as {conn:?}"
        );
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.header("x-forwarded-for"), Some("10.1.2.3, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    let id = seen.header("x-request-id").expect("x-request-id generated");
    assert!(is_uuid_v4(id), "x-request-id {id:?} is not a UUID v4");
}

#[tokio::test]
async fn forwarded_for_is_created_when_absent_and_request_id_kept_when_present() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("GET", "/id")
        .header("x-request-id", "client-chosen-id-42")
        .header("te", "trailers")
        .body(weir_tests::body_empty())
        .unwrap();
    assert_eq!(
        weir_tests::collect(c.send(req).await.unwrap()).await.status,
        200
    );
    let seen = &up.wait_requests(1).await[0];
    assert_eq!(seen.header("x-request-id"), Some("client-chosen-id-42"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        seen.header("te"),
        Some("trailers"),
        "`te: trailers` must be kept"
    );
}

#[tokio::test]
async fn each_request_gets_its_own_generated_request_id() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    c.get("/1").await;
    c.get("/2").await;
    let seen = up.wait_requests(2).await;
    let (a, b) = (
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id"),
    );
    assert!(
        a.is_some() && b.is_some() && a != b,
        "request ids {a:?} {b:?}"
    );
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let r = c.get("/hop-response").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hop");
    for h in ["x-hop-resp", "keep-alive", "proxy-connection"] {
        assert!(
            r.headers.get(h).is_none(),
            "{h} reached the client: {:?}",
            r.headers
        );
    }
    assert_eq!(r.header("x-end-to-end"), Some("kept"));
    // The client connection is still usable (the upstream's Connection header did not leak).
    assert_eq!(c.get("/again").await.status, 200);
}

#[tokio::test]
async fn upstream_status_and_body_pass_through() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let r = c.get("/status/404").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "status 404");
    assert!(
        r.headers.get("x-weir-error").is_none(),
        "upstream 404 is not a weir error"
    );
    let r = c.get("/status/503").await;
    assert_eq!(r.status, 503);
    assert!(
        r.headers.get("x-weir-error").is_none(),
        "upstream 503 is not a weir error"
    );
}

#[tokio::test]
async fn two_workers_serve_many_connections() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).workers(Some(2)).start().await;
    let addr = weir.listener_addr("main");
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = H1Client::connect(addr).await;
            for j in 0..5 {
                let r = c.post("/w", format!("{i}-{j}")).await;
                assert_eq!(r.status, 200);
                assert_eq!(r.text(), format!("{i}-{j}"));
            }
        }));
    }
    for t in tasks {
        within("client task", t).await.unwrap();
    }
    assert_eq!(up.wait_requests(40).await.len(), 40);
}

#[tokio::test]
async fn workers_flag_overrides_the_manifest() {
    let up = EchoServer::start().await;
    let weir =
        weir_tests::Weir::start_with_args(&Manifest::new(&[up.addr]).yaml(), &["--workers", "2"])
            .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_eq!(c.get("/").await.status, 200);
}

#[tokio::test]
async fn admin_ready_and_healthz() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut a = H1Client::connect(weir.admin_addr()).await;
    let r = a.get("/ready").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), "ready");
    assert_eq!(a.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn host_and_repeated_headers_are_preserved() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let req = http::Request::builder()
        .uri("/multi")
        .header("host", "service.weir.test")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("x-forwarded-for", "10.0.0.1, 10.0.0.2")
        .body(weir_tests::body_empty())
        .unwrap();
    assert_eq!(
        weir_tests::collect(c.send(req).await.unwrap()).await.status,
        200
    );
    let seen = &up.wait_requests(1).await[0];
    assert_eq!(
        seen.header("host"),
        Some("service.weir.test"),
        "Host rewritten"
    );
    let multi: Vec<_> = seen
        .headers
        .get_all("x-multi")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        multi,
        ["one", "two"],
        "repeated header values and their order"
    );
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("10.0.0.1, 10.0.0.2, 127.0.0.1")
    );
}

#[tokio::test]
async fn head_and_bodyless_statuses_keep_the_connection_usable() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("HEAD", "/head")
        .body(weir_tests::body_empty())
        .unwrap();
    let r = weir_tests::collect(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = c.get("/status/204").await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let r = c.get("/status/304").await;
    assert_eq!(r.status, 304);
    // The connection is still in sync after responses without bodies.
    assert_eq!(c.post("/after", "still fine").await.body, "still fine");
}

#[tokio::test]
async fn expect_100_continue_gets_a_100_then_the_body_flows() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = weir_tests::RawClient::connect(weir.listener_addr("main")).await;
    c.write(b"POST /expect HTTP/1.1\r\nHost: weir.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = c.read_response().await;
    assert_eq!(interim.status, 100, "head: {}", interim.head);
    c.write(b"hello").await.unwrap();
    let r = c.read_response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
}

#[tokio::test]
async fn h2c_upgrade_is_not_tunnelled() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let (_c, r) = weir_tests::client::raw_request(
        weir.listener_addr("main"),
        b"GET /h2c HTTP/1.1\r\nHost: weir.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!(
        r.status, 200,
        "an h2c upgrade must be served as plain HTTP/1.1, head: {}",
        r.head
    );
    let seen = &up.wait_requests(1).await[0];
    assert!(
        seen.headers.get("upgrade").is_none(),
        "Upgrade: h2c reached the upstream"
    );
    assert!(
        seen.headers.get("http2-settings").is_none(),
        "HTTP2-Settings reached the upstream"
    );
}

#[tokio::test]
async fn demo_cluster_answers() {
    let m = "workers: 1
admin: { address: 127.0.0.1:0 }
listeners:
  - { name: main, address: 127.0.0.1:0, default_cluster: demo }
clusters:
  demo: { demo: v1 }
";
    let weir = weir_tests::Weir::start(m).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let r = c.get("/demo").await;
    assert_eq!(r.status, 200, "body {:?}", r.text());
    let mut c = weir_tests::H2Client::connect(weir.listener_addr("main")).await;
    assert_eq!(c.get("/demo").await.status, 200);
}

#[tokio::test]
async fn max_connections_defers_the_extra_connection() {
    use std::time::Duration;
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr])
        .limit("max_connections", "2")
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let mut a = H1Client::connect(addr).await;
    let mut b = H1Client::connect(addr).await;
    assert_eq!(a.get("/a").await.status, 200);
    assert_eq!(b.get("/b").await.status, 200);
    // A third connection is not served while two are open...
    let third = tokio::spawn(async move {
        let mut c = weir_tests::RawClient::connect(addr).await;
        c.write(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        c.read_response().await
    });
    // (a negative check can only be a bounded wait; it cannot fail spuriously, only miss)
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        up.requests().len(),
        2,
        "a third connection was served above max_connections 2"
    );
    // ...and is served once one closes.
    drop(a);
    let r = within("third connection served after one closed", third)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn client_supplied_forwarded_proto_is_overwritten() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("GET", "/spoof")
        .header("x-forwarded-proto", "https")
        .body(weir_tests::body_empty())
        .unwrap();
    assert_eq!(
        weir_tests::collect(c.send(req).await.unwrap()).await.status,
        200
    );
    let seen = &up.wait_requests(1).await[0];
    let protos: Vec<_> = seen
        .headers
        .get_all("x-forwarded-proto")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        protos,
        ["http"],
        "x-forwarded-proto must be set by weir, not trusted from the client"
    );
}

#[tokio::test]
async fn hundred_concurrent_connections() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).workers(Some(2)).start().await;
    let addr = weir.listener_addr("main");
    let mut tasks = Vec::new();
    for i in 0..100 {
        tasks.push(tokio::spawn(async move {
            let mut c = H1Client::connect(addr).await;
            for j in 0..3 {
                let r = c.post("/many", format!("{i}/{j}")).await;
                assert_eq!(r.status, 200);
                assert_eq!(r.text(), format!("{i}/{j}"));
            }
        }));
    }
    for t in tasks {
        within("client", t).await.unwrap();
    }
    assert_eq!(up.wait_requests(300).await.len(), 300);
}

#[tokio::test]
async fn each_listener_uses_its_own_default_cluster_and_announces_itself() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let m = format!(
        "workers: 1
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, default_cluster: web }}
  - {{ name: second, address: 127.0.0.1:0, default_cluster: other }}
clusters:
  web: {{ endpoints: [{}] }}
  other: {{ endpoints: [{}] }}
",
        a.addr, b.addr
    );
    let weir = weir_tests::Weir::start(&m).await;
    let lines = weir.readiness_lines();
    assert_eq!(lines.len(), 4, "readiness lines: {lines:#?}");
    assert_eq!(lines[3], "weir: ready");
    for (i, name) in ["main", "second"].into_iter().enumerate() {
        let want = format!(
            "weir: listener {name} listening on {}",
            weir.listener_addr(name)
        );
        assert_eq!(lines[i], want);
    }
    assert_eq!(
        lines[2],
        format!("weir: admin listening on {}", weir.admin_addr())
    );

    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_eq!(
        c.get("/m").await.header("x-upstream"),
        Some(a.addr.to_string().as_str())
    );
    let mut c = H1Client::connect(weir.listener_addr("second")).await;
    assert_eq!(
        c.get("/s").await.header("x-upstream"),
        Some(b.addr.to_string().as_str())
    );
}

#[tokio::test]
async fn logs_go_to_stderr_and_stdout_has_only_the_readiness_lines() {
    let up = EchoServer::start().await;
    let mut weir = weir_tests::Weir::start_with_args(
        &Manifest::new(&[up.addr]).yaml(),
        &["--log-level", "debug"],
    )
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for i in 0..3 {
        assert_eq!(c.get(&format!("/log/{i}")).await.status, 200);
    }
    drop(c);
    up.wait_requests(3).await;
    weir.sigterm();
    let st = weir.wait_exit(std::time::Duration::from_secs(10)).await;
    assert!(st.success(), "{st}");
    assert!(
        weir.stdout_after_ready().is_empty(),
        "stdout after ready: {:?}",
        weir.stdout_after_ready()
    );
    assert!(
        !weir.stderr().is_empty(),
        "debug logging wrote nothing to stderr"
    );
}

#[tokio::test]
async fn absolute_form_target_becomes_origin_form_with_its_authority_as_host() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let (_c, r) = weir_tests::client::raw_request(
        weir.listener_addr("main"),
        b"GET http://service.test/abs?q=1 HTTP/1.1\r\nHost: other.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "head {}", r.head);
    let seen = &up.wait_requests(1).await[0];
    assert_eq!(seen.uri, "/abs?q=1", "the upstream gets origin-form");
    // RFC 9112 §3.2.2: with an absolute-form target the Host field is ignored and replaced by the
    // target's authority, so every hop agrees on the host.
    assert_eq!(seen.header("host"), Some("service.test"));
}

#[tokio::test]
async fn full_duplex_streaming_h1() {
    // The upstream answers at once and echoes as it reads: the response head and each echoed
    // chunk must reach the client while its request body is still open.
    let mut wrong = Vec::new();
    for protocol in ["http1", "http2"] {
        if let Err(e) = full_duplex_h1_case(protocol).await {
            wrong.push(format!("cluster {protocol}: {e}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "HTTP/1.1 client, no full duplex: {wrong:?}"
    );
}

async fn full_duplex_h1_case(protocol: &str) -> Result<(), String> {
    use http_body_util::BodyExt;
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).protocol(protocol).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let (mut tx, body) = body_channel();
    let req = c.request("POST", "/stream").body(body).unwrap();
    tx.send_data(Bytes::from_static(b"ping-1")).await.unwrap();
    let limit = Duration::from_secs(3);
    let resp = match tokio::time::timeout(limit, c.send(req)).await {
        Err(_) => return Err("no response head while the request body is open".into()),
        Ok(r) => r.map_err(|e| e.to_string())?,
    };
    let mut body = resp.into_body();
    match tokio::time::timeout(limit, body.frame()).await {
        Ok(Some(Ok(f))) if f.data_ref().is_some_and(|d| d == "ping-1") => {}
        other => return Err(format!("no echo of the first chunk: {other:?}")),
    }
    tx.send_data(Bytes::from_static(b"ping-2")).await.unwrap();
    drop(tx);
    let rest = within("rest", body.collect())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if rest != "ping-2" {
        return Err(format!("rest {rest:?}"));
    }
    Ok(())
}

#[tokio::test]
async fn early_upstream_response_reaches_the_client_during_a_large_upload() {
    // The upstream refuses the upload with 413 without reading it; weir must pass the 413 on, not
    // fail writing a body nobody reads (or sit until a timeout).
    let mut wrong = Vec::new();
    for protocol in ["http1", "http2"] {
        let up = EchoServer::start().await;
        let weir = Manifest::new(&[up.addr])
            .protocol(protocol)
            .response_timeout("10s")
            .start()
            .await;
        let mut c = H1Client::connect(weir.listener_addr("main")).await;
        let (mut tx, body) = body_channel();
        let req = c.request("POST", "/reject-early").body(body).unwrap();
        let feeder = tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'u'; 1 << 20]);
            for _ in 0..64 {
                if tx.send_data(chunk.clone()).await.is_err() {
                    break;
                }
            }
        });
        let t0 = std::time::Instant::now();
        let resp = within("an answer to the upload", c.send(req)).await;
        feeder.abort();
        match resp {
            Ok(r) if r.status() == 413 && t0.elapsed() < Duration::from_secs(5) => {}
            Ok(r) => wrong.push(format!(
                "cluster {protocol}: {} {:?} after {:?}",
                r.status(),
                r.headers().get("x-weir-error"),
                t0.elapsed()
            )),
            Err(e) => wrong.push(format!("cluster {protocol}: {e}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "an early 413 did not reach the client: {wrong:?}"
    );
}

#[tokio::test]
async fn slow_upload_is_not_a_response_timeout() {
    // timeouts.response bounds the wait for the upstream's answer once the request is sent, not
    // the client's upload (the echo upstream answers when the body is complete).
    let mut wrong = Vec::new();
    for protocol in ["http1", "http2"] {
        let up = EchoServer::start().await;
        let weir = Manifest::new(&[up.addr])
            .protocol(protocol)
            .response_timeout("800ms")
            .start()
            .await;
        let mut c = H1Client::connect(weir.listener_addr("main")).await;
        let (mut tx, body) = body_channel();
        let req = c.request("POST", "/slow-upload").body(body).unwrap();
        let feeder = tokio::spawn(async move {
            for i in 0..8 {
                // The client is slow on purpose: 8 chunks 250 ms apart, 2 s in all.
                tokio::time::sleep(Duration::from_millis(250)).await;
                if tx.send_data(Bytes::from(format!("{i}"))).await.is_err() {
                    break; // weir answered early; the check below says how
                }
            }
        });
        let r = weir_tests::collect(c.send(req).await.expect("response")).await;
        feeder.await.unwrap();
        if (r.status.as_u16(), r.text()) != (200, "01234567".to_string()) {
            wrong.push(format!(
                "cluster {protocol}: {} {:?}",
                r.status,
                r.header("x-weir-error")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "a 2 s upload under an 800 ms response timeout: {wrong:?}"
    );
}

#[tokio::test]
async fn client_connection_close_is_honoured_and_not_forwarded() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).workers(Some(1)).start().await;
    let addr = weir.listener_addr("main");
    for i in 0..2 {
        let (mut c, r) = weir_tests::client::raw_request(
            addr,
            format!("GET /bye/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(
            c.wait_closed(Duration::from_secs(5)).await,
            "client asked for Connection: close"
        );
    }
    let seen = up.wait_requests(2).await;
    for s in &seen {
        assert!(
            !s.header("connection").is_some_and(|v| v.contains("close")),
            "the client's Connection: close reached the upstream"
        );
    }
    assert_eq!(up.accepts(), 1, "the upstream connection is still pooled");
}

#[tokio::test]
async fn bodiless_h2_request_has_no_body_framing_upstream() {
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = weir_tests::H2Client::connect(weir.listener_addr("main")).await;
    assert_eq!(c.get("/no-body").await.status, 200);
    let seen = &up.wait_requests(1).await[0];
    assert!(
        seen.headers.get("transfer-encoding").is_none(),
        "a GET without a body went up chunked: {:?}",
        seen.headers
    );
    assert!(seen.header("content-length").is_none_or(|v| v == "0"));
}

#[tokio::test]
async fn connection_stays_in_sync_after_an_early_response() {
    // The upstream answers 413 without reading; the client still sends its whole (small) body,
    // then a second request on the same connection, which must be served normally.
    let up = EchoServer::start().await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let mut c = weir_tests::RawClient::connect(weir.listener_addr("main")).await;
    let body = vec![b'b'; 10 * 1024];
    let mut req = format!(
        "POST /reject-early HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    c.write(&req).await.unwrap();
    let first = c.read_response().await;
    assert_eq!(first.status, 413);
    // Weir may close after an early answer (then the second request is not served), but it must
    // never take the rest of the body for a request.
    match c.try_read_response().await {
        None => {}
        Some(second) => assert_eq!((second.status, second.text().as_str()), (200, "")),
    }
    let paths: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert!(
        paths.iter().all(|p| p == "/reject-early" || p == "/next"),
        "{paths:?}"
    );
}

/// A response head that needs no rewriting reaches an HTTP/1.1 client as the upstream wrote it —
/// the names' case, spacing, order, repeated fields, its own `date` — with exactly one length,
/// and the connection carries the next exchange. An HTTP/2 client of the same upstream, whose
/// head must be re-encoded, gets the same fields.
#[tokio::test]
async fn upstream_response_fields_reach_the_client_as_written() {
    const FIELDS: &str = "X-Mixed-Case: Value\r\nx-multi: one\r\nContent-Length: 4\r\n\
                          x-multi: two\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\nX-Spaced:   padded\r\n";
    const REPLY: &[u8] = b"HTTP/1.1 201 Created\r\nX-Mixed-Case: Value\r\nx-multi: one\r\n\
        Content-Length: 4\r\nx-multi: two\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\
        X-Spaced:   padded\r\n\r\nbody";
    let up = weir_tests::FaultyServer::start(weir_tests::Fault::Script(&[REPLY; 4])).await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let addr = weir.listener_addr("main");
    let get = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n";
    let (mut c, first) = weir_tests::client::raw_request(addr, get).await;
    c.write(get).await.unwrap();
    let second = c.read_response().await;
    for r in [&first, &second] {
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.body, b"body");
        assert!(r.head.starts_with("HTTP/1.1 201 Created\r\n"), "{}", r.head);
        assert!(r.head.contains(FIELDS), "fields rewritten: {}", r.head);
        let count = |n: &str| r.headers.iter().filter(|(k, _)| k == n).count();
        assert_eq!(count("content-length"), 1, "{}", r.head);
        assert_eq!(count("date"), 1, "{}", r.head);
    }
    let mut h2 = weir_tests::H2Client::connect(addr).await;
    let r = h2.get("/b").await;
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "body");
    assert_eq!(r.header("x-mixed-case"), Some("Value"));
    assert_eq!(r.header("x-spaced"), Some("padded"));
    assert_eq!(r.header("date"), Some("Tue, 01 Dec 2026 10:00:00 GMT"));
    let multi: Vec<_> = r.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
}

/// A plain request's fields reach the upstream as the client wrote them, followed by the
/// proxy's own (`x-forwarded-for`, `x-forwarded-proto`, a fresh `x-request-id`); a request that
/// carries fields the proxy sets gets them rewritten as ever (the forwarded-for chain extended,
/// the client's request id kept, nothing doubled).
#[tokio::test]
async fn request_fields_reach_the_upstream_as_written_with_the_proxys_appended() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let up = weir_tests::FaultyServer::start(weir_tests::Fault::Script(&[OK; 4])).await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let (mut c, r) = weir_tests::client::raw_request(
        weir.listener_addr("main"),
        b"GET /a?b=1 HTTP/1.1\r\nHost: svc.test\r\nX-Mixed-Case:  V \r\nAccept: */*\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    c.write(
        b"GET /b HTTP/1.1\r\nHost: svc.test\r\nX-Forwarded-For: 10.0.0.9\r\n\
          X-Request-Id: mine\r\nX-Forwarded-Proto: https\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(c.read_response().await.status, 200);
    let heads = up.wait_heads(2).await;
    let first = &heads[0];
    let prefix = "GET /a?b=1 HTTP/1.1\r\nHost: svc.test\r\nX-Mixed-Case:  V \r\nAccept: */*\r\n\
                  x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-request-id: ";
    assert!(first.starts_with(prefix), "{first}");
    let id = first[prefix.len()..].split("\r\n").next().unwrap();
    assert!(is_uuid_v4(id), "{first}");
    assert!(first.ends_with(&format!("{id}\r\n\r\n")), "{first}");
    let second = heads[1].to_ascii_lowercase();
    for (field, want) in [
        ("x-forwarded-for", "10.0.0.9, 127.0.0.1"),
        ("x-request-id", "mine"),
        ("x-forwarded-proto", "http"),
    ] {
        let values: Vec<_> = second
            .split("\r\n")
            .filter_map(|l| l.strip_prefix(&format!("{field}: ")))
            .collect();
        assert_eq!(values, [want], "{second}");
    }
}

/// A request body framed by one plain `Content-Length` keeps the fields raw: the upstream gets
/// the client's length line once (no second one from Weir) and the body after it.
#[tokio::test]
async fn a_sized_request_body_goes_up_with_exactly_its_own_length() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let up = weir_tests::FaultyServer::start(weir_tests::Fault::Script(&[OK])).await;
    let weir = Manifest::new(&[up.addr]).start().await;
    let (_c, r) = weir_tests::client::raw_request(
        weir.listener_addr("main"),
        b"POST /p HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let head = &up.wait_heads(1).await[0];
    assert!(
        head.starts_with(
            "POST /p HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 5\r\nx-forwarded-for: "
        ),
        "{head}"
    );
    assert_eq!(
        head.to_ascii_lowercase().matches("content-length").count(),
        1,
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
}

/// The same pass-through under a cluster idle timeout, whose watcher wraps the response body
/// (the raw lines ride inside it).
#[tokio::test]
async fn upstream_response_fields_pass_through_under_an_idle_timeout() {
    const REPLY: &[u8] =
        b"HTTP/1.1 200 OK\r\nX-Mixed-Case: Value\r\nContent-Length: 4\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\nbody";
    let up = weir_tests::FaultyServer::start(weir_tests::Fault::Script(&[REPLY])).await;
    let yaml = Manifest::new(&[up.addr]).response_timeout("5s").yaml();
    assert!(yaml.contains("response: 5s"), "{yaml}");
    let weir =
        weir_tests::Weir::start(&yaml.replace("response: 5s", "response: 5s, idle: 5s")).await;
    let (_c, r) = weir_tests::client::raw_request(
        weir.listener_addr("main"),
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"body");
    assert!(
        r.head.contains("\r\nX-Mixed-Case: Value\r\nContent-Length: 4\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n"),
        "{}",
        r.head
    );
}
