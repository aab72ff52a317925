//! The audit log: one JSON line per blocked session and per admin action,
//! appended to `[audit] path`, reopened on SIGHUP so logrotate can move it.
//!
//! Lines go through a bounded queue to a writer thread, as the main log
//! does, so a flood of refusals never waits on the disk in the accept loop
//! unless the queue is full.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use serde_json::{json, Value};

use crate::logging;

/// Lines queued before producers wait.
const QUEUE: usize = 16 * 1024;

enum Item {
    Line(String),
    Reopen,
    Flush(SyncSender<()>),
}

/// The audit log, or nothing when `[audit]` is absent.
#[derive(Default)]
pub struct Audit {
    tx: Option<SyncSender<Item>>,
}

impl Audit {
    /// Opens `path` for appending and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        let file = open_append(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(path, file, rx))?;
        Ok(Audit { tx: Some(tx) })
    }

    fn send(&self, item: Item) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(item);
        }
    }

    /// Appends one record; `time` is added first.
    pub fn record(&self, fields: Value) {
        if self.tx.is_none() {
            return;
        }
        let mut line = String::with_capacity(192);
        line.push_str("{\"time\":\"");
        logging::push_timestamp(&mut line, std::time::SystemTime::now());
        line.push('"');
        if let Value::Object(map) = fields {
            for (k, v) in map {
                line.push(',');
                line.push_str(&Value::String(k).to_string());
                line.push(':');
                line.push_str(&v.to_string());
            }
        }
        line.push('}');
        self.send(Item::Line(line));
    }

    /// One blocked session.
    pub fn blocked(&self, block: &crate::report::Block, client: std::net::SocketAddr) {
        if self.tx.is_none() {
            return;
        }
        self.record(json!({
            "event": "blocked",
            "client": client.ip().to_string(),
            "stage": block.stage.as_str(),
            "reason": block.reason.as_str(),
            "app": block.app.as_deref().unwrap_or(""),
            "stream": block.stream.as_deref().unwrap_or(""),
        }));
    }

    /// One admin action.
    pub fn action(&self, action: &str, target: &str, reason: &str, result: &str) {
        self.record(json!({
            "event": "admin",
            "action": action,
            "target": target,
            "reason": reason,
            "result": result,
        }));
    }

    /// Reopens the file at its path (after logrotate moved it).
    pub fn reopen(&self) {
        self.send(Item::Reopen);
    }

    /// Waits until every line queued so far is on disk (tests, shutdown).
    pub fn flush(&self) {
        let (tx, rx) = sync_channel(1);
        self.send(Item::Flush(tx));
        let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(path: PathBuf, file: File, rx: Receiver<Item>) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    while let Ok(first) = rx.recv() {
        let mut item = Some(first);
        // Drain what is queued before flushing, so bursts become few writes.
        while let Some(next) = item.take() {
            match next {
                Item::Line(line) => {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                }
                Item::Reopen => {
                    let _ = out.flush();
                    match open_append(&path) {
                        Ok(f) => out = BufWriter::with_capacity(64 * 1024, f),
                        Err(e) => {
                            tracing::error!(event = "audit_reopen_failed", error = %e, path = %path.display(), "cannot reopen the audit log")
                        }
                    }
                }
                Item::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            item = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        audit.action("ban", "192.0.2.0/24", "abuse \"report\"", "ok");
        audit.flush();
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        audit.reopen();
        audit.action("unban", "192.0.2.0/24", "", "ok");
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
}
