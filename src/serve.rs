//! Serving: the HTTP server of process 0, beside the timely workers.
//!
//! | endpoint | what |
//! |---|---|
//! | `POST /data` | CSV (with header; `Content-Type: text/csv`) or JSON lines (`application/x-ndjson`, `application/jsonl`, `application/json`) into the ingest log; the answer comes once the records are durable |
//! | `GET /model?key=K` | the newest final model of `K` and the running estimate of its open window |
//! | `GET /models` | the same for every key |
//! | `POST /predict` | `ŷ = b₀ + b·x` from the newest final model, for `"x"` (one row) or `"rows"` |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | liveness and a few counters |
//!
//! Every error is a JSON object `{"error": "..."}` with the status saying what kind it is
//! (see docs/serving.md). Models reach the server through a [`ModelStore`], which the
//! dataflow's model sink (worker 0) updates; with a checkpoint store, final models are
//! also kept there, so that a restarted server answers at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checkpoint::{Store, codec};
use crate::dataflow::ModelLine;
use crate::metrics::Metrics;
use crate::model::Status;
use crate::record::Schema;
use crate::source::log::AppendError;
use crate::source::{FileFormat, IngestLog, LineParser, RecordBatch};

/// Default largest `POST /data` body (bytes).
pub const DEFAULT_MAX_BODY: usize = 16 << 20;

/// Per-line errors listed in a `POST /data` answer (all are counted in `rejected`).
pub const MAX_LISTED_ERRORS: usize = 100;

/// The models of one key, as served.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyModels {
    /// The key.
    pub key: String,
    /// The newest final model (highest window end, then revision).
    #[serde(rename = "final")]
    pub last_final: Option<ModelLine>,
    /// The running estimate of the open window that closes next.
    pub open: Option<ModelLine>,
}

/// The newest models of every key: written by the dataflow's sink, read by the server.
#[derive(Default)]
pub struct ModelStore {
    keys: RwLock<BTreeMap<String, KeyModels>>,
    store: Option<Arc<Store>>,
}

impl ModelStore {
    /// A model store, kept in `store` too if given (and loaded from it now).
    pub fn open(store: Option<Arc<Store>>) -> Result<ModelStore, String> {
        let mut keys = BTreeMap::new();
        if let Some(store) = &store {
            for bytes in store.models().map_err(|e| e.to_string())? {
                let model: ModelLine = codec::decode(&bytes)
                    .map_err(|e| format!("{}: stored model: {e}", store.path().display()))?;
                keys.insert(
                    model.key.clone(),
                    KeyModels {
                        key: model.key.clone(),
                        last_final: Some(model),
                        open: None,
                    },
                );
            }
        }
        Ok(ModelStore {
            keys: RwLock::new(keys),
            store,
        })
    }

    /// Takes model emissions (final, provisional, revised, or running estimates).
    pub fn update<'a>(&self, lines: impl IntoIterator<Item = &'a ModelLine>) {
        let mut finals: BTreeMap<&str, &ModelLine> = BTreeMap::new();
        {
            let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
            for line in lines {
                let entry = keys.entry(line.key.clone()).or_insert_with(|| KeyModels {
                    key: line.key.clone(),
                    ..KeyModels::default()
                });
                let newest = |m: &ModelLine| (m.window_end, m.window_start, m.revision);
                if line.is_final {
                    if entry
                        .last_final
                        .as_ref()
                        .is_none_or(|f| newest(line) >= newest(f))
                    {
                        entry.last_final = Some(line.clone());
                        finals.insert(&line.key, line);
                    }
                    if entry
                        .open
                        .as_ref()
                        .is_some_and(|o| o.window_end <= line.window_end)
                    {
                        entry.open = None;
                    }
                } else if entry
                    .last_final
                    .as_ref()
                    .is_none_or(|f| line.window_end > f.window_end)
                {
                    entry.open = Some(line.clone());
                }
            }
        }
        if let Some(store) = &self.store
            && !finals.is_empty()
        {
            let encoded = finals.into_iter().map(|(k, m)| (k, codec::encode(m)));
            if let Err(e) = store.put_models(encoded) {
                eprintln!("warning: keeping models in the checkpoint store: {e}");
            }
        }
    }

    /// The models of `key`.
    pub fn get(&self, key: &str) -> Option<KeyModels> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// The models of every key, by key.
    pub fn all(&self) -> Vec<KeyModels> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// What the server serves.
#[derive(Clone)]
pub struct ServeContext {
    /// Models.
    pub models: Arc<ModelStore>,
    /// The ingest log, when the source has one (`http`, `tcp`, a followed file): its
    /// counters are in `/healthz` and `/metrics`.
    pub log: Option<Arc<IngestLog>>,
    /// Whether the source is `http`, which `POST /data` appends to (else it is refused).
    pub accepts_posts: bool,
    /// The source, as configured (for messages).
    pub source: String,
    /// Field names of posted records.
    pub schema: Schema,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Largest `POST /data` body.
    pub max_body: usize,
}

/// Prometheus instruments, refreshed from [`Metrics`] at every scrape.
struct Instruments {
    registry: Registry,
    counters: Vec<CounterReading>,
    gauges: Vec<GaugeReading>,
    worker_records: IntCounterVec,
    requests: IntCounterVec,
    latency: HistogramVec,
    models: IntGaugeVec,
}

/// A counter and how a scrape reads its value.
type CounterReading = (IntCounter, fn(&Scrape) -> u64);

/// A gauge and how a scrape reads its value.
type GaugeReading = (IntGauge, fn(&Scrape) -> i64);

/// One scrape's readings.
struct Scrape {
    metrics: crate::metrics::Snapshot,
    log: crate::source::log::LogStats,
}

impl Instruments {
    fn new() -> Result<Instruments, prometheus::Error> {
        let registry = Registry::new_custom(Some("tributary".into()), None)?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counters: Vec<CounterReading> = vec![
            (
                counter("records_total", "Well-formed records read by the dataflow")?,
                |s| s.metrics.records,
            ),
            (
                counter("malformed_total", "Malformed input lines (skipped)")?,
                |s| s.metrics.malformed,
            ),
            (
                counter("late_total", "Records set aside as later than the lateness")?,
                |s| s.metrics.late,
            ),
            (
                counter(
                    "too_far_ahead_total",
                    "Records set aside as too far ahead of the stream",
                )?,
                |s| s.metrics.too_far,
            ),
            (
                counter("windows_closed_total", "Windows emitted final")?,
                |s| s.metrics.windows_final,
            ),
            (
                counter(
                    "models_provisional_total",
                    "Provisional model emissions (lateness > 0)",
                )?,
                |s| s.metrics.windows_provisional,
            ),
            (
                counter(
                    "model_estimates_total",
                    "Running estimates of open windows emitted",
                )?,
                |s| s.metrics.estimates,
            ),
            (
                counter(
                    "checkpoint_bytes_total",
                    "Bytes written to checkpoint parts by this process",
                )?,
                |s| s.metrics.checkpoint_bytes,
            ),
            (
                counter(
                    "checkpoint_write_microseconds_total",
                    "Time spent writing checkpoint parts (synced), microseconds",
                )?,
                |s| s.metrics.checkpoint_micros,
            ),
            (
                counter(
                    "ingest_records_total",
                    "Records appended to the ingest log (POST /data, TCP, a followed file)",
                )?,
                |s| s.log.appended,
            ),
            (
                counter("ingest_batches_total", "Batches numbered by the ingest log")?,
                |s| s.log.next_batch,
            ),
            (
                counter(
                    "quarantined_batches_total",
                    "Source batches set aside after crashing the engine twice",
                )?,
                |_| crate::quarantine::batches_set_aside(),
            ),
        ];
        let gauges: Vec<GaugeReading> = vec![
            (gauge("panes_open", "Panes held in the arrangement")?, |s| {
                s.metrics.open_panes
            }),
            (
                gauge(
                    "windows_open",
                    "Windows with records that have not ended yet",
                )?,
                |s| s.metrics.open_windows,
            ),
            (
                gauge(
                    "watermark_ms",
                    "The global watermark (ms since the Unix epoch)",
                )?,
                |s| s.metrics.watermark,
            ),
            (
                gauge("checkpoint_epoch", "Newest committed checkpoint epoch")?,
                |s| s.metrics.checkpoint_epoch as i64,
            ),
            (
                gauge(
                    "ingest_lag_records",
                    "Records in the ingest log not yet read by the dataflow",
                )?,
                |s| s.log.pending as i64,
            ),
        ];
        let worker_records = IntCounterVec::new(
            Opts::new("worker_records_total", "Records read, per worker"),
            &["worker"],
        )?;
        registry.register(Box::new(worker_records.clone()))?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by endpoint and status",
            ),
            &["endpoint", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_seconds", "HTTP answer latency").buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
            &["endpoint"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        let models = IntGaugeVec::new(Opts::new("keys", "Keys with models, by kind"), &["kind"])?;
        registry.register(Box::new(models.clone()))?;
        Ok(Instruments {
            registry,
            counters,
            gauges,
            worker_records,
            requests,
            latency,
            models,
        })
    }

    fn render(&self, context: &ServeContext) -> String {
        let scrape = Scrape {
            metrics: context.metrics.snapshot(),
            log: context.log.as_ref().map(|l| l.stats()).unwrap_or_default(),
        };
        for (counter, read) in &self.counters {
            let value = read(&scrape);
            counter.inc_by(value.saturating_sub(counter.get()));
        }
        for (gauge, read) in &self.gauges {
            gauge.set(read(&scrape));
        }
        for (worker, records) in context.metrics.worker_records().into_iter().enumerate() {
            let c = self
                .worker_records
                .with_label_values(&[&worker.to_string()]);
            c.inc_by(records.saturating_sub(c.get()));
        }
        let all = context.models.all();
        self.models
            .with_label_values(&["final"])
            .set(all.iter().filter(|k| k.last_final.is_some()).count() as i64);
        self.models
            .with_label_values(&["open"])
            .set(all.iter().filter(|k| k.open.is_some()).count() as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[derive(Clone)]
struct App {
    context: ServeContext,
    instruments: Arc<Instruments>,
}

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

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
    let app = App {
        context,
        instruments,
    };
    let router = Router::new()
        .route("/data", post(data))
        .route("/model", get(model))
        .route("/models", get(models))
        .route("/predict", post(predict))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app);
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
                    Err(e) => {
                        eprintln!("error: --serve {bound}: {e}");
                        std::process::exit(2);
                    }
                };
                if let Err(e) = axum::serve(listener, router).await {
                    eprintln!("error: --serve {bound}: {e}");
                    std::process::exit(2);
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(bound)
}

/// Counts every request and times its answer, by endpoint and status.
async fn observe(
    State(app): State<App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let endpoint: &'static str = match request.uri().path() {
        "/data" => "/data",
        "/model" => "/model",
        "/models" => "/models",
        "/predict" => "/predict",
        "/metrics" => "/metrics",
        "/healthz" => "/healthz",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let i = &app.instruments;
    i.latency
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    i.requests
        .with_label_values(&[endpoint, response.status().as_str()])
        .inc();
    response
}

/// The answer to `POST /data`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DataAnswer {
    /// Records accepted (durable, with `--checkpoint`).
    pub accepted: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// The first [`MAX_LISTED_ERRORS`] rejected lines.
    pub errors: Vec<LineError>,
    /// The ingest-log batch (and epoch) the records went into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
}

/// A rejected line of a `POST /data` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct LineError {
    /// 1-based line number in the body.
    pub line: u64,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// The format a content type names, or why it names none (a 415 answer).
fn body_format(headers: &HeaderMap) -> Result<FileFormat, String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err("Content-Type is required: text/csv or application/x-ndjson".into());
    };
    let mime = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "text/csv" | "application/csv" => Ok(FileFormat::Csv),
        "application/x-ndjson"
        | "application/jsonl"
        | "application/json-lines"
        | "application/jsonlines"
        | "application/json" => Ok(FileFormat::Jsonl),
        other => Err(format!(
            "Content-Type {other:?} is not accepted: use text/csv or application/x-ndjson"
        )),
    }
}

/// Parses a `POST /data` body: the records, and the rejected lines.
pub fn parse_body(
    body: &[u8],
    format: FileFormat,
    schema: &Schema,
) -> Result<(RecordBatch, DataAnswer), String> {
    let mut parser = LineParser::new(format, schema);
    let mut batch = RecordBatch::default();
    let mut answer = DataAnswer::default();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let number = i as u64 + 1;
        if parser.needs_header() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            parser
                .header(line, &format!("line {number}"))
                .map_err(|e| e.to_string())?;
            continue;
        }
        match parser.parse(line) {
            Ok(Some(record)) => batch.push(record),
            Ok(None) => {}
            Err((field, message)) => {
                answer.rejected += 1;
                if answer.errors.len() < MAX_LISTED_ERRORS {
                    answer.errors.push(LineError {
                        line: number,
                        field,
                        message,
                    });
                }
            }
        }
    }
    answer.accepted = batch.len() as u64;
    Ok((batch, answer))
}

async fn data(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let context = &app.context;
    let Some(log) = context.log.clone().filter(|_| context.accepts_posts) else {
        return error(
            StatusCode::CONFLICT,
            format!(
                "this run reads {}; POST /data needs --source http",
                context.source
            ),
        );
    };
    let format = match body_format(&headers) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, message),
    };
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {} bytes: split it", context.max_body),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > context.max_body as u64) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, context.max_body).await {
        Ok(b) => b,
        Err(e) => {
            let inner = e.into_inner();
            if inner
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return too_large();
            }
            return error(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {inner}"),
            );
        }
    };
    let schema = context.schema.clone();
    let metrics = Arc::clone(&context.metrics);
    let result = tokio::task::spawn_blocking(move || {
        let (batch, mut answer) = match parse_body(&bytes, format, &schema) {
            Ok(parsed) => parsed,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        metrics
            .malformed
            .fetch_add(answer.rejected, std::sync::atomic::Ordering::Relaxed);
        if batch.is_empty() {
            let message = if answer.rejected > 0 {
                "no line parsed"
            } else {
                "no records in the body"
            };
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": message,
                    "accepted": 0,
                    "rejected": answer.rejected,
                    "errors": answer.errors,
                })),
            )
                .into_response();
        }
        match log.append(Arc::new(batch)) {
            Ok(seq) => {
                answer.batch = Some(seq);
                (StatusCode::OK, Json(answer)).into_response()
            }
            Err(e @ AppendError::Backpressure { .. }) => {
                let mut response = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                response
            }
            Err(e @ AppendError::Closed) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("records not accepted: {e}"),
            ),
        }
    })
    .await;
    result.unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

async fn model(State(app): State<App>, Query(query): Query<KeyQuery>) -> Response {
    let Some(key) = query.key else {
        return error(StatusCode::BAD_REQUEST, "missing query parameter: key");
    };
    match app.context.models.get(&key) {
        Some(models) => Json(models).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("unknown key {key:?}")),
    }
}

async fn models(State(app): State<App>) -> Response {
    let snapshot = app.context.metrics.snapshot();
    Json(json!({
        "watermark": snapshot.watermark,
        "models": app.context.models.all(),
    }))
    .into_response()
}

/// A `POST /predict` request: one row (`x`) or several (`rows`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// The key whose model predicts.
    pub key: String,
    /// One row of features.
    pub x: Option<Vec<f64>>,
    /// Several rows of features.
    pub rows: Option<Vec<Vec<f64>>>,
}

async fn predict(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let request: PredictRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let Some(models) = app.context.models.get(&request.key) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown key {:?}", request.key),
        );
    };
    let Some(model) = models.last_final else {
        return error(
            StatusCode::NOT_FOUND,
            format!("key {:?} has no final model yet", request.key),
        );
    };
    let Some(coef) = model
        .coef
        .as_ref()
        .filter(|_| model.status != Status::Underdetermined)
    else {
        return error(
            StatusCode::CONFLICT,
            format!(
                "the model of {:?} for [{}, {}) has no coefficients: {} (n = {})",
                request.key,
                model.window_start,
                model.window_end,
                json!(model.status).as_str().unwrap_or("unsolved"),
                model.n
            ),
        );
    };
    let d = coef.len() - 1;
    let predict = |x: &[f64]| -> Result<f64, String> {
        if x.len() != d {
            return Err(format!("expected {d} features, got {}", x.len()));
        }
        Ok(coef[0] + x.iter().zip(&coef[1..]).map(|(a, b)| a * b).sum::<f64>())
    };
    let mut answer = json!({
        "key": request.key,
        "window_start": model.window_start,
        "window_end": model.window_end,
        "status": model.status,
        "revision": model.revision,
    });
    match (&request.x, &request.rows) {
        (Some(x), None) => match predict(x) {
            Ok(y) => answer["prediction"] = json!(y),
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
        (None, Some(rows)) => {
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                match predict(row) {
                    Ok(y) => out.push(y),
                    Err(message) => return error(StatusCode::BAD_REQUEST, message),
                }
            }
            answer["predictions"] = json!(out);
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"x\" (a row) or \"rows\" (a list of rows)",
            );
        }
    }
    Json(answer).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.instruments.render(&app.context),
    )
        .into_response()
}

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
    }))
    .into_response()
}
