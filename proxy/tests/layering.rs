//! The data path's layers point down: a tidy test over `proxy/src`.
//!
//! Every module belongs to a layer ([`LAYERS`], top first, by longest module-path prefix). A
//! module may use what its own layer or a layer below it defines, never what a layer above it
//! defines: the data path reads `listener → conn → http → filter → upstream → telemetry → tls
//! → config → proto`, with the control plane and the CLI above it. Each `use crate::…` (and
//! `super::…`, and `crate::…` paths written inline) outside `#[cfg(test)]` code is checked.
//! Upward imports that remain are listed in [`KNOWN`] with their reason; an upward import not
//! listed fails the test, and so does an entry of `KNOWN` that no longer happens (so the list
//! only shrinks).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, top first. A module path is matched by its longest listed prefix.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "entry",
        // `testing` is the in-process test harness (test builds only): it wires everything.
        &["main", "lib", "cli", "testing"],
    ),
    // The demo upstream is part of the embedded default that `app` starts.
    ("app", &["app", "demo"]),
    // The xDS client asks the control plane for changes, as the admin endpoint does.
    ("admin", &["admin", "watch", "xds"]),
    ("worker", &["worker"]),
    ("control", &["control"]),
    ("listener", &["listener"]),
    ("conn", &["conn"]),
    ("http", &["http"]),
    ("filter", &["filter"]),
    // The per-request telemetry record sits above the upstream stage it reports on; the rest of
    // telemetry (metrics, traces, logs) sits below everything that reports to it.
    ("exchange", &["telemetry::exchange"]),
    ("upstream", &["upstream"]),
    // Endpoint discovery (DNS): below the clusters that apply its answers, above what it may
    // report to.
    ("discovery", &["discovery"]),
    ("telemetry", &["telemetry"]),
    ("tls", &["tls"]),
    ("config", &["config"]),
    // Utilities with no state of the data path: the coarse clock, the runtime builder, and the
    // SPIFFE ID grammar (the manifest validates identities with it).
    ("base", &["timer", "rt", "memory", "tls::spiffe"]),
    ("proto", &["proto"]),
];

/// Upward imports that remain, `(from module, to module, why)`. Each is a knot to cut later.
const KNOWN: &[(&str, &str, &str)] = &[
    // The connection task and the accept loop share the listener's context and the worker's
    // state; the connection is spawned by the accept loop and reads the listener's limits.
    (
        "conn",
        "listener",
        "a connection reads its listener's context",
    ),
    (
        "conn",
        "worker",
        "a connection reads the worker's state (drain, watchdog)",
    ),
    (
        "listener",
        "worker",
        "the accept loop reads the worker's state",
    ),
    (
        "http::h1",
        "conn",
        "the HTTP/1.1 server drives the connection's phases and socket",
    ),
    (
        "http::h1::wire",
        "conn",
        "the wire owns the connection's socket type",
    ),
    (
        "http::service",
        "listener",
        "the service reads its listener's context",
    ),
    (
        "http::service",
        "worker",
        "the service reads the worker's state",
    ),
];

/// One `crate::` path used by a module.
struct Use {
    from: String,
    to: String,
}

fn main_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The module path of a source file (`http/h1/mod.rs` → `http::h1`).
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, usize, &'static str)> = None;
    for (rank, (name, prefixes)) in LAYERS.iter().enumerate() {
        for p in *prefixes {
            let hit = module == *p || module.starts_with(&format!("{p}::"));
            if hit && best.is_none_or(|(len, _, _)| p.len() > len) {
                best = Some((p.len(), rank, name));
            }
        }
    }
    best.map(|(_, rank, name)| (rank, name))
}

/// The source without its `#[cfg(test)]` modules (test code may reach anywhere).
fn without_tests(src: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut pending_cfg_test = false;
    for line in src.lines() {
        let t = line.trim();
        if let Some(depth) = skip_depth.as_mut() {
            *depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            if *depth <= 0 {
                skip_depth = None;
            }
            continue;
        }
        if t == "#[cfg(test)]" {
            pending_cfg_test = true;
            continue;
        }
        if pending_cfg_test && (t.starts_with("mod ") || t.starts_with("pub mod ")) {
            pending_cfg_test = false;
            let depth = line.matches('{').count() as i32 - line.matches('}').count() as i32;
            if depth > 0 {
                skip_depth = Some(depth);
            }
            continue;
        }
        pending_cfg_test = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d}}`) into its paths.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("").trim();
        let path = path.strip_suffix("::self").unwrap_or(path);
        let full = match (prefix.is_empty(), path) {
            (true, p) => p.to_owned(),
            (false, "self") => prefix.to_owned(),
            (false, p) => format!("{prefix}::{p}"),
        };
        out.push(full);
        return;
    };
    let head = tree[..open].trim().trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let prefix = match (prefix.is_empty(), head.is_empty()) {
        (_, true) => prefix.to_owned(),
        (true, false) => head.to_owned(),
        (false, false) => format!("{prefix}::{head}"),
    };
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                if !inner[start..i].trim().is_empty() {
                    expand(&prefix, &inner[start..i], out);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        expand(&prefix, &inner[start..], out);
    }
}

/// Resolves a path as written in `module` to an absolute `crate::` path, if it is one.
fn absolute(module: &str, is_mod_rs: bool, path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix("crate::") {
        return Some(rest.to_owned());
    }
    if path.starts_with("super::") || path == "super" {
        // `super` of a `foo.rs` or `foo/mod.rs` module is its parent.
        let mut base: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
        let _ = is_mod_rs;
        let mut rest = path;
        while let Some(r) = rest
            .strip_prefix("super::")
            .or((rest == "super").then_some(""))
        {
            base.pop();
            rest = r;
        }
        let mut parts: Vec<&str> = base;
        if !rest.is_empty() {
            parts.push(rest);
        }
        return Some(parts.join("::"));
    }
    if let Some(rest) = path.strip_prefix("self::") {
        return Some(format!("{module}::{rest}"));
    }
    None
}

/// Every `crate::` path a source file uses outside its tests.
fn uses_of(module: &str, is_mod_rs: bool, src: &str) -> Vec<Use> {
    let src = without_tests(src);
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut paths = Vec::new();
    // `use` statements (possibly spanning lines).
    let mut rest = code.as_str();
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let tail = &rest[at + 4..];
        rest = tail;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = tail.find(';') else { break };
        let tree: String = tail[..end].split_whitespace().collect::<Vec<_>>().join(" ");
        if tree.starts_with("crate::") || tree.starts_with("super::") || tree.starts_with("self::")
        {
            let mut expanded = Vec::new();
            expand("", &tree, &mut expanded);
            paths.extend(expanded);
        }
    }
    // Paths written inline (`crate::timer::now_ms()`).
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        paths.push(tail[..end].trim_end_matches(':').to_owned());
        rest = &tail[7..];
    }
    paths
        .iter()
        .filter_map(|p| absolute(module, is_mod_rs, p))
        .map(|to| Use {
            from: module.to_owned(),
            to,
        })
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read proxy/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a `crate::` path names: its longest prefix that is a module of the crate.
fn target_module(modules: &BTreeSet<String>, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").collect();
    while !parts.is_empty() {
        let m = parts.join("::");
        if modules.contains(&m) {
            return Some(m);
        }
        parts.pop();
    }
    None
}

/// Every upward import of the crate: `(from module, to module, from layer, to layer)`.
fn upward_imports() -> Vec<(String, String, &'static str, &'static str)> {
    let src = main_src();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(&src).unwrap()))
        .collect();
    let mut up = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = module_of(rel);
        let is_mod_rs = rel.file_name().is_some_and(|n| n == "mod.rs");
        let text = std::fs::read_to_string(f).expect("read a source file");
        let (from_rank, from_layer) = layer_of(&module)
            .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS"));
        for u in uses_of(&module, is_mod_rs, &text) {
            let Some(to) = target_module(&modules, &u.to) else {
                continue;
            };
            if to.is_empty() || to == "lib" || to == u.from {
                continue;
            }
            let (to_rank, to_layer) =
                layer_of(&to).unwrap_or_else(|| panic!("module {to} is in no layer"));
            if to_rank < from_rank {
                up.insert((u.from.clone(), to, from_layer, to_layer));
            }
        }
    }
    up.into_iter().collect()
}

#[test]
fn layers_only_point_down() {
    let up = upward_imports();
    let known = |from: &str, to: &str| KNOWN.iter().any(|(f, t, _)| *f == from && *t == to);
    let new: Vec<String> = up
        .iter()
        .filter(|(f, t, _, _)| !known(f, t))
        .map(|(f, t, fl, tl)| format!("  {f} ({fl}) uses {t} ({tl}), a layer above it"))
        .collect();
    assert!(
        new.is_empty(),
        "upward imports (move the shared thing down, or list the import in KNOWN with its \
         reason):\n{}",
        new.join("\n")
    );
    let gone: Vec<String> = KNOWN
        .iter()
        .filter(|(f, t, _)| !up.iter().any(|(uf, ut, _, _)| uf == f && ut == t))
        .map(|(f, t, _)| format!("  {f} -> {t}"))
        .collect();
    assert!(
        gone.is_empty(),
        "these KNOWN upward imports no longer happen: remove them from the list\n{}",
        gone.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    // A synthetic module of the bottom layer reaching into `http`: the checker must see it.
    let uses = uses_of(
        "proto::h1::head",
        false,
        "use crate::http::{body::ProxyBody, respond};\nfn f() { super::super::error::x(); crate::upstream::pick(); }\n#[cfg(test)]\nmod tests {\n    use crate::worker::Worker;\n}\n",
    );
    let to: Vec<&str> = uses.iter().map(|u| u.to.as_str()).collect();
    assert!(to.contains(&"http::body::ProxyBody"), "{to:?}");
    assert!(to.contains(&"http::respond"), "{to:?}");
    assert!(to.contains(&"upstream::pick"), "{to:?}");
    assert!(
        !to.iter().any(|t| t.starts_with("worker")),
        "test code is exempt: {to:?}"
    );
    let (proto, _) = layer_of("proto::h1::head").unwrap();
    let (http, _) = layer_of("http::body").unwrap();
    assert!(http < proto, "http sits above proto");
    assert_eq!(layer_of("telemetry::exchange").unwrap().1, "exchange");
    assert_eq!(layer_of("telemetry::metrics").unwrap().1, "telemetry");
}
