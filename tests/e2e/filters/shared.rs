//! State shared by every worker's VM of a filter: shared data, shared queues, and the metrics a
//! filter defines, exported on admin `/metrics`.

use std::collections::HashSet;

use weir_tests::{EchoServer, eventually};

use super::common::{conformance, get_with, one_chain, trace};

#[tokio::test]
async fn shared_data_is_visible_across_workers() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("count", "s")])
        .workers(2)
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let mut vms = HashSet::new();
    let mut n = 0;
    // Separate connections until both workers' VMs have served (SO_REUSEPORT spreads them);
    // the shared counter must count every request once, whichever worker served it.
    while vms.len() < 2 || n < 8 {
        assert!(n < 200, "200 connections all went to one worker: {vms:?}");
        let resp = get_with(addr, &format!("/s{n}"), &[]).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        n += 1;
        let r = &echo.wait_requests(n).await[n - 1];
        vms.insert(r.header("x-trace-s-vm").unwrap().to_string());
        assert_eq!(
            r.header("x-trace-s-count"),
            Some(n.to_string().as_str()),
            "request {n} (served by VM {:?}) sees the shared counter of both workers",
            r.header("x-trace-s-vm")
        );
    }
    // Both VMs' own counts add up to the shared one.
    let reqs = echo.requests();
    let mut last = std::collections::HashMap::new();
    for r in &reqs {
        let vm = r.header("x-trace-s-vm").unwrap();
        let seen: usize = r.header("x-trace-s-vm-requests").unwrap().parse().unwrap();
        last.insert(vm.to_string(), seen);
    }
    assert_eq!(last.len(), 2);
    assert_eq!(last.values().sum::<usize>(), n);
}

/// Shared queues across workers: every request's VM (on either worker) enqueues its path; the
/// VM that registered the queue is notified on its own worker and dequeues every item.
#[tokio::test]
async fn shared_queue_items_from_every_worker_are_dequeued() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("count", "q"),
            conformance("queue", r#"{"scenario":"queue","queue":"paths"}"#),
        ],
    )
    .workers(2)
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut vms = HashSet::new();
    let mut n = 0;
    while vms.len() < 2 || n < 6 {
        assert!(n < 200, "200 connections all went to one worker");
        let resp = get_with(addr, &format!("/q{n}"), &[]).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        n += 1;
        let r = &echo.wait_requests(n).await[n - 1];
        assert_eq!(r.header("x-queue"), Some("enqueued"));
        vms.insert(r.header("x-trace-q-vm").unwrap().to_string());
    }
    eventually("every enqueued path to be dequeued", async || {
        let err = weir.stderr();
        let missing: Vec<usize> = (0..n)
            .filter(|i| {
                !err.contains(&format!("queue: dequeued /q{i}\n"))
                    && !err.contains(&format!("queue: dequeued /q{i} "))
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not dequeued: /q{missing:?}"))
        }
    })
    .await;
}

/// Metrics a filter defines (`proxy_define_metric`) are exported on admin `/metrics`, summed over
/// every worker's VM: counters and gauges as `weir_filter_metric{filter,name}`, histograms as
/// `_count` / `_sum`.
#[tokio::test]
async fn filter_defined_metrics_are_exported_on_admin() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "m",
            r#"{"scenario":"metrics","prefix":"demo"}"#,
        )],
    )
    .workers(2)
    .start()
    .await;
    let addr = weir.listener_addr("main");
    for i in 0..6 {
        let r = get_with(addr, &format!("/r{i}"), &[("x-value", "7")]).await;
        assert_eq!(r.status, 200);
    }
    let text = weir_tests::tls::get_metrics(weir.admin_addr()).await;
    let value = |name: &str, metric: &str| {
        weir_tests::tls::metric_values(&text, name, &[("filter", "m"), ("name", metric)])
    };
    assert_eq!(
        value("weir_filter_metric", "demo.requests"),
        [6.0],
        "{text}"
    );
    assert_eq!(
        value("weir_filter_metric_count", "demo.sizes"),
        [6.0],
        "{text}"
    );
    assert_eq!(
        value("weir_filter_metric_sum", "demo.sizes"),
        [42.0],
        "{text}"
    );
}
