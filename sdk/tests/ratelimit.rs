//! `builtin:ratelimit` (filters/ratelimit) through the native harness: exact enforcement, lazy
//! refill on the fake clock, `retry-after` / `x-ratelimit-*` headers, every key kind, `missing_key`,
//! `match`, two VMs sharing one bucket through shared data (same vm_id, one runtime: the proxy's
//! workers), the stored state, metrics, and refused configurations.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use weir_sdk::testing::host_abi::MetricValue;
use weir_sdk::testing::{Filter, HttpStream, Step, build_filter};

fn wasm() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_filter(concat!(env!("CARGO_MANIFEST_DIR"), "/../filters/ratelimit")))
        .clone()
}

/// A ratelimit filter named `name` with vm_id `name` (metrics are keyed by plugin name, shared
/// data by vm_id: each test uses its own name).
fn ratelimit(name: &str, config: Value) -> Filter {
    Filter::load(wasm())
        .expect("ratelimit loads")
        .name(name)
        .vm_id(name)
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("ratelimit starts with its configuration: {e}"))
}

fn counter(f: &Filter, plugin: &str, name: &str) -> u64 {
    match f.driver().vm.runtime().metrics().get(plugin, name) {
        Some(MetricValue::Counter(n)) => n,
        other => panic!("{name}: {other:?}"),
    }
}

/// One bucket `b` keyed by `key`, `capacity`, refilling `tokens` per `per`.
fn one_bucket(key: &Value, capacity: u64, tokens: u64, per: &str) -> Value {
    json!({"buckets": [{"name": "b", "key": key, "capacity": capacity,
                        "refill": {"tokens": tokens, "per": per}}]})
}

const GET: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/api/items"),
    (":authority", "api.example.com"),
    (":scheme", "http"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut h = GET.to_vec();
    h.extend_from_slice(extra);
    h
}

/// Sends request headers on a new stream with `props` set first; returns the stream and step.
fn send(f: &Filter, headers: &[(&str, &str)], props: &[(&str, &str)]) -> (HttpStream, Step) {
    let mut s = f.http_stream();
    for (k, v) in props {
        s.set_property(k, v);
    }
    let step = s.request_headers(headers, true);
    (s, step)
}

/// An allowed request: `Continue`, and its response carries limit/remaining.
#[track_caller]
fn assert_allowed(
    f: &Filter,
    headers: &[(&str, &str)],
    props: &[(&str, &str)],
    limit: u64,
    remaining: u64,
) {
    let (mut s, step) = send(f, headers, props);
    assert!(step.is_continue(), "{step:?}");
    assert!(step.local_reply.is_none(), "{step:?}");
    let step = s.response_headers(&[(":status", "200")], true);
    assert!(step.is_continue());
    assert_eq!(
        s.response_header("x-ratelimit-limit"),
        Some(limit.to_string().as_str())
    );
    assert_eq!(
        s.response_header("x-ratelimit-remaining"),
        Some(remaining.to_string().as_str())
    );
}

/// A request the filter does not limit: `Continue`, no rate-limit headers.
#[track_caller]
fn assert_unlimited(f: &Filter, headers: &[(&str, &str)], props: &[(&str, &str)]) {
    let (mut s, step) = send(f, headers, props);
    assert!(step.is_continue(), "{step:?}");
    assert!(step.local_reply.is_none(), "{step:?}");
    s.response_headers(&[(":status", "200")], true);
    assert_eq!(s.response_header("x-ratelimit-limit"), None);
    assert_eq!(s.response_header("x-ratelimit-remaining"), None);
}

/// A 429 `over_limit` reply; returns `(retry-after, reset)`.
#[track_caller]
fn assert_limited(
    f: &Filter,
    headers: &[(&str, &str)],
    props: &[(&str, &str)],
    limit: u64,
) -> (u64, u64) {
    let (_s, step) = send(f, headers, props);
    assert!(step.is_pause(), "{step:?}");
    let r = step.local_reply.as_ref().expect("a local reply");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-weir-ratelimit"), Some("over_limit"));
    assert_eq!(r.body_text(), "weir: over_limit\n");
    assert_eq!(
        r.header("x-ratelimit-limit"),
        Some(limit.to_string().as_str())
    );
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let num = |h: &str| -> u64 {
        r.header(h)
            .unwrap_or_else(|| panic!("{h} missing: {r:?}"))
            .parse()
            .unwrap()
    };
    (num("retry-after"), num("x-ratelimit-reset"))
}

#[test]
fn capacity_n_allows_exactly_n_then_429() {
    let f = ratelimit("rl-exact", one_bucket(&json!({"global": true}), 5, 1, "1h"));
    for remaining in (0..5).rev() {
        assert_allowed(&f, GET, &[], 5, remaining);
    }
    for _ in 0..3 {
        let (retry_after, reset) = assert_limited(&f, GET, &[], 5);
        assert_eq!(retry_after, 3600, "one token per hour");
        assert_eq!(reset, 5 * 3600, "five tokens to full");
    }
    assert_eq!(counter(&f, "rl-exact", "ratelimit.allowed"), 5);
    assert_eq!(counter(&f, "rl-exact", "ratelimit.limited"), 3);
}

#[test]
fn refill_is_lazy_on_the_fake_clock_and_capped_at_capacity() {
    let f = ratelimit(
        "rl-refill",
        one_bucket(&json!({"global": true}), 2, 1, "1s"),
    );
    assert_allowed(&f, GET, &[], 2, 1);
    assert_allowed(&f, GET, &[], 2, 0);
    assert_eq!(assert_limited(&f, GET, &[], 2), (1, 2));
    f.advance_clock(Duration::from_millis(500));
    // Half a token: still limited, one more second (rounded up) to go, 1.5 s to full.
    assert_eq!(assert_limited(&f, GET, &[], 2), (1, 2));
    f.advance_clock(Duration::from_millis(500));
    assert_allowed(&f, GET, &[], 2, 0);
    assert_limited(&f, GET, &[], 2);
    // A long idle period refills to capacity, not beyond.
    f.advance_clock(Duration::from_secs(60));
    assert_allowed(&f, GET, &[], 2, 1);
    assert_allowed(&f, GET, &[], 2, 0);
    assert_limited(&f, GET, &[], 2);
    // Partial tokens accumulate across refused requests (a refusal only reads the state).
    for _ in 0..10 {
        f.advance_clock(Duration::from_millis(100));
        let _ = send(&f, GET, &[]);
    }
    assert_limited(&f, GET, &[], 2); // the 10th step's request took the token
}

#[test]
fn retry_after_and_reset_count_down() {
    let f = ratelimit(
        "rl-retry",
        one_bucket(&json!({"global": true}), 3, 1, "10s"),
    );
    for r in (0..3).rev() {
        assert_allowed(&f, GET, &[], 3, r);
    }
    assert_eq!(assert_limited(&f, GET, &[], 3), (10, 30));
    f.advance_clock(Duration::from_secs(3));
    assert_eq!(assert_limited(&f, GET, &[], 3), (7, 27));
    f.advance_clock(Duration::from_millis(6_001));
    // 0.9001 tokens: 1 s to one token (999 ms, rounded up), 21 s to full.
    assert_eq!(assert_limited(&f, GET, &[], 3), (1, 21));
    f.advance_clock(Duration::from_millis(999));
    assert_allowed(&f, GET, &[], 3, 0);
    // Several tokens per period: 5 per 1 m → one token every 12 s.
    let f = ratelimit(
        "rl-retry-5m",
        one_bucket(&json!({"global": true}), 1, 5, "1m"),
    );
    assert_allowed(&f, GET, &[], 1, 0);
    assert_eq!(assert_limited(&f, GET, &[], 1), (12, 12));
}

#[test]
fn refill_per_takes_the_manifest_grammar() {
    // One token per `per`: `retry-after` and `x-ratelimit-reset` are `per` in whole seconds.
    for (i, (per, secs)) in [("1m30s", 90), ("1d", 86_400), ("1.5s", 2), ("2500ms", 3)]
        .into_iter()
        .enumerate()
    {
        let f = ratelimit(
            &format!("rl-units{i}"),
            one_bucket(&json!({"global": true}), 1, 1, per),
        );
        assert_allowed(&f, GET, &[], 1, 0);
        assert_eq!(assert_limited(&f, GET, &[], 1), (secs, secs), "{per}");
    }
}

#[test]
fn header_key_gives_each_value_its_own_bucket() {
    let f = ratelimit(
        "rl-header",
        one_bucket(&json!({"header": "X-User"}), 2, 1, "1h"),
    );
    let ana = with(&[("x-user", "ana")]);
    let bob = with(&[("x-user", "bob")]);
    assert_allowed(&f, &ana, &[], 2, 1);
    assert_allowed(&f, &ana, &[], 2, 0);
    assert_limited(&f, &ana, &[], 2);
    assert_allowed(&f, &bob, &[], 2, 1);
    assert_allowed(&f, &bob, &[], 2, 0);
    assert_limited(&f, &bob, &[], 2);
    // No header (or an empty one): missing_key defaults to allow, unlimited.
    for _ in 0..5 {
        assert_unlimited(&f, GET, &[]);
        assert_unlimited(&f, &with(&[("x-user", "")]), &[]);
    }
    // The stored state: 16 bytes under ratelimit.<bucket>.<value>, no tokens left.
    let (value, cas) = f
        .driver()
        .vm
        .runtime()
        .shared()
        .get("rl-header", b"ratelimit.b.ana")
        .expect("ana's bucket is stored");
    assert_ne!(cas, 0);
    assert_eq!(value.len(), 16);
    assert_eq!(
        u64::from_le_bytes(value[..8].try_into().unwrap()),
        0,
        "tokens"
    );
    let now_ms = f
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(
        u64::from_le_bytes(value[8..].try_into().unwrap()),
        now_ms,
        "last refill"
    );
}

#[test]
fn long_or_binary_key_values_are_hashed() {
    let f = ratelimit(
        "rl-long",
        one_bucket(&json!({"header": "x-user"}), 1, 1, "1h"),
    );
    let long_a = "a".repeat(300);
    let long_b = "b".repeat(300);
    let mut ha = with(&[]);
    ha.push(("x-user", long_a.as_str()));
    let mut hb = with(&[]);
    hb.push(("x-user", long_b.as_str()));
    assert_allowed(&f, &ha, &[], 1, 0);
    assert_limited(&f, &ha, &[], 1);
    assert_allowed(&f, &hb, &[], 1, 0);
    assert_limited(&f, &hb, &[], 1);
    let exactly_256 = "c".repeat(256);
    let mut hc = with(&[]);
    hc.push(("x-user", exactly_256.as_str()));
    assert_allowed(&f, &hc, &[], 1, 0);
    let shared = f.driver().vm.runtime().shared().clone();
    let key = format!("ratelimit.b.{exactly_256}");
    assert!(
        shared.get("rl-long", key.as_bytes()).is_some(),
        "256 bytes kept as is"
    );
    let key = format!("ratelimit.b.{long_a}");
    assert!(
        shared.get("rl-long", key.as_bytes()).is_none(),
        "300 bytes hashed"
    );
}

#[test]
fn client_address_key_ignores_the_port() {
    let f = ratelimit(
        "rl-addr",
        one_bucket(&json!({"client": "address"}), 2, 1, "1h"),
    );
    let a1 = [("source.address", "10.0.0.1:1111")];
    let a2 = [("source.address", "10.0.0.1:2222")];
    let b = [("source.address", "10.0.0.2:1111")];
    let v6 = [("source.address", "[2001:db8::1]:443")];
    assert_allowed(&f, GET, &a1, 2, 1);
    assert_allowed(&f, GET, &a2, 2, 0);
    assert_limited(&f, GET, &a1, 2);
    assert_allowed(&f, GET, &b, 2, 1);
    assert_allowed(&f, GET, &v6, 2, 1);
    assert_allowed(&f, GET, &v6, 2, 0);
    assert_limited(&f, GET, &v6, 2);
    let shared = f.driver().vm.runtime().shared().clone();
    assert!(shared.get("rl-addr", b"ratelimit.b.10.0.0.1").is_some());
    assert!(shared.get("rl-addr", b"ratelimit.b.2001:db8::1").is_some());
}

#[test]
fn claim_principal_and_identity_keys_read_their_properties() {
    let cases = [
        ("rl-claim", json!({"claim": "sub"}), "weir.auth.claim.sub"),
        (
            "rl-principal",
            json!({"principal": true}),
            "weir.auth.principal",
        ),
        (
            "rl-identity",
            json!({"identity": "peer"}),
            "connection.uri_san_peer_certificate",
        ),
    ];
    for (name, key, property) in cases {
        let f = ratelimit(name, one_bucket(&key, 1, 1, "1h"));
        let alice = [(property, "spiffe://example.org/alice")];
        let bob = [(property, "bob")];
        assert_allowed(&f, GET, &alice, 1, 0);
        assert_limited(&f, GET, &alice, 1);
        assert_allowed(&f, GET, &bob, 1, 0);
        assert_limited(&f, GET, &bob, 1);
        // Another property does not count; without the key the request passes (allow).
        assert_unlimited(&f, GET, &[("weir.auth.claim.other", "alice")]);
        assert_unlimited(&f, GET, &[]);
    }
}

#[test]
fn missing_key_deny_answers_403() {
    let mut config = one_bucket(&json!({"principal": true}), 5, 1, "1s");
    config["missing_key"] = json!("deny");
    let f = ratelimit("rl-deny", config);
    let (_s, step) = send(&f, GET, &[]);
    assert!(step.is_pause());
    let r = step.local_reply.expect("a local reply");
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-weir-ratelimit"), Some("missing_key"));
    assert_eq!(r.body_text(), "weir: missing_key\n");
    assert_allowed(&f, GET, &[("weir.auth.principal", "ana")], 5, 4);
    assert_eq!(counter(&f, "rl-deny", "ratelimit.limited"), 1);
    assert_eq!(counter(&f, "rl-deny", "ratelimit.allowed"), 1);
}

#[test]
fn first_matching_bucket_applies() {
    let f = ratelimit(
        "rl-match",
        json!({"buckets": [
            {"name": "api-post", "key": {"global": true}, "capacity": 1,
             "refill": {"tokens": 1, "per": "1h"},
             "match": {"path_prefix": "/api", "method": "POST"}},
            {"name": "beta", "key": {"global": true}, "capacity": 2,
             "refill": {"tokens": 1, "per": "1h"},
             "match": {"header": {"name": "X-Beta", "value": "1"}}},
            {"name": "tagged", "key": {"header": "x-tag"}, "capacity": 3,
             "refill": {"tokens": 1, "per": "1h"},
             "match": {"header": "x-tag"}},
            {"name": "api", "key": {"global": true}, "capacity": 4,
             "refill": {"tokens": 1, "per": "1h"},
             "match": {"path_prefix": "/api/"}}
        ]}),
    );
    let post = [
        (":method", "POST"),
        (":path", "/api/x"),
        (":authority", "h"),
    ];
    assert_allowed(&f, &post, &[], 1, 0);
    assert_limited(&f, &post, &[], 1);
    // The same path with GET skips api-post and lands in `api`.
    assert_allowed(&f, GET, &[], 4, 3);
    // Header with the exact value → beta; another value → not beta (→ api).
    assert_allowed(&f, &with(&[("x-beta", "1")]), &[], 2, 1);
    assert_allowed(&f, &with(&[("x-beta", "2")]), &[], 4, 2);
    // Header presence → tagged (keyed by its value).
    assert_allowed(&f, &with(&[("x-tag", "t1")]), &[], 3, 2);
    // No bucket matches: unlimited.
    let other = [
        (":method", "GET"),
        (":path", "/static/app.js"),
        (":authority", "h"),
    ];
    for _ in 0..10 {
        assert_unlimited(&f, &other, &[]);
    }
    // `/api` alone does not match the `/api/` prefix.
    assert_unlimited(
        &f,
        &[(":method", "GET"), (":path", "/api"), (":authority", "h")],
        &[],
    );
}

#[test]
fn two_vms_share_one_bucket() {
    // Two VMs of one runtime with the same vm_id share their shared data, as the proxy's
    // workers do: the limit holds across them, whichever VM serves a request.
    let config = one_bucket(&json!({"header": "x-user"}), 6, 1, "1h");
    let a = ratelimit("rl-two-vms", config.clone());
    let b = ratelimit("rl-two-vms", config);
    let ana = with(&[("x-user", "ana")]);
    let mut remaining = 6;
    for i in 0..6 {
        remaining -= 1;
        let vm = if i % 2 == 0 { &a } else { &b };
        assert_allowed(vm, &ana, &[], 6, remaining);
    }
    assert_limited(&a, &ana, &[], 6);
    assert_limited(&b, &ana, &[], 6);
    // Streams open at once on both VMs (requests in flight concurrently) still take one token
    // each from the same bucket.
    let bob = with(&[("x-user", "bob")]);
    let mut streams: Vec<HttpStream> = (0..8)
        .map(|i| {
            if i % 2 == 0 {
                a.http_stream()
            } else {
                b.http_stream()
            }
        })
        .collect();
    let mut allowed = 0;
    for s in &mut streams {
        if s.request_headers(&bob, true).is_continue() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 6);
    // Metrics are per plugin name in one runtime: both VMs add to the same counters.
    assert_eq!(counter(&a, "rl-two-vms", "ratelimit.allowed"), 12);
    assert_eq!(counter(&a, "rl-two-vms", "ratelimit.limited"), 4);
}

#[test]
fn an_entry_written_by_another_worker_is_respected() {
    // Another VM (another worker) emptied the bucket; this VM sees it through shared data and
    // refills from the stored time, not from its own first sight of the key.
    let f = ratelimit(
        "rl-foreign",
        one_bucket(&json!({"global": true}), 10, 1, "1s"),
    );
    let now_ms = f
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut state = Vec::new();
    state.extend_from_slice(&500_000_000u64.to_le_bytes()); // half a token
    state.extend_from_slice(&now_ms.to_le_bytes());
    let shared = f.driver().vm.runtime().shared().clone();
    shared
        .set("rl-foreign", b"ratelimit.b.", &state, 0)
        .unwrap();
    assert_eq!(assert_limited(&f, GET, &[], 10), (1, 10));
    f.advance_clock(Duration::from_millis(500));
    assert_allowed(&f, GET, &[], 10, 0);
    // A corrupt entry is treated as a fresh (full) bucket and replaced.
    shared
        .set("rl-foreign", b"ratelimit.b.", b"junk", 0)
        .unwrap();
    assert_allowed(&f, GET, &[], 10, 9);
    assert_eq!(
        shared.get("rl-foreign", b"ratelimit.b.").unwrap().0.len(),
        16
    );
    // A larger stored count than the capacity (capacity lowered by a reload) is clamped.
    let mut state = Vec::new();
    state.extend_from_slice(&(1_000u64 * 1_000_000_000).to_le_bytes());
    state.extend_from_slice(&now_ms.to_le_bytes());
    shared
        .set("rl-foreign", b"ratelimit.b.", &state, 0)
        .unwrap();
    assert_allowed(&f, GET, &[], 10, 9);
}

#[test]
fn local_reply_is_not_decorated_again_in_the_response_phase() {
    let f = ratelimit("rl-reply", one_bucket(&json!({"global": true}), 1, 1, "1h"));
    assert_allowed(&f, GET, &[], 1, 0);
    let (mut s, step) = send(&f, GET, &[]);
    assert!(step.is_pause());
    // If the host runs the response phase over the local reply, nothing is added.
    s.response_headers(&[(":status", "429")], true);
    assert_eq!(s.response_header("x-ratelimit-remaining"), None);
}

#[test]
fn bad_configurations_are_refused() {
    let b = |extra: Value| {
        let mut bucket = json!({"name": "b", "key": {"global": true}, "capacity": 1,
                                "refill": {"tokens": 1, "per": "1s"}});
        for (k, v) in extra.as_object().unwrap() {
            bucket[k] = v.clone();
        }
        json!({"buckets": [bucket]})
    };
    let cases = [
        (json!({}), "missing field"),
        (json!({"buckets": []}), "buckets is empty"),
        (b(json!({"name": "a.b"})), "is not 1-64 characters"),
        (b(json!({"name": ""})), "is not 1-64 characters"),
        (b(json!({"capacity": 0})), "capacity 0"),
        (b(json!({"capacity": 1_000_000_001u64})), "capacity"),
        (
            b(json!({"refill": {"tokens": 0, "per": "1s"}})),
            "refill.tokens 0",
        ),
        (
            b(json!({"refill": {"tokens": 1, "per": "1d 1ms"}})),
            "refill.per: \"1d 1ms\" is not between 1ms and 24h",
        ),
        (
            b(json!({"refill": {"tokens": 1, "per": "100us"}})),
            "is not between 1ms and 24h",
        ),
        (
            b(json!({"refill": {"tokens": 1, "per": "1500us"}})),
            "refill.per: \"1500us\" is not a whole number of milliseconds",
        ),
        (
            b(json!({"refill": {"tokens": 1, "per": "1"}})),
            "refill.per: invalid duration `1`: time unit needed",
        ),
        (
            b(json!({"refill": {"tokens": 1, "per": "0s"}})),
            "refill.per",
        ),
        (
            b(json!({"refill": {"tokens": 1, "per": "25h"}})),
            "refill.per",
        ),
        (b(json!({"key": {"client": "port"}})), "key.client"),
        (b(json!({"key": {"identity": "local"}})), "key.identity"),
        (b(json!({"key": {"global": false}})), "must be true"),
        (b(json!({"key": {"header": ""}})), "empty header"),
        (b(json!({"key": {"cookie": "x"}})), "invalid configuration"),
        (
            b(json!({"key": {"global": true, "header": "x"}})),
            "invalid configuration",
        ),
        (b(json!({"match": {"host": "x"}})), "invalid configuration"),
        (b(json!({"burst": 3})), "unknown field"),
        (
            json!({"buckets": [], "missing_key": "block"}),
            "invalid configuration",
        ),
    ];
    for (config, want) in cases {
        let err = Filter::load(wasm())
            .unwrap()
            .name("rl-bad")
            .config(config.clone())
            .build()
            .expect_err(&format!("{config} must be refused"));
        assert!(
            err.logs().iter().any(|l| l.message.contains(want)),
            "{config}: want {want:?} in {:?}",
            err.logs()
        );
    }
    let dup = json!({"buckets": [
        {"name": "b", "key": {"global": true}, "capacity": 1, "refill": {"tokens": 1, "per": "1s"}},
        {"name": "b", "key": {"global": true}, "capacity": 1, "refill": {"tokens": 1, "per": "1s"}}
    ]});
    let err = Filter::load(wasm())
        .unwrap()
        .name("rl-bad")
        .config(dup)
        .build()
        .unwrap_err();
    assert!(err.logs().iter().any(|l| l.message.contains("used twice")));
}
