//! The generator's RTMP clients, on tokio: the publisher (straight to
//! nginx, stamped video messages at a fixed rate) and the viewers (through
//! the path under test, in TLS for `guard-tls`, parsed with the crate's
//! chunk parser).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtmp_guard::rtmp::amf0::{self, Amf0Value};
use rtmp_guard::rtmp::chunk::writer::ChunkWriter;
use rtmp_guard::rtmp::chunk::{types, ChunkParser, MediaPiece, Message, MessageHeader};
use rtmp_guard::rtmp::command;
use rtmp_guard::rtmp::control::Control;
use rtmp_guard::rtmp::handshake::ClientHandshake;
use rustls::ClientConnection;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::common;
use crate::common::client::{command_bytes, command_on, connect_values};
use crate::path::{now_ns, PathState, Phase};
use crate::{APP, STREAM};

/// Chunk size the publisher announces (nginx sends players 4096 too).
const PUBLISH_CHUNK_SIZE: u32 = 4096;
const VIDEO_CSID: u32 = 6;
/// Payload bytes: frame type/codec, AVC packet type, composition time.
const AVC_HEADER: usize = 5;
/// Where the send stamp ends, and where the sequence number ends: the
/// smallest payload.
const STAMP_END: usize = AVC_HEADER + 8;
pub const SEQ_END: usize = STAMP_END + 8;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// No byte for this long while the stream runs fails the viewer.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After the publisher stops, a viewer is drained once it is quiet this long.
const QUIET: Duration = Duration::from_secs(1);
/// How long a drained viewer waits to be closed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP connection to `addr`, Nagle off.
async fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| Failure::Connect("timed out".into()))?
        .map_err(|e| Failure::Connect(e.to_string()))?;
    stream.set_nodelay(true).ok();
    Ok(stream)
}

/// RTMP handshake on `stream` (plain, or TLS already established), then
/// `after` (with C2). Returns the stream and any bytes that followed
/// S0S1S2.
async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    after: &[u8],
) -> Result<(S, Vec<u8>), Failure> {
    let (mut hs, c0c1) = ClientHandshake::start().map_err(|e| Failure::Handshake(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut buf = vec![0u8; 4096];
    let write = |e: std::io::Error| Failure::Handshake(e.to_string());
    stream.write_all(&c0c1).await.map_err(write)?;
    stream.flush().await.map_err(write)?;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .map_err(|_| Failure::Handshake("timed out".into()))?
            .map_err(|e| Failure::Handshake(e.to_string()))?;
        if n == 0 {
            return Err(Failure::Handshake("closed by the server".into()));
        }
        let step = hs
            .feed(&buf[..n])
            .map_err(|e| Failure::Handshake(e.to_string()))?;
        if step.done {
            let mut out = step.response;
            out.extend_from_slice(after);
            stream.write_all(&out).await.map_err(write)?;
            stream.flush().await.map_err(write)?;
            return Ok((stream, buf[step.consumed..n].to_vec()));
        }
    }
}

/// A refusal in a command the server sent: `_error`, or an `onStatus`
/// of level `error`.
fn refusal(message: &Message<'_>) -> Option<String> {
    if !matches!(
        message.header.type_id,
        types::COMMAND_AMF0 | types::COMMAND_AMF3
    ) {
        return None;
    }
    let cmd = command::decode(message.header.type_id, message.payload, 64).ok()?;
    let info = cmd.arguments.first();
    let code = info.and_then(|i| i.get("code")).and_then(|c| c.as_str());
    let level = info.and_then(|i| i.get("level")).and_then(|c| c.as_str());
    (cmd.name == "_error" || level == Some("error"))
        .then(|| format!("{} {}", cmd.name, code.unwrap_or("(no code)")))
}

/// The `code` of an `onStatus`, if `message` is one.
fn status_code(message: &Message<'_>) -> Option<String> {
    let cmd = command::decode(message.header.type_id, message.payload, 64).ok()?;
    common::client::status_code(&cmd)
}

// ---------------------------------------------------------------------------
// The publisher.

/// Publishes `live/bench` to nginx: `rate` video messages a second, each
/// `payload` bytes, stamped; until `stop`. Returns the messages sent.
pub async fn publish(
    origin: SocketAddr,
    payload: usize,
    rate: u32,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, String> {
    let mut writer = ChunkWriter::new();
    let mut hello = Vec::new();
    write_command(&mut writer, &mut hello, 0, &connect_values(APP));
    let create = [
        Amf0Value::String("createStream".into()),
        Amf0Value::Number(2.0),
        Amf0Value::Null,
    ];
    write_command(&mut writer, &mut hello, 0, &create);
    let publish = [
        Amf0Value::String("publish".into()),
        Amf0Value::Number(3.0),
        Amf0Value::Null,
        Amf0Value::String(STREAM.into()),
        Amf0Value::String(APP.into()),
    ];
    write_command(&mut writer, &mut hello, 1, &publish);
    let tcp = connect(origin)
        .await
        .map_err(|f| format!("publisher: {f}"))?;
    let (mut stream, rest) = open(tcp, &hello)
        .await
        .map_err(|f| format!("publisher: {f}"))?;
    wait_publish_start(&mut stream, rest).await?;
    let (mut read, mut write) = stream.into_split();
    // Whatever nginx sends from now on (acknowledgements, pings) is read
    // and dropped, so its socket never fills.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let sent = send_frames(&mut write, &mut writer, payload, rate, &mut stop).await;
    reader.abort();
    sent
}

/// SetChunkSize, then stamped video messages at `rate` until `stop`.
async fn send_frames(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    writer: &mut ChunkWriter,
    payload: usize,
    rate: u32,
    stop: &mut watch::Receiver<bool>,
) -> Result<u64, String> {
    let mut out = Vec::new();
    let (type_id, word) = Control::SetChunkSize(PUBLISH_CHUNK_SIZE).encode();
    let header = MessageHeader::for_payload(2, type_id, 0, &word);
    writer.write(&mut out, &header, &word);
    write.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut body = vec![0u8; payload];
    body[..AVC_HEADER].copy_from_slice(&[0x17, 0x01, 0, 0, 0]);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(seq),
        }
        body[AVC_HEADER..STAMP_END].copy_from_slice(&now_ns().to_be_bytes());
        body[STAMP_END..SEQ_END].copy_from_slice(&seq.to_be_bytes());
        let header = MessageHeader {
            timestamp: start.elapsed().as_millis() as u32,
            ..MessageHeader::for_payload(VIDEO_CSID, types::VIDEO, 1, &body)
        };
        out.clear();
        writer.write(&mut out, &header, &body);
        tokio::time::timeout(STALL_TIMEOUT, write.write_all(&out))
            .await
            .map_err(|_| "publisher: nginx took no byte for 10 s".to_string())?
            .map_err(|e| format!("publisher write: {e}"))?;
        seq += 1;
    }
}

fn write_command(
    writer: &mut ChunkWriter,
    out: &mut Vec<u8>,
    stream_id: u32,
    values: &[Amf0Value],
) {
    let payload = amf0::encode(values).expect("publisher commands encode");
    let header = MessageHeader::for_payload(3, types::COMMAND_AMF0, stream_id, &payload);
    writer.write(out, &header, &payload);
}

/// Reads nginx's replies until `NetStream.Publish.Start`.
async fn wait_publish_start(stream: &mut TcpStream, mut input: Vec<u8>) -> Result<(), String> {
    let mut parser = ChunkParser::new(common::config::chunk_limits());
    let deadline = tokio::time::Instant::now() + STALL_TIMEOUT;
    let mut buf = vec![0u8; 4096];
    loop {
        let mut pos = 0;
        while pos < input.len() {
            let p = parser.advance(&input[pos..]).map_err(|e| e.to_string())?;
            pos += p.consumed;
            if let Some(m) = &p.message {
                if let Some(why) = refusal(m) {
                    return Err(format!("publisher refused: {why}"));
                }
                if status_code(m).as_deref() == Some("NetStream.Publish.Start") {
                    return Ok(());
                }
            }
            if p.consumed == 0 {
                break;
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .map_err(|_| "publisher: no NetStream.Publish.Start within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("publisher: nginx closed before Publish.Start".into());
        }
        input = buf[..n].to_vec();
    }
}

// ---------------------------------------------------------------------------
// The viewers.

/// Why a viewer failed.
#[derive(Debug)]
pub enum Failure {
    Connect(String),
    Handshake(String),
    Tls(String),
    Refused(String),
    Protocol(String),
    Read(String),
    Closed,
    NoVideo,
    Stalled,
    Panicked(String),
}

impl Failure {
    fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect failed",
            Failure::Handshake(_) => "handshake failed",
            Failure::Tls(_) => "TLS failed",
            Failure::Refused(_) => "refused",
            Failure::Protocol(_) => "unparsable stream",
            Failure::Read(_) => "read error",
            Failure::Closed => "closed by the server",
            Failure::NoVideo => "no video within 10 s",
            Failure::Stalled => "stalled 10 s",
            Failure::Panicked(_) => "task panicked",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(d)
            | Failure::Handshake(d)
            | Failure::Tls(d)
            | Failure::Refused(d)
            | Failure::Protocol(d)
            | Failure::Read(d)
            | Failure::Panicked(d) => write!(f, "{}: {d}", self.kind()),
            _ => f.write_str(self.kind()),
        }
    }
}

/// Failures by kind, with one example each.
#[derive(Default)]
pub struct Failures {
    pub total: usize,
    pub by_kind: BTreeMap<&'static str, (usize, String)>,
}

impl Failures {
    pub fn add(&mut self, f: &Failure) {
        self.total += 1;
        let e = self
            .by_kind
            .entry(f.kind())
            .or_insert_with(|| (0, f.to_string()));
        e.0 += 1;
    }
}

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .by_kind
            .values()
            .map(|(n, example)| format!("{n} × {example}"))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// What a viewer that played to the end saw.
#[derive(Debug, Default)]
pub struct ViewerEnd {
    pub bytes: u64,
    /// The length of the first message, if it was a SetChunkSize: the guard
    /// writes its own before relaying.
    pub leading_chunk_size: u64,
    pub gaps: u64,
    pub reordered: u64,
}

/// One viewer's parse state and tally.
struct Viewer {
    parser: ChunkParser,
    tally: Tally,
}

struct Tally {
    state: Arc<PathState>,
    end: ViewerEnd,
    messages: u64,
    videos: u64,
    next_seq: Option<u64>,
    /// The first bytes of the video message in progress, per csid.
    heads: Vec<(u32, [u8; SEQ_END], usize)>,
}

thread_local! {
    /// One read buffer per runtime thread: a viewer holds none between reads.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Where the viewers of a path connect.
pub struct Target {
    pub addr: SocketAddr,
    /// RTMPS: the client config (trusting the bench's own certificate) and
    /// the name that certificate was issued for.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// A viewer's connection: plain RTMP, or RTMP inside TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    /// Connect, TLS handshake if RTMPS, RTMP handshake, then `after`.
    async fn open(target: &Target, after: &[u8]) -> Result<(Conn, Vec<u8>), Failure> {
        let tcp = connect(target.addr).await?;
        match &target.tls {
            None => {
                let (s, rest) = open(tcp, after).await?;
                Ok((Conn::Plain(s), rest))
            }
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| Failure::Tls("handshake timed out".into()))?
                        .map_err(|e| Failure::Tls(format!("handshake: {e}")))?;
                let (s, rest) = open(tls, after).await?;
                Ok((Conn::Tls(Box::new(s)), rest))
            }
        }
    }

    /// A TLS client's close_notify, as far as the socket takes it now.
    fn close(&mut self) {
        if let Conn::Tls(s) = self {
            let (tcp, tls) = s.get_mut();
            tls.send_close_notify();
            let _ = tls.write_tls(&mut TryWrite(tcp));
        }
    }
}

/// A tokio socket as a non-blocking `std::io::Write`, for rustls.
struct TryWrite<'a>(&'a TcpStream);

impl std::io::Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// play `live/bench` through `target` until told to close.
pub async fn view(
    target: Arc<Target>,
    state: Arc<PathState>,
    mut phase: watch::Receiver<Phase>,
) -> Result<ViewerEnd, Failure> {
    let result = view_inner(&target, &state, &mut phase).await;
    if result.is_err() {
        state.failed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn view_inner(
    target: &Target,
    state: &Arc<PathState>,
    phase: &mut watch::Receiver<Phase>,
) -> Result<ViewerEnd, Failure> {
    let (mut conn, rest) = Conn::open(target, &play_request()).await?;
    let mut v = Viewer {
        parser: ChunkParser::new(common::config::chunk_limits()),
        tally: Tally {
            state: state.clone(),
            end: ViewerEnd::default(),
            messages: 0,
            videos: 0,
            next_seq: None,
            heads: Vec::new(),
        },
    };
    v.feed(&rest)?;
    if let Conn::Tls(s) = &mut conn {
        // Decrypted during the handshake, beyond what it read.
        v.take_plaintext(s.get_mut().1)?;
    }
    let mut drained = false;
    loop {
        let now = *phase.borrow_and_update();
        let wait = match now {
            Phase::Run => STALL_TIMEOUT,
            Phase::Drain if !drained => QUIET,
            Phase::Drain => CLOSE_TIMEOUT,
            Phase::Close => break,
        };
        tokio::select! {
            ready = tokio::time::timeout(wait, conn.tcp().readable()) => match ready {
                Err(_) if now == Phase::Run && v.tally.videos == 0 => return Err(Failure::NoVideo),
                Err(_) if now == Phase::Run => return Err(Failure::Stalled),
                // Drained long ago and never told to close: give up.
                Err(_) if drained => break,
                Err(_) => {
                    drained = true;
                    state.drained.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => return Err(Failure::Read(e.to_string())),
                Ok(Ok(())) => {
                    if v.read_some(&mut conn)? == Some(0) {
                        return Err(Failure::Closed);
                    }
                }
            },
            changed = phase.changed() => if changed.is_err() { break },
        }
    }
    conn.close();
    Ok(v.tally.end)
}

/// connect, createStream and play, pipelined as players send them.
fn play_request() -> Vec<u8> {
    let mut out = command_bytes(&connect_values(APP));
    out.extend(command_bytes(&[
        Amf0Value::String("createStream".into()),
        Amf0Value::Number(2.0),
        Amf0Value::Null,
    ]));
    out.extend(command_on(
        1,
        &[
            Amf0Value::String("play".into()),
            Amf0Value::Number(3.0),
            Amf0Value::Null,
            Amf0Value::String(STREAM.into()),
            Amf0Value::Number(-2000.0),
        ],
    ));
    out
}

impl Viewer {
    /// One non-blocking read into the thread's scratch buffer, parsed at
    /// once (decrypted first over TLS). The socket bytes read; None if it
    /// had nothing after all.
    fn read_some(&mut self, conn: &mut Conn) -> Result<Option<usize>, Failure> {
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let n = match conn.tcp().try_read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(Failure::Read(e.to_string())),
            };
            match conn {
                Conn::Plain(_) => self.feed(&buf[..n])?,
                Conn::Tls(s) => {
                    let (tcp, tls) = s.get_mut();
                    self.decrypt(tcp, tls, &buf[..n])?;
                }
            }
            Ok(Some(n))
        })
    }

    /// Hands `wire` to rustls a record buffer at a time, parsing the
    /// plaintext as it comes. What rustls keeps between reads is its own:
    /// a partial record, and a 4 KiB read buffer it shrinks back to.
    fn decrypt(
        &mut self,
        tcp: &TcpStream,
        tls: &mut ClientConnection,
        mut wire: &[u8],
    ) -> Result<(), Failure> {
        while !wire.is_empty() {
            tls.read_tls(&mut wire)
                .map_err(|e| Failure::Tls(format!("read: {e}")))?;
            tls.process_new_packets()
                .map_err(|e| Failure::Tls(e.to_string()))?;
            self.take_plaintext(tls)?;
        }
        // rustls may have something to say back (a key update).
        while tls.wants_write() {
            match tls.write_tls(&mut TryWrite(tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Failure::Tls(format!("write: {e}"))),
            }
        }
        Ok(())
    }

    /// Parses the plaintext rustls holds, in place; a close_notify is the
    /// server closing.
    fn take_plaintext(&mut self, tls: &mut ClientConnection) -> Result<(), Failure> {
        let mut reader = tls.reader();
        loop {
            let chunk = match reader.fill_buf() {
                Ok([]) => return Err(Failure::Closed),
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(Failure::Tls(format!("read: {e}"))),
            };
            let n = chunk.len();
            self.feed(chunk)?;
            reader.consume(n);
        }
    }

    fn feed(&mut self, input: &[u8]) -> Result<(), Failure> {
        let before = self.tally.end.bytes;
        self.tally.end.bytes += input.len() as u64;
        self.tally
            .state
            .bytes
            .fetch_add(input.len() as u64, Ordering::Relaxed);
        let mut pos = 0;
        while pos < input.len() {
            let p = self
                .parser
                .advance(&input[pos..])
                .map_err(|e| Failure::Protocol(e.to_string()))?;
            pos += p.consumed;
            if let Some(m) = &p.message {
                self.tally.on_message(m, before + pos as u64)?;
            }
            if let Some(piece) = &p.media {
                self.tally.on_piece(piece);
            }
            if p.consumed == 0 {
                break;
            }
        }
        Ok(())
    }
}

impl Tally {
    /// A control or command message ended, `through` bytes into the
    /// stream after the handshake.
    fn on_message(&mut self, m: &Message<'_>, through: u64) -> Result<(), Failure> {
        self.messages += 1;
        if self.messages == 1 && m.header.type_id == types::SET_CHUNK_SIZE {
            self.end.leading_chunk_size = through;
        }
        match refusal(m) {
            Some(why) => Err(Failure::Refused(why)),
            None => Ok(()),
        }
    }

    fn on_piece(&mut self, piece: &MediaPiece<'_>) {
        if piece.header.type_id != types::VIDEO {
            return;
        }
        let csid = piece.header.csid;
        if piece.is_first() {
            self.heads.retain(|h| h.0 != csid);
            self.heads.push((csid, [0; SEQ_END], 0));
        }
        let Some(head) = self.heads.iter_mut().find(|h| h.0 == csid) else {
            return;
        };
        let (_, bytes, have) = head;
        if *have < SEQ_END {
            let take = (SEQ_END - *have).min(piece.bytes.len());
            bytes[*have..*have + take].copy_from_slice(&piece.bytes[..take]);
            *have += take;
            if *have == SEQ_END {
                let stamp =
                    u64::from_be_bytes(bytes[AVC_HEADER..STAMP_END].try_into().unwrap_or_default());
                let seq =
                    u64::from_be_bytes(bytes[STAMP_END..SEQ_END].try_into().unwrap_or_default());
                self.on_video(stamp, seq);
            }
        }
    }

    fn on_video(&mut self, stamp: u64, seq: u64) {
        let now = now_ns();
        self.videos += 1;
        if self.videos == 1 {
            self.state.playing.fetch_add(1, Ordering::Relaxed);
        }
        match self.next_seq {
            Some(next) if seq > next => self.end.gaps += seq - next,
            Some(next) if seq < next => self.end.reordered += 1,
            _ => {}
        }
        self.next_seq = Some(self.next_seq.map_or(seq + 1, |n| n.max(seq + 1)));
        let from = self.state.record_from.load(Ordering::Relaxed);
        let until = self.state.record_until.load(Ordering::Relaxed);
        if stamp >= from && stamp < until {
            self.state.delays.record(now.saturating_sub(stamp) / 1000);
        }
    }
}
