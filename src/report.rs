//! The last stage of every connection: say what happened to it.
//!
//! Every rejection is one [`Block`]: a stage, a reason from a fixed set, and
//! a detail for the log. [`Reason`] is the single source of the metric label,
//! the log field and the text a client is told, so they cannot drift apart.
//! Nothing here does I/O beyond the metrics registry and the log.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::Mode;
use crate::Guard;

/// Where on the connection's path it was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Refused at accept, before a byte is read (or, for a trusted proxy,
    /// right after its PROXY header).
    Accept,
    Handshake,
    Connect,
    Session,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Accept,
        Stage::Handshake,
        Stage::Connect,
        Stage::Session,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Accept => "accept",
            Stage::Handshake => "handshake",
            Stage::Connect => "connect",
            Stage::Session => "session",
        }
    }
}

/// Why a connection was refused: the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// First byte not 3, and not a recognisable other protocol.
    BadVersion,
    /// HTTP, TLS or SSH on the RTMP port.
    NotRtmp,
    HandshakeTimeout,
    ConnectTimeout,
    ProtocolViolation,
    UnknownApp,
    /// Over `max_connections`, or over `max_concurrent` for the prefix.
    TooManyConnections,
    /// In `[access] deny`, or not in a non-empty `[access] allow`.
    IpDenied,
    /// The prefix is banned.
    Banned,
    /// Over the prefix's connection rate.
    RateLimited,
    /// Over `max_pending`: shed while the guard is busy.
    Overloaded,
    /// A PROXY header from a peer that is not trusted.
    ForgedProxyHeader,
    /// Commands faster than the session rate.
    CommandFlood,
    /// `createStream` past `max_streams`.
    TooManyStreams,
    /// A publish or play without a valid key or token, or not allowed.
    Unauthorized,
    /// A publish or play from an address the app's rules refuse.
    ForbiddenIp,
    /// A play whose pageUrl/swfUrl matches none of the app's referrers.
    BadReferrer,
    /// A stream name in `blocked_streams`.
    ContentBlocked,
    /// Over `max_publishers` or `max_viewers`.
    QuotaExceeded,
    /// A publish of a name already being published.
    StreamBusy,
    /// A publisher over `max_publish_bitrate` for too long.
    BitrateExceeded,
    /// The HTTP auth service did not answer and `on_error` is deny.
    AuthUnavailable,
    /// A connect to an app the operator suspended.
    AppSuspended,
    /// Ended by the operator (admin API, or a ban, block or suspension
    /// made while the session was live).
    Kicked,
}

impl Reason {
    pub const ALL: [Reason; 24] = [
        Reason::BadVersion,
        Reason::NotRtmp,
        Reason::HandshakeTimeout,
        Reason::ConnectTimeout,
        Reason::ProtocolViolation,
        Reason::UnknownApp,
        Reason::TooManyConnections,
        Reason::IpDenied,
        Reason::Banned,
        Reason::RateLimited,
        Reason::Overloaded,
        Reason::ForgedProxyHeader,
        Reason::CommandFlood,
        Reason::TooManyStreams,
        Reason::Unauthorized,
        Reason::ForbiddenIp,
        Reason::BadReferrer,
        Reason::ContentBlocked,
        Reason::QuotaExceeded,
        Reason::StreamBusy,
        Reason::BitrateExceeded,
        Reason::AuthUnavailable,
        Reason::AppSuspended,
        Reason::Kicked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadVersion => "bad_version",
            Reason::NotRtmp => "not_rtmp",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::ProtocolViolation => "protocol_violation",
            Reason::UnknownApp => "unknown_app",
            Reason::TooManyConnections => "too_many_connections",
            Reason::IpDenied => "ip_denied",
            Reason::Banned => "banned",
            Reason::RateLimited => "rate_limited",
            Reason::Overloaded => "overloaded",
            Reason::ForgedProxyHeader => "forged_proxy_header",
            Reason::CommandFlood => "command_flood",
            Reason::TooManyStreams => "too_many_streams",
            Reason::Unauthorized => "unauthorized",
            Reason::ForbiddenIp => "forbidden_ip",
            Reason::BadReferrer => "bad_referrer",
            Reason::ContentBlocked => "content_blocked",
            Reason::QuotaExceeded => "quota_exceeded",
            Reason::StreamBusy => "stream_busy",
            Reason::BitrateExceeded => "bitrate_exceeded",
            Reason::AuthUnavailable => "auth_unavailable",
            Reason::AppSuspended => "app_suspended",
            Reason::Kicked => "kicked",
        }
    }

    /// Whether dry run lets such a connection through. Policy limits do;
    /// protocol failures cannot be relayed, an unknown app has no
    /// upstream, and a forged PROXY header is not RTMP.
    pub fn dry_run_passes(self) -> bool {
        matches!(
            self,
            Reason::IpDenied
                | Reason::Banned
                | Reason::RateLimited
                | Reason::TooManyConnections
                | Reason::CommandFlood
                | Reason::TooManyStreams
                | Reason::Unauthorized
                | Reason::ForbiddenIp
                | Reason::BadReferrer
                | Reason::ContentBlocked
                | Reason::QuotaExceeded
                | Reason::StreamBusy
                | Reason::BitrateExceeded
                | Reason::AuthUnavailable
        )
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// What one such event adds to the prefix's ban score, unless
    /// `[bans.scores]` says otherwise. A failed key or token scores 3, so
    /// guessing gets an address banned.
    pub fn default_ban_score(self) -> u32 {
        match self {
            Reason::NotRtmp | Reason::BadVersion | Reason::ProtocolViolation => 5,
            Reason::ForgedProxyHeader | Reason::CommandFlood => 5,
            Reason::UnknownApp | Reason::TooManyStreams | Reason::Unauthorized => 3,
            Reason::HandshakeTimeout | Reason::ConnectTimeout => 2,
            Reason::RateLimited => 1,
            // The client's standing, not its behaviour: no score.
            Reason::TooManyConnections
            | Reason::IpDenied
            | Reason::Banned
            | Reason::Overloaded
            | Reason::ForbiddenIp
            | Reason::BadReferrer
            | Reason::ContentBlocked
            | Reason::QuotaExceeded
            | Reason::StreamBusy
            | Reason::BitrateExceeded
            | Reason::AuthUnavailable
            | Reason::AppSuspended
            | Reason::Kicked => 0,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One refused connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub stage: Stage,
    pub reason: Reason,
    /// For the log only: may quote what the client sent, never a metric.
    pub detail: String,
    /// The configured app, once the connect named one.
    pub app: Option<String>,
    /// The stream, without its query string, for publish/play refusals.
    pub stream: Option<String>,
    /// Enforced even in dry run: the guard's own capacity limits, and
    /// refusals after which there is nothing to let through.
    pub always: bool,
}

impl Block {
    pub fn new(stage: Stage, reason: Reason, detail: impl fmt::Display) -> Block {
        Block {
            stage,
            reason,
            detail: detail.to_string(),
            app: None,
            stream: None,
            always: !reason.dry_run_passes(),
        }
    }

    /// Marks a refusal that dry run must enforce too.
    pub fn always(mut self) -> Block {
        self.always = true;
        self
    }

    pub fn with_app(mut self, app: &str) -> Block {
        self.app = Some(app.to_string());
        self
    }

    pub fn with_stream(mut self, stream: Option<&str>) -> Block {
        self.stream = stream.map(str::to_string);
        self
    }
}

/// Reports a refusal: counts it, logs one event, adds its score to the
/// client's prefix (which may ban it). Returns whether to enforce it: false
/// only in dry run, for refusals dry run lets through (then it is counted
/// in `rtmp_guard_would_block_total` instead).
pub fn refuse(guard: &Guard, client: SocketAddr, block: &Block) -> bool {
    let enforce = block.always || guard.config.load().server.mode == Mode::Enforce;
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
        guard.audit.blocked(block, client);
    } else {
        guard.metrics.would_block(block.stage, block.reason);
        event!("would_block", "session would be blocked (dry run)");
    }
    if let Some(ban) = guard
        .admission
        .record(client.ip(), block.reason, Instant::now())
    {
        guard.metrics.banned(ban.reason);
        tracing::warn!(
            event = "ban",
            prefix = %ban.prefix,
            reason = ban.reason.as_str(),
            duration_seconds = ban.duration.as_secs(),
            dry_run = guard.config.load().server.mode == Mode::DryRun,
            "prefix banned"
        );
    }
    enforce
}

/// Logs the end of a session that reached the relay, with the streams it
/// published or played (names only: keys and tokens travel in the query).
pub fn session_closed(
    client: SocketAddr,
    app: &str,
    end: &str,
    duration: Duration,
    totals: &crate::relay::Totals,
) {
    let streams: Vec<String> = totals
        .streams
        .iter()
        .map(|(kind, name)| format!("{} {name}", kind.as_str()))
        .collect();
    tracing::info!(
        event = "session_closed",
        client = %client.ip(),
        client_port = client.port(),
        app,
        end,
        duration_seconds = duration.as_secs_f64(),
        bytes_client_to_upstream = totals.client_to_upstream,
        bytes_upstream_to_client = totals.upstream_to_client,
        streams = streams.join(",").as_str(),
        "session closed"
    );
}

/// Logs a session refused because no upstream server could be reached.
pub fn upstream_unreachable(client: SocketAddr, app: &str, upstream: &str, detail: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_arrays_are_in_declaration_order() {
        // The metrics index counters by `as usize`.
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
        }
        for (i, s) in Stage::ALL.into_iter().enumerate() {
            assert_eq!(s as usize, i);
        }
    }

    #[test]
    fn labels_are_prometheus_style_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert!(seen.insert(s));
        }
    }
}
