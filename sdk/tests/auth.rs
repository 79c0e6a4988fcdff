//! `builtin:auth` (filters/auth) through the native harness: JWT verification (RS256, ES256,
//! HS256; expiry, not-before, issuer, audience, signature, `alg: none`, unknown keys), JWKS
//! fetched by the root with rotation, API keys, forwarded claims (and spoofed claim headers
//! removed), identity rules on the peer SPIFFE ID, the ext_authz callout, and refused
//! configurations. Tokens and keys are fixed fixtures (signed once offline; see the constants).
//!
//! Long (880 lines): one test per auth behaviour (JWT, JWKS, identity rules, ext_authz) through the
//! native harness.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use weir_sdk::testing::host_abi::MetricValue;
use weir_sdk::testing::{
    CalloutResponse, Filter, HttpStream, Step, StreamType, build_filter, callout_response,
    callout_timeout_response,
};

fn wasm() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_filter(concat!(env!("CARGO_MANIFEST_DIR"), "/../filters/auth")))
        .clone()
}

fn auth(name: &str, config: Value) -> Filter {
    Filter::load(wasm())
        .expect("auth loads")
        .name(name)
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("auth starts with its configuration: {e}"))
}

fn counter(f: &Filter, plugin: &str, name: &str) -> u64 {
    match f.driver().vm.runtime().metrics().get(plugin, name) {
        Some(MetricValue::Counter(n)) => n,
        other => panic!("{name}: {other:?}"),
    }
}

fn jwks_v1() -> Value {
    serde_json::from_str(JWKS_V1).unwrap()
}

/// The usual JWT configuration with inline keys.
fn jwt_config() -> Value {
    json!({"jwt": {
        "issuer": "https://issuer.example",
        "audiences": ["api"],
        "jwks": jwks_v1(),
        "forward_claims": {"sub": "x-jwt-sub", "tenant": "x-tenant", "level": "x-level"},
    }})
}

fn headers_with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        (":method", "GET"),
        (":path", "/api/items?x=1"),
        (":authority", "api.example.com"),
        (":scheme", "https"),
    ];
    h.extend_from_slice(extra);
    h
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn with_token(f: &Filter, token: &str) -> (HttpStream, Step) {
    let auth = bearer(token);
    let mut s = f.http_stream();
    let step = s.request_headers(&headers_with(&[("authorization", &auth)]), true);
    (s, step)
}

#[track_caller]
fn assert_passes(step: &Step) {
    assert!(step.is_continue(), "{step:?}");
    assert!(step.local_reply.is_none(), "{step:?}");
}

#[track_caller]
fn assert_refused(step: &Step, status: u32, reason: &str) {
    assert!(step.is_pause(), "{step:?}");
    let reply = step.local_reply.as_ref().expect("a local reply");
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("x-weir-auth"), Some(reason), "{reply:?}");
    assert_eq!(reply.body_text(), format!("weir: {reason}\n"));
    if status == 401 {
        let want = if reason == "missing_token" {
            "Bearer realm=\"weir\""
        } else {
            "Bearer realm=\"weir\", error=\"invalid_token\""
        };
        assert_eq!(reply.header("www-authenticate"), Some(want), "{reply:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// JWT with inline keys.

#[test]
fn valid_tokens_of_each_algorithm_pass() {
    let f = auth("valid", jwt_config());
    for (token, sub) in [
        (RS_VALID, "alice"),
        (RS_NO_KID, "alice"),
        (ES_VALID, "bob"),
        (HS_VALID, "carol"),
    ] {
        let (s, step) = with_token(&f, token);
        assert_passes(&step);
        assert_eq!(s.property_str("weir.auth.principal"), Some(sub));
        assert_eq!(s.request_header("x-jwt-sub"), Some(sub));
    }
    assert_eq!(counter(&f, "valid", "auth.allowed"), 4);
    assert_eq!(counter(&f, "valid", "auth.denied"), 0);
}

#[test]
fn refused_tokens_name_the_reason() {
    let f = auth("refused", jwt_config());
    for (token, reason) in [
        (RS_EXPIRED, "expired"),
        (RS_NOT_YET_VALID, "not_yet_valid"),
        (RS_WRONG_AUD, "wrong_audience"),
        (RS_WRONG_ISS, "wrong_issuer"),
        (RS_BAD_SIG, "bad_signature"),
        (ES_BAD_SIG, "bad_signature"),
        (NONE, "invalid_token"),
        (HS_WITH_RSA_KID, "unknown_key"),
        (RS_ROTATED, "unknown_key"),
        ("not-a-jwt", "invalid_token"),
        ("a.b.c", "invalid_token"),
    ] {
        let (s, step) = with_token(&f, token);
        assert_refused(&step, 401, reason);
        let reply = step.local_reply.unwrap();
        // Nothing of the token is echoed.
        let everything = format!("{:?}{}", reply.headers, reply.body_text());
        assert!(!everything.contains("eyJ"), "{everything}");
        assert_eq!(s.property_str("weir.auth.principal"), None);
    }
    assert_eq!(counter(&f, "refused", "auth.denied"), 11);
}

#[test]
fn alg_none_is_refused() {
    // `alg: none` with an empty signature.
    let f = auth("none", jwt_config());
    let (_s, step) = with_token(&f, NONE);
    assert_refused(&step, 401, "invalid_token");
}

#[test]
fn missing_token_is_401_without_error_attribute() {
    let f = auth("missing", jwt_config());
    let mut s = f.http_stream();
    assert_refused(
        &s.request_headers(&headers_with(&[]), true),
        401,
        "missing_token",
    );
    // A different scheme is no bearer token.
    let mut s2 = f.http_stream();
    let step = s2.request_headers(
        &headers_with(&[("authorization", "Basic YWxpY2U6eA==")]),
        true,
    );
    assert_refused(&step, 401, "missing_token");
    s.finish();
}

#[test]
fn optional_token() {
    let mut config = jwt_config();
    config["jwt"]["required"] = json!(false);
    let f = auth("optional", config);
    let mut s = f.http_stream();
    assert_passes(&s.request_headers(&headers_with(&[]), true));
    assert_eq!(s.property_str("weir.auth.principal"), None);
    // A present but bad token is still refused.
    assert_refused(&with_token(&f, RS_EXPIRED).1, 401, "expired");
}

#[test]
fn expiry_follows_the_clock_with_skew() {
    // RS_EXP_SOON expires at 1_700_000_100; the harness clock starts at 1_700_000_000.
    let f = auth("skew", jwt_config());
    assert_passes(&with_token(&f, RS_EXP_SOON).1);
    f.advance_clock(Duration::from_secs(150)); // 50 s past exp: within the default 60 s skew
    assert_passes(&with_token(&f, RS_EXP_SOON).1);
    f.advance_clock(Duration::from_secs(20)); // 70 s past
    assert_refused(&with_token(&f, RS_EXP_SOON).1, 401, "expired");

    let mut config = jwt_config();
    config["jwt"]["clock_skew"] = json!("0s");
    let strict = auth("skew0", config);
    strict.advance_clock(Duration::from_secs(101));
    assert_refused(&with_token(&strict, RS_EXP_SOON).1, 401, "expired");
}

#[test]
fn claims_are_forwarded_and_spoofed_headers_removed() {
    let f = auth("claims", jwt_config());
    let auth = bearer(RS_VALID);
    let mut s = f.http_stream();
    let step = s.request_headers(
        &headers_with(&[
            ("authorization", &auth),
            ("x-tenant", "evil"),
            ("x-jwt-sub", "root"),
            ("x-level", "99"),
        ]),
        true,
    );
    assert_passes(&step);
    assert_eq!(s.request_header("x-jwt-sub"), Some("alice"));
    assert_eq!(s.request_header("x-tenant"), Some("acme"));
    assert_eq!(
        s.request_header("x-level"),
        Some("3"),
        "numbers in string form"
    );
    let tenants: Vec<_> = s
        .request_header_list()
        .into_iter()
        .filter(|(k, _)| k == "x-tenant")
        .collect();
    assert_eq!(tenants.len(), 1, "{tenants:?}");
    assert_eq!(s.property_str("weir.auth.claim.tenant"), Some("acme"));
    assert_eq!(s.property_str("weir.auth.claim.sub"), Some("alice"));
    assert_eq!(s.property_str("weir.auth.principal"), Some("alice"));

    // The same token again is served from the verified-token cache: the same claims, headers
    // and principal, and the spoofed values still replaced.
    let mut s = f.http_stream();
    let step = s.request_headers(
        &headers_with(&[("authorization", &auth), ("x-jwt-sub", "root")]),
        true,
    );
    assert_passes(&step);
    assert_eq!(s.request_header("x-jwt-sub"), Some("alice"));
    assert_eq!(s.request_header("x-tenant"), Some("acme"));
    assert_eq!(s.property_str("weir.auth.claim.tenant"), Some("acme"));
    assert_eq!(s.property_str("weir.auth.principal"), Some("alice"));

    // A token without the claim: the spoofed header is gone and nothing replaces it.
    let auth = bearer(HS_VALID);
    let mut s = f.http_stream();
    let step = s.request_headers(
        &headers_with(&[("authorization", &auth), ("x-tenant", "evil")]),
        true,
    );
    assert_passes(&step);
    assert_eq!(s.request_header("x-tenant"), None);
}

#[test]
fn custom_token_location() {
    let mut config = jwt_config();
    config["jwt"]["from"] = json!({"header": "x-token", "prefix": ""});
    let f = auth("from", config);
    let mut s = f.http_stream();
    assert_passes(&s.request_headers(&headers_with(&[("x-token", RS_VALID)]), true));
    let (_s, step) = with_token(&f, RS_VALID);
    assert_refused(&step, 401, "missing_token");
}

// ---------------------------------------------------------------------------------------------
// API keys.

#[test]
fn api_keys() {
    let f = auth(
        "apikeys",
        json!({"api_keys": {"keys": {"k-123": "ci-bot"}}}),
    );
    let mut s = f.http_stream();
    assert_passes(&s.request_headers(&headers_with(&[("x-api-key", "k-123")]), true));
    assert_eq!(s.property_str("weir.auth.principal"), Some("ci-bot"));
    let mut s = f.http_stream();
    let step = s.request_headers(&headers_with(&[("x-api-key", "k-999")]), true);
    assert_refused(&step, 401, "invalid_api_key");
    assert!(!step.local_reply.unwrap().body_text().contains("k-999"));
    let mut s = f.http_stream();
    assert_refused(
        &s.request_headers(&headers_with(&[]), true),
        401,
        "missing_token",
    );
}

#[test]
fn api_key_or_jwt_either_authenticates() {
    let mut config = jwt_config();
    config["api_keys"] = json!({"header": "x-key", "keys": {"k-123": "ci-bot"}});
    let f = auth("either", config);
    let mut s = f.http_stream();
    assert_passes(&s.request_headers(&headers_with(&[("x-key", "k-123")]), true));
    assert_eq!(s.property_str("weir.auth.principal"), Some("ci-bot"));
    let (s, step) = with_token(&f, ES_VALID);
    assert_passes(&step);
    assert_eq!(s.property_str("weir.auth.principal"), Some("bob"));
    // A bad key but a good token: the token authenticates.
    let auth = bearer(HS_VALID);
    let mut s = f.http_stream();
    let step = s.request_headers(
        &headers_with(&[("x-key", "nope"), ("authorization", &auth)]),
        true,
    );
    assert_passes(&step);
    // A bad key alone.
    let mut s = f.http_stream();
    let step = s.request_headers(&headers_with(&[("x-key", "nope")]), true);
    assert_refused(&step, 401, "invalid_api_key");
}

// ---------------------------------------------------------------------------------------------
// Rules on the peer identity.

const FRONT: &str = "spiffe://example.org/ns/default/sa/front";
const OTHER: &str = "spiffe://example.org/ns/default/sa/other";

fn rules_config() -> Value {
    json!({"rules": [
        {"allow": true, "principals": [FRONT], "paths": {"prefix": "/api"}, "methods": ["GET"]},
        {"allow": false, "principals": ["spiffe://example.org/*"]},
        {"allow": true, "paths": {"exact": "/healthz"}},
    ]})
}

fn request_as(f: &Filter, peer: Option<&str>, method: &str, path: &str) -> (HttpStream, Step) {
    let mut s = f.http_stream();
    if let Some(peer) = peer {
        s.set_property("connection.uri_san_peer_certificate", peer);
    }
    let step = s.request_headers(
        &[(":method", method), (":path", path), (":authority", "api")],
        true,
    );
    (s, step)
}

#[test]
fn rules_allow_and_deny_by_principal_path_and_method() {
    let f = auth("rules", rules_config());
    let (s, step) = request_as(&f, Some(FRONT), "GET", "/api/items?q=1");
    assert_passes(&step);
    assert_eq!(s.property_str("weir.auth.principal"), Some(FRONT));
    // Wrong method or path: the second rule (any example.org identity) denies.
    assert_refused(
        &request_as(&f, Some(FRONT), "POST", "/api/items").1,
        403,
        "forbidden",
    );
    assert_refused(
        &request_as(&f, Some(FRONT), "GET", "/admin").1,
        403,
        "forbidden",
    );
    assert_refused(
        &request_as(&f, Some(OTHER), "GET", "/api/items").1,
        403,
        "forbidden",
    );
    // No identity: only the rule without principals can match.
    assert_passes(&request_as(&f, None, "GET", "/healthz").1);
    assert_refused(
        &request_as(&f, None, "GET", "/api/items").1,
        403,
        "forbidden",
    );
    // Another trust domain matches nothing but /healthz; default deny.
    assert_refused(
        &request_as(&f, Some("spiffe://other.org/sa/x"), "GET", "/api").1,
        403,
        "forbidden",
    );
    // `spiffe://example.org/*` does not match a neighbouring trust domain: /healthz is allowed
    // by the third rule, which an example.org identity never reaches.
    assert_passes(&request_as(&f, Some("spiffe://example.organic/x"), "GET", "/healthz").1);
    assert_refused(
        &request_as(&f, Some(OTHER), "GET", "/healthz").1,
        403,
        "forbidden",
    );
}

#[test]
fn rules_default_allow_and_star() {
    let f = auth(
        "rulesdefault",
        json!({"default": "allow", "rules": [
            {"allow": false, "principals": ["*"], "methods": ["DELETE"]},
        ]}),
    );
    assert_passes(&request_as(&f, None, "GET", "/x").1);
    assert_refused(&request_as(&f, None, "DELETE", "/x").1, 403, "forbidden");
    assert_refused(
        &request_as(&f, Some(FRONT), "DELETE", "/x").1,
        403,
        "forbidden",
    );
}

#[test]
fn rules_then_jwt() {
    let mut config = jwt_config();
    config["rules"] = json!([{"allow": true, "principals": [FRONT]}]);
    let f = auth("rulesjwt", config);
    // Allowed by the rule, then the token is still required.
    let (_s, step) = request_as(&f, Some(FRONT), "GET", "/api");
    assert_refused(&step, 401, "missing_token");
    let auth = bearer(RS_VALID);
    let mut s = f.http_stream();
    s.set_property("connection.uri_san_peer_certificate", FRONT);
    assert_passes(&s.request_headers(&headers_with(&[("authorization", &auth)]), true));
    assert_eq!(
        s.property_str("weir.auth.principal"),
        Some("alice"),
        "the JWT sub wins"
    );
    // The rule refuses before the token is looked at.
    let mut s = f.http_stream();
    s.set_property("connection.uri_san_peer_certificate", OTHER);
    let step = s.request_headers(&headers_with(&[("authorization", &auth)]), true);
    assert_refused(&step, 403, "forbidden");
}

// ---------------------------------------------------------------------------------------------
// JWKS fetched by the root.

fn cluster_config() -> Value {
    json!({"jwt": {
        "issuer": "https://issuer.example",
        "audiences": ["api"],
        "jwks_cluster": {"cluster": "idp", "path": "/.well-known/jwks.json", "refresh": "300s"},
        "forward_claims": {"sub": "x-jwt-sub"},
    }})
}

fn jwks_answer(jwks: &str) -> CalloutResponse {
    callout_response(
        200,
        &[("content-type", "application/json")],
        jwks.as_bytes(),
        &[],
    )
}

#[test]
fn jwks_fetched_at_start_and_streams_wait_for_it() {
    let f = auth("jwksfetch", cluster_config());
    let calls = f.callouts();
    assert_eq!(calls.len(), 1, "fetched in on_configure: {calls:?}");
    let fetch = &calls[0];
    assert_eq!(fetch.upstream, "idp");
    assert_eq!(fetch.header(":method"), Some("GET"));
    assert_eq!(fetch.header(":path"), Some("/.well-known/jwks.json"));
    assert_eq!(fetch.header(":authority"), Some("idp"));
    assert_eq!(fetch.timeout, Some(Duration::from_secs(1)));

    // Two requests before the answer: both paused, each waiting for a fetch of its own (only the
    // stream's own callback can edit its headers).
    let (mut s1, step1) = with_token(&f, RS_VALID);
    assert!(step1.is_pause() && step1.local_reply.is_none(), "{step1:?}");
    let (mut s2, step2) = with_token(&f, RS_EXPIRED);
    assert!(step2.is_pause() && step2.local_reply.is_none(), "{step2:?}");
    let (c1, c2) = (s1.callouts(), s2.callouts());
    assert_eq!((c1.len(), c2.len()), (1, 1));
    assert_eq!(c1[0].header(":path"), Some("/.well-known/jwks.json"));

    f.answer_callout(fetch.token, jwks_answer(JWKS_V1));
    let step = s1.answer_callout(c1[0].token, jwks_answer(JWKS_V1));
    assert_eq!(step.resumed, vec![StreamType::HttpRequest], "{step:?}");
    assert!(step.local_reply.is_none());
    assert_eq!(s1.request_header("x-jwt-sub"), Some("alice"));
    assert_eq!(s1.property_str("weir.auth.principal"), Some("alice"));
    let step = s2.answer_callout(c2[0].token, jwks_answer(JWKS_V1));
    assert_refused(&step, 401, "expired");
    assert!(step.resumed.is_empty());

    // Later requests use the cache.
    assert_passes(&with_token(&f, ES_VALID).1);
    assert_eq!(f.callouts().len(), 3);
    assert_eq!(counter(&f, "jwksfetch", "auth.jwks_fetches"), 3);
}

#[test]
fn first_fetch_failure_fails_waiting_streams_with_503() {
    let f = auth("jwksfail", cluster_config());
    let root_fetch = f.callouts()[0].token;
    let (mut s, step) = with_token(&f, RS_VALID);
    assert!(step.is_pause());
    let token = s.callouts()[0].token;
    let step = s.answer_callout(token, CalloutResponse::failure("connection refused"));
    assert_refused(&step, 503, "jwks_unavailable");
    f.answer_callout(root_fetch, callout_response(500, &[], b"", &[]));
    // Right after the failure, new requests fail fast.
    assert_refused(&with_token(&f, RS_VALID).1, 503, "jwks_unavailable");
    assert_eq!(counter(&f, "jwksfail", "auth.jwks_fetch_failures"), 2);
    // After the retry interval the root fetches again and it recovers.
    f.advance_clock(Duration::from_secs(5));
    f.tick();
    let calls = f.callouts();
    assert_eq!(calls.len(), 3, "{calls:?}");
    f.answer_callout(calls[2].token, jwks_answer(JWKS_V1));
    assert_passes(&with_token(&f, RS_VALID).1);
}

#[test]
fn unknown_kid_triggers_a_refresh_then_rotation_is_accepted() {
    let f = auth("rotation", cluster_config());
    f.answer_callout(f.callouts()[0].token, jwks_answer(JWKS_V1));
    assert_passes(&with_token(&f, RS_VALID).1);

    // Tokens signed by the new key: paused while the refresh is in flight (each fetching).
    let (mut s, step) = with_token(&f, RS_ROTATED);
    assert!(step.is_pause() && step.local_reply.is_none(), "{step:?}");
    let (mut s2, step2) = with_token(&f, RS_ROTATED);
    assert!(step2.is_pause() && step2.local_reply.is_none(), "{step2:?}");
    let token = s.callouts()[0].token;
    let step = s.answer_callout(token, jwks_answer(JWKS_V2));
    assert_eq!(step.resumed, vec![StreamType::HttpRequest], "{step:?}");
    assert!(step.local_reply.is_none());
    assert_eq!(s.property_str("weir.auth.principal"), Some("dave"));
    let token = s2.callouts()[0].token;
    let step = s2.answer_callout(token, jwks_answer(JWKS_V2));
    assert_eq!(step.resumed, vec![StreamType::HttpRequest], "{step:?}");
    // Now cached.
    assert_passes(&with_token(&f, RS_ROTATED).1);
    assert_eq!(f.callouts().len(), 3);

    // The EC key left the set: within 5 s of the last kid refresh, an unknown kid is refused at
    // once; later one refresh is tried, and then it is refused as unknown.
    let (_s, step) = with_token(&f, ES_VALID);
    assert_refused(&step, 401, "unknown_key");
    assert_eq!(f.callouts().len(), 3, "rate-limited");
    f.advance_clock(Duration::from_secs(6));
    let (mut s, step) = with_token(&f, ES_VALID);
    assert!(step.is_pause(), "{step:?}");
    let token = s.callouts()[0].token;
    let step = s.answer_callout(token, jwks_answer(JWKS_V2));
    assert_refused(&step, 401, "unknown_key");
}

#[test]
fn jwks_refreshed_periodically_and_failed_refresh_keeps_keys() {
    let f = auth("periodic", cluster_config());
    f.answer_callout(f.callouts()[0].token, jwks_answer(JWKS_V1));
    f.tick();
    assert_eq!(f.callouts().len(), 1, "not due yet");
    f.advance_clock(Duration::from_secs(300));
    f.tick();
    let calls = f.callouts();
    assert_eq!(calls.len(), 2, "refreshed after 300 s");
    f.answer_callout(calls[1].token, callout_timeout_response());
    assert_passes(&with_token(&f, RS_VALID).1);
}

#[test]
fn jwks_durations_take_the_manifest_grammar() {
    let mut config = cluster_config();
    config["jwt"]["jwks_cluster"]["refresh"] = json!("1h");
    config["jwt"]["jwks_cluster"]["timeout"] = json!("1s 500ms");
    let f = auth("jwksunits", config);
    let calls = f.callouts();
    assert_eq!(calls[0].timeout, Some(Duration::from_millis(1_500)));
    f.answer_callout(calls[0].token, jwks_answer(JWKS_V1));
    // A tick advances the clock by its period, 1 s.
    f.advance_clock(Duration::from_secs(3_598));
    f.tick();
    assert_eq!(f.callouts().len(), 1, "not due after 3599 s");
    f.tick();
    assert_eq!(f.callouts().len(), 2, "refreshed after an hour");
}

// ---------------------------------------------------------------------------------------------
// ext_authz.

fn authz_config(extra: Value) -> Value {
    let mut c = json!({"ext_authz": {
        "cluster": "authz", "path": "/check", "timeout": "500ms",
        "forward_headers": ["authorization", "x-user"], "allow_headers": ["x-authz-user"],
    }});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            c["ext_authz"][k] = v;
        }
    }
    c
}

#[test]
fn ext_authz_timeout_takes_the_manifest_grammar() {
    // Rounded up to whole milliseconds: the ABI reads 0 as "no timeout".
    for (i, (timeout, want)) in [("1.5s", 1_500), ("1h", 3_600_000), ("500us", 1), ("0s", 0)]
        .into_iter()
        .enumerate()
    {
        let f = auth(
            &format!("authzunits{i}"),
            authz_config(json!({"timeout": timeout})),
        );
        let (s, _) = authz_request(&f);
        let want = (want > 0).then(|| Duration::from_millis(want));
        assert_eq!(s.callouts()[0].timeout, want, "{timeout}");
    }
}

fn authz_request(f: &Filter) -> (HttpStream, Step) {
    let mut s = f.http_stream();
    let step = s.request_headers(
        &[
            (":method", "POST"),
            (":path", "/api/orders"),
            (":authority", "api"),
            ("authorization", "Basic dTpw"),
            ("x-user", "ana"),
            ("x-other", "secret"),
        ],
        true,
    );
    (s, step)
}

#[test]
fn ext_authz_allow_copies_headers() {
    let f = auth("authzallow", authz_config(json!({})));
    let (mut s, step) = authz_request(&f);
    assert!(step.is_pause() && step.local_reply.is_none(), "{step:?}");
    let calls = s.callouts();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.upstream, "authz");
    assert_eq!(c.header(":method"), Some("POST"));
    assert_eq!(c.header(":path"), Some("/check/api/orders"));
    assert_eq!(c.header(":authority"), Some("authz"));
    assert_eq!(c.header("authorization"), Some("Basic dTpw"));
    assert_eq!(c.header("x-user"), Some("ana"));
    assert_eq!(c.header("x-other"), None, "only forward_headers");
    assert_eq!(c.timeout, Some(Duration::from_millis(500)));
    let step = s.answer_callout(
        c.token,
        callout_response(
            200,
            &[("x-authz-user", "ana@corp"), ("x-not-allowed", "1")],
            b"",
            &[],
        ),
    );
    assert_eq!(step.resumed, vec![StreamType::HttpRequest], "{step:?}");
    assert_eq!(s.request_header("x-authz-user"), Some("ana@corp"));
    assert_eq!(s.request_header("x-not-allowed"), None);
    assert_eq!(counter(&f, "authzallow", "auth.allowed"), 1);
}

#[test]
fn ext_authz_deny_uses_its_status() {
    let f = auth("authzdeny", authz_config(json!({})));
    for (answer, want) in [(401, 401), (403, 403), (404, 403)] {
        let (mut s, _) = authz_request(&f);
        let token = s.callouts()[0].token;
        let step = s.answer_callout(token, callout_response(answer, &[], b"no", &[]));
        let reply = step.local_reply.expect("denied");
        assert_eq!(reply.status, want);
        assert_eq!(reply.header("x-weir-auth"), Some("forbidden"));
        assert!(step.resumed.is_empty());
    }
}

#[test]
fn ext_authz_failure_and_timeout_fail_closed() {
    let f = auth("authzfail", authz_config(json!({})));
    for answer in [
        callout_timeout_response(),
        CalloutResponse::failure("reset"),
        callout_response(500, &[], b"", &[]),
    ] {
        let (mut s, _) = authz_request(&f);
        let token = s.callouts()[0].token;
        let step = s.answer_callout(token, answer);
        let reply = step.local_reply.expect("denied");
        assert_eq!(reply.status, 403);
        assert_eq!(reply.header("x-weir-auth"), Some("ext_authz_unavailable"));
        assert_eq!(reply.body_text(), "weir: ext_authz_unavailable\n");
    }
    // Unknown cluster: the dispatch itself fails.
    let f = Filter::load(wasm())
        .unwrap()
        .clusters(&["other"])
        .config(authz_config(json!({})))
        .build()
        .unwrap();
    assert_refused(&authz_request(&f).1, 403, "ext_authz_unavailable");
}

#[test]
fn ext_authz_failure_mode_allow() {
    let f = auth(
        "authzopen",
        authz_config(json!({"failure_mode_allow": true})),
    );
    let (mut s, _) = authz_request(&f);
    let token = s.callouts()[0].token;
    let step = s.answer_callout(token, callout_timeout_response());
    assert!(step.local_reply.is_none());
    assert_eq!(step.resumed, vec![StreamType::HttpRequest]);
    // A real refusal still refuses.
    let (mut s, _) = authz_request(&f);
    let token = s.callouts()[0].token;
    assert!(
        s.answer_callout(token, callout_response(403, &[], b"", &[]))
            .local_reply
            .is_some()
    );
}

#[test]
fn ext_authz_after_a_jwks_wait() {
    // JWKS by callout, then ext_authz: the stream waits for its fetch, then dispatches its
    // ext_authz callout from that callback, then is resumed by the ext_authz answer.
    let mut config = cluster_config();
    config["ext_authz"] = authz_config(json!({}))["ext_authz"].clone();
    let f = auth("jwtauthz", config);
    let (mut s, step) = with_token(&f, RS_VALID);
    assert!(step.is_pause());
    let token = s.callouts()[0].token;
    let step = s.answer_callout(token, jwks_answer(JWKS_V1));
    assert!(
        step.resumed.is_empty() && step.local_reply.is_none(),
        "{step:?}"
    );
    let calls = s.callouts();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].upstream, "authz");
    assert_eq!(
        calls[1].header("authorization"),
        Some(bearer(RS_VALID).as_str())
    );
    let step = s.answer_callout(
        calls[1].token,
        callout_response(200, &[("x-authz-user", "alice@corp")], b"", &[]),
    );
    assert_eq!(step.resumed, vec![StreamType::HttpRequest], "{step:?}");
    assert_eq!(s.request_header("x-authz-user"), Some("alice@corp"));
    assert_eq!(s.request_header("x-jwt-sub"), Some("alice"));
    assert!(s.local_reply().is_none());
}

// ---------------------------------------------------------------------------------------------
// Configuration.

#[test]
fn bad_configurations_are_refused() {
    for config in [
        json!({"nope": 1}),
        json!({"jwt": {"issuer": "x"}}),
        json!({"jwt": {"jwks": jwks_v1(), "jwks_cluster": {"cluster": "a", "path": "/"}}}),
        json!({"jwt": {"jwks": {"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}}}),
        json!({"jwt": {"jwks": {"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}}}),
        json!({"jwt": {"jwks": jwks_v1(), "clock_skew": "soon"}}),
        json!({"rules": [{"allow": true, "paths": {"prefix": "/a", "exact": "/b"}}]}),
        json!({"default": "maybe"}),
        json!({"ext_authz": {"cluster": "a", "timeout": "25h"}}),
        json!({"ext_authz": {"cluster": "a", "timeout": "500"}}),
        json!({"jwt": {"jwks": jwks_v1(), "clock_skew": "60"}}),
        json!({"jwt": {"jwks_cluster": {"cluster": "a", "path": "/", "refresh": "1d 1s"}}}),
    ] {
        let err = Filter::load(wasm())
            .unwrap()
            .config(config.clone())
            .build()
            .expect_err(&format!("{config} is refused"));
        assert!(err.start_error().is_some(), "{err}");
        assert!(
            err.logs().iter().any(|l| l.message.starts_with("auth: ")),
            "{config}: {:?}",
            err.logs()
        );
    }
}

#[test]
fn empty_configuration_allows_everything() {
    let f = auth("empty", json!({}));
    let (s, step) = request_as(&f, Some(FRONT), "GET", "/");
    assert_passes(&step);
    assert_eq!(s.property_str("weir.auth.principal"), Some(FRONT));
}

// The keys and tokens (shared with the end-to-end tests).
#[path = "../../tests/fixtures/jwt.rs"]
mod jwt;
use jwt::*;

/// `match.path_prefix`: only those paths are checked; elsewhere requests pass without a token,
/// and a spoofed forwarded-claim header is still removed.
#[test]
fn match_limits_the_checked_paths() {
    let mut config = jwt_config();
    config["match"] = json!({"path_prefix": "/private"});
    let f = auth("scoped", config);
    let mut s = f.http_stream();
    let step = s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/public/x"),
            (":authority", "a"),
            ("x-jwt-sub", "mallory"),
        ],
        true,
    );
    assert_passes(&step);
    assert_eq!(
        s.request_header("x-jwt-sub"),
        None,
        "spoofed claim header removed"
    );
    let mut s = f.http_stream();
    let step = s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/private/x"),
            (":authority", "a"),
        ],
        true,
    );
    assert_refused(&step, 401, "missing_token");
    let auth_header = bearer(RS_VALID);
    let mut s = f.http_stream();
    let step = s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/private/x"),
            (":authority", "a"),
            ("authorization", &auth_header),
        ],
        true,
    );
    assert_passes(&step);
    assert!(
        Filter::load(wasm())
            .unwrap()
            .config(json!({"match": {"path_prefix": "private"}}))
            .build()
            .is_err(),
        "a prefix must start with /"
    );
}

/// Verified tokens are cached, but only for the key set they were verified with: once a refresh
/// drops the key that signed a token, the token is refused although it was accepted (and cached)
/// before.
#[test]
fn a_cached_token_does_not_outlive_its_key() {
    let f = auth("cache-rotation", cluster_config());
    f.answer_callout(f.callouts()[0].token, jwks_answer(JWKS_V1));
    assert_passes(&with_token(&f, ES_VALID).1);
    assert_passes(&with_token(&f, ES_VALID).1); // served from the cache
    // The periodic refresh brings a key set without `ec-1`.
    f.advance_clock(Duration::from_secs(300));
    f.tick();
    let calls = f.callouts();
    assert_eq!(calls.len(), 2, "refreshed after 300 s");
    f.answer_callout(calls[1].token, jwks_answer(JWKS_V2));
    let (mut s, step) = with_token(&f, ES_VALID);
    // ES_VALID's kid is unknown now: the filter asks for a refresh, which still lacks it.
    if step.local_reply.is_none() {
        let token = s.callouts().last().expect("a kid refresh").token;
        let step = s.answer_callout(token, jwks_answer(JWKS_V2));
        assert_refused(&step, 401, "unknown_key");
    } else {
        assert_refused(&step, 401, "unknown_key");
    }
    // A token whose key stayed is still accepted.
    assert_passes(&with_token(&f, RS_VALID).1);
}
