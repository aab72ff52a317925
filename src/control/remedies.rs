//! The remedies service: the operator's bans, blocks and suspensions,
//! carried out. Each change is written to the state file before it takes
//! effect, then applied to admission, the stream policy and the live
//! sessions it concerns. The admin API and the guard's start both come
//! here; neither does any of it itself.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::changes::{self, Applied, Change, Remedy, RemedyKey, Stamp};
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
    change_if(guard, |r| (f(r), true)).await
}

/// Applies `f` to a copy of the remedies; if it says something changed,
/// persists the result and puts it in force. Nothing changes if the state
/// file cannot be written.
async fn change_if<T>(
    guard: &Guard,
    f: impl FnOnce(&mut Remedies) -> (T, bool),
) -> Result<T, RemedyError> {
    let _one_writer = guard.remedies_write.lock().await;
    let mut next = Remedies::clone(&guard.remedies.load());
    let (out, changed) = f(&mut next);
    if !changed {
        return Ok(out);
    }
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

/// Milliseconds since the Unix epoch.
fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This guard's stamp for a change made now; `None` outside a fleet.
fn fleet_stamp(guard: &Guard) -> Option<Stamp> {
    guard.fleet.as_ref().map(|f| Stamp {
        at_ms: unix_now_ms(),
        guard: f.name.clone(),
    })
}

/// Puts changes in force here, last writer winning (one state-file write
/// for all of them), and ends the live sessions each new remedy covers; a
/// lifted ban lifts the automatic ban on the same prefix too. For the
/// operator's changes in fleet mode and for every change from the fleet.
/// Returns what each change did, and how many sessions ended.
pub async fn apply_changes(
    guard: &Guard,
    list: &[Change],
) -> Result<(Vec<Applied>, usize), RemedyError> {
    let applied = change_if(guard, |r| {
        let applied: Vec<Applied> = list.iter().map(|c| r.apply(c)).collect();
        let changed = applied.iter().any(|a| *a != Applied::Stale);
        (applied, changed)
    })
    .await?;
    let mut ended = 0;
    for (change, applied) in list.iter().zip(&applied) {
        ended += end_covered(guard, change, applied);
    }
    Ok((applied, ended))
}

/// Ends the live sessions a change just put in force covers.
fn end_covered(guard: &Guard, change: &Change, applied: &Applied) -> usize {
    let remedy = match applied {
        Applied::Set(remedy) => remedy,
        Applied::Lifted(RemedyKey::Ban { cidr }) => {
            guard.admission.unban(cidr);
            return 0;
        }
        _ => return 0,
    };
    let (reason, why) = match remedy {
        Remedy::Ban(_) => (Reason::Banned, "address banned by the operator"),
        Remedy::Block(_) => (Reason::ContentBlocked, "blocked content"),
        Remedy::Suspension(_) if !change.terminate => return 0,
        Remedy::Suspension(_) => (Reason::AppSuspended, "application suspended"),
    };
    let now = unix_now();
    kick_all(
        guard,
        |s| {
            let names: Vec<String> = s.streams().into_iter().map(|(_, n)| n).collect();
            changes::ends(remedy, s.client.ip(), &s.app, &names, now)
        },
        reason,
        why,
    )
}

/// Puts an operator's change in force here and shares it with the fleet.
/// Returns how many live sessions it ended here.
async fn share(guard: &Guard, change: Change) -> Result<usize, RemedyError> {
    let (_, ended) = apply_changes(guard, std::slice::from_ref(&change)).await?;
    if let Some(fleet) = &guard.fleet {
        if !fleet.publish(change).await {
            tracing::warn!(
                event = "fleet_change_pending",
                "the fleet's Redis did not take the change; it is in force here and is shared when Redis is back"
            );
        }
    }
    Ok(ended)
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
        stamp: None,
    };
    // A ban broader than /8 or /32 (forced through the API) stays on this
    // guard: the others would refuse it from Redis.
    if let Some(stamp) = fleet_stamp(guard).filter(|_| !changes::too_broad(&ban.cidr)) {
        let change = Change {
            key: RemedyKey::Ban { cidr: ban.cidr },
            stamp,
            remedy: Some(Remedy::Ban(ban)),
            until: None,
            terminate: false,
        };
        return share(guard, change).await;
    }
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
    if let Some(stamp) = fleet_stamp(guard) {
        return fleet_unban(guard, cidr, stamp).await;
    }
    let automatic = guard.admission.unban(&cidr);
    let manual = change(guard, |r| r.remove_ban(&cidr)).await?;
    Ok(automatic || manual)
}

/// Lifts a ban across the fleet. The tombstone lasts as long as the
/// longer of the lifted bans (operator's and automatic) would have.
async fn fleet_unban(guard: &Guard, cidr: IpNet, stamp: Stamp) -> Result<bool, RemedyError> {
    let now = unix_now();
    let key = RemedyKey::Ban { cidr };
    let manual = guard.remedies.load().entry(&key).map(|(r, _)| r);
    let instant = std::time::Instant::now();
    let automatic = guard
        .admission
        .bans()
        .list()
        .into_iter()
        .find(|(p, b)| *p == cidr && b.until > instant)
        .map(|(_, b)| now.saturating_add(b.until.duration_since(instant).as_secs() + 1));
    guard.admission.unban(&cidr);
    let mut ends: Vec<Option<u64>> = Vec::new();
    if let Some(Remedy::Ban(b)) = &manual {
        ends.push(b.until);
    }
    ends.extend(automatic.map(Some));
    if ends.is_empty() {
        return Ok(false);
    }
    let mut change = Change::lift(key, stamp, manual.as_ref(), now);
    change.until = if ends.contains(&None) {
        None
    } else {
        ends.into_iter().flatten().max()
    };
    share(guard, change).await?;
    Ok(true)
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
        stamp: None,
    };
    if let Some(stamp) = fleet_stamp(guard) {
        let change = Change {
            key: RemedyKey::Block {
                app: app.to_string(),
                stream: stream.to_string(),
            },
            stamp,
            remedy: Some(Remedy::Block(block)),
            until: None,
            terminate: false,
        };
        return share(guard, change).await;
    }
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
    let key = RemedyKey::Block {
        app: app.to_string(),
        stream: stream.to_string(),
    };
    lift(guard, key, |r| r.remove_block(app, stream)).await
}

/// Lifts the remedy `key`: across the fleet in fleet mode, else here with
/// `local`. False if this guard knew no such remedy.
async fn lift(
    guard: &Guard,
    key: RemedyKey,
    local: impl FnOnce(&mut Remedies) -> bool,
) -> Result<bool, RemedyError> {
    let Some(stamp) = fleet_stamp(guard) else {
        return change(guard, local).await;
    };
    let Some((current, _)) = guard.remedies.load().entry(&key) else {
        return Ok(false);
    };
    share(guard, Change::lift(key, stamp, Some(&current), unix_now())).await?;
    Ok(true)
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
        stamp: None,
    };
    if let Some(stamp) = fleet_stamp(guard) {
        let change = Change {
            key: RemedyKey::Suspension {
                app: app.to_string(),
            },
            stamp,
            remedy: Some(Remedy::Suspension(suspension)),
            until: None,
            terminate,
        };
        return share(guard, change).await;
    }
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
    let key = RemedyKey::Suspension {
        app: app.to_string(),
    };
    lift(guard, key, |r| r.resume(app)).await
}

/// Ends one session; false if no session has that id.
pub fn kick(guard: &Guard, id: u64, why: &str) -> bool {
    match guard.sessions.get(id) {
        Some(s) => {
            let kick = Kick {
                reason: Reason::Kicked,
                description: why.to_string(),
            };
            guard.sessions.kick(&s, kick);
            true
        }
        None => false,
    }
}

/// Drops operator bans that have ended, and tombstones past their time
/// (from housekeeping).
pub async fn expire_bans(guard: &Guard) {
    let now = unix_now();
    let current = guard.remedies.load();
    let expired = current.bans.iter().any(|b| !b.active(now))
        || current
            .tombstones
            .iter()
            .any(|t| t.until.is_some_and(|u| u <= now));
    if expired {
        let _ = change(guard, |r| r.expire(now) | r.expire_tombstones(now)).await;
    }
}
