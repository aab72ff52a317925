//! The admit stage: may this client connect at all?
//!
//! A direct client is admitted at accept, from its address alone. One that
//! arrives through a trusted load balancer is admitted once the balancer's
//! PROXY header has named it. Either way the decision is [`Admission`]'s;
//! this stage turns a refusal into a report.

pub mod admission;
pub mod bans;
pub mod prefix;
pub mod table;

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout_at;

use self::admission::{PendingSlot, Ticket};
use crate::config::{Config, Mode};
use crate::connection::{ClientAddr, Connection, Gone};
use crate::context::{Ctx, Stop};
use crate::guard::Guard;
use crate::proxy_protocol::{self, Header, ProxyError};
use crate::report;
use crate::verdict::{Block, Reason, Stage};

/// Runs admission for `client` under `config`. `None`: refused (and
/// reported). `slot`: a pending slot reserved at accept, if any. Waits
/// only when the audit queue is full (see [`report::refuse`]).
pub async fn admit(
    guard: &Guard,
    config: &Config,
    client: ClientAddr,
    slot: Option<PendingSlot>,
) -> Option<Ticket> {
    let dry_run = config.server.mode == Mode::DryRun;
    let (ticket, refusal) = guard
        .admission
        .admit(client.ip(), Instant::now(), dry_run, slot);
    if let Some(reason) = refusal {
        let block = Block::new(Stage::Accept, reason, "refused at accept");
        let block = if reason == Reason::Overloaded {
            block.always()
        } else {
            block
        };
        if report::refuse(guard, config, client, &block).await {
            return None;
        }
    }
    ticket
}

/// Reads a trusted peer's PROXY header within the handshake timeout, and
/// admits the client it names. Bytes after the header stay buffered for
/// the handshake. Returns the ticket; `ctx` now names the real client.
pub async fn behind_proxy<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &mut Ctx,
    conn: &mut Connection<S>,
    slot: PendingSlot,
) -> Result<Ticket, Stop> {
    let deadline = ctx.deadline(ctx.config.server.handshake_timeout);
    let header = match timeout_at(deadline, read_proxy_header(conn)).await {
        Err(_) => {
            return Err(Stop::Blocked(Block::new(
                Stage::Handshake,
                Reason::HandshakeTimeout,
                "no PROXY header from a trusted proxy in time",
            )))
        }
        Ok(Err(HeaderEnd::Gone)) => return Err(Stop::Gone),
        Ok(Err(HeaderEnd::Bad(e))) => {
            return Err(Stop::Blocked(Block::new(
                Stage::Handshake,
                Reason::ProtocolViolation,
                format!("trusted proxy {}: {e}", ctx.client),
            )))
        }
        Ok(Ok(header)) => header,
    };
    if let Header::Proxied {
        source,
        destination,
    } = header
    {
        ctx.client = ClientAddr::new(source);
        ctx.local = destination;
    }
    admit(&ctx.guard, &ctx.config, ctx.client, Some(slot))
        .await
        .ok_or(Stop::Refused)
}

enum HeaderEnd {
    Gone,
    Bad(ProxyError),
}

impl From<Gone> for HeaderEnd {
    fn from(_: Gone) -> HeaderEnd {
        HeaderEnd::Gone
    }
}

/// Reads one PROXY header, at most [`proxy_protocol::V2_MAX`] bytes, and
/// consumes it.
async fn read_proxy_header<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
) -> Result<Header, HeaderEnd> {
    loop {
        conn.read_more(proxy_protocol::V2_MAX).await?;
        match proxy_protocol::parse(conn.buffered()) {
            Ok(Some((header, used))) => {
                conn.consume(used);
                return Ok(header);
            }
            Ok(None) if conn.buffered().len() < proxy_protocol::V2_MAX => {}
            Ok(None) => return Err(HeaderEnd::Bad(ProxyError::Malformed("header too long"))),
            Err(e) => return Err(HeaderEnd::Bad(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_proxy_header_is_consumed_and_what_follows_stays_buffered() {
        let (a, mut b) = tokio::io::duplex(256);
        let mut conn = Connection::new(a);
        b.write_all(b"PROXY TCP4 192.0.2.9 127.0.0.1 5000 1935\r\n\x03rest")
            .await
            .unwrap();
        let header = read_proxy_header(&mut conn).await.ok().unwrap();
        assert!(
            matches!(header, Header::Proxied { source, .. } if source.ip().to_string() == "192.0.2.9")
        );
        assert_eq!(conn.buffered(), b"\x03rest");
    }

    #[tokio::test]
    async fn an_endless_proxy_header_is_refused_at_its_limit() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut conn = Connection::new(a);
        let mut line = b"PROXY TCP4 ".to_vec();
        line.resize(proxy_protocol::V2_MAX + 10, b'1');
        tokio::spawn(async move {
            let _ = b.write_all(&line).await;
            std::future::pending::<()>().await;
        });
        assert!(matches!(
            read_proxy_header(&mut conn).await,
            Err(HeaderEnd::Bad(_))
        ));
    }
}
