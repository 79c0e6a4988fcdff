//! gRPC callouts to a manifest cluster that speaks HTTP/2, answered to the filter as Envoy's Wasm
//! host answers them. A unary call (`proxy_dispatch_grpc_call`) gets its response message through
//! `proxy_on_grpc_receive` when it succeeds and a status through `proxy_on_grpc_close` when it
//! does not. A stream (`proxy_grpc_stream`) gets initial metadata, each message as it arrives,
//! trailing metadata and then its close status, while the filter sends messages
//! (`proxy_grpc_send`), half-closes (`proxy_grpc_close`) or cancels it. The `service` argument
//! names the cluster (Envoy also accepts a serialized `GrpcService`; Weir has no such config to
//! refer to). A unary call runs as a stream whose request side is its one message.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use weir_host_abi::{GrpcCallRequest, Pairs};

use crate::config::Protocol;
use crate::proto::body::ProxyBody;
use crate::proto::error::ProxyError;
use crate::upstream::{self, Cluster};

/// Largest response message a callout may read (as for HTTP callouts).
const MAX_RESPONSE: usize = 1 << 20;

/// gRPC status codes used here (grpc/doc/statuscodes.md).
pub mod code {
    pub const OK: u32 = 0;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// Whether `cluster` can carry gRPC (an HTTP/2 cluster).
pub fn usable(cluster: &Cluster) -> bool {
    cluster.protocol == Protocol::Http2
}

/// Makes a unary call on `cluster` and reads its answer, within the call's timeout (or the
/// cluster's response timeout): [`GrpcEvent::Reply`] or [`GrpcEvent::Close`].
pub async fn call(cluster: &Cluster, req: &GrpcCallRequest) -> GrpcEvent {
    let timeout = req.timeout.unwrap_or(cluster.response_timeout);
    // The filter sends nothing more, and a unary call cannot be cancelled here (its token is
    // forgotten instead): the command side stays open and silent.
    let (_silent, cmds) = mpsc::unbounded_channel();
    // Only the first message is kept (each is bounded by `MAX_RESPONSE`); the rest are counted.
    let (mut first, mut count) = (None, 0);
    let mut status = None;
    let run = stream(cluster, req, cmds, |ev| match ev {
        GrpcEvent::Message(m) => {
            count += 1;
            first.get_or_insert(m);
        }
        GrpcEvent::Close(code, message) => status = Some((code, message)),
        _ => {}
    });
    if tokio::time::timeout(timeout, run).await.is_err() {
        return GrpcEvent::Close(code::DEADLINE_EXCEEDED, "deadline exceeded".into());
    }
    unary_answer(first, count, status)
}

/// A unary call's answer from what its stream delivered (its first message and how many there
/// were): exactly one message and status 0, or the status it closed with.
fn unary_answer(first: Option<Vec<u8>>, count: usize, status: Option<(u32, String)>) -> GrpcEvent {
    match (status, first) {
        (Some((code::OK, _)), Some(m)) if count == 1 => GrpcEvent::Reply(m),
        (Some((code::OK, _)), None) => {
            GrpcEvent::Close(code::INTERNAL, "no response message".into())
        }
        (Some((code::OK, _)), Some(_)) => {
            GrpcEvent::Close(code::INTERNAL, "more than one response message".into())
        }
        (Some((code, message)), _) => GrpcEvent::Close(code, message),
        (None, _) => GrpcEvent::Close(code::INTERNAL, "the call ended without a status".into()),
    }
}

/// The HTTP/2 request: `POST /SERVICE/METHOD` with the call's metadata.
fn build(
    cluster: &Cluster,
    req: &GrpcCallRequest,
    timeout: Option<Duration>,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, &'static str> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!("/{}/{}", req.service, req.method))
        .version(http::Version::HTTP_2)
        .header(http::header::HOST, &*cluster.name)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(t) = timeout {
        builder = builder.header("grpc-timeout", format!("{}m", t.as_millis().max(1)));
    }
    for (k, v) in &req.initial_metadata {
        let v = HeaderValue::from_bytes(v).map_err(|_| "invalid metadata value")?;
        builder = builder.header(k.as_slice(), v);
    }
    builder
        .body(body)
        .map_err(|_| "invalid call (service, method or metadata)")
}

/// One length-prefixed, uncompressed message.
fn frame(message: &[u8]) -> Bytes {
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// What a filter asks of one of its streams.
#[derive(Debug)]
pub enum StreamCmd {
    /// `proxy_grpc_send`: a message, and whether it ends the filter's side.
    Send(Vec<u8>, bool),
    /// `proxy_grpc_close`: half-close (the answer goes on).
    Close,
    /// `proxy_grpc_cancel`: reset; nothing more is delivered.
    Cancel,
}

/// What a stream tells the filter, in this order (initial metadata and messages may be absent).
#[derive(Debug, PartialEq, Eq)]
pub enum GrpcEvent {
    InitialMetadata(Pairs),
    Message(Vec<u8>),
    TrailingMetadata(Pairs),
    Close(u32, String),
    /// A unary call's one message: the call is over ([`call`] only).
    Reply(Vec<u8>),
}

/// Runs a stream on `cluster` until it closes or the filter cancels it (`cmds` says so, or is
/// dropped). `emit` delivers each event to the filter.
pub async fn stream(
    cluster: &Cluster,
    req: &GrpcCallRequest,
    mut cmds: mpsc::UnboundedReceiver<StreamCmd>,
    mut emit: impl FnMut(GrpcEvent),
) {
    let close = |code: u32, message: &str| GrpcEvent::Close(code, message.to_owned());
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tx = Some(tx);
    let timeout = req.timeout.unwrap_or(cluster.response_timeout);
    // A unary call's request side is its one message, and it always states its deadline.
    let deadline = if req.streaming {
        req.timeout
    } else {
        apply(Some(StreamCmd::Send(req.message.clone(), true)), &mut tx);
        Some(timeout)
    };
    let request = match build(cluster, req, deadline, ProxyBody::Channel(rx)) {
        Ok(r) => r,
        Err(m) => return emit(close(code::INTERNAL, m)),
    };
    // A stream has no deadline of its own: the route's response timer starts only once the
    // filter has half-closed (the request body has ended).
    let route = upstream::Route {
        response_timeout: timeout,
        ..upstream::Route::of(cluster)
    };
    // The same path as a request's: breakers, health, balancing, outlier accounting.
    let send = upstream::callout(cluster, request, &route);
    tokio::pin!(send);
    let resp = loop {
        tokio::select! {
            r = &mut send => break r,
            c = cmds.recv() => if !apply(c, &mut tx) {
                return;
            },
        }
    };
    let (parts, mut body) = match resp {
        Ok(r) => r.into_parts(),
        Err(ProxyError::NoHealthyUpstream(_)) => {
            return emit(close(code::UNAVAILABLE, "no healthy upstream"));
        }
        Err(e) => return emit(close(code::UNAVAILABLE, e.reason())),
    };
    if parts.status != http::StatusCode::OK {
        return emit(close(
            from_http(parts.status.as_u16()),
            "non-200 HTTP status",
        ));
    }
    if let Some((code, message)) = status_of(&parts.headers) {
        // Trailers-only: the headers are the trailing metadata.
        emit(GrpcEvent::TrailingMetadata(metadata(&parts.headers)));
        return emit(GrpcEvent::Close(code, message));
    }
    emit(GrpcEvent::InitialMetadata(metadata(&parts.headers)));
    let mut buf = BytesMut::new();
    let mut trailers = HeaderMap::new();
    loop {
        tokio::select! {
            f = body.frame() => match f {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => {
                        buf.extend_from_slice(&d);
                        if let Err(m) = cut(&mut buf, false, &mut emit) {
                            return emit(close(code::INTERNAL, m));
                        }
                    }
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            trailers = t;
                        }
                    }
                },
                Some(Err(_)) => return emit(close(code::UNAVAILABLE, "stream reset")),
                None => break,
            },
            c = cmds.recv() => if !apply(c, &mut tx) {
                return;
            },
        }
    }
    if let Err(m) = cut(&mut buf, true, &mut emit) {
        return emit(close(code::INTERNAL, m));
    }
    emit(GrpcEvent::TrailingMetadata(metadata(&trailers)));
    emit(match status_of(&trailers) {
        Some((code, message)) => GrpcEvent::Close(code, message),
        None => close(code::INTERNAL, "no grpc-status in the response"),
    });
}

/// Applies a filter's command to the request side; `false`: the stream is cancelled.
fn apply(cmd: Option<StreamCmd>, tx: &mut Option<mpsc::UnboundedSender<Bytes>>) -> bool {
    match cmd {
        Some(StreamCmd::Send(m, end)) => {
            if let Some(t) = tx {
                let _ = t.send(frame(&m));
            }
            if end {
                *tx = None;
            }
            true
        }
        Some(StreamCmd::Close) => {
            *tx = None;
            true
        }
        Some(StreamCmd::Cancel) | None => false,
    }
}

/// Header or trailer fields as metadata pairs (pseudo-headers have no place there).
fn metadata(h: &HeaderMap) -> Pairs {
    h.iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Emits every whole message in `buf`; `end`: the response is over, and nothing may be left.
fn cut(
    buf: &mut BytesMut,
    end: bool,
    emit: &mut impl FnMut(GrpcEvent),
) -> Result<(), &'static str> {
    while let Some(m) = next_message(buf)? {
        emit(GrpcEvent::Message(m));
    }
    if end && !buf.is_empty() {
        return Err("the response ended inside a message");
    }
    Ok(())
}

/// The next whole message in `buf`, if one has arrived (a compressed one is refused: no
/// `grpc-encoding` was offered).
fn next_message(buf: &mut BytesMut) -> Result<Option<Vec<u8>>, &'static str> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err("compressed response message");
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_RESPONSE {
        return Err("response message too large");
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).to_vec()))
}

/// `grpc-status` and `grpc-message` of a header or trailer block (an unreadable status is
/// `UNKNOWN`).
fn status_of(h: &HeaderMap) -> Option<(u32, String)> {
    let status = h.get("grpc-status")?;
    let code = status
        .to_str()
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(code::UNKNOWN);
    let message = h
        .get("grpc-message")
        .filter(|_| code != code::OK)
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some((code, message))
}

/// The gRPC status for a non-200 HTTP answer (grpc/doc/http-grpc-status-mapping.md).
fn from_http(status: u16) -> u32 {
    match status {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a unary call answers for the response body `body` closed with status 0: the
    /// stream's cutting, then the unary rule.
    fn answer_for(body: &[u8]) -> GrpcEvent {
        let mut messages = Vec::new();
        let mut collect = |ev| {
            if let GrpcEvent::Message(m) = ev {
                messages.push(m);
            }
        };
        match cut(&mut BytesMut::from(body), true, &mut collect) {
            Ok(()) => {
                let count = messages.len();
                let first = messages.into_iter().next();
                unary_answer(first, count, Some((code::OK, String::new())))
            }
            Err(m) => GrpcEvent::Close(code::INTERNAL, m.into()),
        }
    }

    #[test]
    fn one_message_is_unframed() {
        assert_eq!(
            answer_for(&frame(b"pong")),
            GrpcEvent::Reply(b"pong".to_vec())
        );
        assert_eq!(answer_for(&frame(b"")), GrpcEvent::Reply(Vec::new()));
    }

    #[test]
    fn bad_framing_is_internal() {
        let mut short = frame(b"pong").to_vec();
        short.pop();
        for bad in [Bytes::from_static(b"\0\0"), Bytes::from(short), {
            let mut c = frame(b"x").to_vec();
            c[0] = 1;
            Bytes::from(c)
        }] {
            assert!(
                matches!(answer_for(&bad), GrpcEvent::Close(code::INTERNAL, _)),
                "accepted"
            );
        }
    }

    #[test]
    fn a_unary_answer_is_one_message_and_status_0() {
        let two = [frame(b"a"), frame(b"b")].concat();
        assert!(matches!(
            answer_for(&two),
            GrpcEvent::Close(code::INTERNAL, _)
        ));
        assert!(matches!(
            answer_for(b""),
            GrpcEvent::Close(code::INTERNAL, _)
        ));
        assert_eq!(
            unary_answer(Some(b"x".to_vec()), 1, Some((5, "no".into()))),
            GrpcEvent::Close(5, "no".into())
        );
    }

    #[test]
    fn status_comes_from_grpc_status() {
        let mut h = HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("5"));
        h.insert("grpc-message", HeaderValue::from_static("not found"));
        assert_eq!(status_of(&h), Some((5, "not found".into())));
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(status_of(&h), Some((code::OK, String::new())));
        h.insert("grpc-status", HeaderValue::from_static("x"));
        assert!(matches!(status_of(&h), Some((code::UNKNOWN, _))));
    }

    #[test]
    fn stream_messages_are_cut_where_they_end() {
        let mut buf = BytesMut::new();
        let two = [frame(b"one"), frame(b"two")].concat();
        buf.extend_from_slice(&two[..6]);
        assert_eq!(
            next_message(&mut buf),
            Ok(None),
            "a message cut short waits"
        );
        buf.extend_from_slice(&two[6..]);
        assert_eq!(next_message(&mut buf), Ok(Some(b"one".to_vec())));
        assert_eq!(next_message(&mut buf), Ok(Some(b"two".to_vec())));
        assert_eq!(next_message(&mut buf), Ok(None));
        assert!(buf.is_empty());
        buf.extend_from_slice(&[1, 0, 0, 0, 0]);
        assert!(next_message(&mut buf).is_err(), "compressed");
    }

    #[test]
    fn http_statuses_map_to_grpc_codes() {
        assert_eq!(from_http(401), code::UNAUTHENTICATED);
        assert_eq!(from_http(503), code::UNAVAILABLE);
        assert_eq!(from_http(404), code::UNIMPLEMENTED);
        assert_eq!(from_http(500), code::UNKNOWN);
    }
}
