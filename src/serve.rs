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
//! in number ([`KeyTracker`]), and the models served are bounded too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Bound;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

use crate::checkpoint::{Store, codec};
use crate::dataflow::{ModelLine, WindowConfig};
use crate::metrics::Metrics;
use crate::model::Status;
use crate::record::Schema;
use crate::source::log::AppendError;
use crate::source::{FileFormat, IngestLog, LineParser, RecordBatch};
use crate::types::{EXIT_SOURCE_OR_OUTPUT, OnFatal, fatal};
use crate::window::{Time, WindowSpec, parse_duration};

/// Default largest `POST /data` (and `POST /predict`) body (bytes): `--max-body`.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;

/// Per-line errors listed in a `POST /data` answer (all are counted in `rejected`).
pub const MAX_LISTED_ERRORS: usize = 100;

/// Default `--header-timeout`: from a request's first byte to the end of its head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `--body-timeout`: to read a whole request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `--http-idle-timeout`: a connection with no request under way is closed after it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Default `--max-inflight-bytes` (raised to `--max-body` when that is larger).
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 64 << 20;

/// Default `--max-key-bytes`.
pub const DEFAULT_MAX_KEY_BYTES: usize = 256;

/// Default `--max-keys`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// How long a read with `after_batch` waits for the batch without `wait`.
pub const DEFAULT_READ_WAIT: Duration = Duration::from_secs(5);

/// The longest `wait` of a read with `after_batch` (a longer one is cut to this).
pub const MAX_READ_WAIT: Duration = Duration::from_secs(60);

/// Keys in a `/models` page without `limit`.
pub const DEFAULT_PAGE: usize = 1000;

/// Largest `limit` of a `/models` page.
pub const MAX_PAGE: usize = 10_000;

/// Connections answered 503 at once when over `--max-connections` (more are just closed).
const MAX_REFUSING: usize = 64;

/// The HTTP server's limits (docs/serving.md, "Limits and guarantees").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpLimits {
    /// Largest request body (`--max-body`).
    pub max_body: usize,
    /// From a request's first byte to the end of its head (`--header-timeout`).
    pub header_timeout: Duration,
    /// To read a whole request body (`--body-timeout`).
    pub body_timeout: Duration,
    /// A connection with no request under way (and a stalled answer) is closed after
    /// this (`--http-idle-timeout`).
    pub idle_timeout: Duration,
    /// Open connections (`--max-connections`).
    pub max_connections: usize,
    /// Bytes of request bodies held at once, over all requests (`--max-inflight-bytes`).
    pub max_inflight_bytes: usize,
    /// Longest key of a posted record (`--max-key-bytes`).
    pub max_key_bytes: usize,
    /// Live keys, and keys served (`--max-keys`).
    pub max_keys: usize,
    /// Host names accepted besides the loopback names and the bound address
    /// (`--allow-host`; `*` accepts any).
    pub allow_hosts: Vec<String>,
    /// The bearer token's file (`--token-file`).
    pub token_file: Option<PathBuf>,
    /// The live dashboard at `/` (`--no-dashboard` turns it off).
    pub dashboard: bool,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_body: DEFAULT_MAX_BODY,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_keys: DEFAULT_MAX_KEYS,
            allow_hosts: Vec::new(),
            token_file: None,
            dashboard: true,
        }
    }
}

/// How long a posted key stays live after its newest record (see [`KeyTracker`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyHorizon {
    /// The longest a record keeps a window open after its time: the window length (the
    /// gap of sessions), ms.
    pub extent: Time,
    /// `--max-jump`: a record's time counts no further than this past the watermark, ms.
    pub max_jump: Time,
}

/// The [`KeyHorizon`] of a dataflow's windows.
pub fn key_horizon(windows: &WindowConfig) -> KeyHorizon {
    let extent = match windows.window {
        WindowSpec::Tumbling { length } | WindowSpec::Sliding { length, .. } => length,
        WindowSpec::Session { gap } => gap,
    };
    KeyHorizon {
        extent,
        max_jump: windows.max_jump,
    }
}

// ---------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------

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

impl KeyModels {
    /// The end of the newest window this key has a model of: its age for eviction.
    fn newest_end(&self) -> Time {
        let end = |m: &Option<ModelLine>| m.as_ref().map_or(Time::MIN, |m| m.window_end);
        end(&self.last_final).max(end(&self.open))
    }
}

/// Counts of a [`ModelStore`], kept as it changes (so reading them is O(1)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModelCounts {
    /// Keys held.
    pub keys: usize,
    /// Keys with a final model.
    pub finals: usize,
    /// Keys with a running estimate.
    pub open: usize,
    /// Keys forgotten to stay within `--max-keys` since the process started.
    pub evicted: u64,
}

#[derive(Default)]
struct Models {
    keys: BTreeMap<String, KeyModels>,
    /// `(newest window end, key)` of every key: the oldest is evicted first.
    by_age: BTreeSet<(Time, String)>,
    counts: ModelCounts,
}

impl Models {
    /// Applies `change` to `key`'s models, keeping the index and counts.
    fn change<R>(&mut self, key: &str, change: impl FnOnce(&mut KeyModels) -> R) -> R {
        let Models {
            keys,
            by_age,
            counts,
        } = self;
        if !keys.contains_key(key) {
            counts.keys += 1;
            by_age.insert((Time::MIN, key.to_owned()));
            keys.insert(
                key.to_owned(),
                KeyModels {
                    key: key.to_owned(),
                    ..KeyModels::default()
                },
            );
        }
        let entry = keys.get_mut(key).expect("inserted above");
        let (age, had_final, had_open) = (
            entry.newest_end(),
            entry.last_final.is_some(),
            entry.open.is_some(),
        );
        let result = change(entry);
        let new_age = entry.newest_end();
        counts.finals = counts.finals + entry.last_final.is_some() as usize - had_final as usize;
        counts.open = counts.open + entry.open.is_some() as usize - had_open as usize;
        if new_age != age {
            by_age.remove(&(age, key.to_owned()));
            by_age.insert((new_age, key.to_owned()));
        }
        result
    }

    /// Forgets the keys with the oldest models until at most `max_keys` are left.
    fn evict(&mut self, max_keys: usize) {
        while self.keys.len() > max_keys {
            let Some((_, key)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(gone) = self.keys.remove(&key) {
                self.counts.keys -= 1;
                self.counts.finals -= gone.last_final.is_some() as usize;
                self.counts.open -= gone.open.is_some() as usize;
                self.counts.evicted += 1;
            }
        }
    }
}

/// The newest models of every key: written by the dataflow's sink, read by the server.
///
/// It holds at most `max_keys` keys (`--max-keys`): past that, the keys whose newest
/// model (final or running estimate) has the oldest window end are forgotten first, so
/// that keys still receiving records stay. A forgotten key answers 404 until it has a
/// model again; its final models stay in `--out` (and in the checkpoint store, from which
/// a restart loads the newest `max_keys`).
pub struct ModelStore {
    models: RwLock<Models>,
    store: Option<Arc<Store>>,
    max_keys: usize,
    /// The served mark: every epoch (ingest-log batch) through it is folded into
    /// `models` (`None`: none yet). Reads with `after_batch` wait on it.
    served: watch::Sender<Option<u64>>,
    /// The final models emitted by this process, for `GET /models/stream`.
    feed: ModelFeed,
}

impl Default for ModelStore {
    fn default() -> ModelStore {
        ModelStore {
            models: RwLock::default(),
            store: None,
            max_keys: usize::MAX,
            served: watch::channel(None).0,
            feed: ModelFeed::new(),
        }
    }
}

/// Final models recently emitted, numbered, for `GET /models/stream`: a ring of the last
/// [`FEED_KEEP`] (so a client that reconnects with `Last-Event-ID` gets what it missed),
/// and a broadcast of each as it comes, bounded per client ([`FEED_CLIENT_QUEUE`]).
struct ModelFeed {
    /// This run's id: event ids are `RUN-SEQ`, so an id of another run is recognised.
    run: u64,
    ring: Mutex<(u64, VecDeque<FeedEvent>)>,
    tx: broadcast::Sender<FeedEvent>,
}

/// One numbered final model, as its JSON text.
type FeedEvent = (u64, Arc<str>);

/// Final models kept for clients that resume with `Last-Event-ID`.
pub const FEED_KEEP: usize = 16_384;

/// Events a stream client may fall behind by before it is dropped.
pub const FEED_CLIENT_QUEUE: usize = 4_096;

impl ModelFeed {
    fn new() -> ModelFeed {
        ModelFeed {
            run: crate::checkpoint::unix_ms(),
            ring: Mutex::new((0, VecDeque::new())),
            tx: broadcast::channel(FEED_CLIENT_QUEUE).0,
        }
    }

    fn push(&self, line: &ModelLine) {
        let Ok(json) = serde_json::to_string(line) else {
            return;
        };
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.0 += 1;
        let event: FeedEvent = (ring.0, json.into());
        if ring.1.len() == FEED_KEEP {
            ring.1.pop_front();
        }
        ring.1.push_back(event.clone());
        // Sent under the lock, so that a subscriber's backlog and its stream meet exactly.
        let _ = self.tx.send(event);
    }

    /// A subscription, and the kept events after `after` (`None`: every kept event);
    /// `Err` when `after` is older than what is kept.
    fn resume(
        &self,
        after: Option<u64>,
    ) -> (broadcast::Receiver<FeedEvent>, Result<Vec<FeedEvent>, u64>) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let oldest = ring.1.front().map_or(ring.0 + 1, |e| e.0);
        let backlog = match after {
            Some(a) if a + 1 < oldest => Err(oldest),
            Some(a) => Ok(ring.1.iter().filter(|e| e.0 > a).cloned().collect()),
            None => Ok(ring.1.iter().cloned().collect()),
        };
        (rx, backlog)
    }
}

impl ModelStore {
    /// A model store of at most `max_keys` keys, kept in `store` too if given (and loaded
    /// from it now: the newest `max_keys`).
    pub fn open(store: Option<Arc<Store>>, max_keys: usize) -> Result<ModelStore, String> {
        let mut models = Models::default();
        if let Some(store) = &store {
            for bytes in store.models().map_err(|e| e.to_string())? {
                let model = ModelLine::decode_stored(&bytes)
                    .map_err(|e| format!("{}: stored model: {e}", store.path().display()))?;
                models.change(&model.key.clone(), |entry| entry.last_final = Some(model));
            }
            models.evict(max_keys);
            models.counts.evicted = 0;
        }
        Ok(ModelStore {
            models: RwLock::new(models),
            store,
            max_keys: max_keys.max(1),
            served: watch::channel(None).0,
            feed: ModelFeed::new(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Models> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes model emissions (final, provisional, revised, or running estimates).
    pub fn update<'a>(&self, lines: impl IntoIterator<Item = &'a ModelLine>) {
        let mut finals: BTreeMap<&str, &ModelLine> = BTreeMap::new();
        {
            let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
            for line in lines {
                let newest = |m: &ModelLine| (m.window_end, m.window_start, m.revision);
                let kept = models.change(&line.key, |entry| {
                    if line.is_final {
                        let newer = entry
                            .last_final
                            .as_ref()
                            .is_none_or(|f| newest(line) >= newest(f));
                        if newer {
                            entry.last_final = Some(line.clone());
                        }
                        if entry
                            .open
                            .as_ref()
                            .is_some_and(|o| o.window_end <= line.window_end)
                        {
                            entry.open = None;
                        }
                        newer
                    } else {
                        if entry
                            .last_final
                            .as_ref()
                            .is_none_or(|f| line.window_end > f.window_end)
                        {
                            entry.open = Some(line.clone());
                        }
                        false
                    }
                });
                if kept {
                    finals.insert(&line.key, line);
                }
                if line.is_final {
                    self.feed.push(line);
                }
            }
            models.evict(self.max_keys);
        }
        if let Some(store) = &self.store
            && !finals.is_empty()
        {
            let encoded = finals.into_iter().map(|(k, m)| (k, codec::encode(m)));
            if let Err(e) = store.put_models(encoded) {
                tracing::warn!("keeping models in the checkpoint store: {e}");
            }
        }
    }

    /// Every epoch (batch of the ingest log) through `epoch` has been folded in: the
    /// final models and running estimates of those epochs are all here. Called by the
    /// dataflow as the frontier of the streams that update the store passes `epoch`;
    /// the mark never goes back (`u64::MAX`: the dataflow has ended).
    pub fn served_through(&self, epoch: u64) {
        self.served.send_if_modified(|served| {
            let newer = served.is_none_or(|s| s < epoch);
            if newer {
                *served = Some(epoch);
            }
            newer
        });
    }

    /// The served mark: the last epoch folded in, if any (see
    /// [`served_through`](Self::served_through)).
    pub fn served(&self) -> Option<u64> {
        *self.served.borrow()
    }

    /// Waits (without blocking a thread) until batch `batch` has been folded in, at most
    /// `wait`: the served mark then, or, when the wait ran out, the mark as it is.
    pub async fn wait_served(&self, batch: u64, wait: Duration) -> Result<u64, Option<u64>> {
        let mut changes = self.served.subscribe();
        let reached =
            tokio::time::timeout(wait, changes.wait_for(|s| s.is_some_and(|s| s >= batch))).await;
        match reached {
            Ok(Ok(served)) => Ok(served.expect("the mark is at least `batch`")),
            _ => Err(self.served()),
        }
    }

    /// The models of `key`.
    pub fn get(&self, key: &str) -> Option<KeyModels> {
        self.read().keys.get(key).cloned()
    }

    /// The models of every key, by key (O(keys): `/models` reads [`page`](Self::page)s).
    pub fn all(&self) -> Vec<KeyModels> {
        self.read().keys.values().cloned().collect()
    }

    /// Up to `limit` keys' models in key order, from the first key after `after` (from
    /// the first key without it), and the key to give as `after` for the next page
    /// (`None`: this page is the last).
    pub fn page(&self, after: Option<&str>, limit: usize) -> (Vec<KeyModels>, Option<String>) {
        let models = self.read();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page: Vec<KeyModels> = models
            .keys
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(_, m)| m.clone())
            .collect();
        let next = if page.len() > limit {
            page.pop();
            page.last().map(|m| m.key.clone())
        } else {
            None
        };
        (page, next)
    }

    /// Keys held, with a final model, with a running estimate, and forgotten.
    pub fn counts(&self) -> ModelCounts {
        self.read().counts
    }
}

// ---------------------------------------------------------------------------------------
// Live keys
// ---------------------------------------------------------------------------------------

/// The live keys of `POST /data`, capped at `--max-keys`.
///
/// A key is *live* from the first accepted record of it until the watermark passes the
/// end of every window its newest record can be in: until `watermark > t + extent`, with
/// `t` the newest record's time and `extent` the window length (the gap of sessions).
/// `t` counts no further than `--max-jump` past the largest time admitted before its
/// batch, so that a record far ahead cannot keep its key live for long. A record already
/// behind that bound (late) adds no live key.
/// A `POST /data` whose records would take the live keys over the cap is refused whole.
pub struct KeyTracker {
    max_keys: usize,
    horizon: KeyHorizon,
    live: Mutex<LiveKeys>,
}

struct LiveKeys {
    /// Key → the watermark up to which it is live.
    until: HashMap<Arc<str>, Time>,
    by_until: BTreeSet<(Time, Arc<str>)>,
    /// The largest record time admitted (as counted, see [`KeyTracker`]); `Time::MIN`
    /// before the first.
    high: Time,
}

impl Default for LiveKeys {
    fn default() -> LiveKeys {
        LiveKeys {
            until: HashMap::new(),
            by_until: BTreeSet::new(),
            high: Time::MIN,
        }
    }
}

/// The keys an admitted batch made live, to forget again if the batch is not accepted.
#[derive(Debug, Default)]
pub struct Admitted {
    added: Vec<(Arc<str>, Time)>,
}

/// Why a batch's keys were refused.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyKeys {
    /// Keys live now.
    pub live: usize,
    /// Keys the batch would add.
    pub new: usize,
    /// The cap.
    pub limit: usize,
}

impl std::fmt::Display for TooManyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} live keys and {} new in this body would exceed the limit of {} live keys \
             (--max-keys); nothing was accepted. Keys stop being live once the watermark \
             passes their windows; retry later",
            self.live, self.new, self.limit
        )
    }
}

impl KeyTracker {
    /// A tracker of at most `max_keys` live keys.
    pub fn new(max_keys: usize, horizon: KeyHorizon) -> KeyTracker {
        KeyTracker {
            max_keys,
            horizon,
            live: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LiveKeys> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the keys the watermark has passed.
    fn prune(live: &mut LiveKeys, watermark: Time) {
        while let Some((until, _)) = live.by_until.first() {
            if *until >= watermark {
                break;
            }
            if let Some((_, key)) = live.by_until.pop_first() {
                live.until.remove(&key);
            }
        }
    }

    /// Makes the keys of `batch` live, or refuses them all if that would exceed the cap.
    pub fn admit(&self, batch: &RecordBatch, watermark: Time) -> Result<Admitted, TooManyKeys> {
        let mut newest: HashMap<&str, Time> = HashMap::new();
        for (&t, key) in batch.time.iter().zip(&batch.key) {
            let e = newest.entry(key.as_str()).or_insert(t);
            *e = (*e).max(t);
        }
        let mut live = self.lock();
        Self::prune(&mut live, watermark);
        let mut changes: Vec<(&str, Time, Option<Time>)> = Vec::new();
        let mut new = 0;
        let mut high = live.high;
        for (key, t) in newest {
            // Counted no further than --max-jump past the largest time admitted before
            // this batch (the watermark itself may not have caught up with it yet).
            let counted = match live.high {
                Time::MIN => t,
                before => t.min(before.saturating_add(self.horizon.max_jump)),
            };
            let until = counted.saturating_add(self.horizon.extent);
            if until < watermark {
                continue;
            }
            high = high.max(counted);
            match live.until.get(key) {
                Some(&old) if old >= until => {}
                Some(&old) => changes.push((key, until, Some(old))),
                None => {
                    new += 1;
                    changes.push((key, until, None));
                }
            }
        }
        if live.until.len() + new > self.max_keys {
            return Err(TooManyKeys {
                live: live.until.len(),
                new,
                limit: self.max_keys,
            });
        }
        live.high = high;
        let mut admitted = Admitted::default();
        for (key, until, old) in changes {
            let key: Arc<str> = match old {
                Some(old) => {
                    let (key, _) = live.until.get_key_value(key).expect("live key");
                    let key = Arc::clone(key);
                    live.by_until.remove(&(old, Arc::clone(&key)));
                    key
                }
                None => {
                    let key: Arc<str> = key.into();
                    admitted.added.push((Arc::clone(&key), until));
                    key
                }
            };
            live.until.insert(Arc::clone(&key), until);
            live.by_until.insert((until, key));
        }
        Ok(admitted)
    }

    /// The batch `admitted` was for was not accepted: forgets the keys it made live (those
    /// no other batch has made live since).
    pub fn undo(&self, admitted: Admitted) {
        let mut live = self.lock();
        for (key, until) in admitted.added {
            if live.until.get(&key) == Some(&until) {
                live.until.remove(&key);
                live.by_until.remove(&(until, key));
            }
        }
    }

    /// Keys live now (as of the last post).
    pub fn live(&self) -> usize {
        self.lock().until.len()
    }
}

// ---------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------

/// Counters of the server itself, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
struct ServeStats {
    connections_open: AtomicI64,
    connections_refused: AtomicU64,
    timeouts_header: AtomicU64,
    timeouts_idle: AtomicU64,
    timeouts_write: AtomicU64,
    timeouts_body: AtomicU64,
}

/// What a connection is doing, as its reads and writes see it.
#[derive(Debug)]
struct Phase {
    /// A request has been handed to the router and not answered yet.
    in_request: bool,
    /// When the connection last became idle (accepted, or an answer given).
    idle_since: Instant,
    /// When the first byte of the next request head arrived.
    head_started: Option<Instant>,
    /// The task of the last read that waited: woken when a request ends, so that the read
    /// is tried again with the idle deadline.
    reader: Option<std::task::Waker>,
}

#[derive(Debug)]
struct Activity(Mutex<Phase>);

#[derive(Clone, Copy, Debug)]
enum Timeout {
    Header,
    Idle,
    Write,
}

impl Activity {
    fn new() -> Activity {
        Activity(Mutex::new(Phase {
            in_request: false,
            idle_since: Instant::now(),
            head_started: None,
            reader: None,
        }))
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin_request(&self) {
        let mut phase = self.phase();
        phase.in_request = true;
        phase.head_started = None;
    }

    fn end_request(&self) {
        let mut phase = self.phase();
        phase.in_request = false;
        phase.idle_since = Instant::now();
        if let Some(reader) = phase.reader.take() {
            reader.wake();
        }
    }

    fn bytes_read(&self) {
        let mut phase = self.phase();
        if !phase.in_request && phase.head_started.is_none() {
            phase.head_started = Some(Instant::now());
        }
    }

    /// When a read that waits must give up: the head's deadline once a head has begun,
    /// the idle deadline before; none while a request is being handled (its body has its
    /// own deadline).
    fn read_deadline(
        &self,
        limits: &HttpLimits,
        reader: &std::task::Waker,
    ) -> Option<(Instant, Timeout)> {
        let mut phase = self.phase();
        if phase.in_request {
            if !phase.reader.as_ref().is_some_and(|r| r.will_wake(reader)) {
                phase.reader = Some(reader.clone());
            }
            return None;
        }
        Some(match phase.head_started {
            Some(t) => (t + limits.header_timeout, Timeout::Header),
            None => (phase.idle_since + limits.idle_timeout, Timeout::Idle),
        })
    }
}

/// A connection's socket, closed (an error to hyper) when a read or a write waits past
/// its deadline (see [`Activity::read_deadline`]; a write that makes no progress for
/// `--http-idle-timeout`).
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    limits: Arc<HttpLimits>,
    stats: Arc<ServeStats>,
    read_timer: Pin<Box<tokio::time::Sleep>>,
    write_timer: Pin<Box<tokio::time::Sleep>>,
    write_stalled: Option<Instant>,
}

impl Watched {
    fn new(
        stream: TcpStream,
        activity: Arc<Activity>,
        limits: Arc<HttpLimits>,
        stats: Arc<ServeStats>,
    ) -> Watched {
        let now = tokio::time::Instant::now();
        Watched {
            stream,
            activity,
            limits,
            stats,
            read_timer: Box::pin(tokio::time::sleep_until(now)),
            write_timer: Box::pin(tokio::time::sleep_until(now)),
            write_stalled: None,
        }
    }

    /// Pending until `deadline`, then the error that closes the connection.
    fn expire<T>(
        timer: &mut Pin<Box<tokio::time::Sleep>>,
        stats: &ServeStats,
        cx: &mut Context<'_>,
        deadline: Instant,
        kind: Timeout,
    ) -> Poll<io::Result<T>> {
        if Instant::now() < deadline {
            timer.as_mut().reset(deadline.into());
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let (counter, what) = match kind {
            Timeout::Header => (&stats.timeouts_header, "request head not complete in time"),
            Timeout::Idle => (&stats.timeouts_idle, "idle connection"),
            Timeout::Write => (&stats.timeouts_write, "answer not read by the client"),
        };
        counter.fetch_add(1, Relaxed);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
    }

    fn poll_written(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Pending => {
                let since = *self.write_stalled.get_or_insert_with(Instant::now);
                Self::expire(
                    &mut self.write_timer,
                    &self.stats,
                    cx,
                    since + self.limits.idle_timeout,
                    Timeout::Write,
                )
            }
            ready => {
                self.write_stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.activity.read_deadline(&this.limits, cx.waker()) {
                None => Poll::Pending,
                Some((deadline, kind)) => {
                    Self::expire(&mut this.read_timer, &this.stats, cx, deadline, kind)
                }
            },
            error => error,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.poll_written(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.poll_written(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router, as hyper calls it for one connection: marks the connection busy while a
/// request is handled.
#[derive(Clone)]
struct Tracked {
    router: hyper_util::service::TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.activity.begin_request();
        let answer = self.router.call(request);
        let activity = Arc::clone(&self.activity);
        Box::pin(async move {
            let response = answer.await;
            activity.end_request();
            response
        })
    }
}

/// Answers a connection over `--max-connections` with a 503 and closes it, within 1 s.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let body = json!({
        "error": format!(
            "the server has {limit} connections open (--max-connections); retry later"
        )
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes, so that closing does not reset the
        // connection before the client has read the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// The accept loop: one task per connection, at most `--max-connections` at once.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Arc<HttpLimits>,
    stats: Arc<ServeStats>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // wait a little rather than spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            stats.connections_refused.fetch_add(1, Relaxed);
            if let Ok(refusal) = Arc::clone(&refusing).try_acquire_owned() {
                let limit = limits.max_connections;
                tokio::spawn(async move {
                    refuse(stream, limit).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = hyper_util::rt::TokioIo::new(Watched::new(
            stream,
            Arc::clone(&activity),
            Arc::clone(&limits),
            Arc::clone(&stats),
        ));
        let service = Tracked {
            router: hyper_util::service::TowerToHyperService::new(router.clone()),
            activity,
        };
        let connection = http.serve_connection(io, service);
        let stats = Arc::clone(&stats);
        stats.connections_open.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let _ = connection.await;
            stats.connections_open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
}

// ---------------------------------------------------------------------------------------
// Access: Host allow-list and bearer token
// ---------------------------------------------------------------------------------------

/// Who may use the server: the Host names accepted, and the bearer token.
struct Access {
    /// Lower-case host names (IPv6 addresses in brackets); `None`: any.
    hosts: Option<HashSet<String>>,
    token: Option<Vec<u8>>,
}

impl Access {
    fn new(limits: &HttpLimits, bound: SocketAddr) -> Result<Access, String> {
        let hosts = if limits.allow_hosts.iter().any(|h| h == "*") {
            None
        } else {
            let mut hosts: HashSet<String> = ["localhost", "127.0.0.1", "[::1]"]
                .into_iter()
                .map(str::to_owned)
                .collect();
            if !bound.ip().is_unspecified() {
                hosts.insert(host_name(bound.ip()));
            }
            for host in &limits.allow_hosts {
                let host = host.to_ascii_lowercase();
                match host.parse::<IpAddr>() {
                    Ok(ip) => hosts.insert(host_name(ip)),
                    Err(_) => hosts.insert(host.trim_end_matches('.').to_owned()),
                };
            }
            Some(hosts)
        };
        let token = match &limits.token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(format!(
                        "--token-file {}: the file is empty",
                        path.display()
                    ));
                }
                if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!(
                        "--token-file {}: the token has a space or a control character",
                        path.display()
                    ));
                }
                Some(token.as_bytes().to_vec())
            }
        };
        Ok(Access { hosts, token })
    }

    /// `None` when the request's Host and (with `needs_token`) token are accepted, else
    /// the answer.
    fn refusal(&self, headers: &HeaderMap, needs_token: bool) -> Option<Response> {
        if let Some(hosts) = &self.hosts {
            let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
                return Some(error(StatusCode::BAD_REQUEST, "a Host header is required"));
            };
            let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
            if !hosts.contains(&name) {
                return Some(error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Host {:?} is not allowed (a defense against DNS rebinding): the \
                         loopback names and the bound address are; add it with --allow-host",
                        truncated(&name, 100)
                    ),
                ));
            }
        }
        if needs_token && let Some(token) = &self.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, rest) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                });
            let refused = |message: &str| {
                let mut response = error(StatusCode::UNAUTHORIZED, message);
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            };
            match given {
                None => {
                    return Some(refused(
                        "this server needs a bearer token (--token-file): \
                         send Authorization: Bearer <token>",
                    ));
                }
                Some(given) if !same_token(given.as_bytes(), token) => {
                    return Some(refused("the bearer token is not the right one"));
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// An address as a Host header names it (IPv6 in brackets).
fn host_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A Host header's name without its port.
fn strip_port(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Compares a given token with the expected one in a time that depends only on the
/// expected token's length.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = (given.len() != expected.len()) as u8;
    for (i, &e) in expected.iter().enumerate() {
        difference |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(difference) == 0
}

/// At most `max` characters of `text`, with `…` when cut.
fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
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
    models: ModelCounts,
    live_keys: usize,
    serve: ServeSnapshot,
}

/// A copy of [`ServeStats`] and the body budget.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct ServeSnapshot {
    connections_open: i64,
    connections_refused: u64,
    timeouts_header: u64,
    timeouts_idle: u64,
    timeouts_write: u64,
    timeouts_body: u64,
    body_bytes_in_flight: i64,
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

    fn render(&self, app: &App) -> String {
        let context = &app.context;
        let scrape = Scrape {
            metrics: context.metrics.snapshot(),
            log: context.log.as_ref().map(|l| l.stats()).unwrap_or_default(),
            models: context.models.counts(),
            live_keys: app.keys.live(),
            serve: app.serve_snapshot(),
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
        out.extend_from_slice(context.metrics.render_processes().as_bytes());
        String::from_utf8(out).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

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
    /// The server's limits.
    pub limits: HttpLimits,
    /// How long a posted key stays live.
    pub key_horizon: KeyHorizon,
    /// The run's fatal-error hook ([`crate::dataflow::RunContext::on_fatal`]): the server's
    /// thread hands it a listener it cannot serve on.
    pub on_fatal: OnFatal,
}

#[derive(Clone)]
struct App {
    context: ServeContext,
    instruments: Arc<Instruments>,
    limits: Arc<HttpLimits>,
    stats: Arc<ServeStats>,
    /// Bytes of request bodies held: one permit per byte (`--max-inflight-bytes`).
    budget: Arc<Semaphore>,
    keys: Arc<KeyTracker>,
    access: Arc<Access>,
}

impl App {
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

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A 503 answer with `Retry-After: 1`.
fn unavailable(message: impl Into<String>) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
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
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
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
        "/models/stream" => "/models/stream",
        "/" => "/",
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

/// The Host allow-list and the bearer token, for every endpoint but `/healthz`; the
/// dashboard's page (`/`, which holds no data) needs an allowed Host, not the token.
async fn guard(
    State(app): State<App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if path != "/healthz"
        && let Some(refused) = app.access.refusal(request.headers(), path != "/")
    {
        return refused;
    }
    next.run(request).await
}

/// Makes every error answer JSON: those the router makes itself (405, with its `Allow`
/// header kept) and any other error without a JSON body.
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let path = truncated(request.uri().path(), 200);
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        // The router adds its `Allow` header outside this layer.
        let allowed = match path.as_str() {
            "/data" | "/predict" => "POST",
            _ => "GET, HEAD",
        };
        format!("{method} is not allowed on {path}; allowed: {allowed}")
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let body = json!({ "error": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// Reads a request body of at most `limit` bytes (`--max-body`) within `--body-timeout`,
/// counting its bytes against `--max-inflight-bytes` as they arrive; the permit returned
/// holds them until dropped.
async fn read_body(
    app: &App,
    mut body: Body,
    limit: usize,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), Response> {
    let deadline = tokio::time::Instant::now() + app.limits.body_timeout;
    let mut bytes = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                app.stats.timeouts_body.fetch_add(1, Relaxed);
                let mut response = error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body was not received within {:?} (--body-timeout): {} bytes came",
                        app.limits.body_timeout,
                        bytes.len()
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(response);
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if bytes.len() + data.len() > limit {
            return Err(too_large(limit));
        }
        let permits = u32::try_from(data.len()).unwrap_or(u32::MAX);
        match Arc::clone(&app.budget).try_acquire_many_owned(permits) {
            Ok(permit) => match held.as_mut() {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            },
            Err(_) => {
                return Err(unavailable(format!(
                    "request bodies in flight are over {} bytes (--max-inflight-bytes); \
                     retry later",
                    app.limits.max_inflight_bytes
                )));
            }
        }
        bytes.extend_from_slice(&data);
    }
    Ok((bytes, held))
}

/// A 413 answer: a body over `--max-body`.
fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body over {limit} bytes (--max-body): split it"),
    )
}

/// Whether a declared `Content-Length` is over `limit`.
fn declared_over(headers: &HeaderMap, limit: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
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
    /// Lines (among `rejected`) whose key is over the key-length limit: then nothing of
    /// the body is accepted.
    #[serde(skip)]
    pub keys_too_long: u64,
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

/// Parses a `POST /data` body: the records, and the rejected lines. A record whose key
/// is longer than `max_key_bytes` is a rejected line too (counted in
/// [`DataAnswer::keys_too_long`]), and not kept.
pub fn parse_body(
    body: &[u8],
    format: FileFormat,
    schema: &Schema,
    max_key_bytes: usize,
) -> Result<(RecordBatch, DataAnswer), String> {
    let mut parser = LineParser::new(format, schema);
    let mut batch = RecordBatch::default();
    let mut answer = DataAnswer::default();
    let reject = |answer: &mut DataAnswer, line: u64, field: Option<String>, message: String| {
        answer.rejected += 1;
        if answer.errors.len() < MAX_LISTED_ERRORS {
            answer.errors.push(LineError {
                line,
                field,
                message,
            });
        }
    };
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
            Ok(Some(record)) if record.key.len() > max_key_bytes => {
                answer.keys_too_long += 1;
                let message = format!(
                    "the key is {} bytes, over the limit of {max_key_bytes} bytes (--max-key-bytes)",
                    record.key.len()
                );
                reject(&mut answer, number, Some(schema.key.clone()), message);
            }
            Ok(Some(record)) => batch.push(record),
            Ok(None) => {}
            Err((field, message)) => reject(&mut answer, number, field, message),
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
    let limit = app.limits.max_body;
    if declared_over(&headers, limit) {
        return too_large(limit);
    }
    let (bytes, held) = match read_body(&app, body, limit).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let schema = context.schema.clone();
    let metrics = Arc::clone(&context.metrics);
    let keys = Arc::clone(&app.keys);
    let max_key_bytes = app.limits.max_key_bytes;
    let result = tokio::task::spawn_blocking(move || {
        // The body's bytes stay counted against --max-inflight-bytes until it is done.
        let _held = held;
        let (batch, mut answer) = match parse_body(&bytes, format, &schema, max_key_bytes) {
            Ok(parsed) => parsed,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        drop(bytes);
        metrics
            .malformed
            .fetch_add(answer.rejected, std::sync::atomic::Ordering::Relaxed);
        if answer.keys_too_long > 0 {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": format!(
                        "{} line(s) have a key over {max_key_bytes} bytes (--max-key-bytes): \
                         nothing of this body was accepted",
                        answer.keys_too_long
                    ),
                    "accepted": 0,
                    "rejected": answer.rejected,
                    "errors": answer.errors,
                })),
            )
                .into_response();
        }
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
        let watermark = metrics.watermark.load(Relaxed);
        let admitted = match keys.admit(&batch, watermark) {
            Ok(admitted) => admitted,
            Err(too_many) => return unavailable(too_many.to_string()),
        };
        match log.append(Arc::new(batch)) {
            Ok(seq) => {
                answer.batch = Some(seq);
                (StatusCode::OK, Json(answer)).into_response()
            }
            Err(e) => {
                keys.undo(admitted);
                match e {
                    AppendError::Backpressure { .. } | AppendError::Closed => {
                        unavailable(e.to_string())
                    }
                    e => error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("records not accepted: {e}"),
                    ),
                }
            }
        }
    })
    .await;
    result.unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A query string the endpoint cannot read: 400.
fn bad_query(rejection: QueryRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("query string: {}", rejection.body_text()),
    )
}

/// How long a read waits for its `after_batch`: a duration (`500ms`, `5s`; a bare
/// number is milliseconds).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Wait {
    /// Milliseconds.
    Millis(u64),
    /// A duration with its unit.
    Text(String),
}

/// `after_batch` and `wait` of a read, from its query string.
#[derive(Debug, Default, Deserialize)]
struct FreshQuery {
    after_batch: Option<u64>,
    wait: Option<String>,
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
fn read_error(app: &App, status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": message.into(), "as_of": as_of(app) })),
    )
        .into_response()
}

/// Waits until `after_batch` (if any) is folded into the served models, at most `wait`
/// (default [`DEFAULT_READ_WAIT`], cut to [`MAX_READ_WAIT`]); then the read's `as_of`.
/// A wait that runs out is a 503 with `Retry-After`; a `wait` that is no duration a 400.
async fn fresh(
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
struct KeyQuery {
    key: Option<String>,
    // Not a flattened `FreshQuery`: flattened query fields lose their types.
    after_batch: Option<u64>,
    wait: Option<String>,
}

async fn model(State(app): State<App>, query: Result<Query<KeyQuery>, QueryRejection>) -> Response {
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
struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
    after_batch: Option<u64>,
    wait: Option<String>,
}

async fn models(
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
    /// Answer once this ingest-log batch is folded into the served models (the query
    /// parameter `after_batch` does the same; this field wins).
    pub after_batch: Option<u64>,
    /// How long to wait for `after_batch` (default [`DEFAULT_READ_WAIT`]).
    pub wait: Option<Wait>,
    /// Which model predicts (default [`Use::Final`]).
    #[serde(rename = "use", default)]
    pub use_model: Use,
}

/// Which model `POST /predict` uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Use {
    /// The newest final model.
    #[default]
    Final,
    /// The running estimate of the open window that closes next, when the key has one
    /// (else the newest final model).
    Latest,
}

async fn predict(
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
    let (body, held) = match read_body(&app, body, limit).await {
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
        let y = coef[0] + x.iter().zip(&coef[1..]).map(|(a, b)| a * b).sum::<f64>();
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

async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.instruments.render(&app),
    )
        .into_response()
}

/// `GET /models/stream`: server-sent events, one per final model as it is emitted
/// (`id: RUN-SEQ`, `data:` the model's JSON). With `Last-Event-ID` of this run, the
/// events after it that are still kept come first, then the live ones, each once. An id
/// of another run (a restart) starts from the oldest kept; one older than what is kept
/// gets an `event: gap` first. A client that falls [`FEED_CLIENT_QUEUE`] events behind
/// gets `event: dropped` and the stream ends: it never slows the engine.
async fn model_stream(State(app): State<App>, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let feed = &app.context.models.feed;
    let run = feed.run;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('-'))
        .filter(|(r, _)| r.parse::<u64>().ok() == Some(run))
        .and_then(|(_, seq)| seq.parse::<u64>().ok());
    let (rx, backlog) = feed.resume(after);
    let mut first: Vec<Event> = Vec::new();
    let mut last = after.unwrap_or(0);
    let backlog = match backlog {
        Ok(events) => events,
        Err(oldest) => {
            first.push(Event::default().event("gap").data(format!(
                "events {}..{} are no longer kept (the newest {FEED_KEEP} are); compare with --out",
                last + 1,
                oldest - 1
            )));
            feed.resume(None).1.unwrap_or_default()
        }
    };
    for (seq, json) in backlog {
        last = seq;
        first.push(Event::default().id(format!("{run}-{seq}")).data(&*json));
    }
    let backlog = futures_util::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let live = futures_util::stream::unfold(Some((rx, last)), move |state| async move {
        let (mut rx, mut last) = state?;
        loop {
            match rx.recv().await {
                Ok((seq, _)) if seq <= last => continue,
                Ok((seq, json)) => {
                    last = seq;
                    let event = Event::default().id(format!("{run}-{seq}")).data(&*json);
                    return Some((Ok(event), Some((rx, last))));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let event = Event::default().event("dropped").data(format!(
                        "this client fell {n} events behind (at most {FEED_CLIENT_QUEUE}): \
                         reconnect with Last-Event-ID {run}-{last}"
                    ));
                    return Some((Ok(event), None));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(futures_util::StreamExt::chain(backlog, live))
        .keep_alive(KeepAlive::default())
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
        "connections": app.stats.connections_open.load(Relaxed),
        "keys": app.context.models.counts(),
        "live_keys": app.keys.live(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(key: &str, end: Time, is_final: bool) -> ModelLine {
        ModelLine {
            key: key.into(),
            window_start: end - 10,
            window_end: end,
            n: 1,
            coef: None,
            r2: None,
            rmse: None,
            cond: None,
            status: Status::Underdetermined,
            is_final,
            revision: 0,
            closed_by: None,
        }
    }

    #[test]
    fn model_store_counts_pages_and_evicts_the_oldest() {
        let store = ModelStore::open(None, 3).unwrap();
        store.update(&[
            line("a", 10, true),
            line("b", 20, false),
            line("c", 30, true),
        ]);
        store.update(&[line("c", 40, false)]);
        assert_eq!(
            store.counts(),
            ModelCounts {
                keys: 3,
                finals: 2,
                open: 2,
                evicted: 0
            }
        );
        // A fourth key: the one with the oldest newest window ("a", 10) goes.
        store.update(&[line("d", 50, false)]);
        assert!(store.get("a").is_none());
        assert_eq!(store.counts().keys, 3);
        assert_eq!(store.counts().evicted, 1);
        assert_eq!(store.counts().finals, 1);
        // "b" gets a newer model (60), and a fifth key comes: "c" (40) is the oldest.
        store.update(&[line("b", 60, true), line("e", 70, false)]);
        assert!(store.get("c").is_none(), "{:?}", store.all());
        let (page, next) = store.page(None, 2);
        let keys: Vec<&str> = page.iter().map(|m| m.key.as_str()).collect();
        assert_eq!((keys, next.as_deref()), (vec!["b", "d"], Some("d")));
        let (page, next) = store.page(Some("d"), 2);
        assert_eq!(page.len(), 1);
        assert_eq!((page[0].key.as_str(), next), ("e", None));
        let c = store.counts();
        assert_eq!((c.keys, c.finals, c.open), (3, 1, 2), "{c:?}");
    }

    fn batch(rows: &[(Time, &str)]) -> RecordBatch {
        let mut b = RecordBatch::default();
        for (t, k) in rows {
            b.time.push(*t);
            b.key.push((*k).to_owned());
            b.z.push(0.0);
        }
        b
    }

    #[test]
    fn live_keys_are_capped_and_forgotten_behind_the_watermark() {
        let horizon = KeyHorizon {
            extent: 100,
            max_jump: 1000,
        };
        let keys = KeyTracker::new(2, horizon);
        keys.admit(&batch(&[(0, "a"), (5, "b")]), Time::MIN)
            .unwrap();
        let refused = keys.admit(&batch(&[(6, "a"), (6, "c")]), 0).unwrap_err();
        assert_eq!((refused.live, refused.new, refused.limit), (2, 1, 2));
        assert!(refused.to_string().contains("--max-keys"));
        // Known keys are taken; a late record adds no live key.
        keys.admit(&batch(&[(50, "a"), (-500, "late")]), 0).unwrap();
        assert_eq!(keys.live(), 2);
        // The watermark passes b's window (5 + 100) but not a's (50 + 100).
        keys.admit(&batch(&[(120, "c")]), 110).unwrap();
        assert_eq!(keys.live(), 2);
        // b is forgotten; a record far ahead counts as no later than the largest time
        // before it (120) + max_jump: live until 1220, not 1 000 000 + 100.
        keys.admit(&batch(&[(1_000_000, "far")]), 160).unwrap();
        assert_eq!(keys.live(), 2, "c and far");
        keys.admit(&batch(&[(0, "x")]), 1200).unwrap();
        assert_eq!(keys.live(), 1, "far only (x is late)");
        keys.admit(&batch(&[(0, "y")]), 1221).unwrap();
        assert_eq!(keys.live(), 0, "far is forgotten after 1220");
        // A refused append gives the keys it made live back.
        let admitted = keys
            .admit(&batch(&[(1300, "p"), (1300, "q")]), 1261)
            .unwrap();
        assert_eq!(keys.live(), 2);
        keys.undo(admitted);
        assert_eq!(keys.live(), 0);
    }

    #[test]
    fn the_served_mark_only_advances_and_wakes_waiting_reads() {
        let store = Arc::new(ModelStore::default());
        assert_eq!(store.served(), None);
        store.served_through(3);
        store.served_through(1);
        assert_eq!(store.served(), Some(3));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            // Already folded in: at once.
            assert_eq!(store.wait_served(2, Duration::ZERO).await, Ok(3));
            // Not yet: the wait runs out, with the mark as it is.
            let started = Instant::now();
            assert_eq!(
                store.wait_served(5, Duration::from_millis(50)).await,
                Err(Some(3))
            );
            assert!(started.elapsed() >= Duration::from_millis(50));
            // Folded in while waiting: woken, not at the end of the wait.
            let advancing = Arc::clone(&store);
            let advance = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                advancing.served_through(4);
                advancing.served_through(6);
            });
            let started = Instant::now();
            assert_eq!(store.wait_served(5, Duration::from_secs(30)).await, Ok(6));
            assert!(started.elapsed() < Duration::from_secs(10));
            advance.await.unwrap();
        });
    }

    #[test]
    fn host_names_and_tokens() {
        assert_eq!(strip_port("localhost:8080"), "localhost");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("example.com"), "example.com");
        assert!(same_token(b"abc", b"abc"));
        for wrong in [&b"abd"[..], b"ab", b"abcd", b""] {
            assert!(!same_token(wrong, b"abc"));
        }
        let limits = HttpLimits {
            allow_hosts: vec!["Example.COM".into(), "::2".into()],
            ..HttpLimits::default()
        };
        let access = Access::new(&limits, "127.0.0.1:9".parse().unwrap()).unwrap();
        let hosts = access.hosts.unwrap();
        for name in ["localhost", "127.0.0.1", "[::1]", "example.com", "[::2]"] {
            assert!(hosts.contains(name), "{name}: {hosts:?}");
        }
    }

    #[test]
    fn keys_over_the_length_limit_are_counted() {
        let schema = Schema {
            time: "ts".into(),
            key: "key".into(),
            features: vec!["x".into()],
            target: "y".into(),
        };
        let body = b"ts,key,x,y\n1,ab,1,2\n2,abcd,1,2\n3,abc,1,2\n";
        let (batch, answer) = parse_body(body, FileFormat::Csv, &schema, 3).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!((answer.rejected, answer.keys_too_long), (1, 1));
        assert_eq!(answer.errors[0].line, 3);
        assert!(answer.errors[0].message.contains("--max-key-bytes"));
    }
}
