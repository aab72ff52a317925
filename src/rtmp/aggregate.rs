//! Aggregate messages (type 22): several audio, video or data messages in
//! one, each with its own small header, as FLV tags are laid out. An origin
//! may send them; a client may not (the guard refuses them).

use std::fmt;

/// Largest aggregate the guard holds whole to check its parts. Origins
/// aggregate a few frames; anything larger is refused.
pub const MAX_AGGREGATE: u32 = 1 << 20;

/// One message inside an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubMessage {
    pub type_id: u8,
    pub length: u32,
    pub timestamp: u32,
    pub stream_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateError(&'static str);

impl fmt::Display for AggregateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "aggregate message: {}", self.0)
    }
}

impl std::error::Error for AggregateError {}

/// Header (11 bytes) and back pointer (4) around each part.
const SUB_HEADER: usize = 11;
const BACK_POINTER: usize = 4;

/// The parts of an aggregate's payload; an error if they do not tile it
/// exactly.
pub fn sub_messages(payload: &[u8]) -> Result<Vec<SubMessage>, AggregateError> {
    let mut parts = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let Some(h) = rest.get(..SUB_HEADER) else {
            return Err(AggregateError("a part's header is cut short"));
        };
        let be24 = |b: &[u8]| (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let part = SubMessage {
            type_id: h[0],
            length: be24(&h[1..4]),
            timestamp: be24(&h[4..7]) | (u32::from(h[7]) << 24),
            stream_id: be24(&h[8..11]),
        };
        let total = SUB_HEADER + part.length as usize + BACK_POINTER;
        let Some(next) = rest.get(total..) else {
            return Err(AggregateError("a part runs past the message"));
        };
        parts.push(part);
        rest = next;
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(type_id: u8, stream_id: u32, data: &[u8]) -> Vec<u8> {
        let mut out = vec![type_id];
        out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[0, 0, 40, 0]);
        out.extend_from_slice(&stream_id.to_be_bytes()[1..]);
        out.extend_from_slice(data);
        out.extend_from_slice(&((SUB_HEADER + data.len()) as u32).to_be_bytes());
        out
    }

    #[test]
    fn parts_are_read_with_their_stream_ids() {
        let mut payload = part(9, 1, &[0x17, 1, 2]);
        payload.extend(part(8, 0, &[0xaf]));
        let parts = sub_messages(&payload).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].type_id, parts[0].stream_id, parts[0].length),
            (9, 1, 3)
        );
        assert_eq!(
            (parts[1].type_id, parts[1].stream_id, parts[1].timestamp),
            (8, 0, 40)
        );
    }

    #[test]
    fn parts_that_do_not_tile_the_payload_are_errors() {
        let payload = part(9, 1, &[1, 2, 3]);
        assert!(sub_messages(&payload[..payload.len() - 1]).is_err());
        assert!(sub_messages(&payload[..5]).is_err());
        assert_eq!(sub_messages(&[]), Ok(vec![]));
    }
}
