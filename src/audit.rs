//! The audit log: one JSON line per blocked session and per admin action,
//! appended to `[audit] path`, reopened on SIGHUP so logrotate can move it.
//!
//! Lines go to a [`LineWriter`] thread, as the main log's do, so a flood of
//! refusals never waits on the disk while the queue has room. The audit
//! log never drops a line: fail2ban and the operator's records depend on
//! it. When the queue is full, the refusing task awaits room
//! ([`Audit::record`], [`Audit::write`]), an async wait that never blocks a
//! worker thread; code that cannot await takes the line back
//! ([`Audit::try_blocked`]) and awaits room for it later.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::line_writer::{LineWriter, Reopen};
use crate::logging;

/// The audit log, or nothing when `[audit]` is absent.
#[derive(Default)]
pub struct Audit {
    out: Option<LineWriter>,
}

/// An audit line that found the queue full. It is still owed to the log:
/// hand it to [`Audit::write`].
#[must_use = "the audit log never drops a line: await Audit::write"]
#[derive(Debug)]
pub struct Unwritten(Vec<u8>);

impl Audit {
    /// Opens `path` for appending and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        let file = open_append(path)?;
        let path = path.to_path_buf();
        let reopen: Reopen =
            Box::new(move || Ok(Box::new(open_append(&path)?) as Box<dyn Write + Send>));
        let out = LineWriter::spawn("audit-writer", Box::new(file), Some(reopen))?;
        Ok(Audit { out: Some(out) })
    }

    /// One record of string fields, in the order given (keep them sorted,
    /// as earlier versions wrote them); `time` is added first. The line is
    /// written by hand rather than through serde_json: under a flood of
    /// refusals this runs once per refused connection.
    fn line(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut line = String::with_capacity(192);
        line.push_str("{\"time\":\"");
        logging::push_timestamp(&mut line, std::time::SystemTime::now());
        line.push('"');
        for (key, value) in fields {
            line.push_str(",\"");
            logging::push_escaped(&mut line, key);
            line.push_str("\":\"");
            logging::push_escaped(&mut line, value);
            line.push('"');
        }
        line.push_str("}\n");
        line.into_bytes()
    }

    /// Appends one record (see [`Audit::line`]), awaiting room in the queue.
    pub async fn record(&self, fields: &[(&str, &str)]) {
        if let Some(out) = &self.out {
            out.line(Audit::line(fields)).await;
        }
    }

    /// One blocked session, queued at once if the queue has room. If it
    /// has none, the line comes back, to be awaited with [`Audit::write`].
    /// App and stream names are client text, [`logging::cut`] to size.
    pub fn try_blocked(
        &self,
        block: &crate::verdict::Block,
        client: std::net::SocketAddr,
    ) -> Option<Unwritten> {
        let out = self.out.as_ref()?;
        // Field order is an interface: the fail2ban filter in
        // deploy/fail2ban matches `"client":…,"event":…,"reason":…`.
        let line = Audit::line(&[
            ("app", &logging::cut(block.app.as_deref().unwrap_or(""))),
            ("client", &client.ip().to_string()),
            ("event", "blocked"),
            ("reason", block.reason.as_str()),
            ("stage", block.stage.as_str()),
            (
                "stream",
                &logging::cut(block.stream.as_deref().unwrap_or("")),
            ),
        ]);
        out.try_line(line).err().map(Unwritten)
    }

    /// Writes a line [`Audit::try_blocked`] gave back, awaiting room.
    pub async fn write(&self, line: Unwritten) {
        if let Some(out) = &self.out {
            out.line(line.0).await;
        }
    }

    /// One admin action.
    pub async fn action(&self, action: &str, target: &str, reason: &str, result: &str) {
        self.record(&[
            ("action", action),
            ("event", "admin"),
            ("reason", reason),
            ("result", result),
            ("target", target),
        ])
        .await;
    }

    /// Reopens the file at its path (after logrotate moved it).
    pub fn reopen(&self) {
        if let Some(out) = &self.out {
            out.reopen();
        }
    }

    /// Waits until every line queued so far is on disk (tests, shutdown).
    pub fn flush(&self) {
        if let Some(out) = &self.out {
            out.flush();
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Block, Reason, Stage};
    use serde_json::Value;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn lines_are_json_and_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        block_on(audit.action("ban", "192.0.2.0/24", "abuse \"report\"", "ok"));
        audit.flush();
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        audit.reopen();
        block_on(audit.action("unban", "192.0.2.0/24", "", "ok"));
        audit.flush();
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        let v: Value = serde_json::from_str(old.trim()).unwrap();
        assert_eq!(v["action"], "ban");
        assert_eq!(v["reason"], "abuse \"report\"");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        let v: Value = serde_json::from_str(new.trim()).unwrap();
        assert_eq!(v["action"], "unban");
    }

    #[test]
    fn any_text_comes_back_unchanged_through_the_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        let odd = "tab\tnew\nline \u{1} \\ \" é 🎥";
        block_on(audit.action("block", odd, odd, "ok"));
        audit.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["target"], odd);
        assert_eq!(v["reason"], odd);
        assert_eq!(v["event"], "admin");
    }

    fn block(stream: &str) -> Block {
        Block::new(Stage::Session, Reason::Unauthorized, "bad key")
            .with_app("live")
            .with_stream(Some(stream))
    }

    #[test]
    fn a_blocked_session_is_one_line_with_client_text_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        let client: std::net::SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let long = "s".repeat(64 * 1024);
        assert!(audit.try_blocked(&block(&long), client).is_none());
        audit.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 1024, "{} bytes", text.len());
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        let stream = v["stream"].as_str().unwrap();
        assert_eq!(stream, format!("{}{}", "s".repeat(256), logging::CUT_MARK));
        assert!(text.contains(r#""client":"192.0.2.7","event":"blocked","reason":"unauthorized""#));
    }

    /// A stalled disk fills the audit queue. A producer on a
    /// current_thread runtime then waits for room as a task: the one
    /// thread goes on running the other tasks, and once the disk moves,
    /// every line is written. A producer that blocked the thread would
    /// stop the other task, and the test would time out.
    #[test]
    fn a_full_audit_queue_makes_the_producer_wait_without_blocking_the_thread() {
        let (out, gate) = crate::line_writer::tests::stalled(2);
        let audit = std::sync::Arc::new(Audit { out: Some(out) });
        let client: std::net::SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let (result_tx, result_rx) = std::sync::mpsc::channel();
        let runtime = std::thread::spawn({
            let audit = audit.clone();
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let producer = tokio::spawn({
                        let audit = audit.clone();
                        async move {
                            for i in 0..5 {
                                match audit.try_blocked(&block(&format!("s{i}")), client) {
                                    None => {}
                                    Some(line) => audit.write(line).await,
                                }
                            }
                            audit.action("ban", "192.0.2.0/24", "", "ok").await;
                        }
                    });
                    // Another task on the same thread makes progress while
                    // the producer waits for room.
                    let mut ticks = 0;
                    while ticks < 20 {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        ticks += 1;
                    }
                    let waiting = !producer.is_finished();
                    result_tx.send((ticks, waiting)).unwrap();
                    producer.await.unwrap();
                });
            }
        });
        let progress = result_rx.recv_timeout(std::time::Duration::from_secs(5));
        gate.open();
        assert_eq!(
            progress,
            Ok((20, true)),
            "the other task ran while the producer still waited for room"
        );
        runtime.join().unwrap();
        audit.flush();
        let text = gate.text();
        let streams: Vec<String> = text
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|v| v["stream"].as_str().unwrap_or("-").to_string())
            .collect();
        assert_eq!(streams, ["s0", "s1", "s2", "s3", "s4", "-"], "{text}");
    }
}
