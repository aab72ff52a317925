//! What every connection shares: the config new connections take, the
//! metrics, the admission tables, the stream registry, the operator's
//! remedies and the live sessions.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};

use crate::admit::admission::Admission;
use crate::audit::Audit;
use crate::callback::Callbacks;
use crate::config::Config;
use crate::control::sessions::Sessions;
use crate::control::Remedies;
use crate::fleet::handle::{FleetHandle, Outgoing};
use crate::kernel::KernelBans;
use crate::metrics::Metrics;
use crate::policy::Registry;
use crate::pool::Pools;
use crate::refusals::RefusalHistory;
use crate::relay::buffers::BufferPool;
use crate::workers::Workers;

/// State shared by every connection.
pub struct Guard {
    /// The config new connections take; a session keeps the one it began
    /// with for everything, so a reload never disturbs it.
    pub config: ArcSwap<Config>,
    /// The file the config came from; `None`: the embedded default.
    pub config_path: Option<PathBuf>,
    pub metrics: Arc<Metrics>,
    /// Refusals per reason per 10 s over the last hour (the status page).
    pub refusals: RefusalHistory,
    /// Each upstream's servers: up or down, drained, sessions.
    pub pools: Pools,
    /// Permits for `server.max_connections`.
    pub connections: Arc<Semaphore>,
    /// Connections open now, which a drain waits on.
    pub open: OpenConnections,
    /// Address rules, rate limits and bans.
    pub admission: Admission,
    /// The queue to the task that copies bans into the kernel.
    pub kernel: KernelBans,
    /// Live publishers and per-app counts.
    pub streams: Arc<Registry>,
    /// HTTP auth callbacks and their cached answers.
    pub callbacks: Callbacks,
    /// The operator's bans, blocks and suspensions.
    pub remedies: ArcSwap<Remedies>,
    /// Serialises changes to `remedies` and their state-file writes.
    pub remedies_write: tokio::sync::Mutex<()>,
    /// Sessions relaying now.
    pub sessions: Sessions,
    /// Relay buffers, lent while data is in flight.
    pub buffers: BufferPool,
    pub audit: Audit,
    /// False once draining: `/readyz` fails and nothing new is accepted.
    pub ready: AtomicBool,
    /// Fleet mode (`[fleet]`, fixed at start): the fleet task's handle.
    pub fleet: Option<FleetHandle>,
    /// The threads sessions run on.
    pub workers: Arc<Workers>,
    /// What the fleet task reads, until it starts and takes it.
    pub fleet_queue: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Outgoing>>>,
}

impl Guard {
    pub fn new(
        config: Config,
        path: Option<PathBuf>,
        metrics: Arc<Metrics>,
        audit: Audit,
    ) -> Guard {
        let pools = Pools::default();
        pools.sync(&config, &[], &metrics);
        let (fleet, fleet_queue) = match &config.fleet {
            Some(f) => {
                let (handle, queue) = FleetHandle::new(&f.name);
                (Some(handle), Some(queue))
            }
            None => (None, None),
        };
        Guard {
            fleet,
            workers: Arc::default(),
            fleet_queue: std::sync::Mutex::new(fleet_queue),
            pools,
            connections: Arc::new(Semaphore::new(config.server.max_connections)),
            open: OpenConnections::default(),
            admission: Admission::new(&config),
            kernel: KernelBans::default(),
            streams: Arc::new(Registry::default()),
            callbacks: Callbacks::default(),
            metrics,
            refusals: RefusalHistory::default(),
            remedies: ArcSwap::default(),
            remedies_write: tokio::sync::Mutex::new(()),
            sessions: Sessions::default(),
            buffers: BufferPool::default(),
            audit,
            ready: AtomicBool::new(false),
            config: ArcSwap::from_pointee(config),
            config_path: path,
        }
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Marks exactly the `drained` (upstream, server) pairs drained.
    pub fn set_drained(&self, drained: &[(String, String)]) {
        for (name, pool) in self.pools.all() {
            for server in &pool.servers {
                server.set_drained(drained.contains(&(name.clone(), server.addr.clone())));
            }
        }
    }

    /// Copies table sizes into their gauges.
    pub fn publish_gauges(&self) {
        let m = &self.metrics;
        m.tracked_addresses
            .set(self.admission.tracked_addresses() as i64);
        let manual = self.remedies.load().bans.len();
        m.bans_active
            .set((self.admission.bans().len() + manual) as i64);
        m.pending_connections.set(self.admission.pending() as i64);
    }

    /// Counts a connection as open until the hold drops, in the gauge and
    /// in the count a drain waits on, even if the task unwinds. Taken at
    /// accept, so a drain also waits for a session handed to a worker
    /// that has not run it yet.
    pub fn hold_open(self: &Arc<Self>) -> OpenHold {
        self.open.count.fetch_add(1, Ordering::SeqCst);
        self.metrics.connections_active.inc();
        OpenHold(self.clone())
    }
}

/// The number of open client connections, and a wake-up when it changes.
#[derive(Default)]
pub struct OpenConnections {
    count: AtomicUsize,
    changed: Notify,
}

impl OpenConnections {
    pub fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let changed = self.changed.notified();
            if self.get() == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// One open connection; see [`Guard::hold_open`].
pub struct OpenHold(Arc<Guard>);

impl Drop for OpenHold {
    fn drop(&mut self) {
        self.0.metrics.connections_active.dec();
        self.0.open.count.fetch_sub(1, Ordering::SeqCst);
        self.0.open.changed.notify_waiters();
    }
}
