//! Sending one request to one endpoint over a pooled connection, bounded by the cluster's
//! response timeout. HTTP/1.1 requests that were never written (the pooled connection turned out
//! to be closed) are retried on another connection; anything else is the caller's to decide.

use std::rc::Rc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;

use super::pool::ResponseGuard;
use super::{Cluster, Endpoint, connect};
use crate::config::Protocol;
use crate::http::body::ProxyBody;
use crate::http::respond::ProxyError;

/// Sends `req` to `ep` and returns the response with a body that streams from the upstream.
pub async fn send(
    cluster: &Cluster,
    ep: &Rc<Endpoint>,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    prepare(&mut req, cluster.protocol);
    let mut guard = ResponseGuard::new(ep.clone());
    let resp = match cluster.protocol {
        Protocol::Http1 => {
            let (resp, conn) = send_h1(cluster, ep, req).await?;
            guard.set_conn(conn);
            resp
        }
        Protocol::Http2 => send_h2(cluster, ep, req).await?,
    };
    let (parts, body) = resp.into_parts();
    let body = if body.is_end_stream() {
        guard.complete();
        ProxyBody::Incoming(body)
    } else {
        ProxyBody::Upstream(body, Some(guard))
    };
    Ok(Response::from_parts(parts, body))
}

async fn send_h1(
    cluster: &Cluster,
    ep: &Endpoint,
    mut req: Request<ProxyBody>,
) -> Result<(Response<Incoming>, super::pool::H1Sender), ProxyError> {
    loop {
        let (mut sender, reused) = match ep.pool.checkout_h1() {
            Some(s) => (s, true),
            None => (connect::h1(ep.addr, cluster.connect_timeout).await?, false),
        };
        if let Err(e) = sender.ready().await {
            if reused {
                continue; // closed while idle; try the next one
            }
            return Err(ProxyError::from_upstream(e));
        }
        let sent = sender.try_send_request(req);
        match tokio::time::timeout(cluster.response_timeout, sent).await {
            Err(_) => return Err(ProxyError::ResponseTimeout(cluster.response_timeout)),
            Ok(Ok(resp)) => return Ok((resp, sender)),
            Ok(Err(mut e)) => match e.take_message() {
                // Never written: safe to send on another connection.
                Some(r) if reused => req = r,
                _ => return Err(ProxyError::from_upstream(e.into_error())),
            },
        }
    }
}

async fn send_h2(
    cluster: &Cluster,
    ep: &Endpoint,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, ProxyError> {
    let mut sender = match ep.pool.h2() {
        Some(s) => s,
        None => {
            let s = connect::h2(ep.addr, cluster.connect_timeout).await?;
            ep.pool.set_h2(s.clone());
            s
        }
    };
    let exchange = async move {
        sender.ready().await?;
        sender.send_request(req).await
    };
    match tokio::time::timeout(cluster.response_timeout, exchange).await {
        Err(_) => Err(ProxyError::ResponseTimeout(cluster.response_timeout)),
        Ok(r) => r.map_err(ProxyError::from_upstream),
    }
}

/// Sends an upgrade (WebSocket) request on a dedicated HTTP/1.1 connection.
pub async fn send_upgrade(
    cluster: &Cluster,
    ep: &Endpoint,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, ProxyError> {
    prepare(&mut req, Protocol::Http1);
    let mut sender = connect::h1_upgradable(ep.addr, cluster.connect_timeout).await?;
    match tokio::time::timeout(cluster.response_timeout, sender.send_request(req)).await {
        Err(_) => Err(ProxyError::ResponseTimeout(cluster.response_timeout)),
        Ok(r) => r.map_err(ProxyError::from_upstream),
    }
}

/// Shapes the request for the upstream protocol: origin-form URI plus `Host` for HTTP/1.1,
/// absolute URI (scheme and authority) for HTTP/2.
fn prepare(req: &mut Request<ProxyBody>, protocol: Protocol) {
    let authority: Option<Authority> = req.uri().authority().cloned().or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
    });
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match protocol {
        Protocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            // RFC 9112 §3.2.2: with an absolute-form target, its authority replaces `Host`.
            let absolute = req.uri().authority().is_some();
            if (absolute || !req.headers().contains_key(header::HOST))
                && let Some(a) = &authority
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                req.headers_mut().insert(header::HOST, v);
            }
            if absolute || req.uri().scheme().is_some() {
                *req.uri_mut() = Uri::from(pq);
            }
        }
        Protocol::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(authority.unwrap_or_else(|| Authority::from_static("upstream")));
            parts.path_and_query = Some(pq);
            if let Ok(u) = Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
            // :authority carries it; a Host header beside it is redundant on HTTP/2.
            req.headers_mut().remove(header::HOST);
        }
    }
}
