//! A misbehaving-on-demand upstream for the resilience tests: an HTTP/1.1 keep-alive server over
//! raw TCP (so it can reset a connection at any point) whose behaviour the test changes while it
//! runs. Every request except the health path gets:
//!
//! | knob | effect |
//! |---|---|
//! | [`ControlledServer::reset_next`] | the next `n` requests are read whole, then the connection is reset (RST) without an answer |
//! | [`ControlledServer::set_status`] | the status answered (200 unless told) |
//! | [`ControlledServer::set_delay`] | how long it waits before answering |
//! | [`ControlledServer::set_stall_body`] | answers a head announcing 100 bytes, sends 10, then stalls |
//!
//! `GET /healthz` answers 200 or 503 as [`ControlledServer::set_healthy`] says, and is counted
//! apart ([`ControlledServer::health_checks`]). Replies carry `x-upstream: <address>` and a body
//! naming the server, and repeat the request's `x-weir-attempt-count` as `x-seen-attempt`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::Counted;

/// The path health checks probe.
pub const HEALTH_PATH: &str = "/healthz";

/// One request as the server read it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Index of the connection it came on (0 = first accepted).
    pub conn: usize,
}

impl Seen {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Knobs {
    addr: SocketAddr,
    reset_next: AtomicU32,
    status: AtomicU16,
    delay_ms: AtomicU64,
    stall_body: AtomicBool,
    healthy: AtomicBool,
    requests: Counted<Seen>,
    health: Counted<()>,
    accepts: Counted<SocketAddr>,
}

/// See the module docs. Stops (dropping its connections) when dropped.
pub struct ControlledServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    knobs: Arc<Knobs>,
    task: JoinHandle<()>,
}

impl ControlledServer {
    /// Starts a well-behaved server (200 at once, healthy) on `127.0.0.1:0`.
    pub async fn start() -> ControlledServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind controlled upstream");
        let addr = listener.local_addr().unwrap();
        let knobs = Arc::new(Knobs {
            addr,
            reset_next: AtomicU32::new(0),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            stall_body: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            requests: Counted::new(),
            health: Counted::new(),
            accepts: Counted::new(),
        });
        let k = knobs.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let id = k.accepts.len();
                k.accepts.push(peer);
                conns.spawn(serve(tcp, id, k.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        ControlledServer { addr, knobs, task }
    }

    /// The next `n` requests are reset (RST) once read, without an answer.
    pub fn reset_next(&self, n: u32) {
        self.knobs.reset_next.store(n, SeqCst);
    }

    /// The status every request gets from now on.
    pub fn set_status(&self, status: u16) {
        self.knobs.status.store(status, SeqCst);
    }

    /// How long every answer waits from now on.
    pub fn set_delay(&self, d: Duration) {
        self.knobs
            .delay_ms
            .store(u64::try_from(d.as_millis()).unwrap(), SeqCst);
    }

    /// Whether answers stall in the middle of their body.
    pub fn set_stall_body(&self, on: bool) {
        self.knobs.stall_body.store(on, SeqCst);
    }

    /// What the health path answers: 200 (true) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.knobs.healthy.store(healthy, SeqCst);
    }

    /// Requests read so far (health probes excluded).
    pub fn requests(&self) -> Vec<Seen> {
        self.knobs.requests.snapshot()
    }

    /// How many requests were read so far (health probes excluded).
    pub fn request_count(&self) -> usize {
        self.knobs.requests.len()
    }

    /// Waits until at least `n` requests were read.
    pub async fn wait_requests(&self, n: usize) -> Vec<Seen> {
        self.knobs
            .requests
            .wait_len(n, &format!("{n} requests at {}", self.addr))
            .await
    }

    /// Health probes answered so far.
    pub fn health_checks(&self) -> usize {
        self.knobs.health.len()
    }

    /// Waits until at least `n` health probes were answered.
    pub async fn wait_health_checks(&self, n: usize) {
        self.knobs
            .health
            .wait_len(n, &format!("{n} health checks at {}", self.addr))
            .await;
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.knobs.accepts.len()
    }
}

impl Drop for ControlledServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection: request after request until the peer closes or a reset is due.
async fn serve(mut tcp: TcpStream, conn: usize, k: Arc<Knobs>) {
    let mut buf = Vec::new();
    loop {
        let Some(seen) = read_request(&mut tcp, &mut buf, conn).await else {
            return;
        };
        if seen.path == HEALTH_PATH {
            let ok = k.healthy.load(SeqCst);
            k.health.push(());
            let (status, body) = if ok { (200, "ok") } else { (503, "down") };
            if write_reply(&mut tcp, &k, status, body, None).await.is_err() {
                return;
            }
            continue;
        }
        let close = seen
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let attempt = seen.header("x-weir-attempt-count").map(str::to_owned);
        k.requests.push(seen);
        let reset = k
            .reset_next
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if reset {
            // SO_LINGER 0: close() sends RST instead of FIN.
            let _ = tcp.set_zero_linger();
            return;
        }
        let delay = k.delay_ms.load(SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if k.stall_body.load(SeqCst) {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 100\r\nx-upstream: {}\r\n\r\n0123456789",
                k.addr
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            std::future::pending::<()>().await;
        }
        let status = k.status.load(SeqCst);
        let body = format!("{status} from {}", k.addr);
        if write_reply(&mut tcp, &k, status, &body, attempt.as_deref())
            .await
            .is_err()
            || close
        {
            return;
        }
    }
}

async fn write_reply(
    tcp: &mut TcpStream,
    k: &Knobs,
    status: u16,
    body: &str,
    attempt: Option<&str>,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-upstream: {}\r\n",
        body.len(),
        k.addr
    );
    if let Some(a) = attempt {
        head.push_str(&format!("x-seen-attempt: {a}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    tcp.write_all(head.as_bytes()).await
}

/// Reads one request (head and a `content-length` or chunked body); `None` when the peer closes
/// or sends something this server does not follow.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(tcp, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < n {
            fill(tcp, buf).await?;
        }
        body = buf.drain(..n).collect();
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                fill(tcp, buf).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers (if any) up to the empty line.
                loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        let empty = i == 0;
                        buf.drain(..i + 2);
                        if empty {
                            break;
                        }
                        continue;
                    }
                    fill(tcp, buf).await?;
                }
                break;
            }
            while buf.len() < size + 2 {
                fill(tcp, buf).await?;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    }
    Some(Seen {
        method,
        path,
        headers,
        body,
        conn,
    })
}

async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
