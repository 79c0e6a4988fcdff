//! What a filter sees of one HTTP stream: the [`StreamHost`] Weir lends to every filter of a chain.
//!
//! Header maps carry the pseudo-headers first, as Envoy presents them (`:method`, `:path`,
//! `:authority`, `:scheme` on requests, `:status` on responses); writing a pseudo-header changes
//! the request line or status. Body buffers hold the bytes a body callback is offered (cumulative
//! while a filter pauses). Properties use Envoy's attribute names and encodings
//! (proxy-wasm-abi.md §4, §15); anything a filter sets with `set_property` is kept for the later
//! filters of the same stream, and the `weir.route.*` names form the route decision the core
//! reads after the request-header phase.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::props::Props;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use weir_host_abi::{BufferType, MapType, Pairs, Status, StreamHost, edit_buffer};

/// Property path of the route decision: target cluster (UTF-8 name).
pub const ROUTE_CLUSTER: &str = "weir.route.cluster";
/// Route decision: response timeout in milliseconds (decimal ASCII).
pub const ROUTE_TIMEOUT_MS: &str = "weir.route.timeout_ms";
/// Route decision: replacement upstream `:path` (with query).
pub const ROUTE_PATH: &str = "weir.route.path";
/// Route decision: retries after the first try (decimal ASCII; 0 turns retries off).
pub const ROUTE_RETRIES: &str = "weir.route.retries";
/// Route decision: per-try timeout in milliseconds (decimal ASCII).
pub const ROUTE_PER_TRY_TIMEOUT_MS: &str = "weir.route.per_try_timeout_ms";

/// The route decision filters made for a stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteDecision {
    pub cluster: Option<String>,
    pub timeout: Option<Duration>,
    pub path: Option<String>,
    pub retries: Option<u32>,
    pub per_try_timeout: Option<Duration>,
}

/// Connection facts a filter can ask about.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub connection_id: u64,
    pub protocol: &'static str,
    /// The connection's TLS session (absent on a plain listener).
    pub tls: Option<std::sync::Arc<crate::tls::ConnTls>>,
}

/// One HTTP stream as the filters see it.
pub struct HttpStream {
    pub method: Method,
    pub uri: Uri,
    pub authority: Option<String>,
    pub scheme: &'static str,
    pub request_headers: HeaderMap,
    pub response_status: Option<StatusCode>,
    pub response_headers: HeaderMap,
    /// Trailers, when the body ended with them or a filter added some.
    pub request_trailers: Option<HeaderMap>,
    pub response_trailers: Option<HeaderMap>,
    /// The body bytes the current body callback is offered: the chunk itself (no copy) until a
    /// filter edits it (`set_buffer` copies once).
    pub request_body: Bytes,
    pub response_body: Bytes,
    pub downstream: Downstream,
    pub start: SystemTime,
    pub upstream_address: Option<SocketAddr>,
    pub request_size: u64,
    pub response_size: u64,
    /// Properties filters set (dotted path → value), `weir.route.*` included.
    props: Props,
    /// A filter wrote the request's `content-length` or `transfer-encoding` (or replaced the
    /// whole map): the core must re-establish the framing before the request goes upstream.
    pub request_framing_edited: bool,
    /// A filter wrote the request's `x-forwarded-client-cert` (or replaced the whole map): the
    /// core must set it again from the connection.
    pub request_xfcc_edited: bool,
}

impl HttpStream {
    /// The body buffer filters of one direction read and write (`response`: the response's).
    pub fn body_mut(&mut self, response: bool) -> &mut Bytes {
        if response {
            &mut self.response_body
        } else {
            &mut self.request_body
        }
    }

    /// The downstream's verified client certificate, if it presented one.
    fn peer_cert(&self) -> Option<&crate::tls::CertInfo> {
        self.downstream.tls.as_ref()?.peer.as_ref()
    }

    pub fn new(downstream: Downstream) -> Self {
        Self {
            method: Method::GET,
            uri: Uri::from_static("/"),
            authority: None,
            scheme: if downstream.tls.is_some() {
                "https"
            } else {
                "http"
            },
            request_headers: HeaderMap::new(),
            response_status: None,
            response_headers: HeaderMap::new(),
            request_trailers: None,
            response_trailers: None,
            request_body: Bytes::new(),
            response_body: Bytes::new(),
            downstream,
            start: SystemTime::now(),
            upstream_address: None,
            request_size: 0,
            response_size: 0,
            props: Props::default(),
            request_framing_edited: false,
            request_xfcc_edited: false,
        }
    }

    /// Notes a filter's write of request header `n` that the core must undo or redo.
    fn note_write(&mut self, map: MapType, n: &HeaderName) {
        if map != MapType::HttpRequestHeaders {
            return;
        }
        if n == http::header::CONTENT_LENGTH || n == http::header::TRANSFER_ENCODING {
            self.request_framing_edited = true;
        } else if n == crate::proto::h1::fields::X_FORWARDED_CLIENT_CERT {
            self.request_xfcc_edited = true;
        }
    }

    /// The route decision filters wrote (`weir.route.*`).
    pub fn route(&self) -> RouteDecision {
        if self.props.is_empty() {
            return RouteDecision::default();
        }
        let text = |k: &str| self.props.get(k).and_then(|v| std::str::from_utf8(v).ok());
        RouteDecision {
            cluster: text(ROUTE_CLUSTER).map(str::to_owned),
            timeout: text(ROUTE_TIMEOUT_MS)
                .and_then(|s| s.trim().parse().ok())
                .map(Duration::from_millis),
            path: text(ROUTE_PATH).map(str::to_owned),
            retries: text(ROUTE_RETRIES).and_then(|s| s.trim().parse().ok()),
            // 0 (or nonsense) leaves the cluster's per-try timeout in place.
            per_try_timeout: text(ROUTE_PER_TRY_TIMEOUT_MS)
                .and_then(|s| s.trim().parse().ok())
                .filter(|&ms: &u64| ms > 0)
                .map(Duration::from_millis),
        }
    }

    fn path_str(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn map(&mut self, map: MapType) -> Result<&mut HeaderMap, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(&mut self.request_headers),
            MapType::HttpResponseHeaders if self.response_status.is_some() => {
                Ok(&mut self.response_headers)
            }
            // Trailers exist once the body ended with them; a filter may also add them (Envoy
            // allows it at the end of the body): the map then appears on first use.
            MapType::HttpRequestTrailers => {
                Ok(self.request_trailers.get_or_insert_with(HeaderMap::new))
            }
            MapType::HttpResponseTrailers => {
                Ok(self.response_trailers.get_or_insert_with(HeaderMap::new))
            }
            _ => Err(Status::NotFound),
        }
    }

    /// Sets a pseudo-header; `false` when `key` is not one this map has.
    fn set_pseudo(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<bool, Status> {
        let text = std::str::from_utf8(value).map_err(|_| Status::BadArgument)?;
        match (map, key) {
            (MapType::HttpRequestHeaders, b":method") => {
                self.method = Method::from_bytes(value).map_err(|_| Status::BadArgument)?;
            }
            (MapType::HttpRequestHeaders, b":path") => {
                self.uri = text.parse().map_err(|_| Status::BadArgument)?;
            }
            (MapType::HttpRequestHeaders, b":authority") => self.authority = Some(text.to_owned()),
            (MapType::HttpRequestHeaders, b":scheme") => {}
            (MapType::HttpResponseHeaders, b":status") => {
                self.response_status = Some(
                    text.parse::<u16>()
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .ok_or(Status::BadArgument)?,
                );
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn pseudo_pairs(&self, map: MapType) -> Pairs {
        let names: &[&[u8]] = match map {
            MapType::HttpRequestHeaders => &[b":method", b":path", b":authority", b":scheme"],
            MapType::HttpResponseHeaders => &[b":status"],
            _ => &[],
        };
        // Each value from `pseudo_value`, the one place that knows them; an absent one
        // (`:authority`, `:status` before the response) is left out.
        names
            .iter()
            .filter_map(|n| Some((n.to_vec(), self.pseudo_value(map, n)?)))
            .collect()
    }

    /// One pseudo-header's value, without building the others (a filter reading `:path` on
    /// every request used to cost the whole pseudo map: nine allocations).
    fn pseudo_value(&self, map: MapType, key: &[u8]) -> Option<Vec<u8>> {
        let value = match (map, key) {
            (MapType::HttpRequestHeaders, b":method") => self.method.as_str().as_bytes(),
            (MapType::HttpRequestHeaders, b":path") => self.path_str().as_bytes(),
            (MapType::HttpRequestHeaders, b":authority") => self.authority.as_deref()?.as_bytes(),
            (MapType::HttpRequestHeaders, b":scheme") => self.scheme.as_bytes(),
            (MapType::HttpResponseHeaders, b":status") => {
                self.response_status.as_ref()?.as_str().as_bytes()
            }
            _ => return None,
        };
        Some(value.to_vec())
    }
}

/// How many header names a worker keeps parsed.
const NAME_CACHE: usize = 64;

thread_local! {
    /// The header names filters wrote lately on this worker, parsed once. A filter writes the
    /// same few names on every request (the stock ones `traceparent`, `x-ratelimit-*`, …);
    /// parsing and allocating a name the `http` crate does not know each time cost about 300
    /// instructions per header written (benches/README.md, "The Wasm tax"). A name cloned from
    /// here shares its bytes. Emptied when full, so names a filter makes up per request cannot
    /// grow it.
    static NAMES: std::cell::RefCell<rustc_hash::FxHashMap<Box<[u8]>, HeaderName>> =
        std::cell::RefCell::new(rustc_hash::FxHashMap::default());
}

fn name(key: &[u8]) -> Result<HeaderName, Status> {
    NAMES.with_borrow_mut(|names| {
        if let Some(n) = names.get(key) {
            return Ok(n.clone());
        }
        let n = HeaderName::from_bytes(key).map_err(|_| Status::BadArgument)?;
        if names.len() == NAME_CACHE {
            names.clear();
        }
        names.insert(key.into(), n.clone());
        Ok(n)
    })
}

fn value(v: &[u8]) -> Result<HeaderValue, Status> {
    HeaderValue::from_bytes(v).map_err(|_| Status::BadArgument)
}

impl StreamHost for HttpStream {
    fn header_map(&mut self, map: MapType) -> Result<Pairs, Status> {
        let mut pairs = self.pseudo_pairs(map);
        let h = match self.map(map) {
            Ok(h) => h,
            // Envoy: a map that is not available reads as empty.
            Err(_) => return Ok(Vec::new()),
        };
        pairs.reserve(h.len());
        for (k, v) in h.iter() {
            pairs.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        Ok(pairs)
    }

    fn header_value(&mut self, map: MapType, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        if key.first() == Some(&b':') {
            return Ok(self.pseudo_value(map, key));
        }
        let h = match self.map(map) {
            Ok(h) => h,
            Err(_) => return Ok(None),
        };
        // A `&str` key is looked up without building (allocating) a `HeaderName`; the lookup
        // folds case itself.
        let Ok(k) = std::str::from_utf8(key) else {
            return Ok(None);
        };
        Ok(h.get(k).map(|v| v.as_bytes().to_vec()))
    }

    fn set_header_map(&mut self, map: MapType, pairs: Pairs) -> Result<(), Status> {
        let mut fresh = HeaderMap::with_capacity(pairs.len());
        for (k, v) in &pairs {
            if k.first() == Some(&b':') {
                self.set_pseudo(map, k, v)?;
            } else {
                fresh.append(name(k)?, value(v)?);
            }
        }
        *self.map(map)? = fresh;
        if map == MapType::HttpRequestHeaders {
            self.request_framing_edited = true;
            self.request_xfcc_edited = true;
        }
        Ok(())
    }

    fn add_header(&mut self, map: MapType, key: &[u8], v: &[u8]) -> Result<(), Status> {
        if key.first() == Some(&b':') {
            return self
                .set_pseudo(map, key, v)
                .and_then(|ok| if ok { Ok(()) } else { Err(Status::BadArgument) });
        }
        let (n, v) = (name(key)?, value(v)?);
        self.note_write(map, &n);
        self.map(map)?.append(n, v);
        Ok(())
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], v: &[u8]) -> Result<(), Status> {
        if key.first() == Some(&b':') {
            return self
                .set_pseudo(map, key, v)
                .and_then(|ok| if ok { Ok(()) } else { Err(Status::BadArgument) });
        }
        let (n, v) = (name(key)?, value(v)?);
        self.note_write(map, &n);
        self.map(map)?.insert(n, v);
        Ok(())
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        if key.first() == Some(&b':') {
            return Ok(()); // pseudo-headers cannot be removed
        }
        let n = name(key)?;
        self.map(map)?.remove(n);
        Ok(())
    }

    fn buffer(&mut self, buffer: BufferType) -> Option<&[u8]> {
        match buffer {
            BufferType::HttpRequestBody => Some(&self.request_body),
            BufferType::HttpResponseBody => Some(&self.response_body),
            _ => None,
        }
    }

    fn set_buffer(
        &mut self,
        buffer: BufferType,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), Status> {
        let buf = match buffer {
            BufferType::HttpRequestBody => &mut self.request_body,
            BufferType::HttpResponseBody => &mut self.response_body,
            _ => return Err(Status::NotFound),
        };
        let mut owned = Vec::from(std::mem::take(buf));
        let r = edit_buffer(&mut owned, start, size, data);
        *buf = Bytes::from(owned);
        r
    }

    fn get_property(&mut self, path: &[&[u8]]) -> Option<Vec<u8>> {
        with_dotted(path, |dotted| self.property(dotted)).flatten()
    }

    fn set_property(&mut self, path: &[&[u8]], value: &[u8]) -> Result<(), Status> {
        with_dotted(path, |dotted| self.props.set(dotted, value)).ok_or(Status::BadArgument)
    }
}

impl HttpStream {
    /// The property at `dotted` (a path joined with dots).
    fn property(&self, dotted: &str) -> Option<Vec<u8>> {
        if let Some(v) = self.props.get(dotted) {
            return Some(v.to_vec());
        }
        let s = |x: &str| Some(x.as_bytes().to_vec());
        let int = |n: i64| Some(n.to_le_bytes().to_vec());
        match dotted {
            "request.path" => s(self.path_str()),
            "request.url_path" => s(self.uri.path()),
            "request.query" => s(self.uri.query().unwrap_or("")),
            "request.host" => self.authority.as_deref().and_then(s),
            "request.scheme" => s(self.scheme),
            "request.method" => s(self.method.as_str()),
            "request.protocol" => s(self.downstream.protocol),
            "request.id" => self
                .request_headers
                .get("x-request-id")
                .map(|v| v.as_bytes().to_vec()),
            "request.referer" => self
                .request_headers
                .get("referer")
                .map(|v| v.as_bytes().to_vec()),
            "request.useragent" => self
                .request_headers
                .get("user-agent")
                .map(|v| v.as_bytes().to_vec()),
            "request.time" => {
                let ns = self
                    .start
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()?
                    .as_nanos();
                int(i64::try_from(ns).ok()?)
            }
            "request.duration" => int(i64::try_from(self.start.elapsed().ok()?.as_nanos()).ok()?),
            "request.size" | "request.total_size" => int(self.request_size as i64),
            "request.headers" => Some(encode_map(&self.request_headers)),
            "response.code" => self
                .response_status
                .map(|c| i64::from(c.as_u16()))
                .and_then(int),
            "response.headers" if self.response_status.is_some() => {
                Some(encode_map(&self.response_headers))
            }
            "response.size" | "response.total_size" if self.response_status.is_some() => {
                int(self.response_size as i64)
            }
            "source.address" => s(&self.downstream.peer.to_string()),
            "source.port" => int(i64::from(self.downstream.peer.port())),
            "destination.address" => s(&self.downstream.local.to_string()),
            "destination.port" => int(i64::from(self.downstream.local.port())),
            "connection.id" | "connection_id" => int(self.downstream.connection_id as i64),
            "connection.mtls" => Some(vec![u8::from(self.peer_cert().is_some())]),
            "connection.tls_version" => self.downstream.tls.as_ref().and_then(|t| s(t.version)),
            "connection.requested_server_name" => self
                .downstream
                .tls
                .as_ref()
                .and_then(|t| t.sni.as_deref())
                .and_then(s),
            "connection.uri_san_peer_certificate" => self
                .peer_cert()
                .and_then(|c| c.uri_sans.first())
                .and_then(|v| s(v)),
            "connection.dns_san_peer_certificate" => self
                .peer_cert()
                .and_then(|c| c.dns_sans.first())
                .and_then(|v| s(v)),
            "connection.subject_peer_certificate" => self.peer_cert().and_then(|c| s(&c.subject)),
            "connection.sha256_peer_certificate_digest" => {
                self.peer_cert().and_then(|c| s(&c.sha256))
            }
            "connection.uri_san_local_certificate" => self
                .downstream
                .tls
                .as_ref()
                .and_then(|t| t.local.uri_sans.first())
                .and_then(|v| s(v)),
            "connection.dns_san_local_certificate" => self
                .downstream
                .tls
                .as_ref()
                .and_then(|t| t.local.dns_sans.first())
                .and_then(|v| s(v)),
            "connection.subject_local_certificate" => self
                .downstream
                .tls
                .as_ref()
                .and_then(|t| s(&t.local.subject)),
            "upstream.address" => self.upstream_address.map(|a| a.to_string().into_bytes()),
            "upstream.port" => self
                .upstream_address
                .map(|a| i64::from(a.port()))
                .and_then(int),
            _ => {
                // `request.headers.<name>`: one header, multi-values comma-joined as Envoy does.
                if let Some(h) = dotted.strip_prefix("request.headers.") {
                    return joined(&self.request_headers, h);
                }
                if let Some(h) = dotted.strip_prefix("response.headers.") {
                    return joined(&self.response_headers, h);
                }
                None
            }
        }
    }
}

/// Runs `f` on `path` joined with dots, or `None` if the path is not UTF-8. Every property access
/// makes one, so a usual path is joined in a stack buffer, not a new `String`.
fn with_dotted<R>(path: &[&[u8]], f: impl FnOnce(&str) -> R) -> Option<R> {
    const INLINE: usize = 128;
    let len = path.iter().map(|seg| seg.len() + 1).sum::<usize>();
    let mut inline = [0u8; INLINE];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= INLINE {
        &mut inline
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut n = 0;
    for (i, seg) in path.iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        buf[n..n + seg.len()].copy_from_slice(seg);
        n += seg.len();
    }
    // Segments joined by '.' are UTF-8 exactly when every segment is: one check for all.
    std::str::from_utf8(&buf[..n]).ok().map(f)
}

fn joined(h: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for v in h.get_all(name) {
        let o = out.get_or_insert_with(Vec::new);
        if !o.is_empty() {
            o.extend_from_slice(b",");
        }
        o.extend_from_slice(v.as_bytes());
    }
    out
}

/// A header map as a property value: the proxy-wasm pair format, multi-values comma-joined.
fn encode_map(h: &HeaderMap) -> Vec<u8> {
    let pairs: Pairs = h
        .keys()
        .map(|k| {
            (
                k.as_str().as_bytes().to_vec(),
                joined(h, k.as_str()).unwrap_or_default(),
            )
        })
        .collect();
    let caps = weir_host_abi::pairs::PairsCaps {
        max_entries: weir_host_abi::DEFAULT_MAX_MAP_ENTRIES,
        max_bytes: weir_host_abi::DEFAULT_MAX_MAP_BYTES,
    };
    weir_host_abi::pairs::serialize(&pairs, caps).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_header_names_are_parsed_once_and_the_cache_stays_bounded() {
        let a = name(b"x-cached-name").unwrap();
        let b = name(b"x-cached-name").unwrap();
        assert_eq!(a, b);
        // The second is the cached copy: the same bytes, not a second parse.
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
        assert_eq!(name(b"traceparent").unwrap(), "traceparent");
        assert_eq!(name(b"bad name").unwrap_err(), Status::BadArgument);
        for i in 0..3 * NAME_CACHE {
            name(format!("x-made-up-{i}").as_bytes()).unwrap();
        }
        assert!(NAMES.with_borrow(|n| n.len()) <= NAME_CACHE);
        assert!(NAMES.with_borrow(|n| !n.contains_key(b"bad name".as_slice())));
    }

    #[test]
    fn property_paths_join_with_dots_short_or_long() {
        let mut s = stream();
        s.set_property(&[b"weir", b"x"], b"1").unwrap();
        // Set again: the value is replaced, not appended.
        s.set_property(&[b"weir", b"x"], b"22").unwrap();
        assert_eq!(s.get_property(&[b"weir", b"x"]), Some(b"22".to_vec()));
        // Longer than the stack buffer.
        let long = vec![b'a'; 300];
        s.set_property(&[b"weir", &long], b"v").unwrap();
        assert_eq!(s.get_property(&[b"weir", &long]), Some(b"v".to_vec()));
        assert_eq!(s.get_property(&[b"weir"]), None);
        // Not UTF-8: refused, never stored.
        assert_eq!(
            s.set_property(&[b"weir", b"\xff"], b"v"),
            Err(Status::BadArgument)
        );
        assert_eq!(s.get_property(&[b"weir", b"\xff"]), None);
    }

    fn stream() -> HttpStream {
        let mut s = HttpStream::new(Downstream {
            peer: "127.0.0.1:4000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            connection_id: 7,
            protocol: "HTTP/1.1",
            tls: None,
        });
        s.uri = "/a?b=1".parse().unwrap();
        s.authority = Some("svc".into());
        s.request_headers
            .insert("x-a", HeaderValue::from_static("1"));
        s
    }

    #[test]
    fn request_map_has_pseudo_headers_and_edits_flow_back() {
        let mut s = stream();
        let m = s.header_map(MapType::HttpRequestHeaders).unwrap();
        assert_eq!(m[0], (b":method".to_vec(), b"GET".to_vec()));
        assert_eq!(m[1], (b":path".to_vec(), b"/a?b=1".to_vec()));
        assert!(m.contains(&(b"x-a".to_vec(), b"1".to_vec())));
        s.replace_header(MapType::HttpRequestHeaders, b":path", b"/new")
            .unwrap();
        s.add_header(MapType::HttpRequestHeaders, b"X-B", b"2")
            .unwrap();
        s.remove_header(MapType::HttpRequestHeaders, b"x-a")
            .unwrap();
        assert_eq!(s.uri, "/new");
        assert_eq!(s.request_headers["x-b"], "2");
        assert!(!s.request_headers.contains_key("x-a"));
        assert_eq!(
            s.header_value(MapType::HttpRequestHeaders, b"X-B").unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(
            s.add_header(MapType::HttpRequestHeaders, b"bad name", b"v"),
            Err(Status::BadArgument)
        );
    }

    #[test]
    fn one_pseudo_header_reads_as_in_the_whole_map() {
        let mut s = stream();
        for map in [MapType::HttpRequestHeaders, MapType::HttpResponseHeaders] {
            let all = s.pseudo_pairs(map);
            for (k, v) in &all {
                assert_eq!(s.header_value(map, k).unwrap().as_ref(), Some(v), "{k:?}");
            }
            for k in [
                &b":method"[..],
                b":path",
                b":authority",
                b":scheme",
                b":status",
                b":x",
            ] {
                let listed = all.iter().any(|(n, _)| n == k);
                assert_eq!(s.pseudo_value(map, k).is_some(), listed, "{map:?} {k:?}");
            }
        }
        s.authority = None;
        s.response_status = Some(StatusCode::IM_A_TEAPOT);
        let req = MapType::HttpRequestHeaders;
        assert_eq!(s.header_value(req, b":authority").unwrap(), None);
        assert_eq!(
            s.header_value(MapType::HttpResponseHeaders, b":status")
                .unwrap(),
            Some(b"418".to_vec())
        );
    }

    #[test]
    fn known_header_names_are_the_names_asked_for() {
        for key in [
            &b"traceparent"[..],
            b"x-ratelimit-reset",
            b"x-other",
            b"X-Mixed",
        ] {
            let n = name(key).unwrap();
            assert_eq!(n, HeaderName::from_bytes(key).unwrap());
        }
        assert_eq!(name(b"bad name"), Err(Status::BadArgument));
    }

    #[test]
    fn properties_and_route_decision() {
        let mut s = stream();
        assert_eq!(
            s.get_property(&[b"request", b"path"]),
            Some(b"/a?b=1".to_vec())
        );
        assert_eq!(
            s.get_property(&[b"source", b"address"]),
            Some(b"127.0.0.1:4000".to_vec())
        );
        assert_eq!(
            s.get_property(&[b"source", b"port"]),
            Some(4000i64.to_le_bytes().to_vec())
        );
        assert_eq!(s.get_property(&[b"response", b"code"]), None);
        s.set_property(&[b"weir", b"route", b"cluster"], b"v2")
            .unwrap();
        s.set_property(&[b"weir", b"route", b"timeout_ms"], b"250")
            .unwrap();
        s.set_property(&[b"weir", b"route", b"retries"], b"3")
            .unwrap();
        s.set_property(&[b"weir", b"route", b"per_try_timeout_ms"], b"40")
            .unwrap();
        assert_eq!(
            s.get_property(&[b"weir", b"route", b"cluster"]),
            Some(b"v2".to_vec())
        );
        let r = s.route();
        assert_eq!(r.cluster.as_deref(), Some("v2"));
        assert_eq!(r.timeout, Some(Duration::from_millis(250)));
        assert_eq!(r.retries, Some(3));
        assert_eq!(r.per_try_timeout, Some(Duration::from_millis(40)));
        s.response_status = Some(StatusCode::OK);
        assert_eq!(
            s.get_property(&[b"response", b"code"]),
            Some(200i64.to_le_bytes().to_vec())
        );
    }
}
