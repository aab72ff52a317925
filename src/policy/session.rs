//! One session's rules, as a pure state machine: the relay hands it every
//! message the client sends, and the bytes it moves, with the time, and
//! does what the [`Verdict`] says.
//!
//! - every command and data message must be well-formed AMF0 within the
//!   depth limit (in both directions: [`check_origin_message`]);
//! - commands within `[limits.session]`: a rate, and a number of
//!   `createStream`s;
//! - publish and play as the app's [`StreamPolicy`] decides, which may
//!   have to ask the HTTP auth service first ([`Verdict::Ask`]);
//! - a publisher within the app's bitrate cap.
//!
//! Time is passed in, so the rules are tested without a clock.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{AuthQuery, BitrateMeter, StreamPolicy};
use crate::config::SessionLimits;
use crate::rtmp::chunk::{types, Message};
use crate::rtmp::command::{self, Command};
use crate::rtmp::reply;
use crate::verdict::{Denial, Kind, Reason, Refusal, Verdict};

/// The time, as the rules see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Now {
    /// Monotonic time since the session's relay began.
    pub session: Duration,
    /// Wall-clock seconds since the Unix epoch, for token expiry.
    pub unix: u64,
}

/// What the HTTP auth service said of a held publish or play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Allow,
    Deny,
    /// It did not answer, and the app's `on_error` is deny.
    Unavailable,
}

type Limiter =
    RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, NoOpMiddleware<governor::nanos::Nanos>>;

/// The rules of one session's client.
pub struct SessionRules {
    /// The command rate, on a clock the relay's time is passed into.
    limiter: Limiter,
    clock: FakeRelativeClock,
    clock_at: Duration,
    streams_created: u32,
    max_streams: u32,
    max_amf_depth: usize,
    policy: StreamPolicy,
    meter: BitrateMeter,
}

impl SessionRules {
    pub fn new(limits: &SessionLimits, max_amf_depth: usize, policy: StreamPolicy) -> SessionRules {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_second(NonZeroU32::new(limits.commands_per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(limits.commands_burst).unwrap_or(one));
        let clock = FakeRelativeClock::default();
        SessionRules {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            clock_at: Duration::ZERO,
            streams_created: 0,
            max_streams: limits.max_streams,
            max_amf_depth,
            policy,
            meter: BitrateMeter::default(),
        }
    }

    /// Judges one whole message from the client.
    pub fn on_message(&mut self, message: &Message<'_>, now: Now) -> Verdict<AuthQuery> {
        match read_kept(message, self.max_amf_depth) {
            Err(refusal) => Verdict::Refuse(refusal),
            Ok(None) => Verdict::Pass,
            Ok(Some(cmd)) => self.on_command(&cmd, message.header.stream_id, now),
        }
    }

    fn on_command(&mut self, cmd: &Command, stream_id: u32, now: Now) -> Verdict<AuthQuery> {
        self.set_clock(now.session);
        if self.limiter.check().is_err() {
            return Verdict::Refuse(Refusal::new(
                Reason::CommandFlood,
                "commands over the session rate",
            ));
        }
        if cmd.name == "createStream" {
            self.streams_created += 1;
            if self.streams_created > self.max_streams {
                let detail = format!(
                    "createStream number {} of {}",
                    self.streams_created, self.max_streams
                );
                return Verdict::Refuse(Refusal::new(Reason::TooManyStreams, detail));
            }
        }
        let opened = self.policy.streams.len();
        match self.policy.on_command(cmd, stream_id, now.unix) {
            Err(denial) => Verdict::Refuse(denial.into()),
            Ok(Some(query)) => Verdict::Ask(query),
            Ok(None) if self.policy.streams.len() > opened => Verdict::Opened,
            Ok(None) => Verdict::Pass,
        }
    }

    /// Applies the auth service's answer to a held publish or play.
    pub fn answer(&mut self, query: &AuthQuery, answer: Answer) -> Verdict<AuthQuery> {
        let refuse = |reason, description: &str| {
            Verdict::Refuse(StreamPolicy::refuse(query, reason, description).into())
        };
        match answer {
            Answer::Deny => refuse(Reason::Unauthorized, "not authorized"),
            Answer::Unavailable => refuse(Reason::AuthUnavailable, "authorization unavailable"),
            Answer::Allow => {
                let opened = self.policy.streams.len();
                match self.policy.complete(query) {
                    Err(denial) => Verdict::Refuse(denial.into()),
                    Ok(()) if self.policy.streams.len() > opened => Verdict::Opened,
                    Ok(()) => Verdict::Pass,
                }
            }
        }
    }

    /// Counts `bytes` the client sent; refuses a publisher that stays over
    /// its app's bitrate cap.
    pub fn on_bytes(&mut self, bytes: u64, now: Now) -> Result<(), Refusal> {
        let Some(cap) = self.policy.publish_bitrate_cap() else {
            return Ok(());
        };
        let now_ms = now.session.as_millis() as u64;
        if !self.meter.record(bytes, now_ms, cap) {
            return Ok(());
        }
        Err(Refusal::stream(self.policy.bitrate_denial(cap)))
    }

    /// Streams the session publishes or plays, without query strings.
    pub fn streams(&self) -> &[(Kind, String)] {
        &self.policy.streams
    }

    /// The `onStatus` a session ended by the operator gets: on its
    /// stream's message stream, if it has one.
    pub fn ended_by_operator(&self, reason: Reason, description: &str) -> Denial {
        Denial {
            reason,
            description: description.to_string(),
            code: reply::CONNECTION_CLOSED,
            stream_id: self.policy.stream_id(),
            stream: self
                .policy
                .streams
                .first()
                .map(|(_, name)| name.clone())
                .unwrap_or_default(),
        }
    }

    /// Moves the limiter's clock to `now`; time never runs backwards.
    fn set_clock(&mut self, now: Duration) {
        if now > self.clock_at {
            self.clock.advance(now - self.clock_at);
            self.clock_at = now;
        }
    }
}

/// Checks a message from the origin: its commands and data must be
/// well-formed AMF0 within the depth limit, as the client's must.
pub fn check_origin_message(message: &Message<'_>, max_amf_depth: usize) -> Result<(), Refusal> {
    read_kept(message, max_amf_depth).map(|_| ())
}

/// Decodes a command, or checks a data message; other messages are opaque.
fn read_kept(message: &Message<'_>, max_amf_depth: usize) -> Result<Option<Command>, Refusal> {
    let t = message.header.type_id;
    match t {
        types::COMMAND_AMF0 | types::COMMAND_AMF3 => {
            command::decode(t, message.payload, max_amf_depth)
                .map(Some)
                .map_err(|e| Refusal::violation(format!("unreadable command: {e}")))
        }
        types::DATA_AMF0 | types::DATA_AMF3 => {
            command::check_data(t, message.payload, max_amf_depth)
                .map(|()| None)
                .map_err(|e| Refusal::violation(format!("unreadable data message: {e}")))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::Registry;
    use crate::rtmp::amf0::{encode, Amf0Value as V};
    use crate::rtmp::chunk::MessageHeader;
    use std::sync::Arc;

    fn rules(extra: &str) -> SessionRules {
        let text = format!(
            "[limits.session]\ncommands_per_second = 2\ncommands_burst = 2\nmax_streams = 1\n\
             [[upstream]]\nname = \"o\"\nservers = [\"127.0.0.1:1\"]\n\
             [[app]]\nname = \"live\"\nupstream = \"o\"\npublish = \"none\"\n{extra}"
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        let app = config.app("live").unwrap();
        let connect = crate::rtmp::command::ConnectRequest {
            transaction_id: 1.0,
            app_raw: "live".into(),
            app: "live".into(),
            tc_url: None,
            page_url: None,
            swf_url: None,
            flash_ver: None,
        };
        let policy = StreamPolicy::new(
            app,
            Arc::new(Registry::default()),
            "127.0.0.1".parse().unwrap(),
            &connect,
        );
        SessionRules::new(&config.limits.session, 32, policy)
    }

    fn command(values: &[V], stream_id: u32) -> (MessageHeader, Vec<u8>) {
        let payload = encode(values).expect("encodable");
        let header = MessageHeader {
            csid: 3,
            timestamp: 0,
            type_id: types::COMMAND_AMF0,
            stream_id,
            length: payload.len() as u32,
        };
        (header, payload)
    }

    fn judge(
        rules: &mut SessionRules,
        values: &[V],
        stream_id: u32,
        at_ms: u64,
    ) -> Verdict<AuthQuery> {
        let (header, payload) = command(values, stream_id);
        let message = Message {
            header,
            payload: &payload,
        };
        let now = Now {
            session: Duration::from_millis(at_ms),
            unix: 0,
        };
        rules.on_message(&message, now)
    }

    fn reason(v: Verdict<AuthQuery>) -> Option<Reason> {
        match v {
            Verdict::Refuse(r) => Some(r.reason),
            _ => None,
        }
    }

    #[test]
    fn commands_over_the_rate_are_refused_and_time_restores_the_rate() {
        let mut r = rules("");
        let call = [V::String("getStreamLength".into()), V::Number(1.0), V::Null];
        assert_eq!(judge(&mut r, &call, 0, 0), Verdict::Pass);
        assert_eq!(judge(&mut r, &call, 0, 0), Verdict::Pass);
        assert_eq!(
            reason(judge(&mut r, &call, 0, 0)),
            Some(Reason::CommandFlood)
        );
        assert_eq!(judge(&mut r, &call, 0, 1000), Verdict::Pass);
    }

    #[test]
    fn create_stream_past_the_limit_is_refused() {
        let mut r = rules("");
        let create = [V::String("createStream".into()), V::Number(2.0), V::Null];
        assert_eq!(judge(&mut r, &create, 0, 0), Verdict::Pass);
        assert_eq!(
            reason(judge(&mut r, &create, 0, 1000)),
            Some(Reason::TooManyStreams)
        );
    }

    #[test]
    fn an_allowed_publish_opens_a_stream() {
        let mut r = rules("");
        let publish = [
            V::String("publish".into()),
            V::Number(0.0),
            V::Null,
            V::String("cam".into()),
        ];
        assert_eq!(judge(&mut r, &publish, 1, 0), Verdict::Opened);
        assert_eq!(r.streams(), &[(Kind::Publish, "cam".to_string())]);
    }

    #[test]
    fn an_http_decision_is_asked_then_answered() {
        let mut r = rules("play = \"http\"\nhttp_auth = { url = \"http://127.0.0.1:1/\" }\n");
        let play = [
            V::String("play".into()),
            V::Number(0.0),
            V::Null,
            V::String("cam".into()),
        ];
        let Verdict::Ask(query) = judge(&mut r, &play, 1, 0) else {
            panic!("expected a question");
        };
        assert_eq!(
            reason(r.answer(&query, Answer::Deny)),
            Some(Reason::Unauthorized)
        );
        assert_eq!(
            reason(r.answer(&query, Answer::Unavailable)),
            Some(Reason::AuthUnavailable)
        );
        assert_eq!(r.answer(&query, Answer::Allow), Verdict::Opened);
    }

    #[test]
    fn unreadable_commands_are_violations() {
        let mut r = rules("");
        let header = MessageHeader {
            csid: 3,
            timestamp: 0,
            type_id: types::COMMAND_AMF0,
            stream_id: 0,
            length: 1,
        };
        let message = Message {
            header,
            payload: &[0x02],
        };
        assert_eq!(
            reason(r.on_message(&message, Now::default())),
            Some(Reason::ProtocolViolation)
        );
        assert!(check_origin_message(&message, 32).is_err());
    }
}
