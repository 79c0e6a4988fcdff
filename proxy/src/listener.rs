//! Listeners: one `SO_REUSEPORT` socket per listener per worker (the kernel spreads connections
//! across workers), an accept loop that honours the connection limit without busy-looping, and
//! the per-listener settings every connection of it shares.
//!
//! Listeners are live. The control plane publishes each as a [`ListenerVersion`]; a version
//! that moves the listener (or a new listener) carries sockets bound on the control thread
//! before the change is published, so a bind failure refuses the change and the address is
//! listening before the admin call answers. A worker starts an accept loop on its socket, and
//! stops the old one only then; a version that only changes settings (TLS, limits, default
//! cluster) swaps the accept loop's [`ListenerCtx`], so new connections get the new settings
//! and established ones keep theirs. A removed listener stops accepting at once and its
//! connections drain: busy ones end after their current request, and whatever is left after
//! `drain_timeout` is closed.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
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

/// One version of a listener, as the control plane publishes it.
pub struct ListenerVersion {
    pub config: ListenerConfig,
    /// Its stable id (also its first metric slot): generations and connections find it by this.
    pub id: usize,
    pub name: Arc<str>,
    /// The address it listens on (the bound port when the manifest says 0).
    pub local: SocketAddr,
    /// Sockets bound for this version, one per worker, each taken by its worker; `None` when the
    /// version keeps the sockets of the one before (same address).
    sockets: Option<Mutex<Vec<Option<std::net::TcpListener>>>>,
    pub tls: Option<Arc<ServerTls>>,
    /// The generation that made this version (`/config_dump`, `/listeners`).
    pub generation: u64,
}

impl ListenerVersion {
    /// A version; `sockets` are freshly bound (one per worker), or `None` with `local` the
    /// address the previous version's sockets listen on.
    pub fn new(
        config: ListenerConfig,
        id: usize,
        local: SocketAddr,
        sockets: Option<Vec<std::net::TcpListener>>,
        tls: Option<Arc<ServerTls>>,
        generation: u64,
    ) -> Self {
        Self {
            name: Arc::from(config.name.as_str()),
            config,
            id,
            local,
            sockets: sockets.map(|s| Mutex::new(s.into_iter().map(Some).collect())),
            tls,
            generation,
        }
    }

    /// Whether this version listens on sockets of its own (new, or moved).
    pub fn rebinds(&self) -> bool {
        self.sockets.is_some()
    }

    /// Worker `w`'s socket (once).
    pub fn take_socket(&self, w: usize) -> Option<std::net::TcpListener> {
        let mut s = self
            .sockets
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        s.get_mut(w)?.take()
    }
}

/// What every connection of one listener on one worker shares.
pub struct ListenerCtx {
    pub name: Arc<str>,
    pub limits: ListenerLimits,
    /// The bound address (for `destination.*` properties).
    pub local: SocketAddr,
    /// The listener's stable id (its first metric slot; the generation's chain and default
    /// cluster for it are looked up by this).
    pub id: usize,
    /// The HTTP/1.1 head limits (Weir's own server).
    pub h1: crate::proto::h1::head::Parser,
    /// hyper's HTTP/2 server settings, built once.
    pub h2: http2::Builder<LocalExec>,
    /// TLS termination (shared by every worker; its material rotates on its own).
    pub tls: Option<Arc<ServerTls>>,
    /// This worker's share of `max_connections`.
    max_conns: usize,
    /// Connections open on this worker, shared by the contexts a settings change swaps in (so
    /// `max_connections` counts the connections of the old settings too).
    count: Rc<ConnCount>,
}

impl ListenerCtx {
    pub fn new(
        cfg: &ListenerConfig,
        id: usize,
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
            name: Arc::from(cfg.name.as_str()),
            limits: l.clone(),
            local,
            id,
            h1: crate::proto::h1::head::Parser::new(
                l.max_request_headers,
                l.max_request_headers_size,
                l.max_uri_length,
            ),
            h2,
            tls,
            max_conns: l.max_connections.div_ceil(workers).max(1),
            count: Rc::default(),
        }
    }
}

/// A listener's open connections on one worker, and the signal that one closed.
#[derive(Default)]
struct ConnCount {
    open: Cell<usize>,
    released: Notify,
}

impl ListenerCtx {
    /// These settings, counting connections together with `old`'s (a settings change on the
    /// same sockets).
    pub fn counting_with(mut self, old: &ListenerCtx) -> Self {
        self.count = old.count.clone();
        self
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
        listener.count.open.set(listener.count.open.get() + 1);
        worker.conn_opened();
        worker.telemetry.connection_opened(listener.id);
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
            .connection_closed(self.listener.id, self.ctl.bytes());
        let c = &self.listener.count;
        c.open.set(c.open.get() - 1);
        c.released.notify_one();
        self.worker.conn_closed();
    }
}

/// The settings a listener's accept loop gives new connections; the worker swaps them when a
/// new version of the listener changes settings but not its address.
pub type CurrentCtx = Rc<RefCell<Rc<ListenerCtx>>>;

/// Accepts connections until the worker drains (or the worker aborts the loop: the listener was
/// removed or moved); dropping the socket then refuses new ones. Connections get `conn_drain`'s
/// signal, which the loop raises when the worker drains, and are known to the watchdog by `key`
/// (this loop's).
pub async fn accept_loop(
    listener: TcpListener,
    current: CurrentCtx,
    worker: Rc<WorkerCtx>,
    (mut drain, conn_drain): (watch::Receiver<bool>, Rc<watch::Sender<bool>>),
    key: usize,
) {
    let _raise = RaiseOnDrop(conn_drain.clone(), drain.clone());
    loop {
        let ctx = current.borrow().clone();
        // At the limit: wait for a slot rather than accept and drop (no busy loop).
        while ctx.count.open.get() >= ctx.max_conns {
            tokio::select! {
                _ = ctx.count.released.notified() => {}
                _ = drain.changed() => return,
            }
        }
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    // The settings in force now (a reload may have swapped them while this
                    // loop waited).
                    let ctx = current.borrow().clone();
                    let ctl = Rc::new(ConnCtl::new());
                    let slot = ConnSlot::new(ctx.clone(), worker.clone(), ctl.clone());
                    let (c, w, d) = (ctx.clone(), worker.clone(), conn_drain.subscribe());
                    let task_ctl = ctl.clone();
                    let task = tokio::task::spawn_local(async move {
                        let _slot = slot;
                        crate::conn::serve(crate::conn::Accepted::Tcp(stream), peer, w, c, d, task_ctl)
                            .await;
                    });
                    worker.watchdog.watch(ctl, task.abort_handle(), &ctx.limits, key);
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

/// Raises a listener's connection drain signal when its accept loop ends because the worker
/// drains (a loop aborted by the worker leaves the signal to the worker).
struct RaiseOnDrop(Rc<watch::Sender<bool>>, watch::Receiver<bool>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        if *self.1.borrow() {
            let _ = self.0.send(true);
        }
    }
}
