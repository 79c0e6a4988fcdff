//! Trailers and gRPC framing through a chain: trailers pass both ways, the trailer phases edit
//! them, trailers-only answers stay trailers-only.

use weir_tests::client::Collected;
use weir_tests::{EchoServer, H2Client, collect};

use super::common::{conformance, one_chain, trace};

/// Sends `POST path` over h2 with body `payload` and request trailer `x-trailer-in: v1`.
async fn post_with_trailers(c: &mut H2Client, path: &str) -> Collected {
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = c
        .request("POST", path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let send = tokio::spawn(async move {
        tx.send_data(bytes::Bytes::from_static(b"payload"))
            .await
            .unwrap();
        let mut t = http::HeaderMap::new();
        t.insert("x-trailer-in", http::HeaderValue::from_static("v1"));
        tx.send_trailers(t).await.unwrap();
    });
    let r = collect(c.send(req).await.expect("response")).await;
    send.await.unwrap();
    r
}

/// gRPC through a chain of filters that do not touch trailers: trailers pass both ways.
#[tokio::test]
async fn grpc_trailers_pass_through_a_chain() {
    let up = EchoServer::start_h2().await;
    let weir = one_chain(up.addr, vec![trace("t", "t")]);
    let weir = weir.yaml().replace(
        &format!("endpoints: [{}]", up.addr),
        &format!("endpoints: [{}]\n    protocol: http2", up.addr),
    );
    let weir = weir_tests::Weir::start(&weir).await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let r = post_with_trailers(&mut c, "/weir.test.Echo/Say").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "payload");
    let t = r
        .trailers
        .as_ref()
        .expect("grpc-status trailers reach the client");
    assert_eq!(t.get("grpc-status").unwrap(), "0");
    let seen = &up.wait_requests(1).await[0];
    assert_eq!(
        seen.trailers.as_ref().expect("request trailers")["x-trailer-in"],
        "v1"
    );
    assert_eq!(seen.header("x-order"), Some("t"));
}

/// The trailer phases: `on_request_trailers` / `on_response_trailers` run and their edits apply
/// (the conformance `trailers` scenario).
#[tokio::test]
async fn trailer_phases_run_and_edit_trailers() {
    let up = EchoServer::start_h2().await;
    let weir = one_chain(
        up.addr,
        vec![conformance("tr", r#"{"scenario":"trailers"}"#)],
    );
    let weir = weir.yaml().replace(
        &format!("endpoints: [{}]", up.addr),
        &format!("endpoints: [{}]\n    protocol: http2", up.addr),
    );
    let weir = weir_tests::Weir::start(&weir).await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let r = post_with_trailers(&mut c, "/trailers").await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &up.wait_requests(1).await[0];
    let t = seen.trailers.as_ref().expect("request trailers");
    assert_eq!(
        t.get("x-trailer-seen").map(|v| v.to_str().unwrap()),
        Some("v1"),
        "on_request_trailers added x-trailer-seen: {t:?}"
    );
    let t = r.trailers.as_ref().expect("response trailers");
    assert_eq!(
        t.get("x-filter-trailer").map(|v| v.to_str().unwrap()),
        Some("conformance"),
        "on_response_trailers added x-filter-trailer: {t:?}"
    );
}

/// A gRPC trailers-only answer (`grpc-status` in the response headers, no body) stays
/// trailers-only through a chain: one HEADERS frame with END_STREAM, as without a chain (gRPC
/// clients read `grpc-status` from such headers only when the stream ends there).
#[tokio::test]
async fn grpc_trailers_only_answers_stay_trailers_only_through_a_chain() {
    let up = EchoServer::start_h2().await;
    let base = one_chain(up.addr, vec![trace("t", "t")]).yaml().replace(
        &format!("endpoints: [{}]", up.addr),
        &format!("endpoints: [{}]\n    protocol: http2", up.addr),
    );
    let plain = base.replace("    chain: edge\n", "");
    for (what, manifest) in [("without a chain", plain), ("through a chain", base)] {
        let weir = weir_tests::Weir::start(&manifest).await;
        let mut c = H2Client::connect(weir.listener_addr("main")).await;
        let req = c
            .request("POST", "/weir.test.Echo/Fail")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(weir_tests::body_full(&b"\0\0\0\0\0"[..]))
            .unwrap();
        let resp = c.send(req).await.expect("response");
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(
            resp.headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap()),
            Some("5"),
            "{what}"
        );
        assert!(
            hyper::body::Body::is_end_stream(resp.body()),
            "{what}: the trailers-only answer's HEADERS frame did not end the stream"
        );
    }
}
