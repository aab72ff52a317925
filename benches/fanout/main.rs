//! Fan-out at scale (issue 12): many players of one live stream through the
//! guard and through HAProxy `mode tcp`, in front of the same nginx-rtmp.
//!
//! ```text
//! cargo bench --bench fanout -- fanout --viewers 1000 --kbps 1500 --seconds 20
//! cargo bench --bench fanout -- fanout --viewers 10000 --kbps 100 --seconds 20
//! cargo bench --bench fanout -- latency --viewers 100 --rate 100
//! cargo bench --bench fanout -- fanout --viewers 300 --paths guard --rounds 3
//! cargo bench --bench fanout -- fanout --viewers 1000 --paths guard,guard-tls
//! cargo bench --bench fanout -- fanout --viewers 10000 --kbps 100 --procs 2 --paths haproxy,guard
//! ```
//!
//! The generator is this process, on tokio ([`client`]): one RTMP publisher
//! straight to nginx, sending video messages at a fixed rate, each stamped
//! with its send time and a sequence number (nginx-rtmp relays them without
//! an AVC sequence header); and N players, tasks that connect through the
//! path under test, play the stream, and parse it with the crate's own chunk
//! parser, holding no read buffer between reads. Players open in batches,
//! each batch playing before the next opens.
//!
//! The paths: `direct` to nginx; `haproxy`; `guard`; and `guard-tls`, where
//! the viewers speak RTMPS to the guard's `[tls]` listener (a tokio-rustls
//! client trusting only the certificate the bench made for the guard, by
//! the name it was issued for) and the guard relays plain RTMP to nginx.
//! The publisher is always plain and straight to nginx. A TLS viewer reads
//! the socket into the same per-thread buffer and hands it to rustls at
//! once; what rustls keeps per connection (a partial record, and a 4 KiB
//! read buffer it shrinks back to) is the generator's memory, not the
//! guard's.
//!
//! Per path ([`path`]), against one nginx-rtmp for the whole run, with a
//! fresh proxy and publisher each time so that one path's memory does not
//! carry into the next ([`peers`]):
//!
//! - `fanout`: the proxy's RSS with the publisher running and no viewer,
//!   then with all N playing; KiB per active viewer; proxy CPU seconds per
//!   GB delivered to the viewers in the steady window; MB/s delivered;
//!   sequence gaps the viewers saw; nginx's own drops (`<dropped>` in
//!   `/stat`); and, for the guard, whether the viewers received exactly the
//!   bytes its `rtmp_guard_bytes_total{direction="upstream_to_client"}`
//!   counted, after the publisher stopped, the viewers drained and closed,
//!   and the guard's sessions ended. Over `guard-tls` the viewers' bytes are
//!   the decrypted RTMP bytes (the counter counts the RTMP bytes the guard
//!   wrote, not TLS's overhead), and so are the GB and MB/s; the guard must
//!   also have counted exactly N successful TLS handshakes.
//! - `latency`: p50, p99 and p99.9 of the one-way delay (publisher send to
//!   player parse), direct to nginx, through HAProxy, through the guard and
//!   through the guard over RTMPS, and what each adds over direct. The first
//!   second is warm-up.
//!
//! Every viewer must play to the end: a viewer refused, reset, stalled or
//! closed fails the bench, which then reports no figure. The bench writes
//! the guard's config itself, lifting the per-address limits (every viewer
//! comes from 127.0.0.1) and raising `max_connections`, `max_pending` (which
//! also bounds the TLS handshakes in progress) and `max_viewers`, plus a
//! `[tls]` table for `guard-tls` with its timeouts at their defaults; the
//! shipped defaults are untouched. It raises
//! RLIMIT_NOFILE to the hard limit, which the peers inherit, and clamps N
//! (loudly) to what a proxy's two fds per viewer allow. With `--procs P`
//! each proxy, HAProxy and the guard alike, runs as P processes on their
//! own ports, each sized for N / P viewers, and the viewers take them in
//! turn (as behind a layer-4 split): RSS, CPU and the guard's counters are
//! summed over the processes. That is how N goes past one process's fd
//! limit; `guard-tls` runs one process only.
//!
//! Under `cargo test` (no `--bench` argument) it does nothing.

mod client;
#[path = "../../tests/common/mod.rs"]
mod common;
mod path;
mod peers;

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use path::{run_path, Figures};
use peers::Origin;

const APP: &str = "live";
const STREAM: &str = "bench";
/// Payload of a latency run unless `--kbps` says otherwise.
const LATENCY_PAYLOAD: usize = 200;
/// Skipped at the start of a latency window.
const WARM_UP: Duration = Duration::from_secs(1);
/// File descriptors a proxy needs besides two per viewer.
const FD_RESERVE: u64 = 40;
/// Most processes `--procs` may start per proxy.
const MAX_PROCS: usize = 64;

#[derive(Parser, Debug)]
#[command(
    name = "fanout",
    about = "Fan-out load generator and benchmark (issue 12)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug, Clone)]
enum Mode {
    /// RSS per viewer, CPU per GB, nothing lost.
    Fanout(Opts),
    /// One-way delay percentiles per path.
    Latency(Opts),
}

#[derive(Args, Debug, Clone)]
struct Opts {
    /// Players per path.
    #[arg(long, default_value_t = 1000)]
    viewers: usize,
    /// Stream bitrate; default 1500 for fanout, a 200-byte payload for latency.
    #[arg(long)]
    kbps: Option<u64>,
    /// Video messages per second; default 25 for fanout, 100 for latency.
    #[arg(long)]
    rate: Option<u32>,
    /// Steady window per path; default 20 for fanout, 10 for latency.
    #[arg(long)]
    seconds: Option<u64>,
    /// Comma-separated: direct, haproxy, guard, guard-tls.
    #[arg(long, value_delimiter = ',')]
    paths: Option<Vec<PathKind>>,
    /// Repeat every path this many times; medians are printed.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Viewers opened at a time.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Processes per proxy (HAProxy and the guard alike), the viewers
    /// taking them in turn: where one process cannot hold 2 fds per viewer.
    #[arg(long, default_value_t = 1)]
    procs: usize,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathKind {
    Direct,
    Haproxy,
    Guard,
    /// The guard, its viewers over RTMPS.
    GuardTls,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Haproxy => "haproxy",
            PathKind::Guard => "guard",
            PathKind::GuardTls => "guard-tls",
        })
    }
}

/// A run's settings, defaults filled in.
#[derive(Debug, Clone)]
struct Plan {
    latency: bool,
    viewers: usize,
    rate: u32,
    payload: usize,
    window: Duration,
    paths: Vec<PathKind>,
    rounds: usize,
    batch: usize,
    /// Processes per proxy.
    procs: usize,
    /// RLIMIT_NOFILE the peers inherit.
    fds: u64,
}

impl Plan {
    fn new(mode: Mode) -> Plan {
        let (latency, o) = match mode {
            Mode::Fanout(o) => (false, o),
            Mode::Latency(o) => (true, o),
        };
        let rate = o.rate.unwrap_or(if latency { 100 } else { 25 }).max(1);
        let payload = match (o.kbps, latency) {
            (Some(kbps), _) => (kbps * 1000 / 8 / u64::from(rate)) as usize,
            (None, true) => LATENCY_PAYLOAD,
            (None, false) => (1500 * 1000 / 8 / rate) as usize,
        };
        let default_paths = if latency {
            vec![
                PathKind::Direct,
                PathKind::Haproxy,
                PathKind::Guard,
                PathKind::GuardTls,
            ]
        } else {
            vec![PathKind::Guard, PathKind::Haproxy, PathKind::GuardTls]
        };
        Plan {
            latency,
            viewers: o.viewers.max(1),
            rate,
            payload: payload.max(client::SEQ_END),
            window: Duration::from_secs(o.seconds.unwrap_or(if latency { 10 } else { 20 }).max(2)),
            paths: o.paths.unwrap_or(default_paths),
            rounds: o.rounds.max(1),
            batch: o.batch.max(1),
            procs: o.procs.max(1),
            fds: 1024,
        }
    }

    /// Settings that cannot run, refused before anything starts.
    fn check(&self) -> Result<(), String> {
        if self.procs > MAX_PROCS.min(self.viewers) {
            return Err(format!(
                "--procs {} is more than {} (at most {MAX_PROCS}, and no more than the viewers)",
                self.procs,
                MAX_PROCS.min(self.viewers)
            ));
        }
        if self.procs > 1 && self.paths.contains(&PathKind::GuardTls) {
            return Err(
                "guard-tls runs one guard process: give --procs 1, or --paths without guard-tls"
                    .into(),
            );
        }
        Ok(())
    }

    fn kbps(&self) -> f64 {
        (self.payload as f64 * 8.0 * f64::from(self.rate)) / 1000.0
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    let user_args: Vec<&String> = args.iter().skip(1).filter(|a| *a != "--bench").collect();
    let cli = match Cli::try_parse_from(std::iter::once(&args[0]).chain(user_args.iter().copied()))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
    };
    let mut plan = Plan::new(cli.mode);
    if let Err(why) = plan.check() {
        return failed(&why);
    }
    let fds = raise_fd_limit();
    clamp_viewers(&mut plan, fds);
    println!(
        "command: cargo bench --bench fanout -- {}",
        user_args
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "machine: {} cpus; RLIMIT_NOFILE {fds}; guard binary {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        env!("CARGO_BIN_EXE_rtmp-guard")
    );
    if !env!("CARGO_BIN_EXE_rtmp-guard").contains("/release/") {
        println!("WARNING: the guard binary is not a release build; run this with `cargo bench`");
    }
    if !common::have_tools("fanout bench", &["nginx", "haproxy"]) {
        return ExitCode::FAILURE;
    }
    println!(
        "plan: {} viewers per path, {} msg/s of {} bytes ({:.0} kbit/s), {} s window, paths {}, {} round(s), {} process(es) per proxy\n",
        plan.viewers,
        plan.rate,
        plan.payload,
        plan.kbps(),
        plan.window.as_secs(),
        plan.paths
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
        plan.rounds,
        plan.procs
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match run(&plan, &rt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => failed(&why),
    }
}

/// Says why the bench failed, in its report and on stderr.
fn failed(why: &str) -> ExitCode {
    println!("\nFAILED: {why}");
    eprintln!("FAILED: {why}");
    ExitCode::FAILURE
}

/// Raises the soft fd limit to the hard one, for this process and the
/// peers it spawns; returns the limit now in force.
fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or_else(|e| {
        println!("WARNING: could not raise RLIMIT_NOFILE: {e}");
        rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
    })
}

/// A proxy process holds two fds per viewer, and the generator and nginx
/// (one process each) one: fewer viewers if they do not fit.
fn clamp_viewers(plan: &mut Plan, fds: u64) {
    plan.fds = fds;
    let room = fds.saturating_sub(FD_RESERVE) as usize;
    let fit = (room / 2).saturating_mul(plan.procs).min(room);
    if plan.viewers > fit {
        let line = "!".repeat(78);
        println!("{line}");
        println!(
            "!! --viewers {} does not fit: RLIMIT_NOFILE is {fds} (hard limit; raising it needs\n\
             !! CAP_SYS_RESOURCE) and a proxy process needs 2 fds per viewer + {FD_RESERVE}\n\
             !! ({} process(es); --procs spreads the viewers over more), nginx and this\n\
             !! generator one each.\n\
             !! CLAMPED to {fit} viewers.",
            plan.viewers, plan.procs
        );
        println!("{line}");
        plan.viewers = fit;
    }
}

fn run(plan: &Plan, rt: &tokio::runtime::Runtime) -> Result<(), String> {
    let origin = Origin::start(plan.viewers);
    let mut results: BTreeMap<PathKind, Vec<Figures>> = BTreeMap::new();
    for round in 1..=plan.rounds {
        // Each round starts one path later, so no path always runs after
        // the same one (a machine that tires within a round, or sockets
        // still closing from the path before, would always tax the same
        // path).
        let mut order = plan.paths.clone();
        let shift = (round - 1) % order.len().max(1);
        order.rotate_left(shift);
        for path in order {
            println!("round {round}/{}: {path} ...", plan.rounds);
            let figures = run_path(plan, rt, &origin, path)?;
            println!("  {}", figures.brief(plan.latency));
            results.entry(path).or_default().push(figures);
        }
    }
    println!();
    if plan.latency {
        print_latency(plan, &results);
    } else {
        print_fanout(plan, &results);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reports: markdown tables, one row per path, medians over the rounds.

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn med(runs: &[Figures], f: impl Fn(&Figures) -> f64) -> f64 {
    median(runs.iter().map(f).collect())
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", headers.join(" | "));
    println!("|{}", "---|".repeat(headers.len()));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

/// A column: its header, and its cell from a path's runs and, for figures
/// relative to it, the direct path's.
type Column = (&'static str, fn(&[Figures], Option<&[Figures]>) -> String);

fn figures_table(results: &BTreeMap<PathKind, Vec<Figures>>, columns: &[Column]) {
    let direct = results.get(&PathKind::Direct).map(Vec::as_slice);
    let headers: Vec<&str> = std::iter::once("path")
        .chain(columns.iter().map(|c| c.0))
        .collect();
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(path, runs)| {
            std::iter::once(path.to_string())
                .chain(columns.iter().map(|c| (c.1)(runs, direct)))
                .collect()
        })
        .collect();
    table(&headers, &rows);
}

fn rounds_note(plan: &Plan) -> String {
    if plan.rounds > 1 {
        format!(", medians of {} rounds", plan.rounds)
    } else {
        String::new()
    }
}

fn print_fanout(plan: &Plan, results: &BTreeMap<PathKind, Vec<Figures>>) {
    println!(
        "fan-out: {} viewers of one {:.0} kbit/s stream ({} msg/s of {} B), {} s window{}\n",
        plan.viewers,
        plan.kbps(),
        plan.rate,
        plan.payload,
        plan.window.as_secs(),
        rounds_note(plan)
    );
    figures_table(results, &[&FANOUT[..], &[GAPS, DROPPED]].concat());
    println!(
        "\nnothing lost: viewers' RTMP bytes after the handshake (decrypted over guard-tls) \
         against the guard's counter\n"
    );
    let mut rows = Vec::new();
    for (path, runs) in results {
        for (i, r) in runs.iter().enumerate() {
            if let Some(counted) = r.counter_delta {
                rows.push(vec![
                    path.to_string(),
                    (i + 1).to_string(),
                    r.viewer_bytes.to_string(),
                    r.guard_own_bytes.to_string(),
                    counted.to_string(),
                    r.lost_nothing().unwrap_or("n/a").to_string(),
                    r.tls_handshakes.map_or("–".into(), |n| n.to_string()),
                ]);
            }
        }
    }
    let headers = [
        "path",
        "round",
        "viewers received",
        "of which the guard's own SetChunkSize",
        "guard's upstream_to_client counter",
        "match",
        "TLS handshakes",
    ];
    table(&headers, &rows);
    println!("\none-way delay in the window (µs, informational)\n");
    figures_table(results, &LATENCY[..3]);
}

fn print_latency(plan: &Plan, results: &BTreeMap<PathKind, Vec<Figures>>) {
    println!(
        "latency: {} viewers, {} msg/s of {} B, {} s window (first {} s skipped){}\n",
        plan.viewers,
        plan.rate,
        plan.payload,
        plan.window.as_secs(),
        WARM_UP.as_secs(),
        rounds_note(plan)
    );
    figures_table(
        results,
        &[&[SAMPLES][..], &LATENCY, &[MAX, GAPS, DROPPED]].concat(),
    );
}

const FANOUT: [Column; 10] = [
    ("viewers", |r, _| {
        format!("{:.0}", med(r, |f| f.viewers as f64))
    }),
    ("failed", |_, _| "0".into()),
    ("RSS 0 viewers (KiB)", |r, _| {
        format!("{:.0}", med(r, |f| f.rss0_kib))
    }),
    ("RSS N viewers (KiB)", |r, _| {
        format!("{:.0}", med(r, |f| f.rssn_kib))
    }),
    ("KiB/viewer", |r, _| {
        format!("{:.1}", med(r, Figures::kib_per_viewer))
    }),
    ("proxy CPU s", |r, _| format!("{:.2}", med(r, |f| f.cpu_s))),
    ("GB to viewers", |r, _| {
        format!("{:.3}", med(r, Figures::gb))
    }),
    ("CPU s/GB", |r, _| {
        format!("{:.2}", med(r, Figures::cpu_per_gb))
    }),
    ("MB/s to viewers", |r, _| {
        format!("{:.1}", med(r, Figures::mb_per_s))
    }),
    ("reordered", |r, _| {
        format!("{:.0}", med(r, |f| f.reordered as f64))
    }),
];

/// Delay percentiles, then what each adds over direct.
const LATENCY: [Column; 6] = [
    ("p50 µs", |r, _| format!("{:.0}", med(r, |f| f.p50))),
    ("p99 µs", |r, _| format!("{:.0}", med(r, |f| f.p99))),
    ("p99.9 µs", |r, _| format!("{:.0}", med(r, |f| f.p999))),
    ("added p50", |r, d| added(r, d, |f| f.p50)),
    ("added p99", |r, d| added(r, d, |f| f.p99)),
    ("added p99.9", |r, d| added(r, d, |f| f.p999)),
];

const SAMPLES: Column = ("samples", |r, _| {
    format!("{:.0}", med(r, |f| f.samples as f64))
});
const MAX: Column = ("max µs", |r, _| format!("{:.0}", med(r, |f| f.max)));
const GAPS: Column = ("seq gaps", |r, _| {
    format!("{:.0}", med(r, |f| f.gaps as f64))
});
const DROPPED: Column = ("nginx dropped", |r, _| {
    format!("{:.0}", med(r, |f| f.nginx_dropped as f64))
});

/// A path's median figure minus the direct path's.
fn added(runs: &[Figures], direct: Option<&[Figures]>, f: fn(&Figures) -> f64) -> String {
    direct.map_or("–".into(), |d| {
        format!("{:+.0}", med(runs, f) - med(d, f))
    })
}
