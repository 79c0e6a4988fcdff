//! Real filters, built from `tests/programs` against the upstream `proxy-wasm` 0.2.5 SDK, run through
//! weir-host-abi with the in-memory embedder of `support/`. One module per ABI area; each test
//! asserts what the filter observably did (maps, bodies, replies, records, metrics), so it fails
//! when the host function or callback behind it breaks. Scenario semantics are documented in
//! `tests/programs/conformance/src/lib.rs`.
//!
//! Long (1.6k lines): one test per ABI behaviour of the guest programs, grouped by ABI area.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::json;
use support::driver::{
    Filter, HttpStream, callout_response, callout_timeout_response, local_reply_headers,
};
use support::{HeaderMap, MemStream, header, headers};
use weir_host_abi::{
    Action, CalloutResponse, Deadlines, Deferred, Effect, LogLevel, Module, Outcome, PluginConfig,
    Runtime, StreamType,
};

/// One runtime for the whole binary: compiling a module once saves seconds per test. Tests stay
/// independent by giving every plugin its own name and vm_id (metrics are keyed by plugin name,
/// shared data and queues by vm_id).
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new().expect("runtime"))
}

fn load(path: &str) -> Arc<Module> {
    let wasm = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    runtime().compile(&wasm).expect("module loads")
}

fn conformance() -> Arc<Module> {
    static MODULE: OnceLock<Arc<Module>> = OnceLock::new();
    MODULE
        .get_or_init(|| load(weir_test_artifacts::CONFORMANCE))
        .clone()
}

/// A plugin named `name` (also its vm_id) with `config` as its JSON configuration. Deadlines are
/// generous: these tests check behaviour, not speed, on a shared two-core machine.
fn plugin(name: &str, config: &serde_json::Value) -> PluginConfig {
    let mut c = PluginConfig::new(name)
        .with_vm_id(name)
        .with_configuration(config.to_string());
    c.limits.deadlines = Deadlines {
        headers: Duration::from_secs(5),
        body: Duration::from_secs(5),
        start: Duration::from_secs(10),
        other: Duration::from_secs(5),
    };
    c
}

fn start(name: &str, config: &serde_json::Value) -> Filter {
    Filter::start(runtime(), &conformance(), plugin(name, config)).expect("filter starts")
}

fn get_request() -> MemStream {
    MemStream::http(&[
        (":method", "GET"),
        (":path", "/"),
        (":authority", "example.com"),
    ])
}

fn text(map: &Option<HeaderMap>, name: &str) -> Option<String> {
    map.as_ref()
        .and_then(|m| header(m, name))
        .map(str::to_owned)
}

fn deferred(ctx: u32, effect: Effect) -> Deferred {
    Deferred {
        context: ctx,
        effect,
    }
}

fn continued() -> Outcome {
    Outcome {
        action: Action::Continue,
        effects: vec![],
    }
}

/// Runs request headers on a fresh stream and returns the outcome and the stream.
fn request(f: &mut Filter, stream: MemStream) -> (Outcome, HttpStream) {
    let mut s = f.open_http(stream).expect("context created");
    let out = f.request_headers(&mut s, true).expect("request headers");
    (out, s)
}

mod headers_map {
    use super::*;

    #[test]
    fn request_map_edits_and_full_round_trip_keep_order_duplicates_and_values() {
        let mut f = start("headers-rt", &json!({"scenario": "headers"}));
        let (out, mut s) = request(
            &mut f,
            MemStream::http(&[
                (":method", "GET"),
                (":path", "/p"),
                (":authority", "h"),
                ("x-a", "1"),
                ("x-replace", "old"),
                ("x-multi", "first"),
                ("x-remove", "gone"),
                ("x-b", "2"),
                ("x-multi", "second"),
                ("x-remove", "gone too"),
                ("x-utf8", "é ü"),
            ]),
        );
        assert_eq!(out, continued());
        assert_eq!(
            s.mem().request_headers,
            Some(headers(&[
                (":method", "GET"),
                (":path", "/p"),
                (":authority", "h"),
                ("x-a", "1"),
                ("x-replace", "replaced"),
                ("x-multi", "first"),
                ("x-b", "2"),
                ("x-multi", "second"),
                ("x-utf8", "é ü"),
                ("x-num-headers", "11"),
                ("x-sum", "12"),
            ]))
        );
    }

    #[test]
    fn missing_headers_read_as_absent() {
        let mut f = start("headers-missing", &json!({"scenario": "headers"}));
        let (_, mut s) = request(&mut f, get_request());
        assert_eq!(text(&s.mem().request_headers, "x-sum").as_deref(), Some(""));
        assert_eq!(
            text(&s.mem().request_headers, "x-replace").as_deref(),
            Some("replaced")
        );
    }

    #[test]
    fn response_headers_are_read_and_extended() {
        let mut f = start("headers-resp", &json!({"scenario": "headers"}));
        let (_, mut s) = request(&mut f, get_request());
        let out = f
            .response_headers(
                &mut s,
                headers(&[(":status", "201"), ("content-type", "text/plain")]),
                false,
            )
            .unwrap();
        assert_eq!(out, continued());
        assert_eq!(
            s.mem().response_headers,
            Some(headers(&[
                (":status", "201"),
                ("content-type", "text/plain"),
                ("x-filter", "conformance"),
                ("x-status-seen", "201"),
            ]))
        );
        f.finish(&mut s).unwrap();
    }
}

mod body {
    use super::*;

    fn run(op: &str) -> (Vec<u8>, Vec<String>, HttpStream) {
        let mut f = start(
            &format!("body-{op}"),
            &json!({"scenario": "body", "body_op": op}),
        );
        let mut stream = get_request();
        stream
            .request_headers
            .as_mut()
            .unwrap()
            .push(("content-length".into(), b"5".to_vec()));
        let (out, mut s) = request(&mut f, stream);
        assert_eq!(out, continued());
        assert_eq!(
            text(&s.mem().request_headers, "content-length"),
            None,
            "content-length removed"
        );
        let first = f.request_body(&mut s, b"hel", false).unwrap();
        assert_eq!(first.action, Action::Pause, "buffers until end of stream");
        assert!(s.forwarded_request_body.is_empty());
        let last = f.request_body(&mut s, b"lo", true).unwrap();
        assert_eq!(last.action, Action::Continue);
        let logs = f.plugin.logs_with_prefix("body: ");
        (s.forwarded_request_body.clone(), logs, s)
    }

    #[test]
    fn request_body_is_buffered_cumulatively_then_edited() {
        for (op, expected) in [
            ("prepend", "prepend.hello"),
            ("append", "hello.append"),
            ("prepend_append", "prepend.hello.append"),
            ("replace", "replace"),
            ("partial", "partial.replace.ello"),
            ("remove", ""),
        ] {
            let (body, logs, _) = run(op);
            assert_eq!(String::from_utf8_lossy(&body), expected, "body_op {op}");
            assert_eq!(
                logs,
                [
                    "body: request chunk size=3 eos=false",
                    "body: request chunk size=5 eos=true",
                    "body: request body=hello",
                ],
                "body_op {op}"
            );
        }
    }

    #[test]
    fn response_body_is_replaced_at_end_of_stream() {
        let mut f = start("body-resp", &json!({"scenario": "body"}));
        let (_, mut s) = request(&mut f, get_request());
        let out = f
            .response_headers(
                &mut s,
                headers(&[(":status", "200"), ("content-length", "6")]),
                false,
            )
            .unwrap();
        assert_eq!(out, continued());
        assert_eq!(text(&s.mem().response_headers, "content-length"), None);
        assert_eq!(
            f.response_body(&mut s, b"abc", false).unwrap().action,
            Action::Pause
        );
        assert_eq!(
            f.response_body(&mut s, b"def", true).unwrap().action,
            Action::Continue
        );
        assert_eq!(s.forwarded_response_body, b"ABCDEF");
    }
}

mod trailers {
    use super::*;

    #[test]
    fn request_trailers_are_read_and_extended() {
        let mut f = start("trailers-req", &json!({"scenario": "trailers"}));
        let mut s = f.open_http(get_request()).unwrap();
        f.request_headers(&mut s, false).unwrap();
        let out = f
            .request_trailers(&mut s, &[("x-trailer-in", "v1")])
            .unwrap();
        assert_eq!(out, continued());
        assert_eq!(
            s.mem().request_trailers,
            Some(headers(&[("x-trailer-in", "v1"), ("x-trailer-seen", "v1")]))
        );
        assert_eq!(
            f.plugin.logs_with_prefix("trailers: "),
            ["trailers: request trailers=1"]
        );
    }

    #[test]
    fn response_trailers_are_added_at_end_of_stream_and_extended() {
        let mut f = start("trailers-resp", &json!({"scenario": "trailers"}));
        let (_, mut s) = request(&mut f, get_request());
        f.response_headers(&mut s, headers(&[(":status", "200")]), false)
            .unwrap();
        f.response_body(&mut s, b"data", true).unwrap();
        assert_eq!(
            s.mem().response_trailers,
            Some(headers(&[("x-response-trailer", "added")]))
        );
        let out = f
            .response_trailers(&mut s, &[("grpc-status", "0")])
            .unwrap();
        assert_eq!(out, continued());
        assert_eq!(
            s.mem().response_trailers,
            Some(headers(&[
                ("grpc-status", "0"),
                ("x-filter-trailer", "conformance")
            ]))
        );
    }
}

mod local_reply {
    use super::*;

    #[test]
    fn http_local_reply_is_deferred_and_flows_back_through_the_filter() {
        let mut f = start("local-http", &json!({"scenario": "local_reply"}));
        let (out, mut s) = request(&mut f, get_request());
        assert_eq!(out.action, Action::Pause);
        assert_eq!(out.effects.len(), 1);
        assert_eq!(out.effects[0].context, s.ctx);
        let reply = out.local_reply().expect("a local reply").clone();
        assert_eq!(reply.status, 403);
        assert_eq!(reply.headers, vec![(b"x-denied".to_vec(), b"1".to_vec())]);
        assert_eq!(reply.body, b"denied");
        assert_eq!(reply.grpc_status, None);
        f.response_headers(&mut s, local_reply_headers(&reply), false)
            .unwrap();
        assert_eq!(
            f.plugin.logs_with_prefix("local_reply: "),
            ["local_reply: response status=403"]
        );
        f.finish(&mut s).unwrap();
    }

    #[test]
    fn grpc_local_reply_carries_grpc_status_and_message() {
        let mut f = start(
            "local-grpc",
            &json!({"scenario": "local_reply", "grpc": true}),
        );
        let (out, _) = request(&mut f, get_request());
        assert_eq!(out.action, Action::Pause);
        let reply = out.local_reply().expect("a local reply");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.grpc_status, Some(7));
        assert_eq!(reply.body, b"denied");
        assert_eq!(reply.headers, vec![(b"x-denied".to_vec(), b"1".to_vec())]);
    }
}

mod properties {
    use super::*;

    #[test]
    fn stream_plugin_and_host_properties_with_exact_encodings() {
        let mut config = plugin(
            "props",
            &json!({"scenario": "properties", "cluster": "web-v2"}),
        );
        config = config.with_root_id("root-a").with_vm_id("vm-props");
        let mut f = Filter::start_with(runtime(), &conformance(), config, |p| {
            p.with_property_str("xds.node.id", "node-1")
        })
        .unwrap();
        assert_eq!(
            f.plugin.logs_with_prefix("properties: root "),
            [
                "properties: root plugin_name=props",
                "properties: root plugin_root_id=root-a",
                "properties: root plugin_vm_id=vm-props",
            ]
        );
        let stream = MemStream::http(&[
            (":method", "POST"),
            (":path", "/api?x=1"),
            (":authority", "h"),
        ])
        .with_property_str("source.address", "10.0.0.1:5555")
        .with_property_u64("source.port", 5555)
        .with_property_bool("connection.mtls", true);
        let (out, mut s) = request(&mut f, stream);
        assert_eq!(out, continued());
        // set_property reached the stream, where the proxy reads the route decision.
        assert_eq!(
            s.mem()
                .properties
                .get("weir.route.cluster")
                .map(Vec::as_slice),
            Some(&b"web-v2"[..])
        );

        f.response_headers(&mut s, headers(&[(":status", "200")]), true)
            .unwrap();
        let response = s.mem().response_headers.clone();
        let prop = |name: &str| text(&response, &format!("x-prop-{name}"));
        assert_eq!(prop("request.path").as_deref(), Some("/api?x=1"));
        assert_eq!(prop("request.method").as_deref(), Some("POST"));
        assert_eq!(prop("source.address").as_deref(), Some("10.0.0.1:5555"));
        assert_eq!(
            prop("source.port").as_deref(),
            Some("5555"),
            "ints are 8 bytes little-endian"
        );
        assert_eq!(
            prop("connection.mtls").as_deref(),
            Some("true"),
            "bools are one byte"
        );
        assert_eq!(prop("plugin_name").as_deref(), Some("props"));
        assert_eq!(prop("plugin_root_id").as_deref(), Some("root-a"));
        assert_eq!(prop("plugin_vm_id").as_deref(), Some("vm-props"));
        assert_eq!(
            prop("xds.node.id").as_deref(),
            Some("node-1"),
            "served by the plugin host"
        );
        assert_eq!(prop("node.id"), None, "absent property is NOT_FOUND");
        assert_eq!(prop("weir.route.cluster").as_deref(), Some("web-v2"));
        assert_eq!(prop("response.code").as_deref(), Some("200"));
        assert!(
            f.plugin
                .logs_with_prefix("properties: node.id not found")
                .len()
                == 1
        );

        f.finish(&mut s).unwrap();
        assert_eq!(
            f.plugin.logs_with_prefix("properties: on_log"),
            ["properties: on_log response.code=200"]
        );
    }
}

mod callout {
    use super::*;

    fn dispatch(name: &str, config: &serde_json::Value) -> (Filter, HttpStream, u32) {
        let mut f = start(name, config);
        let mut stream = get_request();
        stream
            .request_headers
            .as_mut()
            .unwrap()
            .push(("x-token".into(), b"abc".to_vec()));
        let (out, s) = request(&mut f, stream);
        assert_eq!(
            out,
            Outcome {
                action: Action::Pause,
                effects: vec![]
            }
        );
        let calls = f.plugin.http_calls();
        assert_eq!(calls.len(), 1);
        let call = &calls[0];
        assert_eq!(call.upstream, "auth");
        assert_eq!(call.context, s.ctx, "the dispatching (effective) context");
        assert_eq!(
            call.headers,
            vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b":path".to_vec(), b"/check".to_vec()),
                (b":authority".to_vec(), b"auth".to_vec()),
                (b"x-token".to_vec(), b"abc".to_vec()),
            ]
        );
        assert_eq!(call.body, b"check");
        assert_eq!(
            call.trailers,
            vec![(b"x-callout-trailer".to_vec(), b"1".to_vec())]
        );
        assert_eq!(f.vm.http_call_context(call.token), Some(s.ctx));
        let token = call.token;
        (f, s, token)
    }

    #[test]
    fn success_adds_headers_and_resumes_the_request() {
        let (mut f, mut s, token) = dispatch(
            "callout-ok",
            &json!({"scenario": "callout", "timeout_ms": 1500}),
        );
        assert_eq!(
            f.plugin.http_calls()[0].timeout,
            Some(Duration::from_millis(1500))
        );
        let response = callout_response(200, &[("x-r", "1")], b"ok-body", &[("x-t", "1")]);
        let out = f.answer_http_call(token, response, Some(&mut s)).unwrap();
        assert_eq!(
            out.effects,
            vec![deferred(
                s.ctx,
                Effect::ContinueStream(StreamType::HttpRequest)
            )]
        );
        let req = s.mem().request_headers.clone();
        assert_eq!(text(&req, "x-auth").as_deref(), Some("ok"));
        assert_eq!(text(&req, "x-auth-body").as_deref(), Some("ok-body"));
        assert_eq!(text(&req, "x-auth-trailers").as_deref(), Some("x-t=1"));
        assert_eq!(
            f.plugin.logs_with_prefix("callout: "),
            [
                format!("callout: dispatched token={token}"),
                format!(
                    "callout: response token={token} headers=2 body=ok-body trailers=1 status=200"
                ),
                "callout: get_status code=0 message=".to_owned(),
            ]
        );
        assert_eq!(
            f.vm.http_call_context(token),
            None,
            "answered calls are forgotten"
        );
        f.finish(&mut s).unwrap();
    }

    #[test]
    fn failure_is_delivered_empty_and_the_filter_denies() {
        let (mut f, mut s, token) = dispatch("callout-fail", &json!({"scenario": "callout"}));
        let out = f
            .answer_http_call(token, CalloutResponse::failure("reset"), Some(&mut s))
            .unwrap();
        assert_eq!(out.action, Action::Pause, "a local reply forces Pause");
        let reply = out.local_reply().expect("403");
        assert_eq!(reply.status, 403);
        assert_eq!(reply.body, b"forbidden");
        assert!(
            reply
                .headers
                .contains(&(b"x-auth-status".to_vec(), b"none".to_vec()))
        );
        assert_eq!(
            f.plugin.logs_with_prefix("callout: "),
            [
                format!("callout: dispatched token={token}"),
                format!("callout: response token={token} headers=0 body= trailers=0 status=none"),
                "callout: get_status code=11 message=reset".to_owned(),
            ]
        );
    }

    #[test]
    fn timeout_is_an_envoy_504_and_the_filter_denies() {
        let (mut f, mut s, token) = dispatch(
            "callout-timeout",
            &json!({"scenario": "callout", "timeout_ms": 50}),
        );
        assert!(f.plugin.due_http_calls(f.clock.now()).is_empty());
        f.clock.advance(Duration::from_millis(50));
        assert_eq!(f.plugin.due_http_calls(f.clock.now()), [token]);
        let out = f
            .answer_http_call(token, callout_timeout_response(), Some(&mut s))
            .unwrap();
        let reply = out.local_reply().expect("403");
        assert_eq!(reply.status, 403);
        assert!(
            reply
                .headers
                .contains(&(b"x-auth-status".to_vec(), b"504".to_vec()))
        );
    }

    #[test]
    fn unknown_cluster_is_rejected_at_dispatch() {
        let config = plugin(
            "callout-cluster",
            &json!({"scenario": "callout", "upstream": "nope"}),
        );
        let mut f = Filter::start_with(runtime(), &conformance(), config, |p| {
            p.with_clusters(&["auth"])
        })
        .unwrap();
        let (out, _) = request(&mut f, get_request());
        let reply = out.local_reply().expect("500");
        assert_eq!(reply.status, 500);
        assert_eq!(
            reply.headers,
            vec![(b"x-callout-error".to_vec(), b"BadArgument".to_vec())]
        );
        assert!(f.plugin.http_calls().is_empty());
    }

    #[test]
    fn root_context_dispatches_from_a_tick() {
        let mut f = start(
            "callout-tick",
            &json!({"scenario": "callout", "from_tick": true, "tick_ms": 10}),
        );
        assert_eq!(f.vm.tick_period(), Some(Duration::from_millis(10)));
        assert_eq!(
            f.plugin.record().tick_period,
            Some(Duration::from_millis(10))
        );
        f.fire_tick().unwrap().expect("a tick fired");
        assert_eq!(f.vm.tick_period(), None, "the filter disabled its timer");
        let calls = f.plugin.http_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].context, f.vm.root_context());
        let token = calls[0].token;
        assert_eq!(
            f.plugin.logs_with_prefix("callout: tick"),
            [format!("callout: tick dispatched token={token}")]
        );
        f.answer_http_call(token, callout_response(200, &[], b"fine", &[]), None)
            .unwrap();
        assert_eq!(
            f.plugin.logs_with_prefix("callout: root"),
            [format!(
                "callout: root response token={token} status=200 body=fine"
            )]
        );
    }

    #[test]
    fn a_response_after_the_stream_ended_is_dropped_without_failing_the_vm() {
        let (mut f, mut s, token) = dispatch("callout-late", &json!({"scenario": "callout"}));
        f.finish(&mut s).unwrap();
        let out = f
            .answer_http_call(token, callout_response(200, &[], b"late", &[]), None)
            .unwrap();
        assert!(out.effects.is_empty());
        assert!(!f.vm.is_failed());
        assert!(
            f.plugin.logs_with_prefix("callout: response").is_empty(),
            "the SDK drops it"
        );
        // The VM still serves new streams.
        let (out, _) = request(&mut f, get_request());
        assert_eq!(out.action, Action::Pause);
    }
}

mod grpc {
    use super::*;

    #[test]
    fn unary_call_reply_resumes_the_request() {
        let mut f = start("grpc-call", &json!({"scenario": "grpc"}));
        let (out, mut s) = request(&mut f, get_request());
        assert_eq!(out.action, Action::Pause);
        let call = f.plugin.record().grpc_calls[0].clone();
        assert_eq!(call.token & 3, 1, "unary call tokens have low bits 1");
        assert_eq!(call.upstream, b"grpc");
        assert_eq!(call.service, "weir.test.Echo");
        assert_eq!(call.method, "Say");
        assert_eq!(
            call.initial_metadata,
            vec![(b"x-md".to_vec(), b"1".to_vec())]
        );
        assert_eq!(call.message, b"ping");
        assert_eq!(call.timeout, Some(Duration::from_millis(1000)));
        assert!(!call.streaming);
        let out =
            f.vm.on_grpc_receive(call.token, b"pong".to_vec(), Some(&mut s.stream))
                .unwrap();
        assert_eq!(
            out.effects,
            vec![deferred(
                s.ctx,
                Effect::ContinueStream(StreamType::HttpRequest)
            )]
        );
        assert_eq!(
            text(&s.mem().request_headers, "x-grpc-reply").as_deref(),
            Some("pong")
        );
    }

    #[test]
    fn unary_call_failure_reports_status_and_message() {
        let mut f = start("grpc-fail", &json!({"scenario": "grpc"}));
        let (_, mut s) = request(&mut f, get_request());
        let token = f.plugin.record().grpc_calls[0].token;
        let out =
            f.vm.on_grpc_close(token, 14, "unavailable", Some(&mut s.stream))
                .unwrap();
        let reply = out.local_reply().expect("503");
        assert_eq!(reply.status, 503);
        assert_eq!(
            reply.headers,
            vec![
                (b"x-grpc-status".to_vec(), b"14".to_vec()),
                (b"x-grpc-message".to_vec(), b"unavailable".to_vec())
            ]
        );
    }

    #[test]
    fn stream_exchanges_messages_metadata_and_closes() {
        let mut f = start(
            "grpc-stream",
            &json!({"scenario": "grpc", "mode": "stream"}),
        );
        let (out, mut s) = request(&mut f, get_request());
        assert_eq!(out.action, Action::Pause);
        let call = f.plugin.record().grpc_calls[0].clone();
        assert!(call.streaming);
        assert_eq!(call.token & 3, 2, "stream tokens have low bits 2");
        assert_eq!(call.method, "Chat");
        let t = call.token;
        assert_eq!(
            f.plugin.record().grpc_sends,
            vec![(t, b"hello".to_vec(), false)]
        );

        let md = vec![(b"x-im".to_vec(), b"1".to_vec())];
        f.vm.on_grpc_receive_initial_metadata(t, md, Some(&mut s.stream))
            .unwrap();
        f.vm.on_grpc_receive(t, b"m1".to_vec(), Some(&mut s.stream))
            .unwrap();
        f.vm.on_grpc_receive(t, b"bye".to_vec(), Some(&mut s.stream))
            .unwrap();
        let md = vec![(b"x-tm".to_vec(), b"2".to_vec())];
        f.vm.on_grpc_receive_trailing_metadata(t, md, Some(&mut s.stream))
            .unwrap();
        assert_eq!(
            f.plugin.record().grpc_sends,
            vec![
                (t, b"hello".to_vec(), false),
                (t, b"ack:m1".to_vec(), false)
            ]
        );
        assert_eq!(f.plugin.record().grpc_closes, vec![t], "`bye` half-closes");
        let out = f.vm.on_grpc_close(t, 0, "", Some(&mut s.stream)).unwrap();
        assert_eq!(
            out.effects,
            vec![deferred(
                s.ctx,
                Effect::ContinueStream(StreamType::HttpRequest)
            )]
        );
        assert_eq!(
            f.plugin.logs_with_prefix("grpc: "),
            [
                format!("grpc: stream opened token={t}"),
                "grpc: initial x-im=1".to_owned(),
                "grpc: message m1".to_owned(),
                "grpc: message bye".to_owned(),
                "grpc: trailing x-tm=2".to_owned(),
                format!("grpc: stream close token={t} status=0"),
            ]
        );
        assert_eq!(
            text(&s.mem().request_headers, "x-grpc-messages").as_deref(),
            Some("m1,bye")
        );
        assert_eq!(
            text(&s.mem().request_headers, "x-grpc-close").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn cancel_reaches_the_plugin_host() {
        let mut f = start(
            "grpc-cancel",
            &json!({"scenario": "grpc", "mode": "cancel"}),
        );
        let (out, mut s) = request(&mut f, get_request());
        assert_eq!(out, continued());
        let token = f.plugin.record().grpc_calls[0].token;
        assert_eq!(f.plugin.record().grpc_cancels, vec![token]);
        assert_eq!(
            text(&s.mem().request_headers, "x-grpc").as_deref(),
            Some("cancelled")
        );
    }
}

mod shared_data {
    use super::*;

    fn value(f: &mut Filter, name: &str) -> String {
        let (out, mut s) = request(f, get_request());
        assert_eq!(out, continued());
        text(&s.mem().request_headers, name).unwrap()
    }

    #[test]
    fn increments_are_shared_by_vm_id_and_isolated_between_vm_ids() {
        let config = &json!({"scenario": "shared_data"});
        let mut a = start("sd-inc", config);
        let mut b = start("sd-inc", config);
        let mut other = start("sd-inc-other", config);
        assert_eq!(value(&mut a, "x-shared-value"), "1");
        assert_eq!(value(&mut b, "x-shared-value"), "2");
        assert_eq!(value(&mut a, "x-shared-value"), "3");
        assert_eq!(
            value(&mut other, "x-shared-value"),
            "1",
            "another vm_id has its own data"
        );
    }

    #[test]
    fn stale_cas_is_a_mismatch() {
        let mut f = start(
            "sd-cas",
            &json!({"scenario": "shared_data", "mode": "cas_conflict"}),
        );
        let (_, mut s) = request(&mut f, get_request());
        let req = s.mem().request_headers.clone();
        assert_eq!(text(&req, "x-shared-cas-first").as_deref(), Some("ok"));
        assert_eq!(
            text(&req, "x-shared-cas-second").as_deref(),
            Some("mismatch")
        );
        assert_eq!(text(&req, "x-shared-final").as_deref(), Some("first"));
    }

    #[test]
    fn removed_key_reads_back_empty_with_a_cas() {
        let mut f = start(
            "sd-remove",
            &json!({"scenario": "shared_data", "mode": "remove"}),
        );
        assert_eq!(value(&mut f, "x-shared-removed"), "value=none cas=some");
    }

    #[test]
    fn concurrent_cas_loops_on_two_threads_lose_no_update() {
        const PER_THREAD: usize = 40;
        // The key exists before the threads start: a write to a missing key is unconditional
        // (cas 0, as in Envoy), so two first writes racing would both legitimately store 1.
        let mut seed = start("sd-threads", &json!({"scenario": "shared_data"}));
        assert_eq!(value(&mut seed, "x-shared-value"), "1");
        let threads: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(|| {
                    let mut f = start("sd-threads", &json!({"scenario": "shared_data"}));
                    (0..PER_THREAD)
                        .map(|_| value(&mut f, "x-shared-value").parse::<usize>().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen: Vec<usize> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (2..=2 * PER_THREAD + 1).collect::<Vec<_>>(),
            "every increment is unique"
        );
    }
}

mod queue {
    use super::*;

    #[test]
    fn another_vm_enqueues_and_the_registering_vm_is_notified() {
        let mut receiver = start("queue-two", &json!({"scenario": "queue"}));
        let registered = receiver.plugin.logs_with_prefix("queue: registered id=");
        assert_eq!(registered.len(), 1);
        let id: u32 = registered[0]
            .trim_start_matches("queue: registered id=")
            .parse()
            .unwrap();
        assert_ne!(id, 0);

        // The sender resolves the queue by vm_id and runs on another thread, as a second worker would.
        let sender = std::thread::spawn(|| {
            let config = plugin(
                "queue-two-sender",
                &json!({"scenario": "queue", "mode": "resolve", "vm_id": "queue-two"}),
            );
            let mut f = Filter::start(runtime(), &conformance(), config).unwrap();
            let mut results = Vec::new();
            for path in ["/one", "/two"] {
                let (_, mut s) = request(
                    &mut f,
                    MemStream::http(&[(":method", "GET"), (":path", path), (":authority", "h")]),
                );
                results.push(text(&s.mem().request_headers, "x-queue").unwrap());
            }
            (results, f.plugin.take_queue_ready())
        });
        let (results, sender_notified) = sender.join().unwrap();
        assert_eq!(results, ["enqueued", "enqueued"]);
        assert!(
            sender_notified.is_empty(),
            "only the registering VM is notified"
        );

        // One notification per enqueue; the first drains both items, the second finds it empty.
        receiver
            .deliver_queue_ready(Duration::from_secs(5))
            .unwrap()
            .expect("notified");
        receiver
            .deliver_queue_ready(Duration::from_secs(5))
            .unwrap()
            .expect("notified twice");
        assert_eq!(
            receiver.plugin.logs_with_prefix("queue: d"),
            [
                "queue: dequeued /one".to_owned(),
                "queue: dequeued /two".to_owned(),
                format!("queue: drained 2 from {id}"),
                format!("queue: drained 0 from {id}"),
            ]
        );
    }

    #[test]
    fn the_registering_vm_enqueues_to_itself() {
        let mut f = start("queue-self", &json!({"scenario": "queue"}));
        let (_, mut s) = request(
            &mut f,
            MemStream::http(&[(":method", "GET"), (":path", "/self"), (":authority", "h")]),
        );
        assert_eq!(
            text(&s.mem().request_headers, "x-queue").as_deref(),
            Some("enqueued")
        );
        f.deliver_queue_ready(Duration::from_secs(5))
            .unwrap()
            .expect("notified");
        assert_eq!(
            f.plugin.logs_with_prefix("queue: dequeued"),
            ["queue: dequeued /self"]
        );
    }

    #[test]
    fn resolving_an_unknown_queue_is_not_found() {
        let mut f = start(
            "queue-missing",
            &json!({"scenario": "queue", "mode": "resolve", "vm_id": "nobody"}),
        );
        let (_, mut s) = request(&mut f, get_request());
        assert_eq!(
            text(&s.mem().request_headers, "x-queue").as_deref(),
            Some("not-found")
        );
    }
}

mod metrics {
    use super::*;
    use weir_host_abi::MetricValue;

    #[test]
    fn counter_gauge_and_histogram_values_through_the_guest_and_the_registry() {
        let mut f = start(
            "metrics-plugin",
            &json!({"scenario": "metrics", "prefix": "m"}),
        );
        for (i, (path, sample)) in [("/a", "10"), ("/bb", "20"), ("/ccc", "30")]
            .into_iter()
            .enumerate()
        {
            let stream = MemStream::http(&[
                (":method", "GET"),
                (":path", path),
                (":authority", "h"),
                ("x-value", sample),
            ]);
            let (_, mut s) = request(&mut f, stream);
            let req = s.mem().request_headers.clone();
            assert_eq!(text(&req, "x-metric-counter"), Some((i + 1).to_string()));
            assert_eq!(
                text(&req, "x-metric-gauge"),
                Some(path.len().to_string()),
                "record sets, ±5 cancels out"
            );
            assert_eq!(
                text(&req, "x-metric-histogram").as_deref(),
                Some("bad-argument")
            );
        }
        let registry = runtime().metrics();
        assert_eq!(
            registry.get("metrics-plugin", "m.requests"),
            Some(MetricValue::Counter(3))
        );
        assert_eq!(
            registry.get("metrics-plugin", "m.path_len"),
            Some(MetricValue::Gauge(4))
        );
        assert_eq!(
            registry.get("metrics-plugin", "m.sizes"),
            Some(MetricValue::Histogram { count: 3, sum: 60 })
        );
    }
}

mod tick {
    use super::*;
    use weir_host_abi::MetricValue;

    #[test]
    fn ticks_fire_at_the_period_until_the_filter_stops_them() {
        let mut f = start(
            "tick-plugin",
            &json!({"scenario": "tick", "tick_ms": 25, "max_ticks": 3}),
        );
        assert_eq!(f.vm.tick_period(), Some(Duration::from_millis(25)));
        assert_eq!(
            f.plugin.record().tick_period,
            Some(Duration::from_millis(25))
        );
        let mut fired = 0;
        while f.fire_tick().unwrap().is_some() {
            fired += 1;
            assert!(fired <= 3, "the filter stops its timer after 3 ticks");
        }
        assert_eq!(fired, 3);
        assert_eq!(f.plugin.record().tick_period, None);
        assert_eq!(
            f.plugin.logs_with_prefix("tick: "),
            ["tick: n=1", "tick: n=2", "tick: n=3", "tick: stopped"]
        );
        assert_eq!(
            runtime().metrics().get("tick-plugin", "conformance.ticks"),
            Some(MetricValue::Counter(3))
        );
    }
}

mod logging {
    use super::*;

    #[test]
    fn every_level_stdio_log_level_and_clocks() {
        let config = plugin("logging", &json!({"scenario": "logging"}));
        let mut f = Filter::start_with(runtime(), &conformance(), config, |p| {
            p.with_log_level(LogLevel::Warn)
        })
        .unwrap();
        f.clock.advance(Duration::from_millis(1234));
        let (_, mut s) = request(&mut f, get_request());
        let logs: Vec<(LogLevel, String)> = f
            .plugin
            .record()
            .logs
            .iter()
            .filter(|(_, m)| m.starts_with("logging: "))
            .cloned()
            .collect();
        assert_eq!(
            logs,
            [
                (LogLevel::Trace, "logging: trace".to_owned()),
                (LogLevel::Debug, "logging: debug".to_owned()),
                (LogLevel::Info, "logging: info".to_owned()),
                (LogLevel::Warn, "logging: warn".to_owned()),
                (LogLevel::Error, "logging: error".to_owned()),
                (LogLevel::Critical, "logging: critical".to_owned()),
                (LogLevel::Info, "logging: stdout".to_owned()),
                (LogLevel::Error, "logging: stderr".to_owned()),
            ]
        );
        let req = s.mem().request_headers.clone();
        assert_eq!(text(&req, "x-log-level").as_deref(), Some("3"));
        let now = f.clock.nanos().to_string();
        assert_eq!(
            text(&req, "x-time-ns"),
            Some(now.clone()),
            "proxy_get_current_time_nanoseconds"
        );
        assert_eq!(
            text(&req, "x-wasi-time-ns"),
            Some(now),
            "WASI realtime clock"
        );
    }
}

mod lifecycle {
    use super::*;

    fn lifecycle(f: &Filter) -> Vec<String> {
        f.plugin
            .logs_with_prefix("lifecycle: ")
            .into_iter()
            .map(|l| l["lifecycle: ".len()..].to_owned())
            .collect()
    }

    #[test]
    fn http_callbacks_run_in_envoy_order() {
        let mut f = start("lifecycle-http", &json!({"scenario": "lifecycle"}));
        assert_eq!(
            lifecycle(&f),
            [
                "on_context_create root ctx=1",
                "on_vm_start ctx=1",
                "on_configure ctx=1"
            ]
        );
        let mut s = f.open_http(get_request()).unwrap();
        let c = s.ctx;
        assert_ne!(c, f.vm.root_context());
        assert_eq!(f.request_headers(&mut s, false).unwrap(), continued());
        assert_eq!(f.request_body(&mut s, b"x", false).unwrap(), continued());
        assert_eq!(
            f.request_trailers(&mut s, &[("t", "1")]).unwrap(),
            continued()
        );
        assert_eq!(
            f.response_headers(&mut s, headers(&[(":status", "200")]), false)
                .unwrap(),
            continued()
        );
        assert_eq!(f.response_body(&mut s, b"y", false).unwrap(), continued());
        assert_eq!(
            f.response_trailers(&mut s, &[("t", "2")]).unwrap(),
            continued()
        );
        f.finish(&mut s).unwrap();
        assert_eq!(f.vm.live_streams(), Vec::<u32>::new());
        assert!(f.vm.shutdown().unwrap(), "the root finished at once");
        let expected: Vec<String> = [
            "on_context_create root ctx=1".to_owned(),
            "on_vm_start ctx=1".to_owned(),
            "on_configure ctx=1".to_owned(),
            format!("on_context_create http ctx={c} root=1"),
            format!("on_request_headers ctx={c}"),
            format!("on_request_body ctx={c}"),
            format!("on_request_trailers ctx={c}"),
            format!("on_response_headers ctx={c}"),
            format!("on_response_body ctx={c}"),
            format!("on_response_trailers ctx={c}"),
            format!("on_log ctx={c}"),
            format!("on_done ctx={c}"),
            format!("on_delete ctx={c}"),
            "on_done ctx=1".to_owned(),
            "on_delete ctx=1".to_owned(),
        ]
        .into();
        assert_eq!(lifecycle(&f), expected);
    }

    #[test]
    fn tcp_stream_edits_data_and_ends_in_envoy_tcp_order() {
        let mut f = start("lifecycle-tcp", &json!({"scenario": "tcp"}));
        let (mut s, out) = f
            .open_tcp(MemStream::tcp().with_property_str("source.address", "192.0.2.7:40000"))
            .unwrap();
        assert_eq!(out, continued());
        let c = s.ctx;
        let (out, up) = f.downstream_data(&mut s, b"ping", false).unwrap();
        assert_eq!(out, continued());
        assert_eq!(up, b"D:ping");
        let (out, down) = f.upstream_data(&mut s, b"pong", true).unwrap();
        assert_eq!(out, continued());
        assert_eq!(down, b"pong:U");
        f.close_tcp(&mut s, weir_host_abi::PeerType::Remote)
            .unwrap();
        assert_eq!(
            f.plugin.logs_with_prefix("tcp: "),
            [
                "tcp: source.address=192.0.2.7:40000",
                "tcp: downstream ping eos=false",
                "tcp: upstream pong eos=true",
                "tcp: upstream close peer=Unknown",
                "tcp: downstream close peer=Remote",
            ]
        );
        let tail: Vec<String> = lifecycle(&f).into_iter().skip(3).collect();
        assert_eq!(
            tail,
            [
                format!("on_context_create stream ctx={c} root=1"),
                format!("on_new_connection ctx={c}"),
                format!("on_downstream_data ctx={c}"),
                format!("on_upstream_data ctx={c}"),
                format!("on_upstream_close ctx={c}"),
                format!("on_downstream_close ctx={c}"),
                format!("on_done ctx={c}"),
                format!("on_log ctx={c}"),
                format!("on_delete ctx={c}"),
            ]
        );
    }

    #[test]
    fn root_shutdown_waits_for_proxy_done() {
        let mut f = start("lifecycle-done", &json!({"delay_done": true}));
        assert!(!f.vm.shutdown().unwrap(), "on_done returned false");
        assert_eq!(f.vm.tick_period(), Some(Duration::from_millis(10)));
        f.fire_tick().unwrap().expect("tick");
        assert!(f.vm.shutdown().unwrap(), "proxy_done was called");
        let tail: Vec<String> = lifecycle(&f).into_iter().skip(3).collect();
        assert_eq!(
            tail,
            [
                "on_done ctx=1",
                "on_tick ctx=1",
                "proxy_done ctx=1",
                "on_delete ctx=1"
            ]
        );
    }

    #[test]
    fn rejected_configurations_fail_the_start() {
        use weir_host_abi::StartError;
        let start_err = |config: PluginConfig| {
            Filter::start(runtime(), &conformance(), config)
                .err()
                .expect("start fails")
        };
        assert!(matches!(
            start_err(plugin("reject-cfg", &json!({"reject": true}))),
            StartError::ConfigureRejected
        ));
        let bad_json = PluginConfig {
            configuration: b"{not json".to_vec(),
            ..plugin("reject-json", &json!({}))
        };
        assert!(matches!(start_err(bad_json), StartError::ConfigureRejected));
        let mut vm_rejects = plugin("reject-vm", &json!({}));
        vm_rejects.vm_configuration = br#"{"reject_vm_start": true}"#.to_vec();
        assert!(matches!(start_err(vm_rejects), StartError::VmStartRejected));
    }
}

mod traps {
    use super::*;
    use weir_host_abi::{FailureReason, StartError, VmError};

    #[test]
    fn a_panic_in_a_callback_fails_the_vm_for_good_and_a_new_vm_works() {
        let config = &json!({"scenario": "headers", "panic_in": "on_request_headers"});
        let mut f = start("trap-headers", config);
        let mut s = f.open_http(get_request()).unwrap();
        let err = f
            .request_headers(&mut s, true)
            .expect_err("the callback traps");
        let VmError::Failed(failure) = &err else {
            panic!("expected a VM failure, got {err:?}")
        };
        assert_eq!(failure.reason, FailureReason::Trap);
        assert_eq!(failure.callback, "proxy_on_request_headers");
        assert!(f.vm.is_failed());
        let critical: Vec<String> = f
            .plugin
            .record()
            .logs
            .iter()
            .filter(|(l, _)| *l == LogLevel::Critical)
            .map(|(_, m)| m.clone())
            .collect();
        assert!(
            critical
                .iter()
                .any(|m| m.contains("conformance: panic in on_request_headers")),
            "the SDK's panic hook logged the panic: {critical:?}"
        );

        // Never re-entered: every later call fails without running guest code.
        let logged = f.plugin.record().logs.len();
        assert!(matches!(f.vm.create_http_stream(), Err(VmError::Failed(_))));
        assert!(matches!(
            f.response_headers(&mut s, headers(&[(":status", "200")]), true),
            Err(VmError::Failed(_))
        ));
        assert!(matches!(f.vm.on_tick(), Err(VmError::Failed(_))));
        assert_eq!(f.plugin.record().logs.len(), logged, "no guest code ran");

        // A fresh VM of the same module is healthy.
        let mut g = start("trap-headers-new", &json!({"scenario": "headers"}));
        let (out, mut s) = request(&mut g, get_request());
        assert_eq!(out, continued());
        assert_eq!(text(&s.mem().request_headers, "x-sum").as_deref(), Some(""));
    }

    type Trigger = fn(&mut Filter) -> Result<(), VmError>;

    #[test]
    fn a_panic_in_any_callback_is_reported_with_that_callback() {
        let cases: [(&str, &str, &str, Trigger); 7] = [
            (
                "on_context_create",
                "none",
                "proxy_on_context_create",
                |f| f.vm.create_http_stream().map(drop),
            ),
            ("on_request_body", "body", "proxy_on_request_body", |f| {
                let (_, mut s) = request(f, get_request());
                f.request_body(&mut s, b"x", true).map(drop)
            }),
            (
                "on_response_headers",
                "headers",
                "proxy_on_response_headers",
                |f| {
                    let (_, mut s) = request(f, get_request());
                    f.response_headers(&mut s, headers(&[(":status", "200")]), true)
                        .map(drop)
                },
            ),
            ("on_log", "none", "proxy_on_log", |f| {
                let (_, mut s) = request(f, get_request());
                f.finish(&mut s)
            }),
            ("on_tick", "tick", "proxy_on_tick", |f| {
                f.fire_tick().map(drop)
            }),
            (
                "on_http_call_response",
                "callout",
                "proxy_on_http_call_response",
                |f| {
                    let (_, mut s) = request(f, get_request());
                    let token = f.plugin.http_calls()[0].token;
                    f.answer_http_call(token, callout_response(200, &[], b"", &[]), Some(&mut s))
                        .map(drop)
                },
            ),
            ("on_queue_ready", "queue", "proxy_on_queue_ready", |f| {
                request(f, get_request());
                f.deliver_queue_ready(Duration::from_secs(5)).map(drop)
            }),
        ];
        for (callback, scenario, export, trigger) in cases {
            let name = format!("trap-{callback}");
            let mut f = start(&name, &json!({"scenario": scenario, "panic_in": callback}));
            let failure = match trigger(&mut f) {
                Err(VmError::Failed(failure)) => failure,
                other => panic!("{callback}: expected a VM failure, got {other:?}"),
            };
            assert_eq!(failure.callback, export, "{callback}");
            assert_eq!(failure.reason, FailureReason::Trap, "{callback}");
            assert_eq!(failure.plugin, name);
            assert!(f.vm.is_failed(), "{callback}");
            let panic_logged = f.plugin.record().logs.iter().any(|(level, m)| {
                *level == LogLevel::Critical
                    && m.contains(&format!("conformance: panic in {callback}"))
            });
            assert!(
                panic_logged,
                "{callback}: the SDK's panic hook logged the panic"
            );
        }
    }

    #[test]
    fn reload_policy_rebuilds_a_fresh_vm_after_a_real_panic() {
        use std::sync::Mutex;
        use std::time::Instant;
        use support::{FakeClock, MemPlugin, PluginHandle};
        use weir_host_abi::{Availability, FailurePolicy, Plugin, PluginHost};

        let handles: Arc<Mutex<Vec<PluginHandle>>> = Arc::default();
        let factory_handles = handles.clone();
        let factory = Box::new(move || -> Box<dyn PluginHost> {
            let (plugin, handle) = MemPlugin::new(FakeClock::at(support::driver::EPOCH_START));
            factory_handles.lock().unwrap().push(handle);
            Box::new(plugin)
        });
        let mut config = plugin(
            "trap-reload",
            &json!({"scenario": "headers", "panic_in": "on_request_headers"}),
        );
        config.failure_policy = FailurePolicy::Reload;
        let mut p = Plugin::new(runtime(), conformance(), config, factory).unwrap();

        let now = Instant::now();
        let Availability::Ready(vm) = p.vm_at(now) else {
            panic!("the first VM runs")
        };
        let ctx = vm.create_http_stream().unwrap();
        let mut stream: weir_host_abi::StreamBox = Box::new(get_request());
        let failure = match vm.on_request_headers(ctx, &mut stream, 3, true) {
            Err(VmError::Failed(f)) => f,
            other => panic!("expected a trap, got {other:?}"),
        };
        assert_eq!(failure.live_streams, vec![ctx]);
        assert_eq!(
            p.on_failure_at(&failure, now),
            weir_host_abi::Verdict::FailClosed
        );
        assert!(
            matches!(p.vm_at(now), Availability::Unavailable(_)),
            "down during the backoff"
        );

        let at = p.next_rebuild().expect("a rebuild is scheduled");
        let Availability::Ready(vm) = p.vm_at(at) else {
            panic!("rebuilt after the backoff")
        };
        assert!(!vm.is_failed());
        assert_eq!(p.stats().snapshot().vm_rebuilds, 1);
        let handles = handles.lock().unwrap();
        assert_eq!(handles.len(), 2, "the rebuilt VM got a fresh plugin host");
        assert_eq!(
            handles[1].logs_with_prefix("lifecycle: on_configure"),
            ["lifecycle: on_configure ctx=1"]
        );
    }

    #[test]
    fn a_panic_in_on_configure_fails_the_start() {
        let config = plugin("trap-configure", &json!({"panic_in": "on_configure"}));
        match Filter::start(runtime(), &conformance(), config) {
            Err(StartError::Failed { phase, failure }) => {
                assert_eq!(phase, "proxy_on_configure");
                assert_eq!(failure.reason, FailureReason::Trap);
            }
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("start should fail"),
        }
    }
}

mod stream_control {
    use super::*;

    #[test]
    fn reset_request_and_response_are_deferred_effects() {
        let mut f = start("close-req", &json!({"scenario": "close_stream"}));
        let (out, _) = request(&mut f, get_request());
        assert_eq!(out.action, Action::Pause);
        let ctx = out.effects.first().map(|d| d.context).expect("an effect");
        assert_eq!(
            out.effects,
            vec![deferred(ctx, Effect::CloseStream(StreamType::HttpRequest))]
        );

        let mut f = start(
            "close-resp",
            &json!({"scenario": "close_stream", "side": "response"}),
        );
        let (out, mut s) = request(&mut f, get_request());
        assert_eq!(out, continued());
        let out = f
            .response_headers(&mut s, headers(&[(":status", "200")]), false)
            .unwrap();
        assert_eq!(out.action, Action::Pause);
        assert_eq!(
            out.effects,
            vec![deferred(
                s.ctx,
                Effect::CloseStream(StreamType::HttpResponse)
            )]
        );
    }
}

mod foreign {
    use super::*;

    #[test]
    fn unknown_foreign_function_is_not_found_and_known_ones_answer() {
        let mut f = start("foreign-unknown", &json!({"scenario": "foreign"}));
        let (_, mut s) = request(&mut f, get_request());
        assert_eq!(
            text(&s.mem().request_headers, "x-foreign").as_deref(),
            Some("not-found")
        );

        let config = plugin(
            "foreign-upper",
            &json!({"scenario": "foreign", "function": "upper"}),
        );
        let mut f = Filter::start_with(runtime(), &conformance(), config, |p| {
            p.with_foreign_function(
                "upper",
                Box::new(|args: &[u8]| Ok(args.to_ascii_uppercase())),
            )
        })
        .unwrap();
        let (_, mut s) = request(&mut f, get_request());
        assert_eq!(
            text(&s.mem().request_headers, "x-foreign").as_deref(),
            Some("ok:ARGS")
        );
    }
}

mod foreign_callback {
    use super::*;

    #[test]
    fn on_foreign_function_reads_its_arguments() {
        let mut f = start("foreign-callback", &json!({}));
        let out = f.vm.on_foreign_function(7, b"payload".to_vec()).unwrap();
        assert_eq!(out, continued());
        assert_eq!(
            f.plugin.logs_with_prefix("foreign: "),
            ["foreign: on_foreign_function id=7 args=payload"]
        );
    }
}

mod random {
    use super::*;

    fn sample(name: &str) -> String {
        let mut f = start(name, &json!({"scenario": "random"}));
        let (_, mut s) = request(&mut f, get_request());
        text(&s.mem().request_headers, "x-random").unwrap()
    }

    #[test]
    fn wasi_random_differs_between_vms() {
        let a = sample("random-a");
        let b = sample("random-b");
        assert_eq!(a.len(), 16);
        assert_ne!(a, b, "RandomState keys come from random_get");
    }
}

mod environ {
    use super::*;

    #[test]
    fn only_the_plugin_environment_is_visible() {
        let mut config = plugin("env-set", &json!({"scenario": "env"}));
        config.environment = vec![("WEIR_TEST".to_owned(), "hello".to_owned())];
        let mut f = Filter::start(runtime(), &conformance(), config).unwrap();
        assert_eq!(f.plugin.logs_with_prefix("env: "), ["env: WEIR_TEST=hello"]);
        let (_, mut s) = request(&mut f, get_request());
        assert_eq!(
            text(&s.mem().request_headers, "x-env").as_deref(),
            Some("hello")
        );

        // The proxy's own environment (PATH is set for any test process) never leaks in.
        assert!(std::env::var_os("PATH").is_some());
        let mut f = start("env-path", &json!({"scenario": "env", "var": "PATH"}));
        let (_, mut s) = request(&mut f, get_request());
        assert_eq!(
            text(&s.mem().request_headers, "x-env").as_deref(),
            Some("<unset>")
        );
    }
}

mod other_modules {
    use super::*;

    #[test]
    fn start_style_module_runs_start_then_filters() {
        let module = load(weir_test_artifacts::START_STYLE);
        let mut f = Filter::start(runtime(), &module, plugin("start-style", &json!({}))).unwrap();
        assert_eq!(
            f.plugin.logs_with_prefix("start_style: "),
            ["start_style: _start"]
        );
        let (out, mut s) = request(&mut f, get_request());
        assert_eq!(out, continued());
        assert_eq!(
            text(&s.mem().request_headers, "x-start-style").as_deref(),
            Some("1")
        );
        f.response_headers(&mut s, headers(&[(":status", "200")]), true)
            .unwrap();
        assert_eq!(
            text(&s.mem().response_headers, "x-start-style").as_deref(),
            Some("1")
        );
        f.finish(&mut s).unwrap();
    }

    #[test]
    fn tax_bench_reads_a_property_and_a_header_and_adds_three_headers() {
        let module = load(weir_test_artifacts::TAX_BENCH);
        let mut f = Filter::start(runtime(), &module, plugin("tax", &json!("two"))).unwrap();
        let stream =
            MemStream::http(&[(":method", "GET"), (":path", "/abcd"), (":authority", "h")]);
        let (out, mut s) = request(&mut f, stream);
        assert_eq!(out, continued());
        assert_eq!(
            text(&s.mem().request_headers, "x-tax-two").as_deref(),
            Some("5")
        );
        f.response_headers(&mut s, headers(&[(":status", "200")]), true)
            .unwrap();
        assert_eq!(
            text(&s.mem().response_headers, "x-tax-two").as_deref(),
            Some("5")
        );
        assert_eq!(
            text(&s.mem().response_headers, "x-tax-seen").as_deref(),
            Some("two")
        );
        f.finish(&mut s).unwrap();
    }

    #[test]
    fn header_bench_adds_its_header() {
        let module = load(weir_test_artifacts::HEADER_BENCH);
        let mut f = Filter::start(runtime(), &module, plugin("header-bench", &json!({}))).unwrap();
        let stream = MemStream::http(&[
            (":method", "GET"),
            (":path", "/abc"),
            (":authority", "h"),
            ("user-agent", "ua"),
        ]);
        let (out, mut s) = request(&mut f, stream);
        assert_eq!(out, continued());
        assert_eq!(
            text(&s.mem().request_headers, "x-bench").as_deref(),
            Some("6")
        );
    }
}
