//! `builtin:fault` (filters/fault) through the native harness: aborts (HTTP and gRPC) and their
//! rate, delays resumed by the root's timer on the fake clock, header control, `match`,
//! `max_active`, metrics, and refused configurations.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use weir_sdk::testing::host_abi::MetricValue;
use weir_sdk::testing::{Filter, HttpStream, Step, StreamType, build_filter};

fn wasm() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_filter(concat!(env!("CARGO_MANIFEST_DIR"), "/../filters/fault")))
        .clone()
}

/// A fault filter named `name` (metrics are keyed by plugin name; each test uses its own).
fn fault(name: &str, config: Value) -> Filter {
    Filter::load(wasm())
        .expect("fault loads")
        .name(name)
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("fault starts with its configuration: {e}"))
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

fn gauge(f: &Filter, plugin: &str, name: &str) -> i64 {
    match metric(f, plugin, name) {
        Some(MetricValue::Gauge(n)) => n,
        other => panic!("{name}: {other:?}"),
    }
}

const GET: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/api/items"),
    (":authority", "api.example.com"),
    (":scheme", "http"),
];

fn get_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut h = GET.to_vec();
    h.extend_from_slice(extra);
    h
}

fn request(f: &Filter, headers: &[(&str, &str)]) -> (HttpStream, Step) {
    let mut s = f.http_stream();
    let step = s.request_headers(headers, true);
    (s, step)
}

#[track_caller]
fn assert_abort(step: &Step, status: u32) {
    assert!(step.is_pause(), "{step:?}");
    let reply = step.local_reply.as_ref().expect("a local reply");
    assert_eq!(reply.status, status);
    assert_eq!(reply.header("x-weir-fault"), Some("abort"));
    assert_eq!(reply.body_text(), "weir: fault_abort\n");
    assert_eq!(reply.grpc_status, None);
}

#[track_caller]
fn assert_passes(step: &Step) {
    assert!(step.is_continue(), "{step:?}");
    assert!(step.local_reply.is_none(), "{step:?}");
}

/// Ticks until the filter's timer stops (or `max` ticks), returning the steps that did something.
fn tick_until_idle(f: &Filter, max: usize) -> Vec<Step> {
    let mut out = Vec::new();
    for _ in 0..max {
        let Some(step) = f.tick() else { break };
        if !step.effects.is_empty() {
            out.push(step);
        }
    }
    out
}

#[test]
fn abort_at_100_percent_replies_locally() {
    let f = fault(
        "abort100",
        json!({"abort": {"status": 503, "percent": 100}}),
    );
    let (mut s, step) = request(&f, GET);
    assert_abort(&step, 503);
    assert_eq!(s.local_reply().map(|r| r.status), Some(503));
    s.finish();
    assert_eq!(counter(&f, "abort100", "fault.aborts_injected"), 1);
    assert_eq!(counter(&f, "abort100", "fault.delays_injected"), 0);
    assert_eq!(f.tick_period(), None, "no timer without delays");
}

#[test]
fn abort_percent_defaults_to_100() {
    let f = fault("abortdefault", json!({"abort": {"status": 429}}));
    assert_abort(&request(&f, GET).1, 429);
}

#[test]
fn abort_at_0_percent_continues() {
    let f = fault("abort0", json!({"abort": {"status": 503, "percent": 0}}));
    for _ in 0..200 {
        assert_passes(&request(&f, GET).1);
    }
    assert_eq!(counter(&f, "abort0", "fault.aborts_injected"), 0);
}

#[test]
fn abort_rate_follows_the_percentage() {
    let f = fault("abort30", json!({"abort": {"status": 500, "percent": 30}}));
    let n = 10_000;
    let mut aborted = 0;
    for _ in 0..n {
        let (_s, step) = request(&f, GET);
        if step.local_reply.is_some() {
            assert_abort(&step, 500);
            aborted += 1;
        } else {
            assert_passes(&step);
        }
    }
    let rate = f64::from(aborted) / f64::from(n);
    assert!((0.27..=0.33).contains(&rate), "abort rate {rate}");
    assert_eq!(
        counter(&f, "abort30", "fault.aborts_injected"),
        aborted as u64
    );
}

#[test]
fn fractional_percent() {
    let f = fault(
        "abortfrac",
        json!({"abort": {"status": 500, "percent": 0.5}}),
    );
    let aborted = (0..4000)
        .filter(|_| request(&f, GET).1.local_reply.is_some())
        .count();
    // Expectation 20; 0 or ≥ 60 would mean the fraction is ignored or misread.
    assert!((2..60).contains(&aborted), "aborted {aborted} of 4000");
}

#[test]
fn each_vm_has_its_own_random_seed() {
    let pattern = |name: &str| {
        let f = fault(name, json!({"abort": {"status": 500, "percent": 50}}));
        (0..128)
            .map(|_| request(&f, GET).1.local_reply.is_some())
            .collect::<Vec<_>>()
    };
    assert_ne!(
        pattern("seed-a"),
        pattern("seed-b"),
        "two VMs rolled the same 128 dice: the PRNG is not seeded from WASI randomness"
    );
}

#[test]
fn grpc_abort() {
    let f = fault(
        "grpc",
        json!({"abort": {"grpc_status": 14, "percent": 100}}),
    );
    let (_s, step) = request(
        &f,
        &[
            (":method", "POST"),
            (":path", "/pkg.Svc/Call"),
            (":authority", "api.example.com"),
            ("content-type", "application/grpc"),
        ],
    );
    assert!(step.is_pause());
    let reply = step.local_reply.expect("a gRPC reply");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.grpc_status, Some(14));
    assert_eq!(reply.header("x-weir-fault"), Some("abort"));
    assert_eq!(reply.body_text(), "weir: fault_abort\n", "grpc-message");
    assert_eq!(counter(&f, "grpc", "fault.aborts_injected"), 1);
}

#[test]
fn delay_pauses_until_the_deadline_then_resumes() {
    let f = fault(
        "delay",
        json!({"delay": {"fixed": "200ms", "percent": 100}}),
    );
    let (mut s, step) = request(&f, GET);
    assert!(step.is_pause(), "{step:?}");
    assert!(step.local_reply.is_none());
    let period = f
        .tick_period()
        .expect("the root timer runs while a delay is pending");
    assert!(period <= Duration::from_millis(10), "{period:?}");
    assert_eq!(counter(&f, "delay", "fault.delays_injected"), 1);
    assert_eq!(gauge(&f, "delay", "fault.active_delays"), 1);

    // 190 ms + one tick < 200 ms: nothing yet.
    f.advance_clock(Duration::from_millis(190) - period);
    let step = f.tick().expect("ticking");
    assert!(step.effects.is_empty(), "resumed too early: {step:?}");
    assert_eq!(gauge(&f, "delay", "fault.active_delays"), 1);

    let mut resumed = None;
    for _ in 0..((20 / period.as_millis()) + 1) {
        let step = f.tick().expect("ticking");
        if !step.effects.is_empty() {
            resumed = Some(step);
            break;
        }
    }
    let step = resumed.expect("resumed once the deadline passed");
    assert_eq!(step.resumed, vec![StreamType::HttpRequest], "{step:?}");
    assert!(
        step.effects.iter().all(|d| d.context == s.context()),
        "{step:?}"
    );
    assert!(step.local_reply.is_none());
    assert_eq!(f.tick_period(), None, "the timer stops when nothing waits");
    assert_eq!(gauge(&f, "delay", "fault.active_delays"), 0);

    // The request then goes on normally.
    assert_passes(&s.response_headers(&[(":status", "200")], true));
    s.finish();
}

#[test]
fn delay_resumes_at_the_deadline_not_before() {
    // `fixed` takes the manifest's duration grammar (weir_sdk::config::parse_duration).
    let cases = [
        ("1s", 1_000),
        ("1.5s", 1_500),
        ("1s 250ms", 1_250),
        ("1500000us", 1_500),
    ];
    for (i, (fixed, ms)) in cases.into_iter().enumerate() {
        let f = fault(
            &format!("delayexact{i}"),
            json!({"delay": {"fixed": fixed}}),
        );
        let start = f.now();
        let (_s, step) = request(&f, GET);
        assert!(step.is_pause());
        let steps = tick_until_idle(&f, 1000);
        assert_eq!(steps.len(), 1, "{fixed}: {steps:?}");
        let waited = f.now().duration_since(start).unwrap();
        let (want, period) = (Duration::from_millis(ms), Duration::from_millis(10));
        assert!(
            waited >= want && waited <= want + period,
            "{fixed}: resumed after {waited:?}"
        );
    }
}

#[test]
fn delay_then_abort() {
    let f = fault(
        "delayabort",
        json!({"delay": {"fixed": "50ms"}, "abort": {"status": 503}}),
    );
    let (_s, step) = request(&f, GET);
    assert!(step.is_pause());
    assert!(step.local_reply.is_none(), "the abort waits for the delay");
    assert_eq!(counter(&f, "delayabort", "fault.aborts_injected"), 0);
    let steps = tick_until_idle(&f, 100);
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_abort(&steps[0], 503);
    assert!(steps[0].resumed.is_empty(), "aborted, not resumed");
    assert_eq!(counter(&f, "delayabort", "fault.aborts_injected"), 1);
    assert_eq!(counter(&f, "delayabort", "fault.delays_injected"), 1);
    assert_eq!(gauge(&f, "delayabort", "fault.active_delays"), 0);
}

#[test]
fn several_delays_resume_in_deadline_order() {
    let f = fault(
        "delaymany",
        json!({"header_control": true, "delay": {"fixed": "100ms"}}),
    );
    let (a, _) = request(&f, GET);
    let (b, _) = request(&f, &get_with(&[("x-weir-fault-delay-ms", "20")]));
    let (c, _) = request(&f, &get_with(&[("x-weir-fault-delay-ms", "60")]));
    assert_eq!(gauge(&f, "delaymany", "fault.active_delays"), 3);
    let order: Vec<_> = tick_until_idle(&f, 100)
        .iter()
        .flat_map(|s| s.effects.iter().map(|d| d.context))
        .collect();
    assert_eq!(order, vec![b.context(), c.context(), a.context()]);
    assert_eq!(gauge(&f, "delaymany", "fault.active_delays"), 0);
}

#[test]
fn a_stream_that_ends_while_delayed_leaves_the_queue() {
    let f = fault("delaygone", json!({"delay": {"fixed": "1s"}}));
    let (mut s, step) = request(&f, GET);
    assert!(step.is_pause());
    assert_eq!(gauge(&f, "delaygone", "fault.active_delays"), 1);
    s.finish();
    assert_eq!(gauge(&f, "delaygone", "fault.active_delays"), 0);
    assert_eq!(f.tick_period(), None);
    // A late tick (the host may still deliver one) does not touch the deleted context.
    f.advance_clock(Duration::from_secs(2));
    assert!(f.tick().is_none());
    assert!(f.failure().is_none());
}

#[test]
fn header_control_only_when_enabled() {
    let off = fault("hdr-off", json!({}));
    let asks = get_with(&[("x-weir-fault-abort", "418")]);
    assert_passes(&request(&off, &asks).1);
    assert_passes(&request(&off, &get_with(&[("x-weir-fault-delay-ms", "100")])).1);
    assert_eq!(off.tick_period(), None);

    let on = fault("hdr-on", json!({"header_control": true}));
    assert_passes(&request(&on, GET).1);
    assert_abort(&request(&on, &asks).1, 418);
    // Invalid values are ignored.
    assert_passes(&request(&on, &get_with(&[("x-weir-fault-abort", "700")])).1);
    assert_passes(&request(&on, &get_with(&[("x-weir-fault-abort", "x")])).1);
    // Percent 0: never.
    let never = get_with(&[("x-weir-fault-abort", "418"), ("x-weir-fault-percent", "0")]);
    for _ in 0..50 {
        assert_passes(&request(&on, &never).1);
    }
    // Delay by header.
    let (_s, step) = request(&on, &get_with(&[("x-weir-fault-delay-ms", "30")]));
    assert!(step.is_pause() && step.local_reply.is_none(), "{step:?}");
    let steps = tick_until_idle(&on, 100);
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].resumed, vec![StreamType::HttpRequest]);
}

#[test]
fn header_abort_overrides_the_configured_one() {
    let f = fault(
        "hdr-override",
        json!({"header_control": true, "abort": {"status": 503, "percent": 0}}),
    );
    assert_passes(&request(&f, GET).1);
    assert_abort(
        &request(&f, &get_with(&[("x-weir-fault-abort", "502")])).1,
        502,
    );
}

#[test]
fn match_restricts_the_faults() {
    let f = fault(
        "match",
        json!({
            "abort": {"status": 503},
            "match": {"host": "API.example.com", "path_prefix": "/api"}
        }),
    );
    let req = |authority: &'static str, path: &'static str| {
        vec![
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
        ]
    };
    assert_abort(&request(&f, &req("api.example.com", "/api/x")).1, 503);
    assert_abort(&request(&f, &req("API.EXAMPLE.COM:8080", "/api")).1, 503);
    assert_passes(&request(&f, &req("www.example.com", "/api/x")).1);
    assert_passes(&request(&f, &req("api.example.com", "/web")).1);
    assert_passes(&request(&f, &req("api.example.com", "/ap")).1);

    let path_only = fault(
        "match-path",
        json!({"abort": {"status": 503}, "match": {"path_prefix": "/api"}}),
    );
    assert_abort(&request(&path_only, &req("any", "/api/v1")).1, 503);
    assert_passes(&request(&path_only, &req("any", "/")).1);

    let with_port = fault(
        "match-port",
        json!({"abort": {"status": 503}, "match": {"host": "h:8080"}}),
    );
    assert_abort(&request(&with_port, &req("h:8080", "/")).1, 503);
    assert_passes(&request(&with_port, &req("h:9090", "/")).1);
    assert_passes(&request(&with_port, &req("h", "/")).1);
}

#[test]
fn max_active_caps_the_delayed_streams() {
    let f = fault(
        "maxactive",
        json!({"delay": {"fixed": "100ms"}, "abort": {"status": 503, "percent": 0}, "max_active": 2}),
    );
    let (_a, sa) = request(&f, GET);
    let (_b, sb) = request(&f, GET);
    let (_c, sc) = request(&f, GET);
    assert!(sa.is_pause() && sb.is_pause());
    assert_passes(&sc);
    assert_eq!(gauge(&f, "maxactive", "fault.active_delays"), 2);
    assert_eq!(counter(&f, "maxactive", "fault.delays_injected"), 2);
    assert_eq!(
        tick_until_idle(&f, 100).len(),
        1,
        "both due at the same tick"
    );
    assert_eq!(gauge(&f, "maxactive", "fault.active_delays"), 0);
    let (_d, sd) = request(&f, GET);
    assert!(sd.is_pause(), "room again once they resumed");

    // Beyond the cap an abort still applies.
    let g = fault(
        "maxactive-abort",
        json!({"delay": {"fixed": "100ms"}, "abort": {"status": 503}, "max_active": 0}),
    );
    assert_abort(&request(&g, GET).1, 503);
    assert_eq!(counter(&g, "maxactive-abort", "fault.delays_injected"), 0);
}

#[test]
fn empty_configuration_passes_everything() {
    let f = fault("empty", json!({}));
    assert_passes(&request(&f, GET).1);
    let f = Filter::load(wasm())
        .unwrap()
        .name("empty-bytes")
        .config_bytes("")
        .build()
        .expect("no configuration at all is accepted");
    assert_passes(&request(&f, GET).1);
}

#[test]
fn bad_configurations_are_refused() {
    let bad = [
        (json!({"abort": {"status": 503, "percent": 101}}), "percent"),
        (json!({"abort": {"status": 503, "percent": -1}}), "percent"),
        (
            json!({"delay": {"fixed": "1s", "percent": 100.5}}),
            "percent",
        ),
        (json!({"abort": {"status": 600}}), "200-599"),
        (json!({"abort": {"status": 199}}), "200-599"),
        (json!({"abort": {"grpc_status": 0}}), "gRPC"),
        (json!({"abort": {"grpc_status": 17}}), "gRPC"),
        (
            json!({"abort": {"status": 503, "grpc_status": 14}}),
            "exactly one",
        ),
        (json!({"abort": {"percent": 5}}), "exactly one"),
        (json!({"delay": {"fixed": "200"}}), "time unit needed"),
        (
            json!({"delay": {"fixed": "1 fortnight"}}),
            "unknown time unit",
        ),
        (json!({"delay": {"fixed": "ms"}}), "invalid duration"),
        (json!({"delay": {"fixed": "-5ms"}}), "invalid duration"),
        (json!({"delay": {"fixed": "1.s"}}), "invalid duration"),
        (json!({"delay": {"fixed": "2h"}}), "one hour"),
        (json!({"delay": {"fixed": "3601s"}}), "one hour"),
        (json!({"delay": {"fixed": "1h 1ns"}}), "one hour"),
        (json!({"delay": {"percent": 5}}), "fixed"),
        (
            json!({"delay": {"fixed": "1s"}, "jitter": 1}),
            "unknown field",
        ),
        (json!({"match": {"hots": "a"}}), "unknown field"),
        (json!({"match": {"host": ""}}), "empty"),
        (json!({"max_active": -1}), "invalid"),
        (json!({"header_control": "yes"}), "invalid"),
    ];
    for (config, why) in bad {
        let err = Filter::load(wasm())
            .unwrap()
            .name("bad")
            .config(&config)
            .build()
            .expect_err(&format!("{config} should be refused"));
        assert!(err.start_error().is_some(), "{config}: {err}");
        assert!(
            err.logs()
                .iter()
                .any(|l| l.message.starts_with("fault: ") && l.message.contains(why)),
            "{config}: expected a logged reason mentioning {why:?}, got {:?}",
            err.logs()
        );
    }
    let err = Filter::load(wasm())
        .unwrap()
        .name("bad")
        .config_bytes("{not json")
        .build()
        .expect_err("not JSON");
    assert!(
        err.logs()
            .iter()
            .any(|l| l.message.contains("invalid configuration"))
    );
}
