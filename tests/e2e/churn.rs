//! Churn (issue 25, everything live): hundreds of mixed changes (listeners and clusters added and
//! removed by reloads, endpoint sets replaced, a filter patched, a cluster's balancing changed)
//! under a continuous load that must not see one failure, with memory and listening sockets back
//! to their baseline afterwards; and a listener's certificate changed by a reload, which new
//! handshakes present while an established connection keeps the one it was made with.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use weir_tests::admin::{Listener, generation_of, start_with_token, with_token};
use weir_tests::client::Body;
use weir_tests::tls::{Leaf, TestCa, TlsClient, TlsInfo, get_certs, peer_certificate, tls_connect};
use weir_tests::{
    Admin, ChainManifest, EchoServer, FilterDef, H1Client, Load, Weir, add_to_listener, body_empty,
    eventually, rss_kib, within,
};

use crate::observability::scrape;

const TOKEN: &str = "churn-token-3141";

// ---------------------------------------------------------------------------------------------
// The admin endpoint and the manifest
// ---------------------------------------------------------------------------------------------

/// `weir`'s admin endpoint, mutations with [`TOKEN`].
fn admin_of(weir: &Weir) -> Admin {
    Admin::of(weir).bearer(TOKEN)
}

/// Listening TCP sockets the process `pid` holds: its socket inodes in state LISTEN in
/// `/proc/PID/net/tcp` (every address here is IPv4).
fn listening_sockets(pid: u32) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
            // timeout inode …
            let cols: Vec<&str> = line.split_whitespace().take(10).collect();
            cols.len() == 10 && cols[3] == "0A" && inodes.contains(cols[9])
        })
        .count()
}

/// Waits until `pid` holds `n` listening sockets.
async fn wait_listening(pid: u32, n: usize, what: &str) {
    eventually(
        &format!("{what}: {n} listening sockets"),
        async || match listening_sockets(pid) {
            now if now == n => Ok(()),
            now => Err(now),
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

/// Keep-alive clients of the load (one request at a time each).
const KEEP_ALIVE: usize = 4;
/// Clients of the load that open a new connection for every request (each crosses accept).
const FRESH: usize = 2;

/// [`KEEP_ALIVE`] + [`FRESH`] clients sending `GET /load` to `addr`; a success is a 200 from one
/// of `ups` through the chain (`x-v` set).
fn start_load(addr: SocketAddr, ups: &[SocketAddr]) -> Load {
    let ups: Vec<String> = ups.iter().map(ToString::to_string).collect();
    Load::on(addr)
        .keep_alive(KEEP_ALIVE)
        .fresh(FRESH)
        .check(move |h| {
            let up = h.get("x-upstream").and_then(|v| v.to_str().ok());
            match (up, h.get("x-v")) {
                (Some(up), Some(_)) if ups.iter().any(|u| u == up) => Ok(()),
                (_, v) => Err(format!("not from {ups:?} through the chain (x-v {v:?})")),
            }
        })
        .start()
}

// ---------------------------------------------------------------------------------------------
// 1. Two hundred mixed changes under load
// ---------------------------------------------------------------------------------------------

/// What the test has changed so far: the manifest written for a reload says exactly this, so a
/// reload changes only what its kind of change is about.
#[derive(Clone, Debug)]
struct Model {
    /// Listener `extra` and cluster `side` are there.
    extra: bool,
    /// `web`'s endpoints.
    web: Vec<SocketAddr>,
    least_request: bool,
    /// The value filter `v` gives `x-v`.
    v: u64,
}

impl Model {
    fn lb(&self) -> &'static str {
        if self.least_request {
            "least_request"
        } else {
            "round_robin"
        }
    }

    /// Listener `main` (chain `c`: filter `v`) → `web`; with `extra`, listener `extra` → `side`.
    fn yaml(&self, side: SocketAddr) -> String {
        let lb = format!("lb: {}", self.lb());
        let mut m = ChainManifest::new()
            .workers(2)
            .listener("main", "web", Some("c"));
        if self.extra {
            m = m.listener("extra", "side", None);
        }
        m = m.cluster_with("web", &self.web, &[&lb]);
        if self.extra {
            m = m.cluster("side", &[side]);
        }
        let v = FilterDef::new("v", "builtin:add-header")
            .config(&format!(r#"{{"response":{{"x-v":"{}"}}}}"#, self.v));
        with_token(&m.chain("c", &["v"]).filter(v).yaml())
    }
}

/// Change `i` (its kind is `i % 5`) applied to weir and the model; every change answers 200 with
/// the next generation. Cheap checks that the change took effect follow each kind.
async fn change(i: usize, weir: &Weir, m: &mut Model, side: &EchoServer, sets: &[Vec<SocketAddr>]) {
    let admin = admin_of(weir);
    let kind = i % 5;
    let r = match kind {
        // (a) add listener `extra` and cluster `side`; (b) remove them.
        0 | 1 => {
            m.extra = kind == 0;
            admin.reload(weir, &m.yaml(side.addr)).await
        }
        // (c) replace `web`'s endpoints.
        2 => {
            m.web = sets[(i / 5) % sets.len()].clone();
            let eps: Vec<Value> = m
                .web
                .iter()
                .map(|a| json!({"address": a.to_string(), "weight": 1, "health": "healthy"}))
                .collect();
            let body = json!({ "endpoints": eps }).to_string();
            admin.put_endpoints("web", &body).await
        }
        // (d) patch filter `v`'s configuration.
        3 => {
            m.v += 1;
            let body = json!({"config": {"response": {"x-v": m.v.to_string()}}}).to_string();
            admin.put_json("/filters/v", &body).await
        }
        // (e) flip `web`'s balancing.
        _ => {
            m.least_request = !m.least_request;
            admin.reload(weir, &m.yaml(side.addr)).await
        }
    };
    let what = format!("change {i} (kind {})", ["a", "b", "c", "d", "e"][kind]);
    assert_eq!(
        generation_of(&what, &r),
        i as u64 + 2,
        "{what}: {}",
        r.text()
    );
    match kind {
        0 => {
            // Bound before the answer: served at once, by `side`.
            let extra = admin
                .listeners()
                .await
                .into_iter()
                .find(|l| l.name == "extra")
                .unwrap_or_else(|| panic!("{what}: no listener extra"))
                .address;
            let r = H1Client::connect(extra).await.get("/extra").await;
            assert_eq!(r.status, 200, "{what}: {}", r.text());
            assert_eq!(r.header("x-upstream"), Some(&*side.addr.to_string()));
        }
        1 => {
            assert_eq!(admin.listener_names().await, ["main"], "{what}");
        }
        3 => {
            let r = H1Client::connect(weir.listener_addr("main"))
                .await
                .get("/v")
                .await;
            assert_eq!(r.status, 200, "{what}: {}", r.text());
            assert_eq!(r.header("x-v"), Some(&*m.v.to_string()), "{what}");
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_mixed_reloads_under_load_fail_nothing_and_free_what_they_replace() {
    const WARM_UP: usize = 40;
    const CHANGES: usize = 200;
    let (e1, e2, side) = (
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
    );
    let sets = [vec![e1.addr], vec![e1.addr, e2.addr], vec![e2.addr]];
    let mut model = Model {
        extra: false,
        web: sets[1].clone(),
        least_request: false,
        v: 0,
    };
    let weir = start_with_token(&model.yaml(side.addr), TOKEN, &[]).await;
    let (addr, admin, pid) = (weir.listener_addr("main"), admin_of(&weir), weir.pid());
    let load = start_load(addr, &[e1.addr, e2.addr]);
    load.progress(200).await;

    // Warm up: the rollback history fills, allocator pools and metric slots settle.
    for i in 0..WARM_UP {
        change(i, &weir, &mut model, &side, &sets).await;
    }
    load.progress(100).await;
    let rss_before = rss_kib(pid);
    let listening_before = listening_sockets(pid);
    // `main` (one socket per worker) and the admin endpoint.
    assert_eq!(listening_before, 3, "listening sockets after the warm-up");
    let before = load.counts();

    let started = Instant::now();
    for i in WARM_UP..WARM_UP + CHANGES {
        change(i, &weir, &mut model, &side, &sets).await;
        load.assert_no_failures(&format!("after change {i}"));
    }
    let took = started.elapsed();
    let after = load.counts();
    let during = after.since(before);
    let generation = (WARM_UP + CHANGES + 1) as u64;

    // The final state, as the admin endpoint reports it.
    eventually(
        "the final state in /clusters, /listeners and /metrics",
        async || {
            let clusters = admin.get_json("/clusters").await;
            let clusters = clusters["clusters"].as_array().unwrap();
            let names: Vec<&str> = clusters
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            if names != ["web"] {
                return Err(format!("clusters {names:?}"));
            }
            let web = &clusters[0];
            let mut eps: Vec<String> = web["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["address"].as_str().unwrap().to_owned())
                .collect();
            eps.sort();
            let mut want: Vec<String> = model.web.iter().map(ToString::to_string).collect();
            want.sort();
            if eps != want || web["lb"] != model.lb() {
                return Err(format!("web: {web}"));
            }
            let names = admin.listener_names().await;
            if names != ["main"] {
                return Err(format!("listeners {names:?}"));
            }
            let m = scrape(admin.addr).await;
            if m.get("weir_generation", &[]) != Some(generation as f64) {
                return Err(format!(
                    "weir_generation {:?}",
                    m.get("weir_generation", &[])
                ));
            }
            // The removed listener's and cluster's series left /metrics.
            let stale: Vec<String> = m
                .samples
                .iter()
                .filter(|s| {
                    s.labels.get("listener").map(String::as_str) == Some("extra")
                        || s.labels.get("cluster").map(String::as_str) == Some("side")
                })
                .map(|s| s.name.clone())
                .collect();
            if !stale.is_empty() {
                return Err(format!("series of removed things: {stale:?}"));
            }
            Ok(())
        },
    )
    .await;

    // What the changes replaced is gone: the removed listeners' sockets are closed, every pooled
    // connection to the removed cluster `side` is closed, and memory is back to its baseline.
    // 40 listeners `extra`, clusters `side` and their pools, 80 versions of `web` and 200
    // generations were created and dropped; 120 of those generations started new VMs on both
    // workers (filters rebuilt by (a), (b) and (d)), each with a megabyte and more of linear
    // memory. Old listeners, clusters, pools and versions must all be freed once their last
    // request ends: a leak of the VMs alone would cost hundreds of MiB, while the allocator's
    // noise stays within 8 MiB (measured here: one-off steps of up to +7 MiB in some runs, and
    // drops of 5 to 16 MiB in most).
    wait_listening(
        pid,
        listening_before,
        "the removed listeners' sockets closed",
    )
    .await;
    eventually("every connection to `side` closed", async || {
        match (side.accepts(), side.closes()) {
            (a, c) if a == c && a > 0 => Ok(()),
            seen => Err(seen),
        }
    })
    .await;
    let rss_after = eventually("RSS back to its baseline", async || match rss_kib(pid) {
        kib if kib < rss_before + 8 * 1024 => Ok(kib),
        kib => Err(format!("{kib} KiB, baseline {rss_before} KiB")),
    })
    .await;

    load.progress(100).await;
    let all = load.finish("two hundred mixed changes").await;
    eprintln!(
        "churn: {CHANGES} changes in {took:?} ({:?} each) under load: {} keep-alive and {} \
         new-connection requests meanwhile; {} keep-alive and {} new-connection requests in all, \
         none failed; RSS {rss_before} KiB -> {rss_after} KiB ({:+} KiB); listening sockets \
         {listening_before}; side: {} connections opened and closed",
        took / CHANGES as u32,
        during.keep_alive,
        during.fresh,
        all.keep_alive,
        all.fresh,
        rss_after as i64 - rss_before as i64,
        side.accepts(),
    );
    assert!(
        during.keep_alive >= 100 && during.fresh >= 20,
        "both kinds of client ran through the changes: {} keep-alive and {} new-connection \
         requests meanwhile",
        during.keep_alive,
        during.fresh
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A listener's TLS changed by a reload
// ---------------------------------------------------------------------------------------------

/// Listener `main` terminating TLS with `cert`/`key` (files next to the manifest) → `web`.
fn tls_yaml(web: SocketAddr, cert: &str, key: &str) -> String {
    let m = ChainManifest::new()
        .workers(2)
        .listener("main", "web", None)
        .cluster("web", &[web]);
    let tls = vec![
        "    tls:".to_string(),
        format!("      cert: {cert}"),
        format!("      key: {key}"),
    ];
    with_token(&add_to_listener(&m.yaml(), "main", &tls))
}

/// A TLS keep-alive HTTP/1.1 connection and the certificate its handshake presented.
struct TlsConn {
    send: http1::SendRequest<Body>,
    leaf: Vec<u8>,
    addr: SocketAddr,
}

impl TlsConn {
    async fn open(addr: SocketAddr, client: &TlsClient) -> TlsConn {
        let stream = tls_connect(addr, client).await.expect("TLS handshake");
        let leaf = TlsInfo::of(&stream).peer_certs[0].to_vec();
        let (send, conn) = within("h1 handshake", http1::handshake(TokioIo::new(stream)))
            .await
            .expect("h1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        TlsConn { send, leaf, addr }
    }

    async fn get(&mut self, path: &str) -> u16 {
        let req = http::Request::get(path)
            .header(http::header::HOST, self.addr.to_string())
            .body(body_empty())
            .unwrap();
        within("a request on the TLS connection", async {
            self.send.ready().await.expect("connection ready");
            let resp = self.send.send_request(req).await.expect("response");
            let status = resp.status().as_u16();
            resp.into_body().collect().await.expect("body");
            status
        })
        .await
    }
}

/// Asserts that `der` is `leaf`'s certificate (naming `want` when it is not).
#[track_caller]
fn assert_is(der: &[u8], leaf: &Leaf, want: &str) {
    assert!(
        der == leaf.der.as_ref(),
        "expected certificate {want} (serial {}), got sha256 {}",
        leaf.serial_hex,
        weir_tests::tls::sha256_hex(der)
    );
}

/// The certificate (role `cert`) of `listener:main` in `/certs`: (serial, sha256).
async fn main_cert(admin: SocketAddr) -> Vec<(String, String)> {
    get_certs(admin)
        .await
        .of("listener:main", "cert")
        .iter()
        .map(|c| (c.serial.clone(), c.sha256.clone()))
        .collect()
}

fn serial_and_digest(l: &Leaf) -> Vec<(String, String)> {
    vec![(l.serial_hex.clone(), l.sha256_hex())]
}

/// Eight new handshakes with `addr`, each presenting `leaf` (`want` names it).
async fn assert_new_handshakes_present(
    addr: SocketAddr,
    client: &TlsClient,
    leaf: &Leaf,
    want: &str,
) {
    for _ in 0..8 {
        let der = peer_certificate(addr, client).await.expect("TLS handshake");
        assert_is(&der, leaf, want);
    }
}

/// `/listeners` shows `main` alone: bound at `addr`, at `version`, terminating TLS.
async fn assert_main_listener(admin: &Admin, addr: SocketAddr, version: u64) {
    let main = Listener {
        name: "main".to_owned(),
        address: addr,
        version,
        tls: true,
    };
    assert_eq!(admin.listeners().await, [main]);
}

/// A TLS listener with certificate A, one keep-alive connection made on it, a [`TlsClient`]
/// trusting the CA, and the leaves A and B (same CA, different name and serial).
struct TlsSetup {
    weir: Weir,
    echo: EchoServer,
    client: TlsClient,
    a: Leaf,
    b: Leaf,
    conn: TlsConn,
}

async fn tls_setup() -> TlsSetup {
    let ca = TestCa::new("example.org");
    let a = ca.leaf("cert-a", None, &["a.example.org"]);
    let b = ca.leaf("cert-b", None, &["b.example.org"]);
    assert_ne!(a.serial_hex, b.serial_hex);
    let echo = EchoServer::start().await;
    let weir = start_with_token(
        &tls_yaml(echo.addr, "a.pem", "a-key.pem"),
        TOKEN,
        &[
            ("a.pem", a.cert_pem.as_bytes()),
            ("a-key.pem", a.key_pem.as_bytes()),
            ("b.pem", b.cert_pem.as_bytes()),
            ("b-key.pem", b.key_pem.as_bytes()),
        ],
    )
    .await;
    let client = TlsClient::new(&ca.pem());
    let addr = weir.listener_addr("main");
    let mut conn = TlsConn::open(addr, &client).await;
    assert_is(&conn.leaf, &a, "A");
    assert_eq!(conn.get("/first").await, 200);
    assert_eq!(main_cert(weir.admin_addr()).await, serial_and_digest(&a));
    TlsSetup {
        weir,
        echo,
        client,
        a,
        b,
        conn,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listeners_tls_change_applies_to_new_handshakes_and_established_connections_keep_theirs()
{
    let TlsSetup {
        weir,
        echo,
        client,
        a,
        b,
        mut conn,
    } = tls_setup().await;
    let (addr, admin) = (weir.listener_addr("main"), admin_of(&weir));

    let r = admin
        .reload(&weir, &tls_yaml(echo.addr, "b.pem", "b-key.pem"))
        .await;
    let generation = generation_of("the reload to certificate B", &r);
    assert_eq!(generation, 2);
    // A settings change: same socket, a new version.
    assert_main_listener(&admin, addr, generation).await;

    // Every new handshake presents B (the answer came once both workers had the new version).
    assert_new_handshakes_present(addr, &client, &b, "B on a new connection").await;
    let mut fresh = TlsConn::open(addr, &client).await;
    assert_eq!(fresh.get("/fresh").await, 200);
    // The established connection keeps its session (made with A) and is served on.
    assert_is(&conn.leaf, &a, "A on the established connection");
    assert_eq!(conn.get("/second").await, 200);
    assert_eq!(conn.get("/third").await, 200);
    let paths: Vec<String> = echo
        .requests()
        .iter()
        .map(|r| r.uri.path().to_owned())
        .collect();
    assert_eq!(paths, ["/first", "/fresh", "/second", "/third"]);

    // /certs shows B's material for the listener's context, and only it.
    let certs = get_certs(admin.addr).await;
    let ctx: Vec<&str> = certs.contexts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(ctx, ["listener:main"], "{certs:?}");
    let entry = certs.of("listener:main", "cert");
    assert_eq!(entry.len(), 1, "{certs:?}");
    assert_eq!(
        (&*entry[0].serial, &*entry[0].sha256),
        (&*b.serial_hex, &*b.sha256_hex())
    );
    assert_eq!(entry[0].dns_sans, ["b.example.org"]);
    assert!(entry[0].path.ends_with("b.pem"), "path {:?}", entry[0].path);
}

// ---------------------------------------------------------------------------------------------
// 3. A listener's TLS change that does not load
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_tls_change_with_a_bad_certificate_is_refused_and_the_old_keeps_serving() {
    let TlsSetup {
        weir,
        echo,
        client,
        a,
        mut conn,
        ..
    } = tls_setup().await;
    let (addr, admin) = (weir.listener_addr("main"), admin_of(&weir));

    // B's certificate beside A's key: they do not match.
    let r = admin
        .reload(&weir, &tls_yaml(echo.addr, "b.pem", "a-key.pem"))
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("listeners.main.tls"),
        "the answer names the listener's tls: {}",
        r.text()
    );
    // Nothing changed: same version, A on new handshakes and in /certs, the connection serves.
    assert_main_listener(&admin, addr, 1).await;
    assert_new_handshakes_present(addr, &client, &a, "A on a new connection").await;
    assert_eq!(conn.get("/after").await, 200);
    let mut fresh = TlsConn::open(addr, &client).await;
    assert_eq!(fresh.get("/fresh").await, 200);
    assert_eq!(main_cert(admin.addr).await, serial_and_digest(&a));
    let m = scrape(admin.addr).await;
    assert_eq!(m.get("weir_generation", &[]), Some(1.0));
    assert_eq!(
        m.get("weir_config_changes_total", &[("result", "refused")]),
        Some(1.0)
    );
}
