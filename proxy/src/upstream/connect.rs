//! Opening upstream connections: TCP with a connect timeout, the cluster's TLS handshake when it
//! has one (the same timeout covers both), then the HTTP/1.1 or HTTP/2 handshake. The
//! connection's driver task runs on the worker's `LocalSet`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Cluster;
use super::breaker::ConnCount;
use super::pool::{H1Conn, H1Sender, H2Sender};
use crate::proto::body::ProxyBody;
use crate::proto::error::ProxyError;
use crate::rt::LocalExec;

/// An upstream byte stream: plain TCP, or TLS over it.
pub enum UpstreamIo {
    Plain(TcpStream),
    /// Boxed: a TLS session is large and plain connections should not carry its space.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl UpstreamIo {
    /// Read and write halves, so a request body can stream while the response is read. Plain TCP
    /// splits without a lock, and dropping its write half sends FIN (the upstream sees the
    /// request end even when the body pump is abandoned); TLS shares the session between them.
    pub fn split(self) -> (UpstreamRead, UpstreamWrite) {
        match self {
            UpstreamIo::Plain(s) => {
                let (r, w) = s.into_split();
                (UpstreamRead::Plain(r), UpstreamWrite::Plain(w))
            }
            UpstreamIo::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (UpstreamRead::Tls(r), UpstreamWrite::Tls(w))
            }
        }
    }

    /// The halves of one [`UpstreamIo::split`] back together.
    pub fn unsplit(r: UpstreamRead, w: UpstreamWrite) -> Option<UpstreamIo> {
        match (r, w) {
            (UpstreamRead::Plain(r), UpstreamWrite::Plain(w)) => {
                r.reunite(w).ok().map(UpstreamIo::Plain)
            }
            (UpstreamRead::Tls(r), UpstreamWrite::Tls(w)) if r.is_pair_of(&w) => {
                Some(UpstreamIo::Tls(Box::new(r.unsplit(w))))
            }
            _ => None,
        }
    }
}

/// The read half of a split [`UpstreamIo`].
pub enum UpstreamRead {
    Plain(tokio::net::tcp::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The write half of a split [`UpstreamIo`].
pub enum UpstreamWrite {
    Plain(tokio::net::tcp::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamRead::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamRead::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamWrite::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamWrite::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamWrite::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamWrite::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamWrite::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamWrite::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// TCP connect bounded by `timeout`; `TCP_NODELAY` on.
pub async fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ProxyError::ConnectTimeout(addr)),
        Ok(Err(source)) => Err(ProxyError::ConnectFailure { addr, source }),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// A connected stream to `addr`: TCP, then the cluster's TLS handshake (which checks the
/// upstream's identity) within what is left of the connect timeout.
pub async fn stream(cluster: &Cluster, addr: SocketAddr) -> Result<UpstreamIo, ProxyError> {
    let start = Instant::now();
    let s = tcp(addr, cluster.connect_timeout).await?;
    let Some(tls) = &cluster.tls else {
        return Ok(UpstreamIo::Plain(s));
    };
    let left = cluster.connect_timeout.saturating_sub(start.elapsed());
    match tokio::time::timeout(left, tls.connect(s, addr)).await {
        Err(_) => Err(ProxyError::ConnectTimeout(addr)),
        Ok(Err(source)) => {
            tracing::debug!(%addr, cluster = %cluster.name, error = %source, "upstream TLS handshake failed");
            Err(ProxyError::ConnectFailure { addr, source })
        }
        Ok(Ok(s)) => Ok(UpstreamIo::Tls(Box::new(s))),
    }
}

/// A new HTTP/1.1 connection for Weir's own client (see `h1`).
pub async fn h1(cluster: &Cluster, addr: SocketAddr) -> Result<H1Conn, ProxyError> {
    let io = stream(cluster, addr).await?;
    Ok(H1Conn::new(io, ConnCount::new(&cluster.stats)))
}

/// A dedicated HTTP/1.1 connection that may be upgraded (WebSocket); never pooled.
pub async fn h1_upgradable(cluster: &Cluster, addr: SocketAddr) -> Result<H1Sender, ProxyError> {
    let stream = stream(cluster, addr).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake::<_, ProxyBody>(TokioIo::new(stream))
        .await
        .map_err(ProxyError::from_upstream)?;
    let count = ConnCount::new(&cluster.stats);
    tokio::task::spawn_local(async move {
        let _count = count;
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upgradable upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A new HTTP/2 connection (prior knowledge on plain TCP, ALPN `h2` over TLS).
pub async fn h2(cluster: &Cluster, addr: SocketAddr) -> Result<H2Sender, ProxyError> {
    let stream = stream(cluster, addr).await?;
    let (sender, conn) = http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<_, ProxyBody>(TokioIo::new(stream))
        .await
        .map_err(ProxyError::from_upstream)?;
    let count = ConnCount::new(&cluster.stats);
    tokio::task::spawn_local(async move {
        let _count = count;
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream h2 connection ended with an error");
        }
    });
    Ok(sender)
}
