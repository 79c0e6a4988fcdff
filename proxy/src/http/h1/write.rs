//! Writing a response on an HTTP/1.1 connection: the head, then the body framed by a known
//! length, by chunks, or (for an HTTP/1.0 client with no length) by closing the connection.
//!
//! A response whose first body bytes are already at hand (the common case: the upstream's head
//! and body arrived in one read) goes out in one `writev`. Otherwise the head is written first,
//! so a client never waits on headers while a slow body trickles in.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::{Body, Frame};
use tokio::io::AsyncWrite;

use super::wire::Wire;
use crate::http::respond;
use crate::proto::body::{BoxError, ProxyBody};
use crate::proto::error::ProxyError;
use crate::proto::h1::chunked::{chunk_prefix, last_chunk};
use crate::proto::h1::head::RawHead;

/// What the request asked that shapes the response's framing.
#[derive(Clone, Copy)]
pub struct Exchange {
    pub head_request: bool,
    pub version: Version,
}

/// Whether the connection can carry another request after this response.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    KeepAlive,
    Close,
}

#[derive(Clone, Copy)]
enum Framing {
    /// No body on the wire (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes `resp` and reports whether the connection stays usable. `close` forces
/// `connection: close`. `head` is a reusable buffer for the encoded head.
pub async fn response(
    wire: &RefCell<Wire>,
    head: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    ex: Exchange,
    mut close: bool,
) -> Written {
    let (mut parts, mut body) = resp.into_parts();
    let raw = body.take_raw_head();
    close |= asks_close(&parts.headers);
    let status = parts.status;
    let bodyless = ex.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless {
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        Framing::Length(n)
    } else if let Some(n) = raw
        .as_ref()
        .map(|r| r.length)
        .or_else(|| declared_length(&parts.headers))
    {
        Framing::Length(n)
    } else if ex.version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        close = true;
        Framing::UntilClose
    };
    // The first frame, if it is already there: it can share the head's write.
    let first = match &framing {
        Framing::None => Poll::Ready(None),
        _ => std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await,
    };
    if let Poll::Ready(Some(Err(e))) = &first {
        // Nothing is on the wire yet: the client still gets a proper answer.
        tracing::debug!(error = %e, "response body failed before its first byte");
        let err = respond::error_response(&ProxyError::UpstreamBodyFailed);
        return Box::pin(response(wire, head, err, ex, true)).await;
    }
    // Raw lines go out as they are when their length frames the body as sent; otherwise they
    // join the map, and the head is encoded as any other.
    let raw = match raw {
        Some(r) if matches!(framing, Framing::Length(n) if n == r.length) => Some(r),
        Some(r) => {
            r.append_to(&mut parts.headers);
            None
        }
        None => None,
    };
    encode_head(
        head,
        status,
        &parts.headers,
        raw.as_ref(),
        &framing,
        ex,
        close,
    );
    let mut out = Out {
        framing,
        close,
        pending_head: true,
    };
    let result = async {
        match first {
            Poll::Ready(Some(Ok(frame))) => {
                if out.frame(wire, head, frame).await? {
                    return Ok(());
                }
            }
            Poll::Ready(Some(Err(_))) => unreachable!("handled above"),
            Poll::Ready(None) => return out.end(wire, head, None).await,
            Poll::Pending => {}
        }
        loop {
            if out.pending_head {
                write_all(wire, &mut [IoSlice::new(head)]).await?;
                out.pending_head = false;
            }
            match body_frame(&mut body).await {
                Some(Ok(frame)) => {
                    if out.frame(wire, head, frame).await? {
                        return Ok(());
                    }
                }
                None => return out.end(wire, head, None).await,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "response body failed mid-stream: aborting");
                    return Err(io::Error::other("response body failed"));
                }
            }
        }
    }
    .await;
    let flushed = std::future::poll_fn(|cx| Pin::new(&mut wire.borrow_mut().io).poll_flush(cx));
    match (result, flushed.await) {
        (Ok(()), Ok(())) if !out.close => Written::KeepAlive,
        _ => Written::Close,
    }
}

async fn body_frame(body: &mut ProxyBody) -> Option<Result<Frame<Bytes>, BoxError>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// The body side of one response as it is written.
struct Out {
    framing: Framing,
    close: bool,
    /// The head is encoded but not yet written (it goes with the first bytes after it).
    pending_head: bool,
}

impl Out {
    /// Writes one frame; `Ok(true)` when it ended the body (trailers).
    async fn frame(
        &mut self,
        wire: &RefCell<Wire>,
        head: &[u8],
        frame: Frame<Bytes>,
    ) -> io::Result<bool> {
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                self.end(wire, head, frame.into_trailers().ok()).await?;
                return Ok(true);
            }
        };
        let head_part: &[u8] = if std::mem::take(&mut self.pending_head) {
            head
        } else {
            &[]
        };
        match &mut self.framing {
            Framing::None => {
                write_all(wire, &mut [IoSlice::new(head_part)]).await?;
            }
            _ if data.is_empty() => {
                write_all(wire, &mut [IoSlice::new(head_part)]).await?;
            }
            Framing::Length(left) => {
                if data.len() as u64 > *left {
                    // More than the length the head announced: the stream would desynchronise.
                    return Err(io::Error::other("response body longer than its length"));
                }
                *left -= data.len() as u64;
                write_all(wire, &mut [IoSlice::new(head_part), IoSlice::new(&data)]).await?;
            }
            Framing::Chunked => {
                let mut size = [0u8; 20];
                let prefix = chunk_prefix(&mut size, data.len());
                write_all(
                    wire,
                    &mut [
                        IoSlice::new(head_part),
                        IoSlice::new(prefix),
                        IoSlice::new(&data),
                        IoSlice::new(b"\r\n"),
                    ],
                )
                .await?;
            }
            Framing::UntilClose => {
                write_all(wire, &mut [IoSlice::new(head_part), IoSlice::new(&data)]).await?;
            }
        }
        Ok(false)
    }

    /// The body ended (with trailers, perhaps).
    async fn end(
        &mut self,
        wire: &RefCell<Wire>,
        head: &[u8],
        trailers: Option<HeaderMap>,
    ) -> io::Result<()> {
        let head_part: &[u8] = if std::mem::take(&mut self.pending_head) {
            head
        } else {
            &[]
        };
        match self.framing {
            Framing::Chunked => {
                let last = last_chunk(trailers.as_ref());
                write_all(wire, &mut [IoSlice::new(head_part), IoSlice::new(&last)]).await
            }
            Framing::Length(left) if left > 0 => {
                write_all(wire, &mut [IoSlice::new(head_part)]).await?;
                // Shorter than announced: the client must see the response cut, not complete.
                Err(io::Error::other("response body shorter than its length"))
            }
            _ => write_all(wire, &mut [IoSlice::new(head_part)]).await,
        }
    }
}

/// Writes every slice, in order.
pub async fn write_all(wire: &RefCell<Wire>, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    std::future::poll_fn(|cx| {
        let mut w = wire.borrow_mut();
        while !bufs.is_empty() {
            let n = match Pin::new(&mut w.io).poll_write_vectored(cx, bufs) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            IoSlice::advance_slices(&mut bufs, n);
        }
        Poll::Ready(Ok(()))
    })
    .await
}

fn asks_close(h: &HeaderMap) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// A single well-formed `content-length` on the response, if there is one.
fn declared_length(h: &HeaderMap) -> Option<u64> {
    let mut all = h.get_all(header::CONTENT_LENGTH).iter();
    let v = all.next()?.as_bytes();
    if all.next().is_some() {
        return None;
    }
    crate::proto::h1::fields::plain_length(v)
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `raw`: the upstream's own lines, which carry the body's `content-length`; `headers` then
/// holds only what Weir added.
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    raw: Option<&RawHead>,
    framing: &Framing,
    ex: Exchange,
    close: bool,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    // HEAD and 304 answers keep the length the full response would have had (RFC 9110 §8.6).
    let keep_length =
        matches!(framing, Framing::None) && (ex.head_request || status == StatusCode::NOT_MODIFIED);
    if let Some(r) = raw {
        out.extend_from_slice(&r.lines);
    }
    for (name, value) in headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && !keep_length)
        {
            continue;
        }
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        Framing::Length(_) if raw.is_some() => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {}
    }
    if !raw.is_some_and(|r| r.has_date) && !headers.contains_key(header::DATE) {
        DATE.with(|d| {
            push_field(out, b"date", d.borrow_mut().now());
        });
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if ex.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `date` of responses that carry none (Weir's own answers), formatted once a second.
struct DateCache {
    second: u64,
    text: HeaderValue,
}

impl DateCache {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            self.text = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or(HeaderValue::from_static(""));
        }
        self.text.as_bytes()
    }
}

thread_local! {
    static DATE: RefCell<DateCache> = const {
        RefCell::new(DateCache {
            second: u64::MAX,
            text: HeaderValue::from_static(""),
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(
        status: u16,
        headers: &[(&str, &str)],
        framing: Framing,
        ex: Exchange,
        close: bool,
    ) -> String {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        encode_head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            &h,
            None,
            &framing,
            ex,
            close,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn raw_lines_go_out_as_they_came_with_what_weir_added() {
        let ex = Exchange {
            head_request: false,
            version: Version::HTTP_11,
        };
        let raw = |lines: &'static [u8], has_date| RawHead {
            lines: Bytes::from_static(lines),
            length: 5,
            has_date,
        };
        let mut extra = HeaderMap::new();
        extra.insert("x-weir-attempt-count", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        let r = raw(b"Content-Length: 5\r\nX-A:  1\r\nDate: d\r\n", true);
        encode_head(
            &mut out,
            StatusCode::OK,
            &extra,
            Some(&r),
            &Framing::Length(5),
            ex,
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  1\r\nDate: d\r\nx-weir-attempt-count: 2\r\n\r\n"
        );
        // No date among the lines: Weir's own is added; a close is announced.
        let mut out = Vec::new();
        let r = raw(b"content-length: 5\r\n", false);
        encode_head(
            &mut out,
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            Some(&r),
            &Framing::Length(5),
            ex,
            true,
        );
        let h = String::from_utf8(out).unwrap();
        assert!(
            h.starts_with("HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\ndate: ")
                && h.ends_with("\r\nconnection: close\r\n\r\n")
                && h.matches("content-length").count() == 1,
            "{h}"
        );
    }

    #[test]
    fn heads_carry_the_framing_weir_chose() {
        let ex = Exchange {
            head_request: false,
            version: Version::HTTP_11,
        };
        let h = head_of(
            200,
            &[
                ("content-length", "99"),
                ("x-a", "1"),
                ("date", "d"),
                ("transfer-encoding", "gzip"),
            ],
            Framing::Length(5),
            ex,
            false,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: d\r\ncontent-length: 5\r\n\r\n"
        );
        let h = head_of(
            502,
            &[("date", "d"), ("connection", "keep-alive")],
            Framing::Chunked,
            ex,
            true,
        );
        assert_eq!(
            h,
            "HTTP/1.1 502 Bad Gateway\r\ndate: d\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let head = Exchange {
            head_request: true,
            version: Version::HTTP_11,
        };
        let h = head_of(
            200,
            &[("content-length", "42"), ("date", "d")],
            Framing::None,
            head,
            false,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\ncontent-length: 42\r\ndate: d\r\n\r\n"
        );
        let h = head_of(
            204,
            &[("content-length", "0"), ("date", "d")],
            Framing::None,
            ex,
            false,
        );
        assert_eq!(h, "HTTP/1.1 204 No Content\r\ndate: d\r\n\r\n");
        let old = Exchange {
            head_request: false,
            version: Version::HTTP_10,
        };
        let h = head_of(200, &[("date", "d")], Framing::Length(0), old, false);
        assert!(h.ends_with("connection: keep-alive\r\n\r\n"), "{h}");
        let h = head_of(599, &[], Framing::Length(0), ex, false);
        assert!(
            h.starts_with("HTTP/1.1 599 \r\n") && h.contains("\r\ndate: "),
            "{h}"
        );
    }

    #[test]
    fn only_a_single_plain_length_is_declared() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(declared_length(&h), Some(12));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(declared_length(&h), None);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1 2"));
        assert_eq!(declared_length(&h), None);
    }
}
