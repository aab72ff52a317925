//! A writer thread behind a bounded queue, shared by the main log and the
//! audit log. Both write one line per refused connection, so under a flood
//! they are on the accept loop's hot path.
//!
//! The queue never drops a line: when it is full, producers wait for the
//! disk. Once a burst starts, the thread sleeps a few milliseconds between
//! drains instead of blocking on the queue, so producers never pay for
//! waking it, and everything that arrived meanwhile goes out in one write.

use std::io::{self, BufWriter, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

/// Lines queued before producers wait.
const QUEUE: usize = 16 * 1024;
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

/// The producers' end; clones share one thread and one output.
#[derive(Clone)]
pub struct LineWriter {
    tx: SyncSender<Item>,
}

impl LineWriter {
    /// Starts the thread `name`, writing to `out`. `reopen`, if given,
    /// replaces `out` when [`LineWriter::reopen`] is called.
    pub fn spawn(
        name: &str,
        out: Box<dyn Write + Send>,
        reopen: Option<Reopen>,
    ) -> io::Result<LineWriter> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_loop(out, reopen, rx))?;
        Ok(LineWriter { tx })
    }

    /// Queues `line`, which carries its own newline.
    pub fn line(&self, line: Vec<u8>) {
        let _ = self.tx.send(Item::Line(line));
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

fn write_loop(out: Box<dyn Write + Send>, mut reopen: Option<Reopen>, rx: Receiver<Item>) {
    let mut out = BufWriter::with_capacity(BUFFER, out);
    while let Ok(first) = rx.recv() {
        let mut item = Some(first);
        loop {
            while let Some(next) = item.take() {
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

impl Drop for EventLine {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.writer.line(std::mem::take(&mut self.buf));
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
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An output that records what reached it, and how many writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

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
            w.line(format!("line {i}\n").into_bytes());
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
        w.line(b"old\n".to_vec());
        w.reopen();
        w.line(b"new\n".to_vec());
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
}
