//! Unit tests of the stock filter `builtin:router` (`filters/router`), built from its current
//! source and driven through the native harness: matching, the route decision properties, header
//! edits in both directions, local replies, split statistics and configuration errors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Value, json};
use weir_sdk::testing::{Action, Filter, HarnessError, LogLevel, build_filter};

fn wasm() -> &'static PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_filter(concat!(env!("CARGO_MANIFEST_DIR"), "/../filters/router")))
}

fn router(config: Value) -> Filter {
    Filter::load(wasm())
        .expect("router loads")
        .name("router")
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("router starts: {e}"))
}

fn refused(config: Value) -> HarnessError {
    match Filter::load(wasm())
        .expect("router loads")
        .config(config)
        .build()
    {
        Ok(_) => panic!("configuration accepted"),
        Err(e) => e,
    }
}

/// A GET of `path` on `host` with `extra` headers.
fn req<'a>(
    method: &'a str,
    host: &'a str,
    path: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        (":method", method),
        (":path", path),
        (":authority", host),
        (":scheme", "http"),
    ];
    h.extend_from_slice(extra);
    h
}

/// The cluster one request is routed to (`None`: not forwarded, e.g. a local reply).
fn route_of(f: &Filter, headers: &[(&str, &str)]) -> Option<String> {
    let mut s = f.http_stream();
    let step = s.request_headers(headers, true);
    if step.is_pause() {
        return None;
    }
    s.route_cluster().map(str::to_owned)
}

fn get(f: &Filter, host: &str, path: &str, extra: &[(&str, &str)]) -> Option<String> {
    route_of(f, &req("GET", host, path, extra))
}

#[test]
fn host_matches_exactly_or_by_suffix_without_port_case_insensitively() {
    let f = router(json!({"routes": [
        {"match": {"host": "API.example.com"}, "to": "api"},
        {"match": {"host": "*.example.com"}, "to": "wild"},
        {"match": {}, "to": "other"},
    ]}));
    assert_eq!(get(&f, "api.example.com", "/", &[]).as_deref(), Some("api"));
    assert_eq!(
        get(&f, "Api.Example.COM:8080", "/", &[]).as_deref(),
        Some("api")
    );
    assert_eq!(
        get(&f, "www.example.com", "/", &[]).as_deref(),
        Some("wild")
    );
    assert_eq!(
        get(&f, "a.b.EXAMPLE.com:443", "/", &[]).as_deref(),
        Some("wild")
    );
    // The suffix needs a label before it.
    assert_eq!(get(&f, "example.com", "/", &[]).as_deref(), Some("other"));
    assert_eq!(
        get(&f, "notexample.com", "/", &[]).as_deref(),
        Some("other")
    );
}

#[test]
fn host_falls_back_to_the_host_header() {
    let f = router(json!({"routes": [{"match": {"host": "h.test"}, "to": "h"}]}));
    let r = route_of(
        &f,
        &[(":method", "GET"), (":path", "/"), ("host", "h.test:80")],
    );
    assert_eq!(r.as_deref(), Some("h"));
}

#[test]
fn path_prefix_exact_and_regex_ignore_the_query() {
    let f = router(json!({"routes": [
        {"match": {"path": {"exact": "/ping"}}, "to": "exact"},
        {"match": {"path": {"regex": "^/v[0-9]+/"}}, "to": "regex"},
        {"match": {"path": {"prefix": "/api"}}, "to": "prefix"},
    ]}));
    assert_eq!(get(&f, "h", "/ping", &[]).as_deref(), Some("exact"));
    assert_eq!(get(&f, "h", "/ping?x=1", &[]).as_deref(), Some("exact"));
    assert_eq!(get(&f, "h", "/v12/items", &[]).as_deref(), Some("regex"));
    assert_eq!(get(&f, "h", "/api", &[]).as_deref(), Some("prefix"));
    assert_eq!(get(&f, "h", "/apix/y?z", &[]).as_deref(), Some("prefix"));
    // `/ping/` is not exactly `/ping`, `/vx/` is not `/v<digits>/`, a query is not a path.
    assert_eq!(get(&f, "h", "/ping/", &[]), None);
    assert_eq!(get(&f, "h", "/vx/", &[]), None);
    assert_eq!(get(&f, "h", "/x?/api", &[]), None);
}

#[test]
fn method_one_or_a_list() {
    let f = router(json!({"routes": [
        {"match": {"method": "GET"}, "to": "get"},
        {"match": {"method": ["POST", "PUT"]}, "to": "write"},
    ]}));
    assert_eq!(
        route_of(&f, &req("GET", "h", "/", &[])).as_deref(),
        Some("get")
    );
    assert_eq!(
        route_of(&f, &req("PUT", "h", "/", &[])).as_deref(),
        Some("write")
    );
    assert_eq!(
        route_of(&f, &req("POST", "h", "/", &[])).as_deref(),
        Some("write")
    );
    assert_eq!(route_of(&f, &req("DELETE", "h", "/", &[])), None);
}

#[test]
fn headers_exact_present_absent_and_regex() {
    let f = router(json!({"routes": [
        {"match": {"headers": {"X-Canary": "1"}}, "to": "exact"},
        {"match": {"headers": {"x-user": {"regex": "^adm"}}}, "to": "regex"},
        {"match": {"headers": {"x-debug": {"present": true}, "x-block": {"present": false}}}, "to": "present"},
        {"match": {"headers": {"x-tier": {"exact": "gold"}}}, "to": "exact2"},
    ]}));
    assert_eq!(
        get(&f, "h", "/", &[("x-canary", "1")]).as_deref(),
        Some("exact")
    );
    assert_eq!(get(&f, "h", "/", &[("x-canary", "2")]), None);
    assert_eq!(
        get(&f, "h", "/", &[("x-user", "admin")]).as_deref(),
        Some("regex")
    );
    assert_eq!(get(&f, "h", "/", &[("x-user", "bob")]), None);
    assert_eq!(
        get(&f, "h", "/", &[("x-debug", "")]).as_deref(),
        Some("present")
    );
    assert_eq!(
        get(&f, "h", "/", &[("x-debug", ""), ("x-block", "1")]),
        None
    );
    assert_eq!(
        get(&f, "h", "/", &[("x-tier", "gold")]).as_deref(),
        Some("exact2")
    );
}

#[test]
fn query_parameters_match_their_first_raw_value() {
    let f = router(json!({"routes": [
        {"match": {"query": {"debug": "1", "v": ""}}, "to": "debug"},
    ]}));
    assert_eq!(get(&f, "h", "/x?debug=1&v", &[]).as_deref(), Some("debug"));
    assert_eq!(
        get(&f, "h", "/x?a=b&v=&debug=1", &[]).as_deref(),
        Some("debug")
    );
    assert_eq!(get(&f, "h", "/x?debug=2&v", &[]), None);
    assert_eq!(get(&f, "h", "/x?debug=1", &[]), None);
    assert_eq!(get(&f, "h", "/x", &[]), None);
}

#[test]
fn the_first_matching_route_wins_and_a_header_overrides_the_split() {
    let f = router(json!({"routes": [
        {"match": {"path": {"prefix": "/"}, "headers": {"x-canary": "1"}}, "to": "web-v2"},
        {"match": {"path": {"prefix": "/"}}, "to": [
            {"cluster": "web-v1", "weight": 100}, {"cluster": "web-v2", "weight": 0}]},
        {"match": {"path": {"prefix": "/"}}, "to": "never"},
    ]}));
    for _ in 0..50 {
        assert_eq!(get(&f, "h", "/a", &[]).as_deref(), Some("web-v1"));
        assert_eq!(
            get(&f, "h", "/a", &[("x-canary", "1")]).as_deref(),
            Some("web-v2")
        );
    }
}

#[test]
fn prefix_rewrite_sets_the_upstream_path_keeping_the_query() {
    let f = router(json!({"routes": [
        {"match": {"path": {"prefix": "/api"}}, "rewrite": {"prefix": "/v1"}, "to": "api"},
        {"match": {"path": {"prefix": "/strip/"}}, "rewrite": {"prefix": "/"}, "to": "s"},
        {"match": {"path": {"prefix": "/all"}}, "rewrite": {"prefix": ""}, "to": "a"},
        {"match": {}, "to": "plain"},
    ]}));
    let cases = [
        ("/api/items?id=1&x", Some("/v1/items?id=1&x")),
        ("/api", Some("/v1")),
        ("/strip/a/b?q", Some("/a/b?q")),
        ("/all?q=1", Some("/?q=1")),
        ("/other?x", None),
    ];
    for (path, want) in cases {
        let mut s = f.http_stream();
        assert!(
            s.request_headers(&req("GET", "h", path, &[]), true)
                .is_continue()
        );
        assert_eq!(s.route_path(), want, "{path}");
        // The request's own :path is left alone; the proxy applies weir.route.path.
        assert_eq!(s.request_header(":path"), Some(path));
    }
}

#[test]
fn timeout_and_retries_become_route_properties() {
    let f = router(json!({"routes": [
        {"match": {"path": {"prefix": "/slow"}}, "to": "a", "timeout": "2s", "retries": 3},
        {"match": {"path": {"prefix": "/ms"}}, "to": "a", "timeout": "250ms"},
        {"match": {"path": {"prefix": "/frac"}}, "to": "a", "timeout": "1.5s"},
        {"match": {"path": {"prefix": "/min"}}, "to": "a", "timeout": "1m", "retries": 0},
        {"match": {"path": {"prefix": "/off"}}, "to": "a", "timeout": "0s"},
        {"match": {"path": {"prefix": "/both"}}, "to": "a", "timeout": "1h 30m"},
        {"match": {"path": {"prefix": "/tiny"}}, "to": "a", "timeout": "500us"},
        {"match": {"path": {"prefix": "/day"}}, "to": "a", "timeout": "1d"},
        {"match": {}, "to": "a"},
    ]}));
    let cases: [(&str, Option<&str>, Option<&str>); 9] = [
        ("/slow", Some("2000"), Some("3")),
        ("/ms", Some("250"), None),
        ("/frac", Some("1500"), None),
        ("/min", Some("60000"), Some("0")),
        ("/off", Some("0"), None),
        ("/both", Some("5400000"), None),
        // Rounded up to whole milliseconds, so a sub-millisecond timeout is not "none".
        ("/tiny", Some("1"), None),
        ("/day", Some("86400000"), None),
        ("/x", None, None),
    ];
    for (path, timeout, retries) in cases {
        let mut s = f.http_stream();
        s.request_headers(&req("GET", "h", path, &[]), true);
        assert_eq!(s.property_str("weir.route.timeout_ms"), timeout, "{path}");
        assert_eq!(s.property_str("weir.route.retries"), retries, "{path}");
        assert_eq!(s.route_cluster(), Some("a"));
    }
}

#[test]
fn header_edits_in_both_directions_follow_the_matched_route() {
    let f = router(json!({"routes": [
        {"match": {"path": {"prefix": "/api"}}, "to": "api",
         "request_headers": {"add": {"X-Route": "api"}, "remove": ["x-internal", "x-route"]},
         "response_headers": {"add": {"x-served-by": "v2"}, "remove": ["server"]}},
        {"match": {}, "to": "other"},
    ]}));
    let mut s = f.http_stream();
    let step = s.request_headers(
        &req(
            "GET",
            "h",
            "/api/x",
            &[("x-internal", "secret"), ("x-route", "spoofed")],
        ),
        true,
    );
    assert!(step.is_continue());
    assert_eq!(s.request_header("x-internal"), None);
    // Removals run first, so a removed-then-added header holds only the configured value.
    let routes: Vec<_> = s
        .request_header_list()
        .into_iter()
        .filter(|(k, _)| k == "x-route")
        .collect();
    assert_eq!(routes, [("x-route".to_owned(), "api".to_owned())]);
    let step = s.response_headers(&[(":status", "200"), ("server", "nginx")], true);
    assert!(step.is_continue());
    assert_eq!(s.response_header("server"), None);
    assert_eq!(s.response_header("x-served-by"), Some("v2"));

    // Another route on the same VM: no edits.
    let mut s = f.http_stream();
    s.request_headers(&req("GET", "h", "/other", &[("x-internal", "keep")]), true);
    assert_eq!(s.request_header("x-internal"), Some("keep"));
    assert_eq!(s.request_header("x-route"), None);
    s.response_headers(&[(":status", "200"), ("server", "nginx")], true);
    assert_eq!(s.response_header("server"), Some("nginx"));
    assert_eq!(s.response_header("x-served-by"), None);
}

#[test]
fn redirect_and_direct_responses_are_local_replies() {
    let f = router(json!({"routes": [
        {"match": {"path": {"prefix": "/old"}}, "redirect": {"location": "https://example.com/new", "status": 301}},
        {"match": {"path": {"prefix": "/tmp"}}, "redirect": {"location": "/elsewhere", "status": 307}},
        {"match": {"path": {"exact": "/ping"}}, "direct": {"status": 200, "body": "pong", "headers": {"content-type": "text/plain"}}},
        {"match": {"path": {"exact": "/gone"}}, "direct": {"status": 410}},
    ]}));
    let mut s = f.http_stream();
    let step = s.request_headers(&req("GET", "h", "/old/page", &[]), true);
    assert_eq!(step.action, Action::Pause);
    let r = step.local_reply.expect("redirect");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://example.com/new"));
    assert_eq!(s.route_cluster(), None);

    let mut s = f.http_stream();
    let r = s
        .request_headers(&req("GET", "h", "/tmp", &[]), true)
        .local_reply
        .expect("redirect");
    assert_eq!((r.status, r.header("location")), (307, Some("/elsewhere")));

    let mut s = f.http_stream();
    let r = s
        .request_headers(&req("GET", "h", "/ping", &[]), true)
        .local_reply
        .expect("direct");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "pong");
    assert_eq!(r.header("content-type"), Some("text/plain"));

    let mut s = f.http_stream();
    let r = s
        .request_headers(&req("GET", "h", "/gone", &[]), true)
        .local_reply
        .expect("direct");
    assert_eq!((r.status, r.body_text().as_str()), (410, ""));
}

#[test]
fn no_route_is_a_404_without_config_details() {
    let f = router(json!({"routes": [
        {"match": {"host": "secret.internal", "path": {"prefix": "/admin"}}, "to": "admin"},
    ]}));
    let mut s = f.http_stream();
    let step = s.request_headers(&req("GET", "h", "/admin", &[]), true);
    assert_eq!(step.action, Action::Pause);
    let r = step.local_reply.expect("404");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-weir-router"), Some("no_route"));
    assert_eq!(r.body_text(), "weir: no_route");
    assert_eq!(s.route_cluster(), None);

    let f = router(json!({"routes": []}));
    let mut s = f.http_stream();
    let r = s
        .request_headers(&req("GET", "h", "/", &[]), true)
        .local_reply;
    assert_eq!(r.map(|r| r.status), Some(404));
}

fn split(sticky: &Value) -> Filter {
    router(json!({"routes": [{"to": [
        {"cluster": "v1", "weight": 90}, {"cluster": "v2", "weight": 10}], "sticky": sticky}]}))
}

#[test]
fn a_sticky_header_picks_the_same_cluster_for_one_value_and_varies_across_values() {
    let f = split(&json!({"header": "x-user"}));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for n in 0..200 {
        let user = format!("user-{n}");
        let first = get(&f, "h", "/", &[("x-user", &user)]).unwrap();
        for _ in 0..5 {
            assert_eq!(
                get(&f, "h", "/", &[("x-user", &user)]).unwrap(),
                first,
                "{user}"
            );
        }
        *counts.entry(first).or_default() += 1;
    }
    assert!(counts["v1"] > 140 && counts["v2"] > 5, "{counts:?}");
    // Stable across VMs (FNV-1a, no per-VM key).
    let g = split(&json!({"header": "x-user"}));
    for n in 0..50 {
        let user = format!("user-{n}");
        assert_eq!(
            get(&f, "h", "/", &[("x-user", &user)]),
            get(&g, "h", "/", &[("x-user", &user)])
        );
    }
}

#[test]
fn a_sticky_cookie_picks_by_the_cookie_value() {
    let f = split(&json!({"cookie": "session"}));
    let mut seen = HashMap::<String, usize>::new();
    for n in 0..200 {
        let cookie = format!("a=1; session=s{n}; b=2");
        let alone = format!("session=s{n}");
        let first = get(&f, "h", "/", &[("cookie", &cookie)]).unwrap();
        assert_eq!(get(&f, "h", "/", &[("cookie", &alone)]).unwrap(), first);
        // HTTP/2 style: one `cookie` header per cookie.
        let split_headers = [("cookie", "a=1"), ("cookie", alone.as_str())];
        assert_eq!(get(&f, "h", "/", &split_headers).unwrap(), first);
        *seen.entry(first).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// Counts v1 among `n` streams of `f` with `extra` headers.
fn share_of_v1(f: &Filter, n: usize, extra: &[(&str, &str)]) -> f64 {
    let v1 = (0..n)
        .filter(|_| get(f, "h", "/", extra).as_deref() == Some("v1"))
        .count();
    v1 as f64 / n as f64
}

#[test]
fn a_weighted_split_holds_its_weights_within_3_percent() {
    let f = split(&Value::Null);
    let share = share_of_v1(&f, 10_000, &[]);
    assert!((share - 0.9).abs() < 0.03, "v1 share {share}");
    // Sticky without its header falls back to random.
    let f = split(&json!({"header": "x-user"}));
    let share = share_of_v1(&f, 10_000, &[]);
    assert!(
        (share - 0.9).abs() < 0.03,
        "v1 share without the sticky header {share}"
    );
}

#[test]
fn two_vms_draw_different_sequences() {
    let a = router(
        json!({"routes": [{"to": [{"cluster": "x", "weight": 1}, {"cluster": "y", "weight": 1}]}]}),
    );
    let b = router(
        json!({"routes": [{"to": [{"cluster": "x", "weight": 1}, {"cluster": "y", "weight": 1}]}]}),
    );
    let seq = |f: &Filter| {
        (0..64)
            .map(|_| get(f, "h", "/", &[]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_ne!(seq(&a), seq(&b), "both VMs drew the same 64 choices");
}

#[test]
fn bad_configurations_are_refused_with_a_logged_reason() {
    let cases = [
        (
            json!({"routes": [{"match": {"path": {"regex": "(["}}, "to": "a"}]}),
            "regex",
        ),
        (
            json!({"routes": [{"match": {"headers": {"x": {"regex": "(["}}}, "to": "a"}]}),
            "regex",
        ),
        (
            json!({"routes": [{"to": [{"cluster": "a", "weight": 0}]}]}),
            "sum to 0",
        ),
        (json!({"routes": [{"to": []}]}), "sum to 0"),
        (
            json!({"routes": [{"match": {"path": {"exact": "/a"}}, "rewrite": {"prefix": "/b"}, "to": "a"}]}),
            "rewrite",
        ),
        (
            json!({"routes": [{"rewrite": {"prefix": "/b"}, "to": "a"}]}),
            "rewrite",
        ),
        (
            json!({"routes": [{"redirect": {"location": "/x", "status": 200}}]}),
            "redirect.status",
        ),
        (
            json!({"routes": [{"direct": {"status": 99}}]}),
            "direct.status",
        ),
        (
            json!({"routes": [{"direct": {"status": 600}}]}),
            "direct.status",
        ),
        (json!({"routes": [{"match": {}}]}), "needs one of"),
        (
            json!({"routes": [{"to": "a", "direct": {"status": 200}}]}),
            "only one of",
        ),
        (
            json!({"routes": [{"direct": {"status": 200}, "timeout": "1s"}]}),
            "timeout needs",
        ),
        (
            json!({"routes": [{"to": "a", "timeout": "-1s"}]}),
            "timeout",
        ),
        (
            json!({"routes": [{"to": "a", "timeout": "2"}]}),
            "timeout: invalid duration `2`: time unit needed",
        ),
        (
            json!({"routes": [{"to": "a", "timeout": "2 fortnights"}]}),
            "unknown time unit",
        ),
        (
            json!({"routes": [{"to": "a", "per_try_timeout": ".5s"}]}),
            "per_try_timeout: invalid duration",
        ),
        (
            json!({"routes": [{"to": "a", "timeout": "100y"}]}),
            "timeout: \"100y\": out of range",
        ),
        (
            json!({"routes": [{"match": {"path": {"prefix": "/", "exact": "/"}}, "to": "a"}]}),
            "exactly one",
        ),
        (json!({"routes": [{"to": "a", "sticky": {}}]}), "sticky"),
        (
            json!({"routes": [{"to": "a", "request_headers": {"add": {"x": "a\nb"}}}]}),
            "control",
        ),
        (
            json!({"routes": [{"to": "a", "request_headers": {"remove": [":path"]}}]}),
            "pseudo",
        ),
        (
            json!({"routes": [{"to": "a", "bogus": 1}]}),
            "invalid configuration",
        ),
        (
            json!({"routes": [{"match": {"hots": "a"}, "to": "a"}]}),
            "invalid configuration",
        ),
        (json!({"nothing": []}), "invalid configuration"),
    ];
    for (config, reason) in cases {
        let e = refused(config.clone());
        assert!(e.start_error().is_some(), "{config}: {e}");
        assert!(
            e.logs().iter().any(|l| l.level == LogLevel::Error
                && l.message.starts_with("router: ")
                && l.message.contains(reason)),
            "{config}: expected a logged reason containing {reason:?}, got {:?}",
            e.logs()
        );
    }
    let e = Filter::load(wasm())
        .unwrap()
        .config_bytes("not json")
        .build()
        .unwrap_err();
    assert!(e.start_error().is_some());
}
