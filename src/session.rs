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

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::admit;
use crate::admit::admission::{PendingSlot, Ticket};
use crate::config::Config;
use crate::connection::{ClientAddr, Connection};
use crate::context::{Ctx, Stop};
use crate::guard::{Guard, OpenHold};
use crate::transport::{Kind, Transport};
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
/// accepted with, from a listener of `kind`; it counts as open while
/// `_open` lives. Never panics on client input; a panic elsewhere would
/// end only this task.
pub async fn run(
    guard: Arc<Guard>,
    config: Arc<Config>,
    socket: TcpStream,
    _open: OpenHold,
    peer: ClientAddr,
    start: Start,
    kind: Kind,
) {
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
    if let Err(Stop::Blocked(block)) = stages(&mut ctx, &mut conn, start).await {
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
        Start::ProxyHeader(slot) => Box::pin(admit::behind_proxy(ctx, conn, slot)).await?,
    };
    let ctx = &*ctx;
    // The stages before the relay are boxed, and so freed when done: a
    // session's future keeps room for its largest stage for its whole
    // life, and the relay's state is all a relaying session should hold.
    if ctx.transport == Kind::Rtmps {
        Box::pin(tls::accept(ctx, conn)).await?;
    }
    Box::pin(handshake::run(ctx, conn)).await?;
    ctx.guard
        .metrics
        .handshake_duration
        .observe(ctx.accepted.elapsed().as_secs_f64());
    let connect = Box::new(connect::read(ctx, conn).await?);
    let route = connect::route(ctx, conn, &connect.request).await?;
    ticket.connected();
    let opened = upstream::open(ctx, conn, &route, connect.request.transaction_id);
    let origin = Box::pin(opened).await?;
    relay::run(ctx, conn, origin, &route, connect).await
}
