//! The upstream stage: open the connection to an origin, only once a
//! client has earned it.
//!
//! Servers of an upstream are tried round robin; one that refuses or times
//! out is skipped and the next is tried, each within the upstream's
//! `connect_timeout` (TCP connect and RTMP handshake together). The guard
//! handshakes with the origin itself, as an RTMP client; the relay then
//! sends it the client's chunk stream, starting with the client's own
//! `connect`. If no server can be reached the client is told so.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{self, ProxyProtocolOut};
use crate::connect::Route;
use crate::connection::Connection;
use crate::context::{Ctx, Stop};
use crate::guard::RoundRobin;
use crate::metrics::{upstream_kind, Metrics};
use crate::report;
use crate::rtmp::handshake::ClientHandshake;
use crate::rtmp::{proxy_protocol, reply};
use crate::transport::{Rewind, Transport};

/// A connected, handshaken origin.
pub struct Origin<S = TcpStream> {
    pub stream: S,
    /// Bytes the server sent after S2: the start of its chunk stream.
    pub leftover: Vec<u8>,
}

/// Connects to the route's upstream, sending the client's address in a
/// PROXY header if the upstream asks for one. On failure the client's
/// `connect` (transaction `transaction_id`) is answered with `_error`.
pub async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    conn: &mut Connection<S>,
    route: &Route<'_>,
    transaction_id: f64,
) -> Result<Origin<Transport>, Stop> {
    let up = route.upstream;
    let client = ctx.client.socket();
    let header = match up.proxy_protocol {
        ProxyProtocolOut::Off => Vec::new(),
        ProxyProtocolOut::V1 => proxy_protocol::encode_v1(client, ctx.local),
        ProxyProtocolOut::V2 => proxy_protocol::encode_v2(client, ctx.local),
    };
    let rr = ctx.guard.round_robin(&up.name);
    match connect(up, &rr, &header, &ctx.guard.metrics).await {
        Ok(origin) => Ok(origin),
        Err(failure) => {
            let answer = reply::connect_error(
                transaction_id,
                reply::CONNECT_FAILED,
                "upstream unavailable",
            );
            conn.send_reply(&answer).await;
            report::upstream_unreachable(ctx.client, &route.app.name, &up.name, &failure.detail);
            Err(Stop::Unreachable)
        }
    }
}

/// Why no server of an upstream could be used.
#[derive(Debug)]
pub struct Unreachable {
    pub kind: &'static str,
    pub detail: String,
}

/// Connects to the first server of `up` that accepts and handshakes.
/// `proxy_header` (possibly empty) is sent first, before C0+C1.
pub async fn connect(
    up: &config::Upstream,
    rr: &RoundRobin,
    proxy_header: &[u8],
    metrics: &Metrics,
) -> Result<Origin<Transport>, Unreachable> {
    let mut last = Unreachable {
        kind: upstream_kind::CONNECT_REFUSED,
        detail: "no servers".into(),
    };
    for i in rr.order(up.servers.len()) {
        let Some(server) = up.servers.get(i) else {
            continue;
        };
        let started = Instant::now();
        let failure = match timeout(up.connect_timeout, attempt(up, server, proxy_header)).await {
            Ok(Ok((stream, leftover))) => {
                metrics
                    .upstream_connect_duration
                    .observe(started.elapsed().as_secs_f64());
                return Ok(Origin { stream, leftover });
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

/// One server: TCP connect, TLS if the upstream speaks it, then the RTMP
/// handshake as a client. The PROXY header goes first, in the clear, as
/// HAProxy's `send-proxy` sends it.
async fn attempt(
    up: &config::Upstream,
    server: &str,
    proxy_header: &[u8],
) -> Result<(Transport, Vec<u8>), Unreachable> {
    let mut tcp = TcpStream::connect(server).await.map_err(|e| Unreachable {
        kind: upstream_kind::CONNECT_REFUSED,
        detail: format!("{server}: {e}"),
    })?;
    let _ = tcp.set_nodelay(true);
    let failed = |detail: String| Unreachable {
        kind: upstream_kind::HANDSHAKE_FAILED,
        detail: format!("{server}: {detail}"),
    };
    let (mut hs, c0c1) = ClientHandshake::start().map_err(|e| failed(e.to_string()))?;
    let mut stream = match &up.tls {
        None => Transport::Plain(tcp),
        Some(tls) => {
            if !proxy_header.is_empty() {
                tcp.write_all(proxy_header)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            }
            let name = tls
                .name_for(server)
                .ok_or_else(|| failed("no TLS server name for this address".into()))?;
            let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
            let stream = connector
                .connect(name, Rewind::new(Vec::new(), tcp))
                .await
                .map_err(|e| failed(format!("TLS: {e}")))?;
            Transport::Tls(Box::new(stream.into()))
        }
    };
    let mut first = if up.tls.is_none() {
        proxy_header.to_vec()
    } else {
        Vec::new()
    };
    first.extend_from_slice(&c0c1);
    stream
        .write_all(&first)
        .await
        .map_err(|e| failed(e.to_string()))?;
    stream.flush().await.map_err(|e| failed(e.to_string()))?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if n == 0 {
            return Err(failed("closed during handshake".into()));
        }
        let step = hs.feed(&buf).map_err(|e| failed(e.to_string()))?;
        if step.done {
            stream
                .write_all(&step.response)
                .await
                .map_err(|e| failed(e.to_string()))?;
            stream.flush().await.map_err(|e| failed(e.to_string()))?;
            let leftover = buf.split_off(step.consumed.min(buf.len()));
            return Ok((stream, leftover));
        }
    }
}
