//! Per-worker, per-endpoint connection pools.
//!
//! HTTP/1.1: a LIFO stack of idle connections (the most recently used is the warmest and the least
//! likely to have been closed by the peer), capped at `max_idle`, entries older than `idle_timeout`
//! dropped when met. A connection goes back only when its response body was read to the end
//! ([`ResponseGuard::complete`]); a connection abandoned mid-response is closed instead.
//! HTTP/2: one shared multiplexed connection per endpoint, replaced when it closes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use hyper::client::conn::{http1, http2};

use super::Endpoint;
use crate::proto::body::{EndpointLoad, InFlight, ProxyBody};

pub use super::h1::H1Conn;
/// A hyper HTTP/1.1 connection (used for upgrades, never pooled).
pub type H1Sender = http1::SendRequest<ProxyBody>;
/// A multiplexed HTTP/2 connection.
pub type H2Sender = http2::SendRequest<ProxyBody>;

/// One endpoint's pooled connections on one worker.
pub struct Pool {
    /// Idle connections with the coarse time (`timer::now_ms`) they went idle.
    idle: RefCell<VecDeque<(H1Conn, u64)>>,
    h2: RefCell<Option<H2Sender>>,
    max_idle: usize,
    idle_timeout: Duration,
    idle_ms: u64,
    /// Its endpoint is draining (or gone unhealthy by its source): nothing is pooled.
    closed: Cell<bool>,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: RefCell::new(VecDeque::new()),
            h2: RefCell::new(None),
            max_idle,
            idle_timeout,
            idle_ms: u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX),
            closed: Cell::new(false),
        }
    }

    /// Closes the idle connections and pools no more (the endpoint is draining); connections
    /// in use finish their requests and then close.
    pub fn close(&self) {
        self.closed.set(true);
        self.idle.borrow_mut().clear();
        *self.h2.borrow_mut() = None;
    }

    /// Pools again (the endpoint is back to healthy).
    pub fn reopen(&self) {
        self.closed.set(false);
    }

    /// Idle HTTP/1.1 connections held now.
    pub fn idle_len(&self) -> usize {
        self.idle.borrow().len()
    }

    /// The warmest idle HTTP/1.1 connection that is still open, if any.
    pub fn checkout_h1(&self) -> Option<H1Conn> {
        let mut idle = self.idle.borrow_mut();
        let now = crate::timer::now_ms();
        while let Some((mut s, since)) = idle.pop_back() {
            if now.saturating_sub(since) < self.idle_ms && s.is_usable() {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection whose last response was fully read.
    pub fn checkin_h1(&self, s: H1Conn) {
        if self.max_idle == 0 || self.closed.get() {
            return;
        }
        let now = crate::timer::now_ms();
        let mut idle = self.idle.borrow_mut();
        // The front holds the oldest: drop the stale there.
        while let Some((_, since)) = idle.front() {
            if now.saturating_sub(*since) >= self.idle_ms {
                idle.pop_front();
            } else {
                break;
            }
        }
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back((s, now));
    }

    /// Drops idle connections that have been idle too long or were closed by the peer. `now`
    /// is `timer::now_ms`.
    pub fn evict_stale(&self, now: u64) {
        self.idle
            .borrow_mut()
            .retain_mut(|(s, since)| now.saturating_sub(*since) < self.idle_ms && s.is_usable());
    }

    /// The pool's idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The shared HTTP/2 connection, if one is open.
    pub fn h2(&self) -> Option<H2Sender> {
        let mut slot = self.h2.borrow_mut();
        match &*slot {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// Stores a freshly opened HTTP/2 connection for the next requests.
    pub fn set_h2(&self, s: H2Sender) {
        if self.closed.get() {
            return;
        }
        *self.h2.borrow_mut() = Some(s);
    }
}

/// Held from the moment a request is sent to an endpoint until its response body ends: counts the
/// request as active (least-request balancing, the `max_requests` breaker, statistics) and hands
/// a clean HTTP/1.1 connection back.
pub struct ResponseGuard {
    ep: Rc<Endpoint>,
    conn: Option<H1Conn>,
    /// Ends the request at the endpoint when dropped.
    active: InFlight,
}

impl ResponseGuard {
    /// Marks a request to `ep` as in flight.
    pub fn new(ep: Rc<Endpoint>) -> Self {
        ep.begin();
        let active = InFlight::new(ep.clone());
        Self {
            ep,
            conn: None,
            active,
        }
    }

    /// What an HTTP/2 response body holds until it ends: no connection to hand back, only the
    /// request to end at the endpoint.
    pub fn into_in_flight(self) -> InFlight {
        self.active
    }

    /// Attaches the HTTP/1.1 connection to return when the response completes.
    pub fn set_h1(&mut self, c: H1Conn) {
        self.conn = Some(c);
    }

    /// The response was read to its end: the connection may serve another request.
    pub fn complete(mut self) {
        if let Some(s) = self.conn.take() {
            self.ep.pool.checkin_h1(s);
        }
    }
}

impl EndpointLoad for Endpoint {
    fn end(&self) {
        Endpoint::end(self);
    }
}
