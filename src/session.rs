//! One client connection, from accept to close: the driver that runs the
//! stages in order.
//!
//! admit → tls (RTMPS listeners) → handshake → connect → upstream → relay
//! → report
//!
//! Each stage either hands a typed result to the next or stops the
//! connection ([`Stop`]). No upstream connection exists until the client
//! has finished the handshake and sent a valid `connect` for a configured
//! app, so an origin never sees a client the guard has not read.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::admit;
use crate::admit::admission::{PendingSlot, Ticket};
use crate::config::Config;
use crate::connect::{Connect, Route};
use crate::connection::{ClientAddr, Connection};
use crate::context::{Ctx, Stop};
use crate::guard::Guard;
use crate::report;
use crate::transport::{Kind, Transport};
use crate::upstream::Origin;
use crate::{connect, handshake, relay, tls, upstream};

/// How a connection starts its session.
pub enum Start {
    /// Admitted at accept.
    Admitted(Ticket),
    /// From a trusted load balancer: its PROXY header names the client to
    /// admit. The slot counts the connection as pending meanwhile.
    ProxyHeader(PendingSlot),
}

/// Runs one connection to its end under `config`, the config it was
/// accepted with, from a listener of `kind`. Never panics on client input;
/// a panic elsewhere would end only this task.
pub async fn run(
    guard: Arc<Guard>,
    config: Arc<Config>,
    socket: TcpStream,
    peer: ClientAddr,
    start: Start,
    kind: Kind,
) {
    let _open = guard.hold_open();
    let _ = socket.set_nodelay(true);
    let local = socket.local_addr().unwrap_or(peer.socket());
    let mut ctx = Ctx {
        guard: guard.clone(),
        config,
        client: peer,
        local,
        transport: kind,
        accepted: Instant::now(),
        unwritten: Default::default(),
    };
    let mut conn = Connection::new(Transport::Plain(socket));
    let stages = report::with_transport(kind, stages(&mut ctx, &mut conn, start));
    if let Err(Stop::Blocked(block)) = stages.await {
        ctx.refuse(&block);
    }
    // Any refusal's audit line the queue had no room for: the task waits
    // for room (the audit log never drops a line), holding its connection
    // permit, so a slow disk slows new sessions rather than filling memory.
    ctx.write_audit().await;
    // The socket closes only now, after the refusal is counted and logged.
    drop(conn);
}

/// The pipeline. The admission ticket is held until the session ends.
async fn stages(ctx: &mut Ctx, conn: &mut Connection<Transport>, start: Start) -> Result<(), Stop> {
    let mut ticket = match start {
        Start::Admitted(ticket) => ticket,
        Start::ProxyHeader(slot) => admit::behind_proxy(ctx, conn, slot).await?,
    };
    let ctx = &*ctx;
    if ctx.transport == Kind::Rtmps {
        tls::accept(ctx, conn).await?;
    }
    handshake::run(ctx, conn).await?;
    ctx.guard
        .metrics
        .handshake_duration
        .observe(ctx.accepted.elapsed().as_secs_f64());
    let connect = connect::read(ctx, conn).await?;
    let route = connect::route(ctx, conn, &connect.request).await?;
    ticket.connected();
    let origin = upstream::open(ctx, conn, &route, connect.request.transaction_id).await?;
    // TODO(merge): once `relay::run` takes any `Connection<C>` and
    // `Origin<O>`, call it here with `conn` and `origin` directly and
    // delete `relay_over_tcp` and `bridge`.
    relay_over_tcp(ctx, conn, origin, &route, connect).await
}

/// Runs today's relay, which takes TCP sockets only: a plain socket is
/// handed over as it is; a TLS stream is bridged through a loopback TCP
/// pair. Temporary, see the TODO in [`stages`].
async fn relay_over_tcp(
    ctx: &Ctx,
    conn: &mut Connection<Transport>,
    origin: Origin<Transport>,
    route: &Route<'_>,
    connect: Connect,
) -> Result<(), Stop> {
    let buffered = conn.take_buffered();
    let (client, plain) = match std::mem::replace(&mut conn.stream, Transport::Closed(None)) {
        Transport::Plain(tcp) => (tcp, true),
        other => (bridge(other).await.map_err(bridge_failed)?, false),
    };
    let origin_stream = match origin.stream {
        Transport::Plain(tcp) => tcp,
        other => bridge(other).await.map_err(bridge_failed)?,
    };
    let origin = Origin {
        stream: origin_stream,
        leftover: origin.leftover,
        lease: origin.lease,
    };
    let mut client = Connection::with_buffered(client, buffered);
    let result = relay::run(ctx, &mut client, origin, route, connect).await;
    if plain {
        // Back where session::run closes it, after any refusal is reported.
        conn.stream = Transport::Plain(client.stream);
    }
    result
}

fn bridge_failed(e: std::io::Error) -> Stop {
    tracing::warn!(error = %e, "cannot bridge a TLS stream to the relay");
    Stop::Gone
}

/// A loopback TCP socket whose far end is pumped to and from `stream` until
/// either side closes. Temporary, see the TODO in [`stages`].
async fn bridge<S>(stream: S) -> std::io::Result<TcpStream>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let near = TcpStream::connect(listener.local_addr()?).await?;
    let (far, _) = listener.accept().await?;
    let _ = near.set_nodelay(true);
    let _ = far.set_nodelay(true);
    tokio::spawn(async move {
        let (mut sr, mut sw) = tokio::io::split(stream);
        let (mut fr, mut fw) = far.into_split();
        // Either side's end ends both: the relay dropping its socket must
        // close the client's TLS stream at once.
        tokio::select! {
            _ = tokio::io::copy(&mut sr, &mut fw) => {}
            _ = tokio::io::copy(&mut fr, &mut sw) => {}
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            use tokio::io::AsyncWriteExt;
            let _ = sw.shutdown().await;
        })
        .await;
    });
    Ok(near)
}
