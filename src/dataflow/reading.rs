//! One worker's reading of a source, batch by batch: the loop every source operator is
//! built on ([`ingest`](super::ingest()) and
//! [`ReadRecords::read_records`](crate::operators::ReadRecords::read_records)), written
//! once.
//!
//! At each activation the operator asks [`Reading::poll`] what to do:
//!
//! * **throttle**: a batch too far ahead of the probe attached to the operator's
//!   `throttle` (more than [`MAX_AHEAD_PER_WORKER`] × workers batches, or more updates in
//!   flight than the operator allows) waits; the operator is activated again shortly;
//! * **ready / wake**: a live source (the ingest log: HTTP, TCP, a followed file) whose
//!   next batch has not arrived holds its capability at that batch and does not spin: the
//!   worker may park, and the source wakes the operator when the batch is appended (and a
//!   timer every [`WAIT_FOR_BATCH`] in case it was missed);
//! * otherwise the batch can be read: the capability stands at it, the operator reads it
//!   ([`Reading::read`]) into its own [`RecordSink`] (which applies the
//!   [`MalformedPolicy`](crate::source::MalformedPolicy) and counts), emits what it made of
//!   it, and releases the batch ([`Reading::release`]): the capability moves on to the
//!   next batch and the operator is activated again at once, or, at the end of the
//!   worker's share, is dropped.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use timely::dataflow::operators::Capability;
use timely::dataflow::{ProbeHandle, Scope};
use timely::scheduling::Activator;

use crate::source::{RecordSink, SourceError, SourceReader};
use crate::types::Epoch;

/// How many batches per worker a source may run ahead of the probe attached to its
/// operator's `throttle` ([`Ingested::throttle`](super::Ingested::throttle),
/// [`RecordStream::throttle`](crate::operators::RecordStream::throttle)).
pub const MAX_AHEAD_PER_WORKER: u64 = 256;

/// How often a source operator waiting for a live source's batch looks again, should the
/// source's wake-up have been missed.
pub(crate) const WAIT_FOR_BATCH: Duration = Duration::from_millis(100);

/// How soon a source operator held back by its throttle looks again.
const WAIT_FOR_PROBE: Duration = Duration::from_micros(200);

/// What a source operator does at this activation ([`Reading::poll`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Poll {
    /// Nothing to read now (held back, or a live source's batch has not arrived): the
    /// operator is activated again when there may be.
    Wait,
    /// This batch can be read now; the capability stands at it.
    Batch(Epoch),
    /// The worker's share is done (or a live source was closed).
    End,
}

/// One worker's reading of a [`SourceReader`] inside a source operator.
pub(crate) struct Reading {
    reader: SourceReader,
    /// The first batch read (a resumed position): the capability never stands below it.
    first: Epoch,
    activator: Activator,
    held_back: ProbeHandle<Epoch>,
    max_ahead: u64,
    /// This worker's batches the probe has not passed yet, with the updates each emitted.
    in_flight: VecDeque<(Epoch, usize)>,
    /// Their sum.
    updates_ahead: usize,
    max_updates_ahead: usize,
    /// When the timer armed last fires, if it has not yet.
    next_look: Option<Instant>,
}

impl Reading {
    /// The reading of `reader` by the operator at `address` in `scope`, starting at batch
    /// `first` (the reader is already there), held back by `throttle` to
    /// [`MAX_AHEAD_PER_WORKER`] × workers batches and `max_updates_ahead` updates. A live
    /// source is asked to wake the operator when a batch arrives.
    pub(crate) fn new(
        scope: Scope<'_, Epoch>,
        address: Rc<[usize]>,
        reader: SourceReader,
        first: Epoch,
        throttle: ProbeHandle<Epoch>,
        max_updates_ahead: usize,
    ) -> Self {
        reader.wake(scope.worker().sync_activator_for(address.to_vec()));
        Reading {
            reader,
            first,
            activator: scope.activator_for(address),
            held_back: throttle,
            max_ahead: MAX_AHEAD_PER_WORKER * scope.peers() as u64,
            in_flight: VecDeque::new(),
            updates_ahead: 0,
            max_updates_ahead,
            next_look: None,
        }
    }

    /// The reader (to ask about the batch about to be read).
    pub(crate) fn reader(&self) -> &SourceReader {
        &self.reader
    }

    /// What to do now; see [`Poll`]. Moves `cap` to the batch to read, or to a live
    /// source's batch being waited for.
    pub(crate) fn poll(&mut self, cap: &mut Capability<Epoch>) -> Poll {
        while let Some(&(epoch, updates)) = self.in_flight.front() {
            if self.held_back.less_equal(&epoch) {
                break;
            }
            self.in_flight.pop_front();
            self.updates_ahead -= updates;
        }
        match self.reader.next_batch() {
            Some(batch)
                if self
                    .held_back
                    .less_than(&batch.saturating_sub(self.max_ahead))
                    || self.updates_ahead >= self.max_updates_ahead =>
            {
                // Too far ahead of the end of the dataflow: wait for it.
                self.look_again_after(WAIT_FOR_PROBE);
                Poll::Wait
            }
            Some(batch) if !self.reader.ready() => {
                // A live source whose next batch has not arrived: hold its epoch and wait;
                // the source wakes this operator when the batch comes.
                cap.downgrade(&batch.max(self.first));
                self.look_again_after(WAIT_FOR_BATCH);
                Poll::Wait
            }
            Some(batch) => {
                cap.downgrade(&batch.max(self.first));
                Poll::Batch(batch)
            }
            None => Poll::End,
        }
    }

    /// Runs the operator again after `delay`, unless a look already due by then is
    /// pending: timely keeps every timer, so re-arming at each activation (each wake of a
    /// live source wakes every reader) would pile them up.
    fn look_again_after(&mut self, delay: Duration) {
        let now = Instant::now();
        if self
            .next_look
            .is_some_and(|at| now < at && at <= now + delay)
        {
            return;
        }
        self.next_look = Some(now + delay);
        self.activator.activate_after(delay);
    }

    /// Reads the batch [`poll`](Self::poll) returned into `sink`; returns the batch after
    /// it, `None` when it was the worker's last.
    pub(crate) fn read<S: RecordSink>(
        &mut self,
        sink: &mut S,
    ) -> Result<Option<Epoch>, SourceError> {
        self.reader.read_batch(sink)?;
        Ok(self.reader.next_batch())
    }

    /// The batch read emitted `updates` updates (counted against `max_updates_ahead` until
    /// the probe passes it), and `next` (from [`read`](Self::read)) is read next: the
    /// capability moves to it at once, so that downstream can complete this batch (and
    /// the other workers see progress) without waiting for the next read; with no next
    /// batch, the capability is dropped.
    pub(crate) fn release(
        &mut self,
        batch: Epoch,
        updates: usize,
        next: Option<Epoch>,
        cap: &mut Option<Capability<Epoch>>,
    ) {
        if updates > 0 {
            self.in_flight.push_back((batch, updates));
            self.updates_ahead += updates;
        }
        match (next, cap.as_mut()) {
            (Some(next), Some(c)) => {
                c.downgrade(&next.max(self.first));
                self.activator.activate();
            }
            _ => *cap = None,
        }
    }
}
