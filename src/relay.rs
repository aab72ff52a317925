//! The relay: both directions copied verbatim, and both read as RTMP.
//!
//! Each direction reads into its own bounded buffer, runs every byte through
//! that direction's [`ChunkParser`], inspects every command and data message,
//! and only then writes the buffer on. The parser follows message boundaries
//! without copying audio or video, so inspection costs a few header reads per
//! chunk. A message the guard cannot read ends the session: the origin must
//! never act on a message the guard read differently.
//!
//! The session ends when either side closes, or nothing moves in either
//! direction for `idle_timeout`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::callback::Callbacks;
use crate::config::SessionLimits;
use crate::config::{HttpAuth, OnError};
use crate::control::sessions::{self, Kick, Session};
use crate::policy::{AuthQuery, BitrateMeter, Denial, Kind, StreamPolicy};
use crate::report::Reason;
use crate::rtmp::chunk::{types, ChunkParser, Message};
use crate::rtmp::command;
use crate::rtmp::command::Command;
use crate::rtmp::reply;

/// Read buffer per direction. Pages are touched only as data arrives, so an
/// idle session costs little of it.
pub const BUFFER_SIZE: usize = 64 * 1024;

/// One direction's state, handed over from the connect stage.
pub struct Direction {
    pub parser: ChunkParser,
    /// Bytes already read but not yet parsed or forwarded.
    pub pending: Vec<u8>,
    /// Limits on commands; the client's direction only.
    pub rules: Option<ClientRules>,
}

/// `[limits.session]`: how fast a client may send commands, and how many
/// streams it may create. Audio, video and data are never limited here.
pub struct ClientRules {
    limiter: DefaultDirectRateLimiter,
    streams: u32,
    max_streams: u32,
    /// Decisions on publish and play.
    pub policy: Option<StreamPolicy>,
    meter: BitrateMeter,
    /// How many of the policy's streams the session registry shows.
    shown: usize,
}

impl ClientRules {
    pub fn new(limits: &SessionLimits, policy: Option<StreamPolicy>) -> ClientRules {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_second(NonZeroU32::new(limits.commands_per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(limits.commands_burst).unwrap_or(one));
        ClientRules {
            limiter: RateLimiter::direct(quota),
            streams: 0,
            max_streams: limits.max_streams,
            policy,
            meter: BitrateMeter::default(),
            shown: 0,
        }
    }

    /// Counts `bytes` the client sent at `now_ms`; refuses a publisher
    /// that stays over its app's bitrate cap.
    pub fn on_bytes(&mut self, bytes: u64, now_ms: u64) -> Result<(), Refusal> {
        let Some(policy) = self.policy.as_ref() else {
            return Ok(());
        };
        let Some(cap) = policy.publish_bitrate_cap() else {
            return Ok(());
        };
        if !self.meter.record(bytes, now_ms, cap) {
            return Ok(());
        }
        Err(Refusal::stream(policy.bitrate_denial(cap)))
    }

    /// Checks one command from the client, sent on `stream_id`.
    /// `Ok(Some(query))`: hold it until the HTTP auth service answers.
    pub fn check(
        &mut self,
        command: &Command,
        stream_id: u32,
    ) -> Result<Option<AuthQuery>, Refusal> {
        if self.limiter.check().is_err() {
            return Err(Refusal::new(
                Reason::CommandFlood,
                "commands over the session rate",
            ));
        }
        if command.name == "createStream" {
            self.streams += 1;
            if self.streams > self.max_streams {
                let detail = format!(
                    "createStream number {} of {}",
                    self.streams, self.max_streams
                );
                return Err(Refusal::new(Reason::TooManyStreams, detail));
            }
        }
        match self.policy.as_mut() {
            Some(policy) => policy
                .on_command(command, stream_id)
                .map_err(Refusal::stream),
            None => Ok(None),
        }
    }
}

/// Why the relay refuses what a peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
    /// A refused publish or play: the `onStatus` the client is sent.
    pub status: Option<Denial>,
}

impl Refusal {
    fn new(reason: Reason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
            status: None,
        }
    }

    fn violation(detail: String) -> Refusal {
        Refusal::new(Reason::ProtocolViolation, detail)
    }

    /// A refused publish or play, answered with its `onStatus`.
    fn stream(denial: Denial) -> Refusal {
        Refusal {
            reason: denial.reason,
            detail: denial.description.clone(),
            status: Some(denial),
        }
    }
}

/// Reports a client refusal; returns whether to enforce it (false in dry
/// run for limits dry run lets through).
pub type OnRefusal<'a> = &'a (dyn Fn(&Refusal) -> bool + Sync);

/// Why the relay ended.
#[derive(Debug)]
pub enum End {
    ClientClosed,
    UpstreamClosed,
    Idle,
    ClientError(std::io::Error),
    UpstreamError(std::io::Error),
    /// The client was refused (already reported).
    ClientRefused(Refusal),
    /// The upstream sent something the guard cannot read.
    UpstreamViolation(String),
    /// The operator ended the session (not yet reported).
    Kicked(Kick),
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::UpstreamClosed => "upstream_closed",
            End::Idle => "idle_timeout",
            End::ClientError(_) => "client_error",
            End::UpstreamError(_) => "upstream_error",
            End::ClientRefused(_) => "client_refused",
            End::UpstreamViolation(_) => "upstream_protocol_violation",
            End::Kicked(_) => "kicked",
        }
    }
}

/// What a finished relay moved.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
    /// Streams the client published or played, without query strings.
    pub streams: Vec<(Kind, String)>,
}

/// Shared by both directions: bytes moved and the time of the last move.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// What ended one direction.
enum PumpEnd {
    Eof,
    Read(std::io::Error),
    Write(std::io::Error),
    Refused(Refusal),
}

/// Settings for a relay.
pub struct Settings<'a> {
    pub idle_timeout: Duration,
    pub max_amf_depth: usize,
    pub bytes_client_to_upstream: &'a IntCounter,
    pub bytes_upstream_to_client: &'a IntCounter,
    /// Called for each refusal of the client; true to enforce it.
    pub on_refusal: OnRefusal<'a>,
    /// The app's HTTP auth service, for `http` mode.
    pub http: Option<(&'a Callbacks, &'a HttpAuth)>,
    /// The session's registry entry: bytes and streams shown to the
    /// operator, and the operator's kicks.
    pub session: &'a Session,
    pub kicks: tokio::sync::watch::Receiver<Option<Kick>>,
}

/// The upstream is trusted to the extent that a refusal only ends the
/// session; it is reported as an upstream error, not a client block.
fn always_enforce(_: &Refusal) -> bool {
    true
}

/// Relays until either side closes, a peer breaks the protocol, or the
/// session is idle.
pub async fn run(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    mut from_client: Direction,
    mut from_upstream: Direction,
    settings: Settings<'_>,
) -> (End, Totals) {
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let c2u = &settings.session.client_to_upstream;
    let u2c = &settings.session.upstream_to_client;
    let to_client_writing = AtomicBool::new(false);
    let to_upstream_writing = AtomicBool::new(false);
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let depth = settings.max_amf_depth;
    let client_side = Side {
        max_amf_depth: depth,
        activity: &activity,
        moved: c2u,
        counter: settings.bytes_client_to_upstream,
        on_refusal: settings.on_refusal,
        http: settings.http,
        writing: &to_upstream_writing,
        session: Some(settings.session),
    };
    let upstream_side = Side {
        max_amf_depth: depth,
        activity: &activity,
        moved: u2c,
        counter: settings.bytes_upstream_to_client,
        on_refusal: &always_enforce,
        http: None,
        writing: &to_client_writing,
        session: None,
    };
    let end = tokio::select! {
        end = pump(client_read, upstream_write, &mut from_client, &client_side) => match end {
            PumpEnd::Eof => End::ClientClosed,
            PumpEnd::Read(e) => End::ClientError(e),
            PumpEnd::Write(e) => End::UpstreamError(e),
            PumpEnd::Refused(r) => End::ClientRefused(r),
        },
        end = pump(upstream_read, client_write, &mut from_upstream, &upstream_side) => match end {
            PumpEnd::Eof => End::UpstreamClosed,
            PumpEnd::Read(e) => End::UpstreamError(e),
            PumpEnd::Write(e) => End::ClientError(e),
            PumpEnd::Refused(r) => End::UpstreamViolation(r.detail),
        },
        _ = idle(&activity, settings.idle_timeout) => End::Idle,
        kick = sessions::kicked(settings.kicks.clone()) => End::Kicked(kick),
    };
    // A reply may go to the client only between the origin's messages:
    // not if the origin's last write to the client was cut off mid-way.
    let client_clean = !to_client_writing.load(Ordering::Relaxed);
    let denial = match &end {
        End::ClientRefused(Refusal {
            status: Some(denial),
            ..
        }) => Some(denial.clone()),
        End::Kicked(kick) => Some(kick_denial(kick, from_client.rules.as_ref())),
        _ => None,
    };
    if let Some(denial) = denial.filter(|_| client_clean) {
        refuse_stream(client, &from_upstream.parser, &denial).await;
    }
    let streams = from_client
        .rules
        .as_ref()
        .and_then(|r| r.policy.as_ref())
        .map(|p| p.streams.clone())
        .unwrap_or_default();
    let totals = Totals {
        client_to_upstream: c2u.load(Ordering::Relaxed),
        upstream_to_client: u2c.load(Ordering::Relaxed),
        streams,
    };
    (end, totals)
}

/// The `onStatus` a kicked session gets: on its stream's message stream
/// if it has one.
fn kick_denial(kick: &Kick, rules: Option<&ClientRules>) -> Denial {
    let policy = rules.and_then(|r| r.policy.as_ref());
    Denial {
        reason: kick.reason,
        description: kick.description.clone(),
        code: reply::CONNECTION_CLOSED,
        stream_id: policy.map_or(0, |p| p.stream_id()),
        stream: policy
            .and_then(|p| p.streams.first())
            .map(|(_, name)| name.clone())
            .unwrap_or_default(),
    }
}

/// How long a refused publish or play waits for its answer at most.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a refused publish or play its `onStatus` error. It goes between
/// the origin's chunks, so only when the origin's stream to the client is
/// at a chunk boundary with a free csid; otherwise the close alone says it.
/// A failed key or token waits 0.5-1 s first, so guessing is slow.
async fn refuse_stream(client: &mut TcpStream, origin: &ChunkParser, denial: &Denial) {
    if denial.reason == Reason::Unauthorized {
        let wait = rand::random_range(500..1000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let Some(csid) = origin.idle_csid().filter(|_| origin.at_chunk_boundary()) else {
        return;
    };
    let out = reply::Output {
        chunk_size: origin.chunk_size(),
        csid,
        stream_id: denial.stream_id,
    };
    // Clients such as ffmpeg print only the description; lead with the code
    // so the person publishing sees it too.
    let description = format!("{}: {}", denial.code, denial.description);
    let bytes = reply::stream_error(out, denial.code, &description);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, client.write_all(&bytes)).await;
}

/// What one direction needs besides its sockets.
struct Side<'a> {
    max_amf_depth: usize,
    activity: &'a Activity,
    moved: &'a AtomicU64,
    counter: &'a IntCounter,
    on_refusal: OnRefusal<'a>,
    http: Option<(&'a Callbacks, &'a HttpAuth)>,
    /// Set while a write to the peer is in progress.
    writing: &'a AtomicBool,
    /// Where this direction's streams are shown (the client's only).
    session: Option<&'a Session>,
}

/// Copies one direction, parsing and inspecting everything it forwards.
async fn pump<R, W>(mut reader: R, mut writer: W, dir: &mut Direction, side: &Side<'_>) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = std::mem::take(&mut dir.pending);
    buf.reserve(BUFFER_SIZE.saturating_sub(buf.len()));
    loop {
        if buf.is_empty() {
            match reader.read_buf(&mut buf).await {
                Ok(0) => return PumpEnd::Eof,
                Ok(_) => side.activity.touch(),
                Err(e) => return PumpEnd::Read(e),
            }
        }
        // Parse the whole read; a publish or play waiting for the auth
        // service holds it and everything after it until the answer.
        let mut pos = 0;
        loop {
            match inspect_all(dir, &buf, &mut pos, side) {
                Ok(None) => break,
                Ok(Some(query)) => {
                    if let Err(refusal) = authorize(dir, &query, side).await {
                        if (side.on_refusal)(&refusal) {
                            return PumpEnd::Refused(refusal);
                        }
                    }
                }
                Err(refusal) => return PumpEnd::Refused(refusal),
            }
        }
        show_streams(dir, side);
        if let Some(rules) = dir.rules.as_mut() {
            let now_ms = side.activity.start.elapsed().as_millis() as u64;
            if let Err(refusal) = rules.on_bytes(buf.len() as u64, now_ms) {
                if (side.on_refusal)(&refusal) {
                    return PumpEnd::Refused(refusal);
                }
            }
        }
        side.writing.store(true, Ordering::Relaxed);
        if let Err(e) = writer.write_all(&buf).await {
            return PumpEnd::Write(e);
        }
        side.writing.store(false, Ordering::Relaxed);
        let n = buf.len() as u64;
        side.moved.fetch_add(n, Ordering::Relaxed);
        side.counter.inc_by(n);
        side.activity.touch();
        buf.clear();
    }
}

/// Copies the streams the client publishes or plays to its registry entry
/// when they change; on other reads it costs a comparison.
fn show_streams(dir: &mut Direction, side: &Side<'_>) {
    let (Some(session), Some(rules)) = (side.session, dir.rules.as_mut()) else {
        return;
    };
    let Some(policy) = rules.policy.as_ref() else {
        return;
    };
    if rules.shown != policy.streams.len() {
        session.set_streams(&policy.streams);
        rules.shown = policy.streams.len();
    }
}

/// Parses `buf` from `*pos` to its end, checking every kept message. A
/// refusal the callback does not enforce (dry run) is counted and passed.
/// Stops early, after the message, at a publish or play the HTTP auth
/// service must decide on.
fn inspect_all(
    dir: &mut Direction,
    buf: &[u8],
    pos: &mut usize,
    side: &Side<'_>,
) -> Result<Option<AuthQuery>, Refusal> {
    while *pos < buf.len() {
        let progress = dir
            .parser
            .advance(buf.get(*pos..).unwrap_or_default())
            .map_err(|e| Refusal::violation(e.to_string()))?;
        *pos += progress.consumed;
        if let Some(message) = progress.message {
            match inspect(&message, side.max_amf_depth, dir.rules.as_mut()) {
                Ok(Some(query)) => return Ok(Some(query)),
                Ok(None) => {}
                Err(refusal) if (side.on_refusal)(&refusal) => return Err(refusal),
                Err(_) => {}
            }
        }
    }
    Ok(None)
}

/// Asks the app's auth service about a held publish or play, and takes
/// its claims if allowed.
async fn authorize(dir: &mut Direction, query: &AuthQuery, side: &Side<'_>) -> Result<(), Refusal> {
    let refuse = |reason, description: &str| {
        Refusal::stream(StreamPolicy::refuse(query, reason, description))
    };
    let allowed = match side.http {
        Some((callbacks, auth)) => match callbacks.ask(auth, &query.form).await {
            Ok(allowed) => allowed,
            Err(why) if auth.on_error == OnError::Allow => {
                tracing::warn!(event = "auth_unavailable", detail = %why, "auth service failed; on_error allows");
                true
            }
            Err(why) => {
                tracing::warn!(event = "auth_unavailable", detail = %why, "auth service failed");
                return Err(refuse(Reason::AuthUnavailable, "authorization unavailable"));
            }
        },
        None => false,
    };
    if !allowed {
        return Err(refuse(Reason::Unauthorized, "not authorized"));
    }
    match dir.rules.as_mut().and_then(|r| r.policy.as_mut()) {
        Some(policy) => policy.complete(query).map_err(Refusal::stream),
        None => Ok(()),
    }
}

/// Checks one message the relay is about to forward: commands and data must
/// be well-formed AMF0 within the depth limit, and commands within the
/// client's rules.
pub fn inspect(
    message: &Message<'_>,
    max_amf_depth: usize,
    rules: Option<&mut ClientRules>,
) -> Result<Option<AuthQuery>, Refusal> {
    let t = message.header.type_id;
    match t {
        types::COMMAND_AMF0 | types::COMMAND_AMF3 => {
            let cmd = command::decode(t, message.payload, max_amf_depth)
                .map_err(|e| Refusal::violation(format!("unreadable command: {e}")))?;
            match rules {
                Some(rules) => rules.check(&cmd, message.header.stream_id),
                None => Ok(None),
            }
        }
        types::DATA_AMF0 | types::DATA_AMF3 => {
            command::check_data(t, message.payload, max_amf_depth)
                .map(|()| None)
                .map_err(|e| Refusal::violation(format!("unreadable data message: {e}")))
        }
        _ => Ok(None),
    }
}

/// Resolves once nothing has moved for `limit`.
async fn idle(activity: &Activity, limit: Duration) {
    loop {
        let deadline = activity.last() + limit;
        if Instant::now() >= deadline {
            return;
        }
        sleep_until(deadline).await;
    }
}
