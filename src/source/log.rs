//! The ingest log: records that arrive from outside the dataflow (`POST /data`, a TCP
//! socket) as numbered batches, read by the dataflow like any other source.
//!
//! Batch `k` of the log is source batch (and timely epoch) `k`, read by worker
//! `k mod W` of process 0, where the log lives. With a checkpoint store, a batch is
//! written to RocksDB with a synced write *before* [`IngestLog::append`] returns, so an
//! HTTP answer that says "accepted" means durable; batches that a committed checkpoint
//! covers are deleted from the store ([`Store::truncate_ingest`]), and on restart the
//! batches after the last commit are read again: nothing is lost, nothing counted twice.
//!
//! The log is bounded: once the records appended but not yet read by the dataflow exceed
//! `max_pending` (`--max-pending`), or their size in memory ([`RecordBatch::bytes`])
//! exceeds `max_pending_bytes` (`--max-pending-bytes`), [`IngestLog::append`] refuses with
//! [`AppendError::Backpressure`] instead of buffering without bound. A batch is always
//! taken when nothing is pending, so one batch larger than a limit is not refused forever
//! (its size is bounded by whoever builds it: `--max-body` for `POST /data`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use timely::scheduling::SyncActivator;

use super::sink::{RecordSink, SourceError};
use crate::checkpoint::{CheckpointError, SourcePosition, Store, codec};
pub use crate::record::RecordBatch;
use crate::window::{Time, Watermark};

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The dataflow is too far behind: retry later.
    #[error("the engine is {pending} {unit} behind (limit {limit}, {flag}); retry later")]
    Backpressure {
        /// Records (or bytes) appended and not yet read.
        pending: u64,
        /// The limit.
        limit: u64,
        /// What is counted: `records` or `bytes`.
        unit: &'static str,
        /// The flag that sets the limit.
        flag: &'static str,
    },
    /// The log no longer takes records (the source was closed).
    #[error("the ingest log is closed")]
    Closed,
    /// The durable write failed: the records were not accepted.
    #[error("{0}")]
    Store(#[from] CheckpointError),
}

/// Counters of a log, for metrics and answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LogStats {
    /// Batches appended (the next batch number).
    pub next_batch: u64,
    /// Records appended since the process started (and recovered at start).
    pub appended: u64,
    /// Records read by the dataflow since the process started.
    pub read: u64,
    /// Records appended and not yet read: the ingest lag.
    pub pending: u64,
    /// Their size in memory ([`RecordBatch::bytes`]).
    pub pending_bytes: u64,
}

struct State {
    /// The next batch number to hand out.
    next: u64,
    /// Batches appended (and durable) and not read yet.
    batches: BTreeMap<u64, Arc<RecordBatch>>,
    /// Appended through this batch number, no more: the source ends there.
    closed_at: Option<u64>,
    stats: LogStats,
    /// Workers to wake when a batch arrives.
    waiting: Vec<SyncActivator>,
    /// The log is one partition: its largest admitted event time through the last
    /// numbered batch (see [`IngestLog::with_partition`]).
    partition: Watermark,
    /// The partition's largest time before each batch not read yet.
    before: BTreeMap<u64, Time>,
    /// Idle closes not read yet: batch number → the partition's largest time after it.
    idle: BTreeMap<u64, Time>,
    /// Checkpoint requests not read yet: empty batches numbered so that the batches
    /// before them reach a checkpoint ([`IngestLog::checkpoint_quiet`]).
    checkpoints: BTreeSet<u64>,
    /// The newest batch a reader marked as a checkpoint epoch (or the checkpoint resumed
    /// from).
    marked: Option<u64>,
    /// When the last batch was appended (or the log opened).
    last_append: Instant,
    /// The partition's largest time when it was last closed for idleness.
    idle_closed_at: Time,
}

/// `watermark` after `batch`, admitted as the windows' ingest admits a live source's
/// batch: bounded by `max_jump` past where it stood before. (Late records never move the
/// largest time: they are behind it.)
fn advance(watermark: &mut Watermark, batch: &RecordBatch) {
    watermark.begin_batch();
    for &t in &batch.time {
        watermark.admit(t, Time::MAX);
    }
}

/// A log of record batches (see the module documentation).
pub struct IngestLog {
    state: Mutex<State>,
    store: Option<Arc<Store>>,
    max_pending: u64,
    max_pending_bytes: u64,
}

impl IngestLog {
    /// A log, durable in `store` if given. Batches numbered `≤ resume_after` (those of the
    /// committed checkpoint the run resumes from) are dropped; later batches found in the
    /// store are read back, to be read by the dataflow again.
    pub fn open(
        store: Option<Arc<Store>>,
        resume_after: Option<u64>,
        max_pending: u64,
    ) -> Result<IngestLog, CheckpointError> {
        let first = resume_after.map_or(0, |e| e + 1);
        let mut batches = BTreeMap::new();
        let mut stats = LogStats::default();
        if let Some(store) = &store {
            if let Some(through) = resume_after {
                store.truncate_ingest(through)?;
            }
            for (seq, bytes) in store.ingest_batches(first)? {
                let batch: RecordBatch =
                    codec::decode(&bytes).map_err(|error| CheckpointError::Corrupt {
                        path: store.path().display().to_string(),
                        key: format!("I/{seq}"),
                        error,
                    })?;
                stats.appended += batch.len() as u64;
                stats.pending_bytes += batch.bytes();
                batches.insert(seq, Arc::new(batch));
            }
        }
        let next = batches.keys().next_back().map_or(first, |last| last + 1);
        // A batch that was numbered but never made durable (a crash, a failed write) is
        // read as empty.
        for seq in first..next {
            batches.entry(seq).or_default();
        }
        stats.next_batch = next;
        stats.pending = stats.appended;
        Ok(IngestLog {
            state: Mutex::new(State {
                next,
                batches,
                closed_at: None,
                stats,
                waiting: Vec::new(),
                partition: Watermark::new(0, Time::MAX),
                before: BTreeMap::new(),
                idle: BTreeMap::new(),
                checkpoints: BTreeSet::new(),
                marked: resume_after,
                last_append: Instant::now(),
                idle_closed_at: Time::MIN,
            }),
            store,
            max_pending: max_pending.max(1),
            max_pending_bytes: u64::MAX,
        })
    }

    /// The log, refusing appends once the records pending take more than `bytes` bytes
    /// ([`RecordBatch::bytes`]), besides the limit in records (default: no byte limit).
    pub fn with_max_pending_bytes(mut self, bytes: u64) -> IngestLog {
        self.max_pending_bytes = bytes.max(1);
        self
    }

    /// The log as one partition starting at `max_seen` (the restored frontier, or
    /// `Time::MIN`), its batches bounded by `max_jump`: every batch is judged against the
    /// largest event time of the batches numbered before it, whichever worker reads it
    /// ([`LogReader::partition_before`]). Batches read back from the store are numbered
    /// again from `max_seen`, in order.
    pub fn with_partition(self, max_seen: Time, max_jump: Time) -> IngestLog {
        {
            let mut state = self.state();
            let State {
                batches,
                partition,
                before,
                ..
            } = &mut *state;
            *partition = Watermark::new(0, max_jump);
            partition.max_seen = max_seen;
            before.clear();
            for (&seq, batch) in batches.iter() {
                before.insert(seq, partition.max_seen);
                advance(partition, batch);
            }
        }
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `batch` and returns its batch number once it is durable (with a store).
    /// Refuses when the dataflow is more than `max_pending` records (or
    /// `max_pending_bytes` bytes) behind.
    /// The batch is shared, so that a caller refused for backpressure can retry it.
    pub fn append(&self, batch: Arc<RecordBatch>) -> Result<u64, AppendError> {
        self.append_at(batch, None)
    }

    /// [`append`](Self::append), and with a store, `position` (where a followed file's
    /// reader stands after the batch) is written in the same synced write: after a crash,
    /// [`Store::source_position`] and the batches in the store agree.
    pub fn append_at(
        &self,
        batch: Arc<RecordBatch>,
        position: Option<&SourcePosition>,
    ) -> Result<u64, AppendError> {
        let bytes = batch.bytes();
        let seq = {
            let mut state = self.state();
            if state.closed_at.is_some() {
                return Err(AppendError::Closed);
            }
            let pending = state.stats.pending;
            if pending > 0 && pending + batch.len() as u64 > self.max_pending {
                return Err(AppendError::Backpressure {
                    pending,
                    limit: self.max_pending,
                    unit: "records",
                    flag: "--max-pending",
                });
            }
            let pending_bytes = state.stats.pending_bytes;
            if pending > 0 && pending_bytes + bytes > self.max_pending_bytes {
                return Err(AppendError::Backpressure {
                    pending: pending_bytes,
                    limit: self.max_pending_bytes,
                    unit: "bytes",
                    flag: "--max-pending-bytes",
                });
            }
            // Numbered in order: the partition's largest time before it, and after. (A
            // batch whose write then fails is read as empty; its times still moved the
            // partition, by at most --max-jump.)
            let seq = state.next;
            let before = state.partition.max_seen;
            state.before.insert(seq, before);
            advance(&mut state.partition, &batch);
            state.last_append = Instant::now();
            state.next += 1;
            state.stats.next_batch = state.next;
            // Counted as pending now, so that concurrent appends see the backlog.
            state.stats.pending += batch.len() as u64;
            state.stats.pending_bytes += bytes;
            state.next - 1
        };
        // The durable write happens outside the lock: concurrent appends are written
        // together by RocksDB's group commit.
        let written = match &self.store {
            Some(store) => store.append_ingest(seq, &codec::encode(&*batch), position),
            None => Ok(()),
        };
        let mut state = self.state();
        let result = match written {
            Ok(()) => {
                state.stats.appended += batch.len() as u64;
                state.batches.insert(seq, batch);
                Ok(seq)
            }
            Err(e) => {
                // The number is used: the dataflow reads it as an empty batch.
                state.stats.pending -= batch.len() as u64;
                state.stats.pending_bytes -= bytes;
                state.batches.insert(seq, Arc::default());
                Err(AppendError::Store(e))
            }
        };
        for worker in &state.waiting {
            let _ = worker.activate();
        }
        result
    }

    /// How long no batch has been appended.
    pub fn idle_for(&self) -> Duration {
        self.state().last_append.elapsed()
    }

    /// Closes every window the records so far can be in, as if event time had passed
    /// them (`--close-after-idle`): numbers an empty batch after which the partition's
    /// largest time is `horizon` (window length, or session gap, plus the lateness) past
    /// where it stands. Nothing happens (`None`) before any record, after the log was
    /// closed, or when no record came since the last idle close. The batch is not
    /// written to a store: after a crash, the idle timer decides again.
    pub fn close_idle(&self, horizon: Time) -> Option<u64> {
        let mut state = self.state();
        let max = state.partition.max_seen;
        if state.closed_at.is_some() || max == Time::MIN || max <= state.idle_closed_at {
            return None;
        }
        let seq = state.next;
        let after = max.saturating_add(horizon.max(1));
        state.before.insert(seq, max);
        state.idle.insert(seq, after);
        state.partition.max_seen = after;
        state.idle_closed_at = after;
        state.batches.insert(seq, Arc::default());
        state.next += 1;
        state.stats.next_batch = state.next;
        for worker in &state.waiting {
            let _ = worker.activate();
        }
        Some(seq)
    }

    /// Asks for a checkpoint through every batch numbered so far, when the log has gone
    /// quiet: numbers an empty batch that its reader marks as a checkpoint epoch. A worker
    /// marks its batches by the clock (`--checkpoint-every` since its last mark), so
    /// without this a live source that goes quiet just after an unmarked batch would not
    /// be checkpointed through it until more records came; a restart would read those
    /// batches again from the store (nothing is lost, but the newest checkpoint lags
    /// without bound). Nothing happens (`None`) unless no batch was appended for `quiet`,
    /// every batch was read, and the newest is past the last one marked
    /// ([`LogReader::marked`]); nor after the log was closed. Like an idle close, the batch
    /// is not written to a store.
    pub fn checkpoint_quiet(&self, quiet: Duration) -> Option<u64> {
        let mut state = self.state();
        let newest = state.next.checked_sub(1)?;
        if state.closed_at.is_some()
            || state.last_append.elapsed() < quiet
            || !state.batches.is_empty()
            || state.marked.is_some_and(|m| m >= newest)
        {
            return None;
        }
        let seq = state.next;
        let max = state.partition.max_seen;
        state.before.insert(seq, max);
        state.checkpoints.insert(seq);
        state.batches.insert(seq, Arc::default());
        state.next += 1;
        state.stats.next_batch = state.next;
        for worker in &state.waiting {
            let _ = worker.activate();
        }
        Some(seq)
    }

    /// Takes no more records: the source ends once every batch appended is read.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed_at = Some(state.next);
        for worker in &state.waiting {
            let _ = worker.activate();
        }
    }

    /// Checkpoint epoch `epoch` is committed: its batches (numbered `≤ epoch`) are in the
    /// state and leave the store.
    pub fn committed(&self, epoch: u64) -> Result<(), CheckpointError> {
        match &self.store {
            Some(store) => store.truncate_ingest(epoch),
            None => Ok(()),
        }
    }

    /// The log's counters.
    pub fn stats(&self) -> LogStats {
        self.state().stats
    }

    /// Writes where a followed file's reader stands (synced) without a batch: it moved
    /// past lines that gave no record. Without a store, nothing to do.
    pub fn save_position(&self, position: &SourcePosition) -> Result<(), CheckpointError> {
        match &self.store {
            Some(store) => store.put_source_position(position),
            None => Ok(()),
        }
    }

    /// Whether appended batches are written to a checkpoint store.
    pub fn is_durable(&self) -> bool {
        self.store.is_some()
    }

    /// The limit on records appended and not yet read.
    pub fn max_pending(&self) -> u64 {
        self.max_pending
    }

    /// The limit on the bytes of records appended and not yet read.
    pub fn max_pending_bytes(&self) -> u64 {
        self.max_pending_bytes
    }
}

/// One worker's share of an [`IngestLog`]: batches `k ≡ index (mod readers)`, where the
/// readers are the workers of process 0. Workers of other processes have no share.
pub struct LogReader {
    log: Arc<IngestLog>,
    /// The next batch this worker reads; `None`: no share.
    next: Option<u64>,
    readers: u64,
}

impl LogReader {
    /// Worker `index`'s share, when the log is read by workers `0 .. readers`.
    pub fn new(log: Arc<IngestLog>, index: usize, readers: usize) -> LogReader {
        LogReader {
            log,
            next: (index < readers).then_some(index as u64),
            readers: readers.max(1) as u64,
        }
    }

    /// Wakes `activator` whenever a batch is appended.
    pub fn wake(&self, activator: SyncActivator) {
        self.log.state().waiting.push(activator);
    }

    /// The batch this worker reads next, or `None` when its share is done.
    pub fn next_batch(&self) -> Option<u64> {
        let next = self.next?;
        match self.log.state().closed_at {
            Some(end) if next >= end => None,
            _ => Some(next),
        }
    }

    /// Whether batch [`next_batch`](Self::next_batch) has arrived.
    pub fn ready(&self) -> bool {
        self.next
            .is_some_and(|next| self.log.state().batches.contains_key(&next))
    }

    /// The partition's largest admitted event time before the next batch (`None` when
    /// this worker has no share, or the batch has not been numbered).
    pub fn partition_before(&self) -> Option<Time> {
        let next = self.next?;
        self.log.state().before.get(&next).copied()
    }

    /// When the next batch is an idle close ([`IngestLog::close_idle`]): the partition's
    /// largest time after it.
    pub fn idle_close_to(&self) -> Option<Time> {
        let next = self.next?;
        self.log.state().idle.get(&next).copied()
    }

    /// Whether the next batch is a checkpoint request ([`IngestLog::checkpoint_quiet`]):
    /// its reader marks it as a checkpoint epoch.
    pub fn checkpoint_requested(&self) -> bool {
        self.next
            .is_some_and(|next| self.log.state().checkpoints.contains(&next))
    }

    /// Batch `batch`, read, is a checkpoint epoch: the log asks for none before it.
    pub fn marked(&self, batch: u64) {
        let mut state = self.log.state();
        state.marked = state.marked.max(Some(batch));
    }

    /// Reads the next batch into `sink`, once it has arrived.
    pub fn read_batch<S: RecordSink>(&mut self, sink: &mut S) -> Result<(), SourceError> {
        let Some(next) = self.next else {
            return Ok(());
        };
        let batch = {
            let mut state = self.log.state();
            let Some(batch) = state.batches.remove(&next) else {
                return Ok(());
            };
            state.before.remove(&next);
            state.idle.remove(&next);
            state.checkpoints.remove(&next);
            state.stats.read += batch.len() as u64;
            state.stats.pending -= batch.len() as u64;
            state.stats.pending_bytes = state.stats.pending_bytes.saturating_sub(batch.bytes());
            batch
        };
        self.next = Some(next + self.readers);
        for record in batch.iter() {
            sink.record(record);
        }
        Ok(())
    }

    /// Moves to the first of this worker's batches at or after `batch`.
    pub fn seek(&mut self, batch: u64) {
        if let Some(next) = self.next.as_mut() {
            while *next < batch {
                *next += self.readers;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordRef;

    fn batch(records: usize, key_len: usize) -> Arc<RecordBatch> {
        let mut b = RecordBatch::default();
        for i in 0..records {
            b.time.push(i as Time);
            b.key.push("k".repeat(key_len));
            b.z.extend_from_slice(&[1.0, 2.0]);
        }
        Arc::new(b)
    }

    #[test]
    fn a_quiet_log_asks_once_for_a_checkpoint_through_its_newest_batch() {
        let log = Arc::new(IngestLog::open(None, None, 1_000_000).unwrap());
        let now = Duration::ZERO;
        assert_eq!(
            log.checkpoint_quiet(now),
            None,
            "no batch, nothing to cover"
        );
        assert_eq!(log.append(batch(3, 1)).unwrap(), 0);
        let mut reader = LogReader::new(Arc::clone(&log), 0, 1);
        assert_eq!(log.checkpoint_quiet(now), None, "batch 0 is not read yet");
        let mut sink = Count(0);
        reader.read_batch(&mut sink).unwrap();
        assert_eq!(
            log.checkpoint_quiet(Duration::from_secs(3600)),
            None,
            "not quiet"
        );
        assert_eq!(log.checkpoint_quiet(now), Some(1));
        assert_eq!(
            log.checkpoint_quiet(now),
            None,
            "the request is not read yet"
        );
        assert!(reader.checkpoint_requested(), "batch 1 is the request");
        reader.read_batch(&mut sink).unwrap();
        reader.marked(1);
        assert!(!reader.checkpoint_requested());
        assert_eq!(
            log.checkpoint_quiet(now),
            None,
            "one request per quiet spell"
        );
        assert_eq!((sink.0, log.stats().next_batch), (3, 2));
        // A batch its reader marked (by the clock) needs no request.
        assert_eq!(log.append(batch(1, 1)).unwrap(), 2);
        reader.read_batch(&mut sink).unwrap();
        reader.marked(2);
        assert_eq!(log.checkpoint_quiet(now), None);
        // One it did not mark does; a closed log asks for nothing.
        assert_eq!(log.append(batch(1, 1)).unwrap(), 3);
        reader.read_batch(&mut sink).unwrap();
        assert_eq!(log.checkpoint_quiet(now), Some(4));
        reader.read_batch(&mut sink).unwrap();
        assert_eq!(log.append(batch(1, 1)).unwrap(), 5);
        reader.read_batch(&mut sink).unwrap();
        log.close();
        assert_eq!(log.checkpoint_quiet(now), None);
    }

    struct Count(usize);

    impl RecordSink for Count {
        fn record(&mut self, _: RecordRef<'_>) {
            self.0 += 1;
        }
        fn malformed(&mut self, _: crate::source::sink::Malformed) -> Result<(), SourceError> {
            Ok(())
        }
    }

    #[test]
    fn pending_bytes_are_bounded_too() {
        // 10 records of a 10-byte key and 2 values: 10 × (10 + 24 + 8 + 16) = 580 bytes.
        assert_eq!(batch(10, 10).bytes(), 580);
        let log = IngestLog::open(None, None, 1_000_000)
            .unwrap()
            .with_max_pending_bytes(1000);
        // Nothing pending: taken whatever its size.
        log.append(batch(10, 10)).unwrap();
        assert_eq!(log.stats().pending_bytes, 580);
        match log.append(batch(10, 10)) {
            Err(e @ AppendError::Backpressure { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains("580 bytes") && message.contains("--max-pending-bytes"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        log.append(batch(5, 10)).unwrap();
        assert_eq!(log.stats().pending_bytes, 870);
        // Reading the batches frees their bytes.
        let mut reader = LogReader::new(Arc::new(log), 0, 1);
        let mut sink = Count(0);
        reader.read_batch(&mut sink).unwrap();
        reader.read_batch(&mut sink).unwrap();
        assert_eq!(sink.0, 15);
        assert_eq!(reader.log.stats().pending_bytes, 0);
    }
}
