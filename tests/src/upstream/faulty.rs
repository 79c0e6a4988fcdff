//! Misbehaving upstreams over raw TCP (reset, garbage, silence, slowness) and a listener whose
//! connects hang (full accept queue), for weir's 502/503/504 paths.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::Counted;

/// How a [`FaultyServer`] treats each connection.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Reads the request head, then closes with a TCP RST (zero linger) before any response.
    ResetBeforeResponse,
    /// Reads the request head, then closes cleanly (FIN) before any response.
    CloseBeforeResponse,
    /// Reads the request head, answers bytes that are not HTTP, then closes.
    Garbage,
    /// Accepts and reads, never answers; keeps the connection open until the server is dropped.
    Silent,
    /// Reads the request head, then stops reading (a request body backs up) and never answers.
    Stall,
    /// Reads the request head, waits this long, then answers a valid `200` with body `slow`.
    Slow(Duration),
    /// Reads the request head, answers a `200` whose body stops early (10 of 100 bytes announced
    /// by Content-Length, or a chunked body without its last chunk), then closes cleanly (FIN).
    TruncatedBody {
        /// Chunked framing instead of Content-Length.
        chunked: bool,
    },
    /// Reads the request head, writes these exact bytes, then closes cleanly (FIN).
    Respond(&'static [u8]),
    /// Keep-alive script: the n-th request head on a connection gets the n-th reply, written
    /// verbatim (an empty reply: close without answering); after the last one the connection is
    /// closed.
    Script(&'static [&'static [u8]]),
}

/// A raw TCP upstream that misbehaves as told; stops (dropping its connections) when dropped.
pub struct FaultyServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    accepts: Arc<Counted<SocketAddr>>,
    heads: Arc<Counted<String>>,
    task: JoinHandle<()>,
}

impl FaultyServer {
    /// Starts a server applying `fault` to every connection.
    pub async fn start(fault: Fault) -> FaultyServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind faulty upstream");
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(Counted::new());
        let heads = Arc::new(Counted::new());
        let (acc, hd) = (accepts.clone(), heads.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                acc.push(peer);
                conns.spawn(serve(tcp, fault, hd.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        FaultyServer {
            addr,
            accepts,
            heads,
            task,
        }
    }

    /// Number of connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.len()
    }

    /// Request heads received so far (as text).
    pub fn heads(&self) -> Vec<String> {
        self.heads.snapshot()
    }

    /// Waits until at least `n` request heads arrived.
    pub async fn wait_heads(&self, n: usize) -> Vec<String> {
        self.heads
            .wait_len(n, &format!("{n} request heads at {}", self.addr))
            .await
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut tcp: TcpStream, fault: Fault, heads: Arc<Counted<String>>) {
    if let Fault::Script(replies) = fault {
        return script(tcp, replies, heads).await;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read up to the end of the request head.
    loop {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            heads.push(String::from_utf8_lossy(&buf[..i + 4]).into_owned());
            break;
        }
        if let Fault::Silent = fault {
            // A silent upstream swallows even partial heads.
            continue;
        }
    }
    match fault {
        Fault::ResetBeforeResponse => {
            // SO_LINGER 0: close() sends RST instead of FIN.
            let _ = tcp.set_zero_linger();
            drop(tcp);
        }
        Fault::CloseBeforeResponse => {
            let _ = tcp.shutdown().await;
        }
        Fault::Garbage => {
            let _ = tcp
                .write_all(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n")
                .await;
            let _ = tcp.shutdown().await;
        }
        Fault::Silent => {
            // Keep reading (and discarding) until the peer goes away; never answer.
            while let Ok(n) = tcp.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        }
        Fault::TruncatedBody { chunked } => {
            let resp: &[u8] = if chunked {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"
            };
            let _ = tcp.write_all(resp).await;
            let _ = tcp.shutdown().await;
        }
        Fault::Script(_) => unreachable!("handled above"),
        Fault::Stall => {
            // Hold the socket, read nothing more; ends when the server (task) is dropped.
            std::future::pending::<()>().await;
        }
        Fault::Respond(bytes) => {
            let _ = tcp.write_all(bytes).await;
            let _ = tcp.shutdown().await;
        }
        Fault::Slow(d) => {
            tokio::time::sleep(d).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
                .await;
            while let Ok(n) = tcp.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

/// Answers each request head on `tcp` with the next scripted reply (request bodies are not
/// expected: the script is for GETs).
async fn script(
    mut tcp: TcpStream,
    replies: &'static [&'static [u8]],
    heads: Arc<Counted<String>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for reply in replies {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                heads.push(String::from_utf8_lossy(&buf[..i + 4]).into_owned());
                buf.drain(..i + 4);
                break;
            }
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if reply.is_empty() {
            break; // read the request, answer nothing
        }
        if tcp.write_all(reply).await.is_err() {
            return;
        }
    }
    let _ = tcp.shutdown().await;
}

/// A listener that never accepts and whose accept queue is full, so new connects to it hang (the
/// kernel drops their SYNs). Used for the upstream connect timeout.
pub struct BlackholeListener {
    /// The address connects hang on.
    pub addr: SocketAddr,
    _listener: std::net::TcpListener,
    _fillers: Vec<TcpStream>,
}

impl BlackholeListener {
    /// Builds one: `listen(0)`, then connects until a probe connect stays pending for 300 ms.
    /// Returns `None` if the kernel keeps completing connects (then a hanging connect cannot be
    /// produced on this machine and the caller should skip).
    pub async fn start() -> Option<BlackholeListener> {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        sock.bind(&bind.into()).expect("bind");
        sock.listen(0).expect("listen");
        let listener: std::net::TcpListener = sock.into();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fillers.push(s),
                Ok(Err(_)) => return None,
                Err(_) => {
                    return Some(BlackholeListener {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    });
                }
            }
        }
        None
    }
}
