//! What the rest of the guard sees of the fleet task: a way to hand it
//! changes to share, whether Redis is reachable, and what the other guards
//! last said of themselves. Nothing here talks to Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::control::changes::Change;
use crate::verdict::Reason;

/// How long the admin API waits for a change to reach Redis before it
/// answers anyway (the change is in force locally and is shared at the
/// next re-sync).
pub const PUBLISH_WAIT: Duration = Duration::from_secs(2);

/// Room for changes on their way to Redis. Automatic bans beyond it are
/// dropped here and shared at the next re-sync.
pub const QUEUE: usize = 4096;

/// A guard's heartbeat, as kept in Redis with the lease TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardInfo {
    pub name: String,
    /// Unix milliseconds of the heartbeat.
    pub at_ms: u64,
    /// Sessions relaying through it.
    pub sessions: u64,
    /// Per app: [publishers, viewers].
    pub counts: std::collections::BTreeMap<String, (u32, u32)>,
    /// (app, stream) names published through it.
    pub publishing: Vec<(String, String)>,
}

/// A live session of some guard of the fleet, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSession {
    /// `GUARD:ID`.
    pub id: String,
    pub guard: String,
    pub client: String,
    pub app: String,
    pub stream: Option<String>,
    pub role: Option<String>,
    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    pub started: u64,
}

/// What the fleet task is asked to do.
#[derive(Debug)]
pub enum Outgoing {
    /// Share a remedy change; answered with whether it reached Redis.
    Change(Change, Option<oneshot::Sender<bool>>),
    /// Share an automatic ban.
    AutoBan {
        prefix: IpNet,
        reason: Reason,
        ttl: Duration,
    },
    /// Ask every guard for its sessions.
    ListSessions(oneshot::Sender<Option<Vec<FleetSession>>>),
    /// Ask `guard` to end its session `id`: `Some(found)`, or `None` if no
    /// answer came.
    Kick {
        guard: String,
        id: u64,
        reason: String,
        reply: oneshot::Sender<Option<bool>>,
    },
}

/// The guard's side of the fleet task.
#[derive(Debug)]
pub struct FleetHandle {
    /// This guard's name in the fleet.
    pub name: String,
    tx: mpsc::Sender<Outgoing>,
    up: AtomicBool,
    /// The other guards alive at the last heartbeat.
    peers: Mutex<Vec<GuardInfo>>,
}

impl FleetHandle {
    /// A handle, and the receiving end the fleet task reads.
    pub fn new(name: &str) -> (FleetHandle, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            FleetHandle {
                name: name.to_string(),
                tx,
                up: AtomicBool::new(false),
                peers: Mutex::new(Vec::new()),
            },
            rx,
        )
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    pub fn peers(&self) -> Vec<GuardInfo> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_peers(&self, peers: Vec<GuardInfo>) {
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// Shares a change; true once it is in Redis, false if Redis did not
    /// take it within [`PUBLISH_WAIT`] (it is then shared at re-sync).
    pub async fn publish(&self, change: Change) -> bool {
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.send(Outgoing::Change(change, Some(reply)));
        let waited = tokio::time::timeout(PUBLISH_WAIT, async {
            sent.await.ok()?;
            answer.await.ok()
        });
        matches!(waited.await, Ok(Some(true)))
    }

    /// Shares an automatic ban, without waiting.
    pub fn auto_ban(&self, prefix: IpNet, reason: Reason, ttl: Duration) {
        let _ = self.tx.try_send(Outgoing::AutoBan {
            prefix,
            reason,
            ttl,
        });
    }

    /// Every session of the fleet; `None` if Redis is unreachable.
    pub async fn sessions(&self) -> Option<Vec<FleetSession>> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Outgoing::ListSessions(reply)).await.ok()?;
        tokio::time::timeout(PUBLISH_WAIT, answer)
            .await
            .ok()?
            .ok()?
    }

    /// Asks `guard` to end its session `id`.
    pub async fn kick(&self, guard: &str, id: u64, reason: &str) -> Option<bool> {
        let (reply, answer) = oneshot::channel();
        let ask = Outgoing::Kick {
            guard: guard.to_string(),
            id,
            reason: reason.to_string(),
            reply,
        };
        self.tx.send(ask).await.ok()?;
        tokio::time::timeout(PUBLISH_WAIT, answer)
            .await
            .ok()?
            .ok()?
    }
}
