//! The relay stage: a message-level proxy, with per-hop control, in both
//! directions.
//!
//! Each direction reads from one peer into a bounded buffer, parses every
//! chunk, and writes to the other peer only what it has read and the
//! session's rules allowed, in the guard's own framing ([`Emitter`]): its
//! own chunk size, csids and headers. So each peer reads exactly the
//! message boundaries the guard read. Media is streamed chunk by chunk and
//! never assembled.
//!
//! Protocol control is per hop: a peer's SetChunkSize, Abort,
//! Acknowledgement and ping are handled for its leg and never forwarded;
//! its Window Acknowledgement Size and Set Peer Bandwidth set the guard's
//! acknowledgements on that leg and are said again, by the guard, on the
//! other. User control events that name a stream travel on.
//!
//! The session ends when either side closes, a peer breaks the rules, the
//! operator kicks it, or nothing moves in either direction for
//! `idle_timeout`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use crate::callback::Callbacks;
use crate::config::{App, HttpAuth, OnError};
use crate::connect::{Connect, Route};
use crate::connection::Connection;
use crate::context::{Ctx, Stop};
use crate::control::sessions::{self, Kick, Session};
use crate::metrics::upstream_kind;
use crate::policy::session::{Answer, FromOrigin, Now, SessionRules};
use crate::policy::{AuthQuery, StreamPolicy};
use crate::report::{self, Closed};
use crate::rtmp::chunk::{types, ChunkParser, MediaPiece, Message, MessageClass, MessageHeader};
use crate::rtmp::command::{self, ConnectRequest};
use crate::rtmp::control::{self, AckWindow, Control, UserEvent};
use crate::rtmp::emit::{Emitter, COMMAND_CSID, CONTROL_CSID};
use crate::rtmp::reply;
use crate::upstream::Origin;
use crate::verdict::{Block, Denial, Reason, Refusal, Stage, Verdict};

/// Read buffer per direction. Pages are touched only as data arrives, so an
/// idle session costs little of it.
pub const BUFFER_SIZE: usize = 64 * 1024;

/// The chunk size the guard writes to both peers.
pub const OUT_CHUNK_SIZE: u32 = 4096;

/// How long a refused publish or play waits for its answer at most.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Relays a routed, connected session to its end, and logs how it ended.
pub async fn run(
    ctx: &Ctx,
    client: &mut Connection<TcpStream>,
    origin: Origin,
    route: &Route<'_>,
    connect: Connect,
) -> Result<(), Stop> {
    let guard = &ctx.guard;
    let app = route.app;
    let limits = &ctx.config.limits;
    let active = guard
        .metrics
        .sessions_active
        .with_label_values(&[&app.name]);
    active.inc();
    guard
        .metrics
        .sessions_total
        .with_label_values(&[&app.name])
        .inc();
    let registration = guard.sessions.register(ctx.client.socket(), &app.name);
    let Connect {
        request,
        header,
        parser,
    } = connect;
    let request = &request;
    let policy = StreamPolicy::new(app, guard.streams.clone(), ctx.client.ip(), request);
    let rules = Mutex::new(SessionRules::new(
        limits,
        policy,
        request.tc_url.clone(),
        ctx.config.server.reconnect_tcurl,
    ));
    let relay = Relay {
        ctx,
        app,
        session: &registration.session,
        http: app.http_auth().map(|h| (&guard.callbacks, h)),
        activity: Activity::new(),
        rules,
        to_client: Outbox::default(),
        to_origin: Outbox::default(),
    };
    let mut origin_stream = origin.stream;
    let mut legs = Legs {
        from_client: ChunkDirection {
            parser,
            pending: client.take_buffered(),
        },
        from_origin: ChunkDirection {
            parser: ChunkParser::new(limits.chunk_limits()),
            pending: origin.leftover,
        },
        to_client: Emitter::new(OUT_CHUNK_SIZE),
        to_origin: Emitter::new(OUT_CHUNK_SIZE),
    };
    let started = Instant::now();
    let end = match relay
        .start(
            &mut client.stream,
            &mut origin_stream,
            &mut legs,
            request,
            header,
        )
        .await
    {
        Err(end) => end,
        Ok(()) => {
            relay
                .pump_both(
                    &mut client.stream,
                    &mut origin_stream,
                    &mut legs,
                    &registration.kicks,
                )
                .await
        }
    };
    active.dec();
    let (up, down) = registration.session.bytes();
    let rules = relay.rules();
    report::session_closed(
        ctx.client,
        &Closed {
            app: &app.name,
            end: end.as_str(),
            duration: started.elapsed(),
            bytes_client_to_upstream: up,
            bytes_upstream_to_client: down,
            streams: rules.streams(),
        },
    );
    match end {
        End::ClientRefused => Err(Stop::Refused),
        End::Kicked(kick) => {
            let stream = rules.streams().first().map(|(_, n)| n.as_str());
            Err(Stop::Blocked(
                Block::new(Stage::Session, kick.reason, &kick.description)
                    .with_app(&app.name)
                    .with_stream(stream)
                    .always()
                    .by_operator(),
            ))
        }
        End::UpstreamViolation(why) => {
            guard
                .metrics
                .upstream_error(&route.upstream.name, upstream_kind::PROTOCOL_VIOLATION);
            report::upstream_violation(ctx.client, &route.upstream.name, &why);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Each direction's parser and each leg's output framing.
struct Legs {
    from_client: ChunkDirection,
    from_origin: ChunkDirection,
    to_client: Emitter,
    to_origin: Emitter,
}

/// One direction's reading state.
struct ChunkDirection {
    parser: ChunkParser,
    /// Bytes read before the relay began, not yet parsed.
    pending: Vec<u8>,
}

/// Why the relay ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    UpstreamClosed,
    Idle,
    ClientError,
    UpstreamError,
    /// The client was refused (already reported).
    ClientRefused,
    /// The upstream sent something the guard cannot read or allow.
    UpstreamViolation(String),
    /// The operator ended the session (not yet reported).
    Kicked(Kick),
}

impl End {
    fn as_str(&self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::UpstreamClosed => "upstream_closed",
            End::Idle => "idle_timeout",
            End::ClientError => "client_error",
            End::UpstreamError => "upstream_error",
            End::ClientRefused => "client_refused",
            End::UpstreamViolation(_) => "upstream_protocol_violation",
            End::Kicked(_) => "kicked",
        }
    }
}

/// What ended one direction.
enum PumpEnd {
    Eof,
    Read,
    Write,
    /// The client was refused: its `onStatus`, if a publish or play.
    Refused(Option<Denial>),
    /// The origin broke the protocol or the flows.
    Violation(String),
}

/// When anything last moved, in either direction.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// The time as the session's rules see it.
    fn now(&self) -> Now {
        Now {
            session: self.start.elapsed(),
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            if Instant::now() >= deadline {
                return;
            }
            sleep_until(deadline).await;
        }
    }
}

/// Control messages the guard owes a peer, written by the direction that
/// writes to that peer: acknowledgements and ping responses for what the
/// other direction read from it.
#[derive(Default)]
struct Outbox {
    messages: Mutex<Vec<Control>>,
    wake: Notify,
}

impl Outbox {
    fn push(&self, control: Control) {
        lock(&self.messages).push(control);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<Control> {
        std::mem::take(&mut *lock(&self.messages))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which peer a direction reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Client,
    Origin,
}

/// Where a direction's bytes go, and how they are counted.
struct Flow<'a> {
    from: From,
    /// This session's count, shown to the operator.
    moved: &'a AtomicU64,
    /// The guard's total.
    counter: &'a IntCounter,
    /// Set while a write to the peer is in progress.
    writing: &'a AtomicBool,
    /// What the guard owes the peer it writes to, and the one it reads.
    outbox: &'a Outbox,
    reply_to_sender: &'a Outbox,
}

/// One session's relay: what both directions share.
struct Relay<'a> {
    ctx: &'a Ctx,
    app: &'a App,
    session: &'a Session,
    /// The app's HTTP auth service, for `http` mode.
    http: Option<(&'a Callbacks, &'a HttpAuth)>,
    activity: Activity,
    /// Both directions' rules, as one state machine: a play the client
    /// asked for opens when the origin starts it.
    rules: Mutex<SessionRules>,
    to_client: Outbox,
    to_origin: Outbox,
}

/// A publish or play waiting for the auth service, and the message to
/// forward if it allows it.
struct Held {
    query: AuthQuery,
    header: MessageHeader,
    payload: Vec<u8>,
}

/// What a direction does with the media message in progress on a csid.
#[derive(Debug, Clone, Copy)]
struct MediaRoute {
    csid: u32,
    pass: bool,
}

impl Relay<'_> {
    fn rules(&self) -> MutexGuard<'_, SessionRules> {
        lock(&self.rules)
    }

    /// Tells both peers the guard's chunk size, and sends the origin the
    /// client's `connect`, re-encoded.
    async fn start(
        &self,
        client: &mut TcpStream,
        origin: &mut TcpStream,
        legs: &mut Legs,
        request: &ConnectRequest,
        header: MessageHeader,
    ) -> Result<(), End> {
        let payload = request
            .for_origin()
            .map_err(|e| End::UpstreamViolation(format!("cannot re-encode connect: {e}")))?;
        let mut out = Vec::with_capacity(payload.len() + 64);
        own_control(
            &mut legs.to_origin,
            &mut out,
            Control::SetChunkSize(OUT_CHUNK_SIZE),
        );
        let header = MessageHeader {
            type_id: types::COMMAND_AMF0,
            ..header
        };
        legs.to_origin
            .whole(&mut out, COMMAND_CSID, &header, &payload);
        origin
            .write_all(&out)
            .await
            .map_err(|_| End::UpstreamError)?;
        self.count(
            &self.session.client_to_upstream,
            &self.ctx.guard.metrics.bytes_client_to_upstream,
            out.len(),
        );
        out.clear();
        own_control(
            &mut legs.to_client,
            &mut out,
            Control::SetChunkSize(OUT_CHUNK_SIZE),
        );
        client.write_all(&out).await.map_err(|_| End::ClientError)?;
        Ok(())
    }

    fn count(&self, moved: &AtomicU64, counter: &IntCounter, n: usize) {
        moved.fetch_add(n as u64, Ordering::Relaxed);
        counter.inc_by(n as u64);
    }

    /// Runs both directions until one ends, the session idles or is
    /// kicked; then tells a refused or kicked client why, if it can.
    async fn pump_both(
        &self,
        client: &mut TcpStream,
        origin: &mut TcpStream,
        legs: &mut Legs,
        kicks: &tokio::sync::watch::Receiver<Option<Kick>>,
    ) -> End {
        let metrics = &self.ctx.guard.metrics;
        let to_client_writing = AtomicBool::new(false);
        let to_origin_writing = AtomicBool::new(false);
        let (client_read, client_write) = client.split();
        let (origin_read, origin_write) = origin.split();
        let up = Flow {
            from: From::Client,
            moved: &self.session.client_to_upstream,
            counter: &metrics.bytes_client_to_upstream,
            writing: &to_origin_writing,
            outbox: &self.to_origin,
            reply_to_sender: &self.to_client,
        };
        let down = Flow {
            from: From::Origin,
            moved: &self.session.upstream_to_client,
            counter: &metrics.bytes_upstream_to_client,
            writing: &to_client_writing,
            outbox: &self.to_client,
            reply_to_sender: &self.to_origin,
        };
        let Legs {
            from_client,
            from_origin,
            to_client,
            to_origin,
        } = legs;
        let mut refusal = None;
        let end = tokio::select! {
            end = self.pump(client_read, origin_write, from_client, to_origin, &up) => match end {
                PumpEnd::Eof => End::ClientClosed,
                PumpEnd::Read => End::ClientError,
                PumpEnd::Write => End::UpstreamError,
                PumpEnd::Refused(denial) => {
                    refusal = denial;
                    End::ClientRefused
                }
                PumpEnd::Violation(why) => End::UpstreamViolation(why),
            },
            end = self.pump(origin_read, client_write, from_origin, to_client, &down) => match end {
                PumpEnd::Eof => End::UpstreamClosed,
                PumpEnd::Read => End::UpstreamError,
                PumpEnd::Write => End::ClientError,
                PumpEnd::Refused(_) => End::ClientRefused,
                PumpEnd::Violation(why) => End::UpstreamViolation(why),
            },
            _ = self.activity.idle(self.ctx.config.server.idle_timeout) => End::Idle,
            kick = sessions::kicked(kicks.clone()) => End::Kicked(kick),
        };
        if let End::Kicked(kick) = &end {
            refusal = Some(
                self.rules()
                    .ended_by_operator(kick.reason, &kick.description),
            );
        }
        // The guard frames the client's leg itself, so its own reply can go
        // between any two of its writes; not if the last one was cut off.
        let client_clean = !to_client_writing.load(Ordering::Relaxed);
        if let Some(denial) = refusal.filter(|_| client_clean) {
            refuse_stream(client, to_client, &denial).await;
        }
        end
    }

    /// Copies one direction, judging everything it forwards.
    async fn pump<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        dir: &mut ChunkDirection,
        emitter: &mut Emitter,
        flow: &Flow<'_>,
    ) -> PumpEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = std::mem::take(&mut dir.pending);
        buf.reserve(BUFFER_SIZE.saturating_sub(buf.len()));
        let mut out = Vec::with_capacity(BUFFER_SIZE + BUFFER_SIZE / 8);
        let mut media: Vec<MediaRoute> = Vec::new();
        let mut acks = AckWindow::default();
        loop {
            if buf.is_empty() {
                tokio::select! {
                    read = reader.read_buf(&mut buf) => match read {
                        Ok(0) => return PumpEnd::Eof,
                        Ok(_) => self.activity.touch(),
                        Err(_) => return PumpEnd::Read,
                    },
                    _ = flow.outbox.wake.notified() => {}
                }
            }
            for control in flow.outbox.take() {
                own_control(emitter, &mut out, control);
            }
            if let Some(seq) = acks.received(buf.len()) {
                flow.reply_to_sender.push(Control::Acknowledgement(seq));
            }
            let mut pos = 0;
            while pos < buf.len() {
                let step = {
                    let progress = match dir.parser.advance(buf.get(pos..).unwrap_or_default()) {
                        Ok(p) => p,
                        Err(e) => {
                            return self.refuse_peer(flow.from, Refusal::violation(e.to_string()))
                        }
                    };
                    pos += progress.consumed;
                    self.step(
                        progress.message,
                        progress.media,
                        emitter,
                        &mut out,
                        &mut media,
                        &mut acks,
                        flow,
                    )
                };
                match step {
                    Ok(None) => {}
                    Ok(Some(held)) => {
                        // A held publish or play, and everything after it,
                        // waits for the auth service's answer; the origin
                        // sees it only if the answer allows it.
                        if self.write(&mut writer, &mut out, flow).await.is_err() {
                            return PumpEnd::Write;
                        }
                        let answer = self.ask(&held.query).await;
                        let verdict = self.rules().answer(&held.query, answer);
                        if let Err(end) = self.apply(verdict) {
                            return end;
                        }
                        emitter.whole(&mut out, COMMAND_CSID, &held.header, &held.payload);
                    }
                    Err(end) => return end,
                }
            }
            if flow.from == From::Client {
                let verdict = self.rules().on_bytes(buf.len() as u64, self.activity.now());
                if let Err(refusal) = verdict {
                    if self.enforce(&refusal) {
                        return PumpEnd::Refused(refusal.status);
                    }
                }
            }
            buf.clear();
            if self.write(&mut writer, &mut out, flow).await.is_err() {
                return PumpEnd::Write;
            }
        }
    }

    /// Handles one thing the parser read. `Ok(Some(held))`: a publish or
    /// play to hold until the auth service answers.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        message: Option<Message<'_>>,
        piece: Option<MediaPiece<'_>>,
        emitter: &mut Emitter,
        out: &mut Vec<u8>,
        media: &mut Vec<MediaRoute>,
        acks: &mut AckWindow,
        flow: &Flow<'_>,
    ) -> Result<Option<Held>, PumpEnd> {
        if let Some(piece) = piece {
            return self
                .media_piece(&piece, emitter, out, media, flow)
                .map(|()| None);
        }
        let Some(m) = message else {
            return Ok(None);
        };
        if MessageClass::of(m.header.type_id) == MessageClass::Control {
            return self.control(&m, emitter, out, acks, flow).map(|()| None);
        }
        match flow.from {
            From::Client => self.client_message(&m, emitter, out),
            From::Origin => self.origin_message(&m, emitter, out).map(|()| None),
        }
    }

    /// A command or data message from the client: canonical type, judged,
    /// then forwarded in the guard's framing.
    fn client_message(
        &self,
        m: &Message<'_>,
        emitter: &mut Emitter,
        out: &mut Vec<u8>,
    ) -> Result<Option<Held>, PumpEnd> {
        let (type_id, payload) = match command::canonical(m.header.type_id, m.payload) {
            Ok(c) => c,
            Err(e) => return Err(self.refuse_peer(From::Client, Refusal::violation(e.to_string()))),
        };
        let header = MessageHeader {
            type_id,
            ..m.header
        };
        let message = Message { header, payload };
        let verdict = self.rules().on_message(&message, self.activity.now());
        if let Verdict::Ask(query) = verdict {
            return Ok(Some(Held {
                query,
                header,
                payload: payload.to_vec(),
            }));
        }
        self.apply(verdict)?;
        emitter.whole(out, COMMAND_CSID, &header, payload);
        Ok(None)
    }

    /// A command or data message from the origin, judged, then forwarded.
    fn origin_message(
        &self,
        m: &Message<'_>,
        emitter: &mut Emitter,
        out: &mut Vec<u8>,
    ) -> Result<(), PumpEnd> {
        let (type_id, payload) = match command::canonical(m.header.type_id, m.payload) {
            Ok(c) => c,
            Err(e) => return Err(PumpEnd::Violation(e.to_string())),
        };
        let header = MessageHeader {
            type_id,
            ..m.header
        };
        let message = Message { header, payload };
        match self.rules().on_origin_message(&message) {
            FromOrigin::Pass => emitter.whole(out, COMMAND_CSID, &header, payload),
            FromOrigin::Rewrite(rewritten) => emitter.whole(out, COMMAND_CSID, &header, &rewritten),
            FromOrigin::Drop => {}
            FromOrigin::Violation(why) => return Err(PumpEnd::Violation(why)),
        }
        Ok(())
    }

    /// A piece of a media message: judged at its start, then streamed.
    fn media_piece(
        &self,
        piece: &MediaPiece<'_>,
        emitter: &mut Emitter,
        out: &mut Vec<u8>,
        media: &mut Vec<MediaRoute>,
        flow: &Flow<'_>,
    ) -> Result<(), PumpEnd> {
        let csid = piece.header.csid;
        if piece.is_first() {
            let pass = match flow.from {
                From::Client => match self.rules().on_media(&piece.header) {
                    Ok(()) => true,
                    Err(refusal) => return Err(self.refuse_peer(From::Client, refusal)),
                },
                From::Origin => match self.rules().on_origin_media(&piece.header) {
                    FromOrigin::Pass | FromOrigin::Rewrite(_) => true,
                    FromOrigin::Drop => false,
                    FromOrigin::Violation(why) => return Err(PumpEnd::Violation(why)),
                },
            };
            match media.iter_mut().find(|r| r.csid == csid) {
                Some(route) => route.pass = pass,
                None => media.push(MediaRoute { csid, pass }),
            }
        }
        let pass = media.iter().any(|r| r.csid == csid && r.pass);
        if !pass {
            return Ok(());
        }
        emitter
            .media(out, piece)
            .map_err(|e| self.refuse_peer(flow.from, Refusal::violation(e.to_string())))
    }

    /// A control message: handled for this leg; the window and bandwidth
    /// are said again on the other; stream events travel on.
    fn control(
        &self,
        m: &Message<'_>,
        emitter: &mut Emitter,
        out: &mut Vec<u8>,
        acks: &mut AckWindow,
        flow: &Flow<'_>,
    ) -> Result<(), PumpEnd> {
        let control = match control::parse(m.header.type_id, m.payload) {
            Ok(c) => c,
            Err(e) => return Err(self.refuse_peer(flow.from, Refusal::violation(e.to_string()))),
        };
        match control {
            // The parser applied it to this direction.
            Control::SetChunkSize(_) | Control::Acknowledgement(_) => {}
            Control::Abort(csid) => {
                return Err(self.refuse_peer(
                    flow.from,
                    Refusal::violation(format!("abort of chunk stream {csid}")),
                ))
            }
            Control::WindowAckSize(size) => {
                acks.set_window(size);
                own_control(emitter, out, control);
            }
            Control::SetPeerBandwidth { .. } => own_control(emitter, out, control),
            Control::User(UserEvent::PingRequest(t)) => {
                flow.reply_to_sender
                    .push(Control::User(UserEvent::PingResponse(t)));
            }
            Control::User(UserEvent::PingResponse(_)) | Control::User(UserEvent::Other(_)) => {}
            Control::User(UserEvent::Stream { .. })
            | Control::User(UserEvent::SetBufferLength { .. }) => {
                own_control(emitter, out, control)
            }
        }
        Ok(())
    }

    /// Ends the direction for something a peer sent: a client's refusal is
    /// reported (and enforced even in dry run when it cannot be relayed);
    /// the origin's is an upstream violation, never scored on the client.
    fn refuse_peer(&self, from: From, refusal: Refusal) -> PumpEnd {
        match from {
            From::Client => {
                self.enforce(&refusal);
                PumpEnd::Refused(refusal.status)
            }
            From::Origin => PumpEnd::Violation(refusal.detail),
        }
    }

    /// Carries out a verdict on the client: shows an opened stream to the
    /// operator, and reports a refusal, which dry run may let through.
    fn apply(&self, verdict: Verdict<AuthQuery>) -> Result<(), PumpEnd> {
        match verdict {
            Verdict::Pass | Verdict::Ask(_) => Ok(()),
            Verdict::Opened => {
                self.session.set_streams(self.rules().streams());
                Ok(())
            }
            Verdict::Refuse(refusal) if self.enforce(&refusal) => {
                Err(PumpEnd::Refused(refusal.status))
            }
            Verdict::Refuse(_) => Ok(()),
        }
    }

    /// Reports a refusal of the client; true to enforce it.
    fn enforce(&self, refusal: &Refusal) -> bool {
        let stream = refusal.status.as_ref().map(|d| d.stream.as_str());
        let block = Block::new(Stage::Session, refusal.reason, &refusal.detail)
            .with_app(&self.app.name)
            .with_stream(stream);
        self.ctx.refuse(&block)
    }

    /// Writes what a direction framed, and counts it.
    async fn write<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        out: &mut Vec<u8>,
        flow: &Flow<'_>,
    ) -> std::io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        flow.writing.store(true, Ordering::Relaxed);
        writer.write_all(out).await?;
        flow.writing.store(false, Ordering::Relaxed);
        self.count(flow.moved, flow.counter, out.len());
        self.activity.touch();
        out.clear();
        Ok(())
    }

    /// Asks the app's auth service about a held publish or play.
    async fn ask(&self, query: &AuthQuery) -> Answer {
        let Some((callbacks, auth)) = self.http else {
            return Answer::Deny;
        };
        match callbacks.ask(auth, &query.form).await {
            Ok(true) => Answer::Allow,
            Ok(false) => Answer::Deny,
            Err(why) if auth.on_error == OnError::Allow => {
                tracing::warn!(event = "auth_unavailable", detail = %why, "auth service failed; on_error allows");
                Answer::Allow
            }
            Err(why) => {
                tracing::warn!(event = "auth_unavailable", detail = %why, "auth service failed");
                Answer::Unavailable
            }
        }
    }
}

/// Frames one of the guard's own control messages.
fn own_control(emitter: &mut Emitter, out: &mut Vec<u8>, control: Control) {
    let (type_id, payload) = control.encode();
    let header = MessageHeader {
        csid: CONTROL_CSID,
        timestamp: 0,
        type_id,
        stream_id: 0,
        length: payload.len() as u32,
    };
    emitter.whole(out, CONTROL_CSID, &header, &payload);
}

/// Sends a refused publish or play its `onStatus` error, in the guard's
/// framing of the client's leg. A failed key or token waits 0.5-1 s first,
/// so guessing is slow.
async fn refuse_stream(client: &mut TcpStream, emitter: &mut Emitter, denial: &Denial) {
    if denial.reason == Reason::Unauthorized {
        let wait = rand::random_range(500..1000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    // Clients such as ffmpeg print only the description; lead with the code
    // so the person publishing sees it too.
    let description = format!("{}: {}", denial.code, denial.description);
    let payload = reply::status_payload(denial.code, &description);
    let header = MessageHeader {
        csid: COMMAND_CSID,
        timestamp: 0,
        type_id: types::COMMAND_AMF0,
        stream_id: denial.stream_id,
        length: payload.len() as u32,
    };
    let mut out = Vec::new();
    emitter.whole(&mut out, COMMAND_CSID, &header, &payload);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, client.write_all(&out)).await;
}
