//! Listeners: one `SO_REUSEPORT` socket per listener per worker (the kernel spreads connections
//! across workers), an accept loop that honours the connection limit without busy-looping, and
//! the per-listener settings every connection of it shares.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::TokioTimer;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::config::{ListenerConfig, ListenerLimits};
use crate::conn::ConnCtl;
use crate::rt::LocalExec;
use crate::tls::ServerTls;
use crate::worker::WorkerCtx;

/// Binds `n` sockets to `addr` with `SO_REUSEPORT`. With port 0 the first socket picks the port
/// and the others join it, so every worker serves the same address.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        // Accepted sockets inherit TCP_NODELAY on Linux: one syscall per listener, not per connection.
        s.set_tcp_nodelay(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        if i == 0 {
            addr = s
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("bound socket has no inet address"))?;
        }
        out.push(s.into());
    }
    Ok(out)
}

/// What every connection of one listener on one worker shares.
pub struct ListenerCtx {
    pub name: String,
    /// Index into the worker's clusters.
    pub default_cluster: usize,
    pub limits: ListenerLimits,
    /// The bound address (for `destination.*` properties).
    pub local: SocketAddr,
    /// Index into `Config::listeners` (the generation's chain for it is looked up by this).
    pub index: usize,
    /// The HTTP/1.1 head limits (Weir's own server).
    pub h1: crate::proto::h1::head::Parser,
    /// hyper's HTTP/2 server settings, built once.
    pub h2: http2::Builder<LocalExec>,
    /// TLS termination (shared by every worker; its material rotates on its own).
    pub tls: Option<Arc<ServerTls>>,
    /// This worker's share of `max_connections`.
    max_conns: usize,
    conns: Cell<usize>,
    released: Notify,
}

impl ListenerCtx {
    pub fn new(
        cfg: &ListenerConfig,
        index: usize,
        workers: usize,
        local: SocketAddr,
        tls: Option<Arc<ServerTls>>,
    ) -> Self {
        let l = &cfg.limits;
        let mut h2 = http2::Builder::new(LocalExec);
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(l.h2_max_concurrent_streams)
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(1 << 20)
            .max_header_list_size(l.max_request_headers_size as u32)
            .max_pending_accept_reset_streams(Some(50))
            .max_local_error_reset_streams(Some(256));
        Self {
            name: cfg.name.clone(),
            default_cluster: cfg.default_cluster,
            limits: l.clone(),
            local,
            index,
            h1: crate::proto::h1::head::Parser::new(
                l.max_request_headers,
                l.max_request_headers_size,
                l.max_uri_length,
            ),
            h2,
            tls,
            max_conns: l.max_connections.div_ceil(workers).max(1),
            conns: Cell::new(0),
            released: Notify::new(),
        }
    }
}

/// Counts a connection against its listener and worker, and keeps it in the worker's watchdog,
/// until dropped (when its task ends or is aborted).
struct ConnSlot {
    listener: Rc<ListenerCtx>,
    worker: Rc<WorkerCtx>,
    ctl: Rc<ConnCtl>,
}

impl ConnSlot {
    fn new(listener: Rc<ListenerCtx>, worker: Rc<WorkerCtx>, ctl: Rc<ConnCtl>) -> Self {
        listener.conns.set(listener.conns.get() + 1);
        worker.conn_opened();
        worker.telemetry.connection_opened(listener.index);
        Self {
            listener,
            worker,
            ctl,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.worker.watchdog.forget(&self.ctl);
        self.worker
            .telemetry
            .connection_closed(self.listener.index, self.ctl.bytes());
        self.listener.conns.set(self.listener.conns.get() - 1);
        self.listener.released.notify_one();
        self.worker.conn_closed();
    }
}

/// Accepts connections until the drain signal; dropping the socket then refuses new ones.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Rc<ListenerCtx>,
    worker: Rc<WorkerCtx>,
    mut drain: watch::Receiver<bool>,
) {
    loop {
        // At the limit: wait for a slot rather than accept and drop (no busy loop).
        while ctx.conns.get() >= ctx.max_conns {
            tokio::select! {
                _ = ctx.released.notified() => {}
                _ = drain.changed() => return,
            }
        }
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let ctl = Rc::new(ConnCtl::new());
                    let slot = ConnSlot::new(ctx.clone(), worker.clone(), ctl.clone());
                    let (c, w, d) = (ctx.clone(), worker.clone(), drain.clone());
                    let task_ctl = ctl.clone();
                    let task = tokio::task::spawn_local(async move {
                        let _slot = slot;
                        crate::conn::serve(crate::conn::Accepted::Tcp(stream), peer, w, c, d, task_ctl)
                            .await;
                    });
                    worker.watchdog.watch(ctl, task.abort_handle(), &ctx.limits);
                }
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning on the error.
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = drain.changed() => return,
        }
    }
}
