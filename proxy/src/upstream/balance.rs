//! Endpoint selection, per worker: priority levels with Envoy's failover arithmetic, then round
//! robin (smooth weighted when weights differ), least request or peak-EWMA by the power of two
//! choices inside the chosen level.
//!
//! Each worker keeps a `View`: per priority level, the endpoints it may pick and the share of
//! traffic the level gets. Health checks and outlier ejection change endpoints' availability in
//! shared atomics and bump [`ClusterCore::version`](super::shared::ClusterCore::version); a
//! worker rebuilds its view when it sees a new version, so a pick costs one relaxed load beyond
//! the balancing itself, and nothing at all is allocated.
//!
//! **Priorities** (Envoy's): a level's health is its percentage of available endpoints times the
//! overprovisioning factor (1.4), capped at 100. Level 0 takes its health's worth of traffic, the
//! next level the rest up to its own health, and so on; when the levels' healths sum to under
//! 100 the shares are scaled up to fill 100 ("normalized total health"). Only then does a level
//! with fewer available endpoints than the panic threshold (50%) ignore health and use all of its
//! endpoints, because failing every request is worse than trying unhealthy ones.
//!
//! **Peak EWMA** (Linkerd's default): each endpoint's latency estimate jumps to any slower
//! observation at once and decays towards faster ones (and towards zero while idle) with time
//! constant `ewma.decay`; the cost of an endpoint is its estimate times its requests in flight
//! plus one, and of two random endpoints the cheaper wins. An endpoint ten times slower than its
//! peers therefore gets a small share, yet is still probed as its estimate decays.

use std::cell::Cell;
use std::rc::Rc;

use super::{Cluster, Endpoint};
use crate::config::{FailoverConfig, LbPolicy};

/// The traffic share of one priority level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelLoad {
    /// Percent of requests (the levels' loads sum to 100).
    pub load: u32,
    /// The level ignores health: it balances over all of its endpoints.
    pub panic: bool,
}

/// Envoy's priority load from each level's `(available, total)` endpoint counts.
pub fn priority_loads(levels: &[(u32, u32)], f: &FailoverConfig) -> Vec<LevelLoad> {
    let pct = |(avail, total): (u32, u32)| {
        if total == 0 {
            0
        } else {
            u64::from(avail) * 100 / u64::from(total)
        }
    };
    let health: Vec<u64> = levels
        .iter()
        .map(|&(avail, total)| {
            if total == 0 {
                0
            } else {
                ((f.overprovisioning_factor * 100.0 * f64::from(avail) / f64::from(total)) as u64)
                    .min(100)
            }
        })
        .collect();
    let normalized = health.iter().sum::<u64>().min(100);
    let mut out: Vec<LevelLoad> = levels
        .iter()
        .map(|&c| LevelLoad {
            load: 0,
            panic: normalized < 100 && pct(c) < u64::from(f.panic_threshold),
        })
        .collect();
    if out.is_empty() {
        return out;
    }
    if normalized == 0 {
        // Nothing available anywhere: everything to the first level (in panic, unless the
        // threshold is 0, and then requests fail with no_healthy_upstream).
        out[0].load = 100;
        return out;
    }
    let mut left = 100u64;
    for (o, h) in out.iter_mut().zip(&health) {
        let share = (h * 100 / normalized).min(left);
        o.load = share as u32;
        left -= share;
    }
    if left > 0
        && let Some(first) = out.iter_mut().zip(&health).find(|(_, h)| **h > 0)
    {
        first.0.load += left as u32;
    }
    out
}

/// One worker's balancing view (see the module docs).
#[derive(Debug, Default)]
pub(super) struct View {
    levels: Vec<Level>,
    /// Cumulative loads of `levels` (only consulted with more than one level).
    cumulative: Vec<u32>,
}

#[derive(Debug, Default)]
struct Level {
    /// Indexes into the cluster's endpoints.
    eps: Vec<usize>,
    /// Weights differ: weighted round robin, weighted random choices.
    weighted: bool,
    /// Running weight totals of `eps` (weighted random choice).
    cumulative: Vec<u64>,
}

impl View {
    /// Builds the view from the endpoints' shared availability.
    pub(super) fn build(c: &Cluster) -> View {
        let shared = &c.shared;
        let loads = shared.priority_loads();
        let mut view = View::default();
        let mut acc = 0;
        for (li, ll) in loads.iter().enumerate() {
            if ll.load == 0 {
                continue;
            }
            let eps: Vec<usize> = shared
                .endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.level == li && e.usable() && (ll.panic || e.available()))
                .map(|(i, _)| i)
                .collect();
            if eps.is_empty() {
                continue;
            }
            let first_w = c.endpoints[eps[0]].weight;
            let weighted = eps.iter().any(|&i| c.endpoints[i].weight != first_w);
            let mut run = 0u64;
            let cumulative = eps
                .iter()
                .map(|&i| {
                    run += u64::from(c.endpoints[i].weight);
                    run
                })
                .collect();
            acc += ll.load;
            view.cumulative.push(acc);
            view.levels.push(Level {
                eps,
                weighted,
                cumulative,
            });
        }
        view
    }

    fn level(&self) -> Option<&Level> {
        match self.levels.len() {
            0 => None,
            1 => self.levels.first(),
            _ => {
                let total = *self.cumulative.last()?;
                let r = fastrand::u32(..total.max(1));
                let i = self.cumulative.partition_point(|&c| c <= r);
                self.levels.get(i.min(self.levels.len() - 1))
            }
        }
    }
}

impl Level {
    /// A random member, by weight when weights differ.
    fn random(&self) -> usize {
        if !self.weighted {
            return fastrand::usize(..self.eps.len());
        }
        let total = *self.cumulative.last().unwrap_or(&1);
        let r = fastrand::u64(..total.max(1));
        self.cumulative.partition_point(|&c| c <= r)
    }

    /// Two distinct random members.
    fn two(&self) -> (usize, usize) {
        let n = self.eps.len();
        if !self.weighted {
            let a = fastrand::usize(..n);
            return (a, (a + 1 + fastrand::usize(..n - 1)) % n);
        }
        let a = self.random();
        for _ in 0..3 {
            let b = self.random();
            if b != a {
                return (a, b);
            }
        }
        (a, (a + 1) % n)
    }
}

impl Cluster {
    /// The endpoint for the next request, or the 503 a request gets when there is none.
    pub fn endpoint(&self) -> Result<Rc<Endpoint>, crate::proto::error::ProxyError> {
        self.pick().cloned().ok_or_else(|| {
            crate::telemetry::upstream_no_healthy(self.metrics);
            crate::proto::error::ProxyError::NoHealthyUpstream(self.name.to_string())
        })
    }

    /// Picks the endpoint for the next request, or `None` if none may be picked.
    pub fn pick(&self) -> Option<&Rc<Endpoint>> {
        let version = self
            .shared
            .version
            .load(std::sync::atomic::Ordering::Relaxed);
        if version != self.view_version.get() {
            self.view_version.set(version);
            *self.view.borrow_mut() = View::build(self);
        }
        let view = self.view.borrow();
        let level = view.level()?;
        let i = match level.eps.len() {
            0 => return None,
            1 => level.eps[0],
            n => match self.lb {
                LbPolicy::RoundRobin if !level.weighted => {
                    let i = self.rr.get();
                    self.rr.set(i.wrapping_add(1));
                    level.eps[i % n]
                }
                LbPolicy::RoundRobin => self.smooth_weighted(level),
                // By weight (a binary search over the level's cumulative weights).
                LbPolicy::Random => level.eps[level.random()],
                LbPolicy::LeastRequest => {
                    // P2C: the fewer requests in flight per unit of weight wins (ties: the first).
                    let (a, b) = level.two();
                    let (ea, eb) = (&self.endpoints[level.eps[a]], &self.endpoints[level.eps[b]]);
                    let (la, lb) = (
                        u64::from(ea.active()) * u64::from(eb.weight),
                        u64::from(eb.active()) * u64::from(ea.weight),
                    );
                    level.eps[if lb < la { b } else { a }]
                }
                LbPolicy::P2cEwma => {
                    let (a, b) = level.two();
                    let now = crate::timer::now_ms();
                    let cost = |k: usize| {
                        let e = &self.endpoints[level.eps[k]];
                        self.ewma_cost(e, now) / f64::from(e.weight)
                    };
                    level.eps[if cost(b) < cost(a) { b } else { a }]
                }
            },
        };
        drop(view);
        self.endpoints.get(i)
    }

    /// nginx's smooth weighted round robin: every member gains its weight, the richest is
    /// picked and pays the total. Spreads a heavy member's turns out instead of bunching them.
    fn smooth_weighted(&self, level: &Level) -> usize {
        let mut total = 0i64;
        let mut best: Option<&Rc<Endpoint>> = None;
        let mut best_i = level.eps[0];
        for &i in &level.eps {
            let e = &self.endpoints[i];
            let w = i64::from(e.weight);
            total += w;
            e.wrr.set(e.wrr.get() + w);
            if best.is_none_or(|b| e.wrr.get() > b.wrr.get()) {
                best = Some(e);
                best_i = i;
            }
        }
        if let Some(b) = best {
            b.wrr.set(b.wrr.get() - total);
        }
        best_i
    }

    /// Peak-EWMA cost: the decayed latency estimate times (requests in flight + 1).
    fn ewma_cost(&self, e: &Endpoint, now: u64) -> f64 {
        e.ewma.decayed(now, self.ewma_decay_ms) * f64::from(e.active() + 1)
    }

    /// Feeds an attempt's latency (ms) into the endpoint's estimate.
    pub(super) fn observe_latency(&self, e: &Endpoint, rtt_ms: f64, now: u64) {
        e.ewma.observe(rtt_ms, now, self.ewma_decay_ms);
    }
}

/// A peak-EWMA latency estimate in milliseconds, per worker and endpoint.
#[derive(Debug)]
pub struct Ewma {
    estimate: Cell<f64>,
    at: Cell<u64>,
}

impl Ewma {
    pub fn new(initial_ms: f64, now: u64) -> Self {
        Self {
            estimate: Cell::new(initial_ms),
            at: Cell::new(now),
        }
    }

    fn decay(elapsed_ms: u64, tau_ms: f64) -> f64 {
        (-(elapsed_ms as f64) / tau_ms).exp()
    }

    /// The estimate decayed towards zero for the time since the last update (a quiet endpoint
    /// grows attractive again, so a once-slow one is probed).
    pub fn decayed(&self, now: u64, tau_ms: f64) -> f64 {
        let elapsed = now.saturating_sub(self.at.get());
        if elapsed == 0 {
            return self.estimate.get();
        }
        let v = self.estimate.get() * Self::decay(elapsed, tau_ms);
        self.estimate.set(v);
        self.at.set(now);
        v
    }

    /// A slower observation replaces the estimate at once (the peak); a faster one is blended in
    /// by how long it has been since the last.
    pub fn observe(&self, rtt_ms: f64, now: u64, tau_ms: f64) {
        let est = self.estimate.get();
        let next = if rtt_ms > est {
            rtt_ms
        } else {
            let w = Self::decay(now.saturating_sub(self.at.get()), tau_ms);
            est * w + rtt_ms * (1.0 - w)
        };
        self.estimate.set(next);
        self.at.set(now);
    }

    pub fn get(&self) -> f64 {
        self.estimate.get()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{ClusterConfig, EndpointConfig, Endpoints, Protocol};
    use crate::upstream::shared::ClusterShared;
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    /// A cluster config over `127.0.0.1:1..`, one endpoint per `(weight, priority)`.
    pub(crate) fn config(
        lb: LbPolicy,
        eps: &[(u32, u32)],
    ) -> (ClusterConfig, Vec<std::net::SocketAddr>) {
        let addrs: Vec<_> = (1..=eps.len() as u16)
            .map(|p| ([127, 0, 0, 1], p).into())
            .collect();
        let cfg = ClusterConfig {
            name: "c".into(),
            endpoints: Endpoints::Static(
                addrs
                    .iter()
                    .zip(eps)
                    .map(|(&address, &(weight, priority))| EndpointConfig {
                        weight,
                        priority,
                        ..EndpointConfig::at(address)
                    })
                    .collect(),
            ),
            protocol: Protocol::Http1,
            lb,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            per_try_timeout: None,
            request_timeout: None,
            idle_timeout: None,
            pool_max_idle: 1,
            pool_idle_timeout: Duration::from_secs(1),
            tls: None,
            retries: None,
            circuit_breaker: Default::default(),
            outlier: None,
            health_check: None,
            failover: Default::default(),
            ewma: Default::default(),
        };
        (cfg, addrs)
    }

    pub(crate) fn cluster_with(lb: LbPolicy, eps: &[(u32, u32)]) -> Cluster {
        let (cfg, addrs) = config(lb, eps);
        let cfg = Arc::new(cfg);
        let tel = crate::telemetry::Telemetry::bare(1);
        let shared = Arc::new(ClusterShared::simple(&cfg, &addrs, 1, &tel));
        Cluster::new(shared, 0, None)
    }

    fn cluster(lb: LbPolicy, n: usize) -> Cluster {
        cluster_with(lb, &vec![(1, 0); n])
    }

    fn ports(c: &Cluster, n: usize) -> Vec<u16> {
        (0..n).map(|_| c.pick().unwrap().addr.port()).collect()
    }

    #[test]
    fn round_robin_rotates() {
        let c = cluster(LbPolicy::RoundRobin, 3);
        let picks = ports(&c, 6);
        assert_eq!(picks[0..3], picks[3..6]);
        let mut first: Vec<_> = picks[0..3].to_vec();
        first.sort_unstable();
        assert_eq!(first, [1, 2, 3]);
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_proportional() {
        let c = cluster_with(LbPolicy::RoundRobin, &[(5, 0), (1, 0), (1, 0)]);
        let picks = ports(&c, 7);
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 5, "{picks:?}");
        // Smooth: the heavy endpoint never takes more than two turns in a row here.
        assert!(
            !picks.windows(3).any(|w| w.iter().all(|&p| p == 1)),
            "{picks:?}"
        );
    }

    #[test]
    fn random_spreads_by_weight() {
        let c = cluster_with(LbPolicy::Random, &[(3, 0), (1, 0)]);
        let picks = ports(&c, 4000);
        let heavy = picks.iter().filter(|&&p| p == 1).count();
        // 3,000 expected; the bounds are over ten standard deviations (27) wide.
        assert!((2700..3300).contains(&heavy), "{heavy} of 4000");
        let c = cluster(LbPolicy::Random, 3);
        let picks = ports(&c, 300);
        for port in 1..=3 {
            assert!(picks.contains(&port), "endpoint {port} never picked");
        }
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let c = cluster(LbPolicy::LeastRequest, 2);
        c.endpoints[0].begin();
        c.endpoints[0].begin();
        for _ in 0..50 {
            assert_eq!(c.pick().unwrap().addr.port(), 2);
        }
    }

    #[test]
    fn p2c_ewma_prefers_the_fast_endpoint() {
        let c = cluster(LbPolicy::P2cEwma, 2);
        let now = crate::timer::now_ms();
        c.observe_latency(&c.endpoints[0], 100.0, now);
        c.observe_latency(&c.endpoints[1], 10.0, now);
        for _ in 0..50 {
            assert_eq!(c.pick().unwrap().addr.port(), 2);
        }
        // In flight requests raise the fast one's cost past the slow one's.
        for _ in 0..20 {
            c.endpoints[1].begin();
        }
        assert_eq!(c.pick().unwrap().addr.port(), 1);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let e = Ewma::new(30.0, 0);
        e.observe(300.0, 0, 10_000.0);
        assert_eq!(e.get(), 300.0, "a slower observation is taken at once");
        e.observe(10.0, 1_000, 10_000.0);
        let after = e.get();
        assert!(after < 300.0 && after > 250.0, "{after}");
        // Idle time decays the estimate towards zero.
        assert!(e.decayed(60_000, 10_000.0) < 2.0);
    }

    fn loads(levels: &[(u32, u32)]) -> Vec<(u32, bool)> {
        priority_loads(levels, &FailoverConfig::default())
            .into_iter()
            .map(|l| (l.load, l.panic))
            .collect()
    }

    #[test]
    fn priority_loads_follow_envoy() {
        // All healthy: everything to P0.
        assert_eq!(loads(&[(4, 4), (4, 4)]), [(100, false), (0, false)]);
        // 80% healthy × 1.4 > 100: P0 keeps everything.
        assert_eq!(loads(&[(4, 5), (4, 4)]), [(100, false), (0, false)]);
        // 50% healthy → 70% to P0, 30% spills to P1.
        assert_eq!(loads(&[(1, 2), (2, 2)]), [(70, false), (30, false)]);
        // P0 down: everything to P1 (total health is 100: no panic anywhere).
        assert_eq!(loads(&[(0, 1), (1, 1)]), [(0, false), (100, false)]);
        // Both 20% healthy: health 28 + 28 < 100, normalized to 50/50, both in panic.
        assert_eq!(loads(&[(1, 5), (1, 5)]), [(50, true), (50, true)]);
        // Nothing healthy anywhere: P0 in panic.
        assert_eq!(loads(&[(0, 2), (0, 2)]), [(100, true), (0, true)]);
        // One level at 25%: normalized to 100%, in panic.
        assert_eq!(loads(&[(1, 4)]), [(100, true)]);
    }

    #[test]
    fn views_fail_over_and_come_back() {
        let c = cluster_with(LbPolicy::RoundRobin, &[(1, 0), (1, 1)]);
        assert!(ports(&c, 10).iter().all(|&p| p == 1));
        c.shared.endpoints[0].healthy.store(false, Relaxed);
        c.shared.bump();
        assert!(ports(&c, 10).iter().all(|&p| p == 2));
        c.shared.endpoints[0].healthy.store(true, Relaxed);
        c.shared.bump();
        assert!(ports(&c, 10).iter().all(|&p| p == 1));
    }

    #[test]
    fn an_ejected_endpoint_is_skipped_unless_in_panic() {
        let c = cluster(LbPolicy::RoundRobin, 3);
        c.shared.endpoints[1].ejected.store(true, Relaxed);
        c.shared.bump();
        assert!(ports(&c, 12).iter().all(|&p| p != 2));
        // Two of three out: 33% < 50%, and one level cannot spill: panic uses all three.
        c.shared.endpoints[2].ejected.store(true, Relaxed);
        c.shared.bump();
        let mut seen = ports(&c, 12);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, [1, 2, 3]);
    }

    #[test]
    fn a_new_version_keeps_the_endpoints_that_stay_with_their_state_and_pools() {
        use crate::config::EndpointConfig;
        use crate::upstream::shared::{EndpointSource, VersionSpec};
        // Over the scan threshold, so the address map is used.
        let (cfg, addrs) = config(LbPolicy::RoundRobin, &[(1, 0); 20]);
        let cfg = Arc::new(cfg);
        let tel = crate::telemetry::Telemetry::bare(1);
        let v1 = Arc::new(ClusterShared::simple(&cfg, &addrs, 1, &tel));
        let c1 = Cluster::new(v1.clone(), 0, None);
        // Drop the first endpoint, add a new one at the end.
        let mut eps: Vec<EndpointConfig> =
            addrs[1..].iter().map(|&a| EndpointConfig::at(a)).collect();
        let fresh: std::net::SocketAddr = ([127, 0, 0, 9], 9).into();
        eps.push(EndpointConfig::at(fresh));
        let v2 = Arc::new(ClusterShared::build(
            VersionSpec {
                config: cfg.clone(),
                endpoints: &eps,
                tls: None,
                source: EndpointSource::Admin,
                dns: None,
                generation: 2,
                workers: 1,
            },
            Some(&v1),
            &mut |_| 0,
        ));
        let c2 = Cluster::new(v2.clone(), 0, Some(&c1));
        for (i, e) in c2.endpoints.iter().enumerate().take(19) {
            let old = &c1.endpoints[i + 1];
            assert!(
                Rc::ptr_eq(e, old),
                "endpoint {} kept its view and pool",
                e.addr
            );
            assert!(Arc::ptr_eq(
                &v2.endpoints[i].state,
                &v1.endpoints[i + 1].state
            ));
        }
        let last = c2.endpoints.last().unwrap();
        assert_eq!(last.addr, fresh);
        assert!(c1.endpoints.iter().all(|o| !Rc::ptr_eq(o, last)));
        assert!(
            Arc::ptr_eq(&v2.core, &v1.core),
            "the cluster's core is kept"
        );
    }
}
