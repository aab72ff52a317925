//! The upstream stage: open the connection to an origin, only once a
//! client has earned it.
//!
//! The upstream's pool ([`crate::pool`]) names the servers that are up
//! and not drained, in the order its `balance` gives; each is tried within
//! the upstream's `connect_timeout` (TCP connect, TLS, RTMP handshake), the
//! next one if it fails, for as long as the client's `[server]
//! connect_timeout` lasts from the start of this stage. A failure counts
//! against the server (the passive check). The guard handshakes with the
//! origin itself, as an RTMP client; the relay then sends it the client's
//! chunk stream, starting with the client's own `connect`. If no server is
//! up, or none answers, the client gets `NetConnection.Connect.Failed`:
//! an upstream error, never a client block, never scored.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};

use crate::config::{self, ProxyProtocolOut};
use crate::connect::Route;
use crate::connection::Connection;
use crate::context::{Ctx, Stop};
use crate::metrics::{upstream_kind, Metrics};
use crate::pool::{Lease, Pool};
use crate::report;
use crate::rtmp::handshake::ClientHandshake;
use crate::rtmp::{proxy_protocol, reply};
use crate::transport::{Rewind, Transport};

/// A connected, handshaken origin.
pub struct Origin<S = TcpStream> {
    pub stream: S,
    /// Bytes the server sent after S2: the start of its chunk stream.
    pub leftover: Vec<u8>,
    /// The session's place in its server's count, until the origin drops.
    pub lease: Option<Lease>,
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
    let pool = ctx.guard.pools.get(&up.name).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + ctx.config.server.connect_timeout;
    let tried = timeout_at(deadline, connect(up, &pool, &header, &ctx.guard.metrics))
        .await
        .unwrap_or_else(|_| {
            Err(Unreachable {
                kind: upstream_kind::CONNECT_TIMEOUT,
                detail: "the client's connect_timeout ran out".into(),
            })
        });
    match tried {
        Ok(origin) => Ok(origin),
        Err(failure) => {
            let answer = reply::connect_error(
                transaction_id,
                reply::CONNECT_FAILED,
                "upstream unavailable",
            );
            conn.send_reply(&answer).await;
            if failure.kind == upstream_kind::UNAVAILABLE {
                ctx.guard.metrics.upstream_error(&up.name, failure.kind);
                report::upstream_unavailable(ctx.client, &route.app.name, &up.name);
            } else {
                report::upstream_unreachable(
                    ctx.client,
                    &route.app.name,
                    &up.name,
                    &failure.detail,
                );
            }
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

/// Connects to the first server of `pool` that accepts and handshakes.
/// `proxy_header` (possibly empty) is sent first, before C0+C1.
pub async fn connect(
    up: &config::Upstream,
    pool: &Pool,
    proxy_header: &[u8],
    metrics: &Metrics,
) -> Result<Origin<Transport>, Unreachable> {
    let servers = pool.candidates(up.balance);
    let mut last = Unreachable {
        kind: upstream_kind::UNAVAILABLE,
        detail: "no server is up".into(),
    };
    for server in servers {
        let lease = server.lease();
        let started = Instant::now();
        let failure =
            match timeout(up.connect_timeout, attempt(up, &server.addr, proxy_header)).await {
                Ok(Ok((stream, leftover))) => {
                    metrics
                        .upstream_connect_duration
                        .observe(started.elapsed().as_secs_f64());
                    server.observe(up, Ok(()), false);
                    return Ok(Origin {
                        stream,
                        leftover,
                        lease: Some(lease),
                    });
                }
                Ok(Err(failure)) => failure,
                Err(_) => Unreachable {
                    kind: upstream_kind::CONNECT_TIMEOUT,
                    detail: format!("{}: no answer within {:?}", server.addr, up.connect_timeout),
                },
            };
        metrics.upstream_error(&up.name, failure.kind);
        server.observe(up, Err(failure.detail.clone()), false);
        last = failure;
    }
    Err(last)
}

/// TCP connect, the PROXY header if any (in the clear), and TLS if the
/// upstream speaks it: a stream ready for the RTMP handshake. The health
/// check dials the same way.
pub async fn dial(
    up: &config::Upstream,
    server: &str,
    proxy_header: &[u8],
) -> Result<Transport, Unreachable> {
    let mut tcp = TcpStream::connect(server).await.map_err(|e| Unreachable {
        kind: upstream_kind::CONNECT_REFUSED,
        detail: format!("{server}: {e}"),
    })?;
    let _ = tcp.set_nodelay(true);
    let failed = |detail: String| Unreachable {
        kind: upstream_kind::HANDSHAKE_FAILED,
        detail: format!("{server}: {detail}"),
    };
    if !proxy_header.is_empty() {
        tcp.write_all(proxy_header)
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    let Some(tls) = &up.tls else {
        return Ok(Transport::Plain(tcp));
    };
    let name = tls
        .name_for(server)
        .ok_or_else(|| failed("no TLS server name for this address".into()))?;
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let stream = connector
        .connect(name, Rewind::new(Vec::new(), tcp))
        .await
        .map_err(|e| failed(format!("TLS: {e}")))?;
    Ok(Transport::Tls(Box::new(stream.into())))
}

/// One server: [`dial`], then the RTMP handshake as a client.
async fn attempt(
    up: &config::Upstream,
    server: &str,
    proxy_header: &[u8],
) -> Result<(Transport, Vec<u8>), Unreachable> {
    let failed = |detail: String| Unreachable {
        kind: upstream_kind::HANDSHAKE_FAILED,
        detail: format!("{server}: {detail}"),
    };
    let (mut hs, c0c1) = ClientHandshake::start().map_err(|e| failed(e.to_string()))?;
    let mut stream = dial(up, server, proxy_header).await?;
    stream
        .write_all(&c0c1)
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
