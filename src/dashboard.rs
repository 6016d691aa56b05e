//! The live dashboard at `/` of `--serve`: one hand-written HTML page with its script,
//! styles and SVG charts inline ([`PAGE`], compiled into the binary: no file, no CDN, no
//! network beyond the server itself, which its Content-Security-Policy enforces).
//!
//! The page reads what every client reads: `GET /models` (the keys with their newest
//! final model and open estimate, polled), `GET /models/stream` (final models as they
//! are emitted: the charts' points) and `GET /metrics` (watermark, lag, records/s, late
//! and set-aside counts, checkpoint epoch, polled). It obeys the server's rules: the page
//! itself is served to any request whose `Host` is allowed (it holds no data), and every
//! request it makes for data carries the bearer token, which it takes from the address's
//! fragment (`http://HOST:PORT/#token=…`, never sent to the server as part of the
//! address), keeps in the tab's `sessionStorage` and removes from the address bar; it
//! asks for the token when the server answers 401. `--no-dashboard` turns the page off
//! (`/` is then a 404 like any unknown path). See docs/serving.md, "Dashboard".

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page: HTML with inline script, styles and SVG.
pub const PAGE: &str = include_str!("dashboard.html");

/// The page's Content-Security-Policy: its own inline script and styles, requests to its
/// own origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The route of the page (`GET /`), or no route when `enabled` is false.
pub fn routes<S: Clone + Send + Sync + 'static>(enabled: bool) -> Router<S> {
    match enabled {
        true => Router::new().route("/", get(page)),
        false => Router::new(),
    }
}

async fn page() -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
