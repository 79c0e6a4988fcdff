//! Header rewrites (h1 and h2, `builtin:add-header`), and framing headers a header-only filter
//! writes: never trusted, the upstream's `content-length` kept.

use weir_tests::{EchoServer, FilterDef, H1Client, H2Client, body_empty, collect};

use super::common::{conformance, get_with, one_chain};

#[tokio::test]
async fn header_rewrite_both_directions() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance("hdr", r#"{"scenario":"headers"}"#)],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(
        addr,
        "/h?q=1",
        &[
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-replace", "old"),
            ("x-remove", "gone"),
            ("x-dup", "one"),
            ("x-dup", "two"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-filter"), Some("conformance"));
    assert_eq!(resp.header("x-status-seen"), Some("200"));
    let reqs = echo.wait_requests(1).await;
    let r = &reqs[0];
    assert_eq!(r.uri.path_and_query().unwrap().as_str(), "/h?q=1");
    assert_eq!(r.header("x-sum"), Some("12"));
    assert_eq!(r.header("x-replace"), Some("replaced"));
    assert_eq!(r.header("x-remove"), None);
    let dups: Vec<_> = r.headers.get_all("x-dup").iter().collect();
    assert_eq!(
        dups,
        ["one", "two"],
        "duplicates survive the map round trip"
    );
    // The proxy's own request headers still apply around the chain.
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn header_rewrite_over_h2() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance("hdr", r#"{"scenario":"headers"}"#)],
    )
    .start()
    .await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("GET", "/h2")
        .header("x-a", "a")
        .header("x-b", "b")
        .body(body_empty())
        .unwrap();
    let resp = collect(c.send(req).await.unwrap()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-filter"), Some("conformance"));
    assert_eq!(echo.wait_requests(1).await[0].header("x-sum"), Some("ab"));
}

#[tokio::test]
async fn builtin_add_header() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![FilterDef::new("add", "builtin:add-header").config(
            r#"{"request":{"x-env":"prod"},"response":{"x-served-by":"weir"},"copy":[{"from":":path","to":"x-original-path"}]}"#,
        )],
    )
    .start()
    .await;
    let resp = get_with(weir.listener_addr("main"), "/orig?x=1", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-served-by"), Some("weir"));
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(r.header("x-env"), Some("prod"));
    assert_eq!(r.header("x-original-path"), Some("/orig?x=1"));
}

/// Filters that only touch headers leave the body's framing alone: the client gets the
/// upstream's `content-length`, not a chunked re-encoding (Envoy keeps it too).
#[tokio::test]
async fn a_header_only_chain_keeps_the_upstream_content_length() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            FilterDef::new("a", "builtin:add-header").config(r#"{"response":{"x-a":"1"}}"#),
            FilterDef::new("b", "builtin:add-header").config(r#"{"response":{"x-b":"1"}}"#),
        ],
    )
    .start()
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for body in ["hello world", ""] {
        let resp = c.post("/echo", body).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), body);
        assert_eq!(resp.header("x-a"), Some("1"));
        assert_eq!(
            resp.header("content-length"),
            Some(body.len().to_string().as_str()),
            "{resp:?}"
        );
        assert_eq!(resp.header("transfer-encoding"), None, "{resp:?}");
    }
}

/// A header-only filter that writes the request's framing headers (no body phase runs, so the
/// body goes upstream as it came): the core still frames the request by its real length, and a
/// second request on the same upstream connection stays in sync.
#[tokio::test]
async fn a_filter_written_content_length_never_reaches_the_upstream() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            FilterDef::new("frame", "builtin:add-header")
                .config(r#"{"request":{"content-length":"999","transfer-encoding":"chunked"}}"#),
        ],
    )
    .start()
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for body in ["hello", "second"] {
        let resp = c.post("/echo", body).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), body);
    }
    let seen = echo.wait_requests(2).await;
    for (r, body) in seen.iter().zip(["hello", "second"]) {
        assert_eq!(r.body, body.as_bytes());
        let lengths: Vec<_> = r.headers.get_all("content-length").iter().collect();
        assert_eq!(
            lengths,
            [body.len().to_string().as_str()],
            "{:?}",
            r.headers
        );
        assert!(
            r.headers.get("transfer-encoding").is_none(),
            "{:?}",
            r.headers
        );
    }
}

/// Framing headers a filter adds are not trusted: a second, conflicting `content-length` from a
/// filter must not reach the upstream (it would make the upstream's framing differ from weir's).
#[tokio::test]
async fn a_filter_added_content_length_does_not_desync_the_upstream() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            FilterDef::new("add", "builtin:add-header")
                .config(r#"{"request":{"content-length":"3"}}"#),
        ],
    )
    .start()
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let resp = c.post("/cl", "hello").await;
    let reqs = echo.requests();
    assert!(
        reqs.iter().all(|r| &r.body[..] == b"hello"),
        "the upstream read a body framed by the filter's content-length: {reqs:?}"
    );
    assert!(
        resp.status == 200 || resp.status.is_client_error() || resp.status.is_server_error(),
        "{resp:?}"
    );
    // Whatever the answer, the next request on this connection is answered by its own response.
    if !c.is_closed()
        && let Ok(r) = c
            .send(c.request("GET", "/next").body(body_empty()).unwrap())
            .await
    {
        let r = collect(r).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
}
