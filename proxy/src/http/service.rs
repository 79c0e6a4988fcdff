//! The per-request service: checks the request, applies the forwarding header rules, picks the
//! cluster and endpoint, sends upstream and shapes the response. It never fails: every error is
//! turned into a response by [`respond::error_response`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::ProxyBody;
use super::headers::{ensure_request_id, is_websocket_upgrade, set_forwarded, strip_hop_by_hop};
use super::respond::{self, ProxyError};
use crate::conn::{ConnState, Framing};
use crate::listener::ListenerCtx;
use crate::upstream::{self, Cluster, Endpoint};
use crate::worker::WorkerCtx;

/// The hyper service of one downstream connection.
#[derive(Clone)]
pub struct ProxyService {
    worker: Rc<WorkerCtx>,
    listener: Rc<ListenerCtx>,
    conn: Arc<ConnState>,
    peer: SocketAddr,
}

impl ProxyService {
    pub fn new(
        worker: Rc<WorkerCtx>,
        listener: Rc<ListenerCtx>,
        conn: Arc<ConnState>,
        peer: SocketAddr,
    ) -> Self {
        Self {
            worker,
            listener,
            conn,
            peer,
        }
    }

    async fn proxy(self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
        let limits = &self.listener.limits;
        if req.version() <= Version::HTTP_11 {
            check_host(&req)?;
        }
        // A reverse proxy does not open tunnels to arbitrary hosts.
        if req.method() == http::Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed(http::Method::CONNECT));
        }
        let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
            + req.uri().authority().map_or(0, |a| a.as_str().len());
        if uri_len as u64 > limits.max_uri_length {
            return Err(ProxyError::UriTooLong(limits.max_uri_length));
        }
        let upgrade = req.version() == Version::HTTP_11 && is_websocket_upgrade(req.headers());
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        set_forwarded(&mut parts.headers, self.peer.ip(), "http");
        ensure_request_id(&mut parts.headers);

        let cluster = &self.worker.clusters[self.listener.default_cluster];
        let ep = cluster
            .pick()
            .ok_or_else(|| ProxyError::NoHealthyUpstream(cluster.name.clone()))?
            .clone();
        let req = Request::from_parts(
            parts,
            ProxyBody::Downstream(super::body::DownstreamBody::new(body)),
        );
        if let Some(down) = on_upgrade {
            return tunnel(&self.worker, cluster, &ep, req, down).await;
        }
        let resp = upstream::send(cluster, &ep, req).await?;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(parts, body))
    }
}

/// Forwards an upgrade request on its own connection; on `101` splices the two upgraded byte
/// streams together until either side closes.
async fn tunnel(
    worker: &Rc<WorkerCtx>,
    cluster: &Cluster,
    ep: &Rc<Endpoint>,
    req: Request<ProxyBody>,
    down: OnUpgrade,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut resp = upstream::client::send_upgrade(cluster, ep, req).await?;
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched {
        let up = hyper::upgrade::on(&mut resp);
        let hold = worker.hold();
        tokio::task::spawn_local(async move {
            let _hold = hold;
            match tokio::try_join!(down, up) {
                Ok((d, u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                        tracing::debug!(error = %e, "upgraded tunnel ended with an error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, switched);
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, ProxyBody::Incoming(body)))
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        let (framing, index) = if req.version() <= Version::HTTP_11 {
            this.conn.framing_of_next_request()
        } else {
            (Framing::Clean, 0)
        };
        let conn = self.conn.clone();
        Box::pin(async move {
            if framing == Framing::Conflicting {
                return Ok(respond::error_response(&ProxyError::ConflictingFraming));
            }
            let mut resp = match this.proxy(req).await {
                Ok(r) => r,
                Err(e) => respond::error_response(&e),
            };
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                match framing {
                    Framing::Unwatched => {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Framing::Clean => conn.not_upgraded(index),
                    Framing::Conflicting => {}
                }
            }
            Ok(resp)
        })
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`; HTTP/1.0 at most one.
fn check_host(req: &Request<Incoming>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (None, _) if req.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("missing Host header"))
        }
        _ => Ok(()),
    }
}
