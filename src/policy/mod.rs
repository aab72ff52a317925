//! Who may publish and play what: the decision on each `publish`, `play`,
//! `FCPublish` and `releaseStream` a client sends.
//!
//! The relay holds such a command back (with everything after it) until
//! [`StreamPolicy::on_command`] decides. The checks are pure functions of
//! the app's config and the request, plus the live-stream registry for
//! one-publisher-per-name and the per-app quotas. No I/O happens here.

pub mod glob;
pub mod session;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use subtle::ConstantTimeEq;

use crate::admit::prefix::in_any;
use crate::config::{App, AuthMode};
use crate::control::ContentBlock;
use crate::rtmp::amf0::Amf0Value;
use crate::rtmp::command::Command;
use crate::verdict::Reason;
pub use crate::verdict::{Denial, Kind};

/// What a client that sent a wrong key is told, in `key` and
/// `stream_key` modes alike.
const INVALID_KEY: &str = "invalid stream key";

/// Status codes of the refusal a client is sent.
pub const PUBLISH_BAD_NAME: &str = "NetStream.Publish.BadName";
pub const PLAY_FAILED: &str = "NetStream.Play.Failed";

/// A publish or play the app's HTTP auth service must decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthQuery {
    /// The form POSTed to the service, as nginx-rtmp's on_publish sends it.
    pub form: String,
    kind: Kind,
    /// The name checked and claimed: as sent, or the public name of a key.
    name: String,
    /// The name as the client sent it, without its query: a 3xx renames
    /// what the client calls this.
    sent: String,
    stream_id: u32,
    /// publish/play (which take a claim), not a prelude.
    claim: bool,
}

/// A stream name as sent, split from its query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamName {
    /// The name without `?query`: what is logged and matched.
    pub name: String,
    pub params: Vec<(String, String)>,
}

impl StreamName {
    pub fn parse(raw: &str) -> StreamName {
        let (name, query) = raw.split_once('?').unwrap_or((raw, ""));
        StreamName {
            name: name.to_string(),
            params: parse_query(query),
        }
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `a=1&b=2`, decoded as a form: `+` is a space, `%XX` a byte (a `%` not
/// followed by two hex digits stays as it is), invalid UTF-8 is replaced,
/// empty pairs are skipped and a pair without `=` has an empty value.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// Measures a publisher's byte rate against a cap. The rate is averaged
/// over [`RATE_WINDOW`], which allows a few seconds of burst; a session that
/// stays over the cap for [`OVER_CAP_LIMIT`] is refused.
#[derive(Debug)]
pub struct BitrateMeter {
    /// (second, bytes) for the last few whole seconds.
    seconds: std::collections::VecDeque<(u64, u64)>,
    over_since: Option<u64>,
}

/// Seconds the rate is averaged over.
pub const RATE_WINDOW: u64 = 3;
/// Seconds over the cap before the session is closed.
pub const OVER_CAP_LIMIT: u64 = 10;

impl Default for BitrateMeter {
    fn default() -> Self {
        BitrateMeter {
            seconds: std::collections::VecDeque::with_capacity(RATE_WINDOW as usize + 1),
            over_since: None,
        }
    }
}

impl BitrateMeter {
    /// Records `bytes` at `now_ms` (any monotonic milliseconds); true when
    /// the session has been over `cap` bits/s for too long.
    pub fn record(&mut self, bytes: u64, now_ms: u64, cap: u64) -> bool {
        let second = now_ms / 1000;
        match self.seconds.back_mut() {
            Some((s, b)) if *s == second => *b += bytes,
            _ => self.seconds.push_back((second, bytes)),
        }
        while self
            .seconds
            .front()
            .is_some_and(|(s, _)| s + RATE_WINDOW <= second)
        {
            self.seconds.pop_front();
        }
        let total: u64 = self.seconds.iter().map(|(_, b)| b).sum();
        // Average over the whole window once it is full, so a start-up
        // burst (keyframe, metadata) is not mistaken for the rate.
        let span = self
            .seconds
            .front()
            .map_or(1, |(s, _)| (second - s + 1).max(RATE_WINDOW));
        let over = total * 8 / span > cap;
        match (over, self.over_since) {
            (false, _) => {
                self.over_since = None;
                false
            }
            (true, None) => {
                self.over_since = Some(now_ms);
                false
            }
            (true, Some(since)) => now_ms.saturating_sub(since) >= OVER_CAP_LIMIT * 1000,
        }
    }
}

/// The fields of nginx-rtmp's on_publish/on_play forms: those the guard
/// sends, and those nginx-rtmp sends that the guard does not (`clientid`,
/// `type`, `start`, `duration`, `reset`), which a service written for
/// nginx-rtmp would also believe came from the server.
pub const GUARD_FIELDS: [&str; 13] = [
    "call", "addr", "clientid", "app", "flashver", "swfurl", "tcurl", "pageurl", "name", "type",
    "start", "duration", "reset",
];

/// Whether a client's query parameter could be read as one of
/// [`GUARD_FIELDS`] by some auth service, and so is not forwarded. Web
/// frameworks differ on names: PHP makes `call[]` and `call[x]` an array
/// named `call` and turns `.` and spaces into `_`, others fold case or
/// read `call.x` as an object. So the name is folded to ASCII lower case,
/// cut at the first `[`, `.` or NUL, and stripped of everything but
/// letters and digits before it is compared: `Call`, ` call`, `call[]`,
/// `call.x`, `client_id` and `tc-url` are all dropped.
pub fn is_guard_field(key: &str) -> bool {
    let head = key.split(['[', '.', '\0']).next().unwrap_or("");
    let folded: String = head
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    GUARD_FIELDS.contains(&folded.as_str())
}

fn denial(kind: Kind, stream_id: u32, stream: &str, reason: Reason, description: String) -> Denial {
    Denial {
        reason,
        description,
        code: match kind {
            Kind::Publish => PUBLISH_BAD_NAME,
            Kind::Play => PLAY_FAILED,
        },
        stream_id,
        stream: stream.to_string(),
    }
}

/// What the rest of a fleet holds, as this guard last heard it: kept
/// current by the fleet task, read by every publish and play. Plain data,
/// so deciding stays free of I/O. Empty without `[fleet]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetQuota {
    /// Places the other guards hold, per app: (publishers, viewers).
    pub remote: HashMap<String, (u32, u32)>,
    /// (app, stream) names the other guards publish.
    pub publishing: HashSet<(String, String)>,
    /// Refuse new publishes and plays (`fleet_unavailable`): Redis is
    /// unreachable and `on_redis_down = "deny_new"`.
    pub deny_new: bool,
}

/// This guard's own places, as the fleet task gives them to Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalClaims {
    /// Per app: (publishers, viewers).
    pub counts: HashMap<String, (u32, u32)>,
    /// (app, stream) names published through this guard.
    pub publishing: Vec<(String, String)>,
}

/// Live publishers and per-app counts, shared by all sessions.
#[derive(Debug, Default)]
pub struct Registry {
    state: Mutex<RegistryState>,
    /// The operator's content blocks.
    blocks: arc_swap::ArcSwap<Vec<ContentBlock>>,
    /// The rest of the fleet's places.
    fleet: arc_swap::ArcSwap<FleetQuota>,
    /// Bumped whenever a place is taken or given back, so the fleet task
    /// knows when to tell the others.
    generation: AtomicU64,
}

#[derive(Debug, Default)]
struct RegistryState {
    /// (app, stream) names being published.
    live: HashMap<(String, String), ()>,
    publishers: HashMap<String, u32>,
    viewers: HashMap<String, u32>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the operator's content blocks.
    pub fn set_blocks(&self, blocks: Vec<ContentBlock>) {
        self.blocks.store(Arc::new(blocks));
    }

    /// Whether the operator blocked `stream` in `app`.
    pub fn blocked(&self, app: &str, stream: &str) -> bool {
        self.blocks.load().iter().any(|b| b.matches(app, stream))
    }

    /// Replaces what the rest of the fleet holds.
    pub fn set_fleet(&self, fleet: FleetQuota) {
        self.fleet.store(Arc::new(fleet));
    }

    pub fn fleet(&self) -> Arc<FleetQuota> {
        self.fleet.load_full()
    }

    /// Changes whenever a place is taken or given back.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// This guard's places.
    pub fn local_claims(&self) -> LocalClaims {
        let s = self.lock();
        let mut counts: HashMap<String, (u32, u32)> = HashMap::new();
        for (app, n) in &s.publishers {
            counts.entry(app.clone()).or_default().0 = *n;
        }
        for (app, n) in &s.viewers {
            counts.entry(app.clone()).or_default().1 = *n;
        }
        counts.retain(|_, (p, v)| *p > 0 || *v > 0);
        LocalClaims {
            counts,
            publishing: s.live.keys().cloned().collect(),
        }
    }

    /// Current (publishers, viewers) of an app through this guard.
    pub fn counts(&self, app: &str) -> (u32, u32) {
        let s = self.lock();
        (
            s.publishers.get(app).copied().unwrap_or(0),
            s.viewers.get(app).copied().unwrap_or(0),
        )
    }
}

/// A publisher's or viewer's place, given back when the session ends.
#[derive(Debug)]
pub struct Claim {
    registry: Arc<Registry>,
    app: String,
    stream: Option<String>,
    kind: Kind,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.registry.generation.fetch_add(1, Ordering::Relaxed);
        let mut s = self.registry.lock();
        let counts = match self.kind {
            Kind::Publish => &mut s.publishers,
            Kind::Play => &mut s.viewers,
        };
        if let Some(n) = counts.get_mut(&self.app) {
            *n = n.saturating_sub(1);
        }
        if let Some(stream) = self.stream.take() {
            s.live.remove(&(self.app.clone(), stream));
        }
    }
}

/// A claim, and the message streams of this session that use it.
#[derive(Debug)]
struct Held {
    kind: Kind,
    name: String,
    stream_ids: Vec<u32>,
    _claim: Claim,
}

/// One session's stream decisions.
pub struct StreamPolicy {
    app: Arc<App>,
    registry: Arc<Registry>,
    client: IpAddr,
    page_url: Option<String>,
    swf_url: Option<String>,
    tc_url: Option<String>,
    flash_ver: Option<String>,
    /// Quota places this session holds, with the message streams that use
    /// each: one per published stream, one per distinct played name.
    claims: Vec<Held>,
    /// Streams this session publishes or plays, for the log and the API.
    pub streams: Vec<(Kind, String)>,
    publish_stream_id: u32,
    /// Message stream of the last publish or play allowed.
    last_stream_id: u32,
    /// The names the origin knows this session's streams by, where they
    /// are not the names the client sent: (role, name as sent without its
    /// query, name for the origin). A `stream_key` publish's key, or a
    /// name the auth service renamed with a 3xx.
    renames: Vec<(Kind, String, String)>,
}

/// Renames a session keeps, besides those of its open publishes; the
/// oldest go first.
const RENAMES_KEPT: usize = 32;

impl StreamPolicy {
    pub fn new(
        app: &Arc<App>,
        registry: Arc<Registry>,
        client: IpAddr,
        connect: &crate::rtmp::command::ConnectRequest,
    ) -> StreamPolicy {
        StreamPolicy {
            app: Arc::clone(app),
            registry,
            client,
            page_url: connect.page_url.clone(),
            swf_url: connect.swf_url.clone(),
            tc_url: connect.tc_url.clone(),
            flash_ver: connect.flash_ver.clone(),
            claims: Vec::new(),
            streams: Vec::new(),
            publish_stream_id: 0,
            last_stream_id: 0,
            renames: Vec::new(),
        }
    }

    /// The auth mode of a role in this app.
    fn mode(&self, kind: Kind) -> &AuthMode {
        match kind {
            Kind::Publish => &self.app.publish,
            Kind::Play => &self.app.play,
        }
    }

    /// Whether the names this session sends for `kind` are secrets: a
    /// `stream_key` publish names its key. Such a name is never logged;
    /// a refusal names the public name, once the key was found, or none.
    pub fn names_are_secret(&self, kind: Kind) -> bool {
        matches!(self.mode(kind), AuthMode::StreamKey { .. })
    }

    /// Whether `name` (without query) is a public name of this
    /// `stream_key` app: one a play, or a command that names a stream,
    /// may carry to the origin as it is. Never a key.
    pub fn is_public_name(&self, name: &str) -> bool {
        match &self.app.publish {
            AuthMode::StreamKey { index } => index.is_public(name),
            _ => false,
        }
    }

    /// The name the origin knows `raw` (a name as the client sent it,
    /// query included) by, for `kind`, when this session's decisions
    /// renamed it: the public name of a key, or a 3xx's `Location`.
    pub fn origin_name(&self, kind: Kind, raw: &str) -> Option<&str> {
        let sent = raw.split('?').next().unwrap_or(raw);
        self.renames
            .iter()
            .rev()
            .find(|(k, from, _)| *k == kind && from == sent)
            .map(|(_, _, to)| to.as_str())
            .filter(|to| !to.is_empty())
    }

    /// Whether `raw` (query included) must not reach the origin for
    /// `kind` under any name: the auth service's 3xx for it gave a
    /// `Location` the guard refused, so the name sent may be a secret.
    /// Even dry run, which lets the refusal through, does not forward it.
    pub fn withheld(&self, kind: Kind, raw: &str) -> bool {
        let sent = raw.split('?').next().unwrap_or(raw);
        self.renames
            .iter()
            .rev()
            .find(|(k, from, _)| *k == kind && from == sent)
            .is_some_and(|(_, _, to)| to.is_empty())
    }

    /// Marks the name a refused 3xx answered for as withheld (see
    /// [`StreamPolicy::withheld`]).
    pub fn withhold(&mut self, q: &AuthQuery) {
        self.set_rename(q.kind, &q.sent, Some(""));
    }

    /// Records that the origin knows `sent` (without query) as `to` for
    /// `kind`; `None`: by the name sent.
    fn set_rename(&mut self, kind: Kind, sent: &str, to: Option<&str>) {
        self.renames
            .retain(|(k, from, _)| !(*k == kind && from == sent));
        if let Some(to) = to {
            if self.renames.len() >= RENAMES_KEPT {
                // The oldest goes, unless it names an open publish: the
                // origin knows that stream by its new name until it ends,
                // and an `FCUnpublish` of the name sent must still say so.
                // (Open publishes are at most `max_streams`.)
                let open = |(k, _, to): &(Kind, String, String)| {
                    *k == Kind::Publish
                        && self
                            .claims
                            .iter()
                            .any(|h| h.kind == Kind::Publish && h.name == *to)
                };
                if let Some(i) = self.renames.iter().position(|r| !open(r)) {
                    self.renames.remove(i);
                }
            }
            self.renames.push((kind, sent.to_string(), to.to_string()));
        }
    }

    /// A held publish or play the auth service allowed under another
    /// name (a 3xx's `Location`, already checked as a name): the same
    /// query for `to`, which the operator's and the app's blocks must
    /// allow. From here on the origin, the claims, the logs and the
    /// operator see only `to`; the name sent is never shown.
    pub fn rename(&mut self, q: &AuthQuery, to: &str) -> Result<AuthQuery, Denial> {
        // Recorded first: dry run lets a block through, and the origin is
        // then sent `to`, never the name sent.
        self.set_rename(q.kind, &q.sent, Some(to));
        if self.blocked(to) {
            return Err(denial(
                q.kind,
                q.stream_id,
                to,
                Reason::ContentBlocked,
                "blocked content".into(),
            ));
        }
        Ok(AuthQuery {
            name: to.to_string(),
            ..q.clone()
        })
    }

    /// Whether the app's or the operator's blocks cover `name`.
    fn blocked(&self, name: &str) -> bool {
        glob::any(&self.app.blocked_streams, name) || self.registry.blocked(&self.app.name, name)
    }

    /// The app's publish bitrate cap (bits/s), once this session publishes.
    pub fn publish_bitrate_cap(&self) -> Option<u64> {
        self.app
            .max_publish_bitrate
            .filter(|_| self.streams.iter().any(|(k, _)| *k == Kind::Publish))
    }

    /// The refusal of a publisher that stayed over the cap.
    pub fn bitrate_denial(&self, cap: u64) -> Denial {
        let stream = self
            .streams
            .iter()
            .find(|(k, _)| *k == Kind::Publish)
            .map_or("", |(_, name)| name.as_str());
        let description = format!("publishing over {} kbit/s", cap / 1000);
        denial(
            Kind::Publish,
            self.publish_stream_id,
            stream,
            Reason::BitrateExceeded,
            description,
        )
    }

    /// Decides on a client command sent on message stream `stream_id`.
    /// Commands other than publish/play and their preludes pass.
    /// `Ok(Some(query))`: the app's HTTP auth service decides; call
    /// [`StreamPolicy::complete`] if it allows.
    /// `unix_now`: the time, for token expiry.
    pub fn on_command(
        &mut self,
        cmd: &Command,
        stream_id: u32,
        unix_now: u64,
    ) -> Result<Option<AuthQuery>, Denial> {
        let (kind, claim) = match cmd.name.as_str() {
            "publish" => (Kind::Publish, true),
            "play" => (Kind::Play, true),
            // Preludes of a publish: checked like it, but claim nothing.
            "FCPublish" | "releaseStream" => (Kind::Publish, false),
            _ => return Ok(None),
        };
        let raw = cmd
            .arguments
            .first()
            .and_then(Amf0Value::as_str)
            .unwrap_or("");
        self.decide(kind, raw, stream_id, claim, unix_now)
    }

    /// Decides on a publish or play of `raw` (the name as sent, query
    /// included) on message stream `stream_id`. `claim`: a publish or play
    /// itself, which takes a quota place; not a prelude.
    pub fn decide(
        &mut self,
        kind: Kind,
        raw: &str,
        stream_id: u32,
        claim: bool,
        unix_now: u64,
    ) -> Result<Option<AuthQuery>, Denial> {
        let sent = StreamName::parse(raw);
        // A `stream_key` publish names its key: from here on only the
        // public name it belongs to is checked, claimed and logged (none,
        // if it is no key). The origin is sent that name, even when dry
        // run lets a refusal through.
        let public = match self.mode(kind) {
            AuthMode::StreamKey { index } => {
                Some(index.public_name(&sent.name).map(str::to_string))
            }
            // A play in a `stream_key` app names a public name, or a key
            // this session published with (it plays the public name).
            // Any other name, another session's key as much as a random
            // string, is refused as a wrong key, naming no stream: the
            // keys are never consulted for a play, so a play is no oracle
            // for them, and what may be a key is never logged, claimed or
            // sent to the auth service.
            // Whatever the publish mode, a play of a name this session
            // published under another name (a key, a 3xx's renamed name)
            // plays that name: the name sent may be a secret.
            _ if kind == Kind::Play => match self.origin_name(Kind::Publish, &sent.name) {
                Some(public) => Some(Some(public.to_string())),
                None if !self.names_are_secret(Kind::Publish) => None,
                None if self.is_public_name(&sent.name) => None,
                None => {
                    return Err(denial(
                        kind,
                        stream_id,
                        "",
                        Reason::Unauthorized,
                        INVALID_KEY.into(),
                    ))
                }
            },
            _ => None,
        };
        // A rename is recorded once found; one is dropped only when a
        // later decision on the name succeeds without one (`complete`).
        if let Some(Some(to)) = &public {
            self.set_rename(kind, &sent.name, Some(to));
        }
        let name = match &public {
            Some(found) => found.clone().unwrap_or_default(),
            None => sent.name.clone(),
        };
        let ask = self
            .check(kind, &sent, &name, unix_now)
            .map_err(|(r, d)| denial(kind, stream_id, &name, r, d))?;
        let query = AuthQuery {
            form: if ask {
                self.form(kind, &name, &sent.params)
            } else {
                String::new()
            },
            kind,
            name,
            sent: sent.name,
            stream_id,
            claim,
        };
        if ask {
            return Ok(Some(query));
        }
        self.complete(&query)?;
        Ok(None)
    }

    /// Gives back the places message stream `stream_id` held: it was
    /// closed or deleted. A played name other streams of this session
    /// still play keeps its place.
    pub fn release(&mut self, stream_id: u32) {
        for held in &mut self.claims {
            held.stream_ids.retain(|&id| id != stream_id);
        }
        self.claims.retain(|h| !h.stream_ids.is_empty());
    }

    /// Gives back the publishing place of `name` (FCUnpublish).
    pub fn release_publish(&mut self, name: &str) {
        self.claims
            .retain(|h| !(h.kind == Kind::Publish && h.name == name));
    }

    /// The message stream of the session's last allowed publish or play.
    pub fn stream_id(&self) -> u32 {
        self.last_stream_id
    }

    /// Finishes an allowed publish or play: takes its name and quota slot.
    /// A session playing a name it already plays takes no second place.
    pub fn complete(&mut self, q: &AuthQuery) -> Result<(), Denial> {
        if !q.claim {
            self.settle_rename(q);
            return Ok(());
        }
        let playing = self
            .claims
            .iter_mut()
            .find(|h| q.kind == Kind::Play && h.kind == Kind::Play && h.name == q.name);
        match playing {
            Some(held) => held.stream_ids.push(q.stream_id),
            None => {
                let claim = self
                    .claim(q.kind, &q.name)
                    .map_err(|(r, d)| denial(q.kind, q.stream_id, &q.name, r, d))?;
                // Most sessions hold one place: room for exactly one more.
                self.claims.reserve_exact(1);
                self.claims.push(Held {
                    kind: q.kind,
                    name: q.name.clone(),
                    stream_ids: vec![q.stream_id],
                    _claim: claim,
                });
            }
        }
        self.settle_rename(q);
        if q.kind == Kind::Publish {
            self.publish_stream_id = q.stream_id;
        }
        self.last_stream_id = q.stream_id;
        self.streams.push((q.kind, q.name.clone()));
        Ok(())
    }

    /// A decision on `q` succeeded: if it kept the name sent, an earlier
    /// rename of that name (or a withheld 3xx) no longer holds. A refused
    /// decision leaves renames as they were.
    fn settle_rename(&mut self, q: &AuthQuery) {
        if q.name == q.sent {
            self.set_rename(q.kind, &q.sent, None);
        }
    }

    /// The refusal of a query the auth service denied or could not answer.
    pub fn refuse(q: &AuthQuery, reason: Reason, description: &str) -> Denial {
        denial(
            q.kind,
            q.stream_id,
            &q.name,
            reason,
            description.to_string(),
        )
    }

    /// nginx-rtmp's on_publish/on_play fields, then the stream's query
    /// arguments, less any that could pass for one of those fields (see
    /// [`is_guard_field`]): a client cannot send `?call=play&app=other`.
    fn form(&self, kind: Kind, name: &str, params: &[(String, String)]) -> String {
        let mut f = form_urlencoded::Serializer::new(String::new());
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        f.append_pair("call", kind.as_str())
            .append_pair("addr", &self.client.to_string())
            .append_pair("app", &self.app.name)
            .append_pair("name", name)
            .append_pair("tcurl", &opt(&self.tc_url))
            .append_pair("pageurl", &opt(&self.page_url))
            .append_pair("swfurl", &opt(&self.swf_url))
            .append_pair("flashver", &opt(&self.flash_ver));
        for (k, v) in params.iter().filter(|(k, _)| !is_guard_field(k)) {
            f.append_pair(k, v);
        }
        f.finish()
    }

    /// The stateless checks, in order: content blocks, addresses,
    /// referrers, then the app's auth mode. `name` is the stream's name
    /// for the checks: as `sent`, or in `stream_key` mode the public name
    /// of the key sent (empty if it is none). `Ok(true)`: ask the HTTP
    /// auth service.
    fn check(
        &self,
        kind: Kind,
        sent: &StreamName,
        name: &str,
        unix_now: u64,
    ) -> Result<bool, (Reason, String)> {
        let app = &self.app;
        if sent.name.is_empty() {
            return Err((Reason::Unauthorized, "missing stream name".into()));
        }
        if !name.is_empty() && self.blocked(name) {
            return Err((Reason::ContentBlocked, "blocked content".into()));
        }
        let (allow, deny, mode) = match kind {
            Kind::Publish => (&app.publish_allow, &app.publish_deny, &app.publish),
            Kind::Play => (&app.play_allow, &app.play_deny, &app.play),
        };
        if in_any(deny, self.client) || (!allow.is_empty() && !in_any(allow, self.client)) {
            return Err((Reason::ForbiddenIp, "not allowed from this address".into()));
        }
        if kind == Kind::Play && !app.referrers.is_empty() {
            let ok = [&self.page_url, &self.swf_url]
                .into_iter()
                .flatten()
                .any(|r| glob::any(&app.referrers, r));
            if !ok {
                return Err((Reason::BadReferrer, "referrer not allowed".into()));
            }
        }
        match mode {
            AuthMode::None => Ok(false),
            AuthMode::Http(_) => Ok(true),
            AuthMode::Deny => Err((Reason::Unauthorized, "not allowed here".into())),
            AuthMode::Key { keys } => {
                let expected = keys.get(&sent.name).map(|s| s.0.as_bytes());
                let given = sent.param("key").unwrap_or("").as_bytes();
                match expected {
                    Some(e) if bool::from(e.ct_eq(given)) => Ok(false),
                    _ => Err((Reason::Unauthorized, INVALID_KEY.into())),
                }
            }
            // `decide` looked the key up.
            AuthMode::StreamKey { .. } if !name.is_empty() => Ok(false),
            AuthMode::StreamKey { .. } => Err((Reason::Unauthorized, INVALID_KEY.into())),
            AuthMode::Token { secret } => token::verify(
                secret.0.as_bytes(),
                &app.name,
                &sent.name,
                &sent.params,
                kind,
                self.client,
                unix_now,
            )
            .map(|()| false)
            .map_err(|e| (Reason::Unauthorized, e.description().to_string())),
        }
    }

    /// Takes the publisher's name and a quota slot. In a fleet, the
    /// names and places the other guards hold count too.
    fn claim(&self, kind: Kind, stream: &str) -> Result<Claim, (Reason, String)> {
        let fleet = self.registry.fleet.load();
        if fleet.deny_new {
            return Err((
                Reason::FleetUnavailable,
                "the fleet's shared state is unreachable".into(),
            ));
        }
        let mut s = self.registry.lock();
        let app = self.app.name.clone();
        let (remote_publishers, remote_viewers) = fleet.remote.get(&app).copied().unwrap_or((0, 0));
        let (count, limit) = match kind {
            Kind::Publish => (
                s.publishers
                    .get(&app)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(remote_publishers),
                self.app.max_publishers,
            ),
            Kind::Play => (
                s.viewers
                    .get(&app)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(remote_viewers),
                self.app.max_viewers,
            ),
        };
        let key = (app.clone(), stream.to_string());
        if kind == Kind::Publish && (s.live.contains_key(&key) || fleet.publishing.contains(&key)) {
            return Err((
                Reason::StreamBusy,
                "stream is already being published".into(),
            ));
        }
        if count >= limit {
            return Err((
                Reason::QuotaExceeded,
                "too many sessions in this application".into(),
            ));
        }
        let counts = match kind {
            Kind::Publish => &mut s.publishers,
            Kind::Play => &mut s.viewers,
        };
        *counts.entry(app.clone()).or_insert(0) += 1;
        if kind == Kind::Publish {
            s.live.insert(key, ());
        }
        drop(s);
        self.registry.generation.fetch_add(1, Ordering::Relaxed);
        Ok(Claim {
            registry: self.registry.clone(),
            app,
            stream: (kind == Kind::Publish).then(|| stream.to_string()),
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::control::unix_now;

    fn app(tables: &str) -> Arc<App> {
        let text = format!(
            "[[upstream]]\nname = \"o\"\nservers = [\"h:1\"]\n[[app]]\nname = \"live\"\nupstream = \"o\"\n{tables}"
        );
        Config::parse(&text, "t.toml").unwrap().apps[0].clone()
    }

    fn cmd(name: &str, stream: &str) -> Command {
        Command {
            name: name.into(),
            transaction_id: 5.0,
            object: Amf0Value::Null,
            arguments: vec![Amf0Value::String(stream.into())],
        }
    }

    fn connect(page_url: Option<&str>) -> crate::rtmp::command::ConnectRequest {
        let mut properties = vec![
            ("app", "live"),
            ("tcUrl", "rtmp://h/live"),
            ("flashVer", "FMLE/3.0"),
        ];
        properties.extend(page_url.map(|p| ("pageUrl", p)));
        crate::rtmp::command::ConnectRequest::with(&properties).unwrap()
    }

    fn policy(app: &Arc<App>, registry: &Arc<Registry>, client: &str) -> StreamPolicy {
        StreamPolicy::new(
            app,
            registry.clone(),
            client.parse().unwrap(),
            &connect(None),
        )
    }

    #[test]
    fn keys_are_checked_and_never_echoed() {
        let a = app("publish = \"key\"\nkeys = { cam1 = \"s3cret\" }\n");
        let r = Arc::new(Registry::default());
        let mut p = policy(&a, &r, "192.0.2.1");
        let d = p
            .on_command(&cmd("publish", "cam1?key=wrong"), 1, unix_now())
            .unwrap_err();
        assert_eq!(
            (d.reason, d.code, d.stream_id),
            (Reason::Unauthorized, PUBLISH_BAD_NAME, 1)
        );
        assert_eq!(d.description, "invalid stream key");
        assert!(p
            .on_command(&cmd("publish", "cam1"), 1, unix_now())
            .is_err());
        assert!(p
            .on_command(&cmd("publish", "cam2?key=s3cret"), 1, unix_now())
            .is_err());
        assert_eq!(
            p.on_command(&cmd("publish", "cam1?key=s3cret"), 1, unix_now()),
            Ok(None)
        );
        assert_eq!(p.streams, vec![(Kind::Publish, "cam1".to_string())]);
    }

    const KEY: &str = "sk_live_9f8e7d6c5b4a";

    fn stream_key_app(extra: &str) -> Arc<App> {
        app(&format!(
            "publish = \"stream_key\"\nkeys = {{ cam7 = \"{KEY}\", cam8 = \"sk_other_00000000\" }}\n{extra}"
        ))
    }

    #[test]
    fn a_stream_key_publishes_as_its_public_name_and_the_key_is_never_shown() {
        let a = stream_key_app("");
        let r = Arc::new(Registry::default());
        let mut p = policy(&a, &r, "192.0.2.1");
        for prelude in ["releaseStream", "FCPublish"] {
            assert_eq!(p.on_command(&cmd(prelude, KEY), 0, unix_now()), Ok(None));
        }
        assert_eq!(
            p.on_command(
                &cmd("publish", &format!("{KEY}?bandwidthtest=true")),
                1,
                unix_now()
            ),
            Ok(None)
        );
        assert_eq!(p.streams, vec![(Kind::Publish, "cam7".to_string())]);
        assert_eq!(p.origin_name(Kind::Publish, KEY), Some("cam7"));
        assert_eq!(
            p.origin_name(Kind::Publish, &format!("{KEY}?x")),
            Some("cam7")
        );
        assert_eq!(p.origin_name(Kind::Play, KEY), None);
        assert_eq!(
            r.local_claims().publishing,
            vec![("live".to_string(), "cam7".to_string())]
        );
        // The publisher playing its own key plays the public name.
        assert_eq!(p.on_command(&cmd("play", KEY), 2, unix_now()), Ok(None));
        assert_eq!(p.streams[1], (Kind::Play, "cam7".to_string()));
        assert_eq!(p.origin_name(Kind::Play, KEY), Some("cam7"));
        // A viewer plays the public names only.
        let mut viewer = policy(&a, &r, "192.0.2.9");
        assert_eq!(
            viewer.on_command(&cmd("play", "cam8?x=1"), 1, unix_now()),
            Ok(None)
        );
        assert_eq!(viewer.origin_name(Kind::Play, "cam8"), None);
    }

    #[test]
    fn a_play_of_a_key_is_refused_like_any_unknown_name_naming_nothing() {
        let a = stream_key_app("");
        let keyed = app("publish = \"key\"\nplay = \"key\"\nkeys = { cam7 = \"s3cret\" }\n");
        let r = Arc::new(Registry::default());
        let in_key_mode = policy(&keyed, &r, "192.0.2.1")
            .on_command(&cmd("play", "cam7?key=wrong"), 1, unix_now())
            .unwrap_err();
        let mut publisher = policy(&a, &r, "192.0.2.1");
        publisher
            .on_command(&cmd("publish", KEY), 1, unix_now())
            .unwrap();
        // A valid key (published by another session), a random string,
        // a key with a query: the same answer, naming no stream.
        let mut viewer = policy(&a, &r, "192.0.2.9");
        let answers: Vec<Denial> = [KEY, "sk_live_0000000000", &format!("{KEY}?x=1"), "CAM7"]
            .into_iter()
            .map(|sent| {
                viewer
                    .on_command(&cmd("play", sent), 1, unix_now())
                    .unwrap_err()
            })
            .collect();
        for d in &answers {
            assert_eq!(
                (d.reason, d.code, d.description.as_str(), d.stream.as_str()),
                (
                    in_key_mode.reason,
                    in_key_mode.code,
                    in_key_mode.description.as_str(),
                    ""
                )
            );
        }
        assert!(viewer.streams.is_empty());
        assert_eq!(viewer.origin_name(Kind::Play, KEY), None);
        assert_eq!(r.counts("live"), (1, 0));
    }

    #[test]
    fn a_wrong_stream_key_is_refused_as_in_key_mode_naming_no_stream() {
        let a = stream_key_app("");
        let keyed = app("publish = \"key\"\nkeys = { cam7 = \"s3cret\" }\n");
        let r = Arc::new(Registry::default());
        let mut p = policy(&a, &r, "192.0.2.1");
        let in_key_mode = policy(&keyed, &r, "192.0.2.1")
            .on_command(&cmd("publish", "cam7?key=wrong"), 1, unix_now())
            .unwrap_err();
        for (c, sent) in [
            ("publish", "sk_live_9f8e7d6c5b4b"),
            ("publish", "cam7"),
            ("publish", &format!("cam7?key={KEY}")),
            ("FCPublish", "cam8"),
            ("releaseStream", "sk_live"),
        ] {
            let d = p.on_command(&cmd(c, sent), 1, unix_now()).unwrap_err();
            assert_eq!(
                (d.reason, d.code, d.description.as_str()),
                (
                    in_key_mode.reason,
                    in_key_mode.code,
                    in_key_mode.description.as_str()
                ),
                "{c} {sent}"
            );
            assert_eq!(d.stream, "", "{c} {sent}: a refusal names no stream");
            assert_eq!(p.origin_name(Kind::Publish, sent), None);
        }
        assert!(p.streams.is_empty());
        assert_eq!(r.counts("live"), (0, 0));
    }

    #[test]
    fn blocks_and_one_publisher_per_name_apply_to_the_public_name() {
        let a = stream_key_app("blocked_streams = [\"cam8\"]");
        let r = Arc::new(Registry::default());
        let mut first = policy(&a, &r, "192.0.2.1");
        first
            .on_command(&cmd("publish", KEY), 1, unix_now())
            .unwrap();
        let mut second = policy(&a, &r, "192.0.2.2");
        let d = second
            .on_command(&cmd("publish", KEY), 1, unix_now())
            .unwrap_err();
        assert_eq!((d.reason, d.stream.as_str()), (Reason::StreamBusy, "cam7"));
        // A viewer of the public name is a viewer of the key's stream.
        let mut viewer = policy(&a, &r, "192.0.2.3");
        assert_eq!(
            viewer.on_command(&cmd("play", "cam7"), 1, unix_now()),
            Ok(None)
        );
        let d = second
            .on_command(&cmd("publish", "sk_other_00000000"), 1, unix_now())
            .unwrap_err();
        assert_eq!(
            (d.reason, d.stream.as_str()),
            (Reason::ContentBlocked, "cam8")
        );
        r.set_blocks(vec![ContentBlock {
            app: "live".into(),
            stream: "cam*".into(),
            reason: "dmca".into(),
            created: 0,
            stamp: None,
        }]);
        drop(first);
        let d = second
            .on_command(&cmd("publish", KEY), 1, unix_now())
            .unwrap_err();
        assert_eq!(
            (d.reason, d.stream.as_str()),
            (Reason::ContentBlocked, "cam7")
        );
    }

    #[test]
    fn the_rename_of_an_open_publish_is_never_pushed_out() {
        let a = app(
            "publish = \"http\"\nplay = \"http\"\nhttp_auth = { url = \"http://127.0.0.1:1/\" }\n",
        );
        let r = Arc::new(Registry::default());
        let mut p = policy(&a, &r, "192.0.2.1");
        let q = p
            .decide(Kind::Publish, "secret1", 1, true, unix_now())
            .unwrap()
            .expect("a question");
        let q = p.rename(&q, "renamed1").unwrap();
        p.complete(&q).unwrap();
        for i in 0..3 * RENAMES_KEPT {
            let q = p
                .decide(Kind::Play, &format!("x{i}"), 2, false, unix_now())
                .unwrap()
                .expect("a question");
            let q = p.rename(&q, &format!("y{i}")).unwrap();
            p.complete(&q).unwrap();
        }
        assert_eq!(p.origin_name(Kind::Publish, "secret1"), Some("renamed1"));
        assert_eq!(
            p.origin_name(Kind::Play, "x0"),
            None,
            "the oldest others go"
        );
        assert_eq!(
            p.origin_name(Kind::Play, &format!("x{}", 3 * RENAMES_KEPT - 1)),
            Some(format!("y{}", 3 * RENAMES_KEPT - 1).as_str())
        );
        assert!(p.renames.len() <= RENAMES_KEPT);
        // Once the publish ends, its rename is one like the others.
        p.release(1);
        for i in 0..RENAMES_KEPT {
            let q = p
                .decide(Kind::Play, &format!("z{i}"), 2, false, unix_now())
                .unwrap()
                .expect("a question");
            let q = p.rename(&q, &format!("w{i}")).unwrap();
            p.complete(&q).unwrap();
        }
        assert_eq!(p.origin_name(Kind::Publish, "secret1"), None);
    }

    #[test]
    fn stream_key_config_rules() {
        let parse = |tables: &str| {
            Config::parse(
                &format!(
                    "[[upstream]]\nname = \"o\"\nservers = [\"h:1\"]\n\
                     [[app]]\nname = \"live\"\nupstream = \"o\"\n{tables}"
                ),
                "t.toml",
            )
        };
        let err = |tables: &str| parse(tables).unwrap_err().to_string();
        assert!(err("publish = \"stream_key\"\n").contains("needs keys"));
        let e = err(&format!(
            "publish = \"stream_key\"\nplay = \"key\"\nkeys = {{ cam7 = \"{KEY}\" }}\n"
        ));
        assert!(
            e.contains("t.toml:") && e.contains("play") && e.contains("secret") && !e.contains(KEY),
            "{e}"
        );
        assert!(err("play = \"stream_key\"\nkeys = { a = \"k\" }\n").contains("publish mode"));
        let e = err("publish = \"stream_key\"\nkeys = { a = \"sk_same_000000000\", b = \"sk_same_000000000\" }\n");
        assert!(
            e.contains("same key") && !e.contains("sk_same_000000000"),
            "{e}"
        );
        // Stream keys of at least 16 bytes; the error names no key.
        let e = err("publish = \"stream_key\"\nkeys = { cam7 = \"sk_short_key\" }\n");
        assert!(
            e.contains("t.toml:")
                && e.contains("keys")
                && e.contains("16 bytes")
                && !e.contains("sk_short_key"),
            "{e}"
        );
        // Inline public names are checked as a keys file's are.
        for bad in ["\"a/b\"", "\"a b\"", "\"a?b\"", "\"\"", "\"a=b\""] {
            let e = err(&format!(
                "publish = \"key\"\nkeys = {{ {bad} = \"{KEY}\" }}\n"
            ));
            assert!(e.contains("public name") && !e.contains(KEY), "{bad}: {e}");
        }
        let e = err(&format!(
            "publish = \"stream_key\"\nkeys = {{ {} = \"{KEY}\" }}\n",
            "n".repeat(300)
        ));
        assert!(e.contains("max_name_length") && !e.contains(KEY), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("live.keys");
        std::fs::write(&file, format!("{} = {KEY}\n", "n".repeat(300))).unwrap();
        let e = err(&format!(
            "publish = \"stream_key\"\nkeys_file = \"{}\"\n",
            file.display()
        ));
        assert!(
            e.contains("keys_file") && e.contains("max_name_length") && !e.contains(KEY),
            "{e}"
        );
        std::fs::write(&file, format!("cam7 = {KEY}\ncam8 = cam7\n")).unwrap();
        let e = err(&format!(
            "publish = \"stream_key\"\nkeys_file = \"{}\"\n",
            file.display()
        ));
        assert!(
            e.contains("keys_file") && e.contains("public name") && !e.contains(KEY),
            "{e}"
        );
        std::fs::write(&file, format!("cam7 = {KEY}\n")).unwrap();
        let ok = parse(&format!(
            "publish = \"stream_key\"\nkeys_file = \"{}\"\n",
            file.display()
        ))
        .unwrap();
        assert!(!format!("{:?}", ok.apps[0]).contains(KEY));
    }

    #[test]
    fn tokens_open_only_the_role_they_were_signed_for() {
        const SECRET: &str = "a-token-secret-of-some-length";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.secret");
        std::fs::write(&path, SECRET).unwrap();
        let a = app(&format!(
            "publish = \"token\"\nplay = \"token\"\ntoken_secret_file = \"{}\"\n",
            path.display()
        ));
        let r = Arc::new(Registry::default());
        let now = 1_800_000_000;
        let url = |role| {
            format!(
                "cam1?{}",
                token::sign(SECRET.as_bytes(), "live", "cam1", now + 60, None, role)
            )
        };
        let (publish_url, play_url) = (url(Kind::Publish), url(Kind::Play));

        // A viewer's URL publishes nothing, not even a prelude.
        let mut p = policy(&a, &r, "192.0.2.1");
        for c in ["publish", "FCPublish", "releaseStream"] {
            let d = p.on_command(&cmd(c, &play_url), 1, now).unwrap_err();
            assert_eq!(
                (d.reason, d.code, d.description.as_str()),
                (
                    Reason::Unauthorized,
                    PUBLISH_BAD_NAME,
                    "token issued for another role"
                ),
                "{c}"
            );
        }
        // A publisher's URL plays nothing.
        let d = p
            .on_command(&cmd("play", &publish_url), 1, now)
            .unwrap_err();
        assert_eq!((d.reason, d.code), (Reason::Unauthorized, PLAY_FAILED));
        // Neither does a URL whose role was rewritten.
        let forged = play_url.replace("role=play", "role=publish");
        let d = p.on_command(&cmd("publish", &forged), 1, now).unwrap_err();
        assert_eq!(
            (d.reason, d.description.as_str()),
            (Reason::Unauthorized, "invalid token")
        );
        assert!(p.streams.is_empty());
        assert_eq!(r.counts("live"), (0, 0));

        // Each opens its own role.
        assert_eq!(p.on_command(&cmd("play", &play_url), 1, now), Ok(None));
        assert_eq!(
            p.on_command(&cmd("publish", &publish_url), 1, now),
            Ok(None)
        );
        assert_eq!(
            p.streams,
            vec![
                (Kind::Play, "cam1".to_string()),
                (Kind::Publish, "cam1".to_string())
            ]
        );
    }

    #[test]
    fn client_parameters_cannot_override_the_fields_of_the_auth_form() {
        let a = app("publish = \"http\"\nplay = \"http\"\n\
             http_auth = { url = \"http://127.0.0.1:1/auth\" }\n");
        let r = Arc::new(Registry::default());
        let mut p = policy(&a, &r, "192.0.2.1");
        let hostile = "cam1?call=play&app=other&name=good&addr=10.0.0.1&clientid=7\
             &tcurl=rtmp://x/other&pageurl=p&swfurl=s&flashver=f&type=record\
             &Call=play&%20call=play&call%5B%5D=play&call.x=play&APP=other&client_id=1\
             &tc-url=x&name%00=good&start=0&duration=1&reset=1\
             &key=abc&application=kept&names=kept";
        for (c, role) in [("publish", "publish"), ("play", "play")] {
            let q = p
                .on_command(&cmd(c, hostile), 1, unix_now())
                .unwrap()
                .expect("asks the service");
            let form = parse_query(&q.form);
            let keys: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "call",
                    "addr",
                    "app",
                    "name",
                    "tcurl",
                    "pageurl",
                    "swfurl",
                    "flashver",
                    "key",
                    "application",
                    "names"
                ],
                "{}",
                q.form
            );
            let get = |k: &str| {
                form.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(get("call"), Some(role));
            assert_eq!(get("addr"), Some("192.0.2.1"));
            assert_eq!(get("app"), Some("live"));
            assert_eq!(get("name"), Some("cam1"));
            assert_eq!(get("tcurl"), Some("rtmp://h/live"));
            assert_eq!(get("key"), Some("abc"));
        }
    }

    #[test]
    fn guard_fields_are_recognised_however_spelled() {
        for k in [
            "call", "CALL", " call", "call[]", "call[0]", "call.x", "c_all", "name\0x", "tc_url",
            "clientId", "Type", "reset",
        ] {
            assert!(is_guard_field(k), "{k:?} passes");
        }
        for k in [
            "key",
            "token",
            "expires",
            "names",
            "application",
            "appx",
            "",
            "[call]",
        ] {
            assert!(!is_guard_field(k), "{k:?} dropped");
        }
    }

    #[test]
    fn publish_is_denied_by_default_and_play_allowed() {
        let a = app("");
        let r = Arc::new(Registry::default());
        let mut p = policy(&a, &r, "192.0.2.1");
        assert_eq!(
            p.on_command(&cmd("publish", "x"), 1, unix_now())
                .unwrap_err()
                .reason,
            Reason::Unauthorized
        );
        assert_eq!(
            p.on_command(&cmd("releaseStream", "x"), 0, unix_now())
                .unwrap_err()
                .reason,
            Reason::Unauthorized
        );
        assert_eq!(p.on_command(&cmd("play", "x"), 1, unix_now()), Ok(None));
        assert_eq!(
            p.on_command(&cmd("createStream", ""), 0, unix_now()),
            Ok(None)
        );
    }

    #[test]
    fn blocked_names_are_refused_for_both_roles_ignoring_the_query() {
        let a = app("publish = \"none\"\nblocked_streams = [\"pirated-*\"]\n");
        let r = Arc::new(Registry::default());
        let mut p = policy(&a, &r, "192.0.2.1");
        for c in ["publish", "play"] {
            let d = p
                .on_command(&cmd(c, "pirated-film?x=1"), 1, unix_now())
                .unwrap_err();
            assert_eq!(
                (d.reason, d.description.as_str()),
                (Reason::ContentBlocked, "blocked content")
            );
        }
        assert_eq!(
            p.on_command(&cmd("play", "Pirated-film"), 1, unix_now()),
            Ok(None)
        );
    }

    #[test]
    fn one_publisher_per_name_and_quotas() {
        let a = app("publish = \"none\"\nmax_viewers = 2\n");
        let r = Arc::new(Registry::default());
        let mut first = policy(&a, &r, "192.0.2.1");
        first
            .on_command(&cmd("publish", "cam"), 1, unix_now())
            .unwrap();
        let mut second = policy(&a, &r, "192.0.2.2");
        assert_eq!(
            second
                .on_command(&cmd("publish", "cam"), 1, unix_now())
                .unwrap_err()
                .reason,
            Reason::StreamBusy
        );
        let mut viewers: Vec<_> = (0..2).map(|_| policy(&a, &r, "192.0.2.3")).collect();
        for v in &mut viewers {
            v.on_command(&cmd("play", "cam"), 1, unix_now()).unwrap();
        }
        let mut third = policy(&a, &r, "192.0.2.3");
        assert_eq!(
            third
                .on_command(&cmd("play", "cam"), 1, unix_now())
                .unwrap_err()
                .reason,
            Reason::QuotaExceeded
        );
        assert_eq!(r.counts("live"), (1, 2));
        drop(first);
        drop(viewers);
        assert_eq!(r.counts("live"), (0, 0));
        assert_eq!(
            second.on_command(&cmd("publish", "cam"), 1, unix_now()),
            Ok(None)
        );
    }

    #[test]
    fn the_rest_of_the_fleet_counts_towards_quotas_and_names() {
        let a = app("publish = \"none\"\nmax_viewers = 2\n");
        let r = Arc::new(Registry::default());
        r.set_fleet(FleetQuota {
            remote: [("live".to_string(), (1, 1))].into(),
            publishing: [("live".to_string(), "cam".to_string())].into(),
            deny_new: false,
        });
        let mut p = policy(&a, &r, "192.0.2.1");
        let d = p
            .on_command(&cmd("publish", "cam"), 1, unix_now())
            .unwrap_err();
        assert_eq!(
            d.reason,
            Reason::StreamBusy,
            "published through another guard"
        );
        let before = r.generation();
        assert_eq!(
            p.on_command(&cmd("publish", "cam2"), 1, unix_now()),
            Ok(None)
        );
        assert_ne!(r.generation(), before, "a new place is news for the fleet");
        let mut viewer = policy(&a, &r, "192.0.2.2");
        assert_eq!(
            viewer.on_command(&cmd("play", "cam"), 1, unix_now()),
            Ok(None)
        );
        let mut third = policy(&a, &r, "192.0.2.3");
        assert_eq!(
            third
                .on_command(&cmd("play", "cam"), 1, unix_now())
                .unwrap_err()
                .reason,
            Reason::QuotaExceeded,
            "one viewer here and one elsewhere fill max_viewers = 2"
        );
        let claims = r.local_claims();
        assert_eq!(claims.counts.get("live"), Some(&(1, 1)));
        assert_eq!(
            claims.publishing,
            vec![("live".to_string(), "cam2".to_string())]
        );

        // Redis unreachable with on_redis_down = "deny_new".
        r.set_fleet(FleetQuota {
            deny_new: true,
            ..FleetQuota::default()
        });
        let d = third
            .on_command(&cmd("play", "cam"), 1, unix_now())
            .unwrap_err();
        assert_eq!(
            (d.reason, d.reason.default_ban_score()),
            (Reason::FleetUnavailable, 0)
        );
        // Local counts only once the fleet is forgotten.
        r.set_fleet(FleetQuota::default());
        assert_eq!(
            third.on_command(&cmd("play", "cam"), 1, unix_now()),
            Ok(None)
        );
    }

    #[test]
    fn address_rules_and_referrers() {
        let a = app(
            "publish = \"none\"\npublish_allow = [\"10.0.0.0/8\"]\nplay_deny = [\"192.0.2.66\"]\n\
             referrers = [\"https://www.example.com/*\"]\n",
        );
        let r = Arc::new(Registry::default());
        let mut outside = policy(&a, &r, "192.0.2.1");
        assert_eq!(
            outside
                .on_command(&cmd("publish", "cam"), 1, unix_now())
                .unwrap_err()
                .reason,
            Reason::ForbiddenIp
        );
        let mut inside = policy(&a, &r, "10.1.2.3");
        assert_eq!(
            inside.on_command(&cmd("publish", "cam"), 1, unix_now()),
            Ok(None)
        );
        let mut denied = StreamPolicy::new(
            &a,
            r.clone(),
            "192.0.2.66".parse().unwrap(),
            &connect(Some("https://www.example.com/p")),
        );
        assert_eq!(
            denied
                .on_command(&cmd("play", "cam"), 1, unix_now())
                .unwrap_err()
                .reason,
            Reason::ForbiddenIp
        );
        let mut no_ref = policy(&a, &r, "192.0.2.1");
        assert_eq!(
            no_ref
                .on_command(&cmd("play", "cam"), 1, unix_now())
                .unwrap_err()
                .reason,
            Reason::BadReferrer
        );
        let mut good = StreamPolicy::new(
            &a,
            r.clone(),
            "192.0.2.1".parse().unwrap(),
            &connect(Some("https://www.example.com/p")),
        );
        assert_eq!(
            good.on_command(&cmd("play", "cam"), 1, unix_now()),
            Ok(None)
        );
    }

    #[test]
    fn bitrate_meter_allows_bursts_and_closes_sustained_excess() {
        let cap = 2_000_000; // 2 Mbit/s = 250 kB/s
        let mut m = BitrateMeter::default();
        // A 1 MB burst in the first second, then 200 kB/s: under the cap.
        assert!(!m.record(1_000_000, 0, cap));
        for s in 1..60 {
            assert!(!m.record(200_000, s * 1000, cap), "closed at {s}s");
        }
        // 1 MB/s (8 Mbit/s) from t=60 s: closed once over for 10 s.
        let mut closed_at = None;
        for s in 60..90 {
            if m.record(1_000_000, s * 1000, cap) {
                closed_at = Some(s);
                break;
            }
        }
        let t = closed_at.expect("never closed");
        assert!((70..=73).contains(&t), "closed at {t}s");
    }

    #[test]
    fn query_strings_are_percent_decoded() {
        let n = StreamName::parse("cam1?key=a%2Bb&x=1+2&flag");
        assert_eq!(n.name, "cam1");
        assert_eq!(n.param("key"), Some("a+b"));
        assert_eq!(n.param("x"), Some("1 2"));
        assert_eq!(n.param("flag"), Some(""));
    }

    #[test]
    fn query_strings_decode_as_forms_do() {
        let q = parse_query("a=%zz&b=%4&c=x=y&&=v&d=%FF&e=%2b+%2B&f=%+1");
        let want = [
            ("a", "%zz"),
            ("b", "%4"),
            ("c", "x=y"),
            ("", "v"),
            ("d", "\u{FFFD}"),
            ("e", "+ +"),
            ("f", "% 1"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(q, want);
    }
}
