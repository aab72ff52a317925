//! The admin API: JSON over HTTP, for the operator's remedies, reloads and
//! health checks. Every `/api/*` call needs the bearer token when one is
//! configured; every mutation writes an audit line.
//!
//! ```text
//! GET    /                            the status page (no data, no token; see status_page)
//! GET    /healthz                     alive
//! GET    /readyz                      listening on a valid config, not draining
//! GET    /api/v1/sessions             live sessions; ?scope=fleet: every guard's
//! DELETE /api/v1/sessions/{id}        kick one; in a fleet, GUARD:ID of any guard
//! GET    /api/v1/fleet                the guards alive, with their session counts
//! GET    /api/v1/bans                 operator and automatic bans
//! POST   /api/v1/bans                 {"cidr", "duration": "1h" | null, "reason", "force"}
//! DELETE /api/v1/bans/{cidr}          the '/' URL-encoded as %2F
//! GET    /api/v1/blocks
//! POST   /api/v1/blocks               {"app", "stream": glob, "reason"}
//! DELETE /api/v1/blocks               {"app", "stream"}
//! GET    /api/v1/apps
//! POST   /api/v1/apps/{app}/suspend   {"reason", "terminate": true}
//! POST   /api/v1/apps/{app}/resume
//! GET    /api/v1/upstreams
//! GET    /api/v1/refusals?window=15m  refusals per reason per 10 s, oldest first
//! POST   /api/v1/upstreams/{name}/servers/{addr}/drain
//! POST   /api/v1/upstreams/{name}/servers/{addr}/undrain
//! POST   /api/v1/reload
//! ```
//!
//! The API is for operators' tools and for the guard's own status page
//! ([`status_page`], same origin, same token), never for another web page,
//! and it defends itself against one (a page on the operator's machine must not be able
//! to ban `0.0.0.0/0` through a loopback API without a token):
//!
//! - **Host.** Every request's `Host` header must name this listener
//!   ([`host_allowed`]), or get 421 Misdirected Request. A DNS rebinding
//!   attack reaches the API under the attacker's own name, so it fails here.
//! - **Content type.** Every state-changing request (anything but GET, HEAD
//!   and OPTIONS), even one with an empty body, must carry
//!   `Content-Type: application/json`, or get 415. A browser sends that
//!   cross-origin only after a CORS preflight, and the API grants none.
//! - **Token.** Whether the API needs a token, and where it listens, are
//!   fixed at start ([`Access`]): a reload may rotate the token file's
//!   contents, never remove it (`lifecycle::reload` refuses that).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::control::{remedies, unix};
use crate::guard::Guard;
use crate::refusals;

pub mod status_page;

type Shared = State<Arc<Guard>>;

/// What the API's protection rests on, fixed when it starts: a reload
/// changes neither.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The address the listener is bound to.
    pub bound: SocketAddr,
    /// Whether every `/api/*` call needs the bearer token: whether the
    /// config it started with named a `token_file`.
    pub token_required: bool,
}

/// Serves the admin API on an already-bound listener. `token_required`:
/// whether the config the guard started with named a `token_file`.
pub async fn serve(listener: tokio::net::TcpListener, guard: Arc<Guard>, token_required: bool) {
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "admin API: cannot read its listening address");
            return;
        }
    };
    let access = Access {
        bound,
        token_required,
    };
    if let Err(e) = axum::serve(listener, router(guard, access)).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

pub fn router(guard: Arc<Guard>, access: Access) -> Router {
    let auth = Auth {
        guard: guard.clone(),
        required: access.token_required,
    };
    let api = Router::new()
        .route("/sessions", get(sessions))
        .route("/fleet", get(fleet))
        .route("/sessions/:id", delete(kick))
        .route("/bans", get(bans).post(add_ban))
        .route("/bans/:cidr", delete(lift_ban))
        .route("/blocks", get(blocks).post(add_block).delete(lift_block))
        .route("/apps", get(apps))
        .route("/apps/:app/suspend", post(suspend))
        .route("/apps/:app/resume", post(resume))
        .route("/upstreams", get(upstreams))
        .route("/refusals", get(refusal_history))
        .route("/upstreams/:name/servers/:addr/drain", post(drain))
        .route("/upstreams/:name/servers/:addr/undrain", post(undrain))
        .route("/reload", post(reload))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn(json_only))
        .layer(middleware::from_fn_with_state(auth, authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(status_page::routes())
        .nest("/api/v1", api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(guard)
        .layer(middleware::from_fn_with_state(access, check_host))
        .layer(middleware::from_fn(status_page::security_headers))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A refused request: its status and message.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Refuses, with 421, a request whose `Host` (and absolute URI, if it has
/// one) does not name this listener.
async fn check_host(State(access): State<Access>, request: Request, next: Next) -> Response {
    let host = single(request.headers(), header::HOST);
    let uri_ok = request
        .uri()
        .authority()
        .is_none_or(|a| host_allowed(a.as_str(), access.bound));
    if !(uri_ok && host.is_some_and(|h| host_allowed(h, access.bound))) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "the Host header must name this admin listener ({}) or localhost",
                access.bound
            ),
        );
    }
    next.run(request).await
}

/// The value of a header sent exactly once, as text.
fn single(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    let mut values = headers.get_all(name).into_iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    }
}

/// Whether a `Host` value (`host[:port]`) names the listener bound to
/// `bound`. Accepted: `localhost`; an IP literal that is the bound
/// address; for a loopback listener, any loopback literal (`127.0.0.1`,
/// `[::1]`); for a wildcard listener (`0.0.0.0`, `[::]`), which answers on
/// every address the machine has, including ones behind NAT, any IP
/// literal. Never any other name: that is what DNS rebinding needs. The
/// port is not checked: it plays no part in rebinding, and port forwards
/// (`ssh -L`, `kubectl port-forward`, Docker's `-p`) change it.
pub fn host_allowed(host: &str, bound: SocketAddr) -> bool {
    let Some(name) = host_part(host) else {
        return false;
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let Ok(ip) = name.parse::<IpAddr>() else {
        return false;
    };
    let (ip, listener) = (ip.to_canonical(), bound.ip().to_canonical());
    if listener.is_unspecified() {
        true
    } else if listener.is_loopback() {
        ip.is_loopback()
    } else {
        ip == listener
    }
}

/// The host of `host[:port]`, brackets taken off an IPv6 literal; `None`
/// if the value is not of that form.
fn host_part(value: &str) -> Option<&str> {
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            let port = if after.is_empty() {
                ""
            } else {
                after.strip_prefix(':')?
            };
            (v6, port)
        }
        None => value.split_once(':').unwrap_or((value, "")),
    };
    let port_ok = port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && (port.is_empty() || port.parse::<u16>().is_ok());
    (port_ok && !host.is_empty()).then_some(host)
}

/// Refuses, with 415, a state-changing request that does not say its body
/// is JSON, whether or not it has one.
async fn json_only(request: Request, next: Next) -> Response {
    let m = request.method();
    let reads_only = *m == Method::GET || *m == Method::HEAD || *m == Method::OPTIONS;
    let json = single(request.headers(), header::CONTENT_TYPE)
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !reads_only && !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a {m} must carry Content-Type: application/json, even with an empty body"),
        );
    }
    next.run(request).await
}

/// The token check's state: the guard (whose config holds the token, so a
/// reload rotates it), and whether one is required at all.
#[derive(Clone)]
struct Auth {
    guard: Arc<Guard>,
    required: bool,
}

/// Checks the bearer token, in constant time, against the token the
/// current config read from `token_file`. When the API started with a
/// token, a config without one (which a reload cannot install) admits
/// nobody rather than everybody.
async fn authorize(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let guard = &auth.guard;
    let config = guard.config();
    let expected = config.admin.as_ref().and_then(|a| a.token.as_ref());
    if auth.required || expected.is_some() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok = expected.is_some_and(|e| bool::from(given.as_bytes().ct_eq(e.0.as_bytes())));
        if !ok {
            guard.metrics.admin_action("denied");
            guard
                .audit
                .action("auth", request.uri().path(), "", "denied")
                .await;
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    next.run(request).await
}

async fn ready(State(guard): Shared) -> Response {
    if guard.ready.load(Ordering::SeqCst) {
        "ready\n".into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready (starting or draining)",
        )
    }
}

/// Parses a JSON body; an empty body reads as `{}`.
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(text)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

/// Audits and counts a mutation, and turns its result into a response.
async fn done(
    guard: &Guard,
    action: &'static str,
    target: &str,
    reason: &str,
    result: Result<Value, remedies::RemedyError>,
) -> Response {
    match result {
        Ok(v) => {
            guard.metrics.admin_action(action);
            guard.audit.action(action, target, reason, "ok").await;
            tracing::info!(event = "admin", action, target, reason, "admin action");
            Json(v).into_response()
        }
        Err(why) => {
            guard.audit.action(action, target, reason, "failed").await;
            error(StatusCode::INTERNAL_SERVER_ERROR, why.to_string())
        }
    }
}

async fn sessions(State(guard): Shared, uri: axum::http::Uri) -> Result<Response, ApiError> {
    let scope = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned());
    let fleet_wide = match scope.as_deref() {
        None | Some("local") => false,
        Some("fleet") => true,
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("scope must be \"local\" or \"fleet\", not {other:?}"),
            ))
        }
    };
    let Some(fleet) = &guard.fleet else {
        if fleet_wide {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "scope=fleet needs [fleet] in the config".into(),
            ));
        }
        return Ok(local_sessions(&guard));
    };
    if !fleet_wide {
        let list = crate::fleet::local_sessions(&guard, &fleet.name);
        return Ok(Json(json!({ "sessions": list })).into_response());
    }
    match fleet.sessions().await {
        Some(mut list) => {
            list.sort_by(|a, b| (&a.guard, a.started).cmp(&(&b.guard, b.started)));
            Ok(Json(json!({ "sessions": list })).into_response())
        }
        None => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the fleet's Redis is unreachable".into(),
        )),
    }
}

/// The sessions of this guard, outside a fleet: numeric ids.
fn local_sessions(guard: &Guard) -> Response {
    let list: Vec<Value> = guard
        .sessions
        .list()
        .iter()
        .map(|s| {
            let (up, down) = s.bytes();
            let streams = s.streams();
            let (role, stream) = streams
                .first()
                .map_or((None, None), |(k, n)| (Some(k.as_str()), Some(n.clone())));
            json!({
                "id": s.id,
                "client": s.client.to_string(),
                "app": s.app,
                "stream": stream,
                "role": role,
                "bytes_client_to_upstream": up,
                "bytes_upstream_to_client": down,
                "started": unix(s.started),
            })
        })
        .collect();
    Json(json!({ "sessions": list })).into_response()
}

/// The guards of the fleet alive now (heartbeat within `lease_ttl`).
async fn fleet(State(guard): Shared) -> Result<Response, ApiError> {
    let Some(fleet) = &guard.fleet else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "fleet mode is off ([fleet] is not configured)".into(),
        ));
    };
    let me = json!({
        "name": fleet.name,
        "self": true,
        "sessions": guard.sessions.len(),
        "counts": guard.streams.local_claims().counts,
    });
    let mut guards = vec![me];
    guards.extend(fleet.peers().into_iter().map(|p| {
        json!({
            "name": p.name,
            "self": false,
            "sessions": p.sessions,
            "counts": p.counts,
            "heartbeat_ms": p.at_ms,
        })
    }));
    Ok(Json(json!({ "redis_up": fleet.is_up(), "guards": guards })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KickBody {
    #[serde(default)]
    reason: String,
}

async fn kick(
    State(guard): Shared,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let b: KickBody = body(&bytes)?;
    let why = if b.reason.is_empty() {
        "session ended by the operator".to_string()
    } else {
        format!("session ended by the operator: {}", b.reason)
    };
    // In a fleet, GUARD:ID names a session of any guard.
    let (at, number) = match (id.rsplit_once(':'), &guard.fleet) {
        (Some((at, n)), Some(f)) if at != f.name => (Some(at), n),
        (Some((_, n)), Some(_)) => (None, n),
        _ => (None, id.as_str()),
    };
    let Ok(number) = number.parse::<u64>() else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "session id must be a number, or GUARD:NUMBER in a fleet".into(),
        ));
    };
    let found = match (at, &guard.fleet) {
        (Some(at), Some(fleet)) => match fleet.kick(at, number, &why).await {
            Some(found) => found,
            None => {
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("guard {at:?} did not answer (gone, or Redis unreachable)"),
                ))
            }
        },
        _ => remedies::kick(&guard, number, &why),
    };
    if !found {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no session {id}")));
    }
    Ok(done(&guard, "kick", &id, &b.reason, Ok(json!({ "kicked": id }))).await)
}

async fn bans(State(guard): Shared) -> Response {
    let now = std::time::Instant::now();
    let unix_now = crate::control::unix_now();
    let mut list: Vec<Value> = guard
        .remedies
        .load()
        .bans
        .iter()
        .map(|b| {
            json!({
                "cidr": b.cidr.to_string(),
                "source": "operator",
                "reason": b.reason,
                "until": b.until,
                "created": b.created,
            })
        })
        .collect();
    for (prefix, ban) in guard.admission.bans().list() {
        if ban.until <= now {
            continue;
        }
        list.push(json!({
            "cidr": prefix.to_string(),
            "source": "automatic",
            "reason": ban.reason.as_str(),
            "until": unix_now + ban.until.duration_since(now).as_secs(),
        }));
    }
    Json(json!({ "bans": list })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    cidr: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    reason: String,
    /// Allows a ban broader than /8 (IPv4) or /32 (IPv6). In a fleet such
    /// a ban stays on this guard.
    #[serde(default)]
    force: bool,
}

fn parse_net(text: &str) -> Result<IpNet, ApiError> {
    crate::config::parse_cidr(text).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.0))
}

async fn add_ban(State(guard): Shared, bytes: Bytes) -> Result<Response, ApiError> {
    let b: BanBody = body(&bytes)?;
    let cidr = parse_net(&b.cidr)?;
    if crate::control::changes::too_broad(&cidr.trunc()) && !b.force {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "{} is broader than /8 (IPv4) or /32 (IPv6); send \"force\": true to ban it anyway",
                cidr.trunc()
            ),
        ));
    }
    let duration = match b.duration.as_deref().map(crate::config::parse_duration) {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(_) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "duration must be like \"1h\", or null for no end".into(),
            ))
        }
    };
    let result = remedies::ban(&guard, cidr, duration, &b.reason)
        .await
        .map(|ended| json!({ "banned": cidr.trunc().to_string(), "sessions_ended": ended }));
    Ok(done(&guard, "ban", &cidr.to_string(), &b.reason, result).await)
}

async fn lift_ban(State(guard): Shared, Path(cidr): Path<String>) -> Result<Response, ApiError> {
    let cidr = parse_net(&cidr)?;
    match remedies::unban(&guard, cidr).await {
        Ok(false) => Err(ApiError(StatusCode::NOT_FOUND, format!("no ban on {cidr}"))),
        result => Ok(done(
            &guard,
            "unban",
            &cidr.to_string(),
            "",
            result.map(|_| json!({ "lifted": cidr.trunc().to_string() })),
        )
        .await),
    }
}

async fn blocks(State(guard): Shared) -> Response {
    Json(json!({ "blocks": guard.remedies.load().blocks })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    app: String,
    stream: String,
    #[serde(default)]
    reason: String,
}

async fn add_block(State(guard): Shared, bytes: Bytes) -> Result<Response, ApiError> {
    let b: BlockBody = body(&bytes)?;
    if b.app.is_empty() || b.stream.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "app and stream must not be empty".into(),
        ));
    }
    let target = format!("{}/{}", b.app, b.stream);
    let result = remedies::block(&guard, &b.app, &b.stream, &b.reason)
        .await
        .map(|ended| json!({ "blocked": target, "sessions_ended": ended }));
    Ok(done(&guard, "block", &target, &b.reason, result).await)
}

async fn lift_block(State(guard): Shared, bytes: Bytes) -> Result<Response, ApiError> {
    let b: BlockBody = body(&bytes)?;
    let target = format!("{}/{}", b.app, b.stream);
    match remedies::unblock(&guard, &b.app, &b.stream).await {
        Ok(false) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no block on {target}"),
        )),
        result => Ok(done(
            &guard,
            "unblock",
            &target,
            &b.reason,
            result.map(|_| json!({ "lifted": target })),
        )
        .await),
    }
}

async fn apps(State(guard): Shared) -> Response {
    let config = guard.config();
    let remedies = guard.remedies.load();
    let live = guard.sessions.list();
    let list: Vec<Value> = config
        .apps
        .iter()
        .map(|a| {
            let (publishers, viewers) = guard.streams.counts(&a.name);
            let sessions = live.iter().filter(|s| s.app == a.name).count();
            let suspension = remedies.suspension(&a.name);
            json!({
                "name": a.name,
                "state": if suspension.is_some() { "suspended" } else { "active" },
                "suspended_reason": suspension.map(|s| s.reason.clone()),
                "sessions": sessions,
                "publishers": publishers,
                "viewers": viewers,
            })
        })
        .collect();
    Json(json!({ "apps": list })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendBody {
    #[serde(default)]
    reason: String,
    #[serde(default = "yes")]
    terminate: bool,
}

fn yes() -> bool {
    true
}

fn known_app(guard: &Guard, app: &str) -> Result<(), ApiError> {
    match guard.config().app(app) {
        Some(_) => Ok(()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no app {app:?}"))),
    }
}

async fn suspend(
    State(guard): Shared,
    Path(app): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let b: SuspendBody = body(&bytes)?;
    known_app(&guard, &app)?;
    let result = remedies::suspend(&guard, &app, &b.reason, b.terminate)
        .await
        .map(|ended| json!({ "suspended": app, "sessions_ended": ended }));
    Ok(done(&guard, "suspend", &app, &b.reason, result).await)
}

async fn resume(State(guard): Shared, Path(app): Path<String>) -> Result<Response, ApiError> {
    known_app(&guard, &app)?;
    match remedies::resume(&guard, &app).await {
        Ok(false) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("app {app:?} is not suspended"),
        )),
        result => Ok(done(
            &guard,
            "resume",
            &app,
            "",
            result.map(|_| json!({ "resumed": app })),
        )
        .await),
    }
}

async fn upstreams(State(guard): Shared) -> Response {
    let config = guard.config();
    let list: Vec<Value> = config
        .upstreams
        .iter()
        .map(|u| {
            let pool = guard.pools.get(&u.name).unwrap_or_default();
            let servers: Vec<Value> = pool
                .servers
                .iter()
                .map(|s| {
                    let state = match (s.is_drained(), s.is_up()) {
                        (true, _) => "drained",
                        (false, true) => "up",
                        (false, false) => "down",
                    };
                    json!({
                        "server": s.addr,
                        "state": state,
                        "up": s.is_up(),
                        "drained": s.is_drained(),
                        "sessions": s.sessions(),
                        "last_error": s.last_error(),
                    })
                })
                .collect();
            let balance = match u.balance {
                crate::config::Balance::RoundRobin => "round_robin",
                crate::config::Balance::LeastConnections => "least_connections",
            };
            json!({ "name": u.name, "balance": balance, "servers": servers })
        })
        .collect();
    Json(json!({ "upstreams": list })).into_response()
}

/// The refusal history over `window` (default 15m, at most 1h), oldest
/// step first: `{"step_seconds", "end", "reasons": {reason: [n, ...]}}`,
/// every reason of `Reason::ALL` present.
async fn refusal_history(State(guard): Shared, uri: axum::http::Uri) -> Result<Response, ApiError> {
    let mut window = None;
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if key != "window" {
            continue;
        }
        if window.is_some() {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "window must be given at most once".into(),
            ));
        }
        let steps = refusals::parse_window(&value)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
        window = Some(steps);
    }
    let steps =
        window.unwrap_or((refusals::DEFAULT_WINDOW.as_secs() / refusals::STEP_SECONDS) as usize);
    let w = guard.refusals.window(steps, crate::control::unix_now());
    let reasons: serde_json::Map<String, Value> = w
        .reasons
        .into_iter()
        .map(|(reason, counts)| (reason.as_str().to_string(), json!(counts)))
        .collect();
    Ok(Json(json!({
        "step_seconds": refusals::STEP_SECONDS,
        "end": w.end,
        "reasons": reasons,
    }))
    .into_response())
}

async fn drain(
    State(guard): Shared,
    Path((name, addr)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    set_drained(&guard, &name, &addr, true).await
}

async fn undrain(
    State(guard): Shared,
    Path((name, addr)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    set_drained(&guard, &name, &addr, false).await
}

/// Drains or undrains one configured server; the change is in the state
/// file (with `[state]`) before the answer.
async fn set_drained(
    guard: &Guard,
    name: &str,
    addr: &str,
    drain: bool,
) -> Result<Response, ApiError> {
    let action = if drain { "drain" } else { "undrain" };
    let target = format!("{name}/{addr}");
    match remedies::drain(guard, name, addr, drain).await {
        Ok(None) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("upstream {name:?} has no server {addr:?}"),
        )),
        result => {
            let result = result.map(|changed| {
                json!({ "upstream": name, "server": addr, "drained": drain, "changed": changed == Some(true) })
            });
            Ok(done(guard, action, &target, "", result).await)
        }
    }
}

async fn reload(State(guard): Shared) -> Response {
    match crate::lifecycle::reload(&guard) {
        Ok(()) => {
            done(
                &guard,
                "reload",
                "config",
                "",
                Ok(json!({ "reloaded": true })),
            )
            .await
        }
        Err(why) => {
            guard.audit.action("reload", "config", "", "failed").await;
            error(StatusCode::UNPROCESSABLE_ENTITY, why.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn a_loopback_listener_answers_to_loopback_literals_and_localhost_only() {
        let bound = at("127.0.0.1:9936");
        for ok in [
            "127.0.0.1:9936",
            "127.0.0.1",
            "localhost:9936",
            "LocalHost",
            "[::1]:9936",
            "[::ffff:127.0.0.1]:9936",
            "127.0.0.2:19936",
        ] {
            assert!(host_allowed(ok, bound), "{ok} refused");
        }
        for bad in [
            "evil.example:9936",
            "evil.example",
            "localhost.evil.example:9936",
            "127.0.0.1.nip.io:9936",
            "10.0.0.1:9936",
            "",
            ":9936",
            "127.0.0.1:99999",
            "127.0.0.1:+80",
            "127.0.0.1:x",
            "[::1",
            "[::1]x",
            "[fe80::1%25eth0]:9936",
            "::1",
            "127.0.0.1 :9936",
        ] {
            assert!(!host_allowed(bad, bound), "{bad:?} allowed");
        }
    }

    #[test]
    fn a_specific_listener_answers_to_its_own_address_and_a_wildcard_to_any_literal() {
        let bound = at("192.0.2.10:9936");
        assert!(host_allowed("192.0.2.10:9936", bound));
        assert!(host_allowed("localhost:9936", bound));
        assert!(!host_allowed("192.0.2.11:9936", bound));
        assert!(!host_allowed("127.0.0.1:9936", bound));
        assert!(!host_allowed("guard.example:9936", bound));

        let v6 = at("[2001:db8::5]:9936");
        assert!(host_allowed("[2001:db8::5]:9936", v6));
        assert!(!host_allowed("[2001:db8::6]:9936", v6));

        for wildcard in [at("0.0.0.0:9936"), at("[::]:9936")] {
            assert!(host_allowed("10.1.2.3:9936", wildcard));
            assert!(host_allowed("[2001:db8::5]:9936", wildcard));
            assert!(host_allowed("localhost", wildcard));
            assert!(!host_allowed("rtmp-guard.default.svc:9936", wildcard));
        }
    }
}
