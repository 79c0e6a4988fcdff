//! Circuit breakers: cluster-wide limits on connections, pending requests, active requests and
//! active retries. Past a limit a request gets a fast 503 `upstream_overflow` (a retry is simply
//! not made).
//!
//! The limits are cluster-wide, but the counts live in per-worker shards ([`WorkerStats`]) so the
//! request path touches no shared cache line: a worker below its fair share (`limit / workers`)
//! admits at once; only above it does it sum every worker's shard. Under skewed load the total
//! can pass the limit by at most one per other worker (a worker that used the sum to go past its
//! share does not stop another from taking its own); with one worker it is exact.

use std::sync::Arc;

use super::Cluster;
use super::shared::{Local, Resource, WorkerStats};
use crate::proto::error::ProxyError;

impl Cluster {
    /// Admits one more unit of `r`, or counts the overflow and says no.
    pub fn admit(&self, r: Resource) -> Result<(), ProxyError> {
        if self.has_room(r) {
            return Ok(());
        }
        self.stats.overflow[r as usize].inc();
        if r != Resource::Retries {
            crate::telemetry::upstream_overflow(self.metrics);
        }
        Err(ProxyError::Overflow(r))
    }

    fn has_room(&self, r: Resource) -> bool {
        let limit = r.limit(&self.shared.limits);
        let mine = self.stats.gauge(r).get();
        let workers = self.shared.workers.len() as u64;
        (mine + 1).saturating_mul(workers) <= limit || self.shared.sum(|w| w.gauge(r)) < limit
    }
}

/// Holds one unit of a per-worker gauge (pending requests, active retries) while alive.
pub struct Held<'a>(&'a Local);

impl<'a> Held<'a> {
    pub fn new(g: &'a Local) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts one open upstream connection for as long as it lives (it travels with the
/// connection: pooled, in use, or inside an HTTP/2 or tunnel task).
pub struct ConnCount(Arc<WorkerStats>);

impl ConnCount {
    pub fn new(stats: &Arc<WorkerStats>) -> Self {
        stats.cx_active.inc();
        Self(stats.clone())
    }
}

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.0.cx_active.dec();
    }
}
