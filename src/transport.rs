//! What a session's bytes travel on, on either side: a plain TCP socket,
//! or TLS over one. Every stage after accept reads and writes a
//! [`Transport`] and never asks which it is; only the log and the metrics
//! name it ([`Kind`]).

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// Which listener a client came in on: the `transport` log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `[server] listen`: plain RTMP.
    Rtmp,
    /// `[tls] listen`: RTMP inside TLS.
    Rtmps,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rtmp => "rtmp",
            Kind::Rtmps => "rtmps",
        }
    }
}

/// A connection's byte stream.
pub enum Transport {
    Plain(TcpStream),
    /// TLS, server side (a client of the guard) or client side (an origin).
    Tls(Box<TlsStream<Rewind<TcpStream>>>),
    /// No stream: its TLS handshake did not finish. What it holds is a
    /// duplicate of the socket's descriptor, so the client sees the close
    /// only after the refusal is counted and logged, as on every other
    /// path.
    Closed(Option<OwnedFd>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Closed(_) => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Closed(_) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Transport::Closed(_) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
            Transport::Closed(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Closed(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Closed(_) => Poll::Ready(Ok(())),
        }
    }
}

/// A stream the relay reads and writes at once, from its two directions.
pub trait Halves: AsyncRead + AsyncWrite + Unpin + Send {
    type Read<'a>: AsyncRead + ReadNow + Unpin + Send
    where
        Self: 'a;
    type Write<'a>: AsyncWrite + WriteNow + Unpin + Send
    where
        Self: 'a;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);
}

/// A reading half that can read what has arrived without waiting for
/// tokio to see it. tokio takes a short read to mean the socket is empty
/// until its next poll, but the sender may have written since: nginx-rtmp
/// holds a message's next chunk until the read of the one before is
/// acknowledged, and that read sent the acknowledgement.
pub trait ReadNow {
    /// Appends to `buf` what has arrived, up to `up_to` bytes, without
    /// waiting. `None`: this stream cannot (TLS, whose bytes must be
    /// decrypted first), and `buf` is untouched.
    fn read_now(&self, buf: &mut Vec<u8>, up_to: usize) -> Option<io::Result<usize>>;

    /// Ready once tokio takes the socket to have something to read (bytes,
    /// the end, an error); then a read may still find nothing. Always
    /// ready for a stream that cannot tell before it reads (TLS).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Starts loading tokio's handle for the socket (its descriptor and
    /// registration) into the cache ([`crate::rtmp::cache::prefetch`]).
    fn prefetch(&self) {}
}

/// A writing half that can send without asking tokio first whether the
/// socket is writable. A viewer's socket almost always takes a message at
/// once, and tokio's readiness state for it is memory that a relay
/// otherwise leaves cold: with a thousand viewers, reading it on every
/// message cost a cache miss each.
pub trait WriteNow {
    /// Sends what the socket takes of `bytes` now. `None`: this stream
    /// cannot (TLS, whose bytes must be encrypted first). An error,
    /// `WouldBlock` included, leaves the write to tokio, which tries it
    /// again and waits or fails as it would have.
    fn write_now(&self, bytes: &[u8]) -> Option<io::Result<usize>>;

    /// Starts loading tokio's handle for the socket (its descriptor and
    /// registration) into the cache ([`crate::rtmp::cache::prefetch`]).
    fn prefetch(&self) {}
}

/// Starts loading tokio's handle for `stream` into the cache.
fn prefetch_stream(stream: &TcpStream) {
    crate::rtmp::cache::prefetch(std::slice::from_ref(stream));
}

impl WriteNow for tokio::net::tcp::WriteHalf<'_> {
    fn write_now(&self, bytes: &[u8]) -> Option<io::Result<usize>> {
        let stream: &TcpStream = self.as_ref();
        // Non-blocking, so a full socket is `WouldBlock`. A peer gone is
        // an error, never SIGPIPE, whatever the host process does with
        // that signal (as std's own sends).
        let socket = socket2::SockRef::from(stream);
        Some(socket.send_with_flags(bytes, libc::MSG_NOSIGNAL))
    }

    fn prefetch(&self) {
        prefetch_stream(self.as_ref());
    }
}

impl WriteNow for WriteHalf<'_> {
    fn write_now(&self, bytes: &[u8]) -> Option<io::Result<usize>> {
        match self {
            WriteHalf::Plain(s) => s.write_now(bytes),
            WriteHalf::Tls(_) | WriteHalf::Closed => None,
        }
    }

    fn prefetch(&self) {
        if let WriteHalf::Plain(s) = self {
            s.prefetch();
        }
    }
}

impl ReadNow for tokio::net::tcp::ReadHalf<'_> {
    fn read_now(&self, buf: &mut Vec<u8>, up_to: usize) -> Option<io::Result<usize>> {
        let stream: &TcpStream = self.as_ref();
        let start = buf.len();
        buf.resize(start + up_to, 0);
        // The socket is non-blocking: nothing there is `WouldBlock`.
        let socket = socket2::SockRef::from(stream);
        let read = io::Read::read(&mut &*socket, buf.get_mut(start..).unwrap_or_default());
        buf.truncate(start + read.as_ref().map_or(0, |n| *n));
        Some(read)
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream: &TcpStream = self.as_ref();
        stream.poll_read_ready(cx)
    }

    fn prefetch(&self) {
        prefetch_stream(self.as_ref());
    }
}

impl ReadNow for ReadHalf<'_> {
    fn read_now(&self, buf: &mut Vec<u8>, up_to: usize) -> Option<io::Result<usize>> {
        match self {
            ReadHalf::Plain(s) => s.read_now(buf, up_to),
            ReadHalf::Tls(_) | ReadHalf::Closed => None,
        }
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ReadHalf::Plain(s) => s.poll_readable(cx),
            ReadHalf::Tls(_) | ReadHalf::Closed => Poll::Ready(Ok(())),
        }
    }

    fn prefetch(&self) {
        if let ReadHalf::Plain(s) = self {
            s.prefetch();
        }
    }
}

impl Halves for TcpStream {
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
}

type TlsHalves<'a> = (
    tokio::io::ReadHalf<&'a mut TlsStream<Rewind<TcpStream>>>,
    tokio::io::WriteHalf<&'a mut TlsStream<Rewind<TcpStream>>>,
);

/// The reading half of a [`Transport`]: a plain socket's, borrowed with no
/// lock, or a TLS stream's, whose one state both halves share.
pub enum ReadHalf<'a> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsStream<Rewind<TcpStream>>>),
    Closed,
}

/// The writing half of a [`Transport`].
pub enum WriteHalf<'a> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<Rewind<TcpStream>>>),
    Closed,
}

impl Halves for Transport {
    type Read<'a> = ReadHalf<'a>;
    type Write<'a> = WriteHalf<'a>;
    fn halves(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Transport::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Transport::Tls(s) => {
                let (r, w): TlsHalves<'_> = tokio::io::split(s.as_mut());
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            Transport::Closed(_) => (ReadHalf::Closed, WriteHalf::Closed),
        }
    }
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Closed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// A stream with some of its bytes already read: they are read again
/// first. The TLS stage reads the first byte (and, behind a load balancer,
/// the PROXY header with whatever followed it) before rustls starts.
pub struct Rewind<S> {
    head: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(head: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind {
            head: Bytes::from(head),
            inner,
        }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.head.len().min(buf.remaining());
        buf.put_slice(&this.head[..n]);
        this.head.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewound_bytes_are_read_again_before_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut r = Rewind::new(b"hello".to_vec(), a);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    /// Both ends of a loopback TCP connection: (connecting, accepted).
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sender = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (receiver, _) = listener.accept().await.unwrap();
        (sender, receiver)
    }

    /// The relay waits on this before it takes a buffer for a read.
    #[tokio::test]
    async fn a_socket_is_readable_only_once_bytes_come() {
        let (mut sender, mut receiver) = connected().await;
        let (read, _write) = receiver.split();
        // tokio may take a fresh socket to be readable; a read that finds
        // nothing teaches it otherwise.
        let nothing = read.try_read(&mut [0u8; 8]);
        assert_eq!(nothing.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let read = ReadHalf::Plain(read);
        let now = std::future::poll_fn(|cx| Poll::Ready(read.poll_readable(cx))).await;
        assert!(now.is_pending(), "nothing sent yet");
        sender.write_all(b"x").await.unwrap();
        let ready = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| read.poll_readable(cx)),
        )
        .await;
        assert!(matches!(ready, Ok(Ok(()))), "readable once a byte came");
    }

    /// After a short read tokio takes the socket to be empty until its
    /// driver next runs; `read_now` still gets what arrived since.
    #[tokio::test]
    async fn read_now_takes_bytes_that_tokio_has_not_seen_yet() {
        let (mut sender, mut receiver) = connected().await;
        let (mut read, _write) = receiver.split();
        sender.write_all(b"first").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(read.read(&mut buf).await.unwrap(), 5);
        let mut nothing = Vec::new();
        let empty = read.read_now(&mut nothing, 64).expect("a plain socket");
        assert_eq!(empty.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(nothing.is_empty());

        // Written and arrived, with no await in between for the driver to
        // notice: tokio's own try_read still says there is nothing.
        std::io::Write::write_all(&mut &*socket2::SockRef::from(&sender), b"rest").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let tokio_says = read.try_read(&mut buf);
        assert_eq!(tokio_says.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let mut got = b"kept ".to_vec();
        let n = read
            .read_now(&mut got, 64)
            .expect("a plain socket")
            .unwrap();
        assert_eq!(n, 4);
        assert_eq!(got, b"kept rest");
    }

    /// A write begun past tokio, cut short by a full socket, ends through
    /// tokio once the peer reads: nothing lost, repeated or reordered.
    /// Each poll is preceded by `now`, as in the relay.
    #[tokio::test]
    async fn a_write_begun_past_tokio_ends_through_it() {
        use crate::relay::buffers::Write;
        let (mut sender, mut receiver) = connected().await;
        // Small buffers, so that 1 MiB fills them on any host's tunings.
        socket2::SockRef::from(&sender)
            .set_send_buffer_size(16 << 10)
            .unwrap();
        socket2::SockRef::from(&receiver)
            .set_recv_buffer_size(16 << 10)
            .unwrap();
        let bytes: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(async move {
            wait.await.unwrap();
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).await.unwrap();
            got
        });
        let (_read, mut write_half) = sender.split();
        let sent = write_half
            .write_now(&bytes)
            .expect("a plain socket")
            .unwrap();
        assert!(sent > 0 && sent < bytes.len(), "a part: {sent}");
        let rest = &bytes[sent..];
        let mut write = Write::default();
        let stall = std::time::Duration::from_secs(10);
        let mut poll = |cx: &mut Context<'_>| {
            write.now(&write_half, rest);
            write.poll(&mut write_half, rest, stall, cx)
        };
        let first = std::future::poll_fn(|cx| Poll::Ready(poll(cx))).await;
        assert!(first.is_pending(), "the peer reads nothing yet");
        go.send(()).unwrap();
        let done = std::future::poll_fn(poll).await;
        assert_eq!(done, Ok(()));
        sender.shutdown().await.unwrap();
        assert!(reader.await.unwrap() == bytes, "every byte once, in order");
    }
}
