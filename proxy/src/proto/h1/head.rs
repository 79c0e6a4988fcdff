//! Message heads off the wire (RFC 9112 §2–§4) into `http` types, and their framing (§6): the one
//! place that decides how long a message body is, for both roles.
//!
//! - Server role ([`Parser`]): a request head from a client, under the listener's limits. Too
//!   long a request line is 414, too large a head 431, anything malformed 400.
//! - Client role ([`parse_response`]): a response head from an upstream, under
//!   [`RESPONSE_MAX_HEAD`] and [`RESPONSE_MAX_HEADERS`]. Anything malformed or over a limit is a
//!   502, and the connection it came on is never reused.
//!
//! Both roles are strict in the same way, where leniency smuggles: `httparse` refuses obs-fold,
//! whitespace before a colon and control bytes (NUL among them); every line must end in CRLF (a
//! bare LF is refused, never re-framed); a message with both `Content-Length` and
//! `Transfer-Encoding`, or with a `Content-Length` that is not plain decimal digits or disagrees
//! with itself, is refused, as is `chunked` applied twice. Header values are not copied: they are
//! slices of the head's bytes. On the plain path a head whose fields need no rewriting is not
//! parsed into a map at all: its lines are kept as they came ([`RawFields`], [`RawHead`]).
//!
//! Over 700 lines only with its unit tests (the code is about 670): both roles' hostile-input
//! tables live beside the rules they test.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use super::fields::{FieldClass, classify, plain_length};
use crate::proto::error::ProxyError;

/// Header slots kept on the stack; a listener allowing more uses a heap array of its own.
const STACK_SLOTS: usize = 100;
/// Largest response head accepted from an upstream.
pub const RESPONSE_MAX_HEAD: usize = 64 * 1024;
/// Most fields in a response head.
pub const RESPONSE_MAX_HEADERS: usize = 128;
/// Room for the method, the spaces and the version around a request target: a request line
/// still incomplete this far past the target limit is a target over it.
const REQUEST_LINE_SLACK: usize = 64;

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// `Content-Length: n` (0 also for a request with neither field).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: BodyFraming,
    /// The client allows the connection to serve another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body: a `100 Continue` is owed before reading it.
    pub expect_continue: bool,
    /// An HTTP/1.1 request to switch to WebSocket (`Upgrade: websocket` with `Connection:
    /// upgrade`), the one upgrade Weir tunnels.
    pub websocket: bool,
    /// The header lines as the client wrote them, when the head was parsed with `raw_ok` and
    /// qualifies (`raw_fields`); `headers` is then empty.
    pub raw: Option<RawFields>,
}

/// A request's header lines kept as the client wrote them.
#[derive(Debug)]
pub struct RawFields {
    /// Each `name: value` line ending in CRLF (neither the request line nor the blank line).
    pub lines: Bytes,
    /// The one plain `Content-Length` among them, if there is one (the body's framing).
    pub length: Option<u64>,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// Empty when the head was kept raw.
    pub headers: HeaderMap,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive` (what keeps an HTTP/1.0 response's connection open).
    pub keep_alive: bool,
    /// `Some(whether the last coding is chunked)` when `Transfer-Encoding` is present.
    pub te_chunked: Option<bool>,
    /// The `Content-Length`, when present (consistent, plain digits: anything else was refused).
    pub length: Option<u64>,
    /// The head kept raw (`headers` is then empty).
    pub raw: Option<RawHead>,
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// A known length (0 for HEAD, 1xx, 204 and 304).
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection (which then cannot be reused).
    UntilClose,
}

impl ResponseHead {
    /// How the body of this response to a `method` request is delimited, and whether the
    /// connection may serve another request after it.
    pub fn framing(&self, method: &Method) -> (ResponseFraming, bool) {
        let keep_alive = match self.version {
            Version::HTTP_10 => self.keep_alive,
            _ => !self.close,
        };
        if *method == Method::HEAD || !status_has_body(self.status) {
            return (ResponseFraming::Length(0), keep_alive);
        }
        match (self.te_chunked, self.length) {
            (Some(true), _) => (ResponseFraming::Chunked, keep_alive),
            (Some(false), _) | (None, None) => (ResponseFraming::UntilClose, false),
            (None, Some(n)) => (ResponseFraming::Length(n), keep_alive),
        }
    }
}

/// Whether a response with this status can carry a body at all.
fn status_has_body(s: StatusCode) -> bool {
    !(s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED)
}

/// A response head kept as the upstream wrote it, for the one consumer that needs no map: the
/// HTTP/1.1 writer of a request that runs through no filter chain. Building a `HeaderMap` (name
/// lookup, hashing, two allocations) and walking it again to encode it was a fifth of the
/// proxy's own instructions per request; the lines go out in one copy instead.
///
/// Only a head that needs no rewriting is kept: a body framed by a single `content-length`
/// (not zero), no hop-by-hop field (`connection`, `keep-alive`, `proxy-connection`, `te`,
/// `transfer-encoding`, `upgrade`), no field Weir sets (`x-weir-attempt-count`) and CRLF line
/// ends. It travels inside the response body and is taken by the downstream writer; a writer
/// that cannot use it as it is folds it into the map ([`RawHead::append_to`]). The `HeaderMap`
/// of such a response holds only what Weir adds.
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
        super::fields::append_lines(&self.lines, map);
    }
}

/// The request-head limits of one listener (the server role).
pub struct Parser {
    max_headers: usize,
    max_head: usize,
    max_uri: usize,
}

/// Where one header's name and value lie in a head (offsets and lengths).
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    /// The field's name in `head`, the bytes it was taken from.
    fn name_in<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.name.0 as usize..(self.name.0 + self.name.1) as usize]
    }

    /// The field's value in `head`.
    fn value_in<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.value.0 as usize..(self.value.0 + self.value.1) as usize]
    }

    /// The span of `h` in a head starting at address `base`.
    fn of(base: usize, h: &httparse::Header<'_>) -> Self {
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        Span {
            name: (at(h.name.as_bytes()), h.name.len() as u32),
            value: (at(h.value), h.value.len() as u32),
        }
    }
}

thread_local! {
    /// Scratch spans, reused by every head parsed on the thread (no per-head zeroing).
    static SPANS: std::cell::RefCell<Vec<Span>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with the thread's scratch span list (cleared).
fn with_spans<R>(f: impl FnOnce(&mut Vec<Span>) -> R) -> R {
    SPANS.with(|s| match s.try_borrow_mut() {
        Ok(mut v) => {
            v.clear();
            f(&mut v)
        }
        // Never nested in practice; a fresh list keeps it correct if it ever is.
        Err(_) => f(&mut Vec::new()),
    })
}

/// Whether every line of a complete head ends in CRLF: the head does, and each field starts
/// right after one (httparse ends a line at `\n` and admits no `\r` or `\n` inside a value, so a
/// line end can stand nowhere else). A bare LF would be re-framed as CRLF by the next writer,
/// and what follows it read as a field of its own: refused in both roles.
fn crlf_only(head: &[u8], spans: &[Span]) -> bool {
    let crlf_before = |at: u32| at >= 2 && head[at as usize - 2..at as usize] == *b"\r\n";
    head.ends_with(b"\r\n\r\n") && spans.iter().all(|s| crlf_before(s.name.0))
}

/// The field lines of a complete head whose line ends were checked ([`crlf_only`]): from the
/// first field through its CRLF, without the blank line, if there is a field.
fn field_lines(head: &Bytes, spans: &[Span]) -> Option<Bytes> {
    let start = spans.first()?.name.0 as usize;
    Some(head.slice(start..head.len() - 2))
}

impl Parser {
    pub fn new(max_headers: usize, max_head: u64, max_uri: u64) -> Self {
        Self {
            max_headers,
            max_head: usize::try_from(max_head).unwrap_or(usize::MAX),
            max_uri: usize::try_from(max_uri).unwrap_or(usize::MAX),
        }
    }

    /// The largest head accepted, in bytes.
    pub fn max_head(&self) -> usize {
        self.max_head
    }

    /// Parses (and takes) a complete head from the front of `buf`. `Ok(None)`: not complete yet
    /// (and not yet over a limit). `raw_ok`: keep the fields raw if they qualify
    /// ([`RequestHead::raw`]).
    pub fn parse(
        &self,
        buf: &mut BytesMut,
        raw_ok: bool,
    ) -> Result<Option<RequestHead>, ProxyError> {
        with_spans(|spans| parse_request(buf, self, spans, raw_ok))
    }

    /// What an incomplete head of `bytes` so far means: wait, or refuse it now. A request line
    /// that has not ended past the target limit is a target over it (414, not 431).
    fn partial(&self, bytes: &[u8]) -> Result<Option<Scanned>, ProxyError> {
        let over_uri = bytes.len() > self.max_uri.saturating_add(REQUEST_LINE_SLACK);
        if (over_uri || bytes.len() > self.max_head) && memchr::memchr(b'\n', bytes).is_none() {
            return Err(ProxyError::UriTooLong(self.max_uri as u64));
        }
        if bytes.len() > self.max_head {
            return Err(ProxyError::HeadersTooLarge);
        }
        Ok(None)
    }
}

/// The start line and header positions of a complete request head, and its length.
struct Scanned {
    len: usize,
    method: Method,
    target: (u32, u32),
    version: Version,
    count: usize,
}

/// Runs httparse over `bytes`, recording where each header lies in `spans`.
fn scan_request<'b>(
    bytes: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    spans: &mut Vec<Span>,
    limits: &Parser,
) -> Result<Option<Scanned>, ProxyError> {
    let base = bytes.as_ptr() as usize;
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, bytes, slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return limits.partial(bytes),
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::HeadersTooLarge),
        Err(httparse::Error::Version) => {
            return Err(ProxyError::BadRequest("unsupported HTTP version"));
        }
        Err(_) => return Err(ProxyError::BadRequest("malformed request head")),
    };
    if len > limits.max_head {
        return Err(ProxyError::HeadersTooLarge);
    }
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| ProxyError::BadRequest("invalid method"))?;
    let path = req.path.unwrap_or_default().as_bytes();
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    spans.extend(req.headers.iter().map(|h| Span::of(base, h)));
    if !crlf_only(&bytes[..len], spans) {
        return Err(ProxyError::BadRequest("bare LF in request head"));
    }
    Ok(Some(Scanned {
        len,
        method,
        target: (offset(path), path.len() as u32),
        version,
        count: req.headers.len(),
    }))
}

fn parse_request(
    buf: &mut BytesMut,
    limits: &Parser,
    spans: &mut Vec<Span>,
    raw_ok: bool,
) -> Result<Option<RequestHead>, ProxyError> {
    // Positions are taken while httparse borrows the buffer; the head is then split off and
    // frozen, so the values can be slices of it.
    let scanned = if limits.max_headers <= STACK_SLOTS {
        let mut slots = [const { MaybeUninit::uninit() }; STACK_SLOTS];
        scan_request(&buf[..], &mut slots[..limits.max_headers], spans, limits)?
    } else {
        let mut slots = Vec::with_capacity(limits.max_headers);
        slots.resize_with(limits.max_headers, MaybeUninit::uninit);
        scan_request(&buf[..], &mut slots, spans, limits)?
    };
    let Some(Scanned {
        len,
        method,
        target,
        version,
        count,
    }) = scanned
    else {
        return Ok(None);
    };
    let head = buf.split_to(len).freeze();
    let slice = |(at, n): (u32, u32)| head.slice(at as usize..(at + n) as usize);
    let uri = Uri::from_maybe_shared(slice(target))
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;

    if raw_ok
        && let Some(raw) = raw_fields(&head, &spans[..count], &method, &head[target.0 as usize..])
    {
        return Ok(Some(RequestHead {
            method,
            uri,
            version,
            headers: HeaderMap::new(),
            framing: BodyFraming::Length(raw.length.unwrap_or(0)),
            keep_alive: version == Version::HTTP_11,
            expect_continue: false,
            websocket: false,
            raw: Some(raw),
        }));
    }

    // Room for the fields the proxy adds (x-forwarded-*, x-request-id, ...) without a rehash.
    let mut headers = HeaderMap::with_capacity(count + 8);
    let mut framing = Framing::default();
    for span in &spans[..count] {
        let name = HeaderName::from_bytes(span.name_in(&head))
            .map_err(|_| ProxyError::BadRequest("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(slice(span.value))
            .map_err(|_| ProxyError::BadRequest("invalid header value"))?;
        framing
            .note(&name, &value)
            .map_err(ProxyError::BadRequest)?;
        headers.append(name, value);
    }
    let framing_kind = framing.decide_request(version)?;
    let keep_alive = match version {
        Version::HTTP_11 => !framing.close,
        _ => framing.keep_alive && !framing.close,
    };
    let has_body = framing_kind != BodyFraming::Length(0);
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        framing: framing_kind,
        keep_alive,
        expect_continue: framing.expect_continue && has_body && version == Version::HTTP_11,
        websocket: framing.conn_upgrade && framing.upgrade_websocket && version == Version::HTTP_11,
        raw: None,
    }))
}

/// The header lines of `head` (each ending in CRLF), if the request can go upstream with them as
/// they are plus what the proxy appends (`x-forwarded-for`, `x-forwarded-proto`, the client
/// certificate, `x-request-id`): an origin-form target, exactly one `Host` and at most one
/// `Cookie`, no body or one framed by a single plain `Content-Length` (digits only: no list, no
/// sign; no `Transfer-Encoding`, no `Expect`), no hop-by-hop field and none of the fields the
/// proxy sets. Anything else is parsed into a map as usual, where every framing error is
/// reported.
fn raw_fields(head: &Bytes, spans: &[Span], method: &Method, target: &[u8]) -> Option<RawFields> {
    if target.first() != Some(&b'/') || *method == Method::CONNECT {
        return None;
    }
    let (mut hosts, mut cookies, mut length) = (0, 0, None);
    for span in spans {
        match classify(span.name_in(head)) {
            FieldClass::Other | FieldClass::Date => {}
            FieldClass::Host => hosts += 1,
            FieldClass::Cookie => cookies += 1,
            FieldClass::ContentLength if length.is_none() => {
                length = Some(plain_length(span.value_in(head))?);
            }
            FieldClass::ContentLength
            | FieldClass::TransferEncoding
            | FieldClass::HopByHop
            | FieldClass::Expect
            | FieldClass::Forwarding
            | FieldClass::AttemptCount => return None,
        }
    }
    if hosts != 1 || cookies > 1 {
        return None;
    }
    Some(RawFields {
        lines: field_lines(head, spans)?,
        length,
    })
}

/// Parses (and takes) a complete response head from the front of `buf`, if one is there (the
/// client role). `raw_ok`: keep it raw if it qualifies ([`RawHead`]). A head still incomplete
/// past [`RESPONSE_MAX_HEAD`] is refused.
pub fn parse_response(
    buf: &mut BytesMut,
    raw_ok: bool,
) -> Result<Option<ResponseHead>, ProxyError> {
    with_spans(|spans| parse_response_with(buf, spans, raw_ok))
}

fn parse_response_with(
    buf: &mut BytesMut,
    spans: &mut Vec<Span>,
    raw_ok: bool,
) -> Result<Option<ResponseHead>, ProxyError> {
    // Positions are taken while httparse borrows the buffer; the head is then split off and
    // frozen, so header values are slices of it (no copy, no allocation per value).
    let (len, code, version, count) = {
        let bytes = &buf[..];
        let base = bytes.as_ptr() as usize;
        let mut slots = [const { MaybeUninit::uninit() }; RESPONSE_MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, bytes, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if bytes.len() > RESPONSE_MAX_HEAD => {
                return Err(ProxyError::UpstreamMalformed("response head too large"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ProxyError::UpstreamMalformed("too many response headers"));
            }
            Err(_) => return Err(ProxyError::UpstreamMalformed("invalid response head")),
        };
        if len > RESPONSE_MAX_HEAD {
            return Err(ProxyError::UpstreamMalformed("response head too large"));
        }
        spans.extend(resp.headers.iter().map(|h| Span::of(base, h)));
        if !crlf_only(&bytes[..len], spans) {
            return Err(ProxyError::UpstreamMalformed("bare LF in response head"));
        }
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
    if raw_ok
        && status_has_body(status)
        && let Some(raw) = raw_head(&head, &spans[..count])
    {
        return Ok(Some(ResponseHead {
            status,
            version,
            headers: HeaderMap::new(),
            close: false,
            keep_alive: false,
            te_chunked: None,
            length: Some(raw.length),
            raw: Some(raw),
        }));
    }
    let mut headers = HeaderMap::with_capacity(count);
    let mut framing = Framing::default();
    for span in &spans[..count] {
        let name = HeaderName::from_bytes(span.name_in(&head))
            .map_err(|_| ProxyError::UpstreamMalformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(span.value_in(&head)))
            .map_err(|_| ProxyError::UpstreamMalformed("invalid header value"))?;
        framing
            .note(&name, &value)
            .map_err(ProxyError::UpstreamMalformed)?;
        headers.append(name, value);
    }
    if framing.te_fields > 0 && framing.length.is_some() {
        // The smuggling shape, from the other side: a cache or client behind Weir could frame
        // the body by the other field. Refused rather than repaired.
        return Err(ProxyError::UpstreamMalformed(
            "response carries both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        close: framing.close,
        keep_alive: framing.keep_alive,
        te_chunked: (framing.te_fields > 0).then_some(framing.last_chunked),
        length: framing.length,
        raw: None,
    }))
}

/// `head` (a complete response head with a body-carrying status) as a [`RawHead`], if it needs
/// no rewriting.
fn raw_head(head: &Bytes, spans: &[Span]) -> Option<RawHead> {
    let mut length = None;
    let mut has_date = false;
    for span in spans {
        match classify(span.name_in(head)) {
            FieldClass::Other
            | FieldClass::Host
            | FieldClass::Cookie
            | FieldClass::Expect
            | FieldClass::Forwarding => {}
            FieldClass::Date => has_date = true,
            FieldClass::ContentLength if length.is_none() => {
                length = Some(plain_length(span.value_in(head))?);
            }
            FieldClass::ContentLength
            | FieldClass::TransferEncoding
            | FieldClass::HopByHop
            | FieldClass::AttemptCount => return None,
        }
    }
    Some(RawHead {
        length: length.filter(|&n| n > 0)?,
        lines: field_lines(head, spans)?,
        has_date,
    })
}

/// What the framing-relevant fields of one head said (either role).
#[derive(Default)]
struct Framing {
    length: Option<u64>,
    te_fields: u32,
    /// The transfer codings in order, as far as they matter: how many, and whether the last was
    /// `chunked`.
    codings: u32,
    last_chunked: bool,
    chunked_seen: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    conn_upgrade: bool,
    upgrade_websocket: bool,
}

impl Framing {
    /// Notes one field; a framing field that cannot be trusted is an error (its reason).
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), &'static str> {
        let v = value.as_bytes();
        if name == http::header::CONTENT_LENGTH {
            // RFC 9110 §8.6: a list of identical values may be taken as one; anything else is a
            // framing error. Digits only: "+3" and "-1" are refused.
            for item in v.split(|&b| b == b',') {
                let n = plain_length(item.trim_ascii()).ok_or("invalid Content-Length")?;
                match self.length {
                    Some(prev) if prev != n => return Err("conflicting Content-Length values"),
                    _ => self.length = Some(n),
                }
            }
        } else if name == http::header::TRANSFER_ENCODING {
            self.te_fields += 1;
            for coding in v.split(|&b| b == b',') {
                let c = coding.trim_ascii();
                if c.is_empty() {
                    continue;
                }
                let chunked = c.eq_ignore_ascii_case(b"chunked");
                if chunked && self.chunked_seen {
                    return Err("chunked applied twice");
                }
                self.chunked_seen |= chunked;
                self.codings += 1;
                self.last_chunked = chunked;
            }
        } else if name == http::header::CONNECTION {
            for token in v.split(|&b| b == b',') {
                let t = token.trim_ascii();
                self.close |= t.eq_ignore_ascii_case(b"close");
                self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                self.conn_upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name == http::header::UPGRADE {
            self.upgrade_websocket |= v.eq_ignore_ascii_case(b"websocket");
        } else if name == http::header::EXPECT {
            self.expect_continue |= v.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }

    /// RFC 9112 §6.1–§6.3 for a request.
    fn decide_request(&self, version: Version) -> Result<BodyFraming, ProxyError> {
        if self.te_fields == 0 {
            return Ok(BodyFraming::Length(self.length.unwrap_or(0)));
        }
        if self.length.is_some() {
            // The request-smuggling shape: refuse rather than repair.
            return Err(ProxyError::ConflictingFraming);
        }
        if version == Version::HTTP_10 {
            return Err(ProxyError::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !self.last_chunked {
            return Err(ProxyError::BadRequest(
                "final transfer coding is not chunked",
            ));
        }
        if self.codings > 1 {
            // gzip, chunked: the body would go on still gzip-coded with nothing saying so.
            return Err(ProxyError::UnsupportedTransferCoding);
        }
        Ok(BodyFraming::Chunked)
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4); a plaintext connection that opens with it
/// speaks HTTP/2 with prior knowledge.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a plaintext connection say about its protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniff {
    Http2,
    Http1,
    /// Too few bytes to tell (they are a prefix of the preface).
    Undecided,
}

pub fn sniff(buf: &[u8]) -> Sniff {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] != H2_PREFACE[..n] {
        Sniff::Http1
    } else if n == H2_PREFACE.len() {
        Sniff::Http2
    } else {
        Sniff::Undecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<RequestHead>, ProxyError> {
        Parser::new(100, 64 * 1024, 16 * 1024).parse(&mut BytesMut::from(raw), false)
    }

    fn refused(raw: &[u8]) -> ProxyError {
        match parse(raw) {
            Err(e) => e,
            Ok(h) => panic!("accepted {:?}: {h:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn a_plain_get_parses_with_zero_copy_values_and_leaves_the_rest() {
        let mut buf = BytesMut::from(
            &b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next"[..],
        );
        let h = Parser::new(100, 1024, 16 * 1024)
            .parse(&mut buf, false)
            .unwrap()
            .unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri, "/a?b=1");
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(h.framing, BodyFraming::Length(0));
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_431() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'v', 2000));
        let mut buf = BytesMut::from(&big[..]);
        let e = Parser::new(100, 1024, 16 * 1024)
            .parse(&mut buf, false)
            .unwrap_err();
        assert!(matches!(e, ProxyError::HeadersTooLarge), "{e:?}");
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..30 {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let e = Parser::new(20, 64 * 1024, 16 * 1024)
            .parse(&mut BytesMut::from(&many[..]), false)
            .unwrap_err();
        assert!(matches!(e, ProxyError::HeadersTooLarge), "{e:?}");
        // A listener allowing more headers than the stack holds.
        let mut lots = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..150 {
            lots.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        lots.extend_from_slice(b"\r\n");
        let p = Parser::new(200, 64 * 1024, 16 * 1024);
        for _ in 0..2 {
            let h = p
                .parse(&mut BytesMut::from(&lots[..]), false)
                .unwrap()
                .unwrap();
            assert_eq!(h.headers.len(), 150);
        }
    }

    #[test]
    fn framing_decisions() {
        let h = parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Length(5));
        let h = parse(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Length(5));
        let h = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
        let h = parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.expect_continue);
        let h = parse(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.expect_continue, "no body, no 100");
        let ws = |raw: &[u8]| parse(raw).unwrap().unwrap().websocket;
        assert!(ws(
            b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n"
        ));
        assert!(!ws(
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        ));
        assert!(!ws(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"));
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        assert!(matches!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ProxyError::ConflictingFraming
        ));
        assert!(matches!(
            refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
            ProxyError::ConflictingFraming
        ));
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-Folded: a\r\n  b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-Nul: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
        ] {
            let e = refused(raw);
            assert_eq!(e.status(), 400, "{:?}: {e:?}", String::from_utf8_lossy(raw));
        }
        let e = refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(e.status(), 501);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |raw: &[u8]| parse(raw).unwrap().unwrap().keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: x, Close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn the_h2_preface_is_recognised() {
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest"), Sniff::Http2);
        assert_eq!(sniff(b"PRI * HT"), Sniff::Undecided);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(sniff(b"PRX"), Sniff::Http1);
    }

    fn parse_raw(head: &[u8]) -> RequestHead {
        Parser::new(100, 64 * 1024, 16 * 1024)
            .parse(&mut BytesMut::from(head), true)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_plain_bodiless_request_keeps_its_fields_raw() {
        let head =
            b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nCookie: a=1\r\nX-A:  v \r\n\r\n";
        let h = parse_raw(head);
        let raw = h.raw.as_ref().unwrap();
        assert_eq!(
            &raw.lines[..],
            b"Host: x\r\nAccept: */*\r\nCookie: a=1\r\nX-A:  v \r\n"
        );
        assert_eq!(raw.length, None);
        assert!(h.headers.is_empty());
        assert_eq!(h.framing, BodyFraming::Length(0));
        assert!(h.keep_alive && !h.expect_continue && !h.websocket);
        assert_eq!(h.uri, "/a?b=1");
        // Folded into a map, the fields are those of the usual parse.
        let mut map = HeaderMap::new();
        super::super::fields::append_lines(&h.raw.as_ref().unwrap().lines, &mut map);
        assert_eq!(map, parse(head).unwrap().unwrap().headers);
        // HTTP/1.0 without a keep-alive token closes after the answer, raw or not.
        assert!(!parse_raw(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").keep_alive);
        // A body framed by one plain length keeps the fields raw and frames the body.
        let h = parse_raw(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(h.raw.as_ref().unwrap().length, Some(5));
        assert_eq!(h.framing, BodyFraming::Length(5));
        let h = parse_raw(b"POST /p HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(h.raw.as_ref().unwrap().length, Some(0));
        assert_eq!(h.framing, BodyFraming::Length(0));
    }

    #[test]
    fn requests_the_proxy_must_rewrite_are_parsed_into_a_map() {
        for head in [
            // no Host, two, or two cookies (joined into one)
            &b"GET / HTTP/1.0\r\nAccept: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
            // a length that is a list, or two, or not plain digits; chunked; a promise of a body
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            // hop-by-hop fields
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            // fields the proxy sets, whatever their case
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-proto: https\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: By=x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Weir-Attempt-Count: 3\r\n\r\n",
            // targets other than origin-form, CONNECT
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ] {
            let h = parse_raw(head);
            assert!(h.raw.is_none(), "{:?}", String::from_utf8_lossy(head));
            assert!(!h.headers.is_empty(), "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn smuggling_shapes_are_refused_when_fields_may_stay_raw_too() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            let raw = Parser::new(100, 64 * 1024, 16 * 1024).parse(&mut BytesMut::from(head), true);
            let map = parse(head);
            match (raw, map) {
                (Err(r), Err(m)) => assert_eq!(r.status(), m.status()),
                (r, m) => panic!("{:?}: raw {r:?}, map {m:?}", String::from_utf8_lossy(head)),
            }
        }
    }

    fn response(head: &[u8], raw_ok: bool) -> ResponseHead {
        parse_response(&mut BytesMut::from(head), raw_ok)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn response_heads_parse_with_zero_copy_values_and_leave_the_body() {
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello"[..],
        );
        let p = parse_response(&mut b, false).unwrap().unwrap();
        assert_eq!(p.status, 200);
        assert_eq!(p.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(p.length, Some(5));
        assert_eq!(&b[..], b"hello");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(parse_response(&mut partial, false).unwrap().is_none());
        let mut bad = BytesMut::from(&b"garbage\r\n\r\n"[..]);
        assert!(parse_response(&mut bad, false).is_err());
    }

    #[test]
    fn response_framing_follows_method_status_and_fields() {
        let f = |head: &[u8], m: Method| response(head, false).framing(&m);
        let get = || Method::GET;
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", get()),
            (ResponseFraming::Length(5), true)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD
            ),
            (ResponseFraming::Length(0), true)
        );
        assert_eq!(
            f(b"HTTP/1.1 204 No Content\r\n\r\n", get()),
            (ResponseFraming::Length(0), true)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                get()
            ),
            (ResponseFraming::Chunked, true)
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", get()),
            (ResponseFraming::UntilClose, false)
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\n\r\n", get()),
            (ResponseFraming::UntilClose, false)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
                get()
            ),
            (ResponseFraming::Length(1), false)
        );
        assert_eq!(
            f(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", get()),
            (ResponseFraming::Length(1), false)
        );
        assert_eq!(
            f(
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
                get()
            ),
            (ResponseFraming::Length(1), true)
        );
    }

    #[test]
    fn a_plain_response_head_is_kept_raw_with_its_length_and_date() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\nDate: x\r\n\r\nhello";
        let p = response(head, true);
        let raw = p.raw.expect("kept raw");
        assert!(p.headers.is_empty(), "no map is built for a raw head");
        assert_eq!(p.length, Some(5));
        assert_eq!(raw.length, 5);
        assert!(raw.has_date);
        assert_eq!(
            &raw.lines[..],
            b"Content-Type: text/plain\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\nDate: x\r\n"
        );
        // Folded into a map, it is the same head parsed the usual way.
        let mut map = HeaderMap::new();
        raw.append_to(&mut map);
        assert_eq!(map, response(head, false).headers);
        // Without permission, never raw.
        assert!(response(head, false).raw.is_none());
    }

    #[test]
    fn response_heads_that_need_rewriting_are_never_raw() {
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
            // framing Weir must decide: none, empty, repeated
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            // bodiless statuses
            b"HTTP/1.1 204 No Content\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1\r\n\r\n",
        ] {
            let p = response(head, true);
            assert!(p.raw.is_none(), "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn response_heads_over_the_limits_are_refused() {
        let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
        while big.len() <= RESPONSE_MAX_HEAD {
            big.extend_from_slice(b"x-pad: 0123456789012345678901234567890123456789\r\n");
        }
        // Whole (one read brought all of it) or still incomplete: refused either way.
        let mut partial = BytesMut::from(&big[..]);
        assert!(parse_response(&mut partial, false).is_err());
        big.extend_from_slice(b"\r\n");
        let e = parse_response(&mut BytesMut::from(&big[..]), false).unwrap_err();
        assert_eq!(e.status(), 502);
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=RESPONSE_MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let e = parse_response(&mut BytesMut::from(&many[..]), false).unwrap_err();
        assert_eq!(e.status(), 502);
    }

    #[test]
    fn a_request_line_over_the_target_limit_is_414_even_past_the_head_limit() {
        let p = Parser::new(100, 64 * 1024, 16 * 1024);
        // Still no line end, past the target limit: refused at once, not after 64 KiB.
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', 17 * 1024));
        let e = p.parse(&mut BytesMut::from(&line[..]), false).unwrap_err();
        assert!(matches!(e, ProxyError::UriTooLong(_)), "{e:?}");
        // A 70 KB target overruns the head limit too: still 414.
        let mut huge = b"GET /".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 70 * 1024));
        let e = p.parse(&mut BytesMut::from(&huge[..]), false).unwrap_err();
        assert_eq!(e.status(), 414);
        // Past the target limit but the line has ended (the fields are what is large): 431.
        let mut fields = b"GET / HTTP/1.1\r\nx: ".to_vec();
        fields.extend(std::iter::repeat_n(b'v', 70 * 1024));
        let e = p
            .parse(&mut BytesMut::from(&fields[..]), false)
            .unwrap_err();
        assert_eq!(e.status(), 431);
    }

    /// The same hostile framing, sent to both roles: as a request head to the server role and as
    /// a response head to the client role (and as a chunked body to each). Both refuse it: the
    /// server with a 4xx, the client with a 502.
    #[test]
    fn both_roles_refuse_the_same_hostile_framing() {
        let heads: [(&str, &[u8]); 8] = [
            (
                "bare LF after the start line",
                b"\nHost: a\r\nContent-Length: 1\r\n\r\n",
            ),
            (
                "bare LF between fields",
                b"\r\nHost: a\nContent-Length: 1\r\n\r\n",
            ),
            (
                "bare LF at the end",
                b"\r\nHost: a\r\nContent-Length: 1\n\n",
            ),
            (
                "obs-fold",
                b"\r\nHost: a\r\nX-A: 1\r\n folded\r\nContent-Length: 1\r\n\r\n",
            ),
            (
                "NUL in a field",
                b"\r\nHost: a\r\nX-A: a\x00b\r\nContent-Length: 1\r\n\r\n",
            ),
            (
                "duplicate Content-Length",
                b"\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            ),
            (
                "signed Content-Length",
                b"\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            ),
            (
                "CL+TE",
                b"\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
        ];
        for (what, rest) in heads {
            let request = [&b"POST / HTTP/1.1"[..], rest].concat();
            let e = Parser::new(100, 64 * 1024, 16 * 1024)
                .parse(&mut BytesMut::from(&request[..]), false)
                .expect_err(what);
            assert_eq!(e.status(), 400, "{what}: {e:?}");
            // The raw path refuses it too.
            let e = Parser::new(100, 64 * 1024, 16 * 1024)
                .parse(&mut BytesMut::from(&request[..]), true)
                .expect_err(what);
            assert_eq!(e.status(), 400, "{what} (raw): {e:?}");
            let response = [&b"HTTP/1.1 200 OK"[..], rest].concat();
            for raw_ok in [false, true] {
                let e = parse_response(&mut BytesMut::from(&response[..]), raw_ok).expect_err(what);
                assert_eq!(e.status(), 502, "{what}: {e:?}");
            }
        }
    }
}
