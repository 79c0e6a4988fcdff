//! In-process tests of the data path: a worker built from a manifest in the test's own thread,
//! a connection driven over an in-memory pipe (`tokio::io::duplex`), an upstream on
//! `127.0.0.1:0`. No `weir` process and no downstream socket, so a failure points at the
//! service or the chain, not at a process (the e2e tests in `tests/` cover the process).
//!
//! Every test runs on a current-thread runtime inside a `LocalSet`, as a worker does
//! ([`run`]).

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::listener::ListenerCtx;
use crate::worker::WorkerCtx;

/// Runs `f` as a worker runs its tasks: a current-thread runtime and a `LocalSet`.
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// An upstream that answers every request with `200` and, as its body, the request head it
/// received (so a test sees what went upstream); it records the heads.
pub struct Upstream {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::task::spawn_local(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::task::spawn_local(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = find(&buf, b"\r\n\r\n") else {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let text = String::from_utf8_lossy(&head).into_owned();
                        seen.lock().unwrap().push(text.clone());
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Upstream { addr, heads }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One worker of a manifest, built in process. `{up}` in the manifest is replaced by the
/// upstream's address.
pub struct Worker {
    worker: Rc<WorkerCtx>,
    listener: Rc<ListenerCtx>,
    drain: watch::Receiver<bool>,
    _drain_tx: watch::Sender<bool>,
}

impl Worker {
    /// Builds the worker for `yaml` (its first listener is the one connections arrive on).
    pub async fn start(yaml: &str, up: SocketAddr) -> Worker {
        let text = yaml.replace("{up}", &up.to_string());
        let config = Arc::new(
            crate::config::parse(&text, "in-process.yaml", Path::new("."))
                .unwrap_or_else(|e| panic!("the test manifest is refused: {e}")),
        );
        let tls = Arc::new(crate::tls::TlsContexts::new());
        let telemetry = Arc::new(
            crate::telemetry::Telemetry::new(&config, 1, tokio::runtime::Handle::current())
                .expect("telemetry"),
        );
        // No demo upstreams: in-process tests use real ones.
        let manager = Arc::new(crate::upstream::manager::ClusterManager::new(
            1,
            telemetry.clone(),
            tls.clone(),
            None,
        ));
        let plan = manager
            .plan(
                &config,
                &[],
                1,
                crate::upstream::EndpointSource::Static,
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("the test manifest's clusters do not build: {e}"));
        let listeners = crate::control::plan_listeners(&config, &[], 1, 1, &telemetry)
            .await
            .unwrap_or_else(|e| panic!("the test manifest's listeners do not build: {e}"));
        let (_control, generations, _acks) = crate::control::Control::start(
            config.clone(),
            1,
            None,
            manager,
            (listeners, plan.clusters),
        )
        .unwrap_or_else(|e| panic!("the test manifest's filters do not start: {e}"));
        let wt = telemetry.worker(0);
        crate::telemetry::set_worker(wt.clone());
        let first = generations.borrow().clone();
        let worker = crate::worker::context(0, wt, &first);
        tokio::task::spawn_local(crate::proto::body::run_drainer());
        tokio::task::spawn_local(crate::timer::run_driver());
        let v = first.listeners[0].clone();
        let listener = Rc::new(ListenerCtx::new(&v.config, v.id, 1, v.local, v.tls.clone()));
        let (drain_tx, drain) = watch::channel(false);
        Worker {
            worker,
            listener,
            drain,
            _drain_tx: drain_tx,
        }
    }

    /// Sends `request` (raw bytes, with `Connection: close`) on a new in-memory connection and
    /// returns everything the proxy wrote back before closing it.
    pub async fn exchange(&self, request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        let conn = crate::conn::serve(
            crate::conn::Accepted::Memory(server),
            peer,
            self.worker.clone(),
            self.listener.clone(),
            self.drain.clone(),
            std::rc::Rc::new(crate::conn::ConnCtl::new()),
        );
        let talk = async {
            client.write_all(request).await.expect("write the request");
            let mut out = Vec::new();
            client
                .read_to_end(&mut out)
                .await
                .expect("read the response");
            String::from_utf8_lossy(&out).into_owned()
        };
        let serve_and_talk = async {
            let (_, out) = tokio::join!(conn, talk);
            out
        };
        tokio::time::timeout(Duration::from_secs(10), serve_and_talk)
            .await
            .expect("the exchange ends within 10 s")
    }
}
