//! The template filter's tests: `build_filter` compiles this crate to wasm32-wasip1, and the
//! weir-sdk harness runs the module natively through the same host the proxy uses. Run them with
//! `cargo test` (in this repository: `cargo test -p weir-filter-template`).

use serde_json::json;
use weir_sdk::testing::{Action, Filter, build_filter};

/// The filter with `config`; the build happens once per test binary.
fn filter(config: serde_json::Value) -> Filter {
    let wasm = build_filter(env!("CARGO_MANIFEST_DIR"));
    Filter::load(wasm)
        .expect("the module loads")
        .config(config)
        .build()
        .expect("the filter starts")
}

const GET: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/items"),
    (":authority", "shop"),
];

#[test]
fn adds_the_configured_response_header() {
    let f = filter(json!({"response_header": "x-checked", "response_value": "yes"}));
    let mut s = f.http_stream();
    assert_eq!(s.request_headers(GET, true).action, Action::Continue);
    assert_eq!(
        s.response_headers(&[(":status", "200")], true).action,
        Action::Continue
    );
    assert_eq!(s.response_header("x-checked"), Some("yes"));
}

#[test]
fn empty_configuration_uses_the_defaults() {
    let f = filter(json!({}));
    let mut s = f.http_stream();
    assert!(s.request_headers(GET, true).is_continue());
    s.response_headers(&[(":status", "204")], true);
    assert_eq!(s.response_header("x-filtered"), Some("1"));
    assert_eq!(s.route_cluster(), None);
}

#[test]
fn denies_requests_missing_the_required_header() {
    let f = filter(json!({"required_header": "x-user"}));
    let mut s = f.http_stream();
    let step = s.request_headers(GET, true);
    assert_eq!(step.action, Action::Pause);
    let reply = step.local_reply.expect("a local reply");
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("x-missing-header"), Some("x-user"));
    assert_eq!(reply.body_text(), "missing header\n");
    assert!(f.logged("denied /items: missing header x-user"));

    let mut s = f.http_stream();
    let mut with_user = GET.to_vec();
    with_user.push(("x-user", "ana"));
    let step = s.request_headers(&with_user, true);
    assert!(step.is_continue());
    assert_eq!(s.local_reply(), None);
}

#[test]
fn routes_canary_requests_to_the_canary_cluster() {
    let f = filter(json!({"canary_cluster": "v2"}));
    let mut s = f.http_stream();
    let mut canary = GET.to_vec();
    canary.push(("x-canary", "1"));
    s.request_headers(&canary, true);
    assert_eq!(s.route_cluster(), Some("v2"));
    assert!(f.logged("canary: /items → v2"));

    let mut s = f.http_stream();
    s.request_headers(GET, true);
    assert_eq!(s.route_cluster(), None);
}

#[test]
fn rejects_a_configuration_with_a_typo() {
    let err = Filter::load(build_filter(env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .config(json!({"requred_header": "x-user"}))
        .build()
        .expect_err("the typo is rejected");
    assert!(
        err.to_string().contains("unknown field `requred_header`"),
        "{err}"
    );
}
