//! Header rules of a forwarding proxy: hop-by-hop removal (RFC 9110 §7.6.1), the `x-forwarded-*`
//! headers, and `x-request-id`.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use crate::proto::h1::fields::{X_FORWARDED_CLIENT_CERT, is_hop_by_hop};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The request id header; generated when absent, forwarded when present.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers. With `keep_upgrade` (a tunnelled upgrade) `Upgrade` and
/// `Connection: upgrade` survive; `te: trailers` always survives (gRPC needs it).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names (no hashing) settles that.
    if !keep_upgrade && !h.keys().any(is_hop_by_hop) {
        return;
    }
    // Headers the peer nominated in `Connection` are hop-by-hop too. `host` is never removed
    // this way: dropping it would only break routing.
    if h.contains_key(header::CONNECTION) {
        let nominated: Vec<HeaderValue> = h.get_all(header::CONNECTION).iter().cloned().collect();
        h.remove(header::CONNECTION);
        for v in &nominated {
            let Ok(s) = v.to_str() else { continue };
            for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case("upgrade") && keep_upgrade {
                    continue;
                }
                if token.eq_ignore_ascii_case("host") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    if name == header::TE {
                        continue; // handled below, keeping `trailers`
                    }
                    h.remove(name);
                }
            }
        }
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
    if let Some(te) = h.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        let keeps_trailers = te
            .to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if keeps_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            h.remove(header::TE);
        }
    }
}

/// A client address as a header value: made once per connection, so that a request whose
/// `x-forwarded-for` starts with its client (the usual case) only shares it.
pub fn client_ip_value(client: IpAddr) -> HeaderValue {
    let ip = IpText::new(client);
    HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(ip.as_bytes()))
        .expect("an IP address is a valid header value")
}

/// Appends the client address (a [`client_ip_value`]) to `x-forwarded-for` and sets
/// `x-forwarded-proto`.
pub fn set_forwarded(h: &mut HeaderMap, client: &HeaderValue, proto: &'static str) {
    // One lookup (an entry) rather than a get and an insert: the name is hashed once.
    match h.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut e) => {
            let prev = e.get();
            let mut buf = Vec::with_capacity(prev.len() + 2 + client.len());
            buf.extend_from_slice(prev.as_bytes());
            buf.extend_from_slice(b", ");
            buf.extend_from_slice(client.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(buf)) {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            e.insert(client.clone());
        }
    }
    h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// `x-forwarded-client-cert` is the core's alone: whatever a client sent (or a filter set) is
/// removed, and on a mutual-TLS connection the value from its verified certificate is set.
pub fn set_client_cert(h: &mut HeaderMap, tls: Option<&crate::tls::ConnTls>) {
    h.remove(&X_FORWARDED_CLIENT_CERT);
    if let Some(v) = tls.and_then(|t| t.xfcc.as_ref()) {
        h.insert(&X_FORWARDED_CLIENT_CERT, v.clone());
    }
}

/// An IP address as text on the stack (IPv4 formatted by hand: the common case, and `fmt` showed
/// up in profiles).
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, o) in v4.octets().iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if *o >= 100 {
                        t.push(b'0' + o / 100);
                    }
                    if *o >= 10 {
                        t.push(b'0' + (o / 10) % 10);
                    }
                    t.push(b'0' + o % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut cur = std::io::Cursor::new(&mut t.buf[..]);
                let _ = write!(cur, "{v6}");
                t.len = cur.position() as usize;
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Sets `x-request-id` to a fresh UUID v4 unless the request already carries one.
pub fn ensure_request_id(h: &mut HeaderMap) {
    if let Entry::Vacant(e) = h.entry(&X_REQUEST_ID) {
        let id = new_request_id();
        e.insert(HeaderValue::from_bytes(&id).expect("a UUID is a valid header value"));
    }
}

/// A fresh request id: a random UUID v4, as text.
pub fn new_request_id() -> [u8; 36] {
    uuid_v4(fastrand::u128(..))
}

/// Formats 128 random bits as a version-4 UUID, without allocating: a byte at a time into fixed
/// positions (a nibble loop over a `u128` was a visible share of a request's instructions).
fn uuid_v4(r: u128) -> [u8; 36] {
    let r = (r & !(0xF << 76) | (0x4 << 76)) // version 4
        & !(0x3 << 62)
        | (0x2 << 62); // variant 10
    const HEX: &[u8; 16] = b"0123456789abcdef";
    /// Where each byte's two digits go (`8-4-4-4-12`).
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut out = [b'-'; 36];
    for (b, at) in r.to_be_bytes().into_iter().zip(AT) {
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_nominated_headers_go() {
        let mut h = map(&[
            ("connection", "x-secret, keep-alive"),
            ("connection", "host"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("host", "example"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "te", "x-keep"], "{h:?}");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_kept_for_websocket() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn forwarded_and_request_id() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        let ip = |s: &str| client_ip_value(s.parse().unwrap());
        set_forwarded(&mut h, &ip("127.0.0.1"), "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        let mut h2 = HeaderMap::new();
        set_forwarded(&mut h2, &ip("10.200.0.9"), "http");
        assert_eq!(h2["x-forwarded-for"], "10.200.0.9");
        set_forwarded(&mut h2, &ip("::1"), "http");
        assert_eq!(h2["x-forwarded-for"], "10.200.0.9, ::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        ensure_request_id(&mut h);
        let id = h["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], id.as_str());
        assert_eq!(
            &uuid_v4(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            b"01234567-89ab-4def-8123-456789abcdef"
        );
    }
}
