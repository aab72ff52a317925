//! Fleet mode: several guards behind one address share the operator's
//! remedies, their automatic bans and the apps' quotas through Redis.
//!
//! One task per guard ([`run`]) holds two Redis connections: a connection
//! manager for commands (it reconnects by itself) and a subscription to the
//! change channel. Everything else in the guard stays as it is: the admin
//! API changes the local remedies and hands the change to this task
//! ([`handle::FleetHandle`]); the stream policy decides on plain data this
//! task keeps current ([`crate::policy::FleetQuota`]). So a guard whose
//! Redis is gone keeps relaying and admitting on its last known state.
//!
//! Keys, under `key_prefix` (default `rtmp-guard:`):
//!
//! ```text
//! remedies            hash  remedy key (JSON) -> its last change (JSON)
//! remedies:stamps     hash  remedy key -> that change's stamp, "%020d|guard"
//! changes             channel: remedy changes, automatic bans, session calls
//! autoban:CIDR        string (JSON), PX = the ban's time left
//! guard:NAME          string (JSON heartbeat: sessions, quota places), PX = lease_ttl
//! guards              zset  guard name -> last heartbeat (ms)
//! lease:LEN:APP/NAME  string: the guard publishing APP/NAME, PX = lease_ttl
//! reply:GUARD:N       list  answers to a session list or kick, expire in 10 s
//! ```
//!
//! A change to a remedy is written by a script that keeps it only if its
//! stamp is later than the one stored (last writer wins, ties broken by
//! guard name), and publishes it in the same step. A guard that connects
//! or reconnects reads every change, takes those later than its own, and
//! writes back those of its own that are later than Redis's: both
//! directions, including what was changed while Redis was away.

pub mod handle;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipnet::IpNet;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, Script};
use serde::{Deserialize, Serialize};

use crate::config::{Fleet, OnRedisDown};
use crate::control::changes::{self, Applied, Change, RemedyKey};
use crate::control::sessions::Kick;
use crate::control::{remedies, unix, unix_now};
use crate::guard::Guard;
use crate::policy::{FleetQuota, Kind};
use crate::verdict::Reason;
use handle::{FleetHandle, FleetSession, GuardInfo, Outgoing};

/// Every Redis call's deadline, and the connection's.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts to reach Redis.
const RETRY: Duration = Duration::from_secs(1);
/// How often "Redis is down" is logged again while it stays down.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// A full re-read of the remedies, in case a published change was missed.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// How often the local quota places are checked for a change to share.
const CLAIMS_POLL: Duration = Duration::from_millis(100);
/// How long a session list or kick waits for the guards' answers.
const REPLY_WAIT: Duration = Duration::from_millis(1500);
/// Heartbeats older than this are dropped from the `guards` set.
const FORGET_GUARD_MS: u64 = 3_600_000;
/// Most keys one SCAN of automatic bans reads; the loop is bounded.
const SCAN_ROUNDS: usize = 10_000;

/// Keeps a change if it is later than the stored one, and publishes it.
/// KEYS: remedies, stamps, channel. ARGV: field, stamp, change, message.
const SET_IF_LATER: &str = r"
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur and cur >= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[4])
return 1
";

/// Forgets an ended change, unless a later one replaced it meanwhile.
/// KEYS: remedies, stamps. ARGV: field, stamp.
const FORGET_IF_SAME: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
";

/// Takes or renews a publishing lease; 0 if another guard holds it.
/// KEYS: lease. ARGV: guard, ttl (ms).
const LEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Gives back a lease this guard holds. KEYS: lease. ARGV: guard.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The names of the fleet's keys.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    pub fn remedies(&self) -> String {
        format!("{}remedies", self.prefix)
    }
    pub fn stamps(&self) -> String {
        format!("{}remedies:stamps", self.prefix)
    }
    pub fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }
    pub fn auto_ban(&self, cidr: &IpNet) -> String {
        format!("{}autoban:{cidr}", self.prefix)
    }
    fn auto_ban_prefix(&self) -> String {
        format!("{}autoban:", self.prefix)
    }
    fn auto_ban_pattern(&self) -> String {
        format!("{}*", self.auto_ban_prefix())
    }
    pub fn guards(&self) -> String {
        format!("{}guards", self.prefix)
    }
    pub fn guard(&self, name: &str) -> String {
        format!("{}guard:{name}", self.prefix)
    }
    /// The app's length first, so no (app, name) pair reads as another.
    pub fn lease(&self, app: &str, stream: &str) -> String {
        format!("{}lease:{}:{app}/{stream}", self.prefix, app.len())
    }
    fn reply(&self, guard: &str, n: u64) -> String {
        format!("{}reply:{guard}:{n}", self.prefix)
    }
    /// Whether `key` is a reply list: a guard answers into no other key.
    fn is_reply(&self, key: &str) -> bool {
        key.strip_prefix(&self.prefix)
            .is_some_and(|k| k.starts_with("reply:"))
    }
}

/// What travels on the change channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Message {
    Change {
        change: Change,
    },
    AutoBan {
        cidr: IpNet,
        reason: String,
        at_ms: u64,
        ttl_ms: u64,
        guard: String,
    },
    ListSessions {
        reply: String,
    },
    Kick {
        guard: String,
        id: u64,
        reason: String,
        reply: String,
    },
}

/// An automatic ban as kept in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredAutoBan {
    reason: String,
    at_ms: u64,
    guard: String,
}

/// Why the link to Redis ended.
#[derive(Debug)]
struct Down(String);

impl From<redis::RedisError> for Down {
    fn from(e: redis::RedisError) -> Down {
        Down(e.to_string())
    }
}

impl From<tokio::time::error::Elapsed> for Down {
    fn from(_: tokio::time::error::Elapsed) -> Down {
        Down(format!("no answer within {TIMEOUT:?}"))
    }
}

type Step<T = ()> = Result<T, Down>;

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs `f` within [`TIMEOUT`].
async fn bounded<T>(f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Step<T> {
    Ok(tokio::time::timeout(TIMEOUT, f).await??)
}

/// The Redis client for `[fleet]`, with the password file's password.
fn client(fleet: &Fleet) -> redis::RedisResult<redis::Client> {
    let mut info = fleet.redis.0.as_str().into_connection_info()?;
    if let Some(password) = &fleet.password {
        let settings = info.redis_settings().clone().set_password(&password.0);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info)
}

/// This guard's live sessions, as the fleet lists them.
pub fn local_sessions(guard: &Guard, name: &str) -> Vec<FleetSession> {
    guard
        .sessions
        .list()
        .iter()
        .map(|s| {
            let (up, down) = s.bytes();
            let streams = s.streams();
            let first = streams.first();
            FleetSession {
                id: format!("{name}:{}", s.id),
                guard: name.to_string(),
                client: s.client.to_string(),
                app: s.app.clone(),
                stream: first.map(|(_, n)| n.clone()),
                role: first.map(|(k, _)| k.as_str().to_string()),
                bytes_client_to_upstream: up,
                bytes_upstream_to_client: down,
                started: unix(s.started),
            }
        })
        .collect()
}

/// Runs the guard's side of the fleet until the process ends. Does
/// nothing without `[fleet]`.
pub async fn run(guard: Arc<Guard>) {
    let queue = guard
        .fleet_queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let config = guard.config();
    let (Some(queue), Some(fleet), Some(_)) = (queue, config.fleet.clone(), guard.fleet.as_ref())
    else {
        return;
    };
    guard.metrics.enable_fleet();
    guard.metrics.fleet_redis_up.set(0);
    let mut link = Link {
        keys: Keys::new(&fleet.key_prefix),
        fleet,
        guard,
        queue,
        last_warn: None,
        leases: HashSet::new(),
        generation: u64::MAX,
        replies: 0,
        scripts: Scripts {
            set_if_later: Script::new(SET_IF_LATER),
            forget_if_same: Script::new(FORGET_IF_SAME),
            lease: Script::new(LEASE),
            release: Script::new(RELEASE),
        },
    };
    link.run().await;
}

struct Scripts {
    set_if_later: Script,
    forget_if_same: Script,
    lease: Script,
    release: Script,
}

/// The fleet task's state.
struct Link {
    guard: Arc<Guard>,
    fleet: Fleet,
    keys: Keys,
    queue: tokio::sync::mpsc::Receiver<Outgoing>,
    /// When "Redis is down" was last logged, while it is down.
    last_warn: Option<Instant>,
    /// Publishing leases this guard holds.
    leases: HashSet<(String, String)>,
    /// The registry's generation last shared.
    generation: u64,
    /// Reply lists made so far, for unique names.
    replies: u64,
    scripts: Scripts,
}

impl Link {
    fn handle(&self) -> &FleetHandle {
        // `run` starts only with a handle.
        self.guard
            .fleet
            .as_ref()
            .unwrap_or_else(|| unreachable!("the fleet task runs only with [fleet]"))
    }

    fn me(&self) -> String {
        self.fleet.name.clone()
    }

    async fn run(&mut self) {
        loop {
            let why = match client(&self.fleet) {
                Ok(c) => self.connected(&c).await,
                Err(e) => Down(e.to_string()),
            };
            self.down(&why.0);
            let until = tokio::time::Instant::now() + RETRY;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    out = self.queue.recv() => match out {
                        None => return,
                        Some(out) => offline(out),
                    },
                }
            }
        }
    }

    /// Redis answered again: the gauge, the log, the quota view.
    fn up(&mut self) {
        if !self.handle().is_up() {
            tracing::info!(
                event = "fleet_redis_up",
                guard = %self.fleet.name,
                "fleet: Redis reachable; remedies re-synced"
            );
        }
        self.handle().set_up(true);
        self.guard.metrics.fleet_redis_up.set(1);
        self.last_warn = None;
    }

    /// Redis is unreachable: decide on the last known remedies and the
    /// local quota counts (or refuse new publishes and plays with
    /// `deny_new`). Logged once, then every [`WARN_EVERY`].
    fn down(&mut self, why: &str) {
        let was_up = self.handle().is_up();
        self.handle().set_up(false);
        self.guard.metrics.fleet_redis_up.set(0);
        self.handle().set_peers(Vec::new());
        self.guard.streams.set_fleet(FleetQuota {
            deny_new: self.fleet.on_redis_down == OnRedisDown::DenyNew,
            ..FleetQuota::default()
        });
        self.leases.clear();
        self.generation = u64::MAX;
        let now = Instant::now();
        if was_up
            || self
                .last_warn
                .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            self.last_warn = Some(now);
            let mode = match self.fleet.on_redis_down {
                OnRedisDown::Local => "local",
                OnRedisDown::DenyNew => "deny_new",
            };
            tracing::warn!(
                event = "fleet_redis_down",
                guard = %self.fleet.name,
                error = %why,
                on_redis_down = mode,
                "fleet: Redis unreachable; running on the last known remedies and local quota counts"
            );
        }
    }

    /// One connection's life: subscribe, re-sync, then serve until Redis
    /// fails. Returns why it ended.
    async fn connected(&mut self, client: &redis::Client) -> Down {
        match self.serve(client).await {
            Ok(()) => Down("the guard is stopping".into()),
            Err(down) => down,
        }
    }

    async fn serve(&mut self, client: &redis::Client) -> Step {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = bounded(client.get_connection_manager_with_config(config)).await?;
        let mut pubsub = bounded(client.get_async_pubsub()).await?;
        bounded(pubsub.subscribe(self.keys.channel())).await?;
        let mut messages = pubsub.into_on_message();
        // Subscribed first, then read: no change falls in between.
        self.resync(&mut conn).await?;
        self.heartbeat(&mut conn, true).await?;
        self.up();
        let period =
            (self.fleet.lease_ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(1));
        let mut beat = tokio::time::interval(period);
        let mut poll = tokio::time::interval(CLAIMS_POLL);
        let mut last_resync = Instant::now();
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(msg) => self.on_message(&mut conn, &msg).await?,
                    None => return Err(Down("the subscription ended".into())),
                },
                out = self.queue.recv() => match out {
                    Some(out) => self.on_outgoing(&mut conn, out).await?,
                    None => return Ok(()),
                },
                _ = beat.tick() => {
                    self.heartbeat(&mut conn, true).await?;
                    if last_resync.elapsed() >= RESYNC_EVERY {
                        self.resync(&mut conn).await?;
                        last_resync = Instant::now();
                    }
                }
                _ = poll.tick() => {
                    if self.guard.streams.generation() != self.generation {
                        self.heartbeat(&mut conn, false).await?;
                    }
                }
            }
        }
    }

    /// A message from the channel. A malformed one is logged and skipped.
    async fn on_message(&mut self, conn: &mut ConnectionManager, msg: &redis::Msg) -> Step {
        let message = match serde_json::from_slice::<Message>(msg.get_payload_bytes()) {
            Ok(m) => m,
            Err(e) => {
                bad_entry("channel message", &e.to_string());
                return Ok(());
            }
        };
        let me = self.me();
        match message {
            Message::Change { change } => {
                if change.stamp.guard != me {
                    self.take(vec![change]).await;
                }
            }
            Message::AutoBan {
                cidr,
                reason,
                at_ms,
                ttl_ms,
                guard,
            } => {
                if guard != me {
                    self.take_auto_ban(cidr, &reason, at_ms, ttl_ms);
                }
            }
            Message::ListSessions { reply } => {
                let list = local_sessions(&self.guard, &me);
                let text = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
                self.answer(conn, &reply, text).await?;
            }
            Message::Kick {
                guard,
                id,
                reason,
                reply,
            } => {
                if guard == me {
                    let found = remedies::kick(&self.guard, id, &reason);
                    if found {
                        tracing::info!(
                            event = "fleet_kick",
                            id,
                            "session ended at another guard's request"
                        );
                    }
                    self.answer(conn, &reply, found.to_string()).await?;
                }
            }
        }
        Ok(())
    }

    async fn answer(&self, conn: &mut ConnectionManager, reply: &str, text: String) -> Step {
        if !self.keys.is_reply(reply) {
            bad_entry("reply key", reply);
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.rpush(reply, text).ignore().expire(reply, 10).ignore();
        bounded(pipe.query_async::<()>(conn)).await
    }

    /// Something the guard asked for.
    async fn on_outgoing(&mut self, conn: &mut ConnectionManager, out: Outgoing) -> Step {
        match out {
            Outgoing::Change(change, reply) => {
                let pushed = self.push(conn, std::slice::from_ref(&change)).await;
                if let Some(reply) = reply {
                    let _ = reply.send(pushed.is_ok());
                }
                pushed
            }
            Outgoing::AutoBan {
                prefix,
                reason,
                ttl,
            } => {
                self.push_auto_ban(conn, prefix, reason.as_str(), now_ms(), ttl, false)
                    .await
            }
            Outgoing::ListSessions(reply) => {
                self.replies += 1;
                let key = self.keys.reply(&self.fleet.name, self.replies);
                let expected = self.handle().peers().len() + 1;
                let message = Message::ListSessions { reply: key.clone() };
                let conn = conn.clone();
                let channel = self.keys.channel();
                tokio::spawn(async move {
                    let answers = call(conn, &channel, &message, &key, expected).await;
                    let list = answers.map(|texts| {
                        texts
                            .iter()
                            .filter_map(|t| match serde_json::from_str::<Vec<FleetSession>>(t) {
                                Ok(l) => Some(l),
                                Err(e) => {
                                    bad_entry("session list", &e.to_string());
                                    None
                                }
                            })
                            .flatten()
                            .collect()
                    });
                    let _ = reply.send(list);
                });
                Ok(())
            }
            Outgoing::Kick {
                guard,
                id,
                reason,
                reply,
            } => {
                self.replies += 1;
                let key = self.keys.reply(&self.fleet.name, self.replies);
                let message = Message::Kick {
                    guard,
                    id,
                    reason,
                    reply: key.clone(),
                };
                let conn = conn.clone();
                let channel = self.keys.channel();
                tokio::spawn(async move {
                    let answers = call(conn, &channel, &message, &key, 1).await;
                    let found = answers.and_then(|a| a.first().map(|t| t == "true"));
                    let _ = reply.send(found);
                });
                Ok(())
            }
        }
    }

    /// Applies changes from Redis or another guard; unfit or ended ones
    /// are logged and skipped.
    async fn take(&self, list: Vec<Change>) {
        let now = unix_now();
        let fit: Vec<Change> = list
            .into_iter()
            .filter(|c| match c.check() {
                Ok(()) => !c.expired(now),
                Err(why) => {
                    bad_entry("remedy change", &why.to_string());
                    false
                }
            })
            .collect();
        if fit.is_empty() {
            return;
        }
        match remedies::apply_changes(&self.guard, &fit).await {
            Ok((applied, ended)) => {
                for (change, applied) in fit.iter().zip(applied) {
                    let what = match applied {
                        Applied::Stale => continue,
                        Applied::Set(_) => "set",
                        Applied::Lifted(_) => "lifted",
                    };
                    tracing::info!(
                        event = "fleet_change",
                        change = what,
                        key = %change.key.field(),
                        by = %change.stamp.guard,
                        "fleet: remedy changed by another guard"
                    );
                }
                if ended > 0 {
                    tracing::info!(event = "fleet_sessions_ended", sessions = ended);
                }
            }
            Err(e) => {
                tracing::error!(event = "fleet_change_failed", error = %e, "fleet: change not applied here");
            }
        }
    }

    /// Applies another guard's automatic ban, unless it is too broad or an
    /// unban made after it lifted it.
    fn take_auto_ban(&self, cidr: IpNet, reason: &str, at_ms: u64, ttl_ms: u64) {
        if changes::too_broad(&cidr) {
            bad_entry(
                "automatic ban",
                &format!("{cidr} is broader than /8 or /32"),
            );
            return;
        }
        let Some(reason) = Reason::from_name(reason) else {
            bad_entry("automatic ban", &format!("unknown reason {reason:?}"));
            return;
        };
        let remedies = self.guard.remedies.load();
        let key = RemedyKey::Ban { cidr };
        let lifted_later = remedies.entry(&key).is_none()
            && remedies.stamp_of(&key).is_some_and(|s| s.at_ms >= at_ms);
        if lifted_later || ttl_ms == 0 {
            return;
        }
        let until = std::time::Instant::now() + Duration::from_millis(ttl_ms);
        self.guard.admission.bans().ban(cidr, until, reason);
        // Into the kernel too, as a ban made here is (report.rs).
        self.guard.kernel.changed();
    }

    /// Writes changes to Redis, each kept only if later than Redis's.
    async fn push(&self, conn: &mut ConnectionManager, list: &[Change]) -> Step {
        for change in list {
            let message = Message::Change {
                change: change.clone(),
            };
            let (Ok(text), Ok(message)) = (
                serde_json::to_string(change),
                serde_json::to_string(&message),
            ) else {
                continue;
            };
            let mut call = self.scripts.set_if_later.prepare_invoke();
            call.key(self.keys.remedies())
                .key(self.keys.stamps())
                .key(self.keys.channel())
                .arg(change.key.field())
                .arg(change.stamp.sortable())
                .arg(text)
                .arg(message);
            bounded(call.invoke_async::<i64>(conn)).await?;
            if let (RemedyKey::Ban { cidr }, None) = (&change.key, &change.remedy) {
                bounded(conn.del::<_, ()>(self.keys.auto_ban(cidr))).await?;
            }
        }
        Ok(())
    }

    /// Shares an automatic ban; with `only_new`, only if Redis has none
    /// on that prefix.
    async fn push_auto_ban(
        &self,
        conn: &mut ConnectionManager,
        cidr: IpNet,
        reason: &str,
        at_ms: u64,
        ttl: Duration,
        only_new: bool,
    ) -> Step {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let stored = StoredAutoBan {
            reason: reason.to_string(),
            at_ms,
            guard: self.me(),
        };
        let message = Message::AutoBan {
            cidr,
            reason: reason.to_string(),
            at_ms,
            ttl_ms,
            guard: self.me(),
        };
        let (Ok(stored), Ok(message)) = (
            serde_json::to_string(&stored),
            serde_json::to_string(&message),
        ) else {
            return Ok(());
        };
        let mut set = redis::cmd("SET");
        set.arg(self.keys.auto_ban(&cidr))
            .arg(stored)
            .arg("PX")
            .arg(ttl_ms);
        if only_new {
            set.arg("NX");
        }
        let mut pipe = redis::pipe();
        pipe.add_command(set).ignore();
        pipe.publish(self.keys.channel(), message).ignore();
        bounded(pipe.query_async::<()>(conn)).await
    }

    /// Both directions: takes Redis's later changes and automatic bans,
    /// gives Redis this guard's later ones, and forgets ended ones.
    async fn resync(&mut self, conn: &mut ConnectionManager) -> Step {
        let stored: HashMap<String, String> = bounded(conn.hgetall(self.keys.remedies())).await?;
        let now = unix_now();
        let mut remote: HashMap<String, Change> = HashMap::new();
        for (field, text) in stored {
            match serde_json::from_str::<Change>(&text) {
                Ok(c) if c.key.field() == field => {
                    remote.insert(field, c);
                }
                Ok(_) => bad_entry("remedy", &format!("{field}: stored under another key")),
                Err(e) => bad_entry("remedy", &format!("{field}: {e}")),
            }
        }
        for (field, c) in &remote {
            if c.expired(now) {
                let mut call = self.scripts.forget_if_same.prepare_invoke();
                call.key(self.keys.remedies())
                    .key(self.keys.stamps())
                    .arg(field)
                    .arg(c.stamp.sortable());
                bounded(call.invoke_async::<i64>(conn)).await?;
            }
        }
        self.take(remote.values().cloned().collect()).await;
        let mine: Vec<Change> = self
            .guard
            .remedies
            .load()
            .changes(now)
            .into_iter()
            .filter(|c| c.check().is_ok())
            .filter(|c| remote.get(&c.key.field()).is_none_or(|r| r.stamp < c.stamp))
            .collect();
        self.push(conn, &mine).await?;
        self.resync_auto_bans(conn).await
    }

    async fn resync_auto_bans(&mut self, conn: &mut ConnectionManager) -> Step {
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        for _ in 0..SCAN_ROUNDS {
            let (next, found): (u64, Vec<String>) = bounded(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(self.keys.auto_ban_pattern())
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(conn),
            )
            .await?;
            keys.extend(found);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let prefix_len = self.keys.auto_ban_prefix().len();
        let mut remote: HashSet<IpNet> = HashSet::new();
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.get(key).pttl(key);
            }
            let values: Vec<redis::Value> = bounded(pipe.query_async(conn)).await?;
            for (key, pair) in chunk.iter().zip(values.chunks(2)) {
                let Some(cidr) = key.get(prefix_len..).and_then(|c| c.parse::<IpNet>().ok()) else {
                    bad_entry("automatic ban", key);
                    continue;
                };
                let (Some(text), Some(ttl)) = (
                    pair.first()
                        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()),
                    pair.get(1)
                        .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok()),
                ) else {
                    continue;
                };
                let Ok(ban) = serde_json::from_str::<StoredAutoBan>(&text) else {
                    bad_entry("automatic ban", key);
                    continue;
                };
                remote.insert(cidr);
                if let Ok(ttl) = u64::try_from(ttl) {
                    self.take_auto_ban(cidr, &ban.reason, ban.at_ms, ttl);
                }
            }
        }
        let now = std::time::Instant::now();
        for (prefix, ban) in self.guard.admission.bans().list() {
            if ban.until > now && !remote.contains(&prefix) {
                let left = ban.until.duration_since(now);
                self.push_auto_ban(conn, prefix, ban.reason.as_str(), now_ms(), left, true)
                    .await?;
            }
        }
        Ok(())
    }

    /// Writes this guard's heartbeat and quota places, takes the leases of
    /// names it began publishing and gives back those it stopped; with
    /// `full` (the periodic beat, not a change of places), also renews
    /// every lease and reads the other guards' heartbeats. A lease another
    /// guard holds ends the local publisher of that name (`stream_busy`).
    async fn heartbeat(&mut self, conn: &mut ConnectionManager, full: bool) -> Step {
        let generation = self.guard.streams.generation();
        let claims = self.guard.streams.local_claims();
        let ttl_ms = u64::try_from(self.fleet.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let me = self.me();
        let current: HashSet<(String, String)> = claims.publishing.iter().cloned().collect();
        let mut lost = Vec::new();
        for (app, stream) in &current {
            if !full && self.leases.contains(&(app.clone(), stream.clone())) {
                continue;
            }
            let mut call = self.scripts.lease.prepare_invoke();
            call.key(self.keys.lease(app, stream)).arg(&me).arg(ttl_ms);
            let held: i64 = bounded(call.invoke_async(conn)).await?;
            if held == 0 {
                lost.push((app.clone(), stream.clone()));
            }
        }
        for (app, stream) in self.leases.difference(&current) {
            let mut call = self.scripts.release.prepare_invoke();
            call.key(self.keys.lease(app, stream)).arg(&me);
            bounded(call.invoke_async::<i64>(conn)).await?;
        }
        for (app, stream) in &lost {
            let kick = Kick {
                reason: Reason::StreamBusy,
                description: "stream is already being published through another guard".into(),
            };
            let n = self.guard.sessions.kick_where(
                |s| {
                    s.app == *app
                        && s.streams()
                            .iter()
                            .any(|(k, n)| *k == Kind::Publish && n == stream)
                },
                &kick,
            );
            tracing::warn!(event = "fleet_stream_busy", app = %app, stream = %stream, sessions = n, "fleet: another guard holds this publishing lease");
        }
        self.leases = current.into_iter().filter(|n| !lost.contains(n)).collect();
        let now = now_ms();
        let info = GuardInfo {
            name: me.clone(),
            at_ms: now,
            sessions: self.guard.sessions.len() as u64,
            counts: claims.counts.into_iter().collect::<BTreeMap<_, _>>(),
            publishing: self.leases.iter().cloned().collect(),
        };
        let text = serde_json::to_string(&info).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.guard(&me))
            .arg(text)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .zadd(self.keys.guards(), &me, now)
            .ignore()
            .zrembyscore(
                self.keys.guards(),
                "-inf",
                now.saturating_sub(FORGET_GUARD_MS),
            )
            .ignore()
            .zrange(self.keys.guards(), 0, -1);
        let (names,): (Vec<String>,) = bounded(pipe.query_async(conn)).await?;
        self.generation = generation;
        if !full {
            return Ok(());
        }
        let others: Vec<String> = names.into_iter().filter(|n| *n != me).collect();
        let mut peers = Vec::new();
        if !others.is_empty() {
            let keys: Vec<String> = others.iter().map(|n| self.keys.guard(n)).collect();
            let texts: Vec<Option<String>> = bounded(conn.mget(keys)).await?;
            for (name, text) in others.iter().zip(texts) {
                let Some(text) = text else { continue };
                match serde_json::from_str::<GuardInfo>(&text) {
                    Ok(info) if info.name == *name => peers.push(info),
                    Ok(_) => bad_entry("heartbeat", name),
                    Err(e) => bad_entry("heartbeat", &format!("{name}: {e}")),
                }
            }
        }
        let mut quota = FleetQuota::default();
        for peer in &peers {
            for (app, (p, v)) in &peer.counts {
                let entry = quota.remote.entry(app.clone()).or_default();
                entry.0 = entry.0.saturating_add(*p);
                entry.1 = entry.1.saturating_add(*v);
            }
            quota.publishing.extend(peer.publishing.iter().cloned());
        }
        self.guard.streams.set_fleet(quota);
        self.handle().set_peers(peers);
        Ok(())
    }
}

/// Publishes a call to the guards and collects up to `expected` answers
/// from its reply list within [`REPLY_WAIT`]; `None` if Redis failed.
async fn call(
    mut conn: ConnectionManager,
    channel: &str,
    message: &Message,
    reply: &str,
    expected: usize,
) -> Option<Vec<String>> {
    let text = serde_json::to_string(message).ok()?;
    bounded(conn.publish::<_, _, ()>(channel, text))
        .await
        .ok()?;
    let deadline = tokio::time::Instant::now() + REPLY_WAIT;
    let mut answers: Vec<String> = Vec::new();
    while tokio::time::Instant::now() < deadline {
        answers = bounded(conn.lrange(reply, 0, -1)).await.ok()?;
        if answers.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = bounded(conn.del::<_, ()>(reply)).await;
    Some(answers)
}

/// Answers what the guard asks while Redis is unreachable.
fn offline(out: Outgoing) {
    match out {
        Outgoing::Change(_, Some(reply)) => {
            let _ = reply.send(false);
        }
        // Shared at the next re-sync, from the local remedies and bans.
        Outgoing::Change(_, None) | Outgoing::AutoBan { .. } => {}
        Outgoing::ListSessions(reply) => {
            let _ = reply.send(None);
        }
        Outgoing::Kick { reply, .. } => {
            let _ = reply.send(None);
        }
    }
}

/// Logs an entry from Redis that cannot be used; it is skipped.
fn bad_entry(what: &str, detail: &str) {
    tracing::warn!(
        event = "fleet_bad_entry",
        what,
        detail = %crate::logging::cut(detail),
        "fleet: unusable entry from Redis skipped"
    );
}
