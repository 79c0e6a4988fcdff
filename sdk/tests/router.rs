//! Unit tests of the stock filter `builtin:router` (`filters/router`), built from its current
//! source and driven through the native harness: matching, the route decision properties, header
//! edits in both directions, local replies, split statistics and configuration errors; virtual
//! hosts (Envoy's domain search order and port handling), Envoy's header and query rules and the
//! redirect built from the request.

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
    assert_eq!(r.header("x-weir-error"), Some("no_route"));
    assert_eq!(r.body_text(), "weir: no_route");
    assert_eq!(s.route_cluster(), None);

    let f = router(json!({"routes": []}));
    let mut s = f.http_stream();
    let r = s
        .request_headers(&req("GET", "h", "/", &[]), true)
        .local_reply;
    assert_eq!(r.map(|r| r.status), Some(404));
}

fn vhosts(hosts: &Value, ignore_port: bool) -> Filter {
    router(json!({"virtual_hosts": hosts, "ignore_port": ignore_port}))
}

/// A virtual host `name` of `domains` whose one route sends everything to cluster `name`.
fn vhost(name: &str, domains: &[&str]) -> Value {
    json!({"name": name, "domains": domains, "routes": [{"to": name}]})
}

#[test]
fn virtual_hosts_are_picked_exact_then_suffix_then_prefix_then_any_longest_wildcard_first() {
    let f = vhosts(
        &json!([
            vhost("any", &["*"]),
            vhost("prefix", &["api.*"]),
            vhost("prefix_short", &["api-*"]),
            vhost("prefix_long", &["api-v2.*"]),
            vhost("suffix", &["*.example.com"]),
            vhost("suffix_long", &["*-bar.example.com"]),
            vhost("exact", &["API.example.com", "www.example.org"]),
        ]),
        false,
    );
    let cases = [
        // Exact beats the suffix (`*.example.com`) and prefix (`api.*`) wildcards it also fits.
        ("api.example.com", "exact"),
        ("Api.EXAMPLE.com", "exact"),
        ("www.example.org", "exact"),
        // The longest suffix wildcard wins.
        ("foo-bar.example.com", "suffix_long"),
        ("www.example.com", "suffix"),
        ("a.b.example.com", "suffix"),
        // A wildcard stands for at least one character.
        ("-bar.example.com", "suffix"),
        ("example.com", "any"),
        (".example.com", "any"),
        // A suffix wildcard beats a prefix wildcard.
        ("api.foo.example.com", "suffix"),
        ("api.other.org", "prefix"),
        // The longest prefix wildcard wins.
        ("api-v2.other.org", "prefix_long"),
        ("api-v1.other.org", "prefix_short"),
        ("api.", "any"),
        ("other.org", "any"),
        ("", "any"),
    ];
    for (host, want) in cases {
        assert_eq!(get(&f, host, "/", &[]).as_deref(), Some(want), "{host:?}");
    }
}

#[test]
fn the_port_is_part_of_the_host_unless_ignore_port() {
    let hosts = json!([
        vhost("any", &["*"]),
        vhost("port", &["a.example.com:8080"]),
        vhost("plain", &["a.example.com"]),
        vhost("wild", &["*.test"]),
        vhost("pre", &["b.*"]),
        vhost("v6", &["[::1]"]),
    ]);
    let f = vhosts(&hosts, false);
    let cases = [
        ("a.example.com:8080", "port"),
        ("a.example.com", "plain"),
        ("a.example.com:9090", "any"),
        ("x.test:80", "any"),
        ("x.test", "wild"),
        // A prefix wildcard takes the port in its `*`.
        ("b.example.com:443", "pre"),
        ("[::1]:8080", "any"),
        ("[::1]", "v6"),
    ];
    for (host, want) in cases {
        assert_eq!(get(&f, host, "/", &[]).as_deref(), Some(want), "{host:?}");
    }

    let f = vhosts(&hosts, true);
    let cases = [
        // Stripped before matching: a domain with a port never matches.
        ("a.example.com:8080", "plain"),
        ("a.example.com:9090", "plain"),
        ("A.Example.Com:1", "plain"),
        ("x.test:80", "wild"),
        ("[::1]:8080", "v6"),
        ("[::1]", "v6"),
        ("b.example.com:443", "pre"),
    ];
    for (host, want) in cases {
        assert_eq!(get(&f, host, "/", &[]).as_deref(), Some(want), "{host:?}");
    }
}

fn status_of(f: &Filter, host: &str, path: &str) -> Option<(u32, String)> {
    let mut s = f.http_stream();
    let step = s.request_headers(&req("GET", host, path, &[]), true);
    step.local_reply
        .map(|r| (r.status, r.header("x-weir-router").unwrap_or("").to_owned()))
}

#[test]
fn no_virtual_host_or_no_route_in_it_is_a_404_without_trying_another_virtual_host() {
    let f = vhosts(
        &json!([
            {"name": "a", "domains": ["a.test"], "routes": [
                {"match": {"path": {"prefix": "/api"}}, "to": "a"}]},
            {"name": "b", "domains": ["*.test"], "routes": [
                {"to": "b", "response_headers": {"add": {"x-vhost": "b"}}}]},
            {"name": "empty", "domains": ["empty.org"], "routes": []},
        ]),
        false,
    );
    assert_eq!(get(&f, "a.test", "/api/x", &[]).as_deref(), Some("a"));
    assert_eq!(get(&f, "c.test", "/api/x", &[]).as_deref(), Some("b"));
    // `a.test` also fits `*.test`, but its own virtual host decides.
    let no_route = Some((404, "no_route".to_owned()));
    assert_eq!(status_of(&f, "a.test", "/other"), no_route);
    assert_eq!(status_of(&f, "other.org", "/api"), no_route);
    assert_eq!(status_of(&f, "empty.org", "/"), no_route);

    // The response edits of a route in the second virtual host.
    let mut s = f.http_stream();
    s.request_headers(&req("GET", "c.test", "/", &[]), true);
    s.response_headers(&[(":status", "200")], true);
    assert_eq!(s.response_header("x-vhost"), Some("b"));
    let mut s = f.http_stream();
    s.request_headers(&req("GET", "a.test", "/api", &[]), true);
    s.response_headers(&[(":status", "200")], true);
    assert_eq!(s.response_header("x-vhost"), None);
}

#[test]
fn header_prefix_suffix_and_contains() {
    let f = router(json!({"routes": [
        {"match": {"headers": {"x-p": {"prefix": "ab"}}}, "to": "prefix"},
        {"match": {"headers": {"x-s": {"suffix": "yz"}}}, "to": "suffix"},
        {"match": {"headers": {"x-c": {"contains": "mid"}}}, "to": "contains"},
    ]}));
    let cases: [(&str, &str, Option<&str>); 9] = [
        ("x-p", "abc", Some("prefix")),
        ("x-p", "ab", Some("prefix")),
        ("x-p", "xab", None),
        ("x-s", "xyz", Some("suffix")),
        ("x-s", "yzx", None),
        ("x-c", "amidst", Some("contains")),
        ("x-c", "mid", Some("contains")),
        ("x-c", "mi-d", None),
        ("x-other", "abc", None),
    ];
    for (name, value, want) in cases {
        assert_eq!(
            get(&f, "h", "/", &[(name, value)]).as_deref(),
            want,
            "{name}: {value}"
        );
    }
}

#[test]
fn an_inverted_header_rule_negates_but_an_absent_header_fails_a_value_rule() {
    let f = router(json!({"routes": [
        {"match": {"path": {"prefix": "/exact"}, "headers": {"x-env": {"exact": "prod", "invert": true}}}, "to": "inv"},
        {"match": {"path": {"prefix": "/prefix"}, "headers": {"x-v": {"prefix": "v1", "invert": true}}}, "to": "inv"},
        {"match": {"path": {"prefix": "/suffix"}, "headers": {"x-v": {"suffix": ".0", "invert": true}}}, "to": "inv"},
        {"match": {"path": {"prefix": "/contains"}, "headers": {"x-v": {"contains": "rc", "invert": true}}}, "to": "inv"},
        {"match": {"path": {"prefix": "/regex"}, "headers": {"x-v": {"regex": "^[0-9]+$", "invert": true}}}, "to": "inv"},
        {"match": {"path": {"prefix": "/present"}, "headers": {"x-debug": {"present": true, "invert": true}}}, "to": "inv"},
        {"match": {"path": {"prefix": "/absent"}, "headers": {"x-debug": {"present": false, "invert": true}}}, "to": "inv"},
        {"match": {"path": {"prefix": "/plain"}, "headers": {"x-env": {"exact": "prod", "invert": false}}}, "to": "plain"},
    ]}));
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Headers<'_>, Option<&str>); 20] = [
        ("/exact", &[("x-env", "dev")], Some("inv")),
        ("/exact", &[("x-env", "prod")], None),
        // Envoy: an absent header fails a value rule, inverted or not.
        ("/exact", &[], None),
        ("/prefix", &[("x-v", "v2")], Some("inv")),
        ("/prefix", &[("x-v", "v1.3")], None),
        ("/prefix", &[], None),
        ("/suffix", &[("x-v", "1.1")], Some("inv")),
        ("/suffix", &[("x-v", "1.0")], None),
        ("/contains", &[("x-v", "1.0")], Some("inv")),
        ("/contains", &[("x-v", "1.0-rc1")], None),
        ("/contains", &[], None),
        ("/regex", &[("x-v", "12a")], Some("inv")),
        ("/regex", &[("x-v", "123")], None),
        ("/regex", &[], None),
        // `present` answers for an absent header, and inverts like the rest.
        ("/present", &[], Some("inv")),
        ("/present", &[("x-debug", "1")], None),
        ("/absent", &[("x-debug", "")], Some("inv")),
        ("/absent", &[], None),
        ("/plain", &[("x-env", "prod")], Some("plain")),
        ("/plain", &[("x-env", "dev")], None),
    ];
    for (path, headers, want) in cases {
        assert_eq!(
            get(&f, "h", path, headers).as_deref(),
            want,
            "{path} {headers:?}"
        );
    }
}

#[test]
fn a_repeated_header_is_matched_value_by_value_like_envoy() {
    // Envoy 1.40 (its CVE-2026-26308 fix): each value on its own, never the values joined; a
    // rule holds when one value passes it, an inverted rule when none does.
    let f = router(json!({"routes": [
        {"match": {"path": {"prefix": "/joined"}, "headers": {"x-tag": {"exact": "a,b"}}}, "to": "joined"},
        {"match": {"path": {"prefix": "/exact"}, "headers": {"x-tag": "b"}}, "to": "exact"},
        {"match": {"path": {"prefix": "/suffix"}, "headers": {"x-tag": {"suffix": "c"}}}, "to": "suffix"},
        {"match": {"path": {"prefix": "/regex"}, "headers": {"x-tag": {"regex": "^b+$"}}}, "to": "regex"},
        {"match": {"path": {"prefix": "/deny"}, "headers": {"x-role": {"exact": "admin", "invert": true}}}, "to": "not-admin"},
        {"match": {"path": {"prefix": "/present"}, "headers": {"x-tag": {"present": true}, "x-other": {"present": false}}}, "to": "present"},
    ]}));
    let two = [("x-tag", "a"), ("x-other-tag", "z"), ("x-tag", "b")];
    let three = [("x-tag", "a"), ("x-tag", "bb"), ("x-tag", "c")];
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Headers<'_>, Option<&str>); 13] = [
        ("/joined", &two, None),
        ("/joined", &[("x-tag", "a,b")], Some("joined")),
        ("/exact", &two, Some("exact")),
        ("/exact", &[("x-tag", "b"), ("x-tag", "a")], Some("exact")),
        ("/exact", &[("x-tag", "a"), ("x-tag", "a")], None),
        ("/suffix", &three, Some("suffix")),
        ("/suffix", &[("x-tag", "c"), ("x-tag", "a")], Some("suffix")),
        ("/regex", &three, Some("regex")),
        ("/regex", &[("x-tag", "a,bb")], None),
        // A second value cannot slip past an inverted rule.
        ("/deny", &[("x-role", "user"), ("x-role", "admin")], None),
        (
            "/deny",
            &[("x-role", "user"), ("x-role", "guest")],
            Some("not-admin"),
        ),
        ("/deny", &[], None),
        ("/present", &three, Some("present")),
    ];
    for (path, headers, want) in cases {
        assert_eq!(
            get(&f, "h", path, headers).as_deref(),
            want,
            "{path} {headers:?}"
        );
    }
}

#[test]
fn query_rules_exact_regex_and_presence_test_the_first_occurrence() {
    let f = router(json!({"routes": [
        {"match": {"path": {"prefix": "/e"}, "query": {"q": {"exact": "1"}}}, "to": "exact"},
        {"match": {"path": {"prefix": "/r"}, "query": {"v": {"regex": "^v[0-9]+$"}}}, "to": "regex"},
        {"match": {"path": {"prefix": "/s"}, "query": {"v": {"regex": "[0-9]"}}}, "to": "search"},
        {"match": {"path": {"prefix": "/p"}, "query": {"debug": {"present": true}}}, "to": "present"},
        {"match": {"path": {"prefix": "/n"}, "query": {"debug": {"present": false}}}, "to": "absent"},
        {"match": {"path": {"prefix": "/m"}, "query": {"a": "1", "b": {"present": true}}}, "to": "mixed"},
    ]}));
    let cases: [(&str, Option<&str>); 22] = [
        ("/e?q=1", Some("exact")),
        ("/e?x=0&q=1&q=2", Some("exact")),
        ("/e?q=2&q=1", None),
        ("/e?q=10", None),
        ("/e", None),
        ("/r?v=v12", Some("regex")),
        ("/r?v=v1&v=x", Some("regex")),
        ("/r?v=x&v=v1", None),
        ("/r?v=v1x", None),
        ("/r", None),
        ("/s?v=ab3c", Some("search")),
        ("/s?v=abc", None),
        ("/p?debug", Some("present")),
        ("/p?x=1&debug=0", Some("present")),
        ("/p?debugger=1", None),
        ("/p", None),
        ("/n", Some("absent")),
        ("/n?x=1", Some("absent")),
        ("/n?debug", None),
        ("/m?b&a=1", Some("mixed")),
        ("/m?a=1", None),
        ("/m?b=1&a=2", None),
    ];
    for (path, want) in cases {
        assert_eq!(get(&f, "h", path, &[]).as_deref(), want, "{path}");
    }
}

/// The status and `location` of a redirect for a GET of `path` on `host` over `scheme`.
fn redirect_of(f: &Filter, scheme: &str, host: &str, path: &str) -> (u32, String) {
    let headers = [
        (":method", "GET"),
        (":path", path),
        (":authority", host),
        (":scheme", scheme),
    ];
    let mut s = f.http_stream();
    let step = s.request_headers(&headers, true);
    assert_eq!(step.action, Action::Pause, "{scheme}://{host}{path}");
    let r = step
        .local_reply
        .unwrap_or_else(|| panic!("no reply for {scheme}://{host}{path}"));
    (r.status, r.header("location").unwrap_or("").to_owned())
}

#[test]
fn a_redirect_builds_its_location_from_the_request_like_envoy() {
    let f = router(json!({"routes": [
        {"match": {"path": {"prefix": "/https"}}, "redirect": {"scheme": "https"}},
        {"match": {"path": {"prefix": "/toplain"}}, "redirect": {"scheme": "http", "status": 307}},
        {"match": {"path": {"prefix": "/host"}}, "redirect": {"host": "b.test"}},
        {"match": {"path": {"prefix": "/both"}}, "redirect": {"scheme": "https", "host": "b.test", "port": 8443}},
        {"match": {"path": {"prefix": "/port"}}, "redirect": {"port": 9000}},
        {"match": {"path": {"prefix": "/pathq"}}, "redirect": {"path": "/new?b=2", "strip_query": true}},
        {"match": {"path": {"prefix": "/path"}}, "redirect": {"path": "/new"}},
        {"match": {"path": {"prefix": "/rel"}}, "redirect": {"path": "new"}},
        {"match": {"path": {"prefix": "/strip"}}, "redirect": {"path": "/new", "strip_query": true}},
        {"match": {"path": {"prefix": "/sq"}}, "redirect": {"strip_query": true, "status": 303}},
        {"match": {"path": {"prefix": "/old/"}}, "redirect": {"prefix": "/new/", "status": 308}},
        {"match": {"path": {"prefix": "/gone"}}, "redirect": {"prefix": ""}},
        {"match": {"path": {"prefix": "/self"}}, "redirect": {"status": 302}},
    ]}));
    let cases: [(&str, &str, &str, u32, &str); 25] = [
        // A scheme change drops the request's port only when it is its scheme's default.
        (
            "http",
            "a.test:80",
            "/https?x=1",
            301,
            "https://a.test/https?x=1",
        ),
        (
            "http",
            "a.test:8080",
            "/https",
            301,
            "https://a.test:8080/https",
        ),
        ("http", "a.test", "/https", 301, "https://a.test/https"),
        (
            "https",
            "a.test:443",
            "/https",
            301,
            "https://a.test:443/https",
        ),
        (
            "https",
            "a.test:443",
            "/toplain",
            307,
            "http://a.test/toplain",
        ),
        (
            "http",
            "a.test:80",
            "/toplain",
            307,
            "http://a.test:80/toplain",
        ),
        (
            "https",
            "[::1]:443",
            "/toplain",
            307,
            "http://[::1]/toplain",
        ),
        // `host` replaces the whole authority, port included.
        (
            "http",
            "a.test:8080",
            "/host?q",
            301,
            "http://b.test/host?q",
        ),
        (
            "http",
            "a.test:8080",
            "/both?q",
            301,
            "https://b.test:8443/both?q",
        ),
        // `port` replaces the request's port or is added.
        (
            "http",
            "a.test:8080",
            "/port",
            301,
            "http://a.test:9000/port",
        ),
        ("http", "a.test", "/port", 301, "http://a.test:9000/port"),
        ("http", "[::1]:8080", "/port", 301, "http://[::1]:9000/port"),
        ("http", "[::1]", "/port", 301, "http://[::1]:9000/port"),
        // `path` keeps the request's query unless it has its own, which also beats strip_query.
        ("http", "a.test", "/path?a=1", 301, "http://a.test/new?a=1"),
        ("http", "a.test", "/path", 301, "http://a.test/new"),
        ("http", "a.test", "/pathq?a=1", 301, "http://a.test/new?b=2"),
        ("http", "a.test", "/rel?a", 301, "http://a.test/new?a"),
        ("http", "a.test", "/strip?a=1", 301, "http://a.test/new"),
        ("http", "a.test", "/sq/x?a=1&b", 303, "http://a.test/sq/x"),
        // `prefix` replaces the matched prefix, query kept.
        (
            "http",
            "a.test",
            "/old/x/y?z=1",
            308,
            "http://a.test/new/x/y?z=1",
        ),
        ("http", "a.test", "/gone?q", 301, "http://a.test/?q"),
        ("http", "a.test", "/gonexyz", 301, "http://a.test/xyz"),
        ("http", "a.test", "/gone/a", 301, "http://a.test/a"),
        // No field: back to the request's own URL.
        (
            "http",
            "a.test:8080",
            "/self?x",
            302,
            "http://a.test:8080/self?x",
        ),
        ("https", "A.test", "/self", 302, "https://A.test/self"),
    ];
    for (scheme, host, path, status, location) in cases {
        assert_eq!(
            redirect_of(&f, scheme, host, path),
            (status, location.to_owned()),
            "{scheme}://{host}{path}"
        );
    }
    // Without `:scheme`, `http`.
    let mut s = f.http_stream();
    let r = s
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/port"),
                (":authority", "a.test"),
            ],
            true,
        )
        .local_reply
        .expect("redirect");
    assert_eq!(r.header("location"), Some("http://a.test:9000/port"));
}

#[test]
fn bad_virtual_hosts_and_new_rules_are_refused_with_a_logged_reason() {
    let cases = [
        (
            json!({"virtual_hosts": [vhost("a", &["a.test"]), vhost("b", &["A.TEST"])]}),
            "domain \"a.test\": already a domain of virtual host \"a\"",
        ),
        (
            json!({"virtual_hosts": [vhost("a", &["*"]), vhost("b", &["*"])]}),
            "already a domain",
        ),
        (
            json!({"virtual_hosts": [vhost("a", &["*.test", "*.test"])]}),
            "already a domain",
        ),
        (
            json!({"virtual_hosts": [vhost("a", &["x.*"]), vhost("b", &["X.*"])]}),
            "already a domain",
        ),
        (json!({"virtual_hosts": [vhost("a", &[])]}), "no domains"),
        (
            json!({"virtual_hosts": [vhost("a", &[""])]}),
            "empty domain",
        ),
        (
            json!({"virtual_hosts": [vhost("", &["a"])]}),
            "virtual_hosts[0]: empty name",
        ),
        (json!({"virtual_hosts": [vhost("a", &["a\nb"])]}), "control"),
        (
            json!({"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"to": "a"}, {"match": {}}]}]}),
            "virtual_hosts[0] (\"v\").routes[1]: a route needs one of",
        ),
        (
            json!({"virtual_hosts": [{"name": "v", "routes": []}]}),
            "invalid configuration",
        ),
        (
            json!({"routes": [], "virtual_hosts": []}),
            "exactly one of `routes`, `virtual_hosts`",
        ),
        (json!({}), "exactly one of `routes`, `virtual_hosts`"),
        (
            json!({"routes": [], "ignore_port": true}),
            "ignore_port needs `virtual_hosts`",
        ),
        (
            json!({"routes": [{"match": {"headers": {"x": {"prefix": ""}}}, "to": "a"}]}),
            "prefix is empty",
        ),
        (
            json!({"routes": [{"match": {"headers": {"x": {"contains": "a", "exact": "a"}}}, "to": "a"}]}),
            "exactly one of exact, regex, present, prefix, suffix, contains",
        ),
        (
            json!({"routes": [{"match": {"headers": {"x": {"invert": true}}}, "to": "a"}]}),
            "exactly one of",
        ),
        (
            json!({"routes": [{"match": {"query": {"q": {"exact": "a", "present": true}}}, "to": "a"}]}),
            "match.query \"q\": needs exactly one of exact, regex, present",
        ),
        (
            json!({"routes": [{"match": {"query": {"q": {"regex": "(["}}}, "to": "a"}]}),
            "match.query \"q\": regex",
        ),
        (
            json!({"routes": [{"redirect": {"location": "/x", "host": "b"}}]}),
            "redirect.location excludes redirect.host",
        ),
        (
            json!({"routes": [{"redirect": {"prefix": "/b"}}]}),
            "redirect.prefix needs a match.path.prefix",
        ),
        (
            json!({"routes": [{"match": {"path": {"prefix": "/"}}, "redirect": {"prefix": "/b", "path": "/c"}}]}),
            "only one of `path`, `prefix`",
        ),
        (
            json!({"routes": [{"redirect": {"port": 0}}]}),
            "redirect.port",
        ),
        (
            json!({"routes": [{"redirect": {"port": 70000}}]}),
            "invalid configuration",
        ),
        (
            json!({"routes": [{"redirect": {"scheme": "ht tp"}}]}),
            "redirect.scheme",
        ),
        (
            json!({"routes": [{"redirect": {"host": "b.test/x"}}]}),
            "redirect.host",
        ),
        (
            json!({"routes": [{"redirect": {"path": ""}}]}),
            "redirect.path is empty",
        ),
        (
            json!({"routes": [{"redirect": {"scheme": "https", "status": 200}}]}),
            "redirect.status",
        ),
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
