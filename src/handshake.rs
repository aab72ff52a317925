//! The handshake stage: the RTMP handshake with the client, within
//! `[server] handshake_timeout` of accept.
//!
//! What is not RTMP (HTTP, TLS, SSH, a PROXY header from an untrusted peer,
//! a wrong version byte) is named and refused here, before any upstream
//! exists. Bytes the client sent past C2 stay buffered for the connect
//! stage.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout_at;

use crate::connection::Connection;
use crate::context::{Ctx, Stop};
use crate::rtmp::handshake::{HandshakeError, OtherProtocol, ServerHandshake};
use crate::verdict::{Block, Reason, Stage};

/// The most buffered at once: C0+C1 is 1537 bytes.
const READ_LIMIT: usize = 4096;

/// Runs the server handshake within the handshake timeout.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    conn: &mut Connection<S>,
) -> Result<(), Stop> {
    let limit = ctx.config.server.handshake_timeout;
    match timeout_at(ctx.deadline(limit), exchange(conn)).await {
        Err(_) => Err(Stop::Blocked(Block::new(
            Stage::Handshake,
            Reason::HandshakeTimeout,
            format!("no complete handshake within {limit:?}"),
        ))),
        Ok(result) => result,
    }
}

/// Feeds the handshake what the client sent and answers it, until done.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Connection<S>) -> Result<(), Stop> {
    let mut hs = ServerHandshake::new();
    loop {
        // Bytes may already be buffered (after a PROXY header): use them
        // before waiting for more. `feed` takes all it is given until done.
        while !conn.buffered().is_empty() {
            let step = hs.feed(conn.buffered()).map_err(refusal)?;
            conn.consume(step.consumed);
            if !step.response.is_empty() {
                conn.write_all(&step.response).await?;
            }
            if step.done {
                return Ok(());
            }
        }
        conn.read_more(READ_LIMIT).await?;
    }
}

/// The block for a first flight that is not an RTMP handshake.
fn refusal(e: HandshakeError) -> Stop {
    let reason = match e {
        HandshakeError::NotRtmp(OtherProtocol::Proxy) => Reason::ForgedProxyHeader,
        HandshakeError::NotRtmp(_) => Reason::NotRtmp,
        HandshakeError::BadVersion(_) => Reason::BadVersion,
        HandshakeError::Failed(_) => Reason::ProtocolViolation,
    };
    Stop::Blocked(Block::new(Stage::Handshake, reason, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::handshake::ClientHandshake;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_real_client_handshake_completes_and_keeps_what_follows() {
        let (a, mut b) = tokio::io::duplex(8192);
        let server = tokio::spawn(async move {
            let mut conn = Connection::new(a);
            exchange(&mut conn).await.map(|()| conn.take_buffered())
        });
        let (mut client, c0c1) = ClientHandshake::start().unwrap();
        b.write_all(&c0c1).await.unwrap();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = b.read(&mut buf).await.unwrap();
            let step = client.feed(&buf[..n]).unwrap();
            if step.done {
                let mut last = step.response.clone();
                last.extend_from_slice(b"after");
                b.write_all(&last).await.unwrap();
                break;
            }
        }
        let rest = server.await.unwrap().unwrap();
        assert_eq!(rest, b"after");
    }

    #[tokio::test]
    async fn http_on_the_rtmp_port_is_named() {
        let (a, mut b) = tokio::io::duplex(8192);
        b.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut conn = Connection::new(a);
        match exchange(&mut conn).await {
            Err(Stop::Blocked(block)) => assert_eq!(block.reason, Reason::NotRtmp),
            other => panic!("{other:?}"),
        }
    }
}
