//! `builtin:auth`: authentication and authorization (Envoy's `jwt_authn`, RBAC and `ext_authz`,
//! simplified): identity rules on the mTLS peer's SPIFFE ID and the request, API keys and/or
//! JWTs (RS256, ES256, HS256; inline or fetched JWKS), and an external authorization callout.
//!
//! Configuration (JSON plugin configuration; every part optional, unknown fields are rejected;
//! the parts given apply in this order: `rules`, then `api_keys` / `jwt`, then `ext_authz`):
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `rules` | list of rules | absent | authorization on the peer identity and the request; the first matching rule decides |
//! | `default` | `"allow"` or `"deny"` | `"deny"` | the decision when `rules` is given and no rule matches |
//! | `jwt` | object (below) | absent | JWT authentication |
//! | `api_keys` | `{"header": h, "keys": {key: principal}}` | absent | API-key authentication (`header` defaults to `x-api-key`) |
//! | `ext_authz` | object (below) | absent | external authorization callout |
//!
//! A rule is `{"allow": bool, "principals": [p…], "paths": {"prefix": p} or {"exact": p},
//! "methods": ["GET", …]}`; every condition given must hold. The principal is the peer
//! certificate's first URI SAN (`connection.uri_san_peer_certificate`); a pattern is exact, `*`
//! (anything, even no identity) or ends in `/*` (any identity starting with what precedes the `*`).
//! Without a peer identity only rules without `principals` or with `*` can match. Paths are
//! compared without the query string; methods exactly.
//!
//! `jwt`:
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `issuer` | string | absent | the `iss` the token must carry |
//! | `audiences` | list of strings | absent | the token's `aud` (string or array) must contain one of them |
//! | `clock_skew` | duration | `60s` | slack for `exp` and `nbf` |
//! | `jwks` | JWKS object | — | inline keys (RFC 7517: RSA `n`/`e`, EC P-256 `x`/`y`, oct `k`) |
//! | `jwks_cluster` | `{"cluster", "path", "authority", "refresh", "timeout"}` | — | fetch the JWKS with an HTTP GET (`authority` defaults to the cluster, `refresh` to `300s`, `timeout` to `1s`) |
//! | `from` | `{"header": h, "prefix": p}` | `authorization`, `"Bearer "` | where the token is |
//! | `forward_claims` | `{claim: header}` | absent | copy these claims onto the request (and into `weir.auth.claim.<claim>`) |
//! | `required` | bool | `true` | a request without a token is refused (401) |
//!
//! Exactly one of `jwks` and `jwks_cluster` is required. A duration is written as in the
//! manifest (`weir_sdk::config::parse_duration`: `"500ms"`, `"60s"`, `"1h"`, `"1m30s"`), at most
//! a day; `clock_skew` and `refresh` are used in whole seconds (rounded down), the timeouts in
//! whole milliseconds (rounded up).
//!
//! `match`: `{"path_prefix": "/private"}` limits the filter to requests whose `:path` starts with
//! the prefix; others pass unchecked (the `forward_claims` headers are still removed from them).
//!
//! `ext_authz`: `{"cluster", "path", "authority", "timeout" (default 500ms), "forward_headers": [..],
//! "allow_headers": [..], "failure_mode_allow": false}`.
//!
//! Behaviour:
//! * First the request headers named in `forward_claims` are removed, so a client cannot spoof them.
//! * Rules: a denying rule (or the default) answers 403.
//! * Authentication (when `jwt` and/or `api_keys` is configured; either may authenticate): a
//!   valid API key authenticates as its principal name; otherwise a token is verified: its `alg`
//!   must be `RS256`, `ES256` or `HS256` and match the key's `kty` (`none` and anything else are
//!   refused), the signature is checked before any claim is read, then `exp`/`nbf` (with
//!   `clock_skew`, against `proxy_get_current_time`), `iss` and `aud`. A key is chosen by `kid`,
//!   or without `kid` every key of the right type is tried. On success `weir.auth.principal` is
//!   the `sub` and each forwarded claim (strings as is, other values as JSON) is set as request
//!   header and property `weir.auth.claim.<claim>`. Without a token or key: 401 unless `jwt.required`
//!   is false. When no credential authenticated, the principal is the peer's SPIFFE ID, if any.
//! * Verified tokens are cached per VM (up to 1024; Envoy's `jwt_cache_config`): a repeat skips
//!   decoding and the signature check but not `exp`/`nbf`, and an entry counts only for the key
//!   set it was verified with, so a JWKS refresh that drops its key refuses it again.
//! * Refusals: 401 with `www-authenticate: Bearer realm="weir", error="invalid_token"` (without
//!   `error` for a missing token) and `x-weir-auth: <reason>`, reason one of `missing_token`,
//!   `invalid_token`, `expired`, `not_yet_valid`, `wrong_issuer`, `wrong_audience`,
//!   `bad_signature`, `unknown_key`, `invalid_api_key`; authorization refusals are 403
//!   `x-weir-auth: forbidden`. The body is `weir: <reason>\n`. Token contents are never echoed.
//! * JWKS fetching: the root context fetches in `on_configure` (or on a later tick after a
//!   failure, every 5 s) and again every `refresh`. A request that needs keys the cache does not
//!   have waits for a fetch of its own (only a stream's own callback may edit its headers, so the
//!   root cannot finish a parked request): before the first successful fetch, and when its `kid`
//!   is unknown (one such refresh every 5 s; requests arriving while it is in flight fetch too).
//!   At most 16 fetches are in flight per VM. A request whose fetch fails gets 503
//!   `jwks_unavailable` when there are no keys at all (and for 5 s after such a failure, new
//!   requests get it at once), else `unknown_key`; a failed refresh keeps the previous keys.
//! * ext_authz: a callout to `cluster` with the request's method, `:path` = `path` + the request's
//!   path, `:authority` = `authority` (default: the cluster) and the `forward_headers`. A 2xx
//!   answer allows (its `allow_headers` are copied onto the request); 401/403 refuse with that
//!   status, other 4xx with 403 (`x-weir-auth: forbidden`); a failed callout, a 5xx or a timeout
//!   refuse with 403 `ext_authz_unavailable` unless `failure_mode_allow`.
//! * Metrics: counters `auth.allowed`, `auth.denied`, `auth.jwks_fetches`,
//!   `auth.jwks_fetch_failures`.
//! * A bad configuration (unparseable JSON, unknown field, bad duration, a JWKS key that does not
//!   parse, both or neither JWKS source) is logged at error level and fails `on_configure`.
//!
//! Layout: `config` parses and validates the configuration; `jwt` verifies tokens (JWKS parsing
//! and fetching, the cache of verified tokens); `ext_authz` makes the authorization callout. This
//! file holds the contexts, the per-VM state they share and the decision run in the stream's own
//! callbacks.

mod config;
mod ext_authz;
mod jwt;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use weir_sdk::phases::Phase;
use weir_sdk::properties;
use weir_sdk::proxy_wasm;
use weir_sdk::proxy_wasm::hostcalls;
use weir_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use weir_sdk::proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

use config::{Config, JwksCluster};
use ext_authz::{finish_ext_authz, start_ext_authz};
use jwt::{
    Cached, Jwk, Prehashed, VERIFIED_CACHE_MAX, Verified, dispatch_jwks, jwks_answered, same_bytes,
    stream_fetch, token_hash, verify_jwt,
};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_root_context_id| Box::new(AuthRoot {
        config: None,
        state: Rc::new(RefCell::new(State::default())),
    }));
}}

/// The root's timer period (periodic JWKS refresh, retry of a failed first fetch).
const TICK: Duration = Duration::from_secs(1);
/// The least time between two refreshes triggered by an unknown `kid`, and between a failed
/// first fetch and its retry.
const KID_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
const HEADER_REASON: &str = "x-weir-auth";
const WWW_AUTHENTICATE: &str = "www-authenticate";

// ---------------------------------------------------------------------------------------------
// Refusals.

/// Why a request was refused: the `x-weir-auth` header and the body (`weir: <reason>`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reason {
    MissingToken,
    InvalidToken,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    BadSignature,
    UnknownKey,
    InvalidApiKey,
    Forbidden,
    JwksUnavailable,
    ExtAuthzUnavailable,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::Forbidden => "forbidden",
            Self::JwksUnavailable => "jwks_unavailable",
            Self::ExtAuthzUnavailable => "ext_authz_unavailable",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state.

#[derive(Default, Clone, Copy)]
struct Metrics {
    allowed: Option<u32>,
    denied: Option<u32>,
    fetches: Option<u32>,
    fetch_failures: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        let def = |name| hostcalls::define_metric(MetricType::Counter, name).ok();
        Self {
            allowed: def("auth.allowed"),
            denied: def("auth.denied"),
            fetches: def("auth.jwks_fetches"),
            fetch_failures: def("auth.jwks_fetch_failures"),
        }
    }

    fn add(id: Option<u32>) {
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

/// The per-VM state shared by the root and its streams.
#[derive(Default)]
struct State {
    /// Fetched keys (`None` until the first successful fetch).
    keys: Option<Rc<Vec<Jwk>>>,
    /// The root's JWKS fetch in flight.
    root_fetch: Option<u32>,
    /// JWKS fetches in flight (the root's and the streams').
    in_flight: u32,
    /// When the keys were last fetched successfully (seconds since the epoch).
    fetched_at: Option<u64>,
    /// When the last unknown-kid refresh started.
    kid_refresh_at: Option<u64>,
    /// An unknown-kid refresh started and no fetch has succeeded since.
    kid_refresh_pending: bool,
    /// When the first fetch last failed (while there are no keys).
    failed_at: Option<u64>,
    /// Tokens whose signature, issuer and audience were verified (Envoy's `jwt_cache_config`):
    /// a repeat costs a hash, a map lookup, a word-wise compare and the time checks instead of a
    /// signature verification. Keyed by [`token_hash`]; the entry holds the token itself, so a
    /// hash collision is a miss, never a match.
    verified: HashMap<u64, Cached, BuildHasherDefault<Prehashed>>,
    metrics: Metrics,
}

fn now_secs() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t: SystemTime| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// The decision, run in the stream's own callbacks (request headers, or a callout answer).

/// What the decision needs next.
enum Outcome {
    /// Let the request through.
    Allow,
    /// A refusal was sent.
    Denied,
    /// Wait for this stream's JWKS fetch (callout token).
    WaitJwks(u32),
    /// Wait for the ext_authz callout (answered in the stream's own callback).
    WaitAuthz,
}

fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
}

fn deny(state: &RefCell<State>, status: u32, reason: Reason) -> Outcome {
    let mut headers = vec![(HEADER_REASON, reason.as_str())];
    if status == 401 {
        headers.push((
            WWW_AUTHENTICATE,
            if reason == Reason::MissingToken {
                "Bearer realm=\"weir\""
            } else {
                "Bearer realm=\"weir\", error=\"invalid_token\""
            },
        ));
    }
    let body = format!("weir: {}\n", reason.as_str());
    let _ = hostcalls::send_http_response(status, headers, Some(body.as_bytes()));
    Metrics::add(state.borrow().metrics.denied);
    Outcome::Denied
}

/// Removes the request headers `forward_claims` writes: they are the filter's alone, whatever
/// the client sent.
fn strip_forwarded(config: &Config) {
    for f in config.jwt.iter().flat_map(|jwt| &jwt.forward_claims) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, &f.header, None);
    }
}

/// Steps of the decision; a resumed request continues at `Authn` or `Authz`.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Start,
    Authn,
}

/// Runs the decision from `stage` on the acting stream. `may_wait`: a JWKS fetch may still be
/// waited for (false once the request has waited for one).
fn decide(config: &Config, state: &RefCell<State>, stage: Stage, may_wait: bool) -> Outcome {
    let peer = properties::get_raw(b"connection\0uri_san_peer_certificate")
        .and_then(|v| String::from_utf8(v).ok())
        .filter(|s| !s.is_empty());
    if stage == Stage::Start {
        strip_forwarded(config);
        if let Some(rules) = &config.rules {
            let path = request_header(":path").unwrap_or_default();
            let path = path.split('?').next().unwrap_or_default();
            let method = request_header(":method").unwrap_or_default();
            let allow = rules
                .iter()
                .find(|r| r.matches(peer.as_deref(), path, &method))
                .map_or(config.default_allow, |r| r.allow);
            if !allow {
                return deny(state, 403, Reason::Forbidden);
            }
        }
    }
    let mut principal = None;
    if config.jwt.is_some() || config.api_keys.is_some() {
        match authenticate(config, state, may_wait) {
            Ok(p) => principal = p,
            Err(outcome) => return outcome,
        }
    }
    if let Some(p) = principal.or_else(|| peer.map(Rc::from)) {
        let _ = properties::set_raw(b"weir\0auth\0principal", p.as_bytes());
    }
    match &config.ext_authz {
        Some(ext) => start_ext_authz(ext, state),
        None => {
            Metrics::add(state.borrow().metrics.allowed);
            Outcome::Allow
        }
    }
}

/// Authenticates the request: `Ok(principal)` (`None`: no credential, and none required).
fn authenticate(
    config: &Config,
    state: &RefCell<State>,
    may_wait: bool,
) -> Result<Option<Rc<str>>, Outcome> {
    let mut key_refused = false;
    if let Some((header, keys)) = &config.api_keys
        && let Some(key) = request_header(header)
    {
        match keys.get(key.as_str()) {
            Some(name) => return Ok(Some(Rc::from(name.as_str()))),
            None => key_refused = true,
        }
    }
    let header = config
        .jwt
        .as_ref()
        .and_then(|jwt| request_header(&jwt.header));
    let token = config
        .jwt
        .as_ref()
        .zip(header.as_deref())
        .and_then(|(jwt, value)| {
            let prefix = jwt.prefix.as_str();
            let ok = value.len() >= prefix.len()
                && value.is_char_boundary(prefix.len())
                && value[..prefix.len()].eq_ignore_ascii_case(prefix);
            ok.then(|| value[prefix.len()..].trim())
                .filter(|t| !t.is_empty())
        });
    let (Some(jwt), Some(token)) = (&config.jwt, token) else {
        if key_refused {
            return Err(deny(state, 401, Reason::InvalidApiKey));
        }
        if config.jwt.as_ref().is_some_and(|j| !j.required) {
            return Ok(None);
        }
        return Err(deny(state, 401, Reason::MissingToken));
    };
    let now = now_secs();
    let keys = match &jwt.keys {
        Some(keys) => Rc::clone(keys),
        None => {
            let st = state.borrow();
            match st.keys.clone() {
                Some(keys) => keys,
                None => {
                    let retry_due = st
                        .failed_at
                        .is_none_or(|t| now >= t + KID_REFRESH_INTERVAL.as_secs());
                    drop(st);
                    if may_wait
                        && retry_due
                        && let Some(token) = stream_fetch(jwt, state)
                    {
                        return Err(Outcome::WaitJwks(token));
                    }
                    return Err(deny(state, 503, Reason::JwksUnavailable));
                }
            }
        }
    };
    let hash = token_hash(token.as_bytes());
    let cached = {
        let st = state.borrow();
        st.verified
            .get(&hash)
            .filter(|c| {
                Rc::ptr_eq(&c.keys, &keys)
                    && same_bytes(c.token.as_bytes(), token.as_bytes())
                    && c.time_ok(now, jwt.clock_skew.as_secs())
            })
            .map(|c| (Rc::clone(&c.claims), c.sub.clone()))
    };
    let (claims, sub) = match cached {
        Some(hit) => hit,
        // Not cached, cached under a key set since rotated, or its time ran out: verify in full
        // (which also names the reason of a refusal).
        None => match verify_jwt(token, &keys, jwt, now) {
            Verified::Ok(claims) => {
                let entry = Cached::new(token, &keys, Rc::new(claims));
                let hit = (Rc::clone(&entry.claims), entry.sub.clone());
                let mut st = state.borrow_mut();
                if st.verified.len() >= VERIFIED_CACHE_MAX {
                    st.verified.clear();
                }
                st.verified.insert(hash, entry);
                hit
            }
            Verified::UnknownKid => {
                let st = state.borrow();
                let new_refresh = st
                    .kid_refresh_at
                    .is_none_or(|t| now >= t + KID_REFRESH_INTERVAL.as_secs());
                let allowed = new_refresh || st.kid_refresh_pending;
                drop(st);
                if jwt.cluster.is_some()
                    && may_wait
                    && allowed
                    && let Some(token) = stream_fetch(jwt, state)
                {
                    let mut st = state.borrow_mut();
                    if new_refresh {
                        st.kid_refresh_at = Some(now);
                        st.kid_refresh_pending = true;
                    }
                    return Err(Outcome::WaitJwks(token));
                }
                return Err(deny(state, 401, Reason::UnknownKey));
            }
            Verified::Refused(reason) => return Err(deny(state, 401, reason)),
        },
    };
    for f in &jwt.forward_claims {
        let Some(value) = claims.get(&f.claim) else {
            continue;
        };
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if text.bytes().any(|b| b.is_ascii_control()) {
            continue;
        }
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, &f.header, Some(&text));
        let _ = properties::set_raw(&f.property, text.as_bytes());
    }
    Ok(sub)
}

// ---------------------------------------------------------------------------------------------
// Contexts.

struct AuthRoot {
    config: Option<Rc<Config>>,
    state: Rc<RefCell<State>>,
}

impl AuthRoot {
    fn cluster(&self) -> Option<&JwksCluster> {
        self.config.as_deref()?.jwt.as_ref()?.cluster.as_ref()
    }

    fn fetch(&mut self) {
        if self.state.borrow().root_fetch.is_some() {
            return;
        }
        let Some(c) = self.cluster() else { return };
        // A refused dispatch is retried on the next tick (requests fetch for themselves meanwhile).
        if let Some(token) = dispatch_jwks(c, &self.state) {
            self.state.borrow_mut().root_fetch = Some(token);
        }
    }
}

impl Context for AuthRoot {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        if self.state.borrow().root_fetch != Some(token) {
            return;
        }
        self.state.borrow_mut().root_fetch = None;
        jwks_answered(&self.state, body_size);
    }
}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                let fetching = config.jwt.as_ref().is_some_and(|j| j.cluster.is_some());
                {
                    let mut st = self.state.borrow_mut();
                    if self.config.is_none() {
                        st.metrics = Metrics::define();
                    }
                    st.keys = None;
                    st.fetched_at = None;
                    st.failed_at = None;
                }
                self.config = Some(Rc::new(config));
                weir_sdk::phases::declare(&[Phase::RequestHeaders]);
                if fetching {
                    let _ = hostcalls::set_tick_period(TICK);
                    self.fetch();
                } else {
                    let _ = hostcalls::set_tick_period(Duration::ZERO);
                }
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("auth: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(c) = self.cluster() else { return };
        let refresh = c.refresh.as_secs();
        let now = now_secs();
        let due = {
            let st = self.state.borrow();
            st.root_fetch.is_none()
                && match (st.fetched_at, st.failed_at) {
                    (Some(t), _) => now >= t + refresh,
                    // Never fetched: retry a failure after a while, or start.
                    (None, Some(t)) => now >= t + KID_REFRESH_INTERVAL.as_secs(),
                    (None, None) => true,
                }
        };
        if due {
            self.fetch();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Auth {
            config: self.config.clone(),
            state: Rc::clone(&self.state),
            jwks_fetch: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Auth {
    config: Option<Rc<Config>>,
    state: Rc<RefCell<State>>,
    /// This stream's JWKS fetch in flight.
    jwks_fetch: Option<u32>,
}

impl Auth {
    fn act(&mut self, outcome: Outcome) -> Action {
        match outcome {
            Outcome::Allow => Action::Continue,
            Outcome::Denied | Outcome::WaitAuthz => Action::Pause,
            Outcome::WaitJwks(token) => {
                self.jwks_fetch = Some(token);
                Action::Pause
            }
        }
    }
}

impl Context for Auth {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let outcome = if self.jwks_fetch == Some(token) {
            self.jwks_fetch = None;
            jwks_answered(&self.state, body_size);
            decide(&config, &self.state, Stage::Authn, false)
        } else if let Some(ext) = &config.ext_authz {
            finish_ext_authz(ext, &self.state)
        } else {
            return;
        };
        if let Action::Continue = self.act(outcome) {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Auth {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Unconfigured (the host ignored a failed on_configure): refuse rather than let through.
        let Some(config) = self.config.clone() else {
            deny(&self.state, 403, Reason::Forbidden);
            return Action::Pause;
        };
        if let Some(prefix) = &config.scope {
            let path = request_header(":path").unwrap_or_default();
            if !path.starts_with(prefix.as_str()) {
                // Outside the protected paths: nothing is checked, but forwarded-claim headers
                // are still the filter's alone.
                strip_forwarded(&config);
                return Action::Continue;
            }
        }
        let outcome = decide(&config, &self.state, Stage::Start, true);
        self.act(outcome)
    }
}

impl Drop for Auth {
    /// A stream that ends while its JWKS fetch is in flight gives the slot back (the host
    /// cancels the callout with the stream).
    fn drop(&mut self) {
        if self.jwks_fetch.is_some()
            && let Ok(mut st) = self.state.try_borrow_mut()
        {
            st.in_flight = st.in_flight.saturating_sub(1);
        }
    }
}
