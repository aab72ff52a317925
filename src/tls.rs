//! The TLS stage, on RTMPS listeners only: terminate TLS, so that every
//! later stage reads plain RTMP, and origins that speak only plain RTMP
//! can serve `rtmps://` clients.
//!
//! It runs after admission (a refused address costs no handshake) and,
//! behind a trusted load balancer, after its PROXY header, which comes
//! before the ClientHello. The first byte must open a TLS handshake record
//! (0x16): plain RTMP (C0 is 3) or anything else is refused as `not_tls`
//! without a TLS byte sent. The handshake must finish within
//! `[tls] handshake_timeout` of its first byte, and always within
//! `[server] handshake_timeout` of accept, which the RTMP handshake after it
//! shares.

use std::os::fd::AsFd;

use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;

use crate::connection::Connection;
use crate::context::{Ctx, Stop};
use crate::metrics::tls_result;
use crate::transport::{Rewind, Transport};
use crate::verdict::{Block, Reason, Stage};

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The most buffered before the handshake starts: the first read.
const READ_LIMIT: usize = 4096;

/// What the first byte of a connection on an RTMPS port says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstByte {
    /// A TLS handshake record: go on.
    Tls,
    /// RTMP's C0: an encoder given `rtmp://` for the RTMPS port.
    PlainRtmp,
    Other(u8),
}

impl FirstByte {
    pub fn of(byte: u8) -> FirstByte {
        match byte {
            TLS_HANDSHAKE_RECORD => FirstByte::Tls,
            3 => FirstByte::PlainRtmp,
            other => FirstByte::Other(other),
        }
    }
}

/// Runs the TLS handshake as the server; the connection then carries the
/// decrypted stream. A connection whose handshake fails is refused and
/// left [`Transport::Closed`] (or plain) until the refusal is reported.
pub async fn accept(ctx: &Ctx, conn: &mut Connection<Transport>) -> Result<(), Stop> {
    let Some(tls) = &ctx.config.tls else {
        // Only a TLS listener brings a connection here, and a reload
        // cannot remove `[tls]` (see lifecycle); nothing to serve it with.
        return Err(Stop::Gone);
    };
    let rtmp_limit = ctx.config.server.handshake_timeout;
    let rtmp_deadline = ctx.deadline(rtmp_limit);
    let first = match timeout_at(rtmp_deadline, first_byte(conn)).await {
        Err(_) => {
            return Err(Stop::Blocked(Block::new(
                Stage::Handshake,
                Reason::HandshakeTimeout,
                format!("no TLS ClientHello within {rtmp_limit:?}"),
            )))
        }
        Ok(first) => first?,
    };
    match FirstByte::of(first) {
        FirstByte::Tls => {}
        FirstByte::PlainRtmp => {
            return Err(Stop::Blocked(Block::new(
                Stage::Handshake,
                Reason::NotTls,
                "plain RTMP on an RTMPS port",
            )))
        }
        FirstByte::Other(b) => {
            return Err(Stop::Blocked(Block::new(
                Stage::Handshake,
                Reason::NotTls,
                format!("first byte {b:#04x} is not a TLS handshake record"),
            )))
        }
    }
    let deadline = rtmp_deadline.min(Instant::now() + tls.handshake_timeout);
    let tcp = match std::mem::replace(&mut conn.stream, Transport::Closed(None)) {
        Transport::Plain(tcp) => tcp,
        other => {
            conn.stream = other;
            return Err(Stop::Gone);
        }
    };
    // Held until the session ends, in case the handshake future, and the
    // socket with it, is dropped at the deadline.
    conn.stream = Transport::Closed(tcp.as_fd().try_clone_to_owned().ok());
    let io = Rewind::new(conn.take_buffered(), tcp);
    let handshake = TlsAcceptor::from(tls.server.clone())
        .accept(io)
        .into_fallible();
    let metrics = &ctx.guard.metrics;
    match timeout_at(deadline, handshake).await {
        Ok(Ok(stream)) => {
            metrics.tls_handshake(tls_result::SUCCESS);
            conn.stream = Transport::Tls(Box::new(stream.into()));
            Ok(())
        }
        Ok(Err((e, io))) => {
            metrics.tls_handshake(tls_result::FAILURE);
            conn.stream = Transport::Plain(io.into_inner());
            // rustls' own errors (a bad record, no common version or
            // cipher suite, an alert from the client) are InvalidData;
            // anything else is the socket closing under the handshake.
            if e.kind() == std::io::ErrorKind::InvalidData {
                Err(Stop::Blocked(Block::new(
                    Stage::Handshake,
                    Reason::TlsFailed,
                    format!("TLS handshake failed: {e}"),
                )))
            } else {
                Err(Stop::Gone)
            }
        }
        Err(_) => {
            metrics.tls_handshake(tls_result::TIMEOUT);
            let limit = tls.handshake_timeout.min(rtmp_limit);
            Err(Stop::Blocked(Block::new(
                Stage::Handshake,
                Reason::HandshakeTimeout,
                format!("no complete TLS handshake within {limit:?}"),
            )))
        }
    }
}

/// Reads until at least one byte is buffered, and returns the first.
async fn first_byte(conn: &mut Connection<Transport>) -> Result<u8, Stop> {
    loop {
        if let Some(&b) = conn.buffered().first() {
            return Ok(b);
        }
        conn.read_more(READ_LIMIT).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_handshake_record_opens_tls() {
        assert_eq!(FirstByte::of(0x16), FirstByte::Tls);
        assert_eq!(FirstByte::of(3), FirstByte::PlainRtmp);
        assert_eq!(FirstByte::of(b'G'), FirstByte::Other(b'G'));
        // An alert or application data record cannot start a session.
        assert_eq!(FirstByte::of(0x15), FirstByte::Other(0x15));
        assert_eq!(FirstByte::of(0x17), FirstByte::Other(0x17));
    }
}
