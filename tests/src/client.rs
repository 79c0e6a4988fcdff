//! Clients for driving weir: hyper HTTP/1.1 and h2c (prior knowledge) connections, body helpers,
//! and a raw TCP client for requests hyper would refuse to send (malformed, smuggling shapes).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The error type carried by test bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the test clients and mock upstreams send.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn body_full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn body_empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body fed frame by frame through the returned sender (data, then optionally trailers).
pub fn body_channel() -> (http_body_util::channel::Sender<Bytes, BoxError>, Body) {
    let (tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
    (tx, body.boxed_unsync())
}

/// A response read to its end.
#[derive(Debug)]
pub struct Collected {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Trailers, if any were sent.
    pub trailers: Option<HeaderMap>,
}

impl Collected {
    /// A header's value as text (`None` if absent or not UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads `resp` to its end (bounded by [`crate::TIMEOUT`]).
pub async fn collect(resp: Response<Incoming>) -> Collected {
    let (parts, body) = resp.into_parts();
    let collected = crate::within("response body", body.collect())
        .await
        .unwrap_or_else(|e| panic!("response body failed: {e} ({e:?})"));
    let trailers = collected.trailers().cloned();
    Collected {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// One HTTP/1.1 client connection (keep-alive: requests go one after another on it).
pub struct H1Client {
    send: http1::SendRequest<Body>,
    addr: SocketAddr,
    /// Local address of the client socket (what weir sees as the peer).
    pub local: SocketAddr,
}

impl H1Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> H1Client {
        let tcp = crate::within("h1 connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let local = tcp.local_addr().unwrap();
        let (send, conn) = crate::within("h1 handshake", http1::handshake(TokioIo::new(tcp)))
            .await
            .expect("h1 handshake");
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        H1Client { send, addr, local }
    }

    /// A request builder for `path` with `Host` set (HTTP/1.1 needs it).
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
    }

    /// Sends `req` and returns the response head (the body still streaming).
    pub async fn send(&mut self, req: Request<Body>) -> hyper::Result<Response<Incoming>> {
        crate::within("h1 connection ready", self.send.ready()).await?;
        crate::within("h1 response head", self.send.send_request(req)).await
    }

    /// `GET path` read to the end; panics on a transport error.
    pub async fn get(&mut self, path: &str) -> Collected {
        self.get_with(path, &[]).await
    }

    /// `GET path` with extra request headers, read to the end; panics on a transport error.
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Collected {
        let mut req = self.request("GET", path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body_empty()).unwrap();
        collect(
            self.send(req)
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e:?}")),
        )
        .await
    }

    /// `POST path` with `body`, read to the end; panics on a transport error.
    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> Collected {
        let req = self.request("POST", path).body(body_full(body)).unwrap();
        collect(
            self.send(req)
                .await
                .unwrap_or_else(|e| panic!("POST {path}: {e:?}")),
        )
        .await
    }

    /// Whether the connection is closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

/// One h2c client connection (prior knowledge), multiplexing requests.
#[derive(Clone)]
pub struct H2Client {
    send: http2::SendRequest<Body>,
    addr: SocketAddr,
    /// Local address of the client socket (what weir sees as the peer).
    pub local: SocketAddr,
}

impl H2Client {
    /// Connects to `addr` and performs the h2 handshake.
    pub async fn connect(addr: SocketAddr) -> H2Client {
        let tcp = crate::within("h2 connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let local = tcp.local_addr().unwrap();
        let (send, conn) = crate::within(
            "h2 handshake",
            http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H2Client { send, addr, local }
    }

    /// A request builder for `path` (absolute URI, so `:scheme` and `:authority` are sent).
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .version(http::Version::HTTP_2)
    }

    /// Sends `req` and returns the response head (the body still streaming).
    pub async fn send(&mut self, req: Request<Body>) -> hyper::Result<Response<Incoming>> {
        crate::within("h2 connection ready", self.send.ready()).await?;
        crate::within("h2 response head", self.send.send_request(req)).await
    }

    /// `GET path` read to the end; panics on a transport error.
    pub async fn get(&mut self, path: &str) -> Collected {
        let req = self.request("GET", path).body(body_empty()).unwrap();
        collect(
            self.send(req)
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e:?}")),
        )
        .await
    }

    /// `POST path` with `body`, read to the end; panics on a transport error.
    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> Collected {
        let req = self.request("POST", path).body(body_full(body)).unwrap();
        collect(
            self.send(req)
                .await
                .unwrap_or_else(|e| panic!("POST {path}: {e:?}")),
        )
        .await
    }
}

/// A response as read off the wire by [`RawClient`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code from the status line.
    pub status: u16,
    /// The head as text (status line and headers).
    pub head: String,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (by Content-Length, chunked, or to EOF).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain TCP connection for writing arbitrary bytes and reading responses by hand.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    head_only: bool,
}

impl RawClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = crate::within("raw connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
            eof: false,
            head_only: false,
        }
    }

    /// Writes `bytes`; returns the error if the peer already closed.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads more bytes into the buffer; `false` at EOF or on a reset.
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        self.buf.reserve(16 * 1024);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(_) => true,
        }
    }

    /// Reads one response (head and body). Panics if the connection ends before a full head.
    pub async fn read_response(&mut self) -> RawResponse {
        match self.try_read_response().await {
            Some(r) => r,
            None => panic!(
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads one response head only (for a `HEAD` request: no body follows whatever it says).
    pub async fn read_response_to_head(&mut self) -> RawResponse {
        self.head_only = true;
        let r = self.read_response().await;
        self.head_only = false;
        r
    }

    /// Reads one response, or `None` if the connection ends before a full head.
    pub async fn try_read_response(&mut self) -> Option<RawResponse> {
        crate::within("raw response", self.read_response_inner()).await
    }

    async fn read_response_inner(&mut self) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut resp = RawResponse {
            status,
            head,
            headers,
            body: Vec::new(),
        };
        let no_body = self.head_only
            || status == 101
            || status == 204
            || status == 304
            || (100..200).contains(&status);
        if no_body {
            return Some(resp);
        }
        if let Some(len) = resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            while self.buf.len() < len {
                if !self.fill().await {
                    break;
                }
            }
            let n = len.min(self.buf.len());
            resp.body = self.buf.drain(..n).collect();
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            resp.body = self.read_chunked().await;
        } else {
            while self.fill().await {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }

    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                if !self.fill().await {
                    return body;
                }
            };
            let size_txt = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_txt.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_txt:?}"));
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailer section up to the empty line.
                loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        let empty = i == 0;
                        self.buf.drain(..i + 2);
                        if empty {
                            return body;
                        }
                    } else if !self.fill().await {
                        return body;
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if !self.fill().await {
                    body.extend_from_slice(&self.buf);
                    self.buf.clear();
                    return body;
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// Waits up to `limit` for the peer to close the connection (EOF or reset), discarding any
    /// bytes. Returns `true` if it closed in time.
    pub async fn wait_closed(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async { while self.fill().await {} })
            .await
            .is_ok()
    }

    /// Bytes read but not yet consumed as a response.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The underlying stream (e.g. for a tunnel after a 101).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// Connects, writes `bytes`, and reads one response.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> (RawClient, RawResponse) {
    let mut c = RawClient::connect(addr).await;
    c.write(bytes).await.expect("write request");
    let r = c.read_response().await;
    (c, r)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
