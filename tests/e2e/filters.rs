//! Filter chains in the data path (issue 4): proxy-wasm filters run by the real `weir` process
//! between real clients and echo upstreams.
//!
//! The filters are the conformance guest (`tests/programs/conformance`, behaviour chosen by its
//! JSON configuration; the `trace` scenario was written for these tests: it stamps its tag on the
//! request and response `x-order` headers, copies `x-route-*` request headers to the route
//! decision, counts requests per VM and in shared data, and records each stream's final status
//! from `on_log` in shared data, read back with `x-read-log: <tag>`) and the built-in stock
//! filters (`builtin:add-header`, `builtin:local-reply`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use weir_test_artifacts::CONFORMANCE;
use weir_tests::client::Collected;
use weir_tests::{
    ChainManifest, EchoServer, Fault, FaultyServer, FilterDef, H1Client, H2Client, body_empty,
    collect, within, within_for,
};

use crate::assert_error;

/// A conformance filter named `name` with configuration `json`.
fn conformance(name: &str, json: &str) -> FilterDef {
    FilterDef::new(name, CONFORMANCE).config(json)
}

/// A `trace` filter stamping `tag`.
fn trace(name: &str, tag: &str) -> FilterDef {
    conformance(name, &format!(r#"{{"scenario":"trace","tag":"{tag}"}}"#))
}

/// One listener `main` → cluster `web` (`ep`) running chain `edge` = `filters` (in that order).
fn one_chain(ep: SocketAddr, filters: Vec<FilterDef>) -> ChainManifest {
    let names: Vec<String> = filters.iter().map(|f| f.name().to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut m = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[ep])
        .chain("edge", &names);
    for f in filters {
        m = m.filter(f);
    }
    m
}

/// `GET path` with extra request headers, on a fresh HTTP/1.1 connection.
async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Collected {
    H1Client::connect(addr).await.get_with(path, headers).await
}

/// The final statuses filter `tag` recorded from `on_log`, once they start with `want` (on_log
/// runs as the response ends; a read may come just before the last entry lands).
async fn wait_log(addr: SocketAddr, tag: &str, want: &str) -> String {
    within(&format!("trace log of {tag} to read {want:?}"), async {
        loop {
            let r = get_with(addr, "/", &[("x-read-log", tag)]).await;
            assert_eq!(r.status, 200, "log read: {r:?}");
            let log = r.text();
            if log == want {
                return log;
            }
            assert!(
                want.starts_with(&log),
                "on_log recorded {log:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Runs `weir run` on `manifest`, expecting it to fail before `weir: ready`; returns stderr.
async fn run_fails(manifest: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, manifest).unwrap();
    let child = tokio::process::Command::new(weir_tests::weir_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = within("weir run to exit on a bad filter", child.wait_with_output())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "weir run succeeded; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("weir: ready"),
        "ready with a bad filter:\n{stdout}"
    );
    stderr
}

// ---------------------------------------------------------------------------------------------
// Headers, bodies, local replies
// ---------------------------------------------------------------------------------------------

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

/// A filter that declares its HTTP phases (`weir.declare_http_phases`) gets only those: here
/// each filter declares request headers only and panics in one undeclared callback, which Weir
/// never calls. Without the declaration the same chain fails its streams.
#[tokio::test]
async fn undeclared_phases_are_never_called() {
    let echo = EchoServer::start().await;
    let chain = |declare: bool| {
        let filters = [
            "on_request_body",
            "on_response_headers",
            "on_response_body",
            "on_log",
            "on_done",
        ]
        .iter()
        .enumerate()
        .map(|(i, callback)| {
            let declare = if declare {
                r#","declare_phases":"request_headers""#
            } else {
                ""
            };
            conformance(
                &format!("p{i}"),
                &format!(r#"{{"scenario":"trace","tag":"p{i}","panic_in":"{callback}"{declare}}}"#),
            )
        })
        .collect();
        one_chain(echo.addr, filters)
    };
    let weir = chain(true).start().await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    // Twice: a trap in on_log/on_done would only show on the next request (503 unavailable).
    for body in ["hello", "again"] {
        let resp = c.post("/echo", body).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), body);
        assert_eq!(
            resp.header("content-length"),
            Some("5"),
            "no body phase: upstream framing"
        );
        assert_eq!(resp.header("x-order"), None, "no response-header phase ran");
    }
    let seen = echo.wait_requests(2).await;
    let order = seen[1]
        .headers
        .get("x-order")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        order.as_deref(),
        Some("p0,p1,p2,p3,p4"),
        "the request phase ran"
    );
    drop(weir);

    let weir = chain(false).start().await;
    let resp = get_with(weir.listener_addr("main"), "/echo", &[]).await;
    assert_eq!(
        resp.status, 503,
        "the undeclared callbacks ran and trapped: {resp:?}"
    );
}

#[tokio::test]
async fn body_rewrite_both_directions() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "body",
            r#"{"scenario":"body","body_op":"prepend_append"}"#,
        )],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let resp = c.post("/b", "hello").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // The request body went up rewritten; the echoed response body came back upper-cased.
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(&r.body[..], b"prepend.hello.append");
    assert_eq!(resp.text(), "PREPEND.HELLO.APPEND");

    // A streamed request body in several chunks is offered cumulatively and rewritten once.
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = c.request("POST", "/b2").body(body).unwrap();
    let send = tokio::spawn(async move {
        for part in ["he", "ll", "o!"] {
            tx.send_data(bytes::Bytes::from(part)).await.unwrap();
        }
    });
    let resp = collect(c.send(req).await.unwrap()).await;
    send.await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        &echo.wait_requests(2).await[1].body[..],
        b"prepend.hello!.append"
    );
    assert_eq!(resp.text(), "PREPEND.HELLO!.APPEND");

    // Over h2 as well.
    let mut h2 = H2Client::connect(addr).await;
    let resp = h2.post("/b3", "abc").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        &echo.wait_requests(3).await[2].body[..],
        b"prepend.abc.append"
    );
    assert_eq!(resp.text(), "PREPEND.ABC.APPEND");
}

#[tokio::test]
async fn local_reply_runs_response_phases_and_on_log() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("outer", "a"),
            conformance("deny", r#"{"scenario":"local_reply","status":418}"#),
            trace("inner", "c"),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/x", &[]).await;
    assert_eq!(resp.status, 418, "{resp:?}");
    assert_eq!(resp.text(), "denied");
    assert_eq!(resp.header("x-denied"), Some("1"));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    // The reply flowed back through the filter that saw the request, not the one after it.
    assert_eq!(resp.header("x-order"), Some("a"));
    assert_eq!(resp.header("x-trace-a-status"), Some("418"));
    assert_eq!(resp.header("x-trace-c-status"), None);
    // on_log ran for the filter that saw the request, with the final status.
    assert_eq!(wait_log(addr, "a", "418").await, "418");
    assert_eq!(
        echo.requests().len(),
        0,
        "a local reply never goes upstream"
    );
    // Over h2 too.
    let mut h2 = H2Client::connect(addr).await;
    let resp = h2.get("/y").await;
    assert_eq!(resp.status, 418, "{resp:?}");
    assert_eq!(resp.text(), "denied");
    assert_eq!(wait_log(addr, "a", "418,418").await, "418,418");
    assert_eq!(echo.requests().len(), 0);
}

#[tokio::test]
async fn builtin_local_reply_only_when_asked() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![FilterDef::new("lr", "builtin:local-reply").config(
            r#"{"status":403,"body":"no\n","headers":{"x-denied-by":"weir"},"when_header":"x-deny"}"#,
        )],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/a", &[("x-deny", "1")]).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.text(), "no\n");
    assert_eq!(resp.header("x-denied-by"), Some("weir"));
    let resp = get_with(addr, "/b", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let reqs = echo.wait_requests(1).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].uri.path(), "/b");
}

// ---------------------------------------------------------------------------------------------
// Callouts
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Route decision, order, on_log, properties
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn route_decision_picks_cluster_path_and_timeout() {
    let v1 = EchoServer::start().await;
    let v2 = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[v1.addr])
        .cluster("v2", &[v2.addr])
        .chain("edge", &["router"])
        .filter(trace("router", "r"))
        .start()
        .await;
    let addr = weir.listener_addr("main");

    let resp = get_with(addr, "/to-v2", &[("x-route-cluster", "v2")]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("x-upstream"),
        Some(v2.addr.to_string().as_str())
    );
    assert_eq!(v2.wait_requests(1).await[0].uri.path(), "/to-v2");

    let resp = get_with(addr, "/default", &[]).await;
    assert_eq!(
        resp.header("x-upstream"),
        Some(v1.addr.to_string().as_str())
    );
    assert_eq!(v1.wait_requests(1).await[0].uri.path(), "/default");

    // weir.route.path replaces the upstream request target.
    let resp = get_with(
        addr,
        "/old?a=1",
        &[("x-route-cluster", "v2"), ("x-route-path", "/new/path?b=2")],
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = &v2.wait_requests(2).await[1];
    assert_eq!(r.uri.path_and_query().unwrap().as_str(), "/new/path?b=2");

    // A cluster the manifest does not have is an error, not a crash.
    let resp = get_with(addr, "/nowhere", &[("x-route-cluster", "nope")]).await;
    assert_error(&resp, 503, "unknown_cluster");

    // weir.route.timeout_ms replaces the cluster's response timeout.
    let resp = get_with(addr, "/hold", &[("x-route-timeout-ms", "200")]).await;
    assert_error(&resp, 504, "upstream_response_timeout");
    v1.release(1);
}

#[tokio::test]
async fn chain_order_request_forward_response_reversed() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("first", "a"),
            trace("second", "b"),
            trace("third", "c"),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/o", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        echo.wait_requests(1).await[0].header("x-order"),
        Some("a,b,c")
    );
    assert_eq!(resp.header("x-order"), Some("c,b,a"));
    // Over h2 the same.
    let mut h2 = H2Client::connect(addr).await;
    let resp = h2.get("/o2").await;
    assert_eq!(
        echo.wait_requests(2).await[1].header("x-order"),
        Some("a,b,c")
    );
    assert_eq!(resp.header("x-order"), Some("c,b,a"));
}

#[tokio::test]
async fn on_log_sees_the_final_status() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("t", "t")]).start().await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    assert_eq!(c.get("/status/201").await.status, 201);
    assert_eq!(wait_log(addr, "t", "201").await, "201");
    assert_eq!(c.get("/status/404").await.status, 404);
    assert_eq!(wait_log(addr, "t", "201,404").await, "201,404");
    // A proxy error (the upstream is gone) is the final status too.
    drop(echo);
    let resp = c.get("/gone").await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(wait_log(addr, "t", "201,404,503").await, "201,404,503");
}

#[tokio::test]
async fn properties_request_path_source_address_plugin_name() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "props",
            r#"{"scenario":"properties","cluster":"web"}"#,
        )],
    )
    .start()
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let resp = c.get("/p/a?b=c").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-prop-request.path"), Some("/p/a?b=c"));
    assert_eq!(resp.header("x-prop-request.method"), Some("GET"));
    let local = c.local.to_string();
    assert_eq!(
        resp.header("x-prop-source.address"),
        Some(local.as_str()),
        "source.address is the client's ip:port"
    );
    let port = c.local.port().to_string();
    assert_eq!(resp.header("x-prop-source.port"), Some(port.as_str()));
    assert_eq!(resp.header("x-prop-plugin_name"), Some("props"));
    assert_eq!(resp.header("x-prop-connection.mtls"), Some("false"));
    assert_eq!(resp.header("x-prop-weir.route.cluster"), Some("web"));
    assert_eq!(resp.header("x-prop-response.code"), Some("200"));
}

#[tokio::test]
async fn shared_data_is_visible_across_workers() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("count", "s")])
        .workers(2)
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let mut vms = HashSet::new();
    let mut n = 0;
    // Separate connections until both workers' VMs have served (SO_REUSEPORT spreads them);
    // the shared counter must count every request once, whichever worker served it.
    while vms.len() < 2 || n < 8 {
        assert!(n < 200, "200 connections all went to one worker: {vms:?}");
        let resp = get_with(addr, &format!("/s{n}"), &[]).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        n += 1;
        let r = &echo.wait_requests(n).await[n - 1];
        vms.insert(r.header("x-trace-s-vm").unwrap().to_string());
        assert_eq!(
            r.header("x-trace-s-count"),
            Some(n.to_string().as_str()),
            "request {n} (served by VM {:?}) sees the shared counter of both workers",
            r.header("x-trace-s-vm")
        );
    }
    // Both VMs' own counts add up to the shared one.
    let reqs = echo.requests();
    let mut last = std::collections::HashMap::new();
    for r in &reqs {
        let vm = r.header("x-trace-s-vm").unwrap();
        let seen: usize = r.header("x-trace-s-vm-requests").unwrap().parse().unwrap();
        last.insert(vm.to_string(), seen);
    }
    assert_eq!(last.len(), 2);
    assert_eq!(last.values().sum::<usize>(), n);
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fail_open_skips_a_trapping_filter() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            conformance(
                "trap",
                r#"{"scenario":"none","panic_in":"on_request_headers"}"#,
            )
            .failure_policy("fail_open"),
            trace("after", "a"),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    for i in 0..3 {
        let resp = c.get(&format!("/f{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert_eq!(resp.header("x-order"), Some("a"));
    }
    let reqs = echo.wait_requests(3).await;
    assert!(reqs.iter().all(|r| r.header("x-order") == Some("a")));
}

/// A `fail_closed` filter that traps in a body phase answers 503 `filter_failed`: in the request
/// body phase (the head already went upstream) once the upstream exchange is abandoned, not as a
/// gateway error; in the response body phase while the response head has not gone out, not as a
/// reset connection.
#[tokio::test]
async fn a_trap_in_a_body_phase_answers_503_filter_failed() {
    let echo = EchoServer::start().await;
    for callback in ["on_request_body", "on_response_body"] {
        let weir = one_chain(
            echo.addr,
            vec![
                conformance(
                    "trap",
                    &format!(r#"{{"scenario":"body","panic_in":"{callback}"}}"#),
                )
                .failure_policy("fail_closed"),
            ],
        )
        .start()
        .await;
        let mut c = H1Client::connect(weir.listener_addr("main")).await;
        let resp = c.post("/upload", b"some body".to_vec()).await;
        assert_error(&resp, 503, "filter_failed");
    }
}

#[tokio::test]
async fn fail_closed_answers_503_filter_failed() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("before", "a"),
            conformance(
                "trap",
                r#"{"scenario":"none","panic_in":"on_request_headers"}"#,
            )
            .failure_policy("fail_closed"),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/c", &[]).await;
    assert_error(&resp, 503, "filter_failed");
    // The failure answer still runs the response phases and on_log of the filter before it.
    assert_eq!(resp.header("x-order"), Some("a"));
    assert_eq!(wait_log(addr, "a", "503").await, "503");
    // Later requests stay closed (the VM is down), and the process keeps serving.
    let resp = get_with(addr, "/c2", &[]).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(
        matches!(
            resp.header("x-weir-error"),
            Some("filter_failed" | "filter_unavailable")
        ),
        "{resp:?}"
    );
    assert_eq!(echo.requests().len(), 0);
}

#[tokio::test]
async fn close_stream_resets_the_stream() {
    let echo = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("req", "web", Some("req"))
        .listener("resp", "web", Some("resp"))
        .cluster("web", &[echo.addr])
        .chain("req", &["close_req"])
        .chain("resp", &["close_resp"])
        .filter(conformance(
            "close_req",
            r#"{"scenario":"close_stream","side":"request"}"#,
        ))
        .filter(conformance(
            "close_resp",
            r#"{"scenario":"close_stream","side":"response"}"#,
        ))
        .start()
        .await;
    for listener in ["req", "resp"] {
        let addr = weir.listener_addr(listener);
        // HTTP/1.1: the connection closes without a response.
        let mut c = H1Client::connect(addr).await;
        let req = c.request("GET", "/r").body(body_empty()).unwrap();
        let got = c.send(req).await;
        assert!(got.is_err(), "{listener}: h1 got a response: {got:?}");
        // HTTP/2: the stream is reset; the connection keeps serving other streams.
        let mut h2 = H2Client::connect(addr).await;
        let req = h2.request("GET", "/r2").body(body_empty()).unwrap();
        let got = h2.send(req).await;
        assert!(got.is_err(), "{listener}: h2 got a response: {got:?}");
    }
    // Only the response-side resets reached the upstream.
    let reqs = echo.wait_requests(2).await;
    assert!(reqs.iter().all(|r| r.uri.path().starts_with("/r")));
    assert_eq!(echo.requests().len(), 2);
}

#[tokio::test]
async fn trap_storm_leaves_other_listeners_and_chains_at_zero_errors() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let echo = EchoServer::start().await;
    let weir = ChainManifest::new()
        .workers(2)
        .listener("storm", "web", Some("storm"))
        .listener("calm", "web", Some("calm"))
        .listener("plain", "web", None)
        .cluster("web", &[echo.addr])
        .chain("storm", &["trap", "stamp"])
        .chain("calm", &["hdr", "stamp2"])
        .filter(
            conformance(
                "trap",
                r#"{"scenario":"none","panic_in":"on_request_headers"}"#,
            )
            .failure_policy("reload"),
        )
        .filter(trace("stamp", "s"))
        .filter(conformance("hdr", r#"{"scenario":"headers"}"#))
        .filter(trace("stamp2", "c"))
        .start()
        .await;
    let (storm, calm, plain) = (
        weir.listener_addr("storm"),
        weir.listener_addr("calm"),
        weir.listener_addr("plain"),
    );
    // Hammer all three listeners until the trapping filter has trapped (and been rebuilt and
    // trapped again) at least TRAPS times; every storm request must get a 503, every other
    // request a correct 200.
    const TRAPS: usize = 6;
    const CONNS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let (stormed, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for i in 0..CONNS {
        let (halt, stormed) = (stop.clone(), stormed.clone());
        tasks.push(tokio::spawn(async move {
            let mut j = 0;
            while !halt.load(Ordering::Relaxed) {
                let mut c = H1Client::connect(storm).await;
                let resp = c.get(&format!("/storm/{i}/{j}")).await;
                assert_eq!(resp.status, 503, "storm {i}/{j}: {resp:?}");
                assert!(
                    matches!(
                        resp.header("x-weir-error"),
                        Some("filter_failed" | "filter_unavailable")
                    ),
                    "{resp:?}"
                );
                stormed.fetch_add(1, Ordering::Relaxed);
                j += 1;
            }
        }));
        for (addr, chained) in [(calm, true), (plain, false)] {
            let (halt, served) = (stop.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let mut j = 0;
                while !halt.load(Ordering::Relaxed) {
                    // A new connection every few requests, so both workers serve some.
                    let mut c = H1Client::connect(addr).await;
                    for _ in 0..4 {
                        let resp = c.get(&format!("/ok/{i}/{j}")).await;
                        assert_eq!(resp.status, 200, "{addr} {i}/{j}: {resp:?}");
                        if chained {
                            assert_eq!(resp.header("x-filter"), Some("conformance"));
                            assert_eq!(resp.header("x-order"), Some("c"));
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                        j += 1;
                    }
                }
            }));
        }
    }
    let traps = || weir.stderr().matches("filter `trap` VM failed").count();
    within_for(
        Duration::from_secs(30),
        &format!("{TRAPS} traps of the storm filter"),
        async {
            while traps() < TRAPS {
                assert!(
                    tasks.iter().all(|t| !t.is_finished()),
                    "a client task ended early (failed)"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (stormed, served) = (
        stormed.load(Ordering::Relaxed),
        served.load(Ordering::Relaxed),
    );
    assert!(
        stormed > 0 && served > 0,
        "stormed {stormed}, served {served}"
    );
    // Every request of the healthy listeners reached the upstream; none of the storm's did.
    let reqs = echo.wait_requests(served).await;
    assert_eq!(reqs.len(), served);
    assert!(reqs.iter().all(|r| r.uri.path().starts_with("/ok/")));
    // The weir process is intact: the calm chain still answers.
    assert_eq!(get_with(calm, "/after", &[]).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Start-up: a filter that cannot start stops `weir run`, naming it
// ---------------------------------------------------------------------------------------------

fn bad_filter_manifest(filter: FilterDef) -> String {
    ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &["127.0.0.1:9".parse().unwrap()])
        .chain("edge", &["good", "broken"])
        .filter(conformance("good", r#"{"scenario":"none"}"#))
        .filter(filter)
        .yaml()
}

#[tokio::test]
async fn a_filter_that_fails_to_configure_stops_weir_run() {
    let stderr = run_fails(&bad_filter_manifest(conformance(
        "broken",
        r#"{"scenario":"none","reject":true}"#,
    )))
    .await;
    assert!(stderr.contains("filters.broken"), "stderr:\n{stderr}");
    assert!(!stderr.contains("filters.good"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn a_filter_that_fails_vm_start_stops_weir_run() {
    let stderr = run_fails(&bad_filter_manifest(
        conformance("broken", r#"{"scenario":"none"}"#).vm_config(r#"{"reject_vm_start":true}"#),
    ))
    .await;
    assert!(stderr.contains("filters.broken"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn a_filter_that_traps_while_configuring_stops_weir_run() {
    let stderr = run_fails(&bad_filter_manifest(conformance(
        "broken",
        r#"{"scenario":"none","panic_in":"on_configure"}"#,
    )))
    .await;
    assert!(stderr.contains("filters.broken"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn a_module_that_does_not_compile_stops_weir_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0this is not a module").unwrap();
    let stderr = run_fails(&bad_filter_manifest(FilterDef::new(
        "broken",
        path.to_str().unwrap(),
    )))
    .await;
    assert!(
        stderr.contains("filters.broken.module"),
        "stderr:\n{stderr}"
    );
}

#[tokio::test]
async fn an_unknown_builtin_stops_weir_run() {
    let stderr = run_fails(&bad_filter_manifest(FilterDef::new(
        "broken",
        "builtin:no-such-filter",
    )))
    .await;
    assert!(
        stderr.contains("filters.broken.module"),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("no-such-filter"), "stderr:\n{stderr}");
}

#[test]
fn chain_manifests_pass_check() {
    let m = bad_filter_manifest(conformance("broken", r#"{"scenario":"trace"}"#));
    let out = weir_tests::check(&m);
    assert!(out.status.success(), "{m}\nstderr:\n{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Framing of rewritten bodies
// ---------------------------------------------------------------------------------------------

/// A body filter that forgets to drop `content-length` (the proxy-wasm SDK leaves it to the
/// filter) must not make weir frame the rewritten body with the stale length: the upstream would
/// read a truncated body and take the rest as the next request on a pooled connection.
#[tokio::test]
async fn a_request_body_rewrite_keeping_content_length_is_framed_by_its_new_length() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "body",
            r#"{"scenario":"body","body_op":"prepend_append","keep_content_length":true}"#,
        )],
    )
    .start()
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let resp = c.post("/k", "hello").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "prepend.hello.append",
        "the upstream must get the whole rewritten body (sent content-length: {:?})",
        r.header("content-length")
    );
    // The pooled upstream connection is still in sync for the next request.
    let resp = c.get("/next").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let reqs = echo.wait_requests(2).await;
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].uri.path(), "/next");
}

/// The same on the response side: the client must get the rewritten body, framed by its length.
#[tokio::test]
async fn a_response_body_rewrite_keeping_content_length_is_framed_by_its_new_length() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "body",
            r#"{"scenario":"body","keep_content_length":true,"response_op":"append"}"#,
        )],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let req = c.request("GET", "/status/200").body(body_empty()).unwrap();
    let resp = c.send(req).await.expect("response head");
    let upstream_len = resp
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_string());
    let body = within(
        "rewritten response body",
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .map(|b| b.to_bytes());
    let body = body.unwrap_or_else(|e| {
        panic!("the rewritten response body failed ({e:?}); content-length sent: {upstream_len:?}")
    });
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.ends_with(".append"),
        "client got {text:?} with content-length {upstream_len:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Trailers, gRPC, request bodies around pauses and local replies
// ---------------------------------------------------------------------------------------------

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
    let log = within("the stream's metadata in the filter's log", async {
        loop {
            let log = weir.stderr();
            if log.contains("grpc: trailing x-trailing=done") {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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

/// A local reply to a request whose body was never read leaves the client connection usable
/// (or closed), never out of sync.
#[tokio::test]
async fn local_reply_with_an_unread_request_body_keeps_the_connection_in_sync() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            FilterDef::new("lr", "builtin:local-reply")
                .config(r#"{"status":403,"body":"no","when_header":"x-deny"}"#),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let req = c
        .request("POST", "/big")
        .header("x-deny", "1")
        .body(weir_tests::body_full(crate::pattern(256 * 1024)))
        .unwrap();
    let resp = collect(c.send(req).await.expect("local reply")).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    // The next request, on this connection if it stayed open, else on a new one.
    let resp = if c.is_closed() {
        get_with(addr, "/after", &[]).await
    } else {
        match c
            .send(c.request("GET", "/after").body(body_empty()).unwrap())
            .await
        {
            Ok(r) => collect(r).await,
            Err(_) => get_with(addr, "/after", &[]).await,
        }
    };
    assert_eq!(resp.status, 200, "{resp:?}");
    let reqs = echo.wait_requests(1).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].uri.path(), "/after");
}

// ---------------------------------------------------------------------------------------------
// Callouts: timeouts, abandoned streams, many streams on one h2 connection
// ---------------------------------------------------------------------------------------------

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

#[tokio::test]
async fn a_filter_over_its_memory_limit_stops_weir_run() {
    let stderr = run_fails(&bad_filter_manifest(
        conformance("broken", r#"{"scenario":"none"}"#).memory("64KiB"),
    ))
    .await;
    assert!(stderr.contains("filters.broken"), "stderr:\n{stderr}");
}

// ---------------------------------------------------------------------------------------------
// What a chain must not let through or get wrong
// ---------------------------------------------------------------------------------------------

/// A WebSocket upgrade is an HTTP request like any other for the chain (Envoy runs the HTTP
/// filters on upgrade requests): adding `Upgrade: websocket` must not skip an auth chain.
#[tokio::test]
async fn an_upgrade_request_runs_the_chain() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            FilterDef::new("deny", "builtin:local-reply")
                .config(r#"{"status":403,"body":"denied"}"#),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    assert_eq!(get_with(addr, "/plain", &[]).await.status, 403);
    let mut c = weir_tests::RawClient::connect(addr).await;
    c.write(
        b"GET /chat HTTP/1.1\r\nHost: weir.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let r = c.read_response().await;
    assert_eq!(
        r.status, 403,
        "an upgrade request bypassed the deny-all chain: {}",
        r.head
    );
    assert_eq!(echo.requests().len(), 0, "{:?}", echo.requests());
}

/// A filter that buffers a request body past the per-stream limit (1 MiB) gets a 413, as Envoy
/// answers a request buffer overflow; the upstream gets no truncated body.
#[tokio::test]
async fn a_request_body_buffered_past_the_limit_is_413() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "body",
            r#"{"scenario":"body","body_op":"append"}"#,
        )],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = c.request("POST", "/huge").body(body).unwrap();
    let feed = tokio::spawn(async move {
        for _ in 0..48 {
            if tx
                .send_data(bytes::Bytes::from(vec![b'x'; 64 * 1024]))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let resp = collect(c.send(req).await.expect("a response, not a reset")).await;
    feed.abort();
    assert_eq!(resp.status, 413, "{resp:?}");
    // Whatever reached the upstream, it was not presented as a complete request.
    assert!(
        echo.requests().iter().all(|r| r.body.is_empty()),
        "upstream got a (truncated) body"
    );
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

/// A filter trapping in the response phase (fail_closed) turns the answer into 503
/// `filter_failed`; the filters before it still see that final status in on_log.
#[tokio::test]
async fn a_trap_in_the_response_phase_is_503_and_logged() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("outer", "a"),
            conformance(
                "trap",
                r#"{"scenario":"none","panic_in":"on_response_headers"}"#,
            ),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/r", &[]).await;
    assert_error(&resp, 503, "filter_failed");
    assert_eq!(resp.header("x-order"), Some("a"));
    assert_eq!(wait_log(addr, "a", "503").await, "503");
    assert_eq!(echo.wait_requests(1).await.len(), 1);
}

/// `reload`: a VM that trapped is rebuilt (after a short backoff) and serves again.
#[tokio::test]
async fn reload_rebuilds_a_trapped_vm() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("r", "r").failure_policy("reload")])
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/before", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let vm_before = echo.wait_requests(1).await[0]
        .header("x-trace-r-vm")
        .unwrap()
        .to_string();
    let resp = get_with(addr, "/trap", &[("x-trap", "r")]).await;
    assert_error(&resp, 503, "filter_failed");
    // Until the rebuild, the filter is unavailable (fail closed); then a new VM serves.
    let resp = within("the trapped VM to be rebuilt", async {
        loop {
            let resp = get_with(addr, "/after", &[]).await;
            if resp.status == 200 {
                return resp;
            }
            assert_error(&resp, 503, "filter_unavailable");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(resp.status, 200);
    let r = echo.requests().last().unwrap().clone();
    assert_eq!(r.uri.path(), "/after");
    assert_ne!(
        r.header("x-trace-r-vm"),
        Some(vm_before.as_str()),
        "served by a fresh VM"
    );
    assert_eq!(r.header("x-trace-r-vm-requests"), Some("1"));
}

/// `on_log` runs when the stream ends, not when the response headers went out.
#[tokio::test]
async fn on_log_waits_for_the_end_of_a_streaming_response() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("t", "t")]).start().await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = c.request("POST", "/stream").body(body).unwrap();
    tx.send_data(bytes::Bytes::from_static(b"part one"))
        .await
        .unwrap();
    let resp = c.send(req).await.expect("streaming response head");
    assert_eq!(resp.status(), 200);
    // The exchange is still open: nothing logged yet.
    let r = get_with(addr, "/", &[("x-read-log", "t")]).await;
    assert_eq!(r.text(), "", "on_log ran before the stream ended");
    drop(tx);
    let done = collect(resp).await;
    assert_eq!(done.text(), "part one");
    assert_eq!(wait_log(addr, "t", "200").await, "200");
}

/// A gRPC local reply is trailers-only: HTTP 200 with `grpc-status` / `grpc-message`.
#[tokio::test]
async fn grpc_local_reply_is_trailers_only() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "deny",
            r#"{"scenario":"local_reply","grpc":true}"#,
        )],
    )
    .start()
    .await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("POST", "/weir.test.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(weir_tests::body_full(&b"\0\0\0\0\0"[..]))
        .unwrap();
    let r = collect(c.send(req).await.expect("response")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.header("grpc-status"), Some("7"));
    assert_eq!(r.header("grpc-message"), Some("denied"));
    assert_eq!(r.header("x-denied"), Some("1"));
    assert!(r.body.is_empty());
    assert_eq!(echo.requests().len(), 0);
}

// ---------------------------------------------------------------------------------------------
// Several pauses, repeated filters, load, drain
// ---------------------------------------------------------------------------------------------

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

/// The same filter twice in a chain: two stream contexts of one VM, both in order.
#[tokio::test]
async fn one_filter_twice_in_a_chain() {
    let echo = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .chain("edge", &["t", "u", "t"])
        .filter(trace("t", "t"))
        .filter(trace("u", "u"))
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/twice", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-order"), Some("t,u,t"));
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(r.header("x-order"), Some("t,u,t"));
    assert_eq!(wait_log(addr, "t", "200,200").await, "200,200");
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

/// The callback deadline holds in the data path: a filter stuck in a loop is interrupted and
/// fails closed long before it would finish; the next request is served by a fresh VM (`reload`).
#[tokio::test]
async fn a_filter_over_its_callback_deadline_fails_closed() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("spin", "s")
                .callback_deadline("100ms")
                .failure_policy("reload"),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let started = std::time::Instant::now();
    let resp = get_with(addr, "/spin", &[("x-spin-ms", "8000")]).await;
    assert_error(&resp, 503, "filter_failed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the spinning callback ran for {:?}",
        started.elapsed()
    );
    assert_eq!(echo.requests().len(), 0);
    let resp = within("a rebuilt VM", async {
        loop {
            let resp = get_with(addr, "/after", &[]).await;
            if resp.status == 200 {
                return resp;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(resp.status, 200);
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

/// Filters that do not pause on bodies keep them streaming: a full-duplex exchange works through
/// a chain (the first chunk's echo arrives before the second chunk is sent), and 1 MiB bodies
/// arrive intact both ways.
#[tokio::test]
async fn bodies_stream_through_non_pausing_filters() {
    use http_body_util::BodyExt;
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("a", "a"),
            conformance("hdr", r#"{"scenario":"headers"}"#),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut h2 = H2Client::connect(addr).await;
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = h2.request("POST", "/stream").body(body).unwrap();
    tx.send_data(bytes::Bytes::from_static(b"ping-1"))
        .await
        .unwrap();
    let resp = h2.send(req).await.expect("response head while uploading");
    let mut body = resp.into_body();
    let first = within("the echo of the first chunk", body.frame())
        .await
        .expect("a frame")
        .expect("no error");
    assert_eq!(first.data_ref().map(|d| &d[..]), Some(&b"ping-1"[..]));
    tx.send_data(bytes::Bytes::from_static(b"ping-2"))
        .await
        .unwrap();
    drop(tx);
    let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"ping-2");

    let big = crate::pattern(1 << 20);
    let mut c = H1Client::connect(addr).await;
    let resp = c.post("/big", big.clone()).await;
    assert_eq!(resp.status, 200);
    assert!(resp.body == big, "1 MiB echoed through the chain differs");
    let resp = h2.post("/big2", big.clone()).await;
    assert!(resp.body == big, "1 MiB over h2 differs");
}

/// The same properties over h2: `source.address` is the h2 client's ip:port.
#[tokio::test]
async fn properties_over_h2() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "props2",
            r#"{"scenario":"properties","cluster":"web"}"#,
        )],
    )
    .start()
    .await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let resp = c.get("/h2/p?x=y").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-prop-request.path"), Some("/h2/p?x=y"));
    let local = c.local.to_string();
    assert_eq!(resp.header("x-prop-source.address"), Some(local.as_str()));
    assert_eq!(resp.header("x-prop-plugin_name"), Some("props2"));
    assert_eq!(resp.header("x-prop-plugin_root_id"), Some("props2"));
}

/// When a filter fails in the response phase, the filters that already processed the upstream's
/// response headers must not get `on_response_headers` a second time for the same stream (Envoy
/// sends a local reply during encoding directly, without re-running the encoder filters).
#[tokio::test]
async fn a_response_phase_failure_does_not_rerun_response_headers() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            conformance(
                "trap",
                r#"{"scenario":"none","panic_in":"on_response_headers"}"#,
            ),
            trace("inner", "a"),
        ],
    )
    .start()
    .await;
    let resp = get_with(weir.listener_addr("main"), "/r", &[]).await;
    assert_error(&resp, 503, "filter_failed");
    assert_ne!(
        resp.header("x-trace-a-response-calls"),
        Some("2"),
        "on_response_headers ran twice on one stream: {resp:?}"
    );
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
    within("the root's callout answers logged", async {
        loop {
            if weir.stderr().matches("callout: root response").count() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A filter that traps while handling its callout answer (the stream paused on it): fail_closed
/// answers 503, fail_open lets the request go on without the filter.
#[tokio::test]
async fn a_trap_in_the_callout_answer_applies_the_failure_policy() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("closed", "web", Some("closed"))
        .listener("open", "web", Some("open"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("closed", &["c_closed", "t"])
        .chain("open", &["c_open", "t"])
        .filter(
            conformance(
                "c_closed",
                r#"{"scenario":"callout","panic_in":"on_http_call_response"}"#,
            )
            .failure_policy("fail_closed"),
        )
        .filter(
            conformance(
                "c_open",
                r#"{"scenario":"callout","panic_in":"on_http_call_response"}"#,
            )
            .failure_policy("fail_open"),
        )
        .filter(trace("t", "t"))
        .start()
        .await;
    let resp = get_with(weir.listener_addr("closed"), "/closed", &[]).await;
    assert_error(&resp, 503, "filter_failed");
    assert_eq!(echo.requests().len(), 0);
    let resp = get_with(weir.listener_addr("open"), "/open", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(r.uri.path(), "/open");
    assert_eq!(
        r.header("x-auth"),
        None,
        "the failed filter's edits do not apply"
    );
    assert_eq!(r.header("x-order"), Some("t"), "the rest of the chain ran");
    assert_eq!(auth.wait_requests(2).await.len(), 2);
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

/// `Expect: 100-continue` and a local reply: the reply comes without `100 Continue`, so the
/// client never has to send the body.
#[tokio::test]
async fn a_local_reply_answers_expect_100_without_continue() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![FilterDef::new("deny", "builtin:local-reply").config(r#"{"status":401}"#)],
    )
    .start()
    .await;
    let mut c = weir_tests::RawClient::connect(weir.listener_addr("main")).await;
    c.write(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    let r = c.read_response().await;
    assert_eq!(r.status, 401, "{}", r.head);
    assert_eq!(echo.requests().len(), 0);
}

/// A callout answer for a VM that has since failed and been rebuilt (`reload`) must not be
/// delivered to the new VM: its callout tokens start over, so the stale answer would resume a
/// different request with someone else's answer (here: Carol's request with Alice's auth).
#[tokio::test]
async fn a_stale_callout_answer_never_reaches_a_rebuilt_vm() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["check"])
        .filter(
            conformance(
                "check",
                r#"{"scenario":"callout","path":"/hold","echo_token":true,"timeout_ms":8000}"#,
            )
            .failure_policy("reload"),
        )
        .start()
        .await;
    let addr = weir.listener_addr("main");
    // Alice's request pauses on its callout (held by the auth service).
    let alice =
        tokio::spawn(async move { get_with(addr, "/alice", &[("x-token", "alice")]).await });
    auth.wait_requests(1).await;
    // Another request makes the VM trap: Alice's paused stream fails with it.
    let resp = get_with(addr, "/trap", &[("x-trap", "callout")]).await;
    assert_error(&resp, 503, "filter_failed");
    let resp = within("alice's stream to fail with its VM", alice)
        .await
        .unwrap();
    assert_eq!(resp.status, 503, "{resp:?}");
    // Carol's request, once the VM is rebuilt, pauses on its own callout.
    let carol = within("a rebuilt VM to take carol's request", async {
        loop {
            let mut c =
                tokio::spawn(
                    async move { get_with(addr, "/carol", &[("x-token", "carol")]).await },
                );
            tokio::select! {
                r = &mut c => {
                    let r = r.unwrap();
                    assert_error(&r, 503, "filter_unavailable");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // (In an Option: the block must not yield something awaitable.)
                _ = auth.wait_requests(2) => return Some(c),
            }
        }
    })
    .await
    .expect("carol's request task");
    // Alice's (stale) callout answer comes back first, then Carol's.
    auth.release(1);
    auth.wait_in_flight(1).await;
    auth.release(1);
    let resp = within("carol's request", carol).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(r.uri.path(), "/carol");
    assert_eq!(
        r.header("x-auth-body"),
        Some("carol"),
        "carol's request was resumed with another request's callout answer"
    );
}

/// Starts a full-duplex `/stream` exchange over h2 and returns the body sender and the response
/// body once the first chunk came back (or the status if the request was refused).
async fn open_stream(
    addr: SocketAddr,
    first: &'static str,
) -> Result<
    (
        http_body_util::channel::Sender<bytes::Bytes, weir_tests::client::BoxError>,
        hyper::body::Incoming,
    ),
    http::StatusCode,
> {
    use http_body_util::BodyExt;
    let mut h2 = H2Client::connect(addr).await;
    let (mut tx, body) = weir_tests::client::body_channel();
    let req = h2.request("POST", "/stream").body(body).unwrap();
    tx.send_data(bytes::Bytes::from_static(first.as_bytes()))
        .await
        .unwrap();
    let resp = h2.send(req).await.expect("response head");
    if resp.status() != 200 {
        return Err(resp.status());
    }
    let mut body = resp.into_body();
    let frame = within("the first echoed chunk", body.frame())
        .await
        .expect("a frame")
        .expect("no error");
    assert_eq!(frame.data_ref().map(|d| &d[..]), Some(first.as_bytes()));
    Ok((tx, body))
}

/// A stream that outlives its filter's VM (the VM trapped on another request and was rebuilt)
/// must not touch the rebuilt VM through its old context id: the new VM numbers its contexts
/// from the start again, so the old stream's body callbacks and on_log/on_delete would hit the
/// new stream that got the same id.
#[tokio::test]
async fn a_stream_outliving_its_vm_never_reaches_a_rebuilt_vm() {
    use http_body_util::BodyExt;
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("t", "t").failure_policy("reload")])
        .start()
        .await;
    let addr = weir.listener_addr("main");
    // S1: the first stream of the first VM, left open mid-body.
    let (mut s1_tx, s1_body) = open_stream(addr, "s1-a").await.expect("s1 opens");
    // The VM traps on another request.
    let resp = get_with(addr, "/trap", &[("x-trap", "t")]).await;
    assert_error(&resp, 503, "filter_failed");
    // S2: the first stream of the rebuilt VM (same context id as S1 had), left open too.
    let (mut s2_tx, s2_body) = within("a rebuilt VM to take s2", async {
        loop {
            match open_stream(addr, "s2-a").await {
                Ok(s) => return s,
                Err(status) => {
                    assert_eq!(status, 503);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
    .await;
    // S1 ends (whatever its fate: its VM is gone).
    let _ = s1_tx.send_data(bytes::Bytes::from_static(b"s1-b")).await;
    drop(s1_tx);
    let _ = within("s1 to end", s1_body.collect()).await;
    // S2 must be untouched by that: it streams to its end.
    s2_tx
        .send_data(bytes::Bytes::from_static(b"s2-b"))
        .await
        .expect("s2 still open");
    drop(s2_tx);
    let rest = within("s2 to end", s2_body.collect())
        .await
        .unwrap_or_else(|e| panic!("s2 broke when s1 ended: {e:?}"))
        .to_bytes();
    assert_eq!(&rest[..], b"s2-b");
    assert_eq!(
        weir.stderr().matches("filter `t` VM failed").count(),
        1,
        "only the requested trap: {}",
        weir.stderr()
    );
}

/// A local reply from the request-body phase (the filter read the whole body, then refused it):
/// the client gets that reply, through the response phases, and on_log sees its status.
#[tokio::test]
async fn a_local_reply_from_the_request_body_phase() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("outer", "a"),
            conformance("body", r#"{"scenario":"body","reply_on_body":true}"#),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    let resp = c.post("/refused", "0123456789").await;
    assert_eq!(resp.status, 422, "{resp:?}");
    // The replying filter's own response-body phase (upper-casing) ran on its reply too.
    assert_eq!(resp.text(), "REJECTED");
    assert_eq!(resp.header("x-body-size"), Some("10"));
    assert_eq!(resp.header("x-order"), Some("a"));
    assert_eq!(wait_log(addr, "a", "422").await, "422");
    // Over h2 as well.
    let mut h2 = H2Client::connect(addr).await;
    let resp = h2.post("/refused2", "abc").await;
    assert_eq!(resp.status, 422, "{resp:?}");
    assert_eq!(resp.header("x-body-size"), Some("3"));
    // No complete request reached the upstream.
    assert!(
        echo.requests().iter().all(|r| r.body.is_empty()),
        "{:?}",
        echo.requests()
    );
}

/// `weir.route.timeout_ms: 0` means "no timeout" (Envoy's route timeout 0 disables it), not
/// "time out at once".
#[tokio::test]
async fn a_zero_route_timeout_disables_the_timeout() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("router", "r")])
        .start()
        .await;
    let addr = weir.listener_addr("main");
    // An upstream that answers only once the test lets it.
    let req =
        tokio::spawn(async move { get_with(addr, "/hold", &[("x-route-timeout-ms", "0")]).await });
    echo.wait_requests(1).await;
    echo.release(1);
    let resp = within("the held answer", req).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// A client that goes away mid-response still ends the stream: on_log runs (with the status
/// that was sent).
#[tokio::test]
async fn on_log_runs_when_the_client_leaves_mid_response() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("t", "t")]).start().await;
    let addr = weir.listener_addr("main");
    let (tx, body) = open_stream(addr, "first").await.expect("stream opens");
    // The client drops everything with the exchange half done.
    drop(body);
    drop(tx);
    assert_eq!(wait_log(addr, "t", "200").await, "200");
}

/// `sha256` pins the module: the right digest starts, a wrong one stops `weir run` naming
/// `filters.NAME.sha256`.
#[tokio::test]
async fn a_sha256_pin_is_checked() {
    let out = std::process::Command::new("sha256sum")
        .arg(CONFORMANCE)
        .output()
        .expect("sha256sum(1)");
    let digest = String::from_utf8(out.stdout).unwrap();
    let digest = digest.split_whitespace().next().unwrap().to_string();
    assert_eq!(digest.len(), 64);
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("pinned", "p").sha256(&digest)])
        .start()
        .await;
    let resp = get_with(weir.listener_addr("main"), "/pinned", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let wrong = "0".repeat(64);
    let stderr = run_fails(&bad_filter_manifest(
        conformance("broken", r#"{"scenario":"none"}"#).sha256(&wrong),
    ))
    .await;
    assert!(
        stderr.contains("filters.broken.sha256"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&digest),
        "the actual digest is named: {stderr}"
    );
}

/// Shared queues across workers: every request's VM (on either worker) enqueues its path; the
/// VM that registered the queue is notified on its own worker and dequeues every item.
#[tokio::test]
async fn shared_queue_items_from_every_worker_are_dequeued() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("count", "q"),
            conformance("queue", r#"{"scenario":"queue","queue":"paths"}"#),
        ],
    )
    .workers(2)
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut vms = HashSet::new();
    let mut n = 0;
    while vms.len() < 2 || n < 6 {
        assert!(n < 200, "200 connections all went to one worker");
        let resp = get_with(addr, &format!("/q{n}"), &[]).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        n += 1;
        let r = &echo.wait_requests(n).await[n - 1];
        assert_eq!(r.header("x-queue"), Some("enqueued"));
        vms.insert(r.header("x-trace-q-vm").unwrap().to_string());
    }
    within("every enqueued path to be dequeued", async {
        loop {
            let err = weir.stderr();
            if (0..n).all(|i| {
                err.contains(&format!("queue: dequeued /q{i}\n"))
                    || err.contains(&format!("queue: dequeued /q{i} "))
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A local reply with an informational status (1xx) cannot be a final response: the client gets
/// a final answer (not a hang, not a bare 1xx), and the connection stays usable or closes.
#[tokio::test]
async fn a_local_reply_with_a_1xx_status_is_still_a_final_answer() {
    let echo = EchoServer::start().await;
    for status in [100, 101, 103] {
        let weir = one_chain(
            echo.addr,
            vec![conformance(
                "deny",
                &format!(r#"{{"scenario":"local_reply","status":{status}}}"#),
            )],
        )
        .start()
        .await;
        let addr = weir.listener_addr("main");
        let mut c = weir_tests::RawClient::connect(addr).await;
        c.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let r = within(
            &format!("a final answer to a {status} local reply"),
            c.read_response(),
        )
        .await;
        assert!(
            r.status >= 200,
            "local reply {status}: the client got {} as the answer: {}",
            r.status,
            r.head
        );
        let mut h2 = H2Client::connect(addr).await;
        let req = h2.request("GET", "/y").body(body_empty()).unwrap();
        let got = within(
            &format!("h2 answer to a {status} local reply"),
            h2.send(req),
        )
        .await;
        if let Ok(resp) = got {
            assert!(resp.status().as_u16() >= 200, "h2 {status}: {resp:?}");
        }
    }
    assert_eq!(echo.requests().len(), 0);
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

/// A gRPC local reply is trailers-only on the wire too: its HEADERS frame ends the stream.
#[tokio::test]
async fn grpc_local_reply_headers_end_the_stream() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "deny",
            r#"{"scenario":"local_reply","grpc":true}"#,
        )],
    )
    .start()
    .await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("POST", "/weir.test.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(weir_tests::body_full(&b"\0\0\0\0\0"[..]))
        .unwrap();
    let resp = c.send(req).await.expect("response");
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("7")
    );
    assert!(
        hyper::body::Body::is_end_stream(resp.body()),
        "the gRPC local reply's HEADERS frame did not end the stream"
    );
}

/// Metrics a filter defines (`proxy_define_metric`) are exported on admin `/metrics`, summed over
/// every worker's VM: counters and gauges as `weir_filter_metric{filter,name}`, histograms as
/// `_count` / `_sum`.
#[tokio::test]
async fn filter_defined_metrics_are_exported_on_admin() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "m",
            r#"{"scenario":"metrics","prefix":"demo"}"#,
        )],
    )
    .workers(2)
    .start()
    .await;
    let addr = weir.listener_addr("main");
    for i in 0..6 {
        let r = get_with(addr, &format!("/r{i}"), &[("x-value", "7")]).await;
        assert_eq!(r.status, 200);
    }
    let text = weir_tests::tls::get_metrics(weir.admin_addr()).await;
    let value = |name: &str, metric: &str| {
        weir_tests::tls::metric_values(&text, name, &[("filter", "m"), ("name", metric)])
    };
    assert_eq!(
        value("weir_filter_metric", "demo.requests"),
        [6.0],
        "{text}"
    );
    assert_eq!(
        value("weir_filter_metric_count", "demo.sizes"),
        [6.0],
        "{text}"
    );
    assert_eq!(
        value("weir_filter_metric_sum", "demo.sizes"),
        [42.0],
        "{text}"
    );
}
