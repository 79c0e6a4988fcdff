//! Passive outlier detection (Envoy's consecutive-error detectors): every attempt's outcome is
//! reported against its endpoint; an endpoint reaching `consecutive_5xx`,
//! `consecutive_gateway_errors` or `consecutive_connect_failures` in a row is ejected from
//! balancing for `base_ejection` × the number of times in a row it was ejected (capped at
//! `max_ejection`), as long as the ejected share stays under `max_ejection_percent` (one endpoint
//! can always be ejected, as in Envoy).
//!
//! Local failures count as the 503/504 they become: a refused or timed-out connection, a reset,
//! a timeout all add to the 5xx and gateway-error runs; only a failed connect adds to the
//! connect-failure run, and any response ends it. Failures that are not the endpoint's (an
//! overflow, the client going away) are not counted.
//!
//! The counts are shared atomics, so the workers together see "in a row" across their requests;
//! the worker that sees the last error ejects at once. Endpoints come back when the sweeper,
//! one task per cluster on the control thread, finds their time served (every `interval`), and
//! an endpoint that stays in for `base_ejection` earns one ejection back.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::retry::Outcome;
use super::shared::{ClusterShared, EjectReason, EndpointState};

impl ClusterShared {
    /// Reports how an attempt to endpoint `ep` ended; true when this report ejected it. Only
    /// called with `outlier:` configured.
    pub fn report(&self, ep: &EndpointState, o: Outcome, now_ms: u64) -> bool {
        let Some(cfg) = &self.outlier else {
            return false;
        };
        let clear = |c: &std::sync::atomic::AtomicU32| {
            // Read first: the common (healthy) case writes nothing to the shared line.
            if c.load(Relaxed) != 0 {
                c.store(0, Relaxed);
            }
        };
        let bump = |c: &std::sync::atomic::AtomicU32| c.fetch_add(1, Relaxed) + 1;
        let (n5xx, ngw, nconn) = match o {
            Outcome::Final => return false,
            Outcome::Status(s) if s < 500 => {
                clear(&ep.consecutive_5xx);
                clear(&ep.consecutive_gateway);
                clear(&ep.consecutive_connect);
                return false;
            }
            Outcome::Status(s) => {
                clear(&ep.consecutive_connect);
                let gw = if matches!(s, 502..=504) {
                    bump(&ep.consecutive_gateway)
                } else {
                    clear(&ep.consecutive_gateway);
                    0
                };
                (bump(&ep.consecutive_5xx), gw, 0)
            }
            Outcome::ConnectFailure => (
                bump(&ep.consecutive_5xx),
                bump(&ep.consecutive_gateway),
                bump(&ep.consecutive_connect),
            ),
            Outcome::RefusedStream | Outcome::Reset | Outcome::Timeout | Outcome::Protocol => {
                clear(&ep.consecutive_connect);
                (bump(&ep.consecutive_5xx), bump(&ep.consecutive_gateway), 0)
            }
        };
        let hit = |n: u32, threshold: u32| threshold > 0 && n >= threshold;
        let reason = if hit(nconn, cfg.consecutive_connect_failures) {
            EjectReason::ConsecutiveConnectFailures
        } else if hit(ngw, cfg.consecutive_gateway_errors) {
            EjectReason::ConsecutiveGatewayErrors
        } else if hit(n5xx, cfg.consecutive_5xx) {
            EjectReason::Consecutive5xx
        } else {
            return false;
        };
        self.eject(ep, reason, now_ms)
    }

    /// Ejects endpoint `ep` unless it already is or the ejected share is at its maximum.
    fn eject(&self, ep: &EndpointState, reason: EjectReason, now_ms: u64) -> bool {
        let Some(cfg) = &self.outlier else {
            return false;
        };
        if ep.ejected.load(Relaxed) {
            return false;
        }
        let n = self.endpoints.len() as u64;
        let mut cur = self.ejected.load(Relaxed);
        loop {
            // "Below the maximum" rather than "within it": one can always be ejected.
            if u64::from(cur) * 100 >= u64::from(cfg.max_ejection_percent) * n {
                return false;
            }
            match self
                .ejected
                .compare_exchange(cur, cur + 1, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if ep
            .ejected
            .compare_exchange(false, true, Relaxed, Relaxed)
            .is_err()
        {
            self.ejected.fetch_sub(1, Relaxed);
            return false;
        }
        let times = ep.times_ejected.fetch_add(1, Relaxed) + 1;
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let span = ms(cfg.base_ejection)
            .saturating_mul(u64::from(times))
            .min(ms(cfg.max_ejection).max(ms(cfg.base_ejection)));
        ep.ejected_until.store(now_ms.saturating_add(span), Relaxed);
        ep.consecutive_5xx.store(0, Relaxed);
        ep.consecutive_gateway.store(0, Relaxed);
        ep.consecutive_connect.store(0, Relaxed);
        ep.ejections_total.fetch_add(1, Relaxed);
        self.ejections[reason as usize].fetch_add(1, Relaxed);
        self.bump();
        tracing::warn!(
            cluster = %self.name,
            endpoint = %ep.addr,
            reason = reason.name(),
            ejection_ms = span,
            times,
            "outlier detection ejected an endpoint"
        );
        true
    }

    /// Returns endpoints whose ejection has run out; decays the ejection count of endpoints that
    /// stayed in for `base_ejection`. Run every `outlier.interval`.
    pub fn sweep(&self, now_ms: u64) {
        let Some(cfg) = &self.outlier else { return };
        let base = u64::try_from(cfg.base_ejection.as_millis()).unwrap_or(u64::MAX);
        let mut changed = false;
        for ep in self.endpoints.iter() {
            let until = ep.ejected_until.load(Relaxed);
            if ep.ejected.load(Relaxed) {
                if now_ms >= until
                    && ep
                        .ejected
                        .compare_exchange(true, false, Relaxed, Relaxed)
                        .is_ok()
                {
                    self.ejected.fetch_sub(1, Relaxed);
                    // From now on `ejected_until` marks when it came back.
                    ep.ejected_until.store(now_ms, Relaxed);
                    changed = true;
                    tracing::info!(cluster = %self.name, endpoint = %ep.addr, "ejected endpoint returned");
                }
            } else if ep.times_ejected.load(Relaxed) > 0 && now_ms.saturating_sub(until) >= base {
                ep.times_ejected.fetch_sub(1, Relaxed);
                ep.ejected_until.store(now_ms, Relaxed);
            }
        }
        if changed {
            self.bump();
        }
    }
}

/// The cluster's outlier sweeper (control thread).
pub async fn run_sweeper(shared: Arc<ClusterShared>) {
    let Some(cfg) = shared.outlier else { return };
    let mut every = tokio::time::interval(cfg.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        shared.sweep(crate::timer::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutlierConfig;
    use std::time::Duration;

    fn shared(n: u16, max_pct: u32) -> ClusterShared {
        let (mut cfg, addrs) =
            crate::upstream::balance::tests::config(Default::default(), &vec![(1, 0); n.into()]);
        cfg.outlier = Some(OutlierConfig {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 0,
            consecutive_connect_failures: 2,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejection_percent: max_pct,
        });
        let tel = crate::telemetry::Telemetry::bare(1);
        ClusterShared::simple(&Arc::new(cfg), &addrs, 1, &tel)
    }

    #[test]
    fn consecutive_5xx_ejects_and_a_success_resets_the_run() {
        let s = shared(4, 50);
        s.report(&s.endpoints[0].state.clone(), Outcome::Status(500), 0);
        s.report(&s.endpoints[0].state.clone(), Outcome::Status(500), 0);
        s.report(&s.endpoints[0].state.clone(), Outcome::Status(200), 0);
        s.report(&s.endpoints[0].state.clone(), Outcome::Status(500), 0);
        assert!(!s.report(&s.endpoints[0].state.clone(), Outcome::Status(503), 0));
        assert!(!s.endpoints[0].ejected.load(Relaxed));
        let v = s.version.load(Relaxed);
        // A local failure counts as a 5xx; the report that ejects says so.
        assert!(s.report(&s.endpoints[0].state.clone(), Outcome::Reset, 0));
        assert!(s.endpoints[0].ejected.load(Relaxed));
        assert!(s.version.load(Relaxed) > v, "workers are told");
        assert_eq!(
            s.ejections[EjectReason::Consecutive5xx as usize].load(Relaxed),
            1
        );
        // Client-side failures are not the endpoint's.
        for _ in 0..10 {
            s.report(&s.endpoints[1].state.clone(), Outcome::Final, 0);
        }
        assert!(!s.endpoints[1].ejected.load(Relaxed));
        // Connect failures have their own, shorter run.
        s.report(&s.endpoints[1].state.clone(), Outcome::ConnectFailure, 0);
        s.report(&s.endpoints[1].state.clone(), Outcome::ConnectFailure, 0);
        assert!(s.endpoints[1].ejected.load(Relaxed));
        assert_eq!(
            s.ejections[EjectReason::ConsecutiveConnectFailures as usize].load(Relaxed),
            1
        );
    }

    #[test]
    fn the_ejected_share_is_capped_but_one_can_always_go() {
        let s = shared(4, 10);
        for i in 0..4 {
            for _ in 0..3 {
                s.report(&s.endpoints[i].state.clone(), Outcome::Status(500), 0);
            }
        }
        let ejected = (0..4)
            .filter(|&i| s.endpoints[i].ejected.load(Relaxed))
            .count();
        assert_eq!(ejected, 1);
        assert_eq!(s.ejected.load(Relaxed), 1);
    }

    #[test]
    fn ejections_grow_return_and_decay() {
        let s = shared(2, 100);
        let eject = |at: u64| {
            for _ in 0..3 {
                s.report(&s.endpoints[0].state.clone(), Outcome::Status(502), at);
            }
        };
        eject(0);
        assert_eq!(s.endpoints[0].ejected_until.load(Relaxed), 10_000);
        s.sweep(9_999);
        assert!(s.endpoints[0].ejected.load(Relaxed));
        s.sweep(10_000);
        assert!(!s.endpoints[0].ejected.load(Relaxed), "back after its time");
        assert_eq!(s.ejected.load(Relaxed), 0);
        // Ejected again soon after: twice as long (20s), then capped at max_ejection (25s).
        eject(11_000);
        assert_eq!(s.endpoints[0].ejected_until.load(Relaxed), 31_000);
        s.sweep(31_000);
        eject(32_000);
        assert_eq!(s.endpoints[0].ejected_until.load(Relaxed), 57_000);
        s.sweep(57_000);
        // Staying in for base_ejection earns one back each time.
        assert_eq!(s.endpoints[0].times_ejected.load(Relaxed), 3);
        s.sweep(67_000);
        s.sweep(77_000);
        assert_eq!(s.endpoints[0].times_ejected.load(Relaxed), 1);
    }
}
