//! Every error the data path can meet, classified once.
//!
//! A [`ProxyError`] knows whose fault it was ([`ErrorKind`]), the status the client gets, the
//! short `reason` token an operator greps for (`x-weir-error`, the body, the logs), the Envoy-style
//! response flag it leaves in metrics and access logs ([`flags`]), and what it means to a retry
//! policy ([`UpstreamFailure`]). Those five answers used to be worked out in three places (the
//! response mapping, the retry policy, and telemetry reading the reason string back off the
//! response); now each is one `match` here. Turning an error into a response is `http::respond`'s
//! job; this module knows no body or header type.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

/// The response header that carries an error's reason token.
pub const ERROR_HEADER: &str = "x-weir-error";
/// The circuit-breaker resource that refused a request (`connections`, `pending`, `requests`).
pub const OVERFLOW_HEADER: &str = "x-weir-overflow";
/// How many attempts a request covered by a retry policy took (on the response; on each
/// upstream request, which attempt it is).
pub const ATTEMPT_COUNT_HEADER: &str = "x-weir-attempt-count";

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// A filter failed, reset the stream or broke a rule of the chain.
    Filter,
    /// Weir itself (or its configuration: a route to a cluster it does not have).
    Internal,
}

/// The circuit-breaker resource that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Connections = 0,
    Pending = 1,
    Requests = 2,
    Retries = 3,
}

impl Resource {
    /// Every resource, in index order.
    pub const ALL: [Resource; 4] = [
        Resource::Connections,
        Resource::Pending,
        Resource::Requests,
        Resource::Retries,
    ];

    /// The label in `/metrics`, `/clusters` and `x-weir-overflow`.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::Pending => "pending",
            Resource::Requests => "requests",
            Resource::Retries => "retries",
        }
    }
}

/// Response flags (Envoy's letters), a bit each: what went wrong with a request, as metrics
/// (`weir_downstream_rq_flags_total`), access logs and spans report it.
pub mod flags {
    /// No healthy upstream host (the cluster had no endpoint to pick).
    pub const UH: u16 = 1 << 0;
    /// Upstream connection failure (refused, unreachable, TLS, connect timeout).
    pub const UF: u16 = 1 << 1;
    /// Upstream request timeout (no response head in time).
    pub const UT: u16 = 1 << 2;
    /// Upstream connection termination (closed before a complete response).
    pub const UC: u16 = 1 << 3;
    /// Upstream remote reset (HTTP/2 reset, or a broken response body).
    pub const UR: u16 = 1 << 4;
    /// Upstream protocol error (not HTTP, bad framing).
    pub const UPE: u16 = 1 << 5;
    /// No cluster: a route decision named a cluster the manifest does not have.
    pub const NC: u16 = 1 << 6;
    /// Downstream connection termination (the client went away before the response ended).
    pub const DC: u16 = 1 << 7;
    /// Local reset: a filter reset the stream (`proxy_close_stream`).
    pub const LR: u16 = 1 << 8;
    /// Downstream protocol error (a request Weir refused to parse or forward).
    pub const DPE: u16 = 1 << 9;
    /// Upstream overflow: a circuit breaker refused the request.
    pub const UO: u16 = 1 << 10;
    /// Upstream retry limit exceeded.
    pub const URX: u16 = 1 << 11;
    /// A filter failed (trap, deadline, unavailable VM): Weir's own flag, Envoy has none.
    pub const FF: u16 = 1 << 12;
    /// No route: nothing decided where the request goes (an xDS listener's routes matched
    /// nothing, or a listener without a default cluster).
    pub const NR: u16 = 1 << 13;

    /// Every flag with its letters, in the order they are written.
    pub const NAMES: [(u16, &str); 14] = [
        (UH, "UH"),
        (UF, "UF"),
        (UT, "UT"),
        (UC, "UC"),
        (UR, "UR"),
        (UPE, "UPE"),
        (NC, "NC"),
        (DC, "DC"),
        (LR, "LR"),
        (DPE, "DPE"),
        (UO, "UO"),
        (URX, "URX"),
        (FF, "FF"),
        (NR, "NR"),
    ];
}

/// How one attempt at an upstream failed, as retry policies and endpoint statistics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The connection could not be made (refused, unreachable, TLS, connect timeout).
    ConnectFailure,
    /// An HTTP/2 stream refused before processing (REFUSED_STREAM).
    RefusedStream,
    /// The connection or stream broke before a complete response head.
    Reset,
    /// No response head in time.
    Timeout,
    /// The upstream answered with something that is not valid HTTP.
    Protocol,
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
    /// No filter chose a cluster and the listener has no default one.
    #[error("no route for this request")]
    NoRoute,
    #[error("circuit breaker open: cluster at max_{}", .0.name())]
    Overflow(Resource),
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
            | ProxyError::UnsupportedTransferCoding
            | ProxyError::MethodNotAllowed(_) => ErrorKind::Downstream,
            ProxyError::Filter(..) => ErrorKind::Filter,
            // A route decision is configuration: neither side's fault.
            ProxyError::Internal(_) | ProxyError::UnknownCluster(_) | ProxyError::NoRoute => {
                ErrorKind::Internal
            }
            ProxyError::Retried { last, .. } => last.kind(),
            ProxyError::NoHealthyUpstream(_)
            | ProxyError::ConnectFailure { .. }
            | ProxyError::ConnectTimeout(_)
            | ProxyError::ResponseTimeout(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamIo(_)
            | ProxyError::UpstreamClosed
            | ProxyError::UpstreamMalformed(_)
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::UpstreamBodyFailed
            | ProxyError::Overflow(_)
            | ProxyError::PerTryTimeout(_)
            | ProxyError::RequestTimeout(_) => ErrorKind::Upstream,
        }
    }

    /// Whether the downstream connection must close after the answer: after a malformed request
    /// the byte stream cannot be trusted. (A well-formed request Weir will not serve, such as
    /// `CONNECT`, leaves the connection usable.)
    pub fn closes_connection(&self) -> bool {
        self.kind() == ErrorKind::Downstream && !matches!(self, ProxyError::MethodNotAllowed(_))
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ConflictingFraming => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
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
            ProxyError::NoRoute => "no_route",
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

    /// The response flag ([`flags`]) a request answered with this error carries.
    pub fn flag(&self) -> u16 {
        // One table, by reason: a filter's local reply carries only its reason, and must flag
        // the same way.
        flag_of_reason(self.reason())
    }

    /// How an attempt at an upstream failed, or `None` for an error that is not an attempt's
    /// failure (the request's own fault, a filter, a breaker, the request deadline).
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        Some(match self {
            ProxyError::ConnectFailure { .. } | ProxyError::ConnectTimeout(_) => {
                UpstreamFailure::ConnectFailure
            }
            ProxyError::UpstreamReset(h) if is_refused_stream(h) => UpstreamFailure::RefusedStream,
            ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamIo(_)
            | ProxyError::UpstreamClosed => UpstreamFailure::Reset,
            ProxyError::ResponseTimeout(_) | ProxyError::PerTryTimeout(_) => {
                UpstreamFailure::Timeout
            }
            ProxyError::UpstreamProtocol(_) | ProxyError::UpstreamMalformed(_) => {
                UpstreamFailure::Protocol
            }
            _ => return None,
        })
    }
}

/// The response flag of a reason token ([`ProxyError::reason`], or the `x-weir-error` of a
/// response Weir answered itself: a filter's local reply may carry one too). The one table of
/// flags.
pub fn flag_of_reason(reason: &str) -> u16 {
    match reason {
        "no_healthy_upstream" => flags::UH,
        "upstream_connect_failure" | "upstream_connect_timeout" => flags::UF,
        "upstream_response_timeout" | "upstream_per_try_timeout" | "upstream_request_timeout" => {
            flags::UT
        }
        "upstream_overflow" => flags::UO,
        "upstream_reset" => flags::UC,
        "upstream_body_error" => flags::UR,
        "upstream_protocol_error" => flags::UPE,
        "unknown_cluster" => flags::NC,
        "no_route" => flags::NR,
        "bad_request"
        | "conflicting_framing"
        | "uri_too_long"
        | "request_headers_too_large"
        | "unsupported_transfer_coding"
        | "method_not_allowed" => flags::DPE,
        "filter_failed" | "filter_unavailable" => flags::FF,
        "filter_reset" => flags::LR,
        _ => 0,
    }
}

/// An HTTP/2 RST_STREAM with REFUSED_STREAM: the server guarantees it did not process the stream.
fn is_refused_stream(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_error() -> Vec<ProxyError> {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let d = Duration::from_secs(1);
        vec![
            ProxyError::BadRequest("x"),
            ProxyError::ConflictingFraming,
            ProxyError::UriTooLong(1),
            ProxyError::HeadersTooLarge,
            ProxyError::UnsupportedTransferCoding,
            ProxyError::MethodNotAllowed(http::Method::CONNECT),
            ProxyError::NoHealthyUpstream("c".into()),
            ProxyError::ConnectFailure {
                addr,
                source: std::io::ErrorKind::ConnectionRefused.into(),
            },
            ProxyError::ConnectTimeout(addr),
            ProxyError::ResponseTimeout(d),
            ProxyError::UpstreamIo(std::io::ErrorKind::BrokenPipe.into()),
            ProxyError::UpstreamClosed,
            ProxyError::UpstreamMalformed("x"),
            ProxyError::UpstreamBodyFailed,
            ProxyError::Internal("x"),
            ProxyError::Filter(StatusCode::SERVICE_UNAVAILABLE, "filter_failed"),
            ProxyError::Filter(StatusCode::SERVICE_UNAVAILABLE, "filter_unavailable"),
            ProxyError::Filter(StatusCode::BAD_GATEWAY, "filter_reset"),
            ProxyError::Filter(StatusCode::GATEWAY_TIMEOUT, "filter_pause_timeout"),
            ProxyError::UnknownCluster("c".into()),
            ProxyError::NoRoute,
            ProxyError::Overflow(Resource::Pending),
            ProxyError::PerTryTimeout(d),
            ProxyError::RequestTimeout(d),
        ]
    }

    #[test]
    fn every_error_has_its_flag() {
        use flags::*;
        let expected = [
            DPE, DPE, DPE, DPE, DPE, DPE, UH, UF, UF, UT, UC, UC, UPE, UR, 0, FF, FF, LR, 0, NC,
            NR, UO, UT, UT,
        ];
        let errors = every_error();
        assert_eq!(errors.len(), expected.len());
        for (e, flag) in errors.iter().zip(expected) {
            assert_eq!(e.flag(), flag, "{e:?}");
        }
        // The router's local 404 carries the reason and so the flag (Envoy's NR).
        assert_eq!(flag_of_reason("no_route"), NR);
    }

    #[test]
    fn classes_agree_with_each_other() {
        for e in every_error() {
            let (kind, status, flag) = (e.kind(), e.status(), e.flag());
            match kind {
                ErrorKind::Downstream => {
                    assert!(status.is_client_error() || status == 501, "{e:?}");
                    assert_eq!(flag, flags::DPE, "{e:?}");
                }
                ErrorKind::Upstream => assert!(status.is_server_error(), "{e:?}"),
                ErrorKind::Filter => assert!(flag & !(flags::FF | flags::LR) == 0, "{e:?}"),
                ErrorKind::Internal => {}
            }
            // Only an upstream's fault is an attempt's failure.
            if e.upstream_failure().is_some() {
                assert_eq!(kind, ErrorKind::Upstream, "{e:?}");
            }
        }
        let retried = ProxyError::Retried {
            attempts: 3,
            last: Box::new(ProxyError::ConnectTimeout(([127, 0, 0, 1], 1).into())),
        };
        assert_eq!(retried.flag(), flags::UF);
        assert_eq!(retried.status(), 503);
        assert_eq!(retried.kind(), ErrorKind::Upstream);
    }
}
