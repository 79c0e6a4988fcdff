//! DNS discovery (issue 25): clusters with `discovery: dns` / `logical_dns` follow a real DNS
//! server on loopback whose answers the test changes, under continuous load on two workers with
//! zero failed requests.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use weir_tests::dns::DnsServer;
use weir_tests::{Admin, EchoServer, Load, Weir, eventually};

/// Echo servers on 127.0.0.N, all on one port (DNS gives addresses; the port is the manifest's).
async fn upstreams(hosts: &[u8]) -> (u16, Vec<EchoServer>) {
    'again: loop {
        let first = EchoServer::start_at(SocketAddr::from(([127, 0, 0, hosts[0]], 0)))
            .await
            .expect("bind the first upstream");
        let port = first.addr.port();
        let mut all = vec![first];
        for &h in &hosts[1..] {
            match EchoServer::start_at(SocketAddr::from(([127, 0, 0, h], port))).await {
                Ok(s) => all.push(s),
                // The port is taken on that address: pick another.
                Err(_) => continue 'again,
            }
        }
        return (port, all);
    }
}

fn ip(h: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, h])
}

fn manifest(dns: &DnsServer, discovery: &str, port: u16) -> String {
    format!(
        "workers: 2
admin: {{ address: 127.0.0.1:0 }}
dns: {{ resolvers: [\"{}\"], timeout: 300ms }}
listeners:
  - {{ name: main, address: 127.0.0.1:0, default_cluster: api }}
clusters:
  api:
    discovery: {discovery}
    dns_refresh: 100ms
    endpoints: [\"api.test:{port}\"]
",
        dns.addr()
    )
}

async fn metric(weir: &Weir, name: &str) -> f64 {
    crate::observability::scrape(weir.admin_addr())
        .await
        .sum(name, &[("cluster", "api")])
}

/// Upstreams on 127.0.0.N for each of `hosts`, a DNS server answering `api.test.` with the
/// first `resolved` of them (TTL 1 s), weir with cluster `api` by `discovery` on it, and the load
/// (four keep-alive clients) on its listener.
async fn setup(
    hosts: &[u8],
    resolved: usize,
    discovery: &str,
) -> (Vec<EchoServer>, DnsServer, Weir, Load) {
    let (port, ups) = upstreams(hosts).await;
    let dns = DnsServer::start().await.unwrap();
    let ips: Vec<IpAddr> = hosts[..resolved].iter().map(|&h| ip(h)).collect();
    dns.set("api.test.", &ips, 1);
    let weir = Weir::start(&manifest(&dns, discovery, port)).await;
    let load = Load::on(weir.listener_addr("main")).keep_alive(4).start();
    (ups, dns, weir, load)
}

/// Waits until only `want` answer (after the change: what arrives from then on).
async fn until_only(load: &Load, want: &[&EchoServer]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.addr.to_string()).collect();
    load.take_seen();
    eventually(
        "traffic goes to exactly the resolved addresses",
        async || {
            // A window of fresh answers.
            load.progress(40).await;
            let seen = load.take_seen();
            if seen == want {
                Ok(())
            } else {
                Err(format!("saw {seen:?}, want {want:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn traffic_follows_dns_records_from_one_address_to_two_to_a_third() {
    let (ups, dns, weir, load) = setup(&[21, 22, 23], 1, "dns").await;

    until_only(&load, &[&ups[0]]).await;
    dns.set("api.test.", &[ip(21), ip(22)], 1);
    until_only(&load, &[&ups[0], &ups[1]]).await;
    dns.set("api.test.", &[ip(23)], 1);
    until_only(&load, &[&ups[2]]).await;

    let v = Admin::of(&weir).get_json("/clusters").await;
    let api = &v["clusters"][0];
    assert_eq!(api["endpoint_source"], "dns");
    assert_eq!(api["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(api["endpoints"][0]["address"], ups[2].addr.to_string());
    assert!(api["dns"]["resolutions"].as_u64().unwrap() >= 3, "{api}");
    assert!(metric(&weir, "weir_dns_resolutions_total").await >= 3.0);
    load.finish("the records changing").await;
}

#[tokio::test]
async fn a_dns_server_that_stops_answering_keeps_the_last_endpoints_serving() {
    let (ups, dns, weir, load) = setup(&[31, 32], 2, "dns").await;
    until_only(&load, &[&ups[0], &ups[1]]).await;

    dns.set_answering(false);
    let failures_before = metric(&weir, "weir_dns_resolution_failures_total").await;
    eventually("resolution failures are counted", async || {
        let n = metric(&weir, "weir_dns_resolution_failures_total").await;
        if n >= failures_before + 2.0 {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;
    // The last good endpoints serve on.
    until_only(&load, &[&ups[0], &ups[1]]).await;
    let v = Admin::of(&weir).get_json("/clusters").await;
    assert_eq!(v["clusters"][0]["dns"]["last_ok"], false);
    assert!(
        v["clusters"][0]["dns"]["last_error"]
            .as_str()
            .unwrap()
            .contains("api.test"),
        "the failure names the host: {v}"
    );

    // Answering again, with a change: followed.
    dns.set("api.test.", &[ip(32)], 1);
    dns.set_answering(true);
    until_only(&load, &[&ups[1]]).await;
    load.finish("DNS down, then answering again").await;
}

#[tokio::test]
async fn logical_dns_uses_one_address_at_a_time() {
    let (ups, dns, weir, load) = setup(&[41, 42], 2, "logical_dns").await;
    until_only(&load, &[&ups[0]]).await;
    dns.set("api.test.", &[ip(42)], 1);
    until_only(&load, &[&ups[1]]).await;
    let v = Admin::of(&weir).get_json("/clusters").await;
    assert_eq!(v["clusters"][0]["endpoints"].as_array().unwrap().len(), 1);
    load.finish("logical_dns following the records").await;
}

#[test]
fn a_discovered_endpoint_must_be_host_and_port() {
    let out = weir_tests::check(
        "listeners: [{name: main, address: 127.0.0.1:0, default_cluster: api}]
clusters:
  api: { discovery: dns, endpoints: [api.test, {address: \"b.test:80\", health: draining}] }
",
    );
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("clusters.api.endpoints[0]") && out.stderr.contains("host:port"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("clusters.api.endpoints[1].health"),
        "{}",
        out.stderr
    );
}
