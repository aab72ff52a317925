//! The one task that writes the guard's nftables table: it creates (or
//! takes over) the table at start, keeps its sets equal to the bans in
//! batches, and deletes it at stop. It also lends the metrics endpoint a
//! reader of the table's counters and set sizes, run at each scrape.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::ruleset::{self, Spec};
use super::sync::{self, Expiry, Inputs, Plan, Wanted};
use super::{nft, Msg};
use crate::config::Mode;
use crate::guard::Guard;
use crate::metrics::family;

/// At most one nftables transaction per window: changes that come within
/// it wait for its end and go in together.
pub const BATCH: Duration = Duration::from_millis(100);

/// Creates the table with what is banned and denied now, and starts the
/// task that keeps it so. `ports`: the guard's listen ports. `None` when
/// `[bans.kernel]` is off, or when nftables cannot be used: then that is
/// logged, once, and bans go on in user space alone.
pub async fn start(guard: &Arc<Guard>, ports: &[u16]) -> Option<JoinHandle<()>> {
    let config = guard.config();
    let kernel = &config.bans.kernel;
    if !kernel.enabled {
        return None;
    }
    let rx = guard.kernel.take_queue()?;
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    let spec = Spec {
        table: kernel.table.clone(),
        ports,
        action: kernel.action,
    };
    // Running before the first plan: a ban made while the table is built
    // leaves a notice, and the first batch picks it up.
    guard.kernel.set_running(true);
    let clock = Clock::now();
    let now = Instant::now();
    let plan = plan_now(guard, &clock, now);
    if let Err(e) = nft::apply(&ruleset::create(&spec, &plan.elements, now)).await {
        guard.kernel.set_running(false);
        guard.metrics.kernel_bans_enabled.set(0);
        tracing::error!(
            event = "kernel_bans_unavailable",
            table = %spec.table,
            error = %e,
            "KERNEL BANS UNAVAILABLE: {e}; bans and denies keep working in user space"
        );
        return None;
    }
    guard.metrics.kernel_bans_enabled.set(1);
    let ports: Vec<String> = spec.ports.iter().map(|p| p.to_string()).collect();
    tracing::info!(
        event = "kernel_bans_enabled",
        table = %spec.table,
        ports = %ports.join(","),
        action = ?spec.action,
        entries = plan.elements.len(),
        "bans enforced in the kernel: table inet {}, ports {}",
        spec.table,
        ports.join(", ")
    );
    read_at_scrape(guard, &spec.table);
    let mut worker = Worker {
        guard: guard.clone(),
        spec,
        clock,
        held: BTreeMap::new(),
        replan_at: None,
        shielded: Vec::new(),
    };
    worker.took(plan);
    Some(tokio::spawn(worker.run(rx)))
}

/// Reads the table's counters and set sizes into the metrics before each
/// scrape, while the table is kept.
fn read_at_scrape(guard: &Arc<Guard>, table: &str) {
    let weak = Arc::downgrade(guard);
    let table = table.to_string();
    let _ = guard.metrics.before_scrape.set(Box::new(move || {
        let weak = weak.clone();
        let table = table.clone();
        Box::pin(async move {
            let Some(guard) = weak.upgrade() else {
                return;
            };
            if !guard.kernel.is_running() {
                return;
            }
            match nft::list(&table).await {
                Ok(listing) => {
                    let stats = ruleset::stats(&listing);
                    let m = &guard.metrics;
                    for (i, f) in family::ALL.iter().enumerate() {
                        m.kernel_refused[i].store(stats.refused[i], Ordering::Relaxed);
                        m.kernel_ban_entries
                            .with_label_values(&[f])
                            .set(i64::try_from(stats.entries[i]).unwrap_or(i64::MAX));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the kernel ban table"),
            }
        })
    }));
}

/// Unix time read as the monotonic clock, fixed once so that an operator
/// ban's end (whole Unix seconds) maps to the same instant at every plan.
struct Clock {
    at: Instant,
    unix: SystemTime,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            at: Instant::now(),
            unix: SystemTime::now(),
        }
    }

    fn instant(&self, unix_secs: u64) -> Instant {
        let t = UNIX_EPOCH + Duration::from_secs(unix_secs);
        match t.duration_since(self.unix) {
            Ok(ahead) => self.at + ahead,
            Err(behind) => self.at.checked_sub(behind.duration()).unwrap_or(self.at),
        }
    }
}

/// The plan for the bans, denies, trusted proxies and mode in force now.
fn plan_now(guard: &Guard, clock: &Clock, now: Instant) -> Plan {
    let config = guard.config();
    let mut bans: Vec<Wanted> = guard
        .admission
        .bans()
        .list()
        .into_iter()
        .map(|(prefix, ban)| Wanted {
            prefix,
            expiry: Expiry::At(ban.until),
        })
        .collect();
    bans.extend(guard.remedies.load().bans.iter().map(|b| {
        Wanted {
            prefix: b.cidr,
            expiry: b
                .until
                .map_or(Expiry::Never, |u| Expiry::At(clock.instant(u))),
        }
    }));
    sync::plan(
        &Inputs {
            bans: &bans,
            deny: &config.access.deny,
            trusted: &config.proxy_protocol.trusted,
            dry_run: config.server.mode == Mode::DryRun,
        },
        now,
    )
}

struct Worker {
    guard: Arc<Guard>,
    spec: Spec,
    clock: Clock,
    /// What the kernel's sets were last given.
    held: BTreeMap<IpNet, Expiry>,
    /// When to plan again without a notice (a narrower prefix goes in).
    replan_at: Option<Instant>,
    /// Prefixes last kept out for a trusted proxy, to log each once.
    shielded: Vec<IpNet>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut last = Instant::now();
        loop {
            let msg = match self.replan_at {
                Some(at) => tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep_until(at.into()) => Some(Msg::Changed),
                },
                None => rx.recv().await,
            };
            match msg {
                None => return,
                Some(Msg::Stop(done)) => return self.remove(done).await,
                Some(Msg::Changed) => {}
            }
            tokio::time::sleep_until((last + BATCH).into()).await;
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Stop(done) = msg {
                    return self.remove(done).await;
                }
            }
            self.sync().await;
            last = Instant::now();
        }
    }

    /// Notes a plan the kernel now holds.
    fn took(&mut self, plan: Plan) {
        for prefix in plan.shielded.iter().filter(|p| !self.shielded.contains(p)) {
            tracing::warn!(
                event = "kernel_ban_shielded",
                prefix = %prefix,
                "{prefix} is not refused in the kernel: it overlaps a [proxy_protocol] trusted \
                 range, and the kernel sees only the balancer; refused in user space only"
            );
        }
        self.shielded = plan.shielded;
        self.replan_at = plan.replan_at;
        self.held = plan.elements;
    }

    /// Makes the kernel's sets equal to the plan now: the difference in one
    /// transaction; if that fails (an element the kernel dropped as we
    /// deleted it, or a table someone removed), the sets refilled whole,
    /// then the table rebuilt.
    async fn sync(&mut self) {
        let now = Instant::now();
        let plan = plan_now(&self.guard, &self.clock, now);
        let diff = sync::diff(&self.held, &plan.elements, now);
        if diff.is_empty() {
            return self.took(plan);
        }
        let mut result = nft::apply(&ruleset::update(&self.spec, &diff, now)).await;
        if let Err(e) = &result {
            tracing::warn!(event = "kernel_bans_refill", error = %e, "refilling the kernel's ban sets");
            result = nft::apply(&ruleset::refill(&self.spec, &plan.elements, now)).await;
        }
        if result.is_err() {
            result = nft::apply(&ruleset::create(&self.spec, &plan.elements, now)).await;
        }
        match result {
            Ok(()) => {
                tracing::debug!(
                    added = diff.add.len(),
                    deleted = diff.delete.len(),
                    "kernel ban sets updated"
                );
                self.took(plan);
            }
            Err(e) => {
                tracing::error!(
                    event = "kernel_bans_sync_failed",
                    error = %e,
                    "the kernel's ban sets could not be updated; bans keep working in user space"
                );
                // Unknown now: the next sync adds everything.
                self.held.clear();
                self.replan_at = plan.replan_at;
            }
        }
    }

    /// Deletes the table at stop.
    async fn remove(self, done: oneshot::Sender<()>) {
        match nft::apply(&ruleset::delete(&self.spec)).await {
            Ok(()) => tracing::info!(
                event = "kernel_bans_removed",
                table = %self.spec.table,
                "kernel ban table deleted"
            ),
            Err(e) => tracing::error!(
                event = "kernel_bans_remove_failed",
                table = %self.spec.table,
                error = %e,
                "cannot delete the kernel ban table: delete it by hand (nft delete table inet {})",
                self.spec.table
            ),
        }
        self.guard.metrics.kernel_bans_enabled.set(0);
        let _ = done.send(());
    }
}
