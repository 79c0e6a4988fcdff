//! Field names that mean something to HTTP/1.1 framing or to a forwarding proxy: one table for
//! both roles, so the server's and the client's idea of "hop-by-hop" or "framing" cannot drift.
//!
//! Each role reads the classes its own way (a `Host` matters to a request kept raw, a `Date` to a
//! response kept raw), but the names behind a class are written once, here.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The client certificate of a mutual-TLS connection, as the proxy forwards it (Envoy's XFCC);
/// filters see the one the proxy set, never one the client sent.
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What a field name means to the codec and the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldClass {
    /// `host`.
    Host,
    /// `cookie`.
    Cookie,
    /// `date`.
    Date,
    /// `content-length`.
    ContentLength,
    /// `transfer-encoding`.
    TransferEncoding,
    /// Always hop-by-hop (RFC 9110 §7.6.1): `connection`, `keep-alive`, `proxy-connection`, `te`,
    /// `upgrade`.
    HopByHop,
    /// `expect`.
    Expect,
    /// A field the proxy sets on a request it forwards: `x-forwarded-for`, `x-forwarded-proto`,
    /// `x-forwarded-client-cert`, `x-request-id`.
    Forwarding,
    /// `x-weir-attempt-count`, set by Weir on both requests and responses after a retry policy ran.
    AttemptCount,
    /// Anything else: forwarded as it is.
    Other,
}

/// The class of a field name (any case). Names are told apart by length, then by first letter,
/// so a field costs at most one comparison, done a word at a time (`eq_lower`): this runs for
/// every field of every request and response on the plain path.
#[inline(always)]
pub fn classify(name: &[u8]) -> FieldClass {
    let Some(&first) = name.first() else {
        return FieldClass::Other;
    };
    let first = first | 0x20;
    let (candidate, class): (&[u8], FieldClass) = match name.len() {
        2 => (b"te", FieldClass::HopByHop),
        4 if first == b'h' => (b"host", FieldClass::Host),
        4 => (b"date", FieldClass::Date),
        6 if first == b'c' => (b"cookie", FieldClass::Cookie),
        6 => (b"expect", FieldClass::Expect),
        7 => (b"upgrade", FieldClass::HopByHop),
        10 if first == b'c' => (b"connection", FieldClass::HopByHop),
        10 => (b"keep-alive", FieldClass::HopByHop),
        12 => (b"x-request-id", FieldClass::Forwarding),
        14 => (b"content-length", FieldClass::ContentLength),
        15 => (b"x-forwarded-for", FieldClass::Forwarding),
        16 => (b"proxy-connection", FieldClass::HopByHop),
        17 if first == b't' => (b"transfer-encoding", FieldClass::TransferEncoding),
        17 => (b"x-forwarded-proto", FieldClass::Forwarding),
        20 => (b"x-weir-attempt-count", FieldClass::AttemptCount),
        23 => (b"x-forwarded-client-cert", FieldClass::Forwarding),
        _ => return FieldClass::Other,
    };
    if eq_lower(name, candidate) {
        class
    } else {
        FieldClass::Other
    }
}

/// `name` (a field name: token characters only) equals `lower` (lower-case letters and `-`), in
/// any case, for names of the same length. OR-ing `0x20` lower-cases a letter and leaves `-`
/// alone; the only other byte it maps onto a letter or `-` is the other case of that letter, or
/// CR onto `-`, and neither CR nor any byte that would fold onto a letter is a token character.
/// So the comparison is exact, and it takes two overlapping loads per side instead of a loop
/// over the bytes.
#[inline(always)]
fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    debug_assert_eq!(name.len(), lower.len());
    let n = name.len();
    if n >= 8 {
        const FOLD: u64 = 0x2020_2020_2020_2020;
        let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let mut at = 0;
        while at + 8 < n {
            if word(name, at) | FOLD != word(lower, at) {
                return false;
            }
            at += 8;
        }
        word(name, n - 8) | FOLD == word(lower, n - 8)
    } else if n >= 4 {
        const FOLD: u32 = 0x2020_2020;
        let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        word(name, 0) | FOLD == word(lower, 0) && word(name, n - 4) | FOLD == word(lower, n - 4)
    } else {
        name.iter().zip(lower).all(|(a, b)| a | 0x20 == *b)
    }
}

/// Whether a field never crosses the proxy as it is: the always-hop-by-hop names and the
/// message framing (`transfer-encoding`). A `connection` field may nominate more.
#[inline]
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        classify(name.as_str().as_bytes()),
        FieldClass::HopByHop | FieldClass::TransferEncoding
    )
}

/// A `Content-Length` value of plain decimal digits (no sign, no list, no whitespace), as a
/// number; at most 19 digits, so it cannot overflow.
pub fn plain_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Header lines kept as they came off the wire (each `name: value` ending in CRLF, already
/// validated by the parser) as fields of `map`; values share the lines' buffer.
pub fn append_lines(lines: &Bytes, map: &mut HeaderMap) {
    let mut rest = &lines[..];
    while let Some(end) = memchr::memchr(b'\n', rest) {
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[end + 1..];
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        if let Ok(name) = HeaderName::from_bytes(&line[..colon])
            && let Ok(value) =
                HeaderValue::from_maybe_shared(lines.slice_ref(line[colon + 1..].trim_ascii()))
        {
            map.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_ignore_case_and_cover_the_hop_by_hop_names() {
        for name in [
            "connection",
            "Keep-Alive",
            "PROXY-CONNECTION",
            "te",
            "Upgrade",
            "transfer-encoding",
        ] {
            let n = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(is_hop_by_hop(&n), "{name}");
        }
        for name in [
            "host",
            "content-length",
            "x-forwarded-for",
            "trailer",
            "x-te",
        ] {
            let n = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(!is_hop_by_hop(&n), "{name}");
        }
        assert_eq!(classify(b"Content-Length"), FieldClass::ContentLength);
        assert_eq!(classify(b"X-Forwarded-Client-Cert"), FieldClass::Forwarding);
        assert_eq!(classify(b"x-weir-attempt-count"), FieldClass::AttemptCount);
        assert_eq!(classify(b"dates"), FieldClass::Other);
        assert_eq!(classify(b""), FieldClass::Other);
        // Every name of the table, in both cases; a name of the same length and first letter
        // that differs later is Other.
        let table = [
            ("te", FieldClass::HopByHop),
            ("host", FieldClass::Host),
            ("date", FieldClass::Date),
            ("cookie", FieldClass::Cookie),
            ("expect", FieldClass::Expect),
            ("upgrade", FieldClass::HopByHop),
            ("connection", FieldClass::HopByHop),
            ("keep-alive", FieldClass::HopByHop),
            ("x-request-id", FieldClass::Forwarding),
            ("content-length", FieldClass::ContentLength),
            ("x-forwarded-for", FieldClass::Forwarding),
            ("proxy-connection", FieldClass::HopByHop),
            ("transfer-encoding", FieldClass::TransferEncoding),
            ("x-forwarded-proto", FieldClass::Forwarding),
            ("x-weir-attempt-count", FieldClass::AttemptCount),
            ("x-forwarded-client-cert", FieldClass::Forwarding),
        ];
        for (name, class) in table {
            assert_eq!(classify(name.as_bytes()), class, "{name}");
            assert_eq!(
                classify(name.to_ascii_uppercase().as_bytes()),
                class,
                "{name}"
            );
            let mut near = name.as_bytes().to_vec();
            *near.last_mut().unwrap() ^= 0x01;
            assert_eq!(classify(&near), FieldClass::Other, "{name}");
        }
    }

    #[test]
    fn plain_lengths_are_digits_only() {
        assert_eq!(plain_length(b"0"), Some(0));
        assert_eq!(plain_length(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1,1",
            b"0x1",
            b"99999999999999999999",
        ] {
            assert_eq!(
                plain_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
