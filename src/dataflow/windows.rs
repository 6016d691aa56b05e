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
use rustc_hash::FxHashMap;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;

use super::checkpointer::Checkpointer;
use super::context::{
    PaneUpdate, RunContext, WindowConfig, frontier_of, owner, resumed_max_seen, vec_output,
};
use super::estimate::EstimateStats;
use crate::checkpoint::ProvisionalWindow;
use crate::held::ByEpoch;
use crate::key::Key;
use crate::messages::{Ack, Control, ModelLine};
use crate::metrics::Metrics;
use crate::model::{Fit, determined, solve};
use crate::stats::Stats;
use crate::types::Epoch;
use crate::window::{Pane, Time, Window, WindowSpec};

/// The streams the windows operator produces.
pub struct WindowOutputs<'scope> {
    /// Model emissions.
    pub models: StreamVec<'scope, Epoch, ModelLine>,
    /// Acknowledgements of checkpoint parts written.
    pub acks: StreamVec<'scope, Epoch, Ack>,
    /// The statistics of the running estimates of open windows (not for `--out`), when
    /// [`RunContext::estimates`] is set: solved only when read ([`EstimateStats`]).
    pub estimates: StreamVec<'scope, Epoch, EstimateStats>,
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
        let mut builder = OperatorBuilder::new("Windows".to_owned(), scope);
        let mut panes = builder.new_input(self.inner, by_key);
        let mut progress = builder.new_input(control.broadcast(), Pipeline);
        // Three outputs, each its own type: an emission is moved once, into its output.
        let (mut models_out, models) = vec_output::<ModelLine>(&mut builder);
        let (mut acks_out, acks) = vec_output::<Ack>(&mut builder);
        let (mut estimates_out, estimates) = vec_output::<EstimateStats>(&mut builder);
        builder.build(move |_capabilities| {
            // Per epoch, the pane updates (in the containers they came in) and the
            // progress reports that came at it, held with a capability for each output.
            type Arrived = (Vec<Vec<PaneUpdate>>, Vec<Control>);
            let mut held: ByEpoch<Arrived> = ByEpoch::default();
            let mut by_end = ByEnd::default();
            const OUTPUTS: [usize; 3] = [0, 1, 2];
            move |frontiers| {
                panes.for_each(|cap, data| {
                    // A collection's updates may be at later times than the message that
                    // carried them: each is held at its own time. Nearly always they are
                    // all at the message's, and the container is held as it came.
                    let time = held.capabilities(&cap, &OUTPUTS);
                    if data.iter().all(|(_, t, _)| *t == time) {
                        held.at(time).0.push(std::mem::take(data));
                    } else {
                        for update in data.drain(..) {
                            let at = held.at(update.1);
                            match at.0.last_mut() {
                                Some(last) if last.capacity() > last.len() => last.push(update),
                                _ => at.0.push(vec![update]),
                            }
                        }
                    }
                });
                progress.for_each(|cap, data| {
                    let time = held.capabilities(&cap, &OUTPUTS);
                    held.at(time).1.append(data);
                });
                // Every epoch that has something, in order, once both inputs are complete
                // through it.
                let inputs = [frontiers[0].frontier(), frontiers[1].frontier()];
                let (mut models, mut acks, mut estimates) = (
                    models_out.activate(),
                    acks_out.activate(),
                    estimates_out.activate(),
                );
                while let Some((caps, (updates, reports))) = held.take_passed_all_outputs(&inputs) {
                    let epoch = *caps[0].time();
                    let mut models = models.session(&caps[0]);
                    let mut acks = acks.session(&caps[1]);
                    let mut estimates = estimates.session(&caps[2]);
                    state.epoch(epoch, updates, reports, |e| match e {
                        Emission::Model(m) => by_end.push(m),
                        Emission::Ack(a) => acks.give(a),
                        Emission::Estimate(m) => estimates.give(m),
                    });
                    by_end.give(|lines| models.give_container(lines));
                }
            }
        });
        WindowOutputs {
            models,
            acks,
            estimates,
        }
    }
}

/// An epoch's model lines grouped by window end, in the order they came within a group,
/// given on in order of end: the order the sink writes them in (window end, then key: the
/// keys are evaluated in the order `--out` writes them), so that it finds them sorted and
/// writes its text as it is, instead of gathering a sorted order's lines from all over
/// it. An epoch that closes several window ends makes one sorted sequence per end,
/// interleaved key by key; sessions end anywhere, so past [`ByEnd::GROUPS`] ends the rest
/// share a last group (which the sink sorts).
#[derive(Default)]
struct ByEnd {
    /// Window end → its lines, in containers of at most [`ByEnd::CHUNK`] (a container
    /// given on is not copied; one grown by doubling would be, each time it grows).
    groups: Vec<(Time, Vec<Vec<ModelLine>>)>,
}

impl ByEnd {
    /// The most window ends given a group of their own.
    const GROUPS: usize = 16;
    /// Lines per container.
    const CHUNK: usize = 64;

    fn push(&mut self, line: ModelLine) {
        let end = line.window_end;
        let at = match self.groups.iter().rposition(|(e, _)| *e == end) {
            Some(at) => at,
            None if self.groups.len() < Self::GROUPS => {
                self.groups.push((end, Vec::new()));
                self.groups.len() - 1
            }
            // The shared last group (its key is past every end).
            None => match self.groups.iter().position(|(e, _)| *e == Time::MAX) {
                Some(at) => at,
                None => {
                    self.groups.push((Time::MAX, Vec::new()));
                    self.groups.len() - 1
                }
            },
        };
        let chunks = &mut self.groups[at].1;
        match chunks.last_mut() {
            Some(chunk) if chunk.len() < Self::CHUNK => chunk.push(line),
            _ => {
                let mut chunk = Vec::with_capacity(Self::CHUNK);
                chunk.push(line);
                chunks.push(chunk);
            }
        }
    }

    /// Hands the lines to `give` a container at a time, group by group in order of end,
    /// and empties it.
    fn give(&mut self, mut give: impl FnMut(&mut Vec<ModelLine>)) {
        self.groups.sort_by_key(|(end, _)| *end);
        for (_, chunks) in self.groups.drain(..) {
            chunks.into_iter().for_each(|mut chunk| give(&mut chunk));
        }
    }
}

/// What the windows state emits, each to its output.
enum Emission {
    Model(ModelLine),
    Estimate(EstimateStats),
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
    /// Whether this worker tallies every worker's records into the metrics (worker 0:
    /// it hears every worker's progress, so process 0's metrics cover the cluster).
    counts_workers: bool,
    /// The source is one partition ([`RunContext::one_partition`]).
    one_partition: bool,
    /// The epoch being evaluated is a source's idle close: finals say so.
    closing_idle: bool,
    /// Storage reused for each window's sum of panes.
    scratch: Stats,
    /// Storage reused for a key's windows.
    windows: Vec<(Window, Range<usize>)>,
    /// This epoch's changes to the metrics, added once at its end.
    tally: Tally,
}

/// Changes to the metrics, gathered over an epoch (an atomic addition per pane and per
/// window was a few per cent of a run with many keys).
#[derive(Default)]
struct Tally {
    panes: i64,
    windows: i64,
    finals: u64,
    provisional: u64,
    closed_idle: u64,
    estimates: u64,
}

impl Tally {
    fn add_to(&mut self, metrics: &Metrics) {
        let t = std::mem::take(self);
        for (gauge, n) in [
            (&metrics.open_panes, t.panes),
            (&metrics.open_windows, t.windows),
        ] {
            if n != 0 {
                gauge.fetch_add(n, Relaxed);
            }
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
struct KeyWindows {
    /// The open panes and their statistics, in order (a key has a handful).
    panes: Vec<(Pane, Stats)>,
    /// Windows emitted provisionally: window start → (end, n, revision).
    emitted: BTreeMap<Time, (Time, i64, u32)>,
    /// Every window of this key ending at or before this time has been emitted final.
    final_through: Time,
    /// When the key is next due: the earliest end of a window of its open panes, or time
    /// at which a provisional window becomes final (`Time::MAX`: none). The agenda has an
    /// entry for it at this time (and maybe stale ones at later times).
    due_at: Time,
    /// Its windows with records that have not ended, as last counted into the metrics.
    open: i64,
}

impl Default for KeyWindows {
    fn default() -> Self {
        KeyWindows {
            panes: Vec::new(),
            emitted: BTreeMap::new(),
            final_through: Time::MIN,
            due_at: Time::MAX,
            open: 0,
        }
    }
}

impl KeyWindows {
    /// Adds `stats` to `pane`. Returns the pane's index if it is new, and whether it is
    /// gone (its updates sum to zero records).
    fn add(&mut self, pane: Pane, stats: Stats) -> (Option<usize>, bool) {
        match self.panes.binary_search_by(|(p, _)| p.cmp(&pane)) {
            Ok(i) => {
                let total = &mut self.panes[i].1;
                total.plus_equals(&stats);
                let gone = total.is_zero();
                if gone {
                    self.panes.remove(i);
                }
                (None, gone)
            }
            Err(_) if stats.is_zero() => (None, false),
            Err(i) => {
                self.panes.insert(i, (pane, stats));
                (Some(i), false)
            }
        }
    }

    /// Counts the windows ending after `frontier` that the pane just added at `i` opened
    /// (see [`windows_opened`]; sessions are recounted), and returns their number.
    fn opened(
        &mut self,
        spec: WindowSpec,
        i: usize,
        frontier: Time,
        windows: &mut Vec<(Window, Range<usize>)>,
    ) -> i64 {
        if spec.is_session() {
            return self.recount(spec, frontier, windows);
        }
        let opened = windows_opened(spec, &self.panes, i, frontier);
        self.open += opened;
        opened
    }

    /// Makes the key due at `time` if it is not due sooner.
    fn schedule(&mut self, key: &Key, time: Time, agenda: &mut Agenda) {
        if time < self.due_at {
            self.due_at = time;
            agenda.insert(time, key.clone());
        }
    }

    /// Counts the key's windows that end after `frontier` (reusing `windows`), and
    /// returns the change since the last count.
    fn recount(
        &mut self,
        spec: WindowSpec,
        frontier: Time,
        windows: &mut Vec<(Window, Range<usize>)>,
    ) -> i64 {
        windows_into(spec, &self.panes, frontier, Time::MAX, windows);
        let open = windows.len() as i64;
        open - std::mem::replace(&mut self.open, open)
    }
}

/// `key`'s state, made (with windows ending through `final_through` final) if new.
fn key_state<'a>(
    keys: &'a mut FxHashMap<Key, KeyWindows>,
    key: &Key,
    final_through: Time,
) -> &'a mut KeyWindows {
    keys.entry(key.clone()).or_insert_with(|| KeyWindows {
        final_through,
        ..KeyWindows::default()
    })
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
            counts_workers: worker == 0,
            one_partition: context.one_partition,
            closing_idle: false,
            scratch: Stats::zero(),
            windows: Vec::new(),
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
            let lateness = windows.config.lateness;
            for (key, start, end, n, revision) in &recovered.emitted {
                let key = Key::from(key.as_str());
                if owner(&key, peers) == worker {
                    let state = key_state(&mut windows.keys, &key, watermark);
                    state.emitted.insert(*start, (*end, *n, *revision));
                    // Due when it becomes final, even if none of its panes comes back.
                    state.schedule(&key, end.saturating_add(lateness), &mut windows.agenda);
                }
            }
        }
        windows
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
        updates: Vec<Vec<PaneUpdate>>,
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
        // With many keys, an update finds its key's panes and its pane's statistics in no
        // cache: what the updates ahead will touch is fetched while this one is added, in
        // two stages (the key's panes 16 places ahead; 8 places ahead, once those are in,
        // the statistics of its pane if open, and the update's own).
        const AHEAD: usize = 8;
        for mut batch in updates {
            for i in 0..batch.len() {
                if let Some(((ahead, _), _, _)) = batch.get(i + 2 * AHEAD)
                    && let Some(state) = self.keys.get(ahead)
                {
                    prefetch(&state.panes);
                }
                if let Some(((ahead, pane), _, incoming)) = batch.get(i + AHEAD)
                    && let Some(state) = self.keys.get(ahead)
                    && let Ok(at) = state.panes.binary_search_by(|(p, _)| p.cmp(pane))
                {
                    prefetch(state.panes[at].1.storage());
                    prefetch(incoming.storage());
                }
                let stats = std::mem::take(&mut batch[i].2);
                let (key, pane) = (batch[i].0.0.clone(), batch[i].0.1);
                if self.estimates {
                    touched.push(key.clone());
                }
                if let Some(c) = self.checkpoint.as_mut() {
                    c.touch(&key, pane, true);
                }
                let entry = key_state(&mut self.keys, &key, self.restored_final_through);
                let (added, gone) = entry.add(pane, stats);
                if !entry.emitted.is_empty() {
                    // Late records changed a window already emitted: revise it.
                    due.push(key.clone());
                }
                if gone {
                    self.tally.panes -= 1;
                    self.tally.windows += entry.recount(spec, frontier, &mut self.windows);
                }
                let Some(i) = added else {
                    // A pane already open: only its statistics changed (or it is gone, or an
                    // update of no records found no pane). A key left with nothing leaves.
                    if entry.panes.is_empty() && entry.emitted.is_empty() {
                        self.keys.remove(&key);
                    }
                    continue;
                };
                self.tally.panes += 1;
                self.tally.windows += entry.opened(spec, i, frontier, &mut self.windows);
                entry.schedule(&key, spec.first_end(pane), &mut self.agenda);
            }
        }
        // The keys due by the agenda (not a stale entry of a key since due sooner).
        let mut taken = Vec::new();
        self.agenda.take_through(frontier, &mut taken);
        due.extend(
            taken
                .into_iter()
                .filter(|key| self.keys.get(key).is_some_and(|s| s.due_at <= frontier)),
        );
        // In the order `--out` writes keys (then in the keys' own, for long keys whose
        // hashes collide): the sink then sorts lines that mostly come in order.
        crate::key::sort_in_text_order(&mut due);
        // As with the updates: what the keys ahead will read is fetched while this one is
        // evaluated (their panes 8 places ahead; 4 places ahead, the panes' statistics).
        for (i, key) in due.iter().enumerate() {
            if let Some(ahead) = due.get(i + AHEAD)
                && let Some(state) = self.keys.get(ahead)
            {
                prefetch(&state.panes);
            }
            if let Some(ahead) = due.get(i + AHEAD / 2)
                && let Some(state) = self.keys.get(ahead)
            {
                for (_, stats) in &state.panes {
                    prefetch(stats.storage());
                }
            }
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
        let mut windows = std::mem::take(&mut self.windows);
        // Aligned windows are listed once, through every open one: those ending by the
        // frontier are due, the others are the key's open windows (dropping the panes of
        // final windows below changes none of those). Sessions are listed through the
        // frontier, and recounted once their final sessions' panes are dropped.
        let through = if spec.is_session() {
            frontier
        } else {
            Time::MAX
        };
        windows_into(
            spec,
            &state.panes,
            state.final_through,
            through,
            &mut windows,
        );
        let due = windows.partition_point(|(window, _)| window.end <= frontier);
        for (window, members) in windows.drain(..due) {
            let is_final = window.end <= watermark;
            let panes = &state.panes[members.clone()];
            let n: i64 = panes.iter().map(|(_, pane)| pane.n).sum();
            let revision = match state.emitted.get(&window.start) {
                Some(&(end, was, _)) if end == window.end && was == n && !is_final => {
                    // Emitted and unchanged: nothing to say yet, but it must still come
                    // back when the watermark passes its end. (A window restored from a
                    // checkpoint as emitted reaches here first through its panes' agenda
                    // entries: without this it never became final.)
                    revisit.push(window.end.saturating_add(self.config.lateness));
                    continue;
                }
                Some(&(end, was, rev)) if end == window.end && was == n => rev,
                Some(&(_, _, rev)) => rev + 1,
                None => 0,
            };
            // Too few records for a model: the count says so, the sums are not needed.
            let fit = if determined(n, self.config.features) {
                sum_into(stats, panes);
                solve(stats, self.config.solve)
            } else {
                Fit::underdetermined()
            };
            let mut line = ModelLine::new(key.as_str(), window, n, fit, is_final, revision);
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
                    .insert(window.start, (window.end, n, revision));
                self.tally.provisional += 1;
                // Come back when the watermark passes its end.
                revisit.push(window.end.saturating_add(self.config.lateness));
            }
        }

        // A provisional window none of whose records remain (all retracted) is found from
        // the panes no more, but it is still owed its final: an empty one (n = 0,
        // `underdetermined`). A provisional session is owed one only if no open pane
        // overlaps it: otherwise a record joined it earlier, moving its start, and its
        // records are in the session that absorbed it (emitted above).
        let owed: Vec<(Time, Time, u32)> = state
            .emitted
            .iter()
            .filter(|(_, (end, _, _))| *end <= watermark)
            .map(|(&start, &(end, _, revision))| (start, end, revision))
            .collect();
        for (start, end, revision) in owed {
            state.emitted.remove(&start);
            let absorbed =
                || (state.panes.iter()).any(|(pane, _)| pane.start < end && start < pane.end);
            if spec.is_session() && absorbed() {
                continue;
            }
            let window = Window { start, end };
            let fit = Fit::underdetermined();
            let mut line = ModelLine::new(key.as_str(), window, 0, fit, true, revision + 1);
            if self.closing_idle {
                line.closed_by = Some("idle".into());
                self.tally.closed_idle += 1;
            }
            emit(Emission::Model(line));
            self.tally.finals += 1;
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
        // Due next: when its next window ends, or a provisional one becomes final (found
        // from its panes or not: its records may all have been retracted since).
        let lateness = self.config.lateness;
        revisit.extend(
            state
                .emitted
                .values()
                .map(|(end, _, _)| end.saturating_add(lateness)),
        );
        self.tally.windows += if spec.is_session() {
            state.recount(spec, frontier, &mut windows)
        } else {
            let open = windows.len() as i64;
            open - std::mem::replace(&mut state.open, open)
        };
        let next_end = windows.first().map(|(w, _)| w.end);
        self.windows = windows;
        state.due_at = Time::MAX;
        if let Some(next) = revisit.into_iter().chain(next_end).min() {
            state.schedule(key, next, &mut self.agenda);
        }
        if state.panes.is_empty() && state.emitted.is_empty() {
            self.keys.remove(key);
        }
    }

    /// The statistics of the running estimate of `key`'s open window that closes next
    /// (the one ending first after `frontier`): the sum of its panes so far, unsolved.
    fn estimate(&mut self, key: &Key, frontier: Time) -> Option<EstimateStats> {
        let panes = &self.keys.get(key)?.panes;
        // Windows in order of start are in order of end (one length, or disjoint sessions).
        windows_into(
            self.config.window,
            panes,
            frontier,
            Time::MAX,
            &mut self.windows,
        );
        let (window, members) = self.windows.first().cloned()?;
        let mut stats = Stats::zero();
        sum_into(&mut stats, &panes[members]);
        Some(EstimateStats {
            key: key.clone(),
            window,
            stats,
        })
    }
}

/// The windows operator's agenda: per time, the keys due then.
///
/// A key has one live entry, at its [`KeyWindows::due_at`] (the earliest of its pending
/// window ends), not one per window: with many keys nearly every record opens a pane of
/// its own and six windows (sliding 60 s / 10 s), and an entry per window made the
/// agenda's insertions a tenth of the run. Entries left behind when a key became due
/// sooner are skipped when their time comes.
#[derive(Default)]
struct Agenda {
    by_time: BTreeMap<Time, Vec<Key>>,
}

impl Agenda {
    /// Notes that `key` is due at `time`.
    fn insert(&mut self, time: Time, key: Key) {
        self.by_time.entry(time).or_default().push(key);
    }

    /// Moves the keys of every time at or before `frontier` into `due`.
    fn take_through(&mut self, frontier: Time, due: &mut Vec<Key>) {
        while let Some(entry) = self.by_time.first_entry() {
            if *entry.key() > frontier {
                break;
            }
            due.append(&mut entry.remove());
        }
    }
}

/// `stats` becomes the sum of `panes`, reusing its storage.
fn sum_into(stats: &mut Stats, panes: &[(Pane, Stats)]) {
    let Some(((_, first), rest)) = panes.split_first() else {
        *stats = Stats::zero();
        return;
    };
    stats.assign(first);
    for (_, pane) in rest {
        stats.plus_equals(pane);
    }
}

/// Asks the CPU to bring `values` into its caches, without waiting for them.
#[inline]
fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(values);
        let mut at = values.as_ptr().cast::<i8>();
        for _ in 0..bytes.div_ceil(64) {
            // SAFETY: SSE is part of every x86-64 CPU, and a prefetch reads nothing (it
            // cannot fault, whatever the address).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at) };
            at = at.wrapping_add(64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// How many windows ending after `frontier` hold the aligned pane at `i` of `panes` and
/// no other pane: those holding it but neither of its neighbours (a window is a range of
/// panes, so one holding another pane holds the neighbour on that side too). With the
/// pane just added, that is how many windows it opened; counted by the slide arithmetic,
/// without listing a window (nearly every record opens a pane with many keys).
fn windows_opened(spec: WindowSpec, panes: &[(Pane, Stats)], i: usize, frontier: Time) -> i64 {
    let length = spec.aligned_length().expect("aligned windows only");
    // Window starts, panes' starts and lengths are multiples of the slide: the starts of
    // the windows holding pane `p` are `p.start + slide - length ..= p.start`; one holds
    // the pane before (starting at `q`) when it starts at or before `q`, the pane after
    // (starting at `r`) when it starts at or after `r + slide - length`, and it ends after
    // `frontier` when it starts after `frontier - length`. In i128: no bound overflows.
    let (slide, length) = (spec.bucket() as i128, length as i128);
    let start = panes[i].0.start as i128;
    let mut low = (start + slide - length).max(frontier as i128 - length + 1);
    if let Some(i) = i.checked_sub(1) {
        low = low.max(panes[i].0.start as i128 + slide);
    }
    let mut high = start;
    if let Some((next, _)) = panes.get(i + 1) {
        high = high.min(next.start as i128 - length);
    }
    if high < low {
        return 0;
    }
    // From the pane's start, the bounds are in `slide - length ..= 0`: machine words for
    // the divisions (the pane's start is a multiple of the slide, as the starts counted).
    let (low, high, slide) = ((low - start) as i64, (high - start) as i64, slide as i64);
    let first = low + (slide - low.rem_euclid(slide)) % slide;
    if high < first {
        0
    } else {
        (high - first) / slide + 1
    }
}

/// The windows of one key's open panes that end in `(after, through]`, in order, each
/// with the indices of the panes it sums.
///
/// `panes` are sorted, so a window's panes are a range. Aligned windows (tumbling,
/// sliding) start at multiples of the slide, as their panes do: the candidates are the
/// starts from the earliest window holding the first pane to the last pane's start, and
/// two cursors find each one's panes.
fn windows_into(
    spec: WindowSpec,
    panes: &[(Pane, Stats)],
    after: Time,
    through: Time,
    windows: &mut Vec<(Window, Range<usize>)>,
) {
    windows.clear();
    if spec.is_session() {
        let bounds: Vec<Pane> = panes.iter().map(|(p, _)| *p).collect();
        let sessions = spec.sessions(&bounds);
        windows.extend(
            sessions
                .into_iter()
                .filter(|(w, _)| after < w.end && w.end <= through),
        );
        return;
    }
    debug_assert!(panes.windows(2).all(|w| w[0].0.start < w[1].0.start));
    let (Some((first, _)), Some((last, _))) = (panes.first(), panes.last()) else {
        return;
    };
    let slide = spec.bucket();
    let length = spec.aligned_length().expect("sessions are handled above");
    // Ends after `after`: starts from `after - length + 1`, rounded up to the slide.
    let lowest = after.saturating_sub(length).saturating_add(1);
    let lowest = lowest.saturating_add((slide - lowest.rem_euclid(slide)) % slide);
    let mut start = (first.start.saturating_sub(length).saturating_add(slide)).max(lowest);
    let last_start = last.start.min(through.saturating_sub(length));
    let (mut from, mut to) = (0, 0);
    while start <= last_start {
        let window = Window {
            start,
            end: start.saturating_add(length),
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
        // The next window holding a pane: the next slide, or, across a stretch without
        // panes, the first window holding the next pane (a partition far ahead of the
        // frontier must not cost a step per slide in between).
        let Some((next, _)) = panes.get(from) else {
            break;
        };
        let holding_next = next.start.saturating_sub(length).saturating_add(slide);
        match start.checked_add(slide) {
            Some(after) => start = after.max(holding_next),
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Model lines come out grouped by window end, ends in order, each group in the order
    /// its lines came, in containers of at most `CHUNK`; past `GROUPS` ends the others
    /// share a last group, in the order they came.
    #[test]
    fn lines_are_given_by_window_end() {
        let line = |key: &str, end: Time| {
            let window = Window {
                start: end - 10,
                end,
            };
            ModelLine::new(key, window, 1, Fit::underdetermined(), true, 0)
        };
        let mut by_end = ByEnd::default();
        let mut came = Vec::new();
        for i in 0..(3 * ByEnd::CHUNK) {
            for end in [30, 10, 20] {
                let key = format!("k{i:05}");
                came.push((key.clone(), end));
                by_end.push(line(&key, end));
            }
        }
        // Ends past the groups: 100 + 17 of them, the first ones first.
        let many = (0..(ByEnd::GROUPS as Time + 17)).map(|i| 1_000 - i);
        for end in many.clone() {
            by_end.push(line("late", end));
        }
        let mut given = Vec::new();
        by_end.give(|lines| {
            assert!(!lines.is_empty() && lines.len() <= ByEnd::CHUNK);
            given.extend(lines.drain(..).map(|l| (l.key, l.window_end)));
        });
        let mut expected = came.clone();
        expected.sort_by_key(|(_, end)| *end); // stable: each end's lines as they came
        // The first 13 of the many ends had a group each (16 with 10, 20 and 30), the
        // rest share the last one.
        let own = ByEnd::GROUPS - 3;
        let mut grouped: Vec<Time> = many.clone().take(own).collect();
        grouped.sort();
        expected.extend(grouped.into_iter().map(|end| ("late".to_owned(), end)));
        expected.extend(many.skip(own).map(|end| ("late".to_owned(), end)));
        assert_eq!(given, expected);
        let mut nothing = 0;
        by_end.give(|_| nothing += 1);
        assert_eq!(nothing, 0, "given once");
    }

    /// The windows of `panes` ending in `(after, through]` the slow way: every window of
    /// every pane, each with the panes it covers.
    fn windows_by_enumeration(
        spec: WindowSpec,
        panes: &[(Pane, Stats)],
        after: Time,
        through: Time,
    ) -> Vec<(Window, Range<usize>)> {
        let mut windows: Vec<Window> = panes
            .iter()
            .flat_map(|(pane, _)| spec.windows_of_pane(pane.start))
            .filter(|w| after < w.end && w.end <= through)
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

    /// Numbers in `0..bound` from a seeded linear congruential generator.
    fn draws(mut seed: u64) -> impl FnMut(i64) -> i64 {
        move |bound: i64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % bound as u64) as i64
        }
    }

    /// Aligned panes of one record each, starting at `starts`.
    fn panes_at(starts: &[Time], slide: Time) -> Vec<(Pane, Stats)> {
        let pane = |start| Pane {
            start,
            end: start + slide,
        };
        (starts.iter())
            .map(|&start| (pane(start), Stats::of_row(&[1.0, 2.0])))
            .collect()
    }

    #[test]
    fn windows_from_the_slide_arithmetic_are_those_of_every_pane() {
        let mut next = draws(7);
        for spec in [
            "tumbling:10ms",
            "sliding:30ms/10ms",
            "sliding:60ms/1ms",
            "sliding:10ms/10ms",
        ] {
            let spec: WindowSpec = spec.parse().unwrap();
            let slide = spec.bucket();
            for _ in 0..300 {
                let mut starts: Vec<i64> =
                    (0..next(6)).map(|_| (next(400) - 200) * slide).collect();
                starts.sort_unstable();
                starts.dedup();
                let panes = panes_at(&starts, slide);
                let bounds = [Time::MIN, Time::MAX, next(5000) - 2500, next(5000) - 2500];
                for after in bounds {
                    for through in bounds {
                        let mut fast = Vec::new();
                        windows_into(spec, &panes, after, through, &mut fast);
                        let slow = windows_by_enumeration(spec, &panes, after, through);
                        assert_eq!(fast, slow, "{spec:?} {starts:?} ({after}, {through}]");
                    }
                }
            }
        }
    }

    /// The windows a pane opens, by the slide arithmetic, are the windows of the key's
    /// panes with it less those without it, both listed the slow way.
    #[test]
    fn the_windows_a_pane_opens_are_counted_by_the_slide_arithmetic() {
        let mut next = draws(11);
        for spec in ["tumbling:10ms", "sliding:30ms/10ms", "sliding:60ms/1ms"] {
            let spec: WindowSpec = spec.parse().unwrap();
            let slide = spec.bucket();
            for _ in 0..300 {
                let mut starts: Vec<i64> =
                    (0..1 + next(7)).map(|_| (next(40) - 20) * slide).collect();
                starts.sort_unstable();
                starts.dedup();
                let panes = panes_at(&starts, slide);
                for frontier in [Time::MIN, Time::MAX, next(600) - 300, next(600) - 300] {
                    let open = |panes: &[(Pane, Stats)]| {
                        windows_by_enumeration(spec, panes, frontier, Time::MAX).len() as i64
                    };
                    for i in 0..panes.len() {
                        let mut without = panes.clone();
                        without.remove(i);
                        assert_eq!(
                            windows_opened(spec, &panes, i, frontier),
                            open(&panes) - open(&without),
                            "{spec:?} {starts:?} pane {i}, frontier {frontier}"
                        );
                    }
                }
            }
        }
    }

    /// A key whose panes are thirty days apart (a partition far ahead of the frontier) with
    /// a 1 ms slide: a step per slide in between would be 2.6 billion steps.
    #[test]
    fn windows_of_panes_far_apart_are_found_without_walking_the_gap() {
        let spec: WindowSpec = "sliding:10ms/1ms".parse().unwrap();
        let far: Time = 30 * 24 * 3_600_000;
        let panes: Vec<(Pane, Stats)> = [0, far]
            .iter()
            .map(|&start| {
                (
                    Pane {
                        start,
                        end: start + 1,
                    },
                    Stats::of_row(&[1.0, 2.0]),
                )
            })
            .collect();
        let mut windows = Vec::new();
        windows_into(spec, &panes, Time::MIN, Time::MAX, &mut windows);
        assert_eq!(windows.len(), 20);
        assert!(
            windows[..10]
                .iter()
                .all(|(w, r)| *r == (0..1) && w.start <= 0 && 0 < w.end)
        );
        assert!((windows[10..].iter()).all(|(w, r)| *r == (1..2) && w.start <= far && far < w.end));
    }

    #[test]
    fn the_agenda_hands_over_the_keys_of_the_times_passed_in_order() {
        let mut agenda = Agenda::default();
        for (time, key) in [(20, "b"), (10, "a"), (20, "c"), (30, "a")] {
            agenda.insert(time, Key::from(key));
        }
        let mut due = Vec::new();
        agenda.take_through(9, &mut due);
        assert!(due.is_empty());
        agenda.take_through(20, &mut due);
        assert_eq!(due, [Key::from("a"), Key::from("b"), Key::from("c")]);
        due.clear();
        agenda.take_through(Time::MAX, &mut due);
        assert_eq!(due, [Key::from("a")]);
        assert!(agenda.by_time.is_empty());
    }

    /// The open-windows gauge is the number of (key, window) pairs with records that end
    /// after the frontier, counted the slow way from every record fed so far, after each
    /// epoch: panes opening windows, windows closing, a late pane within the lateness, and
    /// a pane retracted to zero records.
    #[test]
    fn the_open_windows_gauge_counts_the_windows_with_records_not_ended() {
        use crate::messages::Progress;

        let spec: WindowSpec = "sliding:30s/10s".parse().unwrap();
        let config = WindowConfig::new(spec, 1).lateness(5_000);
        let context = RunContext::default();
        let metrics = Arc::clone(&context.metrics);
        let mut state = Windows::new(config, 0, 1, &context);
        // Per epoch: (key, record time, +1 or -1 record) and the largest time seen after it.
        type Fed = (&'static str, Time, i64);
        let epochs: [(&[Fed], Time); 7] = [
            (
                &[("a", 1_000, 1), ("b", 4_000, 1), ("a", 12_000, 1)],
                12_000,
            ),
            (&[("c", 25_000, 1), ("a", 26_000, 1)], 26_000),
            // Late for the window ending at 30 s, within the lateness.
            (&[("b", 9_000, 1), ("a", 41_000, 1)], 41_000),
            // The pane of "c" at 20 s retracted to nothing.
            // "d" ahead of the frontier, a pane at a time, the last between the others.
            (
                &[("c", 25_000, -1), ("b", 55_000, 1), ("d", 100_000, 1)],
                55_000,
            ),
            (&[("d", 60_000, 1)], 56_000),
            (&[("d", 81_000, 1), ("a", 71_000, 1)], 90_000),
            (&[], Time::MAX),
        ];
        let mut fed: Vec<Fed> = Vec::new();
        for (epoch, (records, max_seen)) in epochs.iter().enumerate() {
            let updates = records
                .iter()
                .map(|&(key, t, sign)| {
                    let start = t - t.rem_euclid(10_000);
                    let pane = Pane {
                        start,
                        end: start + 10_000,
                    };
                    let mut stats = Stats::of_row(&[t as f64, 1.0]);
                    if sign < 0 {
                        differential_dataflow::difference::Abelian::negate(&mut stats);
                    }
                    ((Key::new(key), pane), epoch as Epoch, stats)
                })
                .collect();
            let report = Control::Progress(Progress {
                worker: 0,
                max_seen: *max_seen,
                counts: Default::default(),
                checkpoint: false,
                idle: false,
            });
            state.epoch(epoch as Epoch, vec![updates], vec![report], |_| {});
            fed.extend(records.iter().copied());
            // The slow way: every window of 30 s starting at a multiple of 10 s that holds a
            // record (net of retractions) and ends after the largest time seen.
            let mut open = BTreeSet::new();
            for &(key, t, _) in &fed {
                let net: i64 = (fed.iter())
                    .filter(|&&(k, u, _)| k == key && u / 10_000 == t / 10_000)
                    .map(|&(_, _, sign)| sign)
                    .sum();
                let first = t - t.rem_euclid(10_000) - 20_000;
                for start in (first..=t).step_by(10_000) {
                    if net > 0 && start + 30_000 > *max_seen {
                        open.insert((key, start));
                    }
                }
            }
            assert_eq!(
                metrics.open_windows.load(Relaxed),
                open.len() as i64,
                "after epoch {epoch}: {open:?}"
            );
        }
    }
}
