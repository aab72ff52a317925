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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use crate::rtmp::chunk::{types, ChunkParser, Message};
use crate::rtmp::command;

/// Read buffer per direction. Pages are touched only as data arrives, so an
/// idle session costs little of it.
pub const BUFFER_SIZE: usize = 64 * 1024;

/// One direction's state, handed over from the connect stage.
pub struct Direction {
    pub parser: ChunkParser,
    /// Bytes already read but not yet parsed or forwarded.
    pub pending: Vec<u8>,
}

/// Why the relay ended.
#[derive(Debug)]
pub enum End {
    ClientClosed,
    UpstreamClosed,
    Idle,
    ClientError(std::io::Error),
    UpstreamError(std::io::Error),
    /// The client sent something the guard cannot read.
    ClientViolation(String),
    /// The upstream sent something the guard cannot read.
    UpstreamViolation(String),
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::UpstreamClosed => "upstream_closed",
            End::Idle => "idle_timeout",
            End::ClientError(_) => "client_error",
            End::UpstreamError(_) => "upstream_error",
            End::ClientViolation(_) => "client_protocol_violation",
            End::UpstreamViolation(_) => "upstream_protocol_violation",
        }
    }
}

/// Byte totals of a finished relay.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
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
    Violation(String),
}

/// Settings for a relay.
pub struct Settings<'a> {
    pub idle_timeout: Duration,
    pub max_amf_depth: usize,
    pub bytes_client_to_upstream: &'a IntCounter,
    pub bytes_upstream_to_client: &'a IntCounter,
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
    let c2u = AtomicU64::new(0);
    let u2c = AtomicU64::new(0);
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let depth = settings.max_amf_depth;
    let end = tokio::select! {
        end = pump(client_read, upstream_write, &mut from_client, depth, &activity, &c2u, settings.bytes_client_to_upstream) => match end {
            PumpEnd::Eof => End::ClientClosed,
            PumpEnd::Read(e) => End::ClientError(e),
            PumpEnd::Write(e) => End::UpstreamError(e),
            PumpEnd::Violation(why) => End::ClientViolation(why),
        },
        end = pump(upstream_read, client_write, &mut from_upstream, depth, &activity, &u2c, settings.bytes_upstream_to_client) => match end {
            PumpEnd::Eof => End::UpstreamClosed,
            PumpEnd::Read(e) => End::UpstreamError(e),
            PumpEnd::Write(e) => End::ClientError(e),
            PumpEnd::Violation(why) => End::UpstreamViolation(why),
        },
        _ = idle(&activity, settings.idle_timeout) => End::Idle,
    };
    let totals = Totals {
        client_to_upstream: c2u.load(Ordering::Relaxed),
        upstream_to_client: u2c.load(Ordering::Relaxed),
    };
    (end, totals)
}

/// Copies one direction, parsing and inspecting everything it forwards.
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    dir: &mut Direction,
    max_amf_depth: usize,
    activity: &Activity,
    moved: &AtomicU64,
    counter: &IntCounter,
) -> PumpEnd
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
                Ok(_) => activity.touch(),
                Err(e) => return PumpEnd::Read(e),
            }
        }
        if let Err(why) = inspect_all(&mut dir.parser, &buf, max_amf_depth) {
            return PumpEnd::Violation(why);
        }
        if let Err(e) = writer.write_all(&buf).await {
            return PumpEnd::Write(e);
        }
        let n = buf.len() as u64;
        moved.fetch_add(n, Ordering::Relaxed);
        counter.inc_by(n);
        activity.touch();
        buf.clear();
    }
}

/// Parses `buf` to its end, checking every kept message.
fn inspect_all(parser: &mut ChunkParser, buf: &[u8], max_amf_depth: usize) -> Result<(), String> {
    let mut pos = 0;
    while pos < buf.len() {
        let progress = parser
            .advance(buf.get(pos..).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        pos += progress.consumed;
        if let Some(message) = progress.message {
            inspect(&message, max_amf_depth)?;
        }
    }
    Ok(())
}

/// Checks one message the relay is about to forward: commands and data must
/// be well-formed AMF0 within the depth limit.
pub fn inspect(message: &Message<'_>, max_amf_depth: usize) -> Result<(), String> {
    let t = message.header.type_id;
    match t {
        types::COMMAND_AMF0 | types::COMMAND_AMF3 => {
            command::decode(t, message.payload, max_amf_depth)
                .map(|_| ())
                .map_err(|e| format!("unreadable command: {e}"))
        }
        types::DATA_AMF0 | types::DATA_AMF3 => {
            command::check_data(t, message.payload, max_amf_depth)
                .map_err(|e| format!("unreadable data message: {e}"))
        }
        _ => Ok(()),
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
