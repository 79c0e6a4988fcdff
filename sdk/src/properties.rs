//! Typed reads of the attributes a host exposes through `proxy_get_property`, with Envoy's names
//! and encodings (so filters written for Envoy read the same values under Weir): strings raw,
//! integers 8-byte little-endian, booleans one byte, addresses as `"ip:port"` strings.
//!
//! Every accessor returns `None` when the host does not know the attribute here (e.g. request
//! attributes in a root context, `response.code` before the response) or its value does not decode
//! (wrong length, not UTF-8). Request attributes are available from the request-header phase on.
//!
//! Reads and writes here cost one host call and, for a read, the returned value: the path is
//! built on the stack ([`bytes`], [`set`]) or passed ready-made in its wire form ([`get_raw`],
//! [`set_raw`]: segments joined by NUL bytes, e.g. `b"weir\0route\0cluster"`). The upstream
//! crate's `hostcalls::get_property(vec![..])` allocates the segment list and the joined path on
//! every call; in the stock edge chain (ten property calls per request) that was ~8k guest
//! instructions per request (`benches/HISTORY.md`). Both reach the same ABI call, so a filter may
//! mix them.

use std::net::{IpAddr, SocketAddr};

use proxy_wasm::types::Status;

/// The raw bytes of the property at `path` (e.g. `&["request", "path"]`).
pub fn bytes(path: &[&str]) -> Option<Vec<u8>> {
    with_wire_path(path, get_raw)
}

/// Sets the property at `path` (e.g. `&["weir", "auth", "principal"]`) to `value`, for later
/// filters of the chain and the host to read.
pub fn set(path: &[&str], value: &[u8]) -> Result<(), Status> {
    with_wire_path(path, |p| set_raw(p, value))
}

/// The raw bytes of the property at a path in wire form (segments joined by NUL bytes, e.g.
/// `b"response\0code"`): keep a path read on every request as a constant.
pub fn get_raw(path: &[u8]) -> Option<Vec<u8>> {
    raw::get(path)
}

/// Sets the property at a path in wire form (segments joined by NUL bytes, e.g.
/// `b"weir\0trace\0span_id"`) to `value`.
pub fn set_raw(path: &[u8], value: &[u8]) -> Result<(), Status> {
    raw::set(path, value)
}

/// Runs `f` on `path` in wire form, built on the stack unless it is long.
fn with_wire_path<R>(path: &[&str], f: impl FnOnce(&[u8]) -> R) -> R {
    const INLINE: usize = 128;
    let len = path
        .iter()
        .map(|seg| seg.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    let mut inline = [0u8; INLINE];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= INLINE {
        &mut inline[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut n = 0;
    for (i, seg) in path.iter().enumerate() {
        if i > 0 {
            buf[n] = 0;
            n += 1;
        }
        buf[n..n + seg.len()].copy_from_slice(seg.as_bytes());
        n += seg.len();
    }
    f(buf)
}

/// The two property calls of the ABI, made directly (wasm32): the only `unsafe` in Weir's own
/// crates, allowed here because it removes two allocations and a copy from every property
/// call a filter makes (measured; see the module docs). The declarations are the ABI's, the same
/// the upstream crate makes.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod raw {
    use proxy_wasm::types::Status;

    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
    }

    pub(super) fn get(path: &[u8]) -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: `path` is a live slice for the whole call and the out-params are locals the
        // host writes two words into.
        let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        if status != 0 || data.is_null() {
            return None;
        }
        // SAFETY: on success the host returns a buffer it obtained from this module's
        // `proxy_on_memory_allocate` (the upstream crate's export: a boxed slice of exactly
        // `size` bytes, all written by the host), and hands it over; this takes ownership the
        // way the upstream crate's own `get_property` does.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }

    pub(super) fn set(path: &[u8], value: &[u8]) -> Result<(), Status> {
        // SAFETY: both slices are live for the whole call; the host only reads them.
        let status =
            unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) };
        match status {
            0 => Ok(()),
            1 => Err(Status::NotFound),
            2 => Err(Status::BadArgument),
            3 => Err(Status::SerializationFailure),
            4 => Err(Status::ParseFailure),
            7 => Err(Status::Empty),
            8 => Err(Status::CasMismatch),
            _ => Err(Status::InternalFailure),
        }
    }
}

/// Native builds (a filter's unit tests) keep the upstream crate's calls: same ABI, same result.
#[cfg(not(target_arch = "wasm32"))]
mod raw {
    use proxy_wasm::hostcalls;
    use proxy_wasm::types::Status;

    fn segments(path: &[u8]) -> Result<Vec<&str>, Status> {
        path.split(|b| *b == 0)
            .map(|seg| std::str::from_utf8(seg).map_err(|_| Status::BadArgument))
            .collect()
    }

    pub(super) fn get(path: &[u8]) -> Option<Vec<u8>> {
        hostcalls::get_property(segments(path).ok()?).ok().flatten()
    }

    pub(super) fn set(path: &[u8], value: &[u8]) -> Result<(), Status> {
        hostcalls::set_property(segments(path)?, Some(value))
    }
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
    fn wire_paths_join_segments_with_nul() {
        let wire = |path: &[&str]| with_wire_path(path, <[u8]>::to_vec);
        assert_eq!(wire(&["weir", "route", "cluster"]), b"weir\0route\0cluster");
        assert_eq!(wire(&["plugin_name"]), b"plugin_name");
        assert_eq!(wire(&[]), b"");
        assert_eq!(wire(&["a", ""]), b"a\0");
        // Longer than the stack buffer.
        let long = "x".repeat(200);
        let mut expected = b"weir\0".to_vec();
        expected.extend_from_slice(long.as_bytes());
        assert_eq!(wire(&["weir", &long]), expected);
    }

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
