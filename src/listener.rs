//! The accept loop: one per listening address.
//!
//! It admits connections under `max_connections` (all listeners together)
//! and gives each its own task, so a fault in one session can never stop the
//! guard. A connection over the limit is closed at once, without reading.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

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
            let block = Block::new(
                Stage::Handshake,
                Reason::TooManyConnections,
                format!(
                    "{} connections already open",
                    guard.config.server.max_connections
                ),
            );
            report::blocked(&guard.metrics, peer, &block);
            drop(stream);
            continue;
        };
        let guard = guard.clone();
        tokio::spawn(async move {
            session::handle(guard, stream, peer).await;
            drop(permit);
        });
    }
}
