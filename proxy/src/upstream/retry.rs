//! What a retry needs besides the loop in `forward`: which failures a policy retries
//! ([`Outcome`], [`retries_on`]), Linkerd's retry budget ([`RetryBudget`]) and Envoy's backoff
//! with full jitter ([`backoff`]). The replay buffer that lets a request body go out again is a
//! body wrapper ([`crate::proto::body::Replay`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::config::{RetryBudgetConfig, RetryOn, RetryPolicy};
use crate::proto::error::{ProxyError, UpstreamFailure};

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head with this status.
    Status(u16),
    /// The connection could not be made: the request never left.
    ConnectFailure,
    /// An HTTP/2 upstream refused the stream: it never processed the request.
    RefusedStream,
    /// The connection was reset or closed before a response head.
    Reset,
    /// The attempt's response or per-try timeout fired.
    Timeout,
    /// The upstream answered something that is not HTTP.
    Protocol,
    /// Anything else (the client's fault, an overflow, the overall deadline): never retried.
    Final,
}

impl Outcome {
    /// Classifies a failed attempt.
    pub fn of_error(e: &ProxyError) -> Self {
        match e.upstream_failure() {
            Some(UpstreamFailure::ConnectFailure) => Outcome::ConnectFailure,
            Some(UpstreamFailure::RefusedStream) => Outcome::RefusedStream,
            Some(UpstreamFailure::Reset) => Outcome::Reset,
            Some(UpstreamFailure::Timeout) => Outcome::Timeout,
            Some(UpstreamFailure::Protocol) => Outcome::Protocol,
            None => Outcome::Final,
        }
    }

    /// Whether the request provably never reached the upstream (so even a POST may go again).
    pub fn never_sent(self) -> bool {
        matches!(self, Outcome::ConnectFailure | Outcome::RefusedStream)
    }
}

/// Whether `on` retries an attempt that ended with `o`. Local failures count as the 503/504 they
/// are answered with, so `5xx` and `gateway_error` include them (Envoy's semantics).
pub fn retries_on(on: &RetryOn, o: Outcome) -> bool {
    let local = on.server_error || on.gateway_error;
    match o {
        Outcome::ConnectFailure => on.connect_failure || local,
        Outcome::RefusedStream => on.refused_stream || local,
        Outcome::Reset | Outcome::Timeout => on.reset || local,
        Outcome::Protocol => local,
        Outcome::Status(s) => {
            on.statuses.contains(&s)
                || (on.server_error && (500..600).contains(&s))
                || (on.gateway_error && matches!(s, 502..=504))
        }
        Outcome::Final => false,
    }
}

/// The wait before retry number `n` (1-based): Envoy's full jitter, uniform in
/// `[0, base × (2ⁿ − 1)]`, capped at `max`. Whole milliseconds: it is served by the coarse
/// per-worker timer.
pub fn backoff(p: &RetryPolicy, n: u32) -> Duration {
    let base = u64::try_from(p.backoff_base.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let max = u64::try_from(p.backoff_max.as_millis()).unwrap_or(u64::MAX);
    let factor = (1u64 << n.clamp(1, 30)) - 1;
    let upper = base.saturating_mul(factor).min(max);
    Duration::from_millis(fastrand::u64(0..=upper))
}

/// Buckets of the budget's sliding window.
const BUCKETS: u64 = 10;

/// Linkerd's retry budget, shared by every worker of a cluster: over a sliding window of `ttl`,
/// retries may be at most `percent`% of the requests that could retry, plus a reserve of
/// `min_per_second` × `ttl` so that a quiet service can still retry. Retries therefore cannot
/// multiply the load of an outage: at `percent: 20` an upstream sees at most 1.2× the requests.
///
/// The window is ten buckets of `ttl / 10` in a ring, each stamped with the slice of time it
/// counts; a bucket met with an old stamp is reset by whoever claims it. Only requests that
/// might be retried (a policy applies) deposit, and only retries withdraw: a cluster without
/// retries never touches it.
///
/// Aligned to cache lines: every worker writes its buckets, and they must not share a line with
/// the read-mostly cluster state next to them (the balancing version every pick reads).
#[derive(Debug)]
#[repr(align(64))]
pub struct RetryBudget {
    buckets: [Bucket; BUCKETS as usize],
    width_ms: u64,
    ratio: f64,
    reserve: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// The time slice (`now / width + 1`; 0 = never used) this bucket counts.
    slice: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// What `/clusters` shows of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSnapshot {
    pub requests: u64,
    pub retries: u64,
    /// Retries that may still be made in the current window.
    pub available: u64,
}

impl RetryBudget {
    pub fn new(cfg: &RetryBudgetConfig) -> Self {
        let ttl_ms = u64::try_from(cfg.ttl.as_millis()).unwrap_or(u64::MAX);
        Self {
            buckets: Default::default(),
            width_ms: (ttl_ms / BUCKETS).max(1),
            ratio: cfg.percent / 100.0,
            reserve: (f64::from(cfg.min_per_second) * cfg.ttl.as_secs_f64()).round() as u64,
        }
    }

    fn slice(&self, now_ms: u64) -> u64 {
        now_ms / self.width_ms + 1
    }

    /// The current bucket, reset first if it still holds an old slice.
    fn current(&self, now_ms: u64) -> &Bucket {
        let slice = self.slice(now_ms);
        let b = &self.buckets[(slice % BUCKETS) as usize];
        let seen = b.slice.load(Relaxed);
        if seen != slice
            && seen < slice
            && b.slice
                .compare_exchange(seen, slice, Relaxed, Relaxed)
                .is_ok()
        {
            b.requests.store(0, Relaxed);
            b.retries.store(0, Relaxed);
        }
        b
    }

    /// Requests and retries counted in the window ending at `now_ms`.
    fn window(&self, now_ms: u64) -> (u64, u64) {
        let slice = self.slice(now_ms);
        self.buckets
            .iter()
            .filter(|b| {
                let s = b.slice.load(Relaxed);
                s + BUCKETS > slice && s <= slice
            })
            .fold((0, 0), |(rq, rt), b| {
                (rq + b.requests.load(Relaxed), rt + b.retries.load(Relaxed))
            })
    }

    fn allowed(&self, requests: u64) -> u64 {
        self.reserve + (self.ratio * requests as f64) as u64
    }

    /// Counts a request that may be retried.
    pub fn deposit(&self, now_ms: u64) {
        self.current(now_ms).requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self, now_ms: u64) -> bool {
        let b = self.current(now_ms);
        loop {
            // Read this bucket's count before the window: if another worker withdraws in
            // between, the exchange below fails and the check runs again.
            let mine = b.retries.load(Relaxed);
            let (requests, retries) = self.window(now_ms);
            if retries >= self.allowed(requests) {
                return false;
            }
            if b.retries
                .compare_exchange(mine, mine + 1, Relaxed, Relaxed)
                .is_ok()
            {
                return true;
            }
        }
    }

    pub fn snapshot(&self, now_ms: u64) -> BudgetSnapshot {
        let (requests, retries) = self.window(now_ms);
        BudgetSnapshot {
            requests,
            retries,
            available: self.allowed(requests).saturating_sub(retries),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn conditions() {
        let d = RetryOn::default();
        assert!(retries_on(&d, Outcome::ConnectFailure));
        assert!(retries_on(&d, Outcome::Reset));
        assert!(retries_on(&d, Outcome::Timeout));
        assert!(!retries_on(&d, Outcome::Status(503)));
        assert!(!retries_on(&d, Outcome::Final));
        let codes = RetryOn {
            connect_failure: false,
            refused_stream: false,
            reset: false,
            server_error: false,
            gateway_error: false,
            statuses: vec![503, 429],
        };
        assert!(retries_on(&codes, Outcome::Status(429)));
        assert!(!retries_on(&codes, Outcome::Status(500)));
        assert!(!retries_on(&codes, Outcome::ConnectFailure));
        let gw = RetryOn {
            gateway_error: true,
            ..codes.clone()
        };
        assert!(retries_on(&gw, Outcome::Status(502)));
        assert!(!retries_on(&gw, Outcome::Status(500)));
        assert!(retries_on(&gw, Outcome::ConnectFailure));
        let fivexx = RetryOn {
            server_error: true,
            ..codes
        };
        assert!(retries_on(&fivexx, Outcome::Status(500)));
        assert!(retries_on(&fivexx, Outcome::Protocol));
        assert!(Outcome::ConnectFailure.never_sent());
        assert!(!Outcome::Reset.never_sent());
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let p = policy(); // 25ms base, 250ms max
        for _ in 0..200 {
            assert!(backoff(&p, 1) <= Duration::from_millis(25));
            assert!(backoff(&p, 2) <= Duration::from_millis(75));
            assert!(backoff(&p, 9) <= Duration::from_millis(250));
        }
        let seen_high = (0..200).any(|_| backoff(&p, 9) > Duration::from_millis(150));
        assert!(seen_high, "jitter spans the whole range");
    }

    #[test]
    fn budget_allows_percent_plus_reserve_and_slides() {
        let b = RetryBudget::new(&RetryBudgetConfig {
            percent: 20.0,
            min_per_second: 1,
            ttl: Duration::from_secs(10),
        });
        let t = 1_000_000;
        for _ in 0..100 {
            b.deposit(t);
        }
        // 20% of 100 plus 1/s × 10s.
        let granted = (0..100).filter(|_| b.withdraw(t)).count();
        assert_eq!(granted, 30);
        assert_eq!(b.snapshot(t).available, 0);
        // Half a window later the same requests still count; a whole window later nothing does.
        assert!(!b.withdraw(t + 5_000));
        let later = t + 10_000 + 1_000;
        assert_eq!(b.snapshot(later).requests, 0);
        assert_eq!(b.snapshot(later).available, 10);
    }
}
