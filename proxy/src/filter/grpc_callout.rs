//! gRPC callouts to a manifest cluster that speaks HTTP/2, answered to the filter as Envoy's Wasm
//! host answers them. A unary call (`proxy_dispatch_grpc_call`) gets its response message through
//! `proxy_on_grpc_receive` when it succeeds and a status through `proxy_on_grpc_close` when it
//! does not. A stream (`proxy_grpc_stream`) gets initial metadata, each message as it arrives,
//! trailing metadata and then its close status, while the filter sends messages
//! (`proxy_grpc_send`), half-closes (`proxy_grpc_close`) or cancels it. The `service` argument
//! names the cluster (Envoy also accepts a serialized `GrpcService`; Weir has no such config to
//! refer to).

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use tokio::sync::mpsc;
use weir_host_abi::{GrpcCallRequest, Pairs};

use crate::config::Protocol;
use crate::http::body::ProxyBody;
use crate::upstream::{self, Cluster};

/// Largest response a callout may read (as for HTTP callouts).
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

/// How a unary call ended.
#[derive(Debug, PartialEq, Eq)]
pub enum GrpcAnswer {
    /// `grpc-status: 0` and one response message.
    Message(Vec<u8>),
    /// Any other end: the status and its message.
    Failed(u32, String),
}

impl GrpcAnswer {
    fn failed(code: u32, message: impl Into<String>) -> Self {
        GrpcAnswer::Failed(code, message.into())
    }
}

/// Whether `cluster` can carry gRPC (an HTTP/2 cluster).
pub fn usable(cluster: &Cluster) -> bool {
    cluster.protocol == Protocol::Http2
}

/// Makes the call on `cluster` and reads its answer, within the call's timeout (or the cluster's
/// response timeout).
pub async fn call(cluster: &Cluster, req: &GrpcCallRequest) -> GrpcAnswer {
    let timeout = req.timeout.unwrap_or(cluster.response_timeout);
    match tokio::time::timeout(timeout, exchange(cluster, req, timeout)).await {
        Ok(answer) => answer,
        Err(_) => GrpcAnswer::failed(code::DEADLINE_EXCEEDED, "deadline exceeded"),
    }
}

async fn exchange(cluster: &Cluster, req: &GrpcCallRequest, timeout: Duration) -> GrpcAnswer {
    let Some(ep) = cluster.pick().cloned() else {
        return GrpcAnswer::failed(code::UNAVAILABLE, "no healthy upstream");
    };
    let body = ProxyBody::from(frame(&req.message));
    let request = match build(cluster, req, Some(timeout), body) {
        Ok(r) => r,
        Err(m) => return GrpcAnswer::failed(code::INTERNAL, m),
    };
    let route = upstream::Route {
        response_timeout: timeout,
        ..upstream::Route::of(cluster)
    };
    let resp = match upstream::send(cluster, &ep, request, &route).await {
        Ok(r) => r,
        Err(e) => return GrpcAnswer::failed(code::UNAVAILABLE, e.reason()),
    };
    let (parts, body) = resp.into_parts();
    if parts.status != http::StatusCode::OK {
        return GrpcAnswer::failed(from_http(parts.status.as_u16()), "non-200 HTTP status");
    }
    // Trailers-only: the status is in the headers and there is no message.
    if let Some(answer) = status_of(&parts.headers) {
        return answer;
    }
    let Ok(collected) = Limited::new(body, MAX_RESPONSE).collect().await else {
        return GrpcAnswer::failed(code::INTERNAL, "response body failed or too large");
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    match status_of(&trailers) {
        Some(GrpcAnswer::Message(_)) => message_of(collected.to_bytes()),
        Some(failed) => failed,
        None => GrpcAnswer::failed(code::INTERNAL, "no grpc-status in the response"),
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
        .header(http::header::HOST, cluster.name.as_str())
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
    let Some(ep) = cluster.pick().cloned() else {
        return emit(close(code::UNAVAILABLE, "no healthy upstream"));
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tx = Some(tx);
    let request = match build(cluster, req, req.timeout, ProxyBody::Channel(rx)) {
        Ok(r) => r,
        Err(m) => return emit(close(code::INTERNAL, m)),
    };
    // A stream has no deadline of its own: the route's response timer starts only once the
    // filter has half-closed (the request body has ended).
    let route = upstream::Route {
        response_timeout: req.timeout.unwrap_or(cluster.response_timeout),
        ..upstream::Route::of(cluster)
    };
    let send = upstream::send(cluster, &ep, request, &route);
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
        Err(e) => return emit(close(code::UNAVAILABLE, e.reason())),
    };
    if parts.status != http::StatusCode::OK {
        return emit(close(
            from_http(parts.status.as_u16()),
            "non-200 HTTP status",
        ));
    }
    if let Some(answer) = status_of(&parts.headers) {
        // Trailers-only: the headers are the trailing metadata.
        emit(GrpcEvent::TrailingMetadata(metadata(&parts.headers)));
        return emit(closing(answer));
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
                        loop {
                            match next_message(&mut buf) {
                                Ok(Some(m)) => emit(GrpcEvent::Message(m)),
                                Ok(None) => break,
                                Err(m) => return emit(close(code::INTERNAL, m)),
                            }
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
    emit(GrpcEvent::TrailingMetadata(metadata(&trailers)));
    emit(match status_of(&trailers) {
        Some(answer) => closing(answer),
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

fn closing(answer: GrpcAnswer) -> GrpcEvent {
    match answer {
        GrpcAnswer::Message(_) => GrpcEvent::Close(code::OK, String::new()),
        GrpcAnswer::Failed(c, m) => GrpcEvent::Close(c, m),
    }
}

/// Header or trailer fields as metadata pairs (pseudo-headers have no place there).
fn metadata(h: &HeaderMap) -> Pairs {
    h.iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// The next whole message in `buf`, if one has arrived.
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

/// `grpc-status` (and `grpc-message`) of a header or trailer block: `Message(empty)` for OK.
fn status_of(h: &HeaderMap) -> Option<GrpcAnswer> {
    let status = h.get("grpc-status")?;
    let code = status
        .to_str()
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(code::UNKNOWN);
    if code == code::OK {
        return Some(GrpcAnswer::Message(Vec::new()));
    }
    let message = h
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some(GrpcAnswer::Failed(code, message))
}

/// The one message of a successful unary answer (a compressed one is refused: no
/// `grpc-encoding` was offered).
fn message_of(mut body: Bytes) -> GrpcAnswer {
    if body.len() < 5 {
        return GrpcAnswer::failed(code::INTERNAL, "no response message");
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return GrpcAnswer::failed(code::INTERNAL, "compressed response message");
    }
    if body.len() != len {
        return GrpcAnswer::failed(code::INTERNAL, "response message length mismatch");
    }
    GrpcAnswer::Message(body.to_vec())
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

    #[test]
    fn one_message_is_unframed() {
        assert_eq!(
            message_of(frame(b"pong")),
            GrpcAnswer::Message(b"pong".to_vec())
        );
        assert_eq!(message_of(frame(b"")), GrpcAnswer::Message(Vec::new()));
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
                matches!(message_of(bad), GrpcAnswer::Failed(code::INTERNAL, _)),
                "accepted"
            );
        }
    }

    #[test]
    fn status_comes_from_grpc_status() {
        let mut h = HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("5"));
        h.insert("grpc-message", HeaderValue::from_static("not found"));
        assert_eq!(
            status_of(&h),
            Some(GrpcAnswer::Failed(5, "not found".into()))
        );
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(status_of(&h), Some(GrpcAnswer::Message(Vec::new())));
        h.insert("grpc-status", HeaderValue::from_static("x"));
        assert!(matches!(
            status_of(&h),
            Some(GrpcAnswer::Failed(code::UNKNOWN, _))
        ));
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
