//! The accept stage: one loop per listening address.
//!
//! The RTMP and the RTMPS listeners share it: admission comes first on
//! both, so a refused address costs no TLS handshake.
//!
//! Admission starts here, before a byte is read: `max_connections` (all
//! listeners together), then the admit stage's address rules, bans and
//! per-prefix limits.
//! Refused sockets are taken with a raw accept(2) and reset at once, never
//! registered with the async reactor, so a flood of refusals costs two
//! system calls each. Admitted ones get their own task, on the worker
//! thread running the fewest sessions ([`crate::workers`]), so a fault in
//! one session can never stop the guard.
//!
//! A refusal here is audited like any other, and the audit log never drops
//! a line: if its queue is full, the accept loop awaits room before it
//! accepts again. That wait is async (the worker thread runs other tasks
//! meanwhile), and it is the back-pressure a disk slower than the flood
//! needs: the kernel's backlog holds or refuses the excess, and memory
//! stays bounded.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::admit;
use crate::connection::ClientAddr;
use crate::guard::Guard;
use crate::report;
use crate::session::{self, Start};
use crate::transport::Kind;
use crate::verdict::{Block, Reason, Stage};

/// Pending-connection queue requested from the kernel (capped by
/// net.core.somaxconn).
const BACKLOG: i32 = 4096;

/// A bound, listening, non-blocking socket, and what its clients speak.
pub struct Listener {
    inner: StdListener,
    kind: Kind,
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Binds every address of `[server] listen` (`Kind::Rtmp`) or `[tls]
/// listen` (`Kind::Rtmps`).
pub fn bind(addrs: &[SocketAddr], kind: Kind) -> std::io::Result<Vec<Listener>> {
    addrs
        .iter()
        .map(|addr| {
            bind_one(*addr, kind)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        })
        .collect()
}

fn bind_one(addr: SocketAddr, kind: Kind) -> std::io::Result<Listener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // "[::]" serves IPv4 too, as operators expect.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(Listener {
        inner: socket.into(),
        kind,
    })
}

/// Accepts connections forever.
pub async fn accept_loop(listener: Listener, guard: Arc<Guard>) {
    let kind = listener.kind;
    // SAFETY: the AsyncFd takes ownership of the std listener, so its fd
    // stays open and unchanged until the AsyncFd is dropped, and
    // `as_raw_fd` always returns that same fd.
    let registered = unsafe { AsyncFd::register_with_interest(listener.inner, Interest::READABLE) };
    let listener = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the listening socket");
            return;
        }
    };
    loop {
        let mut ready = match listener.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!(error = %e, "listener failed");
                return;
            }
        };
        // Drain the accept queue, then wait for readiness again.
        loop {
            match ready.get_inner().accept() {
                Ok((stream, peer)) => {
                    on_accept(&guard, stream, peer, kind).await;
                    // A raw accept spends none of tokio's budget: without
                    // this, a flood would keep this loop from ever giving
                    // the thread back to signals, metrics and the admin API.
                    tokio::task::coop::consume_budget().await;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
}

/// Admits or refuses one accepted connection. Waits only when a refusal
/// finds the audit queue full.
async fn on_accept(guard: &Arc<Guard>, stream: StdStream, peer: SocketAddr, kind: Kind) {
    guard.metrics.connections_total.inc();
    let client = ClientAddr::new(peer);
    // The config this connection is judged by, from accept to close.
    let config = guard.config.load();
    let Ok(permit) = guard.connections.clone().try_acquire_owned() else {
        let detail = format!("{} connections already open", config.server.max_connections);
        let block = Block::new(Stage::Accept, Reason::TooManyConnections, detail).always();
        report::refuse(guard, &config, client, &block).await;
        close_now(stream);
        return;
    };
    // A trusted load balancer names the real client in its PROXY header;
    // the session admits that address once it has read it. Until then the
    // connection still counts against max_pending.
    let start = if guard.admission.is_trusted_proxy(client.ip()) {
        let (slot, overloaded) = guard.admission.reserve_pending();
        if overloaded {
            let block = Block::new(
                Stage::Accept,
                Reason::Overloaded,
                "trusted proxy connection shed",
            )
            .always();
            report::refuse(guard, &config, client, &block).await;
            close_now(stream);
            return;
        }
        Start::ProxyHeader(slot)
    } else {
        match admit::admit(guard, &config, client, None).await {
            Some(ticket) => Start::Admitted(ticket),
            None => {
                close_now(stream);
                return;
            }
        }
    };
    let config = arc_swap::Guard::into_inner(config);
    let open = guard.hold_open();
    let session_guard = guard.clone();
    guard.workers.spawn(|seat| async move {
        let _seat = seat;
        // Registered here, on the thread that runs the session.
        let registered = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream));
        let stream = match registered {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, client = %client.ip(), client_port = client.port(), "cannot register connection");
                return;
            }
        };
        session::run(session_guard, config, stream, open, client, start, kind).await;
        drop(permit);
    });
}

/// Closes a refused connection with a reset: no lingering state, no
/// TIME_WAIT on the guard.
fn close_now(stream: StdStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
