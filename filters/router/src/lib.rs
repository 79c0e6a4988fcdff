//! `builtin:router`: Envoy-like request routing. The first route whose `match` holds decides the
//! request: it goes to a cluster (or a weighted split of clusters, optionally sticky), possibly
//! with a rewritten path, a timeout, a retry budget and header edits; or it is answered locally
//! with a redirect or a fixed response. A request no route matches gets a local 404.
//!
//! Configuration (JSON plugin configuration; unknown fields are rejected):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `routes` | array of routes | tried in order; the first match wins |
//!
//! A route:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `match` | object | conditions, all of which must hold (absent or `{}`: every request) |
//! | `match.host` | string | `:authority` without its port, case-insensitive: exact, `*.suffix` (at least one label before the suffix) or `*` |
//! | `match.path` | `{prefix}` / `{exact}` / `{regex}` | the path without its query: string prefix, equality, or regex search (anchor with `^`/`$`) |
//! | `match.method` | string or array | `:method` is one of these (case-sensitive) |
//! | `match.headers` | object `{name: rule}` | rule: a string (exact value), `{exact}`, `{regex}` (search) or `{present: bool}` |
//! | `match.query` | object `{name: value}` | a query parameter's first occurrence has exactly this (raw, not decoded) value |
//! | `to` | string, `{cluster}` or array of `{cluster, weight}` | the cluster (`weir.route.cluster`); weights are non-negative integers summing to > 0 (default 1) |
//! | `sticky` | `{header: name}` or `{cookie: name}` | pick the split by a hash (FNV-1a) of this value; requests without it are spread at random |
//! | `rewrite` | `{prefix}` | replaces the `match.path.prefix` part of the path (`weir.route.path`, query kept) |
//! | `timeout` | duration string in the manifest's grammar (`250ms`, `2s`, `1.5s`, `1m30s`, `0s` = none) | `weir.route.timeout_ms` (rounded up to whole milliseconds) |
//! | `retries` | integer | `weir.route.retries`: retries after the first try (0: none), under the cluster's retry policy (or its defaults) |
//! | `per_try_timeout` | duration string (`0s` = the cluster's) | `weir.route.per_try_timeout_ms`: bounds each attempt |
//! | `request_headers` | `{add: {name: value}, remove: [name]}` | edits of the forwarded request (removals first) |
//! | `response_headers` | `{add: {name: value}, remove: [name]}` | edits of the upstream's response (removals first) |
//! | `redirect` | `{location, status}` | answer locally with a redirect (status 301 default, 302, 303, 307, 308) |
//! | `direct` | `{status, body, headers}` | answer locally with a fixed response (status 200–599) |
//!
//! A route has exactly one of `to`, `redirect`, `direct`; `sticky`, `rewrite`, `timeout`,
//! `retries`, `per_try_timeout`, `request_headers` and `response_headers` only go with `to`, and
//! `rewrite` only with a `match.path.prefix`.
//!
//! Example: `{"routes": [{"match": {"path": {"prefix": "/api"}, "headers": {"x-canary": "1"}},
//! "to": "api-v2"}, {"match": {"path": {"prefix": "/api"}}, "to": [{"cluster": "api-v1", "weight":
//! 90}, {"cluster": "api-v2", "weight": 10}], "sticky": {"header": "x-user"}, "timeout": "2s"}]}`.
//!
//! Behaviour:
//! * No route matches: a local `404` with `x-weir-router: no_route` and body `weir: no_route`.
//! * Random choices use a per-VM PRNG (splitmix64) seeded from WASI randomness through std's
//!   `RandomState`, never from the proxy's clock.
//! * Local replies (redirect, direct, 404) are sent from the request-headers phase, which then
//!   returns `Pause`; the request never reaches an upstream.
//! * A bad configuration (bad JSON or regex, weights summing to 0, a rewrite without a prefix
//!   match, a bad status, an invalid header name or value, …) is logged at error level and fails
//!   `on_configure`, so the plugin does not load.
//!
//! Cost: the configuration is parsed once (hosts lower-cased, regexes compiled, property values
//! pre-rendered) and shared through an `Rc`. Per request the filter allocates only what the SDK
//! forces: the stream context, the header values it reads (`:path`, `:method`, `:authority` only
//! when some route tests them), the property-path vectors, and a rewritten path.
//!
//! About 900 lines: one filter whose configuration, matching and decision read top to bottom in
//! request order; its behaviour is tested in `sdk/tests/router.rs`.

use std::collections::BTreeMap;
use std::rc::Rc;

use regex_lite::Regex;
use serde::Deserialize;
use weir_sdk::config::{header_name, header_value, is_token, parse_duration};
use weir_sdk::phases::Phase;
use weir_sdk::proxy_wasm;
use weir_sdk::proxy_wasm::hostcalls;
use weir_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use weir_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};
use weir_sdk::random::Rng;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_root_context_id| Box::new(RouterRoot {
        config: None,
        rng: Rc::new(Rng::from_entropy()),
    }));
}}

// ---------------------------------------------------------------------------------------------
// The configuration as written
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default, rename = "match")]
    matches: RawMatch,
    #[serde(default)]
    to: Option<RawTo>,
    #[serde(default)]
    sticky: Option<RawSticky>,
    #[serde(default)]
    rewrite: Option<RawRewrite>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    per_try_timeout: Option<String>,
    #[serde(default)]
    request_headers: Option<RawHeaderEdits>,
    #[serde(default)]
    response_headers: Option<RawHeaderEdits>,
    #[serde(default)]
    redirect: Option<RawRedirect>,
    #[serde(default)]
    direct: Option<RawDirect>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    path: Option<RawPath>,
    #[serde(default)]
    method: Option<OneOrMany>,
    #[serde(default)]
    headers: BTreeMap<String, RawHeaderRule>,
    #[serde(default)]
    query: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawHeaderRule {
    Exact(String),
    Rule(RawHeaderRuleObject),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderRuleObject {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    present: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTo {
    Cluster(String),
    One(RawTarget),
    Split(Vec<RawTarget>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    cluster: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSticky {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    cookie: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRewrite {
    prefix: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeaderEdits {
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedirect {
    location: String,
    #[serde(default = "moved_permanently")]
    status: u32,
}

fn moved_permanently() -> u32 {
    301
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirect {
    status: u32,
    #[serde(default)]
    body: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    routes: Vec<Route>,
    /// Whether some route reads `:authority`, `:path`, `:method` (otherwise they are not fetched).
    needs_host: bool,
    needs_path: bool,
    needs_method: bool,
}

struct Route {
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    methods: Vec<String>,
    headers: Vec<(String, HeaderRule)>,
    query: Vec<(String, String)>,
    action: RouteAction,
}

enum HostMatch {
    Any,
    /// Lower-cased host.
    Exact(String),
    /// Lower-cased suffix including its leading dot (`.example.com`).
    Suffix(String),
}

enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

enum HeaderRule {
    Exact(Vec<u8>),
    Regex(Regex),
    Present(bool),
}

enum RouteAction {
    Forward(Box<Forward>),
    /// A local reply: status, headers, body.
    Reply(u32, Vec<(String, String)>, Option<String>),
}

struct Forward {
    /// `(cluster, cumulative weight)`; the last cumulative weight is the total. Zero-weight targets
    /// are dropped.
    targets: Vec<(String, u64)>,
    sticky: Option<Sticky>,
    /// The replacement for the matched prefix.
    rewrite: Option<String>,
    /// Pre-rendered decimal milliseconds.
    timeout_ms: Option<String>,
    /// Pre-rendered decimal.
    retries: Option<String>,
    /// Pre-rendered decimal milliseconds.
    per_try_timeout_ms: Option<String>,
    request_remove: Vec<String>,
    request_add: Vec<(String, String)>,
    response_remove: Vec<String>,
    response_add: Vec<(String, String)>,
}

impl Forward {
    fn total(&self) -> u64 {
        self.targets.last().map_or(0, |t| t.1)
    }

    /// The target whose cumulative range holds `point` (`point < total`).
    fn pick(&self, point: u64) -> &str {
        let i = self.targets.partition_point(|t| t.1 <= point);
        &self.targets[i.min(self.targets.len() - 1)].0
    }
}

enum Sticky {
    Header(String),
    Cookie(String),
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid configuration: {e}"))?;
        let routes = raw
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| Route::parse(r).map_err(|e| format!("routes[{i}]: {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            needs_host: routes.iter().any(|r| r.host.is_some()),
            needs_path: routes
                .iter()
                .any(|r| r.path.is_some() || !r.query.is_empty()),
            needs_method: routes.iter().any(|r| !r.methods.is_empty()),
            routes,
        })
    }
}

impl Route {
    fn parse(raw: RawRoute) -> Result<Self, String> {
        let m = raw.matches;
        let host = m.host.map(|h| parse_host(&h)).transpose()?;
        let path = m.path.map(parse_path).transpose()?;
        let methods = match m.method {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) if v.is_empty() => {
                return Err("match.method: empty list".into());
            }
            Some(OneOrMany::Many(v)) => v,
        };
        for method in &methods {
            if !is_token(method) {
                return Err(format!("match.method {method:?}: not a valid method"));
            }
        }
        let headers = m
            .headers
            .into_iter()
            .map(|(name, rule)| {
                let name =
                    header_name(&name, true).map_err(|e| format!("match.headers {name:?}: {e}"))?;
                let rule =
                    parse_header_rule(rule).map_err(|e| format!("match.headers {name:?}: {e}"))?;
                Ok((name, rule))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let query = m.query.into_iter().collect();

        let forward_only = [
            ("sticky", raw.sticky.is_some()),
            ("rewrite", raw.rewrite.is_some()),
            ("timeout", raw.timeout.is_some()),
            ("retries", raw.retries.is_some()),
            ("per_try_timeout", raw.per_try_timeout.is_some()),
            ("request_headers", raw.request_headers.is_some()),
            ("response_headers", raw.response_headers.is_some()),
        ];
        let action = match (raw.to, raw.redirect, raw.direct) {
            (Some(to), None, None) => {
                let rewrite = match (raw.rewrite, &path) {
                    (None, _) => None,
                    (Some(r), Some(PathMatch::Prefix(_))) => {
                        header_value(&r.prefix).map_err(|e| format!("rewrite.prefix: {e}"))?;
                        Some(r.prefix)
                    }
                    (Some(_), _) => {
                        return Err("rewrite needs a match.path.prefix".into());
                    }
                };
                let (request_remove, request_add) =
                    header_edits(raw.request_headers.unwrap_or_default(), "request_headers")?;
                let (response_remove, response_add) =
                    header_edits(raw.response_headers.unwrap_or_default(), "response_headers")?;
                RouteAction::Forward(Box::new(Forward {
                    targets: parse_targets(to)?,
                    sticky: raw.sticky.map(parse_sticky).transpose()?,
                    rewrite,
                    timeout_ms: raw
                        .timeout
                        .map(|t| parse_duration_ms(&t).map(|ms| ms.to_string()))
                        .transpose()
                        .map_err(|e| format!("timeout: {e}"))?,
                    retries: raw.retries.map(|r| r.to_string()),
                    per_try_timeout_ms: raw
                        .per_try_timeout
                        .map(|t| parse_duration_ms(&t).map(|ms| ms.to_string()))
                        .transpose()
                        .map_err(|e| format!("per_try_timeout: {e}"))?,
                    request_remove,
                    request_add,
                    response_remove,
                    response_add,
                }))
            }
            (None, redirect, direct) => {
                if let Some((field, _)) = forward_only.iter().find(|(_, set)| *set) {
                    return Err(format!("{field} needs `to`"));
                }
                match (redirect, direct) {
                    (Some(r), None) => {
                        if ![301, 302, 303, 307, 308].contains(&r.status) {
                            return Err(format!(
                                "redirect.status {} is not a redirect (301, 302, 303, 307, 308)",
                                r.status
                            ));
                        }
                        if r.location.is_empty() {
                            return Err("redirect.location is empty".into());
                        }
                        header_value(&r.location).map_err(|e| format!("redirect.location: {e}"))?;
                        RouteAction::Reply(r.status, vec![("location".into(), r.location)], None)
                    }
                    (None, Some(d)) => {
                        if !(200..=599).contains(&d.status) {
                            return Err(format!(
                                "direct.status {} is not a final HTTP status (200-599)",
                                d.status
                            ));
                        }
                        let (_, headers) = header_edits(
                            RawHeaderEdits {
                                add: d.headers,
                                remove: Vec::new(),
                            },
                            "direct.headers",
                        )?;
                        RouteAction::Reply(
                            d.status,
                            headers,
                            (!d.body.is_empty()).then_some(d.body),
                        )
                    }
                    (None, None) => {
                        return Err("a route needs one of `to`, `redirect`, `direct`".into());
                    }
                    (Some(_), Some(_)) => {
                        return Err("a route has only one of `to`, `redirect`, `direct`".into());
                    }
                }
            }
            (Some(_), _, _) => {
                return Err("a route has only one of `to`, `redirect`, `direct`".into());
            }
        };
        Ok(Self {
            host,
            path,
            methods,
            headers,
            query,
            action,
        })
    }
}

fn parse_host(host: &str) -> Result<HostMatch, String> {
    let host = host.to_ascii_lowercase();
    if host == "*" {
        return Ok(HostMatch::Any);
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b);
    if name.is_empty() || !name.bytes().all(ok) {
        return Err(format!("match.host {host:?}: not a host name"));
    }
    Ok(if wild {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(host)
    })
}

fn parse_path(p: RawPath) -> Result<PathMatch, String> {
    match (p.prefix, p.exact, p.regex) {
        (Some(prefix), None, None) => Ok(PathMatch::Prefix(prefix)),
        (None, Some(exact), None) => Ok(PathMatch::Exact(exact)),
        (None, None, Some(re)) => Regex::new(&re)
            .map(PathMatch::Regex)
            .map_err(|e| format!("match.path.regex {re:?}: {e}")),
        _ => Err("match.path needs exactly one of prefix, exact, regex".into()),
    }
}

fn parse_header_rule(rule: RawHeaderRule) -> Result<HeaderRule, String> {
    match rule {
        RawHeaderRule::Exact(v) => Ok(HeaderRule::Exact(v.into_bytes())),
        RawHeaderRule::Rule(r) => match (r.exact, r.regex, r.present) {
            (Some(v), None, None) => Ok(HeaderRule::Exact(v.into_bytes())),
            (None, Some(re), None) => Regex::new(&re)
                .map(HeaderRule::Regex)
                .map_err(|e| format!("regex {re:?}: {e}")),
            (None, None, Some(p)) => Ok(HeaderRule::Present(p)),
            _ => Err("needs exactly one of exact, regex, present".into()),
        },
    }
}

fn parse_targets(to: RawTo) -> Result<Vec<(String, u64)>, String> {
    let list = match to {
        RawTo::Cluster(cluster) => vec![RawTarget { cluster, weight: 1 }],
        RawTo::One(t) => vec![RawTarget {
            cluster: t.cluster,
            weight: 1,
        }],
        RawTo::Split(list) => list,
    };
    let mut total = 0u64;
    let mut targets = Vec::with_capacity(list.len());
    for t in list {
        if t.cluster.is_empty() {
            return Err("to: empty cluster name".into());
        }
        if t.weight > 0 {
            total += u64::from(t.weight);
            targets.push((t.cluster, total));
        }
    }
    if total == 0 {
        return Err("to: the weights sum to 0".into());
    }
    Ok(targets)
}

fn parse_sticky(s: RawSticky) -> Result<Sticky, String> {
    match (s.header, s.cookie) {
        (Some(h), None) => Ok(Sticky::Header(
            header_name(&h, true).map_err(|e| format!("sticky.header {h:?}: {e}"))?,
        )),
        (None, Some(c)) if is_token(&c) => Ok(Sticky::Cookie(c)),
        (None, Some(c)) => Err(format!("sticky.cookie {c:?}: not a cookie name")),
        _ => Err("sticky needs exactly one of header, cookie".into()),
    }
}

/// `(name, value)` pairs: lower-cased names, checked values.
type Headers = Vec<(String, String)>;

fn header_edits(edits: RawHeaderEdits, what: &str) -> Result<(Vec<String>, Headers), String> {
    let remove = edits
        .remove
        .into_iter()
        .map(|name| header_name(&name, false).map_err(|e| format!("{what}.remove {name:?}: {e}")))
        .collect::<Result<Vec<_>, String>>()?;
    let add = edits
        .add
        .into_iter()
        .map(|(name, value)| {
            let name =
                header_name(&name, false).map_err(|e| format!("{what} header {name:?}: {e}"))?;
            header_value(&value).map_err(|e| format!("{what} header {name:?}: {e}"))?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((remove, add))
}

/// A duration in the manifest's grammar (`250ms`, `2s`, `1.5s`, `1m30s`, `1h`, `0s`) → whole
/// milliseconds (rounded up), at most 10¹² (about 31 years).
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    u64::try_from(d.as_nanos().div_ceil(1_000_000))
        .ok()
        .filter(|ms| *ms <= 1_000_000_000_000)
        .ok_or_else(|| format!("{s:?}: out of range"))
}

// ---------------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------------

/// The request's pseudo-headers, fetched once per request (only those some route needs).
struct Request {
    /// Host without port.
    authority: Option<String>,
    path: Option<String>,
    method: Option<String>,
}

impl Request {
    fn host(&self) -> &str {
        let a = self.authority.as_deref().unwrap_or("");
        strip_port(a)
    }

    /// The path without its query, and the query (without `?`).
    fn path_query(&self) -> (&str, &str) {
        let p = self.path.as_deref().unwrap_or("");
        match p.split_once('?') {
            Some((path, query)) => (path, query),
            None => (p, ""),
        }
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // IPv6 literal: `[::1]:8080` → `[::1]`.
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn host_matches(m: &HostMatch, host: &str) -> bool {
    match m {
        HostMatch::Any => true,
        HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
        HostMatch::Suffix(suffix) => {
            host.len() > suffix.len()
                && host.as_bytes()[host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        }
    }
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Exact(p) => path == p,
        PathMatch::Regex(re) => re.is_match(path),
    }
}

/// The raw value of the first `name` parameter of `query` (`""` for a bare `name`).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

/// The value of cookie `name` in a `cookie` header value.
fn cookie_value<'c>(header: &'c [u8], name: &str) -> Option<&'c [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// FNV-1a, 64 bits: stable across VMs, processes and versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// Contexts
// ---------------------------------------------------------------------------------------------

struct RouterRoot {
    /// `None` until `on_configure` succeeds.
    config: Option<Rc<Config>>,
    rng: Rc<Rng>,
}

impl Context for RouterRoot {}

impl RootContext for RouterRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                // Response headers only when some route edits them (Weir skips the rest).
                let edits_responses = config.routes.iter().any(|r| {
                    matches!(&r.action, RouteAction::Forward(f)
                        if !f.response_add.is_empty() || !f.response_remove.is_empty())
                });
                let mut phases = vec![Phase::RequestHeaders];
                if edits_responses {
                    phases.push(Phase::ResponseHeaders);
                }
                weir_sdk::phases::declare(&phases);
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("router: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Router {
            config: self.config.clone(),
            rng: Rc::clone(&self.rng),
            route: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Router {
    config: Option<Rc<Config>>,
    rng: Rc<Rng>,
    /// The forwarding route this stream matched (for the response-header edits).
    route: Option<usize>,
}

impl Context for Router {}

impl Router {
    fn matches(&self, route: &Route, req: &Request) -> bool {
        if !route.methods.is_empty() {
            let method = req.method.as_deref().unwrap_or("");
            if !route.methods.iter().any(|m| m == method) {
                return false;
            }
        }
        if let Some(h) = &route.host
            && !host_matches(h, req.host())
        {
            return false;
        }
        let (path, query) = req.path_query();
        if let Some(p) = &route.path
            && !path_matches(p, path)
        {
            return false;
        }
        if !route
            .query
            .iter()
            .all(|(name, want)| query_param(query, name) == Some(want.as_str()))
        {
            return false;
        }
        route.headers.iter().all(|(name, rule)| {
            let value = self.get_http_request_header_bytes(name);
            match (rule, value) {
                (HeaderRule::Present(want), v) => v.is_some() == *want,
                (HeaderRule::Exact(want), Some(v)) => &v == want,
                (HeaderRule::Regex(re), Some(v)) => {
                    std::str::from_utf8(&v).is_ok_and(|v| re.is_match(v))
                }
                (_, None) => false,
            }
        })
    }

    fn choose<'f>(&self, f: &'f Forward) -> &'f str {
        if f.targets.len() == 1 {
            return &f.targets[0].0;
        }
        let total = f.total();
        let sticky = f.sticky.as_ref().and_then(|s| match s {
            Sticky::Header(name) => self.get_http_request_header_bytes(name).map(|v| fnv1a(&v)),
            Sticky::Cookie(name) => self.cookie_hash(name),
        });
        let point = match sticky {
            Some(hash) => hash % total,
            None => self.rng.below(total),
        };
        f.pick(point)
    }

    /// FNV-1a of cookie `name`. The first `cookie` header is read on its own (no copy of the whole
    /// map); only when it lacks the cookie are the others searched (HTTP/2 clients may send one
    /// `cookie` header per cookie).
    fn cookie_hash(&self, name: &str) -> Option<u64> {
        let first = self.get_http_request_header_bytes("cookie")?;
        if let Some(v) = cookie_value(&first, name) {
            return Some(fnv1a(v));
        }
        self.get_http_request_headers_bytes()
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .find_map(|(_, v)| cookie_value(v, name).map(fnv1a))
    }

    fn forward(&mut self, f: &Forward) {
        set_route(b"weir\0route\0cluster", self.choose(f).as_bytes());
        if let Some(ms) = &f.timeout_ms {
            set_route(b"weir\0route\0timeout_ms", ms.as_bytes());
        }
        if let Some(r) = &f.retries {
            set_route(b"weir\0route\0retries", r.as_bytes());
        }
        if let Some(ms) = &f.per_try_timeout_ms {
            set_route(b"weir\0route\0per_try_timeout_ms", ms.as_bytes());
        }
        for name in &f.request_remove {
            self.remove_http_request_header(name);
        }
        for (name, value) in &f.request_add {
            self.add_http_request_header(name, value);
        }
    }
}

/// Sets `weir.route.*` (`path` in wire form: the route decision's fixed names).
fn set_route(path: &[u8], value: &[u8]) {
    let _ = weir_sdk::properties::set_raw(path, value);
}

/// `path` (with its query) with `prefix` (a prefix of it) replaced by `to`.
fn rewritten(path: &str, prefix: &str, to: &str) -> String {
    let rest = &path[prefix.len()..];
    let mut out = String::with_capacity(to.len() + rest.len() + 1);
    out.push_str(to);
    if out.is_empty() && !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    out
}

impl HttpContext for Router {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Unconfigured (the host ignored a failed on_configure): pass through rather than trap.
        let Some(config) = self.config.clone() else {
            return Action::Continue;
        };
        let req = Request {
            authority: if config.needs_host {
                self.get_http_request_header(":authority")
                    .or_else(|| self.get_http_request_header("host"))
            } else {
                None
            },
            path: if config.needs_path {
                self.get_http_request_header(":path")
            } else {
                None
            },
            method: if config.needs_method {
                self.get_http_request_header(":method")
            } else {
                None
            },
        };
        let Some(i) = config.routes.iter().position(|r| self.matches(r, &req)) else {
            self.send_http_response(
                404,
                vec![("x-weir-router", "no_route")],
                Some(b"weir: no_route"),
            );
            return Action::Pause;
        };
        let route = &config.routes[i];
        match &route.action {
            RouteAction::Forward(f) => {
                if let (Some(to), Some(PathMatch::Prefix(prefix)), Some(full)) =
                    (&f.rewrite, &route.path, req.path.as_deref())
                {
                    set_route(b"weir\0route\0path", rewritten(full, prefix, to).as_bytes());
                }
                self.forward(f);
                self.route = Some(i);
                Action::Continue
            }
            RouteAction::Reply(status, headers, body) => {
                let headers = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                self.send_http_response(*status, headers, body.as_deref().map(str::as_bytes));
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(config), Some(i)) = (&self.config, self.route) else {
            return Action::Continue;
        };
        if let RouteAction::Forward(f) = &config.routes[i].action {
            for name in &f.response_remove {
                self.remove_http_response_header(name);
            }
            for (name, value) in &f.response_add {
                self.add_http_response_header(name, value);
            }
        }
        Action::Continue
    }
}
