//! Endpoint selection: round robin, and least request by the power of two random choices.

use std::rc::Rc;

use super::{Cluster, Endpoint};
use crate::config::LbPolicy;

impl Cluster {
    /// The endpoint for the next request, or the 503 a request gets when there is none.
    pub fn endpoint(&self) -> Result<Rc<Endpoint>, crate::http::respond::ProxyError> {
        self.pick()
            .cloned()
            .ok_or_else(|| crate::http::respond::ProxyError::NoHealthyUpstream(self.name.clone()))
    }

    /// Picks the endpoint for the next request, or `None` if the cluster has none.
    pub fn pick(&self) -> Option<&Rc<Endpoint>> {
        let eps = &self.endpoints;
        match eps.len() {
            0 => None,
            1 => eps.first(),
            n => match self.lb {
                LbPolicy::RoundRobin => {
                    let i = self.rr.get();
                    self.rr.set(i.wrapping_add(1));
                    eps.get(i % n)
                }
                LbPolicy::LeastRequest => {
                    // P2C: two distinct random endpoints, the less loaded wins (ties: the first).
                    let a = fastrand::usize(..n);
                    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                    let (ea, eb) = (&eps[a], &eps[b]);
                    Some(if eb.active.get() < ea.active.get() {
                        eb
                    } else {
                        ea
                    })
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, Endpoints, Protocol};
    use std::time::Duration;

    fn cluster(lb: LbPolicy, n: u16) -> Cluster {
        let addrs: Vec<_> = (1..=n).map(|p| ([127, 0, 0, 1], p).into()).collect();
        let cfg = ClusterConfig {
            name: "c".into(),
            index: 0,
            endpoints: Endpoints::Static(addrs.clone()),
            protocol: Protocol::Http1,
            lb,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            pool_max_idle: 1,
            pool_idle_timeout: Duration::from_secs(1),
            tls: None,
        };
        Cluster::new(&cfg, &addrs, None)
    }

    #[test]
    fn round_robin_rotates() {
        let c = cluster(LbPolicy::RoundRobin, 3);
        let picks: Vec<u16> = (0..6).map(|_| c.pick().unwrap().addr.port()).collect();
        assert_eq!(picks[0..3], picks[3..6]);
        let mut first: Vec<_> = picks[0..3].to_vec();
        first.sort_unstable();
        assert_eq!(first, [1, 2, 3]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let c = cluster(LbPolicy::LeastRequest, 2);
        c.endpoints[0].active.set(5);
        for _ in 0..50 {
            assert_eq!(c.pick().unwrap().addr.port(), 2);
        }
    }
}
