//! Record-level operators, for dataflows that transform records before the regression.
//!
//! [`ingest`](crate::dataflow::ingest) folds a source straight into pane statistics, which
//! is the fast path but leaves no place for a transform of the records themselves. These
//! operators open the record level:
//!
//! * [`ReadRecords::read_records`]: a source as a timely stream of [`Record`]s (batch `k`
//!   at epoch `k` on worker `k mod W`, read by `ingest`'s reading loop: the same throttle,
//!   and a live source that has nothing parks its worker);
//! * [`WindowPanes::window_panes`]: an insert-only stream of records (after any `map`,
//!   `filter` or join of your own) folded into the pane statistics and the progress
//!   [`Control`] stream that [`windowed_regression`](crate::dataflow::windowed_regression)
//!   takes, with the same watermark, lateness and set-aside rules as `ingest`;
//! * [`WindowStats::window_stats`]: a differential *collection* of records, with
//!   additions and retractions, into the exact per-(key, window) statistics, recomputed
//!   for the (key, window) groups whose records changed and for no other.
//!
//! ## Why retractions take the second path
//!
//! [`Stats`] is a difference type whose zero is decided by the row count alone (so that a
//! pane whose rows were all retracted disappears despite float residue, see
//! [`crate::stats`]). That is sound for what the windows operator does — add rows, then
//! drop a whole pane once no window needs it — but not for arbitrary retractions:
//! replacing a row by another in the same pane and epoch nets to a count of zero, and the
//! change of the sums is dropped; across epochs, differential may merge a retraction with
//! a later addition first, with the same effect.
//! So `window_panes` takes insert-only streams, and a collection whose records change
//! (e.g. because they are joined with a reference collection that changes) goes through
//! `window_stats`, which keeps the records and sums each group's statistics afresh.
//! The unit test `equal_count_replacement_cancels` shows the hazard.

use std::sync::Arc;

use differential_dataflow::difference::{Abelian, Semigroup};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};
use timely::progress::Timestamp;

use crate::dataflow::{
    Combiner, Control, Counts, Epoch, OnError, Poll, Progress, Reading, RunContext, SetAside,
    WindowConfig,
};
use crate::held::Held;
use crate::key::Key;
use crate::record::{Record, RecordRef, check_time};
use crate::source::{Malformed, MalformedPolicy, RecordSink, SourceError, SourceReader};
use crate::stats::Stats;
use crate::types::{EXIT_SOURCE_OR_OUTPUT, fatal};
use crate::window::{Pane, Time, Window, WindowSpec};

/// A source read as records.
pub struct RecordStream<'scope> {
    /// This worker's records, batch `k` at epoch `k`.
    pub records: StreamVec<'scope, Epoch, Record>,
    /// Backpressure, as [`Ingested::throttle`](crate::dataflow::Ingested::throttle):
    /// attach it to the end of the dataflow (`probe_with`) to keep the source at most
    /// [`MAX_AHEAD_PER_WORKER`](crate::dataflow::MAX_AHEAD_PER_WORKER) × workers batches
    /// ahead of it.
    pub throttle: ProbeHandle<Epoch>,
}

/// Reads a source into a stream of records: an extension of a timely scope.
///
/// ```
/// use timely::dataflow::operators::Capture;
/// use timely::dataflow::operators::capture::Extract;
/// use timely::dataflow::operators::vec::Map;
/// use tributary::{GenReader, GenSpec, ReadRecords, RunContext, Schema, SourceReader, SourceSpec};
///
/// // 3 000 generated records in batches of 1 024, all read by one worker.
/// let spec: GenSpec = "rows=3000,keys=2,features=2,batch=1024".parse().unwrap();
/// let source = SourceSpec::Gen(spec.clone());
/// let reader = SourceReader::open(&source, &Schema::generated(2), 0, 1).unwrap();
/// let context = RunContext::default();
/// let metrics = context.metrics.clone();
/// // A record as (time, key, the bits of z): comparable, and compared exactly.
/// let exact = |time, key: &str, z: &[f64]| {
///     (time, key.to_owned(), z.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
/// };
/// let captured = timely::example(move |scope| {
///     let read = scope.read_records(reader, &context);
///     read.records.map(move |r| exact(r.time, &r.key, &r.z())).capture()
/// });
/// // Batch k at epoch k: the generator's records k·1024 up to (k + 1)·1024, to the bit.
/// let mut generated = Vec::new();
/// GenReader::new(&spec, 0, 1).generate(0, spec.rows, |r| {
///     generated.push(exact(r.time, r.key, r.z));
/// });
/// let batches = captured.extract();
/// assert_eq!(batches.iter().map(|(epoch, _)| *epoch).collect::<Vec<_>>(), [0, 1, 2]);
/// for (epoch, records) in batches {
///     let start = epoch as usize * 1024;
///     let mut want = generated[start..(start + 1024).min(3000)].to_vec();
///     want.sort();
///     assert_eq!(records, want, "batch {epoch}");
/// }
/// assert_eq!(metrics.snapshot().records, 3000);
/// ```
pub trait ReadRecords<'scope> {
    /// Reads this worker's share of `reader` (opened for this worker), batch by batch:
    /// batch `k` becomes the records of epoch `k`. Malformed lines follow
    /// `context.on_error` (skipped and counted, or fatal through `context.on_fatal`);
    /// records read and malformed lines are counted in `context.metrics` as each batch
    /// is read (a live source's malformed lines are counted where it parses them, in its
    /// feed's metrics: pass the same `Metrics`).
    ///
    /// The reading loop is [`ingest`](crate::dataflow::ingest)'s: the same throttle, and
    /// a live source ([`SourceReader::Log`]: HTTP, TCP, a followed file) whose next batch
    /// has not arrived holds its epoch and lets the worker park until the source wakes it,
    /// instead of spinning it. Drive such a worker with
    /// `worker.step_or_park(Some(duration))`, not `worker.step()` (which never parks).
    ///
    /// No checkpoint is restored here (`context.checkpoint` is not read): the records go
    /// to operators of your own, whose state no checkpoint of this crate holds, so
    /// skipping the batches a checkpoint covers would lose them. To start at a later batch,
    /// [`seek`](SourceReader::seek) the reader before handing it over; its first epoch is
    /// then that batch.
    fn read_records(self, reader: SourceReader, context: &RunContext) -> RecordStream<'scope>;

    /// [`read_records`](Self::read_records) with an operator name.
    fn read_records_named(
        self,
        name: &str,
        reader: SourceReader,
        context: &RunContext,
    ) -> RecordStream<'scope>;
}

impl<'scope> ReadRecords<'scope> for Scope<'scope, Epoch> {
    fn read_records(self, reader: SourceReader, context: &RunContext) -> RecordStream<'scope> {
        self.read_records_named("ReadRecords", reader, context)
    }

    fn read_records_named(
        self,
        name: &str,
        reader: SourceReader,
        context: &RunContext,
    ) -> RecordStream<'scope> {
        let scope = self;
        let on_fatal = context.on_fatal;
        let mut sink = Collect {
            records: Vec::new(),
            on_malformed: MalformedPolicy::new(context.on_error),
            malformed: 0,
        };
        let metrics = Arc::clone(&context.metrics);
        let throttle = ProbeHandle::new();
        let held_back = throttle.clone();
        let records = source(scope, name, move |capability, info| {
            // No bound on records in flight: the throttle counts batches only.
            let mut reading = Reading::new(scope, info.address, reader, 0, held_back, usize::MAX);
            let mut cap = Some(capability);
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                match reading.poll(c) {
                    Poll::Wait => {}
                    Poll::Batch(batch) => {
                        let next = match reading.read(&mut sink) {
                            Ok(next) => next,
                            Err(e) => fatal!(on_fatal, EXIT_SOURCE_OR_OUTPUT, "{e}"),
                        };
                        metrics.add(&Counts {
                            records: sink.records.len() as u64,
                            malformed: std::mem::take(&mut sink.malformed),
                            ..Counts::default()
                        });
                        output.session(&*c).give_iterator(sink.records.drain(..));
                        reading.release(batch, 0, next, &mut cap);
                    }
                    Poll::End => cap = None,
                }
            }
        });
        RecordStream { records, throttle }
    }
}

/// Collects a batch's records.
struct Collect {
    records: Vec<Record>,
    /// `--on-error`, and the warnings given so far (across batches).
    on_malformed: MalformedPolicy,
    /// Malformed lines of the current batch (counted into the metrics with it).
    malformed: u64,
}

impl RecordSink for Collect {
    fn record(&mut self, record: RecordRef<'_>) {
        self.records.push(record.to_owned());
    }

    fn malformed(&mut self, error: Malformed) -> Result<(), SourceError> {
        self.malformed += 1;
        self.on_malformed.apply(error)
    }
}

/// What [`WindowPanes::window_panes`] produces: the inputs of
/// [`windowed_regression`](crate::dataflow::windowed_regression), and the records set aside.
pub struct Panes<'scope> {
    /// Per (key, pane) and epoch, the statistics of the pane's records admitted then.
    pub panes: VecCollection<'scope, Epoch, (Key, Pane), Stats>,
    /// This worker's event-time progress, one report per epoch that had records, and a
    /// last one (largest time `Time::MAX`) when its input ends.
    pub control: StreamVec<'scope, Epoch, Control>,
    /// Records set aside: late, or too far ahead.
    pub aside: StreamVec<'scope, Epoch, SetAside>,
}

/// Folds an insert-only stream of records into pane statistics: an extension of timely
/// streams of [`Record`]s.
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use timely::dataflow::InputHandleVec;
/// use timely::dataflow::operators::Inspect;
/// use timely::dataflow::operators::vec::Input;
/// use tributary::{ModelLine, Record, RunContext, SetAside, WindowConfig, WindowPanes};
/// use tributary::windowed_regression;
///
/// let config = WindowConfig::new("tumbling:10s".parse().unwrap(), 1);
/// let context = RunContext::default();
/// let models: Arc<Mutex<Vec<ModelLine>>> = Arc::default();
/// let aside: Arc<Mutex<Vec<SetAside>>> = Arc::default();
/// let (out, set_aside) = (Arc::clone(&models), Arc::clone(&aside));
/// timely::execute_directly(move |worker| {
///     let mut input = InputHandleVec::new();
///     worker.dataflow(|scope| {
///         let panes = scope.input_from(&mut input).window_panes(&config);
///         panes.aside.inspect(move |a| set_aside.lock().unwrap().push(a.clone()));
///         let windows =
///             windowed_regression(panes.panes, panes.control, &config, &context);
///         windows.models.inspect(move |m| out.lock().unwrap().push(m.clone()));
///     });
///     let record = |time, x: f64, y| Record { time, key: "a".into(), x: vec![x], y };
///     // Epoch 0: y = 1 + 2x in [0 s, 10 s), and a record at 25 s.
///     for i in 0..10 {
///         input.send(record(i * 1_000, i as f64, 1.0 + 2.0 * i as f64));
///     }
///     input.send(record(25_000, 0.0, 0.0));
///     // Epoch 1: a record of the first window, behind the watermark (25 s) now.
///     input.advance_to(1);
///     input.send(record(5_000, 1.0, 100.0));
/// });
/// let models = models.lock().unwrap();
/// let first: Vec<&ModelLine> = models.iter().filter(|m| m.window_start == 0).collect();
/// assert_eq!(first.len(), 1, "one model of [0 s, 10 s): final at once, lateness 0");
/// let coef = first[0].coef.as_ref().unwrap();
/// assert!(first[0].is_final && first[0].n == 10);
/// assert!((coef[0] - 1.0).abs() < 1e-9 && (coef[1] - 2.0).abs() < 1e-9, "{coef:?}");
/// let aside = aside.lock().unwrap();
/// assert_eq!(aside.len(), 1);
/// let late = &aside[0];
/// assert_eq!((late.ts, late.reason.as_str(), late.watermark), (5_000, "late", 25_000));
/// ```
pub trait WindowPanes<'scope> {
    /// Per worker (no exchange: each worker's input is one partition with its own
    /// watermark), in epoch order: every record is checked against the watermark (largest
    /// admitted event time − `config.lateness`) and either folded into its (key, pane)
    /// statistics or set aside (late; more than `config.max_jump` ahead), as
    /// [`ingest`](crate::dataflow::ingest) does. Emits one pane update per (key, pane) and
    /// epoch, and a progress report per epoch; when the input ends, a report that this
    /// worker is done, which lets the windows close.
    ///
    /// Panics, naming the record, on a record with another number of features than
    /// `config.features`. Checkpoints are not supported on this path.
    fn window_panes(self, config: &WindowConfig) -> Panes<'scope>;

    /// [`window_panes`](Self::window_panes) with an operator name.
    fn window_panes_named(self, name: &str, config: &WindowConfig) -> Panes<'scope>;
}

#[derive(Clone)]
enum PaneOut {
    Pane(((Key, Pane), Epoch, Stats)),
    Progress(Progress),
    Aside(SetAside),
}

impl<'scope> WindowPanes<'scope> for StreamVec<'scope, Epoch, Record> {
    fn window_panes(self, config: &WindowConfig) -> Panes<'scope> {
        self.window_panes_named("WindowPanes", config)
    }

    fn window_panes_named(self, name: &str, config: &WindowConfig) -> Panes<'scope> {
        let worker = self.scope().index();
        let features = config.features;
        let mut combiner = Combiner::new(config, OnError::Skip);
        let mut z = Vec::with_capacity(features + 1);
        let stream = self.unary_frontier(Pipeline, name, move |initial, _info| {
            let mut held: Held<Record> = Held::default();
            // The end-of-input report is not data held at an epoch: it is due when the
            // input's frontier empties, at the last time the frontier held, even if no
            // record ever came. `Held` keeps capabilities only while epochs held need
            // them, so the report keeps its own, downgraded as the frontier advances.
            let mut end_report = Some(initial);
            move |(input, frontier), output| {
                input.for_each(|cap, data| held.hold(&cap, output.output_index(), data));
                let Some(end) = end_report.as_mut() else {
                    return;
                };
                while let Some((at, records)) = held.take_passed(frontier.frontier()) {
                    let epoch = *at.time();
                    for r in records {
                        assert_eq!(
                            r.x.len(),
                            features,
                            "window_panes: record of key {:?} at {} has {} features, the \
                             window configuration {}",
                            r.key,
                            r.time,
                            r.x.len(),
                            features
                        );
                        z.clear();
                        z.extend_from_slice(&r.x);
                        z.push(r.y);
                        combiner.record(RecordRef {
                            time: r.time,
                            key: &r.key,
                            z: &z,
                        });
                    }
                    let mut session = output.session(&at);
                    for (pane, stats) in combiner.drain_panes() {
                        session.give(PaneOut::Pane((pane, epoch, stats)));
                    }
                    session.give_iterator(combiner.aside.drain(..).map(PaneOut::Aside));
                    session.give(PaneOut::Progress(Progress {
                        worker,
                        max_seen: combiner.watermark.max_seen,
                        counts: std::mem::take(&mut combiner.counts),
                        checkpoint: false,
                        idle: false,
                    }));
                }
                match frontier.frontier().iter().next() {
                    Some(time) => end.downgrade(time),
                    None if held.is_empty() => {
                        // The input has ended: this worker will admit nothing more.
                        output.session(&*end).give(PaneOut::Progress(Progress {
                            worker,
                            max_seen: Time::MAX,
                            counts: Counts::default(),
                            checkpoint: false,
                            idle: false,
                        }));
                        end_report = None;
                    }
                    None => {}
                }
            }
        });
        Panes {
            panes: stream
                .clone()
                .flat_map(|o| match o {
                    PaneOut::Pane(p) => Some(p),
                    _ => None,
                })
                .as_collection(),
            control: stream.clone().flat_map(|o| match o {
                PaneOut::Progress(p) => Some(Control::Progress(p)),
                _ => None,
            }),
            aside: stream.flat_map(|o| match o {
                PaneOut::Aside(a) => Some(a),
                _ => None,
            }),
        }
    }
}

/// A record as differential data: `z = [x₁ … x_d, y]`, numbers ordered by
/// [`f64::total_cmp`] (so that equality, order and consolidation agree).
///
/// ```
/// use tributary::Record;
/// use tributary::operators::Row;
///
/// let record = Record { time: 5, key: "a".into(), x: vec![1.0, 2.0], y: 3.0 };
/// let row = Row::from(record);
/// assert_eq!(row.z, vec![1.0, 2.0, 3.0]);
/// assert!(Row { z: vec![-0.0], ..row.clone() } < Row { z: vec![0.0], ..row });
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Event time (ms since the Unix epoch).
    pub time: Time,
    /// Key.
    pub key: String,
    /// Features followed by the target.
    pub z: Vec<f64>,
}

impl From<Record> for Row {
    fn from(r: Record) -> Self {
        let z = r.z();
        Row {
            time: r.time,
            key: r.key,
            z,
        }
    }
}

impl Ord for Row {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.time
            .cmp(&other.time)
            .then_with(|| self.key.cmp(&other.key))
            .then_with(|| self.z.len().cmp(&other.z.len()))
            .then_with(|| {
                self.z
                    .iter()
                    .zip(&other.z)
                    .map(|(a, b)| a.total_cmp(b))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
    }
}

impl PartialOrd for Row {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Row {}

/// Exact per-(key, window) statistics of a changing collection of rows: an extension of
/// differential collections of [`Row`]s.
///
/// A row replaced by another of the same window changes that window's statistics (an
/// equal-count replacement, which [`WindowPanes`] could not take) and no other window's:
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use differential_dataflow::input::Input;
/// use tributary::{Row, Window, WindowStats};
///
/// // (key, window, rows, Σy, epoch, +1 added / −1 retracted)
/// type Change = (String, Window, i64, f64, u64, isize);
/// let changes: Arc<Mutex<Vec<Change>>> = Arc::default();
/// let seen = Arc::clone(&changes);
/// timely::execute_directly(move |worker| {
///     let mut rows = worker.dataflow::<u64, _, _>(|scope| {
///         let (input, rows) = scope.new_collection::<Row, isize>();
///         rows.window_stats("tumbling:10s".parse().unwrap())
///             .inspect(move |(((key, w), stats), epoch, diff)| {
///                 let change = (key.clone(), *w, stats.n, stats.sum()[1], *epoch, *diff);
///                 seen.lock().unwrap().push(change);
///             });
///         input
///     });
///     let row = |time, x, y| Row { time, key: "a".into(), z: vec![x, y] };
///     // Epoch 0: two rows in [0 s, 10 s), one in [10 s, 20 s).
///     rows.insert(row(1_000, 1.0, 2.0));
///     rows.insert(row(2_000, 2.0, 4.0));
///     rows.insert(row(12_000, 3.0, 6.0));
///     // Epoch 1: the row at 2 s replaced by one with another target.
///     rows.advance_to(1);
///     rows.remove(row(2_000, 2.0, 4.0));
///     rows.insert(row(2_000, 2.0, 5.0));
/// });
/// let mut changes = changes.lock().unwrap().clone();
/// changes.sort_by(|a, b| a.partial_cmp(b).unwrap());
/// let (first, second) = (Window { start: 0, end: 10_000 }, Window { start: 10_000, end: 20_000 });
/// let a = String::from("a");
/// assert_eq!(
///     changes,
///     [
///         (a.clone(), first, 2, 6.0, 0, 1),
///         (a.clone(), first, 2, 6.0, 1, -1),
///         (a.clone(), first, 2, 7.0, 1, 1),
///         (a.clone(), second, 1, 6.0, 0, 1),
///     ]
/// );
/// ```
pub trait WindowStats<'scope, T: Timestamp> {
    /// For every key and every tumbling or sliding `window` holding at least one row, the
    /// statistics of the rows in it, as a collection `((key, window), stats)`. Rows may be
    /// added and retracted at any time (a retraction of a row not present counts as a
    /// negative row; a group whose count is not positive has no output). When rows
    /// change, only the (key, window) groups holding them are summed again — from their
    /// rows, so no cancellation is involved — and only their outputs change (the old
    /// statistics retracted, the new ones added). Every window stays revisable: the rows
    /// are kept, there is no watermark (see [`WindowPanes`] for the streaming path).
    ///
    /// Panics on session windows, which depend on the rows of the whole key, and on a row
    /// whose time is beyond ±2⁶² ms ([`TIME_LIMIT`](crate::record::TIME_LIMIT)).
    fn window_stats(
        self,
        window: WindowSpec,
    ) -> VecCollection<'scope, T, ((String, Window), Stats), isize>;

    /// [`window_stats`](Self::window_stats) with an operator name.
    fn window_stats_named(
        self,
        name: &str,
        window: WindowSpec,
    ) -> VecCollection<'scope, T, ((String, Window), Stats), isize>;
}

impl<'scope, T> WindowStats<'scope, T> for VecCollection<'scope, T, Row, isize>
where
    T: Timestamp + Lattice + timely::ExchangeData,
{
    fn window_stats(
        self,
        window: WindowSpec,
    ) -> VecCollection<'scope, T, ((String, Window), Stats), isize> {
        self.window_stats_named("WindowStats", window)
    }

    fn window_stats_named(
        self,
        name: &str,
        window: WindowSpec,
    ) -> VecCollection<'scope, T, ((String, Window), Stats), isize> {
        assert!(
            !window.is_session(),
            "window_stats: {window} windows are not supported (tumbling or sliding only)"
        );
        self.flat_map(move |row: Row| {
            if let Err(e) = check_time(row.time) {
                panic!("window_stats: a row of key {:?}: {e}", row.key);
            }
            window
                .windows_of_pane(window.bucket_start(row.time))
                .map(move |w| ((row.key.clone(), w), row.clone()))
        })
        .reduce_named(name, |_group, rows, output| {
            let mut total = Stats::zero();
            for (row, count) in rows {
                let mut one = Stats::of_row(&row.z);
                if *count < 0 {
                    one.negate();
                }
                for _ in 0..count.unsigned_abs() {
                    total.plus_equals(&one);
                }
            }
            if total.n > 0 {
                output.push((total, 1));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use differential_dataflow::difference::{IsZero, Semigroup};

    use super::*;

    /// Why `window_panes` takes insert-only input: retracting one row and adding another
    /// to the same pane nets to a count of zero, which is the zero of `Stats`.
    #[test]
    fn equal_count_replacement_cancels() {
        let mut change = Stats::of_row(&[1.0, 2.0]);
        change.negate();
        change.plus_equals(&Stats::of_row(&[5.0, 7.0]));
        assert!(change.is_zero(), "the change of the sums is lost");
    }

    /// `--on-error skip` promises the first 10 malformed lines per worker on stderr, not 10
    /// per batch: a file of three batches with six bad lines each warns 10 times and
    /// counts all 18.
    #[test]
    fn read_records_reports_the_first_malformed_lines_of_the_worker_not_of_each_batch() {
        use std::io::Write;
        use std::sync::Mutex;

        use timely::dataflow::operators::Probe;

        use crate::record::Schema;
        use crate::source::{REPORT_MALFORMED, SourceSpec};

        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let dir = std::env::temp_dir().join(format!("tributary-warn-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.csv");
        // Blocks of about 64 bytes (ending on line boundaries): the 18 bad lines spread
        // over several batches, none with more than 10.
        let mut text = String::from("ts,key,x0,y\n");
        let mut bad = 0;
        for group in 0..3 {
            for i in 0..6 {
                text.push_str(&format!("bad{group}{i},k,1,2\n"));
                bad += 1;
            }
            text.push_str(&format!("{},k,1,2\n", 1000 * group));
        }
        std::fs::write(&path, &text).unwrap();
        let spec: SourceSpec = format!("csv:{},block=64", path.display()).parse().unwrap();
        let reader = SourceReader::open(&spec, &Schema::generated(1), 0, 1).unwrap();

        let context = RunContext {
            on_error: OnError::Skip,
            ..RunContext::default()
        };
        let metrics = Arc::clone(&context.metrics);
        let log = Buffer::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            timely::example(move |scope| {
                let read = scope.read_records(reader, &context);
                read.records.probe();
            });
        });
        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let warned = log.matches("skipping malformed line").count();
        assert_eq!(metrics.snapshot().malformed, bad, "every bad line counted");
        assert!(bad > REPORT_MALFORMED, "more bad lines than are reported");
        assert_eq!(warned as u64, REPORT_MALFORMED, "warnings: {log}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rows_order_totally() {
        let a = Row {
            time: 1,
            key: "k".into(),
            z: vec![f64::NAN],
        };
        assert_eq!(a, a.clone());
        let b = Row {
            z: vec![1.0],
            ..a.clone()
        };
        assert!(b < a, "NaN sorts above numbers in the total order");
    }
}
