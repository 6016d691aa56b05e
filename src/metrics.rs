//! Process-wide counters, read by the progress line and the exit summary; and the
//! heartbeats by which process 0 hears every process of a cluster ([`heartbeats`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use timely::dataflow::Scope;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, StreamVec};

use crate::checkpoint::Epoch;

/// Counters shared by the workers of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Well-formed records read.
    pub records: AtomicU64,
    /// Malformed lines.
    pub malformed: AtomicU64,
    /// Records set aside as late.
    pub late: AtomicU64,
    /// Records set aside as too far ahead of the stream.
    pub too_far: AtomicU64,
    /// Panes currently held open by the windows operators (this process's share).
    pub open_panes: AtomicI64,
    /// Windows with records whose end the stream has not reached yet (this process's
    /// share).
    pub open_windows: AtomicI64,
    /// Records read by each worker of the cluster, by global worker index (tallied from
    /// the workers' progress reports, so complete on process 0).
    pub worker_records: Mutex<Vec<u64>>,
    /// Running estimates of open windows emitted (with `--serve`).
    pub estimates: AtomicU64,
    /// Final model emissions.
    pub windows_final: AtomicU64,
    /// Final model emissions of windows closed by an idle source (`--close-after-idle`).
    pub windows_closed_idle: AtomicU64,
    /// Provisional model emissions.
    pub windows_provisional: AtomicU64,
    /// The global watermark as last seen by this process's first worker (ms).
    pub watermark: AtomicI64,
    /// Newest committed checkpoint epoch (this process's view).
    pub checkpoint_epoch: AtomicU64,
    /// Bytes written to checkpoint parts.
    pub checkpoint_bytes: AtomicU64,
    /// Time spent writing checkpoint parts (µs).
    pub checkpoint_micros: AtomicU64,
    /// Batches that the thread reading a file ahead folded into panes and that the worker
    /// took whole (see docs/architecture.md, "Files read ahead").
    pub folded_ahead: AtomicU64,
    /// Batches folded ahead that the worker refused (a record late, too far ahead or out
    /// of range) and read record by record instead.
    pub folds_refused: AtomicU64,
    /// What this process heard of every process's heartbeat, by process index (filled on
    /// process 0 only: the heartbeats go to its first worker).
    pub processes: Mutex<Vec<Heard>>,
}

/// What became of the batches a worker's reading thread folded ahead, since last added
/// ([`Metrics::add_folds`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folds {
    /// Taken whole ([`Metrics::folded_ahead`]).
    pub taken: u64,
    /// Refused and read record by record ([`Metrics::folds_refused`]).
    pub refused: u64,
}

/// How often each process sends its heartbeat to process 0.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// The span over which a process's records/s is measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// What process 0 heard of one process: its heartbeats of the last [`RATE_WINDOW`].
#[derive(Debug, Default)]
pub struct Heard {
    /// When the newest heartbeat arrived (process 0's clock).
    last: Option<Instant>,
    /// Records the process had read, per heartbeat received in the rate window.
    samples: VecDeque<(Instant, u64)>,
    /// Records the process had read at its newest heartbeat.
    records: u64,
}

/// One process as process 0 last heard it ([`Metrics::processes`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessStatus {
    /// The process index.
    pub process: usize,
    /// Time since its newest heartbeat arrived; `None` before the first.
    pub age: Option<Duration>,
    /// Records it had read at its newest heartbeat.
    pub records: u64,
    /// Records/s over the last [`RATE_WINDOW`] (0 when nothing was heard in it).
    pub rate: f64,
}

/// A point-in-time copy of [`Metrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// See [`Metrics::records`].
    pub records: u64,
    /// See [`Metrics::malformed`].
    pub malformed: u64,
    /// See [`Metrics::late`].
    pub late: u64,
    /// See [`Metrics::too_far`].
    pub too_far: u64,
    /// See [`Metrics::open_panes`].
    pub open_panes: i64,
    /// See [`Metrics::windows_final`].
    pub windows_final: u64,
    /// See [`Metrics::windows_closed_idle`].
    pub windows_closed_idle: u64,
    /// See [`Metrics::windows_provisional`].
    pub windows_provisional: u64,
    /// See [`Metrics::watermark`].
    pub watermark: i64,
    /// See [`Metrics::open_windows`].
    pub open_windows: i64,
    /// See [`Metrics::checkpoint_epoch`].
    pub checkpoint_epoch: u64,
    /// See [`Metrics::checkpoint_bytes`].
    pub checkpoint_bytes: u64,
    /// See [`Metrics::checkpoint_micros`].
    pub checkpoint_micros: u64,
    /// See [`Metrics::estimates`].
    pub estimates: u64,
    /// See [`Metrics::folded_ahead`].
    pub folded_ahead: u64,
    /// See [`Metrics::folds_refused`].
    pub folds_refused: u64,
}

impl Metrics {
    /// Adds one batch's source counts.
    pub fn add(&self, counts: &crate::types::Counts) {
        self.records.fetch_add(counts.records, Relaxed);
        self.malformed.fetch_add(counts.malformed, Relaxed);
        self.late.fetch_add(counts.late, Relaxed);
        self.too_far.fetch_add(counts.too_far, Relaxed);
    }

    /// Adds one batch's folds ([`Folds`]).
    pub fn add_folds(&self, folds: Folds) {
        if folds != Folds::default() {
            self.folded_ahead.fetch_add(folds.taken, Relaxed);
            self.folds_refused.fetch_add(folds.refused, Relaxed);
        }
    }

    /// Adds `records` read by worker `worker`.
    pub fn add_worker_records(&self, worker: usize, records: u64) {
        let mut counts = self
            .worker_records
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if counts.len() <= worker {
            counts.resize(worker + 1, 0);
        }
        counts[worker] += records;
    }

    /// Records read by each worker, by global worker index.
    pub fn worker_records(&self) -> Vec<u64> {
        self.worker_records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Process 0: a heartbeat of process `process`, which had read `records` records,
    /// arrived now.
    pub fn heard_from(&self, process: usize, records: u64) {
        self.heard_at(process, records, Instant::now());
    }

    fn heard_at(&self, process: usize, records: u64, now: Instant) {
        let mut heard = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        if heard.len() <= process {
            heard.resize_with(process + 1, Heard::default);
        }
        let entry = &mut heard[process];
        entry.last = Some(now);
        entry.records = records;
        entry.samples.push_back((now, records));
        while entry
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            entry.samples.pop_front();
        }
    }

    /// Every process of the cluster as heard so far (process 0; empty elsewhere), with
    /// the records/s over the heartbeats of the last [`RATE_WINDOW`] before `now`.
    pub fn processes(&self) -> Vec<ProcessStatus> {
        self.processes_at(Instant::now())
    }

    fn processes_at(&self, now: Instant) -> Vec<ProcessStatus> {
        let heard = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        heard
            .iter()
            .enumerate()
            .map(|(process, h)| {
                let recent: Vec<&(Instant, u64)> = h
                    .samples
                    .iter()
                    .filter(|(t, _)| now.saturating_duration_since(*t) <= RATE_WINDOW)
                    .collect();
                // Records gained between the oldest and the newest recent heartbeat, over
                // the time from the oldest to now: a process that fell silent slows down
                // to 0 within the window instead of keeping its last rate.
                let rate = match (recent.first(), recent.last()) {
                    (Some((t0, r0)), Some((_, r1))) if recent.len() > 1 => {
                        let span = now.saturating_duration_since(*t0).as_secs_f64();
                        if span > 0.0 {
                            r1.saturating_sub(*r0) as f64 / span
                        } else {
                            0.0
                        }
                    }
                    _ => 0.0,
                };
                ProcessStatus {
                    process,
                    age: h.last.map(|t| now.saturating_duration_since(t)),
                    records: h.records,
                    rate,
                }
            })
            .collect()
    }

    /// The progress line's part on the cluster's processes, e.g.
    /// `processes=[p0 0.2s 51k/s, p1 4.1s 0/s]` (time since each one's newest heartbeat,
    /// its records/s), or `None` for a single process.
    pub fn processes_part(&self) -> Option<String> {
        let all = self.processes();
        if all.len() < 2 {
            return None;
        }
        let parts: Vec<String> = all
            .iter()
            .map(|p| {
                let age = p
                    .age
                    .map_or("-".to_owned(), |a| format!("{:.1}s", a.as_secs_f64()));
                format!("p{} {} {}/s", p.process, age, compact(p.rate))
            })
            .collect();
        Some(format!("processes=[{}]", parts.join(", ")))
    }

    /// The per-process gauges in the Prometheus text format (appended to `/metrics`):
    /// `tributary_process_last_report_age_seconds{process="P"}`,
    /// `tributary_process_records_per_second{process="P"}` and
    /// `tributary_process_records{process="P"}`. Empty when nothing was heard.
    pub fn render_processes(&self) -> String {
        use std::fmt::Write;
        let all = self.processes();
        let mut out = String::new();
        if all.is_empty() {
            return out;
        }
        let families: [(&str, &str, ProcessReading); 3] = [
            (
                "process_last_report_age_seconds",
                "Seconds since process 0 last heard this process's heartbeat (sent every 0.5 s)",
                |p| p.age.map(|a| a.as_secs_f64()),
            ),
            (
                "process_records_per_second",
                "Records/s this process read over the last 5 s, from its heartbeats",
                |p| Some(p.rate),
            ),
            (
                "process_records",
                "Records this process had read at its newest heartbeat",
                |p| Some(p.records as f64),
            ),
        ];
        for (name, help, read) in families {
            let _ = writeln!(out, "# HELP tributary_{name} {help}");
            let _ = writeln!(out, "# TYPE tributary_{name} gauge");
            for p in &all {
                if let Some(value) = read(p) {
                    let _ = writeln!(out, "tributary_{name}{{process=\"{}\"}} {value}", p.process);
                }
            }
        }
        out
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            records: self.records.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            late: self.late.load(Relaxed),
            too_far: self.too_far.load(Relaxed),
            open_panes: self.open_panes.load(Relaxed),
            windows_final: self.windows_final.load(Relaxed),
            windows_closed_idle: self.windows_closed_idle.load(Relaxed),
            windows_provisional: self.windows_provisional.load(Relaxed),
            watermark: self.watermark.load(Relaxed),
            open_windows: self.open_windows.load(Relaxed),
            checkpoint_epoch: self.checkpoint_epoch.load(Relaxed),
            checkpoint_bytes: self.checkpoint_bytes.load(Relaxed),
            checkpoint_micros: self.checkpoint_micros.load(Relaxed),
            estimates: self.estimates.load(Relaxed),
            folded_ahead: self.folded_ahead.load(Relaxed),
            folds_refused: self.folds_refused.load(Relaxed),
        }
    }
}

/// How a per-process gauge reads its value (`None`: no line for that process).
type ProcessReading = fn(&ProcessStatus) -> Option<f64>;

/// A rate in a few characters: `812`, `51k`, `2.3M`.
fn compact(rate: f64) -> String {
    if rate >= 9.95e5 {
        format!("{:.1}M", rate / 1e6)
    } else if rate >= 9.95e3 {
        format!("{:.0}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

/// Builds the heartbeats of a cluster into a worker's dataflow (every worker builds it;
/// the dataflow must be the same everywhere). When `process` is `Some(p)` (the first
/// worker of process `p`), this worker sends `(p, records read by this process)` every
/// [`HEARTBEAT_EVERY`] to worker 0 (process 0's first), whose `metrics` record when each
/// arrived ([`Metrics::heard_from`]). The heartbeats are independent of the data: a
/// process whose workers are held back, or idle on a live source, still sends them; one
/// that is stopped, stuck or cut off does not, and its age grows on process 0.
///
/// The heartbeats hold no capability that the rest of the dataflow waits for; each
/// worker's heartbeat source ends when the returned [`HeartbeatStop`] is stopped (at once)
/// or once `done` (the worker's probe of the dataflow's end) is done (within 0.1 s), so
/// the dataflow still ends.
pub fn heartbeats(
    scope: Scope<'_, Epoch>,
    metrics: std::sync::Arc<Metrics>,
    done: ProbeHandle<Epoch>,
    process: Option<usize>,
) -> HeartbeatStop {
    let sender = std::sync::Arc::clone(&metrics);
    let stop = HeartbeatStop::default();
    let stopped = stop.clone();
    let beats: StreamVec<'_, Epoch, (u64, u64)> = source(scope, "Heartbeat", move |cap, info| {
        let activator = scope.activator_for(info.address);
        *stopped.activator.borrow_mut() = Some(activator.clone());
        let mut cap = process.map(|_| cap);
        let mut last: Option<Instant> = None;
        move |output| {
            let Some(c) = cap.as_ref() else { return };
            if stopped.flag.get() || done.done() {
                cap = None;
                return;
            }
            if last.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY) {
                last = Some(Instant::now());
                let records = sender.records.load(Relaxed);
                output
                    .session(c)
                    .give((process.unwrap_or(0) as u64, records));
            }
            // Often enough to notice the end of the dataflow soon.
            activator.activate_after(Duration::from_millis(100));
        }
    });
    beats.sink(
        Exchange::new(|_: &(u64, u64)| 0),
        "Heartbeats",
        move |(input, _)| {
            input.for_each(|_, data| {
                for (process, records) in data.drain(..) {
                    metrics.heard_from(process as usize, records);
                }
            });
        },
    );
    stop
}

/// Ends a worker's heartbeats at once ([`heartbeats`]), so that a finished dataflow does
/// not wait for the heartbeat source's next activation.
#[derive(Clone, Default)]
pub struct HeartbeatStop {
    flag: std::rc::Rc<std::cell::Cell<bool>>,
    activator: std::rc::Rc<std::cell::RefCell<Option<timely::scheduling::Activator>>>,
}

impl HeartbeatStop {
    /// Stops the heartbeats of this worker (call it once the dataflow is done).
    pub fn stop(&self) {
        self.flag.set(true);
        if let Some(activator) = self.activator.borrow().as_ref() {
            activator.activate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_process_ages_and_its_rate_falls_to_zero() {
        let metrics = Metrics::default();
        let t0 = Instant::now();
        for i in 0..5u64 {
            let at = t0 + Duration::from_millis(500 * i);
            metrics.heard_at(0, 1000 * i, at);
            if i < 2 {
                metrics.heard_at(1, 400 * i, at);
            }
        }
        let now = t0 + Duration::from_millis(2000);
        let all = metrics.processes_at(now);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].age, Some(Duration::ZERO));
        assert!((all[0].rate - 2000.0).abs() < 1e-6, "{:?}", all[0]);
        // Process 1 fell silent 1.5 s ago: its age says so, and its rate is averaged up
        // to now, not frozen at its last value.
        assert_eq!(all[1].age, Some(Duration::from_millis(1500)));
        assert!((all[1].rate - 200.0).abs() < 1e-6, "{:?}", all[1]);
        let later = metrics.processes_at(t0 + Duration::from_secs(8));
        assert_eq!(later[1].rate, 0.0);
        assert_eq!(later[1].records, 400);
    }

    #[test]
    fn the_gauges_name_every_process() {
        let metrics = Metrics::default();
        assert_eq!(metrics.render_processes(), "");
        assert_eq!(metrics.processes_part(), None);
        metrics.heard_from(0, 10);
        metrics.heard_from(1, 20);
        let text = metrics.render_processes();
        for line in [
            "tributary_process_last_report_age_seconds{process=\"1\"} ",
            "tributary_process_records_per_second{process=\"0\"} 0",
            "tributary_process_records{process=\"1\"} 20",
            "# TYPE tributary_process_records_per_second gauge",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let part = metrics.processes_part().unwrap();
        assert!(
            part.starts_with("processes=[p0 0.0s 0/s, p1 0.0s 0/s]"),
            "{part}"
        );
    }
}
