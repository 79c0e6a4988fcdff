//! The downstream byte stream of one HTTP/1.1 connection and the request body read from it.
//!
//! One connection serves one request at a time, but two parties read it: the connection's loop
//! (request heads) and the request's body (which the upstream side may pull from a task of its
//! own while the response streams back). Both run on the worker's one thread, so they share the
//! [`Wire`] through `Rc<RefCell<_>>`, borrowing it only inside a poll. The body's progress lives
//! in the wire, not in the body value, so once the response is out the loop knows exactly how
//! much of the request is left unread — and takes over, draining it or closing.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::parse::BodyFraming;
use crate::conn::DownIo;
use crate::http::body::BoxError;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section of a chunked request body.
const MAX_TRAILERS: usize = 16 * 1024;
/// The interim response owed to a client that sent `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How far the current request's body has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(Chunk),
    Done,
    /// Malformed or cut short: the connection cannot serve another request.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer fields after the last chunk (bytes seen so far).
    Trailers(usize),
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
            BodyFraming::Chunked => BodyState::Chunked(Chunk::Size),
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
                BodyState::Chunked(Chunk::Data(n)) if !self.rbuf.is_empty() => {
                    let take = n.min(self.rbuf.len() as u64) as usize;
                    let data = self.rbuf.split_to(take).freeze();
                    self.body = BodyState::Chunked(match n - take as u64 {
                        0 => Chunk::DataEnd,
                        left => Chunk::Data(left),
                    });
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Chunked(Chunk::Data(_)) => {}
                BodyState::Chunked(Chunk::DataEnd) if self.rbuf.len() >= 2 => {
                    if &self.rbuf[..2] != b"\r\n" {
                        return self.fail("chunk data not followed by CRLF");
                    }
                    let _ = self.rbuf.split_to(2);
                    self.body = BodyState::Chunked(Chunk::Size);
                    continue;
                }
                BodyState::Chunked(Chunk::DataEnd) => {}
                BodyState::Chunked(Chunk::Size) => {
                    match take_line(&mut self.rbuf, MAX_CHUNK_LINE) {
                        Err(why) => return self.fail(why),
                        Ok(Some(line)) => match chunk_size(&line) {
                            Some(0) => {
                                self.body = BodyState::Chunked(Chunk::Trailers(0));
                                continue;
                            }
                            Some(n) => {
                                self.body = BodyState::Chunked(Chunk::Data(n));
                                continue;
                            }
                            None => return self.fail("invalid chunk size line"),
                        },
                        Ok(None) => {}
                    }
                }
                BodyState::Chunked(Chunk::Trailers(seen)) => {
                    match take_line(&mut self.rbuf, MAX_TRAILERS) {
                        Err(why) => return self.fail(why),
                        Ok(Some(line)) if line.is_empty() => {
                            self.body = BodyState::Done;
                            return Poll::Ready(
                                self.trailers.take().map(|t| Ok(Frame::trailers(t))),
                            );
                        }
                        Ok(Some(line)) => {
                            let seen = seen + line.len() + 2;
                            if seen > MAX_TRAILERS {
                                return self.fail("request trailers too large");
                            }
                            let Some((name, value)) = trailer_field(&line) else {
                                return self.fail("invalid trailer field");
                            };
                            self.trailers
                                .get_or_insert_with(HeaderMap::new)
                                .append(name, value);
                            self.body = BodyState::Chunked(Chunk::Trailers(seen));
                            continue;
                        }
                        Ok(None) => {}
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

/// Takes one CRLF-terminated line (without its CRLF) off the front of `buf`, if complete. A bare
/// LF, or a line longer than `max`, is an error: chunk framing is read strictly, the way the
/// next hop will read what is forwarded.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, &'static str> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i == 0 || buf[i - 1] != b'\r' => Err("bare LF in chunked framing"),
        Some(i) => {
            let line = buf.split_to(i + 1).freeze();
            Ok(Some(line.slice(..i - 1)))
        }
        None if buf.len() > max => Err("chunked framing line too long"),
        None => Ok(None),
    }
}

/// `1*HEXDIG *( BWS ";" BWS chunk-ext )`: the size, or `None` for anything else.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !(ext.is_empty() || ext[0] == b';') {
        return None;
    }
    if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

fn trailer_field(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = HeaderName::from_bytes(&line[..colon]).ok()?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
    Some((name, value))
}

/// The body of a request read from an HTTP/1.1 connection.
pub struct RequestBody {
    wire: Rc<RefCell<Wire>>,
    request: u64,
}

impl RequestBody {
    pub fn new(wire: Rc<RefCell<Wire>>, request: u64) -> Self {
        Self { wire, request }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut w = self.wire.borrow_mut();
        if w.request != self.request {
            return Poll::Ready(Some(Err("request body abandoned".into())));
        }
        w.poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        let w = self.wire.borrow();
        w.request != self.request || w.body == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        let w = self.wire.borrow();
        match w.body {
            BodyState::Length(n) if w.request == self.request => SizeHint::with_exact(n),
            BodyState::Chunked(_) if w.request == self.request => SizeHint::default(),
            _ => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"5;name=value"), Some(5));
        assert_eq!(chunk_size(b"5 ; x"), Some(5));
        for bad in [
            &b""[..],
            b"g",
            b"-1",
            b"+5",
            b"5x",
            b"0x5",
            b"1234567890123456",
            b"5;\x01",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn lines_need_crlf() {
        let mut b = BytesMut::from(&b"5\r\nrest"[..]);
        assert_eq!(take_line(&mut b, 100).unwrap().unwrap(), "5");
        assert_eq!(&b[..], b"rest");
        let mut bare = BytesMut::from(&b"5\nhello"[..]);
        assert!(take_line(&mut bare, 100).is_err());
        let mut long = BytesMut::from(&[b'a'; 200][..]);
        assert!(take_line(&mut long, 100).is_err());
        let mut partial = BytesMut::from(&b"5\r"[..]);
        assert!(take_line(&mut partial, 100).unwrap().is_none());
    }
}
