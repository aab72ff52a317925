//! Reloading the config while the guard runs: validate the whole file,
//! then swap it in for new connections.
//!
//! The RTMPS certificate and key are part of the config: a reload re-reads
//! them, new TLS handshakes use the new ones, and established sessions keep
//! theirs. A certificate that does not load fails the reload like any
//! invalid value.

use std::sync::Arc;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_NAME};
use crate::guard::Guard;

/// Reads and validates the whole config file, then swaps it in. New
/// connections use it at once; live sessions keep the one they began with.
/// An invalid file changes nothing, and neither does one that would move,
/// add or remove the admin listener or remove (or add) its token, or
/// remove `[tls]`: those are fixed at start. The token file's contents may change: the API then
/// takes the new token and refuses the old.
pub fn reload(guard: &Guard) -> Result<(), ConfigError> {
    let loaded = match &guard.config_path {
        Some(path) => Config::load(path),
        None => Config::embedded_default(),
    };
    let old = guard.config();
    let new = match loaded.and_then(|new| {
        match admin_change(&old, &new).or_else(|| tls_change(&old, &new)) {
            None => Ok(new),
            Some((key, why)) => Err(ConfigError {
                source: guard
                    .config_path
                    .as_ref()
                    .map_or(DEFAULT_CONFIG_NAME.to_string(), |p| p.display().to_string()),
                line: None,
                key: Some(key.to_string()),
                why,
            }),
        }
    }) {
        Ok(c) => c,
        Err(e) => {
            guard.metrics.reloaded(false);
            tracing::error!(event = "config_reload_failed", error = %e, "config reload failed; the old config stays in force");
            return Err(e);
        }
    };
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
    guard
        .pools
        .sync(&new, &guard.remedies.load().drained_pairs(), &guard.metrics);
    guard.config.store(Arc::new(new));
    // Denies, trusted proxies and the mode are read from the new config.
    guard.kernel.changed();
    guard.metrics.reloaded(true);
    tracing::info!(event = "config_reloaded", "config reloaded");
    Ok(())
}

/// What is wrong with `new`'s `[admin]` table, if anything, next to the
/// running `old`'s: the key, and why the reload is refused. The running
/// config's listener and token requirement are always the ones the guard
/// started with, since every reload that would change them is refused.
fn admin_change(old: &Config, new: &Config) -> Option<(&'static str, String)> {
    const FIXED: &str = "the admin API's listen address, and whether it needs a token, \
                         are fixed at start: restart rtmp-guard to change them; \
                         the old config stays in force";
    let (key, what) = match (&old.admin, &new.admin) {
        (None, None) => return None,
        (None, Some(_)) => ("admin", "a reload cannot start the admin API".to_string()),
        (Some(_), None) => ("admin", "a reload cannot remove the admin API".to_string()),
        (Some(o), Some(n)) if o.listen != n.listen => (
            "admin.listen",
            format!(
                "a reload cannot move the admin API from {} to {}",
                o.listen, n.listen
            ),
        ),
        (Some(o), Some(n)) => match (o.token.is_some(), n.token.is_some()) {
            (true, false) => (
                "admin.token_file",
                "a reload cannot remove the admin API's token (token_file)".to_string(),
            ),
            (false, true) => (
                "admin.token_file",
                "a reload cannot add a token to an admin API that started without one".to_string(),
            ),
            _ => return None,
        },
    };
    Some((key, format!("{what}; {FIXED}")))
}

/// Why `new` cannot replace `old` for the RTMPS listeners: they serve with
/// the certificate of the config current at accept, so a reload may change
/// the certificate and key but not remove `[tls]` while they run.
fn tls_change(old: &Config, new: &Config) -> Option<(&'static str, String)> {
    match (&old.tls, &new.tls) {
        (Some(_), None) => Some((
            "tls",
            "a reload cannot remove [tls] while its listeners run: restart rtmp-guard \
             to stop serving RTMPS; the old config stays in force"
                .to_string(),
        )),
        _ => None,
    }
}

/// Settings a running guard cannot change: its sockets and files.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("server.listen");
    }
    if old.tls.as_ref().map(|t| &t.listen) != new.tls.as_ref().map(|t| &t.listen) {
        changed.push("tls.listen");
    }
    if old.metrics.listen != new.metrics.listen {
        changed.push("metrics.listen");
    }
    if old.state.as_ref().map(|s| &s.path) != new.state.as_ref().map(|s| &s.path) {
        changed.push("state.path");
    }
    if old.audit.as_ref().map(|a| &a.path) != new.audit.as_ref().map(|a| &a.path) {
        changed.push("audit.path");
    }
    if old.bans.kernel != new.bans.kernel {
        changed.push("bans.kernel");
    }
    if format!("{:?}", old.fleet) != format!("{:?}", new.fleet) {
        changed.push("fleet");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose `[admin]` table is `admin` (absent if empty), with
    /// its token file in `dir`.
    fn config(dir: &std::path::Path, admin: &str) -> Config {
        std::fs::write(dir.join("admin.token"), "a-token-of-16-bytes-or-more\n").unwrap();
        let text = format!("[metrics]\nlisten = \"127.0.0.1:0\"\n{admin}");
        Config::parse(&text, &dir.join("t.toml").display().to_string()).unwrap()
    }

    #[test]
    fn the_admin_listener_and_its_token_requirement_cannot_change_by_reload() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let with_token = "[admin]\nlisten = \"127.0.0.1:9936\"\ntoken_file = \"admin.token\"\n";
        let open = "[admin]\nlisten = \"127.0.0.1:9936\"\n";
        let moved = "[admin]\nlisten = \"127.0.0.1:9937\"\ntoken_file = \"admin.token\"\n";
        let cases = [
            (
                with_token,
                open,
                "admin.token_file",
                "cannot remove the admin API's token",
            ),
            (open, with_token, "admin.token_file", "cannot add a token"),
            (
                with_token,
                moved,
                "admin.listen",
                "from 127.0.0.1:9936 to 127.0.0.1:9937",
            ),
            (with_token, "", "admin", "cannot remove the admin API"),
            ("", open, "admin", "cannot start the admin API"),
        ];
        for (old, new, key, why) in cases {
            let (k, w) = admin_change(&config(d, old), &config(d, new))
                .unwrap_or_else(|| panic!("{old:?} -> {new:?} accepted"));
            assert_eq!(k, key);
            assert!(w.contains(why) && w.contains("fixed at start"), "{w}");
        }
        for same in ["", open, with_token] {
            assert_eq!(admin_change(&config(d, same), &config(d, same)), None);
        }
    }
}
