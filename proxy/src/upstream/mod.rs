//! Upstream side of the data path, per worker: clusters, endpoint selection, pooled connections.
//!
//! Everything here lives on one worker thread (`Rc`, `Cell`): a stream never leaves its worker, so
//! no lock or atomic is needed on the request path.

pub mod balance;
pub mod client;
pub mod connect;
pub mod h1;
pub mod pool;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::config::{ClusterConfig, LbPolicy, Protocol};

pub use client::send;

/// A cluster as one worker sees it.
pub struct Cluster {
    pub name: String,
    /// Position in `Config::clusters`.
    pub index: usize,
    pub protocol: Protocol,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub endpoints: Vec<Rc<Endpoint>>,
    /// TLS origination (shared by every worker; its material rotates on its own).
    pub tls: Option<std::sync::Arc<crate::tls::ClientTls>>,
    /// Round-robin cursor.
    rr: Cell<usize>,
}

/// One upstream address with this worker's pool and load figure for it.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Position in its cluster's endpoints (the same on every worker).
    pub index: usize,
    /// Requests in flight from this worker (least-request balancing).
    pub active: Cell<u32>,
    pub pool: pool::Pool,
}

impl Cluster {
    /// Builds a worker's view of a cluster over resolved endpoint addresses.
    pub fn new(
        cfg: &ClusterConfig,
        addrs: &[SocketAddr],
        tls: Option<std::sync::Arc<crate::tls::ClientTls>>,
    ) -> Self {
        Self {
            name: cfg.name.clone(),
            index: cfg.index,
            protocol: cfg.protocol,
            lb: cfg.lb,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            endpoints: addrs
                .iter()
                .enumerate()
                .map(|(index, &addr)| {
                    Rc::new(Endpoint {
                        addr,
                        index,
                        active: Cell::new(0),
                        pool: pool::Pool::new(cfg.pool_max_idle, cfg.pool_idle_timeout),
                    })
                })
                .collect(),
            tls,
            rr: Cell::new(fastrand::usize(..)),
        }
    }
}
