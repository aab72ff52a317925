//! Fleet mode end to end: three guard binaries in front of one nginx-rtmp,
//! sharing remedies, automatic bans and quotas through a real
//! `redis-server` (no persistence, on a free loopback port, stopped and
//! started again by the test).
//!
//! Each test prints SKIPPED when a tool is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::client::RawClient;
use common::config::GuardConfig;
use common::procs::{
    ffmpeg_play, ffmpeg_play_background, ffmpeg_publish, wait_exit, GuardProc, Nginx, Proc,
};
use common::{blocked_sample, free_port, have_tools, http, wait_for};

/// A redis-server with no persistence on 127.0.0.1:`port`, killed when
/// dropped.
struct Redis {
    _proc: Proc,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let redis = Redis {
            _proc: Proc {
                child,
                name: "redis-server",
            },
            port,
        };
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("redis-server did not start");
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// A fleet guard `name` in front of `nginx`, with a loopback admin API.
fn guard(name: &str, nginx: &Nginx, redis: &str, extra: &str) -> (GuardProc, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let g = GuardProc::start(
        GuardConfig::new()
            .tables(&format!("[admin]\nlisten = \"{admin}\"\n"))
            .tables(&format!(
                "[fleet]\nredis = \"{redis}\"\nname = \"{name}\"\nlease_ttl = \"2s\"\n"
            ))
            .origin(nginx.rtmp)
            .app("live", &format!("publish = \"none\"\n{extra}")),
    );
    (g, admin)
}

fn api(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = http(admin, method, path, None, body);
    (status, serde_json::from_str(&text).unwrap_or_default())
}

fn redis_up(g: &GuardProc) -> bool {
    g.metric("rtmp_guard_fleet_redis_up") == 1.0
}

/// Connects from `source` until `g` counts a `banned` refusal at accept;
/// how long that took, or `None` within `limit`.
fn refused_as_banned(g: &GuardProc, source: &str, limit: Duration) -> Option<Duration> {
    let sample = blocked_sample("accept", "banned");
    let before = g.metric(&sample);
    let start = Instant::now();
    wait_for(limit, || {
        let _c = RawClient::tcp_from(g.rtmp, source);
        std::thread::sleep(Duration::from_millis(20));
        (g.metric(&sample) > before).then(|| start.elapsed())
    })
}

fn ready(test: &str) -> bool {
    have_tools(test, &["nginx", "ffmpeg", "redis-server"])
}

#[test]
fn three_guards_share_bans_blocks_and_publishing_names_and_ride_out_redis_restarts() {
    if !ready("three_guards_share_bans_blocks_and_publishing_names_and_ride_out_redis_restarts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = Redis::start(port);
    let url = redis.url();
    let nginx = Nginx::start("");
    let (a, a_api) = guard("guard-a", &nginx, &url, "");
    let (b, b_api) = guard("guard-b", &nginx, &url, "");
    let (c, c_api) = guard("guard-c", &nginx, &url, "");
    for g in [&a, &b, &c] {
        assert!(
            wait_for(Duration::from_secs(10), || redis_up(g).then_some(())).is_some(),
            "not connected to Redis: {}",
            g.log_text()
        );
    }
    let (_, fleet) = api(a_api, "GET", "/api/v1/fleet", "");
    let names: Vec<&str> = fleet["guards"]
        .as_array()
        .map(|g| g.iter().filter_map(|g| g["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(3), || {
            let (_, f) = api(a_api, "GET", "/api/v1/fleet", "");
            (f["guards"].as_array().map_or(0, Vec::len) == 3).then_some(())
        })
        .is_some(),
        "A sees the fleet: {names:?}"
    );

    // A ban made on A refuses the client at B and C within 1 s.
    let (status, body) = api(
        a_api,
        "POST",
        "/api/v1/bans",
        r#"{"cidr": "127.0.0.5/32", "duration": "1h", "reason": "abuse report"}"#,
    );
    assert_eq!(status, 200, "{body}");
    for g in [&b, &c] {
        let took = refused_as_banned(g, "127.0.0.5", Duration::from_secs(3));
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(1)),
            "ban reached the guard in {took:?}: {}",
            g.log_text()
        );
    }
    // Bans broader than /8 need "force".
    let (status, body) = api(a_api, "POST", "/api/v1/bans", r#"{"cidr": "10.0.0.0/7"}"#);
    assert_eq!(status, 400, "{body}");

    // A block made on B ends a live publisher on C within 1 s.
    let film_log = dir.path().join("film.log");
    let mut film = ffmpeg_publish(&format!("rtmp://{}/live/film-1", c.rtmp), 30, &film_log);
    assert!(nginx.wait_publishing("film-1"), "film-1 never published");
    let sample = blocked_sample("session", "content_blocked");
    let (status, body) = api(
        b_api,
        "POST",
        "/api/v1/blocks",
        r#"{"app": "live", "stream": "film-*", "reason": "dmca"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let start = Instant::now();
    let ended = wait_for(Duration::from_secs(3), || {
        (c.metric(&sample) >= 1.0).then(|| start.elapsed())
    });
    assert!(
        ended.is_some_and(|t| t < Duration::from_secs(1)),
        "the publisher on C ended after {ended:?}: {}",
        c.log_text()
    );
    assert!(
        wait_exit(&mut film, Duration::from_secs(5)).is_some(),
        "ffmpeg still publishing"
    );

    // One publisher per name across guards.
    let cam_a = dir.path().join("cam-a.log");
    let _cam = ffmpeg_publish(&format!("rtmp://{}/live/cam", a.rtmp), 60, &cam_a);
    assert!(nginx.wait_publishing("cam"), "cam never published");
    std::thread::sleep(Duration::from_millis(1500));
    let busy = blocked_sample("session", "stream_busy");
    let cam_b = dir.path().join("cam-b.log");
    let mut second = ffmpeg_publish(&format!("rtmp://{}/live/cam", b.rtmp), 20, &cam_b);
    assert!(
        wait_for(Duration::from_secs(5), || (b.metric(&busy) >= 1.0)
            .then_some(()))
        .is_some(),
        "B let a second publisher of cam through: {}",
        b.log_text()
    );
    assert!(wait_exit(&mut second, Duration::from_secs(10)).is_some());

    // Sessions across the fleet, with GUARD:ID ids; a kick from another guard.
    let (status, list) = api(b_api, "GET", "/api/v1/sessions?scope=fleet", "");
    assert_eq!(status, 200, "{list}");
    let cam_id = list["sessions"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|s| s["stream"] == "cam" && s["role"] == "publish")
        })
        .and_then(|s| s["id"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no cam publisher in {list}"));
    assert!(cam_id.starts_with("guard-a:"), "{cam_id}");

    // Redis stopped: publish and play go on, new clients are admitted.
    drop(redis);
    for g in [&a, &b, &c] {
        assert!(
            wait_for(Duration::from_secs(10), || (!redis_up(g)).then_some(())).is_some(),
            "redis_up stayed 1"
        );
    }
    let after_log = dir.path().join("after.log");
    let _after = ffmpeg_publish(&format!("rtmp://{}/live/after", a.rtmp), 30, &after_log);
    assert!(
        nginx.wait_publishing("after"),
        "no publish with Redis down: {}",
        a.log_text()
    );
    let (frames, _) = ffmpeg_play(&format!("rtmp://{}/live/after", c.rtmp), 2);
    assert!(frames > 0, "no play with Redis down");
    assert!(a.log_text().contains("fleet_redis_down"));
    // A ban made on C while Redis is down...
    let (status, body) = api(c_api, "POST", "/api/v1/bans", r#"{"cidr": "127.0.0.6/32"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(refused_as_banned(&c, "127.0.0.6", Duration::from_secs(2)).is_some());

    // ...reaches A once Redis is back (empty: no persistence).
    let _redis = Redis::start(port);
    for g in [&a, &b, &c] {
        assert!(
            wait_for(Duration::from_secs(10), || redis_up(g).then_some(())).is_some(),
            "did not reconnect: {}",
            g.log_text()
        );
    }
    assert!(
        refused_as_banned(&a, "127.0.0.6", Duration::from_secs(5)).is_some(),
        "C's ban never reached A: {}",
        a.log_text()
    );
    // The first ban survived the empty Redis too: A gave it back.
    assert!(refused_as_banned(&b, "127.0.0.5", Duration::from_secs(3)).is_some());

    // Kick A's publisher through C.
    let (status, body) = api(c_api, "DELETE", &format!("/api/v1/sessions/{cam_id}"), "");
    assert_eq!(status, 200, "{body}");
    assert!(wait_for(Duration::from_secs(3), || (a
        .metric(&blocked_sample("session", "kicked"))
        >= 1.0)
        .then_some(()))
    .is_some());
}

#[test]
fn a_killed_guards_viewer_places_expire_and_the_quota_recovers() {
    if !ready("a_killed_guards_viewer_places_expire_and_the_quota_recovers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(free_port());
    let nginx = Nginx::start("");
    let (a, a_api) = guard("guard-a", &nginx, &redis.url(), "max_viewers = 1");
    let (mut b, _) = guard("guard-b", &nginx, &redis.url(), "max_viewers = 1");
    for g in [&a, &b] {
        assert!(wait_for(Duration::from_secs(10), || redis_up(g).then_some(())).is_some());
    }
    let _publisher = ffmpeg_publish(
        &format!("rtmp://{}/live/cam", a.rtmp),
        60,
        &dir.path().join("pub.log"),
    );
    assert!(nginx.wait_publishing("cam"));
    // B's one viewer fills the app for the whole fleet.
    let _viewer = ffmpeg_play_background(
        &format!("rtmp://{}/live/cam", b.rtmp),
        60,
        &dir.path().join("view.log"),
    );
    let b_viewers = |f: &serde_json::Value| {
        f["guards"].as_array().and_then(|g| {
            g.iter()
                .find(|g| g["name"] == "guard-b")
                .and_then(|g| g["counts"]["live"][1].as_u64())
        })
    };
    assert!(
        wait_for(Duration::from_secs(20), || {
            let (_, f) = api(a_api, "GET", "/api/v1/fleet", "");
            (b_viewers(&f) == Some(1)).then_some(())
        })
        .is_some(),
        "A never heard of B's viewer: {}",
        a.log_text()
    );
    let quota = blocked_sample("session", "quota_exceeded");
    let (frames, _) = ffmpeg_play(&format!("rtmp://{}/live/cam", a.rtmp), 1);
    assert_eq!(frames, 0);
    assert_eq!(a.metric(&quota), 1.0, "{}", a.log_text());
    // kill -9: B's places expire within the lease (2 s), then A admits.
    b.signal("KILL");
    assert!(b.wait_exit(Duration::from_secs(5)).is_some());
    let killed = Instant::now();
    let recovered = wait_for(Duration::from_secs(8), || {
        let (frames, _) = ffmpeg_play(&format!("rtmp://{}/live/cam", a.rtmp), 1);
        (frames > 0).then(|| killed.elapsed())
    });
    assert!(
        recovered.is_some_and(|t| t < Duration::from_secs(6)),
        "quota recovered after {recovered:?}: {}",
        a.log_text()
    );
}
