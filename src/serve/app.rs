//! What the server serves ([`ServeContext`]) and the state every handler shares.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::Semaphore;

use super::access::Access;
use super::keys::{KeyHorizon, KeyTracker};
use super::limits::{HttpLimits, ServeStats};
use super::models::ModelStore;
use super::prometheus::{Instruments, Scrape, ServeSnapshot};
use crate::metrics::Metrics;
use crate::record::Schema;
use crate::source::IngestLog;
use crate::types::OnFatal;

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
    /// Longest line of a `POST /data` body (`--max-line-bytes`, as for every source).
    pub max_line: usize,
    /// The server's limits.
    pub limits: HttpLimits,
    /// How long a posted key stays live.
    pub key_horizon: KeyHorizon,
    /// The run's fatal-error hook ([`crate::dataflow::RunContext::on_fatal`]): the server's
    /// thread hands it a listener it cannot serve on.
    pub on_fatal: OnFatal,
}

/// The server's state, shared by every handler.
#[derive(Clone)]
pub(super) struct App {
    pub(super) context: ServeContext,
    pub(super) instruments: Arc<Instruments>,
    pub(super) limits: Arc<HttpLimits>,
    pub(super) stats: Arc<ServeStats>,
    /// Bytes of request bodies held: one permit per byte (`--max-inflight-bytes`).
    pub(super) budget: Arc<Semaphore>,
    pub(super) keys: Arc<KeyTracker>,
    pub(super) access: Arc<Access>,
}

impl App {
    /// One scrape's readings, for `/metrics`.
    pub(super) fn scrape(&self) -> Scrape {
        let context = &self.context;
        Scrape {
            metrics: context.metrics.snapshot(),
            log: context.log.as_ref().map(|l| l.stats()).unwrap_or_default(),
            models: context.models.counts(),
            live_keys: self.keys.live(),
            serve: self.serve_snapshot(),
        }
    }

    fn serve_snapshot(&self) -> ServeSnapshot {
        let s = &self.stats;
        ServeSnapshot {
            connections_open: s.connections_open.load(Relaxed),
            connections_refused: s.connections_refused.load(Relaxed),
            timeouts_header: s.timeouts_header.load(Relaxed),
            timeouts_idle: s.timeouts_idle.load(Relaxed),
            timeouts_write: s.timeouts_write.load(Relaxed),
            timeouts_body: s.timeouts_body.load(Relaxed),
            body_bytes_in_flight: self
                .limits
                .max_inflight_bytes
                .saturating_sub(self.budget.available_permits())
                as i64,
        }
    }
}
