//! Checkpointing beside the windows operator: which panes changed since this worker's last
//! part, the part written when a checkpoint epoch is due, and the fold into the base once
//! the epoch is committed. The windows operator tells it what changed and hands it the
//! totals to write; it returns the acknowledgement.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::context::CheckpointContext;
use crate::checkpoint::{EXIT_WRITE_FAILED, Part, ProvisionalWindow};
use crate::key::Key;
use crate::messages::Ack;
use crate::metrics::Metrics;
use crate::stats::Stats;
use crate::types::Epoch;
use crate::types::{OnFatal, fatal};
use crate::window::{Pane, Time};

/// A worker's checkpoint writer: what changed since its last part.
pub(super) struct Checkpointer {
    context: CheckpointContext,
    worker: usize,
    /// Panes changed since the last part: alive (write the total) or expired (delete).
    dirty: BTreeMap<(Key, Pane), bool>,
    /// Whether older generations were dropped from the store yet.
    retired_old: bool,
    /// The run's fatal-error hook ([`RunContext::on_fatal`](super::RunContext::on_fatal)): a
    /// failed write ends the run.
    on_fatal: OnFatal,
}

impl Checkpointer {
    /// The checkpoint writer of `worker`.
    pub(super) fn new(context: CheckpointContext, worker: usize, on_fatal: OnFatal) -> Self {
        Checkpointer {
            context,
            worker,
            dirty: BTreeMap::new(),
            retired_old: false,
            on_fatal,
        }
    }

    /// `key`'s `pane` changed: it is `alive` (the next part writes its total) or expired
    /// (the next part deletes it).
    pub(super) fn touch(&mut self, key: &Key, pane: Pane, alive: bool) {
        self.dirty.insert((key.clone(), pane), alive);
    }

    /// Writes this worker's part of checkpoint epoch `epoch`: the totals of the panes
    /// changed since the last part (`read` gives the open panes of the keys asked for),
    /// and the windows emitted provisionally. Returns the acknowledgement.
    pub(super) fn write_part(
        &mut self,
        epoch: Epoch,
        read: impl FnOnce(&BTreeSet<Key>) -> Vec<(Key, Vec<(Pane, Stats)>)>,
        provisional: Vec<ProvisionalWindow>,
        max_seen: Vec<Time>,
        metrics: &Metrics,
    ) -> Ack {
        let dirty = std::mem::take(&mut self.dirty);
        let alive: BTreeSet<Key> = dirty
            .iter()
            .filter(|(_, alive)| **alive)
            .map(|((key, _), _)| key.clone())
            .collect();
        let totals: FxHashMap<(Key, Pane), Stats> = read(&alive)
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
        let part = Part {
            generation: self.context.generation,
            epoch,
            worker: self.worker,
            emitted: provisional,
            puts,
            deletes,
        };
        let started = Instant::now();
        match self.context.store.write_part(&part, &changes) {
            Ok(bytes) => {
                metrics.checkpoint_bytes.fetch_add(bytes, Relaxed);
                metrics
                    .checkpoint_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
            }
            Err(e) => {
                fatal!(self.on_fatal, EXIT_WRITE_FAILED, "writing checkpoint: {e}");
            }
        }
        Ack {
            epoch,
            worker: self.worker,
            max_seen,
        }
    }

    /// Epoch `committed` is complete: folds this worker's deltas through it into its base
    /// (and, the first time, drops older generations).
    pub(super) fn committed(&mut self, committed: Epoch, metrics: &Metrics) {
        let store = &self.context.store;
        let result = store
            .fold(self.context.generation, self.worker, committed)
            .and_then(|()| {
                if !self.retired_old {
                    self.retired_old = true;
                    store.drop_generations_before(self.context.generation)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = result {
            fatal!(self.on_fatal, EXIT_WRITE_FAILED, "folding checkpoint: {e}");
        }
        metrics.checkpoint_epoch.fetch_max(committed, Relaxed);
    }
}
