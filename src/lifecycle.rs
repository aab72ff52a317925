//! Reloading the config while the guard runs: validate the whole file,
//! then swap it in for new connections.

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::guard::Guard;

/// Reads and validates the whole config file, then swaps it in. New
/// connections use it at once; live sessions keep the one they began with.
/// An invalid file changes nothing.
pub fn reload(guard: &Guard) -> Result<(), ConfigError> {
    let loaded = match &guard.config_path {
        Some(path) => Config::load(path),
        None => Config::embedded_default(),
    };
    let new = match loaded {
        Ok(c) => c,
        Err(e) => {
            guard.metrics.reloaded(false);
            tracing::error!(event = "config_reload_failed", error = %e, "config reload failed; the old config stays in force");
            return Err(e);
        }
    };
    let old = guard.config();
    for what in restart_only_changes(&old, &new) {
        tracing::warn!(
            event = "config_needs_restart",
            key = what,
            "changed, but takes effect only at restart"
        );
    }
    guard.admission.reconfigure(&new);
    resize(
        guard,
        old.server.max_connections,
        new.server.max_connections,
    );
    for app in &new.apps {
        guard.metrics.ensure_app(&app.name);
    }
    guard.config.store(Arc::new(new));
    guard.metrics.reloaded(true);
    tracing::info!(event = "config_reloaded", "config reloaded");
    Ok(())
}

/// Settings a running guard cannot change: its sockets and files.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("server.listen");
    }
    if old.metrics.listen != new.metrics.listen {
        changed.push("metrics.listen");
    }
    if old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
        changed.push("admin.listen");
    }
    if old.state.as_ref().map(|s| &s.path) != new.state.as_ref().map(|s| &s.path) {
        changed.push("state.path");
    }
    if old.audit.as_ref().map(|a| &a.path) != new.audit.as_ref().map(|a| &a.path) {
        changed.push("audit.path");
    }
    changed
}

/// Grows or shrinks the connection permits to a new `max_connections`.
fn resize(guard: &Guard, old: usize, new: usize) {
    if new > old {
        guard.connections.add_permits(new - old);
    } else if old > new {
        // Only free permits can be forgotten at once; with more connections
        // open than the new limit, the rest are taken as those close.
        let left = (old - new).saturating_sub(guard.connections.forget_permits(old - new));
        if left > 0 {
            let permits = guard.connections.clone();
            let n = u32::try_from(left).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(n).await {
                    p.forget();
                }
            });
        }
    }
}
