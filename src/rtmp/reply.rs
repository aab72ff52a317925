//! Messages the guard itself sends to a client: the `_error` that refuses a
//! `connect`, and the `onStatus` that refuses a `publish` or `play`.
//!
//! They are built with rml_rtmp's message types and chunk serializer, which
//! are safe for output. The guard never sent a SetChunkSize to the client, so
//! the replies use the default chunk size of 128.

use std::collections::HashMap;

use rml_amf0::Amf0Value;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::time::RtmpTimestamp;

/// NetConnection status codes the guard replies with.
pub const CONNECT_REJECTED: &str = "NetConnection.Connect.Rejected";
pub const CONNECT_FAILED: &str = "NetConnection.Connect.Failed";

/// Longest client-chosen text echoed back in a description.
const MAX_ECHO: usize = 128;

/// `_error` for a `connect`: transaction id, null, info object.
pub fn connect_error(transaction_id: f64, code: &str, description: &str) -> Vec<u8> {
    command(
        "_error",
        transaction_id,
        0,
        status_object(code, description),
    )
}

/// `onStatus` with level `error` on a message stream (publish/play refusal).
pub fn stream_error(stream_id: u32, code: &str, description: &str) -> Vec<u8> {
    command("onStatus", 0.0, stream_id, status_object(code, description))
}

/// Makes client-chosen text safe to echo: bounded, no control characters.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ECHO)
        .collect()
}

fn status_object(code: &str, description: &str) -> Amf0Value {
    let mut info = HashMap::new();
    info.insert("level".to_string(), Amf0Value::Utf8String("error".into()));
    info.insert("code".to_string(), Amf0Value::Utf8String(code.into()));
    info.insert(
        "description".to_string(),
        Amf0Value::Utf8String(description.into()),
    );
    Amf0Value::Object(info)
}

fn command(name: &str, transaction_id: f64, stream_id: u32, info: Amf0Value) -> Vec<u8> {
    let message = RtmpMessage::Amf0Command {
        command_name: name.to_string(),
        transaction_id,
        command_object: Amf0Value::Null,
        additional_arguments: vec![info],
    };
    let payload = match message.into_message_payload(RtmpTimestamp::new(0), stream_id) {
        Ok(p) => p,
        Err(_) => return Vec::new(),
    };
    // A fresh serializer writes a full header first and fmt 3 continuations;
    // `force_uncompressed = true` would put a full header on every chunk,
    // which strict readers (this guard's own parser included) refuse.
    match ChunkSerializer::new().serialize(&payload, false, false) {
        Ok(packet) => packet.bytes,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::amf0::{self, Amf0Value as V};
    use crate::rtmp::chunk::{ChunkLimits, ChunkParser};
    use crate::rtmp::command;

    #[test]
    fn connect_error_reads_back_as_a_rejection() {
        // Long enough to span two 128-byte chunks.
        let description = format!("application \"{}\" is not served here", "n".repeat(100));
        let bytes = connect_error(1.0, CONNECT_REJECTED, &description);
        assert!(bytes.len() > 200);
        let mut parser = ChunkParser::new(ChunkLimits {
            max_chunk_size: 65536,
            max_command_size: 65536,
            max_message_size: 0xFF_FFFF,
            max_chunk_streams: 8,
        });
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
    fn sanitize_bounds_and_strips_control_characters() {
        assert_eq!(sanitize("li\u{0}ve\n"), "live");
        assert_eq!(sanitize(&"x".repeat(1000)).len(), MAX_ECHO);
    }
}
