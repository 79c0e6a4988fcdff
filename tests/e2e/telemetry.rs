//! `builtin:telemetry` end to end: the real `weir` process between a client and an echo upstream.
//! A client's `traceparent` reaches the upstream with the same trace id and weir's own span id,
//! and weir's log (stderr) carries the JSON access-log line of the request; without a
//! `traceparent` the upstream gets a fresh valid one.

use std::net::SocketAddr;

use weir_tests::client::Collected;
use weir_tests::tls::Json;
use weir_tests::{ChainManifest, EchoServer, FilterDef, H1Client, Weir, eventually};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// One listener `main` → cluster `web` (`ep`) through chain `edge` = one `builtin:telemetry`.
async fn start(ep: SocketAddr, json: &str) -> Weir {
    ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[ep])
        .chain("edge", &["t"])
        .filter(FilterDef::new("t", "builtin:telemetry").config(json))
        .start()
        .await
}

async fn get(c: &mut H1Client, path: &str, headers: &[(&str, &str)]) -> Collected {
    c.get_with(path, headers).await
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lower case, non-zero ids → (trace id, span id, flags).
#[track_caller]
fn split_traceparent(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && s.bytes().any(|b| b != b'0')
    };
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && parts[3].len() == 2,
        "not a valid traceparent: {tp}"
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// Member `key` of an access-log line, as text.
fn field<'a>(log: &'a Json, key: &str) -> Option<&'a str> {
    log.get(key).and_then(Json::as_str)
}

/// Polls weir's stderr for the JSON access-log line whose `trace_id` is `trace` (written when the
/// response body has ended, which can be just after the client has read it).
async fn access_log(weir: &Weir, trace: &str) -> Json {
    eventually(
        &format!("the access log line with trace_id {trace}"),
        async || {
            weir.stderr()
                .lines()
                .filter(|l| l.contains(trace))
                // tracing's line: `<time>  INFO {json} filter="t"`.
                .filter_map(|l| Some(&l[l.find('{')?..=l.rfind('}')?]))
                .filter_map(|j| Json::parse(j).ok())
                .find(|v| field(v, "trace_id") == Some(trace))
                .ok_or("no such line in weir's log")
        },
    )
    .await
}

#[tokio::test]
async fn traceparent_propagated_to_the_upstream_and_to_the_access_log() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, r#"{"service_name": "edge"}"#).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let r = get(
        &mut c,
        "/items?id=1",
        &[
            ("traceparent", &incoming),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    let rec = &echo.wait_requests(1).await[0];
    let (trace, span, flags) = split_traceparent(rec.header("traceparent").unwrap());
    assert_eq!(trace, TRACE);
    assert_ne!(span, PARENT, "weir is a hop of its own");
    assert_eq!(flags, "01");
    assert_eq!(rec.header("tracestate"), Some("congo=t61rcWkgMzE"));
    let request_id = rec.header("x-request-id").expect("weir sets x-request-id");

    let log = access_log(&weir, TRACE).await;
    let upstream = echo.addr.to_string();
    for (key, want) in [
        ("span_id", span.as_str()),
        ("parent_id", PARENT),
        ("service", "edge"),
        ("method", "GET"),
        ("path", "/items?id=1"),
        ("request_id", request_id),
        ("upstream", upstream.as_str()),
        ("cluster", upstream.as_str()),
    ] {
        assert_eq!(field(&log, key), Some(want), "{key} in {log:?}");
    }
    assert_eq!(
        log.get("status").and_then(Json::as_i64),
        Some(200),
        "{log:?}"
    );
    assert!(
        matches!(log.get("duration_ms"), Some(Json::Num(d)) if *d >= 0.0),
        "{log:?}"
    );
}

#[tokio::test]
async fn an_absent_traceparent_becomes_a_fresh_valid_one() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, "{}").await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_eq!(get(&mut c, "/a", &[]).await.status, 200);
    // An invalid one (upper case) is replaced the same way.
    let upper = format!("00-{}-{PARENT}-01", TRACE.to_ascii_uppercase());
    assert_eq!(
        get(&mut c, "/b", &[("traceparent", &upper)]).await.status,
        200
    );

    let recs = echo.wait_requests(2).await;
    let (t1, _, f1) = split_traceparent(recs[0].header("traceparent").unwrap());
    let (t2, _, f2) = split_traceparent(recs[1].header("traceparent").unwrap());
    assert_ne!(t1, t2);
    assert_ne!(t2, TRACE.to_ascii_lowercase());
    assert_eq!((f1.as_str(), f2.as_str()), ("01", "01"), "sampled at 100%");
    assert_eq!(field(&access_log(&weir, &t1).await, "path"), Some("/a"));
    assert_eq!(field(&access_log(&weir, &t2).await, "path"), Some("/b"));
}
