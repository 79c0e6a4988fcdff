//! Listeners live (issue 25): a reload adds a listener (bound before it answers), removes one
//! (it stops accepting; a request in flight on it completes), moves one to a new port, changes
//! one's settings, and a bind failure refuses the whole change. Two workers, a continuous load
//! on a listener the change leaves alone, zero failed requests.

use std::net::SocketAddr;

use weir_tests::admin::{generation_of, start_with_token};
use weir_tests::{Admin, EchoServer, H1Client, Load, RawClient, Weir, eventually, within};

const TOKEN: &str = "listeners-token-42";

/// The manifest: listener `main` always, the others as given (`name: port` with port 0 for any),
/// all to cluster `up`.
fn manifest(up: SocketAddr, others: &[(&str, u16)], extra_main: &str) -> String {
    let mut y = format!(
        "workers: 2
drain_timeout: 5s
admin: {{ address: 127.0.0.1:0, token_file: token }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, default_cluster: up{extra_main} }}
"
    );
    for (name, port) in others {
        y.push_str(&format!(
            "  - {{ name: {name}, address: 127.0.0.1:{port}, default_cluster: up }}\n"
        ));
    }
    y.push_str(&format!("clusters:\n  up: {{ endpoints: [{up}] }}\n"));
    y
}

/// Weir on `yaml` (mutations enabled with [`TOKEN`]) and its admin endpoint.
async fn start(yaml: &str) -> (Weir, Admin) {
    let weir = start_with_token(yaml, TOKEN, &[]).await;
    let admin = Admin::of(&weir).bearer(TOKEN);
    (weir, admin)
}

/// The load on listener `main` at `addr`, which the changes leave alone: one keep-alive client
/// and two that connect for every request (each crosses accept).
fn start_load(addr: SocketAddr) -> Load {
    Load::on(addr).keep_alive(1).fresh(2).start()
}

async fn serves(addr: SocketAddr) -> bool {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => {
            let mut c = H1Client::connect(addr).await;
            c.get("/probe").await.status == 200
        }
        Err(_) => false,
    }
}

/// Waits until connections to `addr` are refused (`what` names the wait).
async fn until_refused(addr: SocketAddr, what: &str) {
    eventually(what, async || {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_reload_adds_a_listener_that_serves_before_the_answer() {
    let up = EchoServer::start().await;
    let (weir, admin) = start(&manifest(up.addr, &[], "")).await;
    let load = start_load(weir.listener_addr("main"));
    let r = admin
        .reload(&weir, &manifest(up.addr, &[("extra", 0)], ""))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Bound before the answer: the first connection after it is served.
    let extra = admin.listener("extra").await.address;
    assert!(serves(extra).await, "the new listener serves at once");
    let listeners = admin.listeners().await;
    let version = |name: &str| listeners.iter().find(|l| l.name == name).unwrap().version;
    assert_eq!(version("extra"), generation_of("adding extra", &r));
    // main did not change: it keeps its version.
    assert_eq!(version("main"), 1);
    load.finish("a reload adding listener extra").await;
}

#[tokio::test]
async fn removing_a_listener_stops_accepting_and_finishes_its_request_in_flight() {
    let up = EchoServer::start().await;
    let (weir, admin) = start(&manifest(up.addr, &[("extra", 0)], "")).await;
    let extra = admin.listener("extra").await.address;
    let load = start_load(weir.listener_addr("main"));

    // A slow request in flight on `extra`.
    let mut held = H1Client::connect(extra).await;
    let slow = tokio::spawn(async move { held.get("/hold/slow").await });
    up.wait_in_flight(1).await;

    let r = admin.reload(&weir, &manifest(up.addr, &[], "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    until_refused(extra, "the removed listener refuses connections").await;
    up.release(1);
    let resp = within("the request in flight completes", slow)
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(admin.listeners().await.iter().all(|l| l.name != "extra"));
    load.finish("removing listener extra").await;
}

#[tokio::test]
async fn a_listener_moves_to_a_new_port() {
    let up = EchoServer::start().await;
    let (weir, admin) = start(&manifest(up.addr, &[("mobile", 0)], "")).await;
    let old = admin.listener("mobile").await.address;
    assert!(serves(old).await);
    let load = start_load(weir.listener_addr("main"));
    let new_port = free_port();
    let r = admin
        .reload(&weir, &manifest(up.addr, &[("mobile", new_port)], ""))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let new: SocketAddr = ([127, 0, 0, 1], new_port).into();
    assert_eq!(admin.listener("mobile").await.address, new);
    assert!(serves(new).await, "the new port serves at once");
    until_refused(old, "the old port stops accepting").await;
    load.finish("moving listener mobile").await;
}

#[tokio::test]
async fn a_settings_change_keeps_the_socket_and_applies_to_new_connections() {
    let up = EchoServer::start().await;
    let (weir, admin) = start(&manifest(up.addr, &[], "")).await;
    let main = weir.listener_addr("main");
    let load = start_load(main);
    // A tighter header limit: new connections get it.
    let r = admin
        .reload(
            &weir,
            &manifest(up.addr, &[], ", limits: { max_request_headers: 5 }"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(admin.listener("main").await.address, main, "same socket");
    let mut c = RawClient::connect(main).await;
    let mut head = String::from("GET /many HTTP/1.1\r\nhost: x\r\n");
    for i in 0..10 {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    c.write(head.as_bytes()).await.unwrap();
    let resp = c.read_response().await;
    assert_eq!(resp.status, 431, "the new limit applies: {}", resp.text());
    load.finish("a settings change of main").await;
}

#[tokio::test]
async fn a_bind_failure_refuses_the_whole_change_and_the_running_config_serves() {
    let up = EchoServer::start().await;
    let (weir, admin) = start(&manifest(up.addr, &[], "")).await;
    let load = start_load(weir.listener_addr("main"));
    // A plain socket (no SO_REUSEPORT) holds the port.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let r = admin
        .reload(
            &weir,
            &manifest(up.addr, &[("ok", 0), ("clash", taken)], ""),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("listeners.clash.address") && r.text().contains(&taken.to_string()),
        "names the listener and address: {}",
        r.text()
    );
    assert_eq!(
        admin.listener_names().await,
        ["main"],
        "nothing of the change applied"
    );
    drop(holder);
    load.finish("a reload refused by a bind failure").await;
}

#[tokio::test]
async fn what_needs_a_restart_is_refused_by_name_and_the_rest_is_live() {
    let up = EchoServer::start().await;
    let base = manifest(up.addr, &[], "");
    let (weir, admin) = start(&base).await;
    // The worker count cannot change without a restart: refused, naming it.
    let r = admin
        .reload(&weir, &base.replace("workers: 2", "workers: 3"))
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("workers") && r.text().contains("restart"),
        "{}",
        r.text()
    );
    // The drain timeout can.
    let r = admin
        .reload(
            &weir,
            &base.replace("drain_timeout: 5s", "drain_timeout: 7s"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let dump = admin.get_json("/config_dump").await;
    assert_eq!(dump["drain_timeout"], "7s", "{dump}");
    assert!(serves(weir.listener_addr("main")).await);
}

#[tokio::test]
async fn a_reload_turns_the_access_log_on_and_off() {
    let up = EchoServer::start().await;
    let base = manifest(up.addr, &[], "");
    let (weir, admin) = start(&base).await;
    let main = weir.listener_addr("main");
    let log = weir.dir().join("access.log");
    let on = format!(
        "{base}telemetry:\n  access_log: {{ path: access.log, fields: [path, status], flush_interval: 10ms }}\n"
    );
    let r = admin.reload(&weir, &on).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut c = H1Client::connect(main).await;
    assert_eq!(c.get("/logged").await.status, 200);
    let lines = eventually("the line reaches the new log", async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("/logged") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    assert!(lines.contains("\"status\":200"), "{lines}");
    // Off again: later requests are not logged (the writer is flushed and stopped first).
    let r = admin.reload(&weir, &base).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut c = H1Client::connect(main).await;
    assert_eq!(c.get("/not-logged").await.status, 200);
    // A request that is logged by a third log proves the second went through nothing.
    let again = on.replace("access.log", "again.log");
    assert_eq!(admin.reload(&weir, &again).await.status, 200);
    assert_eq!(
        H1Client::connect(main).await.get("/again").await.status,
        200
    );
    eventually("the third log has its line", async || {
        let t = std::fs::read_to_string(weir.dir().join("again.log")).unwrap_or_default();
        if t.contains("/again") { Ok(()) } else { Err(t) }
    })
    .await;
    let first = std::fs::read_to_string(&log).unwrap();
    assert!(!first.contains("/not-logged"), "{first}");
}

/// A free port now (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_rollback_moves_a_listener_back_and_binds_its_old_address_again() {
    let up = EchoServer::start().await;
    let (p1, p2) = (free_port(), free_port());
    let (weir, admin) = start(&manifest(up.addr, &[("mobile", p1)], "")).await;
    let (a1, a2): (SocketAddr, SocketAddr) =
        (([127, 0, 0, 1], p1).into(), ([127, 0, 0, 1], p2).into());
    assert!(serves(a1).await);
    let load = start_load(weir.listener_addr("main"));
    assert_eq!(
        admin
            .reload(&weir, &manifest(up.addr, &[("mobile", p2)], ""))
            .await
            .status,
        200
    );
    assert!(serves(a2).await);
    until_refused(a1, "the first port is let go").await;
    // Rollback: the previous generation's listener comes back on its own address.
    let r = admin.rollback().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(admin.listener("mobile").await.address, a1);
    assert!(serves(a1).await, "the old address serves again");
    until_refused(a2, "the second port is let go").await;
    load.finish("rolling a listener move back").await;
}

#[tokio::test]
async fn max_connections_counts_connections_across_a_settings_change() {
    let up = EchoServer::start().await;
    let m = |extra: &str| manifest(up.addr, &[], extra).replace("workers: 2", "workers: 1");
    let (weir, admin) = start(&m(", limits: { max_connections: 2 }")).await;
    let main = weir.listener_addr("main");
    let mut a = H1Client::connect(main).await;
    let mut b = H1Client::connect(main).await;
    assert_eq!(a.get("/a").await.status, 200);
    assert_eq!(b.get("/b").await.status, 200);
    // New settings on the same socket: the two open connections still count.
    let r = admin
        .reload(
            &weir,
            &m(", limits: { max_connections: 2, max_request_headers: 50 }"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let third = tokio::spawn(async move {
        let mut c = RawClient::connect(main).await;
        c.write(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        c.read_response().await
    });
    // (a negative check can only be a bounded wait; it cannot fail spuriously, only miss)
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        up.requests().len(),
        2,
        "a third connection was served above max_connections 2 after the change"
    );
    drop(a);
    let r = within("the third connection is served once one closed", third)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
