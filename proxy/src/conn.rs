//! One downstream connection: the byte stream (with activity tracking and the HTTP/1.1 framing
//! watcher), hyper's HTTP/1.1 + HTTP/2 server on it, and its end — by the peer, by the idle or
//! first-byte timeout, or by a drain.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http::framing::FramingWatcher;
use crate::http::service::ProxyService;
use crate::listener::ListenerCtx;
use crate::tls::ConnTls;
use crate::worker::WorkerCtx;

/// What the connection's byte stream tells the request layer. `Sync` only because hyper's
/// upgrade support needs a `Send` socket type: every access is from the worker's one thread, so
/// the lock is never contended.
pub struct ConnState {
    /// Bumped on every read or write that moved bytes; the idle timer compares snapshots.
    activity: AtomicU64,
    framing: Mutex<FramingTrack>,
}

struct FramingTrack {
    watcher: FramingWatcher,
    /// Request heads the watcher has seen.
    heads: u64,
    /// Requests handed to the service so far.
    served: u64,
    /// 1 + index of the first head with both `Content-Length` and `Transfer-Encoding` (0: none).
    /// The connection is closed after that request, so one slot is enough.
    first_conflict: u64,
}

impl FramingTrack {
    fn absorb_verdicts(&mut self) {
        while let Some(conflict) = self.watcher.pop_verdict() {
            self.heads += 1;
            if conflict && self.first_conflict == 0 {
                self.first_conflict = self.heads;
            }
        }
    }
}

/// What the framing watcher says about the request the service is about to handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Its head was seen and is unambiguous.
    Clean,
    /// Its head carried both `Content-Length` and `Transfer-Encoding`.
    Conflicting,
    /// The watcher could not follow the byte stream up to this request (a head it could not
    /// parse, too much data after an upgrade request): serve it, then close — fail closed rather
    /// than serve later requests on a stream nobody checked.
    Unwatched,
}

impl ConnState {
    fn new() -> Self {
        Self {
            activity: AtomicU64::new(0),
            framing: Mutex::new(FramingTrack {
                watcher: FramingWatcher::default(),
                heads: 0,
                served: 0,
                first_conflict: 0,
            }),
        }
    }

    fn track(&self) -> std::sync::MutexGuard<'_, FramingTrack> {
        self.framing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bytes_read(&self, data: &[u8]) {
        self.activity
            .store(self.activity.load(Relaxed) + 1, Relaxed);
        let mut t = self.track();
        if t.watcher.is_on() {
            t.watcher.feed(data);
            t.absorb_verdicts();
        }
    }

    fn bytes_written(&self) {
        self.activity
            .store(self.activity.load(Relaxed) + 1, Relaxed);
    }

    /// Called once per HTTP/1 request, in order; also returns the request's index.
    pub fn framing_of_next_request(&self) -> (Framing, u64) {
        let mut t = self.track();
        let index = t.served;
        t.served += 1;
        let f = if t.first_conflict == index + 1 {
            Framing::Conflicting
        } else if !t.watcher.is_on() || t.heads <= index {
            Framing::Unwatched
        } else {
            Framing::Clean
        };
        (f, index)
    }

    /// Request `index` was answered without switching protocols: if its head asked for an
    /// upgrade, what followed it are requests, which the watcher now reads.
    pub fn not_upgraded(&self, index: u64) {
        let mut t = self.track();
        if t.watcher.awaits_upgrade() && t.heads == index + 1 {
            t.watcher.resume();
            t.absorb_verdicts();
        }
    }
}

/// The byte stream (a socket, or TLS over it), seen through [`ConnState`].
struct ConnIo<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.state.bytes_read(new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.state.bytes_written();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.state.bytes_written();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves one accepted connection until it ends: on a TLS listener, the handshake first (a
/// connection that fails it is closed before any HTTP is read).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    worker: Rc<WorkerCtx>,
    listener: Rc<ListenerCtx>,
    drain: watch::Receiver<bool>,
) {
    let Some(tls) = listener.tls.clone() else {
        return serve_http(stream, None, peer, worker, listener, drain).await;
    };
    // Boxed: a TLS stream is large, and the plain path should not carry its space.
    match Box::pin(tls.accept(stream)).await {
        Ok((stream, info)) => {
            serve_http(stream, Some(Arc::new(info)), peer, worker, listener, drain).await;
        }
        Err(e) => {
            tracing::debug!(%peer, listener = %listener.name, error = %e, "TLS handshake refused");
        }
    }
}

async fn serve_http<S>(
    stream: S,
    tls: Option<Arc<ConnTls>>,
    peer: SocketAddr,
    worker: Rc<WorkerCtx>,
    listener: Rc<ListenerCtx>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(ConnIo {
        inner: stream,
        state: state.clone(),
    });
    let svc = ProxyService::new(worker, listener.clone(), state.clone(), peer, tls);
    let conn = listener.http.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);

    let limits = &listener.limits;
    // Two clocks: a client that sends nothing at all within the header-read timeout is dropped
    // (hyper's own header timer starts only once it knows the protocol), and a connection that
    // moves no byte for the idle timeout is closed gracefully (forcibly one idle period later).
    let start = Instant::now();
    let tick = limits.header_read_timeout.min(limits.idle_timeout) / 4;
    let mut last_seen = 0;
    let mut last_change = start;
    let mut closing = *drain.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "downstream connection ended with an error");
                }
                return;
            }
            _ = drain.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(tick) => {
                let now = Instant::now();
                let seen = state.activity.load(Relaxed);
                if seen != last_seen {
                    last_seen = seen;
                    last_change = now;
                } else if seen == 0 && now - start >= limits.header_read_timeout {
                    tracing::debug!(%peer, "closing a connection that sent nothing");
                    return;
                } else if seen != 0 && now - last_change >= limits.idle_timeout {
                    if closing {
                        tracing::debug!(%peer, "closing an idle connection that did not wind down");
                        return;
                    }
                    tracing::debug!(%peer, "closing an idle connection");
                    closing = true;
                    last_change = now;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
