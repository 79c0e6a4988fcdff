//! Tests of the native harness (`weir_sdk::testing`) against real filters: the conformance program
//! of `tests/programs` (built by `weir-test-artifacts`; scenarios documented in
//! `tests/programs/conformance/src/lib.rs`). Each test asserts what the harness reports — maps,
//! bodies, replies, callouts, properties, logs — so it fails when the harness misreports it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use serde_json::json;
use weir_sdk::testing::{
    Action, CalloutResponse, Filter, HarnessError, LogLevel, StreamType, callout_response,
    callout_timeout_response,
};

fn conformance(config: serde_json::Value) -> Filter {
    Filter::load(weir_test_artifacts::CONFORMANCE)
        .expect("conformance loads")
        .name("conformance")
        .config(config)
        .build()
        .expect("conformance starts")
}

const GET: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/items?id=1"),
    (":authority", "example.com"),
    (":scheme", "http"),
];

#[test]
fn request_and_response_headers_as_the_filter_left_them() {
    let f = conformance(json!({"scenario": "headers"}));
    let mut s = f.http_stream();
    let mut req = GET.to_vec();
    req.extend([
        ("x-a", "1"),
        ("x-b", "2"),
        ("x-replace", "old"),
        ("x-remove", "gone"),
    ]);
    let step = s.request_headers(&req, true);
    assert_eq!(step.action, Action::Continue);
    assert!(step.is_continue() && !step.is_pause());
    assert_eq!(step.local_reply, None);
    assert_eq!(s.request_header("x-sum"), Some("12"));
    assert_eq!(s.request_header("X-Replace"), Some("replaced"));
    assert_eq!(s.request_header("x-remove"), None);
    assert_eq!(s.request_header("x-num-headers"), Some("8"));
    assert_eq!(s.request_header_list()[0], (":method".into(), "GET".into()));

    let step = s.response_headers(&[(":status", "201")], true);
    assert!(step.is_continue());
    assert_eq!(s.response_header("x-filter"), Some("conformance"));
    assert_eq!(s.response_header("x-status-seen"), Some("201"));
    assert!(
        s.response_header_list()
            .contains(&("x-filter".into(), "conformance".into()))
    );
    s.finish();
}

#[test]
fn paused_body_chunks_accumulate_then_are_forwarded_edited() {
    let f = conformance(json!({"scenario": "body", "body_op": "prepend_append"}));
    let mut s = f.http_stream();
    let mut req = GET.to_vec();
    req.push(("content-length", "5"));
    s.request_headers(&req, false);
    assert_eq!(s.request_header("content-length"), None);

    let step = s.request_body("hel", false);
    assert_eq!(step.action, Action::Pause);
    assert_eq!(s.buffered_request_body(), b"hel");
    assert_eq!(s.forwarded_request_body(), b"");
    let step = s.request_body("lo", true);
    assert_eq!(step.action, Action::Continue);
    assert_eq!(s.forwarded_request_body(), b"prepend.hello.append");
    assert_eq!(s.buffered_request_body(), b"");
    assert!(f.logged("body: request body=hello"));

    s.response_headers(&[(":status", "200"), ("content-length", "4")], false);
    assert!(s.response_body("ab", false).is_pause());
    assert!(s.response_body("cd", true).is_continue());
    assert_eq!(s.forwarded_response_body(), b"ABCD");
}

#[test]
fn trailers_both_ways() {
    let f = conformance(json!({"scenario": "trailers"}));
    let mut s = f.http_stream();
    s.request_headers(GET, false);
    s.request_body("x", false);
    s.request_trailers(&[("x-trailer-in", "v")]);
    assert_eq!(s.request_trailer("x-trailer-seen"), Some("v"));
    s.response_headers(&[(":status", "200")], false);
    s.response_body("y", true);
    assert_eq!(s.response_trailer("x-response-trailer"), Some("added"));
}

#[test]
fn local_replies_are_reported_with_status_headers_and_body() {
    let f = conformance(json!({"scenario": "local_reply", "status": 401}));
    let mut s = f.http_stream();
    let step = s.request_headers(GET, true);
    assert_eq!(step.action, Action::Pause);
    let reply = step.local_reply.expect("a local reply");
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("x-denied"), Some("1"));
    assert_eq!(reply.body_text(), "denied");
    assert_eq!(reply.grpc_status, None);
    assert_eq!(s.local_reply(), Some(&reply));

    let f = conformance(json!({"scenario": "local_reply", "grpc": true}));
    let mut s = f.http_stream();
    s.request_headers(GET, true);
    let reply = s.local_reply().expect("a gRPC local reply");
    assert_eq!(reply.grpc_status, Some(7));
    assert_eq!(reply.body_text(), "denied");
}

#[test]
fn callouts_are_recorded_and_answered_by_the_test() {
    let f = conformance(json!({"scenario": "callout", "upstream": "auth", "timeout_ms": 250}));
    let mut s = f.http_stream();
    let mut req = GET.to_vec();
    req.push(("x-token", "t1"));
    assert!(s.request_headers(&req, true).is_pause());

    let calls = s.callouts();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.upstream, "auth");
    assert_eq!(call.header(":path"), Some("/check"));
    assert_eq!(call.header("x-token"), Some("t1"));
    assert_eq!(call.body, b"check");
    assert_eq!(
        call.trailers,
        vec![("x-callout-trailer".into(), "1".into())]
    );
    assert_eq!(call.timeout, Some(Duration::from_millis(250)));
    assert_eq!(call.context, s.context());
    assert_eq!(f.callouts(), calls);

    let step = s.answer_callout(
        call.token,
        callout_response(200, &[("x-r", "1")], b"fine", &[("t", "v")]),
    );
    assert_eq!(step.resumed, vec![StreamType::HttpRequest]);
    assert_eq!(s.request_header("x-auth"), Some("ok"));
    assert_eq!(s.request_header("x-auth-body"), Some("fine"));
    assert_eq!(s.request_header("x-auth-trailers"), Some("t=v"));
}

#[test]
fn failed_and_timed_out_callouts() {
    let f = conformance(json!({"scenario": "callout"}));
    let mut s = f.http_stream();
    s.request_headers(GET, true);
    let token = s.callouts()[0].token;
    let step = s.answer_callout(token, CalloutResponse::failure("reset"));
    let reply = step.local_reply.expect("denied after a failed callout");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("x-auth-status"), Some("none"));
    assert!(f.logged("callout: get_status code=11"));

    let mut s = f.http_stream();
    s.request_headers(GET, true);
    let token = s.callouts()[0].token;
    s.answer_callout(token, callout_timeout_response());
    assert_eq!(
        s.local_reply().unwrap().header("x-auth-status"),
        Some("504")
    );
}

#[test]
fn unknown_clusters_fail_to_dispatch() {
    let f = Filter::load(weir_test_artifacts::CONFORMANCE)
        .unwrap()
        .config(json!({"scenario": "callout", "upstream": "nope"}))
        .clusters(&["auth"])
        .build()
        .unwrap();
    let mut s = f.http_stream();
    let step = s.request_headers(GET, true);
    assert_eq!(
        step.local_reply.unwrap().header("x-callout-error"),
        Some("BadArgument")
    );
    assert!(s.callouts().is_empty());
}

#[test]
fn properties_set_by_the_test_and_route_decisions_set_by_the_filter() {
    let f = Filter::load(weir_test_artifacts::CONFORMANCE)
        .unwrap()
        .name("props")
        .root_id("root-a")
        .vm_id("vm-a")
        .property("xds.node.id", "node-1")
        .config(json!({"scenario": "properties", "cluster": "canary"}))
        .build()
        .unwrap();
    assert!(f.logged("properties: root plugin_name=props"));
    assert!(f.logged("properties: root plugin_root_id=root-a"));
    assert!(f.logged("properties: root plugin_vm_id=vm-a"));

    let mut s = f.http_stream();
    s.set_property("source.address", "10.1.2.3:4242")
        .set_property_u64("source.port", 4242)
        .set_property_bool("connection.mtls", true);
    s.request_headers(GET, true);
    assert_eq!(s.route_cluster(), Some("canary"));
    assert_eq!(s.property_str("weir.route.cluster"), Some("canary"));
    assert_eq!(s.route_timeout(), None);
    assert!(f.logged("properties: request.path=/items?id=1"));
    assert!(f.logged("properties: xds.node.id=node-1"));

    s.response_headers(&[(":status", "200")], true);
    assert_eq!(
        s.response_header("x-prop-source.address"),
        Some("10.1.2.3:4242")
    );
    assert_eq!(s.response_header("x-prop-source.port"), Some("4242"));
    assert_eq!(s.response_header("x-prop-connection.mtls"), Some("true"));
    assert_eq!(s.response_header("x-prop-request.method"), Some("GET"));
    assert_eq!(s.response_header("x-prop-response.code"), Some("200"));
    s.finish();
    assert!(f.logged("properties: on_log response.code=200"));
}

#[test]
fn route_accessors_decode_the_fixed_encodings() {
    let f = conformance(json!({}));
    let mut s = f.http_stream();
    s.set_property("weir.route.timeout_ms", "1500")
        .set_property("weir.route.path", "/v2/items?id=1")
        .set_property("weir.route.retries", "3")
        .set_property("weir.route.per_try_timeout_ms", "250");
    assert_eq!(s.route_timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(s.route_per_try_timeout(), Some(Duration::from_millis(250)));
    assert_eq!(s.route_path(), Some("/v2/items?id=1"));
    assert_eq!(s.route_retries(), Some(3));
    assert_eq!(s.route_cluster(), None);
    s.set_property("weir.route.retries", "many");
    assert_eq!(s.route_retries(), None);
}

#[test]
fn logs_are_captured_with_levels() {
    let f = conformance(json!({"scenario": "logging"}));
    f.clear_logs();
    let mut s = f.http_stream();
    s.request_headers(GET, true);
    let logs = f.logs();
    let level_of = |m: &str| logs.iter().find(|l| l.message == m).map(|l| l.level);
    assert_eq!(level_of("logging: trace"), Some(LogLevel::Trace));
    assert_eq!(level_of("logging: warn"), Some(LogLevel::Warn));
    assert_eq!(level_of("logging: critical"), Some(LogLevel::Critical));
    assert_eq!(level_of("logging: stdout"), Some(LogLevel::Info));
    assert_eq!(level_of("logging: stderr"), Some(LogLevel::Error));
    // The filter reads the fake clock, which starts at a fixed instant.
    let expected = f.now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(
        s.request_header("x-time-ns"),
        Some(expected.as_nanos().to_string().as_str())
    );
}

#[test]
fn ticks_fire_on_demand_and_move_the_clock() {
    let f = conformance(json!({"scenario": "tick", "tick_ms": 10, "max_ticks": 2}));
    assert_eq!(f.tick_period(), Some(Duration::from_millis(10)));
    let before = f.now();
    assert!(f.tick().is_some());
    assert_eq!(
        f.now().duration_since(before).unwrap(),
        Duration::from_millis(10)
    );
    assert!(f.logged("tick: n=1"));
    f.tick();
    assert!(f.logged("tick: stopped"));
    assert_eq!(f.tick_period(), None);
    assert!(f.tick().is_none());
}

#[test]
fn finish_runs_log_done_delete_in_order() {
    let f = conformance(json!({"scenario": "lifecycle"}));
    let mut s = f.http_stream();
    let ctx = s.context();
    s.request_headers(GET, true);
    s.response_headers(&[(":status", "200")], true);
    f.clear_logs();
    s.finish();
    let order: Vec<String> = f
        .log_messages()
        .into_iter()
        .filter(|m| m.starts_with("lifecycle:"))
        .collect();
    assert_eq!(
        order,
        [
            format!("lifecycle: on_log ctx={ctx}"),
            format!("lifecycle: on_done ctx={ctx}"),
            format!("lifecycle: on_delete ctx={ctx}"),
        ]
    );
}

#[test]
fn dropping_an_unfinished_stream_finishes_it() {
    let f = conformance(json!({"scenario": "lifecycle"}));
    let ctx = {
        let mut s = f.http_stream();
        s.request_headers(GET, true);
        s.context()
    };
    assert!(f.logged(&format!("lifecycle: on_delete ctx={ctx}")));
    assert!(f.driver().vm.live_streams().is_empty());
}

#[test]
fn a_rejected_configuration_is_a_start_error_with_the_filters_logs() {
    let err = Filter::load(weir_test_artifacts::CONFORMANCE)
        .unwrap()
        .config_bytes("{not json")
        .build()
        .unwrap_err();
    assert!(matches!(
        err.start_error(),
        Some(weir_sdk::testing::host_abi::StartError::ConfigureRejected)
    ));
    assert!(
        err.logs().iter().any(|l| l.level >= LogLevel::Warn),
        "{err}"
    );
}

#[test]
fn missing_files_and_non_wasm_are_load_errors() {
    let err = Filter::load("/nonexistent/filter.wasm").unwrap_err();
    assert!(matches!(err, HarnessError::Read { .. }), "{err}");
    let junk = std::env::temp_dir().join(format!("weir-sdk-junk-{}.wasm", std::process::id()));
    std::fs::write(&junk, b"not wasm").unwrap();
    let err = Filter::load(&junk).unwrap_err();
    std::fs::remove_file(&junk).unwrap();
    assert!(matches!(err, HarnessError::Load { .. }), "{err}");
}

#[test]
fn a_filter_panic_fails_the_test_with_the_filters_message() {
    let f = conformance(json!({"scenario": "none", "panic_in": "on_request_headers"}));
    let mut s = f.http_stream();
    let panic = catch_unwind(AssertUnwindSafe(|| s.request_headers(GET, true))).unwrap_err();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("on_request_headers"), "{message}");
    assert!(
        message.contains("conformance: panic in on_request_headers"),
        "{message}"
    );
    assert!(f.failure().is_some());
}

#[test]
fn filters_are_isolated_by_vm_id_unless_shared_on_purpose() {
    let config = json!({"scenario": "shared_data", "mode": "increment"});
    let a = conformance(config.clone());
    let b = conformance(config.clone());
    let bump = |f: &Filter| {
        let mut s = f.http_stream();
        s.request_headers(GET, true);
        s.request_header("x-shared-value").unwrap().to_owned()
    };
    assert_eq!(bump(&a), "1");
    assert_eq!(bump(&b), "1");
    let shared = |vm| {
        Filter::load(weir_test_artifacts::CONFORMANCE)
            .unwrap()
            .vm_id(vm)
            .config(config.clone())
            .build()
            .unwrap()
    };
    let c = shared("together");
    let d = shared("together");
    assert_eq!(bump(&c), "1");
    assert_eq!(bump(&d), "2");
}

#[test]
fn environment_and_foreign_functions() {
    let f = Filter::load(weir_test_artifacts::CONFORMANCE)
        .unwrap()
        .env("WEIR_TEST", "yes")
        .config(json!({"scenario": "env"}))
        .build()
        .unwrap();
    let mut s = f.http_stream();
    s.request_headers(GET, true);
    assert_eq!(s.request_header("x-env"), Some("yes"));

    let f = Filter::load(weir_test_artifacts::CONFORMANCE)
        .unwrap()
        .foreign_function(
            "echo",
            Box::new(|args| Ok([b"echo:".as_slice(), args].concat())),
        )
        .config(json!({"scenario": "foreign", "function": "echo"}))
        .build()
        .unwrap();
    let mut s = f.http_stream();
    s.request_headers(GET, true);
    assert_eq!(s.request_header("x-foreign"), Some("ok:echo:args"));
}
