//! `weir check FILE`: offline validation; `ok` on success, `error: <field.path>: <message>` lines
//! and exit 1 on failure.

use weir_tests::{Manifest, check};

fn good() -> String {
    Manifest::new(&[
        "127.0.0.1:9001".parse().unwrap(),
        "127.0.0.1:9002".parse().unwrap(),
    ])
    .lb("least_request")
    .connect_timeout("1s")
    .response_timeout("15s")
    .limit("header_read_timeout", "10s")
    .limit("max_request_headers_size", "60KiB")
    .pool("max_idle", "64")
    .pool("idle_timeout", "60s")
    .drain_timeout("30s")
    .yaml()
}

#[test]
fn accepts_a_good_manifest() {
    let out = check(&good());
    assert!(
        out.status.success(),
        "exit {}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert_eq!(out.stdout.trim(), "ok");
}

#[test]
fn accepts_the_full_example_manifest() {
    let m = "workers: 2
drain_timeout: 30s
admin: { address: 127.0.0.1:0 }
listeners:
  - name: main
    address: 127.0.0.1:0
    default_cluster: web
    chain: edge
    limits:
      max_request_headers_size: 60KiB
      max_request_headers: 100
      max_uri_length: 16KiB
      header_read_timeout: 10s
      idle_timeout: 300s
      max_connections: 10000
  - name: demo
    address: 127.0.0.1:0
    default_cluster: builtin
clusters:
  web:
    endpoints: [127.0.0.1:9001, 127.0.0.1:9002]
    protocol: http2
    lb: round_robin
    timeouts: { connect: 1s, response: 15s }
    pool: { max_idle: 64, idle_timeout: 60s }
  builtin:
    demo: v1
chains: { edge: [f1] }
filters:
  f1: { module: \"builtin:router\", config: { routes: [ { to: web } ] }, failure_policy: fail_closed }
";
    let out = check(m);
    assert!(
        out.status.success(),
        "exit {}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert_eq!(out.stdout.trim(), "ok");
}

/// Asserts a failed check whose stderr has an `error: <path>…` line mentioning every `needle`.
#[track_caller]
fn assert_rejected(manifest: &str, path: &str, needles: &[&str]) {
    let out = check(manifest);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status; stdout {:?} stderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        !out.stdout.contains("ok"),
        "stdout says ok: {:?}",
        out.stdout
    );
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&format!("error: {path}")))
        .unwrap_or_else(|| panic!("no `error: {path}…` line in stderr:\n{}", out.stderr));
    for n in needles {
        assert!(
            line.contains(n),
            "error line {line:?} does not mention {n:?}"
        );
    }
}

#[test]
fn rejects_an_unknown_field_by_naming_it() {
    let m = good().replace("    address: 127.0.0.1:0\n", "    adress: 127.0.0.1:0\n");
    assert!(m.contains("adress"));
    assert_rejected(&m, "listeners[0]", &["adress"]);
}

#[test]
fn rejects_an_unknown_top_level_field() {
    let m = format!("{}bogus_section: 1\n", good());
    assert_rejected(&m, "", &["bogus_section"]);
}

#[test]
fn rejects_an_unknown_cluster_reference_with_its_path() {
    let m = good().replace("default_cluster: web", "default_cluster: nowhere");
    assert_rejected(&m, "listeners[0].default_cluster", &["nowhere"]);
}

#[test]
fn rejects_an_unknown_chain_reference() {
    let m = good().replace(
        "default_cluster: web\n",
        "default_cluster: web\n    chain: missing\n",
    );
    assert_rejected(&m, "listeners[0].chain", &["missing"]);
}

#[test]
fn rejects_a_bad_duration_with_its_path() {
    let m = good().replace("connect: 1s", "connect: soon");
    assert_rejected(&m, "clusters.web.timeouts.connect", &[]);
}

#[test]
fn reports_every_error() {
    let m = good().replace(
        "default_cluster: web\n",
        "default_cluster: nowhere\n    chain: missing\n",
    );
    let out = check(&m);
    assert_eq!(out.status.code(), Some(1));
    for path in ["listeners[0].default_cluster", "listeners[0].chain"] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with(&format!("error: {path}"))),
            "no error for {path} in:\n{}",
            out.stderr
        );
    }
}

#[test]
fn rejects_a_missing_file() {
    let out = std::process::Command::new(weir_tests::weir_bin())
        .args(["check", "/nonexistent/weir.yaml"])
        .output()
        .expect("run weir check");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error:"));
}

#[test]
fn run_with_an_invalid_manifest_exits_1_with_the_errors() {
    let m = good().replace("default_cluster: web", "default_cluster: nowhere");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, m).unwrap();
    let out = std::process::Command::new(weir_tests::weir_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run weir");
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("error: listeners[0].default_cluster")),
        "stderr:\n{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("weir: ready"));
}

#[tokio::test]
async fn run_exits_nonzero_when_a_listener_cannot_bind() {
    // A plain listener (no SO_REUSEPORT) holds the port, so weir's bind must fail.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let m = good().replace(
        "address: 127.0.0.1:0\n    default_cluster",
        &format!("address: {taken}\n    default_cluster"),
    );
    assert!(m.contains(&taken.to_string()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken.yaml");
    std::fs::write(&path, m).unwrap();
    let child = tokio::process::Command::new(weir_tests::weir_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = weir_tests::within("weir to exit on a bind failure", child.wait_with_output())
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("weir: ready"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&taken.to_string()) || stderr.to_lowercase().contains("address"),
        "stderr:\n{stderr}"
    );
    drop(holder);
}

#[test]
fn the_embedded_default_manifest_passes_check() {
    let out = std::process::Command::new(weir_tests::weir_bin())
        .arg("default-config")
        .output()
        .expect("run weir default-config");
    assert!(
        out.status.success(),
        "weir default-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = String::from_utf8(out.stdout).expect("utf-8 manifest");
    assert!(manifest.contains("listeners"), "{manifest}");
    let out = check(&manifest);
    assert!(
        out.status.success(),
        "the embedded default fails `weir check`: {}",
        out.stderr
    );
    assert_eq!(out.stdout.trim(), "ok");
}

const SCHEMA_BASE: &str = "listeners:
  - { name: main, address: 127.0.0.1:0, default_cluster: web, chain: edge }
clusters:
  web: { endpoints: [127.0.0.1:9] }
";

#[test]
fn accepts_every_size_and_duration_form() {
    let m = "listeners:
  - name: main
    address: 127.0.0.1:0
    default_cluster: web
    chain: edge
    limits: { max_request_headers_size: 16384, max_uri_length: 1KiB, idle_timeout: 5m, header_read_timeout: 250ms }
clusters:
  web: { endpoints: [127.0.0.1:9], pool: { max_idle: 0, idle_timeout: 1s } }
chains: { edge: [f1, f2] }
filters:
  f1: { module: \"builtin:router\", config: { routes: [ { to: web } ] }, failure_policy: fail_open }
  f2: { module: \"builtin:add-header\", failure_policy: reload }
";
    let out = check(m);
    assert!(out.status.success(), "stderr:\n{}", out.stderr);
    assert_eq!(out.stdout.trim(), "ok");
}

#[test]
fn rejects_a_bad_size_with_its_path() {
    let m = good().replace(
        "max_request_headers_size: 60KiB",
        "max_request_headers_size: 60 parsecs",
    );
    assert_rejected(
        &m,
        "listeners[0].limits.max_request_headers_size",
        &["parsecs"],
    );
}

#[test]
fn rejects_an_unknown_enum_value_with_its_path() {
    let m = good().replace("lb: least_request", "lb: fastest_guess");
    assert_rejected(&m, "clusters.web.lb", &["fastest_guess"]);
}

#[test]
fn rejects_an_unknown_filter_in_a_chain() {
    let m = format!(
        "{SCHEMA_BASE}chains: {{ edge: [f1, nope] }}\nfilters:\n  f1: {{ module: \"builtin:router\" }}\n"
    );
    assert_rejected(&m, "chains.edge[1]", &["nope"]);
}

#[test]
fn rejects_an_unknown_failure_policy() {
    let m = format!(
        "{SCHEMA_BASE}chains: {{ edge: [f1] }}\nfilters:\n  f1: {{ module: \"builtin:router\", failure_policy: sometimes }}\n"
    );
    assert_rejected(&m, "filters.f1.failure_policy", &["sometimes"]);
}

/// Every manifest under `examples/` passes `weir check` — which also loads their TLS material and
/// starts every filter once with its configuration — with the certificates `weir certs mesh`
/// mints (as the examples' READMEs say), in a copy of the folder.
#[test]
fn every_example_manifest_passes_check() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let tmp = tempfile::tempdir().unwrap();
    let mut manifests = Vec::new();
    for dir in [examples.clone(), examples.join("mesh")] {
        let rel = dir.strip_prefix(&examples).unwrap().to_path_buf();
        std::fs::create_dir_all(tmp.path().join(&rel)).unwrap();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let to = tmp.path().join(&rel).join(p.file_name().unwrap());
                std::fs::copy(&p, &to).unwrap();
                manifests.push(to);
            }
        }
    }
    assert!(manifests.len() >= 5, "examples found: {manifests:?}");
    let minted = std::process::Command::new(weir_tests::weir_bin())
        .args(["certs", "mesh", "--out"])
        .arg(tmp.path().join("mesh/certs"))
        .output()
        .expect("run weir certs mesh");
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    for m in &manifests {
        let out = std::process::Command::new(weir_tests::weir_bin())
            .arg("check")
            .arg(m)
            .output()
            .expect("run weir check");
        assert!(
            out.status.success(),
            "{} fails `weir check`: {}",
            m.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `weir check` starts each filter once: a configuration the filter refuses is an error naming
/// the filter, not a surprise at start-up.
#[test]
fn check_starts_the_filters_with_their_configuration() {
    let bad = "listeners:\n  - {name: a, address: 127.0.0.1:0, default_cluster: c, chain: x}\nclusters:\n  c: {endpoints: [127.0.0.1:1]}\nchains:\n  x: [f]\nfilters:\n  f: {module: builtin:fault, config: {abort: {status: 503, percent: 140}}}\n";
    let out = check(bad);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("filters.f"), "{}", out.stderr);
    let good = bad.replace("percent: 140", "percent: 40");
    let out = check(&good);
    assert!(out.status.success(), "{}", out.stderr);
}
