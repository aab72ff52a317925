//! The last stage of every connection: say what happened to it.
//!
//! A refusal ([`Block`]) is counted, logged as one event, written to the
//! audit log and scored against the client's prefix, which may ban it. All
//! of that is decided by the config the session began with, dry run and
//! scores included, so a reload never changes how a live session is judged.
//! Nothing here does I/O beyond the metrics registry and the logs.

use std::time::{Duration, Instant};

use crate::config::{Config, Mode};
use crate::connection::ClientAddr;
use crate::guard::Guard;
use crate::verdict::{Block, Kind, Reason};

/// Reports a refusal: counts it, logs one event, adds its score to the
/// client's prefix (which may ban it). Returns whether to enforce it: false
/// only in dry run, for refusals dry run lets through (then it is counted
/// in `rtmp_guard_would_block_total` instead).
pub fn refuse(guard: &Guard, config: &Config, client: ClientAddr, block: &Block) -> bool {
    let dry_run = config.server.mode == Mode::DryRun;
    let enforce = block.always || !dry_run;
    macro_rules! event {
        ($event:literal, $message:literal) => {
            tracing::warn!(
                event = $event,
                client = %client.ip(),
                client_port = client.port(),
                stage = block.stage.as_str(),
                reason = block.reason.as_str(),
                app = block.app.as_deref().unwrap_or(""),
                stream = block.stream.as_deref().unwrap_or(""),
                detail = block.detail.as_str(),
                $message
            )
        };
    }
    if enforce {
        guard.metrics.blocked(block.stage, block.reason);
        event!("blocked", "session blocked");
        guard.audit.blocked(block, client.socket());
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
        tracing::warn!(
            event = "ban",
            prefix = %ban.prefix,
            reason = ban.reason.as_str(),
            duration_seconds = ban.duration.as_secs(),
            dry_run,
            "prefix banned"
        );
    }
    enforce
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
    pub end: &'a str,
    pub duration: Duration,
    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    /// Streams published or played, without query strings.
    pub streams: &'a [(Kind, String)],
}

/// Logs the end of a session that reached the relay, with the streams it
/// published or played (names only: keys and tokens travel in the query).
pub fn session_closed(client: ClientAddr, closed: &Closed<'_>) {
    let streams: Vec<String> = closed
        .streams
        .iter()
        .map(|(kind, name)| format!("{} {name}", kind.as_str()))
        .collect();
    tracing::info!(
        event = "session_closed",
        client = %client.ip(),
        client_port = client.port(),
        app = closed.app,
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

/// Logs an origin that broke the protocol. It is counted as an upstream
/// error, never scored against the client.
pub fn upstream_violation(client: ClientAddr, upstream: &str, detail: &str) {
    tracing::warn!(
        event = "upstream_protocol_violation",
        client = %client.ip(),
        client_port = client.port(),
        upstream,
        detail
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
