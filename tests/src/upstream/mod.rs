//! Mock upstreams on `127.0.0.1:0`: a hyper echo server (h1 + h2c, gRPC-style replies with
//! trailers, upgrades echoing bytes), misbehaving raw TCP servers, a server whose misbehaviour the
//! test turns on and off while it runs (resets, statuses, delays, stalls, a health endpoint), a
//! listener whose connects hang, and a closed port. Each records what it received so tests can
//! wait on arrivals.

mod control;
mod echo;
mod faulty;

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri, Version};
use tokio::sync::watch;

pub use control::{ControlledServer, HEALTH_PATH, Seen};
pub use echo::EchoServer;
pub use faulty::{BlackholeListener, Fault, FaultyServer};

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Request method.
    pub method: Method,
    /// Request target as received.
    pub uri: Uri,
    /// HTTP version of the upstream connection.
    pub version: Version,
    /// Request headers as received.
    pub headers: HeaderMap,
    /// Request body (empty for streamed requests, which are recorded at their head).
    pub body: Bytes,
    /// Request trailers, if any.
    pub trailers: Option<HeaderMap>,
    /// Index of the upstream connection it came on (0 = first accepted).
    pub conn: usize,
    /// The connecting peer (weir's side of the upstream connection).
    pub peer: SocketAddr,
}

impl Recorded {
    /// A request header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A list that grows and can be awaited on its length.
pub(crate) struct Counted<T> {
    items: Mutex<Vec<T>>,
    len: watch::Sender<usize>,
}

impl<T: Clone> Counted<T> {
    pub(crate) fn new() -> Counted<T> {
        Counted {
            items: Mutex::new(Vec::new()),
            len: watch::channel(0).0,
        }
    }

    pub(crate) fn push(&self, item: T) {
        let mut items = self.items.lock().unwrap();
        items.push(item);
        let n = items.len();
        drop(items);
        self.len.send_replace(n);
    }

    pub(crate) fn snapshot(&self) -> Vec<T> {
        self.items.lock().unwrap().clone()
    }

    pub(crate) fn len(&self) -> usize {
        *self.len.borrow()
    }

    /// Waits (bounded by [`crate::TIMEOUT`]) until at least `n` items exist; returns them all.
    pub(crate) async fn wait_len(&self, n: usize, what: &str) -> Vec<T> {
        let mut rx = self.len.subscribe();
        crate::within(what, rx.wait_for(|len| *len >= n))
            .await
            .expect("sender alive");
        self.snapshot()
    }
}

/// An address on which nothing listens: bound to port 0, then closed, so connects are refused.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap()
}
