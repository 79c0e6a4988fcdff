//! The one place where errors become HTTP responses.
//!
//! Every error the data path can meet is a [`ProxyError`], classified in [`crate::proto::error`]
//! (whose fault, status, reason token, response flag). Here it becomes a response: the status, the
//! reason in the `x-weir-error` header and the body, and the details an operator needs. Details that could
//! reveal internal addresses stay in the logs, not in the response.

use http::{HeaderValue, Response, header};

use crate::proto::body::ProxyBody;
use crate::proto::error::{ATTEMPT_COUNT_HEADER, ERROR_HEADER, OVERFLOW_HEADER};
use crate::proto::error::{ErrorKind, ProxyError};

/// Builds the response for an error. An error in the request's framing also closes the
/// connection ([`ProxyError::closes_connection`]).
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
    detail(e, h);
    if e.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Headers that say more than the reason: which breaker overflowed (`x-weir-overflow`), how many
/// attempts a retried request took (`x-weir-attempt-count`).
fn detail(e: &ProxyError, h: &mut http::HeaderMap) {
    match e {
        ProxyError::Overflow(r) => {
            h.insert(OVERFLOW_HEADER, HeaderValue::from_static(r.name()));
        }
        ProxyError::Retried { attempts, last } => {
            h.insert(ATTEMPT_COUNT_HEADER, HeaderValue::from(*attempts));
            detail(last, h);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
                ProxyError::Overflow(crate::proto::error::Resource::Requests),
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
            crate::proto::error::Resource::Pending,
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
