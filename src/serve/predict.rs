//! `POST /predict`: `ŷ = b₀ + b·x` ([`crate::model::predict`], after checking the number of
//! features) from the newest final model of a key, or its running estimate.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::app::App;
use super::errors::{bad_query, error, truncated};
use super::limits::{declared_over, read_body, too_large};
use super::reads::{FreshQuery, Wait, fresh, read_error};
use crate::model::Status;

/// A `POST /predict` request: one row (`x`) or several (`rows`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PredictRequest {
    /// The key whose model predicts.
    pub key: String,
    /// One row of features.
    pub x: Option<Vec<f64>>,
    /// Several rows of features.
    pub rows: Option<Vec<Vec<f64>>>,
    /// Answer once this ingest-log batch is folded into the served models (the query
    /// parameter `after_batch` does the same; this field wins).
    pub after_batch: Option<u64>,
    /// How long to wait for `after_batch` (default
    /// [`DEFAULT_READ_WAIT`](super::DEFAULT_READ_WAIT)).
    pub wait: Option<Wait>,
    /// Which model predicts (default [`Use::Final`]).
    #[serde(rename = "use", default)]
    pub use_model: Use,
}

/// Which model `POST /predict` uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Use {
    /// The newest final model.
    #[default]
    Final,
    /// The running estimate of the open window that closes next, when the key has one
    /// (else the newest final model).
    Latest,
}

pub(super) async fn predict(
    State(app): State<App>,
    query: Result<Query<FreshQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(rejection) => return bad_query(rejection),
    };
    let limit = app.limits.max_body;
    if declared_over(&headers, limit) {
        return too_large(limit);
    }
    // The body's bytes stay counted against --max-inflight-bytes until it is parsed.
    let (body, held) = match read_body(&app.limits, &app.stats, &app.budget, body, limit).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let request: PredictRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    drop((body, held));
    let after_batch = request.after_batch.or(query.after_batch);
    let wait = request.wait.clone().or(query.wait.map(Wait::Text));
    let as_of = match fresh(&app, after_batch, wait.as_ref()).await {
        Ok(as_of) => as_of,
        Err(response) => return response,
    };
    let error = |status: StatusCode, message: String| read_error(&app, status, message);
    let key = truncated(&request.key, 200);
    let Some(models) = app.context.models.get(&request.key) else {
        return error(StatusCode::NOT_FOUND, format!("unknown key {key:?}"));
    };
    let (model, used) = match (request.use_model, models.open, models.last_final) {
        (Use::Latest, Some(open), _) => (open, Use::Latest),
        (_, _, Some(last_final)) => (last_final, Use::Final),
        (Use::Latest, None, None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("key {key:?} has no model yet (neither final nor running)"),
            );
        }
        (Use::Final, _, None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "key {key:?} has no final model yet (\"use\": \"latest\" predicts with \
                     the running estimate of its open window)"
                ),
            );
        }
    };
    let which = if used == Use::Final {
        "model"
    } else {
        "running estimate"
    };
    let Some(coef) = model
        .coef
        .as_ref()
        .filter(|_| model.status != Status::Underdetermined)
    else {
        return error(
            StatusCode::CONFLICT,
            format!(
                "the {which} of {key:?} for [{}, {}) has no coefficients: {} (n = {})",
                model.window_start,
                model.window_end,
                json!(model.status).as_str().unwrap_or("unsolved"),
                model.n
            ),
        );
    };
    if coef.iter().any(|c| !c.is_finite()) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "the {which} of {key:?} for [{}, {}) has coefficients that are not \
                 finite: it cannot predict",
                model.window_start, model.window_end
            ),
        );
    }
    let d = coef.len() - 1;
    let predict = |i: Option<usize>, x: &[f64]| -> Result<f64, (StatusCode, String)> {
        let row = i.map_or(String::new(), |i| format!("row {i}: "));
        if x.len() != d {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("{row}expected {d} features, got {}", x.len()),
            ));
        }
        let y = crate::model::predict(coef, x);
        if !y.is_finite() {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{row}the prediction is not a finite number (the features times the \
                     coefficients overflow a 64-bit float): no prediction"
                ),
            ));
        }
        Ok(y)
    };
    let mut answer = json!({
        "key": request.key,
        "window_start": model.window_start,
        "window_end": model.window_end,
        "status": model.status,
        "revision": model.revision,
        "n": model.n,
        "used": used,
        "as_of": as_of,
    });
    match (&request.x, &request.rows) {
        (Some(x), None) => match predict(None, x) {
            Ok(y) => answer["prediction"] = json!(y),
            Err((status, message)) => return error(status, message),
        },
        (None, Some(rows)) => {
            let mut out = Vec::with_capacity(rows.len());
            for (i, row) in rows.iter().enumerate() {
                match predict(Some(i), row) {
                    Ok(y) => out.push(y),
                    Err((status, message)) => return error(status, message),
                }
            }
            answer["predictions"] = json!(out);
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"x\" (a row) or \"rows\" (a list of rows)".into(),
            );
        }
    }
    Json(answer).into_response()
}
