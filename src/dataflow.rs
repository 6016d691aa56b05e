//! The dataflow, as operators on timely streams and differential collections.
//!
//! ```text
//!  source batch k ──► ingest (worker k mod W) ──► panes: ((key, pane), k, Stats) ─┐
//!     │   watermark, lateness, combiner per (key, pane)                          │ concat
//!     ├──► progress (max event time, counts) ── broadcast ──┐                    ▼
//!     └──► set aside (late, too far ahead) ─► late sink     │   arrange_by_key (exchange by key)
//!                                                           ▼                    │
//!                 retractions of expired panes (epoch + 1) ◄── windows ◄─────────┘
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
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Capability, ConnectLoop, Feedback, Operator};
use timely::dataflow::{Scope, StreamVec};
use timely::progress::frontier::AntichainRef;

use crate::metrics::Metrics;
use crate::model::{Fit, SolveOptions, Status, solve};
use crate::record::Record;
use crate::source::{Malformed, RecordSink, SourceError, SourceReader};
use crate::stats::Stats;
use crate::window::{Admission, Pane, Time, Watermark, Window, WindowSpec};

/// Timely timestamps: source batch numbers.
pub type Epoch = u64;

/// The arranged state: per key and pane, the pane's statistics.
pub type PaneTrace = TraceAgent<ValSpine<String, Pane, Epoch, Stats>>;

/// A pane update of the arrangement's input: ((key, pane), time, statistics).
pub type PaneUpdate = ((String, Pane), Epoch, Stats);

/// What to do with a malformed input line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Count it, report the first ones on stderr, and go on.
    #[default]
    Skip,
    /// Stop the run with an error naming file, line and field.
    Fail,
}

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

/// Counters of what a source read, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Well-formed records (admitted or not).
    pub records: u64,
    /// Malformed lines.
    pub malformed: u64,
    /// Records set aside as late.
    pub late: u64,
    /// Records set aside as too far ahead.
    pub too_far: u64,
}

/// A worker's event-time progress after one batch, broadcast to every worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The reporting worker.
    pub worker: usize,
    /// Largest event time it admitted so far (`Time::MAX` once its share is done).
    pub max_seen: Time,
    /// What the batch held.
    pub counts: Counts,
}

/// A record set aside instead of being folded into its windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetAside {
    /// Event time.
    pub ts: Time,
    /// Key.
    pub key: String,
    /// Features.
    pub x: Vec<f64>,
    /// Target.
    pub y: f64,
    /// `late` or `too_far_ahead`.
    pub reason: String,
    /// The watermark of its partition when it arrived.
    pub watermark: Time,
}

/// One model emission: a line of `--out`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelLine {
    /// Key.
    pub key: String,
    /// Window start (ms, inclusive).
    pub window_start: Time,
    /// Window end (ms, exclusive).
    pub window_end: Time,
    /// Rows in the window.
    pub n: i64,
    /// `[b₀, b₁, …, b_d]`, null when underdetermined.
    pub coef: Option<Vec<f64>>,
    /// Coefficient of determination.
    pub r2: Option<f64>,
    /// Root mean squared residual.
    pub rmse: Option<f64>,
    /// Condition number of the scaled normal matrix.
    pub cond: Option<f64>,
    /// `ok`, `ill_conditioned` or `underdetermined`.
    pub status: Status,
    /// Whether the window has closed (no record can change it any more).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// How many times late records changed the window after its first emission.
    #[serde(default)]
    pub revision: u32,
}

/// The `--out` form of a [`ModelLine`]: `revision` only when non-zero. (The exchanged
/// form keeps every field: bincode, which timely uses between processes, is not
/// self-describing and cannot skip fields.)
#[derive(Serialize)]
struct ModelJson<'a> {
    key: &'a str,
    window_start: Time,
    window_end: Time,
    n: i64,
    coef: &'a Option<Vec<f64>>,
    r2: Option<f64>,
    rmse: Option<f64>,
    cond: Option<f64>,
    status: Status,
    #[serde(rename = "final")]
    is_final: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    revision: u32,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

impl crate::sink::JsonLine for ModelLine {
    fn write_json(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let view = ModelJson {
            key: &self.key,
            window_start: self.window_start,
            window_end: self.window_end,
            n: self.n,
            coef: &self.coef,
            r2: self.r2,
            rmse: self.rmse,
            cond: self.cond,
            status: self.status,
            is_final: self.is_final,
            revision: self.revision,
        };
        serde_json::to_writer(w, &view).map_err(std::io::Error::other)
    }
}

impl crate::sink::JsonLine for SetAside {
    fn write_json(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer(w, self).map_err(std::io::Error::other)
    }
}

impl ModelLine {
    fn new(
        key: &str,
        window: Window,
        stats: &Stats,
        fit: Fit,
        is_final: bool,
        revision: u32,
    ) -> Self {
        ModelLine {
            key: key.to_owned(),
            window_start: window.start,
            window_end: window.end,
            n: stats.n,
            coef: fit.coef,
            r2: fit.r2,
            rmse: fit.rmse,
            cond: fit.cond,
            status: fit.status,
            is_final,
            revision,
        }
    }

    /// The order lines are written in within an epoch.
    pub fn order(&self) -> (Time, &str, Time, bool, u32) {
        (
            self.window_end,
            &self.key,
            self.window_start,
            self.is_final,
            self.revision,
        )
    }
}

/// The streams that ingesting a source produces.
pub struct Ingested<'scope> {
    /// Pre-aggregated pane statistics: one update per (key, pane) per batch.
    pub panes: VecCollection<'scope, Epoch, (String, Pane), Stats>,
    /// Each worker's progress after each of its batches.
    pub progress: StreamVec<'scope, Epoch, Progress>,
    /// Records set aside (late or too far ahead).
    pub aside: StreamVec<'scope, Epoch, SetAside>,
}

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
    on_error: OnError,
    metrics: Arc<Metrics>,
    on_fatal: fn(SourceError) -> !,
) -> Ingested<'scope> {
    let worker = scope.index();
    let mut combiner = Combiner::new(config, on_error, metrics);
    let stream = source(scope, "Ingest", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(capability);
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            match reader.next_batch() {
                Some(batch) => {
                    c.downgrade(&batch);
                    if let Err(e) = reader.read_batch(&mut combiner) {
                        on_fatal(e);
                    }
                    let done = reader.next_batch().is_none();
                    combiner.metrics.add(&combiner.counts);
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
                    }));
                    drop(session);
                    if done {
                        cap = None;
                    } else {
                        activator.activate();
                    }
                }
                None => {
                    // A worker with no share at all still reports that it is done.
                    c.downgrade(&(worker as Epoch));
                    output.session(&*c).give(IngestOut::Progress(Progress {
                        worker,
                        max_seen: Time::MAX,
                        counts: Counts::default(),
                    }));
                    cap = None;
                }
            }
        }
    });
    let panes = stream
        .clone()
        .flat_map(|o| match o {
            IngestOut::Pane(p) => Some(p),
            _ => None,
        })
        .as_collection();
    let progress = stream.clone().flat_map(|o| match o {
        IngestOut::Progress(p) => Some(p),
        _ => None,
    });
    let aside = stream.flat_map(|o| match o {
        IngestOut::Aside(a) => Some(a),
        _ => None,
    });
    Ingested {
        panes,
        progress,
        aside,
    }
}

/// The per-worker combiner: watermark, lateness, and per-(key, pane) pre-aggregation.
struct Combiner {
    window: WindowSpec,
    watermark: Watermark,
    features: usize,
    on_error: OnError,
    reported: u64,
    keys: FxHashMap<Box<str>, u32>,
    names: Vec<String>,
    panes: FxHashMap<(u32, Time), PaneAcc>,
    counts: Counts,
    aside: Vec<SetAside>,
    metrics: Arc<Metrics>,
}

struct PaneAcc {
    first: Time,
    last: Time,
    stats: Stats,
}

/// Malformed lines reported on stderr per worker before going quiet (all are counted).
const REPORT_MALFORMED: u64 = 10;

impl Combiner {
    fn new(config: &WindowConfig, on_error: OnError, metrics: Arc<Metrics>) -> Self {
        Combiner {
            window: config.window,
            watermark: Watermark::new(config.lateness, config.max_jump),
            features: config.features,
            on_error,
            reported: 0,
            keys: FxHashMap::default(),
            names: Vec::new(),
            panes: FxHashMap::default(),
            counts: Counts::default(),
            aside: Vec::new(),
            metrics,
        }
    }

    fn drain_panes(&mut self) -> impl Iterator<Item = ((String, Pane), Stats)> + '_ {
        let names = &self.names;
        let window = self.window;
        self.panes.drain().map(move |((k, bucket), acc)| {
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
            ((names[k as usize].clone(), pane), acc.stats)
        })
    }
}

impl RecordSink for Combiner {
    #[inline]
    fn record(&mut self, r: crate::record::RecordRef<'_>) {
        self.counts.records += 1;
        match self.watermark.admit(r.time, self.window.late_at(r.time)) {
            Admission::Admit => {
                let k = match self.keys.get(r.key) {
                    Some(&k) => k,
                    None => {
                        let k = self.names.len() as u32;
                        self.keys.insert(r.key.into(), k);
                        self.names.push(r.key.to_owned());
                        k
                    }
                };
                let bucket = self.window.bucket_start(r.time);
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
                let Record { time, key, x, y } = r.to_owned();
                self.aside.push(SetAside {
                    ts: time,
                    key,
                    x,
                    y,
                    reason: admission.reason().to_owned(),
                    watermark: self.watermark.current(),
                });
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
            eprintln!("warning: skipping malformed line: {error}");
        }
        Ok(())
    }
}

/// Windowed models from arranged pane statistics: the `windows` operator.
pub trait WindowedModels<'scope> {
    /// Emits each window's model: provisionally when the largest event time seen passes
    /// its end (if the lateness is positive), again (with a higher `revision`) when late
    /// records within the lateness change it, and `final` when the watermark passes its
    /// end. Expired panes are retracted from the arrangement through `retract`.
    fn windowed_models(
        self,
        progress: StreamVec<'scope, Epoch, Progress>,
        config: &WindowConfig,
        metrics: Arc<Metrics>,
    ) -> (
        StreamVec<'scope, Epoch, ModelLine>,
        StreamVec<'scope, Epoch, PaneUpdate>,
    );
}

impl<'scope> WindowedModels<'scope> for Arranged<'scope, PaneTrace> {
    fn windowed_models(
        self,
        progress: StreamVec<'scope, Epoch, Progress>,
        config: &WindowConfig,
        metrics: Arc<Metrics>,
    ) -> (
        StreamVec<'scope, Epoch, ModelLine>,
        StreamVec<'scope, Epoch, PaneUpdate>,
    ) {
        let peers = self.stream.scope().peers();
        let mut state = Windows::new(config.clone(), peers, self.trace.clone(), metrics);
        let out = self.stream.binary_frontier(
            progress.broadcast(),
            Pipeline,
            Pipeline,
            "Windows",
            move |_cap, _info| {
                let mut caps: BTreeMap<Epoch, Capability<Epoch>> = BTreeMap::new();
                let mut added: BTreeMap<Epoch, Vec<(String, Pane)>> = BTreeMap::new();
                let mut reports: BTreeMap<Epoch, Vec<Progress>> = BTreeMap::new();
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
        let models = out.clone().flat_map(|e| match e {
            Emission::Model(m) => Some(m),
            Emission::Retract(_) => None,
        });
        let retractions = out.flat_map(|e| match e {
            Emission::Retract(r) => Some(r),
            Emission::Model(_) => None,
        });
        (models, retractions)
    }
}

/// What the windows operator emits.
#[derive(Clone, Debug)]
enum Emission {
    Model(ModelLine),
    Retract(PaneUpdate),
}

/// The windows operator's state: an index of open panes per key (no statistics).
struct Windows {
    config: WindowConfig,
    trace: PaneTrace,
    /// Largest event time admitted by each worker, as last reported.
    max_seen: Vec<Time>,
    keys: FxHashMap<String, KeyWindows>,
    /// `(time, key)`: the key has a window that may end at `time`.
    agenda: BTreeSet<(Time, String)>,
    metrics: Arc<Metrics>,
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
    fn new(config: WindowConfig, peers: usize, trace: PaneTrace, metrics: Arc<Metrics>) -> Self {
        Windows {
            config,
            trace,
            max_seen: vec![Time::MIN; peers],
            keys: FxHashMap::default(),
            agenda: BTreeSet::new(),
            metrics,
        }
    }

    fn epoch(
        &mut self,
        epoch: Epoch,
        added: Vec<(String, Pane)>,
        reports: Vec<Progress>,
        mut emit: impl FnMut(Emission),
    ) {
        for report in &reports {
            let seen = &mut self.max_seen[report.worker];
            *seen = (*seen).max(report.max_seen);
        }
        let frontier = self.max_seen.iter().copied().min().unwrap_or(Time::MIN);
        let watermark = if frontier == Time::MAX {
            Time::MAX
        } else {
            frontier.saturating_sub(self.config.lateness)
        };
        self.metrics.watermark.store(watermark, Relaxed);

        let spec = self.config.window;
        let mut due: BTreeSet<String> = BTreeSet::new();
        for (key, pane) in added {
            let entry = self.keys.entry(key.clone()).or_default();
            if !entry.panes.insert(pane) {
                // A pane already open: only its statistics changed.
                if !entry.emitted.is_empty() {
                    due.insert(key);
                }
                continue;
            }
            self.metrics.open_panes.fetch_add(1, Relaxed);
            if !entry.emitted.is_empty() {
                due.insert(key.clone());
            }
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
        if due.is_empty() {
            self.compact(epoch);
            return;
        }

        let totals = self.read(epoch, &due);
        for (key, panes) in totals {
            self.evaluate(epoch, &key, panes, frontier, watermark, &mut emit);
        }
        self.compact(epoch);
    }

    /// Reads the statistics of every open pane of the given keys, as of `epoch`.
    fn read(&mut self, epoch: Epoch, keys: &BTreeSet<String>) -> Vec<(String, Vec<(Pane, Stats)>)> {
        let batches = self
            .trace
            .batches_through(AntichainRef::new(&[]))
            .expect("the pane trace is readable");
        let (mut cursor, storage) = cursor_list(batches);
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut panes = Vec::new();
            cursor.seek_key(&storage, key);
            if cursor.get_key(&storage) == Some(key) {
                while let Some(pane) = cursor.get_val(&storage) {
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
        key: &str,
        panes: Vec<(Pane, Stats)>,
        frontier: Time,
        watermark: Time,
        emit: &mut impl FnMut(Emission),
    ) {
        let spec = self.config.window;
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        // The windows of this key and the panes each sums.
        let mut windows: Vec<(Window, Vec<usize>)> = Vec::new();
        if spec.is_session() {
            let bounds: Vec<Pane> = panes.iter().map(|(p, _)| *p).collect();
            for (w, range) in spec.sessions(&bounds) {
                windows.push((w, range.collect()));
            }
        } else {
            let mut seen: BTreeMap<Window, Vec<usize>> = BTreeMap::new();
            for (i, (pane, _)) in panes.iter().enumerate() {
                for w in spec.windows_of_pane(pane.start) {
                    seen.entry(w).or_default().push(i);
                }
            }
            windows.extend(seen);
        }

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
                Some(&(end, n, rev)) if end == window.end && n == stats.n && !is_final => {
                    // Emitted and unchanged.
                    let _ = rev;
                    continue;
                }
                Some(&(end, n, rev)) if end == window.end && n == stats.n => rev,
                Some(&(_, _, rev)) => rev + 1,
                None => 0,
            };
            let fit = solve(&stats, self.config.solve);
            emit(Emission::Model(ModelLine::new(
                key, window, &stats, fit, is_final, revision,
            )));
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
                state.panes.remove(&pane);
                self.metrics.open_panes.fetch_sub(1, Relaxed);
                let mut retraction = stats;
                retraction.negate();
                emit(Emission::Retract((
                    (key.to_owned(), pane),
                    epoch + 1,
                    retraction,
                )));
            }
        }
        if state.panes.is_empty() && state.emitted.is_empty() {
            self.keys.remove(key);
        }
        for time in revisit {
            self.agenda.insert((time, key.to_owned()));
        }
    }

    /// Lets the trace forget history before `epoch`: it only answers "as of now" queries.
    fn compact(&mut self, epoch: Epoch) {
        self.trace
            .set_logical_compaction(AntichainRef::new(&[epoch]));
        self.trace
            .set_physical_compaction(AntichainRef::new(&[epoch]));
    }
}

/// Builds the whole windowed-regression dataflow on `panes`: arrangement, windows, and
/// the retraction loop. Returns the models and the trace of pane statistics.
pub fn windowed_regression<'scope>(
    scope: Scope<'scope, Epoch>,
    panes: VecCollection<'scope, Epoch, (String, Pane), Stats>,
    progress: StreamVec<'scope, Epoch, Progress>,
    config: &WindowConfig,
    metrics: Arc<Metrics>,
) -> (StreamVec<'scope, Epoch, ModelLine>, PaneTrace) {
    let (handle, retractions) = scope.feedback(1);
    let arranged = panes
        .concat(retractions.as_collection())
        .arrange_by_key_named("PaneStats");
    let trace = arranged.trace.clone();
    let (models, retract) = arranged.windowed_models(progress, config, metrics);
    retract.connect_loop(handle);
    (models, trace)
}
