//! Writing a chunk stream in the guard's own framing.
//!
//! The guard re-frames everything it forwards: its own chunk size, its own
//! chunk stream ids, a full (type 0) header at the start of every message
//! and type 3 headers on its continuations. So each peer reads exactly the
//! message boundaries the guard read, whatever tricks the sender's framing
//! played (compressed headers, chunk-size changes, interleaving).
//!
//! Whole messages (control, commands, data: everything the guard reads in
//! full) are written at once on fixed csids. Media is streamed: each piece
//! the parser hands out is written as it arrives, on a csid of its own per
//! sender csid, but only in complete chunks. A partial chunk waits (at most
//! one chunk per media csid), so the output always ends at a chunk
//! boundary, and the guard may put a message of its own between any two
//! writes.

use std::fmt;

use super::chunk::{MediaPiece, MessageHeader};

/// The chunk stream of protocol and user control messages.
pub const CONTROL_CSID: u32 = 2;
/// The chunk stream of commands and data, the guard's own included.
pub const COMMAND_CSID: u32 = 3;
/// Media chunk streams are numbered from here.
const FIRST_MEDIA_CSID: u32 = 4;
/// Largest csid a chunk header can express.
const MAX_CSID: u32 = 65_599;
const EXTENDED: u32 = 0xFF_FFFF;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitError {
    /// More concurrent media chunk streams than a header can number.
    TooManyStreams,
    /// A media piece that does not continue the message in progress.
    OutOfOrder { csid: u32 },
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::TooManyStreams => f.write_str("too many media chunk streams"),
            EmitError::OutOfOrder { csid } => {
                write!(f, "media on csid {csid} out of order")
            }
        }
    }
}

impl std::error::Error for EmitError {}

/// One sender csid's media message in progress.
#[derive(Debug)]
struct MediaOut {
    from_csid: u32,
    csid: u32,
    header: MessageHeader,
    /// Payload bytes written in complete chunks.
    sent: u32,
    /// The start of the next chunk, until it is complete.
    staged: Vec<u8>,
}

/// One leg's output framing.
#[derive(Debug)]
pub struct Emitter {
    chunk_size: u32,
    media: Vec<MediaOut>,
    /// The last bytes appended were a media message's chunks, and this
    /// many bytes of its payload are still to come.
    open_rest: u32,
}

impl Emitter {
    /// An emitter that writes `chunk_size` chunks; the peer must be told
    /// with a SetChunkSize first.
    pub fn new(chunk_size: u32) -> Emitter {
        Emitter {
            chunk_size: chunk_size.max(1),
            media: Vec::new(),
            open_rest: 0,
        }
    }

    /// Starts loading the state of the first media streams into the cache
    /// ([`super::cache::prefetch_first`]).
    pub fn prefetch(&self) {
        super::cache::prefetch_first(&self.media);
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// True when the output so far ends inside a media message: what was
    /// appended last is part of one, and the rest of it is still to come.
    pub fn ends_inside_message(&self) -> bool {
        self.open_rest > 0
    }

    /// How many payload bytes of that message are still to come (0 when
    /// the output does not end inside one).
    pub fn rest_of_message(&self) -> usize {
        self.open_rest as usize
    }

    /// Appends one whole message on `csid`.
    pub fn whole(&mut self, out: &mut Vec<u8>, csid: u32, header: &MessageHeader, payload: &[u8]) {
        let header = MessageHeader {
            csid,
            length: payload.len() as u32,
            ..*header
        };
        let size = self.chunk_size as usize;
        self.open_rest = 0;
        chunk_header(out, 0, &header);
        let mut chunks = payload.chunks(size);
        if let Some(first) = chunks.next() {
            out.extend_from_slice(first);
        }
        for chunk in chunks {
            chunk_header(out, 3, &header);
            out.extend_from_slice(chunk);
        }
    }

    /// Appends the complete chunks a media piece finishes. A new message's
    /// first piece must come after its predecessor's last, on each csid.
    pub fn media(&mut self, out: &mut Vec<u8>, piece: &MediaPiece<'_>) -> Result<(), EmitError> {
        let before = out.len();
        let index = self.append_media(out, piece)?;
        if out.len() > before {
            self.open_rest = self.media.get(index).map_or(0, |m| {
                m.header
                    .length
                    .saturating_sub(m.sent + m.staged.len() as u32)
            });
        }
        Ok(())
    }

    /// [`Emitter::media`]'s chunks; the index of the message's state.
    fn append_media(
        &mut self,
        out: &mut Vec<u8>,
        piece: &MediaPiece<'_>,
    ) -> Result<usize, EmitError> {
        let size = self.chunk_size;
        let index = self.stream_for(piece)?;
        let Some(m) = self.media.get_mut(index) else {
            return Err(EmitError::TooManyStreams);
        };
        if piece.is_first() {
            if m.sent < m.header.length || !m.staged.is_empty() {
                return Err(EmitError::OutOfOrder { csid: m.from_csid });
            }
            m.header = MessageHeader {
                csid: m.csid,
                ..piece.header
            };
            m.sent = 0;
        } else if piece.offset != m.sent + m.staged.len() as u32 {
            return Err(EmitError::OutOfOrder { csid: m.from_csid });
        }
        let mut bytes = piece.bytes;
        loop {
            let chunk = (m.header.length - m.sent).min(size) as usize;
            let need = chunk - m.staged.len();
            if bytes.len() < need || (chunk == 0 && m.sent > 0) {
                m.staged.extend_from_slice(bytes);
                return Ok(index);
            }
            let (now, rest) = bytes.split_at(need);
            chunk_header(out, if m.sent == 0 { 0 } else { 3 }, &m.header);
            out.extend_from_slice(&m.staged);
            out.extend_from_slice(now);
            // A staged chunk start is rare (a read ended inside a chunk);
            // an idle session keeps no memory for it.
            m.staged = Vec::new();
            m.sent += chunk as u32;
            bytes = rest;
            if m.sent == m.header.length {
                return Ok(index);
            }
        }
    }

    /// The media stream for the piece's sender csid, made on first use.
    fn stream_for(&mut self, piece: &MediaPiece<'_>) -> Result<usize, EmitError> {
        let from = piece.header.csid;
        if let Some(i) = self.media.iter().position(|m| m.from_csid == from) {
            return Ok(i);
        }
        let csid = FIRST_MEDIA_CSID + self.media.len() as u32;
        if csid > MAX_CSID {
            return Err(EmitError::TooManyStreams);
        }
        self.media.push(MediaOut {
            from_csid: from,
            csid,
            header: MessageHeader {
                csid,
                ..piece.header
            },
            sent: 0,
            staged: Vec::new(),
        });
        // A new entry has no message in progress.
        if let Some(m) = self.media.last_mut() {
            m.header.length = 0;
        }
        Ok(self.media.len() - 1)
    }
}

/// Appends a chunk header of format 0 or 3 for `h`.
fn chunk_header(out: &mut Vec<u8>, fmt: u8, h: &MessageHeader) {
    let fmt_bits = fmt << 6;
    match h.csid {
        2..=63 => out.push(fmt_bits | h.csid as u8),
        64..=319 => out.extend_from_slice(&[fmt_bits, (h.csid - 64) as u8]),
        _ => {
            let n = h.csid.saturating_sub(64).min(MAX_CSID - 64);
            out.extend_from_slice(&[fmt_bits | 1, (n & 0xff) as u8, (n >> 8) as u8]);
        }
    }
    let extended = h.timestamp >= EXTENDED;
    if fmt == 0 {
        let field = h.timestamp.min(EXTENDED);
        out.extend_from_slice(&field.to_be_bytes()[1..]);
        out.extend_from_slice(&h.length.to_be_bytes()[1..]);
        out.push(h.type_id);
        out.extend_from_slice(&h.stream_id.to_le_bytes());
    }
    // A type 3 chunk repeats the extended timestamp its message's type 0
    // header carried, as nginx-rtmp and ffmpeg read it.
    if extended {
        out.extend_from_slice(&h.timestamp.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::chunk::{types, ChunkLimits, ChunkParser};
    use proptest::prelude::*;

    fn limits() -> ChunkLimits {
        ChunkLimits {
            max_chunk_size: 1 << 20,
            max_command_size: 1 << 16,
            max_message_size: 1 << 20,
            max_chunk_streams: 64,
        }
    }

    /// Everything a parser reads back from `bytes`: whole messages, and
    /// media reassembled from its pieces.
    fn read_back(bytes: &[u8], chunk_size: u32) -> Vec<(MessageHeader, Vec<u8>)> {
        let mut parser = ChunkParser::new(limits());
        let mut set = Vec::new();
        let mut w = crate::rtmp::chunk::writer::ChunkWriter::new();
        let size = MessageHeader {
            csid: 2,
            timestamp: 0,
            type_id: types::SET_CHUNK_SIZE,
            stream_id: 0,
            length: 4,
        };
        w.write(&mut set, &size, &chunk_size.to_be_bytes());
        let mut input = set;
        input.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut media = crate::rtmp::chunk::Reassembler::default();
        let mut pos = 0;
        while pos < input.len() {
            let p = parser.advance(&input[pos..]).unwrap();
            pos += p.consumed;
            if let Some(m) = p.message {
                if m.header.type_id != types::SET_CHUNK_SIZE {
                    out.push((m.header, m.payload.to_vec()));
                }
            }
            out.extend(p.media.and_then(|piece| media.push(&piece)));
        }
        out
    }

    fn header(
        csid: u32,
        type_id: u8,
        timestamp: u32,
        stream_id: u32,
        length: usize,
    ) -> MessageHeader {
        MessageHeader {
            csid,
            timestamp,
            type_id,
            stream_id,
            length: length as u32,
        }
    }

    /// `bytes` of the message `header`, from `offset` in its payload.
    fn piece(header: MessageHeader, offset: usize, bytes: &[u8]) -> MediaPiece<'_> {
        MediaPiece {
            header,
            offset: offset as u32,
            bytes,
        }
    }

    #[test]
    fn whole_messages_read_back_with_the_guards_framing() {
        let mut e = Emitter::new(100);
        let mut out = Vec::new();
        let payload: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let h = header(9, types::COMMAND_AMF0, 0x0100_0000, 1, 250);
        e.whole(&mut out, COMMAND_CSID, &h, &payload);
        let back = read_back(&out, 100);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0.csid, COMMAND_CSID);
        assert_eq!(back[0].0.timestamp, 0x0100_0000);
        assert_eq!(back[0].1, payload);
    }

    #[test]
    fn media_pieces_are_written_only_in_whole_chunks() {
        let mut e = Emitter::new(100);
        let h = header(6, types::VIDEO, 40, 1, 250);
        let payload = vec![7u8; 250];
        let mut out = Vec::new();
        e.media(&mut out, &piece(h, 0, &payload[..60])).unwrap();
        assert!(out.is_empty(), "half a chunk waits");
        e.media(&mut out, &piece(h, 60, &payload[60..130])).unwrap();
        assert_eq!(out.len(), 12 + 100);
        e.media(&mut out, &piece(h, 130, &payload[130..])).unwrap();
        let back = read_back(&out, 100);
        assert_eq!(back, vec![(MessageHeader { csid: 4, ..h }, payload)]);
    }

    #[test]
    fn the_output_ends_inside_a_message_only_while_its_last_chunk_has_more_to_come() {
        let mut e = Emitter::new(100);
        let h = header(6, types::VIDEO, 40, 1, 250);
        let payload = vec![7u8; 250];
        let mut out = Vec::new();
        assert!(!e.ends_inside_message());
        e.media(&mut out, &piece(h, 0, &payload[..60])).unwrap();
        assert!(!e.ends_inside_message(), "nothing of it written yet");
        e.media(&mut out, &piece(h, 60, &payload[60..130])).unwrap();
        assert!(e.ends_inside_message(), "one chunk of three written");
        assert_eq!(e.rest_of_message(), 120, "30 bytes of it staged");
        let command = header(3, types::COMMAND_AMF0, 0, 1, 3);
        e.whole(&mut out, COMMAND_CSID, &command, &[1, 2, 3]);
        assert!(!e.ends_inside_message(), "a whole message came last");
        e.media(&mut out, &piece(h, 130, &payload[130..210]))
            .unwrap();
        assert!(e.ends_inside_message(), "a second chunk written");
        e.media(&mut out, &piece(h, 210, &payload[210..])).unwrap();
        assert!(!e.ends_inside_message(), "the message is complete");
        assert_eq!(e.rest_of_message(), 0);
    }

    #[test]
    fn a_piece_that_skips_bytes_is_refused() {
        let mut e = Emitter::new(100);
        let h = header(6, types::VIDEO, 0, 1, 250);
        let mut out = Vec::new();
        e.media(&mut out, &piece(h, 0, &[1; 10])).unwrap();
        assert!(e.media(&mut out, &piece(h, 20, &[1; 10])).is_err());
    }

    #[test]
    fn zero_length_media_is_one_header() {
        let mut e = Emitter::new(128);
        let mut out = Vec::new();
        let h = header(4, types::AUDIO, 5, 1, 0);
        e.media(
            &mut out,
            &MediaPiece {
                header: h,
                offset: 0,
                bytes: &[],
            },
        )
        .unwrap();
        assert_eq!(
            read_back(&out, 128),
            vec![(MessageHeader { csid: 4, ..h }, vec![])]
        );
    }

    proptest! {
        /// Whatever framing a sender used, what the emitter writes reads
        /// back as the same messages, in the same order of completion.
        #[test]
        fn reframing_keeps_every_message(
            messages in prop::collection::vec(
                (prop::sample::select(vec![4u32, 6, 7, 70, 400]),
                 prop::sample::select(vec![types::AUDIO, types::VIDEO, types::DATA_AMF0]),
                 0u32..100,
                 prop::collection::vec(any::<u8>(), 0..600)),
                1..12),
            base in prop::sample::select(vec![0u32, 0x00FF_FF00]),
            in_size in 1u32..300,
            out_size in 1u32..700,
        ) {
            // The writer takes its new chunk size from the SetChunkSize it
            // writes.
            let mut w = crate::rtmp::chunk::writer::ChunkWriter::new();
            let mut input = Vec::new();
            let set = header(2, types::SET_CHUNK_SIZE, 0, 0, 4);
            w.write(&mut input, &set, &in_size.to_be_bytes());
            let mut expected = Vec::new();
            // Timestamps rise, across the extended-timestamp boundary when
            // `base` is near it.
            let mut ts = base;
            for (csid, t, step, payload) in &messages {
                ts += step;
                let h = header(*csid, *t, ts, 1, payload.len());
                w.write(&mut input, &h, payload);
                expected.push((*t, ts, payload.clone()));
            }
            let mut parser = ChunkParser::new(limits());
            let mut e = Emitter::new(out_size);
            let mut out = Vec::new();
            let mut pos = 0;
            while pos < input.len() {
                let p = parser.advance(&input[pos..]).unwrap();
                pos += p.consumed;
                if let Some(m) = p.message {
                    if m.header.type_id != types::SET_CHUNK_SIZE {
                        e.whole(&mut out, COMMAND_CSID, &m.header, m.payload);
                    }
                }
                if let Some(piece) = p.media {
                    e.media(&mut out, &piece).unwrap();
                }
            }
            let back: Vec<_> = read_back(&out, out_size)
                .into_iter()
                .map(|(h, p)| (h.type_id, h.timestamp, p))
                .collect();
            prop_assert_eq!(back, expected);
        }
    }
}
