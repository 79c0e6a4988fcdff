//! HTTP phase declarations: which stream callbacks a filter wants at all.
//!
//! The upstream SDKs export every callback, so a host cannot tell a filter that rewrites response
//! headers from one that never looks at them; each callback it does not need still costs a
//! crossing into the guest and the SDK's dispatch (in a 3-filter chain of header-only filters,
//! four of each filter's seven callbacks per request). A filter may therefore declare the phases
//! it handles, once, from `proxy_on_vm_start` or `proxy_on_configure`, through the standard
//! foreign-function escape hatch:
//!
//! ```text
//! proxy_call_foreign_function("weir.declare_http_phases", "request_headers,log")
//! ```
//!
//! The argument lists phase names ([`HttpPhases::NAMES`]), separated by commas or whitespace.
//! From then on the VM skips the undeclared HTTP callbacks, as if the module did not export them
//! (a skipped callback counts as `Continue`). `proxy_on_context_create` and `proxy_on_delete`
//! always run, and so do callout, gRPC, tick and queue callbacks. A declaration replaces an
//! earlier one; a bad name, or a call from a stream callback, answers `BAD_ARGUMENT` and changes
//! nothing. Other hosts answer `NOT_FOUND` and deliver everything, so a filter that declares
//! stays portable (`weir-sdk` wraps this as `weir_sdk::phases::declare`).

/// A set of HTTP stream phases (callbacks a filter handles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpPhases(u16);

impl HttpPhases {
    /// No HTTP callbacks (context create/delete still run).
    pub const NONE: Self = Self(0);
    /// `proxy_on_request_headers`.
    pub const REQUEST_HEADERS: Self = Self(1);
    /// `proxy_on_request_body`.
    pub const REQUEST_BODY: Self = Self(1 << 1);
    /// `proxy_on_request_trailers`.
    pub const REQUEST_TRAILERS: Self = Self(1 << 2);
    /// `proxy_on_response_headers`.
    pub const RESPONSE_HEADERS: Self = Self(1 << 3);
    /// `proxy_on_response_body`.
    pub const RESPONSE_BODY: Self = Self(1 << 4);
    /// `proxy_on_response_trailers`.
    pub const RESPONSE_TRAILERS: Self = Self(1 << 5);
    /// `proxy_on_log` (for HTTP streams).
    pub const LOG: Self = Self(1 << 6);
    /// `proxy_on_done` (for HTTP streams).
    pub const DONE: Self = Self(1 << 7);
    /// Every HTTP callback (what a filter that declares nothing gets).
    pub const ALL: Self = Self(0xff);

    /// The declaration names, in bit order.
    pub const NAMES: [(&'static str, HttpPhases); 8] = [
        ("request_headers", Self::REQUEST_HEADERS),
        ("request_body", Self::REQUEST_BODY),
        ("request_trailers", Self::REQUEST_TRAILERS),
        ("response_headers", Self::RESPONSE_HEADERS),
        ("response_body", Self::RESPONSE_BODY),
        ("response_trailers", Self::RESPONSE_TRAILERS),
        ("log", Self::LOG),
        ("done", Self::DONE),
    ];

    /// The raw bits (bit order of [`HttpPhases::NAMES`]).
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// From raw bits; bits beyond the eight phases are dropped.
    pub const fn from_bits(bits: u16) -> Self {
        Self(bits & Self::ALL.0)
    }

    /// Whether every phase of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `self` and `other` share a phase.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// The union.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Parses a declaration (`"request_headers, log"`); the error names the first unknown phase.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut set = Self::NONE;
        for name in text
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|s| !s.is_empty())
        {
            match Self::NAMES.iter().find(|(n, _)| *n == name) {
                Some((_, p)) => set = set.union(*p),
                None => return Err(name.to_owned()),
            }
        }
        Ok(set)
    }

    /// The phase names, comma-separated (the declaration syntax).
    pub fn names(self) -> String {
        let mut out = String::new();
        for (name, p) in Self::NAMES {
            if self.contains(p) {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(name);
            }
        }
        out
    }
}

impl std::ops::BitOr for HttpPhases {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

/// The foreign function a filter calls to declare its phases.
pub const DECLARE_HTTP_PHASES: &str = "weir.declare_http_phases";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_separated_by_commas_or_spaces() {
        let p = HttpPhases::parse("request_headers, log\tresponse_body").unwrap();
        assert!(p.contains(HttpPhases::REQUEST_HEADERS | HttpPhases::LOG));
        assert!(p.contains(HttpPhases::RESPONSE_BODY));
        assert!(!p.intersects(HttpPhases::RESPONSE_HEADERS | HttpPhases::DONE));
        assert_eq!(p.names(), "request_headers,response_body,log");
        assert_eq!(HttpPhases::parse("").unwrap(), HttpPhases::NONE);
        assert_eq!(
            HttpPhases::parse(&HttpPhases::ALL.names()).unwrap(),
            HttpPhases::ALL
        );
    }

    #[test]
    fn an_unknown_name_is_refused_by_name() {
        assert_eq!(
            HttpPhases::parse("request_headers,on_log"),
            Err("on_log".to_owned())
        );
    }
}
