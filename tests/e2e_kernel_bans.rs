//! Bans enforced in the kernel (`[bans.kernel]`), end to end: the guard
//! binary with a real nftables table, ffmpeg through it to nginx-rtmp, bans
//! made through the admin API and by a flood, and the stop.
//!
//! Loopback only: the banned clients are 127.0.0.x source addresses, and
//! the table's rules match only the guard's own port, so nothing else on
//! the machine is touched. Each test uses a table of its own name.
//!
//! Needs root (CAP_NET_ADMIN) and `nft`: without them it prints SKIPPED,
//! and fails instead under RTMP_GUARD_E2E=require (see
//! `common::have_nftables` for a kernel without nf_tables).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::client::connect_from;
use common::config::GuardConfig;
use common::procs::{ffmpeg_publish, wait_exit, GuardProc, Nginx};
use common::{blocked_sample, free_port, have_nftables, have_tools, http, wait_for};
use nftables::expr::{Expression, NamedExpression};
use nftables::helper;
use nftables::schema::{NfListObject, NfObject};

const TOKEN: &str = "an-admin-token-for-kernel-tests";
const ACCEPTED: &str = "rtmp_guard_connections_total";
const REFUSED_V4: &str = "rtmp_guard_kernel_refused_total{family=\"ipv4\"}";

/// A table name no other test (or run) uses.
fn table(test: &str) -> String {
    format!("rtmp_guard_{test}_{}", std::process::id())
}

/// Deletes the table, if a failed test left it.
struct DropTable(String);

impl Drop for DropTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .output();
    }
}

fn table_exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The elements of one of the table's sets, as (prefix, timeout): read
/// with the nftables crate from `nft -j`. `None` if there is no such set.
fn elements(table: &str, set: &str) -> Option<Vec<(String, Option<u32>)>> {
    let args = ["list", "set", "inet", table, set];
    let listing = helper::get_current_ruleset_with_args(helper::DEFAULT_NFT, &args).ok()?;
    listing.objects.iter().find_map(|o| match o {
        NfObject::ListObject(NfListObject::Set(s)) => {
            Some(s.elem.iter().flat_map(|e| e.iter()).map(describe).collect())
        }
        _ => None,
    })
}

fn describe(e: &Expression<'_>) -> (String, Option<u32>) {
    match e {
        Expression::String(addr) => (addr.to_string(), None),
        Expression::Named(NamedExpression::Prefix(p)) => {
            (format!("{}/{}", describe(&p.addr).0, p.len), None)
        }
        Expression::Named(NamedExpression::Elem(el)) => (describe(&el.val).0, el.timeout),
        other => (format!("{other:?}"), None),
    }
}

fn holds(table: &str, prefix: &str) -> bool {
    elements(table, "banned_ipv4").is_some_and(|e| e.iter().any(|(p, _)| p == prefix))
}

/// A guard binary with the admin API and kernel bans in `table`.
fn guard(
    dir: &std::path::Path,
    table: &str,
    origin: Option<SocketAddr>,
    extra: &str,
) -> (GuardProc, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let token = dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut config = GuardConfig::new()
        .server("handshake_timeout = \"2s\"")
        .admin(admin, &token)
        .tables(&format!(
            "[bans.kernel]\nenabled = true\ntable = \"{table}\"\n{extra}"
        ))
        .live();
    if let Some(origin) = origin {
        config = config.origin(origin);
    } else {
        config = config.origin("127.0.0.1:9");
    }
    (GuardProc::start(config), admin)
}

fn api(admin: SocketAddr, method: &str, path: &str, body: &str) -> u16 {
    http(admin, method, path, Some(TOKEN), body).0
}

/// A TCP connect from `source`: refused (reset) or not.
fn refused_from(guard: &GuardProc, source: &str) -> bool {
    match connect_from(guard.rtmp, source) {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

#[test]
fn a_banned_prefix_is_refused_in_the_kernel_while_others_relay() {
    const TEST: &str = "kernel_bans_e2e";
    if !have_tools(TEST, &["nginx", "ffmpeg"]) || !have_nftables(TEST) {
        return;
    }
    let table = table("e2e");
    let _cleanup = DropTable(table.clone());
    // A table left by a crash, with a stale element: taken over.
    let left = format!(
        "add table inet {table}\nadd set inet {table} banned_ipv4 {{ type ipv4_addr; flags interval; }}\n\
         add element inet {table} banned_ipv4 {{ 127.0.0.99 }}\n"
    );
    let ok = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(left.as_bytes())?;
            c.wait()
        })
        .is_ok_and(|s| s.success());
    assert!(ok, "could not leave a stale table");

    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let (mut g, admin) = guard(
        dir.path(),
        &table,
        Some(nginx.rtmp),
        "[access]\ndeny = [\"127.0.0.11\"]\n\
         [proxy_protocol]\ntrusted = [\"127.0.0.12\"]\n\
         [bans]\nthreshold = 10\n",
    );
    // The table is built once the guard listens: under load, a moment later.
    let enabled = wait_for(Duration::from_secs(10), || {
        (g.metric("rtmp_guard_kernel_bans_enabled") == 1.0).then_some(())
    });
    assert!(enabled.is_some(), "{}", g.log_text());
    let start = elements(&table, "banned_ipv4").expect("the guard's set");
    assert_eq!(
        start,
        [("127.0.0.11".to_string(), None)],
        "taken over, deny in for good"
    );
    assert_eq!(elements(&table, "banned_ipv6"), Some(vec![]));

    // A real stream from 127.0.0.1, through the whole test.
    let log = dir.path().join("publish.log");
    let mut publisher = ffmpeg_publish(&format!("rtmp://{}/live/cam", g.rtmp), 14, &log);
    assert!(nginx.wait_publishing("cam"));

    // An operator ban is in the set within 100 ms of the API's answer.
    let body = r#"{"cidr": "127.0.0.9/32", "duration": "10m", "reason": "e2e"}"#;
    assert_eq!(api(admin, "POST", "/api/v1/bans", body), 200);
    let answered = Instant::now();
    // Polled every few milliseconds (wait_for's 50 ms would blur it).
    while !holds(&table, "127.0.0.9") && answered.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = answered.elapsed();
    assert!(
        holds(&table, "127.0.0.9"),
        "the ban never reached the kernel"
    );
    println!("ban in the kernel's set {took:?} after the API answered");
    assert!(took <= Duration::from_millis(100), "took {took:?}");
    let timeout = elements(&table, "banned_ipv4")
        .unwrap()
        .into_iter()
        .find_map(|(p, t)| (p == "127.0.0.9").then_some(t))
        .flatten();
    assert!(
        timeout.is_some_and(|t| (590..=600).contains(&t)),
        "the ban's time left: {timeout:?}"
    );

    // Refused in the kernel: reset, and the guard never accepted it.
    let accepted = g.metric(ACCEPTED);
    for _ in 0..3 {
        assert!(refused_from(&g, "127.0.0.9"), "127.0.0.9 was not reset");
    }
    assert!(
        refused_from(&g, "127.0.0.11"),
        "a denied address was not reset"
    );
    assert_eq!(
        g.metric(ACCEPTED),
        accepted,
        "the guard accepted a banned client"
    );
    assert!(
        g.metric(REFUSED_V4) >= 4.0,
        "{}",
        g.metrics_text().unwrap_or_default()
    );
    assert_eq!(g.metric(&blocked_sample("accept", "banned")), 0.0);
    assert!(g.metric("rtmp_guard_kernel_ban_entries{family=\"ipv4\"}") >= 2.0);
    // Others still connect.
    assert!(connect_from(g.rtmp, "127.0.0.2").is_ok());
    assert!(
        wait_for(Duration::from_secs(2), || (g.metric(ACCEPTED) > accepted)
            .then_some(()))
        .is_some()
    );

    // A trusted balancer's address never goes in the kernel; it is still
    // banned in user space.
    let body = r#"{"cidr": "127.0.0.12/32", "duration": "10m", "reason": "e2e"}"#;
    assert_eq!(api(admin, "POST", "/api/v1/bans", body), 200);
    let shielded = wait_for(Duration::from_secs(2), || {
        g.log_text()
            .contains("\"event\":\"kernel_ban_shielded\"")
            .then_some(())
    });
    assert!(shielded.is_some(), "{}", g.log_text());
    assert!(!holds(&table, "127.0.0.12"));

    // Unbanned: the element goes, and 127.0.0.9 reaches the guard again.
    assert_eq!(api(admin, "DELETE", "/api/v1/bans/127.0.0.9%2F32", ""), 200);
    let gone = wait_for(Duration::from_secs(1), || {
        (!holds(&table, "127.0.0.9")).then_some(())
    });
    assert!(gone.is_some(), "{:?}", elements(&table, "banned_ipv4"));
    let accepted = g.metric(ACCEPTED);
    assert!(!refused_from(&g, "127.0.0.9"));
    assert!(
        wait_for(Duration::from_secs(2), || (g.metric(ACCEPTED) > accepted)
            .then_some(()))
        .is_some()
    );

    // An automatic ban from a flood of junk lands in the set, with its time.
    for _ in 0..4 {
        if let Ok(mut s) = connect_from(g.rtmp, "127.0.0.13") {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut [0u8; 64]);
        }
    }
    let auto = wait_for(Duration::from_secs(2), || {
        elements(&table, "banned_ipv4")?
            .into_iter()
            .find_map(|(p, t)| (p == "127.0.0.13").then_some(t))
    });
    assert!(
        auto.is_some_and(|t| t.is_some_and(|t| (590..=600).contains(&t))),
        "auto ban in the kernel: {auto:?}\n{}",
        g.log_text()
    );
    assert!(refused_from(&g, "127.0.0.13"));

    // The stream from 127.0.0.1 went on to its end.
    let status = wait_exit(&mut publisher, Duration::from_secs(30)).expect("publisher finished");
    assert!(
        status.success(),
        "publisher failed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // SIGTERM: drained, then the table is gone.
    g.signal("TERM");
    assert!(g
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    assert!(!table_exists(&table), "the table outlived the guard");
    assert!(g.log_text().contains("\"event\":\"kernel_bans_removed\""));
}

/// Without `nft` (here: not on the PATH), the guard says so once, reports
/// kernel bans off, and bans keep working in user space.
#[test]
fn without_nftables_bans_stay_in_user_space() {
    let dir = tempfile::tempdir().unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let token = dir.path().join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let empty = dir.path().join("bin");
    std::fs::create_dir(&empty).unwrap();
    let g = GuardProc::start_with_env(
        GuardConfig::new()
            .admin(admin, &token)
            .tables("[bans.kernel]\nenabled = true\ntable = \"rtmp_guard_never_made\"\n")
            .origin("127.0.0.1:9")
            .live(),
        &[("PATH", empty.to_str().unwrap())],
    );
    let said = wait_for(Duration::from_secs(10), || {
        g.log_text()
            .contains("kernel_bans_unavailable")
            .then_some(())
    });
    assert!(said.is_some(), "{}", g.log_text());
    assert_eq!(g.metric("rtmp_guard_kernel_bans_enabled"), 0.0);
    let log = g.log_text();
    assert_eq!(
        log.matches("\"event\":\"kernel_bans_unavailable\"").count(),
        1,
        "{log}"
    );
    assert!(log.contains("the nft program was not found"), "{log}");
    let body = r#"{"cidr": "127.0.0.9/32", "duration": "10m", "reason": "e2e"}"#;
    assert_eq!(api(admin, "POST", "/api/v1/bans", body), 200);
    let banned = blocked_sample("accept", "banned");
    let _ = connect_from(g.rtmp, "127.0.0.9");
    assert!(
        wait_for(Duration::from_secs(2), || (g.metric(&banned) >= 1.0)
            .then_some(()))
        .is_some(),
        "the ban was not enforced in user space"
    );
    assert_eq!(g.log_text().matches("kernel_bans_unavailable").count(), 1);
}

/// A reload re-syncs the sets with the access rules, and dry run empties
/// them: nothing is enforced in the kernel then.
#[test]
fn a_reload_resyncs_the_sets_and_dry_run_empties_them() {
    const TEST: &str = "kernel_bans_reload";
    if !have_nftables(TEST) {
        return;
    }
    let table = table("reload");
    let _cleanup = DropTable(table.clone());
    let dir = tempfile::tempdir().unwrap();
    let (mut g, admin) = guard(dir.path(), &table, None, "");
    assert_eq!(elements(&table, "banned_ipv4"), Some(vec![]));
    let body = r#"{"cidr": "127.0.0.9/32", "duration": null, "reason": "e2e"}"#;
    assert_eq!(api(admin, "POST", "/api/v1/bans", body), 200);
    let reload = |text: &str| {
        std::fs::write(g.config_path(), text).unwrap();
        g.signal("HUP");
    };
    let base = std::fs::read_to_string(g.config_path()).unwrap();
    let both = |e: &[(String, Option<u32>)]| {
        let mut names: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        names.sort();
        names == ["127.0.0.21", "127.0.0.9"]
    };
    reload(&format!("{base}[access]\ndeny = [\"127.0.0.21\"]\n"));
    let synced = wait_for(Duration::from_secs(3), || {
        elements(&table, "banned_ipv4").filter(|e| both(e))
    });
    assert!(synced.is_some(), "{:?}", elements(&table, "banned_ipv4"));
    assert!(refused_from(&g, "127.0.0.21"));
    // Dry run: the sets empty, and what the kernel refused, user space
    // now only counts.
    let dry = base.replacen("[server]\n", "[server]\nmode = \"dry_run\"\n", 1);
    reload(&format!("{dry}[access]\ndeny = [\"127.0.0.21\"]\n"));
    let emptied = wait_for(Duration::from_secs(3), || {
        elements(&table, "banned_ipv4").filter(|e| e.is_empty())
    });
    assert!(emptied.is_some(), "{:?}", elements(&table, "banned_ipv4"));
    assert!(!refused_from(&g, "127.0.0.21"));
    let would = "rtmp_guard_would_block_total{reason=\"ip_denied\",stage=\"accept\"}";
    assert!(wait_for(Duration::from_secs(2), || (g.metric(would) >= 1.0)
        .then_some(()))
    .is_some());
    // Back to enforce: in again.
    reload(&format!("{base}[access]\ndeny = [\"127.0.0.21\"]\n"));
    let back = wait_for(Duration::from_secs(3), || {
        elements(&table, "banned_ipv4").filter(|e| both(e))
    });
    assert!(back.is_some(), "{:?}", elements(&table, "banned_ipv4"));
    g.signal("TERM");
    assert!(g.wait_exit(Duration::from_secs(15)).is_some());
    assert!(!table_exists(&table));
}
