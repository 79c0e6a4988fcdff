//! Weir's route decisions held against a real Envoy 1.40 ([`weir_tests::envoy`]): one scripted
//! ADS server, one set of resources, Envoy (node `envoy`) and weir (node `weir`) both following
//! it over Delta ADS, and the same requests sent to both. For every case the two must agree on
//! the status, the upstream reached (`x-upstream`), the path and query that upstream saw
//! (`x-echo-path`: prefix rewrites), the `location` of a redirect and the body of a direct
//! response; each case also states the answer the test expects, so agreeing on a wrong answer
//! fails too. What the two legitimately answer differently is not compared: the body of a 404, a
//! redirect's body, the `server` header, the headers added on the way up. Every `Host` is given,
//! the same for both (the proxies' own addresses differ in the port).
//!
//! A header sent twice is tested value by value in Envoy 1.40 (its CVE-2026-26308 fix), except
//! for the headers its header map keeps inline (`user-agent`, `content-type`, …), whose values it
//! joins first; weir tests every header value by value, so no case repeats an inline header.
//!
//! A second table, over state-of-the-world ADS, sends resources weir refuses to both, each as a
//! new version of its type, and records whether Envoy accepts them: weir must NACK every one, and
//! Envoy's answer is asserted as observed (it accepts what weir refuses for want of support, and
//! refuses what it cannot build either).
//!
//! Mutual TLS by SDS, as Istio configures it ([`mtls_world`]): clusters `secure` and `impostor`
//! (EDS, HTTP/2) whose `UpstreamTlsContext` takes the client certificate from SDS secret `client`
//! and the trust bundle from SDS secret `ROOTCA` (`combined_validation_context`), expecting the
//! upstream's SPIFFE ID by a URI `exact` matcher in `default_validation_context`. Each cluster's
//! endpoint is a [`TlsFront`] (client certificates from the test CA required, ALPN `h2`) in front
//! of an h2c-only echo server; `secure`'s presents the expected SPIFFE ID, `impostor`'s another
//! one from the same CA. The rows of [`cases`]: `/secure` is a 200 from the echo server behind
//! the front (each proxy's first request, sent one proxy after the other, must add a completed
//! handshake, i.e. a verified client certificate, at that front); `/impostor` is a 503 upstream
//! connect failure from both (weir's `x-weir-error`, Envoy's body; the bodies differ and are
//! not compared), with no handshake completed at that front, Envoy counting
//! `ssl.fail_verify_san` and weir logging both identities.
//!
//! Envoy is found as `tests/deps.sh` installs it (`make test` runs the script); without it these
//! tests fail and say how to install it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::r#type::matcher::v3 as m;
use envoy_types::pb::google::protobuf::{Any as PbAny, UInt32Value};
use http::{HeaderName, HeaderValue};
use weir_tests::client::{Collected, H1Client, body_empty, collect};
use weir_tests::envoy::Envoy;
use weir_tests::resources::{self as res, Ep};
use weir_tests::tls::{Leaf, TestCa, TlsFront};
use weir_tests::xds::{AdsServer, Kind, Mode, Seen, any, types};
use weir_tests::{Admin, EchoServer, Weir, eventually};

const ENVOY: &str = "envoy";
const WEIR: &str = "weir";

/// The `Host` of a request unless its case says otherwise: it picks the `*` virtual host, and
/// it is the same for both proxies (their own addresses differ in the port).
const HOST: &str = "www.test";

fn weir_manifest(ads: SocketAddr, mode: &str) -> String {
    format!(
        "workers: 1
admin: {{ address: 127.0.0.1:0 }}
xds:
  server: {{ address: \"{ads}\" }}
  node: {{ id: {WEIR}, cluster: test }}
  mode: {mode}
  initial_fetch_timeout: 30s
"
    )
}

/// The upstreams, each an echo server known by a label.
struct Upstreams {
    servers: Vec<(&'static str, EchoServer)>,
}

impl Upstreams {
    async fn start(labels: &[&'static str]) -> Upstreams {
        let mut servers = Vec::new();
        for l in labels {
            servers.push((*l, EchoServer::start().await));
        }
        Upstreams { servers }
    }

    fn addr(&self, label: &str) -> SocketAddr {
        self.servers
            .iter()
            .find(|(l, _)| *l == label)
            .unwrap()
            .1
            .addr
    }

    /// Adds an upstream started elsewhere (an h2c-only one behind a TLS front, say).
    fn add(&mut self, label: &'static str, server: EchoServer) {
        self.servers.push((label, server));
    }

    fn labels(&self) -> HashMap<String, &'static str> {
        self.servers
            .iter()
            .map(|(l, s)| (s.addr.to_string(), *l))
            .collect()
    }
}

// Route building blocks.

fn path_match(p: rt::route_match::PathSpecifier) -> rt::RouteMatch {
    rt::RouteMatch {
        path_specifier: Some(p),
        ..Default::default()
    }
}

fn prefix(p: &str) -> rt::RouteMatch {
    path_match(rt::route_match::PathSpecifier::Prefix(p.into()))
}

fn exact(p: &str) -> rt::RouteMatch {
    path_match(rt::route_match::PathSpecifier::Path(p.into()))
}

fn regex(re: &str) -> rt::RouteMatch {
    path_match(rt::route_match::PathSpecifier::SafeRegex(m::RegexMatcher {
        regex: re.into(),
        ..Default::default()
    }))
}

fn string_match(p: m::string_matcher::MatchPattern) -> m::StringMatcher {
    m::StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}

fn with_header(
    mut rm: rt::RouteMatch,
    name: &str,
    spec: rt::header_matcher::HeaderMatchSpecifier,
    invert: bool,
) -> rt::RouteMatch {
    rm.headers.push(rt::HeaderMatcher {
        name: name.into(),
        invert_match: invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    });
    rm
}

fn with_query(
    mut rm: rt::RouteMatch,
    name: &str,
    spec: rt::query_parameter_matcher::QueryParameterMatchSpecifier,
) -> rt::RouteMatch {
    rm.query_parameters.push(rt::QueryParameterMatcher {
        name: name.into(),
        query_parameter_match_specifier: Some(spec),
    });
    rm
}

fn route(m: rt::RouteMatch, action: rt::route::Action) -> rt::Route {
    rt::Route {
        r#match: Some(m),
        action: Some(action),
        ..Default::default()
    }
}

fn forward(spec: rt::route_action::ClusterSpecifier, prefix_rewrite: &str) -> rt::route::Action {
    rt::route::Action::Route(rt::RouteAction {
        cluster_specifier: Some(spec),
        prefix_rewrite: prefix_rewrite.into(),
        ..Default::default()
    })
}

fn to(cluster: &str) -> rt::route::Action {
    forward(
        rt::route_action::ClusterSpecifier::Cluster(cluster.into()),
        "",
    )
}

fn weighted(split: &[(&str, u32)]) -> rt::route::Action {
    let clusters = split
        .iter()
        .map(|(name, w)| rt::weighted_cluster::ClusterWeight {
            name: (*name).into(),
            weight: Some(UInt32Value { value: *w }),
            ..Default::default()
        })
        .collect();
    forward(
        rt::route_action::ClusterSpecifier::WeightedClusters(rt::WeightedCluster {
            clusters,
            ..Default::default()
        }),
        "",
    )
}

fn redirect(r: rt::RedirectAction) -> rt::route::Action {
    rt::route::Action::Redirect(r)
}

fn code(c: rt::redirect_action::RedirectResponseCode) -> i32 {
    c as i32
}

fn direct(status: u32, body: Option<&str>) -> rt::route::Action {
    rt::route::Action::DirectResponse(rt::DirectResponseAction {
        status,
        body: body.map(res::inline),
        ..Default::default()
    })
}

fn vhost(name: &str, domains: &[&str], routes: Vec<rt::Route>) -> rt::VirtualHost {
    rt::VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| (*d).into()).collect(),
        routes,
        ..Default::default()
    }
}

/// The route configuration both proxies serve: a virtual host per kind of domain, and under `*`
/// one route per kind of match and action. No route catches everything: the rest is a 404.
fn routes() -> rt::RouteConfiguration {
    use m::string_matcher::MatchPattern as Mp;
    use rt::header_matcher::HeaderMatchSpecifier as H;
    use rt::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    use rt::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let all = vec![
        route(exact("/exact"), to("a")),
        route(regex("/re/[0-9]+"), to("b")),
        route(
            with_header(
                prefix("/hdr"),
                "x-exact",
                H::StringMatch(string_match(Mp::Exact("yes".into()))),
                false,
            ),
            to("a"),
        ),
        route(
            with_header(prefix("/hdr"), "x-present", H::PresentMatch(true), false),
            to("b"),
        ),
        route(
            with_header(
                prefix("/hdr"),
                "x-prefix",
                H::StringMatch(string_match(Mp::Prefix("pre".into()))),
                false,
            ),
            to("c"),
        ),
        route(
            with_header(
                prefix("/hdr"),
                "x-not",
                H::StringMatch(string_match(Mp::Exact("no".into()))),
                true,
            ),
            to("d"),
        ),
        route(
            with_header(
                prefix("/hdr"),
                "x-regex",
                H::StringMatch(string_match(Mp::SafeRegex(m::RegexMatcher {
                    regex: "v[0-9]+".into(),
                    ..Default::default()
                }))),
                false,
            ),
            to("b"),
        ),
        route(
            with_query(
                prefix("/q"),
                "v",
                Q::StringMatch(string_match(Mp::Exact("1".into()))),
            ),
            to("a"),
        ),
        route(
            with_query(prefix("/q"), "flag", Q::PresentMatch(true)),
            to("b"),
        ),
        route(prefix("/split/all"), weighted(&[("a", 100), ("b", 0)])),
        route(prefix("/split/half"), weighted(&[("a", 50), ("b", 50)])),
        route(
            prefix("/old/"),
            forward(
                rt::route_action::ClusterSpecifier::Cluster("a".into()),
                "/new/",
            ),
        ),
        route(
            prefix("/strip"),
            forward(rt::route_action::ClusterSpecifier::Cluster("b".into()), "/"),
        ),
        route(prefix("/prio"), to("prio")),
        route(
            prefix("/redir/host"),
            redirect(rt::RedirectAction {
                host_redirect: "new.example.com".into(),
                ..Default::default()
            }),
        ),
        route(
            prefix("/redir/path"),
            redirect(rt::RedirectAction {
                path_rewrite_specifier: Some(P::PathRedirect("/elsewhere".into())),
                response_code: code(C::Found),
                ..Default::default()
            }),
        ),
        route(
            prefix("/redir/https"),
            redirect(rt::RedirectAction {
                scheme_rewrite_specifier: Some(S::HttpsRedirect(true)),
                response_code: code(C::SeeOther),
                ..Default::default()
            }),
        ),
        route(
            prefix("/redir/strip"),
            redirect(rt::RedirectAction {
                path_rewrite_specifier: Some(P::PrefixRewrite("/kept".into())),
                strip_query: true,
                response_code: code(C::TemporaryRedirect),
                ..Default::default()
            }),
        ),
        route(
            prefix("/redir/port"),
            redirect(rt::RedirectAction {
                port_redirect: 8443,
                response_code: code(C::PermanentRedirect),
                ..Default::default()
            }),
        ),
        route(exact("/direct"), direct(200, Some("hello from the route"))),
        route(
            prefix("/direct/503"),
            direct(503, Some("down for maintenance")),
        ),
        route(prefix("/direct/empty"), direct(204, None)),
        route(prefix("/secure"), to("secure")),
        route(prefix("/impostor"), to("impostor")),
    ];
    rt::RouteConfiguration {
        name: "routes".into(),
        virtual_hosts: vec![
            vhost(
                "api",
                &["api.example.com"],
                vec![route(prefix("/api"), to("b"))],
            ),
            vhost(
                "suffix",
                &["*.example.com"],
                vec![route(prefix("/"), to("c"))],
            ),
            vhost(
                "prefix",
                &["static.*"],
                vec![route(prefix("/"), direct(200, Some("static")))],
            ),
            vhost("all", &["*"], all),
        ],
        ..Default::default()
    }
}

/// Clusters `a`, `b`, `c`, `d` (one echo server each) and `prio` (priority 0: `p0`, marked
/// UNHEALTHY by EDS; priority 1: `p1`), all by EDS; listener `in` on port 0 (each proxy binds its
/// own) with routes [`routes`]. Returns the version of each type.
fn world(ads: &AdsServer, up: &Upstreams) -> Vec<(&'static str, String)> {
    let clusters = ["a", "b", "c", "d", "prio"];
    let cds = ads.set(
        types::CLUSTER,
        clusters.map(|c| (c, any(&res::eds_cluster(c)))),
    );
    let mut prio = res::load_assignment(
        "prio",
        [
            Ep::from(up.addr("p0")),
            Ep {
                addr: up.addr("p1"),
                weight: 1,
                priority: 1,
            },
        ],
    );
    prio.endpoints[0].lb_endpoints[0].health_status = core::HealthStatus::Unhealthy as i32;
    let mut assignments: Vec<(&str, PbAny)> = ["a", "b", "c", "d"]
        .map(|c| (c, any(&res::load_assignment(c, [Ep::from(up.addr(c))]))))
        .into();
    assignments.push(("prio", any(&prio)));
    let eds = ads.set(types::ENDPOINT, assignments);
    let lds = ads.set(
        types::LISTENER,
        [(
            "in",
            any(&res::listener(
                "in",
                "127.0.0.1:0".parse().unwrap(),
                "routes",
                vec![],
            )),
        )],
    );
    let rds = ads.set(types::ROUTE, [("routes", any(&routes()))]);
    vec![
        (types::CLUSTER, cds),
        (types::ENDPOINT, eds),
        (types::LISTENER, lds),
        (types::ROUTE, rds),
    ]
}

/// The trust domain of the mTLS cases.
const TD: &str = "td.test";

/// The SPIFFE ID clusters `secure` and `impostor` expect of their upstream.
fn secure_id() -> String {
    format!("spiffe://{TD}/ns/x/sa/secure-upstream")
}

/// The mTLS-by-SDS upstreams: an h2c-only echo server behind each TLS front, both fronts
/// requiring a client certificate from the test CA; `secure` presents the SPIFFE ID the clusters
/// expect, `impostor` another one from the same CA.
struct Mtls {
    secure: TlsFront,
    impostor: TlsFront,
}

/// Adds to [`world`] the mTLS-by-SDS upstreams (as `secure` and `impostor` in `up`), SDS secrets
/// `client` (a leaf with a SPIFFE ID) and `ROOTCA` (the CA), and clusters `secure` and
/// `impostor` (EDS, HTTP/2, [`res::upstream_mtls_sds`] naming those secrets and expecting
/// [`secure_id`]). Returns the fronts; `versions` gets the new version of each type.
async fn mtls_world(
    ads: &AdsServer,
    up: &mut Upstreams,
    versions: &mut Vec<(&'static str, String)>,
) -> Mtls {
    let ca = TestCa::new(TD);
    let client = ca.leaf(
        "client",
        Some(&format!("spiffe://{TD}/ns/x/sa/client")),
        &[],
    );
    let mut front = async |label: &'static str, leaf: &Leaf| {
        let echo = EchoServer::start_h2().await;
        let front = TlsFront::start(echo.addr, leaf, Some(&ca)).await;
        up.add(label, echo);
        front
    };
    let secure = front("secure", &ca.leaf("secure", Some(&secure_id()), &[])).await;
    let other = format!("spiffe://{TD}/ns/x/sa/impostor");
    let impostor = front("impostor", &ca.leaf("impostor", Some(&other), &[])).await;
    let sds = ads.set(
        types::SECRET,
        [
            (
                "client",
                any(&res::tls_secret(
                    "client",
                    &client.cert_pem,
                    &client.key_pem,
                )),
            ),
            ("ROOTCA", any(&res::validation_secret("ROOTCA", &ca.pem()))),
        ],
    );
    let cluster = |name: &str| cl::Cluster {
        transport_socket: Some(res::upstream_mtls_sds("client", "ROOTCA", &secure_id())),
        typed_extension_protocol_options: res::http2_protocol_options(),
        ..res::eds_cluster(name)
    };
    let cds = ads.set(
        types::CLUSTER,
        ["secure", "impostor"].map(|c| (c, any(&cluster(c)))),
    );
    let eds = ads.set(
        types::ENDPOINT,
        [
            (
                "secure",
                any(&res::load_assignment("secure", [Ep::from(secure.addr)])),
            ),
            (
                "impostor",
                any(&res::load_assignment("impostor", [Ep::from(impostor.addr)])),
            ),
        ],
    );
    for (t, v) in [
        (types::SECRET, sds),
        (types::CLUSTER, cds),
        (types::ENDPOINT, eds),
    ] {
        match versions.iter_mut().find(|(have, _)| *have == t) {
            Some(entry) => entry.1 = v,
            None => versions.push((t, v)),
        }
    }
    Mtls { secure, impostor }
}

fn from(node: &str) -> impl Fn(&Seen) -> bool + '_ {
    move |s| s.node_id.as_deref() == Some(node)
}

/// Waits until `node` ACKed every `(type, version)`.
async fn acked(ads: &AdsServer, node: &str, versions: &[(&str, String)]) {
    for (t, v) in versions {
        let from = from(node);
        ads.wait_for(|s| from(s) && s.is_ack_of(t, v))
            .await
            .unwrap_or_else(|e| panic!("{node} did not ACK {t} version {v}: {e}"));
    }
}

/// The address weir bound listener `name` to.
async fn weir_listener(weir: &Weir, name: &str) -> SocketAddr {
    let admin = Admin::of(weir);
    eventually("weir serves the xDS listener", async || {
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

/// Waits until weir's `/ready` answers 200: its first configuration is whole (nothing warms).
async fn weir_ready(weir: &Weir) {
    let admin = Admin::of(weir);
    eventually("weir's /ready answers 200", async || {
        let r = admin.request("GET", "/ready", None, b"").await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text().trim()))
        }
    })
    .await;
}

/// Both proxies following one ADS server (running as long as this lives), and the addresses of
/// their listener `in`.
struct Pair {
    envoy: Envoy,
    weir: Weir,
    envoy_addr: SocketAddr,
    weir_addr: SocketAddr,
}

async fn start_pair(ads: &AdsServer, mode: Mode, versions: &[(&str, String)]) -> Pair {
    let weir_mode = match mode {
        Mode::Sotw => "sotw",
        Mode::Delta => "delta",
    };
    let manifest = weir_manifest(ads.addr(), weir_mode);
    let (envoy, weir) = tokio::join!(
        Envoy::start(ads.addr(), ENVOY, mode),
        Weir::start(&manifest)
    );
    acked(ads, ENVOY, versions).await;
    acked(ads, WEIR, versions).await;
    // An ACK of a type's version does not say that every resource of it arrived (a cluster
    // subscribes to its endpoints once it does not wait for its secrets any more, and gets the
    // same version of the type again): weir's `/ready`, like Envoy's (awaited when it started),
    // says that nothing warms any more.
    weir_ready(&weir).await;
    let envoy_addr = envoy.listener_addr("in").await;
    let weir_addr = weir_listener(&weir, "in").await;
    Pair {
        envoy,
        weir,
        envoy_addr,
        weir_addr,
    }
}

/// One request: `GET path` with `Host: host` and `headers` (a name given twice is sent twice).
struct Req {
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

async fn send(addr: SocketAddr, req: &Req) -> Collected {
    let mut c = H1Client::connect(addr).await;
    let mut r = c.request("GET", req.path).body(body_empty()).unwrap();
    let h = r.headers_mut();
    h.insert(http::header::HOST, HeaderValue::from_static(req.host));
    for (k, v) in req.headers {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let resp = c
        .send(r)
        .await
        .unwrap_or_else(|e| panic!("GET {} to {addr}: {e:?}", req.path));
    collect(resp).await
}

/// What a response says about the route decision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    status: u16,
    /// The echo server that answered (its label).
    upstream: Option<&'static str>,
    /// The path and query that echo server received.
    path: Option<String>,
    location: Option<String>,
    /// The body of a local reply that is neither a redirect nor a 404 nor an upstream failure
    /// (a direct response).
    body: Option<String>,
    /// The proxy could not connect to the upstream: weir's `x-weir-error:
    /// upstream_connect_failure`, Envoy's body `upstream connect error or disconnect/reset before
    /// headers. reset reason: (local|remote) connection failure…` (their bodies differ).
    connect_failure: bool,
}

fn outcome(r: &Collected, labels: &HashMap<String, &'static str>) -> Outcome {
    let upstream = r.header("x-upstream").map(|a| {
        *labels
            .get(a)
            .unwrap_or_else(|| panic!("unknown upstream {a}"))
    });
    let status = r.status.as_u16();
    let connect_failure = upstream.is_none() && is_connect_failure(r);
    let local_body =
        upstream.is_none() && status != 404 && !(300..400).contains(&status) && !connect_failure;
    Outcome {
        status,
        upstream,
        path: r.header("x-echo-path").map(str::to_owned),
        location: r.header("location").map(str::to_owned),
        body: local_body.then(|| r.text()),
        connect_failure,
    }
}

/// Whether a local reply says the upstream connection failed, in weir's words or Envoy's.
fn is_connect_failure(r: &Collected) -> bool {
    if r.header("x-weir-error") == Some("upstream_connect_failure") {
        return true;
    }
    let text = r.text();
    let Some(rest) = text
        .strip_prefix("upstream connect error or disconnect/reset before headers. reset reason: ")
    else {
        return false;
    };
    ["local connection failure", "remote connection failure"]
        .iter()
        .any(|reason| rest.starts_with(reason))
}

/// What a case expects.
enum Want {
    /// 200 from this upstream, which saw this path and query.
    Up(&'static str, &'static str),
    /// A redirect: status, `location`.
    Redirect(u16, &'static str),
    /// A direct response: status, body.
    Direct(u16, &'static str),
    /// No route: 404.
    NoRoute,
    /// The upstream connection failed: 503.
    ConnectFailure,
}

impl Want {
    fn outcome(&self) -> Outcome {
        let none = Outcome {
            status: 0,
            upstream: None,
            path: None,
            location: None,
            body: None,
            connect_failure: false,
        };
        match *self {
            Want::Up(up, path) => Outcome {
                status: 200,
                upstream: Some(up),
                path: Some(path.into()),
                ..none
            },
            Want::Redirect(status, location) => Outcome {
                status,
                location: Some(location.into()),
                ..none
            },
            Want::Direct(status, body) => Outcome {
                status,
                body: Some(body.into()),
                ..none
            },
            Want::NoRoute => Outcome {
                status: 404,
                ..none
            },
            Want::ConnectFailure => Outcome {
                status: 503,
                connect_failure: true,
                ..none
            },
        }
    }
}

struct Case {
    what: &'static str,
    req: Req,
    want: Want,
}

const fn get(path: &'static str) -> Req {
    Req {
        host: HOST,
        path,
        headers: &[],
    }
}

const fn host(host: &'static str, path: &'static str) -> Req {
    Req {
        host,
        path,
        headers: &[],
    }
}

const fn with(path: &'static str, headers: &'static [(&'static str, &'static str)]) -> Req {
    Req {
        host: HOST,
        path,
        headers,
    }
}

/// The deterministic cases: one request each (the weighted 50/50 split is checked apart).
fn cases() -> Vec<Case> {
    use Want::*;
    let case = |what, req, want| Case { what, req, want };
    vec![
        // Path matches: exact, regex (whole path, query aside), case-sensitive by default.
        case("exact path", get("/exact"), Up("a", "/exact")),
        case(
            "exact path, query aside",
            get("/exact?x=1"),
            Up("a", "/exact?x=1"),
        ),
        case("exact path, longer", get("/exact/"), NoRoute),
        case("exact path, other case", get("/EXACT"), NoRoute),
        case("regex path", get("/re/123"), Up("b", "/re/123")),
        case(
            "regex path, query aside",
            get("/re/7?x"),
            Up("b", "/re/7?x"),
        ),
        case("regex path, partial", get("/re/123/x"), NoRoute),
        case("regex path, no match", get("/re/12a"), NoRoute),
        // Header matches, tried in order.
        case(
            "header exact",
            with("/hdr", &[("x-exact", "yes")]),
            Up("a", "/hdr"),
        ),
        case(
            "header exact, other case",
            with("/hdr", &[("x-exact", "YES")]),
            NoRoute,
        ),
        case(
            "header exact, a comma in the value",
            with("/hdr", &[("x-exact", "yes,yes")]),
            NoRoute,
        ),
        // A header sent twice: each value tested on its own (Envoy since CVE-2026-26308).
        case(
            "header exact, sent twice",
            with("/hdr", &[("x-exact", "yes"), ("x-exact", "yes")]),
            Up("a", "/hdr"),
        ),
        case(
            "header exact, the second of two values",
            with("/hdr", &[("x-exact", "no"), ("x-exact", "yes")]),
            Up("a", "/hdr"),
        ),
        case(
            "header prefix, the second of two values",
            with("/hdr", &[("x-prefix", "zzz"), ("x-prefix", "prefixed")]),
            Up("c", "/hdr"),
        ),
        case(
            "header inverted exact, one of two values is it",
            with("/hdr", &[("x-not", "yes"), ("x-not", "no")]),
            NoRoute,
        ),
        case(
            "header inverted exact, neither of two values is it",
            with("/hdr", &[("x-not", "yes"), ("x-not", "maybe")]),
            Up("d", "/hdr"),
        ),
        case(
            "header regex (whole value)",
            with("/hdr", &[("x-regex", "v12")]),
            Up("b", "/hdr"),
        ),
        case(
            "header regex, partial",
            with("/hdr", &[("x-regex", "v12x")]),
            NoRoute,
        ),
        case(
            "header regex, the second of two values",
            with("/hdr", &[("x-regex", "x"), ("x-regex", "v1")]),
            Up("b", "/hdr"),
        ),
        case(
            "header present, empty value",
            with("/hdr", &[("x-present", "")]),
            Up("b", "/hdr"),
        ),
        case(
            "header prefix",
            with("/hdr/p", &[("x-prefix", "prefixed")]),
            Up("c", "/hdr/p"),
        ),
        case(
            "header prefix, too short",
            with("/hdr", &[("x-prefix", "pr")]),
            NoRoute,
        ),
        case(
            "header inverted exact, other value",
            with("/hdr", &[("x-not", "yes")]),
            Up("d", "/hdr"),
        ),
        case(
            "header inverted exact, the value",
            with("/hdr", &[("x-not", "no")]),
            NoRoute,
        ),
        case("header inverted exact, absent", get("/hdr"), NoRoute),
        // Query parameter matches: the first occurrence, names case-sensitive.
        case("query exact", get("/q?v=1"), Up("a", "/q?v=1")),
        case(
            "query exact, first of two",
            get("/q?v=1&v=2"),
            Up("a", "/q?v=1&v=2"),
        ),
        case("query exact, second of two", get("/q?v=2&v=1"), NoRoute),
        case("query present", get("/q?v=2&flag"), Up("b", "/q?v=2&flag")),
        case("query present, empty", get("/q?flag="), Up("b", "/q?flag=")),
        case("query other value", get("/q?v=2"), NoRoute),
        case("query name, other case", get("/q?V=1"), NoRoute),
        case("query percent-encoded value", get("/q?v=%31"), NoRoute),
        // Weighted clusters: 100/0 (repeated below), prefix rewrites, priorities.
        case("weighted 100/0", get("/split/all"), Up("a", "/split/all")),
        case(
            "prefix rewrite, query kept",
            get("/old/x?q=1"),
            Up("a", "/new/x?q=1"),
        ),
        case(
            "prefix rewrite, prefix only",
            get("/old/"),
            Up("a", "/new/"),
        ),
        case("prefix rewrite to /", get("/strip/x"), Up("b", "//x")),
        case(
            "prefix rewrite to /, mid-segment",
            get("/stripped"),
            Up("b", "/ped"),
        ),
        case(
            "priority 0 unhealthy: priority 1",
            get("/prio"),
            Up("p1", "/prio"),
        ),
        // Redirects: each status, each part of the URL.
        case(
            "redirect host (301)",
            get("/redir/host/x?q=1"),
            Redirect(301, "http://new.example.com/redir/host/x?q=1"),
        ),
        case(
            "redirect host replaces the port",
            host("www.test:8080", "/redir/host"),
            Redirect(301, "http://new.example.com/redir/host"),
        ),
        case(
            "redirect path (302), query kept",
            get("/redir/path/x?q=1"),
            Redirect(302, "http://www.test/elsewhere?q=1"),
        ),
        case(
            "redirect https (303)",
            get("/redir/https/x?q=1"),
            Redirect(303, "https://www.test/redir/https/x?q=1"),
        ),
        case(
            "redirect https drops port 80",
            host("www.test:80", "/redir/https"),
            Redirect(303, "https://www.test/redir/https"),
        ),
        case(
            "redirect https keeps port 8080",
            host("www.test:8080", "/redir/https"),
            Redirect(303, "https://www.test:8080/redir/https"),
        ),
        case(
            "redirect prefix rewrite + strip_query (307)",
            get("/redir/strip/a?q=1"),
            Redirect(307, "http://www.test/kept/a"),
        ),
        case(
            "redirect port (308)",
            host("www.test:80", "/redir/port/x"),
            Redirect(308, "http://www.test:8443/redir/port/x"),
        ),
        // Direct responses.
        case(
            "direct 200 with body",
            get("/direct"),
            Direct(200, "hello from the route"),
        ),
        case(
            "direct 503 with body",
            get("/direct/503"),
            Direct(503, "down for maintenance"),
        ),
        case(
            "direct 204 without body",
            get("/direct/empty"),
            Direct(204, ""),
        ),
        // Virtual hosts: exact, then `*.suffix`, then `prefix.*`, then `*`; no fall-through.
        case(
            "vhost exact",
            host("api.example.com", "/api/x"),
            Up("b", "/api/x"),
        ),
        case(
            "vhost exact, other case",
            host("API.Example.COM", "/api/x"),
            Up("b", "/api/x"),
        ),
        case(
            "vhost exact, no route there",
            host("api.example.com", "/exact"),
            NoRoute,
        ),
        case(
            "vhost exact, with a port",
            host("api.example.com:80", "/api/x"),
            NoRoute,
        ),
        case(
            "vhost suffix",
            host("x.example.com", "/any"),
            Up("c", "/any"),
        ),
        case(
            "vhost suffix, two labels",
            host("a.b.example.com", "/any"),
            Up("c", "/any"),
        ),
        case(
            "vhost suffix needs a label",
            host("example.com", "/exact"),
            Up("a", "/exact"),
        ),
        case(
            "vhost prefix",
            host("static.anything", "/x"),
            Direct(200, "static"),
        ),
        case(
            "vhost suffix before prefix",
            host("static.example.com", "/x"),
            Up("c", "/x"),
        ),
        case("no route", get("/nothing"), NoRoute),
        // mTLS by SDS (client certificate and trust bundle as SDS secrets, the SPIFFE ID in
        // the cluster's context), HTTP/2 to an h2c-only upstream behind TLS.
        case("mTLS by SDS", get("/secure/x"), Up("secure", "/secure/x")),
        case(
            "mTLS by SDS, the upstream is not the SPIFFE ID expected",
            get("/impostor"),
            ConnectFailure,
        ),
    ]
}

#[tokio::test]
async fn weir_routes_as_envoy_does() {
    let mut up = Upstreams::start(&["a", "b", "c", "d", "p0", "p1"]).await;
    let ads = AdsServer::start().await.unwrap();
    let mut versions = world(&ads, &up);
    let mtls = mtls_world(&ads, &mut up, &mut versions).await;
    let labels = up.labels();
    let pair = start_pair(&ads, Mode::Delta, &versions).await;

    // mTLS by SDS, one proxy after the other: each one's request is answered through the TLS
    // front, which completed a handshake for it (client certificate verified) in the meantime.
    let handshakes = || mtls.secure.handshakes.load(Ordering::Relaxed);
    let mut seen = Vec::new();
    for (name, addr) in [(ENVOY, pair.envoy_addr), (WEIR, pair.weir_addr)] {
        let before = handshakes();
        let o = outcome(&send(addr, &get("/secure")).await, &labels);
        seen.push((name, o, handshakes() - before));
    }
    let want = Want::Up("secure", "/secure").outcome();
    assert!(
        seen.iter().all(|(_, o, new)| *o == want && *new >= 1),
        "each proxy answers {want:?} through a handshake of its own with the TLS front \
         (proxy, answer, new handshakes): {seen:?}"
    );

    let mut differences = Vec::new();
    let cases = cases();
    for c in &cases {
        let (e, w) = tokio::join!(send(pair.envoy_addr, &c.req), send(pair.weir_addr, &c.req));
        let (e, w) = (outcome(&e, &labels), outcome(&w, &labels));
        let want = c.want.outcome();
        let req = format!(
            "GET {} Host: {} {:?}",
            c.req.path, c.req.host, c.req.headers
        );
        if e != w {
            differences.push(format!("{}: {req}\n  envoy: {e:?}\n  weir:  {w:?}", c.what));
        } else if e != want {
            differences.push(format!(
                "{}: {req}: both answer {e:?}, the test expects {want:?}",
                c.what
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} cases differ:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
    // Both refused the impostor's certificate for its SPIFFE ID: no handshake completed there,
    // Envoy counts a SAN verification failure, weir logs the identity it got.
    assert_eq!(mtls.impostor.handshakes.load(Ordering::Relaxed), 0);
    let stat = "cluster.impostor.ssl.fail_verify_san";
    let envoy_admin = Admin::new(pair.envoy.admin_addr());
    eventually(&format!("Envoy's {stat} is at least 1"), async || {
        let r = envoy_admin
            .request("GET", &format!("/stats?filter=^{stat}$"), None, b"")
            .await;
        let text = r.text();
        let n: Option<u64> = text
            .trim()
            .strip_prefix(&format!("{stat}: "))
            .and_then(|n| n.parse().ok());
        match n {
            Some(n) if n >= 1 => Ok(()),
            _ => Err(text),
        }
    })
    .await;
    let other = format!("spiffe://{TD}/ns/x/sa/impostor");
    eventually(
        "weir logs the identity it refused and the one it expected",
        async || {
            let log = pair.weir.stderr();
            if log
                .lines()
                .any(|l| l.contains(&other) && l.contains(&secure_id()))
            {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;

    // Repeated: 100/0 always the first; priority 1 always while priority 0 is unhealthy;
    // 50/50 reaches both (all 64 on one side: 2⁻⁶³).
    for (name, addr) in [(ENVOY, pair.envoy_addr), (WEIR, pair.weir_addr)] {
        let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
        for path in ["/split/all", "/prio", "/split/half"] {
            let n = if path == "/split/half" { 64 } else { 20 };
            for _ in 0..n {
                let o = outcome(&send(addr, &get(path)).await, &labels);
                assert_eq!(o.status, 200, "{name}: GET {path}: {o:?}");
                *counts.entry((path, o.upstream.unwrap())).or_default() += 1;
            }
        }
        let count = |path, up| counts.get(&(path, up)).copied().unwrap_or(0);
        assert_eq!(count("/split/all", "a"), 20, "{name}: {counts:?}");
        assert_eq!(count("/prio", "p1"), 20, "{name}: {counts:?}");
        assert!(
            count("/split/half", "a") > 0 && count("/split/half", "b") > 0,
            "{name} sends a 50/50 split to both clusters: {counts:?}"
        );
    }
}

/// How a client answered one version of a type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Ack,
    Nack(String),
}

impl Answer {
    fn is_nack(&self) -> bool {
        matches!(self, Answer::Nack(_))
    }
}

async fn answer(ads: &AdsServer, node: &str, type_url: &str, version: &str) -> Answer {
    let from = from(node);
    let seen = ads
        .wait_for(|s| {
            from(s)
                && s.type_url == type_url
                && s.answers.as_deref() == Some(version)
                && matches!(s.kind, Kind::Ack | Kind::Nack)
        })
        .await
        .unwrap_or_else(|e| panic!("{node} did not answer {type_url} version {version}: {e}"));
    match seen.kind {
        Kind::Nack => Answer::Nack(seen.error.map(|(_, m)| m).unwrap_or_default()),
        _ => Answer::Ack,
    }
}

/// A resource weir refuses: set as one new version of its type, then taken back as the next.
struct Refused {
    what: &'static str,
    type_url: &'static str,
    name: &'static str,
    bad: PbAny,
    /// What stands there again afterwards (`None`: the resource is removed).
    restore: Option<PbAny>,
    /// Whether Envoy 1.40 accepts it (observed).
    envoy_acks: bool,
}

#[tokio::test]
async fn resources_weir_nacks_beside_envoys_answer() {
    let up = Upstreams::start(&["a", "b", "c", "d", "p0", "p1"]).await;
    let ads = AdsServer::start().await.unwrap();
    let versions = world(&ads, &up);
    let pair = start_pair(&ads, Mode::Sotw, &versions).await;

    // A STATIC cluster (no EDS to wait for) balanced by RING_HASH.
    let mut ring = res::eds_cluster("ring");
    ring.cluster_discovery_type = Some(cl::cluster::ClusterDiscoveryType::Type(
        cl::cluster::DiscoveryType::Static as i32,
    ));
    ring.eds_cluster_config = None;
    ring.load_assignment = Some(res::load_assignment("ring", [Ep::from(up.addr("a"))]));
    ring.lb_policy = cl::cluster::LbPolicy::RingHash as i32;

    // The routes, with one more route matching its path case-insensitively.
    let mut insensitive = routes();
    let mut m = prefix("/Insensitive");
    m.case_sensitive = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
    insensitive.virtual_hosts[3].routes.push(route(m, to("a")));

    // A listener whose HTTP filters start with one nobody knows, not marked optional.
    let unknown = hcm::HttpFilter {
        name: "acme.unknown".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(PbAny {
            type_url: "type.googleapis.com/acme.filters.Unknown".into(),
            value: vec![],
        })),
        ..Default::default()
    };
    let with_unknown = res::listener(
        "extra",
        "127.0.0.1:0".parse().unwrap(),
        "routes",
        vec![unknown],
    );

    let table = [
        Refused {
            what: "cluster lb_policy RING_HASH",
            type_url: types::CLUSTER,
            name: "ring",
            bad: any(&ring),
            restore: None,
            envoy_acks: true,
        },
        Refused {
            what: "route match case_sensitive: false",
            type_url: types::ROUTE,
            name: "routes",
            bad: any(&insensitive),
            restore: Some(any(&routes())),
            envoy_acks: true,
        },
        Refused {
            what: "unknown HTTP filter, not optional",
            type_url: types::LISTENER,
            name: "extra",
            bad: any(&with_unknown),
            restore: None,
            envoy_acks: false,
        },
    ];
    let mut rows = Vec::new();
    for r in &table {
        let v = ads.set(r.type_url, [(r.name, r.bad.clone())]);
        let envoy = answer(&ads, ENVOY, r.type_url, &v).await;
        let weir = answer(&ads, WEIR, r.type_url, &v).await;
        rows.push(format!("| {} | {envoy:?} | {weir:?} |", r.what));
        assert!(weir.is_nack(), "weir accepts {}: {weir:?}", r.what);
        assert_eq!(
            !envoy.is_nack(),
            r.envoy_acks,
            "Envoy's answer to {}: {envoy:?}",
            r.what
        );
        // Back to the world both accept, before the next case.
        let v = match &r.restore {
            Some(good) => ads.set(r.type_url, [(r.name, good.clone())]),
            None => ads.remove(r.type_url, &[r.name]),
        };
        acked(&ads, ENVOY, &[(r.type_url, v.clone())]).await;
        acked(&ads, WEIR, &[(r.type_url, v)]).await;
    }
    eprintln!(
        "| resource | envoy {}x | weir |\n|---|---|---|\n{}",
        weir_tests::envoy::ENVOY_RELEASE,
        rows.join("\n")
    );

    // Both still route as before.
    let labels = up.labels();
    for addr in [pair.envoy_addr, pair.weir_addr] {
        let o = outcome(&send(addr, &get("/exact")).await, &labels);
        assert_eq!(o, Want::Up("a", "/exact").outcome());
    }
}
