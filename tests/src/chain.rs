//! Manifests with filter chains: several listeners (each with an optional chain), several
//! clusters, `chains:` and `filters:` sections. Filter configurations are JSON text, which is also
//! valid YAML flow syntax, so they are written into the manifest as they are.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::weir::Weir;

/// One `filters:` entry.
#[derive(Clone, Debug)]
pub struct FilterDef {
    name: String,
    module: String,
    config: Option<String>,
    vm_config: Option<String>,
    failure_policy: Option<String>,
    callback_deadline: String,
    memory: Option<String>,
    sha256: Option<String>,
}

impl FilterDef {
    /// Filter `name` running `module` (an absolute `.wasm` path or `builtin:NAME`), with a 1 s
    /// callback deadline (the tests check behaviour on a loaded machine, not speed).
    pub fn new(name: &str, module: &str) -> FilterDef {
        FilterDef {
            name: name.to_string(),
            module: module.to_string(),
            config: None,
            vm_config: None,
            failure_policy: None,
            callback_deadline: "1s".to_string(),
            memory: None,
            sha256: None,
        }
    }

    /// The filter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin configuration, as JSON text (e.g. `{"scenario":"headers"}`).
    pub fn config(mut self, json: &str) -> FilterDef {
        self.config = Some(json.to_string());
        self
    }

    /// The VM configuration, as JSON text.
    pub fn vm_config(mut self, json: &str) -> FilterDef {
        self.vm_config = Some(json.to_string());
        self
    }

    /// `failure_policy`: `fail_closed` | `fail_open` | `reload`.
    pub fn failure_policy(mut self, p: &str) -> FilterDef {
        self.failure_policy = Some(p.to_string());
        self
    }

    /// `limits.callback_deadline`, e.g. `"10ms"`.
    pub fn callback_deadline(mut self, d: &str) -> FilterDef {
        self.callback_deadline = d.to_string();
        self
    }

    /// `sha256`: the module's pinned digest (64 hex digits).
    pub fn sha256(mut self, hex: &str) -> FilterDef {
        self.sha256 = Some(hex.to_string());
        self
    }

    /// `limits.memory`, e.g. `"64MiB"`.
    pub fn memory(mut self, m: &str) -> FilterDef {
        self.memory = Some(m.to_string());
        self
    }
}

/// A manifest with any number of listeners, clusters, chains and filters; an admin listener on
/// `127.0.0.1:0`; one worker unless told otherwise.
#[derive(Clone, Debug, Default)]
pub struct ChainManifest {
    workers: Option<usize>,
    listeners: Vec<(String, String, Option<String>)>,
    clusters: Vec<(String, Vec<SocketAddr>, Vec<String>)>,
    chains: Vec<(String, Vec<String>)>,
    filters: Vec<FilterDef>,
}

impl ChainManifest {
    /// An empty manifest (one worker).
    pub fn new() -> ChainManifest {
        ChainManifest {
            workers: Some(1),
            ..ChainManifest::default()
        }
    }

    /// Sets `workers`.
    pub fn workers(mut self, n: usize) -> ChainManifest {
        self.workers = Some(n);
        self
    }

    /// Adds listener `name` on `127.0.0.1:0` sending to `cluster`, running `chain` if given.
    pub fn listener(mut self, name: &str, cluster: &str, chain: Option<&str>) -> ChainManifest {
        self.listeners
            .push((name.into(), cluster.into(), chain.map(Into::into)));
        self
    }

    /// Adds cluster `name` with `endpoints`.
    pub fn cluster(self, name: &str, endpoints: &[SocketAddr]) -> ChainManifest {
        self.cluster_with(name, endpoints, &[])
    }

    /// Adds cluster `name` with `endpoints` and extra YAML lines under it (e.g.
    /// `"timeouts: { response: 1s }"`).
    pub fn cluster_with(
        mut self,
        name: &str,
        endpoints: &[SocketAddr],
        extra: &[&str],
    ) -> ChainManifest {
        self.clusters.push((
            name.into(),
            endpoints.to_vec(),
            extra.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// Adds chain `name` running `filters` in order.
    pub fn chain(mut self, name: &str, filters: &[&str]) -> ChainManifest {
        self.chains
            .push((name.into(), filters.iter().map(|s| s.to_string()).collect()));
        self
    }

    /// Adds a filter.
    pub fn filter(mut self, f: FilterDef) -> ChainManifest {
        self.filters.push(f);
        self
    }

    /// Renders the manifest as YAML.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        if let Some(w) = self.workers {
            writeln!(y, "workers: {w}").unwrap();
        }
        y.push_str("admin: { address: 127.0.0.1:0 }\nlisteners:\n");
        for (name, cluster, chain) in &self.listeners {
            writeln!(
                y,
                "  - name: {name}\n    address: 127.0.0.1:0\n    default_cluster: {cluster}"
            )
            .unwrap();
            if let Some(c) = chain {
                writeln!(y, "    chain: {c}").unwrap();
            }
        }
        y.push_str("clusters:\n");
        for (name, eps, extra) in &self.clusters {
            let eps: Vec<String> = eps.iter().map(ToString::to_string).collect();
            writeln!(y, "  {name}:\n    endpoints: [{}]", eps.join(", ")).unwrap();
            for line in extra {
                writeln!(y, "    {line}").unwrap();
            }
        }
        if !self.chains.is_empty() {
            y.push_str("chains:\n");
            for (name, filters) in &self.chains {
                writeln!(y, "  {name}: [{}]", filters.join(", ")).unwrap();
            }
        }
        if !self.filters.is_empty() {
            y.push_str("filters:\n");
            for f in &self.filters {
                writeln!(y, "  {}:\n    module: \"{}\"", f.name, f.module).unwrap();
                if let Some(h) = &f.sha256 {
                    writeln!(y, "    sha256: \"{h}\"").unwrap();
                }
                if let Some(c) = &f.config {
                    writeln!(y, "    config: {c}").unwrap();
                }
                if let Some(c) = &f.vm_config {
                    writeln!(y, "    vm_config: {c}").unwrap();
                }
                if let Some(p) = &f.failure_policy {
                    writeln!(y, "    failure_policy: {p}").unwrap();
                }
                let mut limits = vec![format!("callback_deadline: {}", f.callback_deadline)];
                if let Some(m) = &f.memory {
                    limits.push(format!("memory: {m}"));
                }
                writeln!(y, "    limits: {{ {} }}", limits.join(", ")).unwrap();
            }
        }
        y
    }

    /// Starts weir with this manifest.
    pub async fn start(&self) -> Weir {
        Weir::start(&self.yaml()).await
    }
}

/// Inserts `lines` (indented for a listener's body, e.g. a `tls:` block) after the last line of
/// listener `name` in `yaml` as [`ChainManifest::yaml`] writes it.
pub fn add_to_listener(yaml: &str, name: &str, lines: &[String]) -> String {
    let mut out: Vec<String> = yaml.lines().map(str::to_string).collect();
    let start = out
        .iter()
        .position(|l| *l == format!("  - name: {name}"))
        .unwrap_or_else(|| panic!("no listener {name} in:\n{yaml}"));
    let mut end = start + 1;
    while end < out.len() && out[end].starts_with("    ") {
        end += 1;
    }
    for (i, l) in lines.iter().enumerate() {
        out.insert(end + i, l.clone());
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}
