//! Process-wide counters, read by the progress line and the exit summary.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

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
    /// Panes currently held in the arrangement (this process's share).
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
}

impl Metrics {
    /// Adds one batch's source counts.
    pub fn add(&self, counts: &crate::dataflow::Counts) {
        self.records.fetch_add(counts.records, Relaxed);
        self.malformed.fetch_add(counts.malformed, Relaxed);
        self.late.fetch_add(counts.late, Relaxed);
        self.too_far.fetch_add(counts.too_far, Relaxed);
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
        }
    }
}
