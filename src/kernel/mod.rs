//! Bans enforced in the kernel: every ban and `[access] deny` entry is also
//! put in an nftables table the guard owns, so a banned prefix's new
//! connections are refused before they reach the process (`[bans.kernel]`).
//!
//! User space stays the authority: the admission tables decide, and the
//! kernel copies them. Whatever changes them (a ban, an unban, a reload)
//! sends a notice on a bounded queue ([`KernelBans::changed`]); one task
//! ([`worker`]) wakes on it, waits out the rest of a 100 ms batch window,
//! reads the bans themselves, works out what the sets should hold
//! ([`sync`], without I/O) and applies the difference as one nftables
//! transaction ([`ruleset`], [`nft`]). So a ban storm costs one `nft` run
//! per window, and a full queue loses nothing: a notice carries no ban,
//! it only says "look again".
//!
//! If nftables cannot be used (no `nft`, no CAP_NET_ADMIN), the guard says
//! so once at start and goes on in user space alone.

pub mod nft;
pub mod ruleset;
pub mod sync;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// Notices that may wait for the worker. Past that they are dropped: the
/// worker already has one to wake on, and reads every ban when it does.
const QUEUE: usize = 1024;

/// How long the stop waits for the worker to delete the table.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What the worker is told.
#[derive(Debug)]
pub enum Msg {
    /// Bans, denies, trusted proxies or the mode may have changed.
    Changed,
    /// Delete the table and end; answer when done.
    Stop(oneshot::Sender<()>),
}

/// The guard's side of the kernel bans: the queue to the worker.
pub struct KernelBans {
    tx: mpsc::Sender<Msg>,
    /// Taken by the worker when it starts.
    rx: Mutex<Option<mpsc::Receiver<Msg>>>,
    /// True while the worker keeps the table.
    running: AtomicBool,
}

impl Default for KernelBans {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        KernelBans {
            tx,
            rx: Mutex::new(Some(rx)),
            running: AtomicBool::new(false),
        }
    }
}

impl KernelBans {
    /// Tells the worker to look again; never waits.
    pub fn changed(&self) {
        if self.is_running() {
            let _ = self.tx.try_send(Msg::Changed);
        }
    }

    /// Whether bans are in the kernel now.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// The worker's end of the queue, once.
    fn take_queue(&self) -> Option<mpsc::Receiver<Msg>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
    }

    /// Has the worker delete the table, and waits for it (at most
    /// [`STOP_WAIT`]). Nothing to do if the kernel bans never started.
    pub async fn stop(&self) {
        if !self.running.swap(false, Ordering::SeqCst) {
            return;
        }
        let (done, finished) = oneshot::channel();
        let told = tokio::time::timeout(STOP_WAIT, self.tx.send(Msg::Stop(done))).await;
        if matches!(told, Ok(Ok(()))) {
            let _ = tokio::time::timeout(STOP_WAIT, finished).await;
        }
    }
}
