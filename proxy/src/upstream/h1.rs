//! A lean HTTP/1.1 client connection, driven inline by the request's own task.
//!
//! hyper's client runs every connection as a task of its own and talks to it through channels:
//! per request that is an mpsc send, a oneshot, a body channel and several cross-task wake-ups —
//! about a tenth of the proxy's CPU in profiles. A reverse proxy needs far less: write one head,
//! stream one body, read one head, stream one body, on a connection nobody else touches. So the
//! downstream connection's task does it directly: the request is written and the response head read
//! in [`send`], and the response body ([`H1Body`]) reads from the pooled socket itself. The
//! connection returns to the pool when that body has been read to its end with the framing intact.
//!
//! On the plain path the request's own header lines go out as they came ([`RawRequest`]), and a
//! response head that needs no rewriting reaches the client the same way ([`RawHead`]).
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked when
//! `Transfer-Encoding` ends in `chunked`; `Content-Length` otherwise (conflicting values are a
//! protocol error); else read until close (and never reuse the connection).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::breaker::ConnCount;
use super::connect::{UpstreamIo, UpstreamRead, UpstreamWrite};
use super::pool::ResponseGuard;
use crate::http::body::{BoxError, ProxyBody};
use crate::http::respond::ProxyError;

/// Largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a response head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;
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

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let c = &mut *self.0;
        c.rbuf.reserve(READ_CHUNK);
        match &mut c.io {
            Io::Whole(io) => tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut c.rbuf),
            Io::Split(rd, _) => tokio_util::io::poll_read_buf(Pin::new(rd), cx, &mut c.rbuf),
            Io::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
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

/// A request whose fields go upstream as the client wrote them ([`crate::http::h1::parse::Head`]'s
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
        crate::http::headers::append_lines(&self.lines, map);
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
/// the returned [`H1Body`], which owns the connection (and the guard) until then.
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
                    if e.kind() == crate::http::respond::ErrorKind::Downstream {
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
                    if e.kind() == crate::http::respond::ErrorKind::Downstream {
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
                parse_head(&mut conn.rbuf, head.raw_ok).map_err(|e| fail(e, false))?
            {
                if parsed.status.is_informational()
                    && parsed.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return into_response(conn, parsed, &head.method, guard)
                    .map_err(|e| fail(e, false));
            }
            if conn.rbuf.len() > MAX_HEAD {
                return Err(fail(
                    ProxyError::UpstreamMalformed("response head too large"),
                    false,
                ));
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
                    let mut h = Vec::with_capacity(20);
                    h.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    io.write_all(&h).await.map_err(ProxyError::UpstreamIo)?;
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
        let mut end = b"0\r\n".to_vec();
        for (k, v) in trailers.iter().flatten() {
            end.extend_from_slice(k.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(v.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(b"\r\n");
        io.write_all(&end).await.map_err(ProxyError::UpstreamIo)?;
    }
    Ok(())
}

struct ParsedHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// What the framing-relevant fields said, noted while parsing (no map lookups after).
    close: bool,
    keep_alive: bool,
    /// `Some(last coding is chunked)` when `Transfer-Encoding` is present.
    te_chunked: Option<bool>,
    /// `Some(Ok(n))` for consistent lengths, `Some(Err(()))` for invalid or conflicting ones.
    length: Option<Result<u64, ()>>,
    /// The head kept raw (`headers` is then empty).
    raw: Option<RawHead>,
}

/// A response head kept as the upstream wrote it, for the one consumer that needs no map: the
/// HTTP/1.1 writer of a request that runs through no filter chain. Building a `HeaderMap` (name
/// lookup, hashing, two allocations) and walking it again to encode it was a fifth of the
/// proxy's own instructions per request; the lines go out in one copy instead.
///
/// Only a head that needs no rewriting is kept: a body framed by a single `content-length`
/// (not zero), no hop-by-hop field (`connection`, `keep-alive`, `proxy-connection`, `te`,
/// `transfer-encoding`, `upgrade`), no field Weir sets (`x-weir-attempt-count`) and CRLF line
/// ends. It travels inside the response body (the
/// pooled connection's box, so the body grows by nothing) and is taken by
/// [`ProxyBody::take_raw_head`]; a writer that cannot use it as it is folds it into the map
/// ([`RawHead::append_to`]). The `HeaderMap` of such a response holds only what Weir adds.
#[derive(Debug)]
pub struct RawHead {
    /// The header lines, each ending in CRLF (neither the status line nor the blank line).
    pub lines: Bytes,
    /// The one `content-length` among them.
    pub length: u64,
    /// Whether a `date` is among them.
    pub has_date: bool,
}

impl RawHead {
    /// The lines as fields of `map` (values share the head's buffer).
    pub fn append_to(&self, map: &mut HeaderMap) {
        crate::http::headers::append_lines(&self.lines, map);
    }
}

/// What a field name means to a raw head.
enum FieldKind {
    ContentLength,
    Date,
    /// Hop-by-hop or framing: the head must be rewritten.
    Rewrite,
    Other,
}

fn field_kind(name: &[u8]) -> FieldKind {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is(b"te") => FieldKind::Rewrite,
        4 if is(b"date") => FieldKind::Date,
        7 if is(b"upgrade") => FieldKind::Rewrite,
        10 if is(b"connection") || is(b"keep-alive") => FieldKind::Rewrite,
        14 if is(b"content-length") => FieldKind::ContentLength,
        16 if is(b"proxy-connection") => FieldKind::Rewrite,
        17 if is(b"transfer-encoding") => FieldKind::Rewrite,
        // Set by Weir after a retry policy ran (`forward::finish`).
        20 if is(b"x-weir-attempt-count") => FieldKind::Rewrite,
        _ => FieldKind::Other,
    }
}

/// `head` (a complete response head with a body-carrying status) as a [`RawHead`], if it needs
/// no rewriting.
fn raw_head(head: &Bytes, spans: &[crate::http::h1::parse::Span]) -> Option<RawHead> {
    let mut length = None;
    let mut has_date = false;
    for span in spans {
        match field_kind(span.name_in(head)) {
            FieldKind::Other => {}
            FieldKind::Date => has_date = true,
            FieldKind::Rewrite => return None,
            FieldKind::ContentLength if length.is_none() => {
                length = Some(crate::http::headers::plain_length(span.value_in(head))?);
            }
            FieldKind::ContentLength => return None,
        }
    }
    Some(RawHead {
        length: length.filter(|&n| n > 0)?,
        lines: crate::http::h1::parse::field_lines(head, spans)?,
        has_date,
    })
}

/// Parses (and consumes) a complete response head from `buf`, if one is there. `raw_ok`: keep
/// it raw if it qualifies ([`RawHead`]).
fn parse_head(buf: &mut BytesMut, raw_ok: bool) -> Result<Option<ParsedHead>, ProxyError> {
    crate::http::h1::parse::with_spans(|spans| parse_head_with(buf, spans, raw_ok))
}

fn parse_head_with(
    buf: &mut BytesMut,
    spans: &mut Vec<crate::http::h1::parse::Span>,
    raw_ok: bool,
) -> Result<Option<ParsedHead>, ProxyError> {
    // Positions are taken while httparse borrows the buffer; the head is then split off and
    // frozen, so header values are slices of it (no copy, no allocation per value).
    let (len, code, version, count) = {
        let bytes = &buf[..];
        let base = bytes.as_ptr() as usize;
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, bytes, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ProxyError::UpstreamMalformed("too many response headers"));
            }
            Err(_) => return Err(ProxyError::UpstreamMalformed("invalid response head")),
        };
        spans.extend(
            resp.headers
                .iter()
                .map(|h| crate::http::h1::parse::Span::of(base, h)),
        );
        (len, resp.code, resp.version, resp.headers.len())
    };
    let status = code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ProxyError::UpstreamMalformed("invalid status code"))?;
    let version = if version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = buf.split_to(len).freeze();
    let has_body = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    if raw_ok
        && has_body
        && let Some(raw) = raw_head(&head, &spans[..count])
    {
        return Ok(Some(ParsedHead {
            status,
            version,
            headers: HeaderMap::new(),
            close: false,
            keep_alive: false,
            te_chunked: None,
            length: Some(Ok(raw.length)),
            raw: Some(raw),
        }));
    }
    let mut p = ParsedHead {
        status,
        version,
        headers: HeaderMap::with_capacity(count),
        close: false,
        keep_alive: false,
        te_chunked: None,
        length: None,
        raw: None,
    };
    for span in &spans[..count] {
        let name = HeaderName::from_bytes(span.name_in(&head))
            .map_err(|_| ProxyError::UpstreamMalformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(span.value_in(&head)))
            .map_err(|_| ProxyError::UpstreamMalformed("invalid header value"))?;
        let v = value.as_bytes();
        if name == CONNECTION {
            for t in v.split(|&b| b == b',') {
                p.close |= t.trim_ascii().eq_ignore_ascii_case(b"close");
                p.keep_alive |= t.trim_ascii().eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == TRANSFER_ENCODING {
            if let Some(last) = v
                .rsplit(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .find(|c| !c.is_empty())
            {
                p.te_chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        } else if name == CONTENT_LENGTH {
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
            p.length = match (p.length, n) {
                (None, Some(n)) => Some(Ok(n)),
                (Some(Ok(m)), Some(n)) if m == n => Some(Ok(n)),
                _ => Some(Err(())),
            };
        }
        p.headers.append(name, value);
    }
    Ok(Some(p))
}

fn into_response(
    mut conn: H1Conn,
    p: ParsedHead,
    method: &Method,
    mut guard: ResponseGuard,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut keep_alive = match p.version {
        Version::HTTP_10 => p.keep_alive,
        _ => !p.close,
    };
    let framing = if *method == Method::HEAD
        || p.status.is_informational()
        || p.status == StatusCode::NO_CONTENT
        || p.status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if let Some(chunked) = p.te_chunked {
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Framing::UntilClose
        }
    } else {
        match p.length {
            None => {
                keep_alive = false;
                Framing::UntilClose
            }
            Some(Ok(n)) => Framing::Length(n),
            Some(Err(())) => {
                return Err(ProxyError::UpstreamMalformed(
                    "invalid or conflicting Content-Length",
                ));
            }
        }
    };
    // The 101 body is never read here: the upgrade path uses hyper's client.
    let mut parts = Response::new(()).into_parts().0;
    parts.status = p.status;
    parts.version = p.version;
    parts.headers = p.headers;
    let done = matches!(framing, Framing::Length(0));
    debug_assert!(!(done && p.raw.is_some()), "a raw head frames a body");
    conn.raw = p.raw;
    let mut body = H1Body {
        conn: Some(conn),
        framing,
        keep_alive,
        guard: None,
        trailer_bytes: 0,
        trailers: None,
    };
    if done {
        // Nothing to read: hand the connection back now (hyper never polls an empty body).
        if keep_alive && let Some(c) = body.conn.take().and_then(H1Conn::into_reusable) {
            guard.set_h1(c);
        }
        guard.complete();
        return Ok(Response::from_parts(parts, ProxyBody::Empty));
    }
    body.guard = Some(guard);
    Ok(Response::from_parts(parts, ProxyBody::H1(body)))
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A response body read straight from the upstream connection.
pub struct H1Body {
    conn: Option<H1Conn>,
    framing: Framing,
    keep_alive: bool,
    guard: Option<ResponseGuard>,
    trailer_bytes: usize,
    /// Boxed: rare, and a `HeaderMap` inline would triple the size of every response body.
    trailers: Option<Box<HeaderMap>>,
}

impl H1Body {
    /// The response head's lines, if they were kept raw; taken once, before the first frame.
    pub fn take_raw_head(&mut self) -> Option<RawHead> {
        self.conn.as_mut()?.raw.take()
    }

    /// The body ended cleanly: the connection may serve the next request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(mut g) = self.guard.take() {
            if self.keep_alive
                && let Some(c) = self.conn.take().and_then(H1Conn::into_reusable)
            {
                g.set_h1(c);
            }
            g.complete();
        }
        self.conn = None;
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.framing = Framing::Done;
        self.conn = None; // the connection's framing is lost: close it
        self.guard = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Reads more bytes; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self.conn.as_mut() {
            Some(conn) => conn.poll_fill(cx),
            None => Poll::Ready(Ok(0)),
        }
    }

    /// Takes one complete line (through `\n`) from the buffer, if there is one.
    fn take_line(&mut self) -> Result<Option<Bytes>, BoxError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        match memchr::memchr(b'\n', &conn.rbuf) {
            Some(i) => Ok(Some(conn.rbuf.split_to(i + 1).freeze())),
            None if conn.rbuf.len() > MAX_LINE => Err("upstream chunk line too long".into()),
            None => Ok(None),
        }
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let buffered = this.conn.as_ref().map_or(0, |c| c.rbuf.len());
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(n) | Framing::Chunked(Chunk::Data(n)) if buffered > 0 => {
                    let take = (n.min(buffered as u64)) as usize;
                    let conn = this.conn.as_mut().expect("buffered implies a connection");
                    let data = conn.rbuf.split_to(take).freeze();
                    let left = n - take as u64;
                    match &mut this.framing {
                        Framing::Length(r) => {
                            *r = left;
                            if left == 0 {
                                // Hand the connection back before the last frame is delivered:
                                // hyper may stop polling once `is_end_stream` says so.
                                this.finish();
                            }
                        }
                        Framing::Chunked(c) => {
                            *c = if left == 0 {
                                Chunk::DataEnd
                            } else {
                                Chunk::Data(left)
                            };
                        }
                        _ => {}
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if buffered > 0 => {
                    let conn = this.conn.as_mut().expect("buffered implies a connection");
                    let data = conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::Size | Chunk::DataEnd | Chunk::Trailers) => {
                    match this.take_line() {
                        Err(e) => return this.fail(e),
                        Ok(Some(line)) => {
                            let line = trim_line(&line);
                            let Framing::Chunked(state) = this.framing else {
                                unreachable!()
                            };
                            this.framing = match state {
                                Chunk::Size => {
                                    let hex = line
                                        .split(|&b| b == b';')
                                        .next()
                                        .unwrap_or_default()
                                        .trim_ascii();
                                    match std::str::from_utf8(hex)
                                        .ok()
                                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                                    {
                                        Some(0) => Framing::Chunked(Chunk::Trailers),
                                        Some(n) => Framing::Chunked(Chunk::Data(n)),
                                        None => {
                                            return this
                                                .fail("invalid chunk size from upstream".into());
                                        }
                                    }
                                }
                                Chunk::DataEnd if line.is_empty() => Framing::Chunked(Chunk::Size),
                                Chunk::DataEnd => {
                                    return this.fail("missing CRLF after chunk".into());
                                }
                                Chunk::Trailers if line.is_empty() => {
                                    let trailers = this.trailers.take();
                                    this.finish();
                                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(*t))));
                                }
                                Chunk::Trailers => {
                                    this.trailer_bytes += line.len();
                                    if this.trailer_bytes > MAX_HEAD {
                                        return this.fail("upstream trailers too large".into());
                                    }
                                    if let Some(colon) = line.iter().position(|&b| b == b':')
                                        && let Ok(name) =
                                            HeaderName::from_bytes(line[..colon].trim_ascii())
                                        && let Ok(value) =
                                            HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
                                    {
                                        this.trailers
                                            .get_or_insert_with(Default::default)
                                            .append(name, value);
                                    }
                                    Framing::Chunked(Chunk::Trailers)
                                }
                                Chunk::Data(_) => unreachable!("data states are handled above"),
                            };
                            continue;
                        }
                        Ok(None) => {}
                    }
                }
                _ => {}
            }
            // Need more bytes.
            match ready!(this.poll_fill(cx)) {
                Ok(0) => {
                    return match this.framing {
                        Framing::UntilClose => {
                            this.framing = Framing::Done;
                            this.conn = None;
                            this.guard = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads_and_keeps_values_zero_copy() {
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello"[..],
        );
        let p = parse_head(&mut b, false).unwrap().unwrap();
        assert_eq!(p.status, 200);
        assert_eq!(p.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&b[..], b"hello");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(parse_head(&mut partial, false).unwrap().is_none());
        let mut bad = BytesMut::from(&b"garbage\r\n\r\n"[..]);
        assert!(parse_head(&mut bad, false).is_err());
    }

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

    fn parsed(head: &[u8], raw_ok: bool) -> ParsedHead {
        parse_head(&mut BytesMut::from(head), raw_ok)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_plain_head_is_kept_raw_with_its_length_and_date() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\nDate: x\r\n\r\nhello";
        let p = parsed(head, true);
        let raw = p.raw.expect("kept raw");
        assert!(p.headers.is_empty(), "no map is built for a raw head");
        assert_eq!(p.length, Some(Ok(5)));
        assert_eq!(raw.length, 5);
        assert!(raw.has_date);
        assert_eq!(
            &raw.lines[..],
            b"Content-Type: text/plain\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\nDate: x\r\n"
        );
        // Folded into a map, it is the same head parsed the usual way.
        let mut map = HeaderMap::new();
        raw.append_to(&mut map);
        assert_eq!(map, parsed(head, false).headers);
        assert_eq!(map.get_all("x-a").iter().count(), 2);
        // Without permission, never raw.
        assert!(parsed(head, false).raw.is_none());
    }

    #[test]
    fn heads_that_need_rewriting_are_never_raw() {
        for head in [
            // hop-by-hop fields, in any case
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nkeep-alive: timeout=5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nProxy-Connection: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTE: trailers\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nUpgrade: h2c\r\n\r\n",
            // a field Weir sets itself
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Weir-Attempt-Count: 9\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            // framing Weir must decide: none, empty, repeated, or not plain digits
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            // bodiless statuses
            b"HTTP/1.1 204 No Content\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1\r\n\r\n",
            // bare LF line ends
            b"HTTP/1.1 200 OK\nContent-Length: 1\nX-A: 1\n\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\nX-A: 1\r\n\r\n",
        ] {
            let p = parsed(head, true);
            assert!(p.raw.is_none(), "{:?}", String::from_utf8_lossy(head));
        }
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
