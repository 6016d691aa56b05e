//! The reads `GET /model` and `GET /models`, and how every read waits for its
//! `after_batch` ([`fresh`]) and says what it is `as_of`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::app::App;
use super::errors::{bad_query, error, truncated};
use crate::window::parse_duration;

/// How long a read with `after_batch` waits for the batch without `wait`.
pub const DEFAULT_READ_WAIT: Duration = Duration::from_secs(5);

/// The longest `wait` of a read with `after_batch` (a longer one is cut to this).
pub const MAX_READ_WAIT: Duration = Duration::from_secs(60);

/// Keys in a `/models` page without `limit`.
pub const DEFAULT_PAGE: usize = 1000;

/// Largest `limit` of a `/models` page.
pub const MAX_PAGE: usize = 10_000;

/// How long a read waits for its `after_batch`: a duration (`500ms`, `5s`; a bare
/// number is milliseconds).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Wait {
    /// Milliseconds.
    Millis(u64),
    /// A duration with its unit.
    Text(String),
}

/// `after_batch` and `wait` of a read, from its query string.
#[derive(Debug, Default, Deserialize)]
pub(super) struct FreshQuery {
    pub(super) after_batch: Option<u64>,
    pub(super) wait: Option<String>,
}

/// What a read answers as of: the last batch folded into the served models (`None`:
/// none yet) and the watermark. The mark is read before the models, so the models read
/// after it reflect at least that batch.
fn as_of(app: &App) -> serde_json::Value {
    let batch = match app.context.models.served() {
        // The dataflow has ended: everything the log was given is folded in.
        Some(u64::MAX) => app
            .context
            .log
            .as_ref()
            .and_then(|l| l.stats().next_batch.checked_sub(1)),
        served => served,
    };
    json!({
        "batch": batch,
        "watermark": app.context.metrics.watermark.load(Relaxed),
    })
}

/// An error answer of a read, with what it was as of.
pub(super) fn read_error(app: &App, status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": message.into(), "as_of": as_of(app) })),
    )
        .into_response()
}

/// Waits until `after_batch` (if any) is folded into the served models, at most `wait`
/// (default [`DEFAULT_READ_WAIT`], cut to [`MAX_READ_WAIT`]); then the read's `as_of`.
/// A wait that runs out is a 503 with `Retry-After`; a `wait` that is no duration a 400.
pub(super) async fn fresh(
    app: &App,
    after_batch: Option<u64>,
    wait: Option<&Wait>,
) -> Result<serde_json::Value, Response> {
    let wait = match wait {
        None => DEFAULT_READ_WAIT,
        Some(Wait::Millis(ms)) => Duration::from_millis(*ms),
        Some(Wait::Text(text)) => match parse_duration(text) {
            Ok(ms) if ms >= 0 => Duration::from_millis(ms as u64),
            Ok(_) => return Err(error(StatusCode::BAD_REQUEST, "wait: must not be negative")),
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, format!("wait: {e}"))),
        },
    }
    .min(MAX_READ_WAIT);
    if let Some(batch) = after_batch
        && let Err(served) = app.context.models.wait_served(batch, wait).await
    {
        let through = served.map_or("no batch yet".to_owned(), |s| format!("batch {s}"));
        let mut response = read_error(
            app,
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "batch {batch} is not folded into the served models after waiting {} ms \
                 (they reflect {through}): retry later, or with a longer wait (at most {} s)",
                wait.as_millis(),
                MAX_READ_WAIT.as_secs()
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(response);
    }
    Ok(as_of(app))
}

#[derive(Deserialize)]
pub(super) struct KeyQuery {
    key: Option<String>,
    // Not a flattened `FreshQuery`: flattened query fields lose their types.
    after_batch: Option<u64>,
    wait: Option<String>,
}

pub(super) async fn model(
    State(app): State<App>,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(rejection) => return bad_query(rejection),
    };
    let Some(key) = query.key else {
        return error(StatusCode::BAD_REQUEST, "missing query parameter: key");
    };
    let wait = query.wait.map(Wait::Text);
    let as_of = match fresh(&app, query.after_batch, wait.as_ref()).await {
        Ok(as_of) => as_of,
        Err(response) => return response,
    };
    match app.context.models.get(&key) {
        Some(models) => {
            let mut answer = json!(models);
            answer["as_of"] = as_of;
            Json(answer).into_response()
        }
        None => read_error(
            &app,
            StatusCode::NOT_FOUND,
            format!("unknown key {:?}", truncated(&key, 200)),
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
    after_batch: Option<u64>,
    wait: Option<String>,
}

pub(super) async fn models(
    State(app): State<App>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(rejection) => return bad_query(rejection),
    };
    let wait = query.wait.map(Wait::Text);
    let as_of = match fresh(&app, query.after_batch, wait.as_ref()).await {
        Ok(as_of) => as_of,
        Err(response) => return response,
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE}, not {limit}"),
        );
    }
    let (page, next) = app.context.models.page(query.after.as_deref(), limit);
    Json(json!({
        "watermark": as_of["watermark"],
        "models": page,
        "next": next,
        "as_of": as_of,
    }))
    .into_response()
}
