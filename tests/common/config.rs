//! The one builder for the guard configs tests and benches run on, as TOML
//! text, and the chunk limits they parse with.
//!
//! ```ignore
//! GuardConfig::new()
//!     .server("idle_timeout = \"1s\"")
//!     .tables("[access]\ndeny = [\"192.0.2.0/24\"]")
//!     .origin(origin)
//!     .origin_proxy_protocol("v2")
//!     .live()
//!     .build()
//! ```
//!
//! The text is `[server]`, `[metrics]`, the other tables in the order they
//! were added, the upstream `origin`, then the apps, all routed to `origin`.
//!
//! The upstream's active health checks are off unless a test sets
//! `health_check_interval` ([`GuardConfig::origin_tls`]): tests count the
//! connections their origins accept, and a check is one.

use std::fmt::Display;
use std::path::Path;

use rtmp_guard::config::Limits;
use rtmp_guard::rtmp::chunk::ChunkLimits;

/// The chunk limits a test client or bench parses the guard's output with:
/// the `[limits]` defaults.
pub fn chunk_limits() -> ChunkLimits {
    Limits::default().chunk_limits()
}

#[derive(Debug, Clone)]
pub struct GuardConfig {
    listen: String,
    server: String,
    metrics: String,
    tables: String,
    origin_servers: Vec<String>,
    origin: String,
    apps: String,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig::new()
    }
}

/// `text`, ending in a newline.
fn lines(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

impl GuardConfig {
    /// RTMP and metrics on ephemeral ports of 127.0.0.1, as a guard started
    /// in-process listens ([`super::procs::GuardProc`] sets both itself).
    pub fn new() -> GuardConfig {
        GuardConfig {
            listen: "127.0.0.1:0".into(),
            server: String::new(),
            metrics: "127.0.0.1:0".into(),
            tables: String::new(),
            origin_servers: Vec::new(),
            origin: String::new(),
            apps: String::new(),
        }
    }

    /// The one RTMP listen address.
    pub fn listen(mut self, addr: impl Display) -> Self {
        self.listen = addr.to_string();
        self
    }

    /// The metrics listen address.
    pub fn metrics(mut self, addr: impl Display) -> Self {
        self.metrics = addr.to_string();
        self
    }

    /// Lines for `[server]`, e.g. `mode = "dry_run"`.
    pub fn server(mut self, text: &str) -> Self {
        self.server.push_str(&lines(text));
        self
    }

    /// Whole tables, verbatim, e.g. `[bans]\nthreshold = 10`.
    pub fn tables(mut self, text: &str) -> Self {
        self.tables.push_str(&lines(text));
        self
    }

    /// The admin API on `listen`, with its token in `token_file`.
    pub fn admin(self, listen: impl Display, token_file: &Path) -> Self {
        let text = format!(
            "[admin]\nlisten = \"{listen}\"\ntoken_file = \"{}\"\n",
            token_file.display()
        );
        self.tables(&text)
    }

    /// The state file.
    pub fn state(self, path: &Path) -> Self {
        self.tables(&format!("[state]\npath = \"{}\"\n", path.display()))
    }

    /// The audit log.
    pub fn audit(self, path: &Path) -> Self {
        self.tables(&format!("[audit]\npath = \"{}\"\n", path.display()))
    }

    /// Adds `server` to the servers of the upstream `origin`, which every
    /// app is routed to.
    pub fn origin(mut self, server: impl Display) -> Self {
        self.origin_servers.push(server.to_string());
        self
    }

    /// The upstream's `connect_timeout`, e.g. `"1s"`.
    pub fn origin_connect_timeout(mut self, timeout: &str) -> Self {
        self.origin
            .push_str(&format!("connect_timeout = \"{timeout}\"\n"));
        self
    }

    /// The PROXY protocol version the guard sends the origin: `"v1"`/`"v2"`.
    pub fn origin_proxy_protocol(mut self, version: &str) -> Self {
        self.origin
            .push_str(&format!("proxy_protocol = \"{version}\"\n"));
        self
    }

    /// More lines for the upstream `origin`, verbatim (its TLS keys, its
    /// balance and health checks).
    pub fn origin_tls(mut self, text: &str) -> Self {
        self.origin.push_str(&lines(text));
        self
    }

    /// An app `name` on the upstream `origin`, with `text` (its other
    /// lines, e.g. `publish = "key"`).
    pub fn app(mut self, name: &str, text: &str) -> Self {
        self.apps.push_str(&format!(
            "[[app]]\nname = \"{name}\"\nupstream = \"origin\"\n{}",
            lines(text)
        ));
        self
    }

    /// The app `live`, open to every publisher.
    pub fn live(self) -> Self {
        self.app("live", "publish = \"none\"")
    }

    pub fn build(&self) -> String {
        let mut text = format!(
            "[server]\nlisten = [\"{}\"]\n{}[metrics]\nlisten = \"{}\"\n{}",
            self.listen, self.server, self.metrics, self.tables
        );
        if !self.origin_servers.is_empty() {
            let servers: Vec<String> = self
                .origin_servers
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect();
            let checks = if self.origin.contains("health_check_interval") {
                ""
            } else {
                "health_check_interval = \"0s\"\n"
            };
            text.push_str(&format!(
                "[[upstream]]\nname = \"origin\"\nservers = [{}]\n{checks}{}",
                servers.join(", "),
                self.origin
            ));
        }
        text.push_str(&self.apps);
        text
    }
}
