//! Clusters and endpoints live (issue 25): an endpoint set replaced through the admin API and
//! `weir admin set-endpoints` (traffic moves, removed endpoints' connections close, an endpoint
//! that stays keeps its pool), an endpoint drained, clusters added, changed and removed by a
//! reload (an unchanged one keeps its version and pool), refusals that change nothing, and a
//! cluster's expected TLS identity changed by a reload. Every test runs two workers under continuous load and fails on any failed request,
//! except in the one phase that breaks the upstream identity on purpose.

use std::net::SocketAddr;

use serde_json::{Value, json};
use weir_tests::admin::{generation_of, start_with_token, with_token};
use weir_tests::client::Collected;
use weir_tests::tls::{Leaf, TestCa};
use weir_tests::{
    Admin, ChainManifest, ControlledServer, EchoServer, FilterDef, H1Client, Load, Weir,
    add_to_listener, eventually, weir_bin, within,
};

use crate::assert_error;
use crate::observability::scrape;

const TOKEN: &str = "live-token-5678";

/// Keep-alive connections of the load, each with one request at a time: also the most requests
/// that may be in flight when a change is answered.
const LOAD_CONNECTIONS: usize = 12;

/// The load of a test: [`LOAD_CONNECTIONS`] keep-alive clients sending `GET /load` to `addr`.
fn start_load(addr: SocketAddr) -> Load {
    Load::on(addr).keep_alive(LOAD_CONNECTIONS).start()
}

/// Stops the load; panics if any request failed or if it barely ran.
async fn finish(load: Load, phase: &str) {
    let ok = load.finish(phase).await.total();
    assert!(ok >= 100, "{phase}: the load ran ({ok} requests)");
}

// ---------------------------------------------------------------------------------------------
// Weir, the admin endpoint, the manifest
// ---------------------------------------------------------------------------------------------

/// Weir running `m` with two workers and mutations enabled with [`TOKEN`].
async fn start(m: ChainManifest) -> Weir {
    start_with_token(&with_token(&m.workers(2).yaml()), TOKEN, &[]).await
}

/// `weir`'s admin endpoint, mutations with [`TOKEN`].
fn admin_of(weir: &Weir) -> Admin {
    Admin::of(weir).bearer(TOKEN)
}

/// Weir (see [`start`]) with listener `main` → cluster `web` at `web`: weir, the listener's
/// address, the admin endpoint and the load on the listener.
async fn start_web(web: &[SocketAddr]) -> (Weir, SocketAddr, Admin, Load) {
    let weir = start(
        ChainManifest::new()
            .cluster("web", web)
            .listener("main", "web", None),
    )
    .await;
    let (addr, admin) = (weir.listener_addr("main"), admin_of(&weir));
    let load = start_load(addr);
    (weir, addr, admin, load)
}

/// `{"endpoints": [{"address": …}, …]}`.
fn endpoints(addrs: &[SocketAddr]) -> String {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|a| json!({ "address": a.to_string() }))
        .collect();
    json!({ "endpoints": eps }).to_string()
}

/// Cluster `name` in `/clusters`, if there is one.
async fn cluster(admin: &Admin, name: &str) -> Option<Value> {
    let all = admin.get_json("/clusters").await;
    all["clusters"]
        .as_array()
        .expect("/clusters has a `clusters` list")
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// Cluster `name` in `/clusters`; panics if absent.
async fn cluster_of(admin: &Admin, name: &str) -> Value {
    cluster(admin, name)
        .await
        .unwrap_or_else(|| panic!("no cluster {name} in /clusters"))
}

/// A cluster's endpoint addresses, sorted.
fn addresses(c: &Value) -> Vec<String> {
    let mut a: Vec<String> = c["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["address"].as_str().expect("address").to_owned())
        .collect();
    a.sort();
    a
}

fn sorted(addrs: &[SocketAddr]) -> Vec<String> {
    let mut a: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    a.sort();
    a
}

/// The endpoint of `c` at `addr`.
fn endpoint(c: &Value, addr: SocketAddr) -> &Value {
    c["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("no endpoint {addr} in {c}"))
}

/// Whether `/metrics` has any `weir_upstream_rq_total` series for `endpoint`.
fn has_endpoint_series(m: &weir_tests::prom::Metrics, endpoint: SocketAddr) -> bool {
    let e = endpoint.to_string();
    m.series("weir_upstream_rq_total")
        .iter()
        .any(|s| s.labels.get("endpoint") == Some(&e))
}

/// Requests the upstream received so far.
fn received(up: &EchoServer) -> usize {
    up.requests().len()
}

/// Waits until `count` stays put while the load runs on for `requests` more requests: returns
/// it then (`what` names the wait).
async fn steady(load: &Load, requests: u64, what: &str, count: impl Fn() -> usize) -> usize {
    let mut last = count();
    eventually(what, async || {
        load.progress(requests).await;
        let now = count();
        if now == last {
            Ok(now)
        } else {
            last = now;
            Err(now)
        }
    })
    .await
}

/// Waits until the load has run on while the upstreams `ups` received no request: returns their
/// request count then. Requests that started before a change was answered may still reach them;
/// this waits those out.
async fn settled_requests(load: &Load, ups: &[&EchoServer]) -> usize {
    steady(
        load,
        200,
        "the old endpoints to get no more requests",
        || ups.iter().map(|u| received(u)).sum(),
    )
    .await
}

/// Waits until `up`'s accept count stays put while the load runs on (the pools are full):
/// returns it.
async fn settled_accepts(load: &Load, up: &EchoServer) -> usize {
    let what = format!("the pools to {} to stop growing", up.addr);
    steady(load, 300, &what, || up.accepts()).await
}

/// One `GET path` with extra headers on a fresh connection.
async fn get_once(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Collected {
    let mut c = H1Client::connect(addr).await;
    c.get_with(path, headers).await
}

// ---------------------------------------------------------------------------------------------
// 1. Rotating the endpoint set
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_endpoints_from_a_to_b_moves_traffic_and_closes_a() {
    let a = [EchoServer::start().await, EchoServer::start().await];
    let b = [EchoServer::start().await, EchoServer::start().await];
    let weir = start(
        ChainManifest::new()
            .cluster("web", &[a[0].addr, a[1].addr])
            .listener("main", "web", None),
    )
    .await;
    let (addr, admin) = (weir.listener_addr("main"), admin_of(&weir));
    let load = start_load(addr);
    for up in &a {
        load.wait_served(up.addr, 50).await;
    }
    let before = scrape(admin.addr).await;
    assert!(has_endpoint_series(&before, a[0].addr));
    assert!(!has_endpoint_series(&before, b[0].addr));

    let r = admin
        .put_endpoints("web", &endpoints(&[b[0].addr, b[1].addr]))
        .await;
    let generation = generation_of("the change to B", &r);
    assert_eq!(generation, 2, "{}", r.text());
    let at_answer = a.iter().map(received).sum::<usize>();
    // Only requests already started when the answer came may still reach A: one per connection.
    let settled = settled_requests(&load, &[&a[0], &a[1]]).await;
    assert!(
        settled - at_answer <= LOAD_CONNECTIONS,
        "{} requests reached A after the change was answered",
        settled - at_answer
    );
    for up in &b {
        load.wait_served(up.addr, 50).await;
    }
    // A's pooled connections close once no request holds the old version.
    for up in &a {
        eventually(
            &format!("every connection to {} closed", up.addr),
            async || match (up.accepts(), up.closes()) {
                (n, c) if n == c => Ok(()),
                seen => Err(seen),
            },
        )
        .await;
    }
    let a_accepts: Vec<usize> = a.iter().map(EchoServer::accepts).collect();

    let c = cluster_of(&admin, "web").await;
    assert_eq!(c["endpoint_source"], "admin", "{c}");
    assert_eq!(c["version"], generation, "{c}");
    assert_eq!(addresses(&c), sorted(&[b[0].addr, b[1].addr]), "{c}");
    let dump = admin.get_json("/config_dump").await;
    assert_eq!(dump["generation"], generation, "{dump}");
    assert_eq!(dump["versions"]["clusters"]["web"], generation, "{dump}");
    // The listener did not change.
    assert_eq!(dump["versions"]["listeners"]["main"], 1, "{dump}");
    let m = scrape(admin.addr).await;
    assert_eq!(m.get("weir_endpoint_updates_total", &[]), Some(1.0));
    assert_eq!(
        m.get("weir_cluster_changes_total", &[("op", "update")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("weir_cluster_changes_total", &[("op", "add")]),
        Some(0.0)
    );
    // A removed endpoint's series leave /metrics; the new ones are there.
    for up in &a {
        assert!(!has_endpoint_series(&m, up.addr), "{} still shown", up.addr);
    }
    for up in &b {
        assert!(has_endpoint_series(&m, up.addr), "{} not shown", up.addr);
    }

    load.progress(300).await;
    assert_eq!(a.iter().map(received).sum::<usize>(), settled);
    assert_eq!(
        a.iter().map(EchoServer::accepts).collect::<Vec<_>>(),
        a_accepts,
        "nothing connects to A any more"
    );
    finish(load, "rotating A to B").await;

    // A1 comes back (no load now): its series continues where it stopped, counting every
    // request A1 ever answered.
    let served = received(&a[0]) as f64;
    let r = admin.put_endpoints("web", &endpoints(&[a[0].addr])).await;
    assert_eq!(generation_of("the change back to A1", &r), 3);
    let m = scrape(admin.addr).await;
    let a0 = a[0].addr.to_string();
    let labels = [("cluster", "web"), ("endpoint", a0.as_str())];
    assert_eq!(m.sum("weir_upstream_rq_total", &labels), served);
    assert_eq!(m.get("weir_endpoint_updates_total", &[]), Some(2.0));
    let r = get_once(addr, "/back", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some(a0.as_str()));
    eventually(
        "A1's series to count the new request",
        async || match scrape(admin.addr)
            .await
            .sum("weir_upstream_rq_total", &labels)
        {
            n if n == served + 1.0 => Ok(()),
            n => Err(n),
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. An endpoint that stays; an emptied cluster
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_stays_keeps_its_pooled_connections() {
    let (a, b, c) = (
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
    );
    let (_weir, addr, admin, load) = start_web(&[a.addr, b.addr]).await;
    load.wait_served(b.addr, 50).await;
    let (accepts, closes) = (settled_accepts(&load, &a).await, a.closes());

    // B leaves, C comes: A stays, with the connections it had.
    generation_of(
        "B replaced by C",
        &admin
            .put_endpoints("web", &endpoints(&[a.addr, c.addr]))
            .await,
    );
    settled_requests(&load, &[&b]).await;
    load.wait_served(c.addr, 50).await;
    eventually("every connection to B closed", async || {
        match (b.accepts(), b.closes()) {
            (n, c) if n == c => Ok(()),
            seen => Err(seen),
        }
    })
    .await;
    let served = load.served_by(a.addr);
    load.progress(500).await;
    assert!(load.served_by(a.addr) > served + 100, "A serves on");
    let (accepts_now, closes_now) = (a.accepts(), a.closes());
    assert!(
        accepts_now <= accepts + 2 && closes_now <= closes + 2,
        "A was re-pooled: {accepts} accepts and {closes} closes before the change, \
         {accepts_now} and {closes_now} after"
    );
    finish(load, "B replaced by C").await;

    // No endpoint at all: the cluster answers 503 (no healthy upstream) until it has one again.
    generation_of(
        "no endpoint",
        &admin.put_endpoints("web", r#"{"endpoints": []}"#).await,
    );
    assert_eq!(cluster_of(&admin, "web").await["endpoints"], json!([]));
    assert_error(
        &get_once(addr, "/empty", &[]).await,
        503,
        "no_healthy_upstream",
    );
    generation_of(
        "C back",
        &admin.put_endpoints("web", &endpoints(&[c.addr])).await,
    );
    let r = get_once(addr, "/again", &[]).await;
    assert_eq!(r.header("x-upstream"), Some(&*c.addr.to_string()), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// 3. Draining an endpoint
// ---------------------------------------------------------------------------------------------

/// Starts `GET /hold` on fresh connections until one is held at `x` (one held at `y` is released
/// and must succeed); returns the task awaiting the held response.
async fn hold_on(
    addr: SocketAddr,
    x: &EchoServer,
    y: &EchoServer,
) -> tokio::task::JoinHandle<Collected> {
    let holds = |s: &EchoServer| {
        s.requests()
            .iter()
            .filter(|r| r.uri.path() == "/hold")
            .count()
    };
    for _ in 0..20 {
        let (hx, hy) = (holds(x), holds(y));
        let task = tokio::spawn(async move { get_once(addr, "/hold", &[]).await });
        let on_x = eventually("the /hold request to arrive", async || {
            match (holds(x), holds(y)) {
                (nx, _) if nx > hx => Ok(true),
                (_, ny) if ny > hy => Ok(false),
                seen => Err(seen),
            }
        })
        .await;
        if on_x {
            return task;
        }
        y.release(1);
        let r = within("the request held at Y", task).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    panic!("no /hold request reached {} in 20 tries", x.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_an_endpoint_finishes_its_request_and_sends_it_no_more() {
    let (x, y) = (EchoServer::start().await, EchoServer::start().await);
    let (_weir, addr, admin, load) = start_web(&[x.addr, y.addr]).await;
    load.wait_served(x.addr, 50).await;
    load.wait_served(y.addr, 50).await;
    let held = hold_on(addr, &x, &y).await;

    let body = json!({"endpoints": [
        {"address": x.addr.to_string(), "health": "draining"},
        {"address": y.addr.to_string()},
    ]})
    .to_string();
    generation_of("draining X", &admin.put_endpoints("web", &body).await);
    let at_answer = received(&x);
    let settled = settled_requests(&load, &[&x]).await;
    assert!(
        settled - at_answer <= LOAD_CONNECTIONS,
        "{} requests reached the draining endpoint after the change was answered",
        settled - at_answer
    );
    let served_x = load.served_by(x.addr);
    load.progress(300).await;
    assert_eq!(load.served_by(x.addr), served_x, "X answered new requests");
    assert_eq!(received(&x), settled);

    // The held request is still there; every other connection to X closed at once.
    assert!(!held.is_finished(), "the held request ended early");
    assert_eq!(x.in_flight(), 1, "only the held request is at X");
    eventually("X's idle connections closed", async || {
        match (x.accepts(), x.closes()) {
            (n, c) if c + 1 == n => Ok(()),
            seen => Err(seen),
        }
    })
    .await;
    let c = cluster_of(&admin, "web").await;
    assert_eq!(c["endpoint_source"], "admin", "{c}");
    assert_eq!(endpoint(&c, x.addr)["health_status"], "draining", "{c}");
    assert_eq!(endpoint(&c, y.addr)["health_status"], "healthy", "{c}");

    // Released, the held request finishes at X; its connection then closes too.
    x.release(1);
    let r = within("the held request", held).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some(x.addr.to_string().as_str()));
    eventually("the last connection to X closed", async || {
        match (x.accepts(), x.closes()) {
            (n, c) if c == n => Ok(()),
            seen => Err(seen),
        }
    })
    .await;
    load.progress(200).await;
    assert_eq!(load.served_by(x.addr), served_x);
    finish(load, "draining X").await;
}

// ---------------------------------------------------------------------------------------------
// 4. Clusters added, changed and removed by a reload
// ---------------------------------------------------------------------------------------------

/// The router: `x-to: extra` and `x-to: spare` to those clusters, everything else to `web`.
const ROUTES: &str = r#"{"routes": [{"match": {"path": {"prefix": "/"}, "headers": {"x-to": "extra"}}, "to": "extra"}, {"match": {"path": {"prefix": "/"}, "headers": {"x-to": "spare"}}, "to": "spare"}, {"match": {"path": {"prefix": "/"}}, "to": "web"}]}"#;

/// Listener `main` (default `web`) through the router; cluster `web` at `web`, `spare` at
/// `spare.0` with `lb: spare.1` if given, `extra` at `extra` if given. `extra` and `spare` sort
/// before `web`, so adding and removing them moves `web`'s place among the clusters.
fn routed(web: SocketAddr, spare: Option<(SocketAddr, &str)>, extra: Option<SocketAddr>) -> String {
    let mut m = ChainManifest::new()
        .workers(2)
        .listener("main", "web", Some("edge"))
        .chain("edge", &["r"])
        .filter(FilterDef::new("r", "builtin:router").config(ROUTES))
        .cluster("web", &[web]);
    if let Some((a, lb)) = spare {
        m = m.cluster_with("spare", &[a], &[&format!("lb: {lb}")]);
    }
    if let Some(a) = extra {
        m = m.cluster("extra", &[a]);
    }
    with_token(&m.yaml())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_changes_and_removes_clusters_under_load() {
    let (web, spare, extra) = (
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
    );
    let weir = start_with_token(
        &routed(web.addr, Some((spare.addr, "round_robin")), None),
        TOKEN,
        &[],
    )
    .await;
    let (addr, admin) = (weir.listener_addr("main"), admin_of(&weir));
    let to = async |cluster: &str| get_once(addr, "/routed", &[("x-to", cluster)]).await;
    // A reload to `spare` with `lb` (if any) and `extra`: its generation.
    let reload_to = async |what: &str, spare_lb: Option<&str>| {
        let yaml = routed(
            web.addr,
            spare_lb.map(|lb| (spare.addr, lb)),
            Some(extra.addr),
        );
        generation_of(what, &admin.reload(&weir, &yaml).await)
    };
    let load = start_load(addr);
    load.wait_served(web.addr, 100).await;
    let accepts = settled_accepts(&load, &web).await;
    let closes = web.closes();
    assert_eq!(cluster_of(&admin, "web").await["version"], 1);
    assert_error(&to("extra").await, 503, "unknown_cluster");
    assert_eq!(
        to("spare").await.header("x-upstream"),
        Some(&*spare.addr.to_string())
    );

    // Add `extra`.
    let g = reload_to("adding extra", Some("round_robin")).await;
    let r = to("extra").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some(&*extra.addr.to_string()));
    let c = cluster_of(&admin, "extra").await;
    assert_eq!(
        (c["version"].as_u64(), c["endpoint_source"].as_str()),
        (Some(g), Some("static"))
    );
    assert_eq!(addresses(&c), sorted(&[extra.addr]));
    assert_eq!(cluster_of(&admin, "web").await["version"], 1);
    assert_eq!(cluster_of(&admin, "spare").await["version"], 1);

    // Change `spare`'s balancing.
    let g = reload_to("changing spare's balancing", Some("least_request")).await;
    let c = cluster_of(&admin, "spare").await;
    assert_eq!(c["version"], g, "{c}");
    assert_eq!(c["lb"], "least_request", "{c}");
    let r = to("spare").await;
    assert_eq!(
        r.header("x-upstream"),
        Some(&*spare.addr.to_string()),
        "{r:?}"
    );
    assert_eq!(cluster_of(&admin, "web").await["version"], 1);
    assert_eq!(cluster_of(&admin, "extra").await["version"], g - 1);

    // Remove `spare`.
    let g = reload_to("removing spare", None).await;
    assert!(
        cluster(&admin, "spare").await.is_none(),
        "spare still in /clusters"
    );
    assert_error(&to("spare").await, 503, "unknown_cluster");
    assert_eq!(to("extra").await.status, 200);
    let dump = admin.get_json("/config_dump").await;
    assert_eq!(dump["generation"], g, "{dump}");
    assert_eq!(
        dump["versions"]["clusters"],
        json!({"web": 1, "extra": g - 2}),
        "{dump}"
    );

    let m = scrape(admin.addr).await;
    for (op, n) in [("add", 1.0), ("update", 1.0), ("remove", 1.0)] {
        assert_eq!(
            m.get("weir_cluster_changes_total", &[("op", op)]),
            Some(n),
            "{op}"
        );
    }
    assert_eq!(m.get("weir_endpoint_updates_total", &[]), Some(0.0));

    // `web` never changed: same version, same pooled connections.
    let c = cluster_of(&admin, "web").await;
    assert_eq!(
        (c["version"].as_u64(), c["endpoint_source"].as_str()),
        (Some(1), Some("static"))
    );
    load.progress(500).await;
    let (accepts_now, closes_now) = (web.accepts(), web.closes());
    assert!(
        accepts_now <= accepts + 2 && closes_now <= closes + 2,
        "web was re-pooled: {accepts} accepts and {closes} closes before the reloads, \
         {accepts_now} and {closes_now} after"
    );
    finish(load, "reloads adding, changing and removing clusters").await;
}

// ---------------------------------------------------------------------------------------------
// 5. A reload removing a cluster a listener names
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_cluster_a_listener_names_is_refused_with_both_names() {
    let (web, spare) = (EchoServer::start().await, EchoServer::start().await);
    let m = |clusters: &[(&str, SocketAddr)]| {
        let mut m = ChainManifest::new()
            .workers(2)
            .listener("main", "web", None);
        for (name, a) in clusters {
            m = m.cluster(name, &[*a]);
        }
        with_token(&m.yaml())
    };
    let weir = start_with_token(&m(&[("web", web.addr), ("spare", spare.addr)]), TOKEN, &[]).await;
    let (addr, admin) = (weir.listener_addr("main"), admin_of(&weir));
    let load = start_load(addr);
    load.wait_served(web.addr, 100).await;

    let r = admin.reload(&weir, &m(&[("spare", spare.addr)])).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("listeners[0].default_cluster") && text.contains("listener `main`"),
        "the listener is not named: {text}"
    );
    assert!(
        text.contains("unknown cluster `web`"),
        "the cluster is not named: {text}"
    );

    // Nothing changed: `web` serves on.
    let served = load.served_by(web.addr);
    load.progress(300).await;
    assert!(load.served_by(web.addr) >= served + 300);
    let c = cluster_of(&admin, "web").await;
    assert_eq!(c["version"], 1, "{c}");
    let dump = admin.get_json("/config_dump").await;
    assert_eq!(dump["generation"], 1, "{dump}");
    let m = scrape(admin.addr).await;
    assert_eq!(
        m.get("weir_config_changes_total", &[("result", "refused")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("weir_cluster_changes_total", &[("op", "remove")]),
        Some(0.0)
    );
    assert!(spare.requests().is_empty());
    finish(load, "a refused reload").await;
}

// ---------------------------------------------------------------------------------------------
// 6. Endpoint API refusals
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_api_refusals_name_the_field_and_change_nothing() {
    let (web, other) = (EchoServer::start().await, EchoServer::start().await);
    let (_weir, _, admin, load) = start_web(&[web.addr]).await;
    load.wait_served(web.addr, 50).await;
    let (w, o) = (web.addr.to_string(), other.addr.to_string());
    let before = cluster_of(&admin, "web").await;

    let r = Admin::new(admin.addr)
        .put_endpoints("web", &endpoints(&[other.addr]))
        .await;
    assert_eq!(r.status, 401, "without a token: {}", r.text());
    let r = admin.put_endpoints("nope", &endpoints(&[other.addr])).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("nope"), "{}", r.text());

    let malformed = [
        r#"{"endpoints": ["#.to_string(),
        format!(r#"{{"endpoints": [{{"address": "{o}", "wieght": 2}}]}}"#),
        r#"{"endpoints": [{"weight": 2}]}"#.to_string(),
        r#"{"endpoints": [{"address": "localhost:80"}]}"#.to_string(),
        format!(r#"{{"endpoints": [{{"address": "{o}", "health": "sick"}}]}}"#),
        format!(r#"{{"endpoints": [{{"address": "{o}"}}], "cluster": "web"}}"#),
        format!(r#"["{o}"]"#),
    ];
    for body in &malformed {
        let r = admin.put_endpoints("web", body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
    }
    let r = admin.put_endpoints("web", &malformed[1]).await;
    assert!(r.text().contains("wieght"), "{}", r.text());

    let bad = [
        (json!({"address": o, "weight": 0}), "endpoints[1].weight"),
        (
            json!({"address": o, "weight": 10_001}),
            "endpoints[1].weight",
        ),
        (
            json!({"address": o, "priority": 128}),
            "endpoints[1].priority",
        ),
        (json!({"address": w}), "endpoints[1].address"),
        (json!({"address": "127.0.0.1:0"}), "endpoints[1].address"),
    ];
    for (second, field) in &bad {
        let body = json!({"endpoints": [{"address": w}, second]}).to_string();
        let r = admin.put_endpoints("web", &body).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert!(
            r.text().contains(field),
            "{body}: no {field} in {}",
            r.text()
        );
        // A dry run refuses it the same way.
        let r = admin
            .put_json("/clusters/web/endpoints?dry_run=true", &body)
            .await;
        assert_eq!(r.status, 422, "dry run {body}: {}", r.text());
        assert!(r.text().contains(field), "dry run {body}: {}", r.text());
    }

    // A dry run of a good set validates and changes nothing.
    let r = admin
        .put_json(
            "/clusters/web/endpoints?dry_run=true",
            &endpoints(&[other.addr]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (v["generation"].as_u64(), v["result"].as_str()),
        (Some(1), Some("valid")),
        "{v}"
    );

    load.progress(300).await;
    let after = cluster_of(&admin, "web").await;
    for key in ["version", "endpoint_source", "lb", "protocol"] {
        assert_eq!(after[key], before[key], "{key}: {before} then {after}");
    }
    assert_eq!(after["version"], 1);
    assert_eq!(after["endpoint_source"], "static");
    assert_eq!(addresses(&after), sorted(&[web.addr]));
    assert_eq!(admin.get_json("/config_dump").await["generation"], 1);
    let m = scrape(admin.addr).await;
    assert_eq!(m.get("weir_endpoint_updates_total", &[]), Some(0.0));
    assert_eq!(m.get("weir_generation", &[]), Some(1.0));
    assert!(
        other.requests().is_empty(),
        "a refused or dry-run set got traffic"
    );
    finish(load, "refused endpoint changes").await;
}

// ---------------------------------------------------------------------------------------------
// 7. `weir admin set-endpoints`
// ---------------------------------------------------------------------------------------------

/// Runs `weir admin --addr ADMIN --token-file TOKEN args…`.
async fn weir_admin(weir: &Weir, args: &[&str]) -> std::process::Output {
    let token = weir.dir().join("token");
    let mut cmd = tokio::process::Command::new(weir_bin());
    cmd.arg("admin")
        .arg("--addr")
        .arg(weir.admin_addr().to_string())
        .arg("--token-file")
        .arg(&token)
        .args(args)
        .stdin(std::process::Stdio::null());
    within("weir admin", cmd.output())
        .await
        .expect("run weir admin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_admin_set_endpoints_cli() {
    let (a, b0, b1, c) = (
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
    );
    let (weir, _, admin, load) = start_web(&[a.addr]).await;
    load.wait_served(a.addr, 50).await;

    // Refusals first: a spec that is not IP:PORT (refused by the client), an unknown cluster.
    let out = weir_admin(&weir, &["set-endpoints", "web", "localhost:80"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not IP:PORT"),
        "{out:?}"
    );
    let b0_spec = format!("{},weight=2,zone=a", b0.addr);
    let b1_spec = format!("{},zone=b", b1.addr);
    let out = weir_admin(&weir, &["set-endpoints", "nope", &b0_spec]).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 404"),
        "{out:?}"
    );
    let c_spec = c.addr.to_string();
    let out = weir_admin(&weir, &["set-endpoints", "--dry-run", "web", &c_spec]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(cluster_of(&admin, "web").await["version"], 1);

    let out = weir_admin(&weir, &["set-endpoints", "web", &b0_spec, &b1_spec]).await;
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(printed["generation"], 2, "{printed}");

    let settled = settled_requests(&load, &[&a]).await;
    load.wait_served(b0.addr, 50).await;
    load.wait_served(b1.addr, 20).await;
    load.progress(200).await;
    assert_eq!(received(&a), settled, "A still gets requests");
    let cl = cluster_of(&admin, "web").await;
    assert_eq!(cl["version"], 2, "{cl}");
    assert_eq!(cl["endpoint_source"], "admin", "{cl}");
    assert_eq!(addresses(&cl), sorted(&[b0.addr, b1.addr]), "{cl}");
    let (e0, e1) = (endpoint(&cl, b0.addr), endpoint(&cl, b1.addr));
    assert_eq!(
        (e0["weight"].as_u64(), e0["zone"].as_str()),
        (Some(2), Some("a")),
        "{cl}"
    );
    assert_eq!(
        (e1["weight"].as_u64(), e1["zone"].as_str()),
        (Some(1), Some("b")),
        "{cl}"
    );
    assert!(
        c.requests().is_empty(),
        "the dry run's endpoint got traffic"
    );
    finish(load, "weir admin set-endpoints").await;
}

// ---------------------------------------------------------------------------------------------
// 8. A cluster's expected upstream identity changed by a reload
// ---------------------------------------------------------------------------------------------

const TD: &str = "example.org";
const FRONT_ID: &str = "spiffe://example.org/ns/test/sa/front";
const BACK_ID: &str = "spiffe://example.org/ns/test/sa/back";
const OTHER_ID: &str = "spiffe://example.org/ns/test/sa/other";

/// Weir B: mTLS listener `back` (its certificate is `back`'s, SPIFFE ID [`BACK_ID`]) in front of
/// `echo`.
async fn start_back(echo: SocketAddr, ca: &TestCa, back: &Leaf) -> Weir {
    let m = ChainManifest::new()
        .listener("back", "app", None)
        .cluster("app", &[echo]);
    let tls: Vec<String> = [
        "    tls:",
        "      cert: back.pem",
        "      key: back-key.pem",
        "      client_ca: ca.pem",
    ]
    .iter()
    .map(|l| l.to_string())
    .chain([format!("      trust_domains: [{TD}]")])
    .collect();
    let yaml = add_to_listener(&m.yaml(), "back", &tls);
    Weir::start_with_files(
        &yaml,
        &[
            ("back.pem", back.cert_pem.as_bytes()),
            ("back-key.pem", back.key_pem.as_bytes()),
            ("ca.pem", ca.pem().as_bytes()),
        ],
        &[],
    )
    .await
}

/// Weir A's manifest: listener `front` → cluster `back` at `back` over mTLS, expecting
/// `identity`.
fn front_yaml(back: SocketAddr, identity: &str) -> String {
    let identity = format!("  expect_identity: {identity}");
    let tls = [
        "tls:",
        "  ca: ca.pem",
        "  cert: front.pem",
        "  key: front-key.pem",
        "  sni: back.local",
        &identity,
    ];
    with_token(
        &ChainManifest::new()
            .workers(2)
            .listener("front", "back", None)
            .cluster_with("back", &[back], &tls)
            .yaml(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_clusters_tls_expected_identity_verifies_new_connections_against_it() {
    let ca = TestCa::new(TD);
    let (back_leaf, front_leaf) = (
        ca.leaf("back", Some(BACK_ID), &[]),
        ca.leaf("front", Some(FRONT_ID), &[]),
    );
    let echo = EchoServer::start().await;
    let back = start_back(echo.addr, &ca, &back_leaf).await;
    let back_addr = back.listener_addr("back");
    let ca_pem = ca.pem();
    let front = start_with_token(
        &front_yaml(back_addr, BACK_ID),
        TOKEN,
        &[
            ("front.pem", front_leaf.cert_pem.as_bytes()),
            ("front-key.pem", front_leaf.key_pem.as_bytes()),
            ("ca.pem", ca_pem.as_bytes()),
        ],
    )
    .await;
    let (addr, admin) = (front.listener_addr("front"), admin_of(&front));

    let load = start_load(addr);
    load.progress(300).await;
    finish(load, "expecting B's identity").await;

    // Expecting an identity B's certificate does not have: the pooled connections were made for
    // the old settings and are not reused; every new connection fails verification.
    let g = generation_of(
        "expecting another identity",
        &admin.reload(&front, &front_yaml(back_addr, OTHER_ID)).await,
    );
    assert_eq!(cluster_of(&admin, "back").await["version"], g);
    let reached = received(&echo);
    for i in 0..16 {
        let r = get_once(addr, &format!("/wrong-{i}"), &[]).await;
        assert_error(&r, 503, "upstream_connect_failure");
    }
    assert_eq!(
        received(&echo),
        reached,
        "a request reached B under the wrong identity"
    );

    // Back to B's identity: served again, without a failure.
    let g2 = generation_of(
        "expecting B's identity again",
        &admin.reload(&front, &front_yaml(back_addr, BACK_ID)).await,
    );
    assert_eq!(g2, g + 1);
    let load = start_load(addr);
    load.progress(300).await;
    finish(load, "expecting B's identity again").await;
    assert!(received(&echo) > reached);
}

/// A replaced version's health checker stops: after an endpoint update, the endpoint that left
/// is probed no more while the new one is.
#[tokio::test]
async fn a_replaced_versions_health_checker_stops() {
    let (x, y) = (
        ControlledServer::start().await,
        ControlledServer::start().await,
    );
    let m = ChainManifest::new().cluster_with(
        "web",
        &[x.addr],
        &["health_check: { path: /healthz, interval: 50ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 1 }"],
    )
    .listener("main", "web", None);
    let weir = start(m).await;
    x.wait_health_checks(2).await;
    let r = admin_of(&weir)
        .put_endpoints("web", &endpoints(&[y.addr]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A probe of x may have been in flight when the update was answered.
    let x_after = x.health_checks() + 1;
    y.wait_health_checks(y.health_checks() + 6).await;
    assert!(
        x.health_checks() <= x_after,
        "the old version still probes x: {} checks after the update (at most {x_after})",
        x.health_checks()
    );
}
