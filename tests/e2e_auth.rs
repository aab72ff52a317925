//! Who may publish and play what, end to end: ffmpeg and rtmpdump through
//! the guard to nginx-rtmp, with stream keys, signed URLs, content blocks,
//! one publisher per name, viewer quotas and referrers.
//!
//! Each test prints SKIPPED when a tool is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::config::GuardConfig;
use common::procs::{ffmpeg_play, ffmpeg_publish, wait_exit, GuardProc, Nginx};
use common::{blocked_sample, have_tools, wait_for};

const SECRET: &str = "an-hmac-secret-of-some-length";

/// nginx with apps `live`, `tok` and `ref`, and a guard in front with:
/// `live` publishing by key, viewers capped at 2, `pirated-*` blocked;
/// `tok` publishing by signed URL; `ref` playing only from one site.
fn setup() -> (Nginx, GuardProc, tempfile::TempDir) {
    let nginx = Nginx::start(
        "application tok { live on; }\n    application ref { live on; }\n    application cap { live on; }",
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("tok.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let guard = GuardProc::start(
        GuardConfig::new()
            .origin(nginx.rtmp)
            .app(
                "live",
                "publish = \"key\"\nkeys = { cam1 = \"s3cret\", cam2 = \"other\" }\n\
                 max_viewers = 2\nblocked_streams = [\"pirated-*\"]",
            )
            .app("tok", &tok_lines(&secret))
            .app(
                "ref",
                "publish = \"none\"\nreferrers = [\"https://www.example.com/*\"]",
            )
            .app("cap", "publish = \"none\"\nmax_publish_bitrate = \"2Mbit\""),
    );
    (nginx, guard, dir)
}

/// App `tok`: publishing by a URL signed with the secret in `secret`.
fn tok_lines(secret: &std::path::Path) -> String {
    format!(
        "publish = \"token\"\ntoken_secret_file = \"{}\"",
        secret.display()
    )
}

fn log_of(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    dir.path().join(name)
}

fn text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn stream_keys_let_the_right_publisher_in_and_keep_others_out() {
    if !have_tools("stream_keys", &["nginx", "ffmpeg"]) {
        return;
    }
    let (nginx, guard, dir) = setup();
    let url = format!("rtmp://{}/live/cam1", guard.rtmp);
    let mut publisher = ffmpeg_publish(&format!("{url}?key=s3cret"), 10, &log_of(&dir, "ok.log"));
    assert!(nginx.wait_publishing("cam1"), "{}", guard.log_text());
    let (frames, _) = ffmpeg_play(&url, 3);
    assert!(frames >= 25, "player got {frames} frames");

    // A wrong key, and no key: ffmpeg fails, nginx never sees the stream,
    // and ffmpeg's own output names the refusal.
    for (n, url) in [
        format!("rtmp://{}/live/cam2?key=wrong", guard.rtmp),
        format!("rtmp://{}/live/cam2", guard.rtmp),
    ]
    .iter()
    .enumerate()
    {
        let log = log_of(&dir, &format!("bad{n}.log"));
        let mut bad = ffmpeg_publish(url, 3, &log);
        let status = wait_exit(&mut bad, Duration::from_secs(15)).expect("ffmpeg exited");
        assert!(!status.success(), "a wrong key was accepted");
        let stderr = text(&log);
        assert!(
            stderr.contains("NetStream.Publish.BadName") && stderr.contains("invalid stream key"),
            "{stderr}"
        );
        let reply = stderr
            .lines()
            .find(|l| l.contains("Server error"))
            .unwrap_or("");
        assert!(!reply.contains("wrong"), "the key was echoed: {reply}");
    }
    assert!(!nginx.publishing("cam2"));
    assert_eq!(
        guard.metric(&blocked_sample("session", "unauthorized")),
        2.0
    );
    // Keys never reach the log.
    let log = guard.log_text();
    assert!(
        !log.contains("s3cret") && !log.contains("key=wrong"),
        "{log}"
    );

    // A second publisher of the live name is refused; the first goes on.
    let log = log_of(&dir, "busy.log");
    let mut second = ffmpeg_publish(&format!("{url}?key=s3cret"), 3, &log);
    let status = wait_exit(&mut second, Duration::from_secs(15)).expect("second exited");
    assert!(!status.success());
    assert!(
        text(&log).contains("NetStream.Publish.BadName"),
        "{}",
        text(&log)
    );
    assert_eq!(guard.metric(&blocked_sample("session", "stream_busy")), 1.0);
    assert!(nginx.publishing("cam1"));
    let status = wait_exit(&mut publisher, Duration::from_secs(20)).expect("publisher ended");
    assert!(status.success(), "{}", text(&log_of(&dir, "ok.log")));
}

#[test]
fn signed_urls_work_until_they_expire() {
    if !have_tools("signed_urls", &["nginx", "ffmpeg"]) {
        return;
    }
    let (nginx, guard, dir) = setup();
    // A URL minted by the operator's tool.
    let config = dir.path().join("token.toml");
    std::fs::write(
        &config,
        GuardConfig::new()
            .origin("127.0.0.1:1")
            .app("tok", &tok_lines(&dir.path().join("tok.secret")))
            .build(),
    )
    .unwrap();
    let mint = |stream: &str, role: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_rtmp-guard"))
            .arg("token")
            .arg("--config")
            .arg(&config)
            .args(["--app", "tok", "--stream", stream, "--role", role])
            .args(["--ttl", "10m", "--host", &guard.rtmp.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let url = mint("show", "publish");
    let mut publisher = ffmpeg_publish(&url, 4, &log_of(&dir, "tok.log"));
    assert!(
        nginx.wait_publishing("show"),
        "minted URL {url} was refused: {}",
        guard.log_text()
    );
    assert!(wait_exit(&mut publisher, Duration::from_secs(20))
        .expect("ended")
        .success());

    // The same, expired a minute ago.
    let past = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60;
    let query = rtmp_guard::policy::token::sign(
        SECRET.as_bytes(),
        "tok",
        "old",
        past,
        None,
        rtmp_guard::verdict::Kind::Publish,
    );
    let log = log_of(&dir, "expired.log");
    let mut expired = ffmpeg_publish(&format!("rtmp://{}/tok/old?{query}", guard.rtmp), 3, &log);
    assert!(!wait_exit(&mut expired, Duration::from_secs(15))
        .expect("exited")
        .success());
    assert!(text(&log).contains("expired token"), "{}", text(&log));
    assert!(!nginx.publishing("old"));

    // A viewer's URL, valid for playing, cannot publish.
    let play_url = mint("stage", "play");
    let log = log_of(&dir, "role.log");
    let mut crossed = ffmpeg_publish(&play_url, 3, &log);
    assert!(!wait_exit(&mut crossed, Duration::from_secs(15))
        .expect("exited")
        .success());
    assert!(
        text(&log).contains("NetStream.Publish.BadName")
            && text(&log).contains("token issued for another role"),
        "{}",
        text(&log)
    );
    assert!(!nginx.publishing("stage"));
    assert_eq!(
        guard.metric(&blocked_sample("session", "unauthorized")),
        2.0
    );
}

#[test]
fn blocked_names_and_viewer_quota() {
    if !have_tools("blocked_names_and_viewer_quota", &["nginx", "ffmpeg"]) {
        return;
    }
    let (nginx, guard, dir) = setup();
    // A blocked name cannot be published, even with a valid-looking key...
    let log = log_of(&dir, "pirated.log");
    let mut p = ffmpeg_publish(
        &format!("rtmp://{}/live/pirated-film?key=x", guard.rtmp),
        3,
        &log,
    );
    assert!(!wait_exit(&mut p, Duration::from_secs(15))
        .expect("exited")
        .success());
    assert!(
        text(&log).contains("blocked content"),
        "{}\n--- guard:\n{}",
        text(&log),
        guard.log_text()
    );
    // ...nor played.
    let (frames, out) = ffmpeg_play(&format!("rtmp://{}/live/pirated-film", guard.rtmp), 2);
    assert_eq!(frames, 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NetStream.Play.Failed"));
    assert_eq!(
        guard.metric(&blocked_sample("session", "content_blocked")),
        2.0
    );

    // max_viewers = 2: the third concurrent player is refused.
    let url = format!("rtmp://{}/live/cam1", guard.rtmp);
    let mut publisher = ffmpeg_publish(&format!("{url}?key=s3cret"), 14, &log_of(&dir, "pub.log"));
    assert!(nginx.wait_publishing("cam1"));
    let players: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || ffmpeg_play(&url, 6).0)
        })
        .collect();
    wait_for(Duration::from_secs(5), || {
        (guard.metric("rtmp_guard_sessions_active{app=\"live\"}") >= 3.0).then_some(())
    })
    .expect("two players connected");
    std::thread::sleep(Duration::from_millis(500));
    let (third, out) = ffmpeg_play(&url, 2);
    assert_eq!(third, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NetStream.Play.Failed"));
    assert_eq!(
        guard.metric(&blocked_sample("session", "quota_exceeded")),
        1.0
    );
    for p in players {
        assert!(p.join().unwrap() >= 25, "an admitted player got no frames");
    }
    assert!(wait_exit(&mut publisher, Duration::from_secs(20))
        .expect("ended")
        .success());
}

#[test]
fn referrers_are_checked_on_play() {
    if !have_tools("referrers", &["nginx", "ffmpeg", "rtmpdump"]) {
        return;
    }
    let (nginx, guard, dir) = setup();
    let url = format!("rtmp://{}/ref/cam", guard.rtmp);
    let mut publisher = ffmpeg_publish(&url, 10, &log_of(&dir, "ref.log"));
    assert!(nginx.wait_publishing("cam"));
    let dump = |page: &str, out: &std::path::Path| {
        Command::new("timeout")
            .args([
                "4", "rtmpdump", "--live", "-q", "-r", &url, "-p", page, "-o",
            ])
            .arg(out)
            .status()
            .unwrap();
        std::fs::metadata(out).map_or(0, |m| m.len())
    };
    let good = dump(
        "https://www.example.com/player.html",
        &dir.path().join("good.flv"),
    );
    let bad = dump(
        "https://evil.example/player.html",
        &dir.path().join("bad.flv"),
    );
    assert!(good > 50_000, "a matching pageUrl got {good} bytes");
    assert!(bad < 1_000, "a foreign pageUrl got {bad} bytes");
    assert_eq!(
        guard.metric(&blocked_sample("session", "bad_referrer")),
        1.0
    );
    assert!(wait_exit(&mut publisher, Duration::from_secs(20))
        .expect("ended")
        .success());
}

/// `max_publish_bitrate = "2Mbit"` with an 8 Mbit/s source: the session is
/// closed with bitrate_exceeded within about 15 s.
#[test]
fn publishers_over_the_bitrate_cap_are_closed() {
    if !have_tools("bitrate_cap", &["nginx", "ffmpeg"]) {
        return;
    }
    let (nginx, guard, dir) = setup();
    let log = log_of(&dir, "cap.log");
    let started = std::time::Instant::now();
    let status = Command::new("timeout")
        .arg("40")
        .arg("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "warning", "-re"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25",
            "-t",
            "30",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "8M",
            "-minrate",
            "8M",
        ])
        .args([
            "-maxrate",
            "8M",
            "-bufsize",
            "2M",
            "-x264-params",
            "nal-hrd=cbr",
            "-g",
            "25",
        ])
        .args(["-f", "flv", &format!("rtmp://{}/cap/fat", guard.rtmp)])
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let took = started.elapsed();
    assert!(
        !status.success(),
        "an 8 Mbit/s publisher outlived a 2 Mbit/s cap"
    );
    assert!(
        took < Duration::from_secs(17),
        "closed after {took:?}: {}",
        text(&log)
    );
    assert!(
        took > Duration::from_secs(9),
        "closed too early, after {took:?}"
    );
    assert_eq!(
        guard.metric(&blocked_sample("session", "bitrate_exceeded")),
        1.0
    );
    assert!(!nginx.publishing("fat"));
}
