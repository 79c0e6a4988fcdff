//! Continuous load for the tests that change weir while it serves (endpoints, clusters,
//! listeners, DNS answers, certificates) and must see no request fail meanwhile.
//!
//! [`Load::on`] sets up, [`LoadBuilder::start`] spawns the clients: `keep_alive` clients that each
//! send one request at a time on one HTTP/1.1 connection (a new one once it closed or a request on
//! it failed), and `fresh` clients that open a new connection for every request, so each one
//! crosses accept. They send `GET /load` (or [`LoadBuilder::path`]) until the load is finished or
//! dropped.
//!
//! A success is a `200` naming the mock upstream that answered in `x-upstream` (every mock
//! upstream does) and passing the caller's [`LoadBuilder::check`] on the response headers, if
//! any. Successes are counted by kind of client and by upstream; every failure (connect,
//! transport, timeout, another status, a failed check) is counted and the first few are kept with
//! their status, `x-weir-error` and body. Connects and requests are bounded by [`TIMEOUT`]; a
//! failure is recorded, never panicked on, so one shows in the test's own words: every wait here
//! ([`Load::progress`], [`Load::wait_served`]) fails at once on a failure, and
//! [`Load::finish`] panics naming the phase.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::client::{Body, body_empty};
use crate::{TIMEOUT, eventually, within};

/// How many failures keep their description (all are counted).
const KEPT_FAILURES: usize = 20;

/// A check on a `200`'s response headers: `Err(why)` makes the request a failure.
type Check = Arc<dyn Fn(&HeaderMap) -> Result<(), String> + Send + Sync>;

/// What [`Load::on`] starts: set with its methods, spawned by [`LoadBuilder::start`].
#[must_use = "a load runs only once started"]
pub struct LoadBuilder {
    addr: SocketAddr,
    keep_alive: usize,
    fresh: usize,
    path: String,
    check: Option<Check>,
}

impl LoadBuilder {
    /// Clients each keeping one connection open (default 4).
    pub fn keep_alive(mut self, n: usize) -> LoadBuilder {
        self.keep_alive = n;
        self
    }

    /// Clients opening a new connection for every request (default 0).
    pub fn fresh(mut self, n: usize) -> LoadBuilder {
        self.fresh = n;
        self
    }

    /// The path requested (default `/load`).
    pub fn path(mut self, path: &str) -> LoadBuilder {
        self.path = path.to_owned();
        self
    }

    /// A further condition on a `200`'s headers for it to count as a success; its `Err` is kept
    /// in the failure's description.
    pub fn check(
        mut self,
        check: impl Fn(&HeaderMap) -> Result<(), String> + Send + Sync + 'static,
    ) -> LoadBuilder {
        self.check = Some(Arc::new(check));
        self
    }

    /// Spawns the clients (on the current tokio runtime); they run until [`Load::finish`] or the
    /// load is dropped.
    pub fn start(self) -> Load {
        assert!(self.keep_alive + self.fresh > 0, "a load without clients");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let target = Arc::new(Target {
            addr: self.addr,
            path: self.path,
            check: self.check,
        });
        let tasks = (0..self.keep_alive + self.fresh)
            .map(|i| {
                let kind = if i < self.keep_alive {
                    Kind::KeepAlive
                } else {
                    Kind::Fresh
                };
                tokio::spawn(client(kind, target.clone(), stop.clone(), stats.clone()))
            })
            .collect();
        Load { stop, stats, tasks }
    }
}

/// Successful requests of a [`Load`] by kind of client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// By the keep-alive clients.
    pub keep_alive: u64,
    /// By the clients that open a new connection for every request.
    pub fresh: u64,
}

impl Counts {
    /// All successful requests.
    pub fn total(&self) -> u64 {
        self.keep_alive + self.fresh
    }

    /// What succeeded since `before` (counts taken earlier from the same load).
    pub fn since(&self, before: Counts) -> Counts {
        Counts {
            keep_alive: self.keep_alive - before.keep_alive,
            fresh: self.fresh - before.fresh,
        }
    }
}

/// Clients sending requests to one address until finished (see the module docs). Dropping it
/// stops them after their current request.
pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// A load on `addr`: 4 keep-alive clients, none opening a connection per request, `GET /load`,
    /// no check beyond a `200` with an `x-upstream`.
    pub fn on(addr: SocketAddr) -> LoadBuilder {
        LoadBuilder {
            addr,
            keep_alive: 4,
            fresh: 0,
            path: "/load".to_owned(),
            check: None,
        }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.counts().total()
    }

    /// Successful requests so far, by kind of client.
    pub fn counts(&self) -> Counts {
        Counts {
            keep_alive: self.stats.keep_alive_ok.load(Relaxed),
            fresh: self.stats.fresh_ok.load(Relaxed),
        }
    }

    /// Successful requests the upstream at `up` answered so far.
    pub fn served_by(&self, up: SocketAddr) -> u64 {
        let by = self.stats.by_upstream.lock().unwrap();
        by.get(&up.to_string()).copied().unwrap_or(0)
    }

    /// The upstreams (`x-upstream`) that answered a successful request since the last call (since
    /// the start, the first time).
    pub fn take_seen(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.stats.seen.lock().unwrap())
    }

    /// Panics, naming `phase`, if any request failed so far.
    #[track_caller]
    pub fn assert_no_failures(&self, phase: &str) {
        let failed = self.stats.failed.load(Relaxed);
        if failed > 0 {
            let kept = self.stats.failures.lock().unwrap();
            panic!(
                "{phase}: {failed} of the load's requests failed ({} succeeded), first ones: \
                 {:#?}",
                self.ok(),
                &kept[..kept.len().min(5)]
            );
        }
    }

    /// Waits until `n` more requests have succeeded than now; panics at once on a failure.
    pub async fn progress(&self, n: u64) {
        let want = self.ok() + n;
        eventually(&format!("{want} successful load requests"), async || {
            self.assert_no_failures("while waiting for the load to progress");
            match self.ok() {
                ok if ok >= want => Ok(()),
                ok => Err(ok),
            }
        })
        .await;
    }

    /// Waits until the upstream at `up` has answered at least `n` of the load's requests in all;
    /// panics at once on a failure.
    pub async fn wait_served(&self, up: SocketAddr, n: u64) {
        eventually(&format!("{up} to answer {n} load requests"), async || {
            self.assert_no_failures("while waiting for an upstream to serve");
            match self.served_by(up) {
                s if s >= n => Ok(()),
                s => Err(s),
            }
        })
        .await;
    }

    /// Stops the clients and waits for them (each after its current request); panics, naming
    /// `phase`, if any request failed or a client panicked. Returns what succeeded.
    pub async fn finish(mut self, phase: &str) -> Counts {
        self.stop.store(true, Relaxed);
        for t in self.tasks.drain(..) {
            if let Err(e) = within("a load client to stop", t).await {
                self.stats.fail(format!("load client task: {e}"));
            }
        }
        self.assert_no_failures(phase);
        self.counts()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

#[derive(Default)]
struct Stats {
    keep_alive_ok: AtomicU64,
    fresh_ok: AtomicU64,
    /// Successful requests by their `x-upstream`.
    by_upstream: Mutex<HashMap<String, u64>>,
    /// `x-upstream`s of successful requests since the last [`Load::take_seen`].
    seen: Mutex<BTreeSet<String>>,
    failed: AtomicU64,
    /// The first [`KEPT_FAILURES`] failures' descriptions.
    failures: Mutex<Vec<String>>,
}

impl Stats {
    fn succeeded(&self, kind: Kind, up: String) {
        match kind {
            Kind::KeepAlive => &self.keep_alive_ok,
            Kind::Fresh => &self.fresh_ok,
        }
        .fetch_add(1, Relaxed);
        *self
            .by_upstream
            .lock()
            .unwrap()
            .entry(up.clone())
            .or_default() += 1;
        self.seen.lock().unwrap().insert(up);
    }

    fn fail(&self, what: String) {
        let mut kept = self.failures.lock().unwrap();
        if kept.len() < KEPT_FAILURES {
            kept.push(what);
        }
        // Counted under the lock: whoever reads the count finds its description kept.
        self.failed.fetch_add(1, Relaxed);
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    KeepAlive,
    Fresh,
}

/// Where and what a load's clients request.
struct Target {
    addr: SocketAddr,
    path: String,
    check: Option<Check>,
}

/// One client: requests until `stop`, on one connection (kept while it lasts) or a new one each.
async fn client(kind: Kind, target: Arc<Target>, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let mut conn: Option<http1::SendRequest<Body>> = None;
    while !stop.load(Relaxed) {
        let send = match &mut conn {
            Some(send) if matches!(kind, Kind::KeepAlive) && !send.is_closed() => send,
            _ => match connect(target.addr).await {
                Ok(send) => conn.insert(send),
                Err(e) => {
                    stats.fail(format!("{kind:?}: {e}"));
                    conn = None;
                    continue;
                }
            },
        };
        match request(send, &target).await {
            Ok(up) => stats.succeeded(kind, up),
            Err(e) => {
                stats.fail(format!("{kind:?}: {e}"));
                conn = None;
            }
        }
    }
}

/// A new HTTP/1.1 connection to `addr`, bounded by [`TIMEOUT`].
async fn connect(addr: SocketAddr) -> Result<http1::SendRequest<Body>, String> {
    let open = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (send, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    };
    tokio::time::timeout(TIMEOUT, open)
        .await
        .unwrap_or_else(|_| Err(format!("connect timed out after {TIMEOUT:?}")))
}

/// One request, read to its end: `Ok(x-upstream)` for a success, `Err(what happened)` otherwise.
/// Bounded by [`TIMEOUT`].
async fn request(send: &mut http1::SendRequest<Body>, target: &Target) -> Result<String, String> {
    let exchange = async {
        send.ready().await.map_err(|e| format!("ready: {e:?}"))?;
        let req = Request::get(&*target.path)
            .header(http::header::HOST, target.addr.to_string())
            .body(body_empty())
            .unwrap();
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e:?}"))?;
        let (parts, body) = resp.into_parts();
        let header = |n: &str| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (up, error) = (header("x-upstream"), header("x-weir-error"));
        let status = parts.status;
        let body = body.collect().await.map_err(|e| {
            format!("{status} (x-weir-error {error:?}, x-upstream {up:?}): body failed: {e:?}")
        })?;
        let checked = match (&up, &target.check) {
            _ if status != StatusCode::OK => Err("not a 200".to_owned()),
            (None, _) => Err("no x-upstream".to_owned()),
            (Some(_), Some(check)) => check(&parts.headers),
            (Some(_), None) => Ok(()),
        };
        match (checked, up) {
            (Ok(()), Some(up)) => Ok(up),
            (checked, up) => Err(format!(
                "{status} (x-weir-error {error:?}, x-upstream {up:?}): {}: {}",
                checked.err().unwrap_or_default(),
                String::from_utf8_lossy(&body.to_bytes())
            )),
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no response within {TIMEOUT:?}")))
}

#[cfg(test)]
mod tests {
    //! The load against echo servers directly (no weir): what counts, what fails.

    use super::*;
    use crate::EchoServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_successes_by_kind_and_upstream_and_takes_what_was_seen() {
        let (a, b) = (EchoServer::start().await, EchoServer::start().await);
        let load_a = Load::on(a.addr).keep_alive(2).fresh(1).start();
        let load_b = Load::on(b.addr).start();
        load_a.wait_served(a.addr, 50).await;
        load_b.progress(50).await;
        assert_eq!(load_a.served_by(b.addr), 0);
        assert_eq!(load_a.take_seen(), BTreeSet::from([a.addr.to_string()]));
        assert_eq!(load_b.take_seen(), BTreeSet::from([b.addr.to_string()]));
        let counts = load_a.finish("a").await;
        assert!(counts.keep_alive > 0 && counts.fresh > 0, "{counts:?}");
        // New connections: one per fresh request, a few for the keep-alive clients.
        assert!(a.accepts() as u64 >= counts.fresh, "{counts:?}");
        assert_eq!(load_b.finish("b").await.fresh, 0);
    }

    #[tokio::test]
    async fn another_status_is_a_failure_named_by_the_phase() {
        let up = EchoServer::start().await;
        let load = Load::on(up.addr).fresh(1).path("/status/503").start();
        eventually("a failure", async || {
            match load.stats.failed.load(Relaxed) {
                0 => Err(0),
                n => Ok(n),
            }
        })
        .await;
        let err = tokio::spawn(load.finish("the phase")).await.unwrap_err();
        let msg = *err.into_panic().downcast::<String>().unwrap();
        assert!(
            msg.starts_with("the phase: ") && msg.contains("503") && msg.contains("not a 200"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_failed_check_is_a_failure_with_its_reason() {
        let up = EchoServer::start().await;
        let load = Load::on(up.addr)
            .keep_alive(1)
            .check(|h| match h.get("x-v") {
                Some(_) => Ok(()),
                None => Err("no x-v".to_owned()),
            })
            .start();
        eventually("a failure", async || {
            match load.stats.failed.load(Relaxed) {
                0 => Err(0),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(load.ok(), 0);
        let kept = load.stats.failures.lock().unwrap()[0].clone();
        assert!(kept.contains("200") && kept.contains("no x-v"), "{kept}");
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_failure_not_a_panic() {
        let load = Load::on(crate::closed_port())
            .keep_alive(1)
            .fresh(1)
            .start();
        eventually("failures", async || match load.stats.failed.load(Relaxed) {
            n if n >= 2 => Ok(n),
            n => Err(n),
        })
        .await;
        let kept = load.stats.failures.lock().unwrap().clone();
        assert!(kept.len() <= KEPT_FAILURES, "{}", kept.len());
        assert!(kept.iter().all(|f| f.contains("connect")), "{kept:#?}");
    }
}
