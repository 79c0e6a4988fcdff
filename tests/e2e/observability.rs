//! Observability (issue 9): `/metrics` parses as Prometheus text and its counters match the
//! traffic sent (downstream by listener and class, upstream by cluster and endpoint, histogram
//! counts, connections, a filter-defined counter with its filter label); an in-test OTLP/HTTP
//! collector receives a server and a client span per request with the right parent/child links
//! and the propagated trace id; access-log lines match their requests field by field; the log
//! filter changes at run time through `/logging`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::otlp::{CLIENT, OtlpReceiver, SERVER};
use weir_tests::prom::Metrics;
use weir_tests::tls::Json;
use weir_tests::{
    ChainManifest, EchoServer, FilterDef, H1Client, H2Client, RawClient, Weir, eventually,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// One scrape of `/metrics`, parsed strictly.
pub(crate) async fn scrape(admin: SocketAddr) -> Metrics {
    let mut c = H1Client::connect(admin).await;
    let r = c.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    Metrics::parse(&r.text()).unwrap_or_else(|e| panic!("/metrics does not parse: {e}"))
}

/// Scrapes until `n` requests are counted (a request is counted right after its last byte is
/// written, so a scrape may race the final count by microseconds); bounded by the suite's timeout.
async fn scrape_counted(admin: SocketAddr, n: f64) -> Metrics {
    eventually(&format!("{n} requests counted"), async || {
        let m = scrape(admin).await;
        match m.sum("weir_downstream_rq_time_seconds_count", &[]) {
            counted if counted == n => Ok(m),
            counted => Err(format!("{counted} requests counted")),
        }
    })
    .await
}

#[tokio::test]
async fn metrics_count_the_traffic_sent() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let weir = ChainManifest::new()
        .cluster("web", &[a.addr, b.addr])
        .listener("main", "web", None)
        .listener("edge", "web", Some("obs"))
        .listener("idle", "web", None)
        .chain("obs", &["t"])
        .filter(FilterDef::new("t", "builtin:telemetry").config(r#"{"access_log": false}"#))
        .start()
        .await;
    let admin = weir.admin_addr();

    // main (HTTP/1.1, one connection): 5 × 200 and 2 × 503 from the upstream.
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for i in 0..7 {
        let path = if i % 3 == 2 { "/status/503" } else { "/ok" };
        let r = c.get(path).await;
        assert_eq!(r.status, if i % 3 == 2 { 503 } else { 200 });
    }
    // edge (HTTP/2, through the telemetry filter): 3 × 200.
    let mut h2 = H2Client::connect(weir.listener_addr("edge")).await;
    for _ in 0..3 {
        assert_eq!(h2.get("/via-filter").await.status, 200);
    }

    let m = scrape_counted(admin, 10.0).await;
    let class = |l: &str, c: &str| {
        m.get("weir_downstream_rq_total", &[("listener", l), ("class", c)])
            .unwrap_or_else(|| panic!("no weir_downstream_rq_total for {l} {c}"))
    };
    assert_eq!(class("main", "2xx"), 5.0);
    assert_eq!(class("main", "5xx"), 2.0);
    for c in ["1xx", "3xx", "4xx", "none"] {
        assert_eq!(class("main", c), 0.0, "{c}");
    }
    assert_eq!(class("edge", "2xx"), 3.0);
    assert_eq!(class("idle", "2xx"), 0.0);
    for (l, n) in [("main", 7.0), ("edge", 3.0), ("idle", 0.0)] {
        assert_eq!(
            m.get("weir_downstream_rq_time_seconds_count", &[("listener", l)]),
            Some(n),
            "{l}"
        );
        assert_eq!(
            m.get(
                "weir_downstream_rq_time_seconds_bucket",
                &[("listener", l), ("le", "+Inf")]
            ),
            Some(n)
        );
    }
    assert_eq!(m.sum("weir_downstream_rq_active", &[]), 0.0);
    assert_eq!(
        m.get("weir_downstream_cx_total", &[("listener", "main")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("weir_downstream_cx_active", &[("listener", "edge")]),
        Some(1.0)
    );
    assert_eq!(m.sum("weir_downstream_rq_flags_total", &[]), 0.0);

    // Upstream, per endpoint: exactly what each echo server saw.
    for echo in [&a, &b] {
        let ep = echo.addr.to_string();
        let seen = echo.requests();
        let fives = seen
            .iter()
            .filter(|r| r.uri.path() == "/status/503")
            .count() as f64;
        let labels = |class| {
            [
                ("cluster", "web"),
                ("endpoint", ep.as_str()),
                ("class", class),
            ]
        };
        assert_eq!(
            m.get("weir_upstream_rq_total", &labels("2xx")),
            Some(seen.len() as f64 - fives),
            "{ep}"
        );
        assert_eq!(m.get("weir_upstream_rq_total", &labels("5xx")), Some(fives));
        let ep_labels = [("cluster", "web"), ("endpoint", ep.as_str())];
        assert_eq!(
            m.get("weir_upstream_rq_time_seconds_count", &ep_labels),
            Some(seen.len() as f64)
        );
        assert_eq!(
            m.get("weir_upstream_cx_total", &ep_labels),
            Some(echo.accepts() as f64),
            "connections opened = accepts at {ep}"
        );
    }
    assert_eq!(m.sum("weir_upstream_rq_total", &[("cluster", "web")]), 10.0);
    assert_eq!(m.sum("weir_upstream_cx_connect_fail_total", &[]), 0.0);

    // The filter's own counter, with its filter label (and the labels it flattens into its name).
    let by_filter = m.sum(
        "weir_filter_metric",
        &[
            ("filter", "t"),
            ("name", "telemetry.requests_total"),
            ("class", "2xx"),
        ],
    );
    assert_eq!(by_filter, 3.0, "{:#?}", m.series("weir_filter_metric"));
    // Per-filter insight: callbacks counted; callback-time histograms per phase exist.
    assert!(m.sum("weir_filter_callbacks_total", &[("filter", "t")]) > 0.0);
    assert!(
        m.get(
            "weir_filter_callback_duration_seconds_count",
            &[("filter", "t"), ("phase", "request_headers")]
        )
        .is_some()
    );
    // Timed callbacks stand for 16 calls each.
    for s in m.series("weir_filter_callback_duration_seconds_count") {
        assert_eq!(s.value % 16.0, 0.0, "{s:?}");
    }
    assert_eq!(m.sum("weir_filter_traps_total", &[("filter", "t")]), 0.0);
}

#[tokio::test]
async fn upstream_failures_count_by_kind_and_flag() {
    let closed = weir_tests::closed_port();
    let weir = ChainManifest::new()
        .cluster("dead", &[closed])
        .listener("main", "dead", None)
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for _ in 0..3 {
        assert_eq!(c.get("/").await.status, 503);
    }
    let ep = closed.to_string();
    let m = scrape_counted(weir.admin_addr(), 3.0).await;
    let labels = [("cluster", "dead"), ("endpoint", ep.as_str())];
    assert_eq!(
        m.get("weir_upstream_cx_connect_fail_total", &labels),
        Some(3.0)
    );
    assert_eq!(m.get("weir_upstream_cx_total", &labels), Some(3.0));
    assert_eq!(
        m.get(
            "weir_upstream_rq_total",
            &[labels[0], labels[1], ("class", "none")]
        ),
        Some(3.0)
    );
    assert_eq!(
        m.get(
            "weir_downstream_rq_flags_total",
            &[("listener", "main"), ("flag", "UF")]
        ),
        Some(3.0)
    );
    assert_eq!(
        m.get(
            "weir_downstream_rq_total",
            &[("listener", "main"), ("class", "5xx")]
        ),
        Some(3.0)
    );
}

/// `00-<32 hex>-<16 hex>-<2 hex>` → (trace id, parent id, flags).
#[track_caller]
fn split_traceparent(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert!(
        p.len() == 4 && p[0] == "00" && p[1].len() == 32 && p[2].len() == 16 && p[3].len() == 2,
        "not a traceparent: {tp}"
    );
    (p[1].into(), p[2].into(), p[3].into())
}

fn tracing_yaml(collector: &str) -> String {
    format!(
        "telemetry:\n  tracing:\n    collector: {collector}\n    service_name: weir-e2e\n    batch_delay: 20ms\n"
    )
}

#[tokio::test]
async fn traces_link_server_and_client_spans_and_propagate_the_context() {
    let otlp = OtlpReceiver::start().await;
    let echo = EchoServer::start().await;
    let yaml = ChainManifest::new()
        .cluster("web", &[echo.addr])
        .listener("main", "web", None)
        .yaml()
        + &tracing_yaml(&otlp.url());
    let weir = Weir::start(&yaml).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;

    // 1. A request that continues a trace.
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let r = c
        .get_with(
            "/items?id=7",
            &[("traceparent", &incoming), ("tracestate", "vendor=x")],
        )
        .await;
    assert_eq!(r.status, 200);
    let rec = &echo.wait_requests(1).await[0];
    let (trace, upstream_parent, flags) = split_traceparent(rec.header("traceparent").unwrap());
    assert_eq!(trace, TRACE, "the trace id is propagated");
    assert_eq!(flags, "01");
    assert_eq!(rec.header("tracestate"), Some("vendor=x"));

    let spans = otlp.wait_trace(TRACE, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = spans
        .iter()
        .find(|s| s.kind == SERVER)
        .expect("a server span");
    let client = spans
        .iter()
        .find(|s| s.kind == CLIENT)
        .expect("a client span");
    assert_eq!(
        server.parent_span_id, PARENT,
        "server span's parent: the caller"
    );
    assert_eq!(
        client.parent_span_id, server.span_id,
        "client span's parent: the server span"
    );
    assert_eq!(
        upstream_parent, client.span_id,
        "the upstream's parent id is the client span"
    );
    assert_eq!(server.name, "GET");
    assert_eq!(server.attr("http.request.method"), Some("GET"));
    assert_eq!(server.attr("url.path"), Some("/items"));
    assert_eq!(server.attr("url.query"), Some("id=7"));
    assert_eq!(server.attr("url.scheme"), Some("http"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("network.protocol.version"), Some("1.1"));
    assert_eq!(server.attr("weir.listener"), Some("main"));
    assert_eq!(
        server.attr("weir.request_id"),
        rec.header("x-request-id"),
        "the request id weir sent upstream"
    );
    assert_eq!(client.attr("http.response.status_code"), Some("200"));
    assert_eq!(client.attr("server.address"), Some("127.0.0.1"));
    let port = echo.addr.port().to_string();
    assert_eq!(client.attr("server.port"), Some(port.as_str()));
    assert_eq!(client.attr("weir.cluster"), Some("web"));
    assert_eq!(
        server.resource.get("service.name").map(String::as_str),
        Some("weir-e2e")
    );
    assert_eq!((server.status, client.status), (0, 0));
    assert!(client.start_unix_nanos >= server.start_unix_nanos);
    assert!(client.end_unix_nanos <= server.end_unix_nanos);

    // 2. No traceparent: a new trace, with the server span as its root.
    assert_eq!(c.get("/fresh").await.status, 200);
    let rec = &echo.wait_requests(2).await[1];
    let (fresh, up_parent, _) = split_traceparent(rec.header("traceparent").unwrap());
    assert_ne!(fresh, TRACE);
    let spans = otlp.wait_trace(&fresh, 2).await;
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    let client = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    assert_eq!(server.parent_span_id, "", "a root span");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.span_id, up_parent);

    // 3. An upstream 503: both spans carry it, and they are errors.
    assert_eq!(c.get("/status/503").await.status, 503);
    let rec = &echo.wait_requests(3).await[2];
    let (t3, _, _) = split_traceparent(rec.header("traceparent").unwrap());
    let spans = otlp.wait_trace(&t3, 2).await;
    for s in &spans {
        assert_eq!(s.attr("http.response.status_code"), Some("503"), "{s:?}");
        assert_eq!(s.attr("error.type"), Some("503"), "{s:?}");
        assert_eq!(s.status, 2, "status error: {s:?}");
    }

    // 4. An unsampled caller: its decision stands, nothing is exported, the context still flows.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{unsampled}-{PARENT}-00");
    assert_eq!(
        c.get_with("/quiet", &[("traceparent", &tp)]).await.status,
        200
    );
    let rec = &echo.wait_requests(4).await[3];
    let (t4, _, f4) = split_traceparent(rec.header("traceparent").unwrap());
    assert_eq!((t4.as_str(), f4.as_str()), (unsampled, "00"));
    // A later sampled request's spans arrive; the unsampled trace's never do.
    assert_eq!(c.get("/after").await.status, 200);
    let rec = &echo.wait_requests(5).await[4];
    let (t5, _, _) = split_traceparent(rec.header("traceparent").unwrap());
    otlp.wait_trace(&t5, 2).await;
    assert!(otlp.spans().iter().all(|s| s.trace_id != unsampled));
}

#[tokio::test]
async fn the_telemetry_filter_continues_the_core_trace() {
    let otlp = OtlpReceiver::start().await;
    let echo = EchoServer::start().await;
    let yaml = ChainManifest::new()
        .cluster("web", &[echo.addr])
        .listener("main", "web", Some("edge"))
        .chain("edge", &["t"])
        .filter(FilterDef::new("t", "builtin:telemetry").config("{}"))
        .yaml()
        + &tracing_yaml(&otlp.url());
    let weir = Weir::start(&yaml).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        c.get_with("/", &[("traceparent", &incoming)]).await.status,
        200
    );
    let rec = &echo.wait_requests(1).await[0];
    let (trace, up_parent, _) = split_traceparent(rec.header("traceparent").unwrap());
    assert_eq!(trace, TRACE);
    let spans = otlp.wait_trace(TRACE, 2).await;
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    let client = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    // The core owns the upstream traceparent: its client span is the upstream's parent.
    assert_eq!(up_parent, client.span_id);
    assert_eq!(client.parent_span_id, server.span_id);
    // The filter saw the core's server span as its parent and logged the same trace.
    let log = eventually("the filter's access-log line", async || {
        weir.stderr()
            .lines()
            .filter(|l| l.contains(TRACE) && l.contains("parent_id"))
            .filter_map(|l| Some(l[l.find('{')?..=l.rfind('}')?].to_owned()))
            .find_map(|j| Json::parse(&j).ok())
            .ok_or("no JSON line with the trace id and a parent_id in weir's log")
    })
    .await;
    assert_eq!(
        log.get("parent_id").and_then(Json::as_str),
        Some(server.span_id.as_str())
    );
    assert_eq!(log.get("trace_id").and_then(Json::as_str), Some(TRACE));
}

/// Reads the access-log file until it holds `n` lines; returns them parsed.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<Json> {
    eventually(&format!("{n} access-log lines"), async || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() >= n && text.ends_with('\n') {
            Ok(lines
                .iter()
                .map(|l| Json::parse(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
                .collect())
        } else {
            Err(text)
        }
    })
    .await
}

fn s<'a>(v: &'a Json, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Json::as_str)
}

fn n(v: &Json, k: &str) -> Option<i64> {
    v.get(k).and_then(Json::as_i64)
}

#[tokio::test]
async fn access_log_fields_match_the_request() {
    let echo = EchoServer::start().await;
    let closed = weir_tests::closed_port();
    let yaml = ChainManifest::new()
        .cluster("web", &[echo.addr])
        .cluster("dead", &[closed])
        .listener("main", "web", None)
        .listener("broken", "dead", None)
        .yaml()
        + "telemetry:\n  access_log:\n    path: access.log\n    flush_interval: 10ms\n";
    let weir = Weir::start(&yaml).await;
    let main = weir.listener_addr("main");

    // 1. A POST with a body, on a connection of its own (exact wire byte counts).
    let request = format!(
        "POST /items?x=1 HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: obs-test/1\r\n\
         X-Request-Id: req-42\r\ntraceparent: 00-{TRACE}-{PARENT}-01\r\n\
         Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let mut tcp = tokio::net::TcpStream::connect(main).await.unwrap();
    let local = tcp.local_addr().unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    weir_tests::within("the response to EOF", tcp.read_to_end(&mut response))
        .await
        .unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200 "));

    // 2. An upstream 404 over a kept-alive connection.
    let mut c = H1Client::connect(main).await;
    assert_eq!(c.get("/missing/status/404").await.status, 200);
    assert_eq!(c.get("/status/404").await.status, 404);
    // 3. A cluster that refuses connections: 503 with flag UF.
    let mut b = RawClient::connect(weir.listener_addr("broken")).await;
    b.write(b"GET /down HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(b.read_response().await.status, 503);

    let lines = log_lines(&weir.dir().join("access.log"), 4).await;
    let first = &lines[0];
    assert_eq!(s(first, "method"), Some("POST"));
    assert_eq!(s(first, "path"), Some("/items?x=1"));
    assert_eq!(s(first, "protocol"), Some("HTTP/1.1"));
    assert_eq!(s(first, "authority"), Some("shop.test"));
    assert_eq!(s(first, "user_agent"), Some("obs-test/1"));
    assert_eq!(s(first, "request_id"), Some("req-42"));
    assert_eq!(n(first, "status"), Some(200));
    assert_eq!(s(first, "response_flags"), Some("-"));
    assert_eq!(n(first, "bytes_received"), Some(request.len() as i64));
    assert_eq!(n(first, "bytes_sent"), Some(response.len() as i64));
    assert_eq!(
        s(first, "upstream_host"),
        Some(echo.addr.to_string().as_str())
    );
    assert_eq!(s(first, "upstream_cluster"), Some("web"));
    assert_eq!(s(first, "route"), Some("default"));
    assert_eq!(s(first, "listener"), Some("main"));
    assert_eq!(
        s(first, "downstream_remote_address"),
        Some(local.to_string().as_str())
    );
    assert_eq!(s(first, "trace_id"), Some(TRACE), "from the traceparent");
    assert!(first.get("peer_identity").is_some_and(|v| *v == Json::Null));
    assert!(first.get("error").is_some_and(|v| *v == Json::Null));
    let total = match first.get("duration_ms") {
        Some(Json::Num(d)) => *d,
        other => panic!("duration_ms: {other:?}"),
    };
    let upstream = match first.get("upstream_service_time_ms") {
        Some(Json::Num(d)) => *d,
        other => panic!("upstream_service_time_ms: {other:?}"),
    };
    assert!(total >= upstream && upstream >= 0.0, "{total} {upstream}");
    let start = s(first, "start_time").unwrap();
    assert!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T',
        "RFC 3339 with milliseconds: {start}"
    );

    assert_eq!(n(&lines[1], "status"), Some(200));
    assert_eq!(s(&lines[1], "path"), Some("/missing/status/404"));
    assert_eq!(n(&lines[2], "status"), Some(404));
    assert_eq!(s(&lines[2], "response_flags"), Some("-"));
    // A request without x-request-id gets weir's; the log shows the one sent upstream.
    let sent_id = echo.requests()[2]
        .header("x-request-id")
        .unwrap()
        .to_owned();
    assert_eq!(s(&lines[2], "request_id"), Some(sent_id.as_str()));

    let down = &lines[3];
    assert_eq!(n(down, "status"), Some(503));
    assert_eq!(s(down, "response_flags"), Some("UF"));
    assert_eq!(s(down, "error"), Some("upstream_connect_failure"));
    assert_eq!(s(down, "upstream_host"), Some(closed.to_string().as_str()));
    assert_eq!(s(down, "upstream_cluster"), Some("dead"));
    assert_eq!(s(down, "listener"), Some("broken"));
}

#[tokio::test]
async fn access_log_to_stdout_with_chosen_fields() {
    let echo = EchoServer::start().await;
    let yaml = ChainManifest::new()
        .cluster("web", &[echo.addr])
        .listener("main", "web", None)
        .yaml()
        + "telemetry:\n  access_log:\n    fields: [method, status, path]\n    flush_interval: 10ms\n";
    let weir = Weir::start(&yaml).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_eq!(c.get("/a").await.status, 200);
    assert_eq!(c.get("/status/418").await.status, 418);
    let lines = eventually("two lines on stdout", async || {
        let out = weir.stdout_after_ready();
        if out.len() >= 2 { Ok(out) } else { Err(out) }
    })
    .await;
    assert_eq!(
        lines,
        [
            r#"{"method":"GET","status":200,"path":"/a"}"#,
            r#"{"method":"GET","status":418,"path":"/status/418"}"#
        ]
    );
}

#[tokio::test]
async fn bad_telemetry_sections_are_refused_with_their_paths() {
    let out = weir_tests::check(concat!(
        "listeners: [{name: a, address: 127.0.0.1:0, default_cluster: c}]\n",
        "clusters: {c: {endpoints: [127.0.0.1:1]}}\n",
        "telemetry:\n",
        "  tracing: {collector: \"https://x:4318\", sample_ratio: 1.5, max_batch: 0}\n",
        "  access_log: {fields: [status, nope], path: /no/such/dir/a.log}\n",
    ));
    assert!(!out.status.success());
    for want in [
        "telemetry.tracing.collector",
        "telemetry.tracing.sample_ratio",
        "telemetry.tracing.max_batch",
        "telemetry.access_log.fields[1]: unknown field `nope`",
        "telemetry.access_log.path",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want} in:\n{}",
            out.stderr
        );
    }
}

const TOKEN: &str = "obs-token-1";

/// One admin request with `Connection: close`.
async fn admin(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut c = RawClient::connect(addr).await;
    c.write(head.as_bytes()).await.unwrap();
    let r = c.read_response().await;
    (r.status, r.text())
}

#[tokio::test]
async fn the_log_level_changes_at_run_time() {
    let echo = EchoServer::start().await;
    let yaml = ChainManifest::new()
        .cluster("web", &[echo.addr])
        .listener("main", "web", None)
        .yaml()
        .replace(
            "admin: { address: 127.0.0.1:0 }",
            "admin: { address: 127.0.0.1:0, token_file: token }",
        );
    let weir = Weir::start_with_files(
        &yaml,
        &[("token", TOKEN.as_bytes())],
        &["--log-level", "info"],
    )
    .await;
    let a = weir.admin_addr();
    let (status, body) = admin(a, "GET", "/logging", None).await;
    // `info` from --log-level (unless RUST_LOG is set where the tests run).
    assert_eq!(
        (status, body.contains("\"filter\": ")),
        (200, true),
        "{body}"
    );

    // A mutation: no token, no change.
    assert_eq!(admin(a, "POST", "/logging?level=debug", None).await.0, 401);
    assert_eq!(
        admin(a, "POST", "/logging?level=loud", Some(TOKEN)).await.0,
        400
    );
    assert_eq!(
        admin(a, "PUT", "/logging?level=debug", Some(TOKEN)).await.0,
        405
    );
    let (status, body) = admin(a, "POST", "/logging?level=debug", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"filter\": \"debug\""), "{body}");
    assert!(admin(a, "GET", "/logging", None).await.1.contains("debug"));

    // Debug lines now appear: a malformed request is logged at debug level.
    let mut c = RawClient::connect(weir.listener_addr("main")).await;
    c.write(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(c.read_response().await.status, 400);
    eventually("a debug line", async || {
        match weir.stderr().contains("rejected request") {
            true => Ok(()),
            false => Err("no `rejected request` in weir's log"),
        }
    })
    .await;

    // Targeted filters work too.
    let (status, body) = admin(
        a,
        "POST",
        "/logging?filter=warn%2Cweir%3A%3Aaudit%3Dinfo",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("weir::audit=info"), "{body}");
}

#[tokio::test]
async fn access_log_lines_are_written_on_shutdown() {
    let echo = EchoServer::start().await;
    let yaml = ChainManifest::new()
        .cluster("web", &[echo.addr])
        .listener("main", "web", None)
        .yaml()
        + "drain_timeout: 5s\ntelemetry:\n  access_log:\n    path: access.log\n    flush_interval: 1h\n";
    let mut weir = Weir::start(&yaml).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_eq!(c.get("/last").await.status, 200);
    drop(c);
    weir.sigterm();
    assert!(weir.wait_exit(Duration::from_secs(10)).await.success());
    let text = std::fs::read_to_string(weir.dir().join("access.log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(s(&Json::parse(lines[0]).unwrap(), "path"), Some("/last"));
}

#[tokio::test]
async fn a_dead_collector_never_fails_a_request() {
    let echo = EchoServer::start().await;
    let dead = format!("http://{}", weir_tests::closed_port());
    let yaml = ChainManifest::new()
        .cluster("web", &[echo.addr])
        .listener("main", "web", None)
        .yaml()
        + &tracing_yaml(&dead);
    let weir = Weir::start(&yaml).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    for i in 0..20 {
        assert_eq!(c.get(&format!("/{i}")).await.status, 200);
    }
    // Exports keep failing (every 20 ms) while requests are served and traced.
    let rec = &echo.wait_requests(20).await[19];
    split_traceparent(rec.header("traceparent").unwrap());
    assert_eq!(c.get("/still").await.status, 200);
}
