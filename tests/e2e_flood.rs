//! The origin stays healthy under connection floods. In its own test
//! binary so that nothing else loads the machine while it checks that a
//! real-time publisher keeps real-time speed.
//!
//! Prints SKIPPED when a tool is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::time::Duration;

use common::config::GuardConfig;
use common::flood::{self, Mode};
use common::procs::{
    ffmpeg_play, ffmpeg_publish, final_speed, rss_kib, wait_exit, GuardProc, Nginx,
};
use common::{blocked_sample, have_tools};

fn flood_guard(nginx: &Nginx) -> GuardProc {
    GuardProc::start(
        GuardConfig::new()
            .server("handshake_timeout = \"2s\"\nconnect_timeout = \"3s\"")
            .origin(nginx.rtmp)
            .origin_connect_timeout("3s")
            .live(),
    )
}

/// The origin stays healthy under four kinds of connection flood, each at
/// 500 connections/s for 10 s from its own address, while ffmpeg publishes
/// in real time and a new player joins mid-flood.
#[test]
fn origin_stays_healthy_under_flood() {
    if !have_tools("origin_stays_healthy_under_flood", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let guard = flood_guard(&nginx);
    let url = format!("rtmp://{}/live/flood", guard.rtmp);
    let dir = tempfile::tempdir().unwrap();
    let publish_log = dir.path().join("publish.log");
    let seconds = 58;
    let started = std::time::Instant::now();
    let mut publisher = ffmpeg_publish(&url, seconds, &publish_log);
    assert!(nginx.wait_publishing("flood"));
    let rss_before = rss_kib(guard.pid()).unwrap();

    let modes = [
        ("127.0.0.2", Mode::Idle),
        ("127.0.0.3", Mode::Junk),
        ("127.0.0.4", Mode::C0C1Stall),
        ("127.0.0.5", Mode::HandshakeNoConnect),
    ];
    let mut max_rss = rss_before;
    let mut frames_mid_flood = 0;
    for (i, (source, mode)) in modes.into_iter().enumerate() {
        let target = guard.rtmp;
        let flood = std::thread::spawn(move || {
            flood::run(target, source, mode, 500, 10, Duration::from_secs(3))
        });
        if i == 1 {
            // A fresh player joins during the flood.
            std::thread::sleep(Duration::from_secs(2));
            frames_mid_flood = ffmpeg_play(&url, 4).0;
        }
        let stats = flood.join().unwrap();
        assert!(
            stats.elapsed >= Duration::from_secs(10) && stats.attempted >= 5000,
            "{mode:?}: flood too small: {stats:?}"
        );
        max_rss = max_rss.max(rss_kib(guard.pid()).unwrap_or(0));
        // Every flooding address ends up banned.
        let log = guard.log_text();
        assert!(
            log.lines()
                .any(|l| l.contains("\"event\":\"ban\"") && l.contains(&format!("{source}/32"))),
            "{source} ({mode:?}) was never banned"
        );
    }
    assert!(
        frames_mid_flood >= 25,
        "player during the flood got {frames_mid_flood} frames"
    );

    let status = wait_exit(&mut publisher, Duration::from_secs(30)).expect("publisher finished");
    let took = started.elapsed();
    let speed = final_speed(&publish_log).unwrap_or(0.0);
    assert!(
        status.success(),
        "publisher failed: {}",
        std::fs::read_to_string(&publish_log).unwrap_or_default()
    );
    assert!(
        speed >= 0.95,
        "publisher fell behind real time: speed={speed}"
    );
    assert!(
        took < Duration::from_secs(u64::from(seconds) + 8),
        "publisher took {took:?}"
    );
    // Only the publisher and the player reached nginx.
    assert_eq!(nginx.naccepted(), 2, "flood connections reached nginx");
    assert!(
        max_rss < rss_before + 64 * 1024,
        "guard RSS grew from {rss_before} KiB to {max_rss} KiB"
    );
    assert!(guard.metric("rtmp_guard_bans_active") >= 4.0);
    assert!(guard.metric(&blocked_sample("accept", "banned")) > 10_000.0);
}
