//! The one place where errors become HTTP responses.
//!
//! Every error the data path can meet is a [`ProxyError`]; its [`kind`](ProxyError::kind) says whose
//! fault it was (and so, later, whether a retry may help), its status and a short `reason` token an
//! operator can grep for in the `x-weir-error` header, the body and the logs. Details that could
//! reveal internal addresses stay in the logs, not in the response.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;

/// The response header that carries an error's reason token.
pub const ERROR_HEADER: &str = "x-weir-error";

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// Weir itself.
    Internal,
}

/// Everything that can end a request with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("request carries both Content-Length and Transfer-Encoding")]
    ConflictingFraming,
    #[error("request target is longer than {0} bytes")]
    UriTooLong(u64),
    #[error("request head over the listener's size or header-count limit")]
    HeadersTooLarge,
    #[error("request uses a transfer coding other than chunked")]
    UnsupportedTransferCoding,
    #[error("method {0} is not served by a reverse proxy")]
    MethodNotAllowed(http::Method),
    #[error("no endpoint available in cluster {0}")]
    NoHealthyUpstream(String),
    #[error("connect to {addr} failed: {source}")]
    ConnectFailure {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("upstream did not answer within {0:?}")]
    ResponseTimeout(Duration),
    #[error("upstream reset the connection: {0}")]
    UpstreamReset(#[source] hyper::Error),
    #[error("upstream connection failed: {0}")]
    UpstreamIo(#[source] std::io::Error),
    #[error("upstream closed the connection before a complete response head")]
    UpstreamClosed,
    #[error("upstream sent an invalid response: {0}")]
    UpstreamMalformed(&'static str),
    #[error("upstream sent an invalid response: {0}")]
    UpstreamProtocol(#[source] hyper::Error),
    #[error("response body failed before its first byte")]
    UpstreamBodyFailed,
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("filter chain: {1}")]
    Filter(StatusCode, &'static str),
    #[error("route decision names unknown cluster {0}")]
    UnknownCluster(String),
    #[error("circuit breaker open: cluster at max_{}", .0.name())]
    Overflow(crate::upstream::shared::Resource),
    #[error("attempt got no response head within its per-try timeout {0:?}")]
    PerTryTimeout(Duration),
    #[error("no response head within the request timeout {0:?}")]
    RequestTimeout(Duration),
    /// The last failure of a request that a retry policy covered (it may have been retried).
    #[error("{last} (after {attempts} attempts)")]
    Retried {
        attempts: u32,
        #[source]
        last: Box<ProxyError>,
    },
}

impl ProxyError {
    /// Classifies a hyper error met while talking to an upstream.
    pub fn from_upstream(e: hyper::Error) -> Self {
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() || e.is_user() {
            ProxyError::UpstreamProtocol(e)
        } else {
            ProxyError::UpstreamReset(e)
        }
    }

    /// Whose fault it was.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::ConflictingFraming
            | ProxyError::UriTooLong(_)
            | ProxyError::HeadersTooLarge
            | ProxyError::UnsupportedTransferCoding => ErrorKind::Downstream,
            ProxyError::Internal(_) | ProxyError::Filter(..) | ProxyError::UnknownCluster(_) => {
                ErrorKind::Internal
            }
            ProxyError::Retried { last, .. } => last.kind(),
            _ => ErrorKind::Upstream,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ConflictingFraming => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoHealthyUpstream(_)
            | ProxyError::ConnectFailure { .. }
            | ProxyError::ConnectTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamIo(_)
            | ProxyError::UpstreamClosed
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::UpstreamMalformed(_)
            | ProxyError::UpstreamBodyFailed => StatusCode::BAD_GATEWAY,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Filter(status, _) => *status,
            ProxyError::UnknownCluster(_) | ProxyError::Overflow(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::PerTryTimeout(_) | ProxyError::RequestTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Retried { last, .. } => last.status(),
        }
    }

    /// The short token for headers, bodies and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ConflictingFraming => "conflicting_framing",
            ProxyError::UriTooLong(_) => "uri_too_long",
            ProxyError::HeadersTooLarge => "request_headers_too_large",
            ProxyError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::NoHealthyUpstream(_) => "no_healthy_upstream",
            ProxyError::ConnectFailure { .. } => "upstream_connect_failure",
            ProxyError::ConnectTimeout(_) => "upstream_connect_timeout",
            ProxyError::ResponseTimeout(_) => "upstream_response_timeout",
            ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamIo(_)
            | ProxyError::UpstreamClosed => "upstream_reset",
            ProxyError::UpstreamProtocol(_) | ProxyError::UpstreamMalformed(_) => {
                "upstream_protocol_error"
            }
            ProxyError::UpstreamBodyFailed => "upstream_body_error",
            ProxyError::Internal(_) => "internal_error",
            ProxyError::Filter(_, reason) => reason,
            ProxyError::UnknownCluster(_) => "unknown_cluster",
            ProxyError::Overflow(_) => "upstream_overflow",
            ProxyError::PerTryTimeout(_) => "upstream_per_try_timeout",
            ProxyError::RequestTimeout(_) => "upstream_request_timeout",
            ProxyError::Retried { last, .. } => last.reason(),
        }
    }

    /// Headers that say more than the reason: which breaker overflowed (`x-weir-overflow`), how
    /// many attempts a retried request took (`x-weir-attempt-count`).
    fn detail(&self, h: &mut http::HeaderMap) {
        match self {
            ProxyError::Overflow(r) => {
                h.insert(OVERFLOW_HEADER, HeaderValue::from_static(r.name()));
            }
            ProxyError::Retried { attempts, last } => {
                h.insert(ATTEMPT_COUNT_HEADER, HeaderValue::from(*attempts));
                last.detail(h);
            }
            _ => {}
        }
    }
}

/// The circuit-breaker resource that refused a request (`connections`, `pending`, `requests`).
pub const OVERFLOW_HEADER: &str = "x-weir-overflow";
/// How many attempts a request covered by a retry policy took (on the response; on each
/// upstream request, which attempt it is).
pub const ATTEMPT_COUNT_HEADER: &str = "x-weir-attempt-count";

/// Builds the response for an error. A downstream error also closes the connection: after a
/// malformed request the byte stream cannot be trusted.
pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let reason = e.reason();
    match e.kind() {
        ErrorKind::Downstream => tracing::debug!(error = %e, reason, "rejected request"),
        _ => tracing::warn!(error = %e, reason, "request failed"),
    }
    let body = bytes::Bytes::from(format!("weir: {reason}\n"));
    let mut resp = Response::new(ProxyBody::from(body));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    e.detail(h);
    if e.kind() == ErrorKind::Downstream {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons() {
        let cases = [
            (ProxyError::ConflictingFraming, 400, "conflicting_framing"),
            (ProxyError::UriTooLong(10), 414, "uri_too_long"),
            (
                ProxyError::HeadersTooLarge,
                431,
                "request_headers_too_large",
            ),
            (
                ProxyError::UnsupportedTransferCoding,
                501,
                "unsupported_transfer_coding",
            ),
            (
                ProxyError::ConnectTimeout(([127, 0, 0, 1], 1).into()),
                503,
                "upstream_connect_timeout",
            ),
            (
                ProxyError::ResponseTimeout(Duration::from_secs(1)),
                504,
                "upstream_response_timeout",
            ),
        ];
        let cases = cases.into_iter().chain([
            (
                ProxyError::Overflow(crate::upstream::shared::Resource::Requests),
                503,
                "upstream_overflow",
            ),
            (
                ProxyError::PerTryTimeout(Duration::from_secs(1)),
                504,
                "upstream_per_try_timeout",
            ),
            (
                ProxyError::RequestTimeout(Duration::from_secs(1)),
                504,
                "upstream_request_timeout",
            ),
        ]);
        for (e, status, reason) in cases {
            let r = error_response(&e);
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[ERROR_HEADER], reason);
        }
        let r = error_response(&ProxyError::ConflictingFraming);
        assert_eq!(r.headers()[header::CONNECTION], "close");
        let r = error_response(&ProxyError::Overflow(
            crate::upstream::shared::Resource::Pending,
        ));
        assert_eq!(r.headers()[OVERFLOW_HEADER], "pending");
        // A retried failure answers as its last attempt did, with the attempt count.
        let r = error_response(&ProxyError::Retried {
            attempts: 3,
            last: Box::new(ProxyError::UpstreamClosed),
        });
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()[ERROR_HEADER], "upstream_reset");
        assert_eq!(r.headers()[ATTEMPT_COUNT_HEADER], "3");
    }
}
