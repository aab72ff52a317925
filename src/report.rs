//! The last stage of every connection: say what happened to it.
//!
//! Every rejection is one [`Block`]: a stage, a reason from a fixed set, and
//! a detail for the log. [`Reason`] is the single source of the metric label,
//! the log field and the text a client is told, so they cannot drift apart.
//! Nothing here does I/O beyond the metrics registry and the log.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::metrics::Metrics;

/// Where on the connection's path it was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Handshake,
    Connect,
    Session,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Handshake, Stage::Connect, Stage::Session];

    pub fn as_str(self) -> &'static str {
        match self {
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
    TooManyConnections,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::BadVersion,
        Reason::NotRtmp,
        Reason::HandshakeTimeout,
        Reason::ConnectTimeout,
        Reason::ProtocolViolation,
        Reason::UnknownApp,
        Reason::TooManyConnections,
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
}

impl Block {
    pub fn new(stage: Stage, reason: Reason, detail: impl fmt::Display) -> Block {
        Block {
            stage,
            reason,
            detail: detail.to_string(),
            app: None,
        }
    }

    pub fn with_app(mut self, app: &str) -> Block {
        self.app = Some(app.to_string());
        self
    }
}

/// Counts and logs one refused connection.
pub fn blocked(metrics: &Metrics, client: SocketAddr, block: &Block) {
    metrics.blocked(block.stage, block.reason);
    tracing::warn!(
        event = "blocked",
        client = %client,
        stage = block.stage.as_str(),
        reason = block.reason.as_str(),
        app = block.app.as_deref().unwrap_or(""),
        detail = %block.detail,
        "session blocked"
    );
}

/// Logs the end of a session that reached the relay.
pub fn session_closed(
    client: SocketAddr,
    app: &str,
    end: &str,
    duration: Duration,
    client_to_upstream: u64,
    upstream_to_client: u64,
) {
    tracing::info!(
        event = "session_closed",
        client = %client,
        app,
        end,
        duration_seconds = duration.as_secs_f64(),
        bytes_client_to_upstream = client_to_upstream,
        bytes_upstream_to_client = upstream_to_client,
        "session closed"
    );
}

/// Logs a session refused because no upstream server could be reached.
pub fn upstream_unreachable(client: SocketAddr, app: &str, upstream: &str, detail: &str) {
    tracing::warn!(
        event = "upstream_unreachable",
        client = %client,
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
    fn labels_are_prometheus_style_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert!(seen.insert(s));
        }
    }
}
