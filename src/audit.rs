//! The audit log: one JSON line per blocked session and per admin action,
//! appended to `[audit] path`, reopened on SIGHUP so logrotate can move it.
//!
//! Lines go to a [`LineWriter`] thread, as the main log's do, so a flood of
//! refusals never waits on the disk in the accept loop unless its queue is
//! full.

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

    /// Appends one record of string fields, in the order given (keep them
    /// sorted, as earlier versions wrote them); `time` is added first. The
    /// line is written by hand rather than through serde_json: under a
    /// flood of refusals this runs once per refused connection.
    pub fn record(&self, fields: &[(&str, &str)]) {
        let Some(out) = &self.out else {
            return;
        };
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
        out.line(line.into_bytes());
    }

    /// One blocked session.
    pub fn blocked(&self, block: &crate::verdict::Block, client: std::net::SocketAddr) {
        if self.out.is_none() {
            return;
        }
        // Field order is an interface: the fail2ban filter in
        // deploy/fail2ban matches `"client":…,"event":…,"reason":…`.
        self.record(&[
            ("app", block.app.as_deref().unwrap_or("")),
            ("client", &client.ip().to_string()),
            ("event", "blocked"),
            ("reason", block.reason.as_str()),
            ("stage", block.stage.as_str()),
            ("stream", block.stream.as_deref().unwrap_or("")),
        ]);
    }

    /// One admin action.
    pub fn action(&self, action: &str, target: &str, reason: &str, result: &str) {
        self.record(&[
            ("action", action),
            ("event", "admin"),
            ("reason", reason),
            ("result", result),
            ("target", target),
        ]);
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
    use serde_json::Value;

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

    #[test]
    fn any_text_comes_back_unchanged_through_the_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        let odd = "tab\tnew\nline \u{1} \\ \" é 🎥";
        audit.action("block", odd, odd, "ok");
        audit.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["target"], odd);
        assert_eq!(v["reason"], odd);
        assert_eq!(v["event"], "admin");
    }
}
