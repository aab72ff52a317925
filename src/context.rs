//! What a session carries from stage to stage (pingora's per-request
//! `CTX`): the shared guard, the config the session began with, who the
//! client is, and when it arrived. Every stage reads the same one, so a
//! reload mid-session changes nothing about how the session is judged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::audit::Unwritten;
use crate::config::Config;
use crate::connection::ClientAddr;
use crate::guard::Guard;
use crate::report;
use crate::verdict::Block;

pub struct Ctx {
    pub guard: Arc<Guard>,
    /// The config the session began with, for everything it does.
    pub config: Arc<Config>,
    /// The client: the TCP peer, or the one a trusted PROXY header named.
    pub client: ClientAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The listener it came in on: plain RTMP or RTMPS.
    pub transport: crate::transport::Kind,
    pub accepted: Instant,
    /// Audit lines of this session's refusals that found the audit queue
    /// full; [`Ctx::write_audit`] awaits room for them before the socket
    /// closes.
    pub unwritten: std::sync::Mutex<Vec<Unwritten>>,
}

impl Ctx {
    /// A deadline `after` the connection was accepted.
    pub fn deadline(&self, after: Duration) -> Instant {
        self.accepted + after
    }

    /// Reports a refusal; false if dry run lets it through. Never waits:
    /// the relay calls this while judging each message. If the audit queue
    /// is full, the line is kept for [`Ctx::write_audit`]. (An enforced
    /// refusal ends the session, so a session keeps at most a line or two.)
    pub fn refuse(&self, block: &Block) -> bool {
        let refused = report::refuse_now(&self.guard, &self.config, self.client, block);
        if let Some(line) = refused.audit {
            self.unwritten
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line);
        }
        refused.enforce
    }

    /// Writes the audit lines [`Ctx::refuse`] kept, awaiting room in the
    /// audit queue: the session's task waits, never a worker thread.
    pub async fn write_audit(&self) {
        let lines = std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|p| p.into_inner()));
        for line in lines {
            self.guard.audit.write(line).await;
        }
    }
}

/// How a stage ends a connection before the relay.
#[derive(Debug)]
pub enum Stop {
    /// Refused by the guard; not yet reported.
    Blocked(Block),
    /// Refused and already reported.
    Refused,
    /// The client went away.
    Gone,
    /// No upstream server could be reached (already logged).
    Unreachable,
}

impl From<Block> for Stop {
    fn from(block: Block) -> Stop {
        Stop::Blocked(block)
    }
}

impl From<crate::connection::Gone> for Stop {
    fn from(_: crate::connection::Gone) -> Stop {
        Stop::Gone
    }
}
