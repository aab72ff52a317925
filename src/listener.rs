//! The accept loop: one per listening address.
//!
//! It admits connections under `max_connections` (all listeners together)
//! and gives each its own task, so a fault in one session can never stop the
//! guard. A connection over the limit is closed at once, without reading.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::admit::Ticket;
use crate::report::{self, Block, Reason, Stage};
use crate::{session, Guard};

/// Binds every `[server] listen` address.
pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Accepts connections forever.
pub async fn accept_loop(listener: TcpListener, guard: Arc<Guard>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        guard.metrics.connections_total.inc();
        let Ok(permit) = guard.connections.clone().try_acquire_owned() else {
            let detail = format!(
                "{} connections already open",
                guard.config.server.max_connections
            );
            let block = Block::new(Stage::Accept, Reason::TooManyConnections, detail).always();
            report::refuse(&guard, peer, &block);
            close_now(stream);
            continue;
        };
        // A trusted load balancer names the real client in its PROXY
        // header; the session admits that address once it has read it.
        let ticket = if guard.admission.is_trusted_proxy(peer.ip()) {
            None
        } else {
            match admit(&guard, peer) {
                Some(ticket) => Some(ticket),
                None => {
                    close_now(stream);
                    continue;
                }
            }
        };
        let guard = guard.clone();
        tokio::spawn(async move {
            session::handle(guard, stream, peer, ticket).await;
            drop(permit);
        });
    }
}

/// Runs admission for `client`. `None`: refused (and reported).
pub fn admit(guard: &Guard, client: SocketAddr) -> Option<Ticket> {
    let (ticket, refusal) = guard.admission.admit(client.ip(), Instant::now());
    if let Some(reason) = refusal {
        let block = Block::new(Stage::Accept, reason, "refused at accept");
        let block = if reason == Reason::Overloaded {
            block.always()
        } else {
            block
        };
        if report::refuse(guard, client, &block) {
            return None;
        }
    }
    Some(ticket)
}

/// Closes a refused connection with a reset: no lingering state, no
/// TIME_WAIT on the guard.
fn close_now(stream: TcpStream) {
    // Deprecated because a non-zero linger blocks on drop; zero does not.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}
