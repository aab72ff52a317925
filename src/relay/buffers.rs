//! Relay buffers, lent to a session only while data is in flight, as
//! HAProxy's buffer pool: a direction waits for readiness holding nothing,
//! reads into a buffer from the shared pool, writes what it judged from a
//! second one, and gives both back once the write has drained. An idle or
//! merely connected session holds no relay buffer at all; a slow peer
//! holds one output buffer (bounded by what one read can produce) until
//! its socket takes it or `write_timeout` ends the session.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

use crate::transport::{ReadNow, WriteNow};

/// Bytes one read takes at most.
pub const READ_SIZE: usize = 64 * 1024;

/// The capacity of a pooled buffer: a read, or what one read's worth of
/// input usually becomes in the guard's framing.
const CAPACITY: usize = READ_SIZE + READ_SIZE / 8;

/// Free buffers each shelf keeps; more are given back to the allocator.
/// At any moment only the session a worker is polling (two or three
/// buffers), and those waiting on a slow peer, hold one; and each kept
/// buffer costs its pages for good. All shelves together keep 16, as the
/// single pool before them did.
const KEEP: usize = 4;

/// Shelves of free buffers. Each thread takes from and gives to its own,
/// threads beyond this many sharing: one shelf for the whole guard was
/// one lock every worker took several times per message, so its cache
/// line moved between the cores on nearly every message.
const SHELVES: usize = 4;

/// Output that waits for the rest of its message, guard-wide, at most
/// (about 64 sessions' worth at nginx-rtmp's 4 KiB chunks). Past it,
/// output is written as it comes.
const PARK_BUDGET: usize = 256 * 1024;

/// The guard's pool.
#[derive(Default)]
pub struct BufferPool {
    shelves: [Shelf; SHELVES],
    /// Bytes parked now ([`BufferPool::park`]).
    parked: AtomicUsize,
}

/// One thread's free buffers, on cache lines of its own (128 bytes: x86
/// fetches lines in pairs).
#[derive(Default)]
#[repr(align(128))]
struct Shelf(Mutex<Vec<Vec<u8>>>);

impl Shelf {
    fn lock(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Threads that have used a shelf, to deal them out.
static THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHELF: usize = THREADS.fetch_add(1, Ordering::Relaxed);
}

impl BufferPool {
    /// This thread's shelf.
    fn shelf(&self) -> &Shelf {
        let i = SHELF.with(|i| *i);
        &self.shelves[i % SHELVES]
    }

    /// An empty buffer of at least [`READ_SIZE`] capacity.
    pub fn take(&self) -> Vec<u8> {
        let reused = self.shelf().lock().pop();
        reused.unwrap_or_else(|| Vec::with_capacity(CAPACITY))
    }

    /// Takes back a buffer. One that grew far past the usual size (a burst
    /// of tiny messages re-framed) or was never the pool's is dropped.
    pub fn give(&self, mut buf: Vec<u8>) {
        if !(READ_SIZE..=2 * CAPACITY).contains(&buf.capacity()) {
            return;
        }
        buf.clear();
        let mut free = self.shelf().lock();
        if free.len() < KEEP {
            free.push(buf);
        }
    }

    /// Moves `out` into a buffer of its own size, to wait for the rest of
    /// its last message, and gives the pooled one back: many sessions may
    /// wait so at once. False, and `out` untouched, when the guard-wide
    /// budget is spent.
    pub fn park(&self, out: &mut Vec<u8>) -> bool {
        let len = out.len();
        let reserved = self
            .parked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                (p + len <= PARK_BUDGET).then_some(p + len)
            });
        if reserved.is_err() {
            return false;
        }
        let own = out.to_vec();
        self.give(std::mem::replace(out, own));
        true
    }

    /// Moves parked bytes back into a pooled buffer, to add to or write.
    pub fn unpark(&self, out: &mut Vec<u8>) {
        self.forget_parked(out);
        let mut pooled = self.take();
        pooled.extend_from_slice(out);
        *out = pooled;
    }

    /// Returns a parked buffer's share of the budget.
    pub fn forget_parked(&self, out: &[u8]) {
        self.parked.fetch_sub(out.len(), Ordering::Relaxed);
    }

    /// Free buffers held now, on every shelf.
    pub fn free(&self) -> usize {
        self.shelves.iter().map(|s| s.lock().len()).sum()
    }

    /// Waits until `reader` has bytes, then reads them into a pooled
    /// buffer. An empty result is the end of the stream.
    pub async fn read<R: AsyncRead + Unpin>(&self, reader: &mut R) -> std::io::Result<Vec<u8>> {
        poll_fn(|cx| self.poll_read(reader, cx)).await
    }

    /// Reads what `reader` has into a pooled buffer. The buffer is taken
    /// only for the read attempt itself, and given back if there was
    /// nothing to read.
    pub fn poll_read<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<Vec<u8>>> {
        let mut buf = self.take();
        match tokio_util::io::poll_read_buf(Pin::new(reader), cx, &mut buf) {
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(buf)),
            Poll::Ready(Err(e)) => {
                self.give(buf);
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                self.give(buf);
                Poll::Pending
            }
        }
    }

    /// Reads what has already arrived, up to `up_to` bytes, into a pooled
    /// buffer, without waiting ([`ReadNow`]). As [`BufferPool::poll_read`],
    /// an empty result is the end of the stream, and the buffer goes back
    /// on an error. `None`: `reader` cannot read so.
    pub fn read_now<R: ReadNow>(&self, reader: &R, up_to: usize) -> Option<io::Result<Vec<u8>>> {
        let mut buf = self.take();
        match reader.read_now(&mut buf, up_to) {
            Some(Ok(_)) => Some(Ok(buf)),
            Some(Err(e)) => {
                self.give(buf);
                Some(Err(e))
            }
            None => {
                self.give(buf);
                None
            }
        }
    }
}

/// Why a write did not complete.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The socket failed or closed.
    Failed,
    /// The peer took no byte for the whole stall limit.
    Stalled,
}

/// Writes all of `bytes`, failing if the peer takes no byte for `stall`.
/// The timer starts only when the socket is full: a write the socket
/// takes at once costs no timer.
pub async fn write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    stall: Duration,
) -> Result<(), WriteError> {
    let mut write = Write::default();
    poll_fn(|cx| write.poll(writer, bytes, stall, cx)).await
}

/// A write in progress: how far it got, and its stall timer once the
/// socket was full. What a relay direction keeps between polls.
#[derive(Default)]
pub struct Write {
    pos: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Write {
    /// Writes on from where the last poll stopped until all of `bytes` is
    /// written; the same `bytes` each time. Ready resets it for the next.
    pub fn poll<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        bytes: &[u8],
        stall: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        while let Some(rest) = bytes.get(self.pos..).filter(|r| !r.is_empty()) {
            match Pin::new(&mut *writer).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Err(WriteError::Failed))
                }
                Poll::Ready(Ok(n)) => {
                    self.pos += n;
                    self.deadline = None;
                }
                Poll::Pending => return self.wait(stall, cx),
            }
        }
        // TLS takes bytes it could not yet send to the socket; they go
        // only with a flush (on plain TCP, a flush does nothing).
        match Pin::new(&mut *writer).poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Err(WriteError::Failed)),
            Poll::Pending => return self.wait(stall, cx),
        }
        *self = Write::default();
        Poll::Ready(Ok(()))
    }

    /// Bytes of this write the socket has taken so far.
    pub fn sent(&self) -> usize {
        self.pos
    }

    /// Sends what `writer` takes at once of a write not yet begun, past
    /// tokio ([`WriteNow`]); [`Write::poll`] then writes the rest, if any.
    /// A failed send is left to tokio's, which fails too (a reset socket
    /// answers `EPIPE` after the `ECONNRESET`) or waits. A write that had
    /// to wait is left to tokio, which holds the task's waker for it.
    pub fn now<W: WriteNow>(&mut self, writer: &W, bytes: &[u8]) {
        if self.pos > 0 || self.deadline.is_some() {
            return;
        }
        if let Some(Ok(n)) = writer.write_now(bytes) {
            self.pos = n.min(bytes.len());
        }
    }

    /// The peer takes nothing now: Pending, or stalled once it has taken
    /// nothing for `stall`.
    fn wait(&mut self, stall: Duration, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        let timer = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(WriteError::Stalled));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn the_pool_keeps_a_bounded_number_of_usual_sized_buffers() {
        let pool = BufferPool::default();
        let bufs: Vec<_> = (0..KEEP + 10).map(|_| pool.take()).collect();
        for b in bufs {
            pool.give(b);
        }
        assert_eq!(pool.free(), KEEP);
        pool.give(Vec::with_capacity(10));
        pool.give(Vec::with_capacity(4 * CAPACITY));
        assert_eq!(pool.free(), KEEP);
        let mut b = pool.take();
        b.extend_from_slice(b"left over");
        pool.give(b);
        assert!(pool.take().is_empty(), "given back buffers come back empty");
    }

    #[test]
    fn a_thread_takes_back_from_its_own_shelf() {
        let pool = BufferPool::default();
        let mine = pool.take();
        let at = mine.as_ptr() as usize;
        pool.give(mine);
        let shelf = || SHELF.with(|i| *i) % SHELVES;
        let here = shelf();
        // A thread on another shelf (threads are dealt round them).
        let got = std::thread::scope(|s| {
            (0..SHELVES)
                .find_map(|_| {
                    let other = || (shelf() != here).then(|| pool.take());
                    s.spawn(other).join().unwrap()
                })
                .expect("a thread on another shelf")
        });
        assert_ne!(got.as_ptr() as usize, at, "not this thread's buffer");
        let again = pool.take();
        assert_eq!(again.as_ptr() as usize, at, "this thread's again");
    }

    #[test]
    fn parked_output_keeps_its_bytes_in_its_own_buffer_within_the_budget() {
        let pool = BufferPool::default();
        let mut out = pool.take();
        out.extend_from_slice(&[7; 4000]);
        assert!(pool.park(&mut out));
        assert_eq!(out, vec![7; 4000]);
        assert!(out.capacity() < READ_SIZE, "not a pooled buffer");
        assert_eq!(pool.free(), 1, "the pooled buffer went back");
        pool.unpark(&mut out);
        assert_eq!(out, vec![7; 4000]);
        assert!(out.capacity() >= READ_SIZE, "pooled again");
        assert_eq!(pool.parked.load(Ordering::Relaxed), 0);

        // Past the budget, output stays where it is, to be written.
        let mut parked = Vec::new();
        loop {
            let mut out = vec![1; 4096];
            if !pool.park(&mut out) {
                assert_eq!(out, vec![1; 4096]);
                break;
            }
            parked.push(out);
        }
        assert_eq!(parked.len(), PARK_BUDGET / 4096);
        for out in &parked {
            pool.forget_parked(out);
        }
        assert_eq!(pool.parked.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_read_with_nothing_to_read_holds_no_buffer() {
        let pool = BufferPool::default();
        let (mut near, mut far) = tokio::io::duplex(1024);
        let pending = tokio::time::timeout(Duration::from_millis(50), pool.read(&mut near)).await;
        assert!(pending.is_err());
        assert_eq!(pool.free(), 1, "the buffer went back while waiting");
        far.write_all(b"abc").await.unwrap();
        let got = pool.read(&mut near).await.unwrap();
        assert_eq!(got, b"abc");
        assert_eq!(pool.free(), 0);
        drop(far);
        assert!(
            pool.read(&mut near).await.unwrap().is_empty(),
            "end of stream"
        );
    }

    /// A writer that, as TLS, takes bytes at once and sends them only when
    /// flushed; its first flush finds the socket full.
    #[derive(Default)]
    struct Sealed {
        taken: Vec<u8>,
        sent: Vec<u8>,
        flushes: usize,
    }

    impl AsyncWrite for Sealed {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.taken.extend_from_slice(bytes);
            Poll::Ready(Ok(bytes.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            if self.flushes == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let taken = std::mem::take(&mut self.taken);
            self.sent.extend(taken);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_write_is_done_only_once_the_writer_has_sent_it() {
        let mut sealed = Sealed::default();
        let result = write_all(&mut sealed, b"onStatus", Duration::from_secs(10)).await;
        assert_eq!(result, Ok(()));
        assert_eq!(sealed.sent, b"onStatus", "flushed to the socket");
        assert!(sealed.taken.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_stalls_the_write_after_the_limit() {
        let (mut near, _far) = tokio::io::duplex(16);
        let started = tokio::time::Instant::now();
        let result = write_all(&mut near, &[7; 64], Duration::from_secs(10)).await;
        assert_eq!(result, Err(WriteError::Stalled));
        assert!(started.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_that_keeps_taking_bytes_is_not_stalled() {
        let (mut near, mut far) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 8];
            while got.len() < 256 {
                // Slower in total than the stall limit, never for one gap.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let data: Vec<u8> = (0..=255).collect();
        write_all(&mut near, &data, Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(reader.await.unwrap(), data);
    }

    #[tokio::test]
    async fn a_closed_peer_fails_the_write() {
        let (mut near, far) = tokio::io::duplex(16);
        drop(far);
        assert_eq!(
            write_all(&mut near, b"x", Duration::from_secs(1)).await,
            Err(WriteError::Failed)
        );
        near.shutdown().await.ok();
    }
}
