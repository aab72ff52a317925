//! Abuse benchmarks, against the release guard binary on loopback:
//!
//! 1. Rejection rate: connections per second refused from a denied address,
//!    and from a banned one, against HAProxy's `tcp-request connection
//!    reject` on the same load generator, alternated in one run.
//! 2. Full cost of a bad client: handshake + `connect` + `unknown_app`
//!    rejections per guard CPU-second.
//! 3. Address-table memory: 1,000,000 distinct source addresses sprayed as
//!    PROXY v2 headers from a trusted loopback peer; the guard's RSS.
//! 4. Kernel bans (`[bans.kernel]`, needs root and `nft`): refusals per
//!    second from a denied and from a banned address, in one run, by
//!    HAProxy, the guard in user space, the guard with kernel bans, and no
//!    listener at all (the load generator's ceiling); the guard's CPU
//!    seconds per 100,000 refusals.
//!
//! ```text
//! cargo bench --bench abuse             # all four
//! cargo bench --bench abuse -- reject   # one of: reject, bad_client, spray, kernel
//! RTMP_GUARD_BENCH_ROUND=1s cargo bench --bench abuse -- kernel   # shorter rounds
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{connect_bytes, connect_from};
use common::config::GuardConfig;
use common::procs::{cpu_seconds, rss_kib, GuardProc, Proc};
use rtmp_guard::proxy_protocol;
use rtmp_guard::rtmp::handshake::ClientHandshake;

const THREADS: u64 = 4;
const ROUNDS: usize = 3;

/// One round's length: 5 s, or `RTMP_GUARD_BENCH_ROUND` (e.g. "1s").
fn round_length() -> Duration {
    std::env::var("RTMP_GUARD_BENCH_ROUND")
        .ok()
        .and_then(|r| rtmp_guard::config::parse_duration(&r).ok())
        .unwrap_or(Duration::from_secs(5))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let only = args.iter().skip(1).find(|a| !a.starts_with("--")).cloned();
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    println!(
        "machine: {} cpus",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if wants("reject") {
        reject_rate();
    }
    if wants("bad_client") {
        bad_client_cost();
    }
    if wants("spray") {
        address_spray();
    }
    if wants("kernel") {
        kernel_bans_rate();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `work` on THREADS threads for `duration`; returns completions/s.
fn load(duration: Duration, work: impl Fn(u64, u64) -> bool + Send + Sync + 'static) -> f64 {
    let work = Arc::new(work);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (work, done, stop) = (work.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    if work(t, i) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Connects from `source` and waits for the server to close. A reset
/// before the connect completes (the kernel's answer from a ban, or from
/// a port nothing listens on) is a refusal too.
fn refused(target: SocketAddr, source: &str) -> bool {
    let mut s = match connect_from(target, source) {
        Ok(s) => s,
        Err(e) => return e.kind() == std::io::ErrorKind::ConnectionRefused,
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = [0u8; 16];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// HAProxy refusing every source in `nets` at `tcp-request connection`.
fn haproxy_reject(nets: &str) -> (Proc, SocketAddr) {
    let dir = std::env::temp_dir().join(format!("rtmp-guard-bench-haproxy-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let addr = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let conf = format!(
        "global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 3s\n    timeout client 10s\n\
         timeout server 10s\nfrontend rtmp\n    bind {addr}\n    tcp-request connection reject if {{ src {nets} }}\n\
         default_backend none\nbackend none\n    server none 127.0.0.1:9\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).expect("haproxy.cfg");
    let child = std::process::Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy (scripts/install-test-deps.sh installs it)");
    common::wait_for(Duration::from_secs(10), || {
        common::procs::listening(addr).then_some(())
    })
    .expect("haproxy listening");
    (
        Proc {
            child,
            name: "haproxy",
        },
        addr,
    )
}

fn reject_rate() {
    let length = round_length();
    println!(
        "\n== rejection rate: {THREADS} client threads, {ROUNDS} rounds of {length:?}, alternated"
    );
    let config = GuardConfig::new().tables(
        "[access]\ndeny = [\"127.0.1.0/24\"]\n\
         [limits.per_ip]\nconnections_per_second = 1\nburst = 1\n\
         [bans]\nthreshold = 1\n",
    );
    let guard = GuardProc::start(config.clone());
    // The same guard with the audit log on: one more JSON line per refusal.
    let audit_dir = tempfile::tempdir().expect("temp dir");
    let audit_path = audit_dir.path().join("audit.jsonl");
    let audited = GuardProc::start(config.audit(&audit_path));
    let (haproxy, hap_addr) = haproxy_reject("127.0.1.0/24");
    ban_by_junk(&guard);
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("haproxy reject", vec![], vec![]),
        ("guard ip_denied", vec![], vec![]),
        ("guard banned", vec![], vec![]),
        ("guard ip_denied + audit", vec![], vec![]),
    ];
    let paths = rows.len();
    for round in 0..ROUNDS {
        for k in 0..paths {
            let idx = (k + round) % paths;
            let (target, net, pid) = match idx {
                0 => (hap_addr, 1, haproxy.child.id()),
                1 => (guard.rtmp, 1, guard.pid()),
                2 => (guard.rtmp, 2, guard.pid()),
                _ => (audited.rtmp, 1, audited.pid()),
            };
            let cpu0 = cpu_seconds(pid);
            let rate = load(length, move |t, _| {
                refused(target, &format!("127.0.{net}.{}", t + 1))
            });
            let cpu = cpu_seconds(pid) - cpu0;
            println!(
                "round {round} {:16} {rate:9.0} conn/s  proxy CPU {cpu:.2}s",
                rows[idx].0
            );
            rows[idx].1.push(rate);
            rows[idx].2.push(cpu / (rate * length.as_secs_f64()) * 1e6);
        }
    }
    println!("\n| refused by | conn/s (median) | proxy CPU µs per connection |\n|---|---|---|");
    for (name, rates, cpu) in rows {
        println!("| {name} | {:.0} | {:.1} |", median(rates), median(cpu));
    }
    let denied = guard.metric(&common::blocked_sample("accept", "ip_denied"));
    let banned = guard.metric(&common::blocked_sample("accept", "banned"));
    // Every refusal must also have written its log line.
    let mut guard = guard;
    guard.signal("TERM");
    let _ = guard.wait_exit(Duration::from_secs(40));
    let log = guard.log_text();
    let logged = |reason: &str| {
        let needle = format!("\"reason\":\"{reason}\"");
        log.lines().filter(|l| l.contains(&needle)).count()
    };
    println!(
        "guard counted: ip_denied={denied} banned={banned}; log lines: ip_denied={} banned={}",
        logged("ip_denied"),
        logged("banned")
    );
    let audited_count = audited.metric(&common::blocked_sample("accept", "ip_denied"));
    // SIGTERM drains and flushes the audit queue before exit.
    let mut audited = audited;
    audited.signal("TERM");
    let _ = audited.wait_exit(Duration::from_secs(40));
    let lines = std::fs::read_to_string(&audit_path)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    println!("audited guard counted ip_denied={audited_count}, audit lines={lines}");
}

/// Bans 127.0.2.x (one per client thread) on a guard whose ban threshold
/// is 1: one HTTP request each (not_rtmp scores 5).
fn ban_by_junk(guard: &GuardProc) {
    for t in 0..THREADS {
        if let Ok(mut s) = connect_from(guard.rtmp, &format!("127.0.2.{}", t + 1)) {
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
        }
    }
}

/// Refusals per second from a denied (127.0.1.x) and a banned (127.0.2.x)
/// address: HAProxy, the guard in user space, the guard with kernel bans,
/// and a port nothing listens on (127.0.3.x), rotated every round.
fn kernel_bans_rate() {
    let length = round_length();
    println!("\n== kernel bans: {THREADS} client threads, {ROUNDS} rounds of {length:?}, rotated");
    if !common::have_nftables("bench_kernel_bans") {
        return;
    }
    let tables = "[access]\ndeny = [\"127.0.1.0/24\"]\n\
         [limits.per_ip]\nconnections_per_second = 1\nburst = 1\n\
         [bans]\nthreshold = 1\n";
    let user = GuardProc::start(GuardConfig::new().tables(tables));
    let table = format!("rtmp_guard_bench_{}", std::process::id());
    let kernel = GuardProc::start(GuardConfig::new().tables(&format!(
        "{tables}[bans.kernel]\nenabled = true\ntable = \"{table}\"\n"
    )));
    let (haproxy, hap_addr) = haproxy_reject("127.0.1.0/24 127.0.2.0/24");
    ban_by_junk(&user);
    ban_by_junk(&kernel);
    let entries = "rtmp_guard_kernel_ban_entries{family=\"ipv4\"}";
    let in_kernel = common::wait_for(Duration::from_secs(5), || {
        (kernel.metric(entries) >= 1.0 + THREADS as f64).then_some(())
    });
    if in_kernel.is_none() {
        println!("kernel bans not in the set: {}", kernel.log_text());
        return;
    }
    let nothing = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    struct Path {
        name: &'static str,
        target: SocketAddr,
        net: u8,
        pid: Option<u32>,
    }
    let paths = [
        (
            "haproxy reject, denied",
            hap_addr,
            1,
            Some(haproxy.child.id()),
        ),
        (
            "haproxy reject, banned",
            hap_addr,
            2,
            Some(haproxy.child.id()),
        ),
        (
            "guard user space, ip_denied",
            user.rtmp,
            1,
            Some(user.pid()),
        ),
        ("guard user space, banned", user.rtmp, 2, Some(user.pid())),
        (
            "guard kernel bans, denied",
            kernel.rtmp,
            1,
            Some(kernel.pid()),
        ),
        (
            "guard kernel bans, banned",
            kernel.rtmp,
            2,
            Some(kernel.pid()),
        ),
        ("no listener", nothing, 3, None),
    ]
    .map(|(name, target, net, pid)| Path {
        name,
        target,
        net,
        pid,
    });
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for r in 0..ROUNDS {
        for k in 0..paths.len() {
            let idx = (k + r) % paths.len();
            let p = &paths[idx];
            let cpu0 = p.pid.map(cpu_seconds);
            let (target, net) = (p.target, p.net);
            let rate = load(length, move |t, _| {
                refused(target, &format!("127.0.{net}.{}", t + 1))
            });
            let cpu = p.pid.map(cpu_seconds).zip(cpu0).map(|(b, a)| b - a);
            let per_100k = cpu.map(|c| c / (rate * length.as_secs_f64()).max(1.0) * 1e5);
            println!(
                "round {r} {:30} {rate:9.0} refusals/s  proxy CPU {:.2}s",
                p.name,
                cpu.unwrap_or(0.0)
            );
            rates[idx].push(rate);
            cpus[idx].push(per_100k.unwrap_or(f64::NAN));
        }
    }
    let haproxy_rate = median(rates[0].clone());
    println!(
        "\n| refused by | refusals/s (median) | vs HAProxy | proxy CPU s per 100,000 refusals |\n|---|---|---|---|"
    );
    for (i, p) in paths.iter().enumerate() {
        let rate = median(rates[i].clone());
        let cpu = median(cpus[i].clone());
        let cpu = if cpu.is_nan() {
            "-".to_string()
        } else {
            format!("{cpu:.3}")
        };
        println!(
            "| {} | {rate:.0} | {:.2}x | {cpu} |",
            p.name,
            rate / haproxy_rate
        );
    }
    println!(
        "kernel refused: ipv4={}; guard with kernel bans accepted {} connections \
         (the junk that banned), user-space guard counted ip_denied={} banned={}",
        kernel.metric("rtmp_guard_kernel_refused_total{family=\"ipv4\"}"),
        kernel.metric("rtmp_guard_connections_total"),
        user.metric(&common::blocked_sample("accept", "ip_denied")),
        user.metric(&common::blocked_sample("accept", "banned")),
    );
    // SIGTERM: the guard deletes its table after the drain.
    let mut kernel = kernel;
    kernel.signal("TERM");
    let _ = kernel.wait_exit(Duration::from_secs(40));
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "inet", &table])
        .output();
}

/// A full handshake, a `connect` for an unknown app, and the `_error`.
fn unknown_app_client(target: SocketAddr, source: &str, connect: &[u8]) -> bool {
    let Ok(mut s) = connect_from(target, source) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let Ok((mut hs, c0c1)) = ClientHandshake::start() else {
        return false;
    };
    if s.write_all(&c0c1).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = s.read(&mut buf) else {
            return false;
        };
        if n == 0 {
            return false;
        }
        match hs.feed(&buf[..n]) {
            Ok(step) if step.done => {
                let mut out = step.response;
                out.extend_from_slice(connect);
                if s.write_all(&out).is_err() {
                    return false;
                }
                break;
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    // The _error, then the close.
    let mut got = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got > 0,
            Ok(n) => got += n,
            Err(_) => return got > 0,
        }
    }
}

fn bad_client_cost() {
    let length = round_length();
    println!("\n== full cost of a bad client: handshake + connect + unknown_app");
    let guard = GuardProc::start(
        GuardConfig::new()
            .tables(
                "[limits.per_ip]\nconnections_per_second = 1000000\nburst = 1000000\n\
                 [bans]\nauto = false\n",
            )
            .origin("127.0.0.1:9")
            .app("live", ""),
    );
    let connect = Arc::new(connect_bytes("nope"));
    let mut per_core = Vec::new();
    for round in 0..ROUNDS {
        let cpu0 = cpu_seconds(guard.pid());
        let target = guard.rtmp;
        let c = connect.clone();
        let rate = load(length, move |t, _| {
            unknown_app_client(target, &format!("127.0.3.{}", t + 1), &c)
        });
        let cpu = cpu_seconds(guard.pid()) - cpu0;
        let per = rate * length.as_secs_f64() / cpu.max(0.01);
        println!(
            "round {round}: {rate:.0} rejections/s, guard CPU {cpu:.2}s, {per:.0} per CPU-second"
        );
        per_core.push(per);
    }
    println!(
        "median: {:.0} unknown_app rejections per guard CPU-second; counted {}",
        median(per_core),
        guard.metric(&common::blocked_sample("connect", "unknown_app"))
    );
}

fn address_spray() {
    const ADDRESSES: u64 = 1_000_000;
    println!("\n== address-table memory: {ADDRESSES} distinct sources via PROXY v2");
    let guard = GuardProc::start(
        GuardConfig::new().tables("[proxy_protocol]\ntrusted = [\"127.0.0.0/8\"]"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(guard.pid()).unwrap_or(0);
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let target = guard.rtmp;
    let front: SocketAddr = "203.0.113.1:1935".parse().unwrap_or(target);
    let start = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (next, sent) = (next.clone(), sent.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ADDRESSES {
                    return;
                }
                // Each address in its own IPv6 /64, so each is its own prefix.
                let ip = std::net::IpAddr::from(
                    (0x2001_0db8_u128 << 96 | u128::from(i) << 64 | 1).to_be_bytes(),
                );
                let header = proxy_protocol::encode_v2(SocketAddr::new(ip, 40_000), front);
                // Rotate the loopback source and reset on close, so the
                // generator never runs out of ports in TIME_WAIT.
                if let Ok(mut s) = connect_from(target, &format!("127.0.4.{}", i % 200 + 1)) {
                    if s.write_all(&header).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
            })
        })
        .collect();
    let mut peak = idle;
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(rss_kib(guard.pid()).unwrap_or(0));
    }
    for h in handles {
        let _ = h.join();
    }
    // Let the housekeeping sweep publish the table size.
    std::thread::sleep(Duration::from_secs(6));
    let after = rss_kib(guard.pid()).unwrap_or(0);
    peak = peak.max(after);
    println!(
        "sprayed {} of {ADDRESSES} in {:.1}s; guard RSS idle {idle} KiB, peak {peak} KiB, after {after} KiB \
         (peak - idle = {:.1} MiB); tracked_addresses = {}",
        sent.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        (peak.saturating_sub(idle)) as f64 / 1024.0,
        guard.metric("rtmp_guard_tracked_addresses")
    );
    println!(
        "refused meanwhile: overloaded={} too_many_connections={}",
        guard.metric(&common::blocked_sample("accept", "overloaded")),
        guard.metric(&common::blocked_sample("accept", "too_many_connections"))
    );
}
