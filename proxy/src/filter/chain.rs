//! One request through a filter chain.
//!
//! Request phases run in chain order, response phases in reverse (Envoy's encoder order). A filter
//! that returns `Pause` parks the stream until it calls `proxy_continue_stream` (typically from a
//! callout answer); a local reply ends the request phases and flows back through the response
//! phases of the filters that saw the request; `proxy_close_stream` resets the stream. A VM that
//! traps applies its failure policy to this stream only: fail closed (503) or skip the filter.
//! When the `ChainRun` goes away (the response body ended, or the request failed), every filter
//! that saw the stream gets `on_log` → `on_done` → `on_delete`, in chain order.
//!
//! One file of about 700 lines: the phases share one state machine (`ChainRun`) whose states and
//! transitions read best side by side.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use weir_host_abi::{
    Availability, ContextId, Effect, HttpPhases, LocalReply, Outcome, StreamType, Verdict, VmError,
    downcast_stream,
};

use super::runtime::{ChainShared, StreamEvent, WorkerFilters};
use super::stream::HttpStream;
use crate::proto::body::ProxyBody;

/// How long a filter may keep a stream paused (waiting on a callout it made) before the stream
/// fails with 504.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

/// Why the chain stopped the request.
#[derive(Debug)]
pub enum Stop {
    /// A filter answered locally.
    LocalReply(LocalReply),
    /// A filter failed (or was unavailable) with `fail_closed`, or timed out while paused.
    Fail(StatusCode, &'static str),
    /// A filter reset the stream (`proxy_close_stream`).
    Reset,
}

/// What came out of the body phase (or, for a pause, the trailers phase).
#[derive(Debug)]
pub enum BodyOut {
    /// The bytes to forward (possibly none while a filter buffers).
    Data(Bytes),
    /// A filter paused on the end of the body: hold the stream until it continues.
    Paused(BodyPause),
}

/// Where a body phase paused: the chain position, its filter and the stream's context there.
#[derive(Debug, Clone, Copy)]
pub struct BodyPause {
    pos: usize,
    fi: usize,
    ctx: ContextId,
}

/// The chain's run for one request.
pub struct ChainRun {
    filters: Rc<WorkerFilters>,
    chain: std::sync::Arc<[usize]>,
    pub shared: Rc<ChainShared>,
    /// One per chain position: its context, phases and response progress.
    slots: RefCell<Vec<Slot>>,
    /// The union of the positions' phases.
    wanted: Cell<HttpPhases>,
    /// A local reply asked for during a body phase, after the request went upstream.
    pub late_reply: RefCell<Option<LocalReply>>,
    /// A failure in a request body phase (e.g. the buffer limit): the answer once the upstream
    /// exchange has been abandoned.
    pub late_failure: Cell<Option<(StatusCode, &'static str)>>,
    finished: Cell<bool>,
    /// Whether any context was put in the worker's registry (see `settle`).
    registered: Cell<bool>,
}

/// What the run knows about one chain position.
#[derive(Clone, Copy)]
struct Slot {
    /// The context the position runs in (`None`: not started, or skipped after a fail-open),
    /// with the generation of the VM that created it (see `live_ctx`).
    ctx: Option<(ContextId, u64)>,
    /// The HTTP phases its filter runs (its VM's declaration, read when the stream context is
    /// created): a phase nobody runs costs the stream nothing.
    phases: HttpPhases,
    /// Its `on_response_headers` has run: a replacement answer (a failure or local reply raised
    /// in the response phase) goes only through the positions that have not.
    response_done: bool,
}

enum Phase {
    Request,
    Response,
}

impl ChainRun {
    pub fn new(
        filters: Rc<WorkerFilters>,
        chain: std::sync::Arc<[usize]>,
        stream: HttpStream,
    ) -> Rc<Self> {
        let n = chain.len();
        Rc::new(Self {
            filters,
            chain,
            shared: Rc::new(ChainShared {
                stream: RefCell::new(Box::new(stream)),
                events: RefCell::new(Vec::new()),
                wake: tokio::sync::Notify::new(),
            }),
            slots: RefCell::new(vec![
                Slot {
                    ctx: None,
                    phases: HttpPhases::NONE,
                    response_done: false,
                };
                n
            ]),
            wanted: Cell::new(HttpPhases::NONE),
            late_reply: RefCell::new(None),
            late_failure: Cell::new(None),
            finished: Cell::new(false),
            registered: Cell::new(false),
        })
    }

    /// Runs `f` on the concrete stream.
    pub fn with_stream<R>(&self, f: impl FnOnce(&mut HttpStream) -> R) -> R {
        let mut b = self.shared.stream.borrow_mut();
        f(downcast_stream::<HttpStream>(&mut b).expect("the chain's stream is an HttpStream"))
    }

    /// `on_request_headers` for every filter, in order.
    pub async fn request_headers(&self, end_of_stream: bool) -> Result<(), Stop> {
        for pos in 0..self.chain.len() {
            let fi = self.chain[pos];
            let result = {
                let mut slot = self.filters.plugins[fi].borrow_mut();
                let vm = match slot.as_mut().map(|p| p.vm()) {
                    Some(Availability::Ready(vm)) => vm,
                    Some(Availability::Unavailable(Verdict::FailOpen)) => continue,
                    _ => {
                        return Err(Stop::Fail(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "filter_unavailable",
                        ));
                    }
                };
                let ctx = match vm.create_http_stream() {
                    Ok(c) => c,
                    Err(e) => {
                        drop(slot);
                        self.on_error(fi, e)?;
                        continue;
                    }
                };
                let phases = vm.http_phases();
                {
                    let mut slots = self.slots.borrow_mut();
                    slots[pos].ctx = Some((ctx, self.filters.generation(fi)));
                    slots[pos].phases = phases;
                }
                self.wanted.set(self.wanted.get() | phases);
                if !phases.contains(HttpPhases::REQUEST_HEADERS) {
                    continue;
                }
                let n = self.with_stream(|s| s.request_headers.len() + 4);
                let mut stream = self.shared.stream.borrow_mut();
                vm.on_request_headers(ctx, &mut stream, n, end_of_stream)
            };
            if !plain_continue(&result) {
                self.settle(pos, fi, result, Phase::Request).await?;
            }
        }
        Ok(())
    }

    /// `on_response_headers` for every filter that saw the request, in reverse order.
    pub async fn response_headers(&self, end_of_stream: bool) -> Result<(), Stop> {
        for pos in (0..self.chain.len()).rev() {
            let fi = self.chain[pos];
            if std::mem::replace(&mut self.slots.borrow_mut()[pos].response_done, true)
                || !self.runs(pos, HttpPhases::RESPONSE_HEADERS)
            {
                continue;
            }
            let Some(ctx) = self.live_ctx(pos)? else {
                continue;
            };
            let result = {
                let mut slot = self.filters.plugins[fi].borrow_mut();
                let vm = match slot.as_mut().map(|p| p.vm()) {
                    Some(Availability::Ready(vm)) => vm,
                    Some(Availability::Unavailable(Verdict::FailOpen)) => continue,
                    // The VM that saw this request is gone: its stream gets a terminal answer.
                    _ => {
                        drop(slot);
                        self.forget(fi);
                        return Err(Stop::Fail(StatusCode::SERVICE_UNAVAILABLE, "filter_failed"));
                    }
                };
                let n = self.with_stream(|s| s.response_headers.len() + 1);
                let mut stream = self.shared.stream.borrow_mut();
                vm.on_response_headers(ctx, &mut stream, n, end_of_stream)
            };
            if !plain_continue(&result) {
                self.settle(pos, fi, result, Phase::Response).await?;
            }
        }
        Ok(())
    }

    /// The context at `pos`, if it belongs to the filter's current VM. A context of a replaced
    /// VM (it failed and was rebuilt) must never be used with the new one — ids start over there
    /// — so the stream gets its filter's failure policy instead.
    fn live_ctx(&self, pos: usize) -> Result<Option<ContextId>, Stop> {
        let fi = self.chain[pos];
        let Some((ctx, generation)) = self.slots.borrow()[pos].ctx else {
            return Ok(None);
        };
        if generation == self.filters.generation(fi) {
            return Ok(Some(ctx));
        }
        self.slots.borrow_mut()[pos].ctx = None;
        match self.filters.set.filters[fi].plugin.failure_policy {
            weir_host_abi::FailurePolicy::FailOpen => Ok(None),
            _ => Err(Stop::Fail(StatusCode::SERVICE_UNAVAILABLE, "filter_failed")),
        }
    }

    /// A failed callback: apply the filter's policy. `Ok` = skip the filter for this stream.
    fn on_error(&self, fi: usize, e: VmError) -> Result<(), Stop> {
        match e {
            VmError::Failed(failure) => match self.filters.vm_failed(fi, &failure) {
                Verdict::FailOpen => {
                    self.forget(fi);
                    Ok(())
                }
                Verdict::FailClosed => {
                    // The stream is answered for the failure; the dead filter sees no more of it.
                    self.forget(fi);
                    Err(Stop::Fail(StatusCode::SERVICE_UNAVAILABLE, "filter_failed"))
                }
            },
            other => {
                tracing::warn!(filter = %self.filters.set.filters[fi].name, error = %other, "filter callback refused");
                Err(Stop::Fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "filter_error",
                ))
            }
        }
    }

    /// Drops a failed filter's context from this stream (its VM is gone).
    fn forget(&self, fi: usize) {
        let mut slots = self.slots.borrow_mut();
        for (pos, slot) in slots.iter_mut().enumerate() {
            if self.chain[pos] == fi
                && let Some((ctx, generation)) = slot.ctx.take()
            {
                self.filters.unregister(fi, generation, ctx);
            }
        }
    }

    /// Applies a header callback's result; waits while the filter keeps the stream paused.
    async fn settle(
        &self,
        pos: usize,
        fi: usize,
        result: Result<Outcome, VmError>,
        phase: Phase,
    ) -> Result<(), Stop> {
        let outcome = match result {
            Ok(o) => o,
            Err(e) => return self.on_error(fi, e),
        };
        let my_ctx = self.slots.borrow()[pos].ctx.map(|(c, _)| c);
        let direction = direction(matches!(phase, Phase::Response));
        let mut resumed = false;
        let mut others = Vec::new();
        for d in outcome.effects {
            if Some(d.context) == my_ctx {
                resumed |= self.apply(d.effect, direction)?;
            } else {
                others.push(d);
            }
        }
        if !others.is_empty() {
            // Effects for other streams (the filter switched its effective context).
            self.filters.route_effects(
                fi,
                Outcome {
                    action: weir_host_abi::Action::Continue,
                    effects: others,
                },
            );
        }
        if outcome.action == weir_host_abi::Action::Continue || resumed {
            return Ok(());
        }
        self.hold(fi, my_ctx, direction).await
    }

    /// Holds the stream while the filter `fi` keeps it paused: until it continues `direction`,
    /// replies, resets or fails, at most [`MAX_PAUSE`].
    async fn hold(
        &self,
        fi: usize,
        my_ctx: Option<ContextId>,
        direction: StreamType,
    ) -> Result<(), Stop> {
        // Paused: from now on callout answers, ticks and failures must be able to reach this
        // stream (registered only now: most streams never pause, and the registry costs a hash).
        if let Some(ctx) = my_ctx {
            self.filters.register(fi, ctx, &self.shared);
            self.registered.set(true);
        }
        // Paused: wait for the filter to continue (or reply, or reset) from a later delivery.
        let wait = async {
            loop {
                let events: Vec<StreamEvent> = self.shared.events.borrow_mut().drain(..).collect();
                for ev in events {
                    match ev {
                        StreamEvent::Effect { filter, effect } if filter == fi => {
                            if self.apply(effect, direction)? {
                                return Ok(());
                            }
                        }
                        StreamEvent::Effect { effect, .. } => {
                            // Another filter of this stream acted on it (effective context).
                            self.apply(effect, direction)?;
                        }
                        StreamEvent::Failed { filter, verdict } => {
                            self.forget(filter);
                            if verdict == Verdict::FailClosed {
                                return Err(Stop::Fail(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "filter_failed",
                                ));
                            }
                            if filter == fi {
                                return Ok(());
                            }
                        }
                    }
                }
                self.shared.wake.notified().await;
            }
        };
        match tokio::time::timeout(MAX_PAUSE, wait).await {
            Ok(r) => r,
            Err(_) => Err(Stop::Fail(
                StatusCode::GATEWAY_TIMEOUT,
                "filter_pause_timeout",
            )),
        }
    }

    /// Applies one effect; `Ok(true)` when it resumes the given direction.
    fn apply(&self, effect: Effect, direction: StreamType) -> Result<bool, Stop> {
        match effect {
            Effect::LocalReply(r) => Err(Stop::LocalReply(r)),
            Effect::CloseStream(_) => Err(Stop::Reset),
            Effect::ContinueStream(d) => Ok(d == direction),
        }
    }

    /// Runs one body chunk through the chain (request: in order; response: in reverse). `held`
    /// has one buffer per position: what a pausing filter accumulated. Returns the bytes that
    /// come out of the last filter (possibly none while some filter buffers), or, when a filter
    /// pauses on the end of the body, where the chain stopped: [`ChainRun::hold_body`] waits for
    /// it to continue and [`ChainRun::body_resume`] takes the body on from there.
    pub fn body_chunk(
        &self,
        response: bool,
        held: &mut Vec<Vec<u8>>,
        data: Bytes,
        end_of_stream: bool,
    ) -> Result<BodyOut, Stop> {
        self.body_from(response, held, data, end_of_stream, 0)
    }

    /// Waits while the filter that paused on the end of the body (or in the trailers phase)
    /// keeps the stream paused.
    pub async fn hold_body(&self, at: BodyPause, response: bool) -> Result<(), Stop> {
        self.hold(at.fi, Some(at.ctx), direction(response)).await
    }

    /// After [`ChainRun::hold_body`]: the body as the paused filter left it (it may have changed
    /// it while paused), on through the filters after it.
    pub fn body_resume(
        &self,
        response: bool,
        held: &mut Vec<Vec<u8>>,
        at: BodyPause,
    ) -> Result<BodyOut, Stop> {
        let body = self.with_stream(|s| std::mem::take(s.body_mut(response)));
        self.body_from(response, held, body, true, self.after(response, at))
    }

    /// How many positions, in phase order, come before the one after the pause `at`.
    fn after(&self, response: bool, at: BodyPause) -> usize {
        self.order(response)
            .position(|p| p == at.pos)
            .map_or(self.chain.len(), |i| i + 1)
    }

    /// [`ChainRun::body_chunk`] from the `skip`-th position in phase order.
    fn body_from(
        &self,
        response: bool,
        held: &mut Vec<Vec<u8>>,
        data: Bytes,
        end_of_stream: bool,
        skip: usize,
    ) -> Result<BodyOut, Stop> {
        let mut chunk = data;
        let phase = if response {
            HttpPhases::RESPONSE_BODY
        } else {
            HttpPhases::REQUEST_BODY
        };
        if !self.wanted.get().contains(phase) {
            return Ok(BodyOut::Data(chunk));
        }
        if held.len() < self.chain.len() {
            held.resize(self.chain.len(), Vec::new());
        }
        for pos in self.order(response).skip(skip) {
            let fi = self.chain[pos];
            if !self.runs(pos, phase) {
                continue;
            }
            let Some(ctx) = self.live_ctx(pos)? else {
                continue;
            };
            if chunk.is_empty() && !end_of_stream && held[pos].is_empty() {
                continue;
            }
            // What this filter is offered: the chunk itself, or what it held plus the chunk.
            let buf = if held[pos].is_empty() {
                chunk
            } else {
                let mut h = std::mem::take(&mut held[pos]);
                h.extend_from_slice(&chunk);
                Bytes::from(h)
            };
            self.with_stream(|s| *s.body_mut(response) = buf);
            let result = {
                let mut slot = self.filters.plugins[fi].borrow_mut();
                let vm = match slot.as_mut().map(|p| p.vm()) {
                    Some(Availability::Ready(vm)) => vm,
                    Some(Availability::Unavailable(Verdict::FailOpen)) => {
                        // Skipped (fail open): its bytes go on unchanged.
                        chunk = self.with_stream(|s| std::mem::take(s.body_mut(response)));
                        continue;
                    }
                    _ => {
                        drop(slot);
                        self.forget(fi);
                        return Err(Stop::Fail(StatusCode::SERVICE_UNAVAILABLE, "filter_failed"));
                    }
                };
                let len = self.with_stream(|s| s.body_mut(response).len());
                let mut stream = self.shared.stream.borrow_mut();
                if response {
                    vm.on_response_body(ctx, &mut stream, len, end_of_stream)
                } else {
                    vm.on_request_body(ctx, &mut stream, len, end_of_stream)
                }
            };
            let out = self.with_stream(|s| std::mem::take(s.body_mut(response)));
            let outcome = match result {
                Ok(o) => o,
                Err(e) => {
                    self.on_error(fi, e)?;
                    chunk = out;
                    continue;
                }
            };
            let mut resumed = false;
            for d in outcome.effects {
                if d.context == ctx {
                    resumed |= self.apply(d.effect, direction(response))?;
                }
            }
            if outcome.action == weir_host_abi::Action::Pause && !resumed {
                if !end_of_stream {
                    // Pause on a body chunk = buffer it and offer the whole buffer with the next
                    // chunk (Envoy's StopIterationAndBuffer).
                    held[pos] = Vec::from(out);
                    return Ok(BodyOut::Data(Bytes::new()));
                }
                // Pause on the end of the body (typically a callout about it): the body stays
                // where the filter can read and change it until it continues the stream.
                self.with_stream(|s| *s.body_mut(response) = out);
                return Ok(BodyOut::Paused(BodyPause { pos, fi, ctx }));
            }
            chunk = out;
        }
        Ok(BodyOut::Data(chunk))
    }

    /// `on_request_trailers` (chain order) or `on_response_trailers` (reverse) with the trailers
    /// already in the stream. `Some`: a filter paused there; [`ChainRun::hold_body`] waits for it
    /// and [`ChainRun::trailers_resume`] goes on after it.
    pub fn trailers_phase(&self, response: bool) -> Result<Option<BodyPause>, Stop> {
        self.trailers_from(response, 0)
    }

    /// After [`ChainRun::hold_body`] for a pause in the trailers phase: the filters after it.
    pub fn trailers_resume(
        &self,
        response: bool,
        at: BodyPause,
    ) -> Result<Option<BodyPause>, Stop> {
        self.trailers_from(response, self.after(response, at))
    }

    /// [`ChainRun::trailers_phase`] from the `skip`-th position in phase order.
    fn trailers_from(&self, response: bool, skip: usize) -> Result<Option<BodyPause>, Stop> {
        let phase = if response {
            HttpPhases::RESPONSE_TRAILERS
        } else {
            HttpPhases::REQUEST_TRAILERS
        };
        for pos in self.order(response).skip(skip) {
            let fi = self.chain[pos];
            if !self.runs(pos, phase) {
                continue;
            }
            let Some(ctx) = self.live_ctx(pos)? else {
                continue;
            };
            let result = {
                let mut slot = self.filters.plugins[fi].borrow_mut();
                let Some(Availability::Ready(vm)) = slot.as_mut().map(|p| p.vm()) else {
                    continue;
                };
                let n = self.with_stream(|s| {
                    let t = if response {
                        &s.response_trailers
                    } else {
                        &s.request_trailers
                    };
                    t.as_ref().map_or(0, |t| t.len())
                });
                let mut stream = self.shared.stream.borrow_mut();
                if response {
                    vm.on_response_trailers(ctx, &mut stream, n)
                } else {
                    vm.on_request_trailers(ctx, &mut stream, n)
                }
            };
            match result {
                Ok(outcome) => {
                    let mut resumed = false;
                    for d in outcome.effects {
                        if d.context == ctx {
                            resumed |= self.apply(d.effect, direction(response))?;
                        }
                    }
                    if outcome.action == weir_host_abi::Action::Pause && !resumed {
                        return Ok(Some(BodyPause { pos, fi, ctx }));
                    }
                }
                Err(e) => self.on_error(fi, e)?,
            }
        }
        Ok(None)
    }

    /// The trailers to send after the body, if any (non-empty).
    pub fn take_trailers(&self, response: bool) -> Option<http::HeaderMap> {
        self.with_stream(|s| {
            if response {
                s.response_trailers.take()
            } else {
                s.request_trailers.take()
            }
        })
        .filter(|t| !t.is_empty())
    }

    /// `on_log` → `on_done` → `on_delete` for every filter that saw the stream (once).
    pub fn finish(&self) {
        if self.finished.replace(true) {
            return;
        }
        for pos in 0..self.chain.len() {
            let taken = self.slots.borrow_mut()[pos].ctx.take();
            let Some((ctx, generation)) = taken else {
                continue;
            };
            let fi = self.chain[pos];
            if self.registered.get() {
                self.filters.unregister(fi, generation, ctx);
            }
            // A context of a VM that has since been replaced is gone with it.
            if generation != self.filters.generation(fi) {
                continue;
            }
            let result = {
                let Ok(mut slot) = self.filters.plugins[fi].try_borrow_mut() else {
                    continue;
                };
                let Some(Availability::Ready(vm)) = slot.as_mut().map(|p| p.vm()) else {
                    continue;
                };
                let Ok(mut stream) = self.shared.stream.try_borrow_mut() else {
                    continue;
                };
                vm.finish_http_stream(ctx, &mut stream)
            };
            if let Err(VmError::Failed(f)) = result {
                self.filters.vm_failed(fi, &f);
            }
        }
    }

    /// Chain positions in phase order: as listed for the request, reversed for the response.
    fn order(&self, response: bool) -> impl Iterator<Item = usize> + use<> {
        let n = self.chain.len();
        (0..n).map(move |i| if response { n - 1 - i } else { i })
    }

    /// Whether the filter at `pos` runs `phase` (declared it; see `weir_host_abi::phases`).
    fn runs(&self, pos: usize, phase: HttpPhases) -> bool {
        self.slots.borrow()[pos].phases.contains(phase)
    }

    /// Whether some filter on this stream runs any of `phases` (a request body nobody filters
    /// goes upstream as it is; a response body nobody filters keeps its upstream framing).
    pub fn wants(&self, phases: HttpPhases) -> bool {
        self.wanted.get().intersects(phases) && {
            self.slots
                .borrow()
                .iter()
                .any(|s| s.ctx.is_some() && s.phases.intersects(phases))
        }
    }
}

impl Drop for ChainRun {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The common answer of a header callback: `Continue` and nothing else asked. It needs no
/// settling (no effects to apply, no pause to wait out), so the async step is skipped.
fn plain_continue(result: &Result<Outcome, VmError>) -> bool {
    matches!(result, Ok(o) if o.action == weir_host_abi::Action::Continue && o.effects.is_empty())
}

/// The stream direction a phase acts on.
fn direction(response: bool) -> StreamType {
    if response {
        StreamType::HttpResponse
    } else {
        StreamType::HttpRequest
    }
}

/// The response for a local reply (Envoy's `sendLocalReply`: `content-type: text/plain` for a
/// non-empty body; a gRPC reply is trailers-only with `grpc-status` / `grpc-message`).
pub fn local_reply_response(r: &LocalReply) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Empty);
    let grpc = r.grpc_status.filter(|c| (0..=16).contains(c));
    *resp.status_mut() = match grpc {
        Some(_) => StatusCode::OK,
        None => u16::try_from(r.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            // A local reply is a final answer: an informational status (101 would look like an
            // upgrade) is refused.
            .filter(|s| !s.is_informational())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let h = resp.headers_mut();
    for (k, v) in &r.headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k),
            HeaderValue::from_bytes(v),
        ) {
            h.append(k, v);
        }
    }
    match grpc {
        Some(code) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(code));
            if let Ok(m) = HeaderValue::from_bytes(&r.body) {
                h.insert("grpc-message", m);
            }
        }
        None if !r.body.is_empty() => {
            if !h.contains_key(header::CONTENT_TYPE) {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            *resp.body_mut() = ProxyBody::from(Bytes::from(r.body.clone()));
        }
        None => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    //! A chain in process: real stock filters in the real sandbox, a connection over an
    //! in-memory pipe, a real upstream.

    use crate::testing::{Upstream, Worker, run};

    #[test]
    fn the_chain_edits_both_directions_and_answers_locally() {
        run(async {
            let up = Upstream::start().await;
            let w = Worker::start(
                "
listeners:
  - { name: main, address: 127.0.0.1:0, default_cluster: up, chain: edge }
clusters:
  up: { endpoints: [\"{up}\"] }
chains:
  edge: [stamp, deny]
filters:
  stamp:
    module: builtin:add-header
    config: { request: { x-via-weir: \"1\" }, response: { x-served-by: weir } }
  deny:
    module: builtin:local-reply
    config: { status: 403, body: no, when_header: x-deny }
",
                up.addr,
            )
            .await;
            let out = w
                .exchange(b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await;
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
            assert!(
                out.to_ascii_lowercase()
                    .contains("\r\nx-served-by: weir\r\n"),
                "{out}"
            );
            let head = up.heads.lock().unwrap()[0].to_ascii_lowercase();
            assert!(head.contains("\r\nx-via-weir: 1\r\n"), "{head}");
            // The second filter answers locally; the response phases still run (the first
            // filter stamps the reply), and nothing goes upstream.
            let out = w
                .exchange(b"GET /b HTTP/1.1\r\nHost: a\r\nX-Deny: 1\r\nConnection: close\r\n\r\n")
                .await;
            assert!(out.starts_with("HTTP/1.1 403 "), "{out}");
            assert!(
                out.to_ascii_lowercase()
                    .contains("\r\nx-served-by: weir\r\n"),
                "{out}"
            );
            assert_eq!(
                up.heads.lock().unwrap().len(),
                1,
                "the denied request went upstream"
            );
        });
    }
}
