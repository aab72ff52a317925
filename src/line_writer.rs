//! A writer thread behind a bounded queue, shared by the main log and the
//! audit log. Both write one line per refused connection, so under a flood
//! they are on the accept loop's hot path.
//!
//! The queue holds [`QUEUE`] lines. What a producer does when it is full
//! depends on the log, and never blocks a thread:
//!
//! - the main log drops the line and counts it ([`LineWriter::dropped`],
//!   exported as `rtmp_guard_log_lines_dropped_total`);
//! - the audit log never drops one: its producers await space
//!   ([`LineWriter::line`]), an async wait that leaves the worker thread
//!   free, or take the line back to await space later
//!   ([`LineWriter::try_line`]).
//!
//! The bound is a semaphore of free slots in front of an unbounded channel:
//! a producer takes a slot before it sends, the thread gives one back for
//! each line it takes off the queue. Once a burst starts, the thread sleeps
//! a few milliseconds between drains instead of blocking on the queue, so
//! producers never pay for waking it, and everything that arrived meanwhile
//! goes out in one write.

use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Lines queued before producers drop (main log) or wait (audit log).
pub const QUEUE: usize = 16 * 1024;
/// How long the thread lets lines gather while a burst lasts.
const BATCH: Duration = Duration::from_millis(5);
/// Output buffer: a drain of a burst becomes one write of up to this much.
const BUFFER: usize = 64 * 1024;

/// Opens the output again, for logrotate (see [`LineWriter::reopen`]).
pub type Reopen = Box<dyn FnMut() -> io::Result<Box<dyn Write + Send>> + Send>;

enum Item {
    Line(Vec<u8>),
    Reopen,
    Flush(SyncSender<()>),
}

/// The producers' end; clones share one thread, one queue and one output.
#[derive(Clone)]
pub struct LineWriter {
    tx: Sender<Item>,
    /// Free slots in the queue; only lines take one.
    space: Arc<Semaphore>,
    /// Lines given up on because the queue was full.
    dropped: Arc<AtomicU64>,
}

impl LineWriter {
    /// Starts the thread `name`, writing to `out`, behind a queue of
    /// [`QUEUE`] lines. `reopen`, if given, replaces `out` when
    /// [`LineWriter::reopen`] is called.
    pub fn spawn(
        name: &str,
        out: Box<dyn Write + Send>,
        reopen: Option<Reopen>,
    ) -> io::Result<LineWriter> {
        LineWriter::with_capacity(name, out, reopen, QUEUE)
    }

    /// As [`LineWriter::spawn`], with a queue of `capacity` lines.
    pub fn with_capacity(
        name: &str,
        out: Box<dyn Write + Send>,
        reopen: Option<Reopen>,
        capacity: usize,
    ) -> io::Result<LineWriter> {
        let (tx, rx) = channel();
        let space = Arc::new(Semaphore::new(capacity.min(Semaphore::MAX_PERMITS)));
        let freed = space.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_loop(out, reopen, rx, &freed))?;
        Ok(LineWriter {
            tx,
            space,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues `line` (which carries its own newline) if the queue has
    /// room; otherwise hands it back. Never waits.
    pub fn try_line(&self, line: Vec<u8>) -> Result<(), Vec<u8>> {
        match self.space.try_acquire() {
            Ok(slot) => {
                slot.forget();
                let _ = self.tx.send(Item::Line(line));
                Ok(())
            }
            Err(_) => Err(line),
        }
    }

    /// Queues `line`, or drops and counts it if the queue is full.
    pub fn line_or_drop(&self, line: Vec<u8>) {
        if self.try_line(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues `line`, awaiting room if the queue is full: the task waits,
    /// its thread does not.
    pub async fn line(&self, line: Vec<u8>) {
        // The semaphore is closed only when the thread has ended; then
        // there is nothing left to wait for.
        if let Ok(slot) = self.space.acquire().await {
            slot.forget();
        }
        let _ = self.tx.send(Item::Line(line));
    }

    /// Lines [`LineWriter::line_or_drop`] dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The shared count behind [`LineWriter::dropped`].
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    /// Flushes, then opens the output again.
    pub fn reopen(&self) {
        let _ = self.tx.send(Item::Reopen);
    }

    /// Waits (up to 5 s) until every line queued so far is written.
    pub fn flush(&self) {
        let (tx, rx) = sync_channel(1);
        if self.tx.send(Item::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

fn write_loop(
    out: Box<dyn Write + Send>,
    mut reopen: Option<Reopen>,
    rx: Receiver<Item>,
    space: &Semaphore,
) {
    /// Should the thread ever end, producers stop waiting for room it
    /// would never give back.
    struct CloseOnExit<'a>(&'a Semaphore);
    impl Drop for CloseOnExit<'_> {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _close = CloseOnExit(space);
    let mut out = BufWriter::with_capacity(BUFFER, out);
    while let Ok(first) = rx.recv() {
        let mut item = Some(first);
        loop {
            while let Some(next) = item.take() {
                if let Item::Line(_) = next {
                    space.add_permits(1);
                }
                handle(next, &mut out, &mut reopen);
                item = rx.try_recv().ok();
            }
            let _ = out.flush();
            std::thread::sleep(BATCH);
            match rx.try_recv() {
                Ok(next) => item = Some(next),
                Err(_) => break,
            }
        }
    }
    let _ = out.flush();
}

fn handle(item: Item, out: &mut BufWriter<Box<dyn Write + Send>>, reopen: &mut Option<Reopen>) {
    match item {
        Item::Line(line) => {
            let _ = out.write_all(&line);
        }
        Item::Reopen => {
            let _ = out.flush();
            let Some(open) = reopen.as_mut() else {
                return;
            };
            match open() {
                Ok(fresh) => *out = BufWriter::with_capacity(BUFFER, fresh),
                Err(e) => {
                    tracing::error!(event = "log_reopen_failed", error = %e, "cannot reopen a log file; still writing to the old one")
                }
            }
        }
        Item::Flush(done) => {
            let _ = out.flush();
            let _ = done.send(());
        }
    }
}

/// One event's bytes, sent as one line when dropped: what the `tracing`
/// formatter writes to for each event.
pub struct EventLine {
    writer: LineWriter,
    buf: Vec<u8>,
}

impl Write for EventLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A log event is never worth a blocked worker: when the queue is full,
/// the line is dropped and counted.
impl Drop for EventLine {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.writer.line_or_drop(std::mem::take(&mut self.buf));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineWriter {
    type Writer = EventLine;

    fn make_writer(&'a self) -> EventLine {
        EventLine {
            writer: self.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An output that records what reached it, and how many writes.
    #[derive(Clone, Default)]
    pub(crate) struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(b);
            s.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_burst_arrives_whole_in_order_and_in_few_writes() {
        let sink = Sink::default();
        let w = LineWriter::spawn("test-writer", Box::new(sink.clone()), None).unwrap();
        for i in 0..5000 {
            w.try_line(format!("line {i}\n").into_bytes()).unwrap();
        }
        w.flush();
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5000);
        assert!(lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("line {i}")));
        assert!(writes < 100, "{writes} writes for 5000 lines");
    }

    #[test]
    fn reopen_switches_the_output_after_what_was_queued() {
        let first = Sink::default();
        let second = Sink::default();
        let next = second.clone();
        let reopen: Reopen = Box::new(move || Ok(Box::new(next.clone()) as Box<dyn Write + Send>));
        let w = LineWriter::spawn("test-writer", Box::new(first.clone()), Some(reopen)).unwrap();
        w.try_line(b"old\n".to_vec()).unwrap();
        w.reopen();
        w.try_line(b"new\n".to_vec()).unwrap();
        w.flush();
        assert_eq!(first.0.lock().unwrap().0, b"old\n");
        assert_eq!(second.0.lock().unwrap().0, b"new\n");
    }

    #[test]
    fn an_event_line_is_sent_once_when_dropped() {
        let sink = Sink::default();
        let w = LineWriter::spawn("test-writer", Box::new(sink.clone()), None).unwrap();
        {
            let mut e = tracing_subscriber::fmt::MakeWriter::make_writer(&w);
            e.write_all(b"one ").unwrap();
            e.write_all(b"event\n").unwrap();
        }
        drop(tracing_subscriber::fmt::MakeWriter::make_writer(&w));
        w.flush();
        assert_eq!(sink.0.lock().unwrap().0, b"one event\n");
    }

    /// An output whose writes wait until it is opened: a disk that stalls.
    #[derive(Clone, Default)]
    pub(crate) struct Gate {
        /// (open, a write is waiting), and its wake-up.
        state: Arc<(Mutex<(bool, bool)>, std::sync::Condvar)>,
        sink: Sink,
    }

    impl Gate {
        pub(crate) fn open(&self) {
            let (lock, cvar) = &*self.state;
            lock.lock().unwrap().0 = true;
            cvar.notify_all();
        }

        /// Waits until a write is stuck at the closed gate.
        fn wait_stuck(&self) {
            let (lock, cvar) = &*self.state;
            let state = lock.lock().unwrap();
            let (_state, timeout) = cvar
                .wait_timeout_while(state, Duration::from_secs(5), |s| !s.1)
                .unwrap();
            assert!(!timeout.timed_out(), "the writer thread never wrote");
        }

        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.sink.0.lock().unwrap().0.clone()).unwrap()
        }
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (lock, cvar) = &*self.state;
            let mut state = lock.lock().unwrap();
            state.1 = true;
            cvar.notify_all();
            while !state.0 {
                state = cvar.wait(state).unwrap();
            }
            drop(state);
            self.sink.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer of `capacity` lines in front of a stalled disk: its thread
    /// has taken one line off the queue and is stuck writing it out, so
    /// the queue stays as full as the producers make it.
    pub(crate) fn stalled(capacity: usize) -> (LineWriter, Gate) {
        let gate = Gate::default();
        let w = LineWriter::with_capacity("test-writer", Box::new(gate.clone()), None, capacity)
            .unwrap();
        w.try_line(b"stuck\n".to_vec()).unwrap();
        gate.wait_stuck();
        assert_eq!(w.space.available_permits(), capacity);
        (w, gate)
    }

    #[test]
    fn a_full_main_log_queue_drops_and_counts_instead_of_blocking() {
        let (w, gate) = stalled(4);
        // Log events from another thread, so that a producer that blocked
        // would show as a timeout here rather than hang the test.
        let producer = w.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..10 {
                let mut e = tracing_subscriber::fmt::MakeWriter::make_writer(&producer);
                writeln!(e, "event {i}").unwrap();
            }
            done_tx.send(()).unwrap();
        });
        let finished = done_rx.recv_timeout(Duration::from_secs(5));
        gate.open();
        assert!(finished.is_ok(), "a producer blocked on the full queue");
        assert_eq!(w.dropped(), 6, "4 queued, 6 dropped");
        w.flush();
        let text = gate.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["stuck", "event 0", "event 1", "event 2", "event 3"]);
        // With room again, lines go through and nothing more is counted.
        let mut e = tracing_subscriber::fmt::MakeWriter::make_writer(&w);
        writeln!(e, "after").unwrap();
        drop(e);
        w.flush();
        assert!(gate.text().ends_with("after\n"));
        assert_eq!(w.dropped(), 6);
    }

    #[test]
    fn try_line_hands_the_line_back_when_full_and_line_awaits_room() {
        let (w, gate) = stalled(1);
        w.try_line(b"a\n".to_vec()).unwrap();
        assert_eq!(w.try_line(b"b\n".to_vec()), Err(b"b\n".to_vec()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let waiter = tokio::spawn({
                let w = w.clone();
                async move { w.line(b"b\n".to_vec()).await }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiter.is_finished(), "no room yet, so it must wait");
            gate.open();
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("room came back")
                .unwrap();
        });
        w.flush();
        assert_eq!(gate.text(), "stuck\na\nb\n");
        assert_eq!(w.dropped(), 0);
    }
}
