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
//! Each direction's I/O is a hand-written state machine (`pump.rs`), so a
//! session keeps room only for its state. Buffers are lent from a shared
//! pool only while data is in flight ([`buffers`]): a session waiting for
//! bytes holds none. Each direction
//! writes what it has read before it waits for more, so a peer that
//! reads slowly holds back only its own upstream connection, and the guard
//! holds at most one buffer of output for it. Before it writes, a
//! direction reads on at once for what its read released from a Nagle
//! sender (`read_on.rs`), and output that ends inside a message may wait
//! for the rest of that message, so that one send carries it (`pump.rs`).
//!
//! The session ends when either side closes, a peer breaks the rules, the
//! operator kicks it, a peer takes no byte for `write_timeout` while data
//! waits for it, or nothing moves in either direction for `idle_timeout`.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::task::AtomicWaker;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant, Sleep};

use crate::callback::{Callbacks, Reply};
use crate::config::{App, HttpAuth, Mode, OnError};
use crate::connect::{Connect, Route};
use crate::connection::Connection;
use crate::context::{Ctx, Stop};
use crate::control::sessions::{Kick, Session};
use crate::metrics::upstream_kind;
use crate::policy::session::{Answer, Now, SessionRules};
use crate::policy::{AuthQuery, StreamPolicy};
use crate::report::{self, Closed};
use crate::rtmp::cache;
use crate::rtmp::chunk::{types, ChunkParser, MessageHeader};
use crate::rtmp::control::Control;
use crate::rtmp::reply;
use crate::transport::Halves;
use crate::upstream::Origin;
use crate::verdict::{Block, Denial, Reason, Refusal, Stage};

pub mod buffers;
pub mod direction;
mod doorbell;
mod pump;
mod read_on;

use buffers::WriteError;
use direction::{Direction, Side};
use doorbell::Doorbell;
use pump::Pump;

/// The chunk size the guard writes to both peers.
pub const OUT_CHUNK_SIZE: u32 = 4096;

/// How long a refused publish or play waits for its answer at most.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Relays a routed, connected session to its end, and logs how it ended.
///
/// This future lives as long as the session, with room for everything it
/// holds across an await: so `connect` comes boxed, and the request is
/// read (in [`prepare`]) before the first await, so that it is not kept.
pub async fn run<C: Halves, O: Halves>(
    ctx: &Ctx,
    client: &mut Connection<C>,
    origin: Origin<O>,
    route: &Route<'_>,
    connect: Box<Connect>,
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
    let Prepared {
        rules,
        connect,
        parser,
    } = prepare(ctx, app, connect);
    let relay = Relay {
        ctx,
        app,
        session: &registration.session,
        http: app.http_auth().map(|h| (&guard.callbacks, h)),
        activity: Activity::new(),
        rules: Mutex::new(rules),
        to_client: Outbox::default(),
        to_origin: Outbox::default(),
    };
    let Origin {
        stream: mut origin_stream,
        leftover,
        // The session's count on its server, until the session ends.
        lease: _lease,
    } = origin;
    let mut legs = Legs {
        up: Direction::new(Side::Client, parser, OUT_CHUNK_SIZE),
        up_pending: client.take_buffered(),
        down: Direction::new(
            Side::Origin,
            ChunkParser::new(limits.chunk_limits()),
            OUT_CHUNK_SIZE,
        ),
        down_pending: leftover,
    };
    let started = Instant::now();
    let begun = relay
        .start(&mut client.stream, &mut origin_stream, &mut legs, connect)
        .await;
    let end = match begun {
        Err(end) => end,
        Ok(()) => {
            relay
                .pump_both(&mut client.stream, &mut origin_stream, &mut legs)
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
            transport: ctx.transport,
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
        End::SlowConsumer => Err(Stop::Blocked(
            Block::new(
                Stage::Session,
                Reason::SlowConsumer,
                format!(
                    "took no byte for {:?} while data waited for it",
                    ctx.config.server.write_timeout
                ),
            )
            .with_app(&app.name)
            .with_stream(rules.streams().first().map(|(_, n)| n.as_str()))
            .always(),
        )),
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

/// What a session's relay starts from.
struct Prepared {
    rules: SessionRules,
    /// The client's `connect`, re-encoded for the origin, and its header.
    connect: Result<(MessageHeader, Vec<u8>), End>,
    /// The client's parser, as the connect stage left it.
    parser: ChunkParser,
}

/// Reads what the session needs from the client's `connect`.
fn prepare(ctx: &Ctx, app: &Arc<App>, connect: Box<Connect>) -> Prepared {
    let Connect {
        request,
        header,
        parser,
    } = *connect;
    let policy = StreamPolicy::new(app, ctx.guard.streams.clone(), ctx.client.ip(), &request);
    let server = &ctx.config.server;
    let rules = SessionRules::new(
        &ctx.config.limits,
        policy,
        request.tc_url.clone(),
        server.reconnect_tcurl,
    )
    .in_dry_run(server.mode == Mode::DryRun);
    let header = MessageHeader {
        type_id: types::COMMAND_AMF0,
        ..header
    };
    let connect = request
        .for_origin()
        .map(|payload| (header, payload))
        .map_err(|e| End::UpstreamViolation(format!("cannot re-encode connect: {e}")));
    Prepared {
        rules,
        connect,
        parser,
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
    /// The client took no byte for `write_timeout` (not yet reported).
    SlowConsumer,
    /// The origin took no byte for `write_timeout`.
    UpstreamStalled,
}

impl End {
    /// How a failed write to the origin ends the session.
    fn writing_to_origin(e: WriteError) -> End {
        match e {
            WriteError::Failed => End::UpstreamError,
            WriteError::Stalled => End::UpstreamStalled,
        }
    }

    /// How a failed write to the client ends the session.
    fn writing_to_client(e: WriteError) -> End {
        match e {
            WriteError::Failed => End::ClientError,
            WriteError::Stalled => End::SlowConsumer,
        }
    }

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
            End::SlowConsumer => "slow_consumer",
            End::UpstreamStalled => "upstream_write_timeout",
        }
    }
}

/// What ended one direction.
enum PumpEnd {
    Eof,
    Read,
    /// The write to the other peer failed, or it took no byte for
    /// `write_timeout`.
    Write(WriteError),
    /// The client was refused: its `onStatus`, if a publish or play.
    Refused(Option<Denial>),
    /// The origin broke the protocol or the flows.
    Violation(String),
}

/// How the client-to-origin direction's end ends the session; a refused
/// publish or play keeps its `onStatus` for the client.
fn from_client(end: PumpEnd, refusal: &mut Option<Denial>) -> End {
    match end {
        PumpEnd::Eof => End::ClientClosed,
        PumpEnd::Read => End::ClientError,
        PumpEnd::Write(e) => End::writing_to_origin(e),
        PumpEnd::Refused(denial) => {
            *refusal = denial;
            End::ClientRefused
        }
        PumpEnd::Violation(why) => End::UpstreamViolation(why),
    }
}

/// How the origin-to-client direction's end ends the session.
fn from_origin(end: PumpEnd) -> End {
    match end {
        PumpEnd::Eof => End::UpstreamClosed,
        PumpEnd::Read => End::UpstreamError,
        PumpEnd::Write(e) => End::writing_to_client(e),
        PumpEnd::Refused(_) => End::ClientRefused,
        PumpEnd::Violation(why) => End::UpstreamViolation(why),
    }
}

/// When anything last moved, in either direction; and the time as the
/// session's rules see it, from the same clock read.
struct Activity {
    start: Instant,
    /// The wall clock at `start`. The rules' Unix time is counted on from
    /// it with the monotonic clock: one clock read per message, not two.
    /// A wall clock stepped during a session (NTP at boot) moves token
    /// expiry only for sessions begun after the step.
    start_unix: Duration,
    last_ms: AtomicU64,
    /// Bytes moved since [`Activity::moved_before`] last looked.
    moved: AtomicBool,
}

/// How close to the idle deadline the relay polls its timer even on a
/// pass that moved bytes: the timer's clock is not the activity's, and
/// counts in whole milliseconds.
const IDLE_MARGIN: Duration = Duration::from_millis(10);

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            start_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            last_ms: AtomicU64::new(0),
            moved: AtomicBool::new(false),
        }
    }

    /// True if bytes moved since the last call, at a time well before
    /// `deadline`. The idle timer, set for `deadline`, cannot have fired
    /// before that time, and if it fires after, it wakes the relay again;
    /// so a pass that moved bytes need not poll the timer (a cache line
    /// and a waker registration on every message).
    fn moved_before(&self, deadline: Instant) -> bool {
        self.moved.swap(false, Ordering::Relaxed) && self.last() + IDLE_MARGIN < deadline
    }

    /// Records that bytes moved now.
    fn touch(&self) {
        self.now();
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms())
    }

    /// When bytes last moved, in milliseconds of the session.
    fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }

    /// The time as the session's rules see it; bytes moved now.
    fn now(&self) -> Now {
        let session = self.start.elapsed();
        self.last_ms
            .store(session.as_millis() as u64, Ordering::Relaxed);
        self.moved.store(true, Ordering::Relaxed);
        Now {
            session,
            unix: (self.start_unix + session).as_secs(),
        }
    }
}

/// Control messages the guard owes a peer, written by the direction that
/// writes to that peer: acknowledgements and ping responses for what the
/// other direction read from it. The writer checks a flag, not a lock, on
/// every pass, and waits on it with no lock either.
#[derive(Default)]
struct Outbox {
    messages: Mutex<Vec<Control>>,
    pending: AtomicBool,
    waker: AtomicWaker,
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
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn has_mail(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    fn take(&self) -> Vec<Control> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.messages))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a direction's bytes go, and how they are counted.
#[derive(Clone, Copy)]
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
    async fn start<C: AsyncWrite + Unpin, O: AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        origin: &mut O,
        legs: &mut Legs,
        connect: Result<(MessageHeader, Vec<u8>), End>,
    ) -> Result<(), End> {
        let (header, payload) = connect?;
        let mut out = Vec::with_capacity(payload.len() + 64);
        legs.up
            .own_control(&mut out, Control::SetChunkSize(OUT_CHUNK_SIZE));
        legs.up.own_command(&mut out, &header, &payload);
        let stall = self.ctx.config.server.write_timeout;
        buffers::write_all(origin, &out, stall)
            .await
            .map_err(End::writing_to_origin)?;
        self.count(
            &self.session.client_to_upstream,
            &self.ctx.guard.metrics.bytes_client_to_upstream,
            out.len(),
        );
        out.clear();
        legs.down
            .own_control(&mut out, Control::SetChunkSize(OUT_CHUNK_SIZE));
        buffers::write_all(client, &out, stall)
            .await
            .map_err(End::writing_to_client)?;
        // Every byte written to a peer is counted, the guard's own too.
        self.count(
            &self.session.upstream_to_client,
            &self.ctx.guard.metrics.bytes_upstream_to_client,
            out.len(),
        );
        Ok(())
    }

    fn count(&self, moved: &AtomicU64, counter: &IntCounter, n: usize) {
        moved.fetch_add(n as u64, Ordering::Relaxed);
        counter.inc_by(n as u64);
    }

    /// Runs both directions until one ends, the session idles or is
    /// kicked; then tells a refused or kicked client why, if it can.
    async fn pump_both<C: Halves, O: Halves>(
        &self,
        client: &mut C,
        origin: &mut O,
        legs: &mut Legs,
    ) -> End {
        let metrics = &self.ctx.guard.metrics;
        let to_client_writing = AtomicBool::new(false);
        let to_origin_writing = AtomicBool::new(false);
        let up_flow = Flow {
            from: Side::Client,
            moved: &self.session.client_to_upstream,
            counter: &metrics.bytes_client_to_upstream,
            writing: &to_origin_writing,
            outbox: &self.to_origin,
            reply_to_sender: &self.to_client,
        };
        let down_flow = Flow {
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
        let end = {
            let (client_read, client_write) = client.halves();
            let (origin_read, origin_write) = origin.halves();
            let up_pending = std::mem::take(up_pending);
            let down_pending = std::mem::take(down_pending);
            let mut up = Pump::new(
                self,
                up_flow,
                up_dir,
                (client_read, origin_write),
                up_pending,
            );
            let mut down = Pump::new(
                self,
                down_flow,
                &mut *down_dir,
                (origin_read, client_write),
                down_pending,
            );
            let idle_limit = self.ctx.config.server.idle_timeout;
            let mut idle_at = self.activity.last() + idle_limit;
            let mut idle = pin!(sleep_until(idle_at));
            // The timer's last poll left it registered: its firing wakes
            // the relay. Not before its first poll.
            let mut armed = false;
            // Each direction goes first on every other pass, so neither
            // can starve the other of the task's budget.
            let mut up_first = false;
            let mut kick = self.ctx.guard.sessions.watch(self.session);
            // The client's direction runs only on passes it was woken for.
            let up_bell = Doorbell::new();
            let up_waker = doorbell::waker(&up_bell);
            poll_fn(|cx| {
                // With thousands of sessions, a session's state has left
                // the cache between two messages: its misses overlap when
                // asked for at once, rather than each in turn as a pass
                // reaches it. The origin's direction runs on every pass.
                down.prefetch();
                cache::prefetch(std::slice::from_ref(&*up_bell));
                if let Poll::Ready(kick) = kick.poll(cx) {
                    return Poll::Ready(End::Kicked(kick));
                }
                let up_rung = up_bell.answer(cx);
                if up_rung {
                    up.prefetch();
                }
                up_first = !up_first;
                for up_now in [up_first, !up_first] {
                    let end = if up_now {
                        if !up_rung {
                            continue;
                        }
                        let mut up_cx = Context::from_waker(&up_waker);
                        up.poll(&mut up_cx)
                            .map(|end| from_client(end, &mut refusal))
                    } else {
                        down.poll(cx).map(from_origin)
                    };
                    if end.is_ready() {
                        return end;
                    }
                }
                // Read on every pass: it says whether this pass moved bytes.
                let moved = self.activity.moved_before(idle_at);
                if armed && moved {
                    return Poll::Pending;
                }
                while poll_registering(idle.as_mut(), cx).is_ready() {
                    idle_at = self.activity.last() + idle_limit;
                    if Instant::now() >= idle_at {
                        return Poll::Ready(End::Idle);
                    }
                    idle.as_mut().reset(idle_at);
                }
                armed = true;
                Poll::Pending
            })
            .await
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
            let written = refuse_stream(client, down_dir, &denial).await;
            self.count(
                &self.session.upstream_to_client,
                &self.ctx.guard.metrics.bytes_upstream_to_client,
                written,
            );
            // A refusal was counted and logged when it was made; a kick is
            // only once the session ends, which must not wait for this.
            if matches!(end, End::ClientRefused) {
                // Boxed: a session keeps room for it only once refused.
                Box::pin(linger(client)).await;
            }
        }
        end
    }

    /// Reports a refusal of the client; true to enforce it.
    fn enforce(&self, refusal: &Refusal) -> bool {
        let stream = refusal.status.as_ref().map(|d| d.stream.as_str());
        let block = Block::new(Stage::Session, refusal.reason, &refusal.detail)
            .with_app(&self.app.name)
            .with_stream(stream);
        self.ctx.refuse(&block)
    }

    /// Asks the app's auth service about a held publish or play.
    async fn ask(&self, query: &AuthQuery) -> Answer {
        let Some((callbacks, auth)) = self.http else {
            return Answer::Deny;
        };
        match callbacks.ask(auth, &query.form).await {
            Ok(Reply::Allow) => Answer::Allow,
            Ok(Reply::Deny) => Answer::Deny,
            Ok(Reply::Redirect(location)) => Answer::Rename(location),
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

/// Polls a timer outside the task's budget: Pending then always means the
/// timer holds the waker, which an exhausted budget would not give it.
fn poll_registering(timer: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<()> {
    pin!(tokio::task::unconstrained(timer)).poll(cx)
}

/// What a refused client may still send, and for how long, before the
/// guard closes on it.
const LINGER_BYTES: u64 = 64 * 1024;
const LINGER: Duration = Duration::from_millis(500);

/// After a refusal's reply: ends the guard's side of the connection, then
/// reads and drops what the client still sends, until it closes or the
/// bound. A client refused in the middle of its writes (ffmpeg writes
/// releaseStream, FCPublish and createStream back to back, and reads only
/// then) would otherwise write into a closed socket, be reset, and fail
/// on "Broken pipe" without ever reading why.
async fn linger<C: AsyncRead + AsyncWrite + Unpin>(client: &mut C) {
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, client.shutdown()).await;
    let mut rest = (&mut *client).take(LINGER_BYTES);
    let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut rest, &mut tokio::io::sink())).await;
}

/// Sends a refused publish or play its `onStatus` error, in the guard's
/// framing of the client's leg. A failed key or token waits 0.5-1 s first,
/// so guessing is slow. Returns the bytes written.
async fn refuse_stream<C: AsyncWrite + Unpin>(
    client: &mut C,
    to_client: &mut Direction,
    denial: &Denial,
) -> usize {
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
    match buffers::write_all(client, &out, REFUSAL_WRITE_TIMEOUT).await {
        Ok(()) => out.len(),
        Err(_) => 0,
    }
}
