//! Stream authorisation by client address, in-process: clients bind their
//! own loopback addresses (127.0.0.x) to show `publish_allow`, `play_deny`
//! and address-bound tokens deciding by address; and signed URLs opening
//! only the role they were issued for.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::client::{commands_in, status_code, Closed, RawClient};
use common::config::GuardConfig;
use common::origin::Harness;
use rtmp_guard::verdict::{Kind, Reason, Stage};

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
                    "publish = \"token\"\nplay = \"token\"\ntoken_secret_file = \"{}\"",
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
    let bound = "127.0.0.34".parse().ok();
    let query = signed("show", bound, Kind::Play);
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

/// The query of a URL for `tok/STREAM`, valid for ten minutes.
fn signed(stream: &str, ip: Option<std::net::IpAddr>, role: Kind) -> String {
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    rtmp_guard::policy::token::sign(SECRET.as_bytes(), "tok", stream, expires, ip, role)
}

/// Every command name the origin received, over all its connections.
fn origin_commands(h: &Harness) -> Vec<String> {
    h.origin
        .received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|bytes| commands_in(bytes).into_iter().map(|c| c.name))
        .collect()
}

#[test]
fn a_viewers_url_cannot_publish_nor_a_publishers_url_play() {
    let (h, _dir) = harness();
    let play = format!("show?{}", signed("show", None, Kind::Play));
    let publish = format!("show?{}", signed("show", None, Kind::Publish));
    // Crossed roles are refused like a bad token, from fresh addresses so
    // the scores never add up to a ban.
    assert_eq!(
        attempt(&h, "127.0.0.40", "tok", "publish", &play).as_deref(),
        Some("NetStream.Publish.BadName")
    );
    assert_eq!(
        attempt(&h, "127.0.0.41", "tok", "play", &publish).as_deref(),
        Some("NetStream.Play.Failed")
    );
    // A role rewritten in the URL breaks the signature.
    let forged = play.replace("role=play", "role=publish");
    assert_eq!(
        attempt(&h, "127.0.0.42", "tok", "publish", &forged).as_deref(),
        Some("NetStream.Publish.BadName")
    );
    assert_eq!(h.blocked(Stage::Session, Reason::Unauthorized), 3);
    let sent = origin_commands(&h);
    assert!(
        !sent.iter().any(|c| c == "publish" || c == "play"),
        "the origin was asked {sent:?}"
    );

    // Each URL opens its own role.
    assert_eq!(attempt(&h, "127.0.0.43", "tok", "publish", &publish), None);
    assert_eq!(attempt(&h, "127.0.0.44", "tok", "play", &play), None);
    let sent = origin_commands(&h);
    assert_eq!(
        sent.iter().filter(|c| *c == "publish").count(),
        1,
        "{sent:?}"
    );
    assert_eq!(sent.iter().filter(|c| *c == "play").count(), 1, "{sent:?}");
    assert_eq!(h.blocked(Stage::Session, Reason::Unauthorized), 3);
}
