//! End to end with the programs operators run: nginx-rtmp as the origin,
//! ffmpeg and rtmpdump as clients, the guard binary in between.
//!
//! Each test prints SKIPPED when a tool is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::process::Command;
use std::time::Duration;

use common::client::{Closed, RawClient};
use common::procs::{
    ffmpeg_play, ffmpeg_publish, rtmpdump_background, wait_exit, GuardProc, Nginx,
};
use common::{blocked_sample, have_tools, hostile, wait_for};

fn guard_for(nginx: &Nginx) -> GuardProc {
    GuardProc::start(
        hostile::guard_config()
            .origin(nginx.rtmp)
            .origin_connect_timeout("3s")
            .live(),
    )
}

/// ffmpeg publishes through the guard while ffmpeg and rtmpdump play it
/// back through the guard.
#[test]
fn ffmpeg_publishes_and_ffmpeg_and_rtmpdump_play_through_the_guard() {
    if !have_tools("ffmpeg_publish_play", &["nginx", "ffmpeg", "rtmpdump"]) {
        return;
    }
    let nginx = Nginx::start("");
    let guard = guard_for(&nginx);
    let url = format!("rtmp://{}/live/e2e", guard.rtmp);
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = ffmpeg_publish(&url, 12, &dir.path().join("publish.log"));
    assert!(
        nginx.wait_publishing("e2e"),
        "nginx never saw the stream; guard log:\n{}",
        guard.log_text()
    );

    let flv = dir.path().join("out.flv");
    let rtmpdump = rtmpdump_background(&url, &flv);
    let (frames, out) = ffmpeg_play(&url, 7);
    let _ = rtmpdump.join();
    assert!(
        frames >= 100,
        "player decoded {frames} frames:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tags = flv_tags(&std::fs::read(&flv).unwrap_or_default());
    assert!(
        tags.video >= 50 && tags.audio >= 50,
        "rtmpdump FLV is not a valid stream: {tags:?}"
    );

    let status = wait_exit(&mut publisher, Duration::from_secs(20)).expect("publisher finished");
    assert!(
        status.success(),
        "publisher failed: {}",
        std::fs::read_to_string(dir.path().join("publish.log")).unwrap_or_default()
    );
    // Bytes really went through the guard, in both directions.
    assert!(guard.metric("rtmp_guard_bytes_total{direction=\"client_to_upstream\"}") > 100_000.0);
    assert!(guard.metric("rtmp_guard_bytes_total{direction=\"upstream_to_client\"}") > 100_000.0);
    assert_eq!(nginx.naccepted(), 3, "publisher, ffmpeg player, rtmpdump");
}

/// A publish to an app the guard does not serve fails, and nginx never
/// accepts that connection.
#[test]
fn unknown_app_never_reaches_nginx() {
    if !have_tools("unknown_app_never_reaches_nginx", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("application secret { live on; }");
    let guard = guard_for(&nginx);
    let before = nginx.naccepted();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rtmp://{}/secret/s1", guard.rtmp);
    let mut publisher = ffmpeg_publish(&url, 3, &dir.path().join("publish.log"));
    let status = wait_exit(&mut publisher, Duration::from_secs(15)).expect("ffmpeg exited");
    assert!(!status.success(), "publish to an unknown app succeeded");
    let log = std::fs::read_to_string(dir.path().join("publish.log")).unwrap_or_default();
    // ffmpeg prints the `_error` description it was sent.
    assert!(
        log.contains("application \"secret\" is not served here"),
        "ffmpeg should show the rejection: {log}"
    );
    assert_eq!(
        nginx.naccepted(),
        before,
        "nginx accepted a connection for an unknown app"
    );
    assert_eq!(guard.metric(&blocked_sample("connect", "unknown_app")), 1.0);
}

/// A player that stops reading is closed as `slow_consumer` once it has
/// taken no byte for `write_timeout`, while another player of the same
/// stream, and the publisher, go on: back-pressure held back only the slow
/// player's own upstream connection.
#[test]
fn a_player_that_stops_reading_is_closed_and_others_play_on() {
    if !have_tools("slow_consumer", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let guard = GuardProc::start(
        hostile::guard_config()
            .server("write_timeout = \"1s\"")
            .origin(nginx.rtmp)
            .origin_connect_timeout("3s")
            .live(),
    );
    let url = format!("rtmp://{}/live/slow", guard.rtmp);
    // About 12 Mbit/s: the stream fills a stuck player's buffers fast.
    let publisher = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25"])
        .args(["-t", "40", "-c:v", "flv1", "-q:v", "1", "-f", "flv", &url])
        .spawn()
        .expect("spawn ffmpeg publisher");
    let _publisher = common::procs::Proc {
        child: publisher,
        name: "ffmpeg-publish",
    };
    assert!(nginx.wait_publishing("slow"), "{}", guard.log_text());

    // It reads nothing after the handshake: at this bitrate its receive
    // buffer, and the guard's send buffer behind it, fill in seconds.
    let mut stuck = RawClient::handshaken(guard.rtmp);
    stuck.open_stream("live", "play", "slow");
    let healthy = std::thread::spawn({
        let url = url.clone();
        move || ffmpeg_play(&url, 8)
    });
    let sample = blocked_sample("session", "slow_consumer");
    let cut = wait_for(Duration::from_secs(30), || {
        (guard.metric(&sample) == 1.0).then_some(())
    });
    assert!(cut.is_some(), "never cut:\n{}", guard.log_text());
    // Behind what the kernel still holds for it, the guard closed it.
    assert!(
        matches!(
            stuck.wait_closed(Duration::from_secs(10)),
            Closed::Within(..)
        ),
        "the slow player's connection stayed open"
    );
    let (frames, out) = healthy.join().unwrap();
    assert!(
        frames >= 100,
        "the healthy player decoded {frames} frames:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(nginx.publishing("slow"), "the publisher was cut too");
    let log = guard.log_text();
    let events: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("\"event\":\"blocked\"") && l.contains("\"reason\":\"slow_consumer\"")
        })
        .collect();
    assert_eq!(events.len(), 1, "one log event for the refusal:\n{log}");
    assert!(events[0].contains("\"stream\":\"slow\""), "{}", events[0]);
    assert!(
        log.contains("\"end\":\"slow_consumer\""),
        "the session's end says why:\n{log}"
    );
}

/// The whole hostile set against a live guard while ffmpeg publishes
/// through it: every case closes within its deadline, nginx accepts none of
/// them, and the publisher and a new player are served throughout.
#[test]
fn hostile_set_never_reaches_nginx_while_a_publisher_streams() {
    if !have_tools("hostile_set_against_nginx", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let guard = guard_for(&nginx);
    let url = format!("rtmp://{}/live/hostile", guard.rtmp);
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = ffmpeg_publish(&url, 14, &dir.path().join("publish.log"));
    assert!(nginx.wait_publishing("hostile"));
    let accepted_before = nginx.naccepted();
    assert_eq!(accepted_before, 1);

    let failures = hostile::run_all(guard.rtmp);
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        nginx.naccepted(),
        accepted_before,
        "a hostile client reached nginx"
    );

    // Each case was counted under its reason.
    let mut expected: std::collections::HashMap<(&str, &str), f64> = Default::default();
    for case in hostile::cases() {
        *expected.entry((case.stage, case.reason)).or_default() += 1.0;
    }
    for ((stage, reason), n) in expected {
        assert_eq!(
            guard.metric(&blocked_sample(stage, reason)),
            n,
            "{stage}/{reason}"
        );
    }
    // Blocked sessions are logged as structured events.
    let log = guard.log_text();
    assert!(
        log.contains("\"event\":\"blocked\"") && log.contains("\"reason\":\"protocol_violation\"")
    );

    // The guard still serves: a new player gets frames, the publisher
    // finishes cleanly.
    let (frames, _) = ffmpeg_play(&url, 3);
    assert!(
        frames >= 25,
        "player after the hostile set got {frames} frames"
    );
    let status = wait_exit(&mut publisher, Duration::from_secs(25)).expect("publisher finished");
    assert!(
        status.success(),
        "publisher was disturbed by the hostile set"
    );
}

#[derive(Debug, Default)]
struct FlvTags {
    audio: usize,
    video: usize,
    script: usize,
}

/// Walks an FLV file's tags; stops at the first malformed one.
fn flv_tags(data: &[u8]) -> FlvTags {
    let mut tags = FlvTags::default();
    if data.len() < 13 || &data[..3] != b"FLV" {
        return tags;
    }
    let header_len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let mut pos = header_len + 4;
    while pos + 11 <= data.len() {
        let kind = data[pos];
        let size = u32::from_be_bytes([0, data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let end = pos + 11 + size + 4;
        if end > data.len() {
            break;
        }
        match kind {
            8 => tags.audio += 1,
            9 => tags.video += 1,
            18 => tags.script += 1,
            _ => break,
        }
        pos = end;
    }
    tags
}
