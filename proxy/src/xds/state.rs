//! What the client holds of each resource type (the accepted resources, as the server sent them,
//! with their versions), and the assembly of the control plane's whole part from it.
//!
//! Assembly follows Envoy's warming: an EDS cluster joins the configuration once its
//! `ClusterLoadAssignment` arrived, a listener once its `RouteConfiguration` and every filter
//! config it names by ECDS arrived; each waits at most `initial_fetch_timeout` from when it
//! first appeared, then joins without them (a cluster with no endpoints, a listener whose
//! routes match nothing). Each listener becomes a chain of its HTTP filters followed by the
//! stock router configured from its routes; routes from RDS become one router filter per route
//! configuration, shared by the listeners that name it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::Kind;
use super::sds::SdsDir;
use super::translate::secret::{SecretSpec, parse_sds_path};
use super::translate::{self, HttpFilterSpec, Rejection, RouteSource};
use crate::config::{DynamicParts, EndpointConfig, raw};

/// One accepted resource.
#[derive(Debug, Clone)]
pub struct Entry {
    pub version: String,
    pub resource: Any,
    /// What it means to Weir, translated once when it arrived.
    pub spec: Arc<Translated>,
    /// When it first appeared (its warming deadline counts from here).
    pub since: Instant,
}

/// A resource translated (see [`translate`]). Held once per resource behind an `Arc`, so the
/// size of the largest variant costs nothing per copy.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Translated {
    Cluster(translate::ClusterSpec),
    Endpoint(Vec<EndpointConfig>),
    Listener(translate::ListenerSpec),
    /// The router's configuration.
    Route(serde_json::Value),
    Secret(SecretSpec),
    /// A Wasm filter (ECDS).
    Extension(raw::Filter),
}

/// The accepted resources of every type, by name.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    pub kinds: [BTreeMap<String, Entry>; super::KINDS],
}

impl Cache {
    pub fn of(&self, kind: Kind) -> &BTreeMap<String, Entry> {
        &self.kinds[kind.index()]
    }

    pub fn of_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Entry> {
        &mut self.kinds[kind.index()]
    }
}

/// The control plane's part as the cache makes it now.
#[derive(Debug, Default)]
pub struct Assembly {
    pub parts: DynamicParts,
    /// Resources held back for what they depend on.
    pub warming: Vec<(Kind, String)>,
    /// When the first of them stops waiting.
    pub next_deadline: Option<Instant>,
    /// The names each named type is wanted by (what to subscribe to).
    pub wanted: BTreeMap<Kind, BTreeSet<String>>,
    /// The clusters in `parts` fed by each `ClusterLoadAssignment` name.
    pub eds_users: BTreeMap<String, Vec<String>>,
}

/// Decodes a resource of type `M` (the type URL was checked when it arrived).
pub fn decode<M: Message + Default>(any: &Any) -> Result<M, Rejection> {
    M::decode(any.value.as_slice()).map_err(|e| Rejection {
        field: String::new(),
        message: format!("cannot decode: {e}"),
    })
}

/// Checks one incoming resource on its own (its type, its decoding, its translation): what
/// can be refused before anything is applied. Returns the name the resource carries and its
/// translation.
pub fn check(kind: Kind, any: &Any) -> Result<(String, Translated), Rejection> {
    if any.type_url != kind.type_url() {
        return Err(Rejection {
            field: "type_url".into(),
            message: format!(
                "`{}` where `{}` was asked for",
                any.type_url,
                kind.type_url()
            ),
        });
    }
    Ok(match kind {
        Kind::Cluster => {
            let spec = translate::cluster(&decode::<Cluster>(any)?)?;
            (spec.name.clone(), Translated::Cluster(spec))
        }
        Kind::Endpoint => {
            let cla = decode::<ClusterLoadAssignment>(any)?;
            let eps = translate::load_assignment(&cla)?;
            (cla.cluster_name, Translated::Endpoint(eps))
        }
        Kind::Listener => {
            let spec = translate::listener(&decode::<Listener>(any)?)?;
            (spec.name.clone(), Translated::Listener(spec))
        }
        Kind::Route => {
            let rc = decode::<RouteConfiguration>(any)?;
            let config = translate::route_config(&rc)?;
            (rc.name, Translated::Route(config))
        }
        Kind::Secret => {
            let spec = translate::secret(&decode::<Secret>(any)?)?;
            (spec.name.clone(), Translated::Secret(spec))
        }
        Kind::Extension => {
            let tec = decode::<TypedExtensionConfig>(any)?;
            let typed = tec.typed_config.as_ref().ok_or_else(|| Rejection {
                field: "typed_config".into(),
                message: "is required".into(),
            })?;
            let filter = translate::wasm_filter(&tec.name, typed).map_err(|r| Rejection {
                field: format!("typed_config.{}", r.field),
                message: r.message,
            })?;
            (tec.name, Translated::Extension(filter))
        }
    })
}

/// The filter name of a route configuration's router, and of an ECDS filter config.
fn rds_filter(name: &str) -> String {
    format!("rds/{name}")
}

fn ecds_filter(name: &str) -> String {
    format!("ecds/{name}")
}

/// Assembles the control plane's part from `cache`. `timeout` is `initial_fetch_timeout`;
/// `sds` is where accepted secrets are written.
pub fn assemble(cache: &Cache, now: Instant, timeout: Duration, sds: &SdsDir) -> Assembly {
    let mut a = Assembly::default();
    for k in Kind::ALL.into_iter().filter(|k| !k.wildcard()) {
        a.wanted.insert(k, BTreeSet::new());
    }
    let expired = |e: &Entry| now.saturating_duration_since(e.since) >= timeout;
    let note_wait = |a: &mut Assembly, kind: Kind, name: &str, e: &Entry| {
        a.warming.push((kind, name.to_owned()));
        let deadline = e.since + timeout;
        a.next_deadline = Some(a.next_deadline.map_or(deadline, |d| d.min(deadline)));
    };

    for (name, e) in cache.of(Kind::Cluster) {
        let Translated::Cluster(spec) = &*e.spec else {
            continue;
        };
        let mut cluster = spec.cluster.clone();
        // Everything a resource depends on is asked for at once, as Envoy does (a cluster
        // waiting for its secrets already wants its endpoints).
        if let Some(svc) = &spec.eds {
            a.wanted
                .entry(Kind::Endpoint)
                .or_default()
                .insert(svc.clone());
        }
        if let Some(tls) = &mut cluster.tls {
            let mut paths: Vec<&mut String> = vec![&mut tls.ca];
            paths.extend(tls.cert.as_mut());
            paths.extend(tls.key.as_mut());
            if !resolve_secrets(&mut a, cache, sds, paths) {
                a.warming.push((Kind::Cluster, name.clone()));
                continue;
            }
        }
        if let Some(svc) = &spec.eds {
            let endpoints = match cache.of(Kind::Endpoint).get(svc).map(|c| &*c.spec) {
                Some(Translated::Endpoint(eps)) => eps.iter().map(raw_endpoint).collect(),
                _ if expired(e) => Vec::new(),
                _ => {
                    note_wait(&mut a, Kind::Cluster, name, e);
                    continue;
                }
            };
            cluster.endpoints = Some(endpoints);
            a.eds_users
                .entry(svc.clone())
                .or_default()
                .push(spec.name.clone());
        }
        a.parts.clusters.insert(spec.name.clone(), cluster);
    }

    for (name, e) in cache.of(Kind::Listener) {
        let Translated::Listener(spec) = &*e.spec else {
            continue;
        };
        let mut chain = Vec::with_capacity(spec.filters.len() + 1);
        let mut filters = Vec::new();
        let mut waiting = false;
        for f in &spec.filters {
            match f {
                HttpFilterSpec::Wasm {
                    name: fname,
                    filter,
                } => {
                    let id = format!("{}/{fname}", spec.name);
                    filters.push((id.clone(), filter.clone()));
                    chain.push(id);
                }
                HttpFilterSpec::Ecds { config_name, .. } => {
                    a.wanted
                        .entry(Kind::Extension)
                        .or_default()
                        .insert(config_name.clone());
                    let id = ecds_filter(config_name);
                    match ecds(cache, config_name) {
                        Some(filter) => {
                            filters.push((id.clone(), filter));
                            chain.push(id);
                        }
                        None if !expired(e) => waiting = true,
                        // Never arrived: as Envoy (NFCF), the filter answers 500 in its place,
                        // so a policy filter that is missing never lets requests through.
                        None => {
                            filters.push((id.clone(), missing_filter_config(config_name)));
                            chain.push(id);
                        }
                    }
                }
            }
        }
        let router = match &spec.routes {
            RouteSource::Inline(config) => {
                let id = format!("{}/router", spec.name);
                filters.push((id.clone(), router(config.clone())));
                id
            }
            RouteSource::Rds(rname) => {
                a.wanted
                    .entry(Kind::Route)
                    .or_default()
                    .insert(rname.clone());
                let id = rds_filter(rname);
                match cache.of(Kind::Route).get(rname).map(|r| &*r.spec) {
                    Some(Translated::Route(config)) => {
                        filters.push((id.clone(), router(config.clone())));
                    }
                    _ if !expired(e) => waiting = true,
                    // Routes that never came: a listener that answers every request 404.
                    _ => filters.push((id.clone(), router(serde_json::json!({"routes": []})))),
                }
                id
            }
        };
        let mut listener = spec.listener.clone();
        let secrets = match &mut listener.tls {
            Some(tls) => {
                let mut paths: Vec<&mut String> = vec![&mut tls.cert, &mut tls.key];
                paths.extend(tls.client_ca.as_mut());
                resolve_secrets(&mut a, cache, sds, paths)
            }
            None => true,
        };
        if waiting {
            note_wait(&mut a, Kind::Listener, name, e);
            continue;
        }
        if !secrets {
            a.warming.push((Kind::Listener, name.clone()));
            continue;
        }
        chain.push(router);
        listener.chain = Some(spec.name.clone());
        for (id, f) in filters {
            a.parts.filters.insert(id, f);
        }
        a.parts.chains.insert(spec.name.clone(), chain);
        a.parts.listeners.push(listener);
    }
    a
}

/// Replaces the SDS placeholders among `paths` with the files of secrets that arrived, and
/// notes the secrets as wanted. Whether every one arrived (else the resource waits for them:
/// with no deadline, since a context without its material cannot be built).
fn resolve_secrets(a: &mut Assembly, cache: &Cache, sds: &SdsDir, paths: Vec<&mut String>) -> bool {
    let mut all = true;
    for path in paths {
        let Some((part, name)) = parse_sds_path(path) else {
            continue;
        };
        a.wanted
            .entry(Kind::Secret)
            .or_default()
            .insert(name.to_owned());
        let have = cache
            .of(Kind::Secret)
            .get(name)
            .is_some_and(|e| matches!(&*e.spec, Translated::Secret(s) if s.has(part)));
        if have {
            *path = sds.path(name, part).display().to_string();
        } else {
            all = false;
        }
    }
    all
}

/// An ECDS filter config, translated.
fn ecds(cache: &Cache, name: &str) -> Option<raw::Filter> {
    match &*cache.of(Kind::Extension).get(name)?.spec {
        Translated::Extension(f) => Some(f.clone()),
        _ => None,
    }
}

/// What stands in for an ECDS filter config that never came: every request answered 500.
fn missing_filter_config(name: &str) -> raw::Filter {
    raw::Filter {
        module: "builtin:local-reply".into(),
        sha256: None,
        config: Some(serde_json::json!({
            "status": 500,
            "body": format!("weir: filter_config_not_found ({name})\n"),
            "headers": {"x-weir-error": "filter_config_not_found"},
        })),
        vm_config: None,
        failure_policy: raw::FailurePolicy::FailClosed,
        limits: raw::FilterLimits::default(),
    }
}

/// The stock router configured with `config`.
fn router(config: serde_json::Value) -> raw::Filter {
    raw::Filter {
        module: "builtin:router".into(),
        sha256: None,
        config: Some(config),
        vm_config: None,
        failure_policy: raw::FailurePolicy::FailClosed,
        limits: raw::FilterLimits::default(),
    }
}

/// An EDS endpoint as the manifest writes one.
pub fn raw_endpoint(e: &EndpointConfig) -> raw::Endpoint {
    raw::Endpoint::Detailed(raw::EndpointSpec {
        address: e.address.to_string(),
        weight: Some(e.weight),
        priority: Some(e.priority),
        zone: e.zone.clone(),
        health: Some(e.health),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(spec: Translated) -> Entry {
        Entry {
            version: "1".into(),
            resource: Any::default(),
            spec: Arc::new(spec),
            since: Instant::now(),
        }
    }

    #[test]
    fn a_resource_waiting_for_one_dependency_already_asks_for_the_others() {
        let sds = SdsDir::create().unwrap();
        let mut cache = Cache::default();
        let cluster: raw::Cluster = serde_yaml_ng::from_str(
            "{tls: {ca: '@sds/ca/ROOTCA', expect_identity: 'spiffe://td/x'}}",
        )
        .unwrap();
        cache.of_mut(Kind::Cluster).insert(
            "c".into(),
            entry(Translated::Cluster(translate::ClusterSpec {
                name: "c".into(),
                cluster,
                eds: Some("c-eds".into()),
            })),
        );
        let listener: raw::Listener = serde_yaml_ng::from_str(
            "{name: l, address: '127.0.0.1:0', tls: {cert: '@sds/cert/srv', key: '@sds/key/srv'}}",
        )
        .unwrap();
        cache.of_mut(Kind::Listener).insert(
            "l".into(),
            entry(Translated::Listener(translate::ListenerSpec {
                name: "l".into(),
                listener,
                filters: vec![],
                routes: RouteSource::Rds("r".into()),
            })),
        );
        let a = assemble(&cache, Instant::now(), Duration::from_secs(15), &sds);
        let wanted = |k: Kind| a.wanted[&k].iter().cloned().collect::<Vec<_>>();
        assert_eq!(
            wanted(Kind::Endpoint),
            ["c-eds"],
            "the cluster waiting for its secret"
        );
        assert_eq!(wanted(Kind::Secret), ["ROOTCA", "srv"]);
        assert_eq!(
            wanted(Kind::Route),
            ["r"],
            "the listener waiting for its secret"
        );
        assert_eq!(
            a.warming,
            [
                (Kind::Cluster, "c".to_owned()),
                (Kind::Listener, "l".to_owned())
            ]
        );
        assert!(a.parts.clusters.is_empty() && a.parts.listeners.is_empty());
    }
}
