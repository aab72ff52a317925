//! The guard in-process on loopback, in front of an in-process test origin
//! that records every connection and byte it receives.

mod common;

use std::time::Duration;

use common::client::{
    command_bytes, command_names, command_on, commands_in, connect_bytes, connect_values,
    control_bytes, create_stream, messages_in, status_code, Closed, RawClient,
};
use common::config::GuardConfig;
use common::hostile;
use common::origin::{
    connect_success, on_status, origin_commands, reconnect_info, Harness, TestOrigin, ORIGIN_HELLO,
};
use rtmp_guard::config::Config;
use rtmp_guard::rtmp::amf0::Amf0Value;
use rtmp_guard::rtmp::command;
use rtmp_guard::rtmp::control::{Control, UserEvent};
use rtmp_guard::verdict::{Reason, Stage};

#[test]
fn valid_connect_is_reencoded_and_relayed_both_ways() {
    let h = Harness::new();
    let mut c = RawClient::handshaken(h.addr());
    c.send(&connect_bytes("live/?token=abc"));
    c.send(&create_stream(2.0));
    c.send(&command_on(
        1,
        &[
            Amf0Value::String("publish".into()),
            Amf0Value::Number(3.0),
            Amf0Value::Null,
            Amf0Value::String("cam".into()),
            Amf0Value::String("live".into()),
        ],
    ));
    // Media after an allowed publish is relayed too.
    c.send(&[0x06, 0, 0, 0, 0, 0, 3, 9, 1, 0, 0, 0, 0x17, 0, 0]);
    let messages = common::wait_for(Duration::from_secs(5), || {
        let all = h.origin.received.lock().unwrap();
        let messages = messages_in(all.first()?);
        (messages.len() >= 5).then_some(messages)
    })
    .expect("origin received the client's messages");
    let types: Vec<u8> = messages.iter().map(|(h, _)| h.type_id).collect();
    // The guard's own SetChunkSize, then connect, createStream, publish and
    // the video, each re-framed but the same message.
    assert_eq!(types, [1, 20, 20, 20, 9]);
    let connect = command::decode(20, &messages[1].1, 8).unwrap();
    let app = connect.object.get("app").and_then(Amf0Value::as_str);
    assert_eq!(app, Some("live?token=abc"), "the routed app, query kept");
    // The client's tcUrl was rtmp://127.0.0.1/live/?token=abc: its path now
    // names the routed app, its query is kept.
    let tc_url = connect.object.get("tcUrl").and_then(Amf0Value::as_str);
    assert_eq!(tc_url, Some("rtmp://127.0.0.1/live?token=abc"));
    assert_eq!(
        (messages[4].0.stream_id, messages[4].1.clone()),
        (1, vec![0x17, 0, 0])
    );
    // The origin's hello (its Window Acknowledgement Size) reaches the
    // client, said by the guard, after the guard's own SetChunkSize.
    let hello = c
        .read_message(Duration::from_secs(5), |h, _| h.type_id == 5)
        .expect("the origin's window size");
    assert_eq!(hello.1, ORIGIN_HELLO[12..].to_vec());
    assert_eq!(h.origin.accepted(), 1);
}

#[test]
fn unknown_app_is_refused_before_the_origin_sees_it() {
    let h = Harness::new();
    let mut c = RawClient::handshaken(h.addr());
    c.send(&connect_bytes("vod?x=1"));
    let Closed::Within(_, reply) = c.wait_closed(Duration::from_secs(2)) else {
        panic!("guard kept an unknown-app connection open");
    };
    let cmds = commands_in(&reply);
    assert_eq!(cmds.len(), 1, "exactly one reply");
    assert_eq!(cmds[0].name, "_error");
    assert_eq!(cmds[0].transaction_id, 1.0);
    assert_eq!(
        status_code(&cmds[0]).as_deref(),
        Some("NetConnection.Connect.Rejected")
    );
    let info = &cmds[0].arguments[0];
    assert_eq!(info.get("level").and_then(|v| v.as_str()), Some("error"));
    let description = info.get("description").and_then(|v| v.as_str()).unwrap();
    assert!(description.contains("\"vod\""), "{description}");
    assert_eq!(h.origin.accepted(), 0);
    assert_eq!(h.blocked(Stage::Connect, Reason::UnknownApp), 1);
}

#[test]
fn hostile_set_is_closed_in_time_and_never_reaches_the_origin() {
    let h = Harness::new();
    let failures = hostile::run_all(h.addr());
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        h.origin.accepted(),
        0,
        "a hostile client reached the origin"
    );
    // Every case is counted once, under its own stage and reason.
    let mut expected: std::collections::HashMap<(&str, &str), u64> = Default::default();
    for case in hostile::cases() {
        *expected.entry((case.stage, case.reason)).or_default() += 1;
    }
    let text = h.guard.guard.metrics.render();
    for ((stage, reason), n) in expected {
        let got = common::metric(&text, &common::blocked_sample(stage, reason));
        assert_eq!(got, Some(n as f64), "{stage}/{reason}");
    }
}

#[test]
fn upstream_unreachable_gets_connect_failed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dead = common::free_port();
    let text = GuardConfig::new()
        .origin(format!("127.0.0.1:{dead}"))
        .origin_connect_timeout("1s")
        .live()
        .build();
    let running = rt
        .block_on(rtmp_guard::start(Config::parse(&text, "t.toml").unwrap()))
        .unwrap();
    let mut c = RawClient::handshaken(running.rtmp_addrs[0]);
    c.send(&connect_bytes("live"));
    let Closed::Within(_, reply) = c.wait_closed(Duration::from_secs(3)) else {
        panic!("still open");
    };
    let cmds = commands_in(&reply);
    assert_eq!(
        status_code(&cmds[0]).as_deref(),
        Some("NetConnection.Connect.Failed")
    );
    assert_eq!(
        running
            .guard
            .metrics
            .upstream_error_count("origin", "connect_refused"),
        1
    );
}

#[test]
fn round_robin_skips_a_refusing_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(TestOrigin::start());
    let dead = common::free_port();
    let text = GuardConfig::new()
        .origin(format!("127.0.0.1:{dead}"))
        .origin(origin.addr)
        .live()
        .build();
    let running = rt
        .block_on(rtmp_guard::start(Config::parse(&text, "t.toml").unwrap()))
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = RawClient::handshaken(running.rtmp_addrs[0]);
        c.send(&connect_bytes("live"));
        clients.push(c);
    }
    assert!(origin.reaches(4, Duration::from_secs(5)));
    // Two of the four started at the dead server and were moved on.
    assert_eq!(
        running
            .guard
            .metrics
            .upstream_error_count("origin", "connect_refused"),
        2
    );
}

/// Connects with `first` in one write, then sends nothing: the session
/// must close after its 1 s idle timeout, and not before.
fn assert_closed_when_idle(first: &[u8]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(TestOrigin::start());
    let text = GuardConfig::new()
        .server("idle_timeout = \"1s\"")
        .origin(origin.addr)
        .live()
        .build();
    let running = rt
        .block_on(rtmp_guard::start(Config::parse(&text, "t.toml").unwrap()))
        .unwrap();
    let mut c = RawClient::handshaken(running.rtmp_addrs[0]);
    c.send(first);
    let start = std::time::Instant::now();
    match c.wait_closed(Duration::from_secs(4)) {
        Closed::Within(..) => {}
        Closed::StillOpen => panic!("idle session not closed"),
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    assert_eq!(origin.accepted(), 1);
}

#[test]
fn idle_session_is_closed_after_idle_timeout() {
    assert_closed_when_idle(&connect_bytes("live"));
}

/// The relay's first pass then moves bytes (what came with the connect),
/// and still must arm the idle timer.
#[test]
fn a_session_whose_first_pass_moves_bytes_still_idles_out() {
    let mut first = connect_bytes("live");
    first.extend(control_bytes(Control::WindowAckSize(2_500_000)));
    assert_closed_when_idle(&first);
}

/// What a cut-off write had handed to the socket is counted: a session
/// kicked while its write to a client that reads nothing waits counts
/// exactly the bytes the client then finds before the end.
#[test]
fn a_cut_off_write_is_counted() {
    let big = vec![
        Amf0Value::String("onBig".into()),
        Amf0Value::Number(0.0),
        Amf0Value::Null,
        Amf0Value::String("x".repeat(30_000)),
    ];
    let mut commands = vec![connect_success()];
    // 6 MB: more than the socket buffers between the guard and a client
    // that reads nothing can hold.
    commands.extend(std::iter::repeat_n(big, 200));
    let sent = origin_commands(&commands);
    let origin_bytes = sent.len() as u64;
    let h = Harness::replying(sent, |origin| GuardConfig::new().origin(origin).live());
    let mut c = RawClient::handshaken(h.addr());
    c.send(&connect_bytes("live"));
    let metrics = &h.guard.guard.metrics;
    let counted = || metrics.bytes_upstream_to_client.get();
    // The client reads nothing: the guard's write to it waits, cut short
    // by a full socket, once the count stops moving.
    let mut last = 0;
    let stuck = common::wait_for(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = counted();
        let still = now > 0 && now == last;
        last = now;
        still.then_some(())
    });
    assert!(stuck.is_some(), "the guard's write never waited");
    assert!(
        counted() + 100_000 < origin_bytes,
        "the buffers took all the origin sent: no write was left waiting"
    );
    let kick = rtmp_guard::control::sessions::Kick {
        reason: Reason::Kicked,
        description: "test".into(),
    };
    assert_eq!(h.guard.guard.sessions.kick_where(|_| true, &kick), 1);
    let Closed::Within(_, got) = c.wait_closed(Duration::from_secs(10)) else {
        panic!("the kicked session stayed open");
    };
    assert_eq!(
        counted(),
        got.len() as u64,
        "counted against received after the handshake"
    );
}

#[test]
fn session_stage_violation_closes_a_relaying_session() {
    let h = Harness::new();
    let mut c = RawClient::handshaken(h.addr());
    let mut bytes = connect_bytes("live");
    // A command with an unknown AMF marker after a valid connect.
    bytes.extend([0x03, 0, 0, 0, 0, 0, 3, 20, 0, 0, 0, 0, 0x42, 0, 0]);
    c.send(&bytes);
    assert!(matches!(
        c.wait_closed(Duration::from_secs(2)),
        Closed::Within(..)
    ));
    assert_eq!(h.blocked(Stage::Session, Reason::ProtocolViolation), 1);
    // The origin saw the connect but never the bad command.
    let got = common::wait_for(Duration::from_secs(2), || {
        let all = h.origin.received.lock().unwrap();
        let names = command_names(all.first()?);
        (!names.is_empty()).then_some(names)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(got, Some(vec!["connect".to_string()]));
    assert_eq!(
        command_names(&h.origin.received.lock().unwrap()[0]),
        ["connect"]
    );
}

#[test]
fn connections_over_max_connections_are_refused_at_accept() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = GuardConfig::new().server("max_connections = 2").build();
    let running = rt
        .block_on(rtmp_guard::start(Config::parse(&text, "t.toml").unwrap()))
        .unwrap();
    let _a = RawClient::tcp(running.rtmp_addrs[0]);
    let _b = RawClient::tcp(running.rtmp_addrs[0]);
    std::thread::sleep(Duration::from_millis(200));
    let mut third = RawClient::tcp(running.rtmp_addrs[0]);
    assert!(matches!(
        third.wait_closed(Duration::from_secs(1)),
        Closed::Within(..)
    ));
    assert_eq!(
        running
            .guard
            .metrics
            .blocked_count(Stage::Accept, Reason::TooManyConnections),
        1
    );
}

/// The `tcUrl` the client connects with.
const CLIENT_TC_URL: &str = "rtmp://guard.example:1935/live";
/// Where the origin's reconnect request would send the client instead.
const ELSEWHERE: &str = "rtmp://evil.example/elsewhere";

/// What a client connected to `live` with [`CLIENT_TC_URL`] reads through
/// a guard with the `[server]` lines `server`, in front of an origin that
/// accepts the `connect` and then sends an `onStatus` for each of `infos`:
/// the commands whose code is a reconnect request, and every byte.
fn reconnect_requests_read(
    server: &str,
    infos: Vec<Amf0Value>,
) -> (Vec<command::Command>, Vec<u8>) {
    let n = infos.len();
    let mut commands = vec![connect_success()];
    commands.extend(infos.into_iter().map(on_status));
    let h = Harness::replying(origin_commands(&commands), |origin| {
        GuardConfig::new().server(server).origin(origin).live()
    });
    let mut c = RawClient::handshaken(h.addr());
    let mut connect = connect_values("live");
    if let Amf0Value::Object(props) = &mut connect[2] {
        for (k, v) in props.iter_mut() {
            if k == "tcUrl" {
                *v = Amf0Value::String(CLIENT_TC_URL.into());
            }
        }
    }
    c.send(&command_bytes(&connect));
    c.stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let requests = |got: &[u8]| -> Vec<command::Command> {
        commands_in(got)
            .into_iter()
            .filter(|c| status_code(c).as_deref() == Some("NetConnection.Connect.ReconnectRequest"))
            .collect()
    };
    common::wait_for(Duration::from_secs(5), || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = std::io::Read::read(&mut c.stream, &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        (requests(&got).len() >= n).then_some(())
    });
    // Anything more the guard would send arrives too.
    std::thread::sleep(Duration::from_millis(200));
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = std::io::Read::read(&mut c.stream, &mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    let names = command_names(&got);
    assert!(
        names.first().map(String::as_str) == Some("_result"),
        "the client did not get the origin's connect reply first: {names:?}"
    );
    (requests(&got), got)
}

/// The reconnect request as an object and as an ECMA array (both are read
/// as the info object).
fn reconnect_infos() -> Vec<Amf0Value> {
    vec![
        Amf0Value::Object(reconnect_info(ELSEWHERE)),
        Amf0Value::EcmaArray(reconnect_info(ELSEWHERE)),
    ]
}

fn mentions(bytes: &[u8], text: &str) -> bool {
    bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

#[test]
fn an_origin_reconnect_request_sends_the_client_back_to_the_guard() {
    // The default is `reconnect_tcurl = "rewrite"`.
    for server in ["", "reconnect_tcurl = \"rewrite\""] {
        let (requests, got) = reconnect_requests_read(server, reconnect_infos());
        assert_eq!(requests.len(), 2, "[server] {server:?}: {requests:#?}");
        for (r, object) in requests.iter().zip([true, false]) {
            let info = &r.arguments[0];
            assert_eq!(
                matches!(info, Amf0Value::Object(_)),
                object,
                "the info's AMF type is kept: {info:?}"
            );
            let keys = keys_of(info);
            assert_eq!(keys, ["level", "code", "description", "tcUrl"]);
            assert_eq!(
                info.get("tcUrl").and_then(Amf0Value::as_str),
                Some(CLIENT_TC_URL),
                "[server] {server:?}"
            );
            assert_eq!(
                info.get("description").and_then(Amf0Value::as_str),
                Some("The streaming server is going away.")
            );
            assert_eq!((r.name.as_str(), r.transaction_id), ("onStatus", 0.0));
            assert_eq!(r.object, Amf0Value::Null);
        }
        assert!(!mentions(&got, "evil.example"), "[server] {server:?}");
    }
}

#[test]
fn an_origin_reconnect_request_loses_its_tc_url_under_strip() {
    let (requests, got) = reconnect_requests_read("reconnect_tcurl = \"strip\"", reconnect_infos());
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for r in &requests {
        let info = &r.arguments[0];
        let keys = keys_of(info);
        assert_eq!(keys, ["level", "code", "description"], "{info:?}");
    }
    assert!(!mentions(&got, "evil.example"));
    assert!(!mentions(&got, "tcUrl"));
}

/// Reconnect requests in shapes other than `onStatus(0, null, info)`: the
/// info a typed object (whose `code` the guard itself reads as a reconnect
/// request); the info in the command object's place; the info after a
/// string, where a client that takes the first object after the command
/// object (ffmpeg's `handle_invoke_status` reads status codes so) finds it.
/// None of them may carry the origin's `tcUrl` to the client.
#[test]
fn an_origin_reconnect_request_in_another_shape_keeps_no_tc_url_elsewhere() {
    let s = |v: &str| Amf0Value::String(v.into());
    let shapes = [
        (
            "typed object info",
            vec![
                s("onStatus"),
                Amf0Value::Number(0.0),
                Amf0Value::Null,
                Amf0Value::TypedObject {
                    class: "Info".into(),
                    properties: reconnect_info(ELSEWHERE),
                },
            ],
        ),
        (
            "info in the command object's place",
            vec![
                s("onStatus"),
                Amf0Value::Number(0.0),
                Amf0Value::Object(reconnect_info(ELSEWHERE)),
            ],
        ),
        (
            "info after a string",
            vec![
                s("onStatus"),
                Amf0Value::Number(0.0),
                Amf0Value::Null,
                s("x"),
                Amf0Value::Object(reconnect_info(ELSEWHERE)),
            ],
        ),
    ];
    let mut leaked = Vec::new();
    for (shape, command) in shapes {
        let h = Harness::replying(origin_commands(&[connect_success(), command]), |origin| {
            GuardConfig::new().origin(origin).live()
        });
        let mut c = RawClient::handshaken(h.addr());
        c.send(&connect_bytes("live"));
        c.stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut got = Vec::new();
        common::wait_for(Duration::from_secs(2), || {
            let mut buf = [0u8; 4096];
            match std::io::Read::read(&mut c.stream, &mut buf) {
                Ok(0) => Some(()),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    None
                }
                Err(_) => None,
            }
        });
        if mentions(&got, "evil.example") {
            leaked.push(shape);
        }
    }
    assert!(
        leaked.is_empty(),
        "the origin's tcUrl reached the client: {leaked:?}"
    );
}

/// The keys of an object or ECMA array, in order.
fn keys_of(value: &Amf0Value) -> Vec<&str> {
    value
        .properties()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_str())
        .collect()
}

/// A client's ping is answered by the guard on the client's own leg (the
/// direction that writes to the client carries the answer the other
/// direction owes), and never reaches the origin.
#[test]
fn a_clients_ping_is_answered_by_the_guard_and_not_forwarded() {
    let h = Harness::new();
    let mut c = RawClient::handshaken(h.addr());
    c.send(&connect_bytes("live"));
    assert!(h.origin.reaches(1, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    c.send(&control_bytes(Control::User(UserEvent::PingRequest(
        0x1234_5678,
    ))));
    let pong = c
        .read_message(Duration::from_secs(5), |h, p| {
            h.type_id == 4 && p.get(..2) == Some(&[0, 7][..])
        })
        .expect("a ping response");
    assert_eq!(pong.1, [0, 7, 0x12, 0x34, 0x56, 0x78]);
    let all = h.origin.received.lock().unwrap();
    let at_origin = messages_in(all.first().map(Vec::as_slice).unwrap_or_default());
    assert!(
        !at_origin.iter().any(|(h, _)| h.type_id == 4),
        "the ping reached the origin"
    );
}

/// The guard acknowledges what the client sent by its own count, and that
/// count includes the bytes that came in the same read as `connect`,
/// before the relay began: a client that enforces its window would
/// otherwise wait for an acknowledgement that never comes.
#[test]
fn the_guard_acknowledges_every_byte_after_connect_including_those_read_with_it() {
    let window = control_bytes(Control::WindowAckSize(50));
    let ping = control_bytes(Control::User(UserEvent::PingRequest(7)));
    assert_eq!((window.len(), ping.len()), (16, 18));
    let h = Harness::new();
    let mut c = RawClient::handshaken(h.addr());
    // One write: the window most likely arrives in the connect stage's
    // read, and is counted when the relay starts; if not, in the relay's
    // first read. Either way the count is the same.
    c.send(&[connect_bytes("live"), window].concat());
    assert!(h.origin.reaches(1, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    // 16 + 18 + 18 = 52 bytes since connect: past the window of 50.
    c.send(&ping);
    std::thread::sleep(Duration::from_millis(50));
    c.send(&ping);
    let ack = c
        .read_message(Duration::from_secs(5), |h, _| h.type_id == 3)
        .expect("an acknowledgement once 50 bytes had come");
    assert_eq!(
        ack.1,
        52u32.to_be_bytes(),
        "the sequence number counts them all"
    );
}

/// Video message bytes.
const VIDEO_LEN: usize = 5000;

fn video_payload() -> Vec<u8> {
    (0..VIDEO_LEN as u32).map(|i| i as u8).collect()
}

/// A video message on csid 6, stream 1, in the client's default 128-byte
/// chunks: (its first 33 chunks, the rest). The first part is more than
/// one of the guard's 4096-byte chunks, so the guard has output for it.
fn video_in_two_parts() -> (Vec<u8>, Vec<u8>) {
    let payload = video_payload();
    let len = (VIDEO_LEN as u32).to_be_bytes();
    let mut first = vec![0x06, 0, 0, 0, len[1], len[2], len[3], 9, 1, 0, 0, 0];
    let mut rest = Vec::new();
    for (i, chunk) in payload.chunks(128).enumerate() {
        let part = if i < 33 { &mut first } else { &mut rest };
        if i > 0 {
            part.push(0xc6);
        }
        part.extend_from_slice(chunk);
    }
    (first, rest)
}

/// The payloads of type `type_id` the origin read on its first connection.
fn origin_payloads(h: &Harness, type_id: u8) -> Vec<Vec<u8>> {
    let all = h.origin.received.lock().unwrap();
    all.first()
        .map_or_else(Vec::new, |bytes| payloads(bytes, type_id))
}

/// The payloads of type `type_id` in what one connection carried.
fn payloads(bytes: &[u8], type_id: u8) -> Vec<Vec<u8>> {
    messages_in(bytes)
        .into_iter()
        .filter(|(h, _)| h.type_id == type_id)
        .map(|(_, p)| p)
        .collect()
}

/// A client that has published `cam` through the guard, once the origin
/// has its connection.
fn publishing(h: &Harness) -> RawClient {
    let mut c = RawClient::handshaken(h.addr());
    c.publish("cam");
    assert!(h.origin.reaches(1, Duration::from_secs(5)));
    c
}

/// A whole audio message on csid 4, stream 1, whose payload ends in `last`.
fn audio(last: u8) -> [u8; 14] {
    [0x04, 0, 0, 0, 0, 0, 2, 8, 1, 0, 0, 0, 0xaf, last]
}

/// Ends the client's connection with a reset rather than a close.
fn reset(c: RawClient) {
    socket2::SockRef::from(&c.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// A whole audio message, then the start of a video message, then `end`
/// of the client's connection: the audio still reaches the origin, though
/// the output that holds it waits for the rest of the video. `end` gives
/// the client back if it must stay open until the check.
fn audio_before_an_open_message_reaches_the_origin(
    end: impl FnOnce(RawClient) -> Option<RawClient>,
) {
    let h = Harness::new();
    let mut c = publishing(&h);
    let (first, _) = video_in_two_parts();
    c.send(&[&audio(0x01)[..], &first].concat());
    let _open = end(c);
    let audio_at_origin = common::wait_for(Duration::from_secs(5), || {
        origin_payloads(&h, 8)
            .contains(&vec![0xaf, 0x01])
            .then_some(())
    });
    assert!(
        audio_at_origin.is_some(),
        "the whole audio message was written"
    );
}

#[test]
fn a_message_split_across_reads_goes_on_whole_once_its_rest_arrives() {
    let h = Harness::new();
    let mut c = publishing(&h);
    let (first, rest) = video_in_two_parts();
    c.send(&first);
    std::thread::sleep(Duration::from_millis(300));
    let written = h.origin.received.lock().unwrap()[0].len();
    c.send(&rest);
    let video = common::wait_for(Duration::from_secs(5), || {
        let v = origin_payloads(&h, 9);
        (!v.is_empty()).then_some(v)
    })
    .expect("the video reached the origin");
    assert_eq!(video, [video_payload()]);
    let total = h.origin.received.lock().unwrap()[0].len();
    assert!(
        total - written >= VIDEO_LEN,
        "none of the message was written before its rest came ({written} then {total})"
    );
}

/// A peer's last whole messages before a reset still reach the other
/// side. On a session whose bytes move often, the guard reads on past
/// tokio after a read that ends at a message boundary; when that read
/// meets the reset, the direction ends only once what was judged before
/// it is written. Ten clients, as the reset must land before the guard's
/// read of the last message for the read past tokio to meet it.
#[test]
fn a_publishers_last_message_before_a_reset_reaches_the_origin() {
    let h = Harness::new();
    for n in 1..=10 {
        let mut c = RawClient::handshaken(h.addr());
        c.publish("cam");
        assert!(h.origin.reaches(n, Duration::from_secs(5)));
        // Bytes moved just before: the guard reads on after the last one.
        c.send(&audio(0x01));
        std::thread::sleep(Duration::from_millis(5));
        c.send(&audio(0x02));
        reset(c);
    }
    let with_last = || {
        let all = h.origin.received.lock().unwrap();
        all.iter()
            .filter(|bytes| payloads(bytes, 8).contains(&vec![0xaf, 0x02]))
            .count()
    };
    let reached = common::wait_for(Duration::from_secs(5), || (with_last() == 10).then_some(()));
    assert!(
        reached.is_some(),
        "every publisher's last audio reached the origin before its reset ({} of 10)",
        with_last()
    );
}

/// Output parked for the rest of a message still goes when the client
/// resets instead of closing: the whole audio message before it reaches
/// the origin.
#[test]
fn output_waiting_for_the_rest_of_a_message_still_goes_when_the_peer_resets() {
    audio_before_an_open_message_reaches_the_origin(|c| {
        // Parked by now: the read past tokio found nothing.
        std::thread::sleep(Duration::from_millis(300));
        reset(c);
        None
    });
}

/// A client that holds a message open while it sends bytes that add no
/// output (acknowledgements, answered per hop) gets reads past tokio's
/// readiness for a bounded number of bytes per read of tokio's, no more.
/// Tokio's reads spend the task's budget, so the worker still serves the
/// sessions beside it.
#[test]
fn a_message_held_open_under_a_stream_of_acknowledgements_does_not_starve_the_worker() {
    let h = Harness::on_one_worker(|origin| {
        hostile::guard_config()
            .origin(origin)
            .origin_connect_timeout("1s")
            .live()
    });
    let mut holder = publishing(&h);
    let (first, _) = video_in_two_parts();
    holder.send(&first);
    let batch = control_bytes(Control::Acknowledgement(1)).repeat(4096);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let mut stream = holder.stream.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let started = std::time::Instant::now();
            let mut sent = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(10)
                && sent < (2 << 30)
                && stream.write_all(&batch).is_ok()
            {
                sent += batch.len();
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut beside = RawClient::handshaken(h.addr());
    beside.publish("cam2");
    let reached = h.origin.reaches(2, Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    assert!(sent > 1 << 20, "the holder sent only {sent} bytes");
    assert!(
        reached,
        "a session beside it got through while the holder sent {sent} bytes"
    );
}

/// A client refused in the middle of its writes still reads why. ffmpeg
/// writes releaseStream, FCPublish and createStream back to back and reads
/// only then; had the guard closed at once, those writes would meet a
/// closed socket, and the client a reset instead of the `onStatus`.
#[test]
fn a_client_refused_while_it_still_writes_reads_the_refusal() {
    let h = Harness::with_config(|origin| {
        hostile::guard_config()
            .origin(origin)
            .origin_connect_timeout("1s")
            .app("live", "publish = \"none\"\nblocked_streams = [\"cam7\"]")
    });
    let mut c = RawClient::handshaken(h.addr());
    c.send(&connect_bytes("live"));
    std::thread::sleep(Duration::from_millis(300));
    let s = |v: &str| Amf0Value::String(v.into());
    c.send(&command_bytes(&[
        s("releaseStream"),
        Amf0Value::Number(2.0),
        Amf0Value::Null,
        s("cam7"),
    ]));
    // Refused by now; the client, slow, still writes.
    std::thread::sleep(Duration::from_millis(100));
    for txn in 3..6 {
        let wrote = std::io::Write::write_all(&mut c.stream, &create_stream(f64::from(txn)));
        assert!(wrote.is_ok(), "write {txn} after the refusal: {wrote:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let Closed::Within(_, got) = c.wait_closed(Duration::from_secs(5)) else {
        panic!("the guard kept the refused connection open");
    };
    let why: Vec<String> = commands_in(&got)
        .iter()
        .filter(|c| c.name == "onStatus")
        .filter_map(|c| {
            c.arguments
                .first()?
                .get("description")?
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(
        why.iter().any(|d| d.contains("blocked content")),
        "no refusal in {why:?}"
    );
    assert_eq!(h.blocked(Stage::Session, Reason::ContentBlocked), 1);
}

#[test]
fn output_waiting_for_the_rest_of_a_message_still_goes_when_the_peer_closes() {
    audio_before_an_open_message_reaches_the_origin(|c| {
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        Some(c)
    });
}
