//! Forwarding one request to a cluster: the resilience layer around [`send`].
//!
//! ```text
//! forward ─▶ breaker (max_requests) ─▶ pick (priority, health, ejection, LB) ─▶ send (one attempt;
//!   max_connections / max_pending at connect) ─▶ settle (statistics, outlier run, EWMA)
//!   ─▶ retry? (policy, idempotency, replay buffer, budget, max_retries) ─▶ backoff ─▶ pick …
//! ```
//!
//! A request with nothing to retry and no per-try or overall timeout takes `once`: one pick and
//! one attempt, as lean as a proxy without this layer (no allocation, no clock read unless the
//! balancer needs latencies, no deadline beyond the response timeout inside `send`). Anything
//! more goes through `resilient`, boxed so that its larger state does not weigh on every
//! request's future.
//!
//! Timeouts: `response` bounds each attempt from its request being sent to its response head
//! (inside `send`); `per_try` bounds each attempt as a whole, connect included; `request` bounds
//! all attempts and backoffs together; `idle` aborts a response body that stalls ([`IdleBody`]).
//! All of them use the worker's coarse timer (`timer::deadline`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};

use super::breaker::Held;
use super::retry::{Outcome, backoff, retries_on};
use super::shared::{Resource, TimeoutKind, WorkerStats};
use super::{Cluster, Endpoint, send};
use crate::config::{LbPolicy, RetryPolicy};
use crate::proto::body::{BoxError, ProxyBody, Replay, StageBody};
use crate::proto::error::{ATTEMPT_COUNT_HEADER, ProxyError};
use crate::proto::h1::head::RawHead;
use crate::timer::{self, Deadline};

/// What the route decision may change for one request.
#[derive(Debug)]
pub struct Route {
    /// Each attempt's wait for its response head once the request is sent.
    pub response_timeout: Duration,
    /// Each attempt as a whole (the cluster's `timeouts.per_try` unless set).
    pub per_try_timeout: Option<Duration>,
    /// Retries after the first try (the cluster's `retries.attempts` unless set; 0: none).
    pub retries: Option<u32>,
    /// The response goes straight to an HTTP/1.1 client with nothing reading its headers on
    /// the way: its head may stay raw ([`crate::proto::h1::head::RawHead`]).
    pub raw_head: bool,
    /// The request's fields as the client wrote them, with what the proxy appends
    /// ([`super::h1::RawRequest`]); every attempt sends them.
    pub raw_request: Option<super::h1::RawRequest>,
}

impl Route {
    /// The cluster's own settings.
    pub fn of(cluster: &Cluster) -> Self {
        Self {
            response_timeout: cluster.response_timeout,
            per_try_timeout: None,
            retries: None,
            raw_head: false,
            raw_request: None,
        }
    }
}

/// What the caller hears of each attempt (telemetry, the filters' stream information).
pub trait Observer {
    /// An attempt to endpoint `ep` of `cluster` is about to send `req` (which may still be
    /// changed: trace context, for one).
    fn start(&mut self, cluster: &Cluster, ep: &Endpoint, req: &mut Request<ProxyBody>);
    /// How that attempt ended, before any retry is decided.
    fn done(&mut self, r: &Result<Response<ProxyBody>, ProxyError>);
    /// The request failed a retriable way with no retry left (Envoy's `URX`).
    fn retry_limit(&mut self) {}
}

/// Hears nothing.
impl Observer for () {
    fn start(&mut self, _: &Cluster, _: &Endpoint, _: &mut Request<ProxyBody>) {}
    fn done(&mut self, _: &Result<Response<ProxyBody>, ProxyError>) {}
}

/// Sends `req` to `cluster` under its breakers, balancing, timeouts and retry policy, and returns
/// the response (or the error of the last attempt). `obs` hears every attempt.
pub async fn forward(
    cluster: &Cluster,
    req: Request<ProxyBody>,
    route: &Route,
    obs: &mut impl Observer,
) -> Result<Response<ProxyBody>, ProxyError> {
    cluster.admit(Resource::Requests)?;
    let retries = match route.retries {
        Some(n) => n,
        None => cluster.retries.as_ref().map_or(0, |p| p.attempts),
    };
    let per_try = route.per_try_timeout.or(cluster.per_try_timeout);
    if retries == 0 && per_try.is_none() && cluster.request_timeout.is_none() {
        return once(cluster, req, route, obs).await;
    }
    Box::pin(resilient(cluster, req, route, retries, per_try, obs)).await
}

/// A filter's callout (HTTP or gRPC) to `cluster`: the same path as a request's, under the
/// cluster's `max_requests` breaker, its health, ejection and balancing, with the attempt
/// counted by outlier detection and the endpoint statistics. One attempt: like Envoy's async
/// client, a callout is not retried under the cluster's policy (the filter decides what to do
/// with a failure).
pub async fn callout(
    cluster: &Cluster,
    req: Request<ProxyBody>,
    route: &Route,
) -> Result<Response<ProxyBody>, ProxyError> {
    cluster.admit(Resource::Requests)?;
    once(cluster, req, route, &mut ()).await
}

/// One pick, one attempt.
async fn once(
    cluster: &Cluster,
    mut req: Request<ProxyBody>,
    route: &Route,
    obs: &mut impl Observer,
) -> Result<Response<ProxyBody>, ProxyError> {
    let ep = cluster.endpoint()?;
    obs.start(cluster, &ep, &mut req);
    let start = cluster.start_clock();
    let r = send(cluster, &ep, req, route).await;
    obs.done(&r);
    cluster.settle(&ep, &r, start);
    r.map(|resp| cluster.idle_wrap(resp))
}

/// Attempts under a per-try and an overall deadline, retried as the policy allows.
async fn resilient(
    cluster: &Cluster,
    req: Request<ProxyBody>,
    route: &Route,
    retries: u32,
    per_try: Option<Duration>,
    obs: &mut impl Observer,
) -> Result<Response<ProxyBody>, ProxyError> {
    let default_policy;
    let policy: &RetryPolicy = match &cluster.retries {
        Some(p) => p,
        None => {
            default_policy = RetryPolicy::default();
            &default_policy
        }
    };
    let may_retry = retries > 0;
    let (parts, body) = req.into_parts();
    // RFC 9110 §9.2.2: only idempotent requests may be repeated, unless the policy says
    // otherwise or the request provably never left (checked per outcome below).
    let any_outcome = parts.method.is_idempotent() || policy.non_idempotent;
    // A body to replay is kept while it streams; an empty one (or one never retried) is not.
    let (replay, mut plain_body) = if may_retry && !body.is_end_stream() {
        (Some(Replay::new(body, policy.max_body)), None)
    } else {
        (None, Some(body))
    };
    // The first attempt takes the head itself; each retry a copy of it.
    let spare = may_retry.then(|| copy_parts(&parts));
    let mut first_parts = Some(parts);
    if may_retry {
        cluster.shared.budget.deposit(timer::now_ms());
    }
    let mut overall = cluster.request_timeout.map(|d| (timer::deadline(d), d));
    let mut attempt = 1u32;
    let mut last_endpoint: Option<std::net::SocketAddr> = None;
    let mut retrying: Option<Held<'_>> = None;
    loop {
        let mut parts = match first_parts.take() {
            Some(p) => p,
            None => copy_parts(spare.as_ref().expect("a retry keeps a copy of the head")),
        };
        if may_retry {
            parts
                .headers
                .insert(ATTEMPT_COUNT_HEADER, HeaderValue::from(attempt));
        }
        let body = match &replay {
            Some(r) => r.reader(),
            None => plain_body.take().unwrap_or(ProxyBody::Empty),
        };
        let mut req = Request::from_parts(parts, body);
        let ep = match pick_avoiding(cluster, last_endpoint) {
            Ok(ep) => ep,
            Err(e) => return Err(retried(e, attempt, may_retry)),
        };
        last_endpoint = Some(ep.addr);
        obs.start(cluster, &ep, &mut req);
        let start = cluster.start_clock();
        let result = race(send(cluster, &ep, req, route), per_try, overall.as_mut()).await;
        obs.done(&result);
        let outcome = cluster.settle(&ep, &result, start);
        drop(retrying.take());
        if let Err(ProxyError::RequestTimeout(_)) = &result {
            cluster.stats.timeouts[TimeoutKind::Request as usize].inc();
        }
        let retriable = may_retry && retries_on(&policy.on, outcome);
        let retry = retriable
            && attempt <= retries
            && (any_outcome || outcome.never_sent())
            && replay.as_ref().is_none_or(|r| r.replayable())
            // The breaker only looks; the budget takes a token, so it is asked last.
            && cluster.admit(Resource::Retries).is_ok()
            && budget_allows(cluster);
        if !retry {
            if retriable && attempt > retries {
                crate::telemetry::upstream_retry_limit(cluster.metrics);
                obs.retry_limit();
            }
            return finish(cluster, result, attempt, may_retry, retriable);
        }
        retrying = Some(Held::new(&cluster.stats.retries_active));
        if let Ok(resp) = result {
            // Read what already arrived so its connection can serve again; then let it go.
            drain_ready(resp.into_body());
        }
        let wait = backoff(policy, attempt);
        tracing::debug!(cluster = %cluster.name, endpoint = %ep.addr, attempt, ?outcome, ?wait, "retrying");
        if !wait.is_zero() {
            let pause = race(
                async {
                    timer::deadline(wait).await;
                    Ok(Response::new(ProxyBody::Empty))
                },
                None,
                overall.as_mut(),
            )
            .await;
            if let Err(e) = pause {
                cluster.stats.timeouts[TimeoutKind::Request as usize].inc();
                return Err(retried(e, attempt, may_retry));
            }
        }
        cluster.stats.rq_retry.inc();
        attempt += 1;
    }
}

/// The budget's verdict on one more retry (counted when it says no).
fn budget_allows(cluster: &Cluster) -> bool {
    if cluster.shared.budget.withdraw(timer::now_ms()) {
        return true;
    }
    cluster.stats.retry_overflow_budget.inc();
    false
}

/// A retry tries another endpoint than the one that just failed, when it can.
fn pick_avoiding(
    cluster: &Cluster,
    last: Option<std::net::SocketAddr>,
) -> Result<std::rc::Rc<Endpoint>, ProxyError> {
    let mut ep = cluster.endpoint()?;
    if let Some(last) = last
        && cluster.endpoints.len() > 1
    {
        for _ in 0..2 {
            if ep.addr != last {
                break;
            }
            ep = cluster.endpoint()?;
        }
    }
    Ok(ep)
}

/// The answer of the last attempt, marked with the attempt count when a retry policy applied.
fn finish(
    cluster: &Cluster,
    result: Result<Response<ProxyBody>, ProxyError>,
    attempt: u32,
    may_retry: bool,
    retriable: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    match result {
        Ok(mut resp) => {
            if attempt > 1 && !retriable {
                cluster.stats.rq_retry_success.inc();
            }
            if may_retry {
                resp.headers_mut()
                    .insert(ATTEMPT_COUNT_HEADER, HeaderValue::from(attempt));
            }
            Ok(cluster.idle_wrap(resp))
        }
        Err(e) => Err(retried(e, attempt, may_retry)),
    }
}

fn retried(e: ProxyError, attempts: u32, may_retry: bool) -> ProxyError {
    if may_retry {
        ProxyError::Retried {
            attempts,
            last: Box::new(e),
        }
    } else {
        e
    }
}

/// Runs an attempt (or a backoff) under the per-try deadline (started here) and the overall one.
async fn race<F>(
    f: F,
    per_try: Option<Duration>,
    overall: Option<&mut (Deadline, Duration)>,
) -> Result<Response<ProxyBody>, ProxyError>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    let mut f = std::pin::pin!(f);
    let mut per_try = per_try.map(|d| (timer::deadline(d), d));
    let mut overall = overall;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = f.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if let Some((d, dur)) = &mut per_try
            && Pin::new(d).poll(cx).is_ready()
        {
            return Poll::Ready(Err(ProxyError::PerTryTimeout(*dur)));
        }
        if let Some((d, dur)) = overall.as_deref_mut()
            && Pin::new(d).poll(cx).is_ready()
        {
            return Poll::Ready(Err(ProxyError::RequestTimeout(*dur)));
        }
        Poll::Pending
    })
    .await
}

/// A copy of a request head for another attempt (extensions are the first attempt's alone).
fn copy_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

/// Reads whatever of a discarded response is already there, without waiting: a short error
/// body read to its end returns its connection to the pool instead of closing it.
fn drain_ready(mut body: ProxyBody) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut left = 64 * 1024usize;
    while !body.is_end_stream() {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => {
                let n = f.data_ref().map_or(0, Bytes::len);
                if n > left {
                    break;
                }
                left -= n;
            }
            _ => break,
        }
    }
}

impl Cluster {
    /// The coarse start time of an attempt, when the balancer needs latencies.
    fn start_clock(&self) -> Option<u64> {
        (self.lb == LbPolicy::P2cEwma).then(timer::now_ms)
    }

    /// Accounts for one attempt: error and timeout counts, the outlier runs, the endpoint's
    /// latency estimate. Returns how it ended.
    fn settle(
        &self,
        ep: &Endpoint,
        r: &Result<Response<ProxyBody>, ProxyError>,
        start: Option<u64>,
    ) -> Outcome {
        let o = match r {
            Ok(resp) => Outcome::Status(resp.status().as_u16()),
            Err(e) => {
                let kind = match e {
                    ProxyError::ConnectTimeout(_) => Some(TimeoutKind::Connect),
                    ProxyError::ResponseTimeout(_) => Some(TimeoutKind::Response),
                    ProxyError::PerTryTimeout(_) => Some(TimeoutKind::PerTry),
                    _ => None,
                };
                if let Some(k) = kind {
                    self.stats.timeouts[k as usize].inc();
                }
                Outcome::of_error(e)
            }
        };
        let failed = !matches!(o, Outcome::Final) && !o.is_success();
        if failed {
            ep.count_error();
        }
        if self.shared.outlier.is_some() {
            let now = if failed { timer::now_ms() } else { 0 };
            if self.shared.report(&ep.state, o, now) {
                crate::telemetry::upstream_ejection(ep.metric_slots());
            }
        }
        if let Some(t0) = start {
            let now = timer::now_ms();
            let took = now.saturating_sub(t0) as f64;
            let rtt = match o {
                Outcome::Final => None,
                Outcome::Status(_) => Some(took),
                // A fast failure must not look like a fast endpoint: count it as at least a
                // connect timeout (outlier detection is what takes a failing endpoint out).
                _ => Some(took.max(self.connect_timeout.as_secs_f64() * 1000.0)),
            };
            if let Some(rtt) = rtt {
                self.observe_latency(ep, rtt, now);
            }
        }
        o
    }

    /// Puts a response body under the idle timeout, if the cluster has one.
    fn idle_wrap(&self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        match self.idle_timeout {
            Some(idle) if !resp.body().is_end_stream() => {
                resp.map(|b| ProxyBody::Stage(Box::new(IdleBody::new(b, idle, &self.stats))))
            }
            _ => resp,
        }
    }
}

impl Outcome {
    /// A response below 500.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Status(s) if s < 500)
    }
}

/// A response body aborted when no byte of it arrives for the cluster's idle timeout. The head
/// is already downstream, so the client sees an abort (as for any upstream that breaks off).
pub struct IdleBody {
    inner: ProxyBody,
    idle_ms: u64,
    /// When the last frame arrived (coarse ms).
    last: u64,
    timer: Option<Deadline>,
    stats: Arc<WorkerStats>,
}

impl StageBody for IdleBody {
    fn take_raw_head(&mut self) -> Option<RawHead> {
        self.inner.take_raw_head()
    }
}

impl IdleBody {
    fn new(inner: ProxyBody, idle: Duration, stats: &Arc<WorkerStats>) -> Self {
        Self {
            inner,
            idle_ms: u64::try_from(idle.as_millis())
                .unwrap_or(u64::MAX / 4)
                .max(1),
            last: timer::now_ms(),
            timer: None,
            stats: stats.clone(),
        }
    }
}

impl Body for IdleBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_frame(cx) {
            if matches!(r, Some(Ok(_))) {
                this.last = timer::now_ms();
            }
            return Poll::Ready(r);
        }
        loop {
            let idle_ms = this.idle_ms;
            let d = this
                .timer
                .get_or_insert_with(|| timer::deadline(Duration::from_millis(idle_ms)));
            if Pin::new(d).poll(cx).is_pending() {
                return Poll::Pending;
            }
            let quiet = timer::now_ms().saturating_sub(this.last);
            if quiet >= this.idle_ms {
                this.stats.timeouts[TimeoutKind::Idle as usize].inc();
                tracing::warn!(
                    idle_ms = this.idle_ms,
                    reason = "upstream_idle_timeout",
                    "upstream response body stalled; aborting it"
                );
                return Poll::Ready(Some(Err("upstream_idle_timeout".into())));
            }
            // Data came meanwhile: wait out the rest, in eighths of the timeout so the timer's
            // per-duration queues stay few.
            let step = (this.idle_ms / 8).max(1);
            let rest = (this.idle_ms - quiet).div_ceil(step) * step;
            this.timer = Some(timer::deadline(Duration::from_millis(rest)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
