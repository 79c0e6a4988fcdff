//! Weir under a control plane (issue 26): a scripted ADS server ([`weir_tests::xds`]) streams
//! clusters, endpoints, listeners and routes; weir serves them, ACKs what it applied, NACKs what
//! it refused (naming the field) while the rest keeps serving, and rides out streams that end and
//! servers that restart. Each protocol test runs over both Delta and state-of-the-world ADS.

use std::net::SocketAddr;

use weir_tests::client::H1Client;
use weir_tests::resources::{self as res, Ep};
use weir_tests::xds::{AdsServer, Seen, any, types};
use weir_tests::{Admin, EchoServer, Load, Weir, eventually};

fn manifest(ads: SocketAddr, mode: &str, extra: &str) -> String {
    format!(
        "workers: 2
admin: {{ address: 127.0.0.1:0 }}
xds:
  server: {{ address: \"{ads}\" }}
  node: {{ id: test-node, cluster: test, metadata: {{ team: edge }} }}
  mode: {mode}
  initial_fetch_timeout: 30s
{extra}"
    )
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Sets the usual world: clusters `web` (on `web`) and `api` (on `api`) by EDS, listener `in`
/// with routes `routes`: `/api` → api, the rest → web.
fn world(ads: &AdsServer, web: SocketAddr, api: SocketAddr) {
    ads.set(
        types::CLUSTER,
        [
            ("web", any(&res::eds_cluster("web"))),
            ("api", any(&res::eds_cluster("api"))),
        ],
    );
    ads.set(
        types::ENDPOINT,
        [
            ("web", any(&res::load_assignment("web", [Ep::from(web)]))),
            ("api", any(&res::load_assignment("api", [Ep::from(api)]))),
        ],
    );
    ads.set(
        types::LISTENER,
        [(
            "in",
            any(&res::listener("in", any_port(), "routes", vec![])),
        )],
    );
    set_routes(ads, &[("/api", "api"), ("/", "web")]);
}

fn set_routes(ads: &AdsServer, routes: &[(&str, &str)]) -> String {
    let rc = res::route_config(
        "routes",
        routes
            .iter()
            .map(|(p, c)| res::prefix_route(p, c))
            .collect(),
    );
    ads.set(types::ROUTE, [("routes", any(&rc))])
}

/// Waits until `/ready` answers 200.
async fn until_ready(weir: &Weir) {
    let admin = Admin::of(weir);
    eventually("weir is ready", async || {
        let r = admin.request("GET", "/ready", None, b"").await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.text())
        }
    })
    .await;
}

/// The address listener `name` is bound to, once it is.
async fn listener_addr(weir: &Weir, name: &str) -> SocketAddr {
    let admin = Admin::of(weir);
    eventually("the xDS listener is bound", async || {
        admin
            .listeners()
            .await
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.address)
            .ok_or("not yet")
    })
    .await
}

/// The upstream that answered `GET path`, or the status when weir answered itself.
async fn reached(addr: SocketAddr, path: &str) -> Result<String, u16> {
    let mut c = H1Client::connect(addr).await;
    let r = c.get(path).await;
    match r.header("x-upstream") {
        Some(up) if r.status == 200 => Ok(up.to_owned()),
        _ => Err(r.status.as_u16()),
    }
}

async fn until_reached(addr: SocketAddr, path: &str, want: Result<String, u16>) {
    eventually(&format!("GET {path} reaches {want:?}"), async || {
        let got = reached(addr, path).await;
        if got == want { Ok(()) } else { Err(got) }
    })
    .await;
}

async fn ack(ads: &AdsServer, type_url: &str, version: &str) -> Seen {
    ads.wait_for(|s| s.is_ack_of(type_url, version))
        .await
        .unwrap_or_else(|e| panic!("no ACK of {type_url} version {version}: {e}"))
}

async fn nack(ads: &AdsServer, type_url: &str, version: &str) -> Seen {
    ads.wait_for(|s| s.is_nack_of(type_url, version))
        .await
        .unwrap_or_else(|e| panic!("no NACK of {type_url} version {version}: {e}"))
}

async fn configuration_flows_updates_and_removals(mode: &str) {
    let (web, api) = (EchoServer::start().await, EchoServer::start().await);
    let ads = AdsServer::start().await.unwrap();
    world(&ads, web.addr, api.addr);
    let weir = Weir::start(&manifest(ads.addr(), mode, "")).await;
    until_ready(&weir).await;
    let addr = listener_addr(&weir, "in").await;
    assert_eq!(reached(addr, "/x").await, Ok(web.addr.to_string()));
    assert_eq!(reached(addr, "/api/x").await, Ok(api.addr.to_string()));
    let first = ads.requests();
    assert!(
        first
            .iter()
            .any(|s| s.node_id.as_deref() == Some("test-node")),
        "the node is sent: {first:?}"
    );

    // EDS: web's endpoint moves to the api server.
    let v = ads.set(
        types::ENDPOINT,
        [(
            "web",
            any(&res::load_assignment("web", [Ep::from(api.addr)])),
        )],
    );
    ack(&ads, types::ENDPOINT, &v).await;
    until_reached(addr, "/x", Ok(api.addr.to_string())).await;

    // RDS: everything to api; then CDS: web goes away.
    let v = set_routes(&ads, &[("/", "api")]);
    ack(&ads, types::ROUTE, &v).await;
    until_reached(addr, "/api/y", Ok(api.addr.to_string())).await;
    let v = ads.remove(types::CLUSTER, &["web"]);
    ack(&ads, types::CLUSTER, &v).await;
    let admin = Admin::of(&weir);
    let clusters = admin.get_json("/clusters").await;
    let names: Vec<&str> = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api"], "web is removed: {clusters}");
    assert_eq!(clusters["clusters"][0]["endpoint_source"], "xds");

    // A route to a cluster that does not exist: 503, as Envoy answers (NC).
    let v = set_routes(&ads, &[("/", "gone")]);
    ack(&ads, types::ROUTE, &v).await;
    until_reached(addr, "/", Err(503)).await;

    // LDS: the listener goes away.
    let v = ads.remove(types::LISTENER, &["in"]);
    ack(&ads, types::LISTENER, &v).await;
    assert!(admin.listener_names().await.is_empty());
    eventually(
        "the listener's port is closed",
        async || match tokio::net::TcpStream::connect(addr).await {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting"),
        },
    )
    .await;

    let dump = admin.get_json("/config_dump").await;
    assert_eq!(dump["xds"]["connected"], true, "{dump}");
    assert_eq!(dump["xds"]["mode"], mode);
    let resources = dump["xds"]["resources"].as_array().unwrap();
    assert!(
        resources
            .iter()
            .any(|r| r["type"] == "cluster" && r["name"] == "api" && r["version"].is_string()),
        "{dump}"
    );
}

#[tokio::test]
async fn delta_configuration_flows_updates_and_removals() {
    configuration_flows_updates_and_removals("delta").await;
}

#[tokio::test]
async fn sotw_configuration_flows_updates_and_removals() {
    configuration_flows_updates_and_removals("sotw").await;
}

async fn a_nack_names_the_field_and_the_rest_keeps_serving(mode: &str) {
    let (web, api) = (EchoServer::start().await, EchoServer::start().await);
    let ads = AdsServer::start().await.unwrap();
    world(&ads, web.addr, api.addr);
    let weir = Weir::start(&manifest(ads.addr(), mode, "")).await;
    until_ready(&weir).await;
    let addr = listener_addr(&weir, "in").await;
    let load = Load::on(addr).keep_alive(2).start();

    // A field Weir does not support: refused with its name, nothing changes.
    let mut bad = res::eds_cluster("web");
    bad.lb_policy = 2; // RING_HASH
    let v = ads.set(
        types::CLUSTER,
        [("web", any(&bad)), ("api", any(&res::eds_cluster("api")))],
    );
    let seen = nack(&ads, types::CLUSTER, &v).await;
    let (_, message) = seen.error.clone().expect("error_detail");
    assert!(
        message.contains("web") && message.contains("lb_policy"),
        "the NACK names the resource and the field: {message}"
    );

    // A value only the transaction can judge (a CA file that does not exist): refused too.
    let mut tls = res::eds_cluster("api");
    tls.transport_socket = Some(weir_tests::resources::upstream_tls(
        "/nonexistent/ca.pem",
        "spiffe://td/api",
    ));
    let v = ads.set(
        types::CLUSTER,
        [("web", any(&res::eds_cluster("web"))), ("api", any(&tls))],
    );
    let seen = nack(&ads, types::CLUSTER, &v).await;
    let (_, message) = seen.error.clone().expect("error_detail");
    assert!(
        message.contains("api") && message.contains("ca"),
        "{message}"
    );

    // Still serving the last accepted configuration, with no failed request.
    load.progress(20).await;
    assert_eq!(reached(addr, "/api/x").await, Ok(api.addr.to_string()));
    let dump = Admin::of(&weir).get_json("/config_dump").await;
    let api_res = dump["xds"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "cluster" && r["name"] == "api")
        .cloned()
        .unwrap();
    assert!(
        api_res["last_nack"]["error"]
            .as_str()
            .unwrap()
            .contains("ca"),
        "{api_res}"
    );
    let metrics = crate::observability::scrape(weir.admin_addr()).await;
    assert!(
        metrics.sum(
            "weir_xds_updates_total",
            &[("type", "cluster"), ("outcome", "rejected")]
        ) >= 2.0
    );

    // A good update after the refusals is applied.
    let v = ads.set(
        types::CLUSTER,
        [
            ("web", any(&res::eds_cluster("web"))),
            ("api", any(&res::eds_cluster("api"))),
        ],
    );
    ack(&ads, types::CLUSTER, &v).await;
    load.finish("NACKed updates").await;
}

#[tokio::test]
async fn delta_a_nack_names_the_field_and_the_rest_keeps_serving() {
    a_nack_names_the_field_and_the_rest_keeps_serving("delta").await;
}

#[tokio::test]
async fn sotw_a_nack_names_the_field_and_the_rest_keeps_serving() {
    a_nack_names_the_field_and_the_rest_keeps_serving("sotw").await;
}

#[tokio::test]
async fn a_delta_stream_that_ends_resumes_with_the_versions_weir_has() {
    let (web, api) = (EchoServer::start().await, EchoServer::start().await);
    let ads = AdsServer::start().await.unwrap();
    world(&ads, web.addr, api.addr);
    let weir = Weir::start(&manifest(ads.addr(), "delta", "")).await;
    until_ready(&weir).await;
    let addr = listener_addr(&weir, "in").await;
    let load = Load::on(addr).keep_alive(2).start();
    load.progress(20).await;

    ads.disconnect_all();
    ads.wait_streams(|open, total| open == 1 && total == 2)
        .await
        .expect("weir reconnects");
    let resumed = ads
        .wait_for(|s| s.stream == 2 && s.type_url == types::CLUSTER)
        .await
        .unwrap();
    assert_eq!(
        resumed.initial_resource_versions.get("web"),
        ads.resource_version(types::CLUSTER, "web").as_ref(),
        "the resumed stream says which version of web weir has: {resumed:?}"
    );
    assert!(resumed.has_node, "the node opens every stream");

    // Updates flow on the new stream.
    let v = ads.set(
        types::ENDPOINT,
        [(
            "web",
            any(&res::load_assignment("web", [Ep::from(api.addr)])),
        )],
    );
    ack(&ads, types::ENDPOINT, &v).await;
    until_reached(addr, "/x", Ok(api.addr.to_string())).await;
    load.finish("the stream ending and resuming").await;
}

#[tokio::test]
async fn a_control_plane_restart_keeps_the_last_configuration_serving() {
    let (web, api) = (EchoServer::start().await, EchoServer::start().await);
    let ads = AdsServer::start().await.unwrap();
    let at = ads.addr();
    world(&ads, web.addr, api.addr);
    let weir = Weir::start(&manifest(at, "sotw", "")).await;
    until_ready(&weir).await;
    let addr = listener_addr(&weir, "in").await;
    let load = Load::on(addr).keep_alive(2).start();

    ads.stop().await;
    let admin = Admin::of(&weir);
    eventually("weir sees the control plane gone", async || {
        let d = admin.get_json("/config_dump").await;
        if d["xds"]["connected"] == false {
            Ok(())
        } else {
            Err(d["xds"].clone())
        }
    })
    .await;
    load.progress(50).await;

    let ads = AdsServer::start_at(at).await.unwrap();
    world(&ads, web.addr, api.addr);
    ads.wait_streams(|open, _| open == 1)
        .await
        .expect("weir reconnects to the restarted server");
    let v = set_routes(&ads, &[("/", "api")]);
    ack(&ads, types::ROUTE, &v).await;
    until_reached(addr, "/x", Ok(api.addr.to_string())).await;
    load.finish("the control plane restarting").await;
}

#[tokio::test]
async fn a_cluster_warms_until_its_endpoints_arrive_and_endpoints_may_come_first() {
    let (web, api) = (EchoServer::start().await, EchoServer::start().await);
    let ads = AdsServer::start().await.unwrap();
    world(&ads, web.addr, api.addr);
    ads.hold(types::ENDPOINT, true);
    let weir = Weir::start(&manifest(ads.addr(), "delta", "")).await;
    let admin = Admin::of(&weir);
    // Clusters and listener arrive; endpoints do not: not ready, clusters warming.
    ads.wait_for(|s| s.type_url == types::ENDPOINT && !s.subscribe.is_empty())
        .await
        .expect("weir asks for the endpoints");
    let r = admin.request("GET", "/ready", None, b"").await;
    assert_eq!(r.status, 503, "{}", r.text());
    let dump = admin.get_json("/config_dump").await;
    assert!(
        dump["xds"]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["type"] == "cluster" && r["name"] == "web" && r["warming"] == true),
        "{dump}"
    );
    ads.hold(types::ENDPOINT, false);
    until_ready(&weir).await;
    let addr = listener_addr(&weir, "in").await;
    assert_eq!(reached(addr, "/x").await, Ok(web.addr.to_string()));

    // Endpoints for a cluster weir does not know yet, then the cluster and a route to it.
    let late = EchoServer::start().await;
    ads.set(
        types::ENDPOINT,
        [(
            "late",
            any(&res::load_assignment("late", [Ep::from(late.addr)])),
        )],
    );
    let v = ads.set(
        types::CLUSTER,
        [
            ("web", any(&res::eds_cluster("web"))),
            ("api", any(&res::eds_cluster("api"))),
            ("late", any(&res::eds_cluster("late"))),
        ],
    );
    ack(&ads, types::CLUSTER, &v).await;
    set_routes(&ads, &[("/late", "late"), ("/", "web")]);
    until_reached(addr, "/late/x", Ok(late.addr.to_string())).await;
}

#[tokio::test]
async fn an_unreachable_control_plane_leaves_the_static_part_serving() {
    let up = EchoServer::start().await;
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let extra = format!(
        "listeners:
  - {{ name: static, address: 127.0.0.1:0, default_cluster: local }}
clusters:
  local: {{ endpoints: [\"{}\"] }}
",
        up.addr
    );
    let yaml = manifest(closed, "delta", &extra)
        .replace("initial_fetch_timeout: 30s", "initial_fetch_timeout: 4s");
    let weir = Weir::start(&yaml).await;
    let addr = weir.listener_addr("static");
    assert_eq!(reached(addr, "/").await, Ok(up.addr.to_string()));
    let admin = Admin::of(&weir);
    let r = admin.request("GET", "/ready", None, b"").await;
    assert_eq!(
        r.status,
        503,
        "not ready before initial_fetch_timeout: {}",
        r.text()
    );
    until_ready(&weir).await;
    let metrics = crate::observability::scrape(weir.admin_addr()).await;
    assert!(metrics.sum("weir_xds_connect_failures_total", &[]) >= 1.0);
    assert_eq!(metrics.sum("weir_xds_connected", &[]), 0.0);
}

#[tokio::test]
async fn an_sds_secret_serves_a_tls_listener_and_rotates_under_load_with_no_failure() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use weir_tests::tls::{TestCa, TlsClient, https_get, peer_certificate};

    let (web, api) = (EchoServer::start().await, EchoServer::start().await);
    let ads = AdsServer::start().await.unwrap();
    world(&ads, web.addr, api.addr);
    let ca = TestCa::new("td.test");
    let first = ca.leaf("server-1", Some("spiffe://td.test/server"), &[]);
    ads.set(
        types::SECRET,
        [(
            "server",
            any(&res::tls_secret("server", &first.cert_pem, &first.key_pem)),
        )],
    );
    ads.set(
        types::LISTENER,
        [
            (
                "in",
                any(&res::listener("in", any_port(), "routes", vec![])),
            ),
            (
                "secure",
                any(&res::tls_listener("secure", any_port(), "routes", "server")),
            ),
        ],
    );
    let weir = Weir::start(&manifest(ads.addr(), "delta", "")).await;
    until_ready(&weir).await;
    let addr = listener_addr(&weir, "secure").await;
    let client = Arc::new(TlsClient::new(&ca.pem()));
    assert_eq!(peer_certificate(addr, &client).await.unwrap(), first.der);

    // HTTPS requests on new connections (each a handshake) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (client, stop, ok, failed) =
                (client.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    match https_get(addr, &client, "/x").await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Relaxed),
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    eventually("requests flow over TLS", async || {
        if ok.load(Relaxed) >= 20 {
            Ok(())
        } else {
            Err(ok.load(Relaxed))
        }
    })
    .await;

    let second = ca.leaf("server-2", Some("spiffe://td.test/server"), &[]);
    let v = ads.set(
        types::SECRET,
        [(
            "server",
            any(&res::tls_secret(
                "server",
                &second.cert_pem,
                &second.key_pem,
            )),
        )],
    );
    ack(&ads, types::SECRET, &v).await;
    eventually(
        "new handshakes present the rotated certificate",
        async || {
            let got = peer_certificate(addr, &client)
                .await
                .map_err(|e| e.to_string())?;
            if got == second.der {
                Ok(())
            } else {
                Err("the first certificate".to_owned())
            }
        },
    )
    .await;
    let after = ok.load(Relaxed);
    eventually("requests flow after the rotation", async || {
        if ok.load(Relaxed) >= after + 20 {
            Ok(())
        } else {
            Err(ok.load(Relaxed))
        }
    })
    .await;
    stop.store(true, Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Relaxed),
        0,
        "no request failed across the rotation"
    );

    // A secret that is not PEM is refused, and the rotated certificate keeps serving.
    let v = ads.set(
        types::SECRET,
        [(
            "server",
            any(&res::tls_secret("server", "not pem", "not pem")),
        )],
    );
    let seen = nack(&ads, types::SECRET, &v).await;
    let (_, message) = seen.error.expect("error_detail");
    assert!(
        message.contains("server") && message.contains("certificate_chain"),
        "{message}"
    );
    assert_eq!(peer_certificate(addr, &client).await.unwrap(), second.der);
}

#[tokio::test]
async fn an_ecds_filter_config_swaps_a_wasm_filter_and_filters_read_the_node() {
    use weir_test_artifacts::CONFORMANCE;
    let (web, api) = (EchoServer::start().await, EchoServer::start().await);
    let ads = AdsServer::start().await.unwrap();
    world(&ads, web.addr, api.addr);
    ads.set(
        types::LISTENER,
        [(
            "in",
            any(&res::listener(
                "in",
                any_port(),
                "routes",
                vec![res::ecds_filter("props")],
            )),
        )],
    );
    ads.hold(types::EXTENSION_CONFIG, true);
    ads.set(
        types::EXTENSION_CONFIG,
        [(
            "props",
            any(&res::wasm_extension(
                "props",
                CONFORMANCE,
                r#"{"scenario":"properties"}"#,
            )),
        )],
    );
    let weir = Weir::start(&manifest(ads.addr(), "delta", "")).await;
    // The listener waits for its filter's configuration.
    ads.wait_for(|s| {
        s.type_url == types::EXTENSION_CONFIG && s.subscribe.iter().any(|n| n == "props")
    })
    .await
    .expect("weir asks for the filter config");
    assert!(
        Admin::of(&weir).listener_names().await.is_empty(),
        "the listener warms"
    );
    ads.hold(types::EXTENSION_CONFIG, false);
    until_ready(&weir).await;
    let addr = listener_addr(&weir, "in").await;

    let mut c = H1Client::connect(addr).await;
    let r = c.get("/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-upstream"),
        Some(web.addr.to_string().as_str()),
        "the router still routes"
    );
    assert_eq!(r.header("x-prop-xds.node.id"), Some("test-node"));
    assert_eq!(r.header("x-prop-node.id"), Some("test-node"));
    assert_eq!(r.header("x-prop-xds.node.cluster"), Some("test"));
    assert_eq!(r.header("x-prop-xds.node.metadata.team"), Some("edge"));
    assert_eq!(r.header("x-prop-node.metadata.team"), Some("edge"));

    // A cluster added by CDS keeps the filters' VMs (the generation that started them stays).
    let vms_since = async || {
        let f = Admin::of(&weir).get_json("/filters").await;
        f["filters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "ecds/props")
            .and_then(|f| f["vms_since"].as_u64())
            .unwrap_or_else(|| panic!("no ecds/props in {f}"))
    };
    let before = vms_since().await;
    ads.set(
        types::ENDPOINT,
        [(
            "extra",
            any(&res::load_assignment("extra", [Ep::from(api.addr)])),
        )],
    );
    let v = ads.set(
        types::CLUSTER,
        [
            ("web", any(&res::eds_cluster("web"))),
            ("api", any(&res::eds_cluster("api"))),
            ("extra", any(&res::eds_cluster("extra"))),
        ],
    );
    ack(&ads, types::CLUSTER, &v).await;
    eventually("the new cluster serves", async || {
        let c = Admin::of(&weir).get_json("/clusters").await;
        let names: Vec<String> = c["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        if names.iter().any(|n| n == "extra") {
            Ok(())
        } else {
            Err(names)
        }
    })
    .await;
    assert_eq!(
        vms_since().await,
        before,
        "the VMs were rebuilt by a CDS update"
    );

    // ECDS swaps the filter's configuration.
    let v = ads.set(
        types::EXTENSION_CONFIG,
        [(
            "props",
            any(&res::wasm_extension(
                "props",
                CONFORMANCE,
                r#"{"scenario":"headers"}"#,
            )),
        )],
    );
    ack(&ads, types::EXTENSION_CONFIG, &v).await;
    eventually("the new configuration runs", async || {
        let mut c = H1Client::connect(addr).await;
        let r = c.get("/x").await;
        match (r.header("x-filter"), r.header("x-prop-node.id")) {
            (Some("conformance"), None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A configuration the filter refuses (on_configure fails): NACKed, the last one serves.
    let v = ads.set(
        types::EXTENSION_CONFIG,
        [(
            "props",
            any(&res::wasm_extension(
                "props",
                CONFORMANCE,
                r#"{"scenario":"headers","reject":true}"#,
            )),
        )],
    );
    let seen = nack(&ads, types::EXTENSION_CONFIG, &v).await;
    let (_, message) = seen.error.expect("error_detail");
    assert!(message.contains("props"), "{message}");
    let mut c = H1Client::connect(addr).await;
    assert_eq!(c.get("/x").await.header("x-filter"), Some("conformance"));
}

#[tokio::test]
async fn weir_reaches_its_control_plane_over_mutual_tls_and_checks_its_identity() {
    use weir_tests::tls::{TestCa, TlsFront};
    let (web, api) = (EchoServer::start().await, EchoServer::start().await);
    let ads = AdsServer::start().await.unwrap();
    world(&ads, web.addr, api.addr);
    let ca = TestCa::new("mesh.test");
    let server = ca.leaf(
        "istiod",
        Some("spiffe://mesh.test/ns/istio-system/sa/istiod"),
        &[],
    );
    let front = TlsFront::start(ads.addr(), &server, Some(&ca)).await;
    let client = ca.leaf("proxy", Some("spiffe://mesh.test/ns/app/sa/web"), &[]);
    let ca_pem = ca.pem();
    let files: [(&str, &[u8]); 3] = [
        ("ca.pem", ca_pem.as_bytes()),
        ("cert.pem", client.cert_pem.as_bytes()),
        ("key.pem", client.key_pem.as_bytes()),
    ];
    let tls_manifest = |identity: &str| {
        manifest(front.addr, "delta", "").replace(
            &format!("server: {{ address: \"{}\" }}", front.addr),
            &format!(
                "server: {{ address: \"{}\", tls: {{ ca: ca.pem, cert: cert.pem, key: key.pem, expect_identity: \"{identity}\" }} }}",
                front.addr
            ),
        )
    };

    // The right identity: configuration flows over mTLS.
    let weir = Weir::start_with_files(
        &tls_manifest("spiffe://mesh.test/ns/istio-system/sa/istiod"),
        &files,
        &[],
    )
    .await;
    until_ready(&weir).await;
    let addr = listener_addr(&weir, "in").await;
    assert_eq!(reached(addr, "/x").await, Ok(web.addr.to_string()));
    assert!(front.handshakes.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // Another identity: weir refuses the server and never gets a configuration.
    let other = Weir::start_with_files(
        &tls_manifest("spiffe://mesh.test/ns/istio-system/sa/impostor"),
        &files,
        &[],
    )
    .await;
    eventually("the connection attempt fails on the identity", async || {
        let m = crate::observability::scrape(other.admin_addr()).await;
        if m.sum("weir_xds_connect_failures_total", &[]) >= 1.0 {
            Ok(())
        } else {
            Err("no failure yet")
        }
    })
    .await;
    assert!(
        other.stderr().contains("impostor") || other.stderr().contains("istiod"),
        "the failure names the identity: {}",
        other.stderr()
    );
    let r = Admin::of(&other).request("GET", "/ready", None, b"").await;
    assert_eq!(r.status, 503);
}
