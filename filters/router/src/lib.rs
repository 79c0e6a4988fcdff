//! `builtin:router`: Envoy-like request routing. The first route whose `match` holds decides the
//! request: it goes to a cluster (or a weighted split of clusters, optionally sticky), possibly
//! with a rewritten path, a timeout, a retry budget and header edits; or it is answered locally
//! with a redirect or a fixed response. A request no route matches gets a local 404.
//!
//! Configuration (JSON plugin configuration; unknown fields are rejected), exactly one of
//! `routes` and `virtual_hosts`:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `routes` | array of routes | tried in order for every request; the first match wins |
//! | `virtual_hosts` | array of virtual hosts | Envoy's `RouteConfiguration.virtual_hosts`: the request's host picks one virtual host, whose routes are then tried in order |
//! | `ignore_port` | bool (default `false`, only with `virtual_hosts`) | Envoy's `ignore_port_in_host_matching`: strip the `:port` of `:authority` before picking the virtual host |
//!
//! A virtual host:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `name` | non-empty string | for error messages |
//! | `domains` | non-empty array of strings | lower-cased at parse: an exact host (`a.example.com`, `a.example.com:8080`), a suffix wildcard (`*.example.com`, `*-bar.example.com`), a prefix wildcard (`foo.*`, `foo-*`) or `*` |
//! | `routes` | array of routes | tried in order; none matches: the 404 below (no other virtual host is tried) |
//!
//! The virtual host is picked as Envoy does: the request's `:authority` (or `host`), lower-cased,
//! is matched whole, its `:port` included unless `ignore_port`. Exact domains first, then suffix
//! wildcards, longest first, then prefix wildcards, longest first, then `*`. A wildcard stands for
//! at least one character (`*.example.com` does not match `example.com` nor `.example.com`). A
//! domain may appear once in the whole configuration (`*` too); a repeat is a configuration error.
//!
//! A route:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `match` | object | conditions, all of which must hold (absent or `{}`: every request) |
//! | `match.host` | string | `:authority` without its port, case-insensitive: exact, `*.suffix` (at least one label before the suffix) or `*` |
//! | `match.path` | `{prefix}` / `{exact}` / `{regex}` | the path without its query: string prefix, equality, or regex search (anchor with `^`/`$`) |
//! | `match.method` | string or array | `:method` is one of these (case-sensitive) |
//! | `match.headers` | object `{name: rule}` | see header rules below |
//! | `match.query` | object `{name: rule}` | see query rules below |
//! | `to` | string, `{cluster}` or array of `{cluster, weight}` | the cluster (`weir.route.cluster`); weights are non-negative integers summing to > 0 (default 1) |
//! | `sticky` | `{header: name}` or `{cookie: name}` | pick the split by a hash (FNV-1a) of this value; requests without it are spread at random |
//! | `rewrite` | `{prefix}` | replaces the `match.path.prefix` part of the path (`weir.route.path`, query kept) |
//! | `timeout` | duration string in the manifest's grammar (`250ms`, `2s`, `1.5s`, `1m30s`, `0s` = none) | `weir.route.timeout_ms` (rounded up to whole milliseconds) |
//! | `retries` | integer | `weir.route.retries`: retries after the first try (0: none), under the cluster's retry policy (or its defaults) |
//! | `per_try_timeout` | duration string (`0s` = the cluster's) | `weir.route.per_try_timeout_ms`: bounds each attempt |
//! | `request_headers` | `{add: {name: value}, remove: [name]}` | edits of the forwarded request (removals first) |
//! | `response_headers` | `{add: {name: value}, remove: [name]}` | edits of the upstream's response (removals first) |
//! | `redirect` | object, see below | answer locally with a redirect |
//! | `direct` | `{status, body, headers}` | answer locally with a fixed response (status 200–599) |
//!
//! A route has exactly one of `to`, `redirect`, `direct`; `sticky`, `rewrite`, `timeout`,
//! `retries`, `per_try_timeout`, `request_headers` and `response_headers` only go with `to`, and
//! `rewrite` only with a `match.path.prefix`.
//!
//! Header rules (Envoy's `HeaderMatcher`). The value tested is the header's value; a header sent
//! several times is tested value by value, as Envoy (since its fix of CVE-2026-26308) does: a
//! rule holds when one of the values passes it, and an inverted rule when none does (so a
//! second `x-role: admin` cannot slip past an inverted `exact: admin`). Envoy still joins the
//! values of the headers its own header map keeps inline (`user-agent`, `content-type`,
//! `x-request-id`, `x-forwarded-*`, `te`, `via`, …) with `,` before any rule sees them; Weir tests
//! those value by value too.
//!
//! | rule | holds when |
//! |---|---|
//! | `"v"` or `{"exact": "v"}` | the value is `v` |
//! | `{"prefix": "v"}` / `{"suffix": "v"}` / `{"contains": "v"}` | the value starts with / ends with / contains `v` (non-empty) |
//! | `{"regex": "re"}` | the regex finds a match in the value (search; anchor with `^`/`$`) |
//! | `{"present": b}` | the header is present (`true`) or absent (`false`) |
//!
//! Every object form takes `"invert": true` (Envoy's `invert_match`): the result is negated, except
//! that, as in Envoy, an absent header fails a value rule (`exact`, `prefix`, `suffix`, `contains`,
//! `regex`) whether inverted or not; only `present` answers for an absent header. Where Envoy
//! differs, its meaning is written so: Envoy's `exact_match: ""` (any value) is `{"present":
//! true}`, and its regexes (which must match the whole value) are anchored, `^(?:re)$`.
//!
//! Query rules (Envoy's `QueryParameterMatcher`) test the first occurrence of the parameter in the
//! query, raw (not percent-decoded); a bare `name` has the value `""`.
//!
//! | rule | holds when |
//! |---|---|
//! | `"v"` or `{"exact": "v"}` | the parameter is present with the value `v` |
//! | `{"regex": "re"}` | the parameter is present and the regex finds a match in its value |
//! | `{"present": b}` | the parameter is present (`true`) or absent (`false`) |
//!
//! A redirect is either `{location, status}` (a fixed `location`) or built from the request like
//! Envoy's `RedirectAction`, from any of the fields below (none: back to the request's own URL):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `status` | integer | 301 (default), 302, 303, 307 or 308 |
//! | `location` | string | the whole `location`; excludes every field below |
//! | `scheme` | string | the scheme (`scheme_redirect`; `https_redirect` is `"https"`); default: the request's `:scheme`, else `http` |
//! | `host` | string | replaces the request's whole `:authority`, its port included (`host_redirect`) |
//! | `port` | integer 1–65535 | the authority's port (`port_redirect`): replaces the request's port or is added |
//! | `path` | string | replaces the path (`path_redirect`); the request's query is appended unless `path` has a `?` of its own, which then wins over `strip_query` |
//! | `prefix` | string | replaces the `match.path.prefix` part of the path (`prefix_rewrite`; only with a prefix match), query kept |
//! | `strip_query` | bool | drop the query (`strip_query`) |
//!
//! The request's own authority loses its port when `port` is given, or when the scheme changes and
//! the port was the default one of the request's scheme (`:80` for `http`, `:443` for `https`):
//! `http://a.example.com:80/x` to `https` is `https://a.example.com/x`, and `:8080` stays. (Envoy
//! reads the request's scheme from `x-forwarded-proto`, which it sets; Weir's `:scheme` is the
//! downstream connection's.) A path not starting with `/` gets one.
//!
//! Example: `{"routes": [{"match": {"path": {"prefix": "/api"}, "headers": {"x-canary": "1"}},
//! "to": "api-v2"}, {"match": {"path": {"prefix": "/api"}}, "to": [{"cluster": "api-v1", "weight":
//! 90}, {"cluster": "api-v2", "weight": 10}], "sticky": {"header": "x-user"}, "timeout": "2s"}]}`.
//! With virtual hosts: `{"virtual_hosts": [{"name": "api", "domains": ["api.example.com"],
//! "routes": [{"to": "api"}]}, {"name": "web", "domains": ["*"], "routes": [{"match": {"path":
//! {"prefix": "/"}}, "redirect": {"scheme": "https"}}]}], "ignore_port": true}`.
//!
//! Behaviour:
//! * No route matches (or no virtual host): a local `404` with `x-weir-router: no_route`,
//!   `x-weir-error: no_route` (the response flag `NR`) and body `weir: no_route`.
//! * Random choices use a per-VM PRNG (splitmix64) seeded from WASI randomness through std's
//!   `RandomState`, never from the proxy's clock.
//! * Local replies (redirect, direct, 404) are sent from the request-headers phase, which then
//!   returns `Pause`; the request never reaches an upstream.
//! * A bad configuration (bad JSON or regex, weights summing to 0, a rewrite without a prefix
//!   match, a bad status, an invalid header name or value, a domain in two virtual hosts, …) is
//!   logged at error level and fails `on_configure`, so the plugin does not load.
//!
//! Cost: the configuration is parsed once (hosts lower-cased, regexes compiled, property values
//! pre-rendered, domains in a hash map of exact names and hash maps of wildcards by length) and
//! shared through an `Rc`. Per request the filter allocates only what the SDK forces: the stream
//! context, the header values it reads (`:path`, `:method`, `:authority` only when some route or
//! virtual host tests them; the request's header list once, at the first header rule that needs
//! a value), the property-path vectors, a rewritten path or a built `location`, and a lower-cased
//! copy of a host only when it has upper-case letters. Picking a virtual host costs one hash
//! lookup, plus one per distinct wildcard length shorter than the host.
//!
//! About 1,500 lines, the first 130 this reference: one filter whose configuration, matching and
//! decision read top to bottom in request order; its behaviour is tested in `sdk/tests/router.rs`.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
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
    #[serde(default)]
    routes: Option<Vec<RawRoute>>,
    #[serde(default)]
    virtual_hosts: Option<Vec<RawVirtualHost>>,
    #[serde(default)]
    ignore_port: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVirtualHost {
    name: String,
    domains: Vec<String>,
    #[serde(default)]
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
    query: BTreeMap<String, RawQueryRule>,
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
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    invert: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawQueryRule {
    Exact(String),
    Rule(RawQueryRuleObject),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueryRuleObject {
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
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    strip_query: Option<bool>,
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
    /// Every route; with virtual hosts, each one's routes are a range of these (so a route's index
    /// names it across the whole configuration).
    routes: Vec<Route>,
    hosts: Option<VirtualHosts>,
    /// Whether some route (or the virtual hosts) reads `:authority`, `:path`, `:method` (otherwise
    /// they are not fetched).
    needs_host: bool,
    needs_path: bool,
    needs_method: bool,
}

/// The virtual hosts and Envoy's lookup structures for their domains (lower-cased), built once.
struct VirtualHosts {
    ignore_port: bool,
    /// Each virtual host's routes, as a range of `Config::routes`.
    routes: Vec<Range<usize>>,
    /// Exact domains → virtual host.
    exact: HashMap<String, usize>,
    /// Suffix wildcards without their `*` (`*.foo.com` → `.foo.com`), grouped by that length,
    /// longest first.
    suffixes: Vec<(usize, HashMap<String, usize>)>,
    /// Prefix wildcards without their `*` (`foo.*` → `foo.`), grouped likewise.
    prefixes: Vec<(usize, HashMap<String, usize>)>,
    /// The virtual host of `*`.
    any: Option<usize>,
}

struct Route {
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    methods: Vec<String>,
    headers: Vec<(String, HeaderRule)>,
    query: Vec<(String, QueryRule)>,
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

struct HeaderRule {
    test: HeaderTest,
    /// Envoy's `invert_match`.
    invert: bool,
}

enum HeaderTest {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    Contains(Vec<u8>),
    Regex(Regex),
    Present(bool),
}

enum QueryRule {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

enum RouteAction {
    Forward(Box<Forward>),
    /// A local reply: status, headers, body.
    Reply(u32, Vec<(String, String)>, Option<String>),
    /// A redirect whose `location` is built from the request.
    Redirect(Box<Redirect>),
}

/// Envoy's `RedirectAction`, validated; see the module doc for the rules.
struct Redirect {
    status: u32,
    scheme: Option<String>,
    host: Option<String>,
    /// Pre-rendered `:port`.
    port: Option<String>,
    path: RedirectPath,
    strip_query: bool,
}

enum RedirectPath {
    /// The request's path.
    Keep,
    /// `path`, and whether it has a query of its own.
    Replace(String, bool),
    /// The replacement for the matched prefix.
    Prefix(String),
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
        let parse_routes = |raw: Vec<RawRoute>, at: &str| {
            raw.into_iter()
                .enumerate()
                .map(|(i, r)| Route::parse(r).map_err(|e| format!("{at}routes[{i}]: {e}")))
                .collect::<Result<Vec<_>, String>>()
        };
        let (routes, hosts) = match (raw.routes, raw.virtual_hosts) {
            (Some(routes), None) => {
                if raw.ignore_port.is_some() {
                    return Err("ignore_port needs `virtual_hosts`".into());
                }
                (parse_routes(routes, "")?, None)
            }
            (None, Some(vhosts)) => {
                let mut routes = Vec::new();
                let mut domains = Vec::with_capacity(vhosts.len());
                let mut ranges = Vec::with_capacity(vhosts.len());
                for (v, vhost) in vhosts.into_iter().enumerate() {
                    let at = format!("virtual_hosts[{v}]");
                    if vhost.name.is_empty() {
                        return Err(format!("{at}: empty name"));
                    }
                    let at = format!("{at} ({:?})", vhost.name);
                    let start = routes.len();
                    routes.extend(parse_routes(vhost.routes, &format!("{at}."))?);
                    ranges.push(start..routes.len());
                    domains.push((at, vhost.name, vhost.domains));
                }
                let ignore_port = raw.ignore_port.unwrap_or(false);
                (
                    routes,
                    Some(VirtualHosts::new(domains, ranges, ignore_port)?),
                )
            }
            _ => {
                return Err(
                    "invalid configuration: needs exactly one of `routes`, `virtual_hosts`".into(),
                );
            }
        };
        Ok(Self {
            needs_host: hosts.is_some() || routes.iter().any(|r| r.host.is_some()),
            needs_path: routes
                .iter()
                .any(|r| r.path.is_some() || !r.query.is_empty()),
            needs_method: routes.iter().any(|r| !r.methods.is_empty()),
            routes,
            hosts,
        })
    }
}

/// Wildcards of one kind grouped by length, longest first.
type Wildcards = BTreeMap<usize, HashMap<String, usize>>;

impl VirtualHosts {
    /// `domains`: per virtual host, its place for messages, its name and its domains.
    fn new(
        domains: Vec<(String, String, Vec<String>)>,
        routes: Vec<Range<usize>>,
        ignore_port: bool,
    ) -> Result<Self, String> {
        let names: Vec<&str> = domains.iter().map(|(_, name, _)| name.as_str()).collect();
        let mut exact = HashMap::new();
        let mut suffixes = Wildcards::new();
        let mut prefixes = Wildcards::new();
        let mut any = None;
        for (v, (at, _, list)) in domains.iter().enumerate() {
            if list.is_empty() {
                return Err(format!("{at}: no domains"));
            }
            for domain in list {
                let domain = domain.to_ascii_lowercase();
                if domain.is_empty() {
                    return Err(format!("{at}: empty domain"));
                }
                header_value(&domain).map_err(|e| format!("{at} domain {domain:?}: {e}"))?;
                // Envoy's order of tests: `*`, a leading `*`, a trailing `*`, else exact.
                let taken = if domain == "*" {
                    any.replace(v)
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    let by_len = suffixes.entry(suffix.len()).or_default();
                    by_len.insert(suffix.to_owned(), v)
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    let by_len = prefixes.entry(prefix.len()).or_default();
                    by_len.insert(prefix.to_owned(), v)
                } else {
                    exact.insert(domain.clone(), v)
                };
                if let Some(other) = taken {
                    return Err(format!(
                        "{at} domain {domain:?}: already a domain of virtual host {:?}",
                        names[other]
                    ));
                }
            }
        }
        let longest_first = |w: Wildcards| w.into_iter().rev().collect();
        Ok(Self {
            ignore_port,
            routes,
            exact,
            suffixes: longest_first(suffixes),
            prefixes: longest_first(prefixes),
            any,
        })
    }

    /// The virtual host for `authority` (Envoy's `RouteMatcher::findVirtualHost`).
    fn pick(&self, authority: &str) -> Option<usize> {
        let host = if self.ignore_port {
            &authority[..port_start(authority).unwrap_or(authority.len())]
        } else {
            authority
        };
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        if let Some(&v) = self.exact.get(host.as_ref()) {
            return Some(v);
        }
        // A wildcard stands for at least one character, hence `len < host.len()`; a cut inside a
        // multi-byte character (`get` → `None`) cannot equal a domain.
        let wild = |groups: &[(usize, HashMap<String, usize>)], suffix: bool| {
            groups
                .iter()
                .filter(|(len, _)| *len < host.len())
                .find_map(|(len, by_part)| {
                    let part = if suffix {
                        host.get(host.len() - len..)
                    } else {
                        host.get(..*len)
                    };
                    by_part.get(part?).copied()
                })
        };
        wild(&self.suffixes, true)
            .or_else(|| wild(&self.prefixes, false))
            .or(self.any)
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
        let query = m
            .query
            .into_iter()
            .map(|(name, rule)| {
                let rule =
                    parse_query_rule(rule).map_err(|e| format!("match.query {name:?}: {e}"))?;
                Ok((name, rule))
            })
            .collect::<Result<Vec<_>, String>>()?;

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
                    (Some(r), None) => parse_redirect(r, &path)?,
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
    let r = match rule {
        RawHeaderRule::Exact(v) => {
            return Ok(HeaderRule {
                test: HeaderTest::Exact(v.into_bytes()),
                invert: false,
            });
        }
        RawHeaderRule::Rule(r) => r,
    };
    let non_empty = |what: &str, v: String| {
        if v.is_empty() {
            Err(format!("{what} is empty (use present)"))
        } else {
            Ok(v.into_bytes())
        }
    };
    let test = match (r.exact, r.regex, r.present, r.prefix, r.suffix, r.contains) {
        (Some(v), None, None, None, None, None) => HeaderTest::Exact(v.into_bytes()),
        (None, Some(re), None, None, None, None) => {
            HeaderTest::Regex(Regex::new(&re).map_err(|e| format!("regex {re:?}: {e}"))?)
        }
        (None, None, Some(p), None, None, None) => HeaderTest::Present(p),
        (None, None, None, Some(v), None, None) => HeaderTest::Prefix(non_empty("prefix", v)?),
        (None, None, None, None, Some(v), None) => HeaderTest::Suffix(non_empty("suffix", v)?),
        (None, None, None, None, None, Some(v)) => HeaderTest::Contains(non_empty("contains", v)?),
        _ => {
            return Err(
                "needs exactly one of exact, regex, present, prefix, suffix, contains".into(),
            );
        }
    };
    Ok(HeaderRule {
        test,
        invert: r.invert,
    })
}

fn parse_query_rule(rule: RawQueryRule) -> Result<QueryRule, String> {
    match rule {
        RawQueryRule::Exact(v) => Ok(QueryRule::Exact(v)),
        RawQueryRule::Rule(r) => match (r.exact, r.regex, r.present) {
            (Some(v), None, None) => Ok(QueryRule::Exact(v)),
            (None, Some(re), None) => Regex::new(&re)
                .map(QueryRule::Regex)
                .map_err(|e| format!("regex {re:?}: {e}")),
            (None, None, Some(p)) => Ok(QueryRule::Present(p)),
            _ => Err("needs exactly one of exact, regex, present".into()),
        },
    }
}

fn parse_redirect(r: RawRedirect, path: &Option<PathMatch>) -> Result<RouteAction, String> {
    if ![301, 302, 303, 307, 308].contains(&r.status) {
        return Err(format!(
            "redirect.status {} is not a redirect (301, 302, 303, 307, 308)",
            r.status
        ));
    }
    let parts = [
        ("scheme", r.scheme.is_some()),
        ("host", r.host.is_some()),
        ("port", r.port.is_some()),
        ("path", r.path.is_some()),
        ("prefix", r.prefix.is_some()),
        ("strip_query", r.strip_query.is_some()),
    ];
    if let Some(location) = r.location {
        if let Some((field, _)) = parts.iter().find(|(_, set)| *set) {
            return Err(format!("redirect.location excludes redirect.{field}"));
        }
        if location.is_empty() {
            return Err("redirect.location is empty".into());
        }
        header_value(&location).map_err(|e| format!("redirect.location: {e}"))?;
        return Ok(RouteAction::Reply(
            r.status,
            vec![("location".into(), location)],
            None,
        ));
    }
    if let Some(scheme) = &r.scheme {
        let mut bytes = scheme.bytes();
        let ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !ok {
            return Err(format!("redirect.scheme {scheme:?}: not a URI scheme"));
        }
    }
    if let Some(host) = &r.host {
        // A host that ends the authority early would make another URL than the one configured.
        if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
            return Err(format!("redirect.host {host:?}: not a host"));
        }
        header_value(host).map_err(|e| format!("redirect.host: {e}"))?;
    }
    if r.port == Some(0) {
        return Err("redirect.port: 0 is not a port".into());
    }
    let target = match (r.path, r.prefix, path) {
        (None, None, _) => RedirectPath::Keep,
        (Some(p), None, _) => {
            if p.is_empty() {
                return Err("redirect.path is empty".into());
            }
            header_value(&p).map_err(|e| format!("redirect.path: {e}"))?;
            let has_query = p.contains('?');
            RedirectPath::Replace(p, has_query)
        }
        (None, Some(p), Some(PathMatch::Prefix(_))) => {
            header_value(&p).map_err(|e| format!("redirect.prefix: {e}"))?;
            RedirectPath::Prefix(p)
        }
        (None, Some(_), _) => return Err("redirect.prefix needs a match.path.prefix".into()),
        (Some(_), Some(_), _) => {
            return Err("redirect has only one of `path`, `prefix`".into());
        }
    };
    Ok(RouteAction::Redirect(Box::new(Redirect {
        status: r.status,
        scheme: r.scheme,
        host: r.host,
        port: r.port.map(|p| format!(":{p}")),
        path: target,
        strip_query: r.strip_query.unwrap_or(false),
    })))
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
    authority: Option<String>,
    path: Option<String>,
    method: Option<String>,
    /// The whole header list, fetched at the first header rule that tests a value: Envoy tests
    /// each value of a repeated header, and the ABI's single-value read returns the first.
    headers: OnceCell<Vec<(String, Vec<u8>)>>,
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

/// Where the `:port` of `authority` starts (Envoy's `HeaderUtility::getPortStart`): its last `:`,
/// unless that is inside an IPv6 literal's brackets.
fn port_start(authority: &str) -> Option<usize> {
    let colon = authority.rfind(':')?;
    match authority.rfind(']') {
        Some(bracket) if bracket > colon => None,
        _ => Some(colon),
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

impl HeaderRule {
    /// Envoy's header matcher for one rule over the values the header was sent with (none when
    /// absent), each tested on its own: a hit on one of them decides.
    fn holds<'v>(&self, values: impl IntoIterator<Item = &'v [u8]>) -> bool {
        let mut values = values.into_iter().peekable();
        let hit = match &self.test {
            HeaderTest::Present(want) => values.peek().is_some() == *want,
            // An absent header fails a value test, inverted or not.
            _ if values.peek().is_none() => return false,
            test => values.any(|v| test.passes(v)),
        };
        hit != self.invert
    }
}

impl HeaderTest {
    /// Whether one value passes a value test (`Present` is answered by the caller).
    fn passes(&self, v: &[u8]) -> bool {
        match self {
            HeaderTest::Exact(want) => v == want.as_slice(),
            HeaderTest::Prefix(want) => v.starts_with(want),
            HeaderTest::Suffix(want) => v.ends_with(want),
            HeaderTest::Contains(want) => v.windows(want.len()).any(|w| w == want),
            HeaderTest::Regex(re) => std::str::from_utf8(v).is_ok_and(|v| re.is_match(v)),
            HeaderTest::Present(_) => true,
        }
    }
}

impl QueryRule {
    /// `value`: the parameter's first occurrence.
    fn holds(&self, value: Option<&str>) -> bool {
        match self {
            QueryRule::Exact(want) => value == Some(want.as_str()),
            QueryRule::Regex(re) => value.is_some_and(|v| re.is_match(v)),
            QueryRule::Present(want) => value.is_some() == *want,
        }
    }
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
            .all(|(name, rule)| rule.holds(query_param(query, name)))
        {
            return false;
        }
        route.headers.iter().all(|(name, rule)| match rule.test {
            // Presence needs no value: one read, unless the list is already here.
            HeaderTest::Present(_) if req.headers.get().is_none() => {
                let present = self.get_http_request_header_bytes(name).is_some();
                rule.holds(present.then_some(&[][..]))
            }
            _ => {
                let all = req
                    .headers
                    .get_or_init(|| self.get_http_request_headers_bytes());
                rule.holds(
                    all.iter()
                        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_slice()),
                )
            }
        })
    }

    /// The local 404 of a request no route takes.
    fn no_route(&mut self) -> Action {
        self.send_http_response(
            404,
            // `x-weir-error` makes the proxy flag it NR in metrics and access logs, as Envoy does.
            vec![("x-weir-router", "no_route"), ("x-weir-error", "no_route")],
            Some(b"weir: no_route"),
        );
        Action::Pause
    }

    /// Answers with `redirect`'s `location`, built from the request.
    fn redirect(&mut self, r: &Redirect, route: &Route, req: &Request) -> Action {
        let authority = match &req.authority {
            Some(a) => Cow::Borrowed(a.as_str()),
            None => Cow::Owned(
                self.get_http_request_header(":authority")
                    .or_else(|| self.get_http_request_header("host"))
                    .unwrap_or_default(),
            ),
        };
        let path = match &req.path {
            Some(p) => Cow::Borrowed(p.as_str()),
            None => Cow::Owned(self.get_http_request_header(":path").unwrap_or_default()),
        };
        let scheme = self.get_http_request_header(":scheme");
        let prefix = match &route.path {
            Some(PathMatch::Prefix(p)) => Some(p.as_str()),
            _ => None,
        };
        let location = location(r, scheme.as_deref(), &authority, &path, prefix);
        self.send_http_response(r.status, vec![("location", &location)], None);
        Action::Pause
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

/// Envoy's `Http::Utility::newUri`: the `location` of redirect `r` for a request with this
/// `:scheme`, `:authority` and `:path`; `prefix` is the route's matched `match.path.prefix`.
fn location(
    r: &Redirect,
    scheme: Option<&str>,
    authority: &str,
    path: &str,
    prefix: Option<&str>,
) -> String {
    let request_scheme = scheme.filter(|s| !s.is_empty()).unwrap_or("http");
    let scheme = r.scheme.as_deref().unwrap_or(request_scheme);
    let host = match &r.host {
        Some(host) => host.as_str(),
        None => redirect_host(authority, request_scheme, scheme, r.port.is_some()),
    };
    let port = r.port.as_deref().unwrap_or("");
    let mut out = String::with_capacity(scheme.len() + 3 + host.len() + port.len() + path.len());
    out.push_str(scheme);
    out.push_str("://");
    out.push_str(host);
    out.push_str(port);
    let path_at = out.len();
    let mut own_query = false;
    match (&r.path, prefix) {
        (RedirectPath::Replace(to, has_query), _) => {
            out.push_str(to);
            own_query = *has_query;
            // The request's query follows a path without one of its own.
            if let (false, Some(q)) = (own_query, path.find('?')) {
                out.push_str(&path[q..]);
            }
        }
        (RedirectPath::Prefix(to), Some(prefix)) if path.starts_with(prefix) => {
            out.push_str(to);
            out.push_str(&path[prefix.len()..]);
        }
        _ => out.push_str(path),
    }
    if !out[path_at..].starts_with('/') {
        out.insert(path_at, '/');
    }
    if r.strip_query
        && !own_query
        && let Some(q) = out[path_at..].find('?')
    {
        out.truncate(path_at + q);
    }
    out
}

/// The request's `authority` for a redirect that keeps it (Envoy's `processRequestHost`): without
/// its port when the redirect sets one, or when the scheme changes and the port is the default
/// one of the request's scheme.
fn redirect_host<'a>(authority: &'a str, from: &str, to: &str, new_port: bool) -> &'a str {
    let colon = if authority.starts_with('[') {
        authority.rfind("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    let Some(colon) = colon else {
        return authority;
    };
    let port = &authority[colon..];
    let default_port = (from.eq_ignore_ascii_case("https") && port == ":443")
        || (from.eq_ignore_ascii_case("http") && port == ":80");
    if new_port || (to != from && default_port) {
        &authority[..colon]
    } else {
        authority
    }
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
            headers: OnceCell::new(),
        };
        let range = match &config.hosts {
            None => 0..config.routes.len(),
            Some(hosts) => match hosts.pick(req.authority.as_deref().unwrap_or("")) {
                Some(v) => hosts.routes[v].clone(),
                None => return self.no_route(),
            },
        };
        let start = range.start;
        let Some(i) = config.routes[range]
            .iter()
            .position(|r| self.matches(r, &req))
            .map(|i| start + i)
        else {
            return self.no_route();
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
            RouteAction::Redirect(r) => self.redirect(r, route, &req),
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
