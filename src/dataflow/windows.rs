//! The windows operator: arranged pane statistics in, models and retractions out.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use differential_dataflow::difference::{Abelian, IsZero, Semigroup};
use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use rustc_hash::{FxHashMap, FxHashSet};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::progress::frontier::AntichainRef;

use super::checkpointer::Checkpointer;
use super::context::{
    PaneTrace, PaneUpdate, RunContext, WindowConfig, frontier_of, owner, resumed_max_seen,
    retraction_delay, split,
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
    /// Retractions of expired panes (to feed back into the arrangement).
    pub retractions: StreamVec<'scope, Epoch, PaneUpdate>,
    /// Acknowledgements of checkpoint parts written.
    pub acks: StreamVec<'scope, Epoch, Ack>,
    /// Running estimates of open windows (`final: false`, not for `--out`), when
    /// [`RunContext::estimates`] is set.
    pub estimates: StreamVec<'scope, Epoch, ModelLine>,
}

/// Windowed models from arranged pane statistics: the `windows` operator.
///
/// [`windowed_regression`](super::windowed_regression) arranges the panes and feeds the
/// expired ones back as retractions; by hand, on one worker:
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
///     let arranged = input.panes.arrange_by_key();
///     let outputs = arranged.windowed_models(input.control, &config, &context);
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
                // Per epoch, the panes added and the progress reports that came at it.
                type Arrived = (Vec<(Key, Pane)>, Vec<Control>);
                let mut held: ByEpoch<Arrived> = ByEpoch::default();
                move |(spans, spans_frontier), (progress, progress_frontier), output| {
                    spans.for_each(|cap, data| {
                        // Updates in a batch may be at later times than the message that
                        // carried it: each is held at its own time.
                        held.capability(&cap, output.output_index());
                        for span in data.drain(..) {
                            let Some(batch) = span.inner else { continue };
                            let (mut cursor, storage) = cursor_list(vec![batch]);
                            while let Some(key) = cursor.get_key(&storage) {
                                while let Some(pane) = cursor.get_val(&storage) {
                                    cursor.map_times(&storage, |t, diff| {
                                        if diff.n > 0 {
                                            held.at(*t).0.push((key.clone(), *pane));
                                        }
                                    });
                                    cursor.step_val(&storage);
                                }
                                cursor.step_key(&storage);
                            }
                        }
                    });
                    progress.for_each(|cap, data| {
                        let time = held.capability(&cap, output.output_index());
                        held.at(time).1.append(data);
                    });
                    // Every epoch that has something, in order, once both inputs are
                    // complete through it.
                    let frontiers = [spans_frontier.frontier(), progress_frontier.frontier()];
                    while let Some((cap, (new_panes, new_reports))) =
                        held.take_passed_all(&frontiers)
                    {
                        let mut session = output.session(&cap);
                        state.epoch(*cap.time(), new_panes, new_reports, |e| session.give(e));
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

/// The windows operator's state: an index of open panes per key (no statistics).
struct Windows {
    config: WindowConfig,
    trace: PaneTrace,
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
            agenda: Agenda::default(),
            metrics: Arc::clone(&context.metrics),
            restored_final_through: Time::MIN,
            estimates: context.estimates,
            open_windows: 0,
            counts_workers: worker == 0,
            retraction_delay: retraction_delay(peers),
            one_partition: context.one_partition,
            closing_idle: false,
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
        let mut due: BTreeSet<Key> = BTreeSet::new();
        let mut touched: BTreeSet<Key> = BTreeSet::new();
        for (key, pane) in added {
            if self.estimates && !touched.contains(&key) {
                touched.insert(key.clone());
            }
            if let Some(c) = self.checkpoint.as_mut() {
                c.touch(&key, pane, true);
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
                self.agenda.insert(spec.pane_expires_at(pane), key);
            } else {
                for w in spec.windows_of_pane(pane.start) {
                    self.agenda.insert(w.end, key.clone());
                }
            }
        }
        self.agenda.take_through(frontier, &mut due);
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
        if checkpoint && let Some(mut c) = self.checkpoint.take() {
            let provisional = self.provisional();
            let max_seen = self.max_seen.clone();
            let metrics = Arc::clone(&self.metrics);
            let ack = c.write_part(
                epoch,
                |keys| self.read(epoch, keys),
                provisional,
                max_seen,
                &metrics,
            );
            self.checkpoint = Some(c);
            emit(Emission::Ack(ack));
        }
        self.compact(epoch);
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
            for i in members.clone() {
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
                    c.touch(key, pane, false);
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
            self.agenda.insert(time, key.clone());
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
    fn take_through(&mut self, frontier: Time, due: &mut BTreeSet<Key>) {
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

/// The windows of one key's open panes, each with the indices of the panes it sums.
///
/// `panes` are sorted (as the trace gives them), so a window's panes are a range.
fn windows_of(spec: WindowSpec, panes: &[(Pane, Stats)]) -> Vec<(Window, Range<usize>)> {
    if spec.is_session() {
        let bounds: Vec<Pane> = panes.iter().map(|(p, _)| *p).collect();
        return spec.sessions(&bounds);
    }
    debug_assert!(panes.windows(2).all(|w| w[0].0.start < w[1].0.start));
    let mut windows: Vec<Window> = panes
        .iter()
        .flat_map(|(pane, _)| spec.windows_of_pane(pane.start))
        .collect();
    windows.sort_unstable();
    windows.dedup();
    windows
        .into_iter()
        .map(|w| {
            let from = panes.partition_point(|(p, _)| p.start < w.start);
            let to = from + panes[from..].partition_point(|(p, _)| p.end <= w.end);
            (w, from..to)
        })
        .collect()
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
        let mut due = BTreeSet::new();
        agenda.take_through(9, &mut due);
        assert!(due.is_empty());
        agenda.take_through(20, &mut due);
        assert_eq!(due, BTreeSet::from([Key::from("a"), Key::from("b")]));
        assert_eq!(agenda.len(), 1);
        due.clear();
        agenda.take_through(Time::MAX, &mut due);
        assert_eq!(due, BTreeSet::from([Key::from("a")]));
        assert_eq!(agenda.len(), 0);
    }
}
