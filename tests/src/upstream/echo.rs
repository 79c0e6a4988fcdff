//! The echo upstream: hyper 1 serving HTTP/1.1 and h2c (prior knowledge) on one port. What it does
//! depends on the request:
//!
//! | request | reply |
//! |---|---|
//! | `Upgrade:` header (HTTP/1.1) | `101`, then echoes every byte on the upgraded stream |
//! | the same on a path `/no-upgrade…` | upgrade ignored: `426` (see `/status/NNN`) |
//! | `content-type: application/grpc*` | `200`, the request body echoed, trailers `grpc-status: 0` |
//! | the same, path ending `/Fail` | trailers-only `grpc-status: 5` (in the headers, no body) |
//! | the same, path ending `/Chat` | a stream: headers at once (`x-initial: 1`), the message `bye` once the first request message has arrived, then trailers `grpc-status: 0`, `x-trailing: done` once the request side ends |
//! | the same, path ending `/Listen` | like `/Chat`, never answering a message; how each of these streams ended (`ended` or `reset`) is kept ([`EchoServer::wait_stream_ends`]) |
//! | path `/stream…` | `200` at once, the request body streamed back frame by frame (full duplex) |
//! | path `/reject-early…` | `413` at once, the request body never read |
//! | path `/hold…` | recorded, then held until the test calls [`EchoServer::release`], then echoed |
//! | path `/status/NNN` | status `NNN` |
//! | path `/close…` | `200` with `Connection: close`, then the connection is closed |
//! | path `/hop-response` | `200` carrying hop-by-hop headers that a proxy must strip |
//! | anything else | `200`, the request body echoed (and request trailers as response trailers) |
//!
//! Every reply carries `x-upstream: <this server's address>`, `x-echo-conn: <connection index>` and
//! `x-echo-path: <the request's path and query, as received>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::{Counted, Recorded};
use crate::client::{Body, BoxError, body_empty, body_full};

struct State {
    addr: SocketAddr,
    accepts: Counted<SocketAddr>,
    requests: Counted<Recorded>,
    hold: Semaphore,
    closes: Counted<usize>,
    stream_ends: Arc<Counted<&'static str>>,
    in_flight: watch::Sender<usize>,
    kick: watch::Sender<u64>,
}

/// A running echo upstream; stops accepting (and drops its connections) when dropped.
pub struct EchoServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Starts an echo server speaking HTTP/1.1 and h2c (prior knowledge) on one port.
    pub async fn start() -> EchoServer {
        EchoServer::start_inner(false).await
    }

    /// Starts an echo server on `addr` (another loopback address, say, so that several share a
    /// port as DNS-discovered endpoints do).
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        Ok(EchoServer::serve(listener, false, None))
    }

    /// Starts an echo server speaking h2c (prior knowledge) only, like a gRPC backend.
    pub async fn start_h2() -> EchoServer {
        EchoServer::start_inner(true).await
    }

    /// Like [`EchoServer::start_h2`], advertising `SETTINGS_MAX_CONCURRENT_STREAMS = max`.
    pub async fn start_h2_with_max_streams(max: u32) -> EchoServer {
        EchoServer::start_with(true, Some(max)).await
    }

    async fn start_inner(h2_only: bool) -> EchoServer {
        EchoServer::start_with(h2_only, None).await
    }

    async fn start_with(h2_only: bool, max_streams: Option<u32>) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo upstream");
        EchoServer::serve(listener, h2_only, max_streams)
    }

    fn serve(listener: TcpListener, h2_only: bool, max_streams: Option<u32>) -> EchoServer {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            addr,
            accepts: Counted::new(),
            requests: Counted::new(),
            hold: Semaphore::new(0),
            closes: Counted::new(),
            stream_ends: Arc::new(Counted::new()),
            in_flight: watch::channel(0).0,
            kick: watch::channel(0).0,
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it (on drop) aborts every connection too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let conn_id = st.accepts.len();
                st.accepts.push(peer);
                let (st, st2) = (st.clone(), st.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), conn_id, peer, req));
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    if h2_only {
                        builder = builder.http2_only();
                    }
                    if let Some(max) = max_streams {
                        builder.http2().max_concurrent_streams(max);
                    }
                    let mut kick = st2.kick.subscribe();
                    let serve = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    let mut serve = std::pin::pin!(serve);
                    tokio::select! {
                        _ = serve.as_mut() => {}
                        _ = kick.changed() => {
                            // Like a restarting server: h2 GOAWAY, h1 close once idle.
                            serve.as_mut().graceful_shutdown();
                            let _ = serve.await;
                        }
                    }
                    st2.closes.push(conn_id);
                });
                while conns.try_join_next().is_some() {}
            }
        });
        EchoServer { addr, state, task }
    }

    /// Waits until `n` `/Chat` or `/Listen` streams have ended; how each ended (`ended`: the
    /// client half-closed; `reset`: it reset the stream).
    pub async fn wait_stream_ends(&self, n: usize) -> Vec<&'static str> {
        self.state
            .stream_ends
            .wait_len(n, &format!("{n} gRPC streams ended at {}", self.addr))
            .await
    }

    /// Number of TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.state.accepts.len()
    }

    /// Waits until at least `n` connections were accepted.
    pub async fn wait_accepts(&self, n: usize) {
        self.state
            .accepts
            .wait_len(n, &format!("{n} accepts at {}", self.addr))
            .await;
    }

    /// Requests recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.snapshot()
    }

    /// Waits until at least `n` requests were recorded; returns all recorded.
    pub async fn wait_requests(&self, n: usize) -> Vec<Recorded> {
        self.state
            .requests
            .wait_len(n, &format!("{n} requests at {}", self.addr))
            .await
    }

    /// Lets `n` held (`/hold…`) requests answer.
    pub fn release(&self, n: usize) {
        self.state.hold.add_permits(n);
    }

    /// Requests currently being handled (received, not yet answered or abandoned).
    pub fn in_flight(&self) -> usize {
        *self.state.in_flight.borrow()
    }

    /// Waits until exactly `n` requests are being handled (e.g. 0: a held request was cancelled).
    pub async fn wait_in_flight(&self, n: usize) {
        let mut rx = self.state.in_flight.subscribe();
        crate::within(
            &format!("{n} requests in flight at {}", self.addr),
            rx.wait_for(|v| *v == n),
        )
        .await
        .expect("sender alive");
    }

    /// Shuts every open connection down gracefully, as a restarting upstream would (h2: GOAWAY;
    /// h1: closed once idle), and waits until they are all closed on this side.
    pub async fn drop_connections(&self) {
        self.state.kick.send_modify(|k| *k += 1);
        let n = self.accepts();
        self.state
            .closes
            .wait_len(n, &format!("{n} connections closed at {}", self.addr))
            .await;
    }

    /// Number of connections that have ended (closed by either side).
    pub fn closes(&self) -> usize {
        self.state.closes.len()
    }

    /// Waits until at least `n` connections have ended.
    pub async fn wait_closes(&self, n: usize) {
        self.state
            .closes
            .wait_len(n, &format!("{n} closed connections at {}", self.addr))
            .await;
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a request as in flight while alive (dropped when answered or when hyper abandons it).
struct InFlight<'a>(&'a watch::Sender<usize>);

impl<'a> InFlight<'a> {
    fn new(tx: &'a watch::Sender<usize>) -> Self {
        tx.send_modify(|v| *v += 1);
        InFlight(tx)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|v| *v -= 1);
    }
}

fn record(conn: usize, peer: SocketAddr, parts: &http::request::Parts) -> Recorded {
    Recorded {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: Bytes::new(),
        trailers: None,
        conn,
        peer,
    }
}

async fn handle(
    st: Arc<State>,
    conn: usize,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let _guard = InFlight::new(&st.in_flight);
    // The request target's path and query as they arrived (a proxy's rewrite shows here).
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned());
    let mut resp = respond(&st, conn, peer, req).await;
    let h = resp.headers_mut();
    h.insert(
        "x-upstream",
        HeaderValue::from_str(&st.addr.to_string()).unwrap(),
    );
    h.insert("x-echo-conn", HeaderValue::from(conn));
    if let Some(v) = path.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert("x-echo-path", v);
    }
    Ok(resp)
}

async fn respond(
    st: &State,
    conn: usize,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if req.headers().contains_key(header::UPGRADE) && !req.uri().path().starts_with("/no-upgrade") {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        st.requests.push(record(conn, peer, &parts));
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let proto = parts.headers.get(header::UPGRADE).cloned().unwrap();
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, proto)
            .body(body_empty())
            .unwrap();
    }

    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();

    if let Some(rest) = path.strip_prefix("/no-upgrade") {
        // Served as a normal request: `/no-upgrade/status/426` answers 426.
        if let Some(code) = rest.strip_prefix("/status/") {
            let code: u16 = code.parse().unwrap_or(500);
            st.requests.push(record(conn, peer, &parts));
            return Response::builder()
                .status(code)
                .body(body_full(format!("status {code}")))
                .unwrap();
        }
    }

    if path.starts_with("/reject-early") {
        // Answers without reading the body, like an upstream refusing an upload (413).
        st.requests.push(record(conn, peer, &parts));
        drop(body);
        return Response::builder()
            .status(StatusCode::PAYLOAD_TOO_LARGE)
            .body(body_full("too large"))
            .unwrap();
    }

    let grpc_content = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc_content && (path.ends_with("/Chat") || path.ends_with("/Listen")) {
        st.requests.push(record(conn, peer, &parts));
        let (mut tx, chat) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        let ends = st.stream_ends.clone();
        let mut answered = path.ends_with("/Listen");
        tokio::spawn(async move {
            let mut body = body;
            let mut seen = Vec::new();
            let mut how = "ended";
            while let Some(f) = body.frame().await {
                let Ok(f) = f else {
                    how = "reset";
                    break;
                };
                let Ok(d) = f.into_data() else { continue };
                seen.extend_from_slice(&d);
                let whole = seen.len() >= 5
                    && seen.len()
                        >= 5 + u32::from_be_bytes([seen[1], seen[2], seen[3], seen[4]]) as usize;
                if whole && !answered {
                    answered = true;
                    let _ = tx.send_data(Bytes::from_static(b"\0\0\0\0\x03bye")).await;
                }
            }
            ends.push(how);
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            t.insert("x-trailing", HeaderValue::from_static("done"));
            let _ = tx.send_trailers(t).await;
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("x-initial", "1")
            .body(chat.boxed_unsync())
            .unwrap();
    }

    if path.starts_with("/stream") {
        st.requests.push(record(conn, peer, &parts));
        let echoed = body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync();
        return Response::new(echoed);
    }

    let (data, trailers) = match body.collect().await {
        Ok(c) => {
            let t = c.trailers().cloned();
            (c.to_bytes(), t)
        }
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(body_full(format!(
                    "echo: reading the request body failed: {e}"
                )))
                .unwrap();
        }
    };
    let mut rec = record(conn, peer, &parts);
    rec.body = data.clone();
    rec.trailers = trailers.clone();
    st.requests.push(rec);

    if grpc_content && path.ends_with("/Fail") {
        // A trailers-only gRPC error: status in the headers, no body, END_STREAM on HEADERS.
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("grpc-status", "5")
            .header("grpc-message", "not found")
            .body(body_empty())
            .unwrap();
    }
    if grpc_content {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("OK"));
        let body = Full::new(data)
            .map_err(|never| -> BoxError { match never {} })
            .with_trailers(async move { Some(Ok(t)) })
            .boxed_unsync();
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(body)
            .unwrap();
    }

    if path.starts_with("/hold") {
        st.hold.acquire().await.expect("semaphore open").forget();
    }

    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        return Response::builder()
            .status(code)
            .body(body_full(format!("status {code}")))
            .unwrap();
    }

    if path.starts_with("/close") {
        // hyper closes the connection after a response carrying `Connection: close`.
        return Response::builder()
            .header(header::CONNECTION, "close")
            .body(body_full("closing"))
            .unwrap();
    }

    if path == "/hop-response" {
        return Response::builder()
            .header(header::CONNECTION, "x-hop-resp")
            .header("x-hop-resp", "must be stripped")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-end-to-end", "kept")
            .body(body_full("hop"))
            .unwrap();
    }

    match trailers {
        Some(t) => {
            // Chunked (no exact length) and declared in `Trailer:`, which hyper's HTTP/1.1
            // encoder requires before it writes a trailer section.
            let names: Vec<String> = t.keys().map(|k| k.to_string()).collect();
            let (mut tx, body) = crate::client::body_channel();
            tokio::spawn(async move {
                let _ = tx.send_data(data).await;
                let _ = tx.send_trailers(t).await;
            });
            Response::builder()
                .header(header::TRAILER, names.join(", "))
                .body(body)
                .unwrap()
        }
        None => Response::new(body_full(data)),
    }
}
