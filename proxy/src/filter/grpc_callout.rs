//! Unary gRPC callouts (`proxy_dispatch_grpc_call`): one request to a manifest cluster that
//! speaks HTTP/2, answered to the filter as Envoy's Wasm host answers it — the response message
//! through `proxy_on_grpc_receive` when the call succeeds, a status through `proxy_on_grpc_close`
//! when it does not. The call's `service` argument names the cluster (Envoy also accepts a
//! serialized `GrpcService`; Weir has no such config to refer to).

use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use weir_host_abi::GrpcCallRequest;

use crate::config::Protocol;
use crate::http::body::ProxyBody;
use crate::upstream::{self, Cluster};

/// Largest response a callout may read (as for HTTP callouts).
const MAX_RESPONSE: usize = 1 << 20;

/// gRPC status codes used here (grpc/doc/statuscodes.md).
mod code {
    pub const OK: u32 = 0;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
    pub const PERMISSION_DENIED: u32 = 7;
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
    let request = match build(cluster, req, timeout) {
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

/// The HTTP/2 request: `POST /SERVICE/METHOD`, the call's metadata, one length-prefixed message.
fn build(
    cluster: &Cluster,
    req: &GrpcCallRequest,
    timeout: Duration,
) -> Result<Request<ProxyBody>, &'static str> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!("/{}/{}", req.service, req.method))
        .version(http::Version::HTTP_2)
        .header(http::header::HOST, cluster.name.as_str())
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)));
    for (k, v) in &req.initial_metadata {
        let v = HeaderValue::from_bytes(v).map_err(|_| "invalid metadata value")?;
        builder = builder.header(k.as_slice(), v);
    }
    let len = u32::try_from(req.message.len()).map_err(|_| "message too large")?;
    let mut framed = Vec::with_capacity(5 + req.message.len());
    framed.push(0); // not compressed
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&req.message);
    builder
        .body(ProxyBody::from(Bytes::from(framed)))
        .map_err(|_| "invalid call (service, method or metadata)")
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

    fn frame(msg: &[u8]) -> Bytes {
        let mut b = vec![0u8];
        b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        b.extend_from_slice(msg);
        Bytes::from(b)
    }

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
    fn http_statuses_map_to_grpc_codes() {
        assert_eq!(from_http(401), code::UNAUTHENTICATED);
        assert_eq!(from_http(503), code::UNAVAILABLE);
        assert_eq!(from_http(404), code::UNIMPLEMENTED);
        assert_eq!(from_http(500), code::UNKNOWN);
    }
}
