//! One path's run: the publisher up, the viewers ramped in batches, the
//! steady window measured, then publisher stopped, viewers drained and
//! closed, and the guard's counter read once its sessions ended.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::{publish, view, Failure, Failures, Target, ViewerEnd};
use crate::common;
use crate::common::procs::{cpu_seconds, rss_kib, GuardProc};
use crate::peers::{Origin, Peer, SESSIONS_ACTIVE, UPSTREAM_TO_CLIENT};
use crate::{PathKind, Plan, WARM_UP};

/// After the publisher stops, how long viewers may still be receiving.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one batch of viewers may take to start playing.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// After the ramp, before the figures for N viewers are taken.
const SETTLE: Duration = Duration::from_secs(3);

/// What one run of one path measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub viewers: usize,
    pub rss0_kib: f64,
    pub rssn_kib: f64,
    pub cpu_s: f64,
    pub window_bytes: f64,
    pub window_s: f64,
    pub gaps: u64,
    pub reordered: u64,
    pub nginx_dropped: u64,
    /// Viewers' RTMP bytes after the handshake, all of them (decrypted,
    /// over TLS).
    pub viewer_bytes: u64,
    /// Of which the guard wrote itself before relaying (its SetChunkSize).
    pub guard_own_bytes: u64,
    /// The guard's upstream_to_client counter over the run.
    pub counter_delta: Option<u64>,
    /// The guard's successful TLS handshakes over an RTMPS run.
    pub tls_handshakes: Option<u64>,
    pub samples: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Figures {
    pub fn kib_per_viewer(&self) -> f64 {
        (self.rssn_kib - self.rss0_kib) / self.viewers as f64
    }
    pub fn gb(&self) -> f64 {
        self.window_bytes / 1e9
    }
    pub fn cpu_per_gb(&self) -> f64 {
        self.cpu_s / self.gb()
    }
    pub fn mb_per_s(&self) -> f64 {
        self.window_bytes / 1e6 / self.window_s
    }
    /// Whether the viewers got exactly what the guard counted: all their
    /// bytes, or all but the guard's own preamble, which it does not count.
    pub fn lost_nothing(&self) -> Option<&'static str> {
        let counted = self.counter_delta?;
        Some(if counted == self.viewer_bytes {
            "yes (equal)"
        } else if counted == self.viewer_bytes - self.guard_own_bytes {
            "yes (equal without the guard's own SetChunkSize)"
        } else {
            "NO"
        })
    }
    pub fn brief(&self, latency: bool) -> String {
        if latency {
            format!(
                "{} samples: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs; gaps {}",
                self.samples, self.p50, self.p99, self.p999, self.gaps
            )
        } else {
            format!(
                "{:.1} KiB/viewer, {:.2} CPU s/GB, {:.1} MB/s, gaps {}, nginx dropped {}, lost nothing: {}",
                self.kib_per_viewer(),
                self.cpu_per_gb(),
                self.mb_per_s(),
                self.gaps,
                self.nginx_dropped,
                self.lost_nothing().unwrap_or("n/a")
            )
        }
    }
}

/// Publisher, viewers, measurements, shutdown: one path, one round.
pub fn run_path(
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    origin: &Origin,
    path: PathKind,
) -> Result<Figures, String> {
    let peer = Peer::start(path, origin, plan.viewers, plan.fds, plan.procs)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let publisher = rt.spawn(publish(origin.rtmp, plan.payload, plan.rate, stop_rx));
    common::wait_for(Duration::from_secs(10), || {
        origin.publishing().then_some(())
    })
    .ok_or_else(|| format!("the publisher did not reach nginx: {}", origin.error_log()))?;
    std::thread::sleep(Duration::from_secs(1));
    let mut fig = Figures {
        viewers: plan.viewers,
        ..Figures::default()
    };
    fig.rss0_kib = rss(&peer);
    let counter_before = scraped(path, peer.guard_sum(UPSTREAM_TO_CLIENT))?;
    let blocked_before = scraped(path, peer.guard_blocked())?;
    let handshakes_before = scraped(path, peer.tls_handshakes())?;

    let state = Arc::new(PathState::default());
    let run = Run {
        plan,
        rt,
        origin,
        peer: &peer,
        state: &state,
    };
    let driven = run.drive(&mut fig, publisher, stop_tx);
    if let Err(why) = driven {
        return Err(format!("{path}: {why}. {}", peer.guard_refusals()));
    }
    if let Some(before) = counter_before {
        let mut settled = 0;
        for guard in peer.guards() {
            settled += guard_settled(guard)?;
        }
        fig.counter_delta = Some(settled.saturating_sub(before));
    }
    if let (Some(after), Some(before)) = (scraped(path, peer.guard_blocked())?, blocked_before) {
        if after > before {
            return Err(format!("{path}: {}", peer.guard_refusals()));
        }
    }
    if let (Some(after), Some(before)) = (scraped(path, peer.tls_handshakes())?, handshakes_before)
    {
        // Every viewer, and nothing else, came in over TLS.
        fig.tls_handshakes = Some(after - before);
        if after - before != plan.viewers as u64 {
            return Err(format!(
                "{path}: the guard counted {} successful TLS handshakes for {} viewers",
                after - before,
                plan.viewers
            ));
        }
    }
    Ok(fig)
}

/// A guard metric, or why it could not be read on `path`.
fn scraped<T>(path: PathKind, what: Result<T, String>) -> Result<T, String> {
    what.map_err(|e| format!("{path}: {e}"))
}

type ViewerTask = tokio::task::JoinHandle<Result<ViewerEnd, Failure>>;

/// One path's run once its peer and publisher are up.
struct Run<'a> {
    plan: &'a Plan,
    rt: &'a tokio::runtime::Runtime,
    origin: &'a Origin,
    peer: &'a Peer,
    state: &'a Arc<PathState>,
}

impl Run<'_> {
    /// Ramp, window, publisher stop, drain, close. Dropping the senders on
    /// an early return stops the publisher and every viewer.
    fn drive(
        &self,
        fig: &mut Figures,
        publisher: tokio::task::JoinHandle<Result<u64, String>>,
        stop: watch::Sender<bool>,
    ) -> Result<(), String> {
        let (phase_tx, phase_rx) = watch::channel(Phase::Run);
        let handles = ramp(
            self.plan,
            self.rt,
            self.peer
                .targets(self.origin)
                .into_iter()
                .map(Arc::new)
                .collect(),
            self.state,
            &phase_rx,
        )?;
        measure(self.plan, self.origin, self.peer, self.state, fig)?;
        let _ = stop.send(true);
        self.rt
            .block_on(publisher)
            .map_err(|e| format!("publisher task: {e}"))??;
        drain(self.origin, self.state, &phase_tx, fig)?;
        let _ = phase_tx.send(Phase::Close);
        let ends = collect(self.rt, handles)?;
        fig.viewer_bytes = ends.iter().map(|e| e.bytes).sum();
        fig.guard_own_bytes = ends.iter().map(|e| e.leading_chunk_size).sum();
        fig.gaps = ends.iter().map(|e| e.gaps).sum();
        fig.reordered = ends.iter().map(|e| e.reordered).sum();
        Ok(())
    }
}

/// Opens the viewers in batches, each batch playing before the next.
fn ramp(
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    targets: Vec<Arc<Target>>,
    state: &Arc<PathState>,
    phase: &watch::Receiver<Phase>,
) -> Result<Vec<ViewerTask>, String> {
    if targets.is_empty() {
        return Err("the path has no address to connect to".into());
    }
    let mut handles = Vec::with_capacity(plan.viewers);
    let mut turn = targets.iter().cycle();
    while handles.len() < plan.viewers {
        let batch = plan.batch.min(plan.viewers - handles.len());
        for target in turn.by_ref().take(batch) {
            handles.push(rt.spawn(view(target.clone(), state.clone(), phase.clone())));
        }
        let opened = handles.len();
        let settled = common::wait_for(BATCH_TIMEOUT, || {
            let done = state.playing.load(Ordering::Relaxed) + state.failed.load(Ordering::Relaxed);
            (done >= opened).then_some(())
        });
        let failed = state.failed.load(Ordering::Relaxed);
        if settled.is_none() || failed > 0 {
            let playing = state.playing.load(Ordering::Relaxed);
            let summary = failure_summary(rt, handles);
            return Err(format!(
                "viewers refused or failed during the ramp: {failed} failed, {playing} playing \
                 of {opened} opened: {summary}"
            ));
        }
    }
    Ok(handles)
}

/// The steady window: RSS, CPU, bytes delivered, delays.
fn measure(
    plan: &Plan,
    origin: &Origin,
    peer: &Peer,
    state: &PathState,
    fig: &mut Figures,
) -> Result<(), String> {
    if !plan.latency {
        std::thread::sleep(SETTLE);
    }
    let warm_up = if plan.latency {
        WARM_UP
    } else {
        Duration::ZERO
    };
    let start = Instant::now();
    state
        .record_from
        .store(now_ns() + warm_up.as_nanos() as u64, Ordering::Relaxed);
    let bytes0 = state.bytes.load(Ordering::Relaxed);
    let cpu0 = cpu(peer);
    let end = start + plan.window;
    while Instant::now() < end {
        std::thread::sleep(
            Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())),
        );
        let failed = state.failed.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(format!("{failed} viewers failed while playing"));
        }
    }
    state.record_until.store(now_ns(), Ordering::Relaxed);
    fig.cpu_s = cpu(peer) - cpu0;
    fig.window_bytes = (state.bytes.load(Ordering::Relaxed) - bytes0) as f64;
    fig.window_s = start.elapsed().as_secs_f64();
    fig.rssn_kib = rss(peer);
    fig.nginx_dropped = origin.dropped();
    let h = &state.delays;
    fig.samples = h.count();
    fig.p50 = h.percentile(0.50);
    fig.p99 = h.percentile(0.99);
    fig.p999 = h.percentile(0.999);
    fig.max = h.percentile(1.0);
    Ok(())
}

/// The proxy's resident memory, over its processes.
fn rss(peer: &Peer) -> f64 {
    peer.pids().into_iter().filter_map(rss_kib).sum::<u64>() as f64
}

/// The proxy's CPU seconds so far, over its processes.
fn cpu(peer: &Peer) -> f64 {
    peer.pids().into_iter().map(cpu_seconds).sum()
}

/// After the publisher stopped: waits until every viewer has been quiet
/// for a second, so each has read all the proxy sent it.
fn drain(
    origin: &Origin,
    state: &PathState,
    phase: &watch::Sender<Phase>,
    fig: &mut Figures,
) -> Result<(), String> {
    let _ = phase.send(Phase::Drain);
    let total = fig.viewers;
    common::wait_for(DRAIN_TIMEOUT, || {
        (state.drained.load(Ordering::Relaxed) + state.failed.load(Ordering::Relaxed) >= total)
            .then_some(())
    })
    .ok_or("viewers still receiving 20 s after the publisher stopped")?;
    // Drops while draining are nginx's too; its clients vanish from /stat
    // once they close.
    fig.nginx_dropped = fig.nginx_dropped.max(origin.dropped());
    match state.failed.load(Ordering::Relaxed) {
        0 => Ok(()),
        n => Err(format!("{n} viewers failed while draining")),
    }
}

/// Waits for every viewer task; fails if any viewer failed.
fn collect(
    rt: &tokio::runtime::Runtime,
    handles: Vec<ViewerTask>,
) -> Result<Vec<ViewerEnd>, String> {
    let mut ends = Vec::with_capacity(handles.len());
    let mut failures = Failures::default();
    for h in handles {
        match rt.block_on(h) {
            Ok(Ok(end)) => ends.push(end),
            Ok(Err(f)) => failures.add(&f),
            Err(e) => failures.add(&Failure::Panicked(e.to_string())),
        }
    }
    if failures.total > 0 {
        return Err(format!("{} viewers failed: {failures}", failures.total));
    }
    Ok(ends)
}

/// Stops the viewers still running and says why the others failed.
fn failure_summary(rt: &tokio::runtime::Runtime, handles: Vec<ViewerTask>) -> String {
    let mut failures = Failures::default();
    for h in handles {
        if !h.is_finished() {
            h.abort();
        }
        match rt.block_on(h) {
            Ok(Err(f)) => failures.add(&f),
            Err(e) if !e.is_cancelled() => failures.add(&Failure::Panicked(e.to_string())),
            _ => {}
        }
    }
    failures.to_string()
}

/// The guard's upstream_to_client counter once its sessions have ended and
/// it has stopped moving.
fn guard_settled(guard: &GuardProc) -> Result<u64, String> {
    let mut last = None;
    common::wait_for(Duration::from_secs(30), || {
        let text = guard.metrics_text()?;
        let active = common::metric(&text, SESSIONS_ACTIVE).unwrap_or(0.0);
        let now = common::metric(&text, UPSTREAM_TO_CLIENT)? as u64;
        let stable = last.replace(now) == Some(now);
        std::thread::sleep(Duration::from_millis(200));
        (active == 0.0 && stable).then_some(now)
    })
    .ok_or_else(|| "the guard's sessions did not end within 30 s of the viewers closing".into())
}

// ---------------------------------------------------------------------------
// Shared state between the coordinator (main thread) and the tasks.

pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Run,
    Drain,
    Close,
}

/// Counters every viewer of one path adds to.
pub struct PathState {
    pub playing: AtomicUsize,
    pub failed: AtomicUsize,
    pub drained: AtomicUsize,
    /// RTMP bytes after the handshake (decrypted over TLS), all viewers.
    pub bytes: AtomicU64,
    /// Delays are recorded for messages sent in [from, until), ns.
    pub record_from: AtomicU64,
    pub record_until: AtomicU64,
    pub delays: Histogram,
}

impl Default for PathState {
    fn default() -> Self {
        PathState {
            playing: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            drained: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            record_from: AtomicU64::new(u64::MAX),
            record_until: AtomicU64::new(u64::MAX),
            delays: Histogram::default(),
        }
    }
}

/// Microsecond delays in log-linear buckets: exact below 128 µs, then 64
/// buckets per power of two (within 1.6 %), up to about 2 minutes.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const HIST_BUCKETS: usize = (SUB + 20 * SUB + SUB) as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..HIST_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    fn index(us: u64) -> usize {
        if us < SUB {
            return us as usize;
        }
        let shift = (63 - us.leading_zeros()) - SUB_BITS;
        let i = SUB + u64::from(shift) * SUB + ((us >> shift) - SUB);
        (i as usize).min(HIST_BUCKETS - 1)
    }

    /// The middle of bucket `i`, in µs.
    fn value(i: usize) -> f64 {
        let i = i as u64;
        if i < SUB {
            return i as f64;
        }
        let shift = (i - SUB) / SUB;
        let low = (SUB + (i - SUB) % SUB) << shift;
        low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
    }

    pub fn record(&self, us: u64) {
        self.buckets[Histogram::index(us)].fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn percentile(&self, p: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return f64::NAN;
        }
        let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Histogram::value(i);
            }
        }
        f64::NAN
    }
}
