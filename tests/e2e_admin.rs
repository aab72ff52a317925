//! The operator's remedies end to end: ffmpeg through the guard binary to
//! nginx-rtmp, driven through the admin API and signals.
//!
//! Each test prints SKIPPED when a tool is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::client::{Closed, RawClient};
use common::config::GuardConfig;
use common::procs::{
    ffmpeg_play, ffmpeg_play_background, ffmpeg_publish, wait_exit, GuardProc, Nginx,
};
use common::{blocked_sample, free_port, have_tools, http, wait_for};

const TOKEN: &str = "an-admin-token-for-e2e-tests";

/// A guard binary in front of `nginx` with the admin API (token), a state
/// file and an audit log in `dir`; `server_extra` goes into `[server]`.
fn guard(nginx: &Nginx, dir: &Path, server_extra: &str) -> (GuardProc, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let token = dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let g = GuardProc::start(
        GuardConfig::new()
            .server(server_extra)
            .admin(admin, &token)
            .state(&dir.join("state.json"))
            .audit(&dir.join("audit.jsonl"))
            .origin(nginx.rtmp)
            .live(),
    );
    (g, admin)
}

fn api(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = http(admin, method, path, Some(TOKEN), body);
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// The id of the live session doing `role` on `stream`, once listed.
fn session_id(admin: SocketAddr, role: &str, stream: &str) -> Option<u64> {
    wait_for(Duration::from_secs(15), || {
        let (_, list) = api(admin, "GET", "/api/v1/sessions", "");
        list["sessions"]
            .as_array()?
            .iter()
            .find_map(|s| (s["role"] == role && s["stream"] == stream).then(|| s["id"].as_u64())?)
    })
}

fn listed(admin: SocketAddr, id: u64) -> bool {
    let (_, list) = api(admin, "GET", "/api/v1/sessions", "");
    list["sessions"]
        .as_array()
        .is_some_and(|l| l.iter().any(|s| s["id"] == id))
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn remedies_end_live_ffmpeg_sessions_and_refuse_the_next() {
    if !have_tools("admin_remedies", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let (g, admin) = guard(&nginx, dir.path(), "");
    let rtmp = g.rtmp;

    // No token, a wrong token: 401.
    assert_eq!(http(admin, "GET", "/api/v1/sessions", None, "").0, 401);
    assert_eq!(
        http(
            admin,
            "DELETE",
            "/api/v1/sessions/1",
            Some("wrong-wrong-wrong-wrong"),
            ""
        )
        .0,
        401
    );

    // Kick a publisher: its ffmpeg ends, and nginx loses the stream.
    let log = dir.path().join("kick.log");
    let mut publisher = ffmpeg_publish(&format!("rtmp://{rtmp}/live/kickme"), 60, &log);
    let id = session_id(admin, "publish", "kickme").expect("publisher listed");
    assert!(nginx.wait_publishing("kickme"));
    let (status, _) = api(
        admin,
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        "{\"reason\": \"tos\"}",
    );
    assert_eq!(status, 200);
    let exit = wait_exit(&mut publisher, Duration::from_secs(10)).expect("ffmpeg ended");
    assert!(
        !exit.success(),
        "ffmpeg should fail when kicked: {}",
        text(&log)
    );
    assert!(
        wait_for(Duration::from_secs(5), || (!nginx.publishing("kickme"))
            .then_some(()))
        .is_some()
    );
    assert_eq!(g.metric(&blocked_sample("session", "kicked")), 1.0);

    // Block a stream: the live player's session ends within a second, and
    // the next play is refused.
    let log = dir.path().join("cam1.log");
    let _cam1 = ffmpeg_publish(&format!("rtmp://{rtmp}/live/cam1"), 60, &log);
    assert!(nginx.wait_publishing("cam1"));
    let play_log = dir.path().join("player.log");
    let mut player = ffmpeg_play_background(&format!("rtmp://{rtmp}/live/cam1"), 60, &play_log);
    let player_id = session_id(admin, "play", "cam1").expect("player listed");
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    let (status, body) = api(
        admin,
        "POST",
        "/api/v1/blocks",
        "{\"app\": \"live\", \"stream\": \"cam*\", \"reason\": \"dmca\"}",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_ended"], 2, "publisher and player: {body}");
    wait_for(Duration::from_secs(1), || {
        (!listed(admin, player_id)).then_some(())
    })
    .expect("the player's session ended within a second");
    let ended_in = asked.elapsed();
    wait_exit(&mut player, Duration::from_secs(10)).expect("the player's ffmpeg ended");
    let (frames, out) = ffmpeg_play(&format!("rtmp://{rtmp}/live/cam1"), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(frames, 0);
    assert!(stderr.contains("NetStream.Play.Failed"), "{stderr}");
    assert!(g.metric(&blocked_sample("session", "content_blocked")) >= 3.0);
    println!("block ended the player's session in {ended_in:?}");

    // Suspend the app: a new ffmpeg connect is rejected, by name.
    let (status, _) = api(
        admin,
        "POST",
        "/api/v1/apps/live/suspend",
        "{\"reason\": \"unpaid\"}",
    );
    assert_eq!(status, 200);
    let log = dir.path().join("suspended.log");
    let mut refused = ffmpeg_publish(&format!("rtmp://{rtmp}/live/other"), 5, &log);
    let exit = wait_exit(&mut refused, Duration::from_secs(10)).expect("ffmpeg ended");
    assert!(!exit.success());
    assert!(
        text(&log).contains("NetConnection.Connect.Rejected"),
        "{}",
        text(&log)
    );
    assert!(
        text(&log).contains("application suspended"),
        "{}",
        text(&log)
    );
    assert_eq!(g.metric(&blocked_sample("connect", "app_suspended")), 1.0);
    assert_eq!(api(admin, "POST", "/api/v1/apps/live/resume", "").0, 200);

    // Ban 127.0.0.2: its live session (a player nginx counts) is closed,
    // and its next connection never reaches nginx.
    let _pubr = ffmpeg_publish(
        &format!("rtmp://{rtmp}/live/news"),
        60,
        &dir.path().join("news.log"),
    );
    assert!(nginx.wait_publishing("news"));
    let mut from2 = RawClient::handshaken_from(rtmp, "127.0.0.2");
    from2.open_stream("live", "play", "news");
    session_id(admin, "play", "news").expect("127.0.0.2's player listed");
    let (status, body) = api(
        admin,
        "POST",
        "/api/v1/bans",
        "{\"cidr\": \"127.0.0.2/32\", \"duration\": \"1h\", \"reason\": \"abuse\"}",
    );
    assert_eq!(status, 200, "{body}");
    assert!(matches!(
        from2.wait_closed(Duration::from_secs(3)),
        Closed::Within(..)
    ));
    let accepted = nginx.naccepted();
    let mut again = RawClient::tcp_from(rtmp, "127.0.0.2");
    assert!(matches!(
        again.wait_closed(Duration::from_secs(2)),
        Closed::Within(_, got) if got.is_empty()
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        nginx.naccepted(),
        accepted,
        "nginx never saw the banned client"
    );
    assert_eq!(g.metric(&blocked_sample("session", "banned")), 1.0);
    assert!(g.metric(&blocked_sample("accept", "banned")) >= 1.0);

    // Every mutation is in the audit log.
    let audit = text(&dir.path().join("audit.jsonl"));
    for action in ["kick", "block", "suspend", "resume", "ban"] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "no {action} in the audit log:\n{audit}"
        );
    }
}

#[test]
fn ten_reloads_under_load_do_not_interrupt_publisher_or_player() {
    if !have_tools("reload_under_load", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let (g, admin) = guard(&nginx, dir.path(), "");
    let url = format!("rtmp://{}/live/cam1", g.rtmp);
    let log = dir.path().join("publish.log");
    let mut publisher = ffmpeg_publish(&url, 24, &log);
    assert!(nginx.wait_publishing("cam1"));
    let player = std::thread::spawn(move || ffmpeg_play(&url, 15));
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..10 {
        if i % 2 == 0 {
            g.signal("HUP");
        } else {
            assert_eq!(api(admin, "POST", "/api/v1/reload", "").0, 200);
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    let (frames, out) = player.join().unwrap();
    eprintln!("player got {frames} frames of 375 through ten reloads");
    assert!(
        frames >= 15 * 25 * 98 / 100,
        "player got {frames} frames of 375 through ten reloads: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exit = wait_exit(&mut publisher, Duration::from_secs(30)).expect("publisher finished");
    assert!(exit.success(), "{}", text(&log));
    let speed = common::procs::final_speed(&log).unwrap_or(0.0);
    assert!(speed >= 0.95, "publisher speed {speed}");
    assert_eq!(
        g.metric("rtmp_guard_config_reloads_total{result=\"success\"}"),
        10.0,
        "ten reloads (the start is not one)"
    );
}

#[test]
fn a_broken_config_on_reload_leaves_the_old_one_in_force() {
    if !have_tools("reload_broken", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let (g, admin) = guard(&nginx, dir.path(), "");
    let config_path = g.config_path();
    std::fs::write(
        &config_path,
        "[server]\nlisten = [\"127.0.0.1:1\"]\nmax_conections = 5\n",
    )
    .unwrap();
    g.signal("HUP");
    assert!(wait_for(Duration::from_secs(5), || {
        (g.metric("rtmp_guard_config_reloads_total{result=\"failure\"}") == 1.0).then_some(())
    })
    .is_some());
    // The log line goes through the log's writer thread: it may land just
    // after the count.
    let logged = wait_for(Duration::from_secs(5), || {
        let log = g.log_text();
        (log.contains("rtmp-guard.toml:3") && log.contains("max_conections")).then_some(())
    });
    assert!(logged.is_some(), "{}", g.log_text());
    let (status, body) = api(admin, "POST", "/api/v1/reload", "");
    assert_eq!(status, 422);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("max_conections"),
        "{body}"
    );
    // Still listening where it was, still relaying.
    let (frames, _) = {
        let _p = ffmpeg_publish(
            &format!("rtmp://{}/live/cam1", g.rtmp),
            8,
            &dir.path().join("p.log"),
        );
        assert!(nginx.wait_publishing("cam1"));
        ffmpeg_play(&format!("rtmp://{}/live/cam1", g.rtmp), 2)
    };
    assert!(frames >= 25, "{frames}");
}

#[test]
fn a_reload_cannot_drop_the_admin_token_but_can_rotate_it() {
    if !have_tools("reload_admin_token", &["nginx"]) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let (g, admin) = guard(&nginx, dir.path(), "");
    let config_path = g.config_path();
    let with_token = text(&config_path);
    let without: String = with_token
        .lines()
        .filter(|l| !l.starts_with("token_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without, with_token);
    std::fs::write(&config_path, &without).unwrap();
    g.signal("HUP");
    let failed = wait_for(Duration::from_secs(5), || {
        (g.metric("rtmp_guard_config_reloads_total{result=\"failure\"}") == 1.0).then_some(())
    });
    assert!(failed.is_some(), "{}", g.log_text());
    let logged = wait_for(Duration::from_secs(5), || {
        let log = g.log_text();
        (log.contains("admin.token_file") && log.contains("fixed at start")).then_some(())
    });
    assert!(logged.is_some(), "{}", g.log_text());
    // Still locked.
    assert_eq!(http(admin, "GET", "/api/v1/sessions", None, "").0, 401);
    let ban = "{\"cidr\": \"0.0.0.0/0\"}";
    assert_eq!(http(admin, "POST", "/api/v1/bans", None, ban).0, 401);
    let (status, body) = api(admin, "POST", "/api/v1/reload", "");
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("admin.token_file"),
        "{body}"
    );
    assert_eq!(
        api(admin, "GET", "/api/v1/bans", "").1["bans"],
        serde_json::json!([])
    );

    // Rotating the token file's contents is a reload like any other.
    const NEW: &str = "a-rotated-admin-token-for-e2e";
    std::fs::write(&config_path, &with_token).unwrap();
    std::fs::write(dir.path().join("admin.token"), NEW).unwrap();
    g.signal("HUP");
    let reloaded = wait_for(Duration::from_secs(5), || {
        (g.metric("rtmp_guard_config_reloads_total{result=\"success\"}") == 1.0).then_some(())
    });
    assert!(reloaded.is_some(), "{}", g.log_text());
    assert_eq!(
        http(admin, "GET", "/api/v1/sessions", Some(TOKEN), "").0,
        401
    );
    assert_eq!(http(admin, "GET", "/api/v1/sessions", Some(NEW), "").0, 200);
}

#[test]
fn sigterm_drains_live_sessions_then_exits_zero() {
    if !have_tools("sigterm_drain", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let (mut g, admin) = guard(&nginx, dir.path(), "drain_timeout = \"6s\"");
    let short_log = dir.path().join("short.log");
    let long_log = dir.path().join("long.log");
    let mut short = ffmpeg_publish(&format!("rtmp://{}/live/short", g.rtmp), 4, &short_log);
    let mut long = ffmpeg_publish(&format!("rtmp://{}/live/long", g.rtmp), 60, &long_log);
    assert!(wait_for(Duration::from_secs(10), || {
        (nginx.publishing("short") && nginx.publishing("long")).then_some(())
    })
    .is_some());
    let rtmp = g.rtmp;
    let term = Instant::now();
    g.signal("TERM");
    // Not ready, and not accepting, while the sessions go on.
    assert!(wait_for(Duration::from_secs(2), || {
        (http(admin, "GET", "/readyz", None, "").0 == 503).then_some(())
    })
    .is_some());
    assert!(
        std::net::TcpStream::connect(rtmp).is_err(),
        "still accepting"
    );
    // The short publisher finishes inside the drain, normally.
    let exit = wait_exit(&mut short, Duration::from_secs(10)).expect("short publisher ended");
    assert!(exit.success(), "{}", text(&short_log));
    // The long one is closed at drain_timeout, and the guard exits 0.
    let status = g.wait_exit(Duration::from_secs(15)).expect("guard exited");
    let took = term.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(10),
        "drain took {took:?}"
    );
    assert!(wait_exit(&mut long, Duration::from_secs(10)).is_some());
}

#[test]
fn kill_dash_nine_while_banning_never_leaves_a_torn_state_file() {
    if !have_tools("kill_9_state", &["nginx"]) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut saved = 0;
    for round in 0..8u32 {
        let (g, admin) = guard(&nginx, dir.path(), "");
        assert_eq!(
            g.metric("rtmp_guard_state_file_quarantined_total"),
            0.0,
            "round {round}: the last kill left a file the guard could not read"
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let banner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 500 {
                    let body = format!(
                        "{{\"cidr\": \"10.{}.{}.0/24\", \"reason\": \"round {round}\"}}",
                        round,
                        i % 250
                    );
                    http(admin, "POST", "/api/v1/bans", Some(TOKEN), &body);
                    i += 1;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(150 + 40 * round as u64));
        g.signal("KILL");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        banner.join().unwrap();
        drop(g);
        let text = std::fs::read_to_string(&state).expect("a state file exists");
        let parsed: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("round {round}: torn state file ({e}):\n{text}"));
        let bans = parsed["bans"].as_array().map_or(0, |b| b.len());
        assert!(
            bans >= saved,
            "round {round}: bans went from {saved} to {bans}"
        );
        saved = bans;
    }
    println!("{saved} bans survived eight kill -9 rounds");
    assert!(
        saved > 8,
        "the loop banned too little to prove anything: {saved}"
    );
}
