//! One downstream connection: TLS first on a TLS listener, then the protocol — HTTP/1.1 by
//! Weir's own server ([`crate::http::h1`]), HTTP/2 by hyper's (ALPN `h2`, or the prior-knowledge
//! preface on plaintext) — and its end: by the peer, by the header-read or idle timeout, or by a
//! drain.
//!
//! The clocks are coarse on purpose: no timer is armed, moved or polled per request. An HTTP/1.1
//! connection only records its [`Phase`] and bumps an activity counter; the worker's
//! [`Watchdog`] looks at every connection a few times per timeout and aborts those past their
//! limits, and a drain closes the idle ones at once (busy ones end after their current request).
//! HTTP/2 connections, which hyper drives, keep a supervisor of their own (`supervise`) that
//! can send a GOAWAY.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use crate::config::ListenerLimits;
use crate::http::h1::{self, Ended};
use crate::http::service::ProxyService;
use crate::listener::ListenerCtx;
use crate::worker::WorkerCtx;

/// Where a connection is in its life, as its clocks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The TLS handshake (bounded by its own timeout).
    Handshake,
    /// Accepted; not a byte yet (closed at the header-read timeout).
    Fresh,
    /// HTTP/1.1 between requests (closed at the idle timeout).
    Idle,
    /// Reading head number `n` (closed when one head takes longer than the header-read timeout).
    Head(u64),
    /// A request in the service or its response on the way out.
    Busy,
    /// An upgraded tunnel.
    Tunnel,
    /// Served by hyper's HTTP/2 server.
    H2,
}

/// What a connection's protocol code tells its supervisor, and the drain flag it reads back.
pub struct ConnCtl {
    /// Bumped on every read or write that moved bytes; the idle clock compares snapshots.
    activity: Cell<u64>,
    phase: Cell<Phase>,
    draining: Cell<bool>,
    /// The connection's entry in its worker's watchdog.
    key: Cell<usize>,
    /// Bytes read and written so far (telemetry).
    rx: Cell<u64>,
    tx: Cell<u64>,
}

impl Default for ConnCtl {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnCtl {
    pub fn new() -> Self {
        Self {
            activity: Cell::new(0),
            phase: Cell::new(Phase::Fresh),
            draining: Cell::new(false),
            key: Cell::new(usize::MAX),
            rx: Cell::new(0),
            tx: Cell::new(0),
        }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.set(p);
    }

    /// The worker is draining: the current request is the connection's last.
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    fn moved(&self) {
        self.activity.set(self.activity.get().wrapping_add(1));
    }

    /// Bytes read and written on the connection so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.rx.get(), self.tx.get())
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-memory pipe: in-process tests drive a connection without a socket.
    #[cfg(test)]
    Memory(tokio::io::DuplexStream),
}

/// The connection's byte stream (a socket, or TLS over it), counting activity as it goes.
pub struct DownIo {
    stream: Stream,
    ctl: Rc<ConnCtl>,
}

impl AsyncRead for DownIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(test)]
            Stream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        };
        let n = buf.filled().len() - before;
        if n != 0 {
            this.ctl.moved();
            this.ctl.rx.set(this.ctl.rx.get() + n as u64);
        }
        r
    }
}

impl AsyncWrite for DownIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(test)]
            Stream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.ctl.moved();
            this.ctl.tx.set(this.ctl.tx.get() + n as u64);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            #[cfg(test)]
            Stream::Memory(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        };
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.ctl.moved();
            this.ctl.tx.set(this.ctl.tx.get() + n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            #[cfg(test)]
            Stream::Memory(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(test)]
            Stream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(test)]
            Stream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The bytes read while looking for the HTTP/2 preface, replayed to hyper before the socket.
struct Rewind {
    pre: Bytes,
    io: DownIo,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// An accepted connection's byte stream.
pub enum Accepted {
    /// A socket from the listener.
    Tcp(TcpStream),
    /// An in-memory pipe: in-process tests drive a connection without a socket (plaintext).
    #[cfg(test)]
    Memory(tokio::io::DuplexStream),
}

/// Serves one accepted connection until it ends: on a TLS listener, the handshake first (a
/// connection that fails it is closed before any HTTP is read). `ctl` is registered with the
/// worker's watchdog, which may abort this future. (One async fn from the handshake to the
/// end: a nested future would cost a poll frame on every wake-up of the connection.)
pub async fn serve(
    accepted: Accepted,
    peer: SocketAddr,
    worker: Rc<WorkerCtx>,
    listener: Rc<ListenerCtx>,
    mut drain: watch::Receiver<bool>,
    ctl: Rc<ConnCtl>,
) {
    // One arm outside test builds.
    #[allow(clippy::infallible_destructuring_match)]
    let stream = match accepted {
        Accepted::Tcp(s) => s,
        #[cfg(test)]
        Accepted::Memory(m) => {
            let svc = ProxyService::new(worker, listener.clone(), peer, None);
            let io = DownIo {
                stream: Stream::Memory(m),
                ctl: ctl.clone(),
            };
            let _ = h1::serve(io, &svc, &ctl, &listener.h1, false).await;
            return;
        }
    };
    let (stream, tls, alpn_h2) = match listener.tls.clone() {
        None => (Stream::Plain(stream), None, false),
        Some(tls) => match handshake(&ctl, &tls, stream).await {
            Ok((s, info)) => {
                let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                (Stream::Tls(Box::new(s)), Some(Arc::new(info)), h2)
            }
            Err(e) => {
                tracing::debug!(%peer, listener = %listener.name, error = %e, "TLS handshake refused");
                return;
            }
        },
    };
    let io = DownIo {
        stream,
        ctl: ctl.clone(),
    };
    let plaintext = tls.is_none();
    let svc = ProxyService::new(worker, listener.clone(), peer, tls);
    let limits = &listener.limits;
    let (io, pre) = if alpn_h2 {
        (io, Bytes::new())
    } else {
        // HTTP/1.1, unless a plaintext client opens with the HTTP/2 preface.
        ctl.set_phase(Phase::Fresh);
        match h1::serve(io, &svc, &ctl, &listener.h1, plaintext).await {
            Ended::Http2(io, pre) => (io, pre.freeze()),
            Ended::Closed => return,
        }
    };
    ctl.set_phase(Phase::H2);
    let conn = listener
        .h2
        .serve_connection(TokioIo::new(Rewind { pre, io }), svc);
    let wind_down = |c: Pin<&mut _>| hyper::server::conn::http2::Connection::graceful_shutdown(c);
    if let Some(Err(e)) = supervise(conn, &ctl, limits, &mut drain, wind_down).await {
        tracing::debug!(%peer, error = %e, "downstream HTTP/2 connection ended with an error");
    }
}

/// The TLS handshake (boxed: a TLS stream is large, and the plain path should not carry its
/// space).
async fn handshake(
    ctl: &ConnCtl,
    tls: &crate::tls::ServerTls,
    stream: TcpStream,
) -> Result<(TlsStream<TcpStream>, crate::tls::ConnTls), crate::tls::server::HandshakeError> {
    ctl.set_phase(Phase::Handshake);
    Box::pin(tls.accept(stream)).await
}

/// Runs an HTTP/2 connection under its idle clock and the drain signal: no byte either way for
/// the idle timeout, or a drain, sends a GOAWAY (`wind_down`) and lets the streams finish; still
/// idle one period later, it is closed. Returns the future's output, or `None` when it was
/// closed.
async fn supervise<F: Future>(
    conn: F,
    ctl: &ConnCtl,
    limits: &ListenerLimits,
    drain: &mut watch::Receiver<bool>,
    mut wind_down: impl FnMut(Pin<&mut F>),
) -> Option<F::Output> {
    let mut conn = std::pin::pin!(conn);
    let tick = limits.idle_timeout / 4;
    let mut last_seen = ctl.activity.get();
    let mut last_change = Instant::now();
    let mut winding_down = false;
    if *drain.borrow() {
        winding_down = true;
        wind_down(conn.as_mut());
    }
    loop {
        tokio::select! {
            biased;
            out = conn.as_mut() => return Some(out),
            _ = drain.changed(), if !winding_down => {
                winding_down = true;
                wind_down(conn.as_mut());
            }
            _ = tokio::time::sleep(tick) => {
                let now = Instant::now();
                let seen = ctl.activity.get();
                if seen != last_seen {
                    last_seen = seen;
                    last_change = now;
                } else if now - last_change >= limits.idle_timeout {
                    if winding_down {
                        tracing::debug!("closing an idle connection that did not wind down");
                        return None;
                    }
                    tracing::debug!("winding down an idle connection");
                    winding_down = true;
                    last_change = now;
                    wind_down(conn.as_mut());
                }
            }
        }
    }
}

/// One connection as the watchdog follows it.
struct Watched {
    ctl: Rc<ConnCtl>,
    abort: tokio::task::AbortHandle,
    /// The key of the accept loop that accepted it.
    listener: usize,
    header_read_ms: u64,
    idle_ms: u64,
    opened: u64,
    last_seen: u64,
    last_change: u64,
    /// The request head being read, and when the watchdog first saw it.
    head: Option<(u64, u64)>,
}

/// A worker's connection clocks: every connection registered here is checked each tick (a
/// quarter of the shortest timeout of the worker's listeners). All times are `timer::now_ms`.
///
/// A connection that sends nothing within the header-read timeout is closed, as is one whose
/// request head takes longer than that (slowloris, even trickling a byte at a time), and one
/// that moves no byte for the idle timeout (between requests, or stuck mid-response).
#[derive(Default)]
pub struct Watchdog {
    conns: std::cell::RefCell<Vec<Option<Watched>>>,
    free: std::cell::RefCell<Vec<usize>>,
    draining: Cell<bool>,
    /// Milliseconds between two rounds (0 until set: a second).
    tick_ms: Cell<u64>,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

impl Watchdog {
    /// Follows a new connection's task.
    pub fn watch(
        &self,
        ctl: Rc<ConnCtl>,
        abort: tokio::task::AbortHandle,
        limits: &ListenerLimits,
        listener: usize,
    ) {
        let now = crate::timer::now_ms();
        if self.draining.get() {
            ctl.draining.set(true);
        }
        let w = Watched {
            ctl,
            abort,
            listener,
            header_read_ms: ms(limits.header_read_timeout),
            idle_ms: ms(limits.idle_timeout),
            opened: now,
            last_seen: 0,
            last_change: now,
            head: None,
        };
        let mut conns = self.conns.borrow_mut();
        let key = match self.free.borrow_mut().pop() {
            Some(k) => k,
            None => {
                conns.push(None);
                conns.len() - 1
            }
        };
        w.ctl.key.set(key);
        conns[key] = Some(w);
    }

    /// The connection ended.
    pub fn forget(&self, ctl: &ConnCtl) {
        let key = ctl.key.replace(usize::MAX);
        if let Some(slot) = self.conns.borrow_mut().get_mut(key)
            && slot.take().is_some()
        {
            self.free.borrow_mut().push(key);
        }
    }

    /// One round of checks.
    fn check(&self) {
        let now = crate::timer::now_ms();
        for w in self.conns.borrow_mut().iter_mut().flatten() {
            let seen = w.ctl.activity.get();
            if seen != w.last_seen {
                w.last_seen = seen;
                w.last_change = now;
            }
            let idle = now.saturating_sub(w.last_change) >= w.idle_ms;
            let close = match w.ctl.phase.get() {
                Phase::Fresh => now.saturating_sub(w.opened) >= w.header_read_ms,
                Phase::Head(n) => match w.head {
                    Some((m, since)) if m == n => now.saturating_sub(since) >= w.header_read_ms,
                    _ => {
                        w.head = Some((n, now));
                        false
                    }
                },
                Phase::Idle | Phase::Busy | Phase::Tunnel => idle,
                // Bounded by its own timeout; HTTP/2 has its own supervisor.
                Phase::Handshake | Phase::H2 => false,
            };
            if close {
                tracing::debug!(phase = ?w.ctl.phase.get(), "closing a connection past its timeout");
                w.abort.abort();
            }
        }
    }

    /// The worker drains: idle connections close now, busy ones after their current request.
    pub fn drain(&self) {
        self.draining.set(true);
        for w in self.conns.borrow().iter().flatten() {
            w.ctl.draining.set(true);
            if matches!(
                w.ctl.phase.get(),
                Phase::Fresh | Phase::Idle | Phase::Handshake
            ) {
                w.abort.abort();
            }
        }
    }

    /// The accept loop `id` stopped (its listener removed or moved): its idle connections close
    /// now, busy ones after their current request.
    pub fn drain_listener(&self, id: usize) {
        for w in self.conns.borrow().iter().flatten() {
            if w.listener == id {
                w.ctl.draining.set(true);
                if matches!(
                    w.ctl.phase.get(),
                    Phase::Fresh | Phase::Idle | Phase::Handshake
                ) {
                    w.abort.abort();
                }
            }
        }
    }

    /// Closes every connection of accept loop `id` that is still open (its drain time is up).
    pub fn abort_listener(&self, id: usize) {
        for w in self.conns.borrow().iter().flatten() {
            if w.listener == id {
                w.abort.abort();
            }
        }
    }

    /// Connections of accept loop `id` open now.
    pub fn open_on(&self, id: usize) -> usize {
        self.conns
            .borrow()
            .iter()
            .flatten()
            .filter(|w| w.listener == id)
            .count()
    }

    /// Sets the time between two rounds (a quarter of the shortest timeout of the listeners
    /// this worker serves now; the next round uses it).
    pub fn set_tick(&self, tick: std::time::Duration) {
        self.tick_ms.set(ms(tick).max(1));
    }

    /// Runs the checks every tick until the worker ends.
    pub async fn run(self: Rc<Self>) {
        loop {
            let tick = match self.tick_ms.get() {
                0 => std::time::Duration::from_secs(1),
                ms => std::time::Duration::from_millis(ms),
            };
            tokio::time::sleep(tick).await;
            self.check();
        }
    }
}
