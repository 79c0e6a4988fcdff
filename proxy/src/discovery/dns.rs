//! DNS resolution for endpoint discovery: a host's A and AAAA records and how long they hold.
//!
//! [`Resolver`] wraps hickory's async resolver, configured for a caller that schedules its own
//! refreshes:
//!
//! - **No cache.** hickory's record cache is sized 0 and its TTLs capped at 0, positive and
//!   negative alike, so every [`Resolver::resolve`] asks the nameserver and sees its current
//!   answer. The caller re-resolves when [`Resolved::valid_for`] (the soonest TTL among the
//!   records) runs out, or sooner.
//! - **One try per query, bounded.** A and AAAA go out together; each is sent once (UDP, then
//!   TCP when UDP fails at the socket or the answer is truncated), and the whole resolution ends
//!   at the resolver's `timeout` with [`DnsError::Timeout`]. A lost datagram costs one refresh
//!   interval, not a stall: the caller keeps its previous answer and asks again.
//! - **All or nothing.** A host that has records of one family and none of the other resolves
//!   to the records it has; but if either query fails (timeout, SERVFAIL, I/O), the resolution
//!   fails, rather than report half of the endpoints and have the caller drop the other half.
//!   NXDOMAIN and an empty answer for both families are errors too ([`DnsError::NxDomain`],
//!   [`DnsError::NoRecords`]).
//!
//! [`Nameservers::System`] reads `/etc/resolv.conf` (nameservers, search domains, `ndots`) and
//! `/etc/hosts` when the resolver is built. A name listed in the hosts file is answered from it
//! alone, as `getaddrinfo` does with `hosts: files dns`: a hosts entry with only an IPv4 address
//! does not send an AAAA query to the network. [`Nameservers::Servers`] asks exactly the given
//! addresses (UDP and TCP on each), with no hosts file, no search domains and `ndots` 0, so
//! `svc.test` and `svc.test.` both go out as written. Under either, a literal IP address
//! resolves to itself without a query, and `localhost` (unless the hosts file lists it) to
//! `127.0.0.1` and `::1` without one (RFC 6761).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::{Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::{Hosts, ResolveError, ResolveErrorKind, TokioResolver};

/// The shortest [`Resolved::valid_for`]: a TTL of 0 (do not cache) still waits a second before
/// the next question, so a host with TTL 0 is not resolved in a loop.
pub const MIN_VALID_FOR: Duration = Duration::from_secs(1);

/// The longest [`Resolved::valid_for`]: an answer is looked at again at least hourly whatever
/// its TTL. It is also what a literal IP address and a hosts-file entry are valid for.
pub const MAX_VALID_FOR: Duration = Duration::from_secs(3600);

/// Which nameservers a [`Resolver`] asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nameservers {
    /// The system's: `/etc/resolv.conf` (nameservers, search domains, `ndots`) and `/etc/hosts`,
    /// both read when the resolver is built.
    System,
    /// Exactly these, over UDP with TCP fallback, in this order of preference; no hosts file, no
    /// search domains, `ndots` 0.
    Servers(Vec<SocketAddr>),
}

/// Why a resolver could not be built or a host could not be resolved. Every resolution error
/// names the host.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// [`Nameservers::Servers`] with an empty list.
    #[error("no DNS nameservers given")]
    NoNameservers,
    /// `/etc/resolv.conf` is missing or unreadable, or lists no nameserver.
    #[error("cannot use the system DNS configuration (/etc/resolv.conf): {reason}")]
    SystemConfig { reason: String },
    /// The host is not a DNS name (an empty label, a label over 63 bytes, ...).
    #[error("resolving {host}: not a valid DNS name ({reason})")]
    InvalidName { host: String, reason: String },
    /// The nameserver says the name does not exist.
    #[error("resolving {host}: no such name (NXDOMAIN)")]
    NxDomain { host: String },
    /// The name exists but has neither A nor AAAA records.
    #[error("resolving {host}: no A or AAAA records")]
    NoRecords { host: String },
    /// No answer within the resolver's timeout (the nameserver is down, unreachable or silent).
    #[error("resolving {host}: no answer within {timeout:?}")]
    Timeout { host: String, timeout: Duration },
    /// Anything else: the nameserver answered with an error code (SERVFAIL, REFUSED, ...), or
    /// the exchange failed (refused connection, malformed answer).
    #[error("resolving {host}: {reason}")]
    Failed { host: String, reason: String },
}

/// One answer: the host's addresses and how long they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Every A record (in answer order), then every AAAA record (in answer order), each with
    /// the requested port; no address twice. Never empty.
    pub addrs: Vec<SocketAddr>,
    /// The soonest TTL among the records, clamped to
    /// [[`MIN_VALID_FOR`], [`MAX_VALID_FOR`]]: when to ask again.
    pub valid_for: Duration,
}

/// An async DNS resolver for discovery. Cheap to clone (the clones share one resolver and its
/// connections); used from the control thread's runtime.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: TokioResolver,
    /// The nameservers asked, for `Debug`.
    nameservers: Vec<SocketAddr>,
    /// `/etc/hosts` under [`Nameservers::System`]; empty otherwise.
    hosts: Hosts,
    timeout: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("nameservers", &self.inner.nameservers)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `ns`, each query bounded by `timeout` (and the whole of a
    /// [`resolve`](Self::resolve) by the same `timeout`).
    pub fn new(ns: &Nameservers, timeout: Duration) -> Result<Self, DnsError> {
        let (config, mut opts, hosts) = match ns {
            Nameservers::System => {
                let (config, opts) =
                    hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                        DnsError::SystemConfig {
                            reason: e.to_string(),
                        }
                    })?;
                if config.name_servers().is_empty() {
                    return Err(DnsError::SystemConfig {
                        reason: "no nameserver listed".into(),
                    });
                }
                // A missing or unreadable hosts file is an empty one, as for the C library.
                (config, opts, Hosts::from_system().unwrap_or_default())
            }
            Nameservers::Servers(addrs) => {
                if addrs.is_empty() {
                    return Err(DnsError::NoNameservers);
                }
                let servers: Vec<NameServerConfig> = addrs
                    .iter()
                    .flat_map(|&a| {
                        // `new` trusts negative answers: an NXDOMAIN from one server is final.
                        [
                            NameServerConfig::new(a, Protocol::Udp),
                            NameServerConfig::new(a, Protocol::Tcp),
                        ]
                    })
                    .collect();
                let config =
                    ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::from(servers));
                let mut opts = ResolverOpts::default();
                opts.ndots = 0;
                (config, opts, Hosts::default())
            }
        };
        opts.timeout = timeout;
        // hickory counts retries: 0 sends each query once.
        opts.attempts = 0;
        // No cache: the caller schedules its own refresh from `valid_for` and wants the
        // nameserver's current answer each time. A zero TTL cap makes whatever the cache still
        // holds expire at once.
        opts.cache_size = 0;
        opts.positive_min_ttl = None;
        opts.negative_min_ttl = None;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        // The hosts file is consulted here, per name, not per query type (see the module docs).
        opts.use_hosts_file = ResolveHosts::Never;
        opts.validate = false;
        let mut nameservers: Vec<SocketAddr> = Vec::new();
        for ns in config.name_servers().iter() {
            if !nameservers.contains(&ns.socket_addr) {
                nameservers.push(ns.socket_addr);
            }
        }
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build();
        Ok(Resolver {
            inner: Arc::new(Inner {
                resolver,
                nameservers,
                hosts,
                timeout,
            }),
        })
    }

    /// Every A and AAAA record of `host` (IPv4 first, then IPv6, each in answer order,
    /// deduplicated), with `port`, and the soonest TTL expiry among the records (clamped to
    /// [1s, 1h]). A literal IP address (`127.0.0.1`, `::1`, `[::1]`) resolves to itself
    /// without a query.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Resolved, DnsError> {
        if let Some(ip) = literal_ip(host) {
            return Ok(Resolved {
                addrs: vec![SocketAddr::new(ip, port)],
                valid_for: MAX_VALID_FOR,
            });
        }
        let name = Name::from_utf8(host).map_err(|e| DnsError::InvalidName {
            host: host.to_owned(),
            reason: e.to_string(),
        })?;
        if host.is_empty() || name.is_root() {
            return Err(DnsError::InvalidName {
                host: host.to_owned(),
                reason: "empty name".into(),
            });
        }
        if let Some(ips) = from_hosts(&self.inner.hosts, &name) {
            return Ok(Resolved {
                addrs: ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
                valid_for: MAX_VALID_FOR,
            });
        }
        let resolver = &self.inner.resolver;
        let both = async {
            tokio::join!(
                resolver.ipv4_lookup(name.clone()),
                resolver.ipv6_lookup(name.clone())
            )
        };
        // Each query is bounded by the same timeout inside hickory; this bounds the whole (a
        // search list under `System` may mean several queries in turn).
        let timeout = self.inner.timeout;
        let (v4, v6) =
            tokio::time::timeout(timeout, both)
                .await
                .map_err(|_| DnsError::Timeout {
                    host: host.to_owned(),
                    timeout,
                })?;
        let v4 = family(v4.map(|l| l.as_lookup().records().to_vec()), host, timeout);
        let v6 = family(v6.map(|l| l.as_lookup().records().to_vec()), host, timeout);
        merge(v4, v6, host, port)
    }
}

/// A literal IPv4 or IPv6 address, the latter possibly in brackets.
fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// The addresses the hosts file gives `name` (IPv4 first), if it lists the name at all.
fn from_hosts(hosts: &Hosts, name: &Name) -> Option<Vec<IpAddr>> {
    let mut ips = Vec::new();
    for rtype in [RecordType::A, RecordType::AAAA] {
        if let Some(lookup) = hosts.lookup_static_host(&Query::query(name.clone(), rtype)) {
            for ip in lookup.iter().filter_map(RData::ip_addr) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
    }
    (!ips.is_empty()).then_some(ips)
}

/// What one query (A or AAAA) came back with.
enum Family {
    /// The addresses in answer order and the smallest TTL among the records (CNAMEs included).
    Records(Vec<IpAddr>, u32),
    NoRecords,
    NxDomain,
    Failed(DnsError),
}

fn family(result: Result<Vec<Record>, ResolveError>, host: &str, timeout: Duration) -> Family {
    let records = match result {
        Ok(records) => records,
        Err(e) => return classify(&e, host, timeout),
    };
    let ips: Vec<IpAddr> = records.iter().filter_map(|r| r.data().ip_addr()).collect();
    match records.iter().map(Record::ttl).min() {
        Some(ttl) if !ips.is_empty() => Family::Records(ips, ttl),
        _ => Family::NoRecords,
    }
}

/// Sorts a hickory error into "no records" (an answer), "no such name" (an answer) or a failure.
fn classify(e: &ResolveError, host: &str, timeout: Duration) -> Family {
    let failed = |reason: String| {
        Family::Failed(DnsError::Failed {
            host: host.to_owned(),
            reason,
        })
    };
    let proto: &ProtoError = match e.kind() {
        ResolveErrorKind::Proto(p) => p,
        _ => return failed(e.to_string()),
    };
    match proto.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain => Family::NxDomain,
            ResponseCode::NoError => Family::NoRecords,
            code => failed(format!(
                "the nameserver answered {} ({})",
                code.to_str(),
                u16::from(code)
            )),
        },
        ProtoErrorKind::Timeout => Family::Failed(DnsError::Timeout {
            host: host.to_owned(),
            timeout,
        }),
        ProtoErrorKind::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            Family::Failed(DnsError::Timeout {
                host: host.to_owned(),
                timeout,
            })
        }
        _ => failed(proto.to_string()),
    }
}

/// One answer from the A and the AAAA outcome (see "All or nothing" in the module docs).
fn merge(v4: Family, v6: Family, host: &str, port: u16) -> Result<Resolved, DnsError> {
    let (v4, v6) = match (v4, v6) {
        (Family::Failed(e), _) | (_, Family::Failed(e)) => return Err(e),
        pair => pair,
    };
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut ttl: Option<u32> = None;
    let mut nxdomain = false;
    for f in [v4, v6] {
        match f {
            Family::Records(ips, t) => {
                for ip in ips {
                    let a = SocketAddr::new(ip, port);
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
                ttl = Some(ttl.map_or(t, |x| x.min(t)));
            }
            Family::NxDomain => nxdomain = true,
            Family::NoRecords | Family::Failed(_) => {}
        }
    }
    match ttl {
        Some(ttl) if !addrs.is_empty() => Ok(Resolved {
            addrs,
            valid_for: Duration::from_secs(u64::from(ttl)).clamp(MIN_VALID_FOR, MAX_VALID_FOR),
        }),
        _ if nxdomain => Err(DnsError::NxDomain {
            host: host.to_owned(),
        }),
        _ => Err(DnsError::NoRecords {
            host: host.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    //! What needs no DNS server. Answers from a real one (records changing, TTLs, NXDOMAIN, a
    //! silent server) are tested against the e2e support crate's server in `tests/src/dns.rs`.

    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
    use std::time::Instant;

    use super::*;

    /// A nameserver address that receives queries and never answers (nor refuses them).
    fn silent_nameserver() -> (UdpSocket, SocketAddr) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        (sock, addr)
    }

    #[tokio::test]
    async fn a_literal_ip_resolves_to_itself_without_a_query() {
        let (_sock, ns) = silent_nameserver();
        // Any query would go unanswered and end in a timeout error.
        let r = Resolver::new(&Nameservers::Servers(vec![ns]), Duration::from_millis(200)).unwrap();
        let v4 = r.resolve("127.0.0.1", 8080).await.unwrap();
        assert_eq!(
            v4.addrs,
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))]
        );
        assert_eq!(v4.valid_for, MAX_VALID_FOR);
        for host in ["::1", "[::1]"] {
            let v6 = r.resolve(host, 443).await.unwrap();
            assert_eq!(v6.addrs, vec![SocketAddr::from((Ipv6Addr::LOCALHOST, 443))]);
        }
    }

    #[tokio::test]
    async fn a_silent_nameserver_is_a_timeout_naming_the_host() {
        let (_sock, ns) = silent_nameserver();
        let timeout = Duration::from_millis(200);
        let r = Resolver::new(&Nameservers::Servers(vec![ns]), timeout).unwrap();
        let start = Instant::now();
        let err = r.resolve("api.test.", 80).await.unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, DnsError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("api.test."), "{err}");
        assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
    }

    #[test]
    fn an_empty_server_list_is_refused() {
        let err = Resolver::new(&Nameservers::Servers(vec![]), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, DnsError::NoNameservers), "{err:?}");
    }

    #[tokio::test]
    async fn an_invalid_name_is_refused_before_any_query() {
        let (_sock, ns) = silent_nameserver();
        let r = Resolver::new(&Nameservers::Servers(vec![ns]), Duration::from_millis(200)).unwrap();
        for host in ["", ".", "a..b", &"x".repeat(64)] {
            let err = r.resolve(host, 80).await.unwrap_err();
            assert!(
                matches!(err, DnsError::InvalidName { .. }),
                "{host:?}: {err:?}"
            );
        }
    }

    #[test]
    fn a_name_in_the_hosts_file_is_answered_from_it_alone() {
        let mut hosts = Hosts::default();
        hosts
            .read_hosts_conf(
                "10.0.0.1 db.internal\n10.0.0.2 db.internal\nfd00::1 db.internal\n\
                 10.0.0.9 v4only\n"
                    .as_bytes(),
            )
            .unwrap();
        let db = Name::from_utf8("db.internal").unwrap();
        let ips = from_hosts(&hosts, &db).unwrap();
        let want: Vec<IpAddr> = vec![
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "fd00::1".parse().unwrap(),
        ];
        assert_eq!(ips, want);
        // Listed with IPv4 only: no AAAA query goes out for it.
        let v4only = from_hosts(&hosts, &Name::from_utf8("v4only.").unwrap()).unwrap();
        assert_eq!(v4only, vec!["10.0.0.9".parse::<IpAddr>().unwrap()]);
        assert!(from_hosts(&hosts, &Name::from_utf8("other").unwrap()).is_none());
    }

    #[test]
    fn answers_merge_ipv4_first_deduplicated_with_the_soonest_ttl() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let got = merge(
            Family::Records(vec![ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.2")], 30),
            Family::Records(vec![ip("fd00::1")], 5),
            "h",
            9,
        )
        .unwrap();
        let want: Vec<SocketAddr> = ["10.0.0.2:9", "10.0.0.1:9", "[fd00::1]:9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got.addrs, want);
        assert_eq!(got.valid_for, Duration::from_secs(5));

        let one_family = merge(
            Family::NoRecords,
            Family::Records(vec![ip("fd00::1")], 0),
            "h",
            9,
        );
        assert_eq!(one_family.unwrap().valid_for, MIN_VALID_FOR);
        let long = merge(
            Family::Records(vec![ip("10.0.0.1")], 86_400),
            Family::NxDomain,
            "h",
            9,
        );
        assert_eq!(long.unwrap().valid_for, MAX_VALID_FOR);

        let nx = merge(Family::NxDomain, Family::NxDomain, "h", 9).unwrap_err();
        assert!(matches!(nx, DnsError::NxDomain { .. }), "{nx:?}");
        let empty = merge(Family::NoRecords, Family::NoRecords, "h", 9).unwrap_err();
        assert!(matches!(empty, DnsError::NoRecords { .. }), "{empty:?}");

        // A failed family fails the whole answer: half of the endpoints is not an answer.
        let failed = Family::Failed(DnsError::Failed {
            host: "h".into(),
            reason: "the nameserver answered Server Failure (2)".into(),
        });
        let err = merge(Family::Records(vec![ip("10.0.0.1")], 30), failed, "h", 9).unwrap_err();
        assert!(matches!(err, DnsError::Failed { .. }), "{err:?}");
    }
}
