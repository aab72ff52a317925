//! A strict, sans-IO parser for one direction of an RTMP chunk stream.
//!
//! RTMP splits messages into chunks and interleaves chunks of different
//! chunk streams (csids). Each chunk header may be compressed against the
//! previous header on its csid, so reading the stream correctly means keeping
//! per-csid state. The guard relays bytes verbatim, so this parser never
//! rewrites anything: it follows message boundaries, tracks SetChunkSize and
//! Abort, and hands out the payloads of the small messages the guard must
//! read (protocol control, commands, data). Audio and video payloads are only
//! counted and skipped, never copied.
//!
//! The parser is strict on purpose: anything an origin could read differently
//! (a compressed header on an unknown csid, a new header in the middle of a
//! message, an out-of-range chunk size) is an error, and every buffer is
//! bounded by [`ChunkLimits`].
//!
//! Usage: call [`ChunkParser::advance`] with the unconsumed input until it has
//! consumed everything. It stops early after each complete *kept* message so
//! the caller can act on it (and, later, hold back what follows).

use std::fmt;

/// Message type ids the guard cares about.
pub mod types {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const ACKNOWLEDGEMENT: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const SHARED_OBJECT_AMF3: u8 = 16;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const SHARED_OBJECT_AMF0: u8 = 19;
    pub const COMMAND_AMF0: u8 = 20;
    pub const AGGREGATE: u8 = 22;
}

/// Protocol control messages are a few bytes; anything longer is abuse.
pub const MAX_CONTROL_SIZE: u32 = 64;
/// A kept buffer larger than this is released after its message, so one
/// large command does not pin memory for the rest of the session.
const RETAINED_BUFFER: usize = 4096;
/// The chunk size every RTMP stream starts with.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Longest chunk header: 3-byte basic header, 11-byte message header,
/// 4-byte extended timestamp.
const MAX_HEADER: usize = 18;
const EXTENDED: u32 = 0xFF_FFFF;

/// How the parser treats a message's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageClass {
    /// Types 1-6: kept, at most [`MAX_CONTROL_SIZE`] bytes.
    Control,
    /// Types 15-20: kept, at most `max_command_size` bytes.
    Command,
    /// Audio, video, aggregate and unknown types: passed through.
    Media,
}

impl MessageClass {
    pub fn of(type_id: u8) -> MessageClass {
        match type_id {
            1..=6 => MessageClass::Control,
            15..=20 => MessageClass::Command,
            _ => MessageClass::Media,
        }
    }
}

/// The parser's limits; the session builds them from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    pub max_chunk_size: u32,
    pub max_command_size: u32,
    pub max_message_size: u32,
    pub max_chunk_streams: usize,
}

/// Why a chunk stream was refused. Every variant is a protocol violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// fmt 1, 2 or 3 on a csid that never had a full header.
    UnknownChunkStream { csid: u32, fmt: u8 },
    /// More csids than `max_chunk_streams`.
    TooManyChunkStreams { limit: usize },
    /// A fmt 0-2 header while a message on that csid is unfinished.
    HeaderMidMessage { csid: u32 },
    /// SetChunkSize of 0, with the reserved bit set, or over the limit.
    BadChunkSize { size: u32 },
    /// A message longer than `max_message_size`.
    MessageTooLarge { type_id: u8, length: u32 },
    /// A command or data message longer than `max_command_size`.
    CommandTooLarge { type_id: u8, length: u32 },
    /// A protocol control message of the wrong length.
    BadControlMessage { type_id: u8, length: u32 },
    /// Unfinished kept messages, across all csids, hold more than
    /// twice `max_command_size`.
    TooMuchBuffered { limit: usize },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::UnknownChunkStream { csid, fmt: t } => {
                write!(
                    f,
                    "chunk header fmt {t} on csid {csid} with no earlier header"
                )
            }
            ChunkError::TooManyChunkStreams { limit } => {
                write!(f, "more than {limit} chunk streams")
            }
            ChunkError::HeaderMidMessage { csid } => {
                write!(
                    f,
                    "new message header on csid {csid} before its message ended"
                )
            }
            ChunkError::BadChunkSize { size } => write!(f, "chunk size {size} out of range"),
            ChunkError::MessageTooLarge { type_id, length } => {
                write!(
                    f,
                    "message type {type_id} of {length} bytes is over the limit"
                )
            }
            ChunkError::CommandTooLarge { type_id, length } => {
                write!(
                    f,
                    "command/data message type {type_id} of {length} bytes is over the limit"
                )
            }
            ChunkError::BadControlMessage { type_id, length } => {
                write!(f, "control message type {type_id} with bad length {length}")
            }
            ChunkError::TooMuchBuffered { limit } => {
                write!(f, "more than {limit} bytes of unfinished commands")
            }
        }
    }
}

impl std::error::Error for ChunkError {}

/// The header of a complete message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    pub csid: u32,
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub length: u32,
}

impl MessageHeader {
    /// The header of a message of `type_id` carrying `payload` on chunk
    /// stream `csid` and message stream `stream_id`, at timestamp 0.
    pub fn for_payload(csid: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> MessageHeader {
        MessageHeader {
            csid,
            timestamp: 0,
            type_id,
            stream_id,
            length: payload.len() as u32,
        }
    }
}

/// A complete message whose payload the parser kept.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub header: MessageHeader,
    pub payload: &'a [u8],
}

/// A piece of an audio, video or other pass-through message, as it
/// arrived: the parser never assembles these, it hands out each chunk's
/// payload (or the part of it that was in the input) in order.
#[derive(Debug, PartialEq, Eq)]
pub struct MediaPiece<'a> {
    pub header: MessageHeader,
    /// Payload bytes of this message before this piece.
    pub offset: u32,
    pub bytes: &'a [u8],
}

impl MediaPiece<'_> {
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }

    pub fn is_last(&self) -> bool {
        self.offset as usize + self.bytes.len() == self.header.length as usize
    }
}

/// Gathers media pieces into whole messages, for readers that want them
/// whole (tests, the fuzz harness); the guard itself never does.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: Vec<(u32, Vec<u8>)>,
}

impl Reassembler {
    /// Adds a piece; the whole message once its last piece is in.
    pub fn push(&mut self, piece: &MediaPiece<'_>) -> Option<(MessageHeader, Vec<u8>)> {
        let csid = piece.header.csid;
        if piece.is_first() {
            self.partial.retain(|(c, _)| *c != csid);
            self.partial.push((csid, Vec::new()));
        }
        let (_, payload) = self.partial.iter_mut().find(|(c, _)| *c == csid)?;
        payload.extend_from_slice(piece.bytes);
        piece
            .is_last()
            .then(|| (piece.header, std::mem::take(payload)))
    }
}

/// What one call to [`ChunkParser::advance`] did.
#[derive(Debug)]
pub struct Progress<'a> {
    /// Input bytes consumed; the caller passes the rest next time.
    pub consumed: usize,
    /// A complete control/command/data message, if one ended here.
    pub message: Option<Message<'a>>,
    /// A piece of a pass-through message, if the input ended in one.
    pub media: Option<MediaPiece<'a>>,
}

/// Per-csid state: the last header, and the message in progress.
#[derive(Debug)]
struct ChunkStream {
    csid: u32,
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last fmt 0-2 header used an extended timestamp, so fmt 3
    /// chunks on this csid carry one too.
    extended: bool,
    /// Payload bytes still to come for the message in progress (0: none).
    remaining: u32,
    /// Payload of the message in progress, for kept classes only.
    kept: Vec<u8>,
}

/// What a read of payload bytes was.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// Part of a message still in progress (kept, or nothing read).
    Partial,
    /// A kept message is complete.
    Kept,
    /// Bytes of a media message, from `offset` in its payload.
    Media { offset: u32 },
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a chunk header into `header`.
    Header,
    /// Inside a chunk's payload on stream `index`.
    Payload { index: usize, left_in_chunk: u32 },
}

/// One direction's chunk stream parser.
#[derive(Debug)]
pub struct ChunkParser {
    limits: ChunkLimits,
    chunk_size: u32,
    streams: Vec<ChunkStream>,
    state: State,
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// Stream whose kept message was returned last; its buffer is cleared
    /// on the next call.
    returned: Option<usize>,
    /// Bytes held in `kept` buffers of unfinished messages, all csids.
    buffered: usize,
    bytes: u64,
    media_started: u64,
}

impl ChunkParser {
    pub fn new(limits: ChunkLimits) -> ChunkParser {
        ChunkParser {
            limits,
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: Vec::new(),
            state: State::Header,
            header: [0; MAX_HEADER],
            header_len: 0,
            returned: None,
            buffered: 0,
            bytes: 0,
            media_started: 0,
        }
    }

    /// Starts loading the state of the first chunk streams into the cache
    /// ([`super::cache::prefetch_first`]).
    pub fn prefetch(&self) {
        super::cache::prefetch_first(&self.streams);
    }

    /// The chunk size the sender last announced.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Bytes consumed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Audio, video and other pass-through messages started so far.
    pub fn media_started(&self) -> u64 {
        self.media_started
    }

    /// A one-byte csid (3..=63) with no message in progress, on which a
    /// message can be slipped in between the sender's chunks.
    pub fn idle_csid(&self) -> Option<u32> {
        (3..=63).find(|&c| self.find(c).is_none_or(|i| self.streams[i].remaining == 0))
    }

    /// True between chunks: no header or payload is half-read.
    pub fn at_chunk_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.header_len == 0
    }

    /// Consumes input until it is exhausted, a kept message completes, or a
    /// piece of a pass-through message was read. After an error the parser
    /// must not be used again.
    pub fn advance<'a>(&'a mut self, input: &'a [u8]) -> Result<Progress<'a>, ChunkError> {
        if let Some(index) = self.returned.take() {
            if let Some(stream) = self.streams.get_mut(index) {
                release(&mut stream.kept);
            }
        }
        let mut pos = 0;
        // (index, what was read, where its bytes start in the input)
        let mut found = None;
        while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
            match self.state {
                State::Header => {
                    pos += self.read_header(rest)?;
                    // A zero-length message is complete at its header.
                    if let State::Payload {
                        index,
                        left_in_chunk: 0,
                    } = self.state
                    {
                        let (_, read) = self.read_payload(index, 0, &[])?;
                        if !matches!(read, Read::Partial) {
                            found = Some((index, read, pos));
                            break;
                        }
                    }
                }
                State::Payload {
                    index,
                    left_in_chunk,
                } => {
                    let (used, read) = self.read_payload(index, left_in_chunk, rest)?;
                    let start = pos;
                    pos += used;
                    if !matches!(read, Read::Partial) {
                        found = Some((index, read, start));
                        break;
                    }
                }
            }
        }
        self.bytes += pos as u64;
        let nothing = Progress {
            consumed: pos,
            message: None,
            media: None,
        };
        match found {
            None => Ok(nothing),
            Some((index, Read::Kept, _)) => Ok(self.deliver(pos, index)),
            Some((index, Read::Media { offset }, start)) => {
                let Some(stream) = self.streams.get(index) else {
                    return Ok(nothing);
                };
                Ok(Progress {
                    media: Some(MediaPiece {
                        header: header_of(stream),
                        offset,
                        bytes: input.get(start..pos).unwrap_or_default(),
                    }),
                    ..nothing
                })
            }
            Some((_, Read::Partial, _)) => Ok(nothing),
        }
    }

    /// Hands out the kept message that just completed on stream `index`.
    fn deliver(&mut self, consumed: usize, index: usize) -> Progress<'_> {
        self.returned = Some(index);
        let stream = &self.streams[index];
        Progress {
            consumed,
            message: Some(Message {
                header: header_of(stream),
                payload: &stream.kept,
            }),
            media: None,
        }
    }

    /// Reads (part of) a chunk header. Returns the bytes consumed.
    fn read_header(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let had = self.header_len;
        let take = (MAX_HEADER - had).min(input.len());
        self.header[had..had + take].copy_from_slice(&input[..take]);
        let available = had + take;
        match self.header_length(&self.header[..available])? {
            Some(total) => {
                self.header_len = 0;
                self.apply_header(total)?;
                Ok(total - had)
            }
            None => {
                // Every byte seen so far belongs to this header.
                self.header_len = available;
                Ok(take)
            }
        }
    }

    /// The full length of the header starting `h`, once it can be known.
    fn header_length(&self, h: &[u8]) -> Result<Option<usize>, ChunkError> {
        let Some(&first) = h.first() else {
            return Ok(None);
        };
        let fmt = first >> 6;
        let basic = match first & 0x3f {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        if h.len() < basic {
            return Ok(None);
        }
        let message = [11, 7, 3, 0][usize::from(fmt)];
        let extended = if fmt == 3 {
            let csid = basic_csid(h);
            match self.find(csid) {
                Some(i) => self.streams[i].extended,
                None => return Err(ChunkError::UnknownChunkStream { csid, fmt }),
            }
        } else {
            if h.len() < basic + 3 {
                return Ok(None);
            }
            be24(&h[basic..basic + 3]) == EXTENDED
        };
        let total = basic + message + if extended { 4 } else { 0 };
        Ok((h.len() >= total).then_some(total))
    }

    /// Applies a complete header of `total` bytes held in `self.header`.
    fn apply_header(&mut self, total: usize) -> Result<(), ChunkError> {
        let h = self.header;
        let fmt = h[0] >> 6;
        let csid = basic_csid(&h);
        let basic = match h[0] & 0x3f {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        let index = match self.find(csid) {
            Some(i) => i,
            None if fmt == 0 => self.add_stream(csid)?,
            None => return Err(ChunkError::UnknownChunkStream { csid, fmt }),
        };
        let m = &h[basic..total];
        let stream = &mut self.streams[index];
        let in_progress = stream.remaining > 0;
        if fmt < 3 && in_progress {
            return Err(ChunkError::HeaderMidMessage { csid });
        }
        if fmt < 3 {
            let field = be24(&m[0..3]);
            stream.extended = field == EXTENDED;
            let value = if stream.extended {
                be32(&m[m.len() - 4..])
            } else {
                field
            };
            if fmt == 0 {
                stream.timestamp = value;
                stream.delta = 0;
                stream.stream_id = u32::from_le_bytes([m[7], m[8], m[9], m[10]]);
            } else {
                stream.delta = value;
                stream.timestamp = stream.timestamp.wrapping_add(value);
            }
            if fmt <= 1 {
                stream.length = be24(&m[3..6]);
                stream.type_id = m[6];
            }
        } else if !in_progress {
            stream.timestamp = stream.timestamp.wrapping_add(stream.delta);
        }
        if !in_progress {
            self.start_message(index)?;
        }
        // left_in_chunk is 0 only for a zero-length message.
        self.state = State::Payload {
            index,
            left_in_chunk: self.streams[index].remaining.min(self.chunk_size),
        };
        Ok(())
    }

    fn start_message(&mut self, index: usize) -> Result<(), ChunkError> {
        let limits = self.limits;
        let stream = &mut self.streams[index];
        let (type_id, length) = (stream.type_id, stream.length);
        if length > limits.max_message_size {
            return Err(ChunkError::MessageTooLarge { type_id, length });
        }
        match MessageClass::of(type_id) {
            MessageClass::Command if length > limits.max_command_size => {
                return Err(ChunkError::CommandTooLarge { type_id, length });
            }
            MessageClass::Control if !control_length_ok(type_id, length) => {
                return Err(ChunkError::BadControlMessage { type_id, length });
            }
            MessageClass::Media => self.media_started += 1,
            _ => {}
        }
        stream.remaining = length;
        stream.kept.clear();
        Ok(())
    }

    /// Reads payload bytes of the current chunk. Returns bytes consumed and
    /// what they were.
    fn read_payload(
        &mut self,
        index: usize,
        left_in_chunk: u32,
        input: &[u8],
    ) -> Result<(usize, Read), ChunkError> {
        let n = (left_in_chunk as usize).min(input.len());
        let limit = (self.limits.max_command_size as usize).saturating_mul(2);
        let stream = &mut self.streams[index];
        let kept = MessageClass::of(stream.type_id) != MessageClass::Media;
        let offset = stream.length - stream.remaining;
        if kept {
            self.buffered += n;
            if self.buffered > limit {
                return Err(ChunkError::TooMuchBuffered { limit });
            }
            stream.kept.extend_from_slice(&input[..n]);
        }
        // n <= left_in_chunk <= remaining, so these cannot underflow.
        stream.remaining -= n as u32;
        let left = left_in_chunk - n as u32;
        let done = stream.remaining == 0;
        self.state = if done || left == 0 {
            State::Header
        } else {
            State::Payload {
                index,
                left_in_chunk: left,
            }
        };
        if !kept {
            // Every byte of a media message is handed out, and a
            // zero-length one once, so the reader sees it begin and end.
            return Ok((
                n,
                if n > 0 || done {
                    Read::Media { offset }
                } else {
                    Read::Partial
                },
            ));
        }
        if !done {
            return Ok((n, Read::Partial));
        }
        self.buffered = self.buffered.saturating_sub(stream.kept.len());
        self.on_kept_message(index)?;
        Ok((n, Read::Kept))
    }

    /// Applies the control messages that change how the stream is read.
    fn on_kept_message(&mut self, index: usize) -> Result<(), ChunkError> {
        let stream = &self.streams[index];
        let value = stream.kept.get(..4).map(be32);
        match (stream.type_id, value) {
            (types::SET_CHUNK_SIZE, Some(size)) => {
                if size == 0 || size > 0x7FFF_FFFF || size > self.limits.max_chunk_size {
                    return Err(ChunkError::BadChunkSize { size });
                }
                self.chunk_size = size;
            }
            (types::ABORT, Some(csid)) => {
                if let Some(i) = self.find(csid) {
                    if i != index {
                        let aborted = &mut self.streams[i];
                        self.buffered = self.buffered.saturating_sub(aborted.kept.len());
                        aborted.remaining = 0;
                        release(&mut aborted.kept);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn find(&self, csid: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.csid == csid)
    }

    fn add_stream(&mut self, csid: u32) -> Result<usize, ChunkError> {
        if self.streams.len() >= self.limits.max_chunk_streams {
            return Err(ChunkError::TooManyChunkStreams {
                limit: self.limits.max_chunk_streams,
            });
        }
        self.streams.push(ChunkStream {
            csid,
            timestamp: 0,
            delta: 0,
            length: 0,
            type_id: 0,
            stream_id: 0,
            extended: false,
            remaining: 0,
            kept: Vec::new(),
        });
        Ok(self.streams.len() - 1)
    }
}

/// Empties a kept buffer, giving back memory a large message took.
fn release(kept: &mut Vec<u8>) {
    kept.clear();
    if kept.capacity() > RETAINED_BUFFER {
        kept.shrink_to(RETAINED_BUFFER);
    }
}

fn header_of(s: &ChunkStream) -> MessageHeader {
    MessageHeader {
        csid: s.csid,
        timestamp: s.timestamp,
        type_id: s.type_id,
        stream_id: s.stream_id,
        length: s.length,
    }
}

fn control_length_ok(type_id: u8, length: u32) -> bool {
    match type_id {
        types::SET_CHUNK_SIZE | types::ABORT | types::ACKNOWLEDGEMENT | types::WINDOW_ACK_SIZE => {
            (4..=MAX_CONTROL_SIZE).contains(&length)
        }
        types::SET_PEER_BANDWIDTH => (5..=MAX_CONTROL_SIZE).contains(&length),
        _ => length <= MAX_CONTROL_SIZE,
    }
}

/// The csid of a basic header; `h` holds at least the basic header.
fn basic_csid(h: &[u8]) -> u32 {
    match h[0] & 0x3f {
        0 => 64 + u32::from(h[1]),
        1 => 64 + u32::from(h[1]) + 256 * u32::from(h[2]),
        n => u32::from(n),
    }
}

fn be24(b: &[u8]) -> u32 {
    (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Writes messages as chunks: the guard's own replies, and the streams
/// tests, benchmarks and fuzzers feed the parser. It compresses headers as
/// far as the format allows, which exercises fmt 1-3.
pub mod writer {
    use super::*;

    #[derive(Debug, Default)]
    pub struct ChunkWriter {
        chunk_size: u32,
        last: Vec<(u32, MessageHeader, u32, bool)>,
    }

    impl ChunkWriter {
        pub fn new() -> ChunkWriter {
            ChunkWriter {
                chunk_size: DEFAULT_CHUNK_SIZE,
                last: Vec::new(),
            }
        }

        pub fn set_chunk_size(&mut self, size: u32) {
            self.chunk_size = size.max(1);
        }

        /// Appends the chunks of one whole message.
        pub fn write(&mut self, out: &mut Vec<u8>, h: &MessageHeader, payload: &[u8]) {
            let pieces = self.pieces(h, payload);
            for piece in pieces {
                out.extend_from_slice(&piece);
            }
        }

        /// The chunks of one message, separately, so callers can interleave
        /// them with other csids.
        pub fn pieces(&mut self, h: &MessageHeader, payload: &[u8]) -> Vec<Vec<u8>> {
            let prev = self.last.iter().position(|l| l.0 == h.csid);
            let (fmt, field_value) = match prev.map(|i| self.last[i]) {
                Some((_, p, delta, _)) if p.stream_id == h.stream_id => {
                    let d = h.timestamp.wrapping_sub(p.timestamp);
                    if p.length == h.length && p.type_id == h.type_id {
                        if d == delta && delta != 0 {
                            (3, d)
                        } else {
                            (2, d)
                        }
                    } else {
                        (1, d)
                    }
                }
                _ => (0, h.timestamp),
            };
            let extended = if fmt == 3 {
                prev.map(|i| self.last[i].3).unwrap_or(false)
            } else {
                field_value >= EXTENDED
            };
            let mut first = basic_header(fmt, h.csid);
            if fmt < 3 {
                let field = if extended { EXTENDED } else { field_value };
                first.extend_from_slice(&field.to_be_bytes()[1..]);
                if fmt <= 1 {
                    first.extend_from_slice(&h.length.to_be_bytes()[1..]);
                    first.push(h.type_id);
                }
                if fmt == 0 {
                    first.extend_from_slice(&h.stream_id.to_le_bytes());
                }
            }
            let ext_bytes = if extended {
                if fmt == 3 {
                    prev.map(|i| self.last[i].1.timestamp).unwrap_or(0)
                } else {
                    field_value
                }
                .to_be_bytes()
                .to_vec()
            } else {
                Vec::new()
            };
            first.extend_from_slice(&ext_bytes);
            let delta = if fmt == 0 { 0 } else { field_value };
            let record = (h.csid, *h, delta, extended);
            match prev {
                Some(i) => self.last[i] = record,
                None => self.last.push(record),
            }
            let mut out = Vec::new();
            let size = self.chunk_size as usize;
            let mut chunks = payload.chunks(size);
            let mut head = first;
            head.extend_from_slice(chunks.next().unwrap_or(&[]));
            out.push(head);
            for chunk in chunks {
                let mut c = basic_header(3, h.csid);
                c.extend_from_slice(&ext_bytes);
                c.extend_from_slice(chunk);
                out.push(c);
            }
            if h.type_id == types::SET_CHUNK_SIZE {
                if let Some(b) = payload.get(..4) {
                    self.chunk_size = be32(b).max(1);
                }
            }
            out
        }
    }

    pub fn basic_header(fmt: u8, csid: u32) -> Vec<u8> {
        let f = fmt << 6;
        match csid {
            2..=63 => vec![f | csid as u8],
            64..=319 => vec![f, (csid - 64) as u8],
            _ => {
                let v = csid - 64;
                vec![f | 1, (v & 0xff) as u8, (v >> 8) as u8]
            }
        }
    }
}

/// Limits for the unit tests of the parser and of the replies: the
/// `[limits]` defaults.
#[cfg(test)]
pub(crate) fn test_limits() -> ChunkLimits {
    ChunkLimits {
        max_chunk_size: 65_536,
        max_command_size: 65_536,
        max_message_size: 0xFF_FFFF,
        max_chunk_streams: 64,
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{basic_header, ChunkWriter};
    use super::*;
    use proptest::prelude::*;

    /// Kept messages and pass-through count, fed in pieces of `step` bytes.
    fn parse_all(
        parser: &mut ChunkParser,
        input: &[u8],
        step: usize,
    ) -> Result<Vec<(MessageHeader, Vec<u8>)>, ChunkError> {
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            let mut pos = 0;
            while pos < piece.len() {
                let p = parser.advance(&piece[pos..])?;
                pos += p.consumed;
                if let Some(m) = p.message {
                    out.push((m.header, m.payload.to_vec()));
                }
            }
        }
        Ok(out)
    }

    fn header(csid: u32, ts: u32, type_id: u8, sid: u32, len: usize) -> MessageHeader {
        MessageHeader {
            csid,
            timestamp: ts,
            type_id,
            stream_id: sid,
            length: len as u32,
        }
    }

    #[test]
    fn reads_a_command_split_over_chunks() {
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let h = header(3, 0, types::COMMAND_AMF0, 0, payload.len());
        let mut bytes = Vec::new();
        ChunkWriter::new().write(&mut bytes, &h, &payload);
        let got = parse_all(&mut ChunkParser::new(test_limits()), &bytes, 7).unwrap();
        assert_eq!(got, vec![(h, payload)]);
    }

    #[test]
    fn set_chunk_size_changes_how_later_chunks_are_read() {
        let mut w = ChunkWriter::new();
        let mut bytes = Vec::new();
        w.write(&mut bytes, &header(2, 0, 1, 0, 4), &4096u32.to_be_bytes());
        let big = vec![7u8; 5000];
        w.write(&mut bytes, &header(3, 0, 20, 0, big.len()), &big);
        let mut p = ChunkParser::new(test_limits());
        let got = parse_all(&mut p, &bytes, 1000).unwrap();
        assert_eq!(p.chunk_size(), 4096);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, big);
    }

    #[test]
    fn media_is_passed_through_not_kept() {
        let mut bytes = Vec::new();
        let video = vec![1u8; 1000];
        ChunkWriter::new().write(&mut bytes, &header(6, 40, types::VIDEO, 1, 1000), &video);
        let mut p = ChunkParser::new(test_limits());
        assert!(parse_all(&mut p, &bytes, 64).unwrap().is_empty());
        assert_eq!(p.media_started(), 1);
        assert_eq!(p.bytes(), bytes.len() as u64);
        assert!(p.at_chunk_boundary());
    }

    #[test]
    fn compressed_header_on_unknown_csid_is_refused() {
        for fmt in 1..=3u8 {
            let mut bytes = basic_header(fmt, 5);
            bytes.extend_from_slice(&[0; 11]);
            let err = parse_all(&mut ChunkParser::new(test_limits()), &bytes, 64).unwrap_err();
            assert_eq!(err, ChunkError::UnknownChunkStream { csid: 5, fmt });
        }
    }

    fn set_chunk_size_bytes(size: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        ChunkWriter::new().write(&mut bytes, &header(2, 0, 1, 0, 4), &size.to_be_bytes());
        bytes
    }

    #[test]
    fn chunk_sizes_out_of_range_are_refused() {
        for size in [0, 0x8000_0000, 0xFFFF_FFFF, 65_537] {
            let err = parse_all(
                &mut ChunkParser::new(test_limits()),
                &set_chunk_size_bytes(size),
                64,
            )
            .unwrap_err();
            assert_eq!(err, ChunkError::BadChunkSize { size });
        }
    }

    #[test]
    fn oversized_command_is_refused_from_its_header() {
        let mut l = test_limits();
        l.max_command_size = 1000;
        let mut bytes = basic_header(0, 3);
        bytes.extend_from_slice(&[0, 0, 0, 0, 0x10, 0, 20, 0, 0, 0, 0]);
        let err = parse_all(&mut ChunkParser::new(l), &bytes, 64).unwrap_err();
        assert_eq!(
            err,
            ChunkError::CommandTooLarge {
                type_id: 20,
                length: 0x1000
            }
        );
    }

    #[test]
    fn oversized_message_is_refused_from_its_header() {
        let mut l = test_limits();
        l.max_message_size = 100_000;
        let mut bytes = basic_header(0, 6);
        bytes.extend_from_slice(&[0, 0, 0, 0x10, 0, 0, 9, 1, 0, 0, 0]);
        let err = parse_all(&mut ChunkParser::new(l), &bytes, 64).unwrap_err();
        assert!(matches!(err, ChunkError::MessageTooLarge { .. }));
    }

    #[test]
    fn too_many_chunk_streams_are_refused() {
        let mut l = test_limits();
        l.max_chunk_streams = 4;
        let mut w = ChunkWriter::new();
        let mut bytes = Vec::new();
        for csid in 3..10 {
            w.write(&mut bytes, &header(csid, 0, 8, 1, 1), &[0]);
        }
        let err = parse_all(&mut ChunkParser::new(l), &bytes, 64).unwrap_err();
        assert_eq!(err, ChunkError::TooManyChunkStreams { limit: 4 });
    }

    #[test]
    fn new_header_mid_message_is_refused() {
        let mut bytes = basic_header(0, 4);
        bytes.extend_from_slice(&[0, 0, 0, 0, 1, 0, 8, 1, 0, 0, 0]); // 256-byte audio
        bytes.extend_from_slice(&[0; 128]);
        bytes.extend_from_slice(&basic_header(1, 4));
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 1, 8]);
        let err = parse_all(&mut ChunkParser::new(test_limits()), &bytes, 64).unwrap_err();
        assert_eq!(err, ChunkError::HeaderMidMessage { csid: 4 });
    }

    #[test]
    fn abort_discards_the_partial_message() {
        let mut bytes = basic_header(0, 5);
        bytes.extend_from_slice(&[0, 0, 0, 0, 1, 0, 20, 0, 0, 0, 0]); // 256-byte command
        bytes.extend_from_slice(&[9; 128]);
        ChunkWriter::new().write(
            &mut bytes,
            &header(2, 0, types::ABORT, 0, 4),
            &5u32.to_be_bytes(),
        );
        // A fresh, complete command on csid 5 must now be accepted.
        bytes.extend_from_slice(&basic_header(0, 5));
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 3, 20, 0, 0, 0, 0, 1, 2, 3]);
        let got = parse_all(&mut ChunkParser::new(test_limits()), &bytes, 5).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, vec![1, 2, 3]);
    }

    #[test]
    fn extended_timestamp_on_type3_continuation() {
        let payload = vec![3u8; 300];
        let h = header(400, 0x0100_0000, 20, 1, payload.len());
        let mut bytes = Vec::new();
        ChunkWriter::new().write(&mut bytes, &h, &payload);
        // fmt0 (3-byte basic) + 11 + 4 ext + 128, then fmt3 (3) + 4 ext + 128, ...
        assert_eq!(bytes.len(), 3 + 11 + 4 + 300 + 2 * (3 + 4));
        let got = parse_all(&mut ChunkParser::new(test_limits()), &bytes, 3).unwrap();
        assert_eq!(got, vec![(h, payload)]);
    }

    #[test]
    fn unfinished_commands_on_many_csids_are_bounded() {
        let mut l = test_limits();
        l.max_command_size = 1000;
        let mut bytes = Vec::new();
        for csid in 3..30 {
            // The first 128 of 1000 bytes of a command, never finished.
            bytes.extend(basic_header(0, csid));
            bytes.extend_from_slice(&[0, 0, 0, 0, 0x03, 0xE8, 20, 0, 0, 0, 0]);
            bytes.extend_from_slice(&[0; 128]);
        }
        let mut p = ChunkParser::new(l);
        let err = parse_all(&mut p, &bytes, 64).unwrap_err();
        assert_eq!(err, ChunkError::TooMuchBuffered { limit: 2000 });
    }

    #[test]
    fn zero_length_messages_complete_at_their_header() {
        let mut bytes = basic_header(0, 3);
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 0]);
        let mut p = ChunkParser::new(test_limits());
        let got = parse_all(&mut p, &bytes, 64).unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].1.is_empty());
        assert!(p.at_chunk_boundary());
    }

    #[test]
    fn control_messages_must_have_sane_lengths() {
        let mut bytes = Vec::new();
        ChunkWriter::new().write(&mut bytes, &header(2, 0, 1, 0, 2), &[0, 1]);
        let err = parse_all(&mut ChunkParser::new(test_limits()), &bytes, 64).unwrap_err();
        assert!(matches!(err, ChunkError::BadControlMessage { .. }));
    }

    /// One message of a generated session.
    #[derive(Debug, Clone)]
    struct Gen {
        csid: u32,
        ts_step: u32,
        type_id: u8,
        stream_id: u32,
        len: usize,
    }

    fn gen_message() -> impl Strategy<Value = Gen> {
        (
            prop_oneof![2u32..8, 60u32..70, 300u32..330, Just(65_599u32)],
            prop_oneof![0u32..100, Just(0xFF_FFFF), 0x100_0000u32..0x200_0000],
            prop_oneof![Just(8u8), Just(9), Just(18), Just(20), Just(22)],
            0u32..3,
            0usize..2000,
        )
            .prop_map(|(csid, ts_step, type_id, stream_id, len)| Gen {
                csid,
                ts_step,
                type_id,
                stream_id,
                len,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Random messages, random chunk sizes (changed mid-stream), random
        /// interleaving of csids and random read boundaries: the parser
        /// yields exactly the kept messages, in order, and passes the rest.
        #[test]
        fn parser_yields_exactly_what_was_written(
            msgs in prop::collection::vec(gen_message(), 1..40),
            sizes in prop::collection::vec(1u32..5000, 1..4),
            interleave in any::<u64>(),
            step in 1usize..3000,
        ) {
            let mut w = ChunkWriter::new();
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            let mut clock: std::collections::HashMap<u32, u32> = Default::default();
            let mut pending: Vec<Vec<Vec<u8>>> = Vec::new();
            let mut rng = interleave;
            let mut used: Vec<u32> = Vec::new();
            for (i, g) in msgs.iter().enumerate() {
                if i % 10 == 0 {
                    // Flush interleaved chunks, then change the chunk size.
                    flush(&mut bytes, &mut pending, &mut rng);
                    used.clear();
                    let size = sizes[(i / 10) % sizes.len()];
                    let h = header(2, 0, 1, 0, 4);
                    w.write(&mut bytes, &h, &size.to_be_bytes());
                    expected.push((h, size.to_be_bytes().to_vec()));
                }
                if used.contains(&g.csid) {
                    // One message per csid may be in flight at a time.
                    flush(&mut bytes, &mut pending, &mut rng);
                    used.clear();
                }
                used.push(g.csid);
                let ts = clock.entry(g.csid).or_insert(0);
                *ts = ts.wrapping_add(g.ts_step);
                let payload: Vec<u8> = (0..g.len).map(|j| (j * 31 + i) as u8).collect();
                let h = header(g.csid, *ts, g.type_id, g.stream_id, g.len);
                pending.push(w.pieces(&h, &payload));
                if MessageClass::of(g.type_id) != MessageClass::Media {
                    expected.push((h, payload));
                }
            }
            flush(&mut bytes, &mut pending, &mut rng);
            let mut parser = ChunkParser::new(test_limits());
            let got = parse_all(&mut parser, &bytes, step).unwrap();
            // Interleaving reorders completion across csids; compare per csid.
            let by_csid = |v: &Vec<(MessageHeader, Vec<u8>)>, c: u32| -> Vec<(MessageHeader, Vec<u8>)> {
                v.iter().filter(|m| m.0.csid == c).cloned().collect()
            };
            for g in &msgs {
                prop_assert_eq!(by_csid(&got, g.csid), by_csid(&expected, g.csid));
            }
            prop_assert_eq!(got.len(), expected.len());
            prop_assert_eq!(parser.bytes(), bytes.len() as u64);
            prop_assert!(parser.at_chunk_boundary());
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096), step in 1usize..512) {
            let mut p = ChunkParser::new(test_limits());
            let _ = parse_all(&mut p, &data, step);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_prefix_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            let mut bytes = set_chunk_size_bytes(1);
            bytes.extend_from_slice(&data);
            let _ = parse_all(&mut ChunkParser::new(test_limits()), &bytes, 100);
        }
    }

    /// Emits pending messages' chunks, interleaving them pseudo-randomly while
    /// keeping each message's own chunks in order.
    fn flush(out: &mut Vec<u8>, pending: &mut Vec<Vec<Vec<u8>>>, rng: &mut u64) {
        let mut queues: Vec<std::collections::VecDeque<Vec<u8>>> =
            pending.drain(..).map(|p| p.into_iter().collect()).collect();
        loop {
            queues.retain(|q| !q.is_empty());
            if queues.is_empty() {
                break;
            }
            *rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let pick = (*rng >> 33) as usize % queues.len();
            if let Some(chunk) = queues[pick].pop_front() {
                out.extend_from_slice(&chunk);
            }
        }
    }
}
