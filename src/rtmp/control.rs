//! Protocol control and user control messages, read and written.
//!
//! These are per hop: the guard never forwards a peer's SetChunkSize, Abort,
//! Acknowledgement, Window Acknowledgement Size, Set Peer Bandwidth or ping;
//! it reads them, acts on them for that leg, and writes its own. Only the
//! user control events that name a message stream travel on.

use std::fmt;

use super::chunk::types;

/// User control event types (RTMP 7.1.7).
pub mod event {
    pub const STREAM_BEGIN: u16 = 0;
    pub const STREAM_EOF: u16 = 1;
    pub const STREAM_DRY: u16 = 2;
    pub const SET_BUFFER_LENGTH: u16 = 3;
    pub const STREAM_IS_RECORDED: u16 = 4;
    pub const PING_REQUEST: u16 = 6;
    pub const PING_RESPONSE: u16 = 7;
}

/// A protocol control or user control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    SetChunkSize(u32),
    Abort(u32),
    Acknowledgement(u32),
    WindowAckSize(u32),
    SetPeerBandwidth { size: u32, limit: u8 },
    User(UserEvent),
}

/// A user control event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserEvent {
    /// An event about message stream `stream_id`, forwarded as sent.
    Stream {
        event: u16,
        stream_id: u32,
    },
    SetBufferLength {
        stream_id: u32,
        millis: u32,
    },
    PingRequest(u32),
    PingResponse(u32),
    /// Anything else (servers' own extensions): dropped.
    Other(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    pub type_id: u8,
    pub length: usize,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "control message type {} with {} bytes",
            self.type_id, self.length
        )
    }
}

impl std::error::Error for ControlError {}

/// Reads a control message (types 1-6).
pub fn parse(type_id: u8, payload: &[u8]) -> Result<Control, ControlError> {
    let bad = || ControlError {
        type_id,
        length: payload.len(),
    };
    let u32_at = |at: usize| -> Result<u32, ControlError> {
        payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(bad)
    };
    Ok(match type_id {
        types::SET_CHUNK_SIZE => Control::SetChunkSize(u32_at(0)?),
        types::ABORT => Control::Abort(u32_at(0)?),
        types::ACKNOWLEDGEMENT => Control::Acknowledgement(u32_at(0)?),
        types::WINDOW_ACK_SIZE => Control::WindowAckSize(u32_at(0)?),
        types::SET_PEER_BANDWIDTH => Control::SetPeerBandwidth {
            size: u32_at(0)?,
            limit: *payload.get(4).ok_or_else(bad)?,
        },
        types::USER_CONTROL => {
            let kind = payload
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(bad)?;
            Control::User(match kind {
                event::STREAM_BEGIN
                | event::STREAM_EOF
                | event::STREAM_DRY
                | event::STREAM_IS_RECORDED => UserEvent::Stream {
                    event: kind,
                    stream_id: u32_at(2)?,
                },
                event::SET_BUFFER_LENGTH => UserEvent::SetBufferLength {
                    stream_id: u32_at(2)?,
                    millis: u32_at(6)?,
                },
                event::PING_REQUEST => UserEvent::PingRequest(u32_at(2)?),
                event::PING_RESPONSE => UserEvent::PingResponse(u32_at(2)?),
                other => UserEvent::Other(other),
            })
        }
        _ => return Err(bad()),
    })
}

impl Control {
    /// The message type and payload that carry this control message.
    pub fn encode(self) -> (u8, Vec<u8>) {
        let word = |t: u8, v: u32| (t, v.to_be_bytes().to_vec());
        match self {
            Control::SetChunkSize(n) => word(types::SET_CHUNK_SIZE, n),
            Control::Abort(csid) => word(types::ABORT, csid),
            Control::Acknowledgement(n) => word(types::ACKNOWLEDGEMENT, n),
            Control::WindowAckSize(n) => word(types::WINDOW_ACK_SIZE, n),
            Control::SetPeerBandwidth { size, limit } => {
                let mut p = size.to_be_bytes().to_vec();
                p.push(limit);
                (types::SET_PEER_BANDWIDTH, p)
            }
            Control::User(e) => (types::USER_CONTROL, e.encode()),
        }
    }
}

impl UserEvent {
    fn encode(self) -> Vec<u8> {
        let mut p = Vec::with_capacity(10);
        let (kind, words): (u16, &[u32]) = match &self {
            UserEvent::Stream { event, stream_id } => (*event, std::slice::from_ref(stream_id)),
            UserEvent::SetBufferLength { stream_id, millis } => {
                p.extend_from_slice(&event::SET_BUFFER_LENGTH.to_be_bytes());
                p.extend_from_slice(&stream_id.to_be_bytes());
                p.extend_from_slice(&millis.to_be_bytes());
                return p;
            }
            UserEvent::PingRequest(t) => (event::PING_REQUEST, std::slice::from_ref(t)),
            UserEvent::PingResponse(t) => (event::PING_RESPONSE, std::slice::from_ref(t)),
            UserEvent::Other(kind) => (*kind, &[]),
        };
        p.extend_from_slice(&kind.to_be_bytes());
        for w in words {
            p.extend_from_slice(&w.to_be_bytes());
        }
        p
    }
}

/// When the guard owes a peer an Acknowledgement: after each window of
/// bytes received from it, once the peer has said how large a window is.
#[derive(Debug, Default, Clone)]
pub struct AckWindow {
    received: u64,
    window: Option<u32>,
    acked: u64,
}

impl AckWindow {
    /// The peer's Window Acknowledgement Size.
    pub fn set_window(&mut self, size: u32) {
        self.window = (size > 0).then_some(size);
    }

    /// Counts `n` bytes received; returns the sequence number to
    /// acknowledge, if a window is full.
    pub fn received(&mut self, n: usize) -> Option<u32> {
        self.received += n as u64;
        let window = u64::from(self.window?);
        if self.received - self.acked < window {
            return None;
        }
        self.acked = self.received;
        // The sequence number is the byte count, modulo 2^32.
        Some(self.received as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_message_round_trips() {
        for c in [
            Control::SetChunkSize(4096),
            Control::Abort(5),
            Control::Acknowledgement(123_456),
            Control::WindowAckSize(2_500_000),
            Control::SetPeerBandwidth {
                size: 2_500_000,
                limit: 2,
            },
            Control::User(UserEvent::Stream {
                event: event::STREAM_BEGIN,
                stream_id: 1,
            }),
            Control::User(UserEvent::SetBufferLength {
                stream_id: 1,
                millis: 3000,
            }),
            Control::User(UserEvent::PingRequest(77)),
            Control::User(UserEvent::PingResponse(77)),
        ] {
            let (t, p) = c.encode();
            assert_eq!(parse(t, &p), Ok(c));
        }
    }

    #[test]
    fn short_control_messages_are_errors() {
        assert!(parse(types::SET_CHUNK_SIZE, &[0, 0, 1]).is_err());
        assert!(parse(types::USER_CONTROL, &[0]).is_err());
        assert!(parse(types::USER_CONTROL, &[0, 3, 0, 0, 0, 1]).is_err());
        assert!(parse(types::SET_PEER_BANDWIDTH, &[0, 0, 0, 1]).is_err());
    }

    #[test]
    fn acks_come_once_per_window_and_only_after_one_is_set() {
        let mut w = AckWindow::default();
        assert_eq!(w.received(10_000), None);
        w.set_window(5_000);
        assert_eq!(w.received(1), Some(10_001));
        assert_eq!(w.received(4_999), None);
        assert_eq!(w.received(1), Some(15_001));
    }
}
