//! `GET /metrics`: Prometheus instruments, refreshed from the engine's counters at every
//! scrape, and the count and latency of every HTTP request.

use std::sync::Arc;
use std::time::Instant;

use ::prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use super::models::ModelCounts;
use crate::metrics::Metrics;

/// Prometheus instruments, refreshed from [`Metrics`] at every scrape.
pub(super) struct Instruments {
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
pub(super) struct Scrape {
    pub(super) metrics: crate::metrics::Snapshot,
    pub(super) log: crate::source::log::LogStats,
    pub(super) models: ModelCounts,
    pub(super) live_keys: usize,
    pub(super) serve: ServeSnapshot,
}

/// A copy of [`ServeStats`](super::limits::ServeStats) and the body budget.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(super) struct ServeSnapshot {
    pub(super) connections_open: i64,
    pub(super) connections_refused: u64,
    pub(super) timeouts_header: u64,
    pub(super) timeouts_idle: u64,
    pub(super) timeouts_write: u64,
    pub(super) timeouts_body: u64,
    pub(super) body_bytes_in_flight: i64,
}

impl Instruments {
    pub(super) fn new() -> Result<Instruments, prometheus::Error> {
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
                    "windows_closed_idle_total",
                    "Windows emitted final because the source was idle (--close-after-idle)",
                )?,
                |s| s.metrics.windows_closed_idle,
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
                    "batches_folded_ahead_total",
                    "Batches of a file folded into panes by the thread reading ahead, taken whole",
                )?,
                |s| s.metrics.folded_ahead,
            ),
            (
                counter(
                    "batches_fold_refused_total",
                    "Batches folded ahead that the worker refused (a record late, too far ahead or out of range) and read record by record",
                )?,
                |s| s.metrics.folds_refused,
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
            (
                counter(
                    "keys_evicted_total",
                    "Keys forgotten by the served models to stay within --max-keys",
                )?,
                |s| s.models.evicted,
            ),
            (
                counter(
                    "http_connections_refused_total",
                    "Connections answered 503 and closed: over --max-connections",
                )?,
                |s| s.serve.connections_refused,
            ),
            (
                counter(
                    "http_header_timeouts_total",
                    "Connections closed: a request head not complete within --header-timeout",
                )?,
                |s| s.serve.timeouts_header,
            ),
            (
                counter(
                    "http_idle_timeouts_total",
                    "Connections closed: idle for --http-idle-timeout",
                )?,
                |s| s.serve.timeouts_idle,
            ),
            (
                counter(
                    "http_write_timeouts_total",
                    "Connections closed: an answer not read for --http-idle-timeout",
                )?,
                |s| s.serve.timeouts_write,
            ),
            (
                counter(
                    "http_body_timeouts_total",
                    "Requests answered 408: a body not received within --body-timeout",
                )?,
                |s| s.serve.timeouts_body,
            ),
        ];
        let gauges: Vec<GaugeReading> = vec![
            (
                gauge("panes_open", "Panes held open by the windows operators")?,
                |s| s.metrics.open_panes,
            ),
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
                gauge(
                    "watermark_lag_ms",
                    "Wall clock minus the global watermark (0 before the first record and at the end)",
                )?,
                |s| match s.metrics.watermark {
                    i64::MIN | i64::MAX => 0,
                    w => (crate::checkpoint::unix_ms() as i64).saturating_sub(w),
                },
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
            (
                gauge(
                    "ingest_lag_bytes",
                    "Bytes of records in the ingest log not yet read (--max-pending-bytes)",
                )?,
                |s| s.log.pending_bytes as i64,
            ),
            (
                gauge("http_connections_open", "Open HTTP connections")?,
                |s| s.serve.connections_open,
            ),
            (
                gauge(
                    "http_body_bytes_in_flight",
                    "Bytes of request bodies held (--max-inflight-bytes)",
                )?,
                |s| s.serve.body_bytes_in_flight,
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
        let models = IntGaugeVec::new(
            Opts::new(
                "keys",
                "Keys by kind: final/open (with such a model), served (held), live (posted, windows open)",
            ),
            &["kind"],
        )?;
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

    /// The text of a scrape: `scrape`'s readings, and `metrics`' per worker and per
    /// process.
    pub(super) fn render(&self, scrape: &Scrape, metrics: &Metrics) -> String {
        for (counter, read) in &self.counters {
            let value = read(scrape);
            counter.inc_by(value.saturating_sub(counter.get()));
        }
        for (gauge, read) in &self.gauges {
            gauge.set(read(scrape));
        }
        for (worker, records) in metrics.worker_records().into_iter().enumerate() {
            let c = self
                .worker_records
                .with_label_values(&[&worker.to_string()]);
            c.inc_by(records.saturating_sub(c.get()));
        }
        // Counts kept by the model store and the key tracker: O(1) in the keys.
        for (kind, count) in [
            ("final", scrape.models.finals),
            ("open", scrape.models.open),
            ("served", scrape.models.keys),
            ("live", scrape.live_keys),
        ] {
            self.models.with_label_values(&[kind]).set(count as i64);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        // Every process of the cluster as process 0 hears its heartbeats (metrics.rs).
        out.extend_from_slice(metrics.render_processes().as_bytes());
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Counts every request and times its answer, by endpoint and status.
pub(super) async fn observe(
    State(instruments): State<Arc<Instruments>>,
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
        "/models/stream" => "/models/stream",
        "/" => "/",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let i = &instruments;
    i.latency
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    i.requests
        .with_label_values(&[endpoint, response.status().as_str()])
        .inc();
    response
}
