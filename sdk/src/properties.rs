//! Typed reads of the attributes a host exposes through `proxy_get_property`, with Envoy's names
//! and encodings (so filters written for Envoy read the same values under Weir): strings raw,
//! integers 8-byte little-endian, booleans one byte, addresses as `"ip:port"` strings.
//!
//! Every accessor returns `None` when the host does not know the attribute here (e.g. request
//! attributes in a root context, `response.code` before the response) or its value does not decode
//! (wrong length, not UTF-8). Request attributes are available from the request-header phase on.

use std::net::{IpAddr, SocketAddr};

use proxy_wasm::hostcalls;

/// The raw bytes of the property at `path` (e.g. `&["request", "path"]`).
pub fn bytes(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A string property (UTF-8).
pub fn string(path: &[&str]) -> Option<String> {
    bytes(path).and_then(decode_string)
}

/// An integer property (Envoy int64/uint64: 8 bytes, little-endian).
pub fn u64(path: &[&str]) -> Option<u64> {
    bytes(path).and_then(|b| decode_u64(&b))
}

/// A boolean property (one byte).
pub fn bool(path: &[&str]) -> Option<bool> {
    bytes(path).and_then(|b| decode_bool(&b))
}

/// `request.path`: the request's `:path`, query included.
pub fn request_path() -> Option<String> {
    string(&["request", "path"])
}

/// `request.url_path`: the path without the query.
pub fn request_url_path() -> Option<String> {
    string(&["request", "url_path"])
}

/// `request.method`.
pub fn request_method() -> Option<String> {
    string(&["request", "method"])
}

/// `request.host`: the `:authority` (or `Host`).
pub fn request_host() -> Option<String> {
    string(&["request", "host"])
}

/// `request.scheme`.
pub fn request_scheme() -> Option<String> {
    string(&["request", "scheme"])
}

/// `request.id`: the `x-request-id` of the request.
pub fn request_id() -> Option<String> {
    string(&["request", "id"])
}

/// `request.protocol` (`"HTTP/1.1"`, `"HTTP/2"`, …).
pub fn request_protocol() -> Option<String> {
    string(&["request", "protocol"])
}

/// `response.code`: the response status (from the response-header phase on).
pub fn response_code() -> Option<u16> {
    u64(&["response", "code"]).and_then(|c| u16::try_from(c).ok())
}

/// `source.address`: the downstream peer as `"ip:port"`.
pub fn source_address() -> Option<String> {
    string(&["source", "address"])
}

/// `source.address` parsed as a socket address (`1.2.3.4:5`, `[::1]:5`).
pub fn source_socket_addr() -> Option<SocketAddr> {
    source_address().and_then(|a| a.parse().ok())
}

/// The downstream peer's IP (from `source.address`).
pub fn source_ip() -> Option<IpAddr> {
    source_socket_addr().map(|a| a.ip())
}

/// `source.port`.
pub fn source_port() -> Option<u16> {
    u64(&["source", "port"]).and_then(|p| u16::try_from(p).ok())
}

/// `destination.address`: the local address the connection arrived on, as `"ip:port"`.
pub fn destination_address() -> Option<String> {
    string(&["destination", "address"])
}

/// `connection.mtls`: true when the downstream presented a verified client certificate.
pub fn connection_mtls() -> Option<bool> {
    bool(&["connection", "mtls"])
}

/// `connection.requested_server_name`: the TLS SNI.
pub fn requested_server_name() -> Option<String> {
    string(&["connection", "requested_server_name"])
}

/// `connection.uri_san_peer_certificate`: the first URI SAN of the peer certificate (a SPIFFE id
/// in a mesh).
pub fn uri_san_peer_certificate() -> Option<String> {
    string(&["connection", "uri_san_peer_certificate"])
}

/// `connection.dns_san_peer_certificate`: the first DNS SAN of the peer certificate.
pub fn dns_san_peer_certificate() -> Option<String> {
    string(&["connection", "dns_san_peer_certificate"])
}

/// `connection.subject_peer_certificate`.
pub fn subject_peer_certificate() -> Option<String> {
    string(&["connection", "subject_peer_certificate"])
}

/// `plugin_name`: this filter instance's name in the manifest.
pub fn plugin_name() -> Option<String> {
    string(&["plugin_name"])
}

/// `plugin_root_id`.
pub fn plugin_root_id() -> Option<String> {
    string(&["plugin_root_id"])
}

/// `plugin_vm_id`: the scope of shared data and queues.
pub fn plugin_vm_id() -> Option<String> {
    string(&["plugin_vm_id"])
}

fn decode_string(bytes: Vec<u8>) -> Option<String> {
    String::from_utf8(bytes).ok()
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn decode_bool(bytes: &[u8]) -> Option<bool> {
    match bytes {
        [0] => Some(false),
        [1] => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_follow_envoy_encodings() {
        assert_eq!(decode_u64(&200u64.to_le_bytes()), Some(200));
        assert_eq!(decode_u64(&[1, 2, 3]), None);
        assert_eq!(decode_bool(&[1]), Some(true));
        assert_eq!(decode_bool(&[0]), Some(false));
        assert_eq!(decode_bool(&[2]), None);
        assert_eq!(decode_bool(&[]), None);
        assert_eq!(decode_string(b"/a?b".to_vec()).as_deref(), Some("/a?b"));
        assert_eq!(decode_string(vec![0xff]), None);
    }
}
