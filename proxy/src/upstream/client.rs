//! Sending one request to one endpoint over a pooled connection, bounded by the cluster's
//! response timeout. HTTP/1.1 goes through Weir's own client (`h1`); HTTP/2 and upgrades through
//! hyper's. An HTTP/1.1 request that provably never reached the upstream (a pooled connection
//! that turned out dead before any byte of response, with no body consumed) is sent again on a
//! fresh connection; anything else is the caller's to decide.

use std::rc::Rc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;

use super::breaker::Held;
use super::pool::ResponseGuard;
use super::shared::Resource;
use super::{Cluster, Endpoint, Route, connect, h1};
use crate::config::Protocol;
use crate::proto::body::ProxyBody;
use crate::proto::error::ProxyError;

/// Sends `req` to `ep` and returns the response with a body that streams from the upstream.
/// `route.response_timeout` bounds the wait for the response head once the request is sent (the
/// cluster's, or a route decision's). `route.raw_head`: an HTTP/1.1 response head may stay raw
/// ([`crate::proto::h1::head::RawHead`]), because it goes straight to an HTTP/1.1 client.
/// `route.raw_request`: the request's fields as the client wrote them ([`h1::RawRequest`]).
pub async fn send(
    cluster: &Cluster,
    ep: &Rc<Endpoint>,
    mut req: Request<ProxyBody>,
    route: &Route,
) -> Result<Response<ProxyBody>, ProxyError> {
    // A raw request's lines carry its `Host` and need nothing of `prepare` over HTTP/1.1; any
    // other sender gets them in the map first.
    let raw_request = match route.raw_request.as_ref() {
        Some(r) if cluster.protocol == Protocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            Some(r)
        }
        Some(r) => {
            r.append_to(req.headers_mut());
            prepare(&mut req, cluster.protocol, cluster.tls.is_some());
            None
        }
        None => {
            prepare(&mut req, cluster.protocol, cluster.tls.is_some());
            None
        }
    };
    let guard = ResponseGuard::new(ep.clone());
    match cluster.protocol {
        // The response timeout is applied inside: it starts once the request is fully sent.
        // Only the encoded head and the body go on: the 288-byte request is not moved into
        // another future (each move was a `memcpy` on every request).
        Protocol::Http1 => {
            let head = h1::encode_head(&req, route.raw_head, raw_request);
            send_h1(
                cluster,
                ep,
                head,
                req.into_body(),
                guard,
                route.response_timeout,
            )
            .await
        }
        // Boxed: HTTP/2's exchange future is large and would otherwise size (and be copied
        // with) every HTTP/1.1 request's future too.
        Protocol::Http2 => {
            let resp = Box::pin(send_h2(cluster, ep, req, route.response_timeout)).await?;
            let (parts, body) = resp.into_parts();
            let body = if body.is_end_stream() {
                guard.complete();
                ProxyBody::Incoming(body)
            } else {
                ProxyBody::Upstream(body, Some(guard.into_in_flight()))
            };
            Ok(Response::from_parts(parts, body))
        }
    }
}

async fn send_h1(
    cluster: &Cluster,
    ep: &Rc<Endpoint>,
    head: h1::EncodedHead,
    mut body: ProxyBody,
    guard: ResponseGuard,
    response_timeout: std::time::Duration,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut guard = Some(guard);
    loop {
        let (conn, reused) = match ep.pool.checkout_h1() {
            Some(c) => (c, true),
            // Boxed for the same reason (connects are the rare case with a warm pool).
            None => (Box::pin(new_h1(cluster, ep)).await?, false),
        };
        let g = guard
            .take()
            .unwrap_or_else(|| ResponseGuard::new(ep.clone()));
        match h1::send(conn, &head, &mut body, reused, g, response_timeout).await {
            Ok(resp) => return Ok(resp),
            Err(f) if f.retryable => {
                tracing::debug!(endpoint = %ep.addr, error = %f.error, "pooled connection was dead; sending again");
            }
            Err(f) => return Err(f.error),
        }
    }
}

/// A new HTTP/1.1 connection for an attempt, within the cluster's connection and
/// pending-request limits, and counted as pending while it is made.
async fn new_h1(cluster: &Cluster, ep: &Endpoint) -> Result<h1::H1Conn, ProxyError> {
    cluster.admit(Resource::Connections)?;
    cluster.admit(Resource::Pending)?;
    let _pending = Held::new(&cluster.stats.rq_pending);
    crate::telemetry::upstream_connect(ep.metric_slots());
    connect::h1(cluster, ep.addr).await
}

async fn send_h2(
    cluster: &Cluster,
    ep: &Endpoint,
    req: Request<ProxyBody>,
    timeout: std::time::Duration,
) -> Result<Response<Incoming>, ProxyError> {
    let mut sender = match ep.pool.h2() {
        Some(s) => s,
        None => {
            cluster.admit(Resource::Connections)?;
            cluster.admit(Resource::Pending)?;
            let pending = Held::new(&cluster.stats.rq_pending);
            crate::telemetry::upstream_connect(ep.metric_slots());
            let s = connect::h2(cluster, ep.addr).await?;
            drop(pending);
            ep.pool.set_h2(s.clone());
            s
        }
    };
    // The response timer starts once the request body has been sent (hyper sends it from a task
    // of its own, so the body announces its end).
    let uploading = !req.body().is_end_stream();
    let ended = Rc::new(tokio::sync::Notify::new());
    let req = if uploading {
        req.map(|b| ProxyBody::Watched(Box::new(b), ended.clone()))
    } else {
        req
    };
    let exchange = async move {
        sender.ready().await?;
        sender.send_request(req).await
    };
    tokio::pin!(exchange);
    if uploading {
        tokio::select! {
            r = &mut exchange => return r.map_err(ProxyError::from_upstream),
            _ = ended.notified() => {}
        }
    }
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(ProxyError::ResponseTimeout(timeout)),
        Ok(r) => r.map_err(ProxyError::from_upstream),
    }
}

/// Sends an upgrade (WebSocket) request on a dedicated HTTP/1.1 connection.
pub async fn send_upgrade(
    cluster: &Cluster,
    ep: &Endpoint,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, ProxyError> {
    prepare(&mut req, Protocol::Http1, cluster.tls.is_some());
    let mut sender = connect::h1_upgradable(cluster, ep.addr).await?;
    match tokio::time::timeout(cluster.response_timeout, sender.send_request(req)).await {
        Err(_) => Err(ProxyError::ResponseTimeout(cluster.response_timeout)),
        Ok(r) => r.map_err(ProxyError::from_upstream),
    }
}

/// HTTP/2 lets a client split `cookie` into several fields; HTTP/1.1 allows only one
/// (RFC 9113 §8.2.3): join them with "; ".
fn join_cookies(h: &mut http::HeaderMap) {
    let mut all = h.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (all.next(), all.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in h.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// Shapes the request for the upstream protocol: origin-form URI plus `Host` for HTTP/1.1,
/// absolute URI (scheme — `https` over TLS — and authority) for HTTP/2.
fn prepare(req: &mut Request<ProxyBody>, protocol: Protocol, tls: bool) {
    // The target's authority, else the Host header's (parsed only where needed: it copies).
    let authority = |req: &Request<ProxyBody>| -> Option<Authority> {
        req.uri().authority().cloned().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        })
    };
    let pq = |req: &Request<ProxyBody>| {
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    match protocol {
        Protocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            // RFC 9112 §3.2.2: with an absolute-form target, its authority replaces `Host`.
            let absolute = req.uri().authority().is_some();
            if (absolute || !req.headers().contains_key(header::HOST))
                && let Some(a) = authority(req)
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                req.headers_mut().insert(header::HOST, v);
            }
            if absolute || req.uri().scheme().is_some() {
                *req.uri_mut() = Uri::from(pq(req));
            }
            join_cookies(req.headers_mut());
        }
        Protocol::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
            parts.authority =
                Some(authority(req).unwrap_or_else(|| Authority::from_static("upstream")));
            parts.path_and_query = Some(pq(req));
            if let Ok(u) = Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
            // :authority carries it; a Host header beside it is redundant on HTTP/2.
            req.headers_mut().remove(header::HOST);
        }
    }
}
