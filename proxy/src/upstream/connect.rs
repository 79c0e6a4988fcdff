//! Opening upstream connections: TCP with a connect timeout, then the HTTP/1.1 or HTTP/2 handshake.
//! The connection's driver task runs on the worker's `LocalSet`.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::pool::{H1Conn, H1Sender, H2Sender};
use crate::http::body::ProxyBody;
use crate::http::respond::ProxyError;
use crate::rt::LocalExec;

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

/// A new HTTP/1.1 connection for Weir's own client (see `h1`).
pub async fn h1(addr: SocketAddr, timeout: Duration) -> Result<H1Conn, ProxyError> {
    Ok(H1Conn::new(tcp(addr, timeout).await?))
}

/// A dedicated HTTP/1.1 connection that may be upgraded (WebSocket); never pooled.
pub async fn h1_upgradable(addr: SocketAddr, timeout: Duration) -> Result<H1Sender, ProxyError> {
    let stream = tcp(addr, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake::<_, ProxyBody>(TokioIo::new(stream))
        .await
        .map_err(ProxyError::from_upstream)?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upgradable upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A new HTTP/2 (prior knowledge, h2c) connection.
pub async fn h2(addr: SocketAddr, timeout: Duration) -> Result<H2Sender, ProxyError> {
    let stream = tcp(addr, timeout).await?;
    let (sender, conn) = http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<_, ProxyBody>(TokioIo::new(stream))
        .await
        .map_err(ProxyError::from_upstream)?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream h2 connection ended with an error");
        }
    });
    Ok(sender)
}
