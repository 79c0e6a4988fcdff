//! The configuration: the JSON as written (serde types that reject unknown fields) and its
//! validation into what the filter runs on ([`Config`]): rules, JWT settings (with inline keys
//! parsed by [`crate::jwt`]), API keys, the ext_authz callout, and durations in the manifest's
//! grammar.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::jwt::{Jwk, parse_jwks};

/// The longest duration any field takes (`clock_skew`, `refresh`, the timeouts).
const MAX_DURATION: Duration = Duration::from_secs(86_400);

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

pub(crate) struct Rule {
    pub(crate) allow: bool,
    principals: Option<Vec<Principal>>,
    path: Option<PathMatch>,
    methods: Option<Vec<String>>,
}

pub(crate) struct JwksCluster {
    pub(crate) cluster: String,
    pub(crate) path: String,
    pub(crate) authority: String,
    pub(crate) refresh: Duration,
    pub(crate) timeout: Duration,
}

pub(crate) struct JwtConfig {
    pub(crate) issuer: Option<String>,
    pub(crate) audiences: Option<Vec<String>>,
    pub(crate) clock_skew: Duration,
    /// Inline keys (`None` with `jwks_cluster`).
    pub(crate) keys: Option<Rc<Vec<Jwk>>>,
    pub(crate) cluster: Option<JwksCluster>,
    pub(crate) header: String,
    pub(crate) prefix: String,
    pub(crate) forward_claims: Vec<Forward>,
    pub(crate) required: bool,
}

/// A claim copied onto the request.
pub(crate) struct Forward {
    pub(crate) claim: String,
    /// The request header it is written to (lower case).
    pub(crate) header: String,
    /// Its property path in wire form, `weir\0auth\0claim\0<claim>`, built once here.
    pub(crate) property: Vec<u8>,
}

pub(crate) struct ExtAuthz {
    pub(crate) cluster: String,
    pub(crate) path: String,
    pub(crate) authority: String,
    pub(crate) timeout: Duration,
    pub(crate) forward_headers: Vec<String>,
    pub(crate) allow_headers: Vec<String>,
    pub(crate) failure_mode_allow: bool,
}

pub(crate) struct Config {
    /// `match.path_prefix`: the requests this filter checks (absent: all).
    pub(crate) scope: Option<String>,
    pub(crate) rules: Option<Vec<Rule>>,
    pub(crate) default_allow: bool,
    pub(crate) jwt: Option<JwtConfig>,
    /// `(header, key → principal)`.
    pub(crate) api_keys: Option<(String, BTreeMap<String, String>)>,
    pub(crate) ext_authz: Option<ExtAuthz>,
}

impl Config {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
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
                        .map(callout_timeout)
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

    pub(crate) fn matches(&self, principal: Option<&str>, path: &str, method: &str) -> bool {
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
                        .map(callout_timeout)
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

/// A duration in the manifest's grammar (`500ms`, `60s`, `1h`, `1m30s`), at most a day.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = weir_sdk::config::parse_duration(s).map_err(|e| e.to_string())?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than a day"));
    }
    Ok(d)
}

/// A callout timeout in whole milliseconds, rounded up: the ABI takes milliseconds and reads 0
/// as "no timeout", so `500us` must not truncate to 0.
fn callout_timeout(d: Duration) -> Duration {
    // At most a day ([`parse_duration`]), so the milliseconds fit.
    Duration::from_millis(u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
}
