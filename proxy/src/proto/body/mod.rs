//! The one body type that flows through the proxy in both directions, and its wrappers.
//!
//! An enum rather than a boxed trait object: no allocation per request for the common bodies.
//! The stages above add behaviour through small hooks they implement, never by being named
//! here: a pooled HTTP/1.1 connection is a [`ClientConn`](crate::proto::h1::body::ClientConn)
//! that goes back to its pool when its response body ends, an HTTP/2 response holds an
//! [`InFlight`] that ends the request at its endpoint, and a body running through a filter
//! chain or a cluster's idle timeout is a [`StageBody`] (already boxed, and rare).

pub mod replay;

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::{Notify, mpsc};

pub use self::replay::{Replay, ReplayBody};
use crate::proto::h1::body::{RequestBody, ResponseBody};
use crate::proto::h1::head::RawHead;

pub use crate::proto::BoxError;

/// A request or response body inside Weir.
pub enum ProxyBody {
    /// No body.
    Empty,
    /// A complete body produced by Weir itself (local replies, errors).
    Full(Option<Bytes>),
    /// A complete body with trailers (HTTP callouts that pass trailers). Boxed: rare.
    Complete(Box<(Option<Bytes>, Option<http::HeaderMap>)>),
    /// A body streaming in from the peer, forwarded as it arrives.
    Incoming(Incoming),
    /// A request body from the downstream client; drained in the background if abandoned.
    Downstream(DownstreamBody),
    /// A body running through a stage above: a filter chain's body phases, a cluster's idle
    /// timeout.
    Stage(Box<dyn StageBody>),
    /// A body whose end is announced (an HTTP/2 upstream's response timer starts then).
    Watched(Box<ProxyBody>, Rc<Notify>),
    /// An HTTP/2 upstream response body; the guard runs when it ends (or is dropped early).
    Upstream(Incoming, Option<InFlight>),
    /// An HTTP/1.1 upstream response body, read straight from the pooled connection.
    H1(ResponseBody),
    /// One attempt's copy of a request body kept for retries.
    Replay(ReplayBody),
    /// Chunks sent by Weir itself as they come (a filter's gRPC stream); ends when the sender
    /// is dropped.
    Channel(tokio::sync::mpsc::UnboundedReceiver<Bytes>),
}

impl ProxyBody {
    /// The upstream response head's lines if they were kept raw ([`RawHead`]). Only the
    /// HTTP/1.1 response writer takes them, before it reads the body.
    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        match self {
            ProxyBody::H1(b) => b.take_raw_head(),
            ProxyBody::Stage(b) => b.take_raw_head(),
            _ => None,
        }
    }
}

impl From<Bytes> for ProxyBody {
    fn from(b: Bytes) -> Self {
        if b.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(b))
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Complete(c) => Poll::Ready(match c.0.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => c.1.take().map(|t| Ok(Frame::trailers(t))),
            }),
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Downstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Watched(inner, ended) => {
                let r = Pin::new(&mut **inner).poll_frame(cx);
                if matches!(r, Poll::Ready(None | Some(Err(_)))) || inner.is_end_stream() {
                    ended.notify_one();
                }
                r
            }
            ProxyBody::H1(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Stage(b) => Pin::new(&mut **b).poll_frame(cx),
            ProxyBody::Replay(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Channel(rx) => rx.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(b, guard) => {
                let r = Pin::new(&mut *b).poll_frame(cx);
                match &r {
                    // hyper stops polling once `is_end_stream` is true, so completion is noticed
                    // after the last frame as well as on the final `None`.
                    Poll::Ready(None) => complete(guard),
                    Poll::Ready(Some(Ok(_))) if b.is_end_stream() => complete(guard),
                    // A broken body: the guard's drop discards the connection.
                    Poll::Ready(Some(Err(_))) => drop(guard.take()),
                    _ => {}
                }
                r.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(d) => d.is_none(),
            ProxyBody::Complete(c) => c.0.is_none() && c.1.is_none(),
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Downstream(b) => b.is_end_stream(),
            ProxyBody::Watched(b, _) => b.is_end_stream(),
            ProxyBody::Upstream(b, _) => b.is_end_stream(),
            ProxyBody::H1(b) => b.is_end_stream(),
            ProxyBody::Stage(b) => b.is_end_stream(),
            ProxyBody::Replay(b) => b.is_end_stream(),
            ProxyBody::Channel(rx) => rx.is_closed() && rx.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64)),
            // Trailers need chunked framing on HTTP/1.1: no exact length.
            ProxyBody::Complete(..) => SizeHint::default(),
            ProxyBody::Incoming(b) | ProxyBody::Upstream(b, _) => b.size_hint(),
            ProxyBody::Downstream(b) => b.size_hint(),
            ProxyBody::Watched(b, _) => b.size_hint(),
            ProxyBody::H1(b) => b.size_hint(),
            ProxyBody::Stage(b) => b.size_hint(),
            ProxyBody::Replay(b) => b.size_hint(),
            ProxyBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// Read to the end: the request is over at its endpoint.
fn complete(guard: &mut Option<InFlight>) {
    drop(guard.take());
}

/// A body of a stage above this layer, wrapping another (a filter chain's body phases, a
/// cluster's idle timeout).
pub trait StageBody: Body<Data = Bytes, Error = BoxError> + Unpin {
    /// The raw upstream response head inside, if the wrapped body carries one.
    fn take_raw_head(&mut self) -> Option<RawHead> {
        None
    }
}

/// What the upstream stage does when a request ends at an endpoint (its body read to the end,
/// or dropped): the endpoint's active-request count goes down.
pub trait EndpointLoad {
    /// The request is over.
    fn end(&self);
}

/// A request in flight at an endpoint, until dropped. Made from the endpoint's own `Rc`, so it
/// costs no allocation.
pub struct InFlight(Rc<dyn EndpointLoad>);

impl InFlight {
    /// Counts a request at `ep` (already begun by the caller) until this is dropped.
    pub fn new(ep: Rc<dyn EndpointLoad>) -> Self {
        Self(ep)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A request body from the downstream client.
pub enum DownstreamBody {
    /// The request has none.
    Empty,
    /// Read from an HTTP/1.1 connection by Weir's own server; what the proxy leaves unread when
    /// the response is done, the connection drains itself.
    H1(RequestBody),
    /// An HTTP/2 stream's body (hyper's).
    H2(H2Body),
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            DownstreamBody::Empty => Poll::Ready(None),
            DownstreamBody::H1(b) => Pin::new(b).poll_frame(cx),
            DownstreamBody::H2(H2Body(Some(b))) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            DownstreamBody::H2(H2Body(None)) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DownstreamBody::Empty => true,
            DownstreamBody::H1(b) => b.is_end_stream(),
            DownstreamBody::H2(H2Body(b)) => b.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DownstreamBody::Empty | DownstreamBody::H2(H2Body(None)) => SizeHint::with_exact(0),
            DownstreamBody::H1(b) => b.size_hint(),
            DownstreamBody::H2(H2Body(Some(b))) => b.size_hint(),
        }
    }
}

/// An HTTP/2 request body. If it is dropped before its end (the upstream answered early, the
/// upstream failed, an error response was sent), the rest is read and discarded in the
/// background for a bounded time, as nginx's lingering close does: the stream's flow-control
/// window then keeps moving and the client is not left blocked on a body nobody reads.
pub struct H2Body(Option<Incoming>);

impl H2Body {
    pub fn new(b: Incoming) -> Self {
        Self(Some(b))
    }
}

impl Drop for H2Body {
    fn drop(&mut self) {
        if let Some(b) = self.0.take()
            && !b.is_end_stream()
        {
            DRAINER.with(|d| {
                if let Some(tx) = &*d.borrow() {
                    let _ = tx.send(b);
                }
            });
        }
    }
}

/// How long an abandoned request body is drained at most, and how long it may stall.
const DRAIN_FOR: Duration = Duration::from_secs(30);
const DRAIN_IDLE: Duration = Duration::from_secs(5);

thread_local! {
    /// The worker's drainer; absent on threads that are not workers (bodies are then dropped).
    static DRAINER: RefCell<Option<mpsc::UnboundedSender<Incoming>>> = const { RefCell::new(None) };
}

/// Runs on each worker: drains the request bodies abandoned on it.
pub async fn run_drainer() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    DRAINER.with(|d| *d.borrow_mut() = Some(tx));
    while let Some(mut body) = rx.recv().await {
        tokio::task::spawn_local(async move {
            let drain = async {
                loop {
                    let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
                    match tokio::time::timeout(DRAIN_IDLE, next).await {
                        Ok(Some(Ok(_))) => {}
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
        });
    }
}
