//! Pauses on callouts: HTTP callouts that resume or deny, hold a request body, its end, its
//! trailers or the response's end; time out, outlive their client, run many at once, two in one
//! chain, under load, during drain, pooled, to an h2 cluster, from `on_tick`; gRPC callouts
//! (unary and streams) to an HTTP/2 cluster.
//!
//! Just over 700 lines: HTTP and gRPC callouts, each test with its own chain manifest.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use weir_tests::{
    ChainManifest, EchoServer, Fault, FaultyServer, H1Client, H2Client, body_empty, collect,
    eventually, within,
};

use super::common::{conformance, get_with, one_chain, trace, wait_log};

#[tokio::test]
async fn pause_callout_resume() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["check", "after"])
        .filter(conformance(
            "check",
            r#"{"scenario":"callout","upstream":"auth"}"#,
        ))
        .filter(trace("after", "b"))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/private", &[("x-token", "t-1")]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let call = &auth.wait_requests(1).await[0];
    assert_eq!(call.uri.path(), "/check");
    assert_eq!(call.header("x-token"), Some("t-1"));
    assert_eq!(&call.body[..], b"check");
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(r.uri.path(), "/private");
    assert_eq!(r.header("x-auth"), Some("ok"));
    assert_eq!(r.header("x-auth-body"), Some("check"));
    // The next filter ran after the resume, on the request as the callout left it.
    assert_eq!(r.header("x-order"), Some("b"));

    // Several paused streams at once on one worker each get their own answer.
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(tokio::spawn(async move {
            let tok = format!("t{i}");
            get_with(addr, &format!("/p{i}"), &[("x-token", tok.as_str())]).await
        }));
    }
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    let reqs = echo.wait_requests(9).await;
    for r in &reqs {
        assert_eq!(r.header("x-auth"), Some("ok"), "{r:?}");
    }
}

#[tokio::test]
async fn pause_callout_deny() {
    let echo = EchoServer::start().await;
    let auth = FaultyServer::start(Fault::Respond(
        b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
    ))
    .await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["before", "check"])
        .filter(trace("before", "a"))
        .filter(conformance(
            "check",
            r#"{"scenario":"callout","upstream":"auth"}"#,
        ))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/private", &[("x-token", "bad")]).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.text(), "forbidden");
    assert_eq!(resp.header("x-auth"), Some("denied"));
    assert_eq!(resp.header("x-auth-status"), Some("401"));
    // The denial flowed back through the earlier filter, and on_log saw it.
    assert_eq!(resp.header("x-order"), Some("a"));
    assert_eq!(wait_log(addr, "a", "403").await, "403");
    assert_eq!(auth.wait_heads(1).await.len(), 1);
    assert_eq!(
        echo.requests().len(),
        0,
        "a denied request never goes upstream"
    );
}

/// A request body waits while a filter is paused on a callout, then goes up whole.
#[tokio::test]
async fn request_body_waits_for_a_callout() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["check"])
        .filter(conformance("check", r#"{"scenario":"callout"}"#))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let body = crate::pattern(200 * 1024);
    let mut c = H1Client::connect(addr).await;
    let resp = c.post("/upload", body.clone()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.body == body, "echoed body differs");
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(r.header("x-auth"), Some("ok"));
    assert!(r.body == body, "upstream body differs");
    // Over h2 too.
    let mut h2 = H2Client::connect(addr).await;
    let resp = h2.post("/upload2", body.clone()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.body == body);
}

/// A filter that pauses on the end of a request body, to send the body to a verifier, holds the
/// end of the body until the answer: the body it sets then is what goes up, through the filters
/// after it; a refusal is the answer instead of the upstream's.
#[tokio::test]
async fn a_pause_at_the_end_of_a_request_body_is_held_for_its_callout() {
    let echo = EchoServer::start().await;
    let verifier = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[verifier.addr])
        .chain("edge", &["verify", "after"])
        .filter(conformance("verify", r#"{"scenario":"body_callout"}"#))
        .filter(conformance(
            "after",
            r#"{"scenario":"body","body_op":"append","response_op":"append"}"#,
        ))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let resp = c.post("/upload", b"hello body".to_vec()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let call = &verifier.wait_requests(1).await[0];
    assert_eq!(call.uri.path(), "/verify");
    assert_eq!(&call.body[..], b"hello body");
    let up = &echo.wait_requests(1).await[0];
    assert_eq!(&up.body[..], b"verified:hello body.append", "{up:?}");
    assert_eq!(resp.text(), "verified:hello body.append.append");
    // Over h2 too.
    let mut h2 = H2Client::connect(addr).await;
    let resp = h2.post("/upload2", b"second".to_vec()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "verified:second.append.append");

    // A verifier that refuses: the filter's 403 is the answer.
    let refusing = FaultyServer::start(Fault::Respond(
        b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
    ))
    .await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[refusing.addr])
        .chain("edge", &["verify"])
        .filter(conformance("verify", r#"{"scenario":"body_callout"}"#))
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let resp = c.post("/refused", b"bad body".to_vec()).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.header("x-verify-status"), Some("401"));
    assert_eq!(resp.text(), "unverified");
}

/// A filter that pauses in the request trailers phase (on a callout) holds the trailers: what it
/// adds to them from the callout's answer reaches the upstream with them.
#[tokio::test]
async fn a_pause_in_the_trailers_phase_is_held_for_its_callout() {
    let echo = EchoServer::start_h2().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster_with("web", &[echo.addr], &["protocol: http2"])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["verify"])
        .filter(conformance("verify", r#"{"scenario":"trailers_callout"}"#))
        .start()
        .await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = c.request("POST", "/t").body(body).unwrap();
    let sent = tokio::spawn(async move {
        tx.send_data(Bytes::from_static(b"payload")).await.unwrap();
        let mut t = http::HeaderMap::new();
        t.insert("x-trailer-in", http::HeaderValue::from_static("1"));
        tx.send_trailers(t).await.unwrap();
    });
    let resp = collect(c.send(req).await.expect("response")).await;
    sent.await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    auth.wait_requests(1).await;
    let up = &echo.wait_requests(1).await[0];
    assert_eq!(&up.body[..], b"payload");
    let t = up.trailers.as_ref().expect("trailers went upstream");
    assert_eq!(t.get("x-trailer-in").map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert_eq!(
        t.get("x-verified").map(|v| v.as_bytes()),
        Some(&b"200"[..]),
        "the trailer added from the callout's answer: {t:?}"
    );
}

/// The same on the response side: the response body is held at its end until the verifier
/// answers, and goes out as the filter set it, with its exact length.
#[tokio::test]
async fn a_pause_at_the_end_of_a_response_body_is_held_for_its_callout() {
    let echo = EchoServer::start().await;
    let verifier = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[verifier.addr])
        .chain("edge", &["verify"])
        .filter(conformance(
            "verify",
            r#"{"scenario":"body_callout","side":"response"}"#,
        ))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let resp = c.post("/echo", b"answer".to_vec()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "verified:answer");
    assert_eq!(resp.header("content-length"), Some("15"));
    let call = &verifier.wait_requests(1).await[0];
    assert_eq!(&call.body[..], b"answer");
}

#[tokio::test]
async fn a_callout_that_times_out_is_denied() {
    let echo = EchoServer::start().await;
    let auth = FaultyServer::start(Fault::Silent).await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["check"])
        .filter(conformance(
            "check",
            r#"{"scenario":"callout","timeout_ms":200}"#,
        ))
        .start()
        .await;
    let resp = get_with(weir.listener_addr("main"), "/t", &[]).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.header("x-auth-status"), Some("504"));
    assert_eq!(echo.requests().len(), 0);
}

#[tokio::test]
async fn a_client_that_leaves_while_paused_does_not_break_the_filter() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["t", "check"])
        .filter(conformance(
            "check",
            r#"{"scenario":"callout","path":"/hold"}"#,
        ))
        .filter(trace("t", "t"))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    // A client sends, weir pauses on the callout (held by the auth upstream), the client leaves.
    let leaver = tokio::spawn(async move { get_with(addr, "/leave", &[]).await });
    auth.wait_requests(1).await;
    leaver.abort();
    let _ = leaver.await;
    // on_log ran for the abandoned stream (no response: no status).
    assert_eq!(wait_log(addr, "t", "none").await, "none");
    // The callout answer arrives for a stream that is gone; the filter keeps working.
    auth.release(1);
    auth.wait_in_flight(0).await;
    auth.release(3);
    for i in 0..3 {
        let resp = get_with(addr, &format!("/stay{i}"), &[]).await;
        assert_eq!(
            resp.status, 200,
            "request {i} after the abandoned one: {resp:?}"
        );
    }
    let reqs = echo.wait_requests(3).await;
    assert!(reqs.iter().all(|r| r.uri.path().starts_with("/stay")));
    assert!(!weir.stderr().contains("panic"), "{}", weir.stderr());
}

#[tokio::test]
async fn many_paused_streams_on_one_h2_connection() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["check"])
        .filter(conformance("check", r#"{"scenario":"callout"}"#))
        .start()
        .await;
    let c = H2Client::connect(weir.listener_addr("main")).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let req = c
                .request("GET", &format!("/m{i}"))
                .header("x-token", format!("tok{i}"))
                .body(body_empty())
                .unwrap();
            collect(c.send(req).await.expect("response")).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    let reqs = echo.wait_requests(20).await;
    let calls = auth.wait_requests(20).await;
    // Every upstream request carries the answer to its own callout.
    let tokens: HashSet<_> = calls
        .iter()
        .map(|r| r.header("x-token").unwrap().to_string())
        .collect();
    assert_eq!(tokens.len(), 20);
    assert!(reqs.iter().all(|r| r.header("x-auth") == Some("ok")));
}

/// A callout to a cluster the manifest does not have is refused (BadArgument) without trapping.
#[tokio::test]
async fn a_callout_to_an_unknown_cluster_is_refused() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "check",
            r#"{"scenario":"callout","upstream":"not-a-cluster"}"#,
        )],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    for _ in 0..2 {
        let resp = get_with(addr, "/u", &[]).await;
        assert_eq!(resp.status, 500, "{resp:?}");
        assert_eq!(resp.header("x-callout-error"), Some("BadArgument"));
    }
    assert_eq!(echo.requests().len(), 0);
}

/// Two filters of one chain each pause on their own callout; the request goes on after both.
#[tokio::test]
async fn two_callouts_in_one_chain_resume_in_turn() {
    let echo = EchoServer::start().await;
    let auth1 = EchoServer::start().await;
    let auth2 = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth1", &[auth1.addr])
        .cluster("auth2", &[auth2.addr])
        .chain("edge", &["c1", "c2"])
        .filter(conformance(
            "c1",
            r#"{"scenario":"callout","upstream":"auth1"}"#,
        ))
        .filter(conformance(
            "c2",
            r#"{"scenario":"callout","upstream":"auth2","path":"/hold"}"#,
        ))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let req = tokio::spawn(async move { get_with(addr, "/both", &[("x-token", "z")]).await });
    // The second callout starts only once the first filter resumed.
    auth2.wait_requests(1).await;
    assert_eq!(auth1.requests().len(), 1);
    assert_eq!(echo.requests().len(), 0, "went upstream while paused");
    auth2.release(1);
    let resp = within("the request after two callouts", req).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = &echo.wait_requests(1).await[0];
    let auths: Vec<_> = r.headers.get_all("x-auth").iter().collect();
    assert_eq!(auths, ["ok", "ok"]);
}

/// Callouts under concurrent load on two workers: every request gets its own answer.
#[tokio::test]
async fn callouts_under_load_on_two_workers() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .workers(2)
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["check", "t"])
        .filter(conformance("check", r#"{"scenario":"callout"}"#))
        .filter(trace("t", "t"))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(tokio::spawn(async move {
            let mut c = H1Client::connect(addr).await;
            for j in 0..10 {
                let req = c
                    .request("GET", &format!("/l/{i}/{j}"))
                    .header("x-token", format!("{i}-{j}"))
                    .body(body_empty())
                    .unwrap();
                let resp = collect(c.send(req).await.unwrap()).await;
                assert_eq!(resp.status, 200, "{i}/{j}: {resp:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let reqs = echo.wait_requests(100).await;
    assert_eq!(reqs.len(), 100);
    assert!(reqs.iter().all(|r| r.header("x-auth") == Some("ok")));
    let counts: HashSet<_> = reqs
        .iter()
        .map(|r| r.header("x-trace-t-count").unwrap().to_string())
        .collect();
    assert_eq!(
        counts.len(),
        100,
        "the shared counter counted each request once"
    );
}

/// SIGTERM while a stream is paused on a callout: the stream finishes once the callout
/// answers, then weir exits 0.
#[tokio::test]
async fn drain_waits_for_a_paused_stream() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let mut weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["check"])
        .filter(conformance(
            "check",
            r#"{"scenario":"callout","path":"/hold","timeout_ms":5000}"#,
        ))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let req = tokio::spawn(async move { get_with(addr, "/draining", &[]).await });
    auth.wait_requests(1).await;
    weir.sigterm();
    auth.release(1);
    let resp = within("the paused request during drain", req)
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(echo.wait_requests(1).await[0].header("x-auth"), Some("ok"));
    let status = weir.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit: {status}");
}

/// Callouts go through the cluster's connection pool: sequential callouts reuse one connection.
#[tokio::test]
async fn callouts_reuse_pooled_connections() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["check"])
        .filter(conformance("check", r#"{"scenario":"callout"}"#))
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for i in 0..5 {
        assert_eq!(c.get(&format!("/p{i}")).await.status, 200);
    }
    assert_eq!(auth.wait_requests(5).await.len(), 5);
    assert_eq!(auth.accepts(), 1, "each callout opened a new connection");
}

/// A callout to an HTTP/2 cluster (a gRPC-style auth service speaking h2c only).
#[tokio::test]
async fn a_callout_to_an_h2_cluster() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start_h2().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster_with("auth", &[auth.addr], &["protocol: http2"])
        .chain("edge", &["check"])
        .filter(conformance("check", r#"{"scenario":"callout"}"#))
        .start()
        .await;
    let resp = get_with(weir.listener_addr("main"), "/h2auth", &[("x-token", "k")]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let call = &auth.wait_requests(1).await[0];
    assert_eq!(call.version, http::Version::HTTP_2);
    assert_eq!(call.uri.path(), "/check");
    assert_eq!(call.header("x-token"), Some("k"));
    assert_eq!(&call.body[..], b"check");
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(r.header("x-auth-body"), Some("check"));
    // The callout's trailers reached the auth service and its answer's trailers came back.
    assert_eq!(
        call.trailers
            .as_ref()
            .and_then(|t| t.get("x-callout-trailer"))
            .map(|v| v.to_str().unwrap()),
        Some("1"),
        "callout request trailers: {:?}",
        call.trailers
    );
}

/// Ticks run on every worker's VM, and a root context's callout (dispatched from `on_tick`, no
/// stream involved) goes out through the worker's event loop.
#[tokio::test]
async fn ticks_and_root_callouts_run_on_every_worker() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .workers(2)
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["ticker"])
        .filter(conformance(
            "ticker",
            r#"{"scenario":"callout","from_tick":true,"tick_ms":10}"#,
        ))
        .start()
        .await;
    let calls = auth.wait_requests(2).await;
    assert!(calls.iter().all(|r| r.uri.path() == "/check"), "{calls:?}");
    // The stream side of `from_tick` does nothing: requests pass.
    let resp = get_with(weir.listener_addr("main"), "/t", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    eventually("the root's callout answers logged", async || {
        match weir.stderr().matches("callout: root response").count() {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} `callout: root response` lines")),
        }
    })
    .await;
}

/// Listener `main` → cluster `web` (`web`), with chain `edge` of one conformance filter `g`
/// (`config`) and an HTTP/2 cluster `grpc` (`grpc`) for its gRPC callouts.
fn grpc_chain(web: SocketAddr, grpc: SocketAddr, config: &str) -> ChainManifest {
    ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[web])
        .cluster_with("grpc", &[grpc], &["protocol: http2"])
        .chain("edge", &["g"])
        .filter(conformance("g", config))
}

/// `proxy_dispatch_grpc_call` to an HTTP/2 cluster: the call goes out as gRPC (path, metadata,
/// `te: trailers`, one framed message), its reply comes back to the paused filter through
/// `on_grpc_call_response`, and a failed call reaches the filter with its status and message.
#[tokio::test]
async fn a_unary_grpc_callout_reaches_an_h2_cluster_and_answers_the_filter() {
    let echo = EchoServer::start().await;
    let grpc = EchoServer::start_h2().await;
    let manifest =
        |config: &str| grpc_chain(echo.addr, grpc.addr, config).cluster("plain", &[echo.addr]);
    let weir = manifest(r#"{"scenario":"grpc"}"#).start().await;
    let resp = get_with(weir.listener_addr("main"), "/a", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let call = &grpc.wait_requests(1).await[0];
    assert_eq!(call.version, http::Version::HTTP_2);
    assert_eq!(call.method, http::Method::POST);
    assert_eq!(call.uri.path(), "/weir.test.Echo/Say");
    assert_eq!(call.header("content-type"), Some("application/grpc"));
    assert_eq!(call.header("te"), Some("trailers"));
    assert_eq!(call.header("x-md"), Some("1"));
    assert_eq!(&call.body[..], b"\0\0\0\0\x04ping");
    // The filter put the reply on the request and resumed it.
    let up = &echo.wait_requests(1).await[0];
    assert_eq!(up.header("x-grpc-reply"), Some("ping"), "{up:?}");
    drop(weir);

    // A gRPC error status (trailers-only) reaches the filter, which answers 503 with it.
    let weir = manifest(r#"{"scenario":"grpc","method":"Fail"}"#)
        .start()
        .await;
    let resp = get_with(weir.listener_addr("main"), "/b", &[]).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.header("x-grpc-status"), Some("5"));
    assert_eq!(resp.header("x-grpc-message"), Some("not found"));
    drop(weir);

    // An HTTP/1.1 cluster cannot carry gRPC: the call fails UNAVAILABLE (14).
    let weir = manifest(r#"{"scenario":"grpc","upstream":"plain"}"#)
        .start()
        .await;
    let resp = get_with(weir.listener_addr("main"), "/c", &[]).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.header("x-grpc-status"), Some("14"));
    drop(weir);

    // Not a cluster: the dispatch itself fails.
    let weir = manifest(r#"{"scenario":"grpc","upstream":"nowhere"}"#)
        .start()
        .await;
    let resp = get_with(weir.listener_addr("main"), "/d", &[]).await;
    assert_eq!(resp.status, 500, "{resp:?}");
    assert_eq!(resp.header("x-grpc-error"), Some("ParseFailure"));
    assert_eq!(
        echo.requests().len(),
        1,
        "only the first call's request went upstream"
    );
}

/// `proxy_grpc_stream`: the filter opens a stream and sends `hello`; the server answers `bye`,
/// on which the filter half-closes; the server then ends with trailers. The filter sees the
/// initial metadata, the message, the trailing metadata and the close status, in that order,
/// and resumes its request with what it got.
#[tokio::test]
async fn a_grpc_stream_from_a_filter_runs_both_ways_to_its_close() {
    let echo = EchoServer::start().await;
    let grpc = EchoServer::start_h2().await;
    let weir = grpc_chain(
        echo.addr,
        grpc.addr,
        r#"{"scenario":"grpc","mode":"stream"}"#,
    )
    .start()
    .await;
    let resp = get_with(weir.listener_addr("main"), "/s", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let call = &grpc.wait_requests(1).await[0];
    assert_eq!(call.uri.path(), "/weir.test.Echo/Chat");
    assert_eq!(call.header("x-md"), Some("1"));
    assert_eq!(call.header("te"), Some("trailers"));
    let up = &echo.wait_requests(1).await[0];
    assert_eq!(up.header("x-grpc-messages"), Some("bye"), "{up:?}");
    assert_eq!(up.header("x-grpc-close"), Some("0"), "{up:?}");
    let log = eventually("the stream's metadata in the filter's log", async || {
        let log = weir.stderr();
        match log.contains("grpc: trailing x-trailing=done") {
            true => Ok(log),
            false => Err("no `grpc: trailing x-trailing=done` in weir's log"),
        }
    })
    .await;
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("no `{what}` in:\n{log}"))
    };
    assert!(at("grpc: initial x-initial=1") < at("grpc: message bye"));
    assert!(at("grpc: message bye") < at("grpc: trailing x-trailing=done"));
    assert!(at("grpc: trailing x-trailing=done") < at("grpc: stream close"));
}

/// A client that leaves while its filter waits on a gRPC stream: the stream is reset with the
/// stream context (as in Envoy), not left open for as long as the server waits for the client.
#[tokio::test]
async fn a_grpc_stream_is_reset_when_its_stream_context_goes() {
    let echo = EchoServer::start().await;
    let grpc = EchoServer::start_h2().await;
    let weir = grpc_chain(
        echo.addr,
        grpc.addr,
        r#"{"scenario":"grpc","mode":"stream","method":"Listen"}"#,
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let leaver = tokio::spawn(async move { get_with(addr, "/leave", &[]).await });
    grpc.wait_requests(1).await;
    leaver.abort();
    let _ = leaver.await;
    assert_eq!(grpc.wait_stream_ends(1).await, ["reset"]);
    assert_eq!(echo.requests().len(), 0);
}
