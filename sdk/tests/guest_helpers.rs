//! weir-sdk's guest-side helpers (typed config, typed properties, route setters) called from inside
//! wasm: the guest filter in `tests/guest` reports what each helper returned, and these tests check
//! it against what the harness set — so a wrong attribute name or decoding fails here.

use serde_json::json;
use weir_sdk::testing::{Filter, build_filter};

fn guest() -> Filter {
    let wasm = build_filter(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/guest"));
    Filter::load(wasm)
        .unwrap()
        .name("guest")
        .root_id("root-1")
        .vm_id("vm-1")
        .property("xds.node.id", "node-7")
        .config(json!({"prefix": "x-g"}))
        .build()
        .unwrap()
}

#[test]
fn typed_properties_decode_envoy_encodings() {
    let f = guest();
    assert!(f.logged("config: prefix=x-g"));
    let mut s = f.http_stream();
    s.set_property("source.address", "[2001:db8::1]:4242")
        .set_property_u64("source.port", 4242)
        .set_property("destination.address", "10.0.0.2:8080")
        .set_property_bool("connection.mtls", true)
        .set_property("connection.requested_server_name", "shop.example")
        .set_property(
            "connection.uri_san_peer_certificate",
            "spiffe://mesh/ns/a/sa/b",
        )
        .set_property("request.id", "req-1")
        .set_property("request.url_path", "/items")
        .set_property("request.protocol", "HTTP/2");
    s.request_headers(
        &[
            (":method", "POST"),
            (":path", "/items?id=1"),
            (":authority", "shop"),
            (":scheme", "https"),
        ],
        true,
    );
    let expected = [
        ("request-path", "/items?id=1"),
        ("request-url-path", "/items"),
        ("request-method", "POST"),
        ("request-host", "shop"),
        ("request-scheme", "https"),
        ("request-id", "req-1"),
        ("request-protocol", "HTTP/2"),
        ("source-address", "[2001:db8::1]:4242"),
        ("source-ip", "2001:db8::1"),
        ("source-port", "4242"),
        ("destination-address", "10.0.0.2:8080"),
        ("connection-mtls", "true"),
        ("sni", "shop.example"),
        ("uri-san", "spiffe://mesh/ns/a/sa/b"),
        ("dns-san", "none"),
        ("subject", "none"),
        ("plugin-name", "guest"),
        ("plugin-root-id", "root-1"),
        ("plugin-vm-id", "vm-1"),
        ("node-id", "node-7"),
        ("route-cluster", "none"),
    ];
    for (name, value) in expected {
        assert_eq!(
            s.request_header(&format!("x-g-{name}")),
            Some(value),
            "{name}"
        );
    }
    s.response_headers(&[(":status", "418")], true);
    assert_eq!(s.response_header("x-g-response-code"), Some("418"));
}

#[test]
fn wrong_encodings_read_as_none() {
    let f = guest();
    let mut s = f.http_stream();
    s.set_property("source.port", "4242") // a string, not 8-byte LE
        .set_property_bytes("connection.mtls", vec![7])
        .set_property("source.address", "not an address");
    s.request_headers(&[(":method", "GET"), (":path", "/")], true);
    assert_eq!(s.request_header("x-g-source-port"), Some("none"));
    assert_eq!(s.request_header("x-g-connection-mtls"), Some("none"));
    assert_eq!(s.request_header("x-g-source-ip"), Some("none"));
    assert_eq!(
        s.request_header("x-g-source-address"),
        Some("not an address")
    );
}

#[test]
fn route_setters_write_the_fixed_properties() {
    let f = guest();
    let mut s = f.http_stream();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/a"),
            ("x-set-cluster", "v2"),
            ("x-set-timeout-ms", "1500"),
            ("x-set-path", "/v2/a?x=1"),
            ("x-set-retries", "3"),
        ],
        true,
    );
    assert_eq!(s.request_header("x-g-route-set"), Some("true"));
    assert_eq!(s.route_cluster(), Some("v2"));
    assert_eq!(s.property_str("weir.route.timeout_ms"), Some("1500"));
    assert_eq!(
        s.route_timeout(),
        Some(std::time::Duration::from_millis(1500))
    );
    assert_eq!(s.route_path(), Some("/v2/a?x=1"));
    assert_eq!(s.route_retries(), Some(3));
    // route::cluster() reads back what the chain decided so far.
    assert_eq!(s.request_header("x-g-route-cluster"), Some("v2"));
}

#[test]
fn raw_property_paths_reach_the_same_properties() {
    let f = guest();
    let mut s = f.http_stream();
    s.request_headers(
        &[(":method", "GET"), (":path", "/a"), ("x-set-raw", "r1")],
        true,
    );
    assert_eq!(s.property_str("weir.guest.raw"), Some("r1"));
    assert_eq!(
        s.request_header("x-g-raw"),
        Some(r#"set=Ok(()) raw=Some(Ok("r1")) seg=Some("r1") missing=None"#)
    );
}

#[test]
fn a_bad_configuration_is_rejected_with_a_clear_log() {
    let wasm = build_filter(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/guest"));
    let err = Filter::load(wasm)
        .unwrap()
        .config(json!({"prefx": "x"}))
        .build()
        .unwrap_err();
    let logs = err.logs();
    assert!(
        logs.iter()
            .any(|l| l.level == weir_sdk::testing::LogLevel::Error
                && l.message
                    .starts_with("invalid plugin configuration: unknown field `prefx`")),
        "{err}"
    );
}
