//! The per-request service: checks the request, applies the forwarding header rules, picks the
//! cluster and endpoint, sends upstream and shapes the response. It never fails: every error is
//! turned into a response by [`respond::error_response`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;

use super::headers::{
    ensure_request_id, new_request_id, set_client_cert, set_forwarded, strip_hop_by_hop,
};
use super::respond;
use crate::filter::body::{FilteredBody, FilteredBodyError, Prefetch};
use crate::filter::chain::{ChainRun, Stop, local_reply_response};
use crate::filter::runtime::WorkerFilters;
use crate::filter::stream::{Downstream, HttpStream};
use crate::listener::ListenerCtx;
use crate::proto::body::{DownstreamBody, H2Body, ProxyBody};
use crate::proto::error::ProxyError;
use crate::proto::h1::fields::append_lines;
use crate::proto::h1::head::RawFields;
use crate::telemetry::Exchange;
use crate::tls::ConnTls;
use crate::upstream::{self, Cluster, Endpoint};
use crate::worker::{Generation, WorkerCtx};
use weir_host_abi::HttpPhases;

/// The proxy service of one downstream connection (HTTP/1.1 calls it directly; HTTP/2 through
/// hyper's `Service`).
#[derive(Clone)]
pub struct ProxyService {
    worker: Rc<WorkerCtx>,
    listener: Rc<ListenerCtx>,
    peer: SocketAddr,
    /// `peer`'s address as a header value (`x-forwarded-for`).
    client_ip: HeaderValue,
    conn_id: u64,
    /// The connection's TLS session (absent on a plain listener).
    tls: Option<Arc<ConnTls>>,
}

impl ProxyService {
    pub fn new(
        worker: Rc<WorkerCtx>,
        listener: Rc<ListenerCtx>,
        peer: SocketAddr,
        tls: Option<Arc<ConnTls>>,
    ) -> Self {
        let conn_id = worker.next_connection_id();
        Self {
            worker,
            listener,
            peer,
            client_ip: super::headers::client_ip_value(peer.ip()),
            conn_id,
            tls,
        }
    }

    /// The telemetry record of a request starting now on this connection.
    pub fn exchange(&self) -> Exchange {
        Exchange::start(
            &self.worker.telemetry,
            self.listener.id,
            &self.listener.name,
        )
    }

    /// One request to its response. `websocket`: an HTTP/1.1 request to switch to WebSocket (the
    /// HTTP/1.1 server read that off the head already). Only a filter's `proxy_close_stream` is
    /// an error: the connection then resets the stream (HTTP/2) or closes (HTTP/1.1) without a
    /// response, as Envoy does; every other failure is already a response here.
    pub async fn handle(
        &self,
        mut req: Request<DownstreamBody>,
        websocket: bool,
        raw: Option<RawFields>,
        ex: &mut Exchange,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // Telemetry that reads the request's fields needs them in the map.
        let raw = match raw {
            Some(raw) if ex.is_detailed() => {
                append_lines(&raw.lines, req.headers_mut());
                None
            }
            raw => raw,
        };
        ex.request(
            &mut req,
            self.peer,
            self.tls.as_deref(),
            &self.listener.name,
        );
        let resp = match self.proxy(req, websocket, raw, ex).await {
            Ok(r) => r,
            Err(e @ ProxyError::Filter(_, "filter_reset")) => {
                ex.flag(crate::telemetry::flags::LR);
                return Err(e);
            }
            Err(e) => respond::error_response(&e),
        };
        ex.respond(&resp);
        Ok(resp)
    }

    /// Whether this listener's requests go upstream with their fields untouched but for what
    /// the proxy appends: no filter chain, no telemetry that reads request fields (access log,
    /// tracing), an HTTP/1.1 default cluster. The HTTP/1.1 server then keeps a qualifying head's
    /// fields raw ([`crate::proto::h1::head::RequestHead`]'s `raw`), and `proxy` checks again.
    pub fn takes_raw_requests(&self) -> bool {
        !self.worker.telemetry.detailed()
            && self
                .worker
                .generation()
                .default_cluster(self.listener.id)
                .is_some_and(|c| c.protocol == crate::config::Protocol::Http1)
            && !self.has_chain()
    }

    /// Whether the listener has a filter chain in the current generation (nothing cloned).
    fn has_chain(&self) -> bool {
        let generation = self.worker.generation();
        generation.filters.is_some() && generation.chain(self.listener.id).is_some()
    }

    /// The listener's filter chain in `generation`.
    fn chain(&self, generation: &Generation) -> Option<(Rc<WorkerFilters>, Arc<[usize]>)> {
        match (&generation.filters, generation.chain(self.listener.id)) {
            (Some(filters), Some(chain)) => Some((filters.clone(), chain.clone())),
            _ => None,
        }
    }

    /// `raw`: the request's fields as the client wrote them (its map is empty); they stay so only
    /// on the plain path to an HTTP/1.1 cluster, and go into the map for anything else.
    async fn proxy(
        &self,
        mut req: Request<DownstreamBody>,
        upgrade: bool,
        raw: Option<RawFields>,
        ex: &mut Exchange,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let limits = &self.listener.limits;
        let generation = self.worker.generation();
        let chain = self.chain(&generation);
        let cluster = generation.default_cluster(self.listener.id);
        let raw = match raw {
            Some(raw)
                if chain.is_none()
                    && !upgrade
                    && cluster.is_some_and(|c| c.protocol == crate::config::Protocol::Http1) =>
            {
                Some(raw)
            }
            Some(raw) => {
                append_lines(&raw.lines, req.headers_mut());
                None
            }
            None => None,
        };
        // A raw head has exactly one Host (the parser's condition for keeping it raw).
        if raw.is_none() && req.version() <= Version::HTTP_11 {
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

        let (mut parts, body) = req.into_parts();
        let proto = if self.tls.is_some() { "https" } else { "http" };
        // A raw head carries none of the fields set here (the parser's other condition): they
        // are appended to its lines as it is encoded.
        let raw = match raw {
            Some(raw) => Some(upstream::h1::RawRequest {
                lines: raw.lines,
                has_length: raw.length.is_some(),
                forwarded_for: self.client_ip.clone(),
                forwarded_proto: proto,
                client_cert: self.tls.as_deref().and_then(|t| t.xfcc.clone()),
                request_id: new_request_id(),
            }),
            None => {
                strip_hop_by_hop(&mut parts.headers, upgrade);
                set_forwarded(&mut parts.headers, &self.client_ip, proto);
                set_client_cert(&mut parts.headers, self.tls.as_deref());
                ensure_request_id(&mut parts.headers);
                None
            }
        };

        if let Some((filters, chain)) = chain {
            // Upgrades too: a filter that denies a request must deny its upgrade.
            // Boxed: the chain's future is large, and an async fn's state is as large as its
            // largest await; inline, every request (chain or not) would carry and copy it.
            return Box::pin(self.through_chain(
                parts,
                body,
                (&generation, filters, chain),
                upgrade,
                ex,
            ))
            .await;
        }

        let cluster = cluster.ok_or(ProxyError::NoRoute)?;
        let mut req = Request::from_parts(parts, ProxyBody::Downstream(body));
        if upgrade {
            let ep = cluster.endpoint()?;
            ex.upstream_start(cluster, &ep, &mut req, false, false);
            let r = Box::pin(tunnel(cluster, &ep, req)).await;
            ex.upstream_done(&r);
            return r;
        }
        let mut seen = Attempts {
            ex,
            run: None,
            timed: false,
            routed: false,
        };
        // Nothing reads this response's headers before an HTTP/1.1 client gets them: the
        // upstream's head may go out as it came.
        let route = upstream::Route {
            raw_head: req.version() <= Version::HTTP_11,
            raw_request: raw,
            ..upstream::Route::of(cluster)
        };
        let resp = upstream::forward(cluster, req, &route, &mut seen).await?;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(parts, body))
    }

    /// The request through the listener's filter chain: request phases, the route decision,
    /// upstream, response phases; `on_log` once the response body has ended.
    async fn through_chain(
        &self,
        parts: http::request::Parts,
        body: DownstreamBody,
        (generation, filters, chain): (&Generation, Rc<WorkerFilters>, Arc<[usize]>),
        upgrade: bool,
        ex: &mut Exchange,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let http::request::Parts {
            method,
            uri,
            version,
            headers,
            extensions,
            ..
        } = parts;
        let authority = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
        let mut stream = HttpStream::new(Downstream {
            peer: self.peer,
            local: self.listener.local,
            connection_id: self.conn_id,
            protocol: protocol_name(version),
            tls: self.tls.clone(),
        });
        stream.method = method;
        stream.uri = match uri.path_and_query() {
            Some(pq) => http::Uri::from(pq.clone()),
            None => http::Uri::from_static("/"),
        };
        stream.authority = authority;
        stream.request_headers = headers;
        let run = ChainRun::new(filters, chain, stream);
        let body_empty = http_body::Body::is_end_stream(&body);

        if let Err(stop) = run.request_headers(body_empty).await {
            return self.stopped(&run, stop).await;
        }

        // The request as the filters left it, and their route decision.
        let body_filtered =
            !body_empty && run.wants(HttpPhases::REQUEST_BODY | HttpPhases::REQUEST_TRAILERS);
        let (mut req, route) = run.with_stream(|s| {
            let mut req = Request::new(ProxyBody::Empty);
            *req.method_mut() = s.method.clone();
            let route = s.route();
            *req.uri_mut() = match &route.path {
                Some(path) => path.parse().unwrap_or_else(|_| s.uri.clone()),
                None => s.uri.clone(),
            };
            *req.version_mut() = version;
            *req.headers_mut() = std::mem::take(&mut s.request_headers);
            // Framing is the proxy's, never a filter's: a body rewrite (or an added
            // `content-length`) must not leave a length that disagrees with the bytes sent,
            // which would desynchronise the upstream connection (request smuggling). Then the
            // body's own length (or chunked encoding) frames it upstream. A body no filter sees,
            // with framing headers no filter wrote, keeps the downstream's, as without a chain.
            if body_filtered || s.request_framing_edited {
                req.headers_mut().remove(header::CONTENT_LENGTH);
                req.headers_mut().remove(header::TRANSFER_ENCODING);
            }
            // Identity is the core's, never a filter's: whatever a filter set is replaced (it
            // was set from the connection before the filters ran).
            if s.request_xfcc_edited {
                set_client_cert(req.headers_mut(), self.tls.as_deref());
            }
            // `:authority` is the `Host` upstream (already there unless a filter changed it).
            if let Some(a) = &s.authority
                && req.headers().get(header::HOST).map(HeaderValue::as_bytes) != Some(a.as_bytes())
                && let Ok(v) = HeaderValue::from_str(a)
            {
                req.headers_mut().insert(header::HOST, v);
            }
            (req, route)
        });
        *req.extensions_mut() = extensions;
        let request_body = ProxyBody::Downstream(body);
        *req.body_mut() = if body_filtered {
            ProxyBody::Stage(Box::new(FilteredBody::new(
                request_body,
                run.clone(),
                false,
            )))
        } else {
            request_body
        };

        let cluster = match &route.cluster {
            Some(name) => generation
                .clusters
                .get(name)
                .ok_or_else(|| ProxyError::UnknownCluster(name.clone()))?,
            None => generation
                .default_cluster(self.listener.id)
                .ok_or(ProxyError::NoRoute)?,
        };
        if upgrade {
            let ep = cluster.endpoint()?;
            run.with_stream(|s| s.upstream_address = Some(ep.addr));
            ex.upstream_start(cluster, &ep, &mut req, true, route.cluster.is_some());
            let r = tunnel(cluster, &ep, req).await;
            ex.upstream_done(&r);
            return r;
        }
        // `weir.route.timeout_ms: 0` disables the timeout, as Envoy's route timeout 0 does.
        let timeout = match route.timeout {
            Some(t) if t.is_zero() => NO_TIMEOUT,
            Some(t) => t,
            None => cluster.response_timeout,
        };
        let routed = route.cluster.is_some();
        let route = upstream::Route {
            raw_head: false,
            raw_request: None,
            response_timeout: timeout,
            per_try_timeout: route.per_try_timeout,
            retries: route.retries,
        };
        let mut seen = Attempts {
            ex,
            run: Some(&run),
            timed: true,
            routed,
        };
        let sent = upstream::forward(cluster, req, &route, &mut seen).await;
        // A filter that answered locally from a body phase wins over the upstream's answer.
        let late = run.late_reply.borrow_mut().take();
        if let Some(reply) = late {
            return self.stopped(&run, Stop::LocalReply(reply)).await;
        }
        if let Some((status, reason)) = run.late_failure.take() {
            return self.stopped(&run, Stop::Fail(status, reason)).await;
        }
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return self.error_through_chain(&run, e).await,
        };
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers, false);
        let rbody_empty = http_body::Body::is_end_stream(&rbody);
        run.with_stream(|s| {
            s.response_status = Some(rparts.status);
            s.response_headers = std::mem::take(&mut rparts.headers);
        });
        if let Err(stop) = run.response_headers(rbody_empty).await {
            return self.stopped(&run, stop).await;
        }
        run.with_stream(|s| {
            rparts.status = s.response_status.unwrap_or(rparts.status);
            rparts.headers = std::mem::take(&mut s.response_headers);
        });
        rparts.version = Version::HTTP_11;
        let body = match self.response_body(&run, rbody, &mut rparts.headers).await {
            Ok(b) => b,
            Err(stop) => return self.stopped(&run, stop).await,
        };
        Ok(Response::from_parts(rparts, body))
    }

    /// The response body, wrapped so that body phases run and `on_log` comes at its end, and
    /// its framing: what the filters make of the body before the head goes out
    /// ([`FilteredBody::prefetch`]) decides it. A body complete by then gets its exact
    /// `content-length`; a streaming one keeps the upstream's (as in Envoy, a filter that changes
    /// the length of a streamed body removes it in its headers phase; weir holds the body to it,
    /// so a mismatch cuts the response rather than desynchronising the connection) or, without
    /// one, frames itself.
    async fn response_body(
        &self,
        run: &Rc<ChainRun>,
        body: ProxyBody,
        headers: &mut http::HeaderMap,
    ) -> Result<ProxyBody, Stop> {
        if !run.wants(
            HttpPhases::RESPONSE_HEADERS
                | HttpPhases::RESPONSE_BODY
                | HttpPhases::RESPONSE_TRAILERS,
        ) {
            // No filter saw the response head or runs a body phase: the response goes out as
            // the upstream framed it; the wrapper only ends the chain's run with its body.
            return Ok(ProxyBody::Stage(Box::new(FilteredBody::new(
                body,
                run.clone(),
                true,
            ))));
        }
        headers.remove(header::TRANSFER_ENCODING);
        let declared = declared_length(headers);
        let empty = http_body::Body::is_end_stream(&body);
        let mut body = FilteredBody::new(body, run.clone(), true);
        if empty {
            return Ok(ProxyBody::Stage(Box::new(body)));
        }
        if !run.wants(HttpPhases::RESPONSE_BODY | HttpPhases::RESPONSE_TRAILERS) {
            // No filter runs a response body phase: the body streams as the upstream framed it,
            // held to the length the head declares in case a header phase changed it.
            if let Some(d) = declared
                && body.enforce_length(d).is_err()
            {
                return Err(Stop::Fail(StatusCode::BAD_GATEWAY, "filter_body_length"));
            }
            return Ok(ProxyBody::Stage(Box::new(body)));
        }
        match body.prefetch().await {
            Ok(Prefetch::Complete(n)) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok(Prefetch::Streaming) => {
                if let Some(d) = declared
                    && body.enforce_length(d).is_err()
                {
                    return Err(Stop::Fail(StatusCode::BAD_GATEWAY, "filter_body_length"));
                }
            }
            Err(e) => {
                if let Some(reply) = run.late_reply.borrow_mut().take() {
                    return Err(Stop::LocalReply(reply));
                }
                if let Some((status, reason)) = run.late_failure.take() {
                    return Err(Stop::Fail(status, reason));
                }
                return Err(match e.downcast_ref::<FilteredBodyError>() {
                    Some(FilteredBodyError::TooLarge) => {
                        Stop::Fail(StatusCode::INTERNAL_SERVER_ERROR, "filter_buffer_limit")
                    }
                    Some(_) => Stop::Reset,
                    None => Stop::Fail(StatusCode::BAD_GATEWAY, "upstream_body_error"),
                });
            }
        }
        Ok(ProxyBody::Stage(Box::new(body)))
    }

    /// A chain stop becomes the response: a local reply (through the response phases, like
    /// Envoy's `sendLocalReply`), or an error.
    async fn stopped(
        &self,
        run: &Rc<ChainRun>,
        stop: Stop,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let resp = match stop {
            Stop::LocalReply(reply) => local_reply_response(&reply),
            Stop::Fail(status, reason) => {
                respond::error_response(&ProxyError::Filter(status, reason))
            }
            Stop::Reset => return Err(ProxyError::Filter(StatusCode::BAD_GATEWAY, "filter_reset")),
        };
        Ok(self.respond_through_chain(run, resp).await)
    }

    async fn error_through_chain(
        &self,
        run: &Rc<ChainRun>,
        e: ProxyError,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let resp = respond::error_response(&e);
        Ok(self.respond_through_chain(run, resp).await)
    }

    /// Runs a locally made response through the response phases (a second local reply there is
    /// not honoured: the first answer stands), then wraps its body for `on_log`.
    async fn respond_through_chain(
        &self,
        run: &Rc<ChainRun>,
        resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        let empty = http_body::Body::is_end_stream(&body);
        // Filters whose response phase already ran (when the stop came from that phase) are
        // not called again: no context gets two `on_response_headers`.
        run.with_stream(|s| {
            s.response_status = Some(parts.status);
            s.response_headers = std::mem::take(&mut parts.headers);
        });
        let _ = run.response_headers(empty).await;
        run.with_stream(|s| {
            parts.status = s.response_status.unwrap_or(parts.status);
            parts.headers = std::mem::take(&mut s.response_headers);
        });
        // A second stop here is not honoured either: the body then frames itself and fails
        // where it fails.
        let body = match self.response_body(run, body, &mut parts.headers).await {
            Ok(b) => b,
            Err(_) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                ProxyBody::Empty
            }
        };
        Response::from_parts(parts, body)
    }
}

/// The response's `content-length` after the response-headers phase. It stays on the response
/// (as in Envoy, a filter that changes the body length removes it in its headers phase), and the
/// filtered body is held to it. One that does not parse as a single length is removed: the body
/// then frames itself.
fn declared_length(headers: &mut http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    let digits = first.as_bytes();
    let parsed =
        (values.next().is_none() && !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
            .then(|| first.to_str().ok()?.parse::<u64>().ok())
            .flatten();
    if parsed.is_none() {
        headers.remove(header::CONTENT_LENGTH);
    }
    parsed
}

/// "No timeout": far enough that it never fires, near enough that deadline arithmetic cannot
/// overflow.
const NO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

/// What the service hears of each upstream attempt: telemetry's record of it (client span, trace
/// context sent upstream, per-endpoint counts) and, through a chain, the filters' view of the
/// upstream address.
struct Attempts<'a> {
    ex: &'a mut Exchange,
    run: Option<&'a Rc<ChainRun>>,
    /// A chain ran before the first attempt (its start needs a clock read of its own).
    timed: bool,
    /// A filter's route decision chose the cluster.
    routed: bool,
}

impl upstream::Observer for Attempts<'_> {
    fn start(&mut self, cluster: &Cluster, ep: &Endpoint, req: &mut Request<ProxyBody>) {
        if let Some(run) = self.run {
            run.with_stream(|s| s.upstream_address = Some(ep.addr));
        }
        self.ex
            .upstream_start(cluster, ep, req, self.timed, self.routed);
    }

    fn done(&mut self, r: &Result<Response<ProxyBody>, ProxyError>) {
        self.ex.upstream_done(r);
    }

    fn retry_limit(&mut self) {
        self.ex.flag(crate::telemetry::flags::URX);
    }
}

/// Forwards an upgrade request on its own connection. A `101` comes back with the upstream's
/// upgraded connection in its extensions; the HTTP/1.1 server splices the two byte streams.
async fn tunnel(
    cluster: &Cluster,
    ep: &Rc<Endpoint>,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let resp = upstream::client::send_upgrade(cluster, ep, req).await?;
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, switched);
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, ProxyBody::Incoming(body)))
}

/// HTTP/2: hyper calls the service once per stream.
impl hyper::service::Service<Request<Incoming>> for ProxyService {
    /// The body ends the request's telemetry record with its last frame.
    type Response = Response<crate::telemetry::H2Body>;
    /// A filter's `proxy_close_stream`: hyper resets the stream.
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ProxyError>>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut ex = this.exchange();
            let received = crate::telemetry::declared_length(req.headers());
            let req = req.map(|b| DownstreamBody::H2(H2Body::new(b)));
            // HTTP/2 has no `Upgrade` (extended CONNECT is not served).
            match this.handle(req, false, None, &mut ex).await {
                Ok(resp) => Ok(ex.into_h2(resp, received)),
                Err(e) => {
                    ex.finish(received, 0);
                    Err(e)
                }
            }
        })
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`; HTTP/1.0 at most one.
fn check_host<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (None, _) if req.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("missing Host header"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! The service in process: a connection over an in-memory pipe, a real upstream.

    use crate::testing::{Upstream, Worker, run};

    const PLAIN: &str = "
listeners:
  - { name: main, address: 127.0.0.1:0, default_cluster: up }
clusters:
  up: { endpoints: [\"{up}\"] }
";

    #[test]
    fn a_request_goes_upstream_with_the_forwarding_fields_and_comes_back() {
        run(async {
            let up = Upstream::start().await;
            let w = Worker::start(PLAIN, up.addr).await;
            let out = w
                .exchange(b"GET /hello?x=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                .await;
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
            let heads = up.heads.lock().unwrap().clone();
            assert_eq!(heads.len(), 1, "{heads:?}");
            let head = heads[0].to_ascii_lowercase();
            assert!(head.starts_with("get /hello?x=1 http/1.1\r\n"), "{head}");
            assert!(head.contains("\r\nhost: a.test\r\n"), "{head}");
            assert!(
                head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
                "{head}"
            );
            assert!(head.contains("\r\nx-request-id: "), "{head}");
            assert!(
                !head.contains("connection: close"),
                "hop-by-hop forwarded: {head}"
            );
            // The upstream's answer (its view of the request) is the response body.
            assert!(out.ends_with(&heads[0]), "{out}");
        });
    }

    #[test]
    fn hostile_heads_are_refused_before_the_upstream() {
        run(async {
            let up = Upstream::start().await;
            let w = Worker::start(PLAIN, up.addr).await;
            for (head, status) in [
                (&b"GET / HTTP/1.1\nHost: a\n\n"[..], "400"),
                (
                    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                    "400",
                ),
                (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", "400"),
            ] {
                let out = w.exchange(head).await;
                assert!(
                    out.starts_with(&format!("HTTP/1.1 {status} ")),
                    "{:?}: {out}",
                    String::from_utf8_lossy(head)
                );
            }
            assert!(
                up.heads.lock().unwrap().is_empty(),
                "something reached the upstream"
            );
        });
    }
}
