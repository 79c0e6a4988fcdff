//! Start-up: a filter that cannot start (configure refused or trapping, VM start refused, module
//! not compiling, unknown builtin, memory limit, wrong `sha256`) stops `weir run` naming
//! `filters.NAME`; chain manifests pass `weir check`.

use weir_test_artifacts::CONFORMANCE;
use weir_tests::{ChainManifest, EchoServer, FilterDef, within};

use super::common::{conformance, get_with, one_chain, trace};

/// Runs `weir run` on `manifest`, expecting it to fail before `weir: ready`; returns stderr.
async fn run_fails(manifest: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, manifest).unwrap();
    let child = tokio::process::Command::new(weir_tests::weir_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = within("weir run to exit on a bad filter", child.wait_with_output())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "weir run succeeded; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("weir: ready"),
        "ready with a bad filter:\n{stdout}"
    );
    stderr
}

fn bad_filter_manifest(filter: FilterDef) -> String {
    ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &["127.0.0.1:9".parse().unwrap()])
        .chain("edge", &["good", "broken"])
        .filter(conformance("good", r#"{"scenario":"none"}"#))
        .filter(filter)
        .yaml()
}

#[tokio::test]
async fn a_filter_that_fails_to_configure_stops_weir_run() {
    let stderr = run_fails(&bad_filter_manifest(conformance(
        "broken",
        r#"{"scenario":"none","reject":true}"#,
    )))
    .await;
    assert!(stderr.contains("filters.broken"), "stderr:\n{stderr}");
    assert!(!stderr.contains("filters.good"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn a_filter_that_fails_vm_start_stops_weir_run() {
    let stderr = run_fails(&bad_filter_manifest(
        conformance("broken", r#"{"scenario":"none"}"#).vm_config(r#"{"reject_vm_start":true}"#),
    ))
    .await;
    assert!(stderr.contains("filters.broken"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn a_filter_that_traps_while_configuring_stops_weir_run() {
    let stderr = run_fails(&bad_filter_manifest(conformance(
        "broken",
        r#"{"scenario":"none","panic_in":"on_configure"}"#,
    )))
    .await;
    assert!(stderr.contains("filters.broken"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn a_module_that_does_not_compile_stops_weir_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0this is not a module").unwrap();
    let stderr = run_fails(&bad_filter_manifest(FilterDef::new(
        "broken",
        path.to_str().unwrap(),
    )))
    .await;
    assert!(
        stderr.contains("filters.broken.module"),
        "stderr:\n{stderr}"
    );
}

#[tokio::test]
async fn an_unknown_builtin_stops_weir_run() {
    let stderr = run_fails(&bad_filter_manifest(FilterDef::new(
        "broken",
        "builtin:no-such-filter",
    )))
    .await;
    assert!(
        stderr.contains("filters.broken.module"),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("no-such-filter"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn a_filter_over_its_memory_limit_stops_weir_run() {
    let stderr = run_fails(&bad_filter_manifest(
        conformance("broken", r#"{"scenario":"none"}"#).memory("64KiB"),
    ))
    .await;
    assert!(stderr.contains("filters.broken"), "stderr:\n{stderr}");
}

/// `sha256` pins the module: the right digest starts, a wrong one stops `weir run` naming
/// `filters.NAME.sha256`.
#[tokio::test]
async fn a_sha256_pin_is_checked() {
    let out = std::process::Command::new("sha256sum")
        .arg(CONFORMANCE)
        .output()
        .expect("sha256sum(1)");
    let digest = String::from_utf8(out.stdout).unwrap();
    let digest = digest.split_whitespace().next().unwrap().to_string();
    assert_eq!(digest.len(), 64);
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("pinned", "p").sha256(&digest)])
        .start()
        .await;
    let resp = get_with(weir.listener_addr("main"), "/pinned", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let wrong = "0".repeat(64);
    let stderr = run_fails(&bad_filter_manifest(
        conformance("broken", r#"{"scenario":"none"}"#).sha256(&wrong),
    ))
    .await;
    assert!(
        stderr.contains("filters.broken.sha256"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&digest),
        "the actual digest is named: {stderr}"
    );
}

#[test]
fn chain_manifests_pass_check() {
    let m = bad_filter_manifest(conformance("broken", r#"{"scenario":"trace"}"#));
    let out = weir_tests::check(&m);
    assert!(out.status.success(), "{m}\nstderr:\n{}", out.stderr);
}
