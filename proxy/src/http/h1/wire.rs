//! The downstream byte stream of one HTTP/1.1 connection and the request body read from it.
//!
//! One connection serves one request at a time, but two parties read it: the connection's loop
//! (request heads) and the request's body (which the upstream side may pull from a task of its
//! own while the response streams back). Both run on the worker's one thread, so they share the
//! [`Wire`] through `Rc<RefCell<_>>`, borrowing it only inside a poll. The body's progress lives
//! in the wire, not in the body value, so once the response is out the loop knows exactly how
//! much of the request is left unread — and takes over, draining it or closing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWrite;

use crate::conn::DownIo;
use crate::proto::body::BoxError;
use crate::proto::h1::body::RequestSource;
use crate::proto::h1::chunked::{self, ChunkState, Decoded};
use crate::proto::h1::head::BodyFraming;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;
/// The interim response owed to a client that sent `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How far the current request's body has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(ChunkState),
    Done,
    /// Malformed or cut short: the connection cannot serve another request.
    Failed,
}

/// A connection's socket and what has been read from it but not yet consumed.
pub struct Wire {
    pub io: DownIo,
    pub rbuf: BytesMut,
    pub body: BodyState,
    /// Which request the body belongs to; a body handle of an earlier request reads nothing.
    request: u64,
    /// Bytes of `100 Continue` still to write before the body is read (0: none owed).
    continue_owed: usize,
    trailers: Option<HeaderMap>,
    /// The peer closed its side.
    pub eof: bool,
}

impl Wire {
    pub fn new(io: DownIo, rbuf: BytesMut) -> Self {
        Self {
            io,
            rbuf,
            body: BodyState::Done,
            request: 0,
            continue_owed: 0,
            trailers: None,
            eof: false,
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` is end of stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Starts the body of a new request; returns the request's id for its body handle.
    pub fn start_body(&mut self, framing: BodyFraming, expect_continue: bool) -> u64 {
        self.request += 1;
        self.body = match framing {
            BodyFraming::Length(0) => BodyState::Done,
            BodyFraming::Length(n) => BodyState::Length(n),
            BodyFraming::Chunked => BodyState::Chunked(ChunkState::Size),
        };
        self.continue_owed = if expect_continue { CONTINUE.len() } else { 0 };
        self.trailers = None;
        self.request
    }

    /// The response is out: body handles still held elsewhere read nothing more. Returns whether
    /// a `100 Continue` was still owed (the client may never send the body: the connection must
    /// close).
    pub fn detach_body(&mut self) -> bool {
        self.request += 1;
        std::mem::replace(&mut self.continue_owed, 0) > 0
    }

    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.continue_owed > 0 {
            let at = CONTINUE.len() - self.continue_owed;
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_owed -= n;
        }
        Poll::Ready(Ok(()))
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.body = BodyState::Failed;
        Poll::Ready(Some(Err(why.into())))
    }

    /// The next frame of the current request's body.
    pub fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Err(e) = ready!(self.poll_continue(cx)) {
            self.body = BodyState::Failed;
            return Poll::Ready(Some(Err(e.into())));
        }
        loop {
            match self.body {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Failed => return Poll::Ready(Some(Err("request body broken".into()))),
                BodyState::Length(n) if !self.rbuf.is_empty() => {
                    let take = n.min(self.rbuf.len() as u64) as usize;
                    let data = self.rbuf.split_to(take).freeze();
                    self.body = match n - take as u64 {
                        0 => BodyState::Done,
                        left => BodyState::Length(left),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Length(_) => {}
                BodyState::Chunked(mut state) => {
                    let step = chunked::decode(&mut state, &mut self.rbuf);
                    self.body = BodyState::Chunked(state);
                    match step {
                        Err(why) => return self.fail(why),
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Decoded::Trailer(name, value)) => {
                            self.trailers
                                .get_or_insert_with(HeaderMap::new)
                                .append(name, value);
                            continue;
                        }
                        Ok(Decoded::End) => {
                            self.body = BodyState::Done;
                            return Poll::Ready(
                                self.trailers.take().map(|t| Ok(Frame::trailers(t))),
                            );
                        }
                        Ok(Decoded::NeedMore) => {}
                    }
                }
            }
            // More bytes are needed.
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return self.fail("request body aborted"),
                Ok(_) => {}
                Err(e) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl RequestSource for Wire {
    fn poll_body(
        &mut self,
        request: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.request != request {
            return Poll::Ready(Some(Err("request body abandoned".into())));
        }
        Wire::poll_body(self, cx)
    }

    fn is_end(&self, request: u64) -> bool {
        self.request != request || self.body == BodyState::Done
    }

    fn size_hint(&self, request: u64) -> SizeHint {
        match self.body {
            BodyState::Length(n) if self.request == request => SizeHint::with_exact(n),
            BodyState::Chunked(_) if self.request == request => SizeHint::default(),
            _ => SizeHint::with_exact(0),
        }
    }
}
