//! A lean HTTP/1.1 client connection, driven inline by the request's own task.
//!
//! hyper's client runs every connection as a task of its own and talks to it through channels:
//! per request that is an mpsc send, a oneshot, a body channel and several cross-task wake-ups —
//! about a tenth of the proxy's CPU in profiles. A reverse proxy needs far less: write one head,
//! stream one body, read one head, stream one body, on a connection nobody else touches. So the
//! downstream connection's task does it directly: the request is written and the response head read
//! in [`send`], and the response body ([`ResponseBody`]) reads from the pooled socket itself. The
//! connection returns to the pool when that body has been read to its end with the framing intact.
//!
//! On the plain path the request's own header lines go out as they came ([`RawRequest`]), and a
//! response head that needs no rewriting reaches the client the same way ([`RawHead`]).
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked when
//! `Transfer-Encoding` ends in `chunked`; `Content-Length` otherwise (conflicting values are a
//! protocol error); else read until close (and never reuse the connection).
//!
//! Over 700 lines only with its unit tests (the code is about 600).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::breaker::ConnCount;
use super::connect::{UpstreamIo, UpstreamRead, UpstreamWrite};
use super::pool::ResponseGuard;
use crate::proto::body::ProxyBody;
use crate::proto::error::ProxyError;
use crate::proto::h1::body::{ClientConn, ResponseBody};
use crate::proto::h1::chunked::{chunk_prefix, last_chunk};
use crate::proto::h1::head::{RawHead, ResponseFraming, ResponseHead, parse_response};

/// Read granularity.
const READ_CHUNK: usize = 16 * 1024;

/// One HTTP/1.1 connection to an upstream. Boxed once for its whole life: it moves between the
/// pool, the exchange and the response body on every request, and a pointer moves cheaper than
/// the socket and buffer it stands for.
pub struct H1Conn(Box<Conn>);

pub struct Conn {
    io: Io,
    rbuf: BytesMut,
    /// A request write failed: the connection may still carry the answer, never another request.
    poisoned: bool,
    /// The current response's head lines, kept as they came (see [`RawHead`]) until the
    /// downstream writer takes them.
    raw: Option<RawHead>,
    /// Counts the connection against the cluster's `max_connections` while it lives.
    _count: ConnCount,
    /// The request in flight on it (from the response head to the end of its body): counted at
    /// its endpoint, and what hands the connection back to the pool.
    guard: Option<ResponseGuard>,
}

impl std::ops::Deref for H1Conn {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.0
    }
}

impl std::ops::DerefMut for H1Conn {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.0
    }
}

/// The socket: whole while idle or when the request went out in one piece; split while a
/// streaming request body is pumped by its own task and the response is read here.
enum Io {
    Whole(UpstreamIo),
    Split(UpstreamRead, PumpHandle),
    /// Moved out for a moment (between whole and split), or lost.
    Gone,
}

impl H1Conn {
    pub fn new(io: UpstreamIo, count: ConnCount) -> Self {
        Self(Box::new(Conn {
            io: Io::Whole(io),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            poisoned: false,
            raw: None,
            _count: count,
            guard: None,
        }))
    }

    /// Whether an idle pooled connection is still usable: nothing (an EOF, stray bytes) arrived
    /// since its last response. Plain TCP costs no syscall unless the socket has signalled
    /// readability; TLS reads what arrived (a TLS 1.3 session ticket is consumed and fine, a
    /// `close_notify`, an EOF or data is not).
    pub fn is_usable(&mut self) -> bool {
        let c = &mut *self.0;
        let Io::Whole(io) = &mut c.io else {
            return false;
        };
        if !c.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match io {
            UpstreamIo::Plain(io) => match io.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                // Readable: an EOF, junk, or a stale readiness flag. Only the last is fine.
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            UpstreamIo::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut buf = tokio::io::ReadBuf::new(&mut probe);
                tokio::io::AsyncRead::poll_read(Pin::new(tls.as_mut()), &mut cx, &mut buf)
                    .is_pending()
            }
        }
    }

    /// After a complete response: the connection whole again, if its request side ended cleanly
    /// too (a pump still running means the upstream answered early; the connection is dropped).
    fn into_reusable(mut self) -> Option<H1Conn> {
        if self.poisoned {
            return None;
        }
        self.raw = None;
        debug_assert!(
            self.guard.is_none(),
            "the guard leaves before the pool takes it back"
        );
        match std::mem::replace(&mut self.io, Io::Gone) {
            Io::Whole(io) => self.io = Io::Whole(io),
            Io::Split(rd, pump) => {
                let wr = pump.take_finished()?;
                self.io = Io::Whole(UpstreamIo::unsplit(rd, wr)?);
            }
            Io::Gone => return None,
        }
        Some(self)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| ClientConn::poll_fill(&mut *self.0, cx)).await
    }
}

/// The task that streams a request body to the upstream while the response is read.
struct Pump {
    state: RefCell<PumpState>,
    ended: Notify,
}

enum PumpState {
    Running,
    Finished(UpstreamWrite),
    /// The upstream stopped taking the body (it may well have answered already).
    UpstreamFailed,
    /// The client's body broke off.
    DownstreamFailed,
}

/// Owner's handle: aborts the pump if the exchange is abandoned while it still runs.
struct PumpHandle {
    pump: Rc<Pump>,
    task: tokio::task::AbortHandle,
}

impl PumpHandle {
    fn ended(&self) -> bool {
        !matches!(*self.pump.state.borrow(), PumpState::Running)
    }

    fn client_gone(&self) -> bool {
        matches!(*self.pump.state.borrow(), PumpState::DownstreamFailed)
    }

    fn take_finished(&self) -> Option<UpstreamWrite> {
        match std::mem::replace(
            &mut *self.pump.state.borrow_mut(),
            PumpState::UpstreamFailed,
        ) {
            PumpState::Finished(wr) => Some(wr),
            _ => None,
        }
    }
}

impl Drop for PumpHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What went wrong on one attempt, and whether the request may go out again on a new connection.
pub struct Failed {
    pub error: ProxyError,
    /// Nothing of the response arrived and the request can be re-sent as it was.
    pub retryable: bool,
}

/// The encoded request head, kept so that a request with no body can be re-sent on another
/// connection when a pooled one turns out to be dead.
pub struct EncodedHead {
    bytes: Vec<u8>,
    method: Method,
    chunked: bool,
    /// The response head may be kept raw ([`RawHead`]).
    raw_ok: bool,
}

/// A request whose fields go upstream as the client wrote them ([`crate::proto::h1::head::RequestHead`]'s
/// `raw`), followed by the ones the proxy appends; the request's `HeaderMap` then holds only what
/// was added on the way (a retry's attempt count). Built by the service for a request that needs
/// nothing else rewritten: no `HeaderMap` is built, filled and walked again for it.
#[derive(Debug)]
pub struct RawRequest {
    /// The client's header lines, each ending in CRLF.
    pub lines: Bytes,
    /// They carry the body's `content-length` (the encoder then adds no framing field).
    pub has_length: bool,
    /// `x-forwarded-for` (the client's address: the lines carry none).
    pub forwarded_for: HeaderValue,
    /// `x-forwarded-proto`.
    pub forwarded_proto: &'static str,
    /// `x-forwarded-client-cert`, on a mutual-TLS connection that sets it.
    pub client_cert: Option<HeaderValue>,
    /// `x-request-id` (the lines carry none).
    pub request_id: [u8; 36],
}

impl RawRequest {
    /// The same fields in `map`, for a sender that needs a map (HTTP/2).
    pub fn append_to(&self, map: &mut HeaderMap) {
        crate::proto::h1::fields::append_lines(&self.lines, map);
        map.insert("x-forwarded-for", self.forwarded_for.clone());
        map.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(self.forwarded_proto),
        );
        if let Some(v) = &self.client_cert {
            map.insert("x-forwarded-client-cert", v.clone());
        }
        if let Ok(v) = HeaderValue::from_bytes(&self.request_id) {
            map.insert("x-request-id", v);
        }
    }

    fn encode(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(&self.lines);
        b.extend_from_slice(b"x-forwarded-for: ");
        b.extend_from_slice(self.forwarded_for.as_bytes());
        b.extend_from_slice(b"\r\nx-forwarded-proto: ");
        b.extend_from_slice(self.forwarded_proto.as_bytes());
        if let Some(v) = &self.client_cert {
            b.extend_from_slice(b"\r\nx-forwarded-client-cert: ");
            b.extend_from_slice(v.as_bytes());
        }
        b.extend_from_slice(b"\r\nx-request-id: ");
        b.extend_from_slice(&self.request_id);
        b.extend_from_slice(b"\r\n");
    }

    fn encoded_len(&self) -> usize {
        self.lines.len()
            + self.forwarded_for.len()
            + self.client_cert.as_ref().map_or(0, |v| v.len() + 27)
            + 96
    }
}

impl EncodedHead {
    /// The head as it goes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Encodes the request head (origin-form target, `Host` already set by the caller, or among
/// `raw`'s lines). `raw_head`: the response goes straight to an HTTP/1.1 client, so its head may
/// be kept as the upstream wrote it (never for `HEAD`, whose answer's length describes no body).
pub fn encode_head(
    req: &Request<ProxyBody>,
    raw_head: bool,
    raw: Option<&RawRequest>,
) -> EncodedHead {
    let (method, headers, body) = (req.method(), req.headers(), req.body());
    // Sized exactly (plus a framing line): growing the buffer copied every head once or twice.
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + raw.map_or(0, RawRequest::encoded_len);
    let mut b = Vec::with_capacity(method.as_str().len() + path.len() + fields + 48);
    b.extend_from_slice(method.as_str().as_bytes());
    b.push(b' ');
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(r) = raw {
        r.encode(&mut b);
    }
    for (name, value) in headers {
        if name == TRANSFER_ENCODING {
            continue; // framing is ours to decide
        }
        b.extend_from_slice(name.as_str().as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(value.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    let mut chunked = false;
    if !headers.contains_key(CONTENT_LENGTH) && !raw.is_some_and(|r| r.has_length) {
        let hint = body.size_hint();
        match hint.exact() {
            Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {}
            Some(n) => {
                b.extend_from_slice(b"content-length: ");
                b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                b.extend_from_slice(b"\r\n");
            }
            None => {
                b.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
    }
    b.extend_from_slice(b"\r\n");
    EncodedHead {
        bytes: b,
        raw_ok: raw_head && *method != Method::HEAD,
        method: method.clone(),
        chunked,
    }
}

/// A body is sent in line with its head when it is empty, complete, or short with a known
/// length: the kernel's socket buffers take it even if the upstream answers before reading it.
/// Anything else (chunked, long) is pumped concurrently, so early answers, full-duplex streams
/// and slow uploads all work.
const INLINE_BODY_MAX: u64 = 64 * 1024;

/// Writes the request and reads the response head. The response body is read later, through
/// the returned [`ResponseBody`], which owns the connection (and the guard) until then.
/// `response_timeout` bounds the wait for the response head once the request is fully sent.
pub async fn send(
    mut conn: H1Conn,
    head: &EncodedHead,
    body: &mut ProxyBody,
    reused: bool,
    guard: ResponseGuard,
    response_timeout: Duration,
) -> Result<Response<ProxyBody>, Failed> {
    let body_was_empty = body.is_end_stream();
    // RFC 9110 §9.2.2: only an idempotent request may go out again once it might have been
    // received (a pooled connection that closed without an answer).
    let retryable = reused && body_was_empty && head.method.is_idempotent();
    let fail = |error: ProxyError, retryable: bool| Failed { error, retryable };
    let inline = body_was_empty
        || matches!(body, ProxyBody::Full(_))
        || (!head.chunked
            && body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= INLINE_BODY_MAX));

    // An upstream that stopped reading may have answered already (a 413 before the body, then
    // close): a failed write is reported only if no response follows it.
    let mut write_failed: Option<Failed> = None;
    if inline {
        let Io::Whole(io) = &mut conn.io else {
            unreachable!("a fresh exchange has a whole socket")
        };
        match body {
            ProxyBody::Full(Some(data)) if !head.chunked => {
                let mut one = Vec::with_capacity(head.bytes.len() + data.len());
                one.extend_from_slice(&head.bytes);
                one.extend_from_slice(data);
                if let Err(e) = io.write_all(&one).await {
                    write_failed = Some(fail(ProxyError::UpstreamIo(e), retryable));
                }
            }
            _ => {
                if let Err(e) = io.write_all(&head.bytes).await {
                    write_failed = Some(fail(ProxyError::UpstreamIo(e), retryable));
                } else if !body_was_empty && let Err(e) = write_body(io, body, head.chunked).await {
                    if e.kind() == crate::proto::error::ErrorKind::Downstream {
                        return Err(fail(e, false));
                    }
                    write_failed = Some(fail(e, false));
                }
            }
        }
        // Whatever answers now, this connection's request side is broken: never reuse it.
        conn.poisoned = write_failed.is_some();
    } else {
        let Io::Whole(io) = std::mem::replace(&mut conn.io, Io::Gone) else {
            unreachable!("a fresh exchange has a whole socket")
        };
        let (rd, mut wr) = io.split();
        wr.write_all(&head.bytes)
            .await
            .map_err(|e| fail(ProxyError::UpstreamIo(e), false))?;
        let pump = Rc::new(Pump {
            state: RefCell::new(PumpState::Running),
            ended: Notify::new(),
        });
        let mut body = std::mem::replace(body, ProxyBody::Empty);
        let chunked = head.chunked;
        let p = pump.clone();
        let task = tokio::task::spawn_local(async move {
            let r = write_body(&mut wr, &mut body, chunked).await;
            *p.state.borrow_mut() = match r {
                Ok(()) => PumpState::Finished(wr),
                Err(e) => {
                    tracing::debug!(error = %e, "request body pump stopped");
                    if e.kind() == crate::proto::error::ErrorKind::Downstream {
                        PumpState::DownstreamFailed
                    } else {
                        PumpState::UpstreamFailed
                    }
                }
            };
            p.ended.notify_one();
        });
        conn.io = Io::Split(
            rd,
            PumpHandle {
                pump,
                task: task.abort_handle(),
            },
        );
    }

    // The response head; interim 1xx responses (100 Continue, 103) are skipped. The response
    // timer runs from the moment the request is completely sent.
    let mut deadline = match &conn.io {
        Io::Split(_, pump) if !pump.ended() => None,
        _ => Some(crate::timer::deadline(response_timeout)),
    };
    let answer = async {
        loop {
            if let Some(parsed) =
                parse_response(&mut conn.rbuf, head.raw_ok).map_err(|e| fail(e, false))?
            {
                if parsed.status.is_informational()
                    && parsed.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return into_response(conn, parsed, &head.method, guard)
                    .map_err(|e| fail(e, false));
            }
            let nothing_yet = conn.rbuf.is_empty();
            let pump = match &conn.io {
                Io::Split(_, p) => Some(p.pump.clone()),
                Io::Whole(_) | Io::Gone => None,
            };
            let pump_ended = async {
                match &pump {
                    Some(p) if matches!(*p.state.borrow(), PumpState::Running) => {
                        p.ended.notified().await
                    }
                    _ => std::future::pending().await,
                }
            };
            let waiting_for_pump = deadline.is_none();
            let expired = async {
                match &mut deadline {
                    Some(d) => d.await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                biased;
                r = conn.fill() => Some(r),
                _ = pump_ended, if waiting_for_pump => None,
                () = expired => {
                    return Err(fail(ProxyError::ResponseTimeout(response_timeout), false));
                }
            };
            match read {
                None => {
                    if let Io::Split(_, p) = &conn.io
                        && p.client_gone()
                    {
                        return Err(fail(ProxyError::BadRequest("request body aborted"), false));
                    }
                    deadline = Some(crate::timer::deadline(response_timeout));
                }
                Some(Ok(0)) => {
                    return Err(fail(ProxyError::UpstreamClosed, retryable && nothing_yet));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(fail(ProxyError::UpstreamIo(e), retryable && nothing_yet));
                }
            }
        }
    };
    // No answer after a failed write: the write's failure is the one to report.
    answer.await.map_err(|f| write_failed.unwrap_or(f))
}

async fn write_body<W: AsyncWrite + Unpin>(
    io: &mut W,
    body: &mut ProxyBody,
    chunked: bool,
) -> Result<(), ProxyError> {
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ProxyError::BadRequest("request body aborted"))?;
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    let mut size = [0u8; 20];
                    let prefix = chunk_prefix(&mut size, data.len());
                    io.write_all(prefix).await.map_err(ProxyError::UpstreamIo)?;
                    io.write_all(&data).await.map_err(ProxyError::UpstreamIo)?;
                    io.write_all(b"\r\n")
                        .await
                        .map_err(ProxyError::UpstreamIo)?;
                } else {
                    io.write_all(&data).await.map_err(ProxyError::UpstreamIo)?;
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    if chunked {
        io.write_all(&last_chunk(trailers.as_ref()))
            .await
            .map_err(ProxyError::UpstreamIo)?;
    }
    Ok(())
}

fn into_response(
    mut conn: H1Conn,
    p: ResponseHead,
    method: &Method,
    guard: ResponseGuard,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (framing, keep_alive) = p.framing(method);
    // The 101 body is never read here: the upgrade path uses hyper's client.
    let mut parts = Response::new(()).into_parts().0;
    parts.status = p.status;
    parts.version = p.version;
    parts.headers = p.headers;
    let done = framing == ResponseFraming::Length(0);
    debug_assert!(!(done && p.raw.is_some()), "a raw head frames a body");
    conn.raw = p.raw;
    // A connection out of the pool holds no guard: set it without dropping an old one.
    debug_assert!(conn.guard.is_none());
    conn.guard.get_or_insert(guard);
    if done {
        // Nothing to read: hand the connection back now (hyper never polls an empty body).
        ClientConn::release(conn.0, keep_alive);
        return Ok(Response::from_parts(parts, ProxyBody::Empty));
    }
    let body = ResponseBody::new(conn.0, framing, keep_alive);
    Ok(Response::from_parts(parts, ProxyBody::H1(body)))
}

impl ClientConn for Conn {
    fn rbuf(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.rbuf.reserve(READ_CHUNK);
        match &mut self.io {
            Io::Whole(io) => tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.rbuf),
            Io::Split(rd, _) => tokio_util::io::poll_read_buf(Pin::new(rd), cx, &mut self.rbuf),
            Io::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn take_raw_head(&mut self) -> Option<RawHead> {
        self.raw.take()
    }

    fn release(mut self: Box<Self>, keep_alive: bool) {
        // The guard leaves the connection first: an idle pooled connection holds none.
        let guard = self.guard.take();
        if let Some(mut g) = guard {
            if keep_alive && let Some(c) = H1Conn(self).into_reusable() {
                g.set_h1(c);
            }
            g.complete();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_heads_with_framing() {
        let req = Request::builder()
            .method("POST")
            .uri("/p?q=1")
            .header("host", "x")
            .header("transfer-encoding", "chunked")
            .body(ProxyBody::Full(Some(Bytes::from_static(b"abc"))))
            .unwrap();
        let h = encode_head(&req, false, None);
        let text = String::from_utf8(h.bytes).unwrap();
        assert_eq!(
            text,
            "POST /p?q=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n"
        );
        let get = Request::builder()
            .uri("/")
            .header("host", "x")
            .body(ProxyBody::Empty)
            .unwrap();
        assert_eq!(
            String::from_utf8(encode_head(&get, false, None).bytes).unwrap(),
            "GET / HTTP/1.1\r\nhost: x\r\n\r\n"
        );
    }

    #[test]
    fn a_raw_request_goes_up_with_its_lines_then_the_proxys_fields() {
        let mut raw = RawRequest {
            lines: Bytes::from_static(b"Host: x\r\nX-Mixed: V\r\n"),
            has_length: false,
            forwarded_for: HeaderValue::from_static("10.1.2.3"),
            forwarded_proto: "https",
            client_cert: None,
            request_id: *b"00000000-0000-4000-8000-000000000000",
        };
        let mut req = Request::builder()
            .method("POST")
            .uri("/p")
            .body(ProxyBody::Empty)
            .unwrap();
        // What was added on the way (a retry's count) follows; an empty POST declares its length.
        req.headers_mut()
            .insert("x-weir-attempt-count", HeaderValue::from_static("2"));
        let h = encode_head(&req, true, Some(&raw));
        assert_eq!(
            String::from_utf8(h.bytes).unwrap(),
            "POST /p HTTP/1.1\r\nHost: x\r\nX-Mixed: V\r\nx-forwarded-for: 10.1.2.3\r\n\
             x-forwarded-proto: https\r\nx-request-id: 00000000-0000-4000-8000-000000000000\r\n\
             x-weir-attempt-count: 2\r\ncontent-length: 0\r\n\r\n"
        );
        // Lines that carry the body's length: no second one is added.
        let sized = RawRequest {
            lines: Bytes::from_static(b"Host: x\r\nContent-Length: 3\r\n"),
            has_length: true,
            forwarded_for: HeaderValue::from_static("10.1.2.3"),
            forwarded_proto: "http",
            client_cert: None,
            request_id: *b"00000000-0000-4000-8000-000000000000",
        };
        let post = Request::builder()
            .method("POST")
            .uri("/p")
            .body(ProxyBody::Full(Some(Bytes::from_static(b"abc"))))
            .unwrap();
        let text = String::from_utf8(encode_head(&post, true, Some(&sized)).bytes).unwrap();
        assert_eq!(
            text.to_ascii_lowercase().matches("content-length").count(),
            1,
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\n") && !text.contains("transfer-encoding"),
            "{text}"
        );
        // With a client certificate; and the same fields as a map, for an HTTP/2 sender.
        raw.client_cert = Some(HeaderValue::from_static("By=a;URI=b"));
        let get = Request::builder().uri("/").body(ProxyBody::Empty).unwrap();
        let text = String::from_utf8(encode_head(&get, false, Some(&raw)).bytes).unwrap();
        assert!(
            text.contains("\r\nx-forwarded-client-cert: By=a;URI=b\r\n"),
            "{text}"
        );
        let mut map = HeaderMap::new();
        raw.append_to(&mut map);
        assert_eq!(map["host"], "x");
        assert_eq!(map["x-mixed"], "V");
        assert_eq!(map["x-forwarded-for"], "10.1.2.3");
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-client-cert"], "By=a;URI=b");
        assert_eq!(map["x-request-id"], "00000000-0000-4000-8000-000000000000");
        assert_eq!(map.len(), 6);
    }
}
