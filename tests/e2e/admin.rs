//! Admin endpoint and hot reload (issue 5): swaps under load, refusals that leave the running
//! chain serving, dry runs, rollback, single-flight, the request checks, `--watch`, and memory
//! across many swaps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir_tests::weir::READY_TIMEOUT;
use weir_tests::{
    ChainManifest, EchoServer, FilterDef, H1Client, RawClient, RawResponse, Weir, eventually,
    eventually_for, rss_kib,
};

use crate::observability::scrape;

const TOKEN: &str = "test-token-1234";

/// A chain `c` of filter `v` (version A: adds `x-v: a` to responses), on listener `main`, with a
/// second filter `w` defined but unused; mutations enabled with [`TOKEN`].
async fn start(echo: SocketAddr, workers: usize, args: &[&str]) -> Weir {
    let yaml = ChainManifest::new()
        .workers(workers)
        .cluster("up", &[echo])
        .listener("main", "up", Some("c"))
        .chain("c", &["v"])
        .filter(FilterDef::new("v", "builtin:add-header").config(r#"{"response":{"x-v":"a"}}"#))
        .filter(FilterDef::new("w", "builtin:add-header").config(r#"{"response":{"x-w":"1"}}"#))
        .yaml()
        .replace(
            "admin: { address: 127.0.0.1:0 }",
            "admin: { address: 127.0.0.1:0, token_file: token }",
        );
    Weir::start_with_files(&yaml, &[("token", TOKEN.as_bytes())], args).await
}

/// One admin request (`Connection: close`); `token` adds the bearer header.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut c = RawClient::connect(addr).await;
    c.write(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading everything: ignore a write error then.
    let _ = c.write(body).await;
    c.read_response().await
}

async fn put_json(addr: SocketAddr, path: &str, json: &str) -> RawResponse {
    call(
        addr,
        "PUT",
        path,
        Some(TOKEN),
        &[("Content-Type", "application/json")],
        json.as_bytes(),
    )
    .await
}

const VERSION_A: &str = r#"{"module":"builtin:add-header","config":{"response":{"x-v":"a"}}}"#;
const VERSION_B: &str =
    r#"{"module":"builtin:local-reply","config":{"status":200,"body":"b","headers":{"x-v":"b"}}}"#;

/// What a fresh request sees: (`x-v`, `x-w`).
async fn behaviour(addr: SocketAddr) -> (Option<String>, Option<String>) {
    let mut c = H1Client::connect(addr).await;
    let r = c.get("/probe").await;
    assert_eq!(r.status, 200, "{r:?}");
    (
        r.header("x-v").map(str::to_owned),
        r.header("x-w").map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_lose_no_request_and_apply_at_once() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, 2, &[]).await;
    let (addr, admin) = (weir.listener_addr("main"), weir.admin_addr());

    // Continuous load over many keep-alive connections (spread over both workers).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..32 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut c = H1Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let r = c.get("/load").await;
                if r.status == 200 && r.header("x-v").is_some() {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    for i in 0..100usize {
        // Alternate the module (A/B) every swap and the chain layout every other swap.
        let (module, layout) = (i.is_multiple_of(2), (i / 2).is_multiple_of(2));
        let r = put_json(
            admin,
            "/filters/v",
            if module { VERSION_B } else { VERSION_A },
        )
        .await;
        assert_eq!(r.status, 200, "swap {i}: {}", r.text());
        let chain = if layout { r#"["w","v"]"# } else { r#"["v"]"# };
        let r = put_json(admin, "/chains/c", chain).await;
        assert_eq!(r.status, 200, "swap {i}: {}", r.text());
        // The admin replies once every worker serves the new generation: a request made now
        // (well within 100 ms) sees it.
        let replied = Instant::now();
        let (v, w) = behaviour(addr).await;
        assert!(replied.elapsed() < Duration::from_millis(100));
        assert_eq!(
            v.as_deref(),
            Some(if module { "b" } else { "a" }),
            "swap {i}"
        );
        // `w` adds its header to responses from upstream and to local replies alike.
        assert_eq!(w.is_some(), layout, "swap {i}: chain layout");
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} requests failed during the swaps ({ok} succeeded)"
    );
    assert!(ok > 1000, "the load ran ({ok} requests)");
}

#[tokio::test]
async fn bad_modules_are_refused_precisely_and_the_old_chain_keeps_serving() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, 1, &[]).await;
    let (addr, admin) = (weir.listener_addr("main"), weir.admin_addr());
    let wasm = |body: &'static [u8]| async move {
        call(
            admin,
            "PUT",
            "/filters/v",
            Some(TOKEN),
            &[("Content-Type", "application/wasm")],
            body,
        )
        .await
    };
    let r = wasm(b"\0asm garbage").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("filters.v.module"), "{}", r.text());
    let r = wasm(br#"(module (import "env" "proxy_no_such_call" (func)) (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")) (func (export "_initialize")) (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0))"#).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("proxy_no_such_call"), "{}", r.text());
    // A configuration the filter refuses in on_configure.
    let r = put_json(
        admin,
        "/filters/v",
        r#"{"config":{"response":{"bad name":"x"}}}"#,
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("on_configure") || r.text().contains("did not start"),
        "{}",
        r.text()
    );
    // A chain naming an unknown filter.
    let r = put_json(admin, "/chains/c", r#"["v","nope"]"#).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("unknown filter `nope`"), "{}", r.text());
    assert_eq!(behaviour(addr).await, (Some("a".into()), None));
    let dump = call(admin, "GET", "/config_dump", None, &[], b"").await;
    assert!(dump.text().contains("\"generation\": 1"), "{}", dump.text());
}

#[tokio::test]
async fn dry_run_changes_nothing_and_rollback_restores() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, 1, &[]).await;
    let (addr, admin) = (weir.listener_addr("main"), weir.admin_addr());
    let r = put_json(admin, "/filters/v?dry_run=true", VERSION_B).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"valid\""), "{}", r.text());
    assert_eq!(behaviour(addr).await.0.as_deref(), Some("a"));
    let r = put_json(admin, "/filters/v", VERSION_B).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(behaviour(addr).await.0.as_deref(), Some("b"));
    let r = call(admin, "POST", "/rollback", Some(TOKEN), &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(behaviour(addr).await.0.as_deref(), Some("a"));
    // Nothing further back.
    let r = call(admin, "POST", "/rollback", Some(TOKEN), &[], b"").await;
    assert_eq!(r.status, 409, "{}", r.text());
}

#[tokio::test]
async fn concurrent_mutations_get_409() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, 1, &[]).await;
    let admin = weir.admin_addr();
    // A module whose start spins until its start deadline: the transaction holds for ~2 s
    // (the 1 s start budget, then as much CPU time again; see host-abi `deadline`).
    const SPIN: &[u8] = br#"(module (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "_initialize"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (loop $l (br $l)) i32.const 1))"#;
    let slow = tokio::spawn(async move {
        call(
            admin,
            "PUT",
            "/filters/v",
            Some(TOKEN),
            &[("Content-Type", "application/wasm")],
            SPIN,
        )
        .await
    });
    let mut saw_409 = false;
    while !slow.is_finished() {
        let r = call(admin, "POST", "/rollback", Some(TOKEN), &[], b"").await;
        if r.status == 409 && r.text().contains("in progress") {
            saw_409 = true;
            break;
        }
    }
    let slow = slow.await.unwrap();
    assert_eq!(
        slow.status,
        422,
        "the spinning module is refused: {}",
        slow.text()
    );
    // Refused for its spin (so the transaction really held), not by the ABI check up front.
    assert!(slow.text().contains("(Deadline)"), "{}", slow.text());
    assert!(saw_409, "a mutation during another one must get 409");
}

#[tokio::test]
async fn mutation_requests_are_checked() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, 1, &[]).await;
    let admin = weir.admin_addr();
    let r = call(admin, "POST", "/reload", None, &[], b"").await;
    assert_eq!(r.status, 401, "missing token: {}", r.text());
    let r = call(admin, "POST", "/reload", Some("wrong-token-1234"), &[], b"").await;
    assert_eq!(r.status, 401, "wrong token: {}", r.text());
    let r = call(admin, "GET", "/reload", Some(TOKEN), &[], b"").await;
    assert_eq!(r.status, 405, "GET on a mutation: {}", r.text());
    for bad in [
        "/filters/..",
        "/filters/..%2f..%2fetc",
        "/chains/a%2fb",
        "/filters/.x",
    ] {
        let r = put_json(admin, bad, "{}").await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    // A module reference never names a file.
    let r = put_json(admin, "/filters/v", r#"{"module":"/etc/passwd"}"#).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let big = vec![b' '; (1 << 20) + 10];
    let r = call(
        admin,
        "PUT",
        "/chains/c",
        Some(TOKEN),
        &[("Content-Type", "application/json")],
        &big,
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = call(
        admin,
        "POST",
        "/reload",
        Some(TOKEN),
        &[("Origin", "http://evil.example")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403, "foreign Origin: {}", r.text());
    // A DNS-rebinding page would send its own host name.
    let mut c = RawClient::connect(admin).await;
    c.write(
        format!("POST /reload HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let r = c.read_response().await;
    assert_eq!(r.status, 403, "foreign Host: {}", r.text());
    // Reads need no token.
    let r = call(admin, "GET", "/filters", None, &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"sha256\""), "{}", r.text());
    let r = call(admin, "GET", "/metrics", None, &[], b"").await;
    assert!(r.text().contains("weir_generation 1"), "{}", r.text());
}

#[tokio::test]
async fn watch_reloads_on_a_symlink_swap_and_refuses_a_broken_manifest() {
    let echo = EchoServer::start().await;
    // Kubernetes-style: weir.yaml -> ..data/weir.yaml, ..data -> a versioned folder.
    let yaml = |v: &str| {
        ChainManifest::new()
            .workers(1)
            .cluster("up", &[echo.addr])
            .listener("main", "up", Some("c"))
            .chain("c", &["v"])
            .filter(
                FilterDef::new("v", "builtin:add-header")
                    .config(&format!(r#"{{"response":{{"x-v":"{v}"}}}}"#)),
            )
            .yaml()
    };
    let dir = tempfile::tempdir().unwrap();
    let write_version = |name: &str, text: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("weir.yaml"), text).unwrap();
    };
    write_version("v1", &yaml("1"));
    std::os::unix::fs::symlink("v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/weir.yaml", dir.path().join("weir.yaml")).unwrap();
    let manifest = dir.path().join("weir.yaml");
    let weir = Weir::start_with_args(
        &yaml("unused"),
        &["--config", manifest.to_str().unwrap(), "--watch"],
    )
    .await;
    let addr = weir.listener_addr("main");
    assert_eq!(behaviour(addr).await.0.as_deref(), Some("1"));

    let swap = |to: &str| {
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(to, &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
    };
    write_version("v2", &yaml("2"));
    swap("v2");
    wait_for(&weir, "2").await;
    write_version("v3", "listeners: [ this is not a manifest");
    swap("v3");
    // Refused (logged); the running config keeps serving.
    eventually("the refusal logged", async || {
        match weir.stderr().contains("was refused") {
            true => Ok(()),
            false => Err("no `was refused` in weir's log"),
        }
    })
    .await;
    assert_eq!(behaviour(addr).await.0.as_deref(), Some("2"));
}

/// A change made after weir read its manifest but before the watcher first looks is still a
/// change: the watcher compares against the text the running config was parsed from. Weir is
/// held at a known point of its start-up, after the manifest is read, by an access log that is a
/// FIFO: opening it for writing blocks until the test opens the reading end.
#[tokio::test]
async fn watch_sees_a_change_made_while_weir_starts() {
    let echo = EchoServer::start().await;
    let fifo = tempfile::tempdir().unwrap();
    let log = fifo.path().join("access.log");
    let made = std::process::Command::new("mkfifo")
        .arg(&log)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    let yaml = |v: &str| {
        ChainManifest::new()
            .workers(1)
            .cluster("up", &[echo.addr])
            .listener("main", "up", Some("c"))
            .chain("c", &["v"])
            .filter(
                FilterDef::new("v", "builtin:add-header")
                    .config(&format!(r#"{{"response":{{"x-v":"{v}"}}}}"#)),
            )
            .yaml()
            + &format!("telemetry:\n  access_log:\n    path: {}\n", log.display())
    };
    let v2 = yaml("2");
    let weir = Weir::start_with_hook(&yaml("1"), &[], &["--watch"], async |pid, dir| {
        // Wait until a thread of weir blocks opening the FIFO: the manifest has been read.
        eventually_for(READY_TIMEOUT, "weir to open its access log", async || {
            match blocked_on_a_fifo(pid) {
                true => Ok(()),
                false => Err("no thread of weir waits on the FIFO"),
            }
        })
        .await;
        let tmp = dir.join("weir.yaml.tmp");
        std::fs::write(&tmp, &v2).unwrap();
        std::fs::rename(&tmp, dir.join("weir.yaml")).unwrap();
        // Let weir go on: open the reading end and drain it for the rest of the test.
        let log = log.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::open(log).unwrap();
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        });
    })
    .await;
    // Started on version 1, then sees version 2 on disk and reloads.
    wait_for(&weir, "2").await;
    assert!(weir.stderr().contains("manifest changed: reloaded"));
}

/// `POST /reload` and `--watch` share what "changed" means: after an admin reload of a new file,
/// the watcher's next looks find nothing new (no second, identical generation), and a broken
/// manifest refused by `POST /reload` is counted once and not retried by the watcher.
#[tokio::test]
async fn watch_does_not_repeat_a_post_reload_or_retry_a_refused_manifest() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, 1, &["--watch"]).await;
    let admin = weir.admin_addr();
    let manifest = weir.dir().join("weir.yaml");
    let replace = |text: &str| {
        let tmp = weir.dir().join("weir.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &manifest).unwrap();
    };
    let original = std::fs::read_to_string(&manifest).unwrap();
    assert!(original.contains(r#""x-v":"a""#), "{original}");
    assert_eq!(
        behaviour(weir.listener_addr("main")).await.0.as_deref(),
        Some("a")
    );

    // Right after a look, so the admin reload (not the watcher) applies the change.
    let looked = watch_looks(admin).await;
    wait_for_looks(admin, looked + 1.0).await;
    replace(&original.replace(r#""x-v":"a""#, r#""x-v":"b""#));
    let r = call(admin, "POST", "/reload", Some(TOKEN), &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        behaviour(weir.listener_addr("main")).await.0.as_deref(),
        Some("b")
    );
    let after_post = scrape(admin).await;
    // Two more looks: at least one started after the reload was published.
    wait_for_looks(admin, watch_looks(admin).await + 2.0).await;
    let now = scrape(admin).await;
    for m in [&after_post, &now] {
        assert_eq!(
            m.get("weir_generation", &[]),
            Some(2.0),
            "{}",
            weir.stderr()
        );
    }
    assert_eq!(
        now.get("weir_config_changes_total", &[("result", "published")]),
        Some(1.0)
    );

    replace("listeners: [ this is not a manifest");
    let r = call(admin, "POST", "/reload", Some(TOKEN), &[], b"").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("listeners[0]"), "{}", r.text());
    wait_for_looks(admin, watch_looks(admin).await + 2.0).await;
    let now = scrape(admin).await;
    assert_eq!(
        now.get("weir_config_changes_total", &[("result", "refused")]),
        Some(1.0),
        "a refused manifest counts once: {}",
        weir.stderr()
    );
    assert_eq!(now.get("weir_generation", &[]), Some(2.0));
    assert!(!weir.stderr().contains("was refused"), "{}", weir.stderr());
    assert_eq!(
        behaviour(weir.listener_addr("main")).await.0.as_deref(),
        Some("b")
    );

    // The watcher still follows the file: a good version is picked up without an admin call.
    replace(&original.replace(r#""x-v":"a""#, r#""x-v":"c""#));
    wait_for(&weir, "c").await;
}

/// `weir_manifest_watch_checks_total`: how many times the watcher has looked at the file.
async fn watch_looks(admin: SocketAddr) -> f64 {
    scrape(admin)
        .await
        .get("weir_manifest_watch_checks_total", &[])
        .expect("weir_manifest_watch_checks_total")
}

/// Waits (bounded by the suite's timeout) until the watcher has looked `n` times.
async fn wait_for_looks(admin: SocketAddr, n: f64) {
    eventually(&format!("{n} looks of the watcher"), async || {
        let looks = watch_looks(admin).await;
        if looks >= n { Ok(()) } else { Err(looks) }
    })
    .await;
}

/// Whether a thread of `pid` sleeps in the kernel waiting for the other end of a FIFO.
fn blocked_on_a_fifo(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w == "wait_for_partner")
    })
}

/// Polls until responses carry `x-v: want` (the watcher looks every 200 ms).
async fn wait_for(weir: &Weir, want: &str) {
    let addr = weir.listener_addr("main");
    eventually(&format!("responses with x-v: {want}"), async || {
        let (v, _) = behaviour(addr).await;
        if v.as_deref() == Some(want) {
            Ok(())
        } else {
            Err(v)
        }
    })
    .await;
}

#[tokio::test]
async fn memory_returns_to_baseline_after_1000_swaps() {
    let echo = EchoServer::start().await;
    let weir = start(echo.addr, 2, &[]).await;
    let (addr, admin) = (weir.listener_addr("main"), weir.admin_addr());
    let swap = |i: usize| async move {
        let r = put_json(
            admin,
            "/filters/v",
            if i.is_multiple_of(2) {
                VERSION_B
            } else {
                VERSION_A
            },
        )
        .await;
        assert_eq!(r.status, 200, "swap {i}: {}", r.text());
    };
    // Warm up: history fills, allocator pools settle.
    for i in 0..100 {
        swap(i).await;
        behaviour(addr).await;
    }
    let baseline = rss_kib(weir.pid());
    for i in 0..1000 {
        swap(i).await;
        if i.is_multiple_of(50) {
            behaviour(addr).await;
        }
    }
    let after = rss_kib(weir.pid());
    // A leaked generation costs two VMs (≥ 1 MiB of linear memory each): 1000 of them would be
    // gigabytes. Allow allocator noise only.
    assert!(
        after < baseline + 32 * 1024,
        "RSS grew from {baseline} KiB to {after} KiB over 1000 swaps"
    );
}
