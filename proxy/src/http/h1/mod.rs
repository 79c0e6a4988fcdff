//! Weir's own HTTP/1.1 server side: read a head, hand the request to the service, write the
//! response, and decide whether the connection serves another request.
//!
//! hyper's server runs every request through a general dispatcher (a boxed service future per
//! request, a body channel, a second pass over the raw bytes to catch the framing hyper repairs);
//! a proxy needs less, and the difference was a quarter of Weir's CPU per request. So HTTP/1.1 is
//! served here — the pattern of pingora and nginx — and hyper keeps HTTP/2. Everything runs in
//! the connection's task: the request future is awaited in place, no allocation per request
//! beyond the head's buffer and header map.
//!
//! Order on one connection: head ([`crate::proto::h1::head`]) → request with its body reading from the shared
//! [`wire::Wire`] → service → response (`write`) → whatever is left of the request body is drained
//! (small) or the connection closed → next head. Pipelined requests wait in the read buffer.

pub mod wire;
pub mod write;

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use self::wire::{BodyState, Wire};
use self::write::{Exchange, Written};
use crate::conn::{ConnCtl, DownIo, Phase};
use crate::http::respond;
use crate::http::service::ProxyService;
use crate::proto::body::{DownstreamBody, ProxyBody};
use crate::proto::error::ProxyError;
use crate::proto::h1::body::RequestBody;
use crate::proto::h1::head::{self, Parser, RawFields, RequestHead, Sniff};

/// A request body left unread when its response is complete is read and dropped up to this
/// much, so the connection can serve the next request; a longer one closes the connection.
const DRAIN_MAX: u64 = 1 << 20;
/// How long that drain may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// How an HTTP/1.1 connection ended.
pub enum Ended {
    /// Served, then closed (or to be closed).
    Closed,
    /// Its first bytes were the HTTP/2 preface: hand the socket (and what was read) to HTTP/2.
    Http2(DownIo, BytesMut),
}

/// Serves HTTP/1.1 requests on `io` until the connection ends. `sniff`: a plaintext connection
/// that may still turn out to speak HTTP/2 with prior knowledge.
pub async fn serve(
    io: DownIo,
    svc: &ProxyService,
    ctl: &ConnCtl,
    parser: &Parser,
    sniff: bool,
) -> Ended {
    let mut wire = Wire::new(io, BytesMut::with_capacity(8 * 1024));
    if sniff {
        loop {
            match head::sniff(&wire.rbuf) {
                _ if wire.rbuf.is_empty() => {}
                Sniff::Http2 => return Ended::Http2(wire.io, wire.rbuf),
                Sniff::Http1 => break,
                Sniff::Undecided => ctl.set_phase(Phase::Head(1)),
            }
            match poll_fn(|cx| wire.poll_fill(cx)).await {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(_) => {}
            }
        }
    }
    let wire = Rc::new(RefCell::new(wire));
    let mut head_buf = Vec::with_capacity(512);
    let mut served: u64 = 0;
    // Bytes read up to the end of the previous exchange (telemetry's per-request counts).
    let mut rx_mark = 0;
    loop {
        let head = match read_head(&wire, ctl, parser, svc, served).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ended::Closed,
            Err(e) => {
                let ex = Exchange {
                    head_request: false,
                    version: http::Version::HTTP_11,
                };
                let resp = respond::error_response(&e);
                let mut record = svc.exchange();
                record.respond(&resp);
                let tx_mark = ctl.bytes().1;
                write::response(&wire, &mut head_buf, resp, ex, true).await;
                let (rx, tx) = ctl.bytes();
                record.finish(rx - rx_mark, tx - tx_mark);
                return Ended::Closed;
            }
        };
        let mut record = svc.exchange();
        served += 1;
        ctl.set_phase(Phase::Busy);
        let ex = Exchange {
            head_request: head.method == Method::HEAD,
            version: head.version,
        };
        let keep_alive = head.keep_alive;
        let upgrade = head.websocket;
        let (req, has_body, raw) = request(&wire, head);
        let resp = tokio::select! {
            biased;
            r = svc.handle(req, upgrade, raw, &mut record) => match r {
                Ok(r) => r,
                // A filter reset the stream: close without an answer, as Envoy does.
                Err(_) => {
                    record.finish(ctl.bytes().0 - rx_mark, 0);
                    return Ended::Closed;
                }
            },
            // The client went away: dropping the request future cancels its upstream exchange.
            () = client_gone(&wire, parser.max_head()) => return Ended::Closed,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if upgrade {
                record.finish(ctl.bytes().0 - rx_mark, 0);
                return tunnel(wire, &mut head_buf, resp, ex, ctl).await;
            }
            // Switching protocols on a request that asked for none: nothing can follow it.
            let e = ProxyError::UpstreamMalformed("101 to a request without an upgrade");
            write::response(&wire, &mut head_buf, respond::error_response(&e), ex, true).await;
            return Ended::Closed;
        }
        let close = !keep_alive || ctl.draining();
        let tx_mark = ctl.bytes().1;
        let written = write::response(&wire, &mut head_buf, resp, ex, close).await;
        let (rx, tx) = ctl.bytes();
        record.finish(rx - rx_mark, tx - tx_mark);
        rx_mark = rx;
        if written == Written::Close {
            return Ended::Closed;
        }
        if has_body && !finish_body(&wire).await {
            return Ended::Closed;
        }
    }
}

/// Reads the next request head. `Ok(None)`: the client closed (or stopped) between requests.
/// The head's fields stay raw when the service would forward them untouched (asked as the head
/// is parsed, so the answer is the one the request is then served under).
async fn read_head(
    wire: &RefCell<Wire>,
    ctl: &ConnCtl,
    parser: &Parser,
    svc: &ProxyService,
    served: u64,
) -> Result<Option<RequestHead>, ProxyError> {
    loop {
        {
            let mut w = wire.borrow_mut();
            if !w.rbuf.is_empty() {
                if let Some(head) = parser.parse(&mut w.rbuf, svc.takes_raw_requests())? {
                    return Ok(Some(head));
                }
                ctl.set_phase(Phase::Head(served + 1));
            } else if w.eof {
                return Ok(None);
            } else if ctl.draining() {
                // The worker drains: an idle connection ends here.
                return Ok(None);
            } else {
                ctl.set_phase(if served == 0 {
                    Phase::Fresh
                } else {
                    Phase::Idle
                });
            }
        }
        match poll_fn(|cx| wire.borrow_mut().poll_fill(cx)).await {
            Ok(0) => {
                // A client that closes halfway through a head gets no answer: there is no
                // request to answer.
                return Ok(None);
            }
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Completes when the client closes its connection while its request is in flight. Only once
/// the request body has been read (the body's own reads see a close otherwise); bytes that
/// arrive meanwhile (a pipelined request) are kept for later, up to a head's worth. Costs no
/// system call while nothing arrives: the socket's readiness was cleared by the head's read.
async fn client_gone(wire: &RefCell<Wire>, max: usize) {
    poll_fn(|cx| {
        let mut w = wire.borrow_mut();
        loop {
            if w.body != BodyState::Done || w.rbuf.len() > max {
                return std::task::Poll::Pending;
            }
            match std::task::ready!(w.poll_fill(cx)) {
                Ok(0) | Err(_) => return std::task::Poll::Ready(()),
                Ok(_) => {}
            }
        }
    })
    .await
}

/// The request for `head`, with its body reading from the wire.
fn request(
    wire: &Rc<RefCell<Wire>>,
    head: RequestHead,
) -> (Request<DownstreamBody>, bool, Option<RawFields>) {
    let id = wire
        .borrow_mut()
        .start_body(head.framing, head.expect_continue);
    let has_body = wire.borrow().body != BodyState::Done;
    let body = if has_body {
        DownstreamBody::H1(RequestBody::new(wire.clone(), id))
    } else {
        DownstreamBody::Empty
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    (req, has_body, head.raw)
}

/// After the response: the rest of the request body, if any, is read and dropped so the next
/// request can be read. `false`: the connection must close instead.
async fn finish_body(wire: &RefCell<Wire>) -> bool {
    {
        let mut w = wire.borrow_mut();
        let continue_owed = w.detach_body();
        match w.body {
            BodyState::Done => return true,
            BodyState::Failed => return false,
            // The client was never told to send its body; it may or may not: close.
            _ if continue_owed => return false,
            _ => {}
        }
    }
    let drain = async {
        let mut dropped = 0u64;
        loop {
            match poll_fn(|cx| wire.borrow_mut().poll_body(cx)).await {
                None => return true,
                Some(Ok(frame)) => {
                    dropped += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if dropped > DRAIN_MAX {
                        return false;
                    }
                }
                Some(Err(_)) => return false,
            }
        }
    };
    tokio::time::timeout(DRAIN_TIME, drain)
        .await
        .unwrap_or(false)
}

/// An upgrade the upstream accepted: write the `101`, then splice the client's bytes with the
/// upstream's until either side closes. Bytes the client sent after its head go up first.
async fn tunnel(
    wire: Rc<RefCell<Wire>>,
    head_buf: &mut Vec<u8>,
    mut resp: http::Response<ProxyBody>,
    ex: Exchange,
    ctl: &ConnCtl,
) -> Ended {
    let upgrade = hyper::upgrade::on(&mut resp);
    if write::response(&wire, head_buf, resp, ex, false).await == Written::Close {
        return Ended::Closed;
    }
    let Ok(wire) = Rc::try_unwrap(wire) else {
        tracing::debug!("upgrade with a request body still held: closing");
        return Ended::Closed;
    };
    let Wire { mut io, rbuf, .. } = wire.into_inner();
    let upstream = match upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "upstream upgrade did not complete");
            return Ended::Closed;
        }
    };
    ctl.set_phase(Phase::Tunnel);
    let mut up = TokioIo::new(upstream);
    if !rbuf.is_empty() && up.write_all(&rbuf).await.is_err() {
        return Ended::Closed;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut io, &mut up).await {
        tracing::debug!(error = %e, "upgraded tunnel ended with an error");
    }
    Ended::Closed
}
