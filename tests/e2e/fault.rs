//! `builtin:fault` end to end: the real `weir` process between real clients and an echo upstream.
//! Aborts at the configured rate never reach the upstream; delays hold requests (resumed by the
//! filter's root timer) and then forward them; header-controlled faults only when enabled.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weir_tests::client::Collected;
use weir_tests::{ChainManifest, EchoServer, FilterDef, H1Client, Weir};

/// One listener `main` → cluster `web` (`ep`) through chain `edge` = one `builtin:fault`
/// configured with `json`.
async fn start(ep: SocketAddr, json: &str) -> Weir {
    ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[ep])
        .chain("edge", &["f"])
        .filter(FilterDef::new("f", "builtin:fault").config(json))
        .start()
        .await
}

async fn get(c: &mut H1Client, path: &str, headers: &[(&str, &str)]) -> Collected {
    c.get_with(path, headers).await
}

#[track_caller]
fn assert_fault_abort(r: &Collected, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("x-weir-fault"), Some("abort"), "{r:?}");
    assert_eq!(r.text(), "weir: fault_abort\n");
}

#[tokio::test]
async fn abort_rate_and_aborted_requests_never_reach_the_upstream() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, r#"{"abort":{"status":503,"percent":20}}"#).await;
    let addr = weir.listener_addr("main");
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 250;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = H1Client::connect(addr).await;
                let mut aborted = 0;
                for j in 0..PER_CLIENT {
                    let r = get(&mut c, &format!("/c{i}/r{j}"), &[]).await;
                    if r.status == 503 {
                        assert_fault_abort(&r, 503);
                        aborted += 1;
                    } else {
                        assert_eq!(r.status, 200, "{r:?}");
                        assert_eq!(r.header("x-weir-fault"), None);
                    }
                }
                assert!(
                    !c.is_closed(),
                    "an abort must not close the keep-alive connection"
                );
                aborted
            })
        })
        .collect();
    let mut aborted = 0;
    for t in tasks {
        aborted += t.await.unwrap();
    }
    let total = CLIENTS * PER_CLIENT;
    let rate = aborted as f64 / total as f64;
    assert!(
        (0.165..=0.235).contains(&rate),
        "abort rate {rate} ({aborted} of {total})"
    );
    let forwarded = total - aborted;
    echo.wait_requests(forwarded).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        echo.requests().len(),
        forwarded,
        "exactly the requests that were not aborted reach the upstream"
    );
}

#[tokio::test]
async fn delay_holds_the_request_then_forwards_it() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, r#"{"delay":{"fixed":"300ms","percent":100}}"#).await;
    let addr = weir.listener_addr("main");
    let delay = Duration::from_millis(300);

    let mut c = H1Client::connect(addr).await;
    let t = Instant::now();
    let r = get(&mut c, "/slow", &[]).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(took >= delay, "answered after {took:?}, before the delay");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let reqs = echo.wait_requests(1).await;
    assert_eq!(reqs[0].uri.path(), "/slow");

    // A request body waits with its headers and then goes through intact.
    let t = Instant::now();
    let r = c.post("/upload", "hello fault").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(t.elapsed() >= delay, "{:?}", t.elapsed());
    let reqs = echo.wait_requests(2).await;
    assert_eq!(reqs[1].uri.path(), "/upload");
    assert_eq!(&reqs[1].body[..], b"hello fault");

    // Concurrent delayed requests are all held, and all released.
    let t = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = H1Client::connect(addr).await;
                let r = get(&mut c, &format!("/many/{i}"), &[]).await;
                (r.status, Instant::now())
            })
        })
        .collect();
    for task in tasks {
        let (status, done) = task.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            done.duration_since(t) >= delay,
            "{:?}",
            done.duration_since(t)
        );
    }
    echo.wait_requests(12).await;
}

#[tokio::test]
async fn delay_then_abort_never_reaches_the_upstream() {
    let echo = EchoServer::start().await;
    let weir = start(
        echo.addr,
        r#"{"delay":{"fixed":"200ms"},"abort":{"status":504}}"#,
    )
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let t = Instant::now();
    let r = get(&mut c, "/x", &[]).await;
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_fault_abort(&r, 504);
    let r = get(&mut c, "/y", &[]).await;
    assert_fault_abort(&r, 504);
    assert_eq!(echo.requests().len(), 0);
}

#[tokio::test]
async fn header_controlled_abort_only_with_header_control() {
    let echo = EchoServer::start().await;
    let off = start(echo.addr, r#"{}"#).await;
    let mut c = H1Client::connect(off.listener_addr("main")).await;
    let r = get(&mut c, "/off", &[("x-weir-fault-abort", "418")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.wait_requests(1).await.len(), 1);

    let on = start(echo.addr, r#"{"header_control":true}"#).await;
    let mut c = H1Client::connect(on.listener_addr("main")).await;
    let r = get(&mut c, "/on", &[("x-weir-fault-abort", "418")]).await;
    assert_fault_abort(&r, 418);
    let r = get(&mut c, "/plain", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = Instant::now();
    let r = get(&mut c, "/hdr-delay", &[("x-weir-fault-delay-ms", "150")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    let reqs = echo.wait_requests(3).await;
    let paths: Vec<_> = reqs.iter().map(|r| r.uri.path().to_string()).collect();
    assert_eq!(paths, ["/off", "/plain", "/hdr-delay"]);
}

#[tokio::test]
async fn match_limits_the_faults() {
    let echo = EchoServer::start().await;
    let weir = start(
        echo.addr,
        r#"{"abort":{"status":503},"match":{"path_prefix":"/api"}}"#,
    )
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_fault_abort(&get(&mut c, "/api/v1", &[]).await, 503);
    assert_eq!(get(&mut c, "/web", &[]).await.status, 200);
    let reqs = echo.wait_requests(1).await;
    assert_eq!(reqs[0].uri.path(), "/web");
}

#[tokio::test]
async fn a_bad_configuration_stops_weir_run() {
    let manifest = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &["127.0.0.1:9".parse().unwrap()])
        .chain("edge", &["f"])
        .filter(
            FilterDef::new("f", "builtin:fault")
                .config(r#"{"abort":{"status":503,"percent":150}}"#),
        )
        .yaml();
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
    let out = weir_tests::within("weir run to exit on a bad filter", child.wait_with_output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "weir run accepted it:\n{stderr}");
    assert!(stderr.contains("filters.f"), "stderr:\n{stderr}");
    assert!(
        stderr.contains("percent"),
        "the reason is logged:\n{stderr}"
    );
}
