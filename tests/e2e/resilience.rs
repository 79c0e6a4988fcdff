//! Traffic resilience (issue 8) against upstreams that misbehave on demand
//! ([`ControlledServer`]): retries after a reset, the retry budget against a retry storm,
//! non-idempotent requests and body replay, circuit breakers tripping and recovering, outlier
//! ejection and return, health checks failing over to the next priority, peak-EWMA balancing
//! away from a slow endpoint, per-try / overall / idle timeouts, the route decision's retry
//! settings, and what `/clusters`, `/metrics` and `weir check` show.
//!
//! Long (950 lines) because each test states its own cluster settings and upstream behaviour; a new
//! resilience feature gets a module of its own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::Value;
use weir_tests::client::Collected;
use weir_tests::{
    ChainManifest, ControlledServer, EchoServer, FilterDef, H1Client, Weir, check, eventually,
    within, within_for,
};

use crate::{assert_error, pattern};

/// A manifest with listener `main` → cluster `web` (`endpoints` as YAML), `extra` YAML lines under
/// the cluster, and an admin listener.
fn manifest(workers: usize, endpoints: &str, extra: &[&str]) -> String {
    let mut y = format!(
        "workers: {workers}\nadmin: {{ address: 127.0.0.1:0 }}\nlisteners:\n  - name: main\n    address: 127.0.0.1:0\n    default_cluster: web\nclusters:\n  web:\n    endpoints: {endpoints}\n"
    );
    for l in extra {
        y.push_str("    ");
        y.push_str(l);
        y.push('\n');
    }
    y
}

fn list(addrs: &[SocketAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!("[{}]", v.join(", "))
}

async fn admin_get(weir: &Weir, path: &str) -> String {
    let mut c = H1Client::connect(weir.admin_addr()).await;
    let r = c.get(path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.text()
}

async fn clusters(weir: &Weir) -> Value {
    serde_json::from_str(&admin_get(weir, "/clusters").await).expect("/clusters is JSON")
}

/// `/clusters`' entry for one endpoint of the first cluster.
fn endpoint(clusters: &Value, addr: SocketAddr) -> Value {
    clusters["clusters"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("no endpoint {addr} in {clusters}"))
        .clone()
}

/// `/metrics` once every request on listener `main` has been recorded: a request's downstream
/// counters (class, flags) are written when its response has gone out, which can be just after
/// the client has read it.
async fn settled_metrics(weir: &Weir) -> String {
    eventually("listener main has no request in flight", async || {
        let text = admin_get(weir, "/metrics").await;
        match metric(&text, r#"weir_downstream_rq_active{listener="main"}"#) {
            Some(0.0) => Ok(text),
            active => Err(format!("weir_downstream_rq_active {active:?}")),
        }
    })
    .await
}

/// The value of one exact series (`name{labels}`) in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/clusters` until endpoint `addr` shows `key: want` (`healthy`, `ejected`).
async fn wait_endpoint(weir: &Weir, addr: SocketAddr, key: &str, want: bool) {
    eventually(
        &format!("endpoint {addr} to show {key}: {want}"),
        async || {
            let ep = endpoint(&clusters(weir).await, addr);
            if ep[key] == want { Ok(()) } else { Err(ep) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_retry_succeeds_after_one_reset() {
    let s = ControlledServer::start().await;
    let weir = Weir::start(&manifest(
        1,
        &list(&[s.addr]),
        &["retries: { attempts: 2 }"],
    ))
    .await;
    s.reset_next(1);
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let r = c.get("/once").await;
    assert_eq!(r.status, 200, "{r:?}");
    // Visible both ways: the upstream saw which attempt it answered, the client how many it took.
    assert_eq!(r.header("x-weir-attempt-count"), Some("2"));
    assert_eq!(r.header("x-seen-attempt"), Some("2"));
    let seen = s.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].header("x-weir-attempt-count"), Some("1"));
    assert_eq!(seen[1].header("x-weir-attempt-count"), Some("2"));
    assert_ne!(
        seen[0].conn, seen[1].conn,
        "the retry used a fresh connection"
    );

    let m = settled_metrics(&weir).await;
    let series = |name: &str| metric(&m, &format!("{name}{{cluster=\"web\"}}"));
    assert_eq!(
        series("weir_cluster_upstream_rq_retry_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series("weir_cluster_upstream_rq_retry_success_total"),
        Some(1.0)
    );
    assert_eq!(series("weir_cluster_upstream_rq_total"), Some(2.0));
    // Telemetry's per-endpoint view counts the same: two attempts, one a retry, the first a
    // reset; a retry that succeeded leaves no response flag on the request.
    let ep = |name: &str| {
        metric(
            &m,
            &format!("{name}{{cluster=\"web\",endpoint=\"{}\"}}", s.addr),
        )
    };
    assert_eq!(ep("weir_upstream_rq_retry_total"), Some(1.0), "{m}");
    assert_eq!(ep("weir_upstream_rq_reset_total"), Some(1.0), "{m}");
    assert!(!m.contains("weir_downstream_rq_flags_total{listener=\"main\",flag=\"UC\"} 1"));
    let cl = clusters(&weir).await;
    assert_eq!(cl["clusters"][0]["retries"]["sent"], 1, "{cl}");
    assert_eq!(endpoint(&cl, s.addr)["rq_error"], 1, "{cl}");

    // Without a reset nothing is retried, and the count still shows.
    let r = c.get("/plain").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-weir-attempt-count"), Some("1"));
    assert_eq!(s.request_count(), 3);
}

#[tokio::test]
async fn a_request_out_of_retries_answers_as_its_last_attempt_and_is_flagged_urx() {
    let s = ControlledServer::start().await;
    let weir = Weir::start(&manifest(
        1,
        &list(&[s.addr]),
        &["retries: { attempts: 1, backoff: { base: 1ms, max: 1ms } }"],
    ))
    .await;
    s.reset_next(2);
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let r = c.get("/twice").await;
    assert_error(&r, 502, "upstream_reset");
    assert_eq!(r.header("x-weir-attempt-count"), Some("2"));
    assert_eq!(s.request_count(), 2);

    let m = settled_metrics(&weir).await;
    assert_eq!(
        metric(
            &m,
            r#"weir_upstream_rq_retry_limit_exceeded_total{cluster="web"}"#
        ),
        Some(1.0),
        "{m}"
    );
    for flag in ["URX", "UC"] {
        assert_eq!(
            metric(
                &m,
                &format!("weir_downstream_rq_flags_total{{listener=\"main\",flag=\"{flag}\"}}")
            ),
            Some(1.0),
            "{flag}: {m}"
        );
    }
}

#[tokio::test]
async fn a_post_is_not_retried_unless_the_policy_allows_it() {
    let s = ControlledServer::start().await;
    let weir = Weir::start(&manifest(
        1,
        &list(&[s.addr]),
        &["retries: { attempts: 2 }"],
    ))
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    s.reset_next(1);
    let r = c.post("/p", "payload").await;
    assert_error(&r, 502, "upstream_reset");
    assert_eq!(r.header("x-weir-attempt-count"), Some("1"));
    assert_eq!(
        s.request_count(),
        1,
        "a POST that may have been processed is never replayed"
    );
    // The same reset on a GET is retried.
    s.reset_next(1);
    assert_eq!(c.get("/g").await.status, 200);
    assert_eq!(s.request_count(), 3);
    drop(weir);

    // `non_idempotent: true` retries it, with the body replayed byte for byte.
    let weir = Weir::start(&manifest(
        1,
        &list(&[s.addr]),
        &["retries: { attempts: 2, non_idempotent: true, max_body: 64KiB }"],
    ))
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let body = pattern(40_000);
    s.reset_next(1);
    let before = s.request_count();
    let r = c.post("/p", body.clone()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-weir-attempt-count"), Some("2"));
    let seen = s.requests();
    assert_eq!(seen.len(), before + 2);
    assert_eq!(seen[before].body, body, "first attempt");
    assert_eq!(seen[before + 1].body, body, "replayed attempt");
    // A body over `max_body` is not kept, so it is not retried.
    let big = pattern(100_000);
    s.reset_next(1);
    let r = c.post("/big", big).await;
    assert_error(&r, 502, "upstream_reset");
    assert_eq!(s.request_count(), before + 3);
}

#[tokio::test]
async fn the_retry_budget_stops_a_retry_storm() {
    // Every answer is a retriable 503: without a budget each request would go out 4 times.
    let s = ControlledServer::start().await;
    s.set_status(503);
    let weir = Weir::start(&manifest(
        2,
        &list(&[s.addr]),
        &[
            "retries: { attempts: 3, on: [\"503\"], backoff: { base: 1ms, max: 1ms }, budget: { percent: 20, min_per_second: 1, ttl: 10s } }",
        ],
    ))
    .await;
    let addr = weir.listener_addr("main");
    const CLIENTS: usize = 4;
    const EACH: usize = 50;
    let n = CLIENTS * EACH;
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = H1Client::connect(addr).await;
                for _ in 0..EACH {
                    let r = c.get("/storm").await;
                    assert_eq!(r.status, 503, "{r:?}");
                    assert_eq!(r.header("x-weir-error"), None, "the upstream's own 503");
                    assert!(r.header("x-weir-attempt-count").is_some());
                }
            })
        })
        .collect();
    within_for(Duration::from_secs(60), "the storm", async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    let elapsed = started.elapsed();
    let upstream = s.request_count();
    let retries = upstream - n;
    // 20% of the requests, plus 1/s × 10s of reserve per budget window the test spanned.
    let windows = 1 + elapsed.as_secs() / 10;
    let allowed = n / 5 + 10 * windows as usize;
    let amplification = upstream as f64 / n as f64;
    eprintln!(
        "retry storm: {n} requests, {upstream} upstream requests ({retries} retries, amplification {amplification:.3}), budget {allowed}, {elapsed:?}"
    );
    assert!(
        retries <= allowed,
        "{retries} retries for {n} requests (amplification {amplification:.2}); the budget allows {allowed}"
    );
    assert!(
        retries >= 10,
        "the budget's reserve was used: {retries} retries"
    );
    let m = admin_get(&weir, "/metrics").await;
    let refused = metric(
        &m,
        r#"weir_cluster_upstream_rq_retry_overflow_total{cluster="web",reason="budget"}"#,
    )
    .unwrap();
    assert!(refused > 0.0, "{m}");
    assert_eq!(
        metric(&m, r#"weir_cluster_upstream_rq_retry_total{cluster="web"}"#),
        Some(retries as f64)
    );
}

#[tokio::test]
async fn the_breaker_trips_at_max_requests_and_recovers() {
    let echo = EchoServer::start().await;
    let weir = Weir::start(&manifest(
        1,
        &list(&[echo.addr]),
        &["circuit_breaker: { max_requests: 2 }"],
    ))
    .await;
    let addr = weir.listener_addr("main");
    let held: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = H1Client::connect(addr).await;
                c.get("/hold").await
            })
        })
        .collect();
    echo.wait_in_flight(2).await;
    let open = |m: &str| {
        metric(
            m,
            r#"weir_cluster_circuit_breaker_open{cluster="web",resource="requests"}"#,
        )
    };
    assert_eq!(open(&admin_get(&weir, "/metrics").await), Some(1.0));

    // At the threshold: the third request is refused at once, never reaching the upstream.
    let mut c = H1Client::connect(addr).await;
    let t = Instant::now();
    let r = c.get("/third").await;
    assert_error(&r, 503, "upstream_overflow");
    assert_eq!(r.header("x-weir-overflow"), Some("requests"));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "fast: {:?}",
        t.elapsed()
    );
    assert_eq!(echo.requests().len(), 2);

    // Released, it closes again.
    echo.release(2);
    for h in held {
        assert_eq!(within("held requests", h).await.unwrap().status, 200);
    }
    echo.wait_in_flight(0).await;
    let mut c = H1Client::connect(addr).await;
    assert_eq!(c.get("/after").await.status, 200);
    let m = settled_metrics(&weir).await;
    assert_eq!(open(&m), Some(0.0), "{m}");
    assert_eq!(
        metric(
            &m,
            r#"weir_cluster_upstream_overflow_total{cluster="web",resource="requests"}"#
        ),
        Some(1.0)
    );
    // The refused request carries the `UO` flag and is counted against the cluster.
    assert_eq!(
        metric(
            &m,
            r#"weir_downstream_rq_flags_total{listener="main",flag="UO"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"weir_upstream_rq_overflow_total{cluster="web"}"#),
        Some(1.0)
    );
    let cl = clusters(&weir).await;
    let b = &cl["clusters"][0]["circuit_breakers"]["requests"];
    assert_eq!(
        (b["max"].as_u64(), b["overflow"].as_u64()),
        (Some(2), Some(1)),
        "{cl}"
    );
}

#[tokio::test]
async fn the_breaker_caps_upstream_connections() {
    let echo = EchoServer::start().await;
    let weir = Weir::start(&manifest(
        1,
        &list(&[echo.addr]),
        &["circuit_breaker: { max_connections: 1 }"],
    ))
    .await;
    let addr = weir.listener_addr("main");
    let held = tokio::spawn(async move { H1Client::connect(addr).await.get("/hold").await });
    echo.wait_in_flight(1).await;
    // A second request needs a second connection.
    let r = H1Client::connect(addr).await.get("/second").await;
    assert_error(&r, 503, "upstream_overflow");
    assert_eq!(r.header("x-weir-overflow"), Some("connections"));
    echo.release(1);
    assert_eq!(within("held", held).await.unwrap().status, 200);
    // The one connection is pooled again and serves the next request.
    assert_eq!(
        H1Client::connect(addr).await.get("/third").await.status,
        200
    );
    assert_eq!(echo.accepts(), 1);
}

#[tokio::test]
async fn an_endpoint_answering_500s_is_ejected_and_later_readmitted() {
    let (bad, good) = (
        ControlledServer::start().await,
        ControlledServer::start().await,
    );
    bad.set_status(500);
    let weir = Weir::start(&manifest(
        1,
        &list(&[bad.addr, good.addr]),
        &[
            "outlier: { consecutive_5xx: 3, interval: 50ms, base_ejection: 2s, max_ejection_percent: 50 }",
        ],
    ))
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    // Round robin: the bad endpoint answers three of these six with 500.
    let mut fivexx = 0;
    for _ in 0..6 {
        if c.get("/x").await.status == 500 {
            fivexx += 1;
        }
    }
    assert_eq!(fivexx, 3);
    let cl = clusters(&weir).await;
    let e = endpoint(&cl, bad.addr);
    assert_eq!(e["ejected"], true, "{cl}");
    assert_eq!(e["available"], false);
    assert_eq!(cl["clusters"][0]["outlier"]["ejected"], 1);
    let m = admin_get(&weir, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            r#"weir_cluster_outlier_ejections_total{cluster="web",reason="consecutive_5xx"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "weir_upstream_ejections_total{{cluster=\"web\",endpoint=\"{}\"}}",
                bad.addr
            )
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "weir_cluster_endpoint_healthy{{cluster=\"web\",endpoint=\"{}\",priority=\"0\"}}",
                bad.addr
            )
        ),
        Some(0.0)
    );

    // While ejected, every request goes to the good endpoint.
    let before = bad.request_count();
    for _ in 0..20 {
        let r = c.get("/y").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some(good.addr.to_string().as_str()));
    }
    if endpoint(&clusters(&weir).await, bad.addr)["ejected"] == true {
        assert_eq!(
            bad.request_count(),
            before,
            "no request reached the ejected endpoint"
        );
    }

    // It recovers; once its ejection is over it is balanced to again.
    bad.set_status(200);
    wait_endpoint(&weir, bad.addr, "ejected", false).await;
    let mut to_bad = 0;
    for _ in 0..10 {
        let r = c.get("/z").await;
        assert_eq!(r.status, 200);
        if r.header("x-upstream") == Some(bad.addr.to_string().as_str()) {
            to_bad += 1;
        }
    }
    assert_eq!(to_bad, 5, "round robin again");
}

/// `kind: tcp`: a connection is the probe. An endpoint that refuses connections is marked down
/// and takes no traffic; one that accepts stays up without ever seeing an HTTP probe.
#[tokio::test]
async fn a_tcp_health_check_marks_a_refusing_endpoint_down() {
    let live = ControlledServer::start().await;
    let dead = weir_tests::closed_port();
    let weir = Weir::start(&manifest(
        1,
        &list(&[live.addr, dead]),
        &["health_check: { kind: tcp, interval: 100ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 1 }"],
    ))
    .await;
    wait_endpoint(&weir, dead, "healthy", false).await;
    let c = clusters(&weir).await;
    assert_eq!(endpoint(&c, live.addr)["healthy"], true, "{c}");
    let hc = &c["clusters"][0]["health_check"];
    assert_eq!(hc["settings"]["kind"], "tcp", "{c}");
    assert!(hc["failures"].as_u64().unwrap() >= 2, "{c}");
    assert!(hc["passes"].as_u64().unwrap() >= 2, "{c}");
    // Two rounds have run: the live endpoint was connected to (its accept loop may trail the
    // probes by a moment), never asked anything.
    eventually("the live endpoint to accept both probes", async || {
        let accepts = live.accepts();
        if accepts >= 2 { Ok(()) } else { Err(accepts) }
    })
    .await;
    assert_eq!(live.health_checks(), 0);
    assert_eq!(live.request_count(), 0);
    let mut client = H1Client::connect(weir.listener_addr("main")).await;
    for _ in 0..10 {
        let r = client.get("/x").await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(
        live.request_count(),
        10,
        "every request went to the live endpoint"
    );
}

#[tokio::test]
async fn a_failing_health_check_fails_over_to_the_next_priority() {
    let (primary, backup) = (
        ControlledServer::start().await,
        ControlledServer::start().await,
    );
    let weir = Weir::start(&manifest(
        1,
        &format!(
            "[{{address: {}, priority: 0}}, {{address: {}, priority: 1}}]",
            primary.addr, backup.addr
        ),
        &[
            "health_check: { path: /healthz, interval: 100ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 1 }",
        ],
    ))
    .await;
    primary.wait_health_checks(1).await;
    backup.wait_health_checks(1).await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let from = |r: &Collected, s: &ControlledServer| {
        r.header("x-upstream") == Some(s.addr.to_string().as_str())
    };
    for _ in 0..10 {
        let r = c.get("/x").await;
        assert_eq!(r.status, 200);
        assert!(
            from(&r, &primary),
            "priority 0 takes everything while healthy"
        );
    }

    // The primary goes down: its health endpoint and its answers fail.
    primary.set_healthy(false);
    primary.set_status(503);
    let down = Instant::now();
    let mut failed_in_window = 0;
    let detected = eventually("the health check to mark the primary down", async || {
        if c.get("/x").await.status != 200 {
            failed_in_window += 1;
        }
        let ep = endpoint(&clusters(&weir).await, primary.addr);
        if ep["healthy"] == false {
            Ok(Instant::now())
        } else {
            Err(ep)
        }
    })
    .await;
    let window = detected - down;
    // Two failed probes 100 ms apart: well under a second, even on a slow machine.
    assert!(window < Duration::from_secs(5), "detection took {window:?}");

    // Past the detection window: not one failed request, all on priority 1.
    for _ in 0..50 {
        let r = c.get("/x").await;
        assert_eq!(
            r.status, 200,
            "{r:?} (failures inside the window: {failed_in_window})"
        );
        assert!(from(&r, &backup));
    }
    let m = admin_get(&weir, "/metrics").await;
    let load = |p: u32| {
        metric(
            &m,
            &format!("weir_cluster_priority_load_percent{{cluster=\"web\",priority=\"{p}\"}}"),
        )
    };
    assert_eq!((load(0), load(1)), (Some(0.0), Some(100.0)), "{m}");
    assert!(
        metric(
            &m,
            r#"weir_cluster_health_check_total{cluster="web",result="failure"}"#
        )
        .unwrap()
            >= 2.0
    );

    // Healthy again: traffic comes back to priority 0.
    primary.set_healthy(true);
    primary.set_status(200);
    wait_endpoint(&weir, primary.addr, "healthy", true).await;
    for _ in 0..10 {
        let r = c.get("/x").await;
        assert_eq!(r.status, 200);
        assert!(from(&r, &primary));
    }
}

#[tokio::test]
async fn p2c_ewma_sends_little_to_an_endpoint_ten_times_slower() {
    let fast: Vec<ControlledServer> = vec![
        ControlledServer::start().await,
        ControlledServer::start().await,
    ];
    let slow = ControlledServer::start().await;
    for f in &fast {
        f.set_delay(Duration::from_millis(10));
    }
    slow.set_delay(Duration::from_millis(100));
    let weir = Weir::start(&manifest(
        1,
        &list(&[fast[0].addr, fast[1].addr, slow.addr]),
        &["lb: p2c_ewma"],
    ))
    .await;
    let addr = weir.listener_addr("main");
    const CLIENTS: usize = 6;
    const EACH: usize = 40;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = H1Client::connect(addr).await;
                for _ in 0..EACH {
                    assert_eq!(c.get("/x").await.status, 200);
                }
            })
        })
        .collect();
    within_for(Duration::from_secs(120), "the load", async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    let total = (CLIENTS * EACH) as f64;
    let to_slow = slow.request_count() as f64;
    let share = to_slow / total;
    eprintln!(
        "p2c_ewma: slow endpoint {to_slow} of {total} ({:.1}%), fast {} and {}",
        share * 100.0,
        fast[0].request_count(),
        fast[1].request_count()
    );
    assert!(
        share < 0.2,
        "the slow endpoint got {to_slow} of {total} requests ({:.1}%); fast ones: {} and {}",
        share * 100.0,
        fast[0].request_count(),
        fast[1].request_count()
    );
    assert!(
        fast.iter().all(|f| f.request_count() > 0),
        "both fast endpoints share the rest"
    );
}

#[tokio::test]
async fn a_per_try_timeout_moves_a_slow_attempt_to_another_endpoint() {
    let (slow, fast) = (
        ControlledServer::start().await,
        ControlledServer::start().await,
    );
    slow.set_delay(Duration::from_secs(5));
    let weir = Weir::start(&manifest(
        1,
        &list(&[slow.addr, fast.addr]),
        &["timeouts: { per_try: 200ms }", "retries: { attempts: 1 }"],
    ))
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let mut retried = 0;
    for _ in 0..4 {
        let t = Instant::now();
        let r = c.get("/x").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-upstream"), Some(fast.addr.to_string().as_str()));
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        if r.header("x-weir-attempt-count") == Some("2") {
            retried += 1;
        }
    }
    assert_eq!(
        retried,
        slow.request_count(),
        "every slow first try was retried"
    );
    assert!(retried >= 1);
    let m = admin_get(&weir, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            r#"weir_cluster_upstream_rq_timeout_total{cluster="web",kind="per_try"}"#
        ),
        Some(retried as f64),
        "{m}"
    );
}

#[tokio::test]
async fn per_try_and_request_timeouts_answer_504_with_their_reason() {
    let slow = ControlledServer::start().await;
    slow.set_delay(Duration::from_secs(5));
    let weir = Weir::start(&manifest(
        1,
        &list(&[slow.addr]),
        &["timeouts: { per_try: 300ms }"],
    ))
    .await;
    let t = Instant::now();
    let r = H1Client::connect(weir.listener_addr("main"))
        .await
        .get("/a")
        .await;
    assert_error(&r, 504, "upstream_per_try_timeout");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    drop(weir);

    // The overall deadline covers every attempt and backoff.
    let weir = Weir::start(&manifest(
        1,
        &list(&[slow.addr]),
        &[
            "timeouts: { per_try: 300ms, request: 500ms }",
            "retries: { attempts: 5, backoff: { base: 10ms, max: 10ms } }",
        ],
    ))
    .await;
    let t = Instant::now();
    let r = H1Client::connect(weir.listener_addr("main"))
        .await
        .get("/b")
        .await;
    assert_error(&r, 504, "upstream_request_timeout");
    // Cut during the second attempt (or, on a slow machine, during the backoff before it).
    assert!(r.header("x-weir-attempt-count").is_some());
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_stalled_response_body_is_aborted_at_the_idle_timeout() {
    let s = ControlledServer::start().await;
    s.set_stall_body(true);
    let weir = Weir::start(&manifest(
        1,
        &list(&[s.addr]),
        &["timeouts: { idle: 300ms }"],
    ))
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let req = c
        .request("GET", "/stall")
        .body(weir_tests::body_empty())
        .unwrap();
    let resp = within("the response head", c.send(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The head was out: the client sees the body break off, never a clean short body.
    let body = within("the body to end", resp.into_body().collect()).await;
    assert!(body.is_err(), "a stalled body must abort");
    let m = admin_get(&weir, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            r#"weir_cluster_upstream_rq_timeout_total{cluster="web",kind="idle"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn the_route_decision_sets_retries_and_the_per_try_timeout() {
    let s = ControlledServer::start().await;
    let config = r#"{"routes": [
        {"match": {"path": {"prefix": "/retry"}}, "to": "web", "retries": 2},
        {"match": {"path": {"prefix": "/quick"}}, "to": "web", "per_try_timeout": "200ms"},
        {"to": "web"}
    ]}"#;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[s.addr])
        .chain("edge", &["r"])
        .filter(FilterDef::new("r", "builtin:router").config(config))
        .start()
        .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    // First, while weir holds no pooled connection (a reset on a reused one is re-sent by the
    // HTTP/1.1 client itself): without a route retry, the reset is the answer.
    s.reset_next(1);
    assert_error(&c.get("/plain").await, 502, "upstream_reset");
    // The cluster has no retry policy: the route's retries bring the defaults (reset included).
    s.reset_next(1);
    let r = c.get("/retry").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-weir-attempt-count"), Some("2"));
    s.set_delay(Duration::from_secs(5));
    let t = Instant::now();
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    assert_error(&c.get("/quick").await, 504, "upstream_per_try_timeout");
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn clusters_show_priorities_weights_and_settings() {
    let (a, b) = (
        ControlledServer::start().await,
        ControlledServer::start().await,
    );
    let weir = Weir::start(&manifest(
        1,
        &format!(
            "[{{address: {}, weight: 3}}, {{address: {}, priority: 1}}]",
            a.addr, b.addr
        ),
        &[
            "retries: { attempts: 1, on: [reset, 503] }",
            "outlier: { consecutive_gateway_errors: 4 }",
        ],
    ))
    .await;
    assert_eq!(
        H1Client::connect(weir.listener_addr("main"))
            .await
            .get("/")
            .await
            .status,
        200
    );
    let cl = clusters(&weir).await;
    let c = &cl["clusters"][0];
    assert_eq!(endpoint(&cl, a.addr)["weight"], 3, "{cl}");
    assert_eq!(endpoint(&cl, b.addr)["priority"], 1);
    assert_eq!(c["priorities"][0]["load_percent"], 100);
    assert_eq!(c["priorities"][1]["load_percent"], 0);
    assert_eq!(
        c["retries"]["policy"]["on"],
        serde_json::json!(["reset", "503"])
    );
    assert_eq!(c["outlier"]["settings"]["consecutive_gateway_errors"], 4);
    assert_eq!(c["circuit_breakers"]["connections"]["max"], 1024);
    assert_eq!(c["rq_total"], 1);
    let m = admin_get(&weir, "/metrics").await;
    for family in [
        "weir_cluster_upstream_rq_total",
        "weir_cluster_upstream_rq_retry_total",
        "weir_cluster_outlier_ejections_total",
        "weir_cluster_circuit_breaker_open",
        "weir_cluster_endpoint_healthy",
        "weir_cluster_priority_load_percent",
    ] {
        assert!(
            m.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{m}"
        );
    }
}

#[test]
fn weir_check_validates_the_resilience_fields() {
    let good = manifest(
        2,
        "[127.0.0.1:9001, {address: 127.0.0.1:9002, weight: 2, priority: 1}]",
        &[
            "lb: p2c_ewma",
            "timeouts: { connect: 1s, response: 15s, per_try: 2s, request: 10s, idle: 60s }",
            "retries: { attempts: 2, on: [connect_failure, refused_stream, reset, 5xx, gateway_error, 503], non_idempotent: false, max_body: 64KiB, backoff: { base: 25ms, max: 250ms }, budget: { percent: 20, min_per_second: 10, ttl: 10s } }",
            "circuit_breaker: { max_connections: 1024, max_pending: 1024, max_requests: 1024, max_retries: 3 }",
            "outlier: { consecutive_5xx: 5, consecutive_gateway_errors: 5, consecutive_connect_failures: 5, interval: 10s, base_ejection: 30s, max_ejection: 300s, max_ejection_percent: 10 }",
            "health_check: { path: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2, host: web.local }",
            "failover: { overprovisioning_factor: 1.4, panic_threshold: 50 }",
            "ewma: { decay: 10s, default_rtt: 30ms }",
        ],
    );
    let out = check(&good);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "ok");

    let bad = manifest(
        1,
        "[{address: 127.0.0.1:9001, weight: 0}]",
        &[
            "retries: { on: [sometimes], budget: { percent: 150 } }",
            "circuit_breaker: { max_requests: 0 }",
            "outlier: { max_ejection_percent: 200 }",
            "health_check: { path: nope }",
            "timeouts: { per_try: 0s }",
        ],
    );
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    for path in [
        "clusters.web.endpoints[0].weight",
        "clusters.web.retries.on[0]",
        "clusters.web.retries.budget.percent",
        "clusters.web.circuit_breaker.max_requests",
        "clusters.web.outlier.max_ejection_percent",
        "clusters.web.health_check.path",
        "clusters.web.timeouts.per_try",
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with(&format!("error: {path}"))),
            "no `error: {path}` line in:\n{}",
            out.stderr
        );
    }
    // An unknown field inside the new sections is named too.
    let typo = manifest(1, "[127.0.0.1:9001]", &["retries: { attempt: 2 }"]);
    let out = check(&typo);
    assert!(
        out.stderr.contains("clusters.web.retries") && out.stderr.contains("attempt"),
        "{}",
        out.stderr
    );
}
