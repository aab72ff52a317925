//! The remedies service: the operator's bans, blocks and suspensions,
//! carried out. Each change is written to the state file before it takes
//! effect, then applied to admission, the stream policy and the live
//! sessions it concerns. The admin API and the guard's start both come
//! here; neither does any of it itself.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::sessions::{Kick, Session};
use super::state::{self, Loaded};
use super::{unix_now, ContentBlock, ManualBan, Remedies, Suspension};
use crate::guard::Guard;
use crate::verdict::Reason;

/// Why a remedy was not applied.
#[derive(Debug, thiserror::Error)]
pub enum RemedyError {
    #[error("cannot write the state file: {0}")]
    StateWrite(#[from] std::io::Error),
    /// The blocking write task itself failed.
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Makes `remedies` the ones in force.
pub fn install(guard: &Guard, remedies: Remedies) {
    guard.admission.set_manual_bans(remedies.bans.clone());
    guard.streams.set_blocks(remedies.blocks.clone());
    guard.set_drained(&remedies.drained_pairs());
    guard.remedies.store(Arc::new(remedies));
    guard.publish_gauges();
    guard.kernel.changed();
}

/// Restores the remedies from `[state] path`. A corrupt file is moved
/// aside and the guard starts without it; config-file rules still apply.
pub fn load_state(guard: &Guard) {
    let Some(st) = guard.config().state.clone() else {
        return;
    };
    match state::load(&st.path) {
        Loaded::Read(remedies) => {
            tracing::info!(
                event = "state_loaded",
                path = %st.path.display(),
                bans = remedies.bans.len(),
                blocks = remedies.blocks.len(),
                suspensions = remedies.suspensions.len(),
                "state restored"
            );
            install(guard, remedies);
        }
        Loaded::Missing => {}
        Loaded::Quarantined { why, moved_to } => {
            guard.metrics.state_file_quarantined_total.inc();
            let moved = moved_to.map_or("(could not move it)".to_string(), |p| {
                p.display().to_string()
            });
            tracing::error!(
                event = "state_quarantined",
                path = %st.path.display(),
                moved_to = %moved,
                error = %why,
                "STATE FILE UNUSABLE: moved aside; starting without runtime bans, blocks and suspensions"
            );
        }
    }
}

/// Applies `f` to a copy of the remedies, persists the result, then puts
/// it in force. Nothing changes if the state file cannot be written.
pub async fn change<T>(
    guard: &Guard,
    f: impl FnOnce(&mut Remedies) -> T,
) -> Result<T, RemedyError> {
    let _one_writer = guard.remedies_write.lock().await;
    let mut next = Remedies::clone(&guard.remedies.load());
    let out = f(&mut next);
    if let Some(st) = guard.config().state.clone() {
        let snapshot = next.clone();
        let saved = tokio::task::spawn_blocking(move || state::save(&st.path, &snapshot)).await;
        if let Err(why) = saved.map_err(RemedyError::from).and_then(|r| Ok(r?)) {
            guard.metrics.state_file_write_errors_total.inc();
            tracing::error!(event = "state_write_failed", error = %why, "remedy not applied");
            return Err(why);
        }
    }
    install(guard, next);
    Ok(out)
}

fn kick_all(guard: &Guard, which: impl Fn(&Session) -> bool, reason: Reason, why: &str) -> usize {
    let kick = Kick {
        reason,
        description: why.to_string(),
    };
    guard.sessions.kick_where(which, &kick)
}

/// Bans `cidr` for `duration` (`None`: until lifted) and ends its live
/// sessions. Returns how many were ended.
pub async fn ban(
    guard: &Guard,
    cidr: IpNet,
    duration: Option<Duration>,
    reason: &str,
) -> Result<usize, RemedyError> {
    let now = unix_now();
    let ban = ManualBan {
        cidr: cidr.trunc(),
        until: duration.map(|d| now.saturating_add(d.as_secs().max(1))),
        reason: reason.to_string(),
        created: now,
    };
    change(guard, |r| r.add_ban(ban)).await?;
    Ok(kick_all(
        guard,
        |s| cidr.contains(&s.client.ip()),
        Reason::Banned,
        "address banned by the operator",
    ))
}

/// Lifts a ban on exactly `cidr`, made by the operator or automatically.
/// False if there was none.
pub async fn unban(guard: &Guard, cidr: IpNet) -> Result<bool, RemedyError> {
    let cidr = cidr.trunc();
    let automatic = guard.admission.unban(&cidr);
    let manual = change(guard, |r| r.remove_ban(&cidr)).await?;
    Ok(automatic || manual)
}

/// Takes `server` of `upstream` out of rotation (`drain` true) or puts
/// it back. Live sessions stay. `Ok(None)`: no such configured server;
/// `Ok(Some(changed))` otherwise.
pub async fn drain(
    guard: &Guard,
    upstream: &str,
    server: &str,
    drain: bool,
) -> Result<Option<bool>, RemedyError> {
    let known = guard
        .config()
        .upstream(upstream)
        .is_some_and(|u| u.servers.iter().any(|s| s == server));
    if !known {
        return Ok(None);
    }
    let now = unix_now();
    change(guard, |r| {
        if drain {
            r.drain(upstream, server, now)
        } else {
            r.undrain(upstream, server)
        }
    })
    .await
    .map(Some)
}

/// Blocks streams matching `stream` in `app`, ending the live sessions
/// that publish or play one.
pub async fn block(
    guard: &Guard,
    app: &str,
    stream: &str,
    reason: &str,
) -> Result<usize, RemedyError> {
    let block = ContentBlock {
        app: app.to_string(),
        stream: stream.to_string(),
        reason: reason.to_string(),
        created: unix_now(),
    };
    let live = block.clone();
    change(guard, |r| r.add_block(block)).await?;
    Ok(kick_all(
        guard,
        |s| s.streams().iter().any(|(_, n)| live.matches(&s.app, n)),
        Reason::ContentBlocked,
        "blocked content",
    ))
}

pub async fn unblock(guard: &Guard, app: &str, stream: &str) -> Result<bool, RemedyError> {
    change(guard, |r| r.remove_block(app, stream)).await
}

/// Suspends `app`; with `terminate`, ends its live sessions too.
pub async fn suspend(
    guard: &Guard,
    app: &str,
    reason: &str,
    terminate: bool,
) -> Result<usize, RemedyError> {
    let suspension = Suspension {
        app: app.to_string(),
        reason: reason.to_string(),
        created: unix_now(),
    };
    change(guard, |r| r.suspend(suspension)).await?;
    if !terminate {
        return Ok(0);
    }
    Ok(kick_all(
        guard,
        |s| s.app == app,
        Reason::AppSuspended,
        "application suspended",
    ))
}

pub async fn resume(guard: &Guard, app: &str) -> Result<bool, RemedyError> {
    change(guard, |r| r.resume(app)).await
}

/// Ends one session; false if no session has that id.
pub fn kick(guard: &Guard, id: u64, why: &str) -> bool {
    match guard.sessions.get(id) {
        Some(s) => {
            s.kick(Kick {
                reason: Reason::Kicked,
                description: why.to_string(),
            });
            true
        }
        None => false,
    }
}

/// Drops operator bans that have ended (from housekeeping).
pub async fn expire_bans(guard: &Guard) {
    let now = unix_now();
    let expired = guard.remedies.load().bans.iter().any(|b| !b.active(now));
    if expired {
        let _ = change(guard, |r| r.expire(now)).await;
    }
}
