//! An authoritative DNS server for zone `test.` on `127.0.0.1` (UDP and TCP on one port), whose
//! records a test changes while it runs: the nameserver behind DNS discovery.
//!
//! hickory's server loop (`ServerFuture`: sockets, framing, TCP connections) runs under a request
//! handler of our own over a map of names to addresses, so [`DnsServer::set`] is seen by the very
//! next query (nothing is cached on the server side) and [`DnsServer::set_answering`] can turn it
//! into a dead nameserver (queries arrive and are counted, none is answered) and back.
//!
//! Answers are authoritative: the A or AAAA records of a name that has them, with the TTL given
//! to [`DnsServer::set`]; an empty answer with the zone's SOA for a known name without records of
//! the asked type; NXDOMAIN with the SOA for an unknown name under `test.`; REFUSED for a name
//! outside the zone. The server stops when the [`DnsServer`] is dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{
    Request, RequestHandler, ResponseHandler, ResponseInfo, ServerFuture,
};

/// The zone the server is authoritative for.
pub const ZONE: &str = "test.";

/// The negative-answer TTL (the SOA's TTL and minimum): one second, the shortest there is.
const NEGATIVE_TTL: u32 = 1;

/// How long a TCP connection may sit without a query before the server closes it.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// A running test DNS server. See the module docs.
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<State>,
    /// Owns the server's tasks: dropping it aborts them and closes the sockets.
    _server: ServerFuture<Handler>,
}

#[derive(Default)]
struct State {
    /// Name → (addresses in answer order, TTL).
    records: Mutex<HashMap<LowerName, (Vec<IpAddr>, u32)>>,
    /// Cleared by `set_answering(false)`.
    silent: AtomicBool,
    queries: AtomicU64,
}

impl DnsServer {
    /// Starts a server for zone `test.` with no records, on `127.0.0.1:<port>` for both UDP and
    /// TCP.
    pub async fn start() -> anyhow::Result<DnsServer> {
        // UDP takes a free port; TCP must get the same one, which something else may hold.
        let mut last_err = None;
        for _ in 0..20 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .context("binding the DNS server's UDP socket")?;
            let addr = udp.local_addr()?;
            let tcp = match tokio::net::TcpListener::bind(addr).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let state = Arc::new(State::default());
            let mut server = ServerFuture::new(Handler {
                state: Arc::clone(&state),
                zone: zone(),
            });
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE);
            return Ok(DnsServer {
                addr,
                state,
                _server: server,
            });
        }
        Err(anyhow::anyhow!(
            "no port free for both UDP and TCP on 127.0.0.1: {last_err:?}"
        ))
    }

    /// The address (UDP and TCP) to point a resolver at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the A and AAAA records of `name` (`api.test.`; a missing final dot is implied)
    /// with `addrs`, in this order, each with `ttl` seconds. An empty list removes the name (it
    /// answers NXDOMAIN). Panics on a name that is not under `test.`.
    pub fn set(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        let mut parsed = Name::from_ascii(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        parsed.set_fqdn(true);
        let key = LowerName::from(parsed);
        assert!(
            zone().zone_of(&key),
            "{name:?} is not under the test DNS server's zone {ZONE}"
        );
        let mut records = self.state.records.lock().unwrap();
        if addrs.is_empty() {
            records.remove(&key);
        } else {
            records.insert(key, (addrs.to_vec(), ttl));
        }
    }

    /// `false`: queries still arrive (and are counted) but none is answered, as from a dead
    /// nameserver; `true`: answers again.
    pub fn set_answering(&self, on: bool) {
        self.state.silent.store(!on, Ordering::SeqCst);
    }

    /// How many queries have arrived, answered or not (one resolution of a host is usually two:
    /// A and AAAA).
    pub fn queries(&self) -> u64 {
        self.state.queries.load(Ordering::SeqCst)
    }
}

fn zone() -> LowerName {
    LowerName::from(Name::from_ascii(ZONE).expect("the zone name parses"))
}

struct Handler {
    state: Arc<State>,
    zone: LowerName,
}

impl Handler {
    fn soa(&self) -> Record {
        let zone = Name::from(&self.zone);
        let ns = Name::from_ascii("ns.test.").expect("a name");
        let admin = Name::from_ascii("admin.test.").expect("a name");
        let soa = SOA::new(ns, admin, 1, 3600, 600, 86_400, NEGATIVE_TTL);
        Record::from_rdata(zone, NEGATIVE_TTL, RData::SOA(soa))
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        self.state.queries.fetch_add(1, Ordering::SeqCst);
        let mut header = Header::response_from_request(request.header());
        if self.state.silent.load(Ordering::SeqCst) {
            // Nothing is sent: the client waits out its timeout.
            header.set_response_code(ResponseCode::ServFail);
            return header.into();
        }
        let builder = MessageResponseBuilder::from_message_request(request);
        let Ok(info) = request.request_info() else {
            let msg = builder.error_msg(request.header(), ResponseCode::FormErr);
            return send(&mut response, msg, header).await;
        };
        let (name, qtype) = (info.query.name(), info.query.query_type());
        if !self.zone.zone_of(name) {
            let msg = builder.error_msg(request.header(), ResponseCode::Refused);
            return send(&mut response, msg, header).await;
        }
        header.set_authoritative(true);
        let found = self.state.records.lock().unwrap().get(name).cloned();
        let answers: Vec<Record> = match &found {
            Some((addrs, ttl)) => addrs
                .iter()
                .filter_map(|ip| match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
                    (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
                    _ => None,
                })
                .map(|rdata| Record::from_rdata(Name::from(name), *ttl, rdata))
                .collect(),
            None => Vec::new(),
        };
        if found.is_none() {
            header.set_response_code(ResponseCode::NXDomain);
        }
        // A negative answer carries the zone's SOA, so resolvers may trust it.
        let soa = if answers.is_empty() {
            vec![self.soa()]
        } else {
            Vec::new()
        };
        let none: &[Record] = &[];
        let msg = builder.build(header, answers.iter(), none.iter(), soa.iter(), none.iter());
        send(&mut response, msg, header).await
    }
}

/// Sends `msg`; on a failed send, what the server loop records is a SERVFAIL.
async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::authority::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    mut header: Header,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(_) => {
            header.set_response_code(ResponseCode::ServFail);
            header.into()
        }
    }
}

#[cfg(test)]
mod tests {
    //! The server, and weir's resolver (`weir::discovery::dns`) against it.

    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Instant;

    use hickory_server::proto::op::{Message, MessageType, OpCode, Query};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weir::discovery::dns::{DnsError, MAX_VALID_FOR, MIN_VALID_FOR, Nameservers, Resolver};

    use super::*;
    use crate::within;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn v6(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last))
    }

    fn resolver(dns: &DnsServer, timeout: Duration) -> Resolver {
        Resolver::new(&Nameservers::Servers(vec![dns.addr()]), timeout).unwrap()
    }

    fn with_port(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
        ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect()
    }

    #[tokio::test]
    async fn the_resolver_follows_the_records_from_one_address_to_two_to_a_third() {
        let dns = DnsServer::start().await.unwrap();
        let r = resolver(&dns, Duration::from_secs(2));
        // A TTL of an hour: nothing may be cached on either side, the change shows at once.
        for addrs in [vec![v4(1)], vec![v4(1), v4(2)], vec![v4(3)], vec![v4(3)]] {
            dns.set("api.test.", &addrs, 3600);
            let before = dns.queries();
            let got = within("resolving api.test.", r.resolve("api.test.", 8080))
                .await
                .unwrap();
            assert_eq!(got.addrs, with_port(&addrs, 8080));
            // Nothing cached: each resolution asked the server (A and AAAA).
            assert!(dns.queries() >= before + 2, "{} queries", dns.queries());
        }
    }

    #[tokio::test]
    async fn the_ttl_is_reported_and_clamped_to_a_second_and_an_hour() {
        let dns = DnsServer::start().await.unwrap();
        let r = resolver(&dns, Duration::from_secs(2));
        for (ttl, want) in [
            (1, Duration::from_secs(1)),
            (30, Duration::from_secs(30)),
            (0, MIN_VALID_FOR),
            (7200, MAX_VALID_FOR),
        ] {
            dns.set("ttl.test.", &[v4(1), v6(1)], ttl);
            let got = within("resolving ttl.test.", r.resolve("ttl.test.", 80))
                .await
                .unwrap();
            assert_eq!(got.valid_for, want, "ttl {ttl}");
        }
    }

    #[tokio::test]
    async fn ipv4_comes_first_then_ipv6_in_answer_order_without_duplicates() {
        let dns = DnsServer::start().await.unwrap();
        let r = resolver(&dns, Duration::from_secs(2));
        dns.set("dual.test.", &[v6(2), v4(2), v6(1), v4(1), v4(2)], 5);
        let got = within("resolving dual.test.", r.resolve("dual.test.", 443))
            .await
            .unwrap();
        assert_eq!(got.addrs, with_port(&[v4(2), v4(1), v6(2), v6(1)], 443));
        // One family alone is an answer.
        dns.set("six.test.", &[v6(7)], 5);
        let got = within("resolving six.test.", r.resolve("six.test.", 443))
            .await
            .unwrap();
        assert_eq!(got.addrs, with_port(&[v6(7)], 443));
        // ndots 0, no search domains: the name goes out as written, final dot or not.
        let got = within("resolving dual.test", r.resolve("dual.test", 443))
            .await
            .unwrap();
        assert_eq!(got.addrs.len(), 4);
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_within_the_timeout_and_then_recovers() {
        let dns = DnsServer::start().await.unwrap();
        let timeout = Duration::from_millis(300);
        let r = resolver(&dns, timeout);
        dns.set("api.test.", &[v4(1)], 1);
        dns.set_answering(false);
        let before = dns.queries();
        let start = Instant::now();
        let err = within(
            "resolving against a silent server",
            r.resolve("api.test.", 80),
        )
        .await
        .unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, DnsError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("api.test."), "{err}");
        assert!(took < timeout + Duration::from_millis(500), "took {took:?}");
        assert!(dns.queries() > before, "the queries reached the server");

        dns.set_answering(true);
        let got = within(
            "resolving once the server answers",
            r.resolve("api.test.", 80),
        )
        .await
        .unwrap();
        assert_eq!(got.addrs, with_port(&[v4(1)], 80));
    }

    #[tokio::test]
    async fn an_unknown_or_removed_name_is_nxdomain() {
        let dns = DnsServer::start().await.unwrap();
        let r = resolver(&dns, Duration::from_secs(2));
        let err = within("resolving nope.test.", r.resolve("nope.test.", 80))
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::NxDomain { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.test."), "{err}");

        dns.set("gone.test.", &[v4(1)], 1);
        within("resolving gone.test.", r.resolve("gone.test.", 80))
            .await
            .unwrap();
        dns.set("gone.test.", &[], 1);
        let err = within("resolving gone.test. again", r.resolve("gone.test.", 80))
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::NxDomain { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_name_outside_the_zone_is_refused() {
        let dns = DnsServer::start().await.unwrap();
        let r = resolver(&dns, Duration::from_secs(2));
        let err = within("resolving example.com.", r.resolve("example.com.", 80))
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Failed { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("example.com.") && msg.contains("Refused"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn the_server_answers_over_tcp_on_the_same_port() {
        let dns = DnsServer::start().await.unwrap();
        dns.set("tcp.test.", &[v4(9)], 60);
        let mut query = Message::new();
        query
            .set_id(7)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .add_query(Query::query(
                Name::from_ascii("tcp.test.").unwrap(),
                RecordType::A,
            ));
        let wire = query.to_vec().unwrap();
        let answer = within("a DNS answer over TCP", async {
            let mut conn = tokio::net::TcpStream::connect(dns.addr()).await.unwrap();
            let len = u16::try_from(wire.len()).unwrap();
            conn.write_all(&len.to_be_bytes()).await.unwrap();
            conn.write_all(&wire).await.unwrap();
            let len = conn.read_u16().await.unwrap();
            let mut buf = vec![0; usize::from(len)];
            conn.read_exact(&mut buf).await.unwrap();
            Message::from_vec(&buf).unwrap()
        })
        .await;
        assert_eq!(answer.id(), 7);
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(answer.authoritative());
        let ips: Vec<IpAddr> = answer
            .answers()
            .iter()
            .filter_map(|r| r.data().ip_addr())
            .collect();
        assert_eq!(ips, vec![v4(9)]);
        assert_eq!(answer.answers()[0].ttl(), 60);
        assert_eq!(dns.queries(), 1);
    }
}
