//! The guard's configuration: one TOML file, parsed strictly.
//!
//! The file is an interface operators write by hand, so every error must say
//! where it is: the file, the line, the key, and why. Unknown keys are errors
//! (a typo must never silently fall back to a default), and every value that
//! could make the guard unsafe is range-checked here, once, so the rest of
//! the code can trust it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// The default configuration, shipped as `config/rtmp-guard.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../config/rtmp-guard.toml");
/// The name the embedded default is reported under.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded config/rtmp-guard.toml>";

/// Deepest AMF nesting a config may allow; the AMF reader recurses.
pub const MAX_AMF_DEPTH_CAP: usize = 256;
/// Largest chunk size RTMP can express (the top bit is reserved).
pub const CHUNK_SIZE_CAP: u32 = 0x7FFF_FFFF;
/// Largest message length a chunk header can express (24 bits).
pub const MESSAGE_SIZE_CAP: u32 = 0xFF_FFFF;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub access: Access,
    #[serde(default)]
    pub bans: Bans,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocolIn,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<Upstream>,
    #[serde(default, rename = "app")]
    pub apps: Vec<App>,
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub state: Option<State>,
    #[serde(default)]
    pub audit: Option<Audit>,
}

/// `[admin]`: the admin API. Off when the table is absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// A file holding the bearer token; required unless `listen` is loopback.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// The token, read from `token_file` at load.
    #[serde(skip)]
    pub token: Option<Secret>,
}

/// `[state]`: where runtime bans, blocks and suspensions are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub path: std::path::PathBuf,
}

/// `[audit]`: the append-only audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    pub path: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    #[serde(deserialize_with = "socket_addrs")]
    pub listen: Vec<SocketAddr>,
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub mode: Mode,
    /// On SIGTERM: how long live sessions may go on before they are closed.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

/// Whether the guard enforces what it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse what the rules refuse.
    #[default]
    Enforce,
    /// Count and log what would be refused, refuse nothing that can be let
    /// through (see the config file).
    DryRun,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 1935))],
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            mode: Mode::Enforce,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_chunk_size: u32,
    pub max_command_size: u32,
    pub max_message_size: u32,
    pub max_chunk_streams: usize,
    pub max_amf_depth: usize,
    pub per_ip: PerIp,
    pub global: Global,
    pub session: SessionLimits,
}

/// `[limits.per_ip]`: limits per client prefix.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerIp {
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub connections_per_second: u32,
    pub burst: u32,
    pub max_concurrent: u32,
    pub max_tracked: usize,
}

impl Default for PerIp {
    fn default() -> Self {
        PerIp {
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            connections_per_second: 5,
            burst: 20,
            max_concurrent: 50,
            max_tracked: 100_000,
        }
    }
}

/// `[limits.global]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Global {
    pub max_pending: usize,
}

impl Default for Global {
    fn default() -> Self {
        Global { max_pending: 1000 }
    }
}

/// `[limits.session]`: limits on one client's commands.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionLimits {
    pub commands_per_second: u32,
    pub commands_burst: u32,
    pub max_streams: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            commands_per_second: 20,
            commands_burst: 60,
            max_streams: 8,
        }
    }
}

/// `[access]`: address rules applied at accept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    #[serde(deserialize_with = "cidrs")]
    pub deny: Vec<IpNet>,
    #[serde(deserialize_with = "cidrs")]
    pub allow: Vec<IpNet>,
}

/// `[bans]`: learning bans.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bans {
    pub auto: bool,
    pub threshold: u32,
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    /// Score per block reason; reasons not listed use the defaults.
    pub scores: BTreeMap<String, u32>,
}

impl Default for Bans {
    fn default() -> Self {
        Bans {
            auto: true,
            threshold: 10,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(600),
            scores: BTreeMap::new(),
        }
    }
}

/// `[proxy_protocol]`: peers whose PROXY header is required and believed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocolIn {
    #[serde(deserialize_with = "cidrs")]
    pub trusted: Vec<IpNet>,
}

/// PROXY protocol towards an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolOut {
    #[default]
    Off,
    V1,
    V2,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_chunk_size: 65_536,
            max_command_size: 65_536,
            max_message_size: MESSAGE_SIZE_CAP,
            max_chunk_streams: 64,
            max_amf_depth: 32,
            per_ip: PerIp::default(),
            global: Global::default(),
            session: SessionLimits::default(),
        }
    }
}

impl Limits {
    /// The chunk parser's share of these limits.
    pub fn chunk_limits(&self) -> crate::rtmp::chunk::ChunkLimits {
        crate::rtmp::chunk::ChunkLimits {
            max_chunk_size: self.max_chunk_size,
            max_command_size: self.max_command_size,
            max_message_size: self.max_message_size,
            max_chunk_streams: self.max_chunk_streams,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: SocketAddr::from(([127, 0, 0, 1], 9935)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<String>,
    #[serde(
        default = "default_upstream_connect_timeout",
        deserialize_with = "duration"
    )]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocolOut,
}

fn default_upstream_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub name: String,
    pub upstream: String,
    /// Who may publish: none | key | token | deny. Default: deny.
    #[serde(default = "default_publish")]
    pub publish: AuthMode,
    /// Who may play: none | key | token | deny. Default: none.
    #[serde(default)]
    pub play: AuthMode,
    /// Stream keys by stream name, for `key` mode.
    #[serde(default)]
    pub keys: BTreeMap<String, Secret>,
    /// A file of `stream = key` lines, merged into `keys` at load.
    #[serde(default)]
    pub keys_file: Option<std::path::PathBuf>,
    /// The HMAC secret for `token` mode, read from this file at load.
    #[serde(default)]
    pub token_secret_file: Option<std::path::PathBuf>,
    /// The secret itself, filled from `token_secret_file` at load.
    #[serde(skip)]
    pub token_secret: Option<Secret>,
    #[serde(default, deserialize_with = "cidrs")]
    pub publish_allow: Vec<IpNet>,
    #[serde(default, deserialize_with = "cidrs")]
    pub publish_deny: Vec<IpNet>,
    #[serde(default, deserialize_with = "cidrs")]
    pub play_allow: Vec<IpNet>,
    #[serde(default, deserialize_with = "cidrs")]
    pub play_deny: Vec<IpNet>,
    /// pageUrl/swfUrl globs a player must match; empty: no check.
    #[serde(default)]
    pub referrers: Vec<String>,
    /// Concurrent publishing sessions in this app. Default: 100.
    #[serde(default = "default_max_publishers")]
    pub max_publishers: u32,
    /// Concurrent playing sessions in this app. Default: 5000.
    #[serde(default = "default_max_viewers")]
    pub max_viewers: u32,
    /// Globs on the stream name whose publish and play are refused.
    #[serde(default)]
    pub blocked_streams: Vec<String>,
    /// Bits per second a publishing session may send, like "20Mbit".
    #[serde(default, deserialize_with = "bitrate")]
    pub max_publish_bitrate: Option<u64>,
    /// The auth service for `http` mode.
    #[serde(default)]
    pub http_auth: Option<HttpAuth>,
}

/// An nginx-rtmp compatible auth callback.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuth {
    /// `http://host:port/path`, sent a form POST per publish or play.
    pub url: String,
    /// How long to wait for an answer. Default: "2s".
    #[serde(default = "default_http_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// How long an answer is reused for the same request. Default: "30s".
    #[serde(default = "default_http_cache", deserialize_with = "duration")]
    pub cache: Duration,
    /// What a timeout or an unreachable service means. Default: deny.
    #[serde(default)]
    pub on_error: OnError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    Allow,
    #[default]
    Deny,
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_http_cache() -> Duration {
    Duration::from_secs(30)
}

fn bitrate<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(de)?;
    parse_bitrate(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// "20Mbit", "500kbit", "1.5Gbit" or a plain number of bits per second.
pub fn parse_bitrate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let (number, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(unit, scale)| {
            lower
                .strip_suffix(unit)
                .map(|n| (n.trim().to_string(), *scale))
        })
        .unwrap_or((lower.clone(), 1.0));
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok((n * scale) as u64),
        _ => Err(format!(
            "invalid bitrate {t:?}; use a unit, like \"20Mbit\" or \"500kbit\""
        )),
    }
}

/// How a publish or play is authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone (still subject to address rules, blocks and quotas).
    #[default]
    None,
    /// `name?key=SECRET` must match the stream's key.
    Key,
    /// `name?expires=UNIX&token=HEX[&ip=ADDR]`, an HMAC-SHA256 signature.
    Token,
    /// Ask `http_auth`, as nginx-rtmp's on_publish / on_play do.
    Http,
    /// Nobody.
    Deny,
}

fn default_publish() -> AuthMode {
    AuthMode::Deny
}

fn default_max_publishers() -> u32 {
    100
}

fn default_max_viewers() -> u32 {
    5000
}

/// A secret from the config: never shown by `Debug`, so it cannot reach a
/// log by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl Config {
    /// Parses and validates a config; `source` names it in error messages.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner();
            let line = inner.span().map(|s| line_of(text, s.start));
            ConfigError {
                source: source.to_string(),
                line,
                key: key_or_none(key),
                why: inner.message().trim().to_string(),
            }
        })?;
        let mut config = config;
        let base = Path::new(source).parent().map(Path::to_path_buf);
        config
            .validate()
            .and_then(|()| config.load_app_files(base.as_deref()))
            .and_then(|()| config.load_ops_files(base.as_deref()))
            .map_err(|invalid| ConfigError {
                source: source.to_string(),
                line: locate(text, &invalid.path),
                key: Some(render_path(&invalid.path)),
                why: invalid.why,
            })?;
        Ok(config)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: source.clone(),
            line: None,
            key: None,
            why: format!("cannot read file: {e}"),
        })?;
        Config::parse(&text, &source)
    }

    /// The embedded default config.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
    }

    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == name)
    }

    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// Resolves the state and audit paths, and reads the admin API's bearer
    /// token; only a loopback admin address may go without one.
    fn load_ops_files(&mut self, base: Option<&Path>) -> Result<(), Invalid> {
        if let Some(state) = self.state.as_mut() {
            state.path = resolve(base, &state.path);
        }
        if let Some(audit) = self.audit.as_mut() {
            audit.path = resolve(base, &audit.path);
        }
        let Some(admin) = self.admin.as_mut() else {
            return Ok(());
        };
        let at = |key: &str| vec![seg("admin"), seg(key)];
        if let Some(file) = &admin.token_file {
            admin.token = Some(read_secret(base, file, at("token_file"), "token")?);
        }
        check_at(
            admin.token.is_some() || admin.listen.ip().is_loopback(),
            at("token_file"),
            "a non-loopback admin listen address needs token_file",
        )
    }

    /// Reads each app's keys file and token secret.
    fn load_app_files(&mut self, base: Option<&Path>) -> Result<(), Invalid> {
        for (i, app) in self.apps.iter_mut().enumerate() {
            let at = |key: &str| vec![seg("app"), PathSeg::Index(i), seg(key)];
            if let Some(file) = &app.keys_file {
                let path = resolve(base, file);
                let text = std::fs::read_to_string(&path).map_err(|e| Invalid {
                    path: at("keys_file"),
                    why: format!("cannot read {}: {e}", path.display()),
                })?;
                let keys = parse_keys_file(&text).map_err(|(line, why)| Invalid {
                    path: at("keys_file"),
                    why: format!("{}:{line}: {why}", path.display()),
                })?;
                app.keys.extend(keys);
            }
            if let Some(file) = &app.token_secret_file {
                let secret = read_secret(base, file, at("token_secret_file"), "secret")?;
                app.token_secret = Some(secret);
            }
            let uses = |m: AuthMode| app.publish == m || app.play == m;
            check_at(
                !uses(AuthMode::Token) || app.token_secret.is_some(),
                at("token_secret_file"),
                "token mode needs token_secret_file",
            )?;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), Invalid> {
        let s = &self.server;
        check(
            !s.listen.is_empty(),
            &["server", "listen"],
            "at least one address is needed",
        )?;
        for (key, d) in [
            ("handshake_timeout", s.handshake_timeout),
            ("connect_timeout", s.connect_timeout),
            ("idle_timeout", s.idle_timeout),
            ("drain_timeout", s.drain_timeout),
        ] {
            check(!d.is_zero(), &["server", key], "must be greater than zero")?;
        }
        check(
            s.max_connections > 0,
            &["server", "max_connections"],
            "must be at least 1",
        )?;

        let l = &self.limits;
        check(
            (1..=CHUNK_SIZE_CAP).contains(&l.max_chunk_size),
            &["limits", "max_chunk_size"],
            "must be between 1 and 2147483647",
        )?;
        check(
            (1..=MESSAGE_SIZE_CAP).contains(&l.max_message_size),
            &["limits", "max_message_size"],
            "must be between 1 and 16777215",
        )?;
        check(
            (1..=l.max_message_size).contains(&l.max_command_size),
            &["limits", "max_command_size"],
            "must be between 1 and max_message_size",
        )?;
        check(
            (1..=65_599).contains(&l.max_chunk_streams),
            &["limits", "max_chunk_streams"],
            "must be between 1 and 65599",
        )?;
        check(
            (1..=MAX_AMF_DEPTH_CAP).contains(&l.max_amf_depth),
            &["limits", "max_amf_depth"],
            "must be between 1 and 256",
        )?;

        let p = &l.per_ip;
        check(
            p.ipv4_prefix <= 32,
            &["limits", "per_ip", "ipv4_prefix"],
            "must be between 0 and 32",
        )?;
        check(
            p.ipv6_prefix <= 128,
            &["limits", "per_ip", "ipv6_prefix"],
            "must be between 0 and 128",
        )?;
        check(
            p.connections_per_second > 0,
            &["limits", "per_ip", "connections_per_second"],
            "must be at least 1",
        )?;
        check(
            p.burst > 0,
            &["limits", "per_ip", "burst"],
            "must be at least 1",
        )?;
        check(
            p.max_concurrent > 0,
            &["limits", "per_ip", "max_concurrent"],
            "must be at least 1",
        )?;
        check(
            p.max_tracked >= 16,
            &["limits", "per_ip", "max_tracked"],
            "must be at least 16",
        )?;
        check(
            l.global.max_pending > 0,
            &["limits", "global", "max_pending"],
            "must be at least 1",
        )?;
        let sl = &l.session;
        check(
            sl.commands_per_second > 0,
            &["limits", "session", "commands_per_second"],
            "must be at least 1",
        )?;
        check(
            sl.commands_burst > 0,
            &["limits", "session", "commands_burst"],
            "must be at least 1",
        )?;
        check(
            sl.max_streams > 0,
            &["limits", "session", "max_streams"],
            "must be at least 1",
        )?;

        let b = &self.bans;
        check(
            b.threshold > 0,
            &["bans", "threshold"],
            "must be at least 1",
        )?;
        check(
            !b.window.is_zero(),
            &["bans", "window"],
            "must be greater than zero",
        )?;
        check(
            !b.duration.is_zero(),
            &["bans", "duration"],
            "must be greater than zero",
        )?;
        for reason in b.scores.keys() {
            check(
                crate::verdict::Reason::from_name(reason).is_some(),
                &["bans", "scores", reason],
                &format!("{reason:?} is not a block reason"),
            )?;
        }

        for (i, u) in self.upstreams.iter().enumerate() {
            let at = |key: &str| vec![seg("upstream"), PathSeg::Index(i), seg(key)];
            check_at(!u.name.is_empty(), at("name"), "must not be empty")?;
            check_at(
                self.upstreams[..i].iter().all(|o| o.name != u.name),
                at("name"),
                &format!("upstream {:?} is defined twice", u.name),
            )?;
            check_at(
                !u.servers.is_empty(),
                at("servers"),
                "at least one server is needed",
            )?;
            for server in &u.servers {
                check_at(
                    has_port(server),
                    at("servers"),
                    &format!("{server:?} is not \"host:port\""),
                )?;
            }
            check_at(
                !u.connect_timeout.is_zero(),
                at("connect_timeout"),
                "must be greater than zero",
            )?;
        }
        for (i, a) in self.apps.iter().enumerate() {
            let at = |key: &str| vec![seg("app"), PathSeg::Index(i), seg(key)];
            check_at(
                !a.name.is_empty() && !a.name.contains(['?', '/']),
                at("name"),
                "must be a non-empty app name without '?' or '/'",
            )?;
            check_at(
                self.apps[..i].iter().all(|o| o.name != a.name),
                at("name"),
                &format!("app {:?} is defined twice", a.name),
            )?;
            check_at(
                self.upstream(&a.upstream).is_some(),
                at("upstream"),
                &format!("no [[upstream]] is named {:?}", a.upstream),
            )?;
            let uses = |m: AuthMode| a.publish == m || a.play == m;
            check_at(
                !uses(AuthMode::Http) || a.http_auth.is_some(),
                at("http_auth"),
                "http mode needs http_auth = { url = \"http://...\" }",
            )?;
            if let Some(h) = &a.http_auth {
                check_at(
                    h.url.starts_with("http://") && h.url.len() > 7,
                    at("http_auth"),
                    "url must be an http:// URL",
                )?;
                check_at(
                    !h.timeout.is_zero(),
                    at("http_auth"),
                    "timeout must be greater than zero",
                )?;
            }
            let uses_key = uses(AuthMode::Key);
            check_at(
                !uses_key || !a.keys.is_empty() || a.keys_file.is_some(),
                at("keys"),
                "key mode needs keys or keys_file",
            )?;
            for glob in a.blocked_streams.iter().chain(&a.referrers) {
                check_at(!glob.is_empty(), at("blocked_streams"), "empty glob")?;
            }
        }
        Ok(())
    }
}

/// A config error, as the operator reads it:
/// `FILE:LINE: key `KEY`: WHY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub why: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.why)
    }
}

impl std::error::Error for ConfigError {}

/// A validation failure, located by its key path.
struct Invalid {
    path: Vec<PathSeg>,
    why: String,
}

#[derive(Clone)]
enum PathSeg {
    Key(String),
    Index(usize),
}

fn seg(key: &str) -> PathSeg {
    PathSeg::Key(key.to_string())
}

fn check(ok: bool, path: &[&str], why: &str) -> Result<(), Invalid> {
    check_at(ok, path.iter().map(|k| seg(k)).collect(), why)
}

fn check_at(ok: bool, path: Vec<PathSeg>, why: &str) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid {
            path,
            why: why.to_string(),
        })
    }
}

fn render_path(path: &[PathSeg]) -> String {
    let mut out = String::new();
    for part in path {
        match part {
            PathSeg::Key(k) if out.is_empty() => out.push_str(k),
            PathSeg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            PathSeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn key_or_none(key: String) -> Option<String> {
    if key.is_empty() || key == "." {
        None
    } else {
        Some(key)
    }
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Finds the line of a key path in the document, for errors found after
/// parsing (cross references, ranges). Falls back to the nearest parent that
/// is written in the file, since a defaulted key has no line of its own.
fn locate(text: &str, path: &[PathSeg]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut best = None;
    for part in path {
        let next = match part {
            PathSeg::Key(k) => {
                let table = item.as_table_like()?;
                if let Some(span) = item
                    .as_table()
                    .and_then(|t| t.key(k))
                    .and_then(|key| key.span())
                {
                    best = Some(span.start);
                }
                table.get(k)
            }
            PathSeg::Index(i) => {
                let entry = item.as_array_of_tables().and_then(|a| a.get(*i));
                if let Some(span) = entry.and_then(|t| t.span()) {
                    best = Some(span.start);
                }
                entry.map(|_| ()).and_then(|_| item.get(*i))
            }
        };
        match next {
            Some(n) => item = n,
            None => break,
        }
    }
    best.map(|offset| line_of(text, offset))
}

/// Reads a secret (`what`: "token", "secret") from a file named at
/// `key`: trimmed, and at least 16 bytes.
fn read_secret(
    base: Option<&Path>,
    file: &Path,
    key: Vec<PathSeg>,
    what: &str,
) -> Result<Secret, Invalid> {
    let path = resolve(base, file);
    let text = std::fs::read_to_string(&path).map_err(|e| Invalid {
        path: key.clone(),
        why: format!("cannot read {}: {e}", path.display()),
    })?;
    let secret = text.trim();
    check_at(
        secret.len() >= 16,
        key,
        &format!("the {what} must be at least 16 bytes"),
    )?;
    Ok(Secret(secret.to_string()))
}

fn resolve(base: Option<&Path>, file: &Path) -> std::path::PathBuf {
    match base {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_path_buf(),
    }
}

/// Parses `stream = key` lines; `#` starts a comment. Errors carry the
/// 1-based line number.
pub fn parse_keys_file(text: &str) -> Result<BTreeMap<String, Secret>, (usize, String)> {
    let mut keys = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((stream, key)) = line.split_once('=') else {
            return Err((i + 1, "expected \"stream = key\"".into()));
        };
        let (stream, key) = (stream.trim(), key.trim());
        if stream.is_empty() || key.is_empty() || stream.contains(['?', '/', ' ']) {
            return Err((
                i + 1,
                "expected \"stream = key\" with a plain stream name and a key".into(),
            ));
        }
        if keys
            .insert(stream.to_string(), Secret(key.to_string()))
            .is_some()
        {
            return Err((i + 1, format!("stream {stream:?} has two keys")));
        }
    }
    Ok(keys)
}

fn has_port(server: &str) -> bool {
    match server.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Parses "500ms", "5s", "10m", "1h" (and combinations humantime accepts).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use a unit, like \"5s\" or \"10m\""))
}

fn cidrs<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(de)?;
    texts
        .iter()
        .map(|t| parse_cidr(t))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// Parses "203.0.113.0/24", or a bare address as a single-host network.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{text:?} is not a CIDR like \"203.0.113.0/24\" or an IP address"))
}

fn socket_addr<'de, D: Deserializer<'de>>(de: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(de)?;
    parse_socket_addr(&text).map_err(serde::de::Error::custom)
}

fn socket_addrs<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<SocketAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(de)?;
    texts
        .iter()
        .map(|t| parse_socket_addr(t))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IP address and port, like \"0.0.0.0:1935\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        match Config::parse(text, "test.toml") {
            Ok(_) => panic!("config should have been refused:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn embedded_default_is_valid_and_matches_the_contract() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.server.listen, vec!["0.0.0.0:1935".parse().unwrap()]);
        assert_eq!(c.server.handshake_timeout, Duration::from_secs(5));
        assert_eq!(c.server.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.max_connections, 10_000);
        assert_eq!(c.metrics.listen, "127.0.0.1:9935".parse().unwrap());
        assert_eq!(c.upstreams[0].servers, vec!["127.0.0.1:1936"]);
        assert_eq!(c.app("live").unwrap().upstream, "origin");
    }

    #[test]
    fn omitted_keys_take_the_documented_defaults() {
        let shipped = Config::embedded_default().unwrap();
        let minimal = Config::parse("", "empty.toml").unwrap();
        assert_eq!(
            format!("{:?}", shipped.server),
            format!("{:?}", minimal.server)
        );
        assert_eq!(
            format!("{:?}", shipped.limits),
            format!("{:?}", minimal.limits)
        );
        assert_eq!(shipped.metrics.listen, minimal.metrics.listen);
    }

    #[test]
    fn a_non_loopback_admin_api_needs_a_token() {
        let e = err("[metrics]\nlisten = \"127.0.0.1:1\"\n\n[admin]\nlisten = \"0.0.0.0:9936\"\n");
        assert_eq!(e.line, Some(4), "the [admin] table: {e}");
        assert_eq!(e.key.as_deref(), Some("admin.token_file"), "{e}");
        assert!(Config::parse("[admin]\nlisten = \"127.0.0.1:9936\"\n", "t.toml").is_ok());
        let e = err("[admin]\nlisten = \"[::1]:9936\"\ntoken_file = \"/nonexistent\"\n");
        assert!(e.why.contains("cannot read"), "{e}");
        let e = err("[admin]\nlisten = \"127.0.0.1:9936\"\ntokn_file = \"x\"\n");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err("[server]\nlisten = [\"127.0.0.1:1\"]\nhandshake_timout = \"5s\"\n");
        assert_eq!(e.source, "test.toml");
        assert_eq!(e.line, Some(3));
        assert!(e.why.contains("handshake_timout"), "{e}");
        assert!(e.to_string().starts_with("test.toml:3"), "{e}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let e = err("[servr]\nlisten = []\n");
        assert_eq!(e.line, Some(1));
        assert!(e.why.contains("servr"), "{e}");
    }

    #[test]
    fn bad_duration_names_its_key() {
        let e = err("[server]\n\nidle_timeout = \"forever\"\n");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("server.idle_timeout"));
        assert!(e.why.contains("forever"), "{e}");
    }

    #[test]
    fn app_with_unknown_upstream_points_at_its_line() {
        let text = "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\n[[app]]\nname = \"live\"\nupstream = \"b\"\n";
        let e = err(text);
        assert_eq!(e.key.as_deref(), Some("app[0].upstream"));
        assert_eq!(e.line, Some(7));
        assert!(e.why.contains("\"b\""), "{e}");
    }

    #[test]
    fn limits_are_range_checked() {
        assert_eq!(err("[limits]\nmax_chunk_size = 0\n").line, Some(2));
        assert!(err("[limits]\nmax_chunk_size = 2147483648\n")
            .why
            .contains("2147483647"));
        assert!(err("[limits]\nmax_amf_depth = 100000\n")
            .why
            .contains("256"));
        assert!(err("[limits]\nmax_message_size = 16777216\n")
            .why
            .contains("16777215"));
        assert!(err("[limits]\nmax_chunk_size = -1\n").key.is_some());
    }

    #[test]
    fn wrong_type_is_reported_with_key() {
        let e = err("[server]\nmax_connections = \"many\"\n");
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key.as_deref(), Some("server.max_connections"));
    }

    #[test]
    fn upstream_servers_need_a_port() {
        let e = err("[[upstream]]\nname = \"a\"\nservers = [\"origin.example\"]\n");
        assert_eq!(e.key.as_deref(), Some("upstream[0].servers"));
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn abuse_limits_and_access_rules_parse() {
        let c = Config::parse(
            "[server]\nmode = \"dry_run\"\n[access]\ndeny = [\"203.0.113.0/24\", \"2001:db8::1\"]\n\
             [limits.per_ip]\nipv6_prefix = 48\n[bans.scores]\nunknown_app = 7\n\
             [proxy_protocol]\ntrusted = [\"10.0.0.0/8\"]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.server.mode, Mode::DryRun);
        assert_eq!(c.access.deny[1].to_string(), "2001:db8::1/128");
        assert_eq!(c.limits.per_ip.ipv6_prefix, 48);
        assert_eq!(c.limits.per_ip.connections_per_second, 5);
        assert_eq!(c.bans.scores.get("unknown_app"), Some(&7));
        assert_eq!(c.proxy_protocol.trusted.len(), 1);
    }

    #[test]
    fn bad_cidrs_and_scores_are_located() {
        let e = err("[access]\ndeny = [\"10.0.0.0/33\"]\n");
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key.as_deref(), Some("access.deny"));
        let e = err("[bans.scores]\nno_such_reason = 1\n");
        assert_eq!(e.key.as_deref(), Some("bans.scores.no_such_reason"));
        assert_eq!(e.line, Some(2));
        let e = err("[[upstream]]\nname = \"o\"\nservers = [\"h:1\"]\nproxy_protocol = \"v3\"\n");
        assert_eq!(e.line, Some(4));
    }

    #[test]
    fn bitrates_parse_with_units() {
        assert_eq!(parse_bitrate("20Mbit"), Ok(20_000_000));
        assert_eq!(parse_bitrate("500kbit"), Ok(500_000));
        assert_eq!(parse_bitrate("1.5Gbit"), Ok(1_500_000_000));
        assert_eq!(parse_bitrate("64000"), Ok(64_000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("-2Mbit").is_err());
    }

    #[test]
    fn keys_file_errors_name_their_line() {
        assert_eq!(
            parse_keys_file("# keys\ncam1 = s1\n\ncam2 = s2 # trailing\n")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(parse_keys_file("cam1 = a\ncam2\n").unwrap_err().0, 2);
        assert_eq!(parse_keys_file("cam1 = a\n\ncam1 = b\n").unwrap_err().0, 3);
        assert_eq!(parse_keys_file("cam 1 = a\n").unwrap_err().0, 1);
    }

    #[test]
    fn app_auth_defaults_and_secrets_stay_hidden() {
        let c = Config::parse(
            "[[upstream]]\nname = \"o\"\nservers = [\"h:1\"]\n[[app]]\nname = \"live\"\nupstream = \"o\"\n\
             publish = \"key\"\nkeys = { cam1 = \"hunter2\" }\n",
            "t.toml",
        )
        .unwrap();
        let app = c.app("live").unwrap();
        assert_eq!((app.publish, app.play), (AuthMode::Key, AuthMode::None));
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = err("[[upstream]]\nname = \"o\"\nservers = [\"h:1\"]\n[[app]]\nname = \"live\"\nupstream = \"o\"\nplay = \"token\"\n");
        assert!(e.why.contains("token_secret_file"), "{e}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("5").is_err());
    }
}
