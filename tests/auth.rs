//! Stream authorisation by client address, in-process: clients bind their
//! own loopback addresses (127.0.0.x) to show `publish_allow`, `play_deny`
//! and address-bound tokens deciding by address.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::client::{commands_in, status_code, Closed, RawClient};
use common::config::GuardConfig;
use common::origin::Harness;
use rtmp_guard::verdict::{Reason, Stage};

const SECRET: &str = "a-secret-of-sufficient-length";

fn harness() -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, SECRET).unwrap();
    let h = Harness::with_config(|origin| {
        GuardConfig::new()
            .origin(origin)
            .app(
                "live",
                "publish = \"none\"\npublish_allow = [\"127.0.0.31/32\"]\nplay_deny = [\"127.0.0.32/32\"]",
            )
            .app(
                "tok",
                &format!(
                    "play = \"token\"\ntoken_secret_file = \"{}\"",
                    secret.display()
                ),
            )
    });
    (h, dir)
}

/// Opens a stream from `source`; returns the status code the guard sent
/// back (None if the session stayed up).
fn attempt(h: &Harness, source: &str, app: &str, command: &str, name: &str) -> Option<String> {
    let mut c = RawClient::handshaken_from(h.addr(), source);
    c.open_stream(app, command, name);
    match c.wait_closed(Duration::from_secs(3)) {
        Closed::Within(_, got) => commands_in(&got)
            .iter()
            .filter(|c| c.name == "onStatus")
            .find_map(status_code),
        Closed::StillOpen => None,
    }
}

#[test]
fn publish_allow_and_play_deny_decide_by_address() {
    let (h, _dir) = harness();
    assert_eq!(
        attempt(&h, "127.0.0.30", "live", "publish", "cam").as_deref(),
        Some("NetStream.Publish.BadName")
    );
    assert_eq!(attempt(&h, "127.0.0.31", "live", "publish", "cam"), None);
    assert_eq!(
        attempt(&h, "127.0.0.32", "live", "play", "cam").as_deref(),
        Some("NetStream.Play.Failed")
    );
    assert_eq!(attempt(&h, "127.0.0.33", "live", "play", "cam"), None);
    assert_eq!(h.blocked(Stage::Session, Reason::ForbiddenIp), 2);
}

#[test]
fn address_bound_tokens_play_only_from_their_address() {
    let (h, _dir) = harness();
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let bound = "127.0.0.34".parse().ok();
    let query = rtmp_guard::policy::token::sign(SECRET.as_bytes(), "tok", "show", expires, bound);
    let name = format!("show?{query}");
    assert_eq!(attempt(&h, "127.0.0.34", "tok", "play", &name), None);
    assert_eq!(
        attempt(&h, "127.0.0.35", "tok", "play", &name).as_deref(),
        Some("NetStream.Play.Failed")
    );
    assert_eq!(h.blocked(Stage::Session, Reason::Unauthorized), 1);
    // The origin received the allowed play and never the refused one.
    let plays: Vec<usize> = h
        .origin
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|bytes| {
            commands_in(bytes)
                .iter()
                .filter(|c| c.name == "play")
                .count()
        })
        .collect();
    assert_eq!(plays.iter().sum::<usize>(), 1, "{plays:?}");
}
