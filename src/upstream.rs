//! Opening the connection to an origin, only once a client has earned it.
//!
//! Servers of an upstream are tried round robin; one that refuses or times
//! out is skipped and the next is tried, each within the upstream's
//! `connect_timeout` (TCP connect and RTMP handshake together). The guard
//! handshakes with the origin itself, as an RTMP client, and then relays the
//! client's chunk stream verbatim, starting with the client's own `connect`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config;
use crate::metrics::{upstream_kind, Metrics};
use crate::rtmp::handshake::ClientHandshake;

/// A connected, handshaken upstream.
pub struct Connected {
    pub stream: TcpStream,
    /// Bytes the server sent after S2: the start of its chunk stream.
    pub leftover: Vec<u8>,
}

/// Why no server of an upstream could be used.
#[derive(Debug)]
pub struct Unreachable {
    pub kind: &'static str,
    pub detail: String,
}

/// Round-robin position, one per configured upstream.
#[derive(Debug, Default)]
pub struct RoundRobin(AtomicUsize);

impl RoundRobin {
    /// The order in which to try `n` servers this time.
    pub fn order(&self, n: usize) -> impl Iterator<Item = usize> {
        let start = self.0.fetch_add(1, Ordering::Relaxed);
        (0..n).map(move |i| start.wrapping_add(i) % n.max(1))
    }
}

/// Connects to the first server of `up` that accepts and handshakes.
/// `proxy_header` (possibly empty) is sent first, before C0+C1.
pub async fn connect(
    up: &config::Upstream,
    rr: &RoundRobin,
    proxy_header: &[u8],
    metrics: &Metrics,
) -> Result<Connected, Unreachable> {
    let mut last = Unreachable {
        kind: upstream_kind::CONNECT_REFUSED,
        detail: "no servers".into(),
    };
    for i in rr.order(up.servers.len()) {
        let Some(server) = up.servers.get(i) else {
            continue;
        };
        let started = Instant::now();
        let failure = match timeout(up.connect_timeout, attempt(server, proxy_header)).await {
            Ok(Ok((stream, leftover))) => {
                metrics
                    .upstream_connect_duration
                    .observe(started.elapsed().as_secs_f64());
                return Ok(Connected { stream, leftover });
            }
            Ok(Err(failure)) => failure,
            Err(_) => Unreachable {
                kind: upstream_kind::CONNECT_TIMEOUT,
                detail: format!("{server}: no answer within {:?}", up.connect_timeout),
            },
        };
        metrics.upstream_error(&up.name, failure.kind);
        last = failure;
    }
    Err(last)
}

/// One server: TCP connect, then the RTMP handshake as a client.
async fn attempt(server: &str, proxy_header: &[u8]) -> Result<(TcpStream, Vec<u8>), Unreachable> {
    let mut stream = TcpStream::connect(server).await.map_err(|e| Unreachable {
        kind: upstream_kind::CONNECT_REFUSED,
        detail: format!("{server}: {e}"),
    })?;
    let _ = stream.set_nodelay(true);
    let failed = |detail: String| Unreachable {
        kind: upstream_kind::HANDSHAKE_FAILED,
        detail: format!("{server}: {detail}"),
    };
    let (mut hs, c0c1) = ClientHandshake::start().map_err(|e| failed(e.to_string()))?;
    let mut first = proxy_header.to_vec();
    first.extend_from_slice(&c0c1);
    stream
        .write_all(&first)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if n == 0 {
            return Err(failed("closed during handshake".into()));
        }
        let input = buf.get(..n).unwrap_or_default();
        let step = hs.feed(input).map_err(|e| failed(e.to_string()))?;
        if step.done {
            stream
                .write_all(&step.response)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let leftover = input.get(step.consumed..).unwrap_or_default().to_vec();
            return Ok((stream, leftover));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_server_starting_from_the_next() {
        let rr = RoundRobin::default();
        assert_eq!(rr.order(3).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(rr.order(3).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(rr.order(3).collect::<Vec<_>>(), vec![2, 0, 1]);
        assert_eq!(rr.order(0).count(), 0);
    }
}
