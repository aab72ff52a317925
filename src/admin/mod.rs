//! The admin API: JSON over HTTP, for the operator's remedies, reloads and
//! health checks. Every `/api/*` call needs the bearer token when one is
//! configured; every mutation writes an audit line.
//!
//! ```text
//! GET    /healthz                     alive
//! GET    /readyz                      listening on a valid config, not draining
//! GET    /api/v1/sessions             live sessions
//! DELETE /api/v1/sessions/{id}        kick one
//! GET    /api/v1/bans                 operator and automatic bans
//! POST   /api/v1/bans                 {"cidr", "duration": "1h" | null, "reason"}
//! DELETE /api/v1/bans/{cidr}          the '/' URL-encoded as %2F
//! GET    /api/v1/blocks
//! POST   /api/v1/blocks               {"app", "stream": glob, "reason"}
//! DELETE /api/v1/blocks               {"app", "stream"}
//! GET    /api/v1/apps
//! POST   /api/v1/apps/{app}/suspend   {"reason", "terminate": true}
//! POST   /api/v1/apps/{app}/resume
//! POST   /api/v1/reload
//! ```
//!
//! Whether the API needs a token, and where it listens, are fixed at start
//! ([`serve`]'s `token_required`): a reload may rotate the token file's
//! contents, never remove it (`lifecycle::reload` refuses that).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
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

type Shared = State<Arc<Guard>>;

/// Serves the admin API on an already-bound listener. `token_required`:
/// whether the config the guard started with named a `token_file`.
pub async fn serve(listener: tokio::net::TcpListener, guard: Arc<Guard>, token_required: bool) {
    if let Err(e) = axum::serve(listener, router(guard, token_required)).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

pub fn router(guard: Arc<Guard>, token_required: bool) -> Router {
    let auth = Auth {
        guard: guard.clone(),
        required: token_required,
    };
    let api = Router::new()
        .route("/sessions", get(sessions))
        .route("/sessions/:id", delete(kick))
        .route("/bans", get(bans).post(add_ban))
        .route("/bans/:cidr", delete(lift_ban))
        .route("/blocks", get(blocks).post(add_block).delete(lift_block))
        .route("/apps", get(apps))
        .route("/apps/:app/suspend", post(suspend))
        .route("/apps/:app/resume", post(resume))
        .route("/reload", post(reload))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(auth, authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .nest("/api/v1", api)
        .with_state(guard)
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

async fn sessions(State(guard): Shared) -> Response {
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
    let Ok(id) = id.parse::<u64>() else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "session id must be a number".into(),
        ));
    };
    let why = if b.reason.is_empty() {
        "session ended by the operator".to_string()
    } else {
        format!("session ended by the operator: {}", b.reason)
    };
    if !remedies::kick(&guard, id, &why) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no session {id}")));
    }
    Ok(done(
        &guard,
        "kick",
        &id.to_string(),
        &b.reason,
        Ok(json!({ "kicked": id })),
    )
    .await)
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
}

fn parse_net(text: &str) -> Result<IpNet, ApiError> {
    crate::config::parse_cidr(text).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.0))
}

async fn add_ban(State(guard): Shared, bytes: Bytes) -> Result<Response, ApiError> {
    let b: BanBody = body(&bytes)?;
    let cidr = parse_net(&b.cidr)?;
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
