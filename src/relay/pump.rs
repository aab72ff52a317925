//! One direction's I/O: wait for bytes, read them into a pooled buffer,
//! judge them, write what passed, give the buffers back.
//!
//! A state machine the relay polls, not an async fn: a session then keeps
//! room only for this state, and not for the locals of every await point
//! of nested futures. With thousands of viewers each carrying two, that
//! room was most of a session's memory.

use std::future::Future;
use std::pin::Pin;
use std::slice::from_ref;
use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::buffers::{BufferPool, Write};
use super::direction::{Direction, Held, Side, Sink, Stop as DirStop};
use super::read_on::{self, ReadOn};
use super::{Flow, PumpEnd, Relay};
use crate::policy::session::Answer;
use crate::rtmp::cache::prefetch;
use crate::transport::{ReadNow, WriteNow};
use crate::verdict::Refusal;

/// Output below this size that ends inside a media message waits for the
/// rest of that message before it is written: a sender writes a message's
/// chunks back to back (nginx-rtmp with one send each), and the receiver
/// can use none of the message before its last chunk. One send per message
/// instead of one per chunk halves the relay's sends, and the receiver's
/// wake-ups. Whole messages before it in the same output wait with it.
const COALESCE: usize = 16 * 1024;

/// Bytes written are counted (for the session, shown to the operator, and
/// in the guard's total) once this many are waiting, or
/// [`COUNT_EVERY_MS`] after the last count. A count per message took, on every message, a
/// cache line that a relay otherwise never touches (the session's entry)
/// and one that every worker writes (the guard's total). Both figures lag
/// a live session by less than this; the rest is counted when the
/// direction ends, or with its next write.
const COUNT_BATCH: usize = 64 * 1024;
const COUNT_EVERY_MS: u64 = 100;

/// What [`Pump::read_rest`] reads to take the rest of a message of `rest`
/// payload bytes: with room for the sender's chunk headers at its chunk
/// size of 128 bytes or more (RTMP's default, below which no real sender
/// goes), and little of the next message, which goes on with the next
/// read. A sender with smaller chunks costs a park, not a wrong result.
/// The read zero-fills what it reads into first, so the bound saves that
/// too.
fn rest_read_size(rest: usize) -> usize {
    (rest + rest / 16 + 64).min(COALESCE)
}

/// The auth service's answer to a held publish or play, with it.
type Asking<'a> = Pin<Box<dyn Future<Output = (Answer, Held)> + Send + 'a>>;

/// One direction, from `reader` to `writer`.
pub(super) struct Pump<'a, R, W> {
    relay: &'a Relay<'a>,
    /// Held here, not by reference: one line fewer to read per pass.
    flow: Flow<'a>,
    /// The guard's buffer pool, and the stall limit: kept here
    /// rather than read through the context on every pass.
    pool: &'a BufferPool,
    stall: Duration,
    dir: &'a mut Direction,
    reader: R,
    writer: W,
    /// Bytes read and not yet judged: `input[judged..]`.
    input: Vec<u8>,
    judged: usize,
    /// Bytes judged and not yet written.
    out: Vec<u8>,
    /// `out` ends inside a message and waits for the rest of it, in a
    /// buffer of its own size ([`BufferPool::park`]).
    parked: bool,
    /// More may have arrived for `out` already: it is read at once
    /// ([`Pump::read_rest`]) before `out` is written, or parked.
    tail_open: bool,
    read_on: ReadOn,
    /// A read failed: the direction ends once `out` is written.
    read_failed: bool,
    write: Write,
    /// The write in progress had to wait for the peer.
    write_waited: bool,
    /// Bytes written and not yet counted ([`COUNT_BATCH`]), and when
    /// they last were (the session's milliseconds).
    uncounted: usize,
    counted_ms: u64,
    /// A held publish or play, waiting for the auth service. The rest of
    /// `input` waits with it; what came before it is written first.
    asking: Option<Asking<'a>>,
}

impl<'a, R, W> Pump<'a, R, W>
where
    R: AsyncRead + ReadNow + Unpin,
    W: AsyncWrite + WriteNow + Unpin,
{
    /// Starts with `first`, what was read before the relay began.
    pub(super) fn new(
        relay: &'a Relay<'a>,
        flow: Flow<'a>,
        dir: &'a mut Direction,
        (reader, writer): (R, W),
        first: Vec<u8>,
    ) -> Self {
        // What was read before the relay counts towards acknowledgements
        // like every later read.
        if let Some(ack) = dir.received(first.len()) {
            flow.reply_to_sender.push(ack);
        }
        Pump {
            relay,
            flow,
            pool: &relay.ctx.guard.buffers,
            stall: relay.ctx.config.server.write_timeout,
            dir,
            reader,
            writer,
            // An empty one may still hold the handshake's buffer, which an
            // idle session must not keep.
            input: if first.is_empty() { Vec::new() } else { first },
            judged: 0,
            out: Vec::new(),
            parked: false,
            tail_open: false,
            read_on: ReadOn::new(),
            read_failed: false,
            write: Write::default(),
            write_waited: false,
            uncounted: 0,
            counted_ms: 0,
            asking: None,
        }
    }

    /// Starts loading into the cache, all at once, the state that a
    /// message through this direction reads ([`prefetch`]).
    pub(super) fn prefetch(&self) {
        prefetch(from_ref(self));
        prefetch(from_ref(&self.relay.activity));
        prefetch(from_ref(self.flow.outbox));
        prefetch(from_ref(&self.relay.rules));
        self.dir.prefetch();
        self.reader.prefetch();
        self.writer.prefetch();
    }

    /// Moves bytes until nothing more can be done now (`Pending`) or the
    /// direction ends.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<PumpEnd> {
        loop {
            if self.tail_open {
                if let Some(end) = self.read_rest() {
                    return Poll::Ready(end);
                }
            } else if !self.out.is_empty() && !self.parked {
                if let Err(end) = ready!(self.poll_write(cx)) {
                    return Poll::Ready(end);
                }
            } else if let Some(asking) = &mut self.asking {
                let (answer, held) = ready!(asking.as_mut().poll(cx));
                self.asking = None;
                if let Some(end) = self.resume(held, answer) {
                    return Poll::Ready(end);
                }
            } else if self.judged < self.input.len() || self.flow.outbox.has_mail() {
                if let Some(end) = self.judge() {
                    return Poll::Ready(end);
                }
            } else if self.read_failed {
                return Poll::Ready(PumpEnd::Read);
            } else if let Some(end) = ready!(self.poll_read(cx)) {
                return Poll::Ready(end);
            }
        }
    }

    /// Waits for bytes from the peer, or for control messages owed to the
    /// one written to: whichever comes first. Holds no buffer meanwhile.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<PumpEnd>> {
        let outbox = self.flow.outbox;
        outbox.waker.register(cx.waker());
        if outbox.has_mail() {
            return Poll::Ready(None);
        }
        // The socket first, then a buffer: a direction with nothing to
        // read would otherwise take one and give it back on every pass.
        if ready!(self.reader.poll_readable(cx)).is_err() {
            return Poll::Ready(self.read_error());
        }
        let pool = self.pool;
        match ready!(pool.poll_read(&mut self.reader, cx)) {
            Ok(buf) if buf.is_empty() => {
                pool.give(buf);
                if self.parked {
                    // The rest never comes: what is parked goes now, and
                    // the next read sees the end again.
                    self.unpark();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(PumpEnd::Eof))
            }
            Ok(buf) => {
                self.read_on.tokio_read(!self.dir.ends_inside_message());
                self.take_input(buf);
                Poll::Ready(None)
            }
            Err(_) => Poll::Ready(self.read_error()),
        }
    }

    /// The peer's stream failed. The direction ends once what was judged
    /// is written: parked output goes as it is, as at the end of the
    /// stream.
    fn read_error(&mut self) -> Option<PumpEnd> {
        if self.parked {
            self.unpark();
        }
        if self.out.is_empty() {
            return Some(PumpEnd::Read);
        }
        self.read_failed = true;
        None
    }

    /// Bytes read from the peer become the input to judge (which records
    /// the activity).
    fn take_input(&mut self, buf: Vec<u8>) {
        if let Some(ack) = self.dir.received(buf.len()) {
            self.flow.reply_to_sender.push(ack);
        }
        self.input = buf;
        self.judged = 0;
    }

    /// Reads at once what has arrived past tokio's view of the socket
    /// ([`super::read_on`]): the rest of the message `out` ends inside, or
    /// a next message that the read before released. The bytes join `out`
    /// and go in the same write. Output inside a message that finds
    /// nothing is parked for the rest. An error ends the direction only
    /// once `out` is written: what was judged before it still goes.
    fn read_rest(&mut self) -> Option<PumpEnd> {
        self.tail_open = false;
        let pool = self.pool;
        let inside = self.dir.ends_inside_message();
        let wanted = if inside {
            rest_read_size(self.dir.rest_of_message())
        } else {
            read_on::NEXT
        };
        let size = self.read_on.take(wanted);
        if size > 0 {
            match pool.read_now(&self.reader, size) {
                Some(Ok(buf)) if !buf.is_empty() => {
                    self.read_on.found(!inside);
                    self.take_input(buf);
                    // Judged before `out` is written, to join it.
                    return self.judge();
                }
                // The end of the stream: what there is goes now, and the
                // next read sees the end again.
                Some(Ok(empty)) => {
                    pool.give(empty);
                    return None;
                }
                Some(Err(e)) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    return self.read_error();
                }
                Some(Err(_)) => self.read_on.found_nothing(),
                None => self.read_on.cannot(),
            }
        }
        if inside {
            self.parked = pool.park(&mut self.out);
        }
        None
    }

    /// Parses and judges the unjudged input into `out`, after what the
    /// guard owes the peer written to. Stops at a held publish or play:
    /// the auth service is asked once what came before it is written.
    fn judge(&mut self) -> Option<PumpEnd> {
        let relay = self.relay;
        self.take_out_buffer();
        let mut owed = false;
        for control in self.flow.outbox.take() {
            self.dir.own_control(&mut self.out, control);
            owed = true;
        }
        let before = relay.activity.last_ms();
        let now = relay.activity.now();
        self.read_on
            .gap((now.session.as_millis() as u64).saturating_sub(before));
        while let Some(rest) = self.input.get(self.judged..).filter(|r| !r.is_empty()) {
            let fed = sink(relay, &self.flow, &mut self.out, |sink| {
                self.dir.feed(rest, &mut relay.rules(), now, sink)
            });
            self.judged += fed.consumed;
            match fed.stop {
                None => {}
                Some(DirStop::Refused(denial)) => return Some(PumpEnd::Refused(denial)),
                Some(DirStop::Violation(why)) => return Some(PumpEnd::Violation(why)),
                Some(DirStop::Held(held)) => {
                    self.give_out_buffer_if_empty();
                    self.asking = Some(Box::pin(async move {
                        let answer = relay.ask(&held.query).await;
                        (answer, held)
                    }));
                    return None;
                }
            }
        }
        let read = self.input.len();
        self.pool.give(std::mem::take(&mut self.input));
        self.judged = 0;
        if self.flow.from == Side::Client {
            let verdict = relay.rules().on_bytes(read as u64, now);
            if let Err(refusal) = verdict {
                if relay.enforce(&refusal) {
                    return Some(PumpEnd::Refused(refusal.status));
                }
            }
        }
        // What the guard owes the peer goes at once.
        if !owed
            && !self.out.is_empty()
            && self.out.len() < COALESCE
            && self.read_on.wanted(self.dir.ends_inside_message())
        {
            self.tail_open = true;
        }
        self.give_out_buffer_if_empty();
        None
    }

    /// Applies the auth service's answer to a held publish or play.
    fn resume(&mut self, held: Held, answer: Answer) -> Option<PumpEnd> {
        let relay = self.relay;
        relay.activity.touch();
        self.take_out_buffer();
        let stop = sink(relay, &self.flow, &mut self.out, |sink| {
            self.dir.resume(held, answer, &mut relay.rules(), sink)
        });
        self.give_out_buffer_if_empty();
        match stop {
            Some(DirStop::Refused(denial)) => Some(PumpEnd::Refused(denial)),
            _ => None,
        }
    }

    /// Writes `out` on, and gives it back to the pool once drained.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpEnd>> {
        let flow = &self.flow;
        flow.writing.store(true, Ordering::Relaxed);
        self.write.now(&self.writer, &self.out);
        let written = self.write.poll(&mut self.writer, &self.out, self.stall, cx);
        let Poll::Ready(written) = written else {
            self.write_waited = true;
            return Poll::Pending;
        };
        written.map_err(PumpEnd::Write)?;
        flow.writing.store(false, Ordering::Relaxed);
        let activity = &self.relay.activity;
        // What is written at once moved when it was judged; a write that
        // waited for the peer moves bytes when it ends.
        if std::mem::take(&mut self.write_waited) {
            activity.touch();
        }
        self.uncounted += self.out.len();
        let now_ms = activity.last_ms();
        if self.uncounted >= COUNT_BATCH || now_ms >= self.counted_ms + COUNT_EVERY_MS {
            self.counted_ms = now_ms;
            self.count_written();
        }
        self.pool.give(std::mem::take(&mut self.out));
        Poll::Ready(Ok(()))
    }

    /// A pooled buffer for `out`, holding what was parked in it.
    fn take_out_buffer(&mut self) {
        if self.parked {
            self.unpark();
        } else if self.out.capacity() == 0 {
            self.out = self.pool.take();
        }
    }

    fn unpark(&mut self) {
        self.parked = false;
        self.pool.unpark(&mut self.out);
    }

    fn give_out_buffer_if_empty(&mut self) {
        if self.out.is_empty() {
            self.pool.give(std::mem::take(&mut self.out));
        }
    }
}

impl<'a, R, W> Pump<'a, R, W> {
    /// Adds what was written since the last time to the session's count
    /// and the guard's.
    fn count_written(&mut self) {
        let n = std::mem::take(&mut self.uncounted);
        if n > 0 {
            self.relay.count(self.flow.moved, self.flow.counter, n);
        }
    }
}

impl<R, W> Drop for Pump<'_, R, W> {
    /// Buffers in hand go back to the pool when the direction ends, and
    /// what it wrote is counted: a write cut off (failed, or its session
    /// ended) for what the socket had taken of it.
    fn drop(&mut self) {
        self.uncounted += self.write.sent();
        self.count_written();
        let pool = self.pool;
        if self.parked {
            pool.forget_parked(&self.out);
        }
        pool.give(std::mem::take(&mut self.input));
        pool.give(std::mem::take(&mut self.out));
    }
}

/// Runs `f` with a sink that writes to `out` and reports refusals. Control
/// messages owed to the sender go to the other direction's outbox, and a
/// stream the session opened is shown to the operator.
fn sink<T>(
    relay: &Relay<'_>,
    flow: &Flow<'_>,
    out: &mut Vec<u8>,
    f: impl FnOnce(&mut Sink<'_>) -> T,
) -> T {
    let mut to_sender = Vec::new();
    let mut enforce = |r: &Refusal| relay.enforce(r);
    let mut sink = Sink {
        out,
        to_sender: &mut to_sender,
        enforce: &mut enforce,
        opened: false,
        forwarded: None,
    };
    let result = f(&mut sink);
    if sink.opened {
        relay.session.set_streams(relay.rules().streams());
    }
    for control in to_sender {
        flow.reply_to_sender.push(control);
    }
    result
}
