//! Filters that fail: traps in every phase and in a callout answer under `fail_open`,
//! `fail_closed` and `reload`, the callback deadline, VMs rebuilt while streams or callout answers
//! of the old VM are still around, and a trap storm leaving other listeners and chains untouched.

use std::time::Duration;

use weir_tests::{ChainManifest, EchoServer, H1Client, eventually, eventually_for, within};

use super::common::{conformance, get_with, one_chain, open_stream, trace, wait_log};
use crate::assert_error;

#[tokio::test]
async fn fail_open_skips_a_trapping_filter() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            conformance(
                "trap",
                r#"{"scenario":"none","panic_in":"on_request_headers"}"#,
            )
            .failure_policy("fail_open"),
            trace("after", "a"),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let mut c = H1Client::connect(addr).await;
    for i in 0..3 {
        let resp = c.get(&format!("/f{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert_eq!(resp.header("x-order"), Some("a"));
    }
    let reqs = echo.wait_requests(3).await;
    assert!(reqs.iter().all(|r| r.header("x-order") == Some("a")));
}

#[tokio::test]
async fn fail_closed_answers_503_filter_failed() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("before", "a"),
            conformance(
                "trap",
                r#"{"scenario":"none","panic_in":"on_request_headers"}"#,
            )
            .failure_policy("fail_closed"),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/c", &[]).await;
    assert_error(&resp, 503, "filter_failed");
    // The failure answer still runs the response phases and on_log of the filter before it.
    assert_eq!(resp.header("x-order"), Some("a"));
    assert_eq!(wait_log(addr, "a", "503").await, "503");
    // Later requests stay closed (the VM is down), and the process keeps serving.
    let resp = get_with(addr, "/c2", &[]).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(
        matches!(
            resp.header("x-weir-error"),
            Some("filter_failed" | "filter_unavailable")
        ),
        "{resp:?}"
    );
    assert_eq!(echo.requests().len(), 0);
}

/// A `fail_closed` filter that traps in a body phase answers 503 `filter_failed`: in the request
/// body phase (the head already went upstream) once the upstream exchange is abandoned, not as a
/// gateway error; in the response body phase while the response head has not gone out, not as a
/// reset connection.
#[tokio::test]
async fn a_trap_in_a_body_phase_answers_503_filter_failed() {
    let echo = EchoServer::start().await;
    for callback in ["on_request_body", "on_response_body"] {
        let weir = one_chain(
            echo.addr,
            vec![
                conformance(
                    "trap",
                    &format!(r#"{{"scenario":"body","panic_in":"{callback}"}}"#),
                )
                .failure_policy("fail_closed"),
            ],
        )
        .start()
        .await;
        let mut c = H1Client::connect(weir.listener_addr("main")).await;
        let resp = c.post("/upload", b"some body".to_vec()).await;
        assert_error(&resp, 503, "filter_failed");
    }
}

/// A filter trapping in the response phase (fail_closed) turns the answer into 503
/// `filter_failed`; the filters before it still see that final status in on_log.
#[tokio::test]
async fn a_trap_in_the_response_phase_is_503_and_logged() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("outer", "a"),
            conformance(
                "trap",
                r#"{"scenario":"none","panic_in":"on_response_headers"}"#,
            ),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/r", &[]).await;
    assert_error(&resp, 503, "filter_failed");
    assert_eq!(resp.header("x-order"), Some("a"));
    assert_eq!(wait_log(addr, "a", "503").await, "503");
    assert_eq!(echo.wait_requests(1).await.len(), 1);
}

/// When a filter fails in the response phase, the filters that already processed the upstream's
/// response headers must not get `on_response_headers` a second time for the same stream (Envoy
/// sends a local reply during encoding directly, without re-running the encoder filters).
#[tokio::test]
async fn a_response_phase_failure_does_not_rerun_response_headers() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            conformance(
                "trap",
                r#"{"scenario":"none","panic_in":"on_response_headers"}"#,
            ),
            trace("inner", "a"),
        ],
    )
    .start()
    .await;
    let resp = get_with(weir.listener_addr("main"), "/r", &[]).await;
    assert_error(&resp, 503, "filter_failed");
    assert_ne!(
        resp.header("x-trace-a-response-calls"),
        Some("2"),
        "on_response_headers ran twice on one stream: {resp:?}"
    );
}

/// A filter that traps while handling its callout answer (the stream paused on it): fail_closed
/// answers 503, fail_open lets the request go on without the filter.
#[tokio::test]
async fn a_trap_in_the_callout_answer_applies_the_failure_policy() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("closed", "web", Some("closed"))
        .listener("open", "web", Some("open"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("closed", &["c_closed", "t"])
        .chain("open", &["c_open", "t"])
        .filter(
            conformance(
                "c_closed",
                r#"{"scenario":"callout","panic_in":"on_http_call_response"}"#,
            )
            .failure_policy("fail_closed"),
        )
        .filter(
            conformance(
                "c_open",
                r#"{"scenario":"callout","panic_in":"on_http_call_response"}"#,
            )
            .failure_policy("fail_open"),
        )
        .filter(trace("t", "t"))
        .start()
        .await;
    let resp = get_with(weir.listener_addr("closed"), "/closed", &[]).await;
    assert_error(&resp, 503, "filter_failed");
    assert_eq!(echo.requests().len(), 0);
    let resp = get_with(weir.listener_addr("open"), "/open", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(r.uri.path(), "/open");
    assert_eq!(
        r.header("x-auth"),
        None,
        "the failed filter's edits do not apply"
    );
    assert_eq!(r.header("x-order"), Some("t"), "the rest of the chain ran");
    assert_eq!(auth.wait_requests(2).await.len(), 2);
}

/// The callback deadline holds in the data path: a filter stuck in a loop is interrupted and
/// fails closed long before it would finish; the next request is served by a fresh VM (`reload`).
#[tokio::test]
async fn a_filter_over_its_callback_deadline_fails_closed() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![
            trace("spin", "s")
                .callback_deadline("100ms")
                .failure_policy("reload"),
        ],
    )
    .start()
    .await;
    let addr = weir.listener_addr("main");
    let started = std::time::Instant::now();
    let resp = get_with(addr, "/spin", &[("x-spin-ms", "8000")]).await;
    assert_error(&resp, 503, "filter_failed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the spinning callback ran for {:?}",
        started.elapsed()
    );
    assert_eq!(echo.requests().len(), 0);
    let resp = eventually("a rebuilt VM", async || {
        let resp = get_with(addr, "/after", &[]).await;
        if resp.status == 200 {
            Ok(resp)
        } else {
            Err(resp)
        }
    })
    .await;
    assert_eq!(resp.status, 200);
}

/// `reload`: a VM that trapped is rebuilt (after a short backoff) and serves again.
#[tokio::test]
async fn reload_rebuilds_a_trapped_vm() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("r", "r").failure_policy("reload")])
        .start()
        .await;
    let addr = weir.listener_addr("main");
    let resp = get_with(addr, "/before", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let vm_before = echo.wait_requests(1).await[0]
        .header("x-trace-r-vm")
        .unwrap()
        .to_string();
    let resp = get_with(addr, "/trap", &[("x-trap", "r")]).await;
    assert_error(&resp, 503, "filter_failed");
    // Until the rebuild, the filter is unavailable (fail closed); then a new VM serves.
    let resp = eventually("the trapped VM to be rebuilt", async || {
        let resp = get_with(addr, "/after", &[]).await;
        if resp.status == 200 {
            return Ok(resp);
        }
        assert_error(&resp, 503, "filter_unavailable");
        Err(resp)
    })
    .await;
    assert_eq!(resp.status, 200);
    let r = echo.requests().last().unwrap().clone();
    assert_eq!(r.uri.path(), "/after");
    assert_ne!(
        r.header("x-trace-r-vm"),
        Some(vm_before.as_str()),
        "served by a fresh VM"
    );
    assert_eq!(r.header("x-trace-r-vm-requests"), Some("1"));
}

/// A callout answer for a VM that has since failed and been rebuilt (`reload`) must not be
/// delivered to the new VM: its callout tokens start over, so the stale answer would resume a
/// different request with someone else's answer (here: Carol's request with Alice's auth).
#[tokio::test]
async fn a_stale_callout_answer_never_reaches_a_rebuilt_vm() {
    let echo = EchoServer::start().await;
    let auth = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[echo.addr])
        .cluster("auth", &[auth.addr])
        .chain("edge", &["check"])
        .filter(
            conformance(
                "check",
                r#"{"scenario":"callout","path":"/hold","echo_token":true,"timeout_ms":8000}"#,
            )
            .failure_policy("reload"),
        )
        .start()
        .await;
    let addr = weir.listener_addr("main");
    // Alice's request pauses on its callout (held by the auth service).
    let alice =
        tokio::spawn(async move { get_with(addr, "/alice", &[("x-token", "alice")]).await });
    auth.wait_requests(1).await;
    // Another request makes the VM trap: Alice's paused stream fails with it.
    let resp = get_with(addr, "/trap", &[("x-trap", "callout")]).await;
    assert_error(&resp, 503, "filter_failed");
    let resp = within("alice's stream to fail with its VM", alice)
        .await
        .unwrap();
    assert_eq!(resp.status, 503, "{resp:?}");
    // Carol's request, once the VM is rebuilt, pauses on its own callout.
    let carol = eventually("a rebuilt VM to take carol's request", async || {
        let mut c =
            tokio::spawn(async move { get_with(addr, "/carol", &[("x-token", "carol")]).await });
        tokio::select! {
            r = &mut c => {
                let r = r.unwrap();
                assert_error(&r, 503, "filter_unavailable");
                Err(r)
            }
            _ = auth.wait_requests(2) => Ok(c),
        }
    })
    .await;
    // Alice's (stale) callout answer comes back first, then Carol's.
    auth.release(1);
    auth.wait_in_flight(1).await;
    auth.release(1);
    let resp = within("carol's request", carol).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = &echo.wait_requests(1).await[0];
    assert_eq!(r.uri.path(), "/carol");
    assert_eq!(
        r.header("x-auth-body"),
        Some("carol"),
        "carol's request was resumed with another request's callout answer"
    );
}

/// A stream that outlives its filter's VM (the VM trapped on another request and was rebuilt)
/// must not touch the rebuilt VM through its old context id: the new VM numbers its contexts
/// from the start again, so the old stream's body callbacks and on_log/on_delete would hit the
/// new stream that got the same id.
#[tokio::test]
async fn a_stream_outliving_its_vm_never_reaches_a_rebuilt_vm() {
    use http_body_util::BodyExt;
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("t", "t").failure_policy("reload")])
        .start()
        .await;
    let addr = weir.listener_addr("main");
    // S1: the first stream of the first VM, left open mid-body.
    let (mut s1_tx, s1_body) = open_stream(addr, "s1-a").await.expect("s1 opens");
    // The VM traps on another request.
    let resp = get_with(addr, "/trap", &[("x-trap", "t")]).await;
    assert_error(&resp, 503, "filter_failed");
    // S2: the first stream of the rebuilt VM (same context id as S1 had), left open too.
    let (mut s2_tx, s2_body) = eventually("a rebuilt VM to take s2", async || {
        let opened = open_stream(addr, "s2-a").await;
        if let Err(status) = opened {
            assert_eq!(status, 503);
        }
        opened
    })
    .await;
    // S1 ends (whatever its fate: its VM is gone).
    let _ = s1_tx.send_data(bytes::Bytes::from_static(b"s1-b")).await;
    drop(s1_tx);
    let _ = within("s1 to end", s1_body.collect()).await;
    // S2 must be untouched by that: it streams to its end.
    s2_tx
        .send_data(bytes::Bytes::from_static(b"s2-b"))
        .await
        .expect("s2 still open");
    drop(s2_tx);
    let rest = within("s2 to end", s2_body.collect())
        .await
        .unwrap_or_else(|e| panic!("s2 broke when s1 ended: {e:?}"))
        .to_bytes();
    assert_eq!(&rest[..], b"s2-b");
    assert_eq!(
        weir.stderr().matches("filter `t` VM failed").count(),
        1,
        "only the requested trap: {}",
        weir.stderr()
    );
}

#[tokio::test]
async fn trap_storm_leaves_other_listeners_and_chains_at_zero_errors() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let echo = EchoServer::start().await;
    let weir = ChainManifest::new()
        .workers(2)
        .listener("storm", "web", Some("storm"))
        .listener("calm", "web", Some("calm"))
        .listener("plain", "web", None)
        .cluster("web", &[echo.addr])
        .chain("storm", &["trap", "stamp"])
        .chain("calm", &["hdr", "stamp2"])
        .filter(
            conformance(
                "trap",
                r#"{"scenario":"none","panic_in":"on_request_headers"}"#,
            )
            .failure_policy("reload"),
        )
        .filter(trace("stamp", "s"))
        .filter(conformance("hdr", r#"{"scenario":"headers"}"#))
        .filter(trace("stamp2", "c"))
        .start()
        .await;
    let (storm, calm, plain) = (
        weir.listener_addr("storm"),
        weir.listener_addr("calm"),
        weir.listener_addr("plain"),
    );
    // Hammer all three listeners until the trapping filter has trapped (and been rebuilt and
    // trapped again) at least TRAPS times; every storm request must get a 503, every other
    // request a correct 200.
    const TRAPS: usize = 6;
    const CONNS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let (stormed, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for i in 0..CONNS {
        let (halt, stormed) = (stop.clone(), stormed.clone());
        tasks.push(tokio::spawn(async move {
            let mut j = 0;
            while !halt.load(Ordering::Relaxed) {
                let mut c = H1Client::connect(storm).await;
                let resp = c.get(&format!("/storm/{i}/{j}")).await;
                assert_eq!(resp.status, 503, "storm {i}/{j}: {resp:?}");
                assert!(
                    matches!(
                        resp.header("x-weir-error"),
                        Some("filter_failed" | "filter_unavailable")
                    ),
                    "{resp:?}"
                );
                stormed.fetch_add(1, Ordering::Relaxed);
                j += 1;
            }
        }));
        for (addr, chained) in [(calm, true), (plain, false)] {
            let (halt, served) = (stop.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let mut j = 0;
                while !halt.load(Ordering::Relaxed) {
                    // A new connection every few requests, so both workers serve some.
                    let mut c = H1Client::connect(addr).await;
                    for _ in 0..4 {
                        let resp = c.get(&format!("/ok/{i}/{j}")).await;
                        assert_eq!(resp.status, 200, "{addr} {i}/{j}: {resp:?}");
                        if chained {
                            assert_eq!(resp.header("x-filter"), Some("conformance"));
                            assert_eq!(resp.header("x-order"), Some("c"));
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                        j += 1;
                    }
                }
            }));
        }
    }
    let traps = || weir.stderr().matches("filter `trap` VM failed").count();
    eventually_for(
        Duration::from_secs(30),
        &format!("{TRAPS} traps of the storm filter"),
        async || {
            let n = traps();
            if n >= TRAPS {
                return Ok(());
            }
            assert!(
                tasks.iter().all(|t| !t.is_finished()),
                "a client task ended early (failed)"
            );
            Err(format!("{n} traps"))
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (stormed, served) = (
        stormed.load(Ordering::Relaxed),
        served.load(Ordering::Relaxed),
    );
    assert!(
        stormed > 0 && served > 0,
        "stormed {stormed}, served {served}"
    );
    // Every request of the healthy listeners reached the upstream; none of the storm's did.
    let reqs = echo.wait_requests(served).await;
    assert_eq!(reqs.len(), served);
    assert!(reqs.iter().all(|r| r.uri.path().starts_with("/ok/")));
    // The weir process is intact: the calm chain still answers.
    assert_eq!(get_with(calm, "/after", &[]).await.status, 200);
}
