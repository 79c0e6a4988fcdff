//! Callback deadlines on top of wasmtime's epoch interruption.
//!
//! The epoch ticker measures wall time, but on a loaded machine a worker thread can be descheduled
//! for longer than a 10 ms budget while a well-behaved callback is running; killing the filter then
//! would turn CPU contention into 503s. So when a callback's wall-clock deadline passes, the epoch
//! callback reads the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`; read only in this rare case,
//! never per callback) and extends the deadline one budget at a time until the guest
//! has *consumed* a full budget of CPU since the first expiry. A spinning guest is therefore
//! stopped after about two budgets of wall time (more if it was itself starved), and never later
//! than [`MAX_EXTENSIONS`] extra budgets. Where thread CPU time is unavailable the deadline is
//! plain wall time.

use std::time::Duration;

use wasmtime::UpdateDeadline;

use crate::state::HostState;

/// Hard cap on extensions: a callback never runs longer than `(1 + MAX_EXTENSIONS) × budget` of
/// wall time, whatever the scheduler does.
pub(crate) const MAX_EXTENSIONS: u32 = 50;

/// Per-callback deadline bookkeeping (reset before every callback; cheap field writes only).
#[derive(Debug, Default)]
pub(crate) struct DeadlineState {
    ticks: u64,
    budget: Duration,
    extensions: u32,
    /// Thread CPU time at the first expiry.
    cpu_at_expiry: Option<u64>,
}

impl DeadlineState {
    pub(crate) fn arm(&mut self, ticks: u64, budget: Duration) {
        self.ticks = ticks;
        self.budget = budget;
        self.extensions = 0;
        self.cpu_at_expiry = None;
    }
}

/// The thread's on-CPU time in nanoseconds, if the OS tells us. The POSIX thread CPU clock is
/// exact; `/proc/thread-self/schedstat`, read before, lags by up to a scheduler tick.
fn thread_cpu_nanos() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(t.tv_nsec).ok()?)
}

/// Decides, when the epoch deadline is reached, whether the guest really overran its budget.
pub(crate) fn on_expiry(st: &mut HostState) -> UpdateDeadline {
    let d = &mut st.deadline;
    if d.extensions >= MAX_EXTENSIONS {
        return UpdateDeadline::Interrupt;
    }
    let Some(cpu) = thread_cpu_nanos() else {
        return UpdateDeadline::Interrupt;
    };
    match d.cpu_at_expiry {
        None => d.cpu_at_expiry = Some(cpu),
        Some(start) if cpu.saturating_sub(start) >= d.budget.as_nanos() as u64 => {
            return UpdateDeadline::Interrupt;
        }
        Some(_) => {}
    }
    d.extensions += 1;
    UpdateDeadline::Continue(d.ticks)
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_cpu_time_is_readable_and_monotonic_on_linux() {
        if cfg!(target_os = "linux") {
            let a = super::thread_cpu_nanos().expect("thread CPU clock");
            let mut x = 0u64;
            for i in 0..1_000_000u64 {
                x = x.wrapping_add(i * i);
            }
            std::hint::black_box(x);
            let b = super::thread_cpu_nanos().unwrap();
            assert!(b > a);
        }
    }
}
