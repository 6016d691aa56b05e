//! The dataflow, as operators on timely streams and differential collections.
//!
//! ```text
//!  source batch k ──► ingest (worker k mod W) ──► panes: ((key, pane), k, Stats) ─┐
//!     │   watermark, lateness, combiner per (key, pane)                          │ concat
//!     ├──► progress (max event time, counts) ── broadcast ──┐                    ▼
//!     └──► set aside (late, too far ahead) ─► late sink     │   arrange_by_key (exchange by key)
//!                                                           ▼                    │
//!             retractions of expired panes (epoch + delay) ◄── windows ◄─────────┘
//!                                                              │ sums of panes, solve
//!                                                              ▼
//!                                                     models ─► sink (worker 0)
//! ```
//!
//! Timely epochs are source batch numbers; event time lives in the data. The arrangement
//! holds, per key and pane, the statistics of the pane's admitted records: the only copy of
//! the state. The windows operator keeps an index of which panes exist (no statistics),
//! reads pane statistics from the arrangement's trace when a window is due, and retracts a
//! pane (its exact total, read back from the trace) once every window holding it is final,
//! so the arrangement holds only open panes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use differential_dataflow::difference::{Abelian, IsZero, Semigroup};
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::vec::{Broadcast, Map, Partition};
use timely::dataflow::operators::{Capability, ConnectLoop, Feedback, Operator};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};
use timely::progress::frontier::AntichainRef;

use std::time::{Duration, Instant};

use differential_dataflow::Hashable;

use crate::checkpoint::{Commit, EXIT_WRITE_FAILED, Part, Recovered, Store};
use crate::key::{Key, pack};
use crate::metrics::Metrics;
use crate::model::{SolveOptions, solve};
use crate::record::{MAX_ABS_VALUE, Record, TIME_LIMIT, check_time};
use crate::source::{Malformed, RecordSink, SourceError, SourceReader};
use crate::stats::Stats;
use crate::types::{EXIT_SOURCE_OR_OUTPUT, OnFatal, fatal};
use crate::window::{Admission, Pane, Time, Watermark, Window, WindowSpec};
use crate::{failpoint, quarantine};

pub use crate::messages::{Ack, Control, ModelLine, Progress, SetAside};
pub use crate::types::{Counts, Epoch, OnError};

/// The arranged state: per key and pane, the pane's statistics.
pub type PaneTrace = TraceAgent<ValSpine<Key, Pane, Epoch, Stats>>;

/// A pane update of the arrangement's input: ((key, pane), time, statistics).
pub type PaneUpdate = ((Key, Pane), Epoch, Stats);

/// Everything the windows need to know, fixed for a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Window kind and size.
    pub window: WindowSpec,
    /// Allowed lateness (ms).
    pub lateness: Time,
    /// Largest advance of the watermark by one record (ms).
    pub max_jump: Time,
    /// Solver options.
    pub solve: SolveOptions,
    /// Number of features.
    pub features: usize,
}

/// What a run shares with its operators beyond the window configuration.
#[derive(Clone)]
pub struct RunContext {
    /// Malformed-line policy.
    pub on_error: OnError,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where the run's operators hand an error they cannot go on from (a source error, a
    /// failed checkpoint write), once they logged it: the one fatal-error hook of a run
    /// (see [`OnFatal`]). It must not return; whether the process ends, with
    /// [`Fatal::code`](crate::types::Fatal::code), is the hook's choice.
    pub on_fatal: OnFatal,
    /// Checkpointing, when enabled.
    pub checkpoint: Option<CheckpointContext>,
    /// Whether the windows operator also emits a running estimate of each key's open
    /// window whenever new records change it ([`WindowOutputs::estimates`]).
    pub estimates: bool,
    /// Whether the source is one ordered partition however many workers read it (the
    /// ingest log: HTTP, TCP, followed files). Its watermark is then the log's: each
    /// batch is judged against the largest time of the batches before it, and the global
    /// frontier is the newest report, not the slowest worker's (see [`frontier_of`]).
    pub one_partition: bool,
}

impl RunContext {
    /// A context without checkpoints.
    pub fn new(on_error: OnError, metrics: Arc<Metrics>, on_fatal: OnFatal) -> Self {
        RunContext {
            on_error,
            metrics,
            on_fatal,
            checkpoint: None,
            estimates: false,
            one_partition: false,
        }
    }
}

/// The global frontier of the workers' reported largest times: for partitioned sources
/// the smallest (each worker reads a partition of its own); for one partition read by
/// several workers the largest, since each report already covers every batch before its
/// own. A worker with no share reports `Time::MAX` (done) at once: for one partition that
/// means "no more from me", not the end, until every worker says so.
pub fn frontier_of(max_seen: &[Time], one_partition: bool) -> Time {
    if one_partition {
        let live = max_seen.iter().copied().filter(|&t| t != Time::MAX).max();
        live.unwrap_or(Time::MAX)
    } else {
        max_seen.iter().copied().min().unwrap_or(Time::MIN)
    }
}

/// Checkpoint settings of a run.
#[derive(Clone)]
pub struct CheckpointContext {
    /// This process's store.
    pub store: Arc<Store>,
    /// Time between checkpoints (per worker; every worker's marks are checkpoint epochs).
    pub every: Duration,
    /// The generation this run writes.
    pub generation: u64,
    /// The state recovered at start, if any.
    pub restored: Option<Arc<Recovered>>,
}

impl CheckpointContext {
    /// The epoch the run resumes after, if it was restored.
    pub fn resumed_at(&self) -> Option<Epoch> {
        self.restored.as_ref()?.commit.as_ref().map(|c| c.epoch)
    }
}

/// The worker that owns `key` among `peers`: the one differential's exchange routes it to.
pub fn owner(key: &Key, peers: usize) -> usize {
    (key.hashed() % peers as u64) as usize
}

/// The streams that ingesting a source produces.
pub struct Ingested<'scope> {
    /// Pre-aggregated pane statistics: one update per (key, pane) per batch.
    pub panes: VecCollection<'scope, Epoch, (Key, Pane), Stats>,
    /// Each worker's progress after each of its batches, as [`Control`] messages.
    pub control: StreamVec<'scope, Epoch, Control>,
    /// Records set aside (late or too far ahead).
    pub aside: StreamVec<'scope, Epoch, SetAside>,
    /// Backpressure: attach it (`probe_with`) to the end of the dataflow, and the source
    /// stays at most [`MAX_AHEAD_PER_WORKER`] × workers batches ahead of it, so buffers
    /// (and memory) stay bounded. Unattached, the source is not held back.
    pub throttle: ProbeHandle<Epoch>,
}

/// How many batches per worker a source may run ahead of the probe attached to
/// [`Ingested::throttle`].
pub const MAX_AHEAD_PER_WORKER: u64 = 256;

#[derive(Clone)]
enum IngestOut {
    Pane(PaneUpdate),
    Progress(Progress),
    Aside(SetAside),
}

/// Reads this worker's share of a source, batch by batch, into pane statistics.
///
/// Per batch, records are checked against the partition's [`Watermark`] and folded into
/// per-(key, pane) statistics (the combiner), so differential sees one update per key and
/// pane per batch, not one per record. A source error (with `--on-error fail`, a malformed
/// line) is fatal: it is reported through `on_fatal`, which must not return.
pub fn ingest<'scope>(
    scope: Scope<'scope, Epoch>,
    mut reader: SourceReader,
    config: &WindowConfig,
    context: &RunContext,
) -> Ingested<'scope> {
    let worker = scope.index();
    let peers = scope.peers();
    let on_fatal = context.on_fatal;
    let mut combiner = Combiner::new(config, context.on_error);
    let metrics = Arc::clone(&context.metrics);
    // Resuming: skip the batches in the checkpoint, restore the partition's watermark, and
    // hand the checkpointed panes this worker owns to the arrangement first.
    let checkpoint = context.checkpoint.clone();
    let every = checkpoint.as_ref().map(|c| c.every);
    let mut first = 0;
    let mut restored: Vec<PaneUpdate> = Vec::new();
    if let Some(recovered) = checkpoint.as_ref().and_then(|c| c.restored.clone())
        && let Some(commit) = &recovered.commit
    {
        first = commit.epoch + 1;
        reader.seek(first);
        combiner.watermark.max_seen = resumed_max_seen(commit, peers, false)[worker];
        restored = recovered
            .panes
            .iter()
            .map(|(key, pane, stats)| ((Key::from(key.as_str()), *pane), first, stats.clone()))
            .filter(|((key, _), _, _)| owner(key, peers) == worker)
            .collect();
    }
    // Live sources (the ingest log) bound each batch's advance of the watermark.
    let bounded_batches = matches!(reader, SourceReader::Log(_));
    let mut last_mark = Instant::now();
    let throttle = ProbeHandle::new();
    let held_back = throttle.clone();
    let max_ahead = MAX_AHEAD_PER_WORKER * peers as u64;
    let stream = source(scope, "Ingest", move |capability, info| {
        reader.wake(scope.worker().sync_activator_for(info.address.to_vec()));
        let activator = scope.activator_for(info.address);
        let mut cap = Some(capability);
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            if !restored.is_empty() {
                c.downgrade(&first);
                output
                    .session(&*c)
                    .give_iterator(restored.drain(..).map(IngestOut::Pane));
            }
            let mut mark = |done: bool| {
                let due = every.is_some_and(|every| done || last_mark.elapsed() >= every);
                if due {
                    last_mark = Instant::now();
                }
                due
            };
            match reader.next_batch() {
                Some(batch) if held_back.less_than(&batch.saturating_sub(max_ahead)) => {
                    // Too far ahead of the end of the dataflow: wait for it.
                    activator.activate_after(Duration::from_micros(200));
                }
                Some(batch) if !reader.ready() => {
                    // A live source whose next batch has not arrived: hold its epoch and
                    // wait; the source wakes this operator when the batch comes.
                    c.downgrade(&batch.max(first));
                    activator.activate_after(Duration::from_millis(100));
                }
                Some(batch) => {
                    c.downgrade(&batch.max(first));
                    let idle_close = reader.idle_close_to();
                    if let Some(before) = reader.partition_before() {
                        // One partition read by several workers: this batch is judged
                        // against the largest time of every batch before it.
                        combiner.watermark.max_seen = before;
                    }
                    if bounded_batches {
                        combiner.watermark.begin_batch();
                    }
                    let read = if quarantine::begin_batch(batch) {
                        reader.read_batch(&mut Quarantined(&mut combiner))
                    } else {
                        if failpoint::active() {
                            failpoint::hit("ingest.batch", Some(&batch.to_string()));
                        }
                        reader.read_batch(&mut combiner)
                    };
                    if let Err(e) = read {
                        fatal!(on_fatal, EXIT_SOURCE_OR_OUTPUT, "{e}");
                    }
                    if let Some(to) = idle_close {
                        // The source was idle: its watermark moves past every open window.
                        combiner.watermark.max_seen = combiner.watermark.max_seen.max(to);
                    }
                    let done = reader.next_batch().is_none();
                    metrics.add(&combiner.counts);
                    let mut session = output.session(&*c);
                    for (pane, stats) in combiner.drain_panes() {
                        session.give(IngestOut::Pane((pane, batch, stats)));
                    }
                    for aside in combiner.aside.drain(..) {
                        session.give(IngestOut::Aside(aside));
                    }
                    session.give(IngestOut::Progress(Progress {
                        worker,
                        max_seen: if done {
                            Time::MAX
                        } else {
                            combiner.watermark.max_seen
                        },
                        counts: std::mem::take(&mut combiner.counts),
                        checkpoint: mark(done),
                        idle: idle_close.is_some(),
                    }));
                    drop(session);
                    match reader.next_batch() {
                        // Release this batch's epoch at once: downstream can complete it
                        // (and the other workers' sources see progress) without waiting
                        // for this source's next activation and read.
                        Some(next) if !done => {
                            c.downgrade(&next.max(first));
                            activator.activate();
                        }
                        _ => cap = None,
                    }
                }
                None => {
                    // A worker with no share (left), or whose live source was closed while
                    // it waited, still reports that it is done.
                    let at = (worker as Epoch).max(first).max(*c.time());
                    c.downgrade(&at);
                    output.session(&*c).give(IngestOut::Progress(Progress {
                        worker,
                        max_seen: Time::MAX,
                        counts: Counts::default(),
                        checkpoint: mark(true),
                        idle: false,
                    }));
                    cap = None;
                }
            }
        }
    });
    // Partitioned, not one stream read by three: a stream's every reader but the last
    // gets a clone of each batch, statistics and all.
    let [panes, control, aside] = split(stream, |o| match o {
        IngestOut::Pane(_) => 0,
        IngestOut::Progress(_) => 1,
        IngestOut::Aside(_) => 2,
    });
    let panes = panes
        .flat_map(|o| match o {
            IngestOut::Pane(p) => Some(p),
            _ => None,
        })
        .as_collection();
    let control = control.flat_map(|o| match o {
        IngestOut::Progress(p) => Some(Control::Progress(p)),
        _ => None,
    });
    let aside = aside.flat_map(|o| match o {
        IngestOut::Aside(a) => Some(a),
        _ => None,
    });
    Ingested {
        panes,
        control,
        aside,
        throttle,
    }
}

/// Each worker's largest admitted event time after resuming from `commit` with `peers`
/// workers: the recorded ones when the worker count is unchanged; otherwise, partitions
/// being different, every worker starts from the global frontier (their minimum), which
/// keeps lateness decisions consistent with the windows already closed.
pub fn resumed_max_seen(commit: &Commit, peers: usize, one_partition: bool) -> Vec<Time> {
    if commit.max_seen.len() == peers {
        commit.max_seen.clone()
    } else {
        vec![frontier_of(&commit.max_seen, one_partition); peers]
    }
}

/// The per-worker combiner: watermark, lateness, and per-(key, pane) pre-aggregation of
/// the records of one batch (shared by [`ingest`] and the record-level operators).
pub(crate) struct Combiner {
    window: WindowSpec,
    pub(crate) watermark: Watermark,
    features: usize,
    on_error: OnError,
    reported: u64,
    keys: KeyCodes,
    panes: FxHashMap<(u128, Time), PaneAcc>,
    /// The bounds of the last record's bucket.
    bucket: (Time, Time),
    /// What the records fed since the last `take` held.
    pub(crate) counts: Counts,
    /// Records set aside since the last drain.
    pub(crate) aside: Vec<SetAside>,
}

/// A key as one 128-bit integer, so a record finds its pane with a single lookup of
/// integers: a key of at most 15 bytes is its [`pack`] code; a longer key is numbered in
/// order of first sight, the number tagged apart from every short key. The numbers of long
/// keys go with each drain, so keys that stop coming leave no trace.
#[derive(Default)]
struct KeyCodes {
    long: FxHashMap<Box<str>, u32>,
    keys: Vec<Key>,
}

/// The top byte of the code of a long key (a short key's is its length, at most 15).
const LONG_KEY: u128 = 0xff << 120;

impl KeyCodes {
    /// The code of `key`.
    #[inline]
    fn code(&mut self, key: &str) -> u128 {
        if let Some(packed) = pack(key.as_bytes()) {
            return packed;
        }
        let number = match self.long.get(key) {
            Some(&k) => k,
            None => {
                let k = self.keys.len() as u32;
                self.long.insert(key.into(), k);
                self.keys.push(Key::new(key));
                k
            }
        };
        LONG_KEY | number as u128
    }

    /// The key whose code is `code`.
    fn key(&self, code: u128) -> Key {
        if code & LONG_KEY == LONG_KEY {
            return self.keys[code as u32 as usize].clone();
        }
        Key::short(code)
    }
}

struct PaneAcc {
    first: Time,
    last: Time,
    stats: Stats,
}

/// Malformed lines reported on stderr per worker before going quiet (all are counted).
const REPORT_MALFORMED: u64 = 10;

impl Combiner {
    pub(crate) fn new(config: &WindowConfig, on_error: OnError) -> Self {
        Combiner {
            window: config.window,
            watermark: Watermark::new(config.lateness, config.max_jump),
            features: config.features,
            on_error,
            reported: 0,
            keys: KeyCodes::default(),
            panes: FxHashMap::default(),
            bucket: (0, 0),
            counts: Counts::default(),
            aside: Vec::new(),
        }
    }

    /// Keeps `r` for the late output, with `reason`.
    fn set_aside(&mut self, r: crate::record::RecordRef<'_>, reason: &str) {
        let Record { time, key, x, y } = r.to_owned();
        self.aside.push(SetAside {
            ts: time,
            key,
            x,
            y,
            reason: reason.to_owned(),
            watermark: self.watermark.current(),
        });
    }

    /// The panes of the records fed since the last drain, with their statistics.
    pub(crate) fn drain_panes(&mut self) -> impl Iterator<Item = ((Key, Pane), Stats)> + '_ {
        let keys = std::mem::take(&mut self.keys);
        let window = self.window;
        self.panes.drain().map(move |((code, bucket), acc)| {
            let pane = if window.is_session() {
                Pane {
                    start: acc.first,
                    end: acc.last + 1,
                }
            } else {
                Pane {
                    start: bucket,
                    end: bucket + window.bucket(),
                }
            };
            ((keys.key(code), pane), acc.stats)
        })
    }
}

impl RecordSink for Combiner {
    #[inline]
    fn record(&mut self, r: crate::record::RecordRef<'_>) {
        // Records mostly fall in the bucket of the one before: no division for them. The
        // cached bounds stop at the time limit, so a time beyond it never hits the cache.
        let (start, end) = self.bucket;
        let bucket = if start <= r.time && r.time < end {
            start
        } else {
            if check_time(r.time).is_err() {
                // Only records that come from no source (user dataflows) get here: the
                // sources refuse such times as malformed.
                self.counts.malformed += 1;
                self.set_aside(r, "time_out_of_range");
                return;
            }
            let start = self.window.bucket_start(r.time);
            let end = start.saturating_add(self.window.bucket());
            self.bucket = (start.max(-TIME_LIMIT), end.min(TIME_LIMIT + 1));
            start
        };
        // Sources refuse such values as malformed; records of user dataflows are set
        // aside, so no sum overflows from one row (see `MAX_ABS_VALUE`).
        if !r.z.iter().all(|v| v.abs() <= MAX_ABS_VALUE) {
            self.counts.malformed += 1;
            self.set_aside(r, "value_out_of_range");
            return;
        }
        self.counts.records += 1;
        match self
            .watermark
            .admit(r.time, self.window.late_at_in(r.time, bucket))
        {
            Admission::Admit => {
                let k = self.keys.code(r.key);
                let features = self.features;
                let acc = self.panes.entry((k, bucket)).or_insert_with(|| PaneAcc {
                    first: r.time,
                    last: r.time,
                    stats: Stats::with_features(features),
                });
                acc.first = acc.first.min(r.time);
                acc.last = acc.last.max(r.time);
                acc.stats.add_row(r.z);
            }
            admission => {
                if admission == Admission::Late {
                    self.counts.late += 1;
                } else {
                    self.counts.too_far += 1;
                }
                self.set_aside(r, admission.reason());
            }
        }
    }

    fn malformed(&mut self, error: Malformed) -> Result<(), SourceError> {
        self.counts.malformed += 1;
        if self.on_error == OnError::Fail {
            return Err(SourceError::Malformed(error));
        }
        if self.reported < REPORT_MALFORMED {
            self.reported += 1;
            tracing::warn!("skipping malformed line: {error}");
        }
        Ok(())
    }
}

/// Sets aside every record of a quarantined batch (see [`crate::quarantine`]).
struct Quarantined<'a>(&'a mut Combiner);

impl RecordSink for Quarantined<'_> {
    fn record(&mut self, r: crate::record::RecordRef<'_>) {
        self.0.set_aside(r, "quarantined");
    }

    fn malformed(&mut self, error: Malformed) -> Result<(), SourceError> {
        self.0.malformed(error)
    }
}

/// The streams the windows operator produces.
pub struct WindowOutputs<'scope> {
    /// Model emissions.
    pub models: StreamVec<'scope, Epoch, ModelLine>,
    /// Retractions of expired panes (to feed back into the arrangement).
    pub retractions: StreamVec<'scope, Epoch, PaneUpdate>,
    /// Acknowledgements of checkpoint parts written.
    pub acks: StreamVec<'scope, Epoch, Ack>,
    /// Running estimates of open windows (`final: false`, not for `--out`), when
    /// [`RunContext::estimates`] is set.
    pub estimates: StreamVec<'scope, Epoch, ModelLine>,
}

/// Windowed models from arranged pane statistics: the `windows` operator.
pub trait WindowedModels<'scope> {
    /// Emits each window's model: provisionally when the largest event time seen passes
    /// its end (if the lateness is positive), again (with a higher `revision`) when late
    /// records within the lateness change it, and `final` when the watermark passes its
    /// end. Expired panes are retracted from the arrangement through `retractions`. With
    /// checkpoints, writes this worker's part of every checkpoint epoch and acknowledges it.
    fn windowed_models(
        self,
        control: StreamVec<'scope, Epoch, Control>,
        config: &WindowConfig,
        context: &RunContext,
    ) -> WindowOutputs<'scope>;
}

impl<'scope> WindowedModels<'scope> for Arranged<'scope, PaneTrace> {
    fn windowed_models(
        self,
        control: StreamVec<'scope, Epoch, Control>,
        config: &WindowConfig,
        context: &RunContext,
    ) -> WindowOutputs<'scope> {
        let scope = self.stream.scope();
        let mut state = Windows::new(
            config.clone(),
            scope.index(),
            scope.peers(),
            self.trace.clone(),
            context,
        );
        let out = self.stream.binary_frontier(
            control.broadcast(),
            Pipeline,
            Pipeline,
            "Windows",
            move |_cap, _info| {
                let mut caps: BTreeMap<Epoch, Capability<Epoch>> = BTreeMap::new();
                let mut added: BTreeMap<Epoch, Vec<(Key, Pane)>> = BTreeMap::new();
                let mut reports: BTreeMap<Epoch, Vec<Control>> = BTreeMap::new();
                move |(spans, spans_frontier), (progress, progress_frontier), output| {
                    spans.for_each(|cap, data| {
                        let time = *cap.least().expect("a message has a time");
                        if let Some(c) = cap.retain_least(output.output_index()) {
                            caps.entry(time).or_insert(c);
                        }
                        for span in data.drain(..) {
                            let Some(batch) = span.inner else { continue };
                            let (mut cursor, storage) = cursor_list(vec![batch]);
                            while let Some(key) = cursor.get_key(&storage) {
                                while let Some(pane) = cursor.get_val(&storage) {
                                    cursor.map_times(&storage, |t, diff| {
                                        if diff.n > 0 {
                                            added.entry(*t).or_default().push((key.clone(), *pane));
                                        }
                                    });
                                    cursor.step_val(&storage);
                                }
                                cursor.step_key(&storage);
                            }
                        }
                    });
                    progress.for_each(|cap, data| {
                        let time = *cap.least().expect("a message has a time");
                        if let Some(c) = cap.retain_least(output.output_index()) {
                            caps.entry(time).or_insert(c);
                        }
                        reports.entry(time).or_default().append(data);
                    });
                    // Updates in a batch may be at later times than the message that
                    // carried it: process every time that has something, in order, once
                    // both inputs are complete through it.
                    loop {
                        let next = [added.keys().next(), reports.keys().next()]
                            .into_iter()
                            .flatten()
                            .min()
                            .copied();
                        let Some(epoch) = next else { break };
                        if spans_frontier.less_equal(&epoch) || progress_frontier.less_equal(&epoch)
                        {
                            break;
                        }
                        let cap = caps
                            .range(..=epoch)
                            .next_back()
                            .map(|(_, c)| c.delayed(&epoch))
                            .expect("a capability at or before every pending time");
                        let new_panes = added.remove(&epoch).unwrap_or_default();
                        let new_reports = reports.remove(&epoch).unwrap_or_default();
                        let mut session = output.session(&cap);
                        state.epoch(epoch, new_panes, new_reports, |e| session.give(e));
                    }
                    // Keep only the capabilities that pending times still need.
                    let first = [added.keys().next(), reports.keys().next()]
                        .into_iter()
                        .flatten()
                        .min()
                        .copied();
                    match first {
                        None => caps.clear(),
                        Some(first) => {
                            let keep = caps.range(..=first).next_back().map(|(t, _)| *t);
                            caps.retain(|t, _| Some(*t) >= keep);
                        }
                    }
                }
            },
        );
        let [models, acks, estimates, retractions] = split(out, |e| match e {
            Emission::Model(_) => 0,
            Emission::Ack(_) => 1,
            Emission::Estimate(_) => 2,
            Emission::Retract(_) => 3,
        });
        WindowOutputs {
            models: models.flat_map(|e| match e {
                Emission::Model(m) => Some(m),
                _ => None,
            }),
            retractions: retractions.flat_map(|e| match e {
                Emission::Retract(r) => Some(r),
                _ => None,
            }),
            acks: acks.flat_map(|e| match e {
                Emission::Ack(a) => Some(a),
                _ => None,
            }),
            estimates: estimates.flat_map(|e| match e {
                Emission::Estimate(m) => Some(m),
                _ => None,
            }),
        }
    }
}

/// What the windows operator emits.
#[derive(Clone, Debug)]
enum Emission {
    Model(ModelLine),
    Estimate(ModelLine),
    Retract(PaneUpdate),
    Ack(Ack),
}

/// A worker's checkpoint writer: what changed since its last part.
struct Checkpointer {
    context: CheckpointContext,
    worker: usize,
    /// Panes changed since the last part: alive (write the total) or expired (delete).
    dirty: BTreeMap<(Key, Pane), bool>,
    /// Whether older generations were dropped from the store yet.
    retired_old: bool,
    /// The run's fatal-error hook ([`RunContext::on_fatal`]): a failed write ends the run.
    on_fatal: OnFatal,
}

/// The windows operator's state: an index of open panes per key (no statistics).
struct Windows {
    config: WindowConfig,
    trace: PaneTrace,
    /// Largest event time admitted by each worker, as last reported.
    max_seen: Vec<Time>,
    keys: FxHashMap<Key, KeyWindows>,
    /// `(time, key)`: the key has a window that may end at `time`.
    agenda: BTreeSet<(Time, Key)>,
    metrics: Arc<Metrics>,
    /// Windows of a key first seen ending at or before this are final already (restored).
    restored_final_through: Time,
    checkpoint: Option<Checkpointer>,
    /// Emit running estimates of open windows.
    estimates: bool,
    /// Open windows this worker last counted into the metrics.
    open_windows: i64,
    /// Whether this worker tallies every worker's records into the metrics (worker 0:
    /// it hears every worker's progress, so process 0's metrics cover the cluster).
    counts_workers: bool,
    /// Epochs from a pane's expiry to its retraction ([`retraction_delay`]).
    retraction_delay: Epoch,
    /// The source is one partition ([`RunContext::one_partition`]).
    one_partition: bool,
    /// The epoch being evaluated is a source's idle close: finals say so.
    closing_idle: bool,
}

struct KeyWindows {
    panes: BTreeSet<Pane>,
    /// Windows emitted provisionally: window start → (end, n, revision).
    emitted: BTreeMap<Time, (Time, i64, u32)>,
    /// Every window of this key ending at or before this time has been emitted final.
    final_through: Time,
}

impl Default for KeyWindows {
    fn default() -> Self {
        KeyWindows {
            panes: BTreeSet::new(),
            emitted: BTreeMap::new(),
            final_through: Time::MIN,
        }
    }
}

impl Windows {
    fn new(
        config: WindowConfig,
        worker: usize,
        peers: usize,
        trace: PaneTrace,
        context: &RunContext,
    ) -> Self {
        let mut windows = Windows {
            config,
            trace,
            max_seen: vec![Time::MIN; peers],
            keys: FxHashMap::default(),
            agenda: BTreeSet::new(),
            metrics: Arc::clone(&context.metrics),
            restored_final_through: Time::MIN,
            estimates: context.estimates,
            open_windows: 0,
            counts_workers: worker == 0,
            retraction_delay: retraction_delay(peers),
            one_partition: context.one_partition,
            closing_idle: false,
            checkpoint: context.checkpoint.clone().map(|c| Checkpointer {
                context: c,
                worker,
                dirty: BTreeMap::new(),
                retired_old: false,
                on_fatal: context.on_fatal,
            }),
        };
        let restored = context.checkpoint.as_ref().and_then(|c| c.restored.clone());
        if let Some(recovered) = restored
            && let Some(commit) = &recovered.commit
        {
            windows.max_seen = resumed_max_seen(commit, peers, windows.one_partition);
            let (_, watermark) = windows.frontier();
            windows.restored_final_through = watermark;
            windows.metrics.watermark.store(watermark, Relaxed);
            for (key, start, end, n, revision) in &recovered.emitted {
                let key = Key::from(key.as_str());
                if owner(&key, peers) == worker {
                    windows
                        .key_state(&key)
                        .emitted
                        .insert(*start, (*end, *n, *revision));
                }
            }
        }
        windows
    }

    fn key_state(&mut self, key: &Key) -> &mut KeyWindows {
        let final_through = self.restored_final_through;
        self.keys
            .entry(key.clone())
            .or_insert_with(|| KeyWindows {
                final_through,
                ..KeyWindows::default()
            })
    }

    /// The global frontier (smallest largest-event-time over workers) and watermark.
    fn frontier(&self) -> (Time, Time) {
        let frontier = frontier_of(&self.max_seen, self.one_partition);
        let watermark = if frontier == Time::MAX {
            Time::MAX
        } else {
            frontier.saturating_sub(self.config.lateness)
        };
        (frontier, watermark)
    }

    fn epoch(
        &mut self,
        epoch: Epoch,
        added: Vec<(Key, Pane)>,
        reports: Vec<Control>,
        mut emit: impl FnMut(Emission),
    ) {
        let mut checkpoint = false;
        self.closing_idle = reports
            .iter()
            .any(|r| matches!(r, Control::Progress(p) if p.idle));
        for report in &reports {
            match report {
                Control::Progress(p) => {
                    let seen = &mut self.max_seen[p.worker];
                    *seen = (*seen).max(p.max_seen);
                    checkpoint |= p.checkpoint;
                    if self.counts_workers {
                        self.metrics.add_worker_records(p.worker, p.counts.records);
                    }
                }
                Control::Committed(committed) => self.committed(*committed),
            }
        }
        let (frontier, watermark) = self.frontier();
        self.metrics.watermark.store(watermark, Relaxed);

        let spec = self.config.window;
        let mut due: BTreeSet<Key> = BTreeSet::new();
        let mut touched: BTreeSet<Key> = BTreeSet::new();
        for (key, pane) in added {
            if self.estimates && !touched.contains(&key) {
                touched.insert(key.clone());
            }
            if let Some(c) = self.checkpoint.as_mut() {
                c.dirty.insert((key.clone(), pane), true);
            }
            let entry = self.key_state(&key);
            let fresh = entry.panes.insert(pane);
            if !entry.emitted.is_empty() {
                // Late records changed a window already emitted: revise it.
                due.insert(key.clone());
            }
            if !fresh {
                // A pane already open: only its statistics changed.
                continue;
            }
            self.metrics.open_panes.fetch_add(1, Relaxed);
            if spec.is_session() {
                self.agenda.insert((spec.pane_expires_at(pane), key));
            } else {
                for w in spec.windows_of_pane(pane.start) {
                    self.agenda.insert((w.end, key.clone()));
                }
            }
        }
        while let Some((end, _)) = self.agenda.first() {
            if *end > frontier {
                break;
            }
            let (_, key) = self.agenda.pop_first().expect("present");
            due.insert(key);
        }
        // One read of the trace for the keys due and the keys whose estimates changed.
        let mut wanted = due.clone();
        wanted.extend(touched.iter().cloned());
        if !wanted.is_empty() {
            let mut estimates = Vec::new();
            for (key, mut panes) in self.read(epoch, &wanted) {
                if due.contains(&key) {
                    let read = touched.contains(&key).then(|| panes.clone());
                    self.evaluate(epoch, &key, panes, frontier, watermark, &mut emit);
                    let Some(read) = read else { continue };
                    // As a read after the evaluation would see them: the panes still open.
                    let open = self.keys.get(&key).map(|s| &s.panes);
                    panes = read;
                    panes.retain(|(pane, _)| open.is_some_and(|open| open.contains(pane)));
                }
                if let Some(estimate) = self.estimate(&key, &panes, frontier) {
                    estimates.push(estimate);
                }
            }
            for estimate in estimates {
                self.metrics.estimates.fetch_add(1, Relaxed);
                emit(Emission::Estimate(estimate));
            }
        }
        let open = self.agenda.len() as i64;
        self.metrics
            .open_windows
            .fetch_add(open - self.open_windows, Relaxed);
        self.open_windows = open;
        if checkpoint {
            self.write_checkpoint(epoch, &mut emit);
        }
        self.compact(epoch);
    }

    /// Writes this worker's part of checkpoint epoch `epoch` and acknowledges it.
    fn write_checkpoint(&mut self, epoch: Epoch, emit: &mut impl FnMut(Emission)) {
        let Some(mut c) = self.checkpoint.take() else {
            return;
        };
        let dirty = std::mem::take(&mut c.dirty);
        let alive: BTreeSet<Key> = dirty
            .iter()
            .filter(|(_, alive)| **alive)
            .map(|((key, _), _)| key.clone())
            .collect();
        let totals: FxHashMap<(Key, Pane), Stats> = self
            .read(epoch, &alive)
            .into_iter()
            .flat_map(|(key, panes)| panes.into_iter().map(move |(p, s)| ((key.clone(), p), s)))
            .collect();
        let mut changes = Vec::with_capacity(dirty.len());
        let (mut puts, mut deletes) = (0, 0);
        for ((key, pane), alive) in dirty {
            let stats = if alive {
                totals.get(&(key.clone(), pane)).cloned()
            } else {
                None
            };
            if stats.is_some() {
                puts += 1;
            } else {
                deletes += 1;
            }
            changes.push((key, pane, stats));
        }
        let mut emitted = Vec::new();
        for (key, state) in &self.keys {
            for (start, (end, n, revision)) in &state.emitted {
                emitted.push((key.to_string(), *start, *end, *n, *revision));
            }
        }
        let part = Part {
            generation: c.context.generation,
            epoch,
            worker: c.worker,
            emitted,
            puts,
            deletes,
        };
        let started = Instant::now();
        match c.context.store.write_part(&part, &changes) {
            Ok(bytes) => {
                self.metrics.checkpoint_bytes.fetch_add(bytes, Relaxed);
                self.metrics
                    .checkpoint_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
            }
            Err(e) => {
                fatal!(c.on_fatal, EXIT_WRITE_FAILED, "writing checkpoint: {e}");
            }
        }
        emit(Emission::Ack(Ack {
            epoch,
            worker: c.worker,
            max_seen: self.max_seen.clone(),
        }));
        self.checkpoint = Some(c);
    }

    /// Epoch `committed` is complete: fold this worker's deltas through it into its base.
    fn committed(&mut self, committed: Epoch) {
        let Some(c) = self.checkpoint.as_mut() else {
            return;
        };
        let store = &c.context.store;
        let result = store
            .fold(c.context.generation, c.worker, committed)
            .and_then(|()| {
                if !c.retired_old {
                    c.retired_old = true;
                    store.drop_generations_before(c.context.generation)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = result {
            fatal!(c.on_fatal, EXIT_WRITE_FAILED, "folding checkpoint: {e}");
        }
        self.metrics.checkpoint_epoch.fetch_max(committed, Relaxed);
    }

    /// Reads the statistics of every open pane of the given keys, as of `epoch`.
    fn read(&mut self, epoch: Epoch, keys: &BTreeSet<Key>) -> Vec<(Key, Vec<(Pane, Stats)>)> {
        let batches = self
            .trace
            .batches_through(AntichainRef::new(&[]))
            .expect("the pane trace is readable");
        let (mut cursor, storage) = cursor_list(batches);
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut panes = Vec::new();
            // Only the panes this operator holds open: an expired pane's retraction
            // reaches the trace `retraction_delay` epochs later.
            let open = self.keys.get(key).map(|s| &s.panes);
            cursor.seek_key(&storage, key);
            if cursor.get_key(&storage) == Some(key) {
                while let Some(pane) = cursor.get_val(&storage) {
                    if !open.is_some_and(|open| open.contains(pane)) {
                        cursor.step_val(&storage);
                        continue;
                    }
                    let mut total = Stats::zero();
                    cursor.map_times(&storage, |t, diff| {
                        if *t <= epoch {
                            total.plus_equals(diff);
                        }
                    });
                    if !total.is_zero() {
                        panes.push((*pane, total));
                    }
                    cursor.step_val(&storage);
                }
            }
            out.push((key.clone(), panes));
        }
        out
    }

    /// Emits the due windows of one key and retracts the panes no open window needs.
    fn evaluate(
        &mut self,
        epoch: Epoch,
        key: &Key,
        panes: Vec<(Pane, Stats)>,
        frontier: Time,
        watermark: Time,
        emit: &mut impl FnMut(Emission),
    ) {
        let spec = self.config.window;
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        let windows = windows_of(spec, &panes);

        let mut expired_sessions: Vec<usize> = Vec::new();
        let mut revisit: Vec<Time> = Vec::new();
        for (window, members) in windows {
            if window.end > frontier || window.end <= state.final_through {
                continue;
            }
            let is_final = window.end <= watermark;
            let mut stats = Stats::zero();
            for &i in &members {
                stats.plus_equals(&panes[i].1);
            }
            let revision = match state.emitted.get(&window.start) {
                Some(&(end, n, _)) if end == window.end && n == stats.n && !is_final => {
                    // Emitted and unchanged: nothing to say yet, but it must still come
                    // back when the watermark passes its end. (A window restored from a
                    // checkpoint as emitted reaches here first through its panes' agenda
                    // entries: without this it never became final.)
                    revisit.push(window.end.saturating_add(self.config.lateness));
                    continue;
                }
                Some(&(end, n, rev)) if end == window.end && n == stats.n => rev,
                Some(&(_, _, rev)) => rev + 1,
                None => 0,
            };
            let fit = solve(&stats, self.config.solve);
            let mut line = ModelLine::new(key.as_str(), window, &stats, fit, is_final, revision);
            if is_final && self.closing_idle {
                line.closed_by = Some("idle".into());
                self.metrics.windows_closed_idle.fetch_add(1, Relaxed);
            }
            emit(Emission::Model(line));
            if is_final {
                state.emitted.remove(&window.start);
                self.metrics.windows_final.fetch_add(1, Relaxed);
                if spec.is_session() {
                    expired_sessions.extend(members);
                }
            } else {
                state
                    .emitted
                    .insert(window.start, (window.end, stats.n, revision));
                self.metrics.windows_provisional.fetch_add(1, Relaxed);
                // Come back when the watermark passes its end.
                revisit.push(window.end.saturating_add(self.config.lateness));
            }
        }

        state.final_through = state.final_through.max(watermark);
        for (i, (pane, stats)) in panes.into_iter().enumerate() {
            let expired = if spec.is_session() {
                expired_sessions.contains(&i)
            } else {
                spec.pane_expires_at(pane) <= watermark
            };
            if expired {
                if let Some(c) = self.checkpoint.as_mut() {
                    c.dirty.insert((key.clone(), pane), false);
                }
                state.panes.remove(&pane);
                self.metrics.open_panes.fetch_sub(1, Relaxed);
                let mut retraction = stats;
                retraction.negate();
                emit(Emission::Retract((
                    (key.clone(), pane),
                    epoch + self.retraction_delay,
                    retraction,
                )));
            }
        }
        if state.panes.is_empty() && state.emitted.is_empty() {
            self.keys.remove(key);
        }
        for time in revisit {
            self.agenda.insert((time, key.clone()));
        }
    }

    /// The running estimate of `key`'s open window that closes next (the one ending
    /// first after `frontier`), from the statistics of its panes so far.
    fn estimate(&self, key: &Key, panes: &[(Pane, Stats)], frontier: Time) -> Option<ModelLine> {
        let (window, members) = windows_of(self.config.window, panes)
            .into_iter()
            .filter(|(w, _)| w.end > frontier)
            .min_by_key(|(w, _)| (w.end, w.start))?;
        let mut stats = Stats::zero();
        for i in members {
            stats.plus_equals(&panes[i].1);
        }
        let fit = solve(&stats, self.config.solve);
        Some(ModelLine::new(key.as_str(), window, &stats, fit, false, 0))
    }

    /// Lets the trace forget history before `epoch`: it only answers "as of now" queries.
    fn compact(&mut self, epoch: Epoch) {
        self.trace
            .set_logical_compaction(AntichainRef::new(&[epoch]));
        self.trace
            .set_physical_compaction(AntichainRef::new(&[epoch]));
    }
}

/// Splits a stream `N` ways by `part` (`0..N`), moving each element, never cloning it (a
/// stream's every reader but the last gets a clone of each batch).
fn split<'scope, D: 'static, const N: usize>(
    stream: StreamVec<'scope, Epoch, D>,
    part: impl Fn(&D) -> u64 + 'static,
) -> [StreamVec<'scope, Epoch, D>; N] {
    let parts = stream.partition(N as u64, move |d| (part(&d), d));
    parts
        .try_into()
        .unwrap_or_else(|_| unreachable!("partition gives N parts"))
}

/// The windows of one key's open panes, each with the indices of the panes it sums.
fn windows_of(spec: WindowSpec, panes: &[(Pane, Stats)]) -> Vec<(Window, Vec<usize>)> {
    if spec.is_session() {
        let bounds: Vec<Pane> = panes.iter().map(|(p, _)| *p).collect();
        spec.sessions(&bounds)
            .into_iter()
            .map(|(w, range)| (w, range.collect()))
            .collect()
    } else {
        let mut seen: BTreeMap<Window, Vec<usize>> = BTreeMap::new();
        for (i, (pane, _)) in panes.iter().enumerate() {
            for w in spec.windows_of_pane(pane.start) {
                seen.entry(w).or_default().push(i);
            }
        }
        seen.into_iter().collect()
    }
}

/// How many epochs after a pane expires its retraction enters the arrangement.
///
/// The retractions loop back into the arrangement's input, so the arrangement cannot seal
/// epoch `e + delay` before the windows operator has finished epoch `e`. With a delay of
/// one, the whole dataflow advanced about one epoch per round trip of that loop (three
/// worker steps), far slower than the sources: the sources ran ahead until throttled, and
/// the arrangement's batcher re-sorted the growing backlog at every step, so a long run
/// slowed down as it went (a 120 M-record run on two workers fell to the speed of one).
/// A delay of a few epochs per worker lets the loop keep up. Expired panes stay in the
/// trace until then, invisible: the windows operator reads only panes it holds open.
pub fn retraction_delay(peers: usize) -> Epoch {
    RETRACTION_DELAY_PER_WORKER * peers as Epoch
}

/// See [`retraction_delay`].
pub const RETRACTION_DELAY_PER_WORKER: Epoch = 16;

/// Builds the windowed-regression dataflow on `panes`: the arrangement, the windows
/// operator, and the loop that retracts expired panes. `control` carries the workers'
/// progress (and, with checkpoints, commit notices). Returns the windows operator's
/// outputs (retractions already connected) and the trace of pane statistics, which the
/// caller must drop or keep advancing.
pub fn windowed_regression<'scope>(
    scope: Scope<'scope, Epoch>,
    panes: VecCollection<'scope, Epoch, (Key, Pane), Stats>,
    control: StreamVec<'scope, Epoch, Control>,
    config: &WindowConfig,
    context: &RunContext,
) -> (WindowOutputs<'scope>, PaneTrace) {
    let (handle, retractions) = scope.feedback(retraction_delay(scope.peers()));
    let arranged = panes
        .concat(retractions.as_collection())
        .arrange_by_key_named("PaneStats");
    let trace = arranged.trace.clone();
    let outputs = arranged.windowed_models(control, config, context);
    outputs.retractions.clone().connect_loop(handle);
    (outputs, trace)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Combiner, KeyCodes, OnError, RecordSink, WindowConfig, pack};
    use crate::model::SolveOptions;
    use crate::record::{RecordRef, TIME_LIMIT};
    use crate::window::WindowSpec;

    proptest! {
        /// Two short keys pack to the same integer exactly when they are equal.
        #[test]
        fn packed_keys_are_the_keys(a in proptest::collection::vec(0u8..4, 0..17),
                                    b in proptest::collection::vec(0u8..4, 0..17)) {
            match (pack(&a), pack(&b)) {
                (Some(p), Some(q)) => prop_assert_eq!(p == q, a == b),
                (p, q) => {
                    prop_assert_eq!(p.is_none(), a.len() >= 16);
                    prop_assert_eq!(q.is_none(), b.len() >= 16);
                }
            }
        }
    }

    /// A combiner of records with one feature, no lateness and no bound on jumps.
    fn combiner_of_one_feature(window: &str) -> Combiner {
        let config = WindowConfig {
            window: window.parse::<WindowSpec>().unwrap(),
            lateness: 0,
            max_jump: i64::MAX,
            solve: SolveOptions::default(),
            features: 1,
        };
        Combiner::new(&config, OnError::Skip)
    }

    /// Values beyond ±1e150 or not finite (which no source lets through, but a user
    /// dataflow can feed) are set aside, not folded into statistics that would overflow.
    #[test]
    fn values_out_of_range_are_set_aside() {
        let mut combiner = combiner_of_one_feature("tumbling:10s");
        let values = [
            [1.0, 2.0],
            [1e200, 2.0],
            [1.0, -1e151],
            [f64::NAN, 0.0],
            [f64::INFINITY, 0.0],
            [crate::record::MAX_ABS_VALUE, -crate::record::MAX_ABS_VALUE],
        ];
        for (i, z) in values.iter().enumerate() {
            combiner.record(RecordRef {
                time: i as i64,
                key: "k",
                z,
            });
        }
        let reasons: Vec<(i64, &str)> = combiner
            .aside
            .iter()
            .map(|a| (a.ts, a.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [1, 2, 3, 4].map(|t| (t, "value_out_of_range")).to_vec()
        );
        assert_eq!(combiner.counts.malformed, 4);
        assert_eq!(combiner.counts.records, 2);
        let panes: Vec<_> = combiner.drain_panes().collect();
        assert_eq!(panes.len(), 1);
        assert_eq!(panes[0].1.n, 2);
        assert!(panes[0].1.sums.iter().all(|v| v.is_finite()));
    }

    /// Times beyond ±2⁶² (which no source lets through, but a user dataflow can feed)
    /// are set aside, not folded into a pane whose bounds would overflow.
    #[test]
    fn times_out_of_range_are_set_aside() {
        let mut combiner = combiner_of_one_feature("sliding:60s/10s");
        // Each time beyond the limit comes right after one in range in the same bucket,
        // so that the bucket cache cannot let it through.
        let times = [
            -TIME_LIMIT,
            -TIME_LIMIT - 1,
            i64::MIN,
            0,
            TIME_LIMIT,
            TIME_LIMIT + 1,
            i64::MAX,
        ];
        for time in times {
            let z = [1.0, 2.0];
            combiner.record(RecordRef {
                time,
                key: "k",
                z: &z,
            });
        }
        let reasons: Vec<(i64, &str)> = combiner
            .aside
            .iter()
            .map(|a| (a.ts, a.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (-TIME_LIMIT - 1, "time_out_of_range"),
                (i64::MIN, "time_out_of_range"),
                (TIME_LIMIT + 1, "time_out_of_range"),
                (i64::MAX, "time_out_of_range")
            ]
        );
        assert_eq!(combiner.counts.malformed, 4);
        assert_eq!(
            combiner.counts.records, 3,
            "set-aside times are not records"
        );
        let panes: Vec<_> = combiner.drain_panes().map(|((_, pane), _)| pane).collect();
        assert_eq!(panes.len(), 3, "the three times in range have their panes");
        assert!(panes.iter().all(|p| p.start < p.end));
    }

    #[test]
    fn keys_come_back_from_their_codes() {
        let mut keys = KeyCodes::default();
        let long = "a key of more than fifteen bytes";
        let all = [
            "b",
            "a",
            long,
            "",
            "a\0",
            "fifteen bytes!!",
            "sixteen bytes!!!",
            "ключ",
        ];
        let codes: Vec<u128> = all.iter().map(|k| keys.code(k)).collect();
        for (key, &code) in all.iter().zip(&codes) {
            assert_eq!(keys.key(code), *key);
            assert_eq!(keys.code(key), code, "{key:?} coded twice alike");
        }
        let mut distinct = codes.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), all.len());
    }
}
