//! One session's rules, as a pure state machine. The relay hands it every
//! message either side sends (the start of each media message, every
//! command and data message whole), with the time, and does what the
//! verdict says. It authorises flows, not spellings:
//!
//! - **From the client**, audio, video and data pass only on a message
//!   stream for which the guard allowed a `publish`, until that stream is
//!   closed (`closeStream`, `deleteStream`, `FCUnpublish`). On stream 0 a
//!   client sends only commands (control is handled per hop by the relay).
//!   Commands are read strictly ([`classify`]): a known command spelled
//!   another way, in another shape, with a repeated key, or sent as data
//!   or a shared-object message is refused, and so is a second `connect`.
//! - **From the origin**, audio, video, data and aggregates pass only on a
//!   message stream the origin opened, with `NetStream.Play.Start` or
//!   `Play.Reset`, for a play the guard allowed. (node-media-server sends
//!   a play's media on stream 0: that passes while a play is open.) A
//!   `Play.Start` with no allowed play outstanding ends the session; media
//!   for a stream the client has just closed is dropped.
//! - Commands within `[limits.session]`: a rate and a number of
//!   `createStream`s; a publisher within its app's bitrate cap.
//! - Names without NUL, control characters or invalid UTF-8, and within
//!   `max_name_length`.
//!
//! Time is passed in, so the rules are tested without a clock.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{AuthQuery, BitrateMeter, StreamPolicy};
use crate::config::{Limits, ReconnectTcUrl};
use crate::rtmp::amf0::{self, Amf0Value};
use crate::rtmp::chunk::{types, Message, MessageHeader};
use crate::rtmp::command::{self, classify, reads_as_known, ClientCommand, Command};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allow,
    Deny,
    /// It did not answer, and the app's `on_error` is deny.
    Unavailable,
    /// A 3xx with a `Location`, as nginx-rtmp reads it: allowed, under
    /// the name the `Location` gives; one that starts with `rtmp://`
    /// (nginx-rtmp's relay to another server) is refused.
    Rename(String),
}

/// What the relay does with a message from the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromOrigin {
    Pass,
    /// Forward this payload instead (a rewritten reconnect request).
    Rewrite(Vec<u8>),
    /// Media for a flow the client has just closed.
    Drop,
    /// The origin broke the protocol or the flows; the session ends.
    Violation(String),
}

/// What a client the auth service refused is told.
const NOT_AUTHORIZED: &str = "not authorized";

/// The Enhanced RTMP status asking a client to connect again, to `tcUrl`.
const RECONNECT_REQUEST: &str = "NetConnection.Connect.ReconnectRequest";

/// Message streams closed recently, whose in-flight media is dropped.
const RECENTLY_CLOSED: usize = 16;

type Limiter =
    RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, NoOpMiddleware<governor::nanos::Nanos>>;

/// The flows one session has open.
#[derive(Debug, Default)]
struct Flows {
    /// (message stream, name): publishes the guard allowed.
    publishing: Vec<(u32, String)>,
    /// Message streams of allowed plays the origin has not yet started.
    plays_asked: Vec<u32>,
    /// Message streams the origin started a play on.
    playing: Vec<u32>,
    /// Streams the client closed lately.
    closed: Vec<u32>,
}

impl Flows {
    fn close(&mut self, stream_id: u32) {
        self.publishing.retain(|(id, _)| *id != stream_id);
        self.plays_asked.retain(|id| *id != stream_id);
        self.playing.retain(|id| *id != stream_id);
        if !self.closed.contains(&stream_id) {
            if self.closed.len() >= RECENTLY_CLOSED {
                self.closed.remove(0);
            }
            self.closed.push(stream_id);
        }
    }

    fn publishes_on(&self, stream_id: u32) -> bool {
        self.publishing.iter().any(|(id, _)| *id == stream_id)
    }

    /// Whether the origin may send media or data on `stream_id`.
    fn plays_on(&self, stream_id: u32) -> bool {
        self.playing.contains(&stream_id) || (stream_id == 0 && !self.playing.is_empty())
    }
}

/// A publish or play waiting for the auth service.
#[derive(Debug, Clone, Copy)]
struct Pending {
    kind: Kind,
    stream_id: u32,
    /// A publish or play, not a prelude: it opens a flow.
    opens: bool,
}

/// The rules of one session.
pub struct SessionRules {
    /// The command rate, on a clock the relay's time is passed into.
    limiter: Limiter,
    clock: FakeRelativeClock,
    clock_at: Duration,
    streams_created: u32,
    max_streams: u32,
    max_amf_depth: usize,
    max_name_length: usize,
    policy: StreamPolicy,
    meter: BitrateMeter,
    flows: Flows,
    pending: Option<Pending>,
    /// The `tcUrl` the client connected with, and what to do with an
    /// origin's reconnect request.
    tc_url: Option<String>,
    reconnect: ReconnectTcUrl,
    /// The session runs in dry run: a publish or play refused for a reason
    /// dry run lets through still opens its flow, as it reaches the origin.
    dry_run: bool,
}

impl SessionRules {
    pub fn new(
        limits: &Limits,
        policy: StreamPolicy,
        tc_url: Option<String>,
        reconnect: ReconnectTcUrl,
    ) -> SessionRules {
        let session = &limits.session;
        let one = NonZeroU32::MIN;
        let quota = Quota::per_second(NonZeroU32::new(session.commands_per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(session.commands_burst).unwrap_or(one));
        let clock = FakeRelativeClock::default();
        SessionRules {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            clock_at: Duration::ZERO,
            streams_created: 0,
            max_streams: session.max_streams,
            max_amf_depth: limits.max_amf_depth,
            max_name_length: limits.max_name_length,
            policy,
            meter: BitrateMeter::default(),
            flows: Flows::default(),
            pending: None,
            tc_url,
            reconnect,
            dry_run: false,
        }
    }

    /// Rules for a session in dry run (see the `dry_run` field).
    pub fn in_dry_run(mut self, dry_run: bool) -> SessionRules {
        self.dry_run = dry_run;
        self
    }

    /// Judges one whole command or data message from the client, as the
    /// relay will forward it (type 20 or 18: see [`command::canonical`]).
    pub fn on_message(&mut self, message: &Message<'_>, now: Now) -> Verdict<AuthQuery> {
        match self.client_message(message, now) {
            Ok(verdict) => verdict,
            Err(refusal) => Verdict::Refuse(refusal),
        }
    }

    fn client_message(&mut self, m: &Message<'_>, now: Now) -> Result<Verdict<AuthQuery>, Refusal> {
        let h = &m.header;
        match h.type_id {
            types::COMMAND_AMF0 => {
                let cmd = command::decode(h.type_id, m.payload, self.max_amf_depth)
                    .map_err(|e| Refusal::violation(format!("unreadable command: {e}")))?;
                self.on_command(&cmd, h.stream_id, now)
            }
            types::DATA_AMF0 => {
                let values = amf0::read_all(m.payload, self.max_amf_depth)
                    .map_err(|e| Refusal::violation(format!("unreadable data message: {e}")))?;
                if let Some(Amf0Value::String(name)) = values.first() {
                    if reads_as_known(name).is_some() {
                        let shown = reply::sanitize(name);
                        return Err(Refusal::violation(format!(
                            "data message named like the command {shown:?}"
                        )));
                    }
                }
                self.publishing(h)?;
                Ok(Verdict::Pass)
            }
            types::SHARED_OBJECT_AMF0 | types::SHARED_OBJECT_AMF3 | types::AGGREGATE => {
                Err(Refusal::violation(format!(
                    "message type {} is not accepted from clients",
                    h.type_id
                )))
            }
            other => Err(Refusal::violation(format!(
                "message type {other} from the client"
            ))),
        }
    }

    /// Judges the start of an audio or video message from the client.
    pub fn on_media(&mut self, header: &MessageHeader) -> Result<(), Refusal> {
        match header.type_id {
            types::AUDIO | types::VIDEO => self.publishing(header),
            other => Err(Refusal::violation(format!(
                "message type {other} is not accepted from clients"
            ))),
        }
    }

    /// Media and data from the client pass only on a publishing stream.
    fn publishing(&self, h: &MessageHeader) -> Result<(), Refusal> {
        if self.flows.publishes_on(h.stream_id) {
            return Ok(());
        }
        Err(Refusal::new(
            Reason::UnauthorizedFlow,
            format!(
                "message type {} on stream {} without an allowed publish",
                h.type_id, h.stream_id
            ),
        ))
    }

    fn on_command(
        &mut self,
        cmd: &Command,
        stream_id: u32,
        now: Now,
    ) -> Result<Verdict<AuthQuery>, Refusal> {
        self.set_clock(now.session);
        if self.limiter.check().is_err() {
            return Err(Refusal::new(
                Reason::CommandFlood,
                "commands over the session rate",
            ));
        }
        let shown = || reply::sanitize(&cmd.name);
        let command = classify(cmd).map_err(|e| {
            let shape = command::shape_of(cmd);
            Refusal::violation(format!("command {:?} ({shape}): {e}", shown()))
        })?;
        let decide = |kind, name, opens, claim| (kind, name, opens, claim);
        let (kind, name, opens, claim) = match command {
            ClientCommand::Connect => {
                return Err(Refusal::violation("a second connect"));
            }
            ClientCommand::CreateStream => {
                self.streams_created += 1;
                if self.streams_created > self.max_streams {
                    let detail = format!(
                        "createStream number {} of {}",
                        self.streams_created, self.max_streams
                    );
                    return Err(Refusal::new(Reason::TooManyStreams, detail));
                }
                return Ok(Verdict::Pass);
            }
            ClientCommand::CloseStream { name } => {
                self.close(stream_id);
                if let Some(name) = name {
                    self.close_named(name);
                }
                return Ok(Verdict::Pass);
            }
            ClientCommand::DeleteStream { stream_id, name } => {
                if let Some(id) = stream_id {
                    self.close(id);
                }
                if let Some(name) = name {
                    self.close_named(name);
                }
                return Ok(Verdict::Pass);
            }
            ClientCommand::FcUnpublish { name } => {
                self.close_named(name);
                return Ok(Verdict::Pass);
            }
            ClientCommand::NamesStream { .. } | ClientCommand::Other => return Ok(Verdict::Pass),
            ClientCommand::Publish { name } => decide(Kind::Publish, name, true, true),
            ClientCommand::Play { name } | ClientCommand::Play2 { name } => {
                decide(Kind::Play, name, true, true)
            }
            ClientCommand::FcPublish { name } | ClientCommand::ReleaseStream { name } => {
                decide(Kind::Publish, name, false, false)
            }
            ClientCommand::FcSubscribe { name } => decide(Kind::Play, name, false, false),
        };
        self.check_name(kind, name, stream_id)?;
        if opens
            && self.flows.publishing.len() + self.flows.plays_asked.len() + self.flows.playing.len()
                >= self.max_streams as usize
        {
            return Err(Refusal::new(
                Reason::TooManyStreams,
                format!("more than {} open streams", self.max_streams),
            ));
        }
        let pending = Pending {
            kind,
            stream_id,
            opens,
        };
        match self.policy.decide(kind, name, stream_id, claim, now.unix) {
            Err(denial) => Err(self.refused(pending, denial.into())),
            Ok(Some(query)) => {
                self.pending = Some(pending);
                Ok(Verdict::Ask(query))
            }
            Ok(None) => Ok(self.open(pending)),
        }
    }

    /// A refused publish or play. In dry run, a refusal dry run lets
    /// through still opens the flow: the message reaches the origin.
    fn refused(&mut self, pending: Pending, refusal: Refusal) -> Refusal {
        if self.dry_run && refusal.reason.dry_run_passes() {
            self.open(pending);
        }
        refusal
    }

    /// Opens the flow of an allowed publish or play.
    fn open(&mut self, p: Pending) -> Verdict<AuthQuery> {
        if !p.opens {
            return Verdict::Pass;
        }
        match p.kind {
            Kind::Publish => {
                let name = self
                    .policy
                    .streams
                    .last()
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default();
                self.flows.publishing.retain(|(id, _)| *id != p.stream_id);
                self.flows.publishing.push((p.stream_id, name));
            }
            Kind::Play => {
                if !self.flows.plays_asked.contains(&p.stream_id) {
                    self.flows.plays_asked.push(p.stream_id);
                }
            }
        }
        self.flows.closed.retain(|id| *id != p.stream_id);
        Verdict::Opened
    }

    fn close(&mut self, stream_id: u32) {
        self.flows.close(stream_id);
        self.policy.release(stream_id);
    }

    /// Closes the publishes of `name` (as sent, query and all; a key or
    /// a renamed name closes the stream the origin knows by its new name).
    fn close_named(&mut self, name: &str) {
        let name = match self.policy.origin_name(Kind::Publish, name) {
            Some(renamed) => renamed.to_string(),
            None => super::StreamName::parse(name).name,
        };
        let ids: Vec<u32> = self
            .flows
            .publishing
            .iter()
            .filter(|(_, n)| *n == name)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.close(id);
        }
        self.policy.release_publish(&name);
    }

    /// A name the origin would read as the guard did: no NUL, control
    /// character or invalid UTF-8 (read as U+FFFD), within the limit.
    fn check_name(&self, kind: Kind, raw: &str, stream_id: u32) -> Result<(), Refusal> {
        let name = raw.split('?').next().unwrap_or(raw);
        let why = if raw.chars().any(|c| c.is_control() || c == '\u{FFFD}') {
            "a control character or invalid UTF-8 in the name"
        } else if name.len() > self.max_name_length {
            "the name is too long"
        } else {
            return Ok(());
        };
        Err(Refusal::stream(Denial {
            reason: Reason::BadName,
            description: why.to_string(),
            code: match kind {
                Kind::Publish => super::PUBLISH_BAD_NAME,
                Kind::Play => super::PLAY_FAILED,
            },
            stream_id,
            // The logs cut and escape it; a name that may be a key is
            // never logged.
            // In a `stream_key` app a play's name may be a key too.
            stream: if self.policy.names_are_secret(kind)
                || self.policy.names_are_secret(Kind::Publish)
            {
                String::new()
            } else {
                name.to_string()
            },
        }))
    }

    /// Applies the auth service's answer to a held publish or play.
    pub fn answer(&mut self, query: &AuthQuery, answer: Answer) -> Verdict<AuthQuery> {
        let pending = self.pending.take();
        let allowed = match answer {
            Answer::Deny => {
                Err(StreamPolicy::refuse(query, Reason::Unauthorized, NOT_AUTHORIZED).into())
            }
            Answer::Unavailable => Err(StreamPolicy::refuse(
                query,
                Reason::AuthUnavailable,
                "authorization unavailable",
            )
            .into()),
            Answer::Allow => self.policy.complete(query).map_err(Refusal::from),
            Answer::Rename(location) => self
                .renamed(query, &location)
                .and_then(|q| self.policy.complete(&q).map_err(Refusal::from)),
        };
        match allowed {
            Ok(()) => match pending {
                Some(p) => self.open(p),
                None => Verdict::Pass,
            },
            Err(refusal) => Verdict::Refuse(match pending {
                Some(p) => self.refused(p, refusal),
                None => refusal,
            }),
        }
    }

    /// A held publish or play the auth service allowed as `location`:
    /// the same query under that name, if the guard can send it. A
    /// remote `rtmp://` relay, or a name an origin could read otherwise
    /// than the guard, is refused as `unauthorized`, logging neither name.
    fn renamed(&mut self, query: &AuthQuery, location: &str) -> Result<AuthQuery, Refusal> {
        let renamed = self.usable_location(query, location);
        if renamed.is_err() {
            // Dry run lets an `unauthorized` refusal through: the name
            // sent, a secret once a 3xx renames it, still never goes.
            self.policy.withhold(query);
        }
        renamed
    }

    fn usable_location(&mut self, query: &AuthQuery, location: &str) -> Result<AuthQuery, Refusal> {
        let refuse = |detail: &str| Refusal {
            reason: Reason::Unauthorized,
            detail: detail.to_string(),
            status: Some(Denial {
                // The name sent may be a secret once a 3xx renames it.
                stream: String::new(),
                ..StreamPolicy::refuse(query, Reason::Unauthorized, NOT_AUTHORIZED)
            }),
        };
        if location
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("rtmp://"))
        {
            return Err(refuse(
                "the auth service answered with an rtmp:// Location (nginx-rtmp's relay to                  another server); the guard connects only to the upstreams its config names",
            ));
        }
        if location.contains("://")
            || location.starts_with('/')
            || location.split('/').any(|seg| seg == "..")
        {
            return Err(refuse(
                "the auth service answered with a Location that is a URL, an absolute path or \
                 holds a '..' segment; the guard takes only a stream name",
            ));
        }
        let unusable = location.is_empty()
            || location.len() > self.max_name_length
            || location
                .chars()
                .any(|c| c == '?' || c.is_control() || c == '\u{FFFD}');
        if unusable {
            return Err(refuse(
                "the auth service answered with a Location the guard cannot send as a stream                  name (empty, too long, a '?', a control character or invalid UTF-8)",
            ));
        }
        self.policy.rename(query, location).map_err(Refusal::from)
    }

    /// What the origin is sent for a client's command or data message
    /// that passed, as [`SessionRules::on_message`] left the session:
    /// `None`, the message as sent; or a command naming a stream that this
    /// session's decisions renamed (a `stream_key` publish's key, a name a
    /// 3xx renamed), re-encoded with the name the origin knows it by, and
    /// without the client's query. So no command that names a stream
    /// carries the key, or a name other than the one the guard decided.
    pub fn for_origin(&self, m: &Message<'_>) -> Result<Option<Vec<u8>>, Refusal> {
        if m.header.type_id != types::COMMAND_AMF0 {
            return Ok(None);
        }
        // It was judged: it reads, and is in its command's shape.
        let Ok(cmd) = command::decode(m.header.type_id, m.payload, self.max_amf_depth) else {
            return Ok(None);
        };
        let Ok(command) = classify(&cmd) else {
            return Ok(None);
        };
        let Some(sent) = command.stream_name() else {
            return Ok(None);
        };
        // A publish or play, and its preludes, were decided for their own
        // role; the others follow whichever the session renamed.
        let publishes = matches!(
            command,
            ClientCommand::Publish { .. }
                | ClientCommand::FcPublish { .. }
                | ClientCommand::ReleaseStream { .. }
        );
        let roles: &[Kind] = match command {
            _ if publishes => &[Kind::Publish],
            ClientCommand::Play { .. }
            | ClientCommand::Play2 { .. }
            | ClientCommand::FcSubscribe { .. } => &[Kind::Play],
            ClientCommand::NamesStream { .. } => &[Kind::Play, Kind::Publish],
            _ => &[Kind::Publish, Kind::Play],
        };
        let to = self.origin_spelling(roles, sent, publishes, m.header.stream_id)?;
        // play2's `oldStreamName` names a stream too.
        let old = match command {
            ClientCommand::Play2 { .. } => match command::play2_old_name(&cmd) {
                Some(old) => self.origin_spelling(
                    &[Kind::Play, Kind::Publish],
                    old,
                    false,
                    m.header.stream_id,
                )?,
                None => None,
            },
            _ => None,
        };
        if to.is_none() && old.is_none() {
            return Ok(None);
        }
        let mut out = command::with_stream_name(&cmd, to.as_deref().unwrap_or(sent));
        if let Some(old) = &old {
            command::set_play2_old_name(&mut out, old);
        }
        command::encode(&out)
            .map(Some)
            .map_err(|e| Refusal::violation(format!("a renamed command does not encode: {e}")))
    }

    /// How a stream name `sent` (query included) reaches the origin:
    /// `Some`, under the name this session's decisions renamed it to for
    /// one of `roles`; `None`, as it is. In a `stream_key` app a name no
    /// decision renamed goes only if it is a public name and the command
    /// is no publish (or prelude); any other is refused as a wrong key,
    /// naming no stream, even in dry run: it may be a key.
    fn origin_spelling(
        &self,
        roles: &[Kind],
        sent: &str,
        publishes: bool,
        stream_id: u32,
    ) -> Result<Option<String>, Refusal> {
        let kind = if publishes { Kind::Publish } else { Kind::Play };
        let withheld = roles.iter().any(|&k| self.policy.withheld(k, sent));
        if !withheld {
            if let Some(to) = roles
                .iter()
                .find_map(|&kind| self.policy.origin_name(kind, sent))
            {
                return Ok(Some(to.to_string()));
            }
            let bare = sent.split('?').next().unwrap_or(sent);
            if !self.policy.names_are_secret(Kind::Publish)
                || (!publishes && self.policy.is_public_name(bare))
            {
                return Ok(None);
            }
        }
        Err(Refusal {
            reason: Reason::Unauthorized,
            detail: if withheld {
                "a command names a stream whose 3xx Location was refused: not forwarded"
            } else {
                "a command names a stream that is neither a public name nor one this \
                 session was allowed (stream_key app): not forwarded"
            }
            .into(),
            status: Some(Denial {
                reason: Reason::Unauthorized,
                description: super::INVALID_KEY.into(),
                code: match kind {
                    Kind::Publish => super::PUBLISH_BAD_NAME,
                    Kind::Play => super::PLAY_FAILED,
                },
                stream_id,
                stream: String::new(),
            }),
        })
    }

    /// Judges one whole command or data message from the origin.
    pub fn on_origin_message(&mut self, m: &Message<'_>) -> FromOrigin {
        let h = &m.header;
        match h.type_id {
            types::COMMAND_AMF0 => {
                match command::decode(h.type_id, m.payload, self.max_amf_depth) {
                    Err(e) => FromOrigin::Violation(format!("unreadable command: {e}")),
                    Ok(cmd) => self.origin_command(&cmd, h.stream_id),
                }
            }
            types::DATA_AMF0 => match amf0::read_all(m.payload, self.max_amf_depth) {
                Err(e) => FromOrigin::Violation(format!("unreadable data message: {e}")),
                Ok(_) => self.origin_flow(h),
            },
            other => FromOrigin::Violation(format!("message type {other} from the origin")),
        }
    }

    /// Judges the start of an audio, video or aggregate message from the
    /// origin.
    pub fn on_origin_media(&self, header: &MessageHeader) -> FromOrigin {
        match header.type_id {
            // Data too: an aggregate's parts are judged here.
            types::AUDIO | types::VIDEO | types::DATA_AMF0 | types::AGGREGATE => {
                self.origin_flow(header)
            }
            other => FromOrigin::Violation(format!("message type {other} from the origin")),
        }
    }

    fn origin_flow(&self, h: &MessageHeader) -> FromOrigin {
        if self.flows.plays_on(h.stream_id) {
            FromOrigin::Pass
        } else if self.flows.closed.contains(&h.stream_id) {
            FromOrigin::Drop
        } else {
            FromOrigin::Violation(format!(
                "message type {} on stream {} with no play open",
                h.type_id, h.stream_id
            ))
        }
    }

    /// An origin's `onStatus` that starts a play opens its flow, if the
    /// guard allowed one; a reconnect request has its `tcUrl` rewritten.
    fn origin_command(&mut self, cmd: &Command, stream_id: u32) -> FromOrigin {
        if cmd.name != "onStatus" {
            return FromOrigin::Pass;
        }
        // A client may read the status from any object in the command, so
        // a reconnect request anywhere in it is one.
        let reconnect = std::iter::once(&cmd.object)
            .chain(&cmd.arguments)
            .any(|v| v.get("code").and_then(Amf0Value::as_str) == Some(RECONNECT_REQUEST));
        if reconnect {
            return self.reconnect_request(cmd);
        }
        let info = cmd.arguments.first();
        let code = info.and_then(|i| i.get("code")).and_then(Amf0Value::as_str);
        match code {
            Some("NetStream.Play.Start") | Some("NetStream.Play.Reset") => {
                if self.flows.playing.contains(&stream_id) {
                    return FromOrigin::Pass;
                }
                let asked = self
                    .flows
                    .plays_asked
                    .iter()
                    .position(|id| *id == stream_id)
                    .or_else(|| (!self.flows.plays_asked.is_empty()).then_some(0));
                match asked {
                    Some(i) => {
                        self.flows.plays_asked.remove(i);
                        self.flows.playing.push(stream_id);
                        FromOrigin::Pass
                    }
                    None => FromOrigin::Violation(format!(
                        "a play started on stream {stream_id} that the guard did not allow"
                    )),
                }
            }
            _ => FromOrigin::Pass,
        }
    }

    /// The reconnect request with every `tcUrl` in it, in any object,
    /// pointing back at the guard (or removed).
    fn reconnect_request(&self, cmd: &Command) -> FromOrigin {
        let mut values = vec![
            Amf0Value::String(cmd.name.clone()),
            Amf0Value::Number(cmd.transaction_id),
        ];
        values.extend(
            std::iter::once(&cmd.object)
                .chain(&cmd.arguments)
                .map(|v| self.redirect_tc_url(v)),
        );
        match amf0::encode(&values) {
            Ok(payload) => FromOrigin::Rewrite(payload),
            Err(e) => FromOrigin::Violation(format!("reconnect request: {e}")),
        }
    }

    /// `value` with the `tcUrl` of an object in it rewritten or removed.
    fn redirect_tc_url(&self, value: &Amf0Value) -> Amf0Value {
        let rewrite = |props: &[(String, Amf0Value)]| -> Vec<(String, Amf0Value)> {
            props
                .iter()
                .filter_map(|(k, v)| match (k.as_str(), self.reconnect, &self.tc_url) {
                    ("tcUrl", ReconnectTcUrl::Rewrite, Some(url)) => {
                        Some((k.clone(), Amf0Value::String(url.clone())))
                    }
                    ("tcUrl", _, _) => None,
                    _ => Some((k.clone(), v.clone())),
                })
                .collect()
        };
        match value {
            Amf0Value::Object(p) => Amf0Value::Object(rewrite(p)),
            Amf0Value::EcmaArray(p) => Amf0Value::EcmaArray(rewrite(p)),
            Amf0Value::TypedObject { class, properties } => Amf0Value::TypedObject {
                class: class.clone(),
                properties: rewrite(properties),
            },
            other => other.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::Registry;
    use crate::rtmp::amf0::{encode, Amf0Value as V};
    use crate::rtmp::command::ConnectRequest;
    use std::sync::Arc;

    fn rules(extra: &str) -> SessionRules {
        rules_in(extra, Arc::new(Registry::default()))
    }

    fn rules_in(extra: &str, registry: Arc<Registry>) -> SessionRules {
        let publish = if extra.contains("publish =") {
            ""
        } else {
            "publish = \"none\"\n"
        };
        let text = format!(
            "[limits]\nmax_name_length = 16\n\
             [limits.session]\ncommands_per_second = 2\ncommands_burst = 2\nmax_streams = 2\n\
             [[upstream]]\nname = \"o\"\nservers = [\"127.0.0.1:1\"]\n\
             [[app]]\nname = \"live\"\nupstream = \"o\"\n{publish}{extra}"
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        let app = config.app("live").unwrap();
        let connect = ConnectRequest::with(&[("app", "live"), ("tcUrl", "rtmp://g/live")]).unwrap();
        let policy = StreamPolicy::new(app, registry, "127.0.0.1".parse().unwrap(), &connect);
        SessionRules::new(
            &config.limits,
            policy,
            connect.tc_url.clone(),
            ReconnectTcUrl::Rewrite,
        )
    }

    fn header(type_id: u8, stream_id: u32, length: usize) -> MessageHeader {
        MessageHeader {
            csid: 3,
            timestamp: 0,
            type_id,
            stream_id,
            length: length as u32,
        }
    }

    /// A client's command on `stream_id`: its header and payload.
    fn command_message(values: &[V], stream_id: u32) -> (MessageHeader, Vec<u8>) {
        let payload = encode(values).unwrap();
        (
            header(types::COMMAND_AMF0, stream_id, payload.len()),
            payload,
        )
    }

    fn at(ms: u64) -> Now {
        Now {
            session: Duration::from_millis(ms),
            unix: 0,
        }
    }

    fn judge(
        rules: &mut SessionRules,
        values: &[V],
        stream_id: u32,
        at_ms: u64,
    ) -> Verdict<AuthQuery> {
        let (header, payload) = command_message(values, stream_id);
        let message = Message {
            header,
            payload: &payload,
        };
        rules.on_message(&message, at(at_ms))
    }

    fn reason(v: Verdict<AuthQuery>) -> Option<Reason> {
        match v {
            Verdict::Refuse(r) => Some(r.reason),
            _ => None,
        }
    }

    fn cmd(name: &str, args: &[V]) -> Vec<V> {
        let mut v = vec![V::String(name.into()), V::Number(0.0), V::Null];
        v.extend(args.iter().cloned());
        v
    }

    fn s(text: &str) -> V {
        V::String(text.into())
    }

    fn origin_status(rules: &mut SessionRules, code: &str, stream_id: u32) -> FromOrigin {
        let info = V::Object(vec![
            ("level".into(), s("status")),
            ("code".into(), s(code)),
        ]);
        let payload = encode(&[s("onStatus"), V::Number(0.0), V::Null, info]).unwrap();
        let message = Message {
            header: header(types::COMMAND_AMF0, stream_id, payload.len()),
            payload: &payload,
        };
        rules.on_origin_message(&message)
    }

    #[test]
    fn commands_over_the_rate_are_refused_and_time_restores_the_rate() {
        let mut r = rules("");
        let call = cmd("getStreamLength", &[s("x")]);
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
        let create = cmd("createStream", &[]);
        assert_eq!(judge(&mut r, &create, 0, 0), Verdict::Pass);
        assert_eq!(judge(&mut r, &create, 0, 1000), Verdict::Pass);
        assert_eq!(
            reason(judge(&mut r, &create, 0, 2000)),
            Some(Reason::TooManyStreams)
        );
    }

    #[test]
    fn media_passes_only_on_a_publishing_stream_until_it_is_closed() {
        let mut r = rules("");
        assert_eq!(
            r.on_media(&header(types::VIDEO, 1, 10)).unwrap_err().reason,
            Reason::UnauthorizedFlow
        );
        assert_eq!(
            judge(&mut r, &cmd("publish", &[s("cam")]), 1, 0),
            Verdict::Opened
        );
        assert!(r.on_media(&header(types::VIDEO, 1, 10)).is_ok());
        assert!(
            r.on_media(&header(types::VIDEO, 2, 10)).is_err(),
            "another stream"
        );
        assert!(
            r.on_media(&header(types::VIDEO, 0, 10)).is_err(),
            "stream 0"
        );
        assert_eq!(
            judge(&mut r, &cmd("closeStream", &[]), 1, 1000),
            Verdict::Pass
        );
        assert!(
            r.on_media(&header(types::VIDEO, 1, 10)).is_err(),
            "after closeStream"
        );
        assert_eq!(r.streams(), &[(Kind::Publish, "cam".to_string())]);
    }

    #[test]
    fn fcunpublish_and_delete_stream_close_the_flow() {
        let mut r = rules("");
        judge(&mut r, &cmd("publish", &[s("cam")]), 1, 0);
        judge(&mut r, &cmd("FCUnpublish", &[s("cam")]), 0, 1000);
        assert!(r.on_media(&header(types::AUDIO, 1, 10)).is_err());
        judge(&mut r, &cmd("publish", &[s("cam")]), 1, 2000);
        judge(&mut r, &cmd("deleteStream", &[V::Number(1.0)]), 0, 3000);
        assert!(r.on_media(&header(types::AUDIO, 1, 10)).is_err());
    }

    #[test]
    fn in_dry_run_a_publish_refused_for_a_passable_reason_still_flows() {
        let mut r = rules("publish_allow = [\"10.0.0.0/8\"]").in_dry_run(true);
        assert_eq!(
            reason(judge(&mut r, &cmd("publish", &[s("cam")]), 1, 0)),
            Some(Reason::ForbiddenIp)
        );
        assert!(r.on_media(&header(types::VIDEO, 1, 10)).is_ok());
        // Enforced: no flow.
        let mut r = rules("publish_allow = [\"10.0.0.0/8\"]");
        judge(&mut r, &cmd("publish", &[s("cam")]), 1, 0);
        assert!(r.on_media(&header(types::VIDEO, 1, 10)).is_err());
        // A bad name is refused even in dry run, and opens nothing.
        let mut r = rules("").in_dry_run(true);
        judge(&mut r, &cmd("publish", &[s("cam\0x")]), 1, 0);
        assert!(r.on_media(&header(types::VIDEO, 1, 10)).is_err());
    }

    #[test]
    fn gstreamer_closes_streams_by_name() {
        // rtmp2sink sends closeStream and deleteStream with the stream's
        // name, on stream 0.
        let mut r = rules("");
        judge(&mut r, &cmd("publish", &[s("cam")]), 1, 0);
        assert_eq!(
            judge(&mut r, &cmd("closeStream", &[s("cam")]), 0, 1000),
            Verdict::Pass
        );
        assert!(r.on_media(&header(types::AUDIO, 1, 10)).is_err());
        judge(&mut r, &cmd("publish", &[s("cam")]), 1, 2000);
        assert_eq!(
            judge(&mut r, &cmd("deleteStream", &[s("cam")]), 0, 3000),
            Verdict::Pass
        );
        assert!(r.on_media(&header(types::AUDIO, 1, 10)).is_err());
    }

    #[test]
    fn spellings_shapes_types_and_duplicates_are_refused() {
        for (values, stream) in [
            (cmd("Publish", &[s("cam")]), 1),
            (cmd("PUBLISH", &[s("cam")]), 1),
            (cmd("publish\0", &[s("cam")]), 1),
            (cmd("publish\0x", &[s("cam")]), 1),
            (cmd("Play", &[s("cam")]), 1),
            (cmd("fcpublish", &[s("cam")]), 0),
            (cmd("publish", &[V::Number(1.0)]), 1),
            (cmd("publish", &[s("cam"), s("live"), s("extra")]), 1),
            (
                vec![s("play2"), V::Number(0.0), s("not null"), V::Object(vec![])],
                1,
            ),
            (
                cmd(
                    "play2",
                    &[V::Object(vec![
                        ("streamName".into(), s("a")),
                        ("streamName".into(), s("b")),
                    ])],
                ),
                1,
            ),
            (cmd("connect", &[]), 0),
            (
                vec![
                    s("x"),
                    V::Number(1.0),
                    V::Object(vec![("a".into(), V::Null), ("a".into(), V::Null)]),
                ],
                0,
            ),
        ] {
            let mut r = rules("");
            let verdict = judge(&mut r, &values, stream, 0);
            assert_eq!(
                reason(verdict),
                Some(Reason::ProtocolViolation),
                "{values:?}"
            );
        }
    }

    #[test]
    fn application_calls_pass() {
        let mut r = rules("");
        assert_eq!(
            judge(&mut r, &cmd("getServerTime", &[s("x")]), 0, 0),
            Verdict::Pass
        );
    }

    #[test]
    fn data_named_like_a_command_or_off_a_publish_is_refused() {
        let mut r = rules("");
        let data = |r: &mut SessionRules, values: &[V], stream_id| {
            let payload = encode(values).unwrap();
            let m = Message {
                header: header(types::DATA_AMF0, stream_id, payload.len()),
                payload: &payload,
            };
            reason(r.on_message(&m, Now::default()))
        };
        assert_eq!(
            data(&mut r, &cmd("publish", &[s("x")]), 1),
            Some(Reason::ProtocolViolation)
        );
        assert_eq!(
            data(&mut r, &[s("@setDataFrame"), s("onMetaData")], 1),
            Some(Reason::UnauthorizedFlow)
        );
        judge(&mut r, &cmd("publish", &[s("cam")]), 1, 0);
        assert_eq!(
            data(&mut r, &[s("@setDataFrame"), s("onMetaData")], 1),
            None
        );
    }

    #[test]
    fn shared_objects_and_aggregates_from_clients_are_refused() {
        let mut r = rules("");
        for t in [
            types::SHARED_OBJECT_AMF0,
            types::SHARED_OBJECT_AMF3,
            types::AGGREGATE,
        ] {
            let m = Message {
                header: header(t, 1, 1),
                payload: &[0],
            };
            assert_eq!(
                reason(r.on_message(&m, Now::default())),
                Some(Reason::ProtocolViolation)
            );
        }
    }

    #[test]
    fn bad_names_are_refused_before_any_decision() {
        for name in ["film\0x", "film\nx", "film\u{FFFD}", "seventeen-chars!!"] {
            let mut r = rules("");
            assert_eq!(
                reason(judge(&mut r, &cmd("publish", &[s(name)]), 1, 0)),
                Some(Reason::BadName),
                "{name:?}"
            );
        }
        let mut r = rules("");
        let long_query = format!("cam?key={}", "k".repeat(100));
        assert_eq!(
            judge(&mut r, &cmd("publish", &[s(&long_query)]), 1, 0),
            Verdict::Opened
        );
    }

    #[test]
    fn the_origin_starts_only_plays_the_guard_allowed() {
        let mut r = rules("");
        assert!(matches!(
            origin_status(&mut r, "NetStream.Play.Start", 1),
            FromOrigin::Violation(_)
        ));
        let mut r = rules("");
        assert!(matches!(
            r.on_origin_media(&header(types::VIDEO, 1, 10)),
            FromOrigin::Violation(_)
        ));
        assert_eq!(
            judge(&mut r, &cmd("play", &[s("cam")]), 1, 0),
            Verdict::Opened
        );
        assert_eq!(
            origin_status(&mut r, "NetStream.Play.Reset", 1),
            FromOrigin::Pass
        );
        assert_eq!(
            origin_status(&mut r, "NetStream.Play.Start", 1),
            FromOrigin::Pass
        );
        assert_eq!(
            r.on_origin_media(&header(types::VIDEO, 1, 10)),
            FromOrigin::Pass
        );
        // node-media-server sends a play's media on stream 0.
        assert_eq!(
            r.on_origin_media(&header(types::AUDIO, 0, 10)),
            FromOrigin::Pass
        );
        assert!(matches!(
            r.on_origin_media(&header(types::VIDEO, 2, 10)),
            FromOrigin::Violation(_)
        ));
        judge(&mut r, &cmd("closeStream", &[]), 1, 1000);
        assert_eq!(
            r.on_origin_media(&header(types::VIDEO, 1, 10)),
            FromOrigin::Drop
        );
    }

    #[test]
    fn one_connection_holds_one_viewer_place_per_stream() {
        let registry = Arc::new(Registry::default());
        let mut r = rules_in("max_viewers = 2", registry.clone());
        assert_eq!(
            judge(&mut r, &cmd("play", &[s("cam")]), 1, 0),
            Verdict::Opened
        );
        assert_eq!(
            judge(&mut r, &cmd("play", &[s("cam")]), 2, 1000),
            Verdict::Opened
        );
        assert_eq!(registry.counts("live"), (0, 1), "one place for one name");
        let mut other = rules_in("max_viewers = 2", registry.clone());
        assert_eq!(
            judge(&mut other, &cmd("play", &[s("cam")]), 1, 0),
            Verdict::Opened
        );
        // Closing one of the two streams keeps the place; closing both
        // gives it back.
        judge(&mut r, &cmd("closeStream", &[]), 1, 2000);
        assert_eq!(registry.counts("live"), (0, 2));
        judge(&mut r, &cmd("deleteStream", &[V::Number(2.0)]), 0, 3000);
        assert_eq!(registry.counts("live"), (0, 1));
    }

    #[test]
    fn a_reconnect_request_leads_back_to_the_guard() {
        let mut r = rules("");
        let info = V::Object(vec![
            ("code".into(), s("NetConnection.Connect.ReconnectRequest")),
            ("tcUrl".into(), s("rtmp://elsewhere.example/live")),
        ]);
        let payload = encode(&[s("onStatus"), V::Number(0.0), V::Null, info]).unwrap();
        let m = Message {
            header: header(types::COMMAND_AMF0, 0, payload.len()),
            payload: &payload,
        };
        let FromOrigin::Rewrite(rewritten) = r.on_origin_message(&m) else {
            panic!("not rewritten");
        };
        let cmd = command::decode(20, &rewritten, 8).unwrap();
        assert_eq!(cmd.arguments[0].get("tcUrl"), Some(&s("rtmp://g/live")));
        r.reconnect = ReconnectTcUrl::Strip;
        let FromOrigin::Rewrite(stripped) = r.on_origin_message(&m) else {
            panic!("not rewritten");
        };
        let cmd = command::decode(20, &stripped, 8).unwrap();
        assert_eq!(cmd.arguments[0].get("tcUrl"), None);
    }

    /// Names are at most 16 bytes in these rules.
    const KEY: &str = "sk_9f8e7d6c5b4a3";

    fn stream_key_rules(registry: Arc<Registry>) -> SessionRules {
        rules_in(
            &format!(
                "publish = \"stream_key\"\nkeys = {{ cam7 = \"{KEY}\", cam8 = \"sk_other_0000000\" }}\n"
            ),
            registry,
        )
    }

    /// What the origin is sent for a client's command that passed, as
    /// the relay forwards it; `None` if it was refused or held.
    fn sent_on(
        rules: &mut SessionRules,
        values: &[V],
        stream_id: u32,
        at_ms: u64,
    ) -> (Verdict<AuthQuery>, Option<Command>) {
        let (header, payload) = command_message(values, stream_id);
        let message = Message {
            header,
            payload: &payload,
        };
        let verdict = rules.on_message(&message, at(at_ms));
        if !matches!(verdict, Verdict::Pass | Verdict::Opened) {
            return (verdict, None);
        }
        let out = rules
            .for_origin(&message)
            .unwrap()
            .unwrap_or(payload.clone());
        (verdict, Some(command::decode(20, &out, 8).unwrap()))
    }

    fn named(cmd: &Option<Command>) -> Option<String> {
        let cmd = cmd.as_ref()?;
        classify(cmd).ok()?.stream_name().map(str::to_string)
    }

    #[test]
    fn every_command_naming_the_key_reaches_the_origin_with_the_public_name() {
        let mut r = stream_key_rules(Arc::new(Registry::default()));
        let mut at = 0;
        let mut step = |r: &mut SessionRules, values: Vec<V>, stream_id| {
            at += 1000;
            sent_on(r, &values, stream_id, at)
        };
        for (values, stream_id) in [
            (cmd("releaseStream", &[s(KEY)]), 0),
            (cmd("FCPublish", &[s(KEY)]), 0),
            (
                cmd(
                    "publish",
                    &[s(&format!("{KEY}?bandwidthtest=true")), s("live")],
                ),
                1,
            ),
        ] {
            let (verdict, out) = step(&mut r, values, stream_id);
            assert!(
                matches!(verdict, Verdict::Pass | Verdict::Opened),
                "{verdict:?}"
            );
            assert_eq!(named(&out).as_deref(), Some("cam7"));
        }
        assert!(r.on_media(&header(types::VIDEO, 1, 10)).is_ok());
        assert_eq!(r.streams(), &[(Kind::Publish, "cam7".to_string())]);
        // The publish keeps its type argument; only the name changed.
        let (_, out) = step(&mut r, cmd("getStreamLength", &[s(KEY)]), 0);
        assert_eq!(named(&out).as_deref(), Some("cam7"));
        let (_, out) = step(&mut r, cmd("FCUnpublish", &[s(KEY)]), 0);
        assert_eq!(named(&out).as_deref(), Some("cam7"));
        assert!(
            r.on_media(&header(types::VIDEO, 1, 10)).is_err(),
            "closed by its key"
        );
        // Public names go as they are.
        let (_, out) = step(&mut r, cmd("FCUnsubscribe", &[s("cam8")]), 0);
        assert_eq!(named(&out).as_deref(), Some("cam8"));
        let (_, out) = step(&mut r, cmd("getServerTime", &[s(KEY)]), 0);
        assert!(out.is_some());
    }

    #[test]
    fn gstreamer_closes_a_keyed_stream_by_its_key() {
        let mut r = stream_key_rules(Arc::new(Registry::default()));
        sent_on(&mut r, &cmd("publish", &[s(KEY)]), 1, 0);
        let (_, out) = sent_on(&mut r, &cmd("closeStream", &[s(KEY)]), 0, 1000);
        assert_eq!(named(&out).as_deref(), Some("cam7"));
        assert!(r.on_media(&header(types::AUDIO, 1, 10)).is_err());
        sent_on(&mut r, &cmd("publish", &[s(KEY)]), 1, 2000);
        let (_, out) = sent_on(&mut r, &cmd("deleteStream", &[s(KEY)]), 0, 3000);
        assert_eq!(named(&out).as_deref(), Some("cam7"));
        assert!(r.on_media(&header(types::AUDIO, 1, 10)).is_err());
    }

    #[test]
    fn a_client_cannot_make_the_origin_act_on_another_name() {
        let registry = Arc::new(Registry::default());
        let mut r = stream_key_rules(registry.clone());
        sent_on(&mut r, &cmd("publish", &[s(KEY)]), 1, 0);
        // A prelude or a second publish naming a public name, or a wrong
        // key: refused, nothing reaches the origin.
        for (values, stream_id) in [
            (cmd("FCPublish", &[s("cam8")]), 0),
            (cmd("publish", &[s("cam8")]), 2),
            (cmd("publish", &[s("sk_guess")]), 2),
        ] {
            let mut fresh = stream_key_rules(registry.clone());
            let (verdict, out) = sent_on(&mut fresh, &values, stream_id, 0);
            assert_eq!(reason(verdict), Some(Reason::Unauthorized), "{values:?}");
            assert!(out.is_none());
        }
        // A second publish with the other key, on another stream: that
        // stream, under its own public name.
        let (verdict, out) = sent_on(&mut r, &cmd("publish", &[s("sk_other_0000000")]), 2, 1000);
        assert_eq!(verdict, Verdict::Opened);
        assert_eq!(named(&out).as_deref(), Some("cam8"));
        // The same key from another session: the name is taken.
        let mut other = stream_key_rules(registry.clone());
        let (verdict, _) = sent_on(&mut other, &cmd("publish", &[s(KEY)]), 1, 0);
        assert_eq!(reason(verdict), Some(Reason::StreamBusy));
    }

    #[test]
    fn the_auth_service_never_sees_a_key_and_renames_what_the_client_sent() {
        let mut r = rules_in(
            &format!(
                "publish = \"stream_key\"\nkeys = {{ cam7 = \"{KEY}\" }}\nplay = \"http\"\n\
                 http_auth = {{ url = \"http://127.0.0.1:1/\" }}\n"
            ),
            Arc::new(Registry::default()),
        );
        sent_on(&mut r, &cmd("publish", &[s(KEY)]), 1, 0);
        // The publisher plays its own key: the service is asked about cam7.
        let play = cmd("play", &[s(KEY)]);
        let payload = encode(&play).unwrap();
        let message = Message {
            header: header(types::COMMAND_AMF0, 2, payload.len()),
            payload: &payload,
        };
        let Verdict::Ask(query) = r.on_message(&message, Now::default()) else {
            panic!("expected a question");
        };
        assert!(
            query.form.contains("name=cam7") && !query.form.contains(KEY),
            "{}",
            query.form
        );
        assert_eq!(
            r.answer(&query, Answer::Rename("cam7-low".into())),
            Verdict::Opened
        );
        let out = r.for_origin(&message).unwrap().expect("renamed");
        let out = command::decode(20, &out, 8).unwrap();
        assert_eq!(named(&Some(out)).as_deref(), Some("cam7-low"));
    }

    #[test]
    fn a_bad_name_in_stream_key_mode_is_not_logged() {
        let mut r = stream_key_rules(Arc::new(Registry::default()));
        let Verdict::Refuse(refusal) = judge(&mut r, &cmd("publish", &[s("sk_live\nx")]), 1, 0)
        else {
            panic!("not refused");
        };
        assert_eq!(refusal.reason, Reason::BadName);
        assert_eq!(refusal.status.map(|d| d.stream), Some(String::new()));
    }

    fn http_rules(registry: Arc<Registry>) -> SessionRules {
        rules_in(
            "publish = \"http\"\nplay = \"http\"\nhttp_auth = { url = \"http://127.0.0.1:1/\" }\n\
             blocked_streams = [\"banned*\"]\n",
            registry,
        )
    }

    /// Asks about a publish of `name`, answers `answer`; the verdict and
    /// what the origin is sent.
    fn answered(
        r: &mut SessionRules,
        name: &str,
        answer: Answer,
    ) -> (Verdict<AuthQuery>, Option<Command>) {
        let values = cmd("publish", &[s(name)]);
        let payload = encode(&values).unwrap();
        let message = Message {
            header: header(types::COMMAND_AMF0, 1, payload.len()),
            payload: &payload,
        };
        let Verdict::Ask(query) = r.on_message(&message, Now::default()) else {
            panic!("expected a question");
        };
        let verdict = r.answer(&query, answer);
        if !matches!(verdict, Verdict::Opened) {
            return (verdict, None);
        }
        let out = r.for_origin(&message).unwrap().unwrap_or(payload.clone());
        (verdict, Some(command::decode(20, &out, 8).unwrap()))
    }

    #[test]
    fn a_3xx_renames_the_stream_for_the_origin_claims_and_logs() {
        let registry = Arc::new(Registry::default());
        let mut r = http_rules(registry.clone());
        let (verdict, out) = answered(&mut r, "orig1?t=1", Answer::Rename("renamed1".into()));
        assert_eq!(verdict, Verdict::Opened);
        assert_eq!(named(&out).as_deref(), Some("renamed1"));
        assert_eq!(r.streams(), &[(Kind::Publish, "renamed1".to_string())]);
        assert_eq!(
            registry.local_claims().publishing,
            vec![("live".to_string(), "renamed1".to_string())]
        );
        let (_, out) = sent_on(&mut r, &cmd("FCUnpublish", &[s("orig1")]), 0, 1000);
        assert_eq!(named(&out).as_deref(), Some("renamed1"));
        assert!(r.on_media(&header(types::AUDIO, 1, 10)).is_err());

        // A rename onto a name live elsewhere, or blocked.
        let mut other = http_rules(registry.clone());
        sent_on(&mut other, &cmd("publish", &[s("x")]), 1, 0);
        let mut live = http_rules(registry.clone());
        let (verdict, _) = answered(&mut live, "taken", Answer::Allow);
        assert_eq!(verdict, Verdict::Opened);
        let mut late = http_rules(registry.clone());
        let (verdict, _) = answered(&mut late, "orig2", Answer::Rename("taken".into()));
        let Verdict::Refuse(refusal) = verdict else {
            panic!("a rename onto a live name passed");
        };
        assert_eq!(refusal.reason, Reason::StreamBusy);
        assert_eq!(refusal.status.map(|d| d.stream).as_deref(), Some("taken"));
        let mut blocked = http_rules(registry);
        let (verdict, _) = answered(&mut blocked, "orig3", Answer::Rename("banned-1".into()));
        assert_eq!(reason(verdict), Some(Reason::ContentBlocked));
    }

    #[test]
    fn a_3xx_to_a_remote_relay_or_an_unusable_name_is_refused_naming_nothing() {
        for location in [
            "rtmp://evil.example/live/x",
            "RTMP://evil.example/live/x",
            "renamed1?x=y",
            "bad\nname",
            "bad\u{FFFD}",
            "seventeen-chars!!",
            "http://x/y",
            "rtmps://evil/x",
            "/abs/name",
            "../other",
            "a/../b",
            "a/..",
        ] {
            let mut r = http_rules(Arc::new(Registry::default()));
            let (verdict, out) = answered(&mut r, "secret-name", Answer::Rename(location.into()));
            let Verdict::Refuse(refusal) = verdict else {
                panic!("{location:?} passed");
            };
            assert!(out.is_none());
            assert_eq!(refusal.reason, Reason::Unauthorized, "{location:?}");
            let status = refusal.status.expect("an onStatus");
            assert_eq!(status.stream, "", "{location:?}");
            assert_eq!(status.description, "not authorized");
            assert!(!refusal.detail.contains("secret-name") && !refusal.detail.contains("evil"));
            if location.to_ascii_lowercase().starts_with("rtmp://") {
                assert!(refusal.detail.contains("rtmp://"), "{}", refusal.detail);
            }
            assert!(r.streams().is_empty());
        }
    }

    #[test]
    fn an_http_decision_is_asked_then_answered() {
        let mut r = rules("play = \"http\"\nhttp_auth = { url = \"http://127.0.0.1:1/\" }\n");
        let play = cmd("play", &[s("cam")]);
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
        let Verdict::Ask(query) = judge(&mut r, &play, 1, 1000) else {
            panic!("expected a question");
        };
        assert_eq!(r.answer(&query, Answer::Allow), Verdict::Opened);
    }

    /// The message `values` on `stream_id`, and what `for_origin` makes
    /// of it.
    fn forwarded(
        r: &SessionRules,
        values: &[V],
        stream_id: u32,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let payload = encode(values).unwrap();
        let message = Message {
            header: header(types::COMMAND_AMF0, stream_id, payload.len()),
            payload: &payload,
        };
        r.for_origin(&message)
    }

    #[test]
    fn in_a_stream_key_app_plays_name_public_names_or_this_sessions_keys() {
        let registry = Arc::new(Registry::default());
        let mut publisher = stream_key_rules(registry.clone());
        sent_on(&mut publisher, &cmd("publish", &[s(KEY)]), 1, 0);
        let play2 = |name: &str, old: Option<&str>| {
            let mut props = vec![("streamName".to_string(), s(name))];
            props.extend(old.map(|o| ("oldStreamName".to_string(), s(o))));
            cmd("play2", &[V::Object(props)])
        };
        // Another session: the key, a random name, are refused alike.
        for values in [
            cmd("play", &[s(KEY)]),
            cmd("play", &[s("sk_random_guess")]),
            play2(KEY, None),
            cmd("FCSubscribe", &[s(KEY)]),
        ] {
            let mut viewer = stream_key_rules(registry.clone());
            let Verdict::Refuse(refusal) = judge(&mut viewer, &values, 1, 0) else {
                panic!("{values:?} passed");
            };
            assert_eq!(refusal.reason, Reason::Unauthorized);
            assert!(!refusal.detail.contains(KEY));
            let status = refusal.status.expect("an onStatus");
            assert_eq!(
                (
                    status.code,
                    status.description.as_str(),
                    status.stream.as_str()
                ),
                (super::super::PLAY_FAILED, "invalid stream key", "")
            );
            assert!(viewer.streams().is_empty());
        }
        // A bad name in a play is not logged either.
        let mut viewer = stream_key_rules(registry.clone());
        let Verdict::Refuse(refusal) = judge(&mut viewer, &cmd("play", &[s("sk\nx")]), 1, 0) else {
            panic!("passed");
        };
        assert_eq!(refusal.status.map(|d| d.stream), Some(String::new()));
        // Public names play; an oldStreamName that is a key is not
        // forwarded.
        let mut viewer = stream_key_rules(registry.clone());
        let (verdict, out) = sent_on(&mut viewer, &cmd("play", &[s("cam7")]), 1, 0);
        assert_eq!(verdict, Verdict::Opened);
        assert_eq!(named(&out).as_deref(), Some("cam7"));
        assert!(forwarded(&viewer, &play2("cam7", Some(KEY)), 1).is_err());
        assert_eq!(
            forwarded(&viewer, &play2("cam7", Some("cam8")), 1),
            Ok(None)
        );
        // The publisher's own key, in a play2's oldStreamName, is renamed.
        let out = forwarded(&publisher, &play2("cam8", Some(KEY)), 2)
            .unwrap()
            .expect("renamed");
        let out = command::decode(20, &out, 8).unwrap();
        assert_eq!(command::play2_old_name(&out), Some("cam7"));
    }

    #[test]
    fn commands_naming_an_unknown_name_in_a_stream_key_app_are_refused() {
        let r = stream_key_rules(Arc::new(Registry::default()));
        for name in [
            "FCUnpublish",
            "getStreamLength",
            "FCUnsubscribe",
            "closeStream",
        ] {
            let refusal = forwarded(&r, &cmd(name, &[s(KEY)]), 0).unwrap_err();
            assert_eq!(refusal.reason, Reason::Unauthorized, "{name}");
            assert_eq!(refusal.status.unwrap().stream, "");
            assert!(!refusal.detail.contains(KEY));
            assert_eq!(
                forwarded(&r, &cmd(name, &[s("cam8")]), 0),
                Ok(None),
                "{name}"
            );
        }
        assert!(forwarded(&r, &cmd("deleteStream", &[s(KEY)]), 0).is_err());
        assert_eq!(
            forwarded(&r, &cmd("deleteStream", &[V::Number(1.0)]), 0),
            Ok(None)
        );
    }

    #[test]
    fn in_dry_run_an_unrenamed_publish_never_reaches_the_origin() {
        // A wrong key: dry run lets the refusal through, the origin is
        // sent nothing.
        for values in [
            cmd("publish", &[s("sk_guess")]),
            cmd("FCPublish", &[s("sk_guess")]),
            cmd("releaseStream", &[s("cam8")]),
            cmd("publish", &[s("cam8")]),
        ] {
            let mut r = stream_key_rules(Arc::new(Registry::default())).in_dry_run(true);
            let verdict = judge(&mut r, &values, 1, 0);
            assert_eq!(reason(verdict), Some(Reason::Unauthorized), "{values:?}");
            let refusal = forwarded(&r, &values, 1).unwrap_err();
            assert_eq!(refusal.status.unwrap().stream, "");
        }
        // A 3xx to a remote relay or an unusable name, in http mode: the
        // name sent is not forwarded either.
        for location in ["rtmp://evil.example/live/x", "bad\nname"] {
            let mut r = http_rules(Arc::new(Registry::default())).in_dry_run(true);
            let values = cmd("publish", &[s("secret-name")]);
            let Verdict::Ask(query) = judge(&mut r, &values, 1, 0) else {
                panic!("expected a question");
            };
            let verdict = r.answer(&query, Answer::Rename(location.into()));
            assert_eq!(reason(verdict), Some(Reason::Unauthorized), "{location:?}");
            assert!(forwarded(&r, &values, 1).is_err(), "{location:?}");
            let fc = cmd("FCUnpublish", &[s("secret-name")]);
            assert!(forwarded(&r, &fc, 0).is_err(), "{location:?}");
        }
    }

    #[test]
    fn a_name_renamed_by_a_3xx_is_played_and_closed_by_its_new_name_and_kept_on_refusal() {
        let mut r = http_rules(Arc::new(Registry::default()));
        let publish = cmd("publish", &[s("secret1")]);
        let Verdict::Ask(query) = judge(&mut r, &publish, 1, 0) else {
            panic!("expected a question");
        };
        assert_eq!(
            r.answer(&query, Answer::Rename("renamed1".into())),
            Verdict::Opened
        );
        // The same name published again, and refused: the rename holds.
        for (answer, at) in [(Answer::Deny, 1000), (Answer::Unavailable, 2000)] {
            let Verdict::Ask(query) = judge(&mut r, &publish, 1, at) else {
                panic!("expected a question");
            };
            assert!(matches!(r.answer(&query, answer), Verdict::Refuse(_)));
            let out = forwarded(&r, &cmd("FCUnpublish", &[s("secret1")]), 0)
                .unwrap()
                .expect("renamed");
            let out = command::decode(20, &out, 8).unwrap();
            assert_eq!(named(&Some(out)).as_deref(), Some("renamed1"));
        }
        // A play of the name before the rename plays renamed1: the auth
        // service and the origin never see secret1 for it.
        let play = cmd("play", &[s("secret1")]);
        let Verdict::Ask(query) = judge(&mut r, &play, 2, 3000) else {
            panic!("expected a question");
        };
        assert!(
            query.form.contains("name=renamed1") && !query.form.contains("secret1"),
            "{}",
            query.form
        );
        assert_eq!(r.answer(&query, Answer::Allow), Verdict::Opened);
        let out = forwarded(&r, &play, 2).unwrap().expect("renamed");
        let out = command::decode(20, &out, 8).unwrap();
        assert_eq!(named(&Some(out)).as_deref(), Some("renamed1"));
        assert!(r.streams().iter().all(|(_, n)| n != "secret1"));
    }
}
