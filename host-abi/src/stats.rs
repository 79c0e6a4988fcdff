//! Per-filter counters the proxy exports (atomics, shared by every worker's VM of a filter).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one filter. All fields are monotonic except `memory_bytes` (a gauge: the largest
/// linear memory of any of its VMs, last written wins).
#[derive(Debug, Default)]
pub struct FilterStats {
    /// Guest callbacks invoked.
    pub callbacks: AtomicU64,
    /// Total time spent in guest callbacks, in nanoseconds.
    /// (Sampled: one callback in 16 is timed and counted 16 times.)
    pub callback_nanos: AtomicU64,
    /// VM failures by trap (any reason, including deadline and memory).
    pub traps: AtomicU64,
    /// Failures by deadline.
    pub deadline_hits: AtomicU64,
    /// Failures by memory cap.
    pub memory_limit_hits: AtomicU64,
    /// Linear memory size of the most recently measured VM, in bytes.
    pub memory_bytes: AtomicU64,
    /// VMs rebuilt by the `Reload` policy.
    pub vm_rebuilds: AtomicU64,
}

/// A plain copy of [`FilterStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// See [`FilterStats::callbacks`].
    pub callbacks: u64,
    /// See [`FilterStats::callback_nanos`].
    pub callback_nanos: u64,
    /// See [`FilterStats::traps`].
    pub traps: u64,
    /// See [`FilterStats::deadline_hits`].
    pub deadline_hits: u64,
    /// See [`FilterStats::memory_limit_hits`].
    pub memory_limit_hits: u64,
    /// See [`FilterStats::memory_bytes`].
    pub memory_bytes: u64,
    /// See [`FilterStats::vm_rebuilds`].
    pub vm_rebuilds: u64,
}

impl FilterStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            callbacks: self.callbacks.load(Relaxed),
            callback_nanos: self.callback_nanos.load(Relaxed),
            traps: self.traps.load(Relaxed),
            deadline_hits: self.deadline_hits.load(Relaxed),
            memory_limit_hits: self.memory_limit_hits.load(Relaxed),
            memory_bytes: self.memory_bytes.load(Relaxed),
            vm_rebuilds: self.vm_rebuilds.load(Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
