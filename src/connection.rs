//! The client's side of a session as the stages hand it on: its socket, the
//! bytes read from it that no stage has consumed yet, and who it is.
//!
//! One owner of unread bytes (as mini-redis's `Connection`): the PROXY
//! header reader, the handshake and the connect stage each read into the
//! same buffer and consume what they understood, so the next stage starts
//! exactly where the last one stopped. Every read is bounded by the caller.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long the guard waits to deliver a refusal before closing anyway.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The client's address, in one canonical form: the TCP peer, or the
/// address a trusted PROXY header named. An IPv4 client of a dual-stack
/// listener (`::ffff:a.b.c.d`) is held as the IPv4 address, so address
/// rules, bans and kicks written for IPv4 see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(SocketAddr);

impl ClientAddr {
    pub fn new(addr: SocketAddr) -> ClientAddr {
        ClientAddr(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
    }

    pub fn ip(self) -> IpAddr {
        self.0.ip()
    }

    pub fn port(self) -> u16 {
        self.0.port()
    }

    pub fn socket(self) -> SocketAddr {
        self.0
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A client socket with the bytes read from it but not yet consumed.
pub struct Connection<S> {
    pub stream: S,
    buffer: BytesMut,
}

/// The peer closed, or the socket failed: either way the session is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream,
            buffer: BytesMut::new(),
        }
    }

    /// A stream with `buffered` already read from it and not consumed.
    pub fn with_buffered(stream: S, buffered: Vec<u8>) -> Connection<S> {
        Connection {
            stream,
            buffer: BytesMut::from(&buffered[..]),
        }
    }

    /// Bytes read and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer
    }

    /// Drops the first `n` buffered bytes: a stage has used them.
    pub fn consume(&mut self, n: usize) {
        self.buffer.advance(n.min(self.buffer.len()));
    }

    /// Takes the first `n` buffered bytes (all, if fewer are buffered).
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        self.buffer.split_to(n.min(self.buffer.len())).to_vec()
    }

    /// Takes every buffered byte.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.buffer.split().to_vec()
    }

    /// Reads more, so that at most `limit` bytes are buffered. Capacity is
    /// reserved, not zeroed, so an idle client costs only what it sends.
    pub async fn read_more(&mut self, limit: usize) -> Result<usize, Gone> {
        let room = limit.saturating_sub(self.buffer.len());
        if room == 0 {
            return Ok(0);
        }
        self.buffer.reserve(room.min(READ_CHUNK));
        match (&mut self.stream)
            .take(room as u64)
            .read_buf(&mut self.buffer)
            .await
        {
            Ok(0) | Err(_) => Err(Gone),
            Ok(n) => Ok(n),
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        self.stream.write_all(bytes).await.map_err(|_| Gone)
    }

    /// Sends a refusal, bounded in time so a client that stops reading
    /// cannot hold the task.
    pub async fn send_reply(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(REPLY_TIMEOUT, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await;
    }
}

/// The most reserved for one read: C0+C1 is 1537 bytes, and a `connect`
/// usually fits too.
const READ_CHUNK: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_clients_are_held_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:1935".parse().unwrap();
        let client = ClientAddr::new(mapped);
        assert_eq!(client.ip(), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(client.port(), 1935);
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert_eq!(ClientAddr::new(v6).socket(), v6);
    }

    #[tokio::test]
    async fn reads_are_bounded_and_consumed_bytes_are_gone() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut conn = Connection::new(a);
        b.write_all(b"hello world").await.unwrap();
        assert_eq!(conn.read_more(5).await, Ok(5));
        assert_eq!(conn.buffered(), b"hello");
        assert_eq!(conn.read_more(5).await, Ok(0));
        conn.consume(2);
        assert_eq!(conn.buffered(), b"llo");
        assert_eq!(conn.read_more(100).await, Ok(6));
        assert_eq!(conn.take_buffered(), b"llo world");
        drop(b);
        assert_eq!(conn.read_more(100).await, Err(Gone));
    }
}
