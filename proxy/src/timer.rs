//! Per-worker coarse time: a millisecond clock, and deadlines that cost no timer-wheel
//! registration.
//!
//! Every proxied request waits for its upstream under a timeout, and nearly every one is answered
//! long before it. A tokio `Sleep` per request means a clock read, a lock and a wheel insertion
//! when armed and another lock and removal when dropped — measured at about 1% of Weir's CPU per
//! request. Here a deadline is a slot pushed on a per-worker FIFO queue, one queue per distinct
//! duration (so each queue stays sorted), and dropping it only marks it cancelled. One driver task
//! per worker sleeps until the earliest live deadline and fires those that are due. Cancelled
//! slots are popped where they meet an end of a queue, and once they are half of all slots the
//! queues are compacted, so they hold at most about twice as many slots as there are deadlines
//! alive. Resolution is a millisecond plus one of tokio's timer: enough for request timeouts,
//! not for sub-millisecond ones.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Milliseconds since the process's first call: one monotonic clock read (vDSO), kept as a plain
/// integer so deadlines and idle stamps compare and store cheaply.
pub fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(std::time::Instant::now);
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX / 4)
}

/// One deadline's shared state.
struct Slot {
    at: u64,
    fired: Cell<bool>,
    cancelled: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

#[derive(Default)]
struct Timers {
    /// `(duration in ms, its deadlines in order)`.
    queues: Vec<(u64, VecDeque<Rc<Slot>>)>,
    /// Slots in the queues, and how many of them are cancelled.
    len: usize,
    dead: usize,
    /// The driver task, and the deadline it sleeps until (`None`: it waits for a registration).
    driver: Option<Waker>,
    armed: Option<u64>,
}

thread_local! {
    static TIMERS: RefCell<Timers> = RefCell::new(Timers::default());
    /// Cancellations not yet counted in `Timers::dead` (a drop never borrows the queues).
    static CANCELLED: Cell<usize> = const { Cell::new(0) };
}

impl Timers {
    fn register(&mut self, dur: u64, slot: Rc<Slot>) {
        let at = slot.at;
        let q = match self.queues.iter().position(|(d, _)| *d == dur) {
            Some(i) => &mut self.queues[i].1,
            None => {
                self.queues.push((dur, VecDeque::new()));
                &mut self.queues.last_mut().expect("just pushed").1
            }
        };
        // Most requests finish in order: their cancelled slots are at the ends.
        let mut popped = 0;
        while q.front().is_some_and(|s| s.cancelled.get()) {
            q.pop_front();
            popped += 1;
        }
        while q.back().is_some_and(|s| s.cancelled.get()) {
            q.pop_back();
            popped += 1;
        }
        q.push_back(slot);
        self.len = self.len + 1 - popped;
        self.dead = (self.dead + CANCELLED.replace(0)).saturating_sub(popped);
        if self.len > 64 && self.dead * 2 > self.len {
            for (_, q) in &mut self.queues {
                q.retain(|s| !s.cancelled.get());
            }
            self.len = self.queues.iter().map(|(_, q)| q.len()).sum();
            self.dead = 0;
        }
        if self.armed.is_none_or(|a| at < a)
            && let Some(w) = &self.driver
        {
            w.wake_by_ref();
        }
    }

    /// Fires every deadline due at `now`; returns the earliest one still pending.
    fn fire_due(&mut self, now: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        self.dead += CANCELLED.replace(0);
        for (_, q) in &mut self.queues {
            while let Some(front) = q.front() {
                if front.cancelled.get() {
                    q.pop_front();
                    self.len -= 1;
                    self.dead = self.dead.saturating_sub(1);
                } else if front.at <= now {
                    let s = q.pop_front().expect("front exists");
                    self.len -= 1;
                    s.fired.set(true);
                    if let Some(w) = s.waker.borrow_mut().take() {
                        w.wake();
                    }
                } else {
                    next = Some(next.map_or(front.at, |n| n.min(front.at)));
                    break;
                }
            }
        }
        self.queues.retain(|(_, q)| !q.is_empty());
        next
    }
}

/// Completes `dur` after it is first polled (see the module docs for its resolution).
pub fn deadline(dur: Duration) -> Deadline {
    Deadline {
        dur: u64::try_from(dur.as_millis()).unwrap_or(u64::MAX / 4),
        slot: None,
    }
}

/// A per-worker deadline; poll it on the worker that made it.
pub struct Deadline {
    dur: u64,
    slot: Option<Rc<Slot>>,
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let slot = match &this.slot {
            Some(s) => s,
            None => {
                let s = Rc::new(Slot {
                    at: now_ms().saturating_add(this.dur),
                    fired: Cell::new(false),
                    cancelled: Cell::new(false),
                    waker: RefCell::new(Some(cx.waker().clone())),
                });
                TIMERS.with(|t| t.borrow_mut().register(this.dur, s.clone()));
                this.slot.insert(s)
            }
        };
        if slot.fired.get() {
            return Poll::Ready(());
        }
        let mut w = slot.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(s) = &self.slot
            && !s.fired.get()
        {
            s.cancelled.set(true);
            CANCELLED.set(CANCELLED.get() + 1);
        }
    }
}

/// The worker's timer driver: sleeps until the earliest deadline, fires what is due.
pub async fn run_driver() {
    let mut sleep = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
    std::future::poll_fn(|cx| {
        TIMERS.with(|t| {
            let mut t = t.borrow_mut();
            if !t.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                t.driver = Some(cx.waker().clone());
            }
            loop {
                let now = now_ms();
                let Some(next) = t.fire_due(now) else {
                    t.armed = None;
                    return Poll::Pending;
                };
                if t.armed != Some(next) {
                    t.armed = Some(next);
                    // `now_ms` truncates; one extra millisecond keeps the driver from waking just
                    // before its deadline is due.
                    let wait = Duration::from_millis(next - now + 1);
                    sleep.as_mut().reset(tokio::time::Instant::now() + wait);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                t.armed = None;
            }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    fn local<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn deadlines_fire_in_time_and_cancelled_ones_never() {
        local(async {
            tokio::task::spawn_local(run_driver());
            let t0 = std::time::Instant::now();
            // A long one first: a shorter deadline registered later must re-arm the driver.
            let mut long = deadline(Duration::from_secs(30));
            assert!(poll_once(&mut long).await.is_pending());
            deadline(Duration::from_millis(50)).await;
            let waited = t0.elapsed();
            assert!(waited >= Duration::from_millis(40), "{waited:?}");
            assert!(waited < Duration::from_secs(5), "{waited:?}");
            assert!(poll_once(&mut long).await.is_pending());
            // Cancelled slots leave the queues as they are walked.
            for _ in 0..1000 {
                let mut d = deadline(Duration::from_secs(30));
                assert!(poll_once(&mut d).await.is_pending());
            }
            let queued: usize =
                TIMERS.with(|t| t.borrow().queues.iter().map(|(_, q)| q.len()).sum());
            assert!(queued <= 2, "{queued} slots kept");
            // Live deadlines in between keep cancelled ones from the ends; compaction bounds
            // them anyway.
            let mut live = Vec::new();
            for i in 0..2000 {
                let mut d = deadline(Duration::from_secs(30));
                assert!(poll_once(&mut d).await.is_pending());
                if i % 10 == 0 {
                    live.push(d);
                }
            }
            let queued: usize =
                TIMERS.with(|t| t.borrow().queues.iter().map(|(_, q)| q.len()).sum());
            assert!(
                queued <= 2 * (live.len() + 2) + 64,
                "{queued} slots kept for {} live",
                live.len()
            );
        });
    }

    #[test]
    fn the_coarse_clock_moves() {
        let a = now_ms();
        std::thread::sleep(Duration::from_millis(30));
        let b = now_ms();
        assert!(b >= a + 10, "{a} -> {b}");
    }
}
