//! The one body type that flows through the proxy in both directions.
//!
//! An enum rather than a boxed trait object: no allocation per request, and the upstream variant
//! carries the guard that hands a pooled connection back (and releases the endpoint's
//! active-request count) exactly when the response body has been read to its end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::pool::ResponseGuard;

/// A request or response body inside Weir.
pub enum ProxyBody {
    /// No body.
    Empty,
    /// A complete body produced by Weir itself (local replies, errors).
    Full(Option<Bytes>),
    /// A body streaming in from the peer, forwarded as it arrives.
    Incoming(Incoming),
    /// An upstream response body; the guard runs when it ends (or is dropped early).
    Upstream(Incoming, Option<ResponseGuard>),
}

impl ProxyBody {
    /// A complete body from static text.
    pub fn text(s: &'static str) -> Self {
        ProxyBody::Full(Some(Bytes::from_static(s.as_bytes())))
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx),
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
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(d) => d.is_none(),
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Upstream(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Incoming(b) | ProxyBody::Upstream(b, _) => b.size_hint(),
        }
    }
}

/// Read to the end: the connection is clean and may be reused.
fn complete(guard: &mut Option<ResponseGuard>) {
    if let Some(g) = guard.take() {
        g.complete();
    }
}
