//! The file's shape, as serde reads it: every key the file may hold, with
//! its default, and nothing it may not (`deny_unknown_fields` everywhere).
//!
//! Values are parsed here (durations, addresses, CIDRs, bitrates), so a
//! malformed one is reported by serde with its line and key. What needs the
//! whole file (cross references, ranges) or the disk (secret files) is
//! checked by [`super::Config::parse`], which turns this into the validated
//! [`super::Config`]. Sections whose shape already is their meaning are
//! used by it as they are.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::secret::Secret;
use super::MESSAGE_SIZE_CAP;

/// The whole file.
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
    #[serde(default)]
    pub tls: Option<Tls>,
    #[serde(default)]
    pub fleet: Option<Fleet>,
}

/// `[fleet]`: several guards sharing remedies, automatic bans and quotas
/// through Redis. Off when the table is absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// `redis://[user:password@]host:port/db` or `rediss://` (TLS).
    pub redis: Secret,
    /// A file holding the Redis password, instead of one in the URL.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// This guard's name in the fleet; default: the host name.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default)]
    pub on_redis_down: OnRedisDown,
    /// How long a guard's heartbeat and quota claims outlive it.
    #[serde(default = "default_lease_ttl", deserialize_with = "duration")]
    pub lease_ttl: Duration,
}

fn default_key_prefix() -> String {
    "rtmp-guard:".to_string()
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

/// What a fleet guard does for new publishes and plays while Redis is
/// unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisDown {
    /// Decide on the last known remedies and local quota counts.
    #[default]
    Local,
    /// Refuse them (`fleet_unavailable`); connections are still admitted.
    DenyNew,
}

/// `[tls]`: RTMPS listeners, whose TLS the guard terminates. Off when the
/// table is absent. Validated, the certificate and key are read and the
/// paths resolved against the config file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(deserialize_with = "socket_addrs")]
    pub listen: Vec<SocketAddr>,
    /// PEM: the server certificate first, then its chain.
    pub cert_file: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The TLS handshake, from its first byte; always within
    /// `[server] handshake_timeout` of accept.
    #[serde(
        default = "default_tls_handshake_timeout",
        deserialize_with = "duration"
    )]
    pub handshake_timeout: Duration,
}

fn default_tls_handshake_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `[admin]`: the admin API. Off when the table is absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// A file holding the bearer token; required unless `listen` is loopback.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// `[state]`: where runtime bans, blocks and suspensions are kept.
/// Validated, `path` is resolved against the config file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub path: PathBuf,
}

/// `[audit]`: the append-only audit log. Validated, `path` is resolved
/// against the config file's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    pub path: PathBuf,
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
    /// A client that takes no byte for this long while data waits for it
    /// is closed (`slow_consumer`).
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    pub max_connections: usize,
    pub mode: Mode,
    /// On SIGTERM: how long live sessions may go on before they are closed.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// What becomes of the `tcUrl` in an origin's Enhanced RTMP
    /// `NetConnection.Connect.ReconnectRequest`.
    pub reconnect_tcurl: ReconnectTcUrl,
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
            write_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            mode: Mode::Enforce,
            drain_timeout: Duration::from_secs(30),
            reconnect_tcurl: ReconnectTcUrl::Rewrite,
        }
    }
}

/// What the guard does with the `tcUrl` of an origin's reconnect request,
/// so that it never leads a client around the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconnectTcUrl {
    /// Replace it with the `tcUrl` the client connected with.
    #[default]
    Rewrite,
    /// Remove it: the client reconnects where it connected before.
    Strip,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_chunk_size: u32,
    pub max_command_size: u32,
    pub max_message_size: u32,
    pub max_chunk_streams: usize,
    pub max_amf_depth: usize,
    /// Longest stream name, without its query, a client may publish or
    /// play (nginx-rtmp cuts names at 255 bytes).
    pub max_name_length: usize,
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
    /// `[bans.kernel]`: bans also enforced by nftables.
    pub kernel: KernelBans,
}

/// `[bans.kernel]`: bans and denies put in an nftables table the guard
/// owns, so a banned prefix's new connections never reach the process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelBans {
    pub enabled: bool,
    /// The table (family inet) the guard creates, takes over and deletes.
    pub table: String,
    pub action: KernelAction,
}

impl Default for KernelBans {
    fn default() -> Self {
        KernelBans {
            enabled: false,
            table: "rtmp_guard".to_string(),
            action: KernelAction::Reset,
        }
    }
}

/// What the kernel does with a new connection from a banned prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelAction {
    /// Answer the SYN with a TCP reset: the client fails at once.
    #[default]
    Reset,
    /// Drop the SYN: the client retries until its own timeout.
    Drop,
}

impl Default for Bans {
    fn default() -> Self {
        Bans {
            auto: true,
            threshold: 10,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(600),
            scores: BTreeMap::new(),
            kernel: KernelBans::default(),
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
            max_name_length: 255,
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
    /// Speak RTMPS to the servers.
    #[serde(default)]
    pub tls: bool,
    /// The name the servers' certificates must carry; default: the host
    /// of each server address.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// PEM CA certificates the servers' certificates must chain to;
    /// default: the Mozilla root set (webpki-roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How new sessions are spread over the servers that are up.
    #[serde(default)]
    pub balance: Balance,
    /// How often each server is checked; "0s": never (active checks off).
    #[serde(
        default = "default_health_check_interval",
        deserialize_with = "duration"
    )]
    pub health_check_interval: Duration,
    /// TCP connect and RTMP handshake (S0+S1) within this, or the check fails.
    #[serde(
        default = "default_health_check_timeout",
        deserialize_with = "duration"
    )]
    pub health_check_timeout: Duration,
    /// Consecutive failed checks or connects before a server is down.
    #[serde(default = "default_threshold")]
    pub fail_threshold: u32,
    /// Consecutive good checks before a down server is up again.
    #[serde(default = "default_threshold")]
    pub rise_threshold: u32,
}

/// How an upstream picks a server for a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each server in turn.
    #[default]
    RoundRobin,
    /// The server relaying the fewest sessions through this guard.
    LeastConnections,
}

fn default_upstream_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_health_check_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_health_check_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_threshold() -> u32 {
    2
}

/// `[[app]]`, as written: the auth modes by name, with the keys, secret and
/// auth service they may need beside them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub name: String,
    pub upstream: String,
    /// Who may publish: none | key | stream_key | token | http | deny.
    /// Default: deny.
    #[serde(default = "default_publish")]
    pub publish: AuthMode,
    /// Who may play: none | key | token | http | deny. Default: none.
    #[serde(default)]
    pub play: AuthMode,
    /// Stream keys by stream name, for `key` and `stream_key` modes.
    #[serde(default)]
    pub keys: BTreeMap<String, Secret>,
    /// A file of `stream = key` lines, merged into `keys` at load.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// The HMAC secret for `token` mode, read from this file at load.
    #[serde(default)]
    pub token_secret_file: Option<PathBuf>,
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

/// How a publish or play is authorised, by the name the file gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone (still subject to address rules, blocks and quotas).
    #[default]
    None,
    /// `name?key=SECRET` must match the stream's key.
    Key,
    /// The stream name a publisher sends is the secret key; the stream is
    /// published under the public name the keys give it. Publish only.
    #[serde(rename = "stream_key")]
    StreamKey,
    /// `name?expires=UNIX[&ip=ADDR]&role=ROLE&token=HEX`, an HMAC-SHA256
    /// signature for one role.
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

fn bitrate<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(de)?;
    parse_bitrate(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A value in the file, or sent to the admin API, that does not parse;
/// the text says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

/// "20Mbit", "500kbit", "1.5Gbit" or a plain number of bits per second.
pub fn parse_bitrate(text: &str) -> Result<u64, BadValue> {
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
        _ => Err(BadValue(format!(
            "invalid bitrate {t:?}; use a unit, like \"20Mbit\" or \"500kbit\""
        ))),
    }
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Parses "500ms", "5s", "10m", "1h" (and combinations humantime accepts).
pub fn parse_duration(text: &str) -> Result<Duration, BadValue> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        BadValue(format!(
            "invalid duration {text:?} ({e}); use a unit, like \"5s\" or \"10m\""
        ))
    })
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
pub fn parse_cidr(text: &str) -> Result<IpNet, BadValue> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            BadValue(format!(
                "{text:?} is not a CIDR like \"203.0.113.0/24\" or an IP address"
            ))
        })
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

fn parse_socket_addr(text: &str) -> Result<SocketAddr, BadValue> {
    text.parse().map_err(|_| {
        BadValue(format!(
            "{text:?} is not an IP address and port, like \"0.0.0.0:1935\""
        ))
    })
}
