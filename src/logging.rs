//! Log output: human-readable text, or one JSON object per line.
//!
//! Every refused connection writes a log event, so under a flood the log is
//! on the hot path. The JSON lines are written by a small formatter of our
//! own (flat fields, a cheaply formatted timestamp) rather than the general
//! one, which costs several times more per event, and all output goes
//! through a [`LineWriter`] thread so the accept loop never waits on
//! write(2). When that thread falls behind, lines are dropped and counted
//! ([`lines_dropped`]), never waited for.
//!
//! Text a client chose (app and stream names, details quoting what it
//! sent) is [`cut`] to [`MAX_CLIENT_TEXT`] bytes in every log line, so a
//! flood of refusals with 64 KiB names cannot fill the disk 64 KiB at a
//! time.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::line_writer::LineWriter;

/// Output format, from `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The most bytes of client-chosen text a log line carries per field.
pub const MAX_CLIENT_TEXT: usize = 256;
/// What follows client text that [`cut`] shortened.
pub const CUT_MARK: &str = "…(cut)";

/// `text` if it fits in [`MAX_CLIENT_TEXT`] bytes; otherwise its first
/// bytes up to that, ending on a character boundary, followed by
/// [`CUT_MARK`].
pub fn cut(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_CLIENT_TEXT {
        return Cow::Borrowed(text);
    }
    let end = (0..=MAX_CLIENT_TEXT)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let kept = text.get(..end).unwrap_or("");
    let mut out = String::with_capacity(kept.len() + CUT_MARK.len());
    out.push_str(kept);
    out.push_str(CUT_MARK);
    Cow::Owned(out)
}

/// The main log's count of dropped lines, once [`init`] has run.
static DROPPED: OnceLock<Arc<AtomicU64>> = OnceLock::new();

/// Lines the main log dropped because its queue was full:
/// `rtmp_guard_log_lines_dropped_total`.
pub fn lines_dropped() -> u64 {
    DROPPED.get().map_or(0, |d| d.load(Ordering::Relaxed))
}

/// Installs the global subscriber, writing to stdout through a
/// [`LineWriter`] thread. Keep the returned guard until exit: dropping it
/// waits for the queued lines. When the queue is full (16 Ki lines), a
/// line is dropped and counted ([`lines_dropped`]): a runtime worker never
/// waits for the log.
pub fn init(format: Format) -> FlushOnDrop {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let writer = match LineWriter::spawn("log-writer", Box::new(std::io::stdout()), None) {
        Ok(w) => w,
        Err(e) => {
            // No thread: log nowhere rather than refuse to run.
            eprintln!("cannot start the log writer thread: {e}");
            return FlushOnDrop(None);
        }
    };
    let _ = DROPPED.set(writer.dropped_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi && format == Format::Text)
        .with_writer(writer.clone());
    match format {
        Format::Text => builder.init(),
        Format::Json => builder.event_format(JsonLines).init(),
    }
    FlushOnDrop(Some(writer))
}

/// Flushes the log when dropped.
pub struct FlushOnDrop(Option<LineWriter>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Some(w) = &self.0 {
            w.flush();
        }
    }
}

/// `{"timestamp":"…Z","level":"WARN","message":"…","field":value,…}`
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":\"");
        push_timestamp(&mut line, SystemTime::now());
        line.push_str("\",\"level\":\"");
        line.push_str(event.metadata().level().as_str());
        line.push('"');
        event.record(&mut JsonFields(&mut line));
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// Appends each field as `,"name":value`.
struct JsonFields<'a>(&'a mut String);

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push_str(",\"");
        push_escaped(self.0, field.name());
        self.0.push_str("\":");
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.0.push('"');
        push_escaped(self.0, value);
        self.0.push('"');
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.0, "{value}");
        } else {
            self.0.push_str("null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.0.push('"');
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        push_escaped(self.0, &text);
        self.0.push('"');
    }
}

/// JSON string escaping (without the quotes).
pub fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-27T23:22:45.123456Z`.
/// A clock outside what RFC 3339 can write (before 1970, after 9999) is
/// shown at the nearest end.
pub fn push_timestamp(out: &mut String, now: SystemTime) {
    let latest = UNIX_EPOCH + Duration::from_micros(253_402_300_799_999_999);
    let now = now.clamp(UNIX_EPOCH, latest);
    let _ = write!(out, "{}", humantime::format_rfc3339_micros(now));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut s = String::new();
        push_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_micros(1_795_821_765_123_456),
        );
        assert_eq!(s, "2026-11-27T23:22:45.123456Z");
        let mut s = String::new();
        push_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(s, "2000-02-29T00:00:00.000000Z");
        let mut s = String::new();
        push_timestamp(&mut s, UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
        let mut s = String::new();
        push_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(253_402_300_800));
        assert_eq!(s, "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn client_text_is_cut_on_a_char_boundary_and_marked() {
        assert_eq!(cut("cam1"), "cam1");
        let exact = "x".repeat(MAX_CLIENT_TEXT);
        assert!(matches!(cut(&exact), Cow::Borrowed(t) if t == exact));
        let long = "n".repeat(64 * 1024);
        let c = cut(&long);
        assert_eq!(c.len(), MAX_CLIENT_TEXT + CUT_MARK.len());
        assert!(c.starts_with(&"n".repeat(MAX_CLIENT_TEXT)));
        assert!(c.ends_with(CUT_MARK));
        // 255 ASCII bytes, then a 4-byte character across the limit.
        let across = format!("{}🎥🎥", "a".repeat(MAX_CLIENT_TEXT - 1));
        let c = cut(&across);
        assert_eq!(c, format!("{}{CUT_MARK}", "a".repeat(MAX_CLIENT_TEXT - 1)));
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        push_escaped(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, "a\\\"b\\\\c\\nd\\u0001");
    }
}
