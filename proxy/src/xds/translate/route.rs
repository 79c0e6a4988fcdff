//! RDS: `envoy.config.route.v3.RouteConfiguration` → the JSON configuration of Weir's stock
//! router (`builtin:router`, `filters/router/src/lib.rs`): virtual hosts with their domains and
//! routes, each route a match and one of `to`, `redirect`, `direct`.
//!
//! | field | Weir | notes |
//! |---|---|---|
//! | `virtual_hosts[]` | `virtual_hosts[]` | `name` (required), `domains` (required; each once in the configuration, compared lower-cased; `*` only whole, leading or trailing), `routes` |
//! | `ignore_port_in_host_matching` | `ignore_port` | |
//! | `*.request_headers_to_add/remove`, `*.response_headers_to_add/remove` (route, virtual host, configuration) | `request_headers`, `response_headers` (a redirect carries none; a direct response takes the response additions as its `headers`) | merged per route in Envoy's order (route, then virtual host, then configuration; reversed by `most_specific_header_mutations_wins`). `append_action` APPEND_IF_EXISTS_OR_ADD (the default) → `add`, OVERWRITE_IF_EXISTS_OR_ADD → `remove` + `add`; the deprecated `append` likewise; an empty value is dropped unless `keep_empty_value`; `%%` → `%`, other `%COMMAND%` substitutions refused; a header added twice is refused (Weir adds one value per name) |
//! | `match.prefix`, `.path`, `.safe_regex` | `match.path` `prefix`, `exact`, `regex` | Envoy's regex matches the whole path: written `^(?:RE)$` |
//! | `match.case_sensitive` | checked | absent or true |
//! | `match.headers[]` | `match.headers` | `string_match` `exact`/`prefix`/`suffix`/`contains`/`safe_regex` (whole value: anchored), `present_match`, the deprecated `exact_match`, `safe_regex_match`, `prefix_match`, `suffix_match`, `contains_match` (accepted: they are the same matchers; `exact_match: ""` is presence, as in Envoy), no specifier (presence), `invert_match` → `invert` (folded into `present` for presence); one matcher per name |
//! | `match.query_parameters[]` | `match.query` | `string_match` `exact` (a string) or `safe_regex`, `present_match: true`, no specifier (presence); one matcher per name; Weir compares raw (not percent-decoded) values |
//! | `route.cluster` | `to` | the name verbatim |
//! | `route.weighted_clusters` | `to: [{cluster, weight}]` | `weight` absent is 0, as in Envoy; the deprecated `total_weight` is accepted when it equals the sum |
//! | `route.prefix_rewrite` | `rewrite.prefix` | only with a prefix match |
//! | `route.timeout` | `timeout` | Envoy's 15 s when absent; `0s` is none |
//! | `route.retry_policy` | `retries`, `per_try_timeout` | `retry_on` within `connect-failure`, `refused-stream`, `reset` (Weir's conditions are the cluster's, these three by default); `num_retries` default 1 (Envoy's); no policy or no condition: `retries: 0` |
//! | `redirect` | `redirect` | `scheme_redirect`/`https_redirect` → `scheme`, `host_redirect` → `host`, `port_redirect` → `port`, `path_redirect` → `path`, `prefix_rewrite` → `prefix` (with a prefix match), `strip_query`, `response_code` → `status` (301, 302, 303, 307, 308) |
//! | `direct_response` | `direct` | `status` (200–599), `body` `inline_string`/`inline_bytes` (UTF-8, at most `max_direct_response_body_size_bytes`, default 4096) |
//! | `name` (configuration, route), `validate_clusters`, `virtual_clusters`, `decorator`, `stat_prefix` | accepted and ignored | names, stats and tracing labels; Weir answers a request to an unknown cluster with a 503 whether or not `validate_clusters` is set |
//!
//! Refused when set, among others: `vhds`, `internal_only_headers`, `cluster_specifier_plugins`,
//! `request_mirror_policies`, `vhost_header`, `typed_per_filter_config` (at every level),
//! `metadata` that is not empty, `require_tls`, `rate_limits`, `cors`, virtual-host
//! `retry_policy` and `hedge_policy`; in a match `runtime_fraction`, `cookies`, `grpc`,
//! `tls_context`, `dynamic_metadata`, `filter_state`, `path_separated_prefix`,
//! `path_match_policy`, `connect_matcher`, `range_match`, `ignore_case`,
//! `treat_missing_header_as_empty`; in a route action `cluster_header`, cluster specifier
//! plugins, `regex_rewrite`, `path_rewrite`, host rewrites, `hash_policy`, `idle_timeout`,
//! `max_stream_duration`, upgrades, internal redirects, mirrors, `priority` HIGH; in a retry
//! policy anything but `retry_on`, `num_retries`, `per_try_timeout`; `filter_action`,
//! `non_forwarding_action`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    route,
    route_action::ClusterSpecifier,
    route_match::PathSpecifier,
    virtual_host,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, regex_matcher, string_matcher::MatchPattern,
};
use serde_json::{Map, Value, json};

use super::endpoint::check_metadata;
use super::{At, Rejection, duration, keep_bool, string_matcher_field, unsupported};

/// Envoy's route timeout when a route has none.
const ENVOY_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's `max_direct_response_body_size_bytes` default.
const ENVOY_MAX_DIRECT_BODY: u32 = 4096;
/// The retry conditions Weir's clusters retry on by default, in Envoy's spelling.
const RETRY_ON: [&str; 3] = ["connect-failure", "refused-stream", "reset"];

/// A route configuration as the router's JSON configuration.
pub fn route_config(rc: &RouteConfiguration) -> Result<Value, Rejection> {
    let RouteConfiguration {
        name: _, // a name: the client matched it already
        virtual_hosts,
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        validate_clusters: _, // see the module table
        max_direct_response_body_size_bytes,
        cluster_specifier_plugins,
        request_mirror_policies,
        ignore_port_in_host_matching,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        metadata,
        route_specifiers,
    } = rc;
    unsupported!(
        vhds,
        internal_only_headers,
        cluster_specifier_plugins,
        request_mirror_policies,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        route_specifiers,
    );
    check_metadata(metadata.as_ref()).at("metadata")?;
    let max_body = max_direct_response_body_size_bytes
        .as_ref()
        .map_or(ENVOY_MAX_DIRECT_BODY, |v| v.value);
    let config_ops = Ops::of(
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
    )?;
    let mut hosts = Vec::with_capacity(virtual_hosts.len());
    // Envoy and the router both refuse a domain in two places (compared lower-cased).
    let mut domains = std::collections::HashMap::new();
    for (vi, vh) in virtual_hosts.iter().enumerate() {
        let vp = format!("virtual_hosts[{vi}]");
        let host = virtual_host(vh, max_body).at(&vp)?;
        for (di, d) in vh.domains.iter().enumerate() {
            let field = format!("{vp}.domains[{di}]");
            if let Some(first) = domains.insert(d.to_ascii_lowercase(), field.clone()) {
                return Err(Rejection::new(
                    field,
                    format!("`{d}` is also at {first}: a domain may appear once"),
                ));
            }
        }
        let mut routes = Vec::with_capacity(host.routes.len());
        for (ri, draft) in host.routes.into_iter().enumerate() {
            let rp = format!("{vp}.routes[{ri}]");
            let mut levels = [
                (&draft.ops, rp.as_str()),
                (&host.ops, vp.as_str()),
                (&config_ops, ""),
            ];
            if *most_specific_header_mutations_wins {
                levels.reverse();
            }
            routes.push(finish(draft.json, draft.action, &levels)?);
        }
        hosts.push(json!({
            "name": vh.name,
            "domains": vh.domains,
            "routes": routes,
        }));
    }
    Ok(json!({
        "virtual_hosts": hosts,
        "ignore_port": ignore_port_in_host_matching,
    }))
}

/// A virtual host before the header edits of the levels above its routes are merged in.
struct HostDraft {
    ops: Ops,
    routes: Vec<RouteDraft>,
}

/// A route's JSON without its header edits, what it does, and its own edits.
struct RouteDraft {
    json: Map<String, Value>,
    action: Action,
    ops: Ops,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Forward,
    Redirect,
    Direct,
}

fn virtual_host(v: &VirtualHost, max_body: u32) -> Result<HostDraft, Rejection> {
    let VirtualHost {
        name,
        domains,
        routes,
        matcher,
        require_tls,
        virtual_clusters: _, // stats only
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        metadata,
        route_specifiers,
    } = v;
    unsupported!(
        matcher,
        rate_limits,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        route_specifiers,
    );
    if *require_tls != virtual_host::TlsRequirementType::None as i32 {
        return Err(Rejection::unsupported("require_tls"));
    }
    check_metadata(metadata.as_ref()).at("metadata")?;
    if name.is_empty() {
        return Err(Rejection::new("name", "is required"));
    }
    if domains.is_empty() {
        return Err(Rejection::new("domains", "needs at least one domain"));
    }
    for (i, d) in domains.iter().enumerate() {
        let stars = d.matches('*').count();
        let ok = !d.is_empty()
            && (stars == 0 || (stars == 1 && (d.starts_with('*') || d.ends_with('*'))));
        if !ok {
            return Err(Rejection::new(
                format!("domains[{i}]"),
                format!("`{d}`: a domain may hold one `*`, at its start or end"),
            ));
        }
    }
    let ops = Ops::of(
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
    )?;
    let routes = routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(r, max_body).at(format_args!("routes[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(HostDraft { ops, routes })
}

fn route(r: &Route, max_body: u32) -> Result<RouteDraft, Rejection> {
    let Route {
        name: _, // a name
        r#match,
        metadata,
        decorator: _, // a tracing label
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        tracing,
        per_request_buffer_limit_bytes,
        stat_prefix: _, // stats naming
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = r;
    unsupported!(
        typed_per_filter_config,
        tracing,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        route_specifiers,
    );
    check_metadata(metadata.as_ref()).at("metadata")?;
    let m = r#match
        .as_ref()
        .ok_or_else(|| Rejection::new("match", "is required"))?;
    let (matches, prefix_match) = route_match(m).at("match")?;
    let mut json = Map::new();
    json.insert("match".into(), Value::Object(matches));
    let action = match action {
        Some(route::Action::Route(a)) => {
            forward(a, prefix_match, &mut json).at("route")?;
            Action::Forward
        }
        Some(route::Action::Redirect(a)) => {
            json.insert("redirect".into(), redirect(a, prefix_match).at("redirect")?);
            Action::Redirect
        }
        Some(route::Action::DirectResponse(a)) => {
            json.insert("direct".into(), direct(a, max_body).at("direct_response")?);
            Action::Direct
        }
        Some(route::Action::FilterAction(_)) => {
            return Err(Rejection::unsupported("filter_action"));
        }
        Some(route::Action::NonForwardingAction(_)) => {
            return Err(Rejection::unsupported("non_forwarding_action"));
        }
        None => {
            return Err(Rejection::new(
                "route",
                "needs route, redirect or direct_response",
            ));
        }
    };
    let ops = Ops::of(
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
    )?;
    Ok(RouteDraft { json, action, ops })
}

/// The router's `match` object, and whether the path match is a prefix (what a rewrite needs).
fn route_match(m: &RouteMatch) -> Result<(Map<String, Value>, bool), Rejection> {
    let RouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = m;
    unsupported!(
        runtime_fraction,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
    );
    keep_bool(case_sensitive.as_ref(), true, "case_sensitive")?;
    let mut out = Map::new();
    let (path, prefix) = match path_specifier {
        Some(PathSpecifier::Prefix(p)) => (json!({ "prefix": p }), true),
        Some(PathSpecifier::Path(p)) => (json!({ "exact": p }), false),
        Some(PathSpecifier::SafeRegex(re)) => {
            (json!({ "regex": regex(re).at("safe_regex")? }), false)
        }
        Some(PathSpecifier::ConnectMatcher(_)) => {
            return Err(Rejection::unsupported("connect_matcher"));
        }
        Some(PathSpecifier::PathSeparatedPrefix(_)) => {
            return Err(Rejection::unsupported("path_separated_prefix"));
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err(Rejection::unsupported("path_match_policy"));
        }
        None => {
            return Err(Rejection::new(
                "prefix",
                "a match needs prefix, path or safe_regex",
            ));
        }
    };
    out.insert("path".into(), path);
    if !headers.is_empty() {
        let mut rules = Map::new();
        for (i, h) in headers.iter().enumerate() {
            let (name, rule) = header_matcher(h).at(format_args!("headers[{i}]"))?;
            if rules.insert(name.clone(), rule).is_some() {
                return Err(Rejection::new(
                    format!("headers[{i}]"),
                    format!("Weir takes one matcher per header: `{name}` has two"),
                ));
            }
        }
        out.insert("headers".into(), Value::Object(rules));
    }
    if !query_parameters.is_empty() {
        let mut rules = Map::new();
        for (i, q) in query_parameters.iter().enumerate() {
            let (name, rule) = query_matcher(q).at(format_args!("query_parameters[{i}]"))?;
            if rules.insert(name.clone(), rule).is_some() {
                return Err(Rejection::new(
                    format!("query_parameters[{i}]"),
                    format!("Weir takes one matcher per parameter: `{name}` has two"),
                ));
            }
        }
        out.insert("query".into(), Value::Object(rules));
    }
    Ok((out, prefix))
}

/// An Envoy regex (RE2, matching the whole input) as the router's search regex.
fn regex(re: &RegexMatcher) -> Result<String, Rejection> {
    let RegexMatcher { regex, engine_type } = re;
    if let Some(regex_matcher::EngineType::GoogleRe2(g)) = engine_type {
        let regex_matcher::GoogleRe2 { max_program_size } = g;
        unsupported!("google_re2."; max_program_size);
    }
    Ok(format!("^(?:{regex})$"))
}

fn header_matcher(h: &HeaderMatcher) -> Result<(String, Value), Rejection> {
    let HeaderMatcher {
        name,
        invert_match,
        treat_missing_header_as_empty,
        header_match_specifier,
    } = h;
    unsupported!(treat_missing_header_as_empty);
    if name.is_empty() {
        return Err(Rejection::new("name", "is required"));
    }
    let (key, value) = match header_match_specifier {
        // No specifier: the header is present (Envoy's rule); inverted, absent.
        None => {
            return Ok((
                name.to_ascii_lowercase(),
                json!({ "present": !*invert_match }),
            ));
        }
        Some(HeaderMatchSpecifier::PresentMatch(p)) => {
            return Ok((
                name.to_ascii_lowercase(),
                json!({ "present": *p != *invert_match }),
            ));
        }
        // The deprecated `exact_match: ""` matches any value of a present header in Envoy.
        Some(HeaderMatchSpecifier::ExactMatch(s)) if s.is_empty() => {
            if *invert_match {
                return Err(Rejection::new(
                    "invert_match",
                    "an inverted empty exact_match never matches in Envoy; Weir does not take it",
                ));
            }
            return Ok((name.to_ascii_lowercase(), json!({ "present": true })));
        }
        Some(HeaderMatchSpecifier::ExactMatch(s)) => ("exact", Value::from(s.as_str())),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => ("prefix", Value::from(s.as_str())),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => ("suffix", Value::from(s.as_str())),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => ("contains", Value::from(s.as_str())),
        Some(HeaderMatchSpecifier::SafeRegexMatch(re)) => {
            ("regex", Value::from(regex(re).at("safe_regex_match")?))
        }
        Some(HeaderMatchSpecifier::StringMatch(sm)) => {
            string_match(sm, &["exact", "prefix", "suffix", "contains", "safe_regex"])
                .at("string_match")?
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(Rejection::unsupported("range_match"));
        }
    };
    let mut rule = Map::new();
    rule.insert(key.into(), value);
    if *invert_match {
        rule.insert("invert".into(), Value::Bool(true));
    }
    Ok((name.to_ascii_lowercase(), Value::Object(rule)))
}

/// A `StringMatcher` as the router's `{kind: value}` pair, for the kinds `allowed` lists (a
/// regex is anchored: Envoy's match the whole value).
fn string_match(m: &StringMatcher, allowed: &[&str]) -> Result<(&'static str, Value), Rejection> {
    let StringMatcher {
        ignore_case,
        match_pattern,
    } = m;
    unsupported!(ignore_case);
    let Some(p) = match_pattern else {
        return Err(Rejection::new("", "needs a pattern"));
    };
    let field = string_matcher_field(p);
    if !allowed.contains(&field) {
        return Err(Rejection::new(
            field,
            format!("Weir matches here by {}", allowed.join(", ")),
        ));
    }
    Ok(match p {
        MatchPattern::Exact(s) => ("exact", Value::from(s.as_str())),
        MatchPattern::Prefix(s) => ("prefix", Value::from(s.as_str())),
        MatchPattern::Suffix(s) => ("suffix", Value::from(s.as_str())),
        MatchPattern::Contains(s) => ("contains", Value::from(s.as_str())),
        MatchPattern::SafeRegex(re) => ("regex", Value::from(regex(re).at("safe_regex")?)),
        MatchPattern::Custom(_) => return Err(Rejection::unsupported("custom")),
    })
}

fn query_matcher(q: &QueryParameterMatcher) -> Result<(String, Value), Rejection> {
    let QueryParameterMatcher {
        name,
        query_parameter_match_specifier,
    } = q;
    if name.is_empty() {
        return Err(Rejection::new("name", "is required"));
    }
    let rule = match query_parameter_match_specifier {
        None | Some(QueryParameterMatchSpecifier::PresentMatch(true)) => json!({ "present": true }),
        Some(QueryParameterMatchSpecifier::PresentMatch(false)) => {
            return Err(Rejection::new(
                "present_match",
                "Weir matches a parameter's presence, not its absence",
            ));
        }
        Some(QueryParameterMatchSpecifier::StringMatch(sm)) => {
            match string_match(sm, &["exact", "safe_regex"]).at("string_match")? {
                ("exact", v) => v,
                (kind, v) => json!({ kind: v }),
            }
        }
    };
    Ok((name.clone(), rule))
}

/// `to`, `rewrite`, `timeout`, `retries`, `per_try_timeout` of a forwarding route.
fn forward(
    a: &RouteAction,
    prefix_match: bool,
    out: &mut Map<String, Value>,
) -> Result<(), Rejection> {
    let RouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = a;
    unsupported!(
        cluster_not_found_response_code,
        metadata_match,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
    );
    if let Some(h) = host_rewrite_specifier {
        use envoy_types::pb::envoy::config::route::v3::route_action::HostRewriteSpecifier as H;
        return Err(Rejection::unsupported(match h {
            H::HostRewriteLiteral(_) => "host_rewrite_literal",
            H::AutoHostRewrite(_) => "auto_host_rewrite",
            H::HostRewriteHeader(_) => "host_rewrite_header",
            H::HostRewritePathRegex(_) => "host_rewrite_path_regex",
            H::HostRewrite(_) => "host_rewrite",
        }));
    }
    let to = match cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => Value::from(c.as_str()),
        Some(ClusterSpecifier::Cluster(_)) | None => {
            return Err(Rejection::new("cluster", "is required"));
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => weighted(w).at("weighted_clusters")?,
        Some(ClusterSpecifier::ClusterHeader(_)) => {
            return Err(Rejection::unsupported("cluster_header"));
        }
        Some(ClusterSpecifier::ClusterSpecifierPlugin(_)) => {
            return Err(Rejection::unsupported("cluster_specifier_plugin"));
        }
        Some(ClusterSpecifier::InlineClusterSpecifierPlugin(_)) => {
            return Err(Rejection::unsupported("inline_cluster_specifier_plugin"));
        }
    };
    out.insert("to".into(), to);
    if !prefix_rewrite.is_empty() {
        if !prefix_match {
            return Err(Rejection::new(
                "prefix_rewrite",
                "Weir rewrites a matched prefix: the route needs a prefix match",
            ));
        }
        out.insert("rewrite".into(), json!({ "prefix": prefix_rewrite }));
    }
    let timeout = match timeout {
        Some(d) => duration(d).at("timeout")?,
        None => ENVOY_ROUTE_TIMEOUT,
    };
    out.insert("timeout".into(), Value::from(text(timeout)));
    let (retries, per_try) = match retry_policy {
        Some(p) => retries(p).at("retry_policy")?,
        None => (0, None),
    };
    out.insert("retries".into(), Value::from(retries));
    if let Some(d) = per_try {
        out.insert("per_try_timeout".into(), Value::from(text(d)));
    }
    Ok(())
}

/// A duration in the router's grammar (`15s`, `250ms`, `0s`).
fn text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn weighted(w: &WeightedCluster) -> Result<Value, Rejection> {
    let WeightedCluster {
        clusters,
        total_weight,
        runtime_key_prefix,
        random_value_specifier,
    } = w;
    unsupported!(runtime_key_prefix, random_value_specifier);
    let mut targets = Vec::with_capacity(clusters.len());
    let mut sum: u64 = 0;
    for (i, c) in clusters.iter().enumerate() {
        let ClusterWeight {
            name,
            cluster_header,
            weight,
            metadata_match,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            host_rewrite_specifier,
        } = c;
        let p = format!("clusters[{i}]");
        let check = || -> Result<(), Rejection> {
            unsupported!(
                cluster_header,
                metadata_match,
                request_headers_to_add,
                request_headers_to_remove,
                response_headers_to_add,
                response_headers_to_remove,
                typed_per_filter_config,
                host_rewrite_specifier,
            );
            if name.is_empty() {
                return Err(Rejection::new("name", "is required"));
            }
            Ok(())
        };
        check().at(&p)?;
        // An unset weight is 0 in Envoy.
        let weight = weight.as_ref().map_or(0, |w| w.value);
        sum += u64::from(weight);
        targets.push(json!({ "cluster": name, "weight": weight }));
    }
    if sum == 0 {
        return Err(Rejection::new("clusters", "the weights sum to 0"));
    }
    if total_weight
        .as_ref()
        .is_some_and(|t| u64::from(t.value) != sum)
    {
        return Err(Rejection::new(
            "total_weight",
            format!("must equal the sum of the weights ({sum})"),
        ));
    }
    Ok(Value::Array(targets))
}

/// `retries` and `per_try_timeout` from a route's retry policy.
fn retries(p: &RetryPolicy) -> Result<(u32, Option<Duration>), Rejection> {
    let RetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    } = p;
    unsupported!(
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    );
    let mut any = false;
    for cond in retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if !RETRY_ON.contains(&cond) {
            return Err(Rejection::new(
                "retry_on",
                format!(
                    "`{cond}`: Weir's retry conditions are set per cluster; a route may ask for \
                     {} (its defaults)",
                    RETRY_ON.join(", ")
                ),
            ));
        }
        any = true;
    }
    if !any {
        // No condition: Envoy never retries.
        return Ok((0, None));
    }
    let n = num_retries.as_ref().map_or(1, |v| v.value);
    let per_try = per_try_timeout
        .as_ref()
        .map(duration)
        .transpose()
        .at("per_try_timeout")?
        .filter(|d| !d.is_zero());
    Ok((n, per_try))
}

fn redirect(r: &RedirectAction, prefix_match: bool) -> Result<Value, Rejection> {
    let RedirectAction {
        host_redirect,
        port_redirect,
        response_code,
        strip_query,
        scheme_rewrite_specifier,
        path_rewrite_specifier,
    } = r;
    let status = match RedirectResponseCode::try_from(*response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => 301,
        Ok(RedirectResponseCode::Found) => 302,
        Ok(RedirectResponseCode::SeeOther) => 303,
        Ok(RedirectResponseCode::TemporaryRedirect) => 307,
        Ok(RedirectResponseCode::PermanentRedirect) => 308,
        Err(_) => return Err(Rejection::new("response_code", "is not a known code")),
    };
    let mut out = Map::new();
    match scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => {
            out.insert("scheme".into(), Value::from("https"));
        }
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if !s.is_empty() => {
            out.insert("scheme".into(), Value::from(s.as_str()));
        }
        _ => {}
    }
    if !host_redirect.is_empty() {
        out.insert("host".into(), Value::from(host_redirect.as_str()));
    }
    if *port_redirect != 0 {
        let port = u16::try_from(*port_redirect)
            .map_err(|_| Rejection::new("port_redirect", "must be between 1 and 65535"))?;
        out.insert("port".into(), Value::from(port));
    }
    match path_rewrite_specifier {
        None => {}
        Some(PathRewriteSpecifier::PathRedirect(p)) => {
            out.insert("path".into(), Value::from(p.as_str()));
        }
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => {
            if !prefix_match {
                return Err(Rejection::new(
                    "prefix_rewrite",
                    "Weir rewrites a matched prefix: the route needs a prefix match",
                ));
            }
            out.insert("prefix".into(), Value::from(p.as_str()));
        }
        Some(PathRewriteSpecifier::RegexRewrite(_)) => {
            return Err(Rejection::unsupported("regex_rewrite"));
        }
        Some(PathRewriteSpecifier::PathRewrite(_)) => {
            return Err(Rejection::unsupported("path_rewrite"));
        }
    }
    if *strip_query {
        out.insert("strip_query".into(), Value::Bool(true));
    }
    out.insert("status".into(), Value::from(status));
    Ok(Value::Object(out))
}

fn direct(d: &DirectResponseAction, max_body: u32) -> Result<Value, Rejection> {
    let DirectResponseAction {
        status,
        body,
        body_format,
    } = d;
    unsupported!(body_format);
    if !(200..600).contains(status) {
        return Err(Rejection::new("status", "must be between 200 and 599"));
    }
    let body = match body {
        None => String::new(),
        Some(ds) => inline_body(ds).at("body")?,
    };
    if body.len() > max_body as usize {
        return Err(Rejection::new(
            "body",
            format!(
                "is {} bytes, more than max_direct_response_body_size_bytes ({max_body})",
                body.len()
            ),
        ));
    }
    Ok(json!({ "status": status, "body": body }))
}

fn inline_body(ds: &DataSource) -> Result<String, Rejection> {
    let DataSource {
        watched_directory,
        specifier,
    } = ds;
    unsupported!(watched_directory);
    match specifier {
        None => Ok(String::new()),
        Some(data_source::Specifier::InlineString(s)) => Ok(s.clone()),
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
            .map_err(|_| Rejection::new("inline_bytes", "Weir's direct bodies are UTF-8 text")),
        Some(data_source::Specifier::Filename(_)) => Err(Rejection::new(
            "filename",
            "is not supported by Weir: give the body inline",
        )),
        Some(data_source::Specifier::EnvironmentVariable(_)) => {
            Err(Rejection::unsupported("environment_variable"))
        }
    }
}

/// One level's header edits, in order, with fields relative to that level's message.
#[derive(Debug, Default)]
struct Ops {
    request: Vec<Op>,
    response: Vec<Op>,
}

#[derive(Debug)]
struct Op {
    /// Lower-cased.
    name: String,
    kind: OpKind,
    field: String,
}

#[derive(Debug)]
enum OpKind {
    Remove,
    Append(String),
    Overwrite(String),
}

impl Ops {
    fn of(
        request_add: &[HeaderValueOption],
        request_remove: &[String],
        response_add: &[HeaderValueOption],
        response_remove: &[String],
    ) -> Result<Self, Rejection> {
        Ok(Self {
            request: side(request_add, request_remove, "request")?,
            response: side(response_add, response_remove, "response")?,
        })
    }
}

/// Envoy applies a level's removals, then its additions.
fn side(add: &[HeaderValueOption], remove: &[String], which: &str) -> Result<Vec<Op>, Rejection> {
    let mut ops = Vec::with_capacity(add.len() + remove.len());
    for (i, name) in remove.iter().enumerate() {
        let field = format!("{which}_headers_to_remove[{i}]");
        if name.is_empty() {
            return Err(Rejection::new(field, "is empty"));
        }
        ops.push(Op {
            name: name.to_ascii_lowercase(),
            kind: OpKind::Remove,
            field,
        });
    }
    for (i, o) in add.iter().enumerate() {
        let field = format!("{which}_headers_to_add[{i}]");
        if let Some((name, kind)) = header_option(o).at(&field)? {
            ops.push(Op { name, kind, field });
        }
    }
    Ok(ops)
}

/// One header addition; `None` when Envoy drops it (an empty value without
/// `keep_empty_value`).
fn header_option(o: &HeaderValueOption) -> Result<Option<(String, OpKind)>, Rejection> {
    let HeaderValueOption {
        header,
        append,
        append_action,
        keep_empty_value,
    } = o;
    let HeaderValue {
        key,
        value,
        raw_value,
    } = header
        .as_ref()
        .ok_or_else(|| Rejection::new("header", "is required"))?;
    if key.is_empty() {
        return Err(Rejection::new("header.key", "is required"));
    }
    let value = if raw_value.is_empty() {
        value.clone()
    } else if !value.is_empty() {
        return Err(Rejection::new(
            "header.raw_value",
            "set value or raw_value, not both",
        ));
    } else {
        String::from_utf8(raw_value.clone())
            .map_err(|_| Rejection::new("header.raw_value", "Weir's header values are text"))?
    };
    let value = unescape(&value).ok_or_else(|| {
        Rejection::new(
            "header.value",
            "Envoy's %COMMAND% substitutions are not supported by Weir (write %% for a %)",
        )
    })?;
    let overwrite = match (append, HeaderAppendAction::try_from(*append_action)) {
        (Some(a), Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => !a.value,
        (Some(_), _) => {
            return Err(Rejection::new(
                "append",
                "set append_action only (append is deprecated)",
            ));
        }
        (None, Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => false,
        (None, Ok(HeaderAppendAction::OverwriteIfExistsOrAdd)) => true,
        (None, _) => {
            return Err(Rejection::new(
                "append_action",
                "Weir appends or overwrites: give APPEND_IF_EXISTS_OR_ADD or \
                 OVERWRITE_IF_EXISTS_OR_ADD",
            ));
        }
    };
    if value.is_empty() && !*keep_empty_value {
        return Ok(None);
    }
    let kind = if overwrite {
        OpKind::Overwrite(value)
    } else {
        OpKind::Append(value)
    };
    Ok(Some((key.to_ascii_lowercase(), kind)))
}

/// `%%` → `%`; `None` when a lone `%` starts one of Envoy's substitutions.
fn unescape(v: &str) -> Option<String> {
    if !v.contains('%') {
        return Some(v.to_owned());
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '%' && chars.next() != Some('%') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

/// The edits Weir applies in one step (removals, then additions), with each addition's
/// absolute field for a rejection.
#[derive(Default)]
struct Edits {
    add: BTreeMap<String, (String, String)>,
    remove: BTreeSet<String>,
}

impl Edits {
    /// Applies levels in Envoy's order; `prefix` is each level's absolute path.
    fn merge<'a>(
        levels: &[(&'a Ops, &str)],
        side: impl Fn(&'a Ops) -> &'a [Op],
    ) -> Result<Self, Rejection> {
        let mut e = Self::default();
        for (ops, prefix) in levels {
            for op in side(ops) {
                let field = if prefix.is_empty() {
                    op.field.clone()
                } else {
                    format!("{prefix}.{}", op.field)
                };
                match &op.kind {
                    OpKind::Remove => {
                        e.add.remove(&op.name);
                        e.remove.insert(op.name.clone());
                    }
                    OpKind::Append(v) => {
                        if let Some((_, first)) = e.add.get(&op.name) {
                            return Err(Rejection::new(
                                field,
                                format!(
                                    "`{}` is added at {first} already: Weir adds one value \
                                     per header",
                                    op.name
                                ),
                            ));
                        }
                        e.add.insert(op.name.clone(), (v.clone(), field));
                    }
                    OpKind::Overwrite(v) => {
                        e.remove.insert(op.name.clone());
                        e.add.insert(op.name.clone(), (v.clone(), field));
                    }
                }
            }
        }
        Ok(e)
    }

    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    fn adds(&self) -> Map<String, Value> {
        self.add
            .iter()
            .map(|(k, (v, _))| (k.clone(), Value::from(v.as_str())))
            .collect()
    }

    /// The router's `{add, remove}`.
    fn json(&self) -> Value {
        json!({ "add": self.adds(), "remove": self.remove })
    }
}

/// A route with the header edits of every level merged in.
fn finish(
    mut json: Map<String, Value>,
    action: Action,
    levels: &[(&Ops, &str)],
) -> Result<Value, Rejection> {
    let response = Edits::merge(levels, |o| &o.response)?;
    match action {
        Action::Forward => {
            let request = Edits::merge(levels, |o| &o.request)?;
            if !request.is_empty() {
                json.insert("request_headers".into(), request.json());
            }
            if !response.is_empty() {
                json.insert("response_headers".into(), response.json());
            }
        }
        // A local reply forwards nothing: request edits do not apply; it starts with no
        // headers, so removals do nothing.
        Action::Direct => {
            if let Some(Value::Object(d)) = json.get_mut("direct")
                && !response.add.is_empty()
            {
                d.insert("headers".into(), Value::Object(response.adds()));
            }
        }
        Action::Redirect => {
            if let Some((_, field)) = response.add.values().next() {
                return Err(Rejection::new(
                    field.clone(),
                    "applies to a redirect, which carries no added headers in Weir",
                ));
            }
        }
    }
    Ok(Value::Object(json))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_action};
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
    use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, UInt32Value};

    use super::*;

    fn prefix(p: &str) -> Option<RouteMatch> {
        Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(p.into())),
            ..Default::default()
        })
    }

    fn to(cluster: &str) -> RouteAction {
        RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        }
    }

    fn forward_route(m: Option<RouteMatch>, a: RouteAction) -> Route {
        Route {
            r#match: m,
            action: Some(route::Action::Route(a)),
            ..Default::default()
        }
    }

    fn host(routes: Vec<Route>) -> VirtualHost {
        VirtualHost {
            name: "web".into(),
            domains: vec!["web.example.com".into(), "*.web.example.com".into()],
            routes,
            ..Default::default()
        }
    }

    fn config(hosts: Vec<VirtualHost>) -> RouteConfiguration {
        RouteConfiguration {
            name: "routes-8080".into(),
            virtual_hosts: hosts,
            ..Default::default()
        }
    }

    /// The first route of the first virtual host.
    fn first(rc: &RouteConfiguration) -> Value {
        route_config(rc).unwrap()["virtual_hosts"][0]["routes"][0].clone()
    }

    fn one(r: Route) -> Value {
        first(&config(vec![host(vec![r])]))
    }

    fn refused(r: Route) -> String {
        route_config(&config(vec![host(vec![r])]))
            .unwrap_err()
            .field
    }

    fn secs(s: i64) -> Option<PbDuration> {
        Some(PbDuration {
            seconds: s,
            nanos: 0,
        })
    }

    fn regex(re: &str) -> RegexMatcher {
        RegexMatcher {
            regex: re.into(),
            ..Default::default()
        }
    }

    #[test]
    fn virtual_hosts_and_a_forwarding_route() {
        let cluster = "outbound|8080||web.prod.svc.cluster.local";
        let rc = RouteConfiguration {
            ignore_port_in_host_matching: true,
            validate_clusters: Some(BoolValue { value: true }),
            ..config(vec![host(vec![forward_route(prefix("/"), to(cluster))])])
        };
        assert_eq!(
            route_config(&rc).unwrap(),
            json!({
                "virtual_hosts": [{
                    "name": "web",
                    "domains": ["web.example.com", "*.web.example.com"],
                    "routes": [{
                        "match": {"path": {"prefix": "/"}},
                        "to": cluster,
                        "timeout": "15s",
                        "retries": 0,
                    }],
                }],
                "ignore_port": true,
            })
        );
    }

    #[test]
    fn path_header_and_query_matchers() {
        let m = RouteMatch {
            path_specifier: Some(PathSpecifier::SafeRegex(regex("/api/v[0-9]+/.*"))),
            headers: vec![
                HeaderMatcher {
                    name: "X-Canary".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                        StringMatcher {
                            match_pattern: Some(MatchPattern::Exact("1".into())),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
                HeaderMatcher {
                    name: "x-env".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::PrefixMatch("prod".into())),
                    invert_match: true,
                    ..Default::default()
                },
                HeaderMatcher {
                    name: "x-trace".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
                    invert_match: true,
                    ..Default::default()
                },
                HeaderMatcher {
                    name: "x-user".into(),
                    ..Default::default()
                },
                HeaderMatcher {
                    name: "x-any".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch(String::new())),
                    ..Default::default()
                },
                HeaderMatcher {
                    name: "x-id".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                        StringMatcher {
                            match_pattern: Some(MatchPattern::SafeRegex(regex("[a-f0-9]+"))),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            ],
            query_parameters: vec![
                QueryParameterMatcher {
                    name: "debug".into(),
                    query_parameter_match_specifier: Some(
                        QueryParameterMatchSpecifier::StringMatch(StringMatcher {
                            match_pattern: Some(MatchPattern::Exact("1".into())),
                            ..Default::default()
                        }),
                    ),
                },
                QueryParameterMatcher {
                    name: "page".into(),
                    query_parameter_match_specifier: Some(
                        QueryParameterMatchSpecifier::StringMatch(StringMatcher {
                            match_pattern: Some(MatchPattern::SafeRegex(regex("[0-9]+"))),
                            ..Default::default()
                        }),
                    ),
                },
                QueryParameterMatcher {
                    name: "q".into(),
                    query_parameter_match_specifier: None,
                },
            ],
            ..Default::default()
        };
        let r = one(forward_route(Some(m), to("api")));
        assert_eq!(
            r["match"],
            json!({
                "path": {"regex": "^(?:/api/v[0-9]+/.*)$"},
                "headers": {
                    "x-canary": {"exact": "1"},
                    "x-env": {"prefix": "prod", "invert": true},
                    "x-trace": {"present": false},
                    "x-user": {"present": true},
                    "x-any": {"present": true},
                    "x-id": {"regex": "^(?:[a-f0-9]+)$"},
                },
                "query": {
                    "debug": "1",
                    "page": {"regex": "^(?:[0-9]+)$"},
                    "q": {"present": true},
                },
            })
        );
        let exact = RouteMatch {
            path_specifier: Some(PathSpecifier::Path("/healthz".into())),
            ..Default::default()
        };
        assert_eq!(
            one(forward_route(Some(exact), to("a")))["match"]["path"],
            json!({"exact": "/healthz"})
        );
    }

    #[test]
    fn matcher_refusals_name_the_field() {
        let insensitive = forward_route(
            Some(RouteMatch {
                case_sensitive: Some(BoolValue { value: false }),
                ..prefix("/").unwrap()
            }),
            to("a"),
        );
        let rc = config(vec![host(vec![
            forward_route(prefix("/a"), to("a")),
            insensitive,
        ])]);
        assert_eq!(
            route_config(&rc).unwrap_err().field,
            "virtual_hosts[0].routes[1].match.case_sensitive"
        );
        let ignore_case = HeaderMatcher {
            name: "x".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                ignore_case: true,
                match_pattern: Some(MatchPattern::Exact("a".into())),
            })),
            ..Default::default()
        };
        let with_headers = |hs: Vec<HeaderMatcher>| {
            forward_route(
                Some(RouteMatch {
                    headers: hs,
                    ..prefix("/").unwrap()
                }),
                to("a"),
            )
        };
        assert_eq!(
            refused(with_headers(vec![ignore_case])),
            "virtual_hosts[0].routes[0].match.headers[0].string_match.ignore_case"
        );
        let twice = HeaderMatcher {
            name: "x".into(),
            ..Default::default()
        };
        assert_eq!(
            refused(with_headers(vec![twice.clone(), twice])),
            "virtual_hosts[0].routes[0].match.headers[1]"
        );
        let range = HeaderMatcher {
            name: "x".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::RangeMatch(Default::default())),
            ..Default::default()
        };
        assert_eq!(
            refused(with_headers(vec![range])),
            "virtual_hosts[0].routes[0].match.headers[0].range_match"
        );
        let query_prefix = forward_route(
            Some(RouteMatch {
                query_parameters: vec![QueryParameterMatcher {
                    name: "q".into(),
                    query_parameter_match_specifier: Some(
                        QueryParameterMatchSpecifier::StringMatch(StringMatcher {
                            match_pattern: Some(MatchPattern::Prefix("a".into())),
                            ..Default::default()
                        }),
                    ),
                }],
                ..prefix("/").unwrap()
            }),
            to("a"),
        );
        assert_eq!(
            refused(query_prefix),
            "virtual_hosts[0].routes[0].match.query_parameters[0].string_match.prefix"
        );
        let separated = forward_route(
            Some(RouteMatch {
                path_specifier: Some(PathSpecifier::PathSeparatedPrefix("/a".into())),
                ..Default::default()
            }),
            to("a"),
        );
        assert_eq!(
            refused(separated),
            "virtual_hosts[0].routes[0].match.path_separated_prefix"
        );
        let runtime = forward_route(
            Some(RouteMatch {
                runtime_fraction: Some(Default::default()),
                ..prefix("/").unwrap()
            }),
            to("a"),
        );
        assert_eq!(
            refused(runtime),
            "virtual_hosts[0].routes[0].match.runtime_fraction"
        );
    }

    #[test]
    fn route_actions_timeouts_retries_and_rewrites() {
        let a = RouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: vec![
                    ClusterWeight {
                        name: "v1".into(),
                        weight: Some(UInt32Value { value: 90 }),
                        ..Default::default()
                    },
                    ClusterWeight {
                        name: "v2".into(),
                        weight: Some(UInt32Value { value: 10 }),
                        ..Default::default()
                    },
                ],
                total_weight: Some(UInt32Value { value: 100 }),
                ..Default::default()
            })),
            prefix_rewrite: "/v2/".into(),
            timeout: Some(PbDuration {
                seconds: 2,
                nanos: 500_000_000,
            }),
            retry_policy: Some(RetryPolicy {
                retry_on: "connect-failure,reset".into(),
                per_try_timeout: secs(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = one(forward_route(prefix("/api/"), a.clone()));
        assert_eq!(
            r,
            json!({
                "match": {"path": {"prefix": "/api/"}},
                "to": [{"cluster": "v1", "weight": 90}, {"cluster": "v2", "weight": 10}],
                "rewrite": {"prefix": "/v2/"},
                "timeout": "2s 500ms",
                // Envoy's num_retries default, once a policy names a condition.
                "retries": 1,
                "per_try_timeout": "1s",
            })
        );
        let no_timeout = RouteAction {
            timeout: Some(PbDuration::default()),
            ..to("a")
        };
        assert_eq!(one(forward_route(prefix("/"), no_timeout))["timeout"], "0s");
        let three = RouteAction {
            retry_policy: Some(RetryPolicy {
                retry_on: "refused-stream".into(),
                num_retries: Some(UInt32Value { value: 3 }),
                ..Default::default()
            }),
            ..to("a")
        };
        assert_eq!(one(forward_route(prefix("/"), three))["retries"], 3);
        let five_xx = RouteAction {
            retry_policy: Some(RetryPolicy {
                retry_on: "5xx,reset".into(),
                ..Default::default()
            }),
            ..to("a")
        };
        let r = route_config(&config(vec![host(vec![forward_route(
            prefix("/"),
            five_xx,
        )])]))
        .unwrap_err();
        assert_eq!(
            r.field,
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on"
        );
        assert!(r.message.starts_with("`5xx`"), "{r}");
        let exact = Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Path("/a".into())),
            ..Default::default()
        });
        assert_eq!(
            refused(forward_route(exact, a.clone())),
            "virtual_hosts[0].routes[0].route.prefix_rewrite"
        );
        let hashed = RouteAction {
            hash_policy: vec![Default::default()],
            ..to("a")
        };
        assert_eq!(
            refused(forward_route(prefix("/"), hashed)),
            "virtual_hosts[0].routes[0].route.hash_policy"
        );
        let header = RouteAction {
            cluster_specifier: Some(ClusterSpecifier::ClusterHeader("x-cluster".into())),
            ..Default::default()
        };
        assert_eq!(
            refused(forward_route(prefix("/"), header)),
            "virtual_hosts[0].routes[0].route.cluster_header"
        );
        let host_rewrite = RouteAction {
            host_rewrite_specifier: Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
                "b".into(),
            )),
            ..to("a")
        };
        assert_eq!(
            refused(forward_route(prefix("/"), host_rewrite)),
            "virtual_hosts[0].routes[0].route.host_rewrite_literal"
        );
        let mut wrong_total = a;
        if let Some(ClusterSpecifier::WeightedClusters(w)) = &mut wrong_total.cluster_specifier {
            w.total_weight = Some(UInt32Value { value: 50 });
        }
        assert_eq!(
            refused(forward_route(prefix("/api/"), wrong_total)),
            "virtual_hosts[0].routes[0].route.weighted_clusters.total_weight"
        );
    }

    #[test]
    fn redirects_and_direct_responses() {
        let redirect = Route {
            r#match: prefix("/old/"),
            action: Some(route::Action::Redirect(RedirectAction {
                scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
                host_redirect: "new.example.com".into(),
                port_redirect: 8443,
                path_rewrite_specifier: Some(PathRewriteSpecifier::PrefixRewrite("/new/".into())),
                strip_query: true,
                response_code: RedirectResponseCode::Found as i32,
            })),
            ..Default::default()
        };
        assert_eq!(
            one(redirect)["redirect"],
            json!({
                "scheme": "https",
                "host": "new.example.com",
                "port": 8443,
                "prefix": "/new/",
                "strip_query": true,
                "status": 302,
            })
        );
        let direct = |body: Option<DataSource>| Route {
            r#match: prefix("/"),
            action: Some(route::Action::DirectResponse(DirectResponseAction {
                status: 503,
                body,
                ..Default::default()
            })),
            ..Default::default()
        };
        let inline = Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString("down".into())),
            ..Default::default()
        });
        assert_eq!(
            one(direct(inline))["direct"],
            json!({"status": 503, "body": "down"})
        );
        let from_file = Some(DataSource {
            specifier: Some(data_source::Specifier::Filename("/etc/body".into())),
            ..Default::default()
        });
        assert_eq!(
            refused(direct(from_file)),
            "virtual_hosts[0].routes[0].direct_response.body.filename"
        );
        let big = Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString("x".repeat(4097))),
            ..Default::default()
        });
        assert_eq!(
            refused(direct(big)),
            "virtual_hosts[0].routes[0].direct_response.body"
        );
        let non_forwarding = Route {
            r#match: prefix("/"),
            action: Some(route::Action::NonForwardingAction(Default::default())),
            ..Default::default()
        };
        assert_eq!(
            refused(non_forwarding),
            "virtual_hosts[0].routes[0].non_forwarding_action"
        );
    }

    fn add(k: &str, v: &str, action: HeaderAppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        }
    }

    #[test]
    fn header_edits_merge_in_envoys_order() {
        use HeaderAppendAction::{AppendIfExistsOrAdd as Append, OverwriteIfExistsOrAdd as Set};
        let r = Route {
            request_headers_to_add: vec![add("X-Route", "r", Append), add("x-level", "route", Set)],
            response_headers_to_remove: vec!["server".into()],
            ..forward_route(prefix("/"), to("a"))
        };
        let vh = VirtualHost {
            request_headers_to_add: vec![add("x-level", "host", Set)],
            request_headers_to_remove: vec!["x-route".into()],
            response_headers_to_add: vec![add("x-pct", "100%%", Append)],
            ..host(vec![r.clone()])
        };
        let rc = RouteConfiguration {
            request_headers_to_add: vec![add("x-config", "c", Append)],
            ..config(vec![vh.clone()])
        };
        let out = first(&rc);
        // The virtual host's removal of x-route comes after the route added it; its overwrite of
        // x-level comes after the route's.
        assert_eq!(
            out["request_headers"],
            json!({
                "add": {"x-level": "host", "x-config": "c"},
                "remove": ["x-level", "x-route"],
            })
        );
        assert_eq!(
            out["response_headers"],
            json!({"add": {"x-pct": "100%"}, "remove": ["server"]})
        );
        let specific = RouteConfiguration {
            most_specific_header_mutations_wins: true,
            ..rc
        };
        assert_eq!(
            first(&specific)["request_headers"]["add"],
            json!({"x-level": "route", "x-config": "c", "x-route": "r"})
        );
        // Two appends of one header cannot be one value.
        let twice = RouteConfiguration {
            request_headers_to_add: vec![add("x-level", "config", Append)],
            ..config(vec![vh])
        };
        let e = route_config(&twice).unwrap_err();
        assert_eq!(e.field, "request_headers_to_add[0]");
        assert!(
            e.message
                .contains("virtual_hosts[0].request_headers_to_add[0]"),
            "{e}"
        );
        let variable = Route {
            request_headers_to_add: vec![add("x-client", "%DOWNSTREAM_REMOTE_ADDRESS%", Append)],
            ..forward_route(prefix("/"), to("a"))
        };
        assert_eq!(
            refused(variable),
            "virtual_hosts[0].routes[0].request_headers_to_add[0].header.value"
        );
        let absent = Route {
            request_headers_to_add: vec![add("x", "v", HeaderAppendAction::AddIfAbsent)],
            ..forward_route(prefix("/"), to("a"))
        };
        assert_eq!(
            refused(absent),
            "virtual_hosts[0].routes[0].request_headers_to_add[0].append_action"
        );
        // The deprecated `append: false` is an overwrite.
        let old = Route {
            request_headers_to_add: vec![HeaderValueOption {
                append: Some(BoolValue { value: false }),
                ..add("x", "v", Append)
            }],
            ..forward_route(prefix("/"), to("a"))
        };
        assert_eq!(
            one(old)["request_headers"],
            json!({"add": {"x": "v"}, "remove": ["x"]})
        );
    }

    #[test]
    fn local_replies_take_response_headers() {
        let direct = Route {
            r#match: prefix("/"),
            action: Some(route::Action::DirectResponse(DirectResponseAction {
                status: 200,
                ..Default::default()
            })),
            ..Default::default()
        };
        let vh = VirtualHost {
            response_headers_to_add: vec![add(
                "cache-control",
                "no-store",
                HeaderAppendAction::AppendIfExistsOrAdd,
            )],
            request_headers_to_add: vec![add(
                "x-req",
                "1",
                HeaderAppendAction::AppendIfExistsOrAdd,
            )],
            ..host(vec![direct])
        };
        assert_eq!(
            first(&config(vec![vh.clone()]))["direct"],
            json!({"status": 200, "body": "", "headers": {"cache-control": "no-store"}})
        );
        let redirect = Route {
            r#match: prefix("/"),
            action: Some(route::Action::Redirect(RedirectAction {
                scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
                ..Default::default()
            })),
            ..Default::default()
        };
        let with_redirect = VirtualHost {
            routes: vec![redirect],
            ..vh
        };
        assert_eq!(
            route_config(&config(vec![with_redirect]))
                .unwrap_err()
                .field,
            "virtual_hosts[0].response_headers_to_add[0]"
        );
    }

    #[test]
    fn configuration_and_virtual_host_refusals() {
        let cors = VirtualHost {
            cors: Some(Default::default()),
            ..host(vec![])
        };
        assert_eq!(
            route_config(&config(vec![cors])).unwrap_err().field,
            "virtual_hosts[0].cors"
        );
        let tls = VirtualHost {
            require_tls: virtual_host::TlsRequirementType::All as i32,
            ..host(vec![])
        };
        assert_eq!(
            route_config(&config(vec![tls])).unwrap_err().field,
            "virtual_hosts[0].require_tls"
        );
        let no_domains = VirtualHost {
            domains: vec![],
            ..host(vec![])
        };
        assert_eq!(
            route_config(&config(vec![no_domains])).unwrap_err().field,
            "virtual_hosts[0].domains"
        );
        let middle = VirtualHost {
            domains: vec!["a.*.com".into()],
            ..host(vec![])
        };
        assert_eq!(
            route_config(&config(vec![middle])).unwrap_err().field,
            "virtual_hosts[0].domains[0]"
        );
        let again = VirtualHost {
            name: "other".into(),
            domains: vec!["WEB.example.com".into()],
            ..host(vec![])
        };
        let e = route_config(&config(vec![host(vec![]), again])).unwrap_err();
        assert_eq!(e.field, "virtual_hosts[1].domains[0]");
        assert!(e.message.contains("virtual_hosts[0].domains[0]"), "{e}");
        let unnamed = VirtualHost {
            name: String::new(),
            ..host(vec![])
        };
        assert_eq!(
            route_config(&config(vec![unnamed])).unwrap_err().field,
            "virtual_hosts[0].name"
        );
        let vhds = RouteConfiguration {
            vhds: Some(Default::default()),
            ..config(vec![])
        };
        assert_eq!(route_config(&vhds).unwrap_err().field, "vhds");
        let per_filter = Route {
            typed_per_filter_config: [("envoy.filters.http.wasm".to_owned(), Default::default())]
                .into(),
            ..forward_route(prefix("/"), to("a"))
        };
        assert_eq!(
            refused(per_filter),
            "virtual_hosts[0].routes[0].typed_per_filter_config"
        );
        // Names and stats are accepted.
        let labelled = Route {
            name: "r".into(),
            stat_prefix: "s".into(),
            decorator: Some(Default::default()),
            ..forward_route(prefix("/"), to("a"))
        };
        assert!(
            route_config(&config(vec![VirtualHost {
                virtual_clusters: vec![Default::default()],
                ..host(vec![labelled])
            }]))
            .is_ok()
        );
    }
}
