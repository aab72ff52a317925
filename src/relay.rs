//! The relay stage: both directions copied, and both read as RTMP.
//!
//! Each direction reads into its own bounded buffer, runs every byte through
//! that direction's [`ChunkParser`], has every message judged, and only then
//! writes the buffer on. The client's messages are judged by its
//! [`SessionRules`]; the origin's must be readable. The parser follows
//! message boundaries without copying audio or video, so judging costs a
//! few header reads per chunk. A message the guard cannot read ends the
//! session: the origin must never act on a message the guard read
//! differently.
//!
//! The session ends when either side closes, a peer breaks the rules, the
//! operator kicks it, or nothing moves in either direction for
//! `idle_timeout`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use crate::callback::Callbacks;
use crate::config::{App, HttpAuth, OnError};
use crate::connect::{Connect, Route};
use crate::connection::Connection;
use crate::context::{Ctx, Stop};
use crate::control::sessions::{self, Kick, Session};
use crate::metrics::upstream_kind;
use crate::policy::session::{check_origin_message, Answer, Now, SessionRules};
use crate::policy::{AuthQuery, StreamPolicy};
use crate::report::{self, Closed};
use crate::rtmp::chunk::ChunkParser;
use crate::rtmp::reply;
use crate::upstream::Origin;
use crate::verdict::{Block, Denial, Reason, Refusal, Stage, Verdict};

/// Read buffer per direction. Pages are touched only as data arrives, so an
/// idle session costs little of it.
pub const BUFFER_SIZE: usize = 64 * 1024;

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
    let policy = StreamPolicy::new(
        app,
        guard.streams.clone(),
        ctx.client.ip(),
        &connect.request,
    );
    let mut rules = SessionRules::new(&limits.session, limits.max_amf_depth, policy);
    // The origin is sent the client's stream from its start: the bytes up
    // to the `connect` (already judged), then what followed.
    let inspected = connect.head.len();
    let mut pending = connect.head;
    pending.extend_from_slice(client.buffered());
    let from_client = Direction {
        parser: connect.parser,
        pending,
        inspected,
    };
    let from_origin = Direction {
        parser: ChunkParser::new(limits.chunk_limits()),
        pending: origin.leftover,
        inspected: 0,
    };
    let started = Instant::now();
    let mut origin = origin.stream;
    let relay = Relay {
        ctx,
        app,
        session: &registration.session,
        http: app.http_auth().map(|h| (&guard.callbacks, h)),
        activity: Activity::new(),
    };
    let end = relay
        .pump_both(
            &mut client.stream,
            &mut origin,
            from_client,
            from_origin,
            &mut rules,
            &registration.kicks,
        )
        .await;
    active.dec();
    let (up, down) = registration.session.bytes();
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

/// One direction's state.
struct Direction {
    parser: ChunkParser,
    /// Bytes read but not yet forwarded; the first `inspected` of them
    /// are already judged.
    pending: Vec<u8>,
    inspected: usize,
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
    /// The upstream sent something the guard cannot read.
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
    Refused(Refusal),
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

/// Who judges a direction's messages.
enum Judge<'r> {
    /// The client's rules.
    Client(&'r mut SessionRules),
    /// The origin's messages need only be readable.
    Origin { max_amf_depth: usize },
}

/// Where a direction's bytes go, and how they are counted.
struct Flow<'a> {
    /// This session's count, shown to the operator.
    moved: &'a AtomicU64,
    /// The guard's total.
    counter: &'a IntCounter,
    /// Set while a write to the peer is in progress.
    writing: &'a AtomicBool,
}

/// One session's relay: what both directions share.
struct Relay<'a> {
    ctx: &'a Ctx,
    app: &'a App,
    session: &'a Session,
    /// The app's HTTP auth service, for `http` mode.
    http: Option<(&'a Callbacks, &'a HttpAuth)>,
    activity: Activity,
}

impl Relay<'_> {
    /// Runs both directions until one ends, the session idles or is
    /// kicked; then tells a refused or kicked client why, if it can.
    #[allow(clippy::too_many_arguments)]
    async fn pump_both(
        &self,
        client: &mut TcpStream,
        origin: &mut TcpStream,
        mut from_client: Direction,
        mut from_origin: Direction,
        rules: &mut SessionRules,
        kicks: &tokio::sync::watch::Receiver<Option<Kick>>,
    ) -> End {
        let metrics = &self.ctx.guard.metrics;
        let to_client_writing = AtomicBool::new(false);
        let to_origin_writing = AtomicBool::new(false);
        let (client_read, client_write) = client.split();
        let (origin_read, origin_write) = origin.split();
        let up = Flow {
            moved: &self.session.client_to_upstream,
            counter: &metrics.bytes_client_to_upstream,
            writing: &to_origin_writing,
        };
        let down = Flow {
            moved: &self.session.upstream_to_client,
            counter: &metrics.bytes_upstream_to_client,
            writing: &to_client_writing,
        };
        let max_amf_depth = self.ctx.config.limits.max_amf_depth;
        let mut refusal = None;
        let end = tokio::select! {
            end = self.pump(client_read, origin_write, &mut from_client, Judge::Client(&mut *rules), &up) => match end {
                PumpEnd::Eof => End::ClientClosed,
                PumpEnd::Read => End::ClientError,
                PumpEnd::Write => End::UpstreamError,
                PumpEnd::Refused(r) => {
                    refusal = r.status;
                    End::ClientRefused
                }
            },
            end = self.pump(origin_read, client_write, &mut from_origin, Judge::Origin { max_amf_depth }, &down) => match end {
                PumpEnd::Eof => End::UpstreamClosed,
                PumpEnd::Read => End::UpstreamError,
                PumpEnd::Write => End::ClientError,
                PumpEnd::Refused(r) => End::UpstreamViolation(r.detail),
            },
            _ = self.activity.idle(self.ctx.config.server.idle_timeout) => End::Idle,
            kick = sessions::kicked(kicks.clone()) => End::Kicked(kick),
        };
        if let End::Kicked(kick) = &end {
            refusal = Some(rules.ended_by_operator(kick.reason, &kick.description));
        }
        // A reply may go to the client only between the origin's messages:
        // not if the origin's last write to the client was cut off mid-way.
        let client_clean = !to_client_writing.load(Ordering::Relaxed);
        if let Some(denial) = refusal.filter(|_| client_clean) {
            refuse_stream(client, &from_origin.parser, &denial).await;
        }
        end
    }

    /// Copies one direction, judging everything it forwards.
    async fn pump<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        dir: &mut Direction,
        mut judge: Judge<'_>,
        flow: &Flow<'_>,
    ) -> PumpEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = std::mem::take(&mut dir.pending);
        let judged = std::mem::take(&mut dir.inspected).min(buf.len());
        // What was judged before the relay (the client's `connect`) goes
        // first, whatever the client sent after it.
        if judged > 0 {
            let rest = buf.split_off(judged);
            if self.forward(&mut writer, &buf, flow).await.is_err() {
                return PumpEnd::Write;
            }
            buf = rest;
        }
        let mut pos = 0;
        buf.reserve(BUFFER_SIZE.saturating_sub(buf.len()));
        loop {
            if buf.is_empty() {
                match reader.read_buf(&mut buf).await {
                    Ok(0) => return PumpEnd::Eof,
                    Ok(_) => self.activity.touch(),
                    Err(_) => return PumpEnd::Read,
                }
            }
            // Judge the whole read; a publish or play waiting for the auth
            // service holds it and everything after it until the answer.
            loop {
                let query = match self.judge_all(dir, &buf, &mut pos, &mut judge) {
                    Ok(Some(query)) => query,
                    Ok(None) => break,
                    Err(refusal) => return PumpEnd::Refused(refusal),
                };
                if let Judge::Client(rules) = &mut judge {
                    let answer = self.ask(&query).await;
                    let verdict = rules.answer(&query, answer);
                    if let Err(refusal) = self.apply(verdict, rules) {
                        return PumpEnd::Refused(refusal);
                    }
                }
            }
            if let Judge::Client(rules) = &mut judge {
                if let Err(refusal) = rules.on_bytes(buf.len() as u64, self.activity.now()) {
                    if self.enforce(&refusal) {
                        return PumpEnd::Refused(refusal);
                    }
                }
            }
            if self.forward(&mut writer, &buf, flow).await.is_err() {
                return PumpEnd::Write;
            }
            buf.clear();
            pos = 0;
        }
    }

    /// Writes judged bytes on, and counts them.
    async fn forward<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        bytes: &[u8],
        flow: &Flow<'_>,
    ) -> std::io::Result<()> {
        flow.writing.store(true, Ordering::Relaxed);
        writer.write_all(bytes).await?;
        flow.writing.store(false, Ordering::Relaxed);
        let n = bytes.len() as u64;
        flow.moved.fetch_add(n, Ordering::Relaxed);
        flow.counter.inc_by(n);
        self.activity.touch();
        Ok(())
    }

    /// Parses `buf` from `*pos` to its end, judging every kept message.
    /// Stops early, after the message, at a publish or play the HTTP auth
    /// service must decide on.
    fn judge_all(
        &self,
        dir: &mut Direction,
        buf: &[u8],
        pos: &mut usize,
        judge: &mut Judge<'_>,
    ) -> Result<Option<AuthQuery>, Refusal> {
        while let Some(input) = buf.get(*pos..).filter(|rest| !rest.is_empty()) {
            let progress = match dir.parser.advance(input) {
                Ok(progress) => progress,
                Err(e) => {
                    let refusal = Refusal::violation(e.to_string());
                    if let Judge::Client(_) = judge {
                        self.enforce(&refusal);
                    }
                    return Err(refusal);
                }
            };
            *pos += progress.consumed;
            let Some(message) = progress.message else {
                continue;
            };
            match judge {
                Judge::Origin { max_amf_depth } => check_origin_message(&message, *max_amf_depth)?,
                Judge::Client(rules) => match rules.on_message(&message, self.activity.now()) {
                    Verdict::Ask(query) => return Ok(Some(query)),
                    verdict => self.apply(verdict, rules)?,
                },
            }
        }
        Ok(None)
    }

    /// Carries out a verdict on the client: shows an opened stream to the
    /// operator, and reports a refusal, which dry run may let through.
    fn apply(&self, verdict: Verdict<AuthQuery>, rules: &SessionRules) -> Result<(), Refusal> {
        match verdict {
            Verdict::Pass | Verdict::Ask(_) => Ok(()),
            Verdict::Opened => {
                self.session.set_streams(rules.streams());
                Ok(())
            }
            Verdict::Refuse(refusal) if self.enforce(&refusal) => Err(refusal),
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
