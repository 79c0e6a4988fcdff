//! [`Exchange`]: one request's record, from its head to its last response byte.
//!
//! The connection code makes one per request ([`Exchange::start`]: one clock read), the service
//! feeds it what it learns ([`Exchange::request`], [`Exchange::upstream_start`],
//! [`Exchange::upstream_done`], [`Exchange::respond`]), and the connection ends it once the
//! response is written ([`Exchange::finish`]: the second clock read) — or drops it when the
//! stream dies first, which records the request with the `DC` flag. Either way it is counted
//! exactly once.
//!
//! Everything beyond the counters (span objects, access-log fields) sits in an optional boxed
//! [`Detail`] that exists only while tracing or the access log is on.

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};

use super::metrics::{self, class_of, flags};
use super::{WorkerTelemetry, access_log, trace};
use crate::proto::body::{BoxError, ProxyBody};
use crate::proto::error::{ERROR_HEADER, ProxyError, flag_of_reason};
use crate::tls::ConnTls;
use crate::upstream::{Cluster, Endpoint};

/// One upstream attempt.
struct Attempt {
    /// First slot of the endpoint's metrics.
    base: usize,
    /// `None`: it started with the request (no chain ran first), so the request's own start
    /// stands in for it and no clock is read.
    start: Option<Instant>,
    /// The upstream's status; 0 until a response head arrived.
    status: u16,
    /// What went wrong; it becomes the request's flags only if this attempt was the last (a
    /// retry that succeeded leaves no flag, as in Envoy).
    flags: u16,
}

/// What a request carries only while tracing or the access log is on.
struct Detail {
    /// The tracer in use when the request started (a reload may change it meanwhile).
    tracing: Option<Arc<trace::Tracing>>,
    trace: Option<trace::RequestTrace>,
    log: Option<access_log::Record>,
}

/// One request as telemetry sees it. See the module docs for its life.
pub struct Exchange {
    tel: Rc<WorkerTelemetry>,
    start: Instant,
    /// First slot of the listener's metrics.
    listener: usize,
    /// The status sent downstream; 0 while there is none.
    status: u16,
    flags: u16,
    upstream: Option<Attempt>,
    done: bool,
    detail: Option<Box<Detail>>,
}

impl Exchange {
    /// A request head arrived on the listener `name` whose metric slots start at `base`.
    pub fn start(tel: &Rc<WorkerTelemetry>, base: usize, name: &Arc<str>) -> Self {
        tel.shard.add(base + metrics::listener::RQ_ACTIVE, 1);
        let detail = tel.detailed().then(|| {
            Box::new(Detail {
                tracing: tel.tracing(),
                trace: None,
                log: tel.logging().then(|| access_log::Record::new(name.clone())),
            })
        });
        Self {
            tel: tel.clone(),
            start: Instant::now(),
            listener: base,
            status: 0,
            flags: 0,
            upstream: None,
            done: false,
            detail,
        }
    }

    /// The request as it arrived. With tracing on, starts the server span (the parent from an
    /// incoming W3C `traceparent`, if valid) and points the request's `traceparent` at it, so
    /// filters (`builtin:telemetry` among them) continue this trace.
    pub fn request<B>(
        &mut self,
        req: &mut Request<B>,
        peer: SocketAddr,
        tls: Option<&ConnTls>,
        listener: &str,
    ) {
        let Some(d) = self.detail.as_deref_mut() else {
            return;
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        if let Some(t) = &d.tracing {
            let rt = t.server_span(req, peer, scheme, listener);
            t.inject(rt.server_context(), req.headers_mut());
            d.trace = Some(rt);
        }
        if let Some(log) = &mut d.log {
            log.request(req, peer, tls);
            if let Some(rt) = &d.trace {
                log.trace_id = Some(rt.trace_id());
            }
        }
    }

    /// An attempt to `ep` of cluster `cluster` begins with `req` (the request as the upstream
    /// will get it). `timed`: read the clock for its start (a chain ran before it); otherwise the
    /// request's start stands in. `routed`: a filter's route decision chose the cluster. With
    /// tracing on, starts the client span and sends its context upstream.
    ///
    /// Called again for a retry, it closes the previous attempt (counted with its outcome and
    /// time, its client span ended) and counts the new one as a retry.
    pub fn upstream_start<B>(
        &mut self,
        cluster: &Cluster,
        ep: &Endpoint,
        req: &mut Request<B>,
        timed: bool,
        routed: bool,
    ) {
        let base = ep.metric_slots();
        let retry = match self.upstream.take() {
            Some(previous) => {
                self.count_attempt(&previous, Instant::now());
                self.tel.shard.add(base + metrics::endpoint::RQ_RETRY, 1);
                true
            }
            None => false,
        };
        let detailed = self.detail.is_some();
        self.upstream = Some(Attempt {
            base,
            start: (timed || retry || detailed).then(Instant::now),
            status: 0,
            flags: 0,
        });
        let Some(d) = self.detail.as_deref_mut() else {
            return;
        };
        if let (Some(t), Some(rt)) = (&d.tracing, &mut d.trace) {
            rt.client_span(t, req, ep.addr, &cluster.name);
            if let Some(cx) = rt.client_context() {
                t.inject(cx, req.headers_mut());
            }
        }
        if let Some(log) = &mut d.log {
            log.upstream(&cluster.name, ep.addr, routed, req.headers());
            if log.trace_id.is_none() {
                log.trace_id = trace::trace_id_of(req.headers());
            }
        }
    }

    /// The attempt's outcome: a response head, or the error that ended it.
    pub fn upstream_done<B>(&mut self, r: &Result<Response<B>, ProxyError>) {
        let Some(up) = &mut self.upstream else {
            return;
        };
        match r {
            Ok(resp) => up.status = resp.status().as_u16(),
            Err(e) => {
                use metrics::endpoint as ep;
                let slot = match e {
                    ProxyError::ConnectFailure { .. } => Some(ep::CX_CONNECT_FAIL),
                    ProxyError::ConnectTimeout(_) => Some(ep::CX_CONNECT_TIMEOUT),
                    ProxyError::ResponseTimeout(_)
                    | ProxyError::PerTryTimeout(_)
                    | ProxyError::RequestTimeout(_) => Some(ep::RQ_TIMEOUT),
                    ProxyError::UpstreamReset(_)
                    | ProxyError::UpstreamIo(_)
                    | ProxyError::UpstreamClosed
                    | ProxyError::UpstreamProtocol(_)
                    | ProxyError::UpstreamMalformed(_) => Some(ep::RQ_RESET),
                    _ => None,
                };
                if let Some(slot) = slot {
                    self.tel.shard.add(up.base + slot, 1);
                }
                up.flags |= e.flag();
            }
        }
        let Some(d) = self.detail.as_deref_mut() else {
            return;
        };
        let now = Instant::now();
        if let Some(log) = &mut d.log {
            log.upstream_service_time = up.start.map(|s| now - s);
        }
        if let Some(rt) = &mut d.trace {
            match r {
                Ok(resp) => rt.client_status(resp.status().as_u16(), None),
                Err(e) => rt.client_status(0, Some(e.reason())),
            }
        }
    }

    /// Whether this record reads the request's fields (spans, access-log fields).
    pub fn is_detailed(&self) -> bool {
        self.detail.is_some()
    }

    /// The response head going downstream. A response Weir made itself (no upstream answered)
    /// names its reason in `x-weir-error`, which becomes the response flag.
    pub fn respond<B>(&mut self, resp: &Response<B>) {
        self.status = resp.status().as_u16();
        let local = self.upstream.as_ref().is_none_or(|u| u.status == 0);
        if local
            && self.status >= 400
            && let Some(reason) = resp.headers().get(ERROR_HEADER)
        {
            let reason = reason.to_str().unwrap_or("");
            self.flags |= flag_of_reason(reason);
            if let Some(log) = self.detail.as_deref_mut().and_then(|d| d.log.as_mut()) {
                log.error = Some(reason.to_owned());
            }
        }
    }

    /// Adds response flags (`flags::*`).
    pub fn flag(&mut self, f: u16) {
        self.flags |= f;
    }

    /// The response has been written: `received` / `sent` bytes (HTTP/1.1: on the wire, heads
    /// included; HTTP/2: bodies).
    pub fn finish(mut self, received: u64, sent: u64) {
        if let Some(log) = self.detail.as_deref_mut().and_then(|d| d.log.as_mut()) {
            log.bytes = (received, sent);
        }
        self.record();
    }

    /// The HTTP/2 response, its body wrapped so that the exchange ends with its last frame.
    /// `received`: the request body's declared length (HTTP/2 byte counts are bodies).
    pub fn into_h2(self, resp: Response<ProxyBody>, received: u64) -> Response<H2Body> {
        resp.map(|body| H2Body {
            body,
            received,
            sent: 0,
            exchange: Some(self),
        })
    }

    fn record(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let end = Instant::now();
        let sh = &self.tel.shard;
        let l = self.listener;
        if let Some(up) = &self.upstream {
            self.flags |= up.flags;
        }
        sh.sub(l + metrics::listener::RQ_ACTIVE, 1);
        sh.add(l + metrics::listener::RQ_CLASS + class_of(self.status), 1);
        sh.observe(l + metrics::listener::RQ_TIME, nanos(end - self.start));
        let mut f = self.flags;
        while f != 0 {
            let bit = f.trailing_zeros() as usize;
            sh.add(l + metrics::listener::RQ_FLAG + bit, 1);
            f &= f - 1;
        }
        if let Some(up) = &self.upstream {
            self.count_attempt(up, end);
        }
        let Some(mut d) = self.detail.take() else {
            return;
        };
        if let Some(rt) = d.trace.take() {
            rt.end(self.status, self.flags);
        }
        if let Some(mut log) = d.log.take() {
            log.status = self.status;
            log.flags = self.flags;
            log.duration = end - self.start;
            self.tel.push_log(&log);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.done {
            // The stream ended before its response did: the client went away (or the
            // connection was cut under it).
            self.flags |= flags::DC;
            self.record();
        }
    }
}

impl Exchange {
    /// Counts an attempt that ended at `end`.
    fn count_attempt(&self, up: &Attempt, end: Instant) {
        let sh = &self.tel.shard;
        sh.add(
            up.base + metrics::endpoint::RQ_CLASS + class_of(up.status),
            1,
        );
        let began = up.start.unwrap_or(self.start);
        sh.observe(up.base + metrics::endpoint::RQ_TIME, nanos(end - began));
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An HTTP/2 response body that ends its [`Exchange`] with its last frame (or, dropped early,
/// records the stream as cut).
pub struct H2Body {
    body: ProxyBody,
    received: u64,
    sent: u64,
    exchange: Option<Exchange>,
}

impl H2Body {
    fn end(&mut self) {
        if let Some(ex) = self.exchange.take() {
            ex.finish(self.received, self.sent);
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
                // hyper stops polling once the body says it has ended.
                if this.body.is_end_stream() {
                    this.end();
                }
            }
            Poll::Ready(None) => this.end(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(ex) = &mut this.exchange {
                    ex.flag(flags::UR);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for H2Body {
    fn drop(&mut self) {
        // A body hyper never polled to its end (an empty one, or a stream reset): an empty body
        // is complete, anything else was cut.
        if self.body.is_end_stream() {
            self.end();
        }
    }
}

/// The request headers' `content-length`, if any (HTTP/2 request byte counts).
pub fn declared_length(h: &HeaderMap) -> u64 {
    h.get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;
    use crate::upstream::Cluster;

    fn setup() -> (Telemetry, Rc<WorkerTelemetry>, Cluster) {
        let cfg = crate::config::parse(
            "listeners: [{name: main, address: 127.0.0.1:0, default_cluster: web}]\n\
             clusters: {web: {endpoints: [127.0.0.1:1, 127.0.0.1:2]}}\n",
            "t",
            std::path::Path::new("."),
        )
        .unwrap();
        let addrs: Vec<SocketAddr> = vec![([127, 0, 0, 1], 1).into(), ([127, 0, 0, 1], 2).into()];
        let t = Telemetry::metrics_only(&cfg, 1);
        let w = t.worker(0);
        let shared = std::sync::Arc::new(crate::upstream::ClusterShared::simple(
            &cfg.clusters[0],
            &addrs,
            1,
            &t,
        ));
        let c = Cluster::new(shared, 0, None);
        (t, w, c)
    }

    fn scrape(t: &Telemetry, c: &Cluster) -> String {
        let mut out = String::new();
        let live = [crate::telemetry::metrics::LiveCluster {
            name: &c.name,
            slots: c.metrics,
            endpoints: c
                .endpoints
                .iter()
                .map(|e| (e.addr, e.metric_slots()))
                .collect(),
        }];
        t.render(&mut out, &[("main", 0)], &live);
        out
    }

    #[track_caller]
    fn has(out: &str, line: &str) {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }

    fn ok(status: u16) -> Result<Response<ProxyBody>, ProxyError> {
        let mut r = Response::new(ProxyBody::Empty);
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok(r)
    }

    #[test]
    fn a_retry_counts_both_attempts_and_only_the_last_outcome_flags_the_request() {
        let (t, w, c) = setup();
        let mut ex = Exchange::start(&w, 0, &Arc::from("main"));
        let mut req = Request::new(());
        ex.upstream_start(&c, &c.endpoints[0], &mut req, false, false);
        ex.upstream_done::<ProxyBody>(&Err(ProxyError::ConnectTimeout(c.endpoints[0].addr)));
        ex.upstream_start(&c, &c.endpoints[1], &mut req, false, false);
        let resp = ok(200);
        ex.upstream_done(&resp);
        ex.respond(resp.as_ref().unwrap());
        ex.finish(10, 20);
        let out = scrape(&t, &c);
        let e1 = r#"cluster="web",endpoint="127.0.0.1:1""#;
        let e2 = r#"cluster="web",endpoint="127.0.0.1:2""#;
        has(
            &out,
            &format!("weir_upstream_rq_total{{{e1},class=\"none\"}} 1"),
        );
        has(
            &out,
            &format!("weir_upstream_cx_connect_timeout_total{{{e1}}} 1"),
        );
        has(
            &out,
            &format!("weir_upstream_rq_total{{{e2},class=\"2xx\"}} 1"),
        );
        has(&out, &format!("weir_upstream_rq_retry_total{{{e2}}} 1"));
        has(
            &out,
            &format!("weir_upstream_rq_time_seconds_count{{{e1}}} 1"),
        );
        has(
            &out,
            &format!("weir_upstream_rq_time_seconds_count{{{e2}}} 1"),
        );
        has(
            &out,
            r#"weir_downstream_rq_total{listener="main",class="2xx"} 1"#,
        );
        has(
            &out,
            r#"weir_downstream_rq_flags_total{listener="main",flag="UF"} 0"#,
        );
        has(&out, r#"weir_downstream_rq_active{listener="main"} 0"#);
    }

    #[test]
    fn a_dropped_exchange_is_counted_once_as_cut() {
        let (t, w, c) = setup();
        let mut ex = Exchange::start(&w, 0, &Arc::from("main"));
        let mut req = Request::new(());
        ex.upstream_start(&c, &c.endpoints[0], &mut req, true, false);
        has(
            &scrape(&t, &c),
            r#"weir_downstream_rq_active{listener="main"} 1"#,
        );
        drop(ex);
        let out = scrape(&t, &c);
        has(
            &out,
            r#"weir_downstream_rq_total{listener="main",class="none"} 1"#,
        );
        has(
            &out,
            r#"weir_downstream_rq_flags_total{listener="main",flag="DC"} 1"#,
        );
        has(
            &out,
            r#"weir_downstream_rq_time_seconds_count{listener="main"} 1"#,
        );
        has(&out, r#"weir_downstream_rq_active{listener="main"} 0"#);
        // A finished one is not counted again when dropped.
        let mut ex = Exchange::start(&w, 0, &Arc::from("main"));
        ex.respond(&Response::new(()));
        ex.finish(0, 0);
        has(
            &scrape(&t, &c),
            r#"weir_downstream_rq_time_seconds_count{listener="main"} 2"#,
        );
    }

    #[test]
    fn local_errors_flag_by_their_reason() {
        let (t, w, c) = setup();
        let mut ex = Exchange::start(&w, 0, &Arc::from("main"));
        let resp = crate::http::respond::error_response(&ProxyError::ConnectTimeout(
            ([127, 0, 0, 1], 1).into(),
        ));
        ex.respond(&resp);
        ex.finish(0, 0);
        has(
            &scrape(&t, &c),
            r#"weir_downstream_rq_flags_total{listener="main",flag="UF"} 1"#,
        );
        assert_eq!(flag_of_reason("upstream_response_timeout"), flags::UT);
        assert_eq!(flag_of_reason("filter_failed"), flags::FF);
        assert_eq!(flag_of_reason("no_route"), flags::NR);
    }
}
