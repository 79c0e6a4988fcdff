//! Bodies through a filter chain: each chunk is offered to the filters as it streams (request
//! bodies in chain order, response bodies in reverse). A filter that pauses on a chunk gets the
//! accumulated buffer with the next one (Envoy's buffering), bounded by [`MAX_BUFFERED`]. A filter
//! that pauses on the end of the body (to make a callout about it, say), or in the trailers phase,
//! holds the end of the body until it continues the stream, as in Envoy. The response body
//! wrapper also holds the chain run to its end, so `on_log` runs once the response is complete
//! (or abandoned).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::chain::{BodyOut, BodyPause, ChainRun, Stop};
use crate::proto::body::{BoxError, ProxyBody, StageBody};

/// Most bytes filters may hold back on one stream (hardening.md: 1 MiB per stream).
pub const MAX_BUFFERED: usize = 1 << 20;

/// Why a filtered body stopped.
#[derive(Debug, thiserror::Error)]
pub enum FilteredBodyError {
    #[error("a filter buffered more than {MAX_BUFFERED} bytes of the body")]
    TooLarge,
    #[error("a filter ended the stream during a body phase")]
    Stopped,
    #[error(
        "filters changed the body length ({sent} bytes) but left content-length: {declared}; a \
         filter that edits the body must remove content-length in its headers phase"
    )]
    LengthMismatch { declared: u64, sent: u64 },
}

/// A body that runs through a chain.
pub struct FilteredBody {
    inner: ProxyBody,
    run: Rc<ChainRun>,
    response: bool,
    held: Vec<Vec<u8>>,
    /// Trailers waiting until the data before them has gone out.
    trailers: Option<http::HeaderMap>,
    done: bool,
    /// The `content-length` the message keeps (filters left it in place): the bytes that come
    /// out must add up to it, or the body fails (the connection is cut, never desynchronised).
    declared: Option<u64>,
    sent: u64,
    /// The first frame, pulled through the filters before the response head went out
    /// ([`FilteredBody::prefetch`]).
    pending: Option<Frame<Bytes>>,
    /// A filter paused on the end of the body: where, and the wait for it to continue.
    paused: Option<Paused>,
}

struct Paused {
    at: BodyPause,
    stage: Stage,
    resume: Pin<Box<dyn Future<Output = Result<(), Stop>>>>,
}

/// Which phase a pause is in.
enum Stage {
    /// The body phase, on the end of the body. `trailer_phase`: trailers came with it, and their
    /// phase runs once the body has gone through.
    Body { trailer_phase: bool },
    /// The trailers phase; `out` is the body's last bytes, sent once the phase is through.
    Trailers { out: Bytes },
}

/// What [`FilteredBody::prefetch`] learned before the response head goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// The whole filtered body (no trailers) is in hand: this many bytes.
    Complete(u64),
    /// More is to come (or trailers): the body streams.
    Streaming,
}

impl FilteredBody {
    pub fn new(inner: ProxyBody, run: Rc<ChainRun>, response: bool) -> Self {
        // No body at all (headers ended the stream): no body phase, as in Envoy, and the
        // stream must still end on its headers (HTTP/2 END_STREAM: gRPC trailers-only answers).
        let done = inner.is_end_stream();
        Self {
            inner,
            run,
            response,
            // Sized on the first chunk a filter sees (`ChainRun::body_chunk`).
            held: Vec::new(),
            trailers: None,
            done,
            declared: None,
            sent: 0,
            pending: None,
            paused: None,
        }
    }

    /// Runs the body through the filters before the response head is sent, until the first
    /// bytes come out, the body ends, or nothing is ready and no filter is holding bytes back. It
    /// never waits on the upstream for its own sake: only while a filter buffers, when nothing
    /// could be sent anyway. A body that is complete by then gets its exact length (whatever the
    /// filters did to it), which is the common case for small answers: no chunked encoding and
    /// no declared-length mismatch.
    pub async fn prefetch(&mut self) -> Result<Prefetch, BoxError> {
        std::future::poll_fn(|cx| match Pin::new(&mut *self).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.pending = Some(frame);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
            Poll::Ready(None) => Poll::Ready(Ok(())),
            Poll::Pending if self.paused.is_some() || self.held.iter().any(|h| !h.is_empty()) => {
                Poll::Pending
            }
            Poll::Pending => Poll::Ready(Ok(())),
        })
        .await?;
        let data_only = self.pending.as_ref().is_none_or(Frame::is_data);
        Ok(if self.done && self.trailers.is_none() && data_only {
            Prefetch::Complete(self.pending_len())
        } else {
            Prefetch::Streaming
        })
    }

    /// Holds the rest of a streaming body to the `content-length` the message keeps. An error if
    /// what already came out is more than that.
    pub fn enforce_length(&mut self, declared: u64) -> Result<(), BoxError> {
        self.declared = Some(declared);
        self.sent = 0;
        self.check_length(self.pending_len() as usize, false)
    }

    fn pending_len(&self) -> u64 {
        self.pending
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64)
    }

    /// Accounts for `n` bytes going out; an error if they break the declared length (too many
    /// now, or too few at the end).
    fn check_length(&mut self, n: usize, end: bool) -> Result<(), BoxError> {
        self.sent += n as u64;
        match self.declared {
            Some(declared) if self.sent > declared || (end && self.sent != declared) => {
                let e = FilteredBodyError::LengthMismatch {
                    declared,
                    sent: self.sent,
                };
                tracing::warn!(error = %e, "body length does not match content-length");
                Err(Box::new(e))
            }
            _ => Ok(()),
        }
    }

    fn step(&mut self, data: Bytes, eos: bool) -> Result<BodyOut, BoxError> {
        if self.held.iter().map(Vec::len).sum::<usize>() + data.len() > MAX_BUFFERED {
            if !self.response {
                // Envoy's answer to a request buffer overflow (a response overflow resets).
                self.run.late_failure.set(Some((
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    "filter_buffer_limit",
                )));
            }
            return Err(Box::new(FilteredBodyError::TooLarge));
        }
        self.run
            .body_chunk(self.response, &mut self.held, data, eos)
            .map_err(|stop| self.stopped(stop))
    }

    /// A filter ended the stream in a body or trailer phase: its local reply (if any) is the
    /// answer, and this body fails.
    fn stopped(&self, stop: Stop) -> BoxError {
        match stop {
            Stop::LocalReply(r) => *self.run.late_reply.borrow_mut() = Some(r),
            // The failure is the answer (503 `filter_failed`, 504 `filter_pause_timeout`): for a
            // request once the upstream exchange is abandoned, for a response whose head has not
            // gone out yet. Later in a response, the stream can only be cut.
            Stop::Fail(status, reason) => {
                if self.run.late_failure.get().is_none() {
                    self.run.late_failure.set(Some((status, reason)));
                }
            }
            Stop::Reset => {}
        }
        Box::new(FilteredBodyError::Stopped)
    }

    /// What a body step produced: bytes to send (`None`: nothing yet), or a pause to wait out.
    /// `eos`: the step had the end of the body; `trailer_phase`: trailers came with it.
    fn after_step(
        &mut self,
        out: Result<BodyOut, BoxError>,
        eos: bool,
        trailer_phase: bool,
    ) -> Option<Result<Frame<Bytes>, BoxError>> {
        let out = match out {
            Err(e) => return Some(Err(e)),
            Ok(BodyOut::Data(out)) => out,
            Ok(BodyOut::Paused(at)) => {
                self.pause(at, Stage::Body { trailer_phase });
                return None;
            }
        };
        if !eos {
            return self.emit(out, false);
        }
        if trailer_phase {
            return self.after_trailers(self.run.trailers_phase(self.response), out);
        }
        self.end(out)
    }

    /// What the trailers phase did: paused (hold `out` until it goes on), stopped, or through.
    fn after_trailers(
        &mut self,
        phase: Result<Option<BodyPause>, Stop>,
        out: Bytes,
    ) -> Option<Result<Frame<Bytes>, BoxError>> {
        match phase {
            Err(stop) => Some(Err(self.stopped(stop))),
            Ok(Some(at)) => {
                self.pause(at, Stage::Trailers { out });
                None
            }
            Ok(None) => self.end(out),
        }
    }

    /// Holds the stream where a filter paused until it continues.
    fn pause(&mut self, at: BodyPause, stage: Stage) {
        let run = self.run.clone();
        let response = self.response;
        self.paused = Some(Paused {
            at,
            stage,
            resume: Box::pin(async move { run.hold_body(at, response).await }),
        });
    }

    /// The body is through every phase: its last bytes, then the trailers (a filter may have
    /// added or edited them).
    fn end(&mut self, out: Bytes) -> Option<Result<Frame<Bytes>, BoxError>> {
        self.trailers = self.run.take_trailers(self.response);
        self.done = true;
        self.emit(out, true)
    }

    /// Accounts for and hands out bytes that came out of the filters (`None`: there are none).
    fn emit(&mut self, out: Bytes, end: bool) -> Option<Result<Frame<Bytes>, BoxError>> {
        if let Err(e) = self.check_length(out.len(), end) {
            return Some(Err(e));
        }
        if out.is_empty() {
            return None;
        }
        self.count(out.len());
        Some(Ok(Frame::data(out)))
    }
}

/// A filter chain's body phases are a stage above the body type: it carries them boxed.
impl StageBody for FilteredBody {}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.pending.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        loop {
            if let Some(p) = &mut this.paused {
                let resumed = match p.resume.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                let Some(Paused { at, stage, .. }) = this.paused.take() else {
                    continue;
                };
                let next = match stage {
                    Stage::Body { trailer_phase } => {
                        let out = resumed
                            .and_then(|()| this.run.body_resume(this.response, &mut this.held, at))
                            .map_err(|stop| this.stopped(stop));
                        this.after_step(out, true, trailer_phase)
                    }
                    Stage::Trailers { out } => {
                        let phase =
                            resumed.and_then(|()| this.run.trailers_resume(this.response, at));
                        this.after_trailers(phase, out)
                    }
                };
                if let Some(frame) = next {
                    return Poll::Ready(Some(frame));
                }
                continue;
            }
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let (out, eos, trailer_phase) = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let eos = this.inner.is_end_stream();
                        (this.step(data, eos), eos, false)
                    }
                    Err(frame) => {
                        // Trailers end the body: flush what filters held, run the trailer
                        // phase, then send the (possibly edited) trailers.
                        let response = this.response;
                        if let Ok(t) = frame.into_trailers() {
                            this.run.with_stream(|s| {
                                *(if response {
                                    &mut s.response_trailers
                                } else {
                                    &mut s.request_trailers
                                }) = Some(t);
                            });
                        }
                        (this.step(Bytes::new(), true), true, true)
                    }
                },
                Poll::Ready(None) => (this.step(Bytes::new(), true), true, false),
            };
            if let Some(frame) = this.after_step(out, eos, trailer_phase) {
                return Poll::Ready(Some(frame));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Filters may change the length: it is known only when the message keeps a declared
        // length (enforced above), or once the body is over.
        let pending = self.pending_len();
        if self.done && self.trailers.is_none() {
            SizeHint::with_exact(pending)
        } else if let Some(declared) = self.declared {
            SizeHint::with_exact(declared.saturating_sub(self.sent) + pending)
        } else {
            SizeHint::default()
        }
    }
}

impl FilteredBody {
    fn count(&self, n: usize) {
        let response = self.response;
        self.run.with_stream(|s| {
            if response {
                s.response_size += n as u64;
            } else {
                s.request_size += n as u64;
            }
        });
    }
}

impl Drop for FilteredBody {
    fn drop(&mut self) {
        // The response is over (read to the end or abandoned): the chain logs now.
        if self.response {
            self.run.finish();
        }
    }
}
