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
//! Exactly one of `jwks` and `jwks_cluster` is required. A duration is an integer followed by
//! `ms`, `s` or `m` (`"500ms"`, `"60s"`, `"5m"`).
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

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use weir_sdk::phases::Phase;
use weir_sdk::properties;
use weir_sdk::proxy_wasm;
use weir_sdk::proxy_wasm::hostcalls;
use weir_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use weir_sdk::proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

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
/// The most JWKS fetches in flight per VM (each waiting request fetches for itself, because only
/// the stream's own callback can edit its headers; this bounds the fan-out of a burst).
const MAX_FETCHES: u32 = 16;
const HEADER_REASON: &str = "x-weir-auth";
const WWW_AUTHENTICATE: &str = "www-authenticate";

// ---------------------------------------------------------------------------------------------
// Configuration.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    jwt: Option<RawJwt>,
    #[serde(default)]
    api_keys: Option<RawApiKeys>,
    #[serde(default)]
    rules: Option<Vec<RawRule>>,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    ext_authz: Option<RawExtAuthz>,
    /// Only requests whose path starts with this are checked (others pass, claim headers still
    /// removed).
    #[serde(default, rename = "match")]
    scope: Option<RawScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    path_prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default)]
    clock_skew: Option<String>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    jwks_cluster: Option<RawJwksCluster>,
    #[serde(default)]
    from: Option<RawFrom>,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    #[serde(default = "yes")]
    required: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwksCluster {
    cluster: String,
    path: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    refresh: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrom {
    header: String,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKeys {
    #[serde(default)]
    header: Option<String>,
    keys: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    allow: bool,
    #[serde(default)]
    principals: Option<Vec<String>>,
    #[serde(default)]
    paths: Option<RawPath>,
    #[serde(default)]
    methods: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    exact: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtAuthz {
    cluster: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    forward_headers: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    failure_mode_allow: bool,
}

fn yes() -> bool {
    true
}

enum Principal {
    Any,
    Exact(String),
    Prefix(String),
}

enum PathMatch {
    Prefix(String),
    Exact(String),
}

struct Rule {
    allow: bool,
    principals: Option<Vec<Principal>>,
    path: Option<PathMatch>,
    methods: Option<Vec<String>>,
}

enum KeyMaterial {
    Rsa(rsa::RsaPublicKey),
    Ec(p256::ecdsa::VerifyingKey),
    Oct(Vec<u8>),
}

struct Jwk {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<String>,
    key: KeyMaterial,
}

struct JwksCluster {
    cluster: String,
    path: String,
    authority: String,
    refresh: Duration,
    timeout: Duration,
}

struct JwtConfig {
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    clock_skew: Duration,
    /// Inline keys (`None` with `jwks_cluster`).
    keys: Option<Rc<Vec<Jwk>>>,
    cluster: Option<JwksCluster>,
    header: String,
    prefix: String,
    forward_claims: Vec<Forward>,
    required: bool,
}

/// A claim copied onto the request.
struct Forward {
    claim: String,
    /// The request header it is written to (lower case).
    header: String,
    /// Its property path in wire form, `weir\0auth\0claim\0<claim>`, built once here.
    property: Vec<u8>,
}

struct ExtAuthz {
    cluster: String,
    path: String,
    authority: String,
    timeout: Duration,
    forward_headers: Vec<String>,
    allow_headers: Vec<String>,
    failure_mode_allow: bool,
}

struct Config {
    /// `match.path_prefix`: the requests this filter checks (absent: all).
    scope: Option<String>,
    rules: Option<Vec<Rule>>,
    default_allow: bool,
    jwt: Option<JwtConfig>,
    /// `(header, key → principal)`.
    api_keys: Option<(String, BTreeMap<String, String>)>,
    ext_authz: Option<ExtAuthz>,
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
            RawConfig::default()
        } else {
            serde_json::from_slice(bytes).map_err(|e| format!("invalid configuration: {e}"))?
        };
        let default_allow = match raw.default.as_deref() {
            None | Some("deny") => false,
            Some("allow") => true,
            Some(other) => return Err(format!("default {other:?} is neither allow nor deny")),
        };
        let rules = raw
            .rules
            .map(|rules| rules.into_iter().map(Rule::parse).collect::<Result<_, _>>())
            .transpose()?;
        let jwt = raw.jwt.map(JwtConfig::parse).transpose()?;
        let api_keys = raw.api_keys.map(|a| {
            let header = a.header.unwrap_or_else(|| "x-api-key".into());
            (header.to_ascii_lowercase(), a.keys)
        });
        let ext_authz = raw
            .ext_authz
            .map(|e| {
                Ok::<_, String>(ExtAuthz {
                    authority: e.authority.unwrap_or_else(|| e.cluster.clone()),
                    cluster: e.cluster,
                    path: e.path,
                    timeout: opt_duration(e.timeout, Duration::from_millis(500))
                        .map_err(|e| format!("ext_authz.timeout: {e}"))?,
                    forward_headers: lower(e.forward_headers),
                    allow_headers: lower(e.allow_headers),
                    failure_mode_allow: e.failure_mode_allow,
                })
            })
            .transpose()?;
        let scope = raw.scope.map(|m| m.path_prefix);
        if scope.as_deref().is_some_and(|p| !p.starts_with('/')) {
            return Err("match.path_prefix must start with `/`".into());
        }
        Ok(Self {
            scope,
            rules,
            default_allow,
            jwt,
            api_keys,
            ext_authz,
        })
    }
}

fn lower(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(|s| s.to_ascii_lowercase()).collect()
}

impl Rule {
    fn parse(raw: RawRule) -> Result<Self, String> {
        let principals = raw.principals.map(|ps| {
            ps.into_iter()
                .map(|p| {
                    if p == "*" {
                        Principal::Any
                    } else if let Some(prefix) = p.strip_suffix('*').filter(|s| s.ends_with('/')) {
                        Principal::Prefix(prefix.to_owned())
                    } else {
                        Principal::Exact(p)
                    }
                })
                .collect()
        });
        let path = match raw.paths {
            None => None,
            Some(RawPath {
                prefix: Some(p),
                exact: None,
            }) => Some(PathMatch::Prefix(p)),
            Some(RawPath {
                prefix: None,
                exact: Some(p),
            }) => Some(PathMatch::Exact(p)),
            Some(_) => return Err("rules[].paths needs exactly one of prefix and exact".into()),
        };
        Ok(Self {
            allow: raw.allow,
            principals,
            path,
            methods: raw.methods,
        })
    }

    fn matches(&self, principal: Option<&str>, path: &str, method: &str) -> bool {
        if let Some(ps) = &self.principals {
            let ok = ps.iter().any(|p| match (p, principal) {
                (Principal::Any, _) => true,
                (Principal::Exact(want), Some(have)) => want == have,
                (Principal::Prefix(want), Some(have)) => have.starts_with(want.as_str()),
                (_, None) => false,
            });
            if !ok {
                return false;
            }
        }
        match &self.path {
            Some(PathMatch::Prefix(p)) if !path.starts_with(p.as_str()) => return false,
            Some(PathMatch::Exact(p)) if path != p => return false,
            _ => {}
        }
        if let Some(ms) = &self.methods
            && !ms.iter().any(|m| m == method)
        {
            return false;
        }
        true
    }
}

impl JwtConfig {
    fn parse(raw: RawJwt) -> Result<Self, String> {
        let (keys, cluster) = match (raw.jwks, raw.jwks_cluster) {
            (Some(jwks), None) => (
                Some(Rc::new(
                    parse_jwks(&jwks, true).map_err(|e| format!("jwt.jwks: {e}"))?,
                )),
                None,
            ),
            (None, Some(c)) => (
                None,
                Some(JwksCluster {
                    authority: c.authority.unwrap_or_else(|| c.cluster.clone()),
                    cluster: c.cluster,
                    path: c.path,
                    refresh: opt_duration(c.refresh, Duration::from_secs(300))
                        .map_err(|e| format!("jwt.jwks_cluster.refresh: {e}"))?,
                    timeout: opt_duration(c.timeout, Duration::from_secs(1))
                        .map_err(|e| format!("jwt.jwks_cluster.timeout: {e}"))?,
                }),
            ),
            _ => return Err("jwt needs exactly one of jwks and jwks_cluster".into()),
        };
        let (header, prefix) = match raw.from {
            Some(f) => (f.header.to_ascii_lowercase(), f.prefix),
            None => ("authorization".into(), "Bearer ".into()),
        };
        Ok(Self {
            issuer: raw.issuer,
            audiences: raw.audiences,
            clock_skew: opt_duration(raw.clock_skew, Duration::from_secs(60))
                .map_err(|e| format!("jwt.clock_skew: {e}"))?,
            keys,
            cluster,
            header,
            prefix,
            forward_claims: raw
                .forward_claims
                .into_iter()
                .map(|(claim, h)| Forward {
                    property: [&b"weir\0auth\0claim\0"[..], claim.as_bytes()].concat(),
                    header: h.to_ascii_lowercase(),
                    claim,
                })
                .collect(),
            required: raw.required,
        })
    }
}

fn opt_duration(s: Option<String>, default: Duration) -> Result<Duration, String> {
    s.map_or(Ok(default), |s| parse_duration(&s))
}

/// `"500ms"`, `"60s"`, `"5m"`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. \"500ms\", \"60s\", \"5m\")");
    let (digits, ms_per_unit) = if let Some(d) = s.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = s.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = s.strip_suffix('m') {
        (d, 60_000)
    } else {
        return Err(bad());
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ms = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(ms_per_unit))
        .filter(|ms| *ms <= 86_400_000)
        .ok_or_else(|| format!("{s:?} is longer than a day"))?;
    Ok(Duration::from_millis(ms))
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "not base64url".to_owned())
}

/// Parses a JWKS. `strict`: a key that does not parse is an error (inline configuration);
/// otherwise it is skipped (a fetched JWKS may list key types this filter does not use).
fn parse_jwks(jwks: &Value, strict: bool) -> Result<Vec<Jwk>, String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let mut out = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        match parse_jwk(k) {
            Ok(Some(jwk)) => out.push(jwk),
            Ok(None) => {}
            Err(e) if strict => return Err(format!("keys[{i}]: {e}")),
            Err(_) => {}
        }
    }
    Ok(out)
}

/// `Ok(None)`: a key not meant for signatures.
fn parse_jwk(k: &Value) -> Result<Option<Jwk>, String> {
    let field = |name: &str| k.get(name).and_then(Value::as_str);
    if field("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let bytes = |name: &str| {
        field(name)
            .ok_or_else(|| format!("missing {name}"))
            .and_then(|v| b64(v).map_err(|e| format!("{name}: {e}")))
    };
    let key = match field("kty") {
        Some("RSA") => {
            let n = rsa::BigUint::from_bytes_be(&bytes("n")?);
            let e = rsa::BigUint::from_bytes_be(&bytes("e")?);
            KeyMaterial::Rsa(rsa::RsaPublicKey::new(n, e).map_err(|e| format!("RSA key: {e}"))?)
        }
        Some("EC") => {
            if field("crv") != Some("P-256") {
                return Err("only EC keys on P-256 are supported".into());
            }
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes".into());
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            KeyMaterial::Ec(
                p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| "EC point not on P-256")?,
            )
        }
        Some("oct") => {
            let k = bytes("k")?;
            if k.is_empty() {
                return Err("empty oct key".into());
            }
            KeyMaterial::Oct(k)
        }
        Some(other) => return Err(format!("unsupported kty {other:?}")),
        None => return Err("missing kty".into()),
    };
    Ok(Some(Jwk {
        kid: field("kid").map(str::to_owned),
        alg: field("alg").map(str::to_owned),
        key,
    }))
}

// ---------------------------------------------------------------------------------------------
// JWT verification.

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

#[derive(Clone, Copy, PartialEq)]
enum Alg {
    Rs256,
    Es256,
    Hs256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::Hs256 => "HS256",
        }
    }

    fn fits(self, key: &Jwk) -> bool {
        let kty = matches!(
            (self, &key.key),
            (Self::Rs256, KeyMaterial::Rsa(_))
                | (Self::Es256, KeyMaterial::Ec(_))
                | (Self::Hs256, KeyMaterial::Oct(_))
        );
        kty && key.alg.as_deref().is_none_or(|a| a == self.name())
    }
}

fn verify_signature(alg: Alg, key: &KeyMaterial, signed: &[u8], sig: &[u8]) -> bool {
    match key {
        KeyMaterial::Rsa(pk) => {
            let digest = Sha256::digest(signed);
            pk.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, sig)
                .is_ok()
        }
        KeyMaterial::Ec(vk) => {
            use p256::ecdsa::signature::Verifier;
            let Ok(sig) = p256::ecdsa::Signature::from_slice(sig) else {
                return false;
            };
            vk.verify(signed, &sig).is_ok()
        }
        KeyMaterial::Oct(k) => {
            debug_assert!(alg == Alg::Hs256);
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(k) else {
                return false;
            };
            mac.update(signed);
            mac.verify_slice(sig).is_ok()
        }
    }
}

/// The result of verifying a token against a key set.
enum Verified {
    Ok(serde_json::Map<String, Value>),
    Refused(Reason),
    /// The `kid` is not in the key set.
    UnknownKid,
}

fn verify_jwt(token: &str, keys: &[Jwk], config: &JwtConfig, now: u64) -> Verified {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Verified::Refused(Reason::InvalidToken);
    };
    let Some(header) = b64(h)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return Verified::Refused(Reason::InvalidToken);
    };
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Alg::Rs256,
        Some("ES256") => Alg::Es256,
        Some("HS256") => Alg::Hs256,
        _ => return Verified::Refused(Reason::InvalidToken),
    };
    let Ok(sig) = b64(s) else {
        return Verified::Refused(Reason::InvalidToken);
    };
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates = keys.iter().filter(|k| match kid {
        Some(kid) => k.kid.as_deref() == Some(kid),
        None => true,
    });
    let mut any = false;
    let mut ok = false;
    for key in candidates {
        if !alg.fits(key) {
            continue;
        }
        any = true;
        if verify_signature(alg, &key.key, signed, &sig) {
            ok = true;
            break;
        }
    }
    if !any {
        return if kid.is_some() && !keys.iter().any(|k| k.kid.as_deref() == kid) {
            Verified::UnknownKid
        } else {
            Verified::Refused(Reason::UnknownKey)
        };
    }
    if !ok {
        return Verified::Refused(Reason::BadSignature);
    }
    // Only now are the claims read.
    let Some(Value::Object(claims)) = b64(p)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return Verified::Refused(Reason::InvalidToken);
    };
    let skew = config.clock_skew.as_secs();
    let time = |name: &str| claims.get(name).map(|v| v.as_f64());
    match time("exp") {
        Some(None) => return Verified::Refused(Reason::InvalidToken),
        Some(Some(exp)) if (now as f64) > exp + skew as f64 => {
            return Verified::Refused(Reason::Expired);
        }
        _ => {}
    }
    match time("nbf") {
        Some(None) => return Verified::Refused(Reason::InvalidToken),
        Some(Some(nbf)) if ((now + skew) as f64) < nbf => {
            return Verified::Refused(Reason::NotYetValid);
        }
        _ => {}
    }
    if let Some(iss) = &config.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(iss.as_str())
    {
        return Verified::Refused(Reason::WrongIssuer);
    }
    if let Some(auds) = &config.audiences {
        let fits = |a: &Value| a.as_str().is_some_and(|a| auds.iter().any(|w| w == a));
        let ok = match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().any(fits),
            Some(a) => fits(a),
            None => false,
        };
        if !ok {
            return Verified::Refused(Reason::WrongAudience);
        }
    }
    Verified::Ok(claims)
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

/// A 64-bit hash of a token, eight bytes at a time (FxHash's step, then a final mix so every
/// bit of the key reaches the bits a hash table indexes by). Not keyed: only verified tokens are
/// inserted, so a client cannot fill the cache with colliding entries, and a collision only
/// costs a re-verification. SipHash (std's default) over a few hundred bytes of JWT was the
/// largest single cost of a cache hit.
fn token_hash(token: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let words = token.chunks_exact(8);
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    let mut h = words.fold(token.len() as u64, |h, w| {
        step(h, u64::from_le_bytes(w.try_into().expect("chunks of 8")))
    });
    h = step(h, u64::from_le_bytes(last));
    // MurmurHash3's fmix64.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hasher of a map whose keys are hashes already ([`token_hash`]).
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are `u64`); any other key still hashes.
        self.0 = token_hash(bytes) ^ self.0.rotate_left(17);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `a == b`, eight bytes at a time. Slice equality in Wasm is a byte-by-byte `memcmp` loop, and
/// a JWT is a few hundred bytes.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (wa.remainder(), wb.remainder());
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("chunks of 8"));
    wa.zip(wb).all(|(x, y)| word(x) == word(y)) && ra.iter().zip(rb).all(|(x, y)| x == y)
}

/// A verified token, valid while its key set is the one it was verified with.
struct Cached {
    token: Box<str>,
    keys: Rc<Vec<Jwk>>,
    claims: Rc<serde_json::Map<String, Value>>,
    /// `exp` and `nbf`, read once: a hit checks them without looking them up again.
    exp: Option<f64>,
    nbf: Option<f64>,
    /// The principal (`sub`), if a string.
    sub: Option<Rc<str>>,
}

impl Cached {
    fn new(token: &str, keys: &Rc<Vec<Jwk>>, claims: Rc<serde_json::Map<String, Value>>) -> Self {
        let time = |name: &str| claims.get(name).and_then(Value::as_f64);
        Self {
            token: token.into(),
            keys: Rc::clone(keys),
            exp: time("exp"),
            nbf: time("nbf"),
            sub: claims.get("sub").and_then(Value::as_str).map(Rc::from),
            claims,
        }
    }

    /// `exp` and `nbf` against `now` with `skew` (the checks that must run even for a cached
    /// token).
    fn time_ok(&self, now: u64, skew: u64) -> bool {
        self.exp.is_none_or(|exp| now as f64 <= exp + skew as f64)
            && self.nbf.is_none_or(|nbf| (now + skew) as f64 >= nbf)
    }
}

/// Most tokens kept verified per VM; when full the cache starts over (a burst of distinct
/// tokens cannot grow it without bound).
const VERIFIED_CACHE_MAX: usize = 1024;

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

/// Dispatches a JWKS fetch on the acting context (`None`: too many in flight, or refused).
fn dispatch_jwks(c: &JwksCluster, state: &RefCell<State>) -> Option<u32> {
    let mut st = state.borrow_mut();
    if st.in_flight >= MAX_FETCHES {
        return None;
    }
    let headers = vec![
        (":method", "GET"),
        (":path", c.path.as_str()),
        (":authority", c.authority.as_str()),
        ("accept", "application/json"),
    ];
    Metrics::add(st.metrics.fetches);
    match hostcalls::dispatch_http_call(&c.cluster, headers, None, vec![], c.timeout) {
        Ok(token) => {
            st.in_flight += 1;
            Some(token)
        }
        Err(e) => {
            Metrics::add(st.metrics.fetch_failures);
            let _ = hostcalls::log(
                LogLevel::Warn,
                &format!("auth: JWKS fetch from {} failed: {e:?}", c.cluster),
            );
            None
        }
    }
}

fn stream_fetch(jwt: &JwtConfig, state: &RefCell<State>) -> Option<u32> {
    dispatch_jwks(jwt.cluster.as_ref()?, state)
}

/// Takes the JWKS answer being delivered now into the cache (a failure keeps the old keys).
fn jwks_answered(state: &RefCell<State>, body_size: usize) {
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten();
    let keys = if status.as_deref().is_some_and(|s| s.starts_with(b"2")) {
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match serde_json::from_slice::<Value>(&body)
            .map_err(|e| e.to_string())
            .and_then(|v| parse_jwks(&v, false))
        {
            Ok(keys) => Some(keys),
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Warn, &format!("auth: bad JWKS: {e}"));
                None
            }
        }
    } else {
        let _ = hostcalls::log(
            LogLevel::Warn,
            &format!(
                "auth: JWKS fetch answered {}",
                status.map_or_else(
                    || "nothing (failed)".into(),
                    |s| String::from_utf8_lossy(&s).into_owned()
                )
            ),
        );
        None
    };
    let now = now_secs();
    let mut st = state.borrow_mut();
    st.in_flight = st.in_flight.saturating_sub(1);
    match keys {
        Some(keys) => {
            st.keys = Some(Rc::new(keys));
            st.fetched_at = Some(now);
            st.failed_at = None;
            st.kid_refresh_pending = false;
        }
        None => {
            Metrics::add(st.metrics.fetch_failures);
            if st.keys.is_none() {
                st.failed_at = Some(now);
            }
        }
    }
}

fn start_ext_authz(ext: &ExtAuthz, state: &RefCell<State>) -> Outcome {
    let method = request_header(":method").unwrap_or_else(|| "GET".into());
    let path = format!(
        "{}{}",
        ext.path,
        request_header(":path").unwrap_or_else(|| "/".into())
    );
    let forwarded: Vec<(String, String)> = ext
        .forward_headers
        .iter()
        .filter_map(|h| Some((h.clone(), request_header(h)?)))
        .collect();
    let mut headers = vec![
        (":method", method.as_str()),
        (":path", path.as_str()),
        (":authority", ext.authority.as_str()),
    ];
    headers.extend(forwarded.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    match hostcalls::dispatch_http_call(&ext.cluster, headers, None, vec![], ext.timeout) {
        Ok(_token) => Outcome::WaitAuthz,
        Err(e) => {
            let _ = hostcalls::log(
                LogLevel::Warn,
                &format!("auth: ext_authz callout to {} failed: {e:?}", ext.cluster),
            );
            ext_authz_failed(ext, state)
        }
    }
}

fn ext_authz_failed(ext: &ExtAuthz, state: &RefCell<State>) -> Outcome {
    if ext.failure_mode_allow {
        Metrics::add(state.borrow().metrics.allowed);
        Outcome::Allow
    } else {
        deny(state, 403, Reason::ExtAuthzUnavailable)
    }
}

/// Handles the ext_authz answer (the callout response being delivered now).
fn finish_ext_authz(ext: &ExtAuthz, state: &RefCell<State>) -> Outcome {
    let answer = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default();
    let status = answer
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u32>().ok());
    match status {
        Some(200..=299) => {
            for name in &ext.allow_headers {
                if let Some((_, v)) = answer.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))
                    && let Ok(v) = std::str::from_utf8(v)
                {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(v));
                }
            }
            Metrics::add(state.borrow().metrics.allowed);
            Outcome::Allow
        }
        Some(s @ (401 | 403)) => deny(state, s, Reason::Forbidden),
        Some(400..=499) => deny(state, 403, Reason::Forbidden),
        _ => ext_authz_failed(ext, state),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_slice_equality() {
        let long = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        for (a, b) in [
            ("", ""),
            ("a", "a"),
            ("a", "b"),
            ("abcdefgh", "abcdefgh"),
            ("abcdefgh", "abcdefgX"),
            ("abcdefghi", "abcdefghX"),
            (long, long),
            (long, &long[..long.len() - 1]),
        ] {
            assert_eq!(
                same_bytes(a.as_bytes(), b.as_bytes()),
                a == b,
                "{a:?} {b:?}"
            );
        }
        let mut other = long.to_owned().into_bytes();
        other[long.len() - 3] ^= 1;
        assert!(!same_bytes(long.as_bytes(), &other));
    }

    #[test]
    fn token_hash_tells_tokens_apart() {
        let long = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        assert_eq!(
            token_hash(long.as_bytes()),
            token_hash(long.to_owned().as_bytes())
        );
        // Every single-byte change, at every position (word or tail), and every length change
        // gives another hash; so do trailing zero bytes (the tail is zero-padded).
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(token_hash(long.as_bytes())));
        for i in 0..long.len() {
            let mut other = long.as_bytes().to_vec();
            other[i] ^= 1;
            assert!(seen.insert(token_hash(&other)), "flip at {i}");
            assert!(seen.insert(token_hash(&long.as_bytes()[..i])), "prefix {i}");
        }
        assert_ne!(token_hash(b"a"), token_hash(b"a\0"));
        assert_ne!(token_hash(b""), token_hash(b"\0"));
    }
}
