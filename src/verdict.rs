//! The guard's vocabulary of outcomes: where a connection was refused
//! ([`Stage`]), why ([`Reason`]), the refusal itself ([`Block`]), and what a
//! rule says of one message ([`Verdict`]).
//!
//! This is a leaf: it imports nothing from the rest of the crate and has no
//! side effects, so every layer (protocol, policy, admission, metrics,
//! report) can speak it without importing the layers above. [`Reason`] is
//! the single source of the metric label, the log field and the text a
//! client is told, so they cannot drift apart.

use std::fmt;

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
    /// Media or data on a message stream with no allowed publish, or any
    /// other message outside the flows the guard authorised.
    UnauthorizedFlow,
    /// An app or stream name with NUL, control characters or invalid
    /// UTF-8, or a stream name over `max_name_length`.
    BadName,
    /// A client that took no byte for `write_timeout` while the guard had
    /// data for it.
    SlowConsumer,
    /// Plain RTMP, or anything but a TLS handshake record, on an RTMPS
    /// port.
    NotTls,
    /// A TLS handshake on an RTMPS port that failed.
    TlsFailed,
    /// A publish or play while Redis is unreachable and `[fleet]
    /// on_redis_down` is `deny_new`.
    FleetUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 30] = [
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
        Reason::UnauthorizedFlow,
        Reason::BadName,
        Reason::SlowConsumer,
        Reason::NotTls,
        Reason::TlsFailed,
        Reason::FleetUnavailable,
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
            Reason::UnauthorizedFlow => "unauthorized_flow",
            Reason::BadName => "bad_name",
            Reason::SlowConsumer => "slow_consumer",
            Reason::NotTls => "not_tls",
            Reason::TlsFailed => "tls_failed",
            Reason::FleetUnavailable => "fleet_unavailable",
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
                | Reason::FleetUnavailable
        )
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// What one such event adds to the prefix's ban score, unless
    /// `[bans.scores]` says otherwise. A failed key or token scores 3, so
    /// guessing gets an address banned. A refusal the operator's remedy
    /// caused in a live session ([`Block::by_operator`]) never scores.
    pub fn default_ban_score(self) -> u32 {
        match self {
            Reason::NotRtmp | Reason::BadVersion | Reason::ProtocolViolation => 5,
            // Plain RTMP or a scanner on the RTMPS port.
            Reason::NotTls => 5,
            // Old encoders with outdated TLS stacks retry: it takes ten.
            Reason::TlsFailed => 1,
            Reason::UnauthorizedFlow => 5,
            Reason::BadName => 3,
            Reason::ForgedProxyHeader | Reason::CommandFlood => 5,
            Reason::UnknownApp | Reason::TooManyStreams | Reason::Unauthorized => 3,
            Reason::HandshakeTimeout | Reason::ConnectTimeout => 2,
            // An address an app refuses is refused every time: asking
            // again is hammering.
            Reason::ForbiddenIp => 2,
            Reason::RateLimited => 1,
            // Ordinary viewers following a dead or foreign link meet
            // these, many of them behind one carrier-grade NAT: it takes
            // ten in a window (at the default threshold) to ban.
            Reason::ContentBlocked | Reason::BadReferrer => 1,
            // Capacity, not behaviour: an encoder reconnecting after a
            // network blip finds its own old session still holding the
            // name (stream_busy), and the viewers behind one carrier-grade
            // NAT meet a full app together (quota_exceeded). Neither may
            // ever get an address banned.
            Reason::QuotaExceeded | Reason::StreamBusy => 0,
            // The client's standing or the guard's own state, not its
            // behaviour: no score.
            Reason::TooManyConnections
            | Reason::IpDenied
            | Reason::Banned
            | Reason::Overloaded
            | Reason::BitrateExceeded
            | Reason::AuthUnavailable
            | Reason::FleetUnavailable
            | Reason::AppSuspended
            | Reason::Kicked => 0,
            // A viewer on a bad network is not an attacker; its session
            // ends, its address keeps its standing.
            Reason::SlowConsumer => 0,
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
    /// A live session ended by the operator (a kick, or a ban, block or
    /// suspension made while it ran): counted and logged, never scored,
    /// since the client did nothing.
    pub by_operator: bool,
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
            by_operator: false,
        }
    }

    /// Marks a session the operator ended: it adds nothing to a ban score.
    pub fn by_operator(mut self) -> Block {
        self.by_operator = true;
        self
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

/// Whether a session publishes or plays a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Publish,
    Play,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Publish => "publish",
            Kind::Play => "play",
        }
    }
}

/// A refused publish or play: what the client is told on its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    /// For the client and the log; never holds a key or token.
    pub description: String,
    /// The `onStatus` code.
    pub code: &'static str,
    /// Message stream id to send the `onStatus` on.
    pub stream_id: u32,
    /// The stream name, without its query string (where keys and tokens
    /// travel): safe to log.
    pub stream: String,
}

/// Why a session's rules refuse what its client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
    /// A refused publish or play: the `onStatus` the client is sent.
    pub status: Option<Denial>,
}

impl Refusal {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
            status: None,
        }
    }

    pub fn violation(detail: impl Into<String>) -> Refusal {
        Refusal::new(Reason::ProtocolViolation, detail)
    }

    /// A refused publish or play, answered with its `onStatus`.
    pub fn stream(denial: Denial) -> Refusal {
        Refusal {
            reason: denial.reason,
            detail: denial.description.clone(),
            status: Some(denial),
        }
    }
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Refusal {
        Refusal::stream(denial)
    }
}

/// What a rule says of one message. `Ask` holds a question some outside
/// service must answer first (the HTTP auth callback today); the message,
/// and everything after it, waits for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<Q> {
    /// Forward it.
    Pass,
    /// Forward it; it opened a publish or play the registry should show.
    Opened,
    /// Hold it until the question is answered.
    Ask(Q),
    /// Refuse it.
    Refuse(Refusal),
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
    fn policy_refusals_that_hammer_score_and_capacity_refusals_never_do() {
        // Asking again for what an app refuses gets an address banned.
        assert_eq!(Reason::ForbiddenIp.default_ban_score(), 2);
        assert_eq!(Reason::ContentBlocked.default_ban_score(), 1);
        assert_eq!(Reason::BadReferrer.default_ban_score(), 1);
        assert_eq!(Reason::Unauthorized.default_ban_score(), 3);
        // Never: an encoder reconnecting after a network blip meets its
        // own stale session as stream_busy until the origin lets go of it,
        // and every viewer behind one carrier-grade NAT meets a full app
        // as quota_exceeded. Scoring either would ban honest users.
        assert_eq!(Reason::QuotaExceeded.default_ban_score(), 0);
        assert_eq!(Reason::StreamBusy.default_ban_score(), 0);
        // A viewer on a poor network: cut, never scored, and cut in dry
        // run too (nothing can be relayed to a peer that takes nothing).
        assert_eq!(Reason::SlowConsumer.default_ban_score(), 0);
        assert!(!Reason::SlowConsumer.dry_run_passes());
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
