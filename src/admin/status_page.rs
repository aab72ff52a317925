//! The live status page at `GET /`: one HTML file, its script and its
//! style sheet, embedded in the binary (`src/admin/page/`), with no CDN
//! and no build step.
//!
//! The page holds no data and needs no token: its script asks the
//! operator for the token, keeps it in `sessionStorage` only, and reads
//! everything through the same `/api/v1` calls, under the same bearer
//! token, that any tool uses. Data is put on the page as text (DOM
//! `textContent`, SVG built with DOM calls), never parsed as HTML, so a
//! hostile stream name shows as what it is.
//!
//! What a browser is allowed to do with any answer of the admin listener
//! is narrowed by [`security_headers`], sent on every response: a
//! Content-Security-Policy that allows only same-origin script, style and
//! fetches (no inline script or style at all: the script and the style
//! sheet are separate files), no framing, no sniffing, no referrer, and no
//! caching.

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/status.js");
const STYLE: &str = include_str!("page/status.css");

/// The policy every answer of the admin listener carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'";

/// The page and its two files. They need no token: they hold no data.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/status.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/status.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Adds the browser-facing protections to every response: the page's,
/// the API's and the errors'.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 6] = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}
