//! Messages the guard itself sends to a client: the `_error` that refuses a
//! `connect`, and the `onStatus` that refuses a `publish` or `play`.
//!
//! They are encoded with the AMF0 writer in `amf0`. The info object's keys
//! go out in a fixed order (`level`, `code`, `description`), as origins send
//! them. A `connect` refusal comes before the guard has sent the client a
//! SetChunkSize, so it uses the default chunk size of 128; a refusal during
//! the relay is framed by the relay, like everything else it writes.

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
    let payload = payload("_error", transaction_id, status_object(code, description));
    let header = MessageHeader::for_payload(3, types::COMMAND_AMF0, 0, &payload);
    let mut bytes = Vec::new();
    let mut writer = ChunkWriter::new();
    writer.set_chunk_size(DEFAULT_CHUNK_SIZE);
    writer.write(&mut bytes, &header, &payload);
    bytes
}

/// The payload of an `onStatus` with level `error` (publish/play refusal),
/// transaction id 0. Empty if the description cannot be encoded (never, for
/// the bounded texts the guard sends).
pub fn status_payload(code: &str, description: &str) -> Vec<u8> {
    payload("onStatus", 0.0, status_object(code, description))
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

/// The command `name`, transaction id, null, `info`, as AMF0.
fn payload(name: &str, transaction_id: f64, info: Amf0Value) -> Vec<u8> {
    amf0::encode(&[
        Amf0Value::String(name.into()),
        Amf0Value::Number(transaction_id),
        Amf0Value::Null,
        info,
    ])
    .unwrap_or_default()
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
    fn a_status_refusal_is_on_status_with_an_error_level() {
        let payload = status_payload("NetStream.Publish.BadName", &"d".repeat(300));
        let cmd = command::decode(20, &payload, 8).unwrap();
        assert_eq!(cmd.name, "onStatus");
        assert_eq!(cmd.transaction_id, 0.0);
        let info = &cmd.arguments[0];
        assert_eq!(info.get("level"), Some(&V::String("error".into())));
        assert_eq!(
            info.get("code"),
            Some(&V::String("NetStream.Publish.BadName".into()))
        );
    }

    #[test]
    fn sanitize_bounds_and_strips_control_characters() {
        assert_eq!(sanitize("li\u{0}ve\n"), "live");
        assert_eq!(sanitize(&"x".repeat(1000)).len(), MAX_ECHO);
    }
}
