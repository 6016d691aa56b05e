//! Serving: the HTTP server of process 0, beside the timely workers.
//!
//! | endpoint | what |
//! |---|---|
//! | `POST /data` | CSV (with header; `Content-Type: text/csv`) or JSON lines (`application/x-ndjson`, `application/jsonl`, `application/json`) into the ingest log; the answer comes once the records are durable |
//! | `GET /model?key=K` | the newest final model of `K` and the running estimate of its open window |
//! | `GET /models?limit=N&after=K` | the same for a page of keys, in key order, with the cursor of the next page |
//! | `POST /predict` | `ŷ = b₀ + b·x` from the newest final model (or, with `"use": "latest"`, the running estimate), for `"x"` (one row) or `"rows"` |
//! | `GET /models/stream` | server-sent events: every final model as it is emitted, resumable with `Last-Event-ID` |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | liveness and a few counters |
//!
//! The three reads take `after_batch=K` (and `wait`): they answer once ingest-log batch
//! `K` is folded into the served models ([`ModelStore::served_through`]), or 503 with
//! `Retry-After` when the wait runs out; every answer says what it is `as_of` (the last
//! batch folded in and the watermark).
//!
//! Every error is a JSON object `{"error": "..."}` with the status saying what kind it is
//! (see docs/serving.md). Models reach the server through a [`ModelStore`], which the
//! dataflow's model sink (worker 0) updates; with a checkpoint store, final models are
//! also kept there, so that a restarted server answers at once.
//!
//! The server owns its accept loop (hyper's HTTP/1 connections, axum's router), so that
//! it is bounded under abuse ([`HttpLimits`], docs/serving.md "Limits and guarantees"):
//! connections are capped (more are answered 503 and closed), every connection is watched
//! for slow or missing request heads and idle keep-alive, request bodies are read against
//! a deadline and a global budget of bytes in flight, posted keys are capped in length and
//! in number (`--max-key-bytes`, `--max-keys`), and the models served are bounded too.
//!
//! One concept a file: [`ServeContext`] and the state handlers share (`app.rs`); the
//! served models (`models.rs`) and their event stream (`stream.rs`); the endpoints
//! `POST /data` (`data.rs`), `GET /model(s)` with fresh reads (`reads.rs`) and
//! `POST /predict` (`predict.rs`); the limits and the accept loop (`limits.rs`), live
//! keys (`keys.rs`), Host and token checks (`access.rs`), the Prometheus instruments
//! (`prometheus.rs`) and the JSON error answers (`errors.rs`). This file wires them into
//! the router and answers `/metrics` and `/healthz`.

mod access;
mod app;
mod data;
mod errors;
mod keys;
mod limits;
mod models;
mod predict;
mod prometheus;
mod reads;
mod stream;

pub use app::ServeContext;
pub use data::MAX_LISTED_ERRORS;
pub use keys::{KeyHorizon, key_horizon};
pub use limits::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_INFLIGHT_BYTES, DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_KEYS,
    HttpLimits,
};
pub use models::{KeyModels, ModelCounts, ModelStore};
pub use reads::{DEFAULT_PAGE, DEFAULT_READ_WAIT, MAX_PAGE, MAX_READ_WAIT};
pub use stream::{FEED_CLIENT_QUEUE, FEED_KEEP};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::Semaphore;

use self::access::{Access, guard};
use self::app::App;
use self::data::data;
use self::errors::{error, json_errors};
use self::keys::KeyTracker;
use self::limits::accept_loop;
use self::predict::predict;
use self::prometheus::{Instruments, observe};
use self::reads::{model, models};
use crate::types::{EXIT_SOURCE_OR_OUTPUT, fatal};

/// Starts the server on `address` on its own thread (with its own tokio runtime). The
/// address is bound here, so that a taken port is an error at once.
pub fn start(address: SocketAddr, context: ServeContext) -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind(address)
        .map_err(|e| format!("--serve {address}: cannot listen: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("--serve {address}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let instruments = Arc::new(Instruments::new().map_err(|e| format!("metrics: {e}"))?);
    let mut limits = context.limits.clone();
    limits.max_body = context.max_body;
    let access = Arc::new(Access::new(&limits, bound)?);
    // The semaphore counts permits in a usize below 2^61; budgets beyond are unbounded
    // in practice.
    let budget = limits.max_inflight_bytes.min(Semaphore::MAX_PERMITS);
    let app = App {
        keys: Arc::new(KeyTracker::new(limits.max_keys, context.key_horizon)),
        context,
        instruments,
        budget: Arc::new(Semaphore::new(budget)),
        limits: Arc::new(limits),
        stats: Arc::default(),
        access,
    };
    let router = Router::new()
        .route("/data", post(data))
        .route("/model", get(model))
        .route("/models", get(models))
        .route("/models/stream", get(model_stream))
        .route("/predict", post(predict))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .merge(crate::dashboard::routes(app.limits.dashboard))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app.access),
            guard,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app.instruments),
            observe,
        ))
        .with_state(app.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("serve")
        .enable_all()
        .build()
        .map_err(|e| format!("--serve: {e}"))?;
    std::thread::Builder::new()
        .name("serve".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => fatal!(
                        app.context.on_fatal,
                        EXIT_SOURCE_OR_OUTPUT,
                        "--serve {bound}: {e}"
                    ),
                };
                accept_loop(listener, router, Arc::clone(&app.limits), app.stats).await;
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(bound)
}

/// `GET /metrics` ([`prometheus`]).
async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.instruments.render(&app.scrape(), &app.context.metrics),
    )
        .into_response()
}

/// `GET /models/stream` ([`stream`]).
async fn model_stream(State(app): State<App>, headers: HeaderMap) -> Response {
    stream::answer(&app.context.models.feed, &headers)
}

/// `GET /healthz`: liveness and a few counters.
async fn healthz(State(app): State<App>) -> Response {
    if let Some(why) = crate::quarantine::failure() {
        // A worker panicked: the process is on its way out.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failed", "error": why })),
        )
            .into_response();
    }
    let s = app.context.metrics.snapshot();
    Json(json!({
        "status": "ok",
        "records": s.records,
        "watermark": s.watermark,
        "checkpoint_epoch": s.checkpoint_epoch,
        "ingest": app.context.log.as_ref().map(|l| l.stats()),
        "connections": app.stats.connections_open.load(Relaxed),
        "keys": app.context.models.counts(),
        "live_keys": app.keys.live(),
    }))
    .into_response()
}
