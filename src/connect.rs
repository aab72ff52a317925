//! The connect stage: read the client's `connect` and route it to an app.
//!
//! Until the `connect` arrives a client may send only protocol control
//! messages, within `[server] connect_timeout` of accept and a byte budget.
//! An app that is not configured, or that the operator suspended, is
//! answered with `_error` and refused here: no upstream connection exists
//! yet, so the origin never sees such a client.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout_at;

use crate::config::{App, Upstream};
use crate::connection::Connection;
use crate::context::{Ctx, Stop};
use crate::rtmp::chunk::{types, ChunkParser, MessageClass, MessageHeader};
use crate::rtmp::command::{self, ConnectRequest};
use crate::rtmp::reply;
use crate::verdict::{Block, Reason, Stage};

/// A client's `connect`, read.
pub struct Connect {
    pub request: ConnectRequest,
    /// The message header the `connect` came with.
    pub header: MessageHeader,
    /// The parser's state after the `connect`; the relay goes on with it.
    pub parser: ChunkParser,
}

/// Where a `connect` is routed.
pub struct Route<'c> {
    pub app: &'c Arc<App>,
    pub upstream: &'c Upstream,
}

/// Bytes a client may send before its `connect` completes: the connect
/// itself plus generous room for chunk headers and control messages.
pub fn pre_connect_budget(max_command_size: u32) -> usize {
    (max_command_size as usize)
        .saturating_mul(2)
        .saturating_add(4096)
}

/// Reads the client's `connect` within the connect timeout. The bytes up
/// to it are taken from `conn`; what follows stays buffered.
pub async fn read<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    conn: &mut Connection<S>,
) -> Result<Connect, Stop> {
    let limit = ctx.config.server.connect_timeout;
    let limits = &ctx.config.limits;
    let mut parser = ChunkParser::new(limits.chunk_limits());
    let budget = pre_connect_budget(limits.max_command_size);
    let read = until_connect(conn, &mut parser, budget, limits.max_amf_depth);
    let (request, header, used) = match timeout_at(ctx.deadline(limit), read).await {
        Err(_) => {
            return Err(Stop::Blocked(Block::new(
                Stage::Connect,
                Reason::ConnectTimeout,
                format!("no connect within {limit:?}"),
            )))
        }
        Ok(Err(ConnectEnd::Gone)) => return Err(Stop::Gone),
        Ok(Err(ConnectEnd::Violation(why))) => {
            return Err(Stop::Blocked(Block::new(
                Stage::Connect,
                Reason::ProtocolViolation,
                why,
            )))
        }
        Ok(Ok(found)) => found,
    };
    conn.consume(used);
    Ok(Connect {
        request,
        header,
        parser,
    })
}

/// Finds the configured app a `connect` names, and answers the client
/// with `_error` if there is none or the operator suspended it.
pub async fn route<'c, S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &'c Ctx,
    conn: &mut Connection<S>,
    request: &ConnectRequest,
) -> Result<Route<'c>, Stop> {
    if request
        .app_raw
        .chars()
        .any(|c| c.is_control() || c == '\u{FFFD}')
    {
        return Err(Stop::Blocked(Block::new(
            Stage::Connect,
            Reason::BadName,
            "a control character or invalid UTF-8 in the app name",
        )));
    }
    let Some(app) = ctx.config.app(&request.app) else {
        let shown = reply::sanitize(&request.app);
        let description = format!("application \"{shown}\" is not served here");
        let answer = reply::connect_error(
            request.transaction_id,
            reply::CONNECT_REJECTED,
            &description,
        );
        conn.send_reply(&answer).await;
        return Err(Stop::Blocked(Block::new(
            Stage::Connect,
            Reason::UnknownApp,
            format!("unknown app {shown:?}"),
        )));
    };
    if ctx.guard.remedies.load().suspension(&app.name).is_some() {
        let answer = reply::connect_error(
            request.transaction_id,
            reply::CONNECT_REJECTED,
            // ffmpeg prints only the description: lead with the code.
            "NetConnection.Connect.Rejected: application suspended",
        );
        conn.send_reply(&answer).await;
        return Err(Stop::Blocked(
            Block::new(Stage::Connect, Reason::AppSuspended, "app suspended").with_app(&app.name),
        ));
    }
    // Validation guarantees the upstream exists; refuse rather than panic.
    let upstream = ctx
        .config
        .upstream(&app.upstream)
        .ok_or(Stop::Unreachable)?;
    Ok(Route { app, upstream })
}

enum ConnectEnd {
    Gone,
    Violation(String),
}

impl From<crate::connection::Gone> for ConnectEnd {
    fn from(_: crate::connection::Gone) -> ConnectEnd {
        ConnectEnd::Gone
    }
}

/// Parses the buffered chunk stream, reading more within `budget`, until
/// a complete `connect`. Returns it, its header, and how many buffered
/// bytes it took.
async fn until_connect<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    parser: &mut ChunkParser,
    budget: usize,
    max_amf_depth: usize,
) -> Result<(ConnectRequest, MessageHeader, usize), ConnectEnd> {
    let mut parsed = 0;
    loop {
        while let Some(input) = conn.buffered().get(parsed..).filter(|i| !i.is_empty()) {
            let progress = parser
                .advance(input)
                .map_err(|e| ConnectEnd::Violation(e.to_string()))?;
            parsed += progress.consumed;
            let found = match progress.message {
                Some(m) => before_connect(m.header.type_id, m.payload, max_amf_depth)?
                    .map(|request| (request, m.header)),
                None => None,
            };
            if parser.media_started() > 0 {
                return Err(ConnectEnd::Violation("media before connect".into()));
            }
            if let Some((request, header)) = found {
                return Ok((request, header, parsed));
            }
        }
        if conn.buffered().len() >= budget {
            return Err(ConnectEnd::Violation(format!(
                "more than {budget} bytes before connect"
            )));
        }
        conn.read_more(budget).await?;
    }
}

/// Judges a kept message that arrived before `connect`: control messages
/// are fine, a `connect` ends the wait, anything else is a violation.
fn before_connect(
    type_id: u8,
    payload: &[u8],
    max_amf_depth: usize,
) -> Result<Option<ConnectRequest>, ConnectEnd> {
    let violation = |why: String| Err(ConnectEnd::Violation(why));
    match MessageClass::of(type_id) {
        MessageClass::Control => Ok(None),
        _ if type_id == types::COMMAND_AMF0 || type_id == types::COMMAND_AMF3 => {
            let cmd = match command::decode(type_id, payload, max_amf_depth) {
                Ok(cmd) => cmd,
                Err(e) => return violation(format!("unreadable command: {e}")),
            };
            match ConnectRequest::from_command(&cmd) {
                Some(Ok(request)) => Ok(Some(request)),
                Some(Err(e)) => violation(format!("bad connect: {e}")),
                None => violation(format!(
                    "command {:?} before connect",
                    reply::sanitize(&cmd.name)
                )),
            }
        }
        _ => violation(format!("message type {type_id} before connect")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::amf0::{encode, Amf0Value as V};
    use crate::rtmp::chunk::writer::ChunkWriter;
    use crate::rtmp::chunk::MessageHeader;
    use tokio::io::AsyncWriteExt;

    fn limits() -> crate::rtmp::chunk::ChunkLimits {
        crate::config::Limits::default().chunk_limits()
    }

    fn command(values: &[V]) -> Vec<u8> {
        let payload = encode(values).expect("encodable");
        let header = MessageHeader::for_payload(3, types::COMMAND_AMF0, 0, &payload);
        let mut out = Vec::new();
        ChunkWriter::new().write(&mut out, &header, &payload);
        out
    }

    async fn feed(
        bytes: Vec<u8>,
    ) -> (
        Result<(ConnectRequest, MessageHeader, usize), ConnectEnd>,
        Vec<u8>,
    ) {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        b.write_all(&bytes).await.unwrap();
        drop(b);
        let mut conn = Connection::new(a);
        let mut parser = ChunkParser::new(limits());
        let found = until_connect(&mut conn, &mut parser, 1 << 16, 32).await;
        (found, conn.buffered().to_vec())
    }

    #[tokio::test]
    async fn the_connect_is_found_and_what_follows_is_left_unparsed() {
        let mut bytes = command(&[
            V::String("connect".into()),
            V::Number(1.0),
            V::Object(vec![("app".into(), V::String("live".into()))]),
        ]);
        let connect_len = bytes.len();
        bytes.extend_from_slice(b"\x43rest");
        let (found, buffered) = feed(bytes).await;
        let (request, _, used) = found.ok().unwrap();
        assert_eq!(request.app, "live");
        assert_eq!(used, connect_len);
        assert_eq!(&buffered[used..], b"\x43rest");
    }

    #[tokio::test]
    async fn another_command_before_connect_is_a_violation() {
        let bytes = command(&[V::String("publish".into()), V::Number(1.0), V::Null]);
        let (found, _) = feed(bytes).await;
        assert!(matches!(found, Err(ConnectEnd::Violation(why)) if why.contains("before connect")));
    }
}
