//! SPIFFE IDs (`spiffe://trust-domain/path`) and DNS names: the two kinds of workload identity a
//! certificate can carry. Parsing follows the SPIFFE-ID specification: a lower-case trust domain,
//! a path of non-empty segments without `.`/`..`, no query, fragment, port or user info.

use std::fmt;

/// A parsed SPIFFE ID, borrowed from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    pub trust_domain: &'a str,
    /// Empty for a bare trust domain (`spiffe://example.org`), else starts with `/`.
    pub path: &'a str,
}

/// Why a text is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error(
        "it must start with `spiffe://` (lower-case scheme), e.g. spiffe://example.org/ns/default/sa/web"
    )]
    Scheme,
    #[error("longer than 2048 bytes")]
    TooLong,
    #[error("a query (`?`) is not allowed")]
    Query,
    #[error("a fragment (`#`) is not allowed")]
    Fragment,
    #[error("user info (`@`) is not allowed")]
    UserInfo,
    #[error("a port (`:`) is not allowed")]
    Port,
    #[error("trust domain `{0}`: {1}")]
    TrustDomain(String, &'static str),
    #[error("empty path segment (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("`.` and `..` path segments are not allowed")]
    DotSegment,
    #[error("the path may hold only letters, digits, `.`, `-`, `_` and `/` separators")]
    PathChar,
}

impl fmt::Display for SpiffeId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// Parses `spiffe://TD[/PATH]` (a bare trust domain has an empty path).
pub fn parse(s: &str) -> Result<SpiffeId<'_>, SpiffeError> {
    if s.len() > 2048 {
        return Err(SpiffeError::TooLong);
    }
    let rest = s.strip_prefix("spiffe://").ok_or(SpiffeError::Scheme)?;
    if rest.contains('?') {
        return Err(SpiffeError::Query);
    }
    if rest.contains('#') {
        return Err(SpiffeError::Fragment);
    }
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if td.contains('@') {
        return Err(SpiffeError::UserInfo);
    }
    if td.contains(':') {
        return Err(SpiffeError::Port);
    }
    if let Some(problem) = trust_domain_problem(td) {
        return Err(SpiffeError::TrustDomain(td.to_owned(), problem));
    }
    if !path.is_empty() {
        for seg in path[1..].split('/') {
            if seg.is_empty() {
                return Err(SpiffeError::EmptySegment);
            }
            if seg == "." || seg == ".." {
                return Err(SpiffeError::DotSegment);
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(SpiffeError::PathChar);
            }
        }
    }
    Ok(SpiffeId {
        trust_domain: td,
        path,
    })
}

/// What is wrong with a trust domain name, if anything: it must be 1–255 bytes of lower-case
/// letters, digits, `.`, `-` and `_`.
pub fn trust_domain_problem(td: &str) -> Option<&'static str> {
    if td.is_empty() {
        Some("it is empty")
    } else if td.len() > 255 {
        Some("longer than 255 bytes")
    } else if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        Some("only lower-case letters, digits, `.`, `-` and `_` are allowed")
    } else {
        None
    }
}

/// A SPIFFE trust domain: 1–255 of `a-z 0-9 . - _`.
pub fn valid_trust_domain(td: &str) -> bool {
    trust_domain_problem(td).is_none()
}

/// A DNS name rustls would accept as a server name (not an IP address).
pub fn valid_dns_name(name: &str) -> bool {
    rustls::pki_types::DnsName::try_from(name).is_ok() && name.parse::<std::net::IpAddr>().is_err()
}

/// The trust domain of a URI SAN, if it is a SPIFFE ID.
pub fn trust_domain_of(uri: &str) -> Option<&str> {
    parse(uri)
        .ok()
        .filter(|id| !id.path.is_empty())
        .map(|id| id.trust_domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_and_refuses_the_rest() {
        let id = parse("spiffe://example.org/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain, "example.org");
        assert_eq!(id.path, "/ns/default/sa/web");
        assert_eq!(id.to_string(), "spiffe://example.org/ns/default/sa/web");
        assert_eq!(parse("spiffe://example.org").unwrap().path, "");
        for bad in [
            "http://example.org/a",
            "spiffe://Example.org/a",
            "spiffe:///a",
            "spiffe://example.org/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?b",
            "spiffe://example.org:8080/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a#b",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(trust_domain_of("spiffe://td/x"), Some("td"));
        assert_eq!(trust_domain_of("spiffe://td"), None);
        assert!(valid_dns_name("back.local"));
        assert!(!valid_dns_name("127.0.0.1"));
        assert!(!valid_dns_name("bad name"));
    }
}
