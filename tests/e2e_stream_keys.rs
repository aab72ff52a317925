//! Stream keys the way platforms hand them out, end to end: ffmpeg
//! publishes to `live/<key>` through the guard, nginx-rtmp sees the public
//! name, players play it, and the key appears nowhere (nginx's /stat and
//! log, the guard's log, audit log, metrics and admin API). Then the HTTP
//! auth callback's 3xx: the tests' own auth service renames a stream for
//! the guard and for nginx-rtmp's `on_publish` alike, and a redirect to a
//! remote `rtmp://` relay is refused.
//!
//! Each test prints SKIPPED when a tool is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::config::GuardConfig;
use common::procs::{ffmpeg_play, ffmpeg_publish, wait_exit, GuardProc, Nginx};
use common::{blocked_sample, form_service, free_port, have_tools, http, wait_for};

const KEY: &str = "sk_live_9f8e7d6c5b4aE2eTestKey";
const WRONG: &str = "sk_live_9f8e7d6c5b4aE2eWrongKy";
const NEW_KEY: &str = "sk_live_after_the_reload_0001";
const TOKEN: &str = "an-admin-token-for-e2e-tests";

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn api(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http(admin, method, path, Some(TOKEN), body)
}

/// Publishes `url` for `seconds` in the background and waits for it to
/// fail; returns its output.
fn refused_publish(url: &str, log: &Path) -> String {
    let mut p = ffmpeg_publish(url, 3, log);
    let status = wait_exit(&mut p, Duration::from_secs(15)).expect("ffmpeg exited");
    assert!(
        !status.success(),
        "a refused publish succeeded: {}",
        text(log)
    );
    text(log)
}

#[test]
fn a_stream_key_publishes_as_the_public_name_and_the_key_shows_nowhere() {
    if !have_tools("stream_key_mode", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("live.keys");
    std::fs::write(
        &keys,
        format!("# cameras\ncam7 = {KEY}\ncam8 = sk_live_other_000\n"),
    )
    .unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let guard = GuardProc::start(
        GuardConfig::new()
            // Five refusals from 127.0.0.1 would ban it.
            .tables("[bans]\nthreshold = 100")
            .admin(admin, &token)
            .audit(&audit)
            .origin(nginx.rtmp)
            .app(
                "live",
                &format!(
                    "publish = \"stream_key\"\nkeys_file = \"{}\"",
                    keys.display()
                ),
            ),
    );
    let log = |name: &str| dir.path().join(name);
    let mut outputs = Vec::new();

    // The encoder sends the key as its stream name; nginx sees cam7.
    let mut publisher = ffmpeg_publish(
        &format!("rtmp://{}/live/{KEY}", guard.rtmp),
        30,
        &log("publisher.log"),
    );
    assert!(
        nginx.wait_publishing("cam7"),
        "nginx never saw cam7: {}\n{}",
        guard.log_text(),
        text(&log("publisher.log"))
    );
    let stat = nginx.stat();
    assert!(!stat.contains(KEY), "the key reached nginx: {stat}");
    outputs.push(("nginx /stat", stat));

    // The operator sees cam7.
    let listed = wait_for(Duration::from_secs(10), || {
        let (_, body) = api(admin, "GET", "/api/v1/sessions", "");
        body.contains("\"cam7\"").then_some(body)
    })
    .expect("the publisher listed as cam7");
    outputs.push(("/api/v1/sessions", listed));

    // A player through the guard gets frames from live/cam7.
    let (frames, _) = ffmpeg_play(&format!("rtmp://{}/live/cam7", guard.rtmp), 3);
    assert!(frames >= 25, "player got {frames} frames");

    // A wrong key, and the public name sent as a key: refused like a
    // wrong key in key mode.
    for (n, name) in [WRONG, "cam8"].iter().enumerate() {
        let out = refused_publish(
            &format!("rtmp://{}/live/{name}", guard.rtmp),
            &log(&format!("wrong{n}.log")),
        );
        assert!(
            out.contains("NetStream.Publish.BadName") && out.contains("invalid stream key"),
            "{out}"
        );
    }
    assert!(!nginx.publishing("cam8"));
    assert_eq!(
        guard.metric(&blocked_sample("session", "unauthorized")),
        2.0
    );
    // The same key again: cam7 is taken.
    let out = refused_publish(
        &format!("rtmp://{}/live/{KEY}", guard.rtmp),
        &log("busy.log"),
    );
    assert!(out.contains("NetStream.Publish.BadName"), "{out}");
    assert_eq!(guard.metric(&blocked_sample("session", "stream_busy")), 1.0);

    // Another session playing the live key, or a random name: refused
    // alike (a play is no oracle for keys), and the key never reaches
    // nginx, the logs or the API.
    for name in [KEY, "sk_live_random_guess_0000"] {
        let (frames, out) = ffmpeg_play(&format!("rtmp://{}/live/{name}", guard.rtmp), 2);
        assert_eq!(frames, 0, "a play of {name:?} got frames");
        assert!(!out.status.success());
    }
    assert_eq!(
        guard.metric(&blocked_sample("session", "unauthorized")),
        4.0
    );
    assert!(!nginx.stat().contains(KEY));

    // A block on cam7 ends the key's publisher and refuses it next time.
    let (status, body) = api(
        admin,
        "POST",
        "/api/v1/blocks",
        "{\"app\": \"live\", \"stream\": \"cam7\", \"reason\": \"dmca\"}",
    );
    assert_eq!(status, 200, "{body}");
    let ended = wait_exit(&mut publisher, Duration::from_secs(15));
    assert!(ended.is_some(), "the blocked publisher goes on");
    assert!(
        wait_for(Duration::from_secs(10), || (!nginx.publishing("cam7"))
            .then_some(()))
        .is_some()
    );
    let out = refused_publish(
        &format!("rtmp://{}/live/{KEY}", guard.rtmp),
        &log("blocked.log"),
    );
    assert!(out.contains("blocked content"), "{out}");
    assert!(guard.metric(&blocked_sample("session", "content_blocked")) >= 2.0);

    // A reload re-reads the keys file: a new key publishes as its name,
    // a removed one is refused.
    std::fs::write(&keys, format!("cam7 = {KEY}\ncam9 = {NEW_KEY}\n")).unwrap();
    guard.signal("HUP");
    let reloaded = wait_for(Duration::from_secs(10), || {
        (guard.metric("rtmp_guard_config_reloads_total{result=\"success\"}") >= 1.0).then_some(())
    });
    assert!(reloaded.is_some(), "{}", guard.log_text());
    let mut p = ffmpeg_publish(
        &format!("rtmp://{}/live/{NEW_KEY}", guard.rtmp),
        3,
        &log("reloaded.log"),
    );
    assert!(nginx.wait_publishing("cam9"), "{}", guard.log_text());
    let _ = wait_exit(&mut p, Duration::from_secs(20));
    let out = refused_publish(
        &format!("rtmp://{}/live/sk_live_other_000", guard.rtmp),
        &log("removed.log"),
    );
    assert!(out.contains("invalid stream key"), "{out}");

    // No key anywhere the guard writes or shows, nor at the origin.
    for path in ["/api/v1/sessions", "/api/v1/blocks", "/api/v1/apps"] {
        outputs.push((path, api(admin, "GET", path, "").1));
    }
    outputs.push(("metrics", guard.metrics_text().unwrap_or_default()));
    outputs.push(("guard log", guard.log_text()));
    outputs.push(("audit log", text(&audit)));
    outputs.push(("nginx log", nginx.error_log()));
    let audit_text = text(&audit);
    assert!(
        audit_text.contains("\"unauthorized\"") && audit_text.contains("cam7"),
        "{audit_text}"
    );
    let guard_log = guard.log_text();
    assert!(guard_log.contains("publish cam7"), "{guard_log}");
    assert!(nginx.error_log().contains("name='cam7'"));
    for (what, out) in &outputs {
        for secret in [
            KEY,
            WRONG,
            NEW_KEY,
            "sk_live_other_000",
            "sk_live_random_guess",
        ] {
            assert!(!out.contains(secret), "{secret} in the {what}:\n{out}");
        }
    }
    // The wrong key's refusals name no stream at all.
    let refusals = guard_log
        .lines()
        .filter(|l| l.contains("\"blocked\"") && l.contains("\"unauthorized\""));
    assert_eq!(refusals.clone().count(), 5, "{guard_log}");
    for line in refusals {
        assert!(line.contains("\"stream\":\"\""), "{line}");
    }
}

/// An auth service implementing nginx-rtmp's `on_publish` contract: a
/// publish of `orig-secret-1` is renamed with `302 Location: renamed1`,
/// `remote` is sent to a remote relay (`302 Location: rtmp://...`),
/// anything else is refused.
fn start_auth_service() -> SocketAddr {
    form_service(|form| {
        let fields = rtmp_guard::policy::parse_query(form);
        let name = fields
            .iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.as_str());
        match name {
            Some("orig-secret-1") => "302 Found\r\nLocation: renamed1".to_string(),
            Some("remote") => format!(
                "302 Found\r\nLocation: rtmp://127.0.0.1:{}/live/x",
                free_port()
            ),
            _ => "403 Forbidden".to_string(),
        }
    })
}

#[test]
fn a_3xx_renames_the_stream_as_nginx_on_publish_does_and_a_remote_relay_is_refused() {
    if !have_tools("http_auth_3xx", &["nginx", "ffmpeg"]) {
        return;
    }
    let service = start_auth_service();
    let url = format!("http://{service}/auth");
    let nginx = Nginx::start(&format!(
        "application direct {{ live on; on_publish {url}; }}"
    ));
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let guard = GuardProc::start(GuardConfig::new().audit(&audit).origin(nginx.rtmp).app(
        "live",
        &format!(
            "publish = \"http\"\n\
                 http_auth = {{ url = \"{url}\", timeout = \"1s\", cache = \"30s\" }}"
        ),
    ));
    let log = |name: &str| dir.path().join(name);

    // Through the guard: live as renamed1, playable as renamed1.
    let mut p = ffmpeg_publish(
        &format!("rtmp://{}/live/orig-secret-1?k=v", guard.rtmp),
        8,
        &log("guard.log"),
    );
    assert!(
        nginx.wait_publishing("renamed1"),
        "{}\n{}",
        guard.log_text(),
        text(&log("guard.log"))
    );
    assert!(nginx.stat().contains("<name>live</name>"));
    assert!(!nginx.stat().contains("orig-secret-1"));
    let (frames, _) = ffmpeg_play(&format!("rtmp://{}/live/renamed1", guard.rtmp), 2);
    assert!(frames > 0, "no frames from renamed1 through the guard");
    assert!(wait_exit(&mut p, Duration::from_secs(20))
        .expect("publisher ended")
        .success());
    assert!(
        wait_for(Duration::from_secs(10), || (!nginx.publishing("renamed1"))
            .then_some(()))
        .is_some()
    );

    // nginx-rtmp's own on_publish, given the same service, agrees.
    let mut p = ffmpeg_publish(
        &format!("rtmp://{}/direct/orig-secret-1?k=v", nginx.rtmp),
        4,
        &log("direct.log"),
    );
    assert!(
        nginx.wait_publishing("renamed1"),
        "nginx's on_publish did not rename: {}",
        nginx.error_log()
    );
    assert!(nginx.stat().contains("<name>direct</name>"));
    let _ = wait_exit(&mut p, Duration::from_secs(20));

    // A redirect to a remote relay is refused, with a clear log line.
    let out = refused_publish(
        &format!("rtmp://{}/live/remote", guard.rtmp),
        &log("remote.log"),
    );
    assert!(out.contains("NetStream.Publish.BadName"), "{out}");
    assert_eq!(
        guard.metric(&blocked_sample("session", "unauthorized")),
        1.0
    );
    let guard_log = guard.log_text();
    let line = guard_log
        .lines()
        .find(|l| l.contains("\"unauthorized\""))
        .expect("the refusal is logged");
    assert!(
        line.contains("rtmp://") && line.contains("\"stream\":\"\""),
        "{line}"
    );
    assert!(!nginx.publishing("remote"));

    // The name before the rename is a secret: logged, audited, counted
    // nowhere.
    assert!(guard_log.contains("publish renamed1"), "{guard_log}");
    for (what, out) in [
        ("guard log", guard_log),
        ("audit log", text(&audit)),
        ("metrics", guard.metrics_text().unwrap_or_default()),
    ] {
        assert!(!out.contains("orig-secret-1"), "in the {what}:\n{out}");
    }
}
