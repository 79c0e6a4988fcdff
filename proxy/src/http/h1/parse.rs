//! A request head off the wire (RFC 9112 §2–§3) into `http` types, and its message framing
//! (§6): the one place that decides how long a request body is.
//!
//! The parser is strict where leniency smuggles: `httparse` refuses obs-fold, whitespace before a
//! colon and control bytes; a request with both `Content-Length` and `Transfer-Encoding`, a
//! `Content-Length` that is not a plain decimal (or disagrees with itself), or a transfer coding
//! other than a final `chunked` is refused here, before anything reaches a filter or an upstream.
//! Header values are not copied: they are slices of the head's bytes. On the plain path (no
//! filter chain, no detailed telemetry) a bodiless request whose fields need no rewriting is not
//! parsed into a map at all: its header lines are kept as they came ([`Head::raw`]).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri, Version};

use crate::http::headers::plain_length;
use crate::http::respond::ProxyError;

/// Header slots kept on the stack; a listener allowing more uses a heap array of its own.
const STACK_SLOTS: usize = 100;

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
pub struct Head {
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

/// The head limits of one listener.
pub struct Parser {
    max_headers: usize,
    max_head: usize,
}

/// Where one header's name and value lie in a head (offsets and lengths).
#[derive(Clone, Copy, Default)]
pub(crate) struct Span {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

impl Span {
    /// The field's name in `head`, the bytes it was taken from.
    pub fn name_in<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.name.0 as usize..(self.name.0 + self.name.1) as usize]
    }

    /// The field's value in `head`.
    pub fn value_in<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.value.0 as usize..(self.value.0 + self.value.1) as usize]
    }

    /// The span of `h` in a head starting at address `base`.
    pub fn of(base: usize, h: &httparse::Header<'_>) -> Self {
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
pub(crate) fn with_spans<R>(f: impl FnOnce(&mut Vec<Span>) -> R) -> R {
    SPANS.with(|s| match s.try_borrow_mut() {
        Ok(mut v) => {
            v.clear();
            f(&mut v)
        }
        // Never nested in practice; a fresh list keeps it correct if it ever is.
        Err(_) => f(&mut Vec::new()),
    })
}

impl Parser {
    pub fn new(max_headers: usize, max_head: u64) -> Self {
        Self {
            max_headers,
            max_head: usize::try_from(max_head).unwrap_or(usize::MAX),
        }
    }

    /// The largest head accepted, in bytes.
    pub fn max_head(&self) -> usize {
        self.max_head
    }

    /// Parses (and takes) a complete head from the front of `buf`. `Ok(None)`: not complete yet
    /// (and not yet over the size limit). `raw_ok`: keep the fields raw if they qualify
    /// ([`Head::raw`]).
    pub fn parse(&self, buf: &mut BytesMut, raw_ok: bool) -> Result<Option<Head>, ProxyError> {
        with_spans(|spans| parse_with(buf, self.max_headers, spans, self.max_head, raw_ok))
    }
}

/// The request line and header positions of a complete head, and its length.
struct Scanned {
    len: usize,
    method: Method,
    target: (u32, u32),
    version: Version,
    count: usize,
}

/// Runs httparse over `bytes`, recording where each header lies in `spans`.
fn scan<'b>(
    bytes: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    spans: &mut Vec<Span>,
    max_head: usize,
) -> Result<Option<Scanned>, ProxyError> {
    let base = bytes.as_ptr() as usize;
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, bytes, slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() > max_head => {
            return Err(ProxyError::HeadersTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::HeadersTooLarge),
        Err(httparse::Error::Version) => {
            return Err(ProxyError::BadRequest("unsupported HTTP version"));
        }
        Err(_) => return Err(ProxyError::BadRequest("malformed request head")),
    };
    if len > max_head {
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
    Ok(Some(Scanned {
        len,
        method,
        target: (offset(path), path.len() as u32),
        version,
        count: req.headers.len(),
    }))
}

fn parse_with(
    buf: &mut BytesMut,
    max_headers: usize,
    spans: &mut Vec<Span>,
    max_head: usize,
    raw_ok: bool,
) -> Result<Option<Head>, ProxyError> {
    // Positions are taken while httparse borrows the buffer; the head is then split off and
    // frozen, so the values can be slices of it.
    let scanned = if max_headers <= STACK_SLOTS {
        let mut slots = [const { MaybeUninit::uninit() }; STACK_SLOTS];
        scan(&buf[..], &mut slots[..max_headers], spans, max_head)?
    } else {
        let mut slots = Vec::with_capacity(max_headers);
        slots.resize_with(max_headers, MaybeUninit::uninit);
        scan(&buf[..], &mut slots, spans, max_head)?
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
        return Ok(Some(Head {
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
        framing.note(&name, &value)?;
        headers.append(name, value);
    }
    let framing_kind = framing.decide(version)?;
    let keep_alive = match version {
        Version::HTTP_11 => !framing.close,
        _ => framing.keep_alive && !framing.close,
    };
    let has_body = framing_kind != BodyFraming::Length(0);
    Ok(Some(Head {
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

/// What a request field name means to a raw head.
enum FieldKind {
    Host,
    Cookie,
    ContentLength,
    /// Framing (but a plain length), hop-by-hop, or a field the proxy sets or rewrites: the head must go to a map.
    Rewrite,
    Other,
}

fn field_kind(name: &[u8]) -> FieldKind {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is(b"te") => FieldKind::Rewrite,
        4 if is(b"host") => FieldKind::Host,
        6 if is(b"cookie") => FieldKind::Cookie,
        6 if is(b"expect") => FieldKind::Rewrite,
        7 if is(b"upgrade") => FieldKind::Rewrite,
        10 if is(b"connection") || is(b"keep-alive") => FieldKind::Rewrite,
        12 if is(b"x-request-id") => FieldKind::Rewrite,
        14 if is(b"content-length") => FieldKind::ContentLength,
        15 if is(b"x-forwarded-for") => FieldKind::Rewrite,
        16 if is(b"proxy-connection") => FieldKind::Rewrite,
        17 if is(b"transfer-encoding") || is(b"x-forwarded-proto") => FieldKind::Rewrite,
        20 if is(b"x-weir-attempt-count") => FieldKind::Rewrite,
        23 if is(b"x-forwarded-client-cert") => FieldKind::Rewrite,
        _ => FieldKind::Other,
    }
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
        match field_kind(span.name_in(head)) {
            FieldKind::Other => {}
            FieldKind::Host => hosts += 1,
            FieldKind::Cookie => cookies += 1,
            FieldKind::ContentLength if length.is_none() => {
                length = Some(plain_length(span.value_in(head))?);
            }
            FieldKind::ContentLength => return None,
            FieldKind::Rewrite => return None,
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

/// The field lines of a complete head (from the first field through its CRLF, without the blank
/// line), if there is a field and every line ends in CRLF: the head does, and each field starts
/// right after one (httparse ends a line at `\n` and admits no `\r` in a value, so nothing
/// else can stand there). Kept raw, they can go out as they are.
pub(crate) fn field_lines(head: &Bytes, spans: &[Span]) -> Option<Bytes> {
    let crlf_before = |at: u32| at >= 2 && head[at as usize - 2..at as usize] == *b"\r\n";
    if !head.ends_with(b"\r\n\r\n") || !spans.iter().all(|s| crlf_before(s.name.0)) {
        return None;
    }
    let start = spans.first()?.name.0 as usize;
    Some(head.slice(start..head.len() - 2))
}

/// What the framing-relevant fields of one head said.
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
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), ProxyError> {
        let v = value.as_bytes();
        if name == http::header::CONTENT_LENGTH {
            // RFC 9110 §8.6: a list of identical values may be taken as one; anything else is a
            // framing error. Digits only: "+3" and "-1" are refused.
            for item in v.split(|&b| b == b',') {
                let n = plain_length(item.trim_ascii())
                    .ok_or(ProxyError::BadRequest("invalid Content-Length"))?;
                match self.length {
                    Some(prev) if prev != n => {
                        return Err(ProxyError::BadRequest("conflicting Content-Length values"));
                    }
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
                    return Err(ProxyError::BadRequest("chunked applied twice"));
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
    fn decide(&self, version: Version) -> Result<BodyFraming, ProxyError> {
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

    fn parse(raw: &[u8]) -> Result<Option<Head>, ProxyError> {
        Parser::new(100, 64 * 1024).parse(&mut BytesMut::from(raw), false)
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
        let h = Parser::new(100, 1024)
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
        let e = Parser::new(100, 1024).parse(&mut buf, false).unwrap_err();
        assert!(matches!(e, ProxyError::HeadersTooLarge), "{e:?}");
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..30 {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let e = Parser::new(20, 64 * 1024)
            .parse(&mut BytesMut::from(&many[..]), false)
            .unwrap_err();
        assert!(matches!(e, ProxyError::HeadersTooLarge), "{e:?}");
        // A listener allowing more headers than the stack holds.
        let mut lots = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..150 {
            lots.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        lots.extend_from_slice(b"\r\n");
        let p = Parser::new(200, 64 * 1024);
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

    fn parse_raw(head: &[u8]) -> Head {
        Parser::new(100, 64 * 1024)
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
        crate::http::headers::append_lines(&h.raw.as_ref().unwrap().lines, &mut map);
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
            // bare LF line ends
            b"GET / HTTP/1.1\nHost: a\n\n",
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
            let raw = Parser::new(100, 64 * 1024).parse(&mut BytesMut::from(head), true);
            let map = parse(head);
            match (raw, map) {
                (Err(r), Err(m)) => assert_eq!(r.status(), m.status()),
                (r, m) => panic!("{:?}: raw {r:?}, map {m:?}", String::from_utf8_lossy(head)),
            }
        }
    }
}
