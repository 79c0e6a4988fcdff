//! The part of the configuration a control plane supplies (xDS), and how it sits beside the
//! manifest's. The xDS client translates resources into manifest ([`raw`]) types; [`dynamic`]
//! validates them with the manifest's own rules (looser names, no default cluster, empty
//! endpoint sets allowed) and [`merge`] lays them over the manifest's part. Names are one
//! namespace: a dynamic listener, cluster, filter or chain may not take a manifest's name.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::check::{Errors, Source};
use super::{
    ChainConfig, ClusterConfig, Config, FieldError, FilterConfig, ListenerConfig, cluster, filter,
    listener, raw,
};

/// A control plane's resources as manifest types, before validation.
#[derive(Debug, Clone, Default)]
pub struct DynamicParts {
    pub listeners: Vec<raw::Listener>,
    pub clusters: BTreeMap<String, raw::Cluster>,
    pub filters: BTreeMap<String, raw::Filter>,
    pub chains: BTreeMap<String, Vec<String>>,
}

/// A control plane's resources, validated. Ordered by name (listeners as the client lists them).
#[derive(Debug, Clone, Default)]
pub struct Dynamic {
    pub listeners: Vec<ListenerConfig>,
    pub clusters: Vec<Arc<ClusterConfig>>,
    pub filters: Vec<FilterConfig>,
    pub chains: Vec<ChainConfig>,
}

impl Dynamic {
    /// Whether this part has an item called `name` of any kind.
    fn names_cluster(&self, name: &str) -> bool {
        self.clusters.iter().any(|c| c.name == name)
    }
}

/// Validates a control plane's parts against the manifest part `statics` (the names they may
/// refer to). Paths in errors are the manifest's (`clusters.NAME.timeouts.connect`).
pub fn dynamic(parts: DynamicParts, statics: &Config) -> Result<Dynamic, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());
    // Module and certificate paths from a control plane are absolute.
    let base = Path::new("/");
    let clusters: Vec<Arc<ClusterConfig>> =
        cluster::clusters(parts.clusters, base, Source::Xds, &mut errs)
            .into_iter()
            .map(Arc::new)
            .collect();
    let filters = filter::filters(parts.filters, base, Source::Xds, &mut errs);
    let chains = filter::chains(
        parts.chains,
        &[&statics.filters, &filters],
        Source::Xds,
        &mut errs,
    );
    let listeners = listener::listeners(
        parts.listeners,
        &[&statics.clusters, &clusters],
        &[&statics.chains, &chains],
        base,
        Source::Xds,
        &mut errs,
    );
    if errs.0.is_empty() {
        Ok(Dynamic {
            listeners,
            clusters,
            filters,
            chains,
        })
    } else {
        Err(errs.0)
    }
}

/// The manifest part `statics` with the control plane's part `dynamic` laid over it. A name
/// both use, or a listen address both bind, is refused.
pub fn merge(statics: &Config, dynamic: &Dynamic) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());
    let mut c = statics.clone();
    for l in &dynamic.listeners {
        if c.listeners.iter().any(|s| s.name == l.name) {
            errs.push(
                format!("listeners.{}", l.name),
                "the manifest has a listener of this name",
            );
        }
        if l.address.port() != 0 && c.listeners.iter().any(|s| s.address == l.address) {
            errs.push(
                format!("listeners.{}.address", l.name),
                format!("{} is bound by another listener", l.address),
            );
        }
        c.listeners.push(l.clone());
    }
    for cl in &dynamic.clusters {
        if statics.cluster_index(&cl.name).is_some() {
            errs.push(
                format!("clusters.{}", cl.name),
                "the manifest has a cluster of this name",
            );
        }
        c.clusters.push(cl.clone());
    }
    for f in &dynamic.filters {
        if statics.filters.iter().any(|s| s.name == f.name) {
            errs.push(
                format!("filters.{}", f.name),
                "the manifest has a filter of this name",
            );
        }
        c.filters.push(f.clone());
    }
    for ch in &dynamic.chains {
        if statics.chains.iter().any(|s| s.name == ch.name) {
            errs.push(
                format!("chains.{}", ch.name),
                "the manifest has a chain of this name",
            );
        }
        c.chains.push(ch.clone());
    }
    resolve_default_clusters(&mut c, &mut errs);
    if errs.0.is_empty() {
        Ok(c)
    } else {
        Err(errs.0)
    }
}

/// `config` without the items `dynamic` names: the manifest's part of a merged configuration.
pub fn strip(config: &Config, dynamic: &Dynamic) -> Config {
    let mut c = config.clone();
    c.listeners
        .retain(|l| !dynamic.listeners.iter().any(|d| d.name == l.name));
    c.clusters.retain(|cl| !dynamic.names_cluster(&cl.name));
    c.filters
        .retain(|f| !dynamic.filters.iter().any(|d| d.name == f.name));
    c.chains
        .retain(|ch| !dynamic.chains.iter().any(|d| d.name == ch.name));
    let mut errs = Errors(Vec::new());
    resolve_default_clusters(&mut c, &mut errs);
    c
}

/// Sets each listener's default cluster index from its name (positions change when parts are
/// merged or stripped).
pub(super) fn resolve_default_clusters(c: &mut Config, errs: &mut Errors) {
    for l in &mut c.listeners {
        l.default_cluster = match &l.default_cluster_name {
            Some(name) => {
                let ix = c.clusters.iter().position(|cl| &cl.name == name);
                if ix.is_none() {
                    errs.push(
                        format!("listeners.{}.default_cluster", l.name),
                        format!("unknown cluster `{name}`"),
                    );
                }
                ix
            }
            None => None,
        };
    }
}
