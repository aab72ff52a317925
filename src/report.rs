//! The last stage of every connection: say what happened to it.
//!
//! A refusal ([`Block`]) is counted (in the metrics and in the status
//! page's [`crate::refusals`] history), logged as one event, written to the
//! audit log and scored against the client's prefix, which may ban it. All
//! of that is decided by the config the session began with, dry run and
//! scores included, so a reload never changes how a live session is judged.
//! Nothing here does I/O beyond the metrics registry and the logs.
//!
//! Client text (app, stream, a detail quoting what the client sent) goes
//! into log lines [`cut`] to [`logging::MAX_CLIENT_TEXT`] bytes.
//!
//! The audit log never drops a line. [`refuse`] awaits room in its queue
//! when it is full; [`refuse_now`], for code that cannot await (the
//! relay's judging of each message), hands the line back instead, for the
//! session to await before its socket closes.

use std::time::{Duration, Instant};

use crate::audit::Unwritten;
use crate::config::{Config, Mode};
use crate::connection::ClientAddr;
use crate::guard::Guard;
use crate::logging::{self, cut};
use crate::transport;
use crate::verdict::{Block, Kind, Reason};

/// Reports a refusal: counts it, logs one event, audits it, adds its score
/// to the client's prefix (which may ban it). Returns whether to enforce
/// it: false only in dry run, for refusals dry run lets through (then it is
/// counted in `rtmp_guard_would_block_total` instead). When the audit
/// queue is full, waits for room: the task waits, never its thread.
pub async fn refuse(guard: &Guard, config: &Config, client: ClientAddr, block: &Block) -> bool {
    let refused = refuse_now(guard, config, client, block);
    if let Some(line) = refused.audit {
        guard.audit.write(line).await;
    }
    refused.enforce
}

/// What [`refuse_now`] did.
#[derive(Debug)]
pub struct Refused {
    /// Whether to enforce the refusal (see [`refuse`]).
    pub enforce: bool,
    /// The audit line, when the audit queue had no room for it: still owed
    /// to the log, by [`crate::audit::Audit::write`].
    pub audit: Option<Unwritten>,
}

/// As [`refuse`], without ever waiting: an audit line the queue has no
/// room for comes back in [`Refused::audit`].
pub fn refuse_now(guard: &Guard, config: &Config, client: ClientAddr, block: &Block) -> Refused {
    let dry_run = config.server.mode == Mode::DryRun;
    let enforce = block.always || !dry_run;
    let app = cut(block.app.as_deref().unwrap_or(""));
    let stream = cut(block.stream.as_deref().unwrap_or(""));
    let detail = cut(&block.detail);
    macro_rules! event {
        ($event:literal, $message:literal) => {
            tracing::warn!(
                event = $event,
                client = %client.ip(),
                client_port = client.port(),
                stage = block.stage.as_str(),
                reason = block.reason.as_str(),
                app = &*app,
                stream = &*stream,
                detail = &*detail,
                $message
            )
        };
    }
    let mut audit = None;
    if enforce {
        guard.metrics.blocked(block.stage, block.reason);
        guard
            .refusals
            .record(block.reason, crate::control::unix_now());
        event!("blocked", "session blocked");
        audit = guard.audit.try_blocked(block, client.socket());
    } else {
        guard.metrics.would_block(block.stage, block.reason);
        event!("would_block", "session would be blocked (dry run)");
    }
    let points = block_score(config, block);
    if let Some(ban) = guard
        .admission
        .record(client.ip(), block.reason, points, Instant::now())
    {
        guard.metrics.banned(ban.reason);
        guard.kernel.changed();
        tracing::warn!(
            event = "ban",
            prefix = %ban.prefix,
            reason = ban.reason.as_str(),
            duration_seconds = ban.duration.as_secs(),
            dry_run,
            "prefix banned"
        );
        if let Some(fleet) = &guard.fleet {
            fleet.auto_ban(ban.prefix, ban.reason, ban.duration);
        }
    }
    Refused { enforce, audit }
}

/// What one refusal for `reason` adds to the prefix's ban score under
/// `config`: `[bans.scores]`, or the reason's default.
pub fn ban_score(config: &Config, reason: Reason) -> u32 {
    config
        .bans
        .scores
        .get(reason.as_str())
        .copied()
        .unwrap_or(reason.default_ban_score())
}

/// What `block` adds to the client's ban score: nothing if the operator
/// ended the session, else [`ban_score`] of its reason.
pub fn block_score(config: &Config, block: &Block) -> u32 {
    if block.by_operator {
        0
    } else {
        ban_score(config, block.reason)
    }
}

/// What a session that reached the relay did, for its closing log line.
pub struct Closed<'a> {
    pub app: &'a str,
    pub transport: transport::Kind,
    pub end: &'a str,
    pub duration: Duration,
    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    /// Streams published or played, without query strings.
    pub streams: &'a [(Kind, String)],
}

/// Logs the end of a session that reached the relay, with the streams it
/// published or played (names only: keys and tokens travel in the query)
/// and its transport (`rtmp` or `rtmps`).
pub fn session_closed(client: ClientAddr, closed: &Closed<'_>) {
    let streams: Vec<String> = closed
        .streams
        .iter()
        .map(|(kind, name)| format!("{} {}", kind.as_str(), cut(name)))
        .collect();
    tracing::info!(
        event = "session_closed",
        client = %client.ip(),
        client_port = client.port(),
        app = closed.app,
        transport = closed.transport.as_str(),
        end = closed.end,
        duration_seconds = closed.duration.as_secs_f64(),
        bytes_client_to_upstream = closed.bytes_client_to_upstream,
        bytes_upstream_to_client = closed.bytes_upstream_to_client,
        streams = streams.join(",").as_str(),
        "session closed"
    );
}

/// Logs a session refused because no upstream server could be reached.
pub fn upstream_unreachable(client: ClientAddr, app: &str, upstream: &str, detail: &str) {
    tracing::warn!(
        event = "upstream_unreachable",
        client = %client.ip(),
        client_port = client.port(),
        app,
        upstream,
        detail,
        "no upstream server reachable"
    );
}

/// Logs a session refused because no server of its upstream was up (or
/// all were drained). Not a client block: never counted as one, never
/// scored.
pub fn upstream_unavailable(client: ClientAddr, app: &str, upstream: &str) {
    tracing::warn!(
        event = "upstream_unavailable",
        client = %client.ip(),
        client_port = client.port(),
        app,
        upstream,
        "no upstream server is up"
    );
}

/// Logs an origin that broke the protocol. It is counted as an upstream
/// error, never scored against the client.
pub fn upstream_violation(client: ClientAddr, upstream: &str, detail: &str) {
    tracing::warn!(
        event = "upstream_protocol_violation",
        client = %client.ip(),
        client_port = client.port(),
        upstream,
        detail = &*logging::cut(detail)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Stage;
    use std::sync::{Arc, Mutex};

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn client_text_in_a_refusal_is_cut_in_the_log_and_the_audit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = crate::audit::Audit::open(&path).unwrap();
        let config = Config::parse("", "t.toml").unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new(&[], &[]).unwrap());
        let guard = Guard::new(config.clone(), None, metrics, audit);
        let long = "é".repeat(32 * 1024);
        let block = Block::new(
            Stage::Connect,
            Reason::UnknownApp,
            format!("no app {long:?}"),
        )
        .with_app(&long)
        .with_stream(Some(&long));
        let client = ClientAddr::new("192.0.2.7:5000".parse().unwrap());
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(logging::JsonLines)
            .with_writer({
                let out = out.clone();
                move || out.clone()
            })
            .finish();
        let refused = tracing::subscriber::with_default(subscriber, || {
            refuse_now(&guard, &config, client, &block)
        });
        assert!(refused.enforce && refused.audit.is_none());

        let log = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.len() < 2048, "{} bytes", log.len());
        let v: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
        let kept = "é".repeat(logging::MAX_CLIENT_TEXT / 2);
        assert_eq!(v["app"], format!("{kept}{}", logging::CUT_MARK));
        assert_eq!(v["stream"], format!("{kept}{}", logging::CUT_MARK));
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.starts_with("no app \"é") && detail.ends_with(logging::CUT_MARK));

        guard.audit.flush();
        let line = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["stream"], format!("{kept}{}", logging::CUT_MARK));
        assert_eq!(v["app"], format!("{kept}{}", logging::CUT_MARK));
    }

    #[test]
    fn scores_come_from_the_config_or_the_reasons_default() {
        let text = "[bans.scores]\nunknown_app = 7\n";
        let config = Config::parse(text, "t.toml").unwrap();
        assert_eq!(ban_score(&config, Reason::UnknownApp), 7);
        assert_eq!(
            ban_score(&config, Reason::ProtocolViolation),
            Reason::ProtocolViolation.default_ban_score()
        );
    }

    #[test]
    fn sessions_the_operator_ended_score_nothing() {
        use crate::verdict::Stage;
        let text = "[bans.scores]\ncontent_blocked = 4\nkicked = 4\n";
        let config = Config::parse(text, "t.toml").unwrap();
        let refused = Block::new(Stage::Session, Reason::ContentBlocked, "blocked content");
        assert_eq!(block_score(&config, &refused), 4);
        for reason in [Reason::ContentBlocked, Reason::Kicked, Reason::Banned] {
            let ended = Block::new(Stage::Session, reason, "by the operator")
                .always()
                .by_operator();
            assert_eq!(block_score(&config, &ended), 0, "{reason}");
        }
    }
}
