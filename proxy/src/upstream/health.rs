//! Active health checks: one checker task per cluster, on the control thread, probes every
//! endpoint every `interval` (the first round at start-up) and flips the
//! endpoint's shared `healthy` flag after `unhealthy_threshold` failures or `healthy_threshold`
//! passes in a row. Workers see the change through the cluster's version and rebuild their
//! balancing view (unhealthy endpoints are skipped, and priority levels fail over).
//!
//! One checker for the process, not one per worker: an upstream sees one probe per interval
//! however many workers Weir runs, every worker agrees on an endpoint's health at once, and the
//! probes never share a worker's event loop with requests. Endpoints start healthy (a new
//! process serves at once rather than waiting out the first round).
//!
//! A probe is its own connection (plain or the cluster's TLS), bounded by `timeout` as a whole.
//! An HTTP check sends `GET <path>` on it (HTTP/1.1 with `connection: close` or HTTP/2 per the
//! cluster's protocol) and a 2xx passes; a TCP check passes once the connection (and the TLS
//! handshake) is made. Anything else (another status, refused, reset, timeout) fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::shared::{ClusterShared, EndpointShared};
use crate::config::{HealthCheckConfig, HealthCheckKind, Protocol};
use crate::tls::ClientTls;

/// Probes a cluster's endpoints until the process exits.
pub async fn run(
    shared: Arc<ClusterShared>,
    cfg: HealthCheckConfig,
    protocol: Protocol,
    tls: Option<Arc<ClientTls>>,
) {
    let mut every = tokio::time::interval(cfg.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let probes = shared
            .endpoints
            .iter()
            .map(|ep| probe(ep.addr, &cfg, protocol, tls.as_deref()));
        let results = futures_util::future::join_all(probes).await;
        for (ep, result) in shared.endpoints.iter().zip(results) {
            record(&shared, ep, &cfg, result);
        }
    }
}

/// Applies one probe's result to an endpoint's streaks and health.
fn record(
    shared: &ClusterShared,
    ep: &EndpointShared,
    cfg: &HealthCheckConfig,
    result: Result<(), String>,
) {
    match result {
        Ok(()) => {
            shared.hc_success.fetch_add(1, Relaxed);
            ep.hc_streak_failures.store(0, Relaxed);
            let n = ep.hc_streak_successes.fetch_add(1, Relaxed) + 1;
            if n >= cfg.healthy_threshold && !ep.healthy.swap(true, Relaxed) {
                shared.bump();
                tracing::info!(cluster = %shared.name, endpoint = %ep.addr, "health check: endpoint healthy");
            }
        }
        Err(why) => {
            shared.hc_failure.fetch_add(1, Relaxed);
            ep.hc_streak_successes.store(0, Relaxed);
            let n = ep.hc_streak_failures.fetch_add(1, Relaxed) + 1;
            tracing::debug!(cluster = %shared.name, endpoint = %ep.addr, failures = n, why, "health check failed");
            if n >= cfg.unhealthy_threshold && ep.healthy.swap(false, Relaxed) {
                shared.bump();
                tracing::warn!(cluster = %shared.name, endpoint = %ep.addr, why, "health check: endpoint unhealthy");
            }
        }
    }
}

/// One probe: passed, or why not.
async fn probe(
    addr: SocketAddr,
    cfg: &HealthCheckConfig,
    protocol: Protocol,
    tls: Option<&ClientTls>,
) -> Result<(), String> {
    let host = cfg.host.clone().unwrap_or_else(|| addr.to_string());
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tcp_only = cfg.kind == HealthCheckKind::Tcp;
        let status = match tls {
            Some(t) => {
                let s = t
                    .connect(tcp, addr)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                if tcp_only {
                    return Ok(());
                }
                exchange(s, &cfg.path, &host, protocol).await?
            }
            None if tcp_only => return Ok(()),
            None => exchange(tcp, &cfg.path, &host, protocol).await?,
        };
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(cfg.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
    }
}

async fn exchange<T>(io: T, path: &str, host: &str, protocol: Protocol) -> Result<u16, String>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(io);
    let req = |version| {
        let mut b = Request::get(path)
            .version(version)
            .header(header::USER_AGENT, "weir-health-check");
        if version == http::Version::HTTP_11 {
            b = b
                .header(header::HOST, host)
                .header(header::CONNECTION, "close");
        } else {
            b = b.uri(format!("http://{host}{path}"));
        }
        b.body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))
    };
    let status = match protocol {
        Protocol::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            sender
                .send_request(req(http::Version::HTTP_11)?)
                .await
                .map_err(|e| e.to_string())?
                .status()
        }
        Protocol::Http2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            sender
                .send_request(req(http::Version::HTTP_2)?)
                .await
                .map_err(|e| e.to_string())?
                .status()
        }
    };
    Ok(status.as_u16())
}
