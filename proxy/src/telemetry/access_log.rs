//! The access log: one JSON object per request, one per line, with the fields the manifest
//! lists (`telemetry.access_log.fields`), to stdout or a file.
//!
//! A worker formats its lines into its own buffer ([`WorkerLog`]) and hands the buffer over
//! whole — when it passes 64 KiB, and every `flush_interval` — to one writer thread ([`Sink`]),
//! so a worker never blocks on the disk or a slow stdout reader and lines from different
//! workers never interleave. If the writer falls behind by more than a bounded queue of buffers,
//! whole buffers are dropped and counted (`weir_access_log_dropped_lines_total`) rather than
//! stalling the data path.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Request, Version};

use crate::config::{AccessLogConfig, AccessLogField, AccessLogPath};
use crate::tls::ConnTls;

/// A worker hands its buffer over once it holds this much.
const FLUSH_AT: usize = 64 * 1024;
/// Buffers waiting for the writer; past this, new ones are dropped.
const QUEUE: usize = 256;

/// A buffer of complete lines, and how many lines it holds; an empty one asks the writer to stop.
type Batch = (Vec<u8>, u64);

/// The process's access-log writer.
pub struct Sink {
    tx: mpsc::SyncSender<Batch>,
    fields: Vec<AccessLogField>,
    flush_interval: Duration,
    dropped: AtomicU64,
    written: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Sink {
    /// Opens the destination (a file is created if missing and appended to) and starts the writer.
    pub fn start(cfg: &AccessLogConfig) -> std::io::Result<Self> {
        let mut out: Box<dyn std::io::Write + Send> = match &cfg.path {
            AccessLogPath::Stdout => Box::new(std::io::stdout()),
            AccessLogPath::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel::<Batch>(QUEUE);
        let writer = std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || {
                while let Ok((buf, _)) = rx.recv() {
                    if buf.is_empty() {
                        break;
                    }
                    if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
                        tracing::warn!(error = %e, "access log write failed");
                    }
                }
                let _ = out.flush();
            })?;
        Ok(Self {
            tx,
            fields: cfg.fields.clone(),
            flush_interval: cfg.flush_interval,
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        })
    }

    fn send(&self, buf: Vec<u8>, lines: u64) {
        match self.tx.try_send((buf, lines)) {
            Ok(()) => {
                self.written.fetch_add(lines, Relaxed);
            }
            Err(_) => {
                self.dropped.fetch_add(lines, Relaxed);
            }
        }
    }

    /// Stops the writer once everything sent so far is written.
    pub fn shutdown(&self) {
        let _ = self.tx.send((Vec::new(), 0));
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }

    /// The writer's counters, as Prometheus text.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP weir_access_log_lines_total Access-log lines handed to the writer.\n# TYPE weir_access_log_lines_total counter\nweir_access_log_lines_total {}\n# HELP weir_access_log_dropped_lines_total Access-log lines dropped because the writer fell behind.\n# TYPE weir_access_log_dropped_lines_total counter\nweir_access_log_dropped_lines_total {}",
            self.written.load(Relaxed),
            self.dropped.load(Relaxed)
        );
    }
}

/// One worker's buffer of formatted lines.
pub struct WorkerLog {
    sink: Arc<Sink>,
    buf: RefCell<(Vec<u8>, u64)>,
}

impl WorkerLog {
    pub fn new(sink: Arc<Sink>) -> Self {
        Self {
            sink,
            buf: RefCell::new((Vec::with_capacity(FLUSH_AT), 0)),
        }
    }

    pub fn flush_interval(&self) -> Duration {
        self.sink.flush_interval
    }

    /// Formats `rec` as one line into the buffer (handing the buffer over when it is full).
    pub fn push(&self, rec: &Record) {
        let mut b = self.buf.borrow_mut();
        rec.write_json(&mut b.0, &self.sink.fields);
        b.1 += 1;
        if b.0.len() >= FLUSH_AT {
            let full = std::mem::replace(&mut b.0, Vec::with_capacity(FLUSH_AT));
            let lines = std::mem::take(&mut b.1);
            drop(b);
            self.sink.send(full, lines);
        }
    }

    /// Hands over whatever is buffered.
    pub fn flush(&self) {
        let mut b = self.buf.borrow_mut();
        if b.0.is_empty() {
            return;
        }
        let full = std::mem::replace(&mut b.0, Vec::with_capacity(FLUSH_AT));
        let lines = std::mem::take(&mut b.1);
        drop(b);
        self.sink.send(full, lines);
    }
}

/// What one request's line is made of. Request fields are captured (reference-counted clones,
/// no copies of the bytes) when the request starts; the rest as it goes.
pub struct Record {
    start: SystemTime,
    listener: Arc<str>,
    method: Option<Method>,
    /// Path and query as received.
    path: Option<http::uri::PathAndQuery>,
    version: Option<Version>,
    authority: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    peer: Option<SocketAddr>,
    peer_identity: Option<String>,
    upstream: Option<(Arc<str>, SocketAddr)>,
    routed: bool,
    pub trace_id: Option<[u8; 16]>,
    pub upstream_service_time: Option<Duration>,
    pub error: Option<String>,
    pub status: u16,
    pub flags: u16,
    pub bytes: (u64, u64),
    pub duration: Duration,
}

impl Record {
    pub fn new(listener: Arc<str>) -> Self {
        Self {
            start: SystemTime::now(),
            listener,
            method: None,
            path: None,
            version: None,
            authority: None,
            user_agent: None,
            request_id: None,
            peer: None,
            peer_identity: None,
            upstream: None,
            routed: false,
            trace_id: None,
            upstream_service_time: None,
            error: None,
            status: 0,
            flags: 0,
            bytes: (0, 0),
            duration: Duration::ZERO,
        }
    }

    /// The request as it arrived.
    pub fn request<B>(&mut self, req: &Request<B>, peer: SocketAddr, tls: Option<&ConnTls>) {
        self.method = Some(req.method().clone());
        self.path = req.uri().path_and_query().cloned();
        self.version = Some(req.version());
        self.authority = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| req.headers().get(http::header::HOST).cloned());
        self.user_agent = req.headers().get(http::header::USER_AGENT).cloned();
        self.request_id = req.headers().get("x-request-id").cloned();
        self.peer = Some(peer);
        self.peer_identity = tls
            .and_then(|t| t.peer.as_ref())
            .and_then(|p| p.uri_sans.first().cloned());
    }

    /// The upstream attempt: where it went, and the request id the upstream got.
    pub fn upstream(&mut self, cluster: &Arc<str>, addr: SocketAddr, routed: bool, h: &HeaderMap) {
        self.upstream = Some((cluster.clone(), addr));
        self.routed = routed;
        if let Some(id) = h.get("x-request-id") {
            self.request_id = Some(id.clone());
        }
    }

    /// Appends the line (with its newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>, fields: &[AccessLogField]) {
        let mut s = String::with_capacity(512);
        s.push('{');
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('"');
            s.push_str(f.name());
            s.push_str("\":");
            self.value(&mut s, *f);
        }
        s.push_str("}\n");
        out.extend_from_slice(s.as_bytes());
    }

    fn value(&self, s: &mut String, f: AccessLogField) {
        use AccessLogField as F;
        let opt_ms = |s: &mut String, d: Option<Duration>| match d {
            Some(d) => {
                let _ = write!(s, "{:.3}", d.as_secs_f64() * 1000.0);
            }
            None => s.push_str("null"),
        };
        match f {
            F::StartTime => {
                json_str(s, &humantime::format_rfc3339_millis(self.start).to_string());
            }
            F::Method => opt_str(s, self.method.as_ref().map(Method::as_str)),
            F::Path => opt_str(s, self.path.as_ref().map(|p| p.as_str())),
            F::Protocol => opt_str(
                s,
                self.version.map(|v| match v {
                    Version::HTTP_10 => "HTTP/1.0",
                    Version::HTTP_2 => "HTTP/2",
                    _ => "HTTP/1.1",
                }),
            ),
            F::Authority => opt_header(s, self.authority.as_ref()),
            F::UserAgent => opt_header(s, self.user_agent.as_ref()),
            F::RequestId => opt_header(s, self.request_id.as_ref()),
            F::Status => {
                if self.status == 0 {
                    s.push_str("null");
                } else {
                    let _ = write!(s, "{}", self.status);
                }
            }
            F::ResponseFlags => json_str(s, &super::trace::flag_text(self.flags)),
            F::BytesReceived => {
                let _ = write!(s, "{}", self.bytes.0);
            }
            F::BytesSent => {
                let _ = write!(s, "{}", self.bytes.1);
            }
            F::DurationMs => opt_ms(s, Some(self.duration)),
            F::UpstreamServiceTimeMs => opt_ms(s, self.upstream_service_time),
            F::UpstreamHost => match &self.upstream {
                Some((_, a)) => json_str(s, &a.to_string()),
                None => s.push_str("null"),
            },
            F::UpstreamCluster => opt_str(s, self.upstream.as_ref().map(|(c, _)| &**c)),
            F::Route => opt_str(
                s,
                self.upstream
                    .as_ref()
                    .map(|_| if self.routed { "filter" } else { "default" }),
            ),
            F::Listener => opt_str(s, Some(&*self.listener)),
            F::DownstreamRemoteAddress => match self.peer {
                Some(p) => json_str(s, &p.to_string()),
                None => s.push_str("null"),
            },
            F::PeerIdentity => opt_str(s, self.peer_identity.as_deref()),
            F::TraceId => match &self.trace_id {
                Some(id) => json_str(s, &hex::encode(id)),
                None => s.push_str("null"),
            },
            F::Error => opt_str(s, self.error.as_deref()),
        }
    }
}

fn opt_str(s: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(s, v),
        None => s.push_str("null"),
    }
}

fn opt_header(s: &mut String, v: Option<&HeaderValue>) {
    match v {
        // Header values may hold any byte but CTL; non-UTF-8 bytes are shown as U+FFFD.
        Some(v) => json_str(s, &String::from_utf8_lossy(v.as_bytes())),
        None => s.push_str("null"),
    }
}

/// A JSON string literal (RFC 8259 escapes).
fn json_str(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(s, "\\u{:04x}", u32::from(c));
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_the_fields_asked_for() {
        let mut rec = Record::new(Arc::from("main"));
        let req = Request::builder()
            .method("POST")
            .uri("/a?b=%22c%22")
            .header("host", "example.test")
            .header("user-agent", "t\tx")
            .body(())
            .unwrap();
        rec.request(&req, ([10, 0, 0, 1], 5555).into(), None);
        rec.upstream(
            &Arc::from("web"),
            ([127, 0, 0, 1], 9).into(),
            false,
            &HeaderMap::new(),
        );
        rec.status = 503;
        rec.flags = super::super::flags::UF;
        rec.bytes = (10, 20);
        rec.duration = Duration::from_micros(1500);
        let mut out = Vec::new();
        rec.write_json(&mut out, AccessLogField::ALL);
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with("}\n") && line.lines().count() == 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/a?b=%22c%22");
        assert_eq!(v["authority"], "example.test");
        assert_eq!(v["user_agent"], "t\tx");
        assert_eq!(v["status"], 503);
        assert_eq!(v["response_flags"], "UF");
        assert_eq!(v["bytes_received"], 10);
        assert_eq!(v["bytes_sent"], 20);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream_host"], "127.0.0.1:9");
        assert_eq!(v["upstream_cluster"], "web");
        assert_eq!(v["route"], "default");
        assert_eq!(v["listener"], "main");
        assert_eq!(v["downstream_remote_address"], "10.0.0.1:5555");
        assert!(v["trace_id"].is_null() && v["peer_identity"].is_null());
        assert_eq!(v.as_object().unwrap().len(), AccessLogField::ALL.len());

        let mut out = Vec::new();
        rec.write_json(&mut out, &[AccessLogField::Status, AccessLogField::Method]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"status\":503,\"method\":\"POST\"}\n"
        );
    }
}
