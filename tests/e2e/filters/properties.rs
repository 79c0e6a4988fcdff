//! Properties a filter reads (`request.*`, `source.*`, `plugin_name`, `connection.mtls`) and the
//! route decision it writes (`weir.route.cluster` / `path` / `timeout_ms`).

use weir_tests::{ChainManifest, EchoServer, H1Client, H2Client, within};

use super::common::{conformance, get_with, one_chain, trace};
use crate::assert_error;

#[tokio::test]
async fn properties_request_path_source_address_plugin_name() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "props",
            r#"{"scenario":"properties","cluster":"web"}"#,
        )],
    )
    .start()
    .await;
    let mut c = H1Client::connect(weir.listener_addr("main")).await;
    let resp = c.get("/p/a?b=c").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-prop-request.path"), Some("/p/a?b=c"));
    assert_eq!(resp.header("x-prop-request.method"), Some("GET"));
    let local = c.local.to_string();
    assert_eq!(
        resp.header("x-prop-source.address"),
        Some(local.as_str()),
        "source.address is the client's ip:port"
    );
    let port = c.local.port().to_string();
    assert_eq!(resp.header("x-prop-source.port"), Some(port.as_str()));
    assert_eq!(resp.header("x-prop-plugin_name"), Some("props"));
    assert_eq!(resp.header("x-prop-connection.mtls"), Some("false"));
    assert_eq!(resp.header("x-prop-weir.route.cluster"), Some("web"));
    assert_eq!(resp.header("x-prop-response.code"), Some("200"));
}

/// The same properties over h2: `source.address` is the h2 client's ip:port.
#[tokio::test]
async fn properties_over_h2() {
    let echo = EchoServer::start().await;
    let weir = one_chain(
        echo.addr,
        vec![conformance(
            "props2",
            r#"{"scenario":"properties","cluster":"web"}"#,
        )],
    )
    .start()
    .await;
    let mut c = H2Client::connect(weir.listener_addr("main")).await;
    let resp = c.get("/h2/p?x=y").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-prop-request.path"), Some("/h2/p?x=y"));
    let local = c.local.to_string();
    assert_eq!(resp.header("x-prop-source.address"), Some(local.as_str()));
    assert_eq!(resp.header("x-prop-plugin_name"), Some("props2"));
    assert_eq!(resp.header("x-prop-plugin_root_id"), Some("props2"));
}

#[tokio::test]
async fn route_decision_picks_cluster_path_and_timeout() {
    let v1 = EchoServer::start().await;
    let v2 = EchoServer::start().await;
    let weir = ChainManifest::new()
        .listener("main", "web", Some("edge"))
        .cluster("web", &[v1.addr])
        .cluster("v2", &[v2.addr])
        .chain("edge", &["router"])
        .filter(trace("router", "r"))
        .start()
        .await;
    let addr = weir.listener_addr("main");

    let resp = get_with(addr, "/to-v2", &[("x-route-cluster", "v2")]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("x-upstream"),
        Some(v2.addr.to_string().as_str())
    );
    assert_eq!(v2.wait_requests(1).await[0].uri.path(), "/to-v2");

    let resp = get_with(addr, "/default", &[]).await;
    assert_eq!(
        resp.header("x-upstream"),
        Some(v1.addr.to_string().as_str())
    );
    assert_eq!(v1.wait_requests(1).await[0].uri.path(), "/default");

    // weir.route.path replaces the upstream request target.
    let resp = get_with(
        addr,
        "/old?a=1",
        &[("x-route-cluster", "v2"), ("x-route-path", "/new/path?b=2")],
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = &v2.wait_requests(2).await[1];
    assert_eq!(r.uri.path_and_query().unwrap().as_str(), "/new/path?b=2");

    // A cluster the manifest does not have is an error, not a crash.
    let resp = get_with(addr, "/nowhere", &[("x-route-cluster", "nope")]).await;
    assert_error(&resp, 503, "unknown_cluster");

    // weir.route.timeout_ms replaces the cluster's response timeout.
    let resp = get_with(addr, "/hold", &[("x-route-timeout-ms", "200")]).await;
    assert_error(&resp, 504, "upstream_response_timeout");
    v1.release(1);
}

/// `weir.route.timeout_ms: 0` means "no timeout" (Envoy's route timeout 0 disables it), not
/// "time out at once".
#[tokio::test]
async fn a_zero_route_timeout_disables_the_timeout() {
    let echo = EchoServer::start().await;
    let weir = one_chain(echo.addr, vec![trace("router", "r")])
        .start()
        .await;
    let addr = weir.listener_addr("main");
    // An upstream that answers only once the test lets it.
    let req =
        tokio::spawn(async move { get_with(addr, "/hold", &[("x-route-timeout-ms", "0")]).await });
    echo.wait_requests(1).await;
    echo.release(1);
    let resp = within("the held answer", req).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
}
