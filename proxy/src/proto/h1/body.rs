//! Message bodies of the HTTP/1.1 codec: a request body read by the server role
//! ([`RequestBody`]) and a response body read by the client role ([`ResponseBody`]).
//!
//! Both read from a connection owned by a stage above (the downstream connection's wire in
//! `http::h1`, the pooled upstream connection in `upstream::h1`), so each names that
//! connection through a small trait the stage implements ([`RequestSource`], [`ClientConn`])
//! instead of its type: this layer imports nothing from above. No allocation comes with that:
//! the wire is already shared through an `Rc`, and the upstream connection already lives in a
//! `Box` that moves between the pool and the body.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::chunked::{self, ChunkState, Decoded};
use super::head::{RawHead, ResponseFraming};
use crate::proto::BoxError;

/// Where a server connection's request bodies come from: the connection's read side, which
/// the HTTP/1.1 server shares between its head reader and the current request's body.
pub trait RequestSource {
    /// The next frame of request number `request`'s body (an error if that request's body is no
    /// longer the current one).
    fn poll_body(
        &mut self,
        request: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    /// Whether request number `request`'s body has ended (or is no longer the current one).
    fn is_end(&self, request: u64) -> bool;
    /// What is known of the rest of request number `request`'s body.
    fn size_hint(&self, request: u64) -> SizeHint;
}

/// The body of a request read from an HTTP/1.1 connection (the server role).
pub struct RequestBody {
    source: Rc<RefCell<dyn RequestSource>>,
    request: u64,
}

impl RequestBody {
    /// Request number `request`'s body, read from `source`.
    pub fn new(source: Rc<RefCell<dyn RequestSource>>, request: u64) -> Self {
        Self { source, request }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.source.borrow_mut().poll_body(self.request, cx)
    }

    fn is_end_stream(&self) -> bool {
        self.source.borrow().is_end(self.request)
    }

    fn size_hint(&self) -> SizeHint {
        self.source.borrow().size_hint(self.request)
    }
}

/// The upstream connection a [`ResponseBody`] reads from (the client role's stage implements
/// it over its pooled connection).
pub trait ClientConn {
    /// What has been read from the connection and not consumed yet.
    fn rbuf(&mut self) -> &mut BytesMut;
    /// Reads more bytes into [`rbuf`](ClientConn::rbuf); `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>;
    /// The response head's lines, if they were kept raw.
    fn take_raw_head(&mut self) -> Option<RawHead>;
    /// The response was read to its end with the framing intact; `keep_alive`: the connection
    /// may serve another request. (Dropped instead, the connection is closed: its framing is
    /// lost.)
    fn release(self: Box<Self>, keep_alive: bool);
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked(ChunkState),
    UntilClose,
    Done,
}

/// A response body read straight from the upstream connection (the client role).
pub struct ResponseBody {
    /// The connection, with what was read of the body so far; it goes back to its stage
    /// ([`ClientConn::release`]) when the body was read to its end.
    conn: Option<Box<dyn ClientConn>>,
    framing: Framing,
    keep_alive: bool,
    /// Boxed: rare, and a `HeaderMap` inline would triple the size of every response body.
    trailers: Option<Box<HeaderMap>>,
}

impl ResponseBody {
    /// The body of a response on `conn`, framed as `framing` (never an empty length: a
    /// bodiless response releases its connection at once and has no body to read).
    pub fn new(conn: Box<dyn ClientConn>, framing: ResponseFraming, keep_alive: bool) -> Self {
        Self {
            conn: Some(conn),
            framing: match framing {
                ResponseFraming::Length(n) => Framing::Length(n),
                ResponseFraming::Chunked => Framing::Chunked(ChunkState::Size),
                ResponseFraming::UntilClose => Framing::UntilClose,
            },
            keep_alive,
            trailers: None,
        }
    }

    /// The response head's lines, if they were kept raw; taken once, before the first frame.
    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        self.conn.as_mut()?.take_raw_head()
    }

    /// The body ended cleanly: the connection may serve the next request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(c) = self.conn.take() {
            c.release(self.keep_alive);
        }
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.framing = Framing::Done;
        self.conn = None; // the connection's framing is lost: close it
        Poll::Ready(Some(Err(e)))
    }

    /// Reads more bytes; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self.conn.as_mut() {
            Some(conn) => conn.poll_fill(cx),
            None => Poll::Ready(Ok(0)),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let buffered = this.conn.as_mut().map_or(0, |c| c.rbuf().len());
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(n) if buffered > 0 => {
                    let take = (n.min(buffered as u64)) as usize;
                    let conn = this.conn.as_mut().expect("buffered implies a connection");
                    let data = conn.rbuf().split_to(take).freeze();
                    let left = n - take as u64;
                    this.framing = Framing::Length(left);
                    if left == 0 {
                        // Hand the connection back before the last frame is delivered: hyper
                        // may stop polling once `is_end_stream` says so.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if buffered > 0 => {
                    let conn = this.conn.as_mut().expect("buffered implies a connection");
                    let data = conn.rbuf().split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(mut state) if buffered > 0 => {
                    let conn = this.conn.as_mut().expect("buffered implies a connection");
                    let step = chunked::decode(&mut state, conn.rbuf());
                    this.framing = Framing::Chunked(state);
                    match step {
                        Err(why) => return this.fail(format!("upstream {why}").into()),
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Decoded::Trailer(name, value)) => {
                            this.trailers
                                .get_or_insert_with(Default::default)
                                .append(name, value);
                            continue;
                        }
                        Ok(Decoded::End) => {
                            let trailers = this.trailers.take();
                            this.finish();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(*t))));
                        }
                        Ok(Decoded::NeedMore) => {}
                    }
                }
                _ => {}
            }
            // Need more bytes.
            match ready!(this.poll_fill(cx)) {
                Ok(0) => {
                    return match this.framing {
                        Framing::UntilClose => {
                            // Complete, but the connection is spent.
                            this.framing = Framing::Done;
                            if let Some(c) = this.conn.take() {
                                c.release(false);
                            }
                            Poll::Ready(None)
                        }
                        _ => this.fail("upstream closed the connection mid-body".into()),
                    };
                }
                Ok(_) => {}
                Err(e) => return this.fail(Box::new(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
