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
use crate::config::{App, HttpAuth, Mode, OnError};
use crate::connect::{Connect, Route};
use crate::connection::Connection;
use crate::context::{Ctx, Stop};
use crate::control::sessions::{self, Kick, Session};
use crate::metrics::upstream_kind;
use crate::policy::session::{Answer, Now, SessionRules};
use crate::policy::{AuthQuery, StreamPolicy};
use crate::report::{self, Closed};
use crate::rtmp::chunk::{types, ChunkParser, MessageHeader};
use crate::rtmp::command::ConnectRequest;
use crate::rtmp::control::Control;
use crate::rtmp::reply;
use crate::upstream::Origin;
use crate::verdict::{Block, Denial, Reason, Refusal, Stage};

pub mod direction;

use direction::{Direction, Side, Sink, Stop as DirStop};

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
    let dry_run = ctx.config.server.mode == Mode::DryRun;
    let rules = Mutex::new(
        SessionRules::new(
            limits,
            policy,
            request.tc_url.clone(),
            ctx.config.server.reconnect_tcurl,
        )
        .in_dry_run(dry_run),
    );
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
        up: Direction::new(Side::Client, parser, OUT_CHUNK_SIZE),
        up_pending: client.take_buffered(),
        down: Direction::new(
            Side::Origin,
            ChunkParser::new(limits.chunk_limits()),
            OUT_CHUNK_SIZE,
        ),
        down_pending: origin.leftover,
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

/// Both directions, with what each read before the relay began.
struct Legs {
    /// Client to origin.
    up: Direction,
    up_pending: Vec<u8>,
    /// Origin to client.
    down: Direction,
    down_pending: Vec<u8>,
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

/// Control messages an outbox holds at most. A peer that sends pings and
/// never reads could otherwise grow it without limit; past the bound its
/// pongs and acknowledgements are dropped (a later acknowledgement covers
/// an earlier one).
const OUTBOX_LIMIT: usize = 256;

impl Outbox {
    fn push(&self, control: Control) {
        let mut messages = lock(&self.messages);
        if messages.len() < OUTBOX_LIMIT {
            messages.push(control);
        }
        drop(messages);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<Control> {
        std::mem::take(&mut *lock(&self.messages))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a direction's bytes go, and how they are counted.
struct Flow<'a> {
    from: Side,
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
        legs.up
            .own_control(&mut out, Control::SetChunkSize(OUT_CHUNK_SIZE));
        let header = MessageHeader {
            type_id: types::COMMAND_AMF0,
            ..header
        };
        legs.up.own_command(&mut out, &header, &payload);
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
        legs.down
            .own_control(&mut out, Control::SetChunkSize(OUT_CHUNK_SIZE));
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
            from: Side::Client,
            moved: &self.session.client_to_upstream,
            counter: &metrics.bytes_client_to_upstream,
            writing: &to_origin_writing,
            outbox: &self.to_origin,
            reply_to_sender: &self.to_client,
        };
        let down = Flow {
            from: Side::Origin,
            moved: &self.session.upstream_to_client,
            counter: &metrics.bytes_upstream_to_client,
            writing: &to_client_writing,
            outbox: &self.to_client,
            reply_to_sender: &self.to_origin,
        };
        let Legs {
            up: up_dir,
            up_pending,
            down: down_dir,
            down_pending,
        } = legs;
        let mut refusal = None;
        let end = tokio::select! {
            end = self.pump(client_read, origin_write, up_dir, std::mem::take(up_pending), &up) => match end {
                PumpEnd::Eof => End::ClientClosed,
                PumpEnd::Read => End::ClientError,
                PumpEnd::Write => End::UpstreamError,
                PumpEnd::Refused(denial) => {
                    refusal = denial;
                    End::ClientRefused
                }
                PumpEnd::Violation(why) => End::UpstreamViolation(why),
            },
            end = self.pump(origin_read, client_write, down_dir, std::mem::take(down_pending), &down) => match end {
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
            refuse_stream(client, down_dir, &denial).await;
        }
        end
    }

    /// Copies one direction, judging everything it forwards.
    async fn pump<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        dir: &mut Direction,
        mut buf: Vec<u8>,
        flow: &Flow<'_>,
    ) -> PumpEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        buf.reserve(BUFFER_SIZE.saturating_sub(buf.len()));
        let mut out = Vec::with_capacity(BUFFER_SIZE + BUFFER_SIZE / 8);
        let mut to_sender = Vec::new();
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
                dir.own_control(&mut out, control);
            }
            if let Some(ack) = dir.received(buf.len()) {
                flow.reply_to_sender.push(ack);
            }
            let mut pos = 0;
            while pos < buf.len() {
                let input = buf.get(pos..).unwrap_or_default();
                let now = self.activity.now();
                let fed = self.sink(&mut out, &mut to_sender, |sink| {
                    dir.feed(input, &mut self.rules(), now, sink)
                });
                pos += fed.consumed;
                let held = match fed.stop {
                    None => continue,
                    Some(DirStop::Refused(denial)) => return PumpEnd::Refused(denial),
                    Some(DirStop::Violation(why)) => return PumpEnd::Violation(why),
                    Some(DirStop::Held(held)) => held,
                };
                // A held publish or play, and everything after it, waits
                // for the auth service's answer; the origin sees it only if
                // the answer allows it.
                if self.write(&mut writer, &mut out, flow).await.is_err() {
                    return PumpEnd::Write;
                }
                let answer = self.ask(&held.query).await;
                let verdict = self.rules().answer(&held.query, answer);
                let stop = self.sink(&mut out, &mut to_sender, |sink| {
                    dir.resume(held, verdict, sink)
                });
                if let Some(DirStop::Refused(denial)) = stop {
                    return PumpEnd::Refused(denial);
                }
            }
            for control in to_sender.drain(..) {
                flow.reply_to_sender.push(control);
            }
            if flow.from == Side::Client {
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

    /// Runs `f` with a sink that writes to `out`, reports refusals, and
    /// shows the operator any stream the session opened.
    fn sink<T>(
        &self,
        out: &mut Vec<u8>,
        to_sender: &mut Vec<Control>,
        f: impl FnOnce(&mut Sink<'_>) -> T,
    ) -> T {
        let mut enforce = |r: &Refusal| self.enforce(r);
        let mut sink = Sink {
            out,
            to_sender,
            enforce: &mut enforce,
            opened: false,
            forwarded: None,
        };
        let result = f(&mut sink);
        if sink.opened {
            self.session.set_streams(self.rules().streams());
        }
        result
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

/// Sends a refused publish or play its `onStatus` error, in the guard's
/// framing of the client's leg. A failed key or token waits 0.5-1 s first,
/// so guessing is slow.
async fn refuse_stream(client: &mut TcpStream, to_client: &mut Direction, denial: &Denial) {
    if denial.reason == Reason::Unauthorized {
        let wait = rand::random_range(500..1000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    // Clients such as ffmpeg print only the description; lead with the code
    // so the person publishing sees it too.
    let description = format!("{}: {}", denial.code, denial.description);
    let payload = reply::status_payload(denial.code, &description);
    let header = MessageHeader::for_payload(
        crate::rtmp::emit::COMMAND_CSID,
        types::COMMAND_AMF0,
        denial.stream_id,
        &payload,
    );
    let mut out = Vec::new();
    to_client.own_command(&mut out, &header, &payload);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, client.write_all(&out)).await;
}
