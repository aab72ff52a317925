//! Messages the guard itself sends to a client: the `_error` that refuses a
//! `connect`, and the `onStatus` that refuses a `publish` or `play`.
//!
//! They are encoded with the AMF0 writer in `amf0` and the chunk writer in
//! `chunk`. The info object's keys go out in a fixed order (`level`,
//! `code`, `description`), as origins send them. The guard never sent a
//! SetChunkSize to the client, so a `connect` refusal uses the default
//! chunk size of 128.

use super::amf0::{self, Amf0Value};
use super::chunk::writer::ChunkWriter;
use super::chunk::{types, MessageHeader, DEFAULT_CHUNK_SIZE};

/// NetConnection status codes the guard replies with.
pub const CONNECT_REJECTED: &str = "NetConnection.Connect.Rejected";
pub const CONNECT_FAILED: &str = "NetConnection.Connect.Failed";
/// Sent (level error) to a session the operator ends.
pub const CONNECTION_CLOSED: &str = "NetConnection.Connect.Closed";

/// Longest client-chosen text echoed back in a description.
const MAX_ECHO: usize = 128;

/// `_error` for a `connect`: transaction id, null, info object. Before the
/// origin is involved, the client reads chunks of the default size.
pub fn connect_error(transaction_id: f64, code: &str, description: &str) -> Vec<u8> {
    let out = Output {
        chunk_size: DEFAULT_CHUNK_SIZE,
        csid: 3,
        stream_id: 0,
    };
    command(
        "_error",
        transaction_id,
        out,
        status_object(code, description),
    )
}

/// Where a reply goes in a stream the client is already reading.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// The chunk size the client reads with (the origin's last SetChunkSize).
    pub chunk_size: u32,
    /// A chunk stream with no message in progress.
    pub csid: u32,
    /// The message stream id.
    pub stream_id: u32,
}

/// `onStatus` with level `error` (publish/play refusal).
pub fn stream_error(out: Output, code: &str, description: &str) -> Vec<u8> {
    command("onStatus", 0.0, out, status_object(code, description))
}

/// Makes client-chosen text safe to echo: bounded, no control characters.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ECHO)
        .collect()
}

/// The info object: level, code, description, in that order.
fn status_object(code: &str, description: &str) -> Amf0Value {
    Amf0Value::Object(vec![
        ("level".into(), Amf0Value::String("error".into())),
        ("code".into(), Amf0Value::String(code.into())),
        ("description".into(), Amf0Value::String(description.into())),
    ])
}

/// The command message `name`, transaction id, null, `info`, in chunks. A
/// description too long to encode (never, for the bounded texts the guard
/// sends) gives no reply at all.
fn command(name: &str, transaction_id: f64, out: Output, info: Amf0Value) -> Vec<u8> {
    let payload = match amf0::encode(&[
        Amf0Value::String(name.into()),
        Amf0Value::Number(transaction_id),
        Amf0Value::Null,
        info,
    ]) {
        Ok(p) => p,
        Err(_) => return Vec::new(),
    };
    let Ok(length) = u32::try_from(payload.len()) else {
        return Vec::new();
    };
    // The csid and chunk size must be the ones free and in force in a
    // stream the origin is also writing.
    let mut writer = ChunkWriter::new();
    writer.set_chunk_size(out.chunk_size);
    let header = MessageHeader {
        csid: out.csid,
        timestamp: 0,
        type_id: types::COMMAND_AMF0,
        stream_id: out.stream_id,
        length,
    };
    let mut bytes = Vec::new();
    writer.write(&mut bytes, &header, &payload);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::amf0::{self, Amf0Value as V};
    use crate::rtmp::chunk::{test_limits, ChunkParser};
    use crate::rtmp::command;

    #[test]
    fn connect_error_reads_back_as_a_rejection() {
        // Long enough to span two 128-byte chunks.
        let description = format!("application \"{}\" is not served here", "n".repeat(100));
        let bytes = connect_error(1.0, CONNECT_REJECTED, &description);
        assert!(bytes.len() > 200);
        let mut parser = ChunkParser::new(test_limits());
        let progress = parser.advance(&bytes).unwrap();
        assert_eq!(progress.consumed, bytes.len());
        let msg = progress.message.unwrap();
        let cmd = command::decode(msg.header.type_id, msg.payload, 8).unwrap();
        assert_eq!(cmd.name, "_error");
        assert_eq!(cmd.transaction_id, 1.0);
        let info = &cmd.arguments[0];
        assert_eq!(info.get("code"), Some(&V::String(CONNECT_REJECTED.into())));
        assert_eq!(info.get("level"), Some(&V::String("error".into())));
        let _ = amf0::read_all(msg.payload, 8).unwrap();
    }

    #[test]
    fn the_info_object_keys_are_level_code_description_in_that_order() {
        let bytes = connect_error(1.0, CONNECT_REJECTED, "no");
        let mut parser = ChunkParser::new(test_limits());
        let msg = parser.advance(&bytes).unwrap().message.unwrap();
        assert_eq!(msg.header.type_id, 20);
        let values = amf0::read_all(msg.payload, 8).unwrap();
        let keys: Vec<&str> = values[3]
            .properties()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["level", "code", "description"]);
        // The bytes themselves: "_error", 1, null, then the object.
        let mut expected = vec![2, 0, 6];
        expected.extend_from_slice(b"_error");
        expected.push(0);
        expected.extend_from_slice(&1.0f64.to_be_bytes());
        expected.extend_from_slice(&[5, 3]);
        for (key, value) in [
            ("level", "error"),
            ("code", CONNECT_REJECTED),
            ("description", "no"),
        ] {
            expected.extend_from_slice(&(key.len() as u16).to_be_bytes());
            expected.extend_from_slice(key.as_bytes());
            expected.push(2);
            expected.extend_from_slice(&(value.len() as u16).to_be_bytes());
            expected.extend_from_slice(value.as_bytes());
        }
        expected.extend_from_slice(&[0, 0, 9]);
        assert_eq!(msg.payload, expected);
    }

    #[test]
    fn stream_error_uses_the_given_chunk_size_csid_and_stream() {
        let out = Output {
            chunk_size: 4096,
            csid: 9,
            stream_id: 1,
        };
        let bytes = stream_error(out, "NetStream.Publish.BadName", &"d".repeat(300));
        let mut parser = ChunkParser::new(test_limits());
        // Tell the parser the origin's chunk size, as the client knows it.
        let mut set = Vec::new();
        crate::rtmp::chunk::writer::ChunkWriter::new().write(
            &mut set,
            &MessageHeader {
                csid: 2,
                timestamp: 0,
                type_id: 1,
                stream_id: 0,
                length: 4,
            },
            &4096u32.to_be_bytes(),
        );
        parser.advance(&set).unwrap();
        let p = parser.advance(&bytes).unwrap();
        assert_eq!(p.consumed, bytes.len(), "one chunk at 4096");
        let m = p.message.unwrap();
        assert_eq!((m.header.csid, m.header.stream_id), (9, 1));
        let cmd = command::decode(m.header.type_id, m.payload, 8).unwrap();
        assert_eq!(cmd.name, "onStatus");
    }

    #[test]
    fn sanitize_bounds_and_strips_control_characters() {
        assert_eq!(sanitize("li\u{0}ve\n"), "live");
        assert_eq!(sanitize(&"x".repeat(1000)).len(), MAX_ECHO);
    }
}
