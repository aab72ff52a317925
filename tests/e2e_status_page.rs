//! The status page in a real browser: headless Chromium (over
//! chromedriver) opens the guard binary's admin port while ffmpeg
//! publishes through it to nginx-rtmp, and an operator kicks a session
//! with the page's button.
//!
//! Prints SKIPPED when a tool is missing (nginx with the RTMP module,
//! ffmpeg, chromium, chromedriver), and fails instead under
//! RTMP_GUARD_E2E=require. The screenshot is kept as
//! target/test-artifacts/status-page.png; with
//! RTMP_GUARD_UPDATE_SCREENSHOT=1 it also replaces docs/status-page.png,
//! the one the README shows.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::browser::{self, Browser};
use common::client::{connect_bytes, Closed, RawClient};
use common::config::GuardConfig;
use common::procs::{ffmpeg_publish, ffmpeg_publish_with, wait_exit, GuardProc, Nginx};
use common::{have_tools, http, wait_for};

const TOKEN: &str = "a-status-page-token-for-e2e";
const TOKEN_KEY: &str = "rtmp-guard-admin-token";

/// Stream names a client chose to attack whoever lists them.
const HOSTILE: [&str; 2] = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script>"];

fn sessions(admin: SocketAddr) -> Vec<serde_json::Value> {
    let (_, text) = http(admin, "GET", "/api/v1/sessions", Some(TOKEN), "");
    serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The id of the live session publishing `stream`.
fn publisher(admin: SocketAddr, stream: &str) -> Option<u64> {
    sessions(admin)
        .iter()
        .find(|s| s["role"] == "publish" && s["stream"] == stream)
        .and_then(|s| s["id"].as_u64())
}

#[test]
fn an_operator_sees_live_sessions_and_refusals_and_kicks_a_publisher_from_the_page() {
    let mut tools = vec!["nginx", "ffmpeg"];
    tools.extend(browser::TOOLS);
    if !have_tools("status_page", &tools) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let token = dir.path().join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let g = GuardProc::start(
        GuardConfig::new()
            .admin(admin, &token)
            .origin(nginx.rtmp)
            .live(),
    );

    // Refusals for the chart: two unknown apps from another loopback
    // address (6 points, under the ban threshold).
    for _ in 0..2 {
        let mut c = RawClient::handshaken_from(g.rtmp, "127.0.0.9");
        c.send(&connect_bytes("nope"));
        assert!(matches!(
            c.wait_closed(Duration::from_secs(5)),
            Closed::Within(..)
        ));
    }

    // One ordinary publisher and two with hostile names.
    let url = format!("rtmp://{}/live/cam1", g.rtmp);
    let mut cam = ffmpeg_publish(&url, 60, &dir.path().join("cam1.log"));
    let mut hostile = Vec::new();
    for (i, name) in HOSTILE.iter().enumerate() {
        let log = dir.path().join(format!("hostile{i}.log"));
        let base = format!("rtmp://{}/live", g.rtmp);
        hostile.push(ffmpeg_publish_with(
            &base,
            &["-rtmp_app", "live", "-rtmp_playpath", name],
            60,
            &log,
        ));
    }
    let cam_id = wait_for(Duration::from_secs(20), || publisher(admin, "cam1"))
        .unwrap_or_else(|| panic!("cam1 never listed: {}", g.log_text()));
    for name in HOSTILE {
        wait_for(Duration::from_secs(20), || publisher(admin, name)).unwrap_or_else(|| {
            panic!(
                "{name} never listed: {:?}\n{}",
                sessions(admin),
                g.log_text()
            )
        });
    }

    // Remedies for the page to list: a ban and a content block.
    let ban = r#"{"cidr": "192.0.2.0/24", "duration": "2h", "reason": "abuse report <b>1234</b>"}"#;
    assert_eq!(http(admin, "POST", "/api/v1/bans", Some(TOKEN), ban).0, 200);
    let block = r#"{"app": "live", "stream": "film-*", "reason": "dmca"}"#;
    assert_eq!(
        http(admin, "POST", "/api/v1/blocks", Some(TOKEN), block).0,
        200
    );

    let b = Browser::start(1280, 1000);
    // A bookmarked link with the token in the fragment.
    b.goto(&format!("http://{admin}/#token={TOKEN}"));
    let row = format!("tr[data-session-id=\"{cam_id}\"]");
    wait_for(Duration::from_secs(15), || {
        (b.count(&row) == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("session {cam_id} not on the page: {:?}", b.text("body")));

    // The token moved from the address bar into this tab's storage only.
    let address = b.current_url();
    assert!(!address.contains("token"), "{address}");
    let stored = b
        .execute(
            "return [sessionStorage.getItem(arguments[0]), localStorage.length, document.cookie];",
            vec![TOKEN_KEY.into()],
        )
        .unwrap();
    assert_eq!(stored, serde_json::json!([TOKEN, 0, ""]));

    // The row says what the API says.
    let stream = b.text(&format!("{row} td.stream")).unwrap_or_default();
    assert_eq!(stream, "cam1");
    let row_text = b.text(&row).unwrap_or_default();
    assert!(
        row_text.contains("live") && row_text.contains("publish"),
        "{row_text}"
    );
    // Bitrate comes from two readings of the byte counters, 2 s apart.
    wait_for(Duration::from_secs(10), || {
        let rate = b.text(&format!("{row} td:nth-child(8)"))?;
        rate.ends_with("b/s").then_some(())
    })
    .expect("a bitrate for cam1");

    // Hostile names are text: no element made of them, no script run.
    let names: Vec<String> = (0..20)
        .find_map(|_| {
            let got = b
                .execute(
                    "return Array.from(document.querySelectorAll('#sessions td.stream'), td => td.textContent);",
                    vec![],
                )
                .ok()?;
            let got: Vec<String> = serde_json::from_value(got).ok()?;
            if HOSTILE.iter().all(|h| got.iter().any(|g| g == h)) {
                return Some(got);
            }
            std::thread::sleep(Duration::from_millis(250));
            None
        })
        .unwrap_or_else(|| panic!("hostile names not shown as text: {:?}", b.text("#sessions")));
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(b.alert_text(), None, "a stream name opened an alert");
    assert_eq!(b.count("main img, main script, #sessions iframe"), 0);
    let injected = b
        .execute(
            "return document.querySelectorAll('[onerror]').length",
            vec![],
        )
        .unwrap();
    assert_eq!(injected, 0);

    // The refusals are charted per reason, as SVG.
    wait_for(Duration::from_secs(10), || {
        (b.count("#charts .chart[data-reason=\"unknown_app\"] svg rect.bar") >= 1).then_some(())
    })
    .unwrap_or_else(|| panic!("no unknown_app chart: {:?}", b.text("#refusals-section")));
    let title = b
        .text("#charts .chart[data-reason=\"unknown_app\"] .title")
        .unwrap_or_default();
    assert!(
        title.contains("unknown_app") && title.contains('2'),
        "{title}"
    );

    // Sorted by a column's header, filtered by what is typed.
    let streams = || -> Vec<String> {
        let got = b
            .execute(
                "return Array.from(document.querySelectorAll('#sessions td.stream'), td => td.textContent);",
                vec![],
            )
            .unwrap_or_default();
        serde_json::from_value(got).unwrap_or_default()
    };
    b.click("#sessions th[data-sort=stream]").unwrap();
    assert_eq!(streams(), [HOSTILE[0], HOSTILE[1], "cam1"]);
    b.click("#sessions th[data-sort=stream]").unwrap();
    assert_eq!(streams(), ["cam1", HOSTILE[1], HOSTILE[0]]);
    b.fill("#filter", "CAM").unwrap();
    assert_eq!(streams(), ["cam1"]);
    b.fill("#filter", "").unwrap();
    b.execute(
        "document.getElementById('filter').dispatchEvent(new Event('input'))",
        vec![],
    )
    .unwrap();
    assert_eq!(streams().len(), 3);

    // Bans (with time left) and blocks are listed, their text as text.
    let ban_row = "#bans tr[data-cidr=\"192.0.2.0/24\"]";
    let listed = b.text(ban_row).unwrap_or_default();
    assert!(
        listed.contains("operator") && listed.contains("abuse report <b>1234</b>"),
        "{listed}"
    );
    assert!(
        listed.contains("1h 59m") || listed.contains("2h 0m"),
        "{listed}"
    );
    let blocks = b.text("#blocks tbody").unwrap_or_default();
    assert!(
        blocks.contains("film-*") && blocks.contains("dmca"),
        "{blocks}"
    );

    let shot = b.screenshot();
    assert!(shot.starts_with(b"\x89PNG"), "not a PNG");
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("status-page.png"), &shot).unwrap();
    if std::env::var("RTMP_GUARD_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::write(docs, &shot).unwrap();
    }

    // Kick cam1 with its button; the page asks first.
    b.click(&format!("{row} button.kick")).unwrap();
    let question = wait_for(Duration::from_secs(5), || b.alert_text())
        .expect("the kick asked for confirmation");
    assert!(
        question.contains(&format!("Kick session {cam_id}")),
        "{question}"
    );
    b.accept_alert().unwrap();
    wait_for(Duration::from_secs(15), || {
        (publisher(admin, "cam1").is_none() && b.count(&row) == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("cam1 still listed after the kick: {:?}", sessions(admin)));
    let status = wait_exit(&mut cam, Duration::from_secs(15));
    assert!(status.is_some(), "ffmpeg still running after the kick");
    let outcome = b.text("#outcome").unwrap_or_default();
    assert_eq!(outcome, format!("Session {cam_id} kicked."));
    // The other publishers go on.
    for name in HOSTILE {
        assert!(publisher(admin, name).is_some(), "{name} ended too");
    }

    // Lift the block with its button.
    b.click("#blocks tbody tr button").unwrap();
    let question = wait_for(Duration::from_secs(5), || b.alert_text()).expect("confirmation");
    assert!(question.contains("live/film-*"), "{question}");
    b.accept_alert().unwrap();
    wait_for(Duration::from_secs(10), || {
        let (_, text) = http(admin, "GET", "/api/v1/blocks", Some(TOKEN), "");
        (text.contains("\"blocks\":[]") && b.count("#blocks tbody tr") == 0).then_some(())
    })
    .expect("the block lifted");

    // Ban a publisher's address through the form: a duration and a
    // reason, then the confirmation. All three publishers share 127.0.0.1.
    let hostile_row = wait_for(Duration::from_secs(5), || {
        publisher(admin, HOSTILE[0]).map(|id| format!("tr[data-session-id=\"{id}\"]"))
    })
    .unwrap();
    b.click(&format!("{hostile_row} button.ban")).unwrap();
    let cidr = b
        .execute(
            "return document.querySelector('#remedy-fields input[name=cidr]').value",
            vec![],
        )
        .unwrap();
    assert_eq!(cidr, "127.0.0.1/32");
    b.fill("#remedy-fields input[name=duration]", "10m")
        .unwrap();
    b.fill("#remedy-fields input[name=reason]", "status page e2e")
        .unwrap();
    b.click("#remedy-ok").unwrap();
    let question = wait_for(Duration::from_secs(5), || b.alert_text()).expect("confirmation");
    assert!(question.contains("Ban 127.0.0.1/32 for 10m"), "{question}");
    b.accept_alert().unwrap();
    wait_for(Duration::from_secs(15), || {
        (sessions(admin).is_empty() && b.count("#sessions tbody tr") == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("sessions left after the ban: {:?}", sessions(admin)));
    for p in &mut hostile {
        assert!(
            wait_exit(p, Duration::from_secs(15)).is_some(),
            "ffmpeg went on"
        );
    }
    let (_, bans) = http(admin, "GET", "/api/v1/bans", Some(TOKEN), "");
    assert!(
        bans.contains("127.0.0.1/32") && bans.contains("status page e2e"),
        "{bans}"
    );
    let outcome = b.text("#outcome").unwrap_or_default();
    assert!(outcome.starts_with("Banned 127.0.0.1/32"), "{outcome}");

    // A wrong token in a link: the page asks for the token, and takes it.
    b.goto(&format!("http://{admin}/#token=not-the-token-at-all"));
    wait_for(Duration::from_secs(10), || {
        let asked = b.execute("return !document.getElementById('login').hidden", vec![]);
        (asked == Ok(serde_json::Value::Bool(true))).then_some(())
    })
    .expect("the page asked for a token");
    assert_eq!(
        b.text("#login-problem").unwrap_or_default(),
        "The token was refused."
    );
    b.fill("#token", TOKEN).unwrap();
    b.click("#login button[type=submit]").unwrap();
    wait_for(Duration::from_secs(10), || {
        b.text(ban_row).filter(|t| t.contains("192.0.2.0/24"))
    })
    .expect("the page open again with the token typed in");
    drop(b);
}
