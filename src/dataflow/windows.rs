//! The windows operator: pane statistics in (exchanged by key), models out.
//!
//! The operator keeps, per key, the accumulated statistics of the key's open panes: the
//! pane collection's differences summed as of the epoch being evaluated, which is what an
//! arrangement of the collection compacted to "now" would hold. It keeps nothing older,
//! so it needs no spine of batches to merge and no retraction loop: a pane no open window
//! needs is dropped, and a pane whose updates sum to zero records (`Stats::is_zero`, the
//! count) disappears whatever residue its floating-point sums kept.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::{Hashable, VecCollection};
use rustc_hash::{FxHashMap, FxHashSet};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};

use super::checkpointer::Checkpointer;
use super::context::{
    PaneUpdate, RunContext, WindowConfig, frontier_of, owner, resumed_max_seen, split,
};
use crate::checkpoint::ProvisionalWindow;
use crate::held::ByEpoch;
use crate::key::Key;
use crate::messages::{Ack, Control, ModelLine};
use crate::metrics::Metrics;
use crate::model::solve;
use crate::stats::Stats;
use crate::types::Epoch;
use crate::window::{Pane, Time, Window, WindowSpec};

/// The streams the windows operator produces.
pub struct WindowOutputs<'scope> {
    /// Model emissions.
    pub models: StreamVec<'scope, Epoch, ModelLine>,
    /// Acknowledgements of checkpoint parts written.
    pub acks: StreamVec<'scope, Epoch, Ack>,
    /// Running estimates of open windows (`final: false`, not for `--out`), when
    /// [`RunContext::estimates`] is set.
    pub estimates: StreamVec<'scope, Epoch, ModelLine>,
}

/// Windowed models from a collection of pane statistics: the `windows` operator.
///
/// [`windowed_regression`](super::windowed_regression) is this operator on
/// [`ingest`](super::ingest)'s panes; by hand, on one worker:
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use timely::dataflow::operators::Inspect;
/// use tributary::{ModelLine, RunContext, Schema, SourceReader, SourceSpec, WindowConfig};
/// use tributary::{WindowedModels, ingest};
///
/// // 4 096 records of one key, one every 5 ms: 20.48 s of event time, 10 s windows.
/// let source: SourceSpec = "gen:rows=4096,keys=1,features=1,step=5".parse().unwrap();
/// let reader = SourceReader::open(&source, &Schema::generated(1), 0, 1).unwrap();
/// let config = WindowConfig::new("tumbling:10s".parse().unwrap(), 1);
/// let context = RunContext::default();
/// let models: Arc<Mutex<Vec<ModelLine>>> = Arc::default();
/// let out = Arc::clone(&models);
/// timely::example(move |scope| {
///     let input = ingest(scope, reader, &config, &context);
///     let outputs = input.panes.windowed_models(input.control, &config, &context);
///     outputs.models.inspect(move |m| out.lock().unwrap().push(m.clone()));
/// });
/// let mut models = models.lock().unwrap().clone();
/// models.sort_by_key(|m| m.window_start);
/// // Three windows, each emitted once, final, with the records of its 10 s.
/// let n: Vec<i64> = models.iter().map(|m| m.n).collect();
/// assert_eq!(n, [2000, 2000, 96]);
/// assert!(models.iter().all(|m| m.is_final && m.window_end - m.window_start == 10_000));
/// ```
pub trait WindowedModels<'scope> {
    /// Emits each window's model: provisionally when the largest event time seen passes
    /// its end (if the lateness is positive), again (with a higher `revision`) when late
    /// records within the lateness change it, and `final` when the watermark passes its
    /// end. The pane updates are exchanged by key ([`owner`]); each worker keeps its keys'
    /// open panes and drops a pane once every window holding it is final. Updates may be
    /// negative (a correction): a pane whose count sums to zero is gone. With checkpoints,
    /// writes this worker's part of every checkpoint epoch and acknowledges it.
    fn windowed_models(
        self,
        control: StreamVec<'scope, Epoch, Control>,
        config: &WindowConfig,
        context: &RunContext,
    ) -> WindowOutputs<'scope>;
}

impl<'scope> WindowedModels<'scope> for VecCollection<'scope, Epoch, (Key, Pane), Stats> {
    fn windowed_models(
        self,
        control: StreamVec<'scope, Epoch, Control>,
        config: &WindowConfig,
        context: &RunContext,
    ) -> WindowOutputs<'scope> {
        let scope = self.inner.scope();
        let mut state = Windows::new(config.clone(), scope.index(), scope.peers(), context);
        // The same worker as [`owner`]: timely's exchange takes the hash modulo the peers.
        let by_key = Exchange::new(|((key, _), _, _): &PaneUpdate| key.hashed());
        let out = self.inner.binary_frontier(
            control.broadcast(),
            by_key,
            Pipeline,
            "Windows",
            move |_cap, _info| {
                // Per epoch, the pane updates and the progress reports that came at it.
                type Arrived = (Vec<((Key, Pane), Stats)>, Vec<Control>);
                let mut held: ByEpoch<Arrived> = ByEpoch::default();
                move |(panes, panes_frontier), (progress, progress_frontier), output| {
                    panes.for_each(|cap, data| {
                        // A collection's updates may be at later times than the message
                        // that carried them: each is held at its own time.
                        held.capability(&cap, output.output_index());
                        for (pane, time, stats) in data.drain(..) {
                            held.at(time).0.push((pane, stats));
                        }
                    });
                    progress.for_each(|cap, data| {
                        let time = held.capability(&cap, output.output_index());
                        held.at(time).1.append(data);
                    });
                    // Every epoch that has something, in order, once both inputs are
                    // complete through it.
                    let frontiers = [panes_frontier.frontier(), progress_frontier.frontier()];
                    while let Some((cap, (updates, reports))) = held.take_passed_all(&frontiers) {
                        let mut session = output.session(&cap);
                        state.epoch(*cap.time(), updates, reports, |e| session.give(e));
                    }
                }
            },
        );
        let [models, acks, estimates] = split(out, |e| match e {
            Emission::Model(_) => 0,
            Emission::Ack(_) => 1,
            Emission::Estimate(_) => 2,
        });
        WindowOutputs {
            models: models.flat_map(|e| match e {
                Emission::Model(m) => Some(m),
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
    Ack(Ack),
}

/// The windows operator's state: per key, its open panes' statistics.
struct Windows {
    config: WindowConfig,
    /// Largest event time admitted by each worker, as last reported.
    max_seen: Vec<Time>,
    keys: FxHashMap<Key, KeyWindows>,
    /// The keys that have a window that may end at each time.
    agenda: Agenda,
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
    /// The source is one partition ([`RunContext::one_partition`]).
    one_partition: bool,
    /// The epoch being evaluated is a source's idle close: finals say so.
    closing_idle: bool,
    /// Storage reused for each window's sum of panes.
    scratch: Stats,
    /// This epoch's changes to the metrics, added once at its end.
    tally: Tally,
}

/// Changes to the metrics, gathered over an epoch (an atomic addition per pane and per
/// window was a few per cent of a run with many keys).
#[derive(Default)]
struct Tally {
    panes: i64,
    finals: u64,
    provisional: u64,
    closed_idle: u64,
    estimates: u64,
}

impl Tally {
    fn add_to(&mut self, metrics: &Metrics) {
        let t = std::mem::take(self);
        if t.panes != 0 {
            metrics.open_panes.fetch_add(t.panes, Relaxed);
        }
        for (counter, n) in [
            (&metrics.windows_final, t.finals),
            (&metrics.windows_provisional, t.provisional),
            (&metrics.windows_closed_idle, t.closed_idle),
            (&metrics.estimates, t.estimates),
        ] {
            if n != 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }
}

/// One key's state.
#[derive(Default)]
struct KeyWindows {
    /// The open panes and their statistics, in order (a key has a handful).
    panes: Vec<(Pane, Stats)>,
    /// Windows emitted provisionally: window start → (end, n, revision).
    emitted: BTreeMap<Time, (Time, i64, u32)>,
    /// Every window of this key ending at or before this time has been emitted final.
    final_through: Time,
}

impl KeyWindows {
    /// Adds `stats` to `pane`. Returns whether the pane is new, and whether it is gone
    /// (its updates sum to zero records).
    fn add(&mut self, pane: Pane, stats: Stats) -> (bool, bool) {
        match self.panes.binary_search_by(|(p, _)| p.cmp(&pane)) {
            Ok(i) => {
                let total = &mut self.panes[i].1;
                total.plus_equals(&stats);
                let gone = total.is_zero();
                if gone {
                    self.panes.remove(i);
                }
                (false, gone)
            }
            Err(_) if stats.is_zero() => (false, false),
            Err(i) => {
                self.panes.insert(i, (pane, stats));
                (true, false)
            }
        }
    }
}

impl Windows {
    fn new(config: WindowConfig, worker: usize, peers: usize, context: &RunContext) -> Self {
        let mut windows = Windows {
            config,
            max_seen: vec![Time::MIN; peers],
            keys: FxHashMap::default(),
            agenda: Agenda::default(),
            metrics: Arc::clone(&context.metrics),
            restored_final_through: Time::MIN,
            estimates: context.estimates,
            open_windows: 0,
            counts_workers: worker == 0,
            one_partition: context.one_partition,
            closing_idle: false,
            scratch: Stats::zero(),
            tally: Tally::default(),
            checkpoint: context
                .checkpoint
                .clone()
                .map(|c| Checkpointer::new(c, worker, context.on_fatal)),
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
        self.keys.entry(key.clone()).or_insert_with(|| KeyWindows {
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
        updates: Vec<((Key, Pane), Stats)>,
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
                Control::Committed(committed) => {
                    if let Some(c) = self.checkpoint.as_mut() {
                        c.committed(*committed, &self.metrics);
                    }
                }
            }
        }
        let (frontier, watermark) = self.frontier();
        self.metrics.watermark.store(watermark, Relaxed);

        let spec = self.config.window;
        let mut due: Vec<Key> = Vec::new();
        let mut touched: Vec<Key> = Vec::new();
        for ((key, pane), stats) in updates {
            if self.estimates {
                touched.push(key.clone());
            }
            if let Some(c) = self.checkpoint.as_mut() {
                c.touch(&key, pane, true);
            }
            let entry = self.key_state(&key);
            let (fresh, gone) = entry.add(pane, stats);
            if !entry.emitted.is_empty() {
                // Late records changed a window already emitted: revise it.
                due.push(key.clone());
            }
            if gone {
                self.tally.panes -= 1;
            }
            if !fresh {
                // A pane already open: only its statistics changed.
                continue;
            }
            self.tally.panes += 1;
            if spec.is_session() {
                self.agenda.insert(spec.pane_expires_at(pane), key);
            } else {
                for w in spec.windows_of_pane(pane.start) {
                    self.agenda.insert(w.end, key.clone());
                }
            }
        }
        self.agenda.take_through(frontier, &mut due);
        due.sort_unstable();
        due.dedup();
        for key in &due {
            self.evaluate(key, frontier, watermark, &mut emit);
        }
        if self.estimates {
            touched.sort_unstable();
            touched.dedup();
            for key in &touched {
                if let Some(estimate) = self.estimate(key, frontier) {
                    self.tally.estimates += 1;
                    emit(Emission::Estimate(estimate));
                }
            }
        }
        self.tally.add_to(&self.metrics);
        let open = self.agenda.len() as i64;
        self.metrics
            .open_windows
            .fetch_add(open - self.open_windows, Relaxed);
        self.open_windows = open;
        if checkpoint && let Some(mut c) = self.checkpoint.take() {
            let provisional = self.provisional();
            let max_seen = self.max_seen.clone();
            let metrics = Arc::clone(&self.metrics);
            let ack = c.write_part(
                epoch,
                |keys| self.read(keys),
                provisional,
                max_seen,
                &metrics,
            );
            self.checkpoint = Some(c);
            emit(Emission::Ack(ack));
        }
    }

    /// The windows emitted provisionally and not final yet, for a checkpoint.
    fn provisional(&self) -> Vec<ProvisionalWindow> {
        let mut emitted = Vec::new();
        for (key, state) in &self.keys {
            for (start, (end, n, revision)) in &state.emitted {
                emitted.push((key.to_string(), *start, *end, *n, *revision));
            }
        }
        emitted
    }

    /// The statistics of every open pane of the given keys, for a checkpoint.
    fn read(&self, keys: &BTreeSet<Key>) -> Vec<(Key, Vec<(Pane, Stats)>)> {
        keys.iter()
            .map(|key| {
                let panes = self.keys.get(key).map(|s| s.panes.clone());
                (key.clone(), panes.unwrap_or_default())
            })
            .collect()
    }

    /// Emits the due windows of one key and drops the panes no open window needs.
    fn evaluate(
        &mut self,
        key: &Key,
        frontier: Time,
        watermark: Time,
        emit: &mut impl FnMut(Emission),
    ) {
        let spec = self.config.window;
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        let mut expired_sessions: Vec<usize> = Vec::new();
        let mut revisit: Vec<Time> = Vec::new();
        let stats = &mut self.scratch;
        for (window, members) in windows_of(spec, &state.panes, state.final_through, frontier) {
            let is_final = window.end <= watermark;
            sum_into(stats, &state.panes[members.clone()]);
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
            let fit = solve(stats, self.config.solve);
            let mut line = ModelLine::new(key.as_str(), window, stats, fit, is_final, revision);
            if is_final && self.closing_idle {
                line.closed_by = Some("idle".into());
                self.tally.closed_idle += 1;
            }
            emit(Emission::Model(line));
            if is_final {
                state.emitted.remove(&window.start);
                self.tally.finals += 1;
                if spec.is_session() {
                    expired_sessions.extend(members);
                }
            } else {
                state
                    .emitted
                    .insert(window.start, (window.end, stats.n, revision));
                self.tally.provisional += 1;
                // Come back when the watermark passes its end.
                revisit.push(window.end.saturating_add(self.config.lateness));
            }
        }

        state.final_through = state.final_through.max(watermark);
        let mut i = 0;
        state.panes.retain(|(pane, _)| {
            let expired = if spec.is_session() {
                expired_sessions.contains(&i)
            } else {
                spec.pane_expires_at(*pane) <= watermark
            };
            i += 1;
            if expired {
                if let Some(c) = self.checkpoint.as_mut() {
                    c.touch(key, *pane, false);
                }
                self.tally.panes -= 1;
            }
            !expired
        });
        if state.panes.is_empty() && state.emitted.is_empty() {
            self.keys.remove(key);
        }
        for time in revisit {
            self.agenda.insert(time, key.clone());
        }
    }

    /// The running estimate of `key`'s open window that closes next (the one ending
    /// first after `frontier`), from the statistics of its panes so far.
    fn estimate(&mut self, key: &Key, frontier: Time) -> Option<ModelLine> {
        let panes = &self.keys.get(key)?.panes;
        // Windows in order of start are in order of end (one length, or disjoint sessions).
        let (window, members) = windows_of(self.config.window, panes, frontier, Time::MAX)
            .into_iter()
            .next()?;
        let stats = &mut self.scratch;
        sum_into(stats, &panes[members]);
        let fit = solve(stats, self.config.solve);
        Some(ModelLine::new(key.as_str(), window, stats, fit, false, 0))
    }
}

/// The windows operator's agenda: per time, the keys with a window that may end then.
///
/// A calendar rather than one ordered set of `(time, key)`: window ends are few (one per
/// slide), so an insertion is a short search among times and a hash insertion, where an
/// ordered set of every pair compared keys along a path of a tree of millions of entries.
#[derive(Default)]
struct Agenda {
    by_time: BTreeMap<Time, FxHashSet<Key>>,
    /// Entries over every time: the windows that may still end.
    len: usize,
}

impl Agenda {
    /// Notes that `key` has a window that may end at `time`.
    fn insert(&mut self, time: Time, key: Key) {
        if self.by_time.entry(time).or_default().insert(key) {
            self.len += 1;
        }
    }

    /// Moves the keys of every time at or before `frontier` into `due`.
    fn take_through(&mut self, frontier: Time, due: &mut Vec<Key>) {
        while let Some(entry) = self.by_time.first_entry() {
            if *entry.key() > frontier {
                break;
            }
            let keys = entry.remove();
            self.len -= keys.len();
            due.extend(keys);
        }
    }

    /// The number of `(time, key)` entries.
    fn len(&self) -> usize {
        self.len
    }
}

/// `stats` becomes the sum of `panes`, reusing its storage.
fn sum_into(stats: &mut Stats, panes: &[(Pane, Stats)]) {
    stats.n = 0;
    stats.sums.clear();
    for (_, pane) in panes {
        stats.plus_equals(pane);
    }
}

/// The windows of one key's open panes that end in `(after, through]`, in order, each
/// with the indices of the panes it sums.
///
/// `panes` are sorted, so a window's panes are a range. Aligned windows (tumbling,
/// sliding) start at multiples of the slide, as their panes do: the candidates are the
/// starts from the earliest window holding the first pane to the last pane's start, and
/// two cursors find each one's panes.
fn windows_of(
    spec: WindowSpec,
    panes: &[(Pane, Stats)],
    after: Time,
    through: Time,
) -> Vec<(Window, Range<usize>)> {
    if spec.is_session() {
        let bounds: Vec<Pane> = panes.iter().map(|(p, _)| *p).collect();
        let mut sessions = spec.sessions(&bounds);
        sessions.retain(|(w, _)| after < w.end && w.end <= through);
        return sessions;
    }
    debug_assert!(panes.windows(2).all(|w| w[0].0.start < w[1].0.start));
    let (Some((first, _)), Some((last, _))) = (panes.first(), panes.last()) else {
        return Vec::new();
    };
    let slide = spec.bucket();
    let length = match spec {
        WindowSpec::Sliding { length, .. } | WindowSpec::Tumbling { length } => length,
        WindowSpec::Session { .. } => unreachable!("sessions are handled above"),
    };
    // Ends after `after`: starts from `after - length + 1`, rounded up to the slide.
    let lowest = after.saturating_sub(length).saturating_add(1);
    let lowest = lowest.saturating_add((slide - lowest.rem_euclid(slide)) % slide);
    let mut start = (first.start - length + slide).max(lowest);
    let last_start = last.start.min(through.saturating_sub(length));
    let mut windows = Vec::new();
    let (mut from, mut to) = (0, 0);
    while start <= last_start {
        let window = Window {
            start,
            end: start + length,
        };
        while from < panes.len() && panes[from].0.start < window.start {
            from += 1;
        }
        to = to.max(from);
        while to < panes.len() && panes[to].0.end <= window.end {
            to += 1;
        }
        if from < to {
            windows.push((window, from..to));
        }
        start += slide;
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agenda_counts_each_key_once_per_time_and_hands_over_the_times_passed() {
        let mut agenda = Agenda::default();
        for (time, key) in [(20, "b"), (10, "a"), (20, "b"), (10, "b"), (30, "a")] {
            agenda.insert(time, Key::from(key));
        }
        // (20, b) twice is one window that may end.
        assert_eq!(agenda.len(), 4);
        let mut due = Vec::new();
        agenda.take_through(9, &mut due);
        assert!(due.is_empty());
        agenda.take_through(20, &mut due);
        due.sort();
        due.dedup();
        assert_eq!(due, [Key::from("a"), Key::from("b")]);
        assert_eq!(agenda.len(), 1);
        due.clear();
        agenda.take_through(Time::MAX, &mut due);
        assert_eq!(due, [Key::from("a")]);
        assert_eq!(agenda.len(), 0);
    }
}
