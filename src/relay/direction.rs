//! One direction of the relay, without I/O: bytes read from one peer go
//! in, the bytes to write to the other peer come out, in the guard's own
//! framing, holding only what the session's rules allowed.
//!
//! - Commands and data are read whole, judged, and written whole; a
//!   client's type 17 and 15 go on as 20 and 18. A client's command that
//!   names a stream the guard renamed (a `stream_key` publish's key, a
//!   name the auth service's 3xx renamed) is written anew, naming the
//!   stream as the origin must know it.
//! - Media is judged at the start of each message and streamed chunk by
//!   chunk, never assembled.
//! - Protocol control is per hop: a peer's SetChunkSize, Acknowledgement
//!   and ping are answered for its own leg and never forwarded; an Abort
//!   ends the session; its Window Acknowledgement Size and Set Peer
//!   Bandwidth set this leg's acknowledgements and are said again, by the
//!   guard, on the other. User control events that name a stream travel
//!   on.
//!
//! The relay (`super`) does the reading, writing, asking and reporting;
//! the fuzz target and the property tests drive this directly.

use crate::policy::session::{Answer, FromOrigin, Now, SessionRules};
use crate::policy::AuthQuery;
use crate::rtmp::aggregate::{sub_messages, MAX_AGGREGATE};
use crate::rtmp::cache::{prefetch, prefetch_first};
use crate::rtmp::chunk::{types, ChunkParser, MediaPiece, Message, MessageClass, MessageHeader};
use crate::rtmp::command;
use crate::rtmp::control::{self, AckWindow, Control, UserEvent};
use crate::rtmp::emit::{Emitter, COMMAND_CSID, CONTROL_CSID};
use crate::verdict::{Denial, Refusal, Verdict};

/// Which peer a direction reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Origin,
}

/// A publish or play waiting for the auth service, and the message to
/// forward if it allows it.
#[derive(Debug)]
pub struct Held {
    pub query: AuthQuery,
    header: MessageHeader,
    payload: Vec<u8>,
}

/// What made a direction stop reading before the end of its input.
#[derive(Debug)]
pub enum Stop {
    /// A publish or play to hold until the auth service answers; then
    /// [`Direction::resume`], and feed the rest.
    Held(Held),
    /// The client was refused (and the refusal reported and enforced): its
    /// `onStatus`, for a publish or play.
    Refused(Option<Denial>),
    /// The origin broke the protocol or the flows.
    Violation(String),
}

/// How much input a [`Direction::feed`] took, and why it stopped early.
#[derive(Debug)]
pub struct Fed {
    pub consumed: usize,
    pub stop: Option<Stop>,
}

/// A message as it was forwarded, for tests and the fuzz target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    Whole(MessageHeader, Vec<u8>),
    /// A piece of a media message, from `offset` in its payload.
    Piece(MessageHeader, u32, Vec<u8>),
}

/// Where a direction's decisions go.
pub struct Sink<'a> {
    /// Bytes for the peer this direction writes to.
    pub out: &'a mut Vec<u8>,
    /// Control messages the guard owes the peer it reads from (written by
    /// the other direction).
    pub to_sender: &'a mut Vec<Control>,
    /// Reports a client refusal; true to enforce it (false: dry run lets
    /// it through).
    pub enforce: &'a mut dyn FnMut(&Refusal) -> bool,
    /// Set when a publish or play opened, so the operator sees it.
    pub opened: bool,
    /// Every message forwarded, when a test wants to know.
    pub forwarded: Option<&'a mut Vec<Forwarded>>,
}

/// What a direction does with the media message in progress on a csid.
#[derive(Debug, Clone)]
struct MediaRoute {
    csid: u32,
    pass: bool,
    /// An origin's aggregate, held whole until its parts are checked.
    aggregate: Option<Vec<u8>>,
}

/// One direction's state.
#[derive(Debug)]
pub struct Direction {
    side: Side,
    parser: ChunkParser,
    emitter: Emitter,
    media: Vec<MediaRoute>,
    acks: AckWindow,
}

impl Direction {
    /// Reads from `side` with `parser` (which may be mid-stream), writes
    /// to the other peer in `chunk_size` chunks (which that peer must have
    /// been told).
    pub fn new(side: Side, parser: ChunkParser, chunk_size: u32) -> Direction {
        Direction {
            side,
            parser,
            emitter: Emitter::new(chunk_size),
            media: Vec::new(),
            acks: AckWindow::default(),
        }
    }

    /// Writes one of the guard's own control messages to the peer.
    pub fn own_control(&mut self, out: &mut Vec<u8>, control: Control) {
        say(&mut self.emitter, out, control);
    }

    /// Writes one of the guard's own commands to the peer.
    pub fn own_command(&mut self, out: &mut Vec<u8>, header: &MessageHeader, payload: &[u8]) {
        self.emitter.whole(out, COMMAND_CSID, header, payload);
    }

    /// Starts loading this direction's state into the cache: its own, and
    /// its per-stream tables'.
    pub fn prefetch(&self) {
        prefetch(std::slice::from_ref(self));
        self.parser.prefetch();
        self.emitter.prefetch();
        prefetch_first(&self.media);
    }

    /// True when the output so far ends inside a media message whose rest
    /// is still to be read.
    pub fn ends_inside_message(&self) -> bool {
        self.emitter.ends_inside_message()
    }

    /// How many payload bytes of that message are still to be read.
    pub fn rest_of_message(&self) -> usize {
        self.emitter.rest_of_message()
    }

    /// Counts bytes read from the sender; an Acknowledgement it is owed.
    pub fn received(&mut self, n: usize) -> Option<Control> {
        self.acks.received(n).map(Control::Acknowledgement)
    }

    /// Parses and judges `input`, writing what passes to `sink`. Stops
    /// early on a held publish or play, or an enforced refusal.
    pub fn feed(
        &mut self,
        input: &[u8],
        rules: &mut SessionRules,
        now: Now,
        sink: &mut Sink<'_>,
    ) -> Fed {
        let mut pos = 0;
        while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
            let step = {
                let progress = match self.parser.advance(rest) {
                    Ok(p) => p,
                    Err(e) => {
                        let stop = self.refuse(Refusal::violation(e.to_string()), sink);
                        return Fed {
                            consumed: pos,
                            stop: Some(stop),
                        };
                    }
                };
                pos += progress.consumed;
                let (message, piece) = (progress.message, progress.media);
                step(
                    self.side,
                    &mut self.emitter,
                    &mut self.media,
                    &mut self.acks,
                    message,
                    piece,
                    rules,
                    now,
                    sink,
                )
            };
            if let Some(stop) = step {
                return Fed {
                    consumed: pos,
                    stop: Some(stop),
                };
            }
        }
        Fed {
            consumed: pos,
            stop: None,
        }
    }

    /// Applies the auth service's answer to a held publish or play, and
    /// forwards it (under the name the answer gave it) if that allows it.
    pub fn resume(
        &mut self,
        held: Held,
        answer: Answer,
        rules: &mut SessionRules,
        sink: &mut Sink<'_>,
    ) -> Option<Stop> {
        let verdict = rules.answer(&held.query, answer);
        if let Some(stop) = apply(verdict, sink) {
            return Some(stop);
        }
        let message = Message {
            header: held.header,
            payload: &held.payload,
        };
        forward_client(self.side, &mut self.emitter, sink, rules, &message)
    }

    fn refuse(&self, refusal: Refusal, sink: &mut Sink<'_>) -> Stop {
        refuse(self.side, refusal, sink)
    }
}

/// Ends the direction for something a peer sent: a client's refusal is
/// reported (and enforced: what cannot be read cannot be let through);
/// the origin's is a violation, never scored on the client.
fn refuse(side: Side, refusal: Refusal, sink: &mut Sink<'_>) -> Stop {
    match side {
        Side::Client => {
            (sink.enforce)(&refusal);
            Stop::Refused(refusal.status)
        }
        Side::Origin => Stop::Violation(refusal.detail),
    }
}

/// Carries out a verdict on the client's message. `Some`: the direction
/// stops.
fn apply(verdict: Verdict<AuthQuery>, sink: &mut Sink<'_>) -> Option<Stop> {
    match verdict {
        Verdict::Pass | Verdict::Ask(_) => None,
        Verdict::Opened => {
            sink.opened = true;
            None
        }
        Verdict::Refuse(refusal) if (sink.enforce)(&refusal) => Some(Stop::Refused(refusal.status)),
        Verdict::Refuse(_) => None,
    }
}

/// Writes a control message of the guard's own; returns it.
fn say(emitter: &mut Emitter, out: &mut Vec<u8>, control: Control) -> (MessageHeader, Vec<u8>) {
    let (type_id, payload) = control.encode();
    let header = MessageHeader::for_payload(CONTROL_CSID, type_id, 0, &payload);
    emitter.whole(out, CONTROL_CSID, &header, &payload);
    (header, payload)
}

/// Forwards a client's command or data message that passed, as the
/// origin must read it: with the stream name the guard decided on.
fn forward_client(
    side: Side,
    emitter: &mut Emitter,
    sink: &mut Sink<'_>,
    rules: &SessionRules,
    m: &Message<'_>,
) -> Option<Stop> {
    match rules.for_origin(m) {
        Ok(None) => forward_whole(emitter, sink, &m.header, m.payload),
        Ok(Some(renamed)) => forward_whole(emitter, sink, &m.header, &renamed),
        Err(refusal) => return Some(refuse(side, refusal, sink)),
    }
    None
}

fn forward_whole(
    emitter: &mut Emitter,
    sink: &mut Sink<'_>,
    header: &MessageHeader,
    payload: &[u8],
) {
    emitter.whole(sink.out, COMMAND_CSID, header, payload);
    if let Some(log) = sink.forwarded.as_deref_mut() {
        log.push(Forwarded::Whole(*header, payload.to_vec()));
    }
}

/// Handles one thing the parser read.
#[allow(clippy::too_many_arguments)]
fn step(
    side: Side,
    emitter: &mut Emitter,
    media: &mut Vec<MediaRoute>,
    acks: &mut AckWindow,
    message: Option<Message<'_>>,
    piece: Option<MediaPiece<'_>>,
    rules: &mut SessionRules,
    now: Now,
    sink: &mut Sink<'_>,
) -> Option<Stop> {
    if let Some(piece) = piece {
        return media_piece(side, emitter, media, &piece, rules, sink);
    }
    let m = message?;
    if MessageClass::of(m.header.type_id) == MessageClass::Control {
        return control_message(side, emitter, acks, &m, sink);
    }
    let (type_id, payload) = match command::canonical(m.header.type_id, m.payload) {
        Ok(c) => c,
        Err(e) => return Some(refuse(side, Refusal::violation(e.to_string()), sink)),
    };
    let header = MessageHeader {
        type_id,
        ..m.header
    };
    let message = Message { header, payload };
    match side {
        Side::Client => match rules.on_message(&message, now) {
            Verdict::Ask(query) => Some(Stop::Held(Held {
                query,
                header,
                payload: payload.to_vec(),
            })),
            verdict => {
                if let Some(stop) = apply(verdict, sink) {
                    return Some(stop);
                }
                forward_client(side, emitter, sink, rules, &message)
            }
        },
        Side::Origin => match rules.on_origin_message(&message) {
            FromOrigin::Pass => {
                forward_whole(emitter, sink, &header, payload);
                None
            }
            FromOrigin::Rewrite(rewritten) => {
                forward_whole(emitter, sink, &header, &rewritten);
                None
            }
            FromOrigin::Drop => None,
            FromOrigin::Violation(why) => Some(Stop::Violation(why)),
        },
    }
}

/// A piece of a media message: judged at its start, then streamed.
fn media_piece(
    side: Side,
    emitter: &mut Emitter,
    media: &mut Vec<MediaRoute>,
    piece: &MediaPiece<'_>,
    rules: &mut SessionRules,
    sink: &mut Sink<'_>,
) -> Option<Stop> {
    let csid = piece.header.csid;
    if piece.is_first() {
        let pass = match side {
            Side::Client => match rules.on_media(&piece.header) {
                Ok(()) => true,
                Err(refusal) => return Some(refuse(side, refusal, sink)),
            },
            Side::Origin => match rules.on_origin_media(&piece.header) {
                FromOrigin::Pass | FromOrigin::Rewrite(_) => true,
                FromOrigin::Drop => false,
                FromOrigin::Violation(why) => return Some(Stop::Violation(why)),
            },
        };
        let aggregate =
            (side == Side::Origin && piece.header.type_id == types::AGGREGATE).then(Vec::new);
        if aggregate.is_some() && piece.header.length > MAX_AGGREGATE {
            let why = format!("an aggregate of {} bytes", piece.header.length);
            return Some(Stop::Violation(why));
        }
        let route = MediaRoute {
            csid,
            pass,
            aggregate,
        };
        match media.iter_mut().find(|r| r.csid == csid) {
            Some(r) => *r = route,
            None => media.push(route),
        }
    }
    let route = media.iter_mut().find(|r| r.csid == csid && r.pass)?;
    if let Some(held) = route.aggregate.as_mut() {
        held.extend_from_slice(piece.bytes);
        if !piece.is_last() {
            return None;
        }
        let payload = std::mem::take(held);
        return aggregate(emitter, &piece.header, &payload, rules, sink);
    }
    if let Err(e) = emitter.media(sink.out, piece) {
        return Some(refuse(side, Refusal::violation(e.to_string()), sink));
    }
    if let Some(log) = sink.forwarded.as_deref_mut() {
        log.push(Forwarded::Piece(
            piece.header,
            piece.offset,
            piece.bytes.to_vec(),
        ));
    }
    None
}

/// An origin's whole aggregate: forwarded only if every part is audio,
/// video or data on a stream a play is open on; dropped if a part is for a
/// stream the client just closed.
fn aggregate(
    emitter: &mut Emitter,
    header: &MessageHeader,
    payload: &[u8],
    rules: &SessionRules,
    sink: &mut Sink<'_>,
) -> Option<Stop> {
    let parts = match sub_messages(payload) {
        Ok(parts) => parts,
        Err(e) => return Some(Stop::Violation(e.to_string())),
    };
    let mut pass = true;
    for part in parts {
        if !matches!(part.type_id, types::AUDIO | types::VIDEO | types::DATA_AMF0) {
            let why = format!("message type {} inside an aggregate", part.type_id);
            return Some(Stop::Violation(why));
        }
        let part_header = MessageHeader {
            type_id: part.type_id,
            stream_id: part.stream_id,
            length: part.length,
            ..*header
        };
        match rules.on_origin_media(&part_header) {
            FromOrigin::Pass | FromOrigin::Rewrite(_) => {}
            FromOrigin::Drop => pass = false,
            FromOrigin::Violation(why) => return Some(Stop::Violation(why)),
        }
    }
    if pass {
        forward_whole(emitter, sink, header, payload);
    }
    None
}

/// A control message: handled for this leg; the window and bandwidth are
/// said again on the other; stream events travel on.
fn control_message(
    side: Side,
    emitter: &mut Emitter,
    acks: &mut AckWindow,
    m: &Message<'_>,
    sink: &mut Sink<'_>,
) -> Option<Stop> {
    let control = match control::parse(m.header.type_id, m.payload) {
        Ok(c) => c,
        Err(e) => return Some(refuse(side, Refusal::violation(e.to_string()), sink)),
    };
    let mut say_on = |control: Control| {
        let (header, payload) = say(emitter, sink.out, control);
        if let Some(log) = sink.forwarded.as_deref_mut() {
            log.push(Forwarded::Whole(header, payload));
        }
    };
    match control {
        // The parser applied it to this direction.
        Control::SetChunkSize(_) | Control::Acknowledgement(_) => {}
        Control::Abort(csid) => {
            let why = format!("abort of chunk stream {csid}");
            return Some(refuse(side, Refusal::violation(why), sink));
        }
        Control::WindowAckSize(size) => {
            acks.set_window(size);
            say_on(control);
        }
        Control::SetPeerBandwidth { .. } => say_on(control),
        Control::User(UserEvent::PingRequest(t)) => {
            sink.to_sender
                .push(Control::User(UserEvent::PingResponse(t)));
        }
        Control::User(UserEvent::PingResponse(_)) | Control::User(UserEvent::Other(_)) => {}
        Control::User(UserEvent::Stream { .. })
        | Control::User(UserEvent::SetBufferLength { .. }) => say_on(control),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::chunk::writer::ChunkWriter;

    fn part(type_id: u8, stream_id: u32, data: &[u8]) -> Vec<u8> {
        let mut out = vec![type_id];
        out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&stream_id.to_be_bytes()[1..]);
        out.extend_from_slice(data);
        out.extend_from_slice(&((11 + data.len()) as u32).to_be_bytes());
        out
    }

    /// Feeds an origin's aggregate on stream 1 (where the fuzz harness's
    /// session has a play open): how many messages were forwarded, or why
    /// the direction stopped. The harness also checks the output is exact.
    fn origin_aggregate(payload: &[u8]) -> Result<usize, String> {
        let h = MessageHeader::for_payload(6, types::AGGREGATE, 1, payload);
        let mut data = vec![1u8];
        ChunkWriter::new().write(&mut data, &h, payload);
        let outcome = crate::fuzz::relay_outcome(&data).expect("exact output");
        match outcome.ended {
            Some(why) => Err(why),
            None => Ok(outcome.forwarded),
        }
    }

    #[test]
    fn an_origins_aggregate_passes_only_with_every_part_on_an_open_play() {
        let mut good = part(types::VIDEO, 1, &[0x17, 1]);
        good.extend(part(types::AUDIO, 1, &[0xaf]));
        assert_eq!(origin_aggregate(&good), Ok(1));
        let mut foreign = part(types::VIDEO, 1, &[0x17, 1]);
        foreign.extend(part(types::VIDEO, 7, &[0x17, 1]));
        assert!(origin_aggregate(&foreign).is_err(), "a part for stream 7");
        let command = part(types::COMMAND_AMF0, 1, &[2, 0, 1, b'x']);
        assert!(origin_aggregate(&command).is_err(), "a command inside");
        let torn = part(types::VIDEO, 1, &[1, 2, 3]);
        assert!(origin_aggregate(&torn[..torn.len() - 2]).is_err());
    }
}
