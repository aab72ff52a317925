//! The hostile suite of issue 11: an attacker with no key speaks raw RTMP to
//! the guard in front of an origin and tries to get a publish or a play past
//! it through every parser differential the issue names. It runs twice, in
//! parallel (one test each, about 22 s together): in front of nginx-rtmp and
//! in front of node-media-server 4.4.3.
//!
//! Setup: the origin with apps `live` (exposed, `publish` and `play` by key,
//! ffmpeg publishing `cam` with the right key), `hidden` (never exposed by the
//! guard), `open` (exposed without keys, some names blocked, a publisher of
//! the blocked `film-2` connected to the origin directly) and `q1`..`q3`
//! (play by key, two viewers at most). node-media-server serves any app it
//! is asked for, so it needs no setup. The attacker's bytes are written here,
//! by this file's own AMF0 encoder and chunk writer, exactly as an attacker
//! would write them; what the guard sends back is read by this file's own
//! chunk reader.
//!
//! Every variant is judged from the outside:
//! - the origin never lists a stream the attacker named (or nginx's cut of
//!   that name) nor anything in `hidden`: nginx's `/stat`; node-media-server's
//!   stream list (`/api/v1/streams`, with a JWT) and every `start push` and
//!   `start play` in its log;
//! - the attacker's connections receive no audio, video or aggregate message;
//! - for the viewer quota, a legitimate viewer still gets in;
//! - for media without a publish, the origin's received byte count (nginx's
//!   `/stat`, node-media-server's `/api/v1/stats`) does not jump by the
//!   megabytes the attacker sent.
//!
//! The variants run in parallel; media without a publish runs alone, since
//! it measures the origin's byte count. At the end a table says which
//! variants got through, the guard must still serve ffmpeg, and the test
//! fails if any variant got through. For a "no", the table gives the guard's
//! logged refusal of that connection (matched by `client_port`).
//!
//! Every variant runs against both origins, but 32 of them cannot work on
//! node-media-server even without the guard, and its table marks them
//! "no (n/a)" with the reason: it runs only `connect`, `createStream`,
//! `publish`, `play` and `deleteStream`, spelled exactly (class 1: no
//! spelling tricks, no `play2`); never a data message as a command, nor a
//! shared-object or aggregate message (classes 2, 3, the aggregate variants
//! of 5 and 8); and it ends a session whose app or stream name is not
//! `[A-Za-z0-9_-]` and cuts no name, so class 6 has nothing to exploit (the
//! guard enforces blocked names and keys, node-media-server has neither).
//! What does apply is what node-media-server does like nginx-rtmp or worse:
//! type 17 with any first byte runs as a command; the last of repeated
//! `connect` keys wins (`app: hidden`); Abort is ignored and a new header in
//! the middle of a message keeps the bytes read; fmt 3 chunks carry the
//! extended timestamp of the message's header; a second `connect` is simply
//! obeyed (nginx-rtmp ends the session); `closeStream`, `deleteStream` and
//! `FCUnpublish` do not end a publish; and a player's media is passed on to
//! the stream's other players.
//!
//! - `RTMP_GUARD_SMUGGLE=text` runs only the variants whose class or name
//!   contains `text`; `cargo test --test e2e_smuggle nginx` (or
//!   `node_media`) runs one origin.
//! - `RTMP_GUARD_SMUGGLE_TARGET=origin` is the control run: the same bytes go
//!   to the origin directly, which shows that each gadget works on the real
//!   origin. On nginx-rtmp every variant then gets through except the second
//!   `connect` (nginx-rtmp itself ends such a session) and the viewer quota
//!   (nginx has none). On node-media-server every variant gets through but
//!   the viewer quota (it has none) and the 32 marked n/a, none of which
//!   gets anything through.
//!
//! How nginx-rtmp 1.2.x reads what the guard forwards (arut/nginx-rtmp-module):
//! - ngx_rtmp_receive.c `ngx_rtmp_amf_message_handler`: types 15-20 all run
//!   commands. 15, 16 and 17 skip their first byte whatever it is; 16 and 19
//!   take the name as a typeless string (u16 length, bytes). The name is read
//!   into `func[128]`, cut at 127 bytes and at NUL, and looked up lowercased
//!   (`ngx_hash_strlow`) in a hash built from lowercased names.
//! - `ngx_rtmp_aggregate_message_handler`: every sub-message of a type-22
//!   message goes through `ngx_rtmp_receive_message`, commands and protocol
//!   control (SetChunkSize) included; its msid is 3 bytes.
//! - ngx_rtmp_handler.c `ngx_rtmp_recv`: a fmt 0/1/2 header in the middle of
//!   a message only overwrites the header fields and keeps the bytes read;
//!   fmt 3 chunks carry an extended timestamp whenever the message's first
//!   header did (`publish_time_fix`, on by default); csids from 32
//!   (`max_streams`) end the session.
//! - ngx_rtmp_receive.c `ngx_rtmp_protocol_message_handler`: Abort does
//!   nothing; a SetChunkSize over 10 MiB is ignored, not refused.
//! - ngx_rtmp_amf.c `ngx_rtmp_amf_read`: a value of the wrong type in a slot
//!   is skipped and the slot used up; strings are cut to the buffer (255
//!   bytes for names, NGX_RTMP_MAX_NAME) and then at NUL by `ngx_strlen`;
//!   `ngx_rtmp_amf_read_object` stores every matching key, so the last of
//!   duplicate keys wins; keys match exactly (case-sensitive); an ECMA array
//!   is read wherever an object is expected.
//! - ngx_rtmp_cmd_module.c: `play2` plays `streamName` of the object in its
//!   third slot; `connect` strips `/_definst_` or one trailing '/', then cuts
//!   at '?'; a second `connect` ends the session ("duplicate connection").
//! - ngx_rtmp_live_module.c `ngx_rtmp_live_av`: media from a session that
//!   does not publish is dropped (after being read and counted).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::config::GuardConfig;
use common::procs::{ffmpeg_play, ffmpeg_publish, xml_value, GuardProc, Nginx, Nms, NmsInstall};
use common::{have_tools, wait_for};
use rtmp_guard::rtmp::handshake::ClientHandshake;

/// The key of the legitimate publisher of `live/cam`.
const CAM_KEY: &str = "s3cret";
/// Streams of `live` the attacker holds a key of its own for ("mine"): a
/// paying customer of the exposed app, trying to reach further.
const OWN: [&str; 12] = [
    "own1h", "own4a", "own4b", "own4c", "own4d", "own7c", "own7d", "own7e", "own7f", "own8a",
    "own8b", "own8c",
];
/// Blocked in `open`: published through the guard by nobody.
const FILM_1: &str = "film-1";
/// Blocked in `open`: published to nginx directly, never played through the
/// guard.
const FILM_2: &str = "film-2";
/// How long the parallel variants are watched after they ran.
const WATCH: Duration = Duration::from_millis(3500);
/// Media an attacker pushes without a publish, and how much of it reaching
/// nginx counts as getting through (ffmpeg's own stream is far less).
const BLAST_VIDEO: usize = 8;
const BLAST_THRESHOLD: u64 = 1_000_000;

/// A blocked name of exactly 255 bytes: nginx-rtmp's cut of a longer one.
fn long_name() -> String {
    format!("long-{}", "l".repeat(250))
}

// ---------------------------------------------------------------------------
// AMF0, written by hand.

#[derive(Clone, Debug)]
enum Amf {
    Num(f64),
    Str(Vec<u8>),
    Null,
    Obj(Vec<(Vec<u8>, Amf)>),
    Ecma(Vec<(Vec<u8>, Amf)>),
}

fn s(text: &str) -> Amf {
    Amf::Str(text.as_bytes().to_vec())
}

fn sb(bytes: &[u8]) -> Amf {
    Amf::Str(bytes.to_vec())
}

fn num(v: f64) -> Amf {
    Amf::Num(v)
}

fn pairs(props: &[(&str, Amf)]) -> Vec<(Vec<u8>, Amf)> {
    props
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
        .collect()
}

fn obj(props: &[(&str, Amf)]) -> Amf {
    Amf::Obj(pairs(props))
}

fn ecma(props: &[(&str, Amf)]) -> Amf {
    Amf::Ecma(pairs(props))
}

fn amf(values: &[Amf]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        put(&mut out, v);
    }
    out
}

fn put(out: &mut Vec<u8>, v: &Amf) {
    match v {
        Amf::Num(x) => {
            out.push(0);
            out.extend(x.to_be_bytes());
        }
        Amf::Str(b) => {
            out.push(2);
            out.extend(u16::try_from(b.len()).expect("short string").to_be_bytes());
            out.extend(b);
        }
        Amf::Null => out.push(5),
        Amf::Obj(p) => {
            out.push(3);
            put_props(out, p);
        }
        Amf::Ecma(p) => {
            out.push(8);
            out.extend((p.len() as u32).to_be_bytes());
            put_props(out, p);
        }
    }
}

fn put_props(out: &mut Vec<u8>, props: &[(Vec<u8>, Amf)]) {
    for (k, v) in props {
        out.extend((k.len() as u16).to_be_bytes());
        out.extend(k);
        put(out, v);
    }
    out.extend([0, 0, 9]);
}

/// A shared-object style name: u16 length and bytes, no type marker.
fn typeless(name: &str) -> Vec<u8> {
    let mut out = (name.len() as u16).to_be_bytes().to_vec();
    out.extend(name.as_bytes());
    out
}

// ---------------------------------------------------------------------------
// Chunks, written by hand.

/// The chunk size every RTMP stream starts with.
const CHUNK: usize = 128;

fn be24(v: usize) -> [u8; 3] {
    assert!(v < 1 << 24);
    let b = (v as u32).to_be_bytes();
    [b[1], b[2], b[3]]
}

fn basic(fmt: u8, csid: u32) -> Vec<u8> {
    match csid {
        2..=63 => vec![(fmt << 6) | csid as u8],
        64..=319 => vec![fmt << 6, (csid - 64) as u8],
        _ => {
            let c = csid - 64;
            vec![(fmt << 6) | 1, c as u8, (c >> 8) as u8]
        }
    }
}

/// A full (fmt 0) chunk header; the extended timestamp follows when `ts`
/// does not fit in 24 bits.
fn header0(csid: u32, ts: u32, len: usize, type_id: u8, msid: u32) -> Vec<u8> {
    let ext = ts >= 0xFF_FFFF;
    let mut h = basic(0, csid);
    h.extend(be24(if ext { 0xFF_FFFF } else { ts as usize }));
    h.extend(be24(len));
    h.push(type_id);
    h.extend(msid.to_le_bytes());
    if ext {
        h.extend(ts.to_be_bytes());
    }
    h
}

/// A whole message: a fmt 0 chunk, then fmt 3 chunks of `chunk` bytes, each
/// repeating an extended timestamp as nginx-rtmp expects.
fn message_at(csid: u32, ts: u32, type_id: u8, msid: u32, payload: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = header0(csid, ts, payload.len(), type_id, msid);
    for (i, part) in payload.chunks(chunk).enumerate() {
        if i > 0 {
            out.extend(basic(3, csid));
            if ts >= 0xFF_FFFF {
                out.extend(ts.to_be_bytes());
            }
        }
        out.extend(part);
    }
    out
}

fn message(csid: u32, type_id: u8, msid: u32, payload: &[u8]) -> Vec<u8> {
    message_at(csid, 0, type_id, msid, payload, CHUNK)
}

/// An AMF0 command (type 20) on `msid`.
fn command(msid: u32, values: &[Amf]) -> Vec<u8> {
    message(3, 20, msid, &amf(values))
}

fn set_chunk_size(size: u32) -> Vec<u8> {
    message(2, 1, 0, &size.to_be_bytes())
}

fn abort(csid: u32) -> Vec<u8> {
    message(2, 2, 0, &csid.to_be_bytes())
}

fn connect_object(app: &str) -> Vec<(&'static str, Amf)> {
    vec![
        ("app", s(app)),
        ("type", s("nonprivate")),
        ("flashVer", s("FMLE/3.0 (compatible; FMSc/1.0)")),
        ("tcUrl", s(&format!("rtmp://127.0.0.1/{app}"))),
    ]
}

fn connect_values(app: &str) -> Vec<Amf> {
    vec![s("connect"), num(1.0), obj(&connect_object(app))]
}

fn create_stream() -> Vec<u8> {
    command(0, &[s("createStream"), num(2.0), Amf::Null])
}

/// `[cmd, 0, null, name, "live"]`: a publish, however it is spelled.
fn publish_values(cmd: &[u8], name: &[u8]) -> Vec<Amf> {
    vec![sb(cmd), num(0.0), Amf::Null, sb(name), s("live")]
}

fn play_values(cmd: &[u8], name: &[u8]) -> Vec<Amf> {
    vec![sb(cmd), num(0.0), Amf::Null, sb(name)]
}

fn publish(name: &str) -> Vec<u8> {
    command(1, &publish_values(b"publish", name.as_bytes()))
}

fn play(msid: u32, name: &str) -> Vec<u8> {
    command(msid, &play_values(b"play", name.as_bytes()))
}

/// An aggregate message's payload: FLV-tag shaped sub-messages (type, u24
/// length, u24+u8 timestamp, u24 msid, payload, u32 back pointer).
fn aggregate(subs: &[(u8, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (type_id, msid, payload) in subs {
        out.push(*type_id);
        out.extend(be24(payload.len()));
        out.extend([0, 0, 0, 0]);
        out.extend(&(*msid).to_be_bytes()[1..]);
        out.extend(payload);
        out.extend(((11 + payload.len()) as u32).to_be_bytes());
    }
    out
}

/// A harmless command of exactly `len` bytes, which the guard lets by.
fn filler_command(len: usize) -> Vec<u8> {
    let mut out = amf(&[s("checkBandwidth"), num(0.0), Amf::Null]);
    let pad = len - out.len() - 3;
    out.extend(amf(&[Amf::Str(vec![b'.'; pad])]));
    assert_eq!(out.len(), len);
    out
}

/// The first chunk of a 256-byte command on csid 5 that starts with
/// `inner`. For nginx-rtmp the message is then completed by the next 128
/// bytes on csid 5, whatever the guard made of the chunks in between.
fn first_half(inner: &[u8]) -> Vec<u8> {
    let mut first = inner.to_vec();
    assert!(first.len() <= CHUNK);
    first.resize(CHUNK, 0x05);
    let mut out = header0(5, 0, 2 * CHUNK, 20, 1);
    out.extend(first);
    out
}

/// Abort: half of a command carrying `inner`, Abort of its chunk stream
/// (which nginx-rtmp ignores), then a harmless command on the same csid,
/// restarted with a new header or continued with fmt 3. The guard reads the
/// harmless command; nginx-rtmp completes the first one with its first half.
fn abort_gadget(inner: &[u8], reheader: bool) -> Vec<u8> {
    let mut out = first_half(inner);
    out.extend(abort(5));
    let harmless = filler_command(2 * CHUNK);
    if reheader {
        out.extend(header0(5, 0, 2 * CHUNK, 20, 1));
    } else {
        out.extend(basic(3, 5));
    }
    out.extend(&harmless[..CHUNK]);
    out.extend(basic(3, 5));
    out.extend(&harmless[CHUNK..]);
    out
}

/// A new fmt 1 or fmt 2 header on csid 5 in the middle of the command that
/// carries `inner`: nginx-rtmp keeps the bytes read and completes it.
fn midheader_gadget(inner: &[u8], fmt: u8) -> Vec<u8> {
    let mut out = first_half(inner);
    out.extend(basic(fmt, 5));
    out.extend([0, 0, 0]);
    if fmt == 1 {
        out.extend(be24(2 * CHUNK));
        out.push(20);
    }
    out.extend(&filler_command(2 * CHUNK)[..CHUNK]);
    out
}

/// Extended timestamps on fmt 3 chunks, as nginx-rtmp reads them: on the
/// continuation of a message (`new_message` false) or on a fmt 3 chunk that
/// starts the next one. Then `cmd`, a command on csid 3. A reader that took
/// those 4 bytes for payload would end the message 4 bytes early, read its
/// last 4 bytes as a fmt 0 header on csid 7, and `cmd`'s header as the
/// rest of that header: a 196 KB video message swallowing `cmd`.
fn ext_gadget(new_message: bool, cmd: &[u8]) -> Vec<u8> {
    const TS: u32 = 0x0100_0000;
    let trap = [0x07, 0, 0, 0];
    let mut out = if new_message {
        let mut out = header0(6, TS, 4, 9, 1);
        out.extend([0x12, 0, 0, 0]);
        out
    } else {
        let mut out = header0(6, TS, CHUNK + 4, 9, 1);
        out.extend([0x12; CHUNK]);
        out
    };
    out.extend(basic(3, 6));
    out.extend(TS.to_be_bytes());
    out.extend(trap);
    out.extend(basic(0, 3));
    out.extend([0x00, 0x10, 0x09]);
    out.extend(be24(cmd.len()));
    out.push(20);
    out.extend(1u32.to_le_bytes());
    out.extend(cmd);
    out
}

/// A 200-byte video message on csid 7 whose byte 128 is a fmt 3 header for
/// csid 7, then `cmd` as a command on csid 3. Read at chunk size 4096 the
/// video ends at byte 200 and `cmd` follows. Read at 128 the video takes
/// one byte more, and `cmd`'s header becomes a fmt 0 header on csid 8 of a
/// video message of `len(cmd) * 256 + 20` bytes that swallows `cmd`.
fn chunk_size_gadget(cmd: &[u8]) -> Vec<u8> {
    assert!(cmd.len() < 256);
    let mut video = vec![0u8; 200];
    video[0] = 0x12;
    video[CHUNK] = basic(3, 7)[0];
    let mut out = header0(7, 0, video.len(), 9, 1);
    out.extend(video);
    out.extend(basic(0, 3));
    out.extend([0x08, 0, 0]);
    out.extend(be24(cmd.len()));
    out.push(20);
    out.extend(9u32.to_le_bytes());
    out.extend(cmd);
    out
}

// ---------------------------------------------------------------------------
// The attacker's connection, and an independent reader of what it is sent.

#[derive(Debug, Default)]
struct Seen {
    /// Audio, video and aggregate messages received.
    media: u32,
    /// Status codes (`NetStream.Play.Start`, ...) in commands received.
    statuses: Vec<String>,
    closed: bool,
    error: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct InStream {
    len: usize,
    type_id: u8,
    ext: bool,
    remaining: usize,
    payload: Vec<u8>,
}

/// A chunk stream reader for what the guard sends a client.
struct Reader {
    chunk: usize,
    streams: HashMap<u32, InStream>,
    buf: Vec<u8>,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            chunk: CHUNK,
            streams: Default::default(),
            buf: Vec::new(),
        }
    }

    fn feed(&mut self, bytes: &[u8], seen: &mut Seen) -> Result<(), String> {
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        while let Some(used) = self.chunk_at(pos, seen)? {
            pos += used;
        }
        self.buf.drain(..pos);
        Ok(())
    }

    /// Reads the chunk at `at` if it is all there; returns its length.
    fn chunk_at(&mut self, at: usize, seen: &mut Seen) -> Result<Option<usize>, String> {
        let b = &self.buf[at..];
        let Some(&first) = b.first() else {
            return Ok(None);
        };
        let fmt = first >> 6;
        let (csid, basic_len) = match first & 0x3f {
            0 if b.len() >= 2 => (64 + u32::from(b[1]), 2),
            1 if b.len() >= 3 => (64 + u32::from(b[1]) + 256 * u32::from(b[2]), 3),
            0 | 1 => return Ok(None),
            c => (u32::from(c), 1),
        };
        let header_len = [11, 7, 3, 0][usize::from(fmt)];
        if b.len() < basic_len + header_len {
            return Ok(None);
        }
        let h = &b[basic_len..basic_len + header_len];
        let known = self.streams.get(&csid).cloned();
        if fmt > 0 && known.is_none() {
            return Err(format!("fmt {fmt} chunk on new csid {csid}"));
        }
        let old = known.unwrap_or_default();
        let field = (fmt < 3).then(|| be24_at(&h[0..3]));
        let ext = field.map_or(old.ext, |f| f == 0xFF_FFFF);
        let head = basic_len + header_len + if ext { 4 } else { 0 };
        let len = if fmt <= 1 { be24_at(&h[3..6]) } else { old.len };
        let type_id = if fmt <= 1 { h[6] } else { old.type_id };
        let in_progress = old.remaining > 0;
        let left = if in_progress { old.remaining } else { len };
        let size = left.min(self.chunk);
        if b.len() < head + size {
            return Ok(None);
        }
        let data = b[head..head + size].to_vec();
        let st = self.streams.entry(csid).or_default();
        if fmt < 3 {
            st.ext = ext;
        }
        if !in_progress {
            st.len = len;
            st.type_id = type_id;
            st.remaining = len;
            st.payload.clear();
        }
        let kept = matches!(st.type_id, 1 | 17 | 18 | 20);
        if kept {
            st.payload.extend(&data);
        }
        st.remaining -= size;
        if st.remaining == 0 {
            let (type_id, payload) = (st.type_id, std::mem::take(&mut st.payload));
            self.on_message(type_id, &payload, seen);
        }
        Ok(Some(head + size))
    }

    fn on_message(&mut self, type_id: u8, payload: &[u8], seen: &mut Seen) {
        match type_id {
            1 if payload.len() >= 4 => {
                let size = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                self.chunk = (size & 0x7FFF_FFFF).max(1) as usize;
            }
            8 | 9 | 22 => seen.media += 1,
            17 | 18 | 20 => seen.statuses.extend(status_codes(payload)),
            _ => {}
        }
    }
}

fn be24_at(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// The `NetStream.*` and `NetConnection.*` codes in a payload.
fn status_codes(payload: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in [&b"NetStream."[..], b"NetConnection."] {
        let mut i = 0;
        while let Some(at) = payload[i..].windows(prefix.len()).position(|w| w == prefix) {
            let start = i + at;
            let end = payload[start..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'.'))
                .map_or(payload.len(), |e| start + e);
            out.push(String::from_utf8_lossy(&payload[start..end]).into_owned());
            i = end;
        }
    }
    out
}

/// A raw RTMP connection: a real handshake, then whatever bytes a case
/// writes; a thread reads and counts what comes back.
struct Conn {
    stream: TcpStream,
    /// The local port: the guard logs it as `client_port`.
    port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Conn, String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        stream.set_write_timeout(Some(Duration::from_secs(3))).ok();
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let (mut hs, c0c1) = ClientHandshake::start().map_err(|e| e.to_string())?;
        stream.write_all(&c0c1).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4096];
        let leftover = loop {
            let n = stream
                .read(&mut buf)
                .map_err(|e| format!("handshake: {e}"))?;
            if n == 0 {
                return Err("closed during the handshake".into());
            }
            let step = hs.feed(&buf[..n]).map_err(|e| e.to_string())?;
            if step.done {
                stream
                    .write_all(&step.response)
                    .map_err(|e| e.to_string())?;
                break buf[step.consumed..n].to_vec();
            }
        };
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut input = stream.try_clone().map_err(|e| e.to_string())?;
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let reader = thread::spawn(move || {
            let mut reader = Reader::new();
            let mut buf = vec![0u8; 65536];
            input
                .set_read_timeout(Some(Duration::from_millis(100)))
                .ok();
            let mut feed = |bytes: &[u8]| {
                let mut seen = seen2.lock().unwrap();
                if seen.error.is_none() {
                    if let Err(e) = reader.feed(bytes, &mut seen) {
                        seen.error = Some(e);
                    }
                }
            };
            feed(&leftover);
            while !stop2.load(Ordering::Relaxed) {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => feed(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            seen2.lock().unwrap().closed = true;
        });
        Ok(Conn {
            port: stream.local_addr().map_or(0, |a| a.port()),
            stream,
            seen,
            stop,
            reader: Some(reader),
        })
    }

    /// Sends bytes; errors are ignored (the guard may have closed).
    fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    fn media(&self) -> u32 {
        self.seen.lock().unwrap().media
    }

    fn has(&self, status: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .statuses
            .iter()
            .any(|s| s == status)
    }

    fn wait(&self, status: &str, within: Duration) -> bool {
        wait_for(within, || self.has(status).then_some(())).is_some()
    }

    fn closed(&self) -> bool {
        self.seen.lock().unwrap().closed
    }

    fn statuses(&self) -> Vec<String> {
        self.seen.lock().unwrap().statuses.clone()
    }

    /// Why this file's reader could not follow what the guard sent.
    fn read_error(&self) -> Option<String> {
        self.seen.lock().unwrap().error.clone()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Connects to `app` the ordinary way and creates message stream 1: what
/// any client may do. Fails the variant (inconclusive) if the guard or
/// nginx refuses it.
fn connected(addr: SocketAddr, app: &str) -> Result<Conn, String> {
    let mut c = Conn::open(addr)?;
    c.send(&command(0, &connect_values(app)));
    if !c.wait("NetConnection.Connect.Success", Duration::from_secs(5)) {
        return Err(format!(
            "an ordinary connect to {app:?} did not succeed: {:?}",
            c.statuses()
        ));
    }
    c.send(&create_stream());
    thread::sleep(Duration::from_millis(200));
    Ok(c)
}

// ---------------------------------------------------------------------------
// Variants, and how each is judged.

/// A stream name as `/stat` shows it must not appear in an app.
#[derive(Debug, Clone)]
enum Name {
    Exact(String),
    Prefix(String),
}

impl Name {
    fn matches(&self, name: &str) -> bool {
        match self {
            Name::Exact(n) => name == n,
            Name::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// What one variant left behind to be judged.
#[derive(Default)]
struct Probe {
    attackers: Vec<Conn>,
    /// (app, name) that must never appear in `/stat`.
    forbidden: Vec<(&'static str, Name)>,
    /// A legitimate viewer that must get `NetStream.Play.Start`.
    legit: Option<Conn>,
}

impl Probe {
    fn forbid(&mut self, app: &'static str, name: &str) {
        self.forbidden.push((app, Name::Exact(name.to_string())));
    }
}

type Attack = fn(SocketAddr, &mut Probe) -> Result<(), String>;

struct Case {
    class: &'static str,
    variant: &'static str,
    attack: Attack,
    /// Why the gadget does not work on node-media-server even without the
    /// guard, if it does not.
    not_on_nms: Option<&'static str>,
}

fn case(class: &'static str, variant: &'static str, attack: Attack) -> Case {
    Case {
        class,
        variant,
        attack,
        not_on_nms: None,
    }
}

impl Case {
    fn not_on_nms(self, why: &'static str) -> Case {
        Case {
            not_on_nms: Some(why),
            ..self
        }
    }
}

// Why a variant does not apply to node-media-server 4.4.3 (node-media-server
// src/protocol/rtmp.js, amf.js; src/session/rtmp_session.js). It still runs
// through the guard, which must still refuse it; the control run shows that
// none of these gets anything past node-media-server itself.
const NMS_SPELLED: &str = "n/a for NMS: it runs connect, createStream, publish, play and \
                           deleteStream spelled exactly, nothing else";
const NMS_NO_PLAY2: &str = "n/a for NMS: it has no play2";
const NMS_DATA: &str = "n/a for NMS: it never runs a data message (15, 18) as a command";
const NMS_SHARED: &str = "n/a for NMS: it ignores shared-object messages (16, 19)";
const NMS_AGGREGATE: &str = "n/a for NMS: it ignores aggregate messages (22)";
const NMS_SLASH: &str = "n/a for NMS: the last app, `hidden/`, fails its own name check";
const NMS_NAME_CHARS: &str =
    "n/a for NMS: it ends sessions whose app or stream name is not [A-Za-z0-9_-]";
const NMS_NO_CUT: &str = "n/a for NMS: it does not cut names, so the name is not a blocked one";

/// One line of the table.
#[derive(Debug)]
struct Row {
    class: &'static str,
    variant: &'static str,
    smuggled: bool,
    inconclusive: bool,
    evidence: String,
    /// Why the variant does not apply to this origin, if it does not.
    not_applicable: Option<&'static str>,
}

impl Row {
    fn new(class: &'static str, variant: &'static str) -> Row {
        Row {
            class,
            variant,
            smuggled: false,
            inconclusive: false,
            evidence: String::new(),
            not_applicable: None,
        }
    }
}

/// Connects to `app`, sends `bytes`, and forbids `(app, name)` in `/stat`.
fn publish_attack(
    guard: SocketAddr,
    p: &mut Probe,
    app: &'static str,
    bytes: &[u8],
    name: &str,
) -> Result<(), String> {
    publish_attack_as(guard, p, app, bytes, Name::Exact(name.to_string()))
}

/// As [`publish_attack`], for names `/stat` shows differently.
fn publish_attack_as(
    guard: SocketAddr,
    p: &mut Probe,
    app: &'static str,
    bytes: &[u8],
    name: Name,
) -> Result<(), String> {
    let mut c = connected(guard, app)?;
    c.send(bytes);
    p.forbidden.push((app, name));
    p.attackers.push(c);
    Ok(())
}

/// Connects to `app` and sends `bytes`; the connection must get no media.
fn play_attack(
    guard: SocketAddr,
    p: &mut Probe,
    app: &'static str,
    bytes: &[u8],
) -> Result<(), String> {
    let mut c = connected(guard, app)?;
    c.send(bytes);
    p.attackers.push(c);
    Ok(())
}

/// Connects with a hand-made `connect` (which the guard may refuse), then
/// publishes the attacker's own stream of `live` with its own key; that
/// stream must never show up in `hidden`.
fn escape_attack(
    guard: SocketAddr,
    p: &mut Probe,
    connect: &[u8],
    own: &str,
) -> Result<(), String> {
    let mut c = Conn::open(guard)?;
    c.send(connect);
    c.wait("NetConnection.Connect.Success", Duration::from_secs(3));
    c.send(&create_stream());
    thread::sleep(Duration::from_millis(200));
    c.send(&publish(&format!("{own}?key=mine")));
    p.forbid("hidden", own);
    p.attackers.push(c);
    Ok(())
}

/// The viewer quota of `app` (2): the attacker plays as `attack` does, then
/// a legitimate viewer with its own key must still get in.
fn quota_attack(
    guard: SocketAddr,
    p: &mut Probe,
    app: &'static str,
    attack: fn(&mut Conn),
) -> Result<(), String> {
    let mut c = connected(guard, app)?;
    attack(&mut c);
    thread::sleep(Duration::from_millis(600));
    let mut legit = connected(guard, app)?;
    legit.send(&play(1, "tv?key=viewer"));
    p.attackers.push(c);
    p.legit = Some(legit);
    Ok(())
}

fn cases() -> Vec<Case> {
    vec![
        // 1. Spelling.
        case("1 spelling", "publish spelled `Publish`", |g, p| {
            publish_attack(
                g,
                p,
                "live",
                &command(1, &publish_values(b"Publish", b"s1a")),
                "s1a",
            )
        })
        .not_on_nms(NMS_SPELLED),
        case("1 spelling", "publish spelled `PUBLISH`", |g, p| {
            publish_attack(
                g,
                p,
                "live",
                &command(1, &publish_values(b"PUBLISH", b"s1b")),
                "s1b",
            )
        })
        .not_on_nms(NMS_SPELLED),
        case("1 spelling", "publish spelled `publish\\0`", |g, p| {
            publish_attack(
                g,
                p,
                "live",
                &command(1, &publish_values(b"publish\0", b"s1c")),
                "s1c",
            )
        })
        .not_on_nms(NMS_SPELLED),
        case("1 spelling", "publish spelled `publish\\0x`", |g, p| {
            publish_attack(
                g,
                p,
                "live",
                &command(1, &publish_values(b"publish\0x", b"s1d")),
                "s1d",
            )
        })
        .not_on_nms(NMS_SPELLED),
        case("1 spelling", "play spelled `Play`", |g, p| {
            play_attack(g, p, "live", &command(1, &play_values(b"Play", b"cam")))
        })
        .not_on_nms(NMS_SPELLED),
        case("1 spelling", "play spelled `PLAY`", |g, p| {
            play_attack(g, p, "live", &command(1, &play_values(b"PLAY", b"cam")))
        })
        .not_on_nms(NMS_SPELLED),
        case("1 spelling", "play spelled `play\\0`", |g, p| {
            play_attack(g, p, "live", &command(1, &play_values(b"play\0", b"cam")))
        })
        .not_on_nms(NMS_SPELLED),
        case("1 spelling", "play2 {streamName: cam}", |g, p| {
            let values = [
                s("play2"),
                num(0.0),
                Amf::Null,
                obj(&[("start", num(-2.0)), ("streamName", s("cam"))]),
            ];
            play_attack(g, p, "live", &command(1, &values))
        })
        .not_on_nms(NMS_NO_PLAY2),
        case(
            "1 spelling",
            "play2 with an ECMA array {streamName: cam}",
            |g, p| {
                let values = [
                    s("play2"),
                    num(0.0),
                    Amf::Null,
                    ecma(&[("streamName", s("cam"))]),
                ];
                play_attack(g, p, "live", &command(1, &values))
            },
        )
        .not_on_nms(NMS_NO_PLAY2),
        case(
            "1 spelling",
            "play2, own key's object in the null slot, cam's next",
            |g, p| {
                let values = [
                    s("play2"),
                    num(0.0),
                    obj(&[("streamName", s("own1h?key=mine"))]),
                    obj(&[("streamName", s("cam"))]),
                ];
                play_attack(g, p, "live", &command(1, &values))
            },
        )
        .not_on_nms(NMS_NO_PLAY2),
        // 2. Message type.
        case(
            "2 message type",
            "type 18 [publish, 0, null, s2a]",
            |g, p| {
                let payload = amf(&publish_values(b"publish", b"s2a"));
                publish_attack(g, p, "live", &message(4, 18, 1, &payload), "s2a")
            },
        )
        .not_on_nms(NMS_DATA),
        case("2 message type", "type 18 [play, 0, null, cam]", |g, p| {
            play_attack(
                g,
                p,
                "live",
                &message(4, 18, 1, &amf(&play_values(b"play", b"cam"))),
            )
        })
        .not_on_nms(NMS_DATA),
        case(
            "2 message type",
            "type 15, first byte 0, publish",
            |g, p| {
                let mut payload = vec![0];
                payload.extend(amf(&publish_values(b"publish", b"s2c")));
                publish_attack(g, p, "live", &message(4, 15, 1, &payload), "s2c")
            },
        )
        .not_on_nms(NMS_DATA),
        case(
            "2 message type",
            "type 15, first byte 0x11, publish",
            |g, p| {
                let mut payload = vec![0x11];
                payload.extend(amf(&publish_values(b"publish", b"s2d")));
                publish_attack(g, p, "live", &message(4, 15, 1, &payload), "s2d")
            },
        )
        .not_on_nms(NMS_DATA),
        case(
            "2 message type",
            "type 17, first byte 0x11, publish",
            |g, p| {
                let mut payload = vec![0x11];
                payload.extend(amf(&publish_values(b"publish", b"s2e")));
                publish_attack(g, p, "live", &message(3, 17, 1, &payload), "s2e")
            },
        ),
        case(
            "2 message type",
            "type 16 (shared object, AMF3) publish",
            |g, p| {
                let mut payload = vec![0];
                payload.extend(typeless("publish"));
                payload.extend(amf(&[num(0.0), Amf::Null, s("s2f"), s("live")]));
                publish_attack(g, p, "live", &message(4, 16, 1, &payload), "s2f")
            },
        )
        .not_on_nms(NMS_SHARED),
        case(
            "2 message type",
            "type 19 (shared object) publish",
            |g, p| {
                let mut payload = typeless("publish");
                payload.extend(amf(&[num(0.0), Amf::Null, s("s2g"), s("live")]));
                publish_attack(g, p, "live", &message(4, 19, 1, &payload), "s2g")
            },
        )
        .not_on_nms(NMS_SHARED),
        case(
            "2 message type",
            "type 19 (shared object) play cam",
            |g, p| {
                let mut payload = typeless("play");
                payload.extend(amf(&[num(0.0), Amf::Null, s("cam")]));
                play_attack(g, p, "live", &message(4, 19, 1, &payload))
            },
        )
        .not_on_nms(NMS_SHARED),
        // 3. Aggregates.
        case("3 aggregate", "type 22 carrying a publish", |g, p| {
            let sub = amf(&publish_values(b"publish", b"s3a"));
            publish_attack(
                g,
                p,
                "live",
                &message(6, 22, 1, &aggregate(&[(20, 1, sub)])),
                "s3a",
            )
        })
        .not_on_nms(NMS_AGGREGATE),
        case("3 aggregate", "type 22 carrying a play of cam", |g, p| {
            let sub = amf(&play_values(b"play", b"cam"));
            play_attack(
                g,
                p,
                "live",
                &message(6, 22, 1, &aggregate(&[(20, 1, sub)])),
            )
        })
        .not_on_nms(NMS_AGGREGATE),
        case(
            "3 aggregate",
            "type 22 carrying a type-18 publish",
            |g, p| {
                let sub = amf(&publish_values(b"publish", b"s3c"));
                publish_attack(
                    g,
                    p,
                    "live",
                    &message(6, 22, 1, &aggregate(&[(18, 1, sub)])),
                    "s3c",
                )
            },
        )
        .not_on_nms(NMS_AGGREGATE),
        case(
            "3 aggregate",
            "type 22: video, then a publish on msid 0",
            |g, p| {
                let sub = amf(&publish_values(b"publish", b"s3d"));
                let subs = [(9, 1, vec![0x12; 64]), (20, 0, sub)];
                publish_attack(g, p, "live", &message(6, 22, 1, &aggregate(&subs)), "s3d")
            },
        )
        .not_on_nms(NMS_AGGREGATE),
        // 4. Duplicate keys.
        case(
            "4 duplicate keys",
            "connect {app: live, app: hidden}",
            |g, p| {
                let mut o = connect_object("live");
                o.push(("app", s("hidden")));
                escape_attack(
                    g,
                    p,
                    &command(0, &[s("connect"), num(1.0), obj(&o)]),
                    "own4a",
                )
            },
        ),
        case(
            "4 duplicate keys",
            "connect ECMA array {app: live, app: hidden}",
            |g, p| {
                let mut o = connect_object("live");
                o.push(("app", s("hidden")));
                escape_attack(
                    g,
                    p,
                    &command(0, &[s("connect"), num(1.0), ecma(&o)]),
                    "own4b",
                )
            },
        ),
        case(
            "4 duplicate keys",
            "connect {app: live, app: live, app: hidden/}",
            |g, p| {
                let mut o = connect_object("live");
                o.insert(1, ("app", s("live")));
                o.push(("app", s("hidden/")));
                escape_attack(
                    g,
                    p,
                    &command(0, &[s("connect"), num(1.0), obj(&o)]),
                    "own4c",
                )
            },
        )
        .not_on_nms(NMS_SLASH),
        case(
            "4 duplicate keys",
            "play2 {streamName: own4d?key=mine, streamName: cam}",
            |g, p| {
                let o = obj(&[
                    ("streamName", s("own4d?key=mine")),
                    ("streamName", s("cam")),
                ]);
                play_attack(
                    g,
                    p,
                    "live",
                    &command(1, &[s("play2"), num(0.0), Amf::Null, o]),
                )
            },
        )
        .not_on_nms(NMS_NO_PLAY2),
        // 5. Framing.
        case(
            "5 framing",
            "Abort mid-command, then a new header on its csid",
            |g, p| {
                let inner = amf(&publish_values(b"publish", b"s5a"));
                publish_attack(g, p, "live", &abort_gadget(&inner, true), "s5a")
            },
        ),
        case(
            "5 framing",
            "Abort mid-command, then fmt 3 on its csid",
            |g, p| {
                let inner = amf(&publish_values(b"publish", b"s5b"));
                publish_attack(g, p, "live", &abort_gadget(&inner, false), "s5b")
            },
        ),
        case(
            "5 framing",
            "extended timestamp on a continuation chunk",
            |g, p| {
                let cmd = amf(&publish_values(b"publish", b"s5c"));
                publish_attack(g, p, "live", &ext_gadget(false, &cmd), "s5c")
            },
        ),
        case(
            "5 framing",
            "extended timestamp on a fmt 3 chunk starting a message",
            |g, p| {
                let cmd = amf(&publish_values(b"publish", b"s5d"));
                publish_attack(g, p, "live", &ext_gadget(true, &cmd), "s5d")
            },
        ),
        case(
            "5 framing",
            "SetChunkSize 4096, then video framed at 128",
            |g, p| {
                let mut bytes = set_chunk_size(4096);
                bytes.extend(chunk_size_gadget(&amf(&publish_values(b"publish", b"s5e"))));
                publish_attack(g, p, "live", &bytes, "s5e")
            },
        ),
        case(
            "5 framing",
            "SetChunkSize 4096 inside an aggregate, then video framed at 128",
            |g, p| {
                let mut bytes = message(
                    4,
                    22,
                    1,
                    &aggregate(&[(1, 0, 4096u32.to_be_bytes().to_vec())]),
                );
                bytes.extend(chunk_size_gadget(&amf(&publish_values(b"publish", b"s5f"))));
                publish_attack(g, p, "live", &bytes, "s5f")
            },
        )
        .not_on_nms(NMS_AGGREGATE),
        case(
            "5 framing",
            "fmt 1 header in the middle of a command",
            |g, p| {
                let inner = amf(&publish_values(b"publish", b"s5g"));
                publish_attack(g, p, "live", &midheader_gadget(&inner, 1), "s5g")
            },
        ),
        case(
            "5 framing",
            "fmt 2 header in the middle of a command",
            |g, p| {
                let inner = amf(&publish_values(b"publish", b"s5h"));
                publish_attack(g, p, "live", &midheader_gadget(&inner, 2), "s5h")
            },
        ),
        // 6. Names.
        case(
            "6 names",
            "open: publish `film-1\\0x` (film-1 blocked)",
            |g, p| {
                let bytes = command(1, &publish_values(b"publish", b"film-1\0x"));
                publish_attack(g, p, "open", &bytes, FILM_1)
            },
        )
        .not_on_nms(NMS_NAME_CHARS),
        case(
            "6 names",
            "open: play `film-2\\0x` (film-2 blocked)",
            |g, p| {
                play_attack(
                    g,
                    p,
                    "open",
                    &command(1, &play_values(b"play", b"film-2\0x")),
                )
            },
        )
        .not_on_nms(NMS_NAME_CHARS),
        case(
            "6 names",
            "open: publish 256 bytes, the first 255 blocked",
            |g, p| {
                let name = format!("{}x", long_name());
                let bytes = command(1, &publish_values(b"publish", name.as_bytes()));
                publish_attack(g, p, "open", &bytes, &long_name())
            },
        )
        .not_on_nms(NMS_NO_CUT),
        case(
            "6 names",
            "open: publish `ctlA\\x01x` (control character)",
            |g, p| {
                let bytes = command(1, &publish_values(b"publish", b"ctlA\x01x"));
                // /stat shows control characters as spaces.
                publish_attack_as(g, p, "open", &bytes, Name::Prefix("ctlA".into()))
            },
        )
        .not_on_nms(NMS_NAME_CHARS),
        case(
            "6 names",
            "open: publish `ctlB\\x1b[2J\\n` (escape, newline)",
            |g, p| {
                let bytes = command(1, &publish_values(b"publish", b"ctlB\x1b[2J\n"));
                // /stat shows control characters as spaces.
                publish_attack_as(g, p, "open", &bytes, Name::Prefix("ctlB".into()))
            },
        )
        .not_on_nms(NMS_NAME_CHARS),
        case("6 names", "live: play `cam\\0x` without a key", |g, p| {
            play_attack(g, p, "live", &command(1, &play_values(b"play", b"cam\0x")))
        })
        .not_on_nms(NMS_NAME_CHARS),
        // 8. A second connect.
        case(
            "8 second connect",
            "connect to hidden after connect to live",
            |g, p| {
                let mut c = connected(g, "live")?;
                c.send(&command(0, &connect_values("hidden")));
                thread::sleep(Duration::from_millis(300));
                c.send(&create_stream());
                c.send(&publish("own8a?key=mine"));
                p.forbid("hidden", "own8a");
                p.attackers.push(c);
                Ok(())
            },
        ),
        case(
            "8 second connect",
            "`Connect` to hidden as type 18",
            |g, p| {
                let mut c = connected(g, "live")?;
                let mut values = connect_values("hidden");
                values[0] = s("Connect");
                c.send(&message(4, 18, 0, &amf(&values)));
                thread::sleep(Duration::from_millis(300));
                c.send(&create_stream());
                c.send(&publish("own8b?key=mine"));
                p.forbid("hidden", "own8b");
                p.attackers.push(c);
                Ok(())
            },
        )
        .not_on_nms(NMS_DATA),
        case(
            "8 second connect",
            "connect to hidden inside an aggregate",
            |g, p| {
                let mut c = connected(g, "live")?;
                let sub = amf(&connect_values("hidden"));
                c.send(&message(6, 22, 0, &aggregate(&[(20, 0, sub)])));
                thread::sleep(Duration::from_millis(300));
                c.send(&create_stream());
                c.send(&publish("own8c?key=mine"));
                p.forbid("hidden", "own8c");
                p.attackers.push(c);
                Ok(())
            },
        )
        .not_on_nms(NMS_AGGREGATE),
        // 9. Viewer quota.
        case(
            "9 viewer quota",
            "one connection plays own twice on msid 1",
            |g, p| {
                quota_attack(g, p, "q1", |c| {
                    c.send(&play(1, "own?key=mine"));
                    thread::sleep(Duration::from_millis(300));
                    c.send(&play(1, "own?key=mine"));
                })
            },
        ),
        case(
            "9 viewer quota",
            "one connection plays own on msid 1 and msid 2",
            |g, p| {
                quota_attack(g, p, "q2", |c| {
                    c.send(&create_stream());
                    thread::sleep(Duration::from_millis(200));
                    c.send(&play(1, "own?key=mine"));
                    c.send(&play(2, "own?key=mine"));
                })
            },
        ),
        case("9 viewer quota", "play, closeStream, play again", |g, p| {
            quota_attack(g, p, "q3", |c| {
                c.send(&play(1, "own?key=mine"));
                thread::sleep(Duration::from_millis(300));
                c.send(&command(1, &[s("closeStream"), num(0.0), Amf::Null]));
                thread::sleep(Duration::from_millis(300));
                c.send(&play(1, "own?key=mine"));
            })
        }),
    ]
}

/// A stream as the origin lists it: in one `/stat` snapshot of nginx, in
/// node-media-server's stream list or log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct StatStream {
    app: String,
    name: String,
    publishing: bool,
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

fn parse_stat(xml: &str) -> Vec<StatStream> {
    let mut out = Vec::new();
    for app in xml.split("<application>").skip(1) {
        let app_name = between(app, "<name>", "</name>").unwrap_or("").trim();
        for stream in app.split("<stream>").skip(1) {
            let body = stream.split("</stream>").next().unwrap_or("");
            out.push(StatStream {
                app: app_name.to_string(),
                name: between(body, "<name>", "</name>").unwrap_or("").to_string(),
                publishing: body.contains("<publishing/>"),
            });
        }
    }
    out
}

/// What the guard logged about each client port: its refusal
/// (`stage/reason: detail`), else how the session ended.
fn guard_says(log: &str) -> HashMap<u16, String> {
    let mut out: HashMap<u16, String> = HashMap::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let field = |k: &str| v.get(k).and_then(|f| f.as_str()).unwrap_or("");
        let Some(port) = v.get("client_port").and_then(|p| p.as_u64()) else {
            continue;
        };
        let port = port as u16;
        match field("event") {
            "blocked" => {
                let detail: String = field("detail").chars().take(60).collect();
                let said = format!(
                    "guard refused {}/{}: {detail}",
                    field("stage"),
                    field("reason")
                );
                out.insert(port, said);
            }
            "session_closed" => {
                out.entry(port)
                    .or_insert_with(|| format!("session ended: {}", field("end")));
            }
            _ => {}
        }
    }
    out
}

fn judge(
    case: &Case,
    probe: Result<Probe, String>,
    seen: &BTreeSet<StatStream>,
    said: &HashMap<u16, String>,
) -> Row {
    let mut row = Row::new(case.class, case.variant);
    let p = match probe {
        Ok(p) => p,
        Err(why) => {
            row.inconclusive = true;
            row.evidence = format!("INCONCLUSIVE: {why}");
            return row;
        }
    };
    let unread: Vec<String> = p
        .attackers
        .iter()
        .chain(&p.legit)
        .filter_map(Conn::read_error)
        .collect();
    if !unread.is_empty() {
        row.inconclusive = true;
        row.evidence = format!("INCONCLUSIVE: reader lost the stream: {unread:?}");
        return row;
    }
    let mut evidence = Vec::new();
    for (app, name) in &p.forbidden {
        for st in seen
            .iter()
            .filter(|st| st.app == *app && name.matches(&st.name))
        {
            let shown: String = st.name.chars().take(24).collect();
            let role = if st.publishing { "published" } else { "in use" };
            evidence.push(format!("origin lists {app}/{shown} {role}"));
        }
    }
    let media: u32 = p.attackers.iter().map(Conn::media).sum();
    if media > 0 {
        evidence.push(format!("attacker got {media} media messages"));
    }
    if let Some(legit) = &p.legit {
        if !legit.has("NetStream.Play.Start") {
            evidence.push(format!("legit viewer kept out: {:?}", legit.statuses()));
        }
    }
    row.smuggled = !evidence.is_empty();
    let guard: Vec<&str> = p
        .attackers
        .iter()
        .filter_map(|c| said.get(&c.port).map(String::as_str))
        .collect();
    row.evidence = if row.smuggled {
        evidence.join("; ")
    } else if !guard.is_empty() {
        guard.join("; ")
    } else if p.attackers.iter().all(Conn::closed) {
        "connection closed, nothing reached".into()
    } else {
        "nothing reached".into()
    };
    row
}

// ---------------------------------------------------------------------------
// The origin behind the guard, and what it shows.

enum Target {
    Nginx(Nginx),
    Nms(Nms),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Nginx(_) => "nginx-rtmp",
            Target::Nms(_) => "node-media-server",
        }
    }

    fn rtmp(&self) -> SocketAddr {
        match self {
            Target::Nginx(n) => n.rtmp,
            Target::Nms(n) => n.rtmp,
        }
    }

    /// Every stream the origin lists now. For node-media-server also every
    /// publish and play its log has recorded since it started, so a
    /// stream that came and went between two looks is not missed (a
    /// published one stays listed, `reconnecting`, for 30 s anyway).
    fn streams(&self) -> Vec<StatStream> {
        match self {
            Target::Nginx(n) => parse_stat(&n.stat()),
            Target::Nms(n) => {
                let mut out: Vec<StatStream> = n
                    .streams()
                    .unwrap_or_default()
                    .iter()
                    .map(|st| {
                        let (app, name) = nms_path(st["key"].as_str().unwrap_or(""));
                        StatStream {
                            app,
                            name,
                            publishing: st["status"] != "idle",
                        }
                    })
                    .collect();
                for line in n.log().lines() {
                    for (marker, publishing) in [(" start push ", true), (" start play ", false)] {
                        if let Some((_, path)) = line.split_once(marker) {
                            let (app, name) = nms_path(path.trim());
                            out.push(StatStream {
                                app,
                                name,
                                publishing,
                            });
                        }
                    }
                }
                out
            }
        }
    }

    fn wait_publishing(&self, app: &str, name: &str) -> bool {
        wait_for(Duration::from_secs(10), || {
            self.streams()
                .iter()
                .any(|st| st.app == app && st.name == name && st.publishing)
                .then_some(())
        })
        .is_some()
    }

    /// Bytes the origin has read from all its RTMP connections.
    fn bytes_in(&self) -> u64 {
        match self {
            Target::Nginx(n) => xml_value(&n.stat(), "bytes_in").unwrap_or(0),
            Target::Nms(n) => n.bytes_in().unwrap_or(0),
        }
    }

    fn log(&self) -> String {
        match self {
            Target::Nginx(n) => n.error_log(),
            Target::Nms(n) => n.log(),
        }
    }
}

/// `/app/name` as node-media-server names a stream.
fn nms_path(path: &str) -> (String, String) {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (app, name) = path.split_once('/').unwrap_or((path, ""));
    (app.to_string(), name.to_string())
}

// ---------------------------------------------------------------------------
// 7. Media without a publish, measured on the origin's received byte count.

/// About 2.3 MB of video, audio and data on `msid`, at chunk size 4096.
fn blast(msid: u32) -> Vec<u8> {
    let mut out = message_at(
        4,
        0,
        18,
        msid,
        &amf(&[
            s("@setDataFrame"),
            s("onMetaData"),
            obj(&[("width", num(320.0))]),
        ]),
        4096,
    );
    for i in 0..BLAST_VIDEO {
        let mut video = vec![0u8; 256 * 1024];
        video[..2].copy_from_slice(&[0x27, 0x01]);
        out.extend(message_at(6, 40 * i as u32, 9, msid, &video, 4096));
        let mut audio = vec![0u8; 32 * 1024];
        audio[..2].copy_from_slice(&[0xAF, 0x01]);
        out.extend(message_at(5, 40 * i as u32, 8, msid, &audio, 4096));
    }
    out
}

type Setup = fn(SocketAddr) -> Result<(Conn, u32), String>;

fn media_cases() -> Vec<(&'static str, Setup)> {
    vec![
        ("media on msid 1, no publish", |g| {
            let mut c = connected(g, "live")?;
            c.send(&set_chunk_size(4096));
            Ok((c, 1))
        }),
        ("media on msid 0, no publish", |g| {
            let mut c = connected(g, "live")?;
            c.send(&set_chunk_size(4096));
            Ok((c, 0))
        }),
        ("media after publish own + closeStream", |g| {
            let mut c = connected(g, "live")?;
            c.send(&publish("own7c?key=mine"));
            c.wait("NetStream.Publish.Start", Duration::from_secs(3));
            c.send(&command(1, &[s("closeStream"), num(0.0), Amf::Null]));
            c.send(&set_chunk_size(4096));
            Ok((c, 1))
        }),
        ("media after publish own + deleteStream", |g| {
            let mut c = connected(g, "live")?;
            c.send(&publish("own7d?key=mine"));
            c.wait("NetStream.Publish.Start", Duration::from_secs(3));
            c.send(&command(
                0,
                &[s("deleteStream"), num(0.0), Amf::Null, num(1.0)],
            ));
            c.send(&set_chunk_size(4096));
            Ok((c, 1))
        }),
        ("media after publish own + FCUnpublish", |g| {
            let mut c = connected(g, "live")?;
            c.send(&publish("own7e?key=mine"));
            c.wait("NetStream.Publish.Start", Duration::from_secs(3));
            let values = [s("FCUnpublish"), num(0.0), Amf::Null, s("own7e?key=mine")];
            c.send(&command(0, &values));
            c.send(&set_chunk_size(4096));
            Ok((c, 1))
        }),
        // node-media-server passes a player's media on to the other
        // players of the stream it plays.
        ("media on the msid of a play of own", |g| {
            let mut c = connected(g, "live")?;
            c.send(&play(1, "own7f?key=mine"));
            c.wait("NetStream.Play.Start", Duration::from_secs(3));
            c.send(&set_chunk_size(4096));
            Ok((c, 1))
        }),
    ]
}

fn media_without_publish(
    entry: SocketAddr,
    origin: &Target,
    only: &str,
    log: &dyn Fn() -> String,
) -> Vec<Row> {
    let chosen: Vec<_> = media_cases()
        .into_iter()
        .filter(|(v, _)| selected(only, "7 media without publish", v))
        .collect();
    // Connect in parallel; push the media one variant at a time.
    let setups: Vec<_> = thread::scope(|sc| {
        let handles: Vec<_> = chosen
            .iter()
            .map(|(_, setup)| sc.spawn(move || setup(entry)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("setup panicked".into())))
            .collect()
    });
    thread::sleep(Duration::from_millis(300));
    let mut rows = Vec::new();
    for ((variant, _), setup) in chosen.iter().zip(setups) {
        let mut row = Row::new("7 media without publish", variant);
        match setup {
            Err(why) => {
                row.inconclusive = true;
                row.evidence = format!("INCONCLUSIVE: {why}");
            }
            Ok((mut conn, msid)) => {
                let before = origin.bytes_in();
                let bytes = blast(msid);
                let sent = bytes.len();
                conn.send(&bytes);
                let grew = wait_for(Duration::from_millis(1500), || {
                    let d = origin.bytes_in().saturating_sub(before);
                    (d > BLAST_THRESHOLD).then_some(d)
                });
                let delta = grew.unwrap_or_else(|| origin.bytes_in().saturating_sub(before));
                row.smuggled = grew.is_some();
                thread::sleep(Duration::from_millis(100));
                let said = guard_says(&log())
                    .get(&conn.port)
                    .map_or(String::new(), |s| format!("; {s}"));
                row.evidence = format!(
                    "origin read {} KB while {} KB were sent{said}",
                    delta / 1000,
                    sent / 1000,
                );
            }
        }
        rows.push(row);
    }
    rows
}

// ---------------------------------------------------------------------------
// The setup, and the suite.

/// Publishes `name` in `app` straight to the origin (not through the
/// guard): the content the operator has since blocked, still live there.
fn direct_publisher(
    origin: SocketAddr,
    app: &'static str,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<(), String>> {
    thread::spawn(move || {
        let mut c = connected(origin, app)?;
        c.send(&publish(name));
        if !c.wait("NetStream.Publish.Start", Duration::from_secs(5)) {
            return Err(format!("direct publish of {app}/{name} failed"));
        }
        let mut ts = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let mut frame = vec![0u8; 512];
            frame[0] = 0x12;
            c.send(&message_at(6, ts, 9, 1, &frame, CHUNK));
            ts += 40;
            thread::sleep(Duration::from_millis(40));
        }
        Ok(())
    })
}

fn guard_config(origin: SocketAddr) -> GuardConfig {
    let mut keys = format!("cam = \"{CAM_KEY}\"");
    for own in OWN {
        keys.push_str(&format!(", {own} = \"mine\""));
    }
    let quota = "publish = \"deny\"\nplay = \"key\"\nkeys = { own = \"mine\", tv = \"viewer\" }\n\
                 max_viewers = 2";
    GuardConfig::new()
        .tables(
            "[limits.per_ip]\nconnections_per_second = 1000\nburst = 1000\nmax_concurrent = 1000\n\n\
             [bans]\nauto = false\n",
        )
        .origin(origin)
        .app(
            "live",
            &format!("publish = \"key\"\nplay = \"key\"\nkeys = {{ {keys} }}"),
        )
        .app(
            "open",
            &format!(
                "publish = \"none\"\nplay = \"none\"\nblocked_streams = [\"{FILM_1}\", \"{FILM_2}\", \"{}\"]",
                long_name()
            ),
        )
        .app("q1", quota)
        .app("q2", quota)
        .app("q3", quota)
}

fn selected(only: &str, class: &str, variant: &str) -> bool {
    only.is_empty() || class.contains(only) || variant.contains(only)
}

fn print_table(rows: &[Row], target: &str) -> String {
    let mut out = format!("\nhostile suite against {target}\n");
    out.push_str(&format!(
        "{:<24} | {:<64} | {:<9} | evidence\n",
        "case", "variant", "smuggled?"
    ));
    out.push_str(&format!("{}\n", "-".repeat(130)));
    for r in rows {
        let verdict = match (r.inconclusive, r.smuggled, r.not_applicable) {
            (true, _, _) => "??",
            (_, true, _) => "YES",
            (_, false, Some(_)) => "no (n/a)",
            (_, false, None) => "no",
        };
        let evidence = match r.not_applicable {
            Some(why) => format!("{why}; {}", r.evidence),
            None => r.evidence.clone(),
        };
        out.push_str(&format!(
            "{:<24} | {:<64} | {:<9} | {evidence}\n",
            r.class, r.variant, verdict
        ));
    }
    let smuggled = rows.iter().filter(|r| r.smuggled).count();
    let na = rows.iter().filter(|r| r.not_applicable.is_some()).count();
    out.push_str(&format!(
        "{smuggled} of {} variants got through",
        rows.len()
    ));
    if na > 0 {
        out.push_str(&format!(
            " ({na} of them cannot work on this origin even without the guard: n/a)"
        ));
    }
    out.push('\n');
    out
}

/// Runs every variant through the guard in front of `origin` (or, for
/// the control run, at `origin` directly), prints the table and fails if
/// any variant got through.
fn suite(origin: Target) {
    let started = Instant::now();
    let only = std::env::var("RTMP_GUARD_SMUGGLE").unwrap_or_default();
    // `origin`: the control run, the same bytes sent to the origin directly.
    let at_origin = std::env::var("RTMP_GUARD_SMUGGLE_TARGET").is_ok_and(|v| v == "origin");
    let is_nms = matches!(origin, Target::Nms(_));
    let mut guard = GuardProc::start(guard_config(origin.rtmp()));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rtmp://{}/live/cam", guard.rtmp);
    let _publisher = ffmpeg_publish(
        &format!("{url}?key={CAM_KEY}"),
        90,
        &dir.path().join("cam.log"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let film = direct_publisher(origin.rtmp(), "open", FILM_2, stop.clone());
    assert!(
        origin.wait_publishing("live", "cam"),
        "the legitimate publisher did not get in: {}\n{}",
        guard.log_text(),
        origin.log()
    );
    assert!(origin.wait_publishing("open", FILM_2), "{}", origin.log());

    // Every class but 7, in parallel; then watch for a while.
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| selected(&only, c.class, c.variant))
        .collect();
    let g = if at_origin { origin.rtmp() } else { guard.rtmp };
    let probes: Vec<Result<Probe, String>> = thread::scope(|sc| {
        let handles: Vec<_> = cases
            .iter()
            .map(|c| {
                sc.spawn(move || {
                    let mut p = Probe::default();
                    (c.attack)(g, &mut p).map(|()| p)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("variant panicked".into())))
            .collect()
    });
    let mut seen = BTreeSet::new();
    let watch_end = Instant::now() + WATCH;
    while Instant::now() < watch_end {
        seen.extend(origin.streams());
        thread::sleep(Duration::from_millis(250));
    }
    seen.extend(origin.streams());
    let said = guard_says(&guard.log_text());
    let mut rows: Vec<Row> = cases
        .iter()
        .zip(probes)
        .map(|(c, p)| Row {
            not_applicable: c.not_on_nms.filter(|_| is_nms),
            ..judge(c, p, &seen, &said)
        })
        .collect();
    // Nothing may ever be in the app the guard does not expose.
    let foreign: Vec<String> = seen
        .iter()
        .filter(|s| s.app == "hidden")
        .map(|s| s.name.clone())
        .collect();
    rows.push(Row {
        smuggled: !foreign.is_empty(),
        evidence: if foreign.is_empty() {
            "nothing in hidden".into()
        } else {
            format!("origin lists hidden/{foreign:?}")
        },
        ..Row::new("foreign app", "`hidden` never holds a stream")
    });

    rows.extend(media_without_publish(g, &origin, &only, &|| {
        guard.log_text()
    }));

    // The guard still serves: ffmpeg plays cam with its key.
    stop.store(true, Ordering::Relaxed);
    let film = film.join().unwrap_or_else(|_| Err("panicked".into()));
    let (frames, out) = ffmpeg_play(&format!("{url}?key={CAM_KEY}"), 3);
    let alive = guard.wait_exit(Duration::ZERO).is_none();
    rows.sort_by_key(|r| r.class);
    let target = if at_origin {
        format!("{} directly (control run)", origin.name())
    } else {
        format!("the guard in front of {}", origin.name())
    };
    let table = print_table(&rows, &target);
    println!("{table}");
    println!(
        "suite against {} ran in {:.1} s",
        origin.name(),
        started.elapsed().as_secs_f64()
    );
    assert!(film.is_ok(), "direct publisher of film-2: {film:?}");
    assert!(alive, "the guard exited: {}", guard.log_text());
    assert!(
        frames >= 25,
        "after the suite a legitimate player got {frames} frames: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r.smuggled || r.inconclusive)
        .map(|r| format!("{} / {}: {}", r.class, r.variant, r.evidence))
        .collect();
    assert!(
        bad.is_empty(),
        "{} variants got past the guard in front of {} or could not be judged (table \
         above):\n{}",
        bad.len(),
        origin.name(),
        bad.join("\n")
    );
}

#[test]
fn no_publish_or_play_gets_past_the_guard_to_nginx_rtmp() {
    if !have_tools(
        "no_publish_or_play_gets_past_the_guard_to_nginx_rtmp",
        &["nginx", "ffmpeg"],
    ) {
        return;
    }
    suite(Target::Nginx(Nginx::start(
        "application hidden { live on; }\n    application open { live on; }\n    \
         application q1 { live on; }\n    application q2 { live on; }\n    \
         application q3 { live on; }",
    )));
}

#[test]
fn no_publish_or_play_gets_past_the_guard_to_node_media_server() {
    const TEST: &str = "no_publish_or_play_gets_past_the_guard_to_node_media_server";
    if !have_tools(TEST, &["ffmpeg"]) {
        return;
    }
    let install = match NmsInstall::locate() {
        Ok(install) => install,
        Err(missing) => {
            common::skip(TEST, &missing);
            return;
        }
    };
    // node-media-server serves any app it is asked for: `hidden`, `open`
    // and `q1`..`q3` need no setup.
    suite(Target::Nms(Nms::start(&install)));
}
