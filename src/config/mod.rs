//! The guard's configuration: one TOML file, parsed strictly, validated
//! once.
//!
//! The file is an interface operators write by hand, so every error must say
//! where it is: the file, the line, the key, and why. Unknown keys are errors
//! (a typo must never silently fall back to a default), and every value that
//! could make the guard unsafe is range-checked here, once, so the rest of
//! the code can trust it.
//!
//! The file is read in two steps. Serde reads it into [`raw`], the file's
//! shape; [`Config::parse`] then checks that, reads the secret files it
//! names, and builds the [`Config`] the guard runs on, which holds what the
//! file means: an app's auth mode carries the keys, secret or auth service
//! it checks against, and the admin API's token is there exactly when the
//! file names a `token_file`.

mod locate;
pub mod raw;
mod secret;
mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use locate::{seg, Invalid, PathSeg};

pub use raw::{
    parse_bitrate, parse_cidr, parse_duration, Access, Audit, Balance, Bans, Global, HttpAuth,
    KernelAction, KernelBans, Limits, Metrics, Mode, OnError, OnRedisDown, PerIp, ProxyProtocolIn,
    ProxyProtocolOut, ReconnectTcUrl, Server, SessionLimits, State,
};
pub use secret::{generate_stream_key, parse_keys_file, valid_public_name, KeyIndex, Secret};
pub use tls::{server_config, Tls, UpstreamTls};

/// The default configuration, shipped as `config/rtmp-guard.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/rtmp-guard.toml");
/// The name the embedded default is reported under.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded config/rtmp-guard.toml>";

/// Deepest AMF nesting a config may allow; the AMF reader recurses.
pub const MAX_AMF_DEPTH_CAP: usize = 256;
/// Longest `max_name_length` a config may allow.
pub const MAX_NAME_LENGTH_CAP: usize = 1024;
/// Largest chunk size RTMP can express (the top bit is reserved).
pub const CHUNK_SIZE_CAP: u32 = 0x7FFF_FFFF;
/// Largest message length a chunk header can express (24 bits).
pub const MESSAGE_SIZE_CAP: u32 = 0xFF_FFFF;

/// A validated config: what the guard runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub limits: Limits,
    pub metrics: Metrics,
    pub access: Access,
    pub bans: Bans,
    pub proxy_protocol: ProxyProtocolIn,
    pub upstreams: Vec<Upstream>,
    /// Shared with the sessions of each app, which outlive a reload.
    pub apps: Vec<Arc<App>>,
    pub admin: Option<Admin>,
    /// Its path resolved against the config file's directory.
    pub state: Option<State>,
    /// Its path resolved against the config file's directory.
    pub audit: Option<Audit>,
    /// RTMPS listeners, with the certificate read when the config was.
    pub tls: Option<Tls>,
    /// Fleet mode: shared remedies and quotas through Redis.
    pub fleet: Option<Fleet>,
}

/// `[fleet]`, validated: the Redis URL parsed, the password read, the
/// guard's name settled.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The URL as written (it may hold a password: never logged).
    pub redis: Secret,
    /// From `password_file`.
    pub password: Option<Secret>,
    pub name: String,
    pub key_prefix: String,
    pub on_redis_down: OnRedisDown,
    pub lease_ttl: Duration,
}

/// An `[[upstream]]`: its servers, how one is chosen and checked, and how
/// the guard speaks to them.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// "host:port" each.
    pub servers: Vec<String>,
    /// TCP connect, TLS and RTMP handshake with one server.
    pub connect_timeout: Duration,
    pub proxy_protocol: ProxyProtocolOut,
    /// Present when `tls = true`.
    pub tls: Option<UpstreamTls>,
    pub balance: Balance,
    /// Zero: active checks off.
    pub health_check_interval: Duration,
    pub health_check_timeout: Duration,
    pub fail_threshold: u32,
    pub rise_threshold: u32,
}

/// `[admin]`: the admin API. Off when the table is absent.
#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The bearer token every `/api/*` call must send: read from
    /// `token_file`, present exactly when the file names one.
    pub token: Option<Secret>,
}

/// An `[[app]]`: its upstream, who may publish and play, and its limits.
#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub upstream: String,
    /// Who may publish. Default: deny.
    pub publish: AuthMode,
    /// Who may play. Default: none.
    pub play: AuthMode,
    /// The secret read from `token_secret_file`, present exactly when the
    /// file names one, whatever the modes: `rtmp-guard token` signs with
    /// it. `token` mode carries its own copy.
    pub token_secret: Option<Secret>,
    pub publish_allow: Vec<IpNet>,
    pub publish_deny: Vec<IpNet>,
    pub play_allow: Vec<IpNet>,
    pub play_deny: Vec<IpNet>,
    /// pageUrl/swfUrl globs a player must match; empty: no check.
    pub referrers: Vec<String>,
    /// Concurrent publishing sessions in this app.
    pub max_publishers: u32,
    /// Concurrent playing sessions in this app.
    pub max_viewers: u32,
    /// Globs on the stream name whose publish and play are refused.
    pub blocked_streams: Vec<String>,
    /// Bits per second a publishing session may send.
    pub max_publish_bitrate: Option<u64>,
}

impl App {
    /// The auth service publish or play asks, in `http` mode.
    pub fn http_auth(&self) -> Option<&HttpAuth> {
        [&self.publish, &self.play]
            .into_iter()
            .find_map(|mode| match mode {
                AuthMode::Http(auth) => Some(auth),
                _ => None,
            })
    }
}

/// How a publish or play is authorised, with what it is checked against.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Anyone (still subject to address rules, blocks and quotas).
    None,
    /// `name?key=SECRET` must match the stream's key: `keys` and the
    /// `keys_file`'s lines together.
    Key { keys: BTreeMap<String, Secret> },
    /// Publish only: the stream name sent is a key from `keys` and the
    /// `keys_file`; the stream is published as the public name the key
    /// belongs to, and the origin, the logs and the operator see only
    /// that name.
    StreamKey { index: Arc<KeyIndex> },
    /// `name?expires=UNIX[&ip=ADDR]&role=ROLE&token=HEX`, an HMAC-SHA256
    /// signature for one role with the secret from `token_secret_file`
    /// (see `policy::token`).
    Token { secret: Secret },
    /// Ask `http_auth`, as nginx-rtmp's on_publish / on_play do.
    Http(HttpAuth),
    /// Nobody.
    Deny,
}

impl Config {
    /// Parses and validates a config; `source` names it in error messages.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: raw::Config = serde_path_to_error::deserialize(de)
            .map_err(|err| locate::serde_error(text, source, err))?;
        let base = Path::new(source).parent();
        validate(raw, base).map_err(|invalid| locate::invalid_error(text, source, invalid))
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

    pub fn app(&self, name: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|a| a.name == name)
    }

    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
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

const HTTP_MODE_NEEDS_HTTP_AUTH: &str = "http mode needs http_auth = { url = \"http://...\" }";
const TOKEN_MODE_NEEDS_SECRET: &str = "token mode needs token_secret_file";
const STREAM_KEY_IS_FOR_PUBLISHING: &str =
    "stream_key is a publish mode: players play the public names";

/// Turns the file's shape into the config, once. The checks that need
/// only the file come first, section by section, then each app's secret
/// files are read, then the admin token; the first failure is reported.
fn validate(raw: raw::Config, base: Option<&Path>) -> Result<Config, Invalid> {
    check_server(&raw.server)?;
    check_limits(&raw.limits)?;
    check_bans(&raw.bans)?;
    check_upstreams(&raw.upstreams)?;
    check_apps(&raw.apps, &raw.upstreams)?;
    if let Some(t) = &raw.tls {
        check(
            !t.listen.is_empty(),
            &["tls", "listen"],
            "at least one address is needed",
        )?;
        not_zero(t.handshake_timeout, &["tls", "handshake_timeout"])?;
    }
    let max_name_length = raw.limits.max_name_length;
    let apps = raw
        .apps
        .into_iter()
        .enumerate()
        .map(|(i, app)| build_app(i, app, base, max_name_length).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let state = raw.state.map(|s| State {
        path: resolve(base, &s.path),
    });
    let audit = raw.audit.map(|a| Audit {
        path: resolve(base, &a.path),
    });
    let admin = raw.admin.map(|a| build_admin(a, base)).transpose()?;
    let tls = raw.tls.map(|t| tls::build_tls(t, base)).transpose()?;
    let fleet = raw.fleet.map(|f| build_fleet(f, base)).transpose()?;
    let upstreams = raw
        .upstreams
        .into_iter()
        .enumerate()
        .map(|(i, u)| build_upstream(i, u, base))
        .collect::<Result<_, _>>()?;
    Ok(Config {
        server: raw.server,
        limits: raw.limits,
        metrics: raw.metrics,
        access: raw.access,
        bans: raw.bans,
        proxy_protocol: raw.proxy_protocol,
        upstreams,
        apps,
        admin,
        state,
        audit,
        tls,
        fleet,
    })
}

/// The host name, for a fleet guard that names none.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rtmp-guard".to_string())
}

/// Checks `[fleet]`: a Redis URL the client can use, a name fit for
/// session ids (`GUARD:ID`) and keys, a lease of at least a second.
fn build_fleet(f: raw::Fleet, base: Option<&Path>) -> Result<Fleet, Invalid> {
    let at = |key: &str| vec![seg("fleet"), seg(key)];
    let url = f.redis.0.as_str();
    check_at(
        (url.starts_with("redis://") || url.starts_with("rediss://"))
            && redis::IntoConnectionInfo::into_connection_info(url).is_ok(),
        at("redis"),
        "must be a redis:// or rediss:// URL",
    )?;
    let name = f.name.unwrap_or_else(host_name);
    check_at(
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        at("name"),
        "must be 1-64 letters, digits, '-', '_' or '.'",
    )?;
    check_at(
        f.lease_ttl >= Duration::from_secs(1),
        at("lease_ttl"),
        "must be at least 1s",
    )?;
    let password = f
        .password_file
        .as_deref()
        .map(|file| secret::read_secret(base, file, at("password_file"), "password"))
        .transpose()?;
    Ok(Fleet {
        redis: f.redis,
        password,
        name,
        key_prefix: f.key_prefix,
        on_redis_down: f.on_redis_down,
        lease_ttl: f.lease_ttl,
    })
}

/// Builds an upstream's TLS client config when it speaks TLS.
fn build_upstream(i: usize, u: raw::Upstream, base: Option<&Path>) -> Result<Upstream, Invalid> {
    let at = |key: &str| vec![seg("upstream"), PathSeg::Index(i), seg(key)];
    let tls = if u.tls {
        Some(tls::build_upstream_tls(
            u.ca_file.as_deref(),
            u.tls_server_name.as_deref(),
            base,
            at,
        )?)
    } else {
        None
    };
    Ok(Upstream {
        name: u.name,
        servers: u.servers,
        connect_timeout: u.connect_timeout,
        proxy_protocol: u.proxy_protocol,
        tls,
        balance: u.balance,
        health_check_interval: u.health_check_interval,
        health_check_timeout: u.health_check_timeout,
        fail_threshold: u.fail_threshold,
        rise_threshold: u.rise_threshold,
    })
}

/// Reads the admin API's bearer token; only a loopback admin address may
/// go without one.
fn build_admin(admin: raw::Admin, base: Option<&Path>) -> Result<Admin, Invalid> {
    let at = |key: &str| vec![seg("admin"), seg(key)];
    let token = admin
        .token_file
        .as_deref()
        .map(|file| secret::read_secret(base, file, at("token_file"), "token"))
        .transpose()?;
    check_at(
        token.is_some() || admin.listen.ip().is_loopback(),
        at("token_file"),
        "a non-loopback admin listen address needs token_file",
    )?;
    Ok(Admin {
        listen: admin.listen,
        token,
    })
}

/// Reads an app's keys file and token secret, and gives each mode what it
/// checks against.
fn build_app(
    i: usize,
    app: raw::App,
    base: Option<&Path>,
    max_name_length: usize,
) -> Result<App, Invalid> {
    let at = |key: &str| vec![seg("app"), PathSeg::Index(i), seg(key)];
    let raw::App {
        name,
        upstream,
        publish,
        play,
        mut keys,
        keys_file,
        token_secret_file,
        publish_allow,
        publish_deny,
        play_allow,
        play_deny,
        referrers,
        max_publishers,
        max_viewers,
        blocked_streams,
        max_publish_bitrate,
        http_auth,
    } = app;
    secret::check_public_names(&keys, max_name_length).map_err(|why| Invalid {
        path: at("keys"),
        why,
    })?;
    if let Some(file) = &keys_file {
        let from_file = secret::read_keys(base, file, at("keys_file"))?;
        secret::check_public_names(&from_file, max_name_length).map_err(|why| Invalid {
            path: at("keys_file"),
            why: format!("{}: {why}", resolve(base, file).display()),
        })?;
        keys.extend(from_file);
    }
    let index = if publish == raw::AuthMode::StreamKey {
        let key = if keys_file.is_some() {
            "keys_file"
        } else {
            "keys"
        };
        let index = KeyIndex::new(&keys).map_err(|why| Invalid { path: at(key), why })?;
        Some(Arc::new(index))
    } else {
        None
    };
    let token_secret = token_secret_file
        .as_deref()
        .map(|file| secret::read_secret(base, file, at("token_secret_file"), "secret"))
        .transpose()?;
    // Token mode without a secret is refused here, after the files are read;
    // http mode without `http_auth` was refused by `check_apps`.
    let mode = |mode: raw::AuthMode| -> Result<AuthMode, Invalid> {
        let needs = |key: &str, why: &str| Invalid {
            path: at(key),
            why: why.to_string(),
        };
        Ok(match mode {
            raw::AuthMode::None => AuthMode::None,
            raw::AuthMode::Deny => AuthMode::Deny,
            raw::AuthMode::Key => AuthMode::Key { keys: keys.clone() },
            raw::AuthMode::StreamKey => AuthMode::StreamKey {
                index: index
                    .clone()
                    .ok_or_else(|| needs("play", STREAM_KEY_IS_FOR_PUBLISHING))?,
            },
            raw::AuthMode::Token => AuthMode::Token {
                secret: token_secret
                    .clone()
                    .ok_or_else(|| needs("token_secret_file", TOKEN_MODE_NEEDS_SECRET))?,
            },
            raw::AuthMode::Http => AuthMode::Http(
                http_auth
                    .clone()
                    .ok_or_else(|| needs("http_auth", HTTP_MODE_NEEDS_HTTP_AUTH))?,
            ),
        })
    };
    let (publish, play) = (mode(publish)?, mode(play)?);
    Ok(App {
        name,
        upstream,
        publish,
        play,
        token_secret,
        publish_allow,
        publish_deny,
        play_allow,
        play_deny,
        referrers,
        max_publishers,
        max_viewers,
        blocked_streams,
        max_publish_bitrate,
    })
}

fn check_server(s: &Server) -> Result<(), Invalid> {
    check(
        !s.listen.is_empty(),
        &["server", "listen"],
        "at least one address is needed",
    )?;
    for (key, d) in [
        ("handshake_timeout", s.handshake_timeout),
        ("connect_timeout", s.connect_timeout),
        ("idle_timeout", s.idle_timeout),
        ("write_timeout", s.write_timeout),
        ("drain_timeout", s.drain_timeout),
    ] {
        not_zero(d, &["server", key])?;
    }
    at_least(s.max_connections as u64, 1, &["server", "max_connections"])
}

fn check_limits(l: &Limits) -> Result<(), Invalid> {
    between(
        l.max_chunk_size,
        1,
        CHUNK_SIZE_CAP,
        &["limits", "max_chunk_size"],
    )?;
    between(
        l.max_message_size,
        1,
        MESSAGE_SIZE_CAP,
        &["limits", "max_message_size"],
    )?;
    check(
        (1..=l.max_message_size).contains(&l.max_command_size),
        &["limits", "max_command_size"],
        "must be between 1 and max_message_size",
    )?;
    between(
        l.max_chunk_streams,
        1,
        65_599,
        &["limits", "max_chunk_streams"],
    )?;
    between(
        l.max_amf_depth,
        1,
        MAX_AMF_DEPTH_CAP,
        &["limits", "max_amf_depth"],
    )?;
    between(
        l.max_name_length,
        1,
        MAX_NAME_LENGTH_CAP,
        &["limits", "max_name_length"],
    )?;
    let per_ip = |key| ["limits", "per_ip", key];
    let p = &l.per_ip;
    between(p.ipv4_prefix, 0, 32, &per_ip("ipv4_prefix"))?;
    between(p.ipv6_prefix, 0, 128, &per_ip("ipv6_prefix"))?;
    at_least(
        p.connections_per_second.into(),
        1,
        &per_ip("connections_per_second"),
    )?;
    at_least(p.burst.into(), 1, &per_ip("burst"))?;
    at_least(p.max_concurrent.into(), 1, &per_ip("max_concurrent"))?;
    at_least(p.max_tracked as u64, 16, &per_ip("max_tracked"))?;
    at_least(
        l.global.max_pending as u64,
        1,
        &["limits", "global", "max_pending"],
    )?;
    let session = |key| ["limits", "session", key];
    let sl = &l.session;
    at_least(
        sl.commands_per_second.into(),
        1,
        &session("commands_per_second"),
    )?;
    at_least(sl.commands_burst.into(), 1, &session("commands_burst"))?;
    at_least(sl.max_streams.into(), 1, &session("max_streams"))
}

fn check_bans(b: &Bans) -> Result<(), Invalid> {
    at_least(b.threshold.into(), 1, &["bans", "threshold"])?;
    not_zero(b.window, &["bans", "window"])?;
    not_zero(b.duration, &["bans", "duration"])?;
    for reason in b.scores.keys() {
        check(
            crate::verdict::Reason::from_name(reason).is_some(),
            &["bans", "scores", reason],
            &format!("{reason:?} is not a block reason"),
        )?;
    }
    check(
        valid_table_name(&b.kernel.table),
        &["bans", "kernel", "table"],
        "an nftables table name: a letter, then up to 63 letters, digits or '_'",
    )
}

/// A name nft accepts as it is, and that cannot be read as anything else.
fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_upstreams(upstreams: &[raw::Upstream]) -> Result<(), Invalid> {
    for (i, u) in upstreams.iter().enumerate() {
        let at = |key: &str| vec![seg("upstream"), PathSeg::Index(i), seg(key)];
        check_at(!u.name.is_empty(), at("name"), "must not be empty")?;
        check_at(
            upstreams[..i].iter().all(|o| o.name != u.name),
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
        check_at(
            !u.health_check_timeout.is_zero(),
            at("health_check_timeout"),
            "must be greater than zero",
        )?;
        check_at(
            u.fail_threshold >= 1,
            at("fail_threshold"),
            "must be at least 1",
        )?;
        check_at(
            u.rise_threshold >= 1,
            at("rise_threshold"),
            "must be at least 1",
        )?;
        for (key, set) in [
            ("tls_server_name", u.tls_server_name.is_some()),
            ("ca_file", u.ca_file.is_some()),
        ] {
            check_at(u.tls || !set, at(key), "only used with tls = true")?;
        }
    }
    Ok(())
}

/// What can be checked of the apps before their secret files are read.
fn check_apps(apps: &[raw::App], upstreams: &[raw::Upstream]) -> Result<(), Invalid> {
    for (i, a) in apps.iter().enumerate() {
        let at = |key: &str| vec![seg("app"), PathSeg::Index(i), seg(key)];
        check_at(
            !a.name.is_empty() && !a.name.contains(['?', '/']),
            at("name"),
            "must be a non-empty app name without '?' or '/'",
        )?;
        check_at(
            apps[..i].iter().all(|o| o.name != a.name),
            at("name"),
            &format!("app {:?} is defined twice", a.name),
        )?;
        check_at(
            upstreams.iter().any(|u| u.name == a.upstream),
            at("upstream"),
            &format!("no [[upstream]] is named {:?}", a.upstream),
        )?;
        let uses = |m: raw::AuthMode| a.publish == m || a.play == m;
        check_at(
            !uses(raw::AuthMode::Http) || a.http_auth.is_some(),
            at("http_auth"),
            HTTP_MODE_NEEDS_HTTP_AUTH,
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
        check_at(
            !uses(raw::AuthMode::Key) || !a.keys.is_empty() || a.keys_file.is_some(),
            at("keys"),
            "key mode needs keys or keys_file",
        )?;
        check_at(
            a.play != raw::AuthMode::StreamKey,
            at("play"),
            STREAM_KEY_IS_FOR_PUBLISHING,
        )?;
        check_at(
            !(a.publish == raw::AuthMode::StreamKey && a.play == raw::AuthMode::Key),
            at("play"),
            "play = \"key\" cannot go with publish = \"stream_key\": the viewers' play key \
             would be the publisher's secret stream key",
        )?;
        check_at(
            a.publish != raw::AuthMode::StreamKey || !a.keys.is_empty() || a.keys_file.is_some(),
            at("keys"),
            "stream_key mode needs keys or keys_file",
        )?;
        for glob in a.blocked_streams.iter().chain(&a.referrers) {
            check_at(!glob.is_empty(), at("blocked_streams"), "empty glob")?;
        }
    }
    Ok(())
}

/// `value` within `lo..=hi`; the message names the bounds.
fn between<T: PartialOrd + fmt::Display>(
    value: T,
    lo: T,
    hi: T,
    path: &[&str],
) -> Result<(), Invalid> {
    let why = format!("must be between {lo} and {hi}");
    check(lo <= value && value <= hi, path, &why)
}

fn at_least(value: u64, min: u64, path: &[&str]) -> Result<(), Invalid> {
    check(value >= min, path, &format!("must be at least {min}"))
}

fn not_zero(d: std::time::Duration, path: &[&str]) -> Result<(), Invalid> {
    check(!d.is_zero(), path, "must be greater than zero")
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

/// A path from the config, relative to the config file's directory.
fn resolve(base: Option<&Path>, file: &Path) -> PathBuf {
    match base {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_path_buf(),
    }
}

fn has_port(server: &str) -> bool {
    match server.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        assert_eq!(format!("{:?}", shipped.bans), format!("{:?}", minimal.bans));
        // The shipped upstream spells out every default of its keys.
        let bare = Config::parse(
            "[[upstream]]\nname = \"origin\"\nservers = [\"127.0.0.1:1936\"]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            format!("{:?}", shipped.upstreams[0]),
            format!("{:?}", bare.upstreams[0])
        );
        assert!(shipped.tls.is_none() && minimal.tls.is_none());
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
    fn kernel_bans_are_off_by_default_and_their_table_name_is_checked() {
        let c = Config::parse("", "t.toml").unwrap();
        assert!(!c.bans.kernel.enabled);
        assert_eq!(c.bans.kernel.table, "rtmp_guard");
        assert_eq!(c.bans.kernel.action, KernelAction::Reset);
        let c = Config::parse(
            "[bans.kernel]\nenabled = true\ntable = \"edge_1\"\naction = \"drop\"\n",
            "t.toml",
        )
        .unwrap();
        assert!(c.bans.kernel.enabled);
        assert_eq!(c.bans.kernel.action, KernelAction::Drop);
        for bad in ["\"\"", "\"1abc\"", "\"a b\"", "\"a;b\"", "\"a-b\""] {
            let e = err(&format!("[bans.kernel]\ntable = {bad}\n"));
            assert_eq!(e.key.as_deref(), Some("bans.kernel.table"), "{bad}: {e}");
        }
        let e = err("[bans.kernel]\naction = \"reject\"\n");
        assert_eq!(e.key.as_deref(), Some("bans.kernel.action"), "{e}");
        let e = err("[bans.kernel]\nenable = true\n");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn fleet_is_off_unless_configured_and_checked_when_it_is() {
        assert!(Config::embedded_default().unwrap().fleet.is_none());
        let f = Config::parse("[fleet]\nredis = \"redis://127.0.0.1:6379/0\"\n", "t.toml")
            .unwrap()
            .fleet
            .unwrap();
        // The defaults config/rtmp-guard.toml documents.
        assert_eq!(f.key_prefix, "rtmp-guard:");
        assert_eq!(f.on_redis_down, OnRedisDown::Local);
        assert_eq!(f.lease_ttl, Duration::from_secs(10));
        assert!(!f.name.is_empty() && f.password.is_none());
        assert!(
            !format!("{f:?}").contains("6379"),
            "the URL may hold a password"
        );
        let f = Config::parse(
            "[fleet]\nredis = \"rediss://r.example:6380/1\"\nname = \"guard-a\"\n\
             on_redis_down = \"deny_new\"\nlease_ttl = \"3s\"\n",
            "t.toml",
        )
        .unwrap()
        .fleet
        .unwrap();
        assert_eq!(
            (f.name.as_str(), f.on_redis_down, f.lease_ttl),
            ("guard-a", OnRedisDown::DenyNew, Duration::from_secs(3))
        );
        for (text, key) in [
            ("redis = \"http://127.0.0.1/\"", "fleet.redis"),
            ("redis = \"redis://h:6379\"\nname = \"a:b\"", "fleet.name"),
            (
                "redis = \"redis://h:6379\"\nlease_ttl = \"500ms\"",
                "fleet.lease_ttl",
            ),
            (
                "redis = \"redis://h:6379\"\non_redis_down = \"panic\"",
                "fleet.on_redis_down",
            ),
            (
                "redis = \"redis://h:6379\"\npassword_file = \"/nonexistent\"",
                "fleet.password_file",
            ),
            ("redis = \"redis://h:6379\"\nredis_url = \"x\"", "fleet"),
        ] {
            let e = err(&format!("[fleet]\n{text}\n"));
            assert!(
                e.key.as_deref().is_some_and(|k| k.starts_with(key)) || e.why.contains("redis_url"),
                "{text}: {e}"
            );
        }
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
        assert!(
            matches!(
                (&app.publish, &app.play),
                (AuthMode::Key { keys }, AuthMode::None) if keys.len() == 1
            ),
            "{app:?}"
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = err("[[upstream]]\nname = \"o\"\nservers = [\"h:1\"]\n[[app]]\nname = \"live\"\nupstream = \"o\"\nplay = \"token\"\n");
        assert!(e.why.contains("token_secret_file"), "{e}");
    }

    #[test]
    fn a_tls_file_that_does_not_load_names_its_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("cert.pem"), "not a certificate").unwrap();
        let text = "[metrics]\nlisten = \"127.0.0.1:1\"\n\n[tls]\nlisten = [\"127.0.0.1:0\"]\n\
                    cert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n";
        let e = Config::parse(text, &d.join("t.toml").display().to_string()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tls.cert_file"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.why.contains("cert.pem"), "{e}");
        let e = err("[tls]\nlisten = [\"127.0.0.1:0\"]\ncert_file = \"c\"\n");
        assert!(e.why.contains("key_file"), "{e}");
    }

    #[test]
    fn upstream_tls_settings_need_tls_and_thresholds_need_one() {
        let up = "[[upstream]]\nname = \"o\"\nservers = [\"h:1\"]\n";
        let e = err(&format!("{up}tls_server_name = \"origin\"\n"));
        assert_eq!(e.key.as_deref(), Some("upstream[0].tls_server_name"), "{e}");
        let e = err(&format!("{up}fail_threshold = 0\n"));
        assert_eq!(e.key.as_deref(), Some("upstream[0].fail_threshold"), "{e}");
        let e = err(&format!("{up}balance = \"random\"\n"));
        assert_eq!(e.line, Some(4), "{e}");
        let c = Config::parse(
            &format!("{up}tls = true\nbalance = \"least_connections\"\n"),
            "t.toml",
        )
        .unwrap();
        let u = &c.upstreams[0];
        assert!(u.tls.is_some() && u.balance == Balance::LeastConnections);
        let name = u.tls.as_ref().unwrap().name_for("[::1]:1935");
        assert_eq!(name.map(|n| n.to_str().into_owned()), Some("::1".into()));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("5").is_err());
    }
}
