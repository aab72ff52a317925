//! The admin API in-process, in front of a test origin: auth, kicks, bans,
//! blocks, suspensions, reloads, the state file and the audit log.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::client::{commands_in, status_code, Closed, RawClient};
use common::config::GuardConfig;
use common::origin::{Harness, TestOrigin};
use common::{http, http_raw, wait_for};
use rtmp_guard::config::Config;
use rtmp_guard::verdict::{Reason, Stage};

const TOKEN: &str = "an-admin-token-of-some-length";

/// The config for one test: admin API with a token (written here), state
/// and audit files in `dir`, app `live` in front of `origin`.
fn config(dir: &Path, origin: SocketAddr) -> GuardConfig {
    let token = dir.join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    GuardConfig::new()
        .admin("127.0.0.1:0", &token)
        .state(&dir.join("state.json"))
        .audit(&dir.join("audit.jsonl"))
        .origin(origin)
        .live()
}

struct Admin {
    h: Harness,
    dir: tempfile::TempDir,
}

impl Admin {
    fn start() -> Admin {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::with_config(|origin| config(dir.path(), origin));
        Admin { h, dir }
    }

    /// The admin API on loopback with no token, as the config allows.
    fn start_without_token() -> Admin {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::with_config(|origin| {
            GuardConfig::new()
                .tables("[admin]\nlisten = \"127.0.0.1:0\"\n")
                .audit(&dir.path().join("audit.jsonl"))
                .origin(origin)
                .live()
        });
        Admin { h, dir }
    }

    fn addr(&self) -> SocketAddr {
        self.h.guard.admin_addr.expect("admin API listening")
    }

    /// A request with exactly these header lines (and the body).
    fn raw(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
        let (status, head, body) = http_raw(self.addr(), method, path, headers, body);
        (status, format!("{head}\r\n\r\n{body}"))
    }

    fn bans(&self) -> usize {
        self.h.guard.guard.remedies.load().bans.len()
    }

    fn api(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let addr = self.h.guard.admin_addr.expect("admin API listening");
        let (status, text) = http(addr, method, path, Some(TOKEN), body);
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        self.h.guard.guard.audit.flush();
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    /// A client from `source` that opened `command` `name` on app live and
    /// is relaying (listed by the API).
    fn live_client(&self, source: &str, command: &str, name: &str) -> RawClient {
        let sessions = &self.h.guard.guard.sessions;
        let newest = || sessions.list().last().map_or(0, |s| s.id);
        let before = newest();
        let mut c = RawClient::handshaken_from(self.h.addr(), source);
        c.open_stream("live", command, name);
        wait_for(Duration::from_secs(5), || {
            let s = sessions.list().into_iter().find(|s| s.id > before)?;
            (!s.streams().is_empty()).then_some(())
        })
        .expect("session relaying its stream");
        c
    }
}

/// The status code of the first error reply in what the client got before
/// the guard closed; panics if it stayed open.
fn closed_with(c: &mut RawClient) -> String {
    match c.wait_closed(Duration::from_secs(5)) {
        Closed::Within(_, got) => commands_in(&got)
            .iter()
            .find_map(status_code)
            .unwrap_or_else(|| "closed without a reply".into()),
        Closed::StillOpen => panic!("the session stayed open"),
    }
}

#[test]
fn every_api_call_needs_the_token_but_health_checks_do_not() {
    let a = Admin::start();
    let addr = a.h.guard.admin_addr.unwrap();
    assert_eq!(http(addr, "GET", "/api/v1/sessions", None, "").0, 401);
    assert_eq!(
        http(
            addr,
            "GET",
            "/api/v1/sessions",
            Some("wrong-token-wrong-token"),
            ""
        )
        .0,
        401
    );
    assert_eq!(http(addr, "POST", "/api/v1/reload", None, "").0, 401);
    assert_eq!(
        http(addr, "GET", "/api/v1/sessions", Some(TOKEN), "").0,
        200
    );
    assert_eq!(http(addr, "GET", "/healthz", None, "").0, 200);
    assert_eq!(http(addr, "GET", "/readyz", None, "").0, 200);
    let (status, body) = a.api("POST", "/api/v1/bans", "{\"cidr\": 5}");
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("bad JSON"),
        "{body}"
    );
    assert_eq!(a.api("GET", "/api/v1/nothing", "").0, 404);
}

#[test]
fn a_kicked_session_gets_an_error_status_and_is_listed_until_then() {
    let a = Admin::start();
    let mut c = a.live_client("127.0.0.1", "publish", "cam1?key=hush");
    let (status, list) = a.api("GET", "/api/v1/sessions", "");
    assert_eq!(status, 200);
    let s = &list["sessions"][0];
    assert_eq!(s["app"], "live");
    assert_eq!(s["stream"], "cam1", "no query string: {s}");
    assert_eq!(s["role"], "publish");
    assert!(s["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(s["bytes_client_to_upstream"].as_u64().unwrap() > 0);
    let id = s["id"].as_u64().unwrap();

    let (status, _) = a.api(
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        "{\"reason\": \"abuse report 42\"}",
    );
    assert_eq!(status, 200);
    assert_eq!(closed_with(&mut c), "NetConnection.Connect.Closed");
    assert_eq!(a.h.blocked(Stage::Session, Reason::Kicked), 1);
    assert_eq!(
        a.api("DELETE", &format!("/api/v1/sessions/{id}"), "").0,
        404
    );
    let audit = a.audit();
    assert!(audit
        .iter()
        .any(|l| l["action"] == "kick" && l["reason"] == "abuse report 42"));
    assert!(audit
        .iter()
        .any(|l| l["event"] == "blocked" && l["reason"] == "kicked" && l["stream"] == "cam1"));
}

#[test]
fn a_ban_ends_live_sessions_from_the_prefix_and_refuses_new_ones() {
    let a = Admin::start();
    let mut banned = a.live_client("127.0.0.2", "play", "cam1");
    let mut other = a.live_client("127.0.0.3", "play", "cam1");
    let (status, body) = a.api(
        "POST",
        "/api/v1/bans",
        "{\"cidr\": \"127.0.0.2/32\", \"duration\": \"1h\", \"reason\": \"abuse\"}",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_ended"], 1);
    assert_eq!(closed_with(&mut banned), "NetConnection.Connect.Closed");
    assert_eq!(
        other.wait_closed(Duration::from_millis(300)),
        Closed::StillOpen
    );
    let mut again = RawClient::tcp_from(a.h.addr(), "127.0.0.2");
    assert!(matches!(
        again.wait_closed(Duration::from_secs(2)),
        Closed::Within(_, got) if got.is_empty()
    ));
    assert!(a.h.blocked(Stage::Accept, Reason::Banned) >= 1);
    assert_eq!(a.h.blocked(Stage::Session, Reason::Banned), 1);

    let (_, list) = a.api("GET", "/api/v1/bans", "");
    let ban = &list["bans"][0];
    assert_eq!(ban["cidr"], "127.0.0.2/32");
    assert_eq!(ban["source"], "operator");
    assert!(ban["until"].as_u64().unwrap() > 0);
    assert_eq!(a.api("DELETE", "/api/v1/bans/127.0.0.2%2F32", "").0, 200);
    assert_eq!(a.api("DELETE", "/api/v1/bans/127.0.0.2%2F32", "").0, 404);
    let _c = a.live_client("127.0.0.2", "play", "cam1");
}

#[test]
fn automatic_bans_are_listed_and_can_be_lifted() {
    let a = Admin::start();
    // Unknown apps score 3 each; the fourth passes the threshold of 10.
    for _ in 0..4 {
        let mut c = RawClient::handshaken_from(a.h.addr(), "127.0.0.4");
        c.send(&common::client::connect_bytes("nope"));
        assert!(matches!(
            c.wait_closed(Duration::from_secs(3)),
            Closed::Within(..)
        ));
    }
    let (_, list) = a.api("GET", "/api/v1/bans", "");
    let ban = list["bans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["cidr"] == "127.0.0.4/32")
        .unwrap_or_else(|| panic!("no automatic ban listed: {list}"))
        .clone();
    assert_eq!(ban["source"], "automatic");
    assert_eq!(ban["reason"], "unknown_app");
    assert_eq!(a.api("DELETE", "/api/v1/bans/127.0.0.4%2F32", "").0, 200);
    let _c = a.live_client("127.0.0.4", "play", "cam1");
}

#[test]
fn a_block_ends_matching_players_and_publishers_and_refuses_later_ones() {
    let a = Admin::start();
    let mut publisher = a.live_client("127.0.0.1", "publish", "film-1");
    let mut player = a.live_client("127.0.0.1", "play", "film-1");
    let mut unrelated = a.live_client("127.0.0.1", "play", "news");
    let (status, body) = a.api(
        "POST",
        "/api/v1/blocks",
        "{\"app\": \"live\", \"stream\": \"film-*\", \"reason\": \"dmca\"}",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_ended"], 2);
    assert_eq!(closed_with(&mut publisher), "NetConnection.Connect.Closed");
    assert_eq!(closed_with(&mut player), "NetConnection.Connect.Closed");
    assert_eq!(
        unrelated.wait_closed(Duration::from_millis(300)),
        Closed::StillOpen
    );

    let mut c = RawClient::handshaken(a.h.addr());
    c.open_stream("live", "play", "film-2");
    assert_eq!(closed_with(&mut c), "NetStream.Play.Failed");
    assert!(a.h.blocked(Stage::Session, Reason::ContentBlocked) >= 3);
    let (_, list) = a.api("GET", "/api/v1/blocks", "");
    assert_eq!(list["blocks"][0]["reason"], "dmca");
    let lift = "{\"app\": \"live\", \"stream\": \"film-*\"}";
    assert_eq!(a.api("DELETE", "/api/v1/blocks", lift).0, 200);
    let _c = a.live_client("127.0.0.1", "play", "film-2");
}

#[test]
fn a_suspended_app_refuses_connects_until_resumed() {
    let a = Admin::start();
    let mut live = a.live_client("127.0.0.1", "publish", "cam1");
    let (status, body) = a.api(
        "POST",
        "/api/v1/apps/live/suspend",
        "{\"reason\": \"unpaid\"}",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(closed_with(&mut live), "NetConnection.Connect.Closed");
    let (_, apps) = a.api("GET", "/api/v1/apps", "");
    assert_eq!(apps["apps"][0]["state"], "suspended");

    let mut c = RawClient::handshaken(a.h.addr());
    c.send(&common::client::connect_bytes("live"));
    assert_eq!(closed_with(&mut c), "NetConnection.Connect.Rejected");
    assert_eq!(a.h.blocked(Stage::Connect, Reason::AppSuspended), 1);
    assert_eq!(a.api("POST", "/api/v1/apps/nope/suspend", "").0, 404);

    assert_eq!(a.api("POST", "/api/v1/apps/live/resume", "").0, 200);
    let (_, apps) = a.api("GET", "/api/v1/apps", "");
    assert_eq!(apps["apps"][0]["state"], "active");
    let _c = a.live_client("127.0.0.1", "publish", "cam1");

    // terminate = false leaves live sessions alone.
    let mut stays = a.live_client("127.0.0.1", "play", "cam1");
    let body = "{\"terminate\": false}";
    assert_eq!(a.api("POST", "/api/v1/apps/live/suspend", body).0, 200);
    assert_eq!(
        stays.wait_closed(Duration::from_millis(300)),
        Closed::StillOpen
    );
}

/// A guard started on `dir`'s config file, as `rtmp-guard --config` does.
fn start_from_file(
    dir: &Path,
    origin: SocketAddr,
) -> (tokio::runtime::Runtime, rtmp_guard::Running, PathBuf) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let path = dir.join("rtmp-guard.toml");
    if !path.exists() {
        std::fs::write(&path, config(dir, origin).build()).unwrap();
    }
    let config = Config::load(&path).unwrap();
    let running = rt
        .block_on(rtmp_guard::start_from(config, Some(path.clone())))
        .unwrap();
    (rt, running, path)
}

#[test]
fn remedies_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(TestOrigin::start());
    {
        let (_rt, running, _) = start_from_file(dir.path(), origin.addr);
        let addr = running.admin_addr.unwrap();
        let post = |path: &str, body: &str| http(addr, "POST", path, Some(TOKEN), body).0;
        assert_eq!(
            post(
                "/api/v1/bans",
                "{\"cidr\": \"192.0.2.0/24\", \"reason\": \"r\"}"
            ),
            200
        );
        assert_eq!(
            post("/api/v1/blocks", "{\"app\": \"live\", \"stream\": \"x-*\"}"),
            200
        );
        assert_eq!(post("/api/v1/apps/live/suspend", "{}"), 200);
    }
    let (_rt, running, _) = start_from_file(dir.path(), origin.addr);
    let remedies = running.guard.remedies.load();
    assert_eq!(remedies.bans[0].cidr.to_string(), "192.0.2.0/24");
    assert_eq!(remedies.bans[0].until, None);
    assert_eq!(remedies.blocks[0].stream, "x-*");
    assert_eq!(remedies.suspensions[0].app, "live");
    // In force, not just listed.
    let mut c = RawClient::handshaken(running.rtmp_addrs[0]);
    c.send(&common::client::connect_bytes("live"));
    assert_eq!(closed_with(&mut c), "NetConnection.Connect.Rejected");
}

#[test]
fn a_corrupt_state_file_is_quarantined_and_the_guard_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.json"), "{\"bans\": [{\"cidr\": ").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(TestOrigin::start());
    let (_rt, running, _) = start_from_file(dir.path(), origin.addr);
    assert_eq!(running.guard.metrics.state_file_quarantined_total.get(), 1);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("state.json.corrupt-")),
        "{names:?}"
    );
    assert!(running.guard.remedies.load().bans.is_empty());
    let _c = RawClient::handshaken(running.rtmp_addrs[0]);
}

#[test]
fn reload_applies_a_valid_file_and_a_broken_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(TestOrigin::start());
    let (_rt, running, path) = start_from_file(dir.path(), origin.addr);
    let addr = running.admin_addr.unwrap();
    let metric = |s: &str| common::metric(&running.guard.metrics.render(), s).unwrap();
    let mut live = RawClient::handshaken(running.rtmp_addrs[0]);
    live.open_stream("live", "publish", "cam1");

    // Deny loopback: new connections are refused, the live one stays.
    let text = config(dir.path(), origin.addr)
        .tables("[access]\ndeny = [\"127.0.0.0/8\"]\n")
        .build();
    std::fs::write(&path, text).unwrap();
    let (status, body) = http(addr, "POST", "/api/v1/reload", Some(TOKEN), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric("rtmp_guard_config_reloads_total{result=\"success\"}"),
        1.0
    );
    let mut refused = RawClient::tcp(running.rtmp_addrs[0]);
    assert!(matches!(
        refused.wait_closed(Duration::from_secs(2)),
        Closed::Within(_, got) if got.is_empty()
    ));
    assert_eq!(
        running
            .guard
            .metrics
            .blocked_count(Stage::Accept, Reason::IpDenied),
        1
    );
    assert_eq!(
        live.wait_closed(Duration::from_millis(300)),
        Closed::StillOpen
    );

    // A broken file: the API says where, and the deny stays in force.
    std::fs::write(&path, "[server]\nlisten = [\"127.0.0.1:0\"]\nbogus = 1\n").unwrap();
    let (status, body) = http(addr, "POST", "/api/v1/reload", Some(TOKEN), "");
    assert_eq!(status, 422);
    assert!(
        body.contains("rtmp-guard.toml:3") && body.contains("bogus"),
        "{body}"
    );
    assert_eq!(
        metric("rtmp_guard_config_reloads_total{result=\"failure\"}"),
        1.0
    );
    let mut refused = RawClient::tcp(running.rtmp_addrs[0]);
    assert!(matches!(
        refused.wait_closed(Duration::from_secs(2)),
        Closed::Within(_, got) if got.is_empty()
    ));
}

/// What a web page could make a browser send: no JSON content type (a
/// "simple" cross-origin request needs no preflight), or a preflight.
#[test]
fn state_changing_requests_need_a_json_content_type_and_cors_is_never_granted() {
    let a = Admin::start();
    let auth = format!("Host: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n");
    let ban = "{\"cidr\": \"0.0.0.0/0\", \"reason\": \"page\"}";
    for content_type in [
        "",
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
    ] {
        let (status, text) = a.raw(
            "POST",
            "/api/v1/bans",
            &format!("{auth}{content_type}"),
            ban,
        );
        assert_eq!(status, 415, "{content_type:?}: {text}");
        assert!(text.contains("Content-Type: application/json"), "{text}");
    }
    assert_eq!(a.bans(), 0, "a refused request changed nothing");
    // Empty bodies too.
    assert_eq!(a.raw("POST", "/api/v1/reload", &auth, "").0, 415);
    assert_eq!(a.raw("POST", "/api/v1/apps/live/suspend", &auth, "").0, 415);
    let (_, apps) = a.api("GET", "/api/v1/apps", "");
    assert_eq!(apps["apps"][0]["state"], "active");

    // A DELETE with an empty body: refused without the header, and the ban
    // it would lift stays; with it (parameters allowed), the ban goes.
    let one = "{\"cidr\": \"192.0.2.0/24\"}";
    assert_eq!(a.api("POST", "/api/v1/bans", one).0, 200);
    assert_eq!(
        a.raw("DELETE", "/api/v1/bans/192.0.2.0%2F24", &auth, "").0,
        415
    );
    assert_eq!(a.bans(), 1);
    let json = format!("{auth}Content-Type: Application/JSON; charset=utf-8\r\n");
    assert_eq!(
        a.raw("DELETE", "/api/v1/bans/192.0.2.0%2F24", &json, "").0,
        200
    );
    assert_eq!(a.bans(), 0);

    // Reads need no content type.
    assert_eq!(a.raw("GET", "/api/v1/bans", &auth, "").0, 200);

    // A CORS preflight gets no grant, with or without the token.
    let preflight = "Host: 127.0.0.1\r\nOrigin: http://evil.example\r\n\
                     Access-Control-Request-Method: POST\r\n\
                     Access-Control-Request-Headers: content-type\r\n";
    for headers in [
        preflight.to_string(),
        format!("{preflight}Authorization: Bearer {TOKEN}\r\n"),
    ] {
        for path in ["/api/v1/bans", "/api/v1/reload", "/healthz"] {
            let (status, text) = a.raw("OPTIONS", path, &headers, "");
            assert!(!(200..300).contains(&status), "{path}: {text}");
            assert!(
                !text.to_ascii_lowercase().contains("access-control-"),
                "{path}: {text}"
            );
        }
    }
}

/// The attack the rules are for: a page on the operator's machine posting
/// to a loopback API that has no token.
#[test]
fn a_loopback_api_without_a_token_still_refuses_what_a_web_page_can_send() {
    let a = Admin::start_without_token();
    let ban = "{\"cidr\": \"0.0.0.0/0\"}";
    // A "simple" cross-origin POST: no preflight, so no JSON content type.
    let page = "Host: 127.0.0.1\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\n";
    assert_eq!(a.raw("POST", "/api/v1/bans", page, ban).0, 415);
    // DNS rebinding: the page's own name, now resolving to 127.0.0.1.
    let rebound = "Host: evil.example:9936\r\nContent-Type: application/json\r\n";
    assert_eq!(a.raw("POST", "/api/v1/bans", rebound, ban).0, 421);
    assert_eq!(a.bans(), 0);
    // The operator's curl works, and a ban that broad must say so.
    let curl = "Host: 127.0.0.1\r\nContent-Type: application/json\r\n";
    assert_eq!(a.raw("POST", "/api/v1/bans", curl, ban).0, 400);
    assert_eq!(a.bans(), 0);
    let forced = "{\"cidr\": \"0.0.0.0/0\", \"force\": true}";
    assert_eq!(a.raw("POST", "/api/v1/bans", curl, forced).0, 200);
    assert_eq!(a.bans(), 1);
}

#[test]
fn a_host_that_does_not_name_the_listener_is_refused() {
    let a = Admin::start();
    let port = a.addr().port();
    let auth = format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n");
    let with_host = |host: &str| format!("Host: {host}\r\n{auth}");
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("192.0.2.1:{port}"),
    ] {
        for path in ["/api/v1/sessions", "/healthz", "/readyz"] {
            let (status, text) = a.raw("GET", path, &with_host(&host), "");
            assert_eq!(status, 421, "{host} {path}: {text}");
        }
        let ban = "{\"cidr\": \"192.0.2.0/24\"}";
        assert_eq!(a.raw("POST", "/api/v1/bans", &with_host(&host), ban).0, 421);
    }
    assert_eq!(a.bans(), 0);
    // No Host at all, or two.
    assert_eq!(a.raw("GET", "/healthz", &auth, "").0, 421);
    let two = format!("Host: 127.0.0.1\r\nHost: evil.example\r\n{auth}");
    assert_ne!(a.raw("GET", "/api/v1/sessions", &two, "").0, 200);
    // An absolute URI naming another host.
    let uri = format!("http://evil.example:{port}/api/v1/sessions");
    assert_ne!(a.raw("GET", &uri, &with_host("127.0.0.1"), "").0, 200);
    // What names a loopback listener, port forwards included.
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        "localhost:19936".to_string(),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(
            a.raw("GET", "/api/v1/sessions", &with_host(&host), "").0,
            200,
            "{host}"
        );
    }
}

/// `start_from_file`'s config with `[admin]` replaced by `admin` (none if
/// empty).
fn with_admin(dir: &Path, origin: SocketAddr, admin: &str) -> String {
    let text = config(dir, origin).build();
    let start = text.find("[admin]").unwrap();
    let end = start + text[start..].find("[state]").unwrap();
    format!("{}{admin}{}", &text[..start], &text[end..])
}

#[test]
fn a_reload_that_drops_the_token_or_moves_the_api_is_refused_and_the_token_still_needed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(TestOrigin::start());
    let (_rt, running, path) = start_from_file(dir.path(), origin.addr);
    let addr = running.admin_addr.unwrap();
    let failures = || {
        common::metric(
            &running.guard.metrics.render(),
            "rtmp_guard_config_reloads_total{result=\"failure\"}",
        )
        .unwrap()
    };
    let cases = [
        (
            "[admin]\nlisten = \"127.0.0.1:0\"\n",
            "admin.token_file",
            "token",
        ),
        ("", "key `admin`", "remove the admin API"),
        (
            "[admin]\nlisten = \"127.0.0.2:0\"\ntoken_file = \"admin.token\"\n",
            "admin.listen",
            "move",
        ),
    ];
    for (i, (admin, key, why)) in cases.into_iter().enumerate() {
        std::fs::write(&path, with_admin(dir.path(), origin.addr, admin)).unwrap();
        // The file on its own is valid: only the reload refuses it.
        Config::load(&path).unwrap();
        let (status, body) = http(addr, "POST", "/api/v1/reload", Some(TOKEN), "");
        assert_eq!(status, 422, "{admin:?}: {body}");
        assert!(
            body.contains(key) && body.contains(why) && body.contains("fixed at start"),
            "{body}"
        );
        assert_eq!(failures(), (i + 1) as f64);
        // The old config, token and all, stays in force.
        let live = running.guard.config();
        assert!(live.admin.as_ref().unwrap().token.is_some());
        assert_eq!(http(addr, "GET", "/api/v1/sessions", None, "").0, 401);
        assert_eq!(
            http(
                addr,
                "POST",
                "/api/v1/bans",
                None,
                "{\"cidr\": \"0.0.0.0/0\"}"
            )
            .0,
            401
        );
        assert_eq!(
            http(addr, "GET", "/api/v1/sessions", Some(TOKEN), "").0,
            200
        );
    }
    assert!(running.guard.remedies.load().bans.is_empty());
    running.guard.audit.flush();
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(
        audit
            .matches(r#""action":"reload","event":"admin","reason":"","result":"failed""#)
            .count(),
        3,
        "{audit}"
    );
}

#[test]
fn a_reload_rotates_the_token_file_new_token_in_old_one_out() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(TestOrigin::start());
    let (_rt, running, _path) = start_from_file(dir.path(), origin.addr);
    let addr = running.admin_addr.unwrap();
    const NEW: &str = "the-rotated-admin-token-2";
    std::fs::write(dir.path().join("admin.token"), format!("{NEW}\n")).unwrap();
    // Until the reload, the old token is the one.
    assert_eq!(http(addr, "GET", "/api/v1/sessions", Some(NEW), "").0, 401);
    let (status, body) = http(addr, "POST", "/api/v1/reload", Some(TOKEN), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http(addr, "GET", "/api/v1/sessions", Some(TOKEN), "").0,
        401
    );
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/v1/bans",
            Some(TOKEN),
            "{\"cidr\": \"192.0.2.0/24\"}"
        )
        .0,
        401
    );
    assert!(running.guard.remedies.load().bans.is_empty());
    assert_eq!(http(addr, "GET", "/api/v1/sessions", Some(NEW), "").0, 200);
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/v1/bans",
            Some(NEW),
            "{\"cidr\": \"192.0.2.0/24\"}"
        )
        .0,
        200
    );
    assert_eq!(running.guard.remedies.load().bans.len(), 1);
}

#[test]
fn the_status_page_needs_no_token_holds_no_data_and_allows_no_inline_script_or_framing() {
    let a = Admin::start();
    let _live = a.live_client("127.0.0.6", "publish", "secret-looking-name");
    let host = "Host: 127.0.0.1\r\n";
    let (status, page) = a.raw("GET", "/", host, "");
    assert_eq!(status, 200, "{page}");
    let (head, html) = page.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    for header in [
        "content-type: text/html; charset=utf-8",
        "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'",
        "frame-ancestors 'none'",
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "cache-control: no-store",
    ] {
        assert!(head.contains(header), "no {header:?} in {head}");
    }
    assert!(!head.contains("unsafe-inline") && !head.contains("unsafe-eval"));
    // No data in the page: the session it could have listed is not there.
    assert!(!html.contains("secret-looking-name") && !html.contains(TOKEN));
    // No inline script, style or event handler for the policy to refuse.
    let lower = html.to_ascii_lowercase();
    assert_eq!(lower.matches("<script").count(), 1, "{html}");
    assert!(lower.contains("<script src=\"/status.js\" defer></script>"));
    assert!(!lower.contains("<style") && !lower.contains(" style="));
    assert!(!lower.contains(" onload=") && !lower.contains(" onclick="));

    for (path, kind) in [
        ("/status.js", "text/javascript"),
        ("/status.css", "text/css"),
    ] {
        let (status, text) = a.raw("GET", path, host, "");
        assert_eq!(status, 200, "{path}");
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains(&format!("content-type: {kind}")), "{text}");
        assert!(lower.contains("x-content-type-options: nosniff"));
    }
    // The script puts data on the page as text only.
    let (_, script) = a.raw("GET", "/status.js", host, "");
    for sink in [
        ".innerHTML",
        ".outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ] {
        assert!(!script.contains(sink), "status.js uses {sink}");
    }

    // The API's answers carry the same protections; its data still needs
    // the token; the page is under the Host check like everything else.
    let (status, text) = a.raw("GET", "/api/v1/sessions", host, "");
    assert_eq!(status, 401);
    assert!(text.to_ascii_lowercase().contains("x-frame-options: deny"));
    assert_eq!(a.raw("GET", "/", "Host: evil.example\r\n", "").0, 421);
}

#[test]
fn refusals_are_counted_per_reason_per_ten_seconds_over_the_window_asked() {
    let a = Admin::start();
    // Two unknown apps (3 points each: no ban yet).
    for _ in 0..2 {
        let mut c = RawClient::handshaken_from(a.h.addr(), "127.0.0.7");
        c.send(&common::client::connect_bytes("nope"));
        assert!(matches!(
            c.wait_closed(Duration::from_secs(3)),
            Closed::Within(..)
        ));
    }
    let (status, body) = a.api("GET", "/api/v1/refusals?window=1m", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["step_seconds"], 10);
    let end = body["end"].as_u64().unwrap();
    let now = rtmp_guard::control::unix_now();
    assert!(end % 10 == 0 && end > now && end <= now + 10, "{end} {now}");
    let reasons = body["reasons"].as_object().unwrap();
    assert_eq!(reasons.len(), Reason::ALL.len());
    for reason in Reason::ALL {
        let counts = reasons[reason.as_str()].as_array().unwrap();
        assert_eq!(counts.len(), 6, "{reason}");
    }
    let unknown: u64 = reasons["unknown_app"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(unknown, 2, "{body}");
    assert_eq!(
        a.h.guard
            .guard
            .metrics
            .blocked_count(Stage::Connect, Reason::UnknownApp),
        2
    );

    // The default is the status page's 15 minutes; an hour at most.
    let (_, body) = a.api("GET", "/api/v1/refusals", "");
    assert_eq!(body["reasons"]["unknown_app"].as_array().unwrap().len(), 90);
    let (_, body) = a.api("GET", "/api/v1/refusals?window=1h", "");
    assert_eq!(body["reasons"]["banned"].as_array().unwrap().len(), 360);
    for bad in [
        "window=5s",
        "window=15s",
        "window=2h",
        "window=0s",
        "window=fifteen",
        "window=",
        "window=15m&window=1h",
    ] {
        let (status, body) = a.api("GET", &format!("/api/v1/refusals?{bad}"), "");
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("window"), "{body}");
    }
    assert_eq!(
        http(a.addr(), "GET", "/api/v1/refusals?window=15m", None, "").0,
        401
    );
}
