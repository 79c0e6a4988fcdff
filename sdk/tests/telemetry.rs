//! `builtin:telemetry` (filters/telemetry) through the native harness: W3C `traceparent`
//! continued or replaced, `tracestate` kept or dropped, sampling of new traces, the
//! `weir.trace.*` properties, request metrics by cluster and status class, the duration
//! histogram, the JSON access log, and refused configurations.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use weir_sdk::testing::host_abi::MetricValue;
use weir_sdk::testing::{Filter, HttpStream, LogLevel, build_filter};

fn wasm() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_filter(concat!(env!("CARGO_MANIFEST_DIR"), "/../filters/telemetry")))
        .clone()
}

/// A telemetry filter named `name` (metrics are keyed by plugin name; each test uses its own).
fn telemetry(name: &str, config: Value) -> Filter {
    Filter::load(wasm())
        .expect("telemetry loads")
        .name(name)
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("telemetry starts with its configuration: {e}"))
}

fn metric(f: &Filter, plugin: &str, name: &str) -> Option<MetricValue> {
    f.driver().vm.runtime().metrics().get(plugin, name)
}

fn counter(f: &Filter, plugin: &str, name: &str) -> u64 {
    match metric(f, plugin, name) {
        Some(MetricValue::Counter(n)) => n,
        other => panic!("{name}: {other:?}"),
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn get_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![
        (":method", "GET"),
        (":path", "/api/items?id=7"),
        (":authority", "api.example.com"),
        (":scheme", "http"),
        ("x-request-id", "req-123"),
    ];
    h.extend_from_slice(extra);
    h
}

fn request(f: &Filter, extra: &[(&'static str, &'static str)]) -> HttpStream {
    let mut s = f.http_stream();
    let step = s.request_headers(&get_with(extra), true);
    assert!(step.is_continue(), "{step:?}");
    assert!(step.local_reply.is_none(), "{step:?}");
    s
}

/// Checks `00-<32 hex>-<16 hex>-<2 hex>` (lower case, non-zero ids) and returns the parts.
#[track_caller]
fn split_traceparent(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && s.bytes().any(|b| b != b'0')
    };
    assert!(hex(parts[1], 32), "trace id of {tp}");
    assert!(hex(parts[2], 16), "span id of {tp}");
    assert!(
        parts[3].len() == 2 && parts[3].bytes().all(|b| b.is_ascii_hexdigit()),
        "{tp}"
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The access-log lines (info-level JSON objects) logged so far.
fn access_logs(f: &Filter) -> Vec<Value> {
    f.logs()
        .into_iter()
        .filter(|l| l.level == LogLevel::Info)
        .map(|l| {
            serde_json::from_str(&l.message)
                .unwrap_or_else(|e| panic!("access log {:?} is not JSON: {e}", l.message))
        })
        .collect()
}

#[test]
fn a_valid_traceparent_is_continued_with_a_new_span() {
    let f = telemetry("continue", json!({}));
    for flags in ["01", "00"] {
        let incoming = format!("00-{TRACE}-{PARENT}-{flags}");
        let mut s = f.http_stream();
        let mut h = get_with(&[]);
        h.push(("traceparent", &incoming));
        assert!(s.request_headers(&h, true).is_continue());
        let (trace, span, out_flags) = split_traceparent(s.request_header("traceparent").unwrap());
        assert_eq!(trace, TRACE);
        assert_ne!(span, PARENT, "a new span id for this hop");
        assert_eq!(out_flags, flags);
        assert_eq!(s.property_str("weir.trace.trace_id"), Some(TRACE));
        assert_eq!(s.property_str("weir.trace.span_id"), Some(span.as_str()));
        assert_eq!(s.property_str("weir.trace.parent_id"), Some(PARENT));
        let sampled = if flags == "01" { "1" } else { "0" };
        assert_eq!(s.property_str("weir.trace.sampled"), Some(sampled));
    }
}

#[test]
fn span_ids_differ_per_request() {
    let f = telemetry("spans", json!({}));
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let mut spans = std::collections::HashSet::new();
    for _ in 0..100 {
        let mut s = f.http_stream();
        let mut h = get_with(&[]);
        h.push(("traceparent", &incoming));
        s.request_headers(&h, true);
        spans.insert(split_traceparent(s.request_header("traceparent").unwrap()).1);
    }
    assert_eq!(spans.len(), 100);
}

#[test]
fn reserved_flag_bits_are_cleared() {
    let f = telemetry("flags", json!({}));
    let incoming = format!("00-{TRACE}-{PARENT}-09");
    let mut s = f.http_stream();
    let mut h = get_with(&[]);
    h.push(("traceparent", &incoming));
    s.request_headers(&h, true);
    let (trace, _, flags) = split_traceparent(s.request_header("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
}

#[test]
fn invalid_traceparents_start_a_new_trace() {
    let f = telemetry("invalid", json!({}));
    let bad = [
        format!("00-{TRACE}-{PARENT}-1"),             // bad length
        format!("00-{TRACE}0-{PARENT}-01"),           // bad length
        format!("00-{}-{PARENT}-01", "0".repeat(32)), // zero trace id
        format!("00-{TRACE}-{}-01", "0".repeat(16)),  // zero parent id
        format!("00-{}-{PARENT}-01", TRACE.to_ascii_uppercase()), // upper case
        format!("ff-{TRACE}-{PARENT}-01"),            // forbidden version
        format!("00-{TRACE}-{PARENT}-01-extra"),      // version 00 is exact
        "garbage".to_owned(),
    ];
    for tp in &bad {
        let mut s = f.http_stream();
        let mut h = get_with(&[("tracestate", "congo=t61rcWkgMzE")]);
        h.push(("traceparent", tp));
        assert!(s.request_headers(&h, true).is_continue());
        let out = s.request_header("traceparent").unwrap().to_owned();
        let (trace, span, flags) = split_traceparent(&out);
        assert_ne!(trace, TRACE, "{tp} must not be continued");
        assert_eq!(flags, "01", "sampled at the default 100%");
        assert_eq!(s.property_str("weir.trace.trace_id"), Some(trace.as_str()));
        assert_eq!(s.property_str("weir.trace.span_id"), Some(span.as_str()));
        assert_eq!(s.property_str("weir.trace.parent_id"), None);
        assert_eq!(
            s.request_header("tracestate"),
            None,
            "the tracestate of a discarded trace goes with it ({tp})"
        );
    }
}

#[test]
fn a_higher_version_keeps_trace_id_and_sampled_flag() {
    let f = telemetry("future", json!({}));
    let incoming = format!("cc-{TRACE}-{PARENT}-03-more-fields");
    let mut s = f.http_stream();
    let mut h = get_with(&[]);
    h.push(("traceparent", &incoming));
    s.request_headers(&h, true);
    let (trace, _, flags) = split_traceparent(s.request_header("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
}

#[test]
fn an_absent_traceparent_is_created_and_sampled_per_config() {
    let all = telemetry("sample100", json!({"sample_percent": 100}));
    let none = telemetry("sample0", json!({"sample_percent": 0}));
    let mut traces = std::collections::HashSet::new();
    for _ in 0..50 {
        let s = request(&all, &[]);
        let (trace, _, flags) = split_traceparent(s.request_header("traceparent").unwrap());
        assert_eq!(flags, "01");
        assert_eq!(s.property_str("weir.trace.sampled"), Some("1"));
        traces.insert(trace);
        let s = request(&none, &[]);
        let (trace, _, flags) = split_traceparent(s.request_header("traceparent").unwrap());
        assert_eq!(flags, "00");
        assert_eq!(s.property_str("weir.trace.sampled"), Some("0"));
        traces.insert(trace);
    }
    assert_eq!(traces.len(), 100, "every new trace id is fresh");
}

#[test]
fn sampling_follows_the_percentage() {
    let f = telemetry("sample25", json!({"sample_percent": 25}));
    let n = 4000;
    let sampled = (0..n)
        .filter(|_| {
            request(&f, &[])
                .request_header("traceparent")
                .unwrap()
                .ends_with("-01")
        })
        .count();
    let rate = sampled as f64 / f64::from(n);
    assert!((0.22..=0.28).contains(&rate), "sampled rate {rate}");
}

#[test]
fn tracestate_is_kept_or_dropped_when_too_big() {
    let f = telemetry("tracestate", json!({}));
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let small = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let many = members.join(",");
    let thirty_two = members[..32].join(",");
    let long = format!("a={}", "x".repeat(520));
    for (state, kept) in [
        (small, true),
        (thirty_two.as_str(), true),
        (many.as_str(), false),
        (long.as_str(), false),
    ] {
        let mut s = f.http_stream();
        let mut h = get_with(&[]);
        h.push(("traceparent", &tp));
        h.push(("tracestate", state));
        s.request_headers(&h, true);
        assert_eq!(
            s.request_header("tracestate"),
            kept.then_some(state),
            "{state}"
        );
        assert!(s.request_header("traceparent").unwrap().contains(TRACE));
    }
}

#[test]
fn metrics_count_by_cluster_and_class_and_record_durations() {
    let f = telemetry("metrics", json!({}));
    for (status, cluster) in [
        ("200", Some("api")),
        ("204", Some("api")),
        ("503", Some("api")),
        ("404", None),
    ] {
        let mut s = request(&f, &[]);
        if let Some(c) = cluster {
            s.set_property("weir.route.cluster", c);
        }
        f.advance_clock(Duration::from_millis(40));
        s.response_headers(&[(":status", status)], true);
        s.finish();
    }
    // Without a route decision: the upstream address, else "default".
    let mut s = request(&f, &[]);
    s.set_property("upstream.address", "10.0.0.7:8080");
    s.response_headers(&[(":status", "302")], true);
    // The proxy's own duration (nanoseconds) wins over the filter's clock.
    s.set_property_bytes("request.duration", 7_500_000i64.to_le_bytes().to_vec());
    s.finish();

    let c = |name: &str| counter(&f, "metrics", name);
    assert_eq!(c("telemetry.requests_total|cluster=api|class=2xx"), 2);
    assert_eq!(c("telemetry.requests_total|cluster=api|class=5xx"), 1);
    assert_eq!(c("telemetry.requests_total|cluster=default|class=4xx"), 1);
    assert_eq!(
        c("telemetry.requests_total|cluster=10.0.0.7:8080|class=3xx"),
        1
    );
    assert_eq!(
        metric(
            &f,
            "metrics",
            "telemetry.requests_total|cluster=api|class=4xx"
        ),
        None,
        "series are defined only when used"
    );
    assert_eq!(
        metric(&f, "metrics", "telemetry.request_duration_ms|cluster=api"),
        Some(MetricValue::Histogram { count: 3, sum: 120 })
    );
    assert_eq!(
        metric(
            &f,
            "metrics",
            "telemetry.request_duration_ms|cluster=default"
        ),
        Some(MetricValue::Histogram { count: 1, sum: 40 })
    );
    assert_eq!(
        metric(
            &f,
            "metrics",
            "telemetry.request_duration_ms|cluster=10.0.0.7:8080"
        ),
        Some(MetricValue::Histogram { count: 1, sum: 7 })
    );
}

#[test]
fn a_stream_without_a_response_counts_as_class_none() {
    let f = telemetry("noresp", json!({}));
    request(&f, &[]).finish();
    assert_eq!(
        counter(
            &f,
            "noresp",
            "telemetry.requests_total|cluster=default|class=none"
        ),
        1
    );
}

#[test]
fn the_access_log_is_one_json_line_with_the_trace() {
    let f = telemetry("log", json!({"service_name": "edge"}));
    f.clear_logs();
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let mut s = f.http_stream();
    let mut h = get_with(&[]);
    h.push(("traceparent", &tp));
    s.request_headers(&h, true);
    s.set_property("weir.route.cluster", "api")
        .set_property("upstream.address", "10.0.0.7:8080")
        .set_property("weir.auth.principal", "alice")
        .set_property(
            "connection.uri_san_peer_certificate",
            "spiffe://ex.org/ns/a/sa/b",
        )
        .set_property_u64("request.total_size", 12)
        .set_property_u64("response.total_size", 345);
    let span = s.property_str("weir.trace.span_id").unwrap().to_owned();
    f.advance_clock(Duration::from_millis(25));
    s.response_headers(&[(":status", "201")], true);
    s.finish();

    let logs = access_logs(&f);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let l = &logs[0];
    assert_eq!(l["service"], "edge");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["authority"], "api.example.com");
    assert_eq!(l["path"], "/api/items?id=7");
    assert_eq!(l["status"], 201);
    assert_eq!(l["duration_ms"], 25.0);
    assert_eq!(l["bytes_in"], 12);
    assert_eq!(l["bytes_out"], 345);
    assert_eq!(l["upstream"], "10.0.0.7:8080");
    assert_eq!(l["cluster"], "api");
    assert_eq!(l["trace_id"], TRACE);
    assert_eq!(l["span_id"], span.as_str());
    assert_eq!(l["parent_id"], PARENT);
    assert_eq!(l["sampled"], true);
    assert_eq!(l["request_id"], "req-123");
    assert_eq!(l["principal"], "alice");
    assert_eq!(l["peer"], "spiffe://ex.org/ns/a/sa/b");
    let ts = l["ts"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
}

#[test]
fn unknown_fields_of_the_access_log_are_null() {
    let f = telemetry("lognull", json!({}));
    f.clear_logs();
    let mut s = f.http_stream();
    s.request_headers(&[(":method", "POST"), (":path", "/")], true);
    s.finish();
    let logs = access_logs(&f);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let l = &logs[0];
    assert_eq!(l["service"], "weir");
    for field in [
        "authority",
        "status",
        "upstream",
        "request_id",
        "principal",
        "peer",
        "parent_id",
        "bytes_out",
    ] {
        assert!(l[field].is_null(), "{field}: {l}");
    }
    assert_eq!(l["cluster"], "default");
    assert_eq!(l["trace_id"].as_str().unwrap().len(), 32);
}

#[test]
fn the_access_log_can_be_turned_off() {
    let f = telemetry("nolog", json!({"access_log": false}));
    f.clear_logs();
    let mut s = request(&f, &[]);
    s.response_headers(&[(":status", "200")], true);
    s.finish();
    assert!(access_logs(&f).is_empty(), "{:?}", f.logs());
    assert_eq!(
        counter(
            &f,
            "nolog",
            "telemetry.requests_total|cluster=default|class=2xx"
        ),
        1,
        "metrics stay on"
    );
}

#[test]
fn bad_configurations_are_refused() {
    for (config, why) in [
        (json!({"sample_percent": 101}), "sample_percent"),
        (json!({"sample_percent": -1}), "sample_percent"),
        (json!({"sampel_percent": 5}), "unknown field"),
        (json!({"access_log": "yes"}), "invalid type"),
    ] {
        let e = Filter::load(wasm())
            .unwrap()
            .config(config.clone())
            .build()
            .expect_err(&config.to_string());
        assert!(
            e.logs().iter().any(|l| l.message.contains(why)),
            "{config}: {:?}",
            e.logs()
        );
    }
}
