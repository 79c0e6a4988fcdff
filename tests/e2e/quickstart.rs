//! The embedded default manifest (`weir run` with no `--config`) as the README walks through it:
//! the stock policy chain in front of the demo upstreams answers `curl` at once — a canary header
//! changes the answer, a fault header injects an error, `/private` wants a key, a burst gets 429,
//! and the upstream sees a `traceparent`. Ports are swapped for 0 so the test runs anywhere.

use weir_tests::{H1Client, Weir};

/// `weir default-config` with both fixed ports replaced by 0.
fn default_manifest() -> String {
    let out = std::process::Command::new(weir_tests::weir_bin())
        .arg("default-config")
        .output()
        .expect("run weir default-config");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("127.0.0.1:8080") && text.contains("127.0.0.1:9901"));
    text.replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
}

/// GET `path` with `headers` on a fresh connection.
async fn get(weir: &Weir, path: &str, headers: &[(&str, &str)]) -> weir_tests::client::Collected {
    H1Client::connect(weir.listener_addr("main"))
        .await
        .get_with(path, headers)
        .await
}

#[tokio::test]
async fn the_embedded_default_shows_the_policy_layer() {
    let weir = Weir::start(&default_manifest()).await;

    let r = get(&weir, "/hello", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-demo-upstream"), Some("v1"));
    let echoed = r.text();
    let tp = echoed
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("the upstream sees a traceparent:\n{echoed}"));
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-"), "{tp}");

    let r = get(&weir, "/", &[("x-canary", "1")]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-demo-upstream")),
        (200, Some("v2"))
    );

    let r = get(&weir, "/", &[("x-weir-fault-abort", "503")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-weir-fault"), Some("abort"));

    let r = get(&weir, "/private", &[]).await;
    assert_eq!(r.status, 401);
    let r = get(&weir, "/private", &[("x-api-key", "demo-key")]).await;
    assert_eq!(r.status, 200);

    // A burst from one client: the bucket (20, refilled at 10/s) runs dry.
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let mut limited = Vec::new();
    for _ in 0..40 {
        let r = c.get("/").await;
        if r.status == 429 {
            limited.push(r);
        }
    }
    assert!(limited.len() >= 10, "only {} of 40 got 429", limited.len());
    assert!(limited.iter().all(|r| r.header("retry-after").is_some()));
}
