//! One client connection, from accept to close: the state machine that ties
//! the protocol code to sockets.
//!
//! handshake → connect → upstream → relay → report
//!
//! Each stage either hands a typed result to the next or ends the connection
//! with a [`Block`]. No upstream connection exists until the client has
//! finished the handshake and sent a valid `connect` for a configured app, so
//! an origin never sees a client the guard has not read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use crate::admit::{PendingSlot, Ticket};
use crate::config::ProxyProtocolOut;
use crate::policy::StreamPolicy;
use crate::proxy_protocol;
use crate::relay::{self, Direction};
use crate::report::{self, Block, Reason, Stage};
use crate::rtmp::chunk::{types, ChunkLimits, ChunkParser, MessageClass};
use crate::rtmp::command::{self, ConnectRequest};
use crate::rtmp::handshake::{HandshakeError, OtherProtocol, ServerHandshake};
use crate::rtmp::reply;
use crate::upstream;
use crate::Guard;

/// Handshake reads go into a buffer this size; C0+C1 is 1537 bytes.
const HANDSHAKE_READ: usize = 4096;
/// How long the guard waits to deliver a refusal before closing anyway.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// How a connection ended.
enum Outcome {
    /// Refused by the guard; not yet reported.
    Blocked(Block),
    /// Refused and already reported.
    Refused,
    /// The client went away before relaying started.
    Gone,
    /// No upstream server could be reached.
    Unreachable,
    /// The relay ran and ended.
    Relayed,
}

/// Runs one connection to its end. Never panics on client input; a panic
/// elsewhere would end only this task.
pub async fn handle(guard: Arc<Guard>, mut client: TcpStream, peer: SocketAddr, start: Start) {
    let accepted = Instant::now();
    let _open = GaugeHold::new(guard.metrics.connections_active.clone());
    let _ = client.set_nodelay(true);
    let local = client.local_addr().unwrap_or(peer);
    let mut conn = Conn {
        client: peer,
        local,
        ticket: None,
        early: Vec::new(),
    };
    let outcome = match start {
        Start::Admitted(ticket) => {
            conn.ticket = Some(ticket);
            run(&guard, &mut client, &mut conn, accepted).await
        }
        Start::ProxyHeader(slot) => {
            match proxy_header(&guard, &mut client, &mut conn, slot, accepted).await {
                Ok(()) => run(&guard, &mut client, &mut conn, accepted).await,
                Err(outcome) => outcome,
            }
        }
    };
    if let Outcome::Blocked(block) = outcome {
        report::refuse(&guard, conn.client, &block);
    }
}

/// Holds a gauge up while alive, so it stays right even if the task unwinds.
struct GaugeHold(prometheus::IntGauge);

impl GaugeHold {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        GaugeHold(gauge)
    }
}

impl Drop for GaugeHold {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How a connection starts its session.
pub enum Start {
    /// Admitted at accept.
    Admitted(Ticket),
    /// From a trusted load balancer: its PROXY header names the client to
    /// admit. The slot counts the connection as pending meanwhile.
    ProxyHeader(PendingSlot),
}

/// Who a connection is for.
struct Conn {
    /// The client: the peer, or the address a trusted PROXY header named.
    client: SocketAddr,
    /// The address the client connected to.
    local: SocketAddr,
    /// Admission slots, released when the connection ends.
    ticket: Option<Ticket>,
    /// Client bytes read before the handshake (after a PROXY header).
    early: Vec<u8>,
}

/// Reads a trusted peer's PROXY header, then admits the client it names.
async fn proxy_header(
    guard: &Guard,
    client: &mut TcpStream,
    conn: &mut Conn,
    slot: PendingSlot,
    accepted: Instant,
) -> Result<(), Outcome> {
    let deadline = accepted + guard.config.load().server.handshake_timeout;
    let header = match timeout_at(deadline, read_proxy_header(client)).await {
        Err(_) => {
            return Err(Outcome::Blocked(Block::new(
                Stage::Handshake,
                Reason::HandshakeTimeout,
                "no PROXY header from a trusted proxy in time",
            )))
        }
        Ok(Err(None)) => return Err(Outcome::Gone),
        Ok(Err(Some(e))) => {
            return Err(Outcome::Blocked(Block::new(
                Stage::Handshake,
                Reason::ProtocolViolation,
                format!("trusted proxy {}: {e}", conn.client),
            )))
        }
        Ok(Ok((header, rest))) => {
            conn.early = rest;
            header
        }
    };
    if let proxy_protocol::Header::Proxied {
        source,
        destination,
    } = header
    {
        conn.client = source;
        conn.local = destination;
    }
    match crate::listener::admit(guard, conn.client, Some(slot)) {
        Some(ticket) => {
            conn.ticket = Some(ticket);
            Ok(())
        }
        None => Err(Outcome::Refused),
    }
}

/// Reads one PROXY header, at most [`proxy_protocol::V2_MAX`] bytes; bytes
/// read past it are kept for the handshake. `Err(None)`: the peer left.
async fn read_proxy_header(
    client: &mut TcpStream,
) -> Result<(proxy_protocol::Header, Vec<u8>), Option<proxy_protocol::ProxyError>> {
    let mut buf = Vec::with_capacity(proxy_protocol::V2_MAX);
    loop {
        let room = proxy_protocol::V2_MAX.saturating_sub(buf.len()) as u64;
        match (&mut *client).take(room).read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
        match proxy_protocol::parse(&buf) {
            Ok(Some((header, used))) => {
                let rest = buf.get(used..).unwrap_or_default().to_vec();
                return Ok((header, rest));
            }
            Ok(None) if buf.len() < proxy_protocol::V2_MAX => {}
            Ok(None) => {
                return Err(Some(proxy_protocol::ProxyError::Malformed(
                    "header too long",
                )))
            }
            Err(e) => return Err(Some(e)),
        }
    }
}

async fn run(guard: &Guard, client: &mut TcpStream, conn: &mut Conn, accepted: Instant) -> Outcome {
    let config = guard.config();
    let limits = &config.limits;
    let peer = conn.client;

    // Stage: handshake.
    let deadline = accepted + config.server.handshake_timeout;
    let early = std::mem::take(&mut conn.early);
    let leftover = match timeout_at(deadline, handshake(client, early)).await {
        Err(_) => {
            return Outcome::Blocked(Block::new(
                Stage::Handshake,
                Reason::HandshakeTimeout,
                format!(
                    "no complete handshake within {:?}",
                    config.server.handshake_timeout
                ),
            ))
        }
        Ok(Err(HandshakeEnd::Gone)) => return Outcome::Gone,
        Ok(Err(HandshakeEnd::Refused(e))) => {
            let reason = match e {
                HandshakeError::NotRtmp(OtherProtocol::Proxy) => Reason::ForgedProxyHeader,
                HandshakeError::NotRtmp(_) => Reason::NotRtmp,
                HandshakeError::BadVersion(_) => Reason::BadVersion,
                HandshakeError::Failed(_) => Reason::ProtocolViolation,
            };
            return Outcome::Blocked(Block::new(Stage::Handshake, reason, e));
        }
        Ok(Ok(leftover)) => leftover,
    };
    guard
        .metrics
        .handshake_duration
        .observe(accepted.elapsed().as_secs_f64());

    // Stage: connect.
    let deadline = accepted + config.server.connect_timeout;
    let mut parser = ChunkParser::new(ChunkLimits::from(limits));
    let mut pending = leftover;
    let budget = pre_connect_budget(limits.max_command_size);
    let (request, parsed) = match timeout_at(
        deadline,
        read_connect(
            client,
            &mut parser,
            &mut pending,
            budget,
            limits.max_amf_depth,
        ),
    )
    .await
    {
        Err(_) => {
            return Outcome::Blocked(Block::new(
                Stage::Connect,
                Reason::ConnectTimeout,
                format!("no connect within {:?}", config.server.connect_timeout),
            ))
        }
        Ok(Err(ConnectEnd::Gone)) => return Outcome::Gone,
        Ok(Err(ConnectEnd::Violation(why))) => {
            return Outcome::Blocked(Block::new(Stage::Connect, Reason::ProtocolViolation, why))
        }
        Ok(Ok(found)) => found,
    };

    // Stage: route the app.
    let Some(app) = config.app(&request.app) else {
        let shown = reply::sanitize(&request.app);
        let description = format!("application \"{shown}\" is not served here");
        send_reply(
            client,
            &reply::connect_error(
                request.transaction_id,
                reply::CONNECT_REJECTED,
                &description,
            ),
        )
        .await;
        return Outcome::Blocked(Block::new(
            Stage::Connect,
            Reason::UnknownApp,
            format!("unknown app {shown:?}"),
        ));
    };
    if guard.remedies.load().suspension(&app.name).is_some() {
        send_reply(
            client,
            &reply::connect_error(
                request.transaction_id,
                reply::CONNECT_REJECTED,
                // ffmpeg prints only the description: lead with the code.
                "NetConnection.Connect.Rejected: application suspended",
            ),
        )
        .await;
        return Outcome::Blocked(
            Block::new(Stage::Connect, Reason::AppSuspended, "app suspended").with_app(&app.name),
        );
    }
    let Some(up) = config.upstream(&app.upstream) else {
        // Validation guarantees the upstream exists; refuse rather than panic.
        return Outcome::Unreachable;
    };

    // Past `connect`: no longer pending.
    if let Some(ticket) = conn.ticket.as_mut() {
        ticket.connected();
    }

    // Stage: upstream.
    let rr = guard.round_robin(&up.name);
    let header = match up.proxy_protocol {
        ProxyProtocolOut::Off => Vec::new(),
        ProxyProtocolOut::V1 => proxy_protocol::encode_v1(conn.client, conn.local),
        ProxyProtocolOut::V2 => proxy_protocol::encode_v2(conn.client, conn.local),
    };
    let connected = upstream::connect(up, &rr, &header, &guard.metrics).await;
    let mut connected = match connected {
        Ok(c) => c,
        Err(failure) => {
            send_reply(
                client,
                &reply::connect_error(
                    request.transaction_id,
                    reply::CONNECT_FAILED,
                    "upstream unavailable",
                ),
            )
            .await;
            report::upstream_unreachable(peer, &app.name, &up.name, &failure.detail);
            return Outcome::Unreachable;
        }
    };
    let up_stream = &mut connected.stream;
    let head = pending.get(..parsed).unwrap_or_default();
    if let Err(e) = up_stream.write_all(head).await {
        guard
            .metrics
            .upstream_error(&up.name, crate::metrics::upstream_kind::IO_ERROR);
        report::upstream_unreachable(peer, &app.name, &up.name, &e.to_string());
        return Outcome::Unreachable;
    }
    guard
        .metrics
        .bytes_client_to_upstream
        .inc_by(head.len() as u64);
    let rest = pending.get(parsed..).unwrap_or_default().to_vec();

    // Stage: relay.
    let active = GaugeHold::new(
        guard
            .metrics
            .sessions_active
            .with_label_values(&[&app.name]),
    );
    guard
        .metrics
        .sessions_total
        .with_label_values(&[&app.name])
        .inc();
    let started = Instant::now();
    let registration = guard.sessions.register(peer, &app.name);
    let on_refusal = |r: &relay::Refusal| {
        let block = Block::new(Stage::Session, r.reason, &r.detail)
            .with_app(&app.name)
            .with_stream(r.status.as_ref().map(|d| d.stream.as_str()));
        report::refuse(guard, peer, &block)
    };
    let (end, totals) = relay::run(
        client,
        up_stream,
        Direction {
            parser,
            pending: rest,
            rules: Some(relay::ClientRules::new(
                &limits.session,
                Some(StreamPolicy::new(
                    app,
                    guard.streams.clone(),
                    peer.ip(),
                    &request,
                )),
            )),
        },
        Direction {
            parser: ChunkParser::new(ChunkLimits::from(limits)),
            pending: std::mem::take(&mut connected.leftover),
            rules: None,
        },
        relay::Settings {
            idle_timeout: config.server.idle_timeout,
            max_amf_depth: limits.max_amf_depth,
            bytes_client_to_upstream: &guard.metrics.bytes_client_to_upstream,
            bytes_upstream_to_client: &guard.metrics.bytes_upstream_to_client,
            on_refusal: &on_refusal,
            http: app.http_auth().map(|h| (&guard.callbacks, h)),
            session: &registration.session,
            kicks: registration.kicks.clone(),
        },
    )
    .await;
    drop(active);
    let mut totals = totals;
    totals.client_to_upstream += head.len() as u64;
    report::session_closed(peer, &app.name, end.as_str(), started.elapsed(), &totals);
    drop(registration);
    match end {
        relay::End::ClientRefused(_) => Outcome::Refused,
        relay::End::Kicked(kick) => {
            let stream = totals.streams.first().map(|(_, n)| n.as_str());
            Outcome::Blocked(
                Block::new(Stage::Session, kick.reason, &kick.description)
                    .with_app(&app.name)
                    .with_stream(stream)
                    .always(),
            )
        }
        relay::End::UpstreamViolation(why) => {
            guard
                .metrics
                .upstream_error(&up.name, crate::metrics::upstream_kind::PROTOCOL_VIOLATION);
            tracing::warn!(event = "upstream_protocol_violation", client = %peer.ip(), client_port = peer.port(), upstream = %up.name, detail = %why);
            Outcome::Relayed
        }
        _ => Outcome::Relayed,
    }
}

/// Bytes a client may send before its `connect` completes: the connect
/// itself plus generous room for chunk headers and control messages.
pub fn pre_connect_budget(max_command_size: u32) -> usize {
    (max_command_size as usize)
        .saturating_mul(2)
        .saturating_add(4096)
}

enum HandshakeEnd {
    Gone,
    Refused(HandshakeError),
}

/// Runs the server handshake, starting with `early` bytes already read;
/// returns the bytes read past it.
async fn handshake(client: &mut TcpStream, early: Vec<u8>) -> Result<Vec<u8>, HandshakeEnd> {
    let mut hs = ServerHandshake::new();
    let mut input = early;
    loop {
        if input.is_empty() {
            // Capacity, not zeroed memory: an idle or slow client costs only
            // the pages it actually fills.
            input.reserve(HANDSHAKE_READ);
            match (&mut *client)
                .take(HANDSHAKE_READ as u64)
                .read_buf(&mut input)
                .await
            {
                Ok(0) | Err(_) => return Err(HandshakeEnd::Gone),
                Ok(_) => {}
            }
        }
        let mut rest = input.as_slice();
        while !rest.is_empty() {
            let step = hs.feed(rest).map_err(HandshakeEnd::Refused)?;
            if !step.response.is_empty() && client.write_all(&step.response).await.is_err() {
                return Err(HandshakeEnd::Gone);
            }
            rest = rest.get(step.consumed..).unwrap_or_default();
            if step.done {
                return Ok(rest.to_vec());
            }
        }
        input.clear();
    }
}

enum ConnectEnd {
    Gone,
    Violation(String),
}

/// Reads the chunk stream until a complete `connect`. Returns it and how
/// many bytes of `pending` it took; bytes after that are not yet parsed.
async fn read_connect(
    client: &mut TcpStream,
    parser: &mut ChunkParser,
    pending: &mut Vec<u8>,
    budget: usize,
    max_amf_depth: usize,
) -> Result<(ConnectRequest, usize), ConnectEnd> {
    let mut parsed = 0;
    loop {
        while parsed < pending.len() {
            let input = pending.get(parsed..).unwrap_or_default();
            let progress = parser
                .advance(input)
                .map_err(|e| ConnectEnd::Violation(e.to_string()))?;
            parsed += progress.consumed;
            let found = match progress.message {
                Some(m) => before_connect(m.header.type_id, m.payload, max_amf_depth)?,
                None => None,
            };
            if parser.media_started() > 0 {
                return Err(ConnectEnd::Violation("media before connect".into()));
            }
            if let Some(request) = found {
                return Ok((request, parsed));
            }
        }
        if pending.len() >= budget {
            return Err(ConnectEnd::Violation(format!(
                "more than {budget} bytes before connect"
            )));
        }
        pending.reserve(HANDSHAKE_READ.min(budget - pending.len()));
        let room = budget - pending.len();
        match (&mut *client).take(room as u64).read_buf(pending).await {
            Ok(0) | Err(_) => return Err(ConnectEnd::Gone),
            Ok(_) => {}
        }
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

/// Sends a refusal, bounded in time so a client that stops reading cannot
/// hold the task.
async fn send_reply(client: &mut TcpStream, bytes: &[u8]) {
    let _ = timeout(REPLY_TIMEOUT, async {
        client.write_all(bytes).await?;
        client.flush().await
    })
    .await;
}
