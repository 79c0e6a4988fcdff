//! `builtin:ratelimit` end to end: the real `weir` process with two workers, many concurrent
//! client connections (spread over both workers by SO_REUSEPORT), buckets in shared data — the
//! limit is exact process-wide, 429s carry `retry-after` and `x-ratelimit-*`, and a header-keyed
//! bucket limits each header value on its own.

use std::collections::HashSet;
use std::net::SocketAddr;

use weir_test_artifacts::CONFORMANCE;
use weir_tests::client::Collected;
use weir_tests::tls::get_metrics;
use weir_tests::{ChainManifest, EchoServer, FilterDef, H1Client, Weir};

/// Two workers; listener `main` → cluster `web` (`ep`) through chain `edge` = `builtin:ratelimit`
/// (`rl`, configured with `json`) then the conformance `trace` filter (`t`), which stamps the
/// serving VM on the upstream request (`x-trace-s-vm`).
async fn start(ep: SocketAddr, json: &str) -> Weir {
    ChainManifest::new()
        .workers(2)
        .listener("main", "web", Some("edge"))
        .cluster("web", &[ep])
        .chain("edge", &["rl", "t"])
        .filter(FilterDef::new("rl", "builtin:ratelimit").config(json))
        .filter(FilterDef::new("t", CONFORMANCE).config(r#"{"scenario":"trace","tag":"s"}"#))
        .start()
        .await
}

/// `GET path` on a fresh connection (so the kernel picks a worker for each request).
async fn get_fresh(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Collected {
    H1Client::connect(addr).await.get_with(path, headers).await
}

/// `n` requests from `tasks` concurrent tasks, each request on its own connection.
async fn burst(
    addr: SocketAddr,
    tasks: usize,
    n: usize,
    headers: &[(&str, &str)],
) -> Vec<Collected> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let headers = headers.clone();
            tokio::spawn(async move {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut out = Vec::new();
                for j in (t..n).step_by(tasks) {
                    out.push(get_fresh(addr, &format!("/r{j}"), &h).await);
                }
                out
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for h in handles {
        all.extend(h.await.unwrap());
    }
    assert_eq!(all.len(), n);
    all
}

#[track_caller]
fn assert_over_limit(r: &Collected, capacity: u64) {
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("x-weir-ratelimit"), Some("over_limit"), "{r:?}");
    assert_eq!(r.text(), "weir: over_limit\n");
    assert_eq!(
        r.header("x-ratelimit-limit"),
        Some(capacity.to_string().as_str())
    );
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let retry: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .unwrap();
    assert!(
        (3590..=3600).contains(&retry),
        "one token per hour: {retry}"
    );
    let reset: u64 = r
        .header("x-ratelimit-reset")
        .expect("x-ratelimit-reset")
        .parse()
        .unwrap();
    assert!(reset >= retry && reset <= capacity * 3600, "{reset}");
}

/// The allowed responses' `x-ratelimit-remaining`, each from a distinct successful CAS.
fn remaining(allowed: &[&Collected], capacity: u64) -> Vec<u64> {
    let mut v: Vec<u64> = allowed
        .iter()
        .map(|r| {
            assert_eq!(
                r.header("x-ratelimit-limit"),
                Some(capacity.to_string().as_str())
            );
            r.header("x-ratelimit-remaining")
                .expect("remaining")
                .parse()
                .unwrap()
        })
        .collect();
    v.sort_unstable();
    v
}

#[tokio::test]
async fn rate_limit_exactly_enforced_across_2_workers() {
    const CAPACITY: u64 = 50;
    const REQUESTS: usize = 200;
    let echo = EchoServer::start().await;
    let weir = start(
        echo.addr,
        r#"{"buckets": [{"name": "all", "key": {"global": true}, "capacity": 50,
                         "refill": {"tokens": 1, "per": "1h"}}]}"#,
    )
    .await;
    let addr = weir.listener_addr("main");
    let all = burst(addr, 20, REQUESTS, &[]).await;
    let allowed: Vec<&Collected> = all.iter().filter(|r| r.status == 200).collect();
    let limited: Vec<&Collected> = all.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        allowed.len(),
        CAPACITY as usize,
        "exactly the capacity is let through"
    );
    assert_eq!(limited.len(), REQUESTS - CAPACITY as usize);
    for r in &limited {
        assert_over_limit(r, CAPACITY);
    }
    // Every token was taken once: the remaining counts are exactly 49, 48, …, 0.
    assert_eq!(
        remaining(&allowed, CAPACITY),
        (0..CAPACITY).collect::<Vec<_>>()
    );
    // Both workers served allowed requests (their VMs stamp the upstream request).
    let reqs = echo.wait_requests(CAPACITY as usize).await;
    let vms: HashSet<&str> = reqs
        .iter()
        .map(|r| r.header("x-trace-s-vm").expect("trace stamp"))
        .collect();
    assert_eq!(vms.len(), 2, "both workers' VMs served requests: {vms:?}");
    assert_eq!(echo.requests().len(), CAPACITY as usize);
    // The metrics, summed over both workers.
    let metrics = get_metrics(weir.admin_addr()).await;
    for (name, want) in [("ratelimit.allowed", 50), ("ratelimit.limited", 150)] {
        let line = format!("weir_filter_metric{{filter=\"rl\",name=\"{name}\"}} {want}");
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn header_keyed_bucket_limits_each_value_on_its_own() {
    const CAPACITY: u64 = 10;
    let echo = EchoServer::start().await;
    let weir = start(
        echo.addr,
        r#"{"buckets": [{"name": "per-user", "key": {"header": "x-user"}, "capacity": 10,
                         "refill": {"tokens": 1, "per": "1h"}, "match": {"path_prefix": "/r"}}]}"#,
    )
    .await;
    let addr = weir.listener_addr("main");
    let (ana, bob) = tokio::join!(
        burst(addr, 8, 40, &[("x-user", "ana")]),
        burst(addr, 8, 25, &[("x-user", "bob")]),
    );
    for (who, all, n) in [("ana", &ana, 40), ("bob", &bob, 25)] {
        let allowed: Vec<&Collected> = all.iter().filter(|r| r.status == 200).collect();
        assert_eq!(allowed.len(), CAPACITY as usize, "{who}");
        assert_eq!(
            remaining(&allowed, CAPACITY),
            (0..CAPACITY).collect::<Vec<_>>()
        );
        let limited: Vec<&Collected> = all.iter().filter(|r| r.status == 429).collect();
        assert_eq!(limited.len(), n - CAPACITY as usize, "{who}");
        for r in limited {
            assert_over_limit(r, CAPACITY);
        }
    }
    // A third user still has a full bucket; requests without the header are not limited
    // (missing_key: allow), nor are paths outside the match.
    let r = get_fresh(addr, "/r/x", &[("x-user", "carol")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("9"));
    for i in 0..15 {
        let r = get_fresh(addr, &format!("/r/anon{i}"), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-ratelimit-limit"), None);
        let r = get_fresh(addr, "/other", &[("x-user", "ana")]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
}
