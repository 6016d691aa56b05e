//! The messages the workers' operators send each other besides records and pane
//! statistics: a worker's progress after a batch, commit notices, and checkpoint
//! acknowledgements. Below the dataflow and the checkpoint store, so that both can name
//! them.

use serde::{Deserialize, Serialize};

use crate::types::{Counts, Epoch};
use crate::window::Time;

/// A worker's event-time progress after one batch, broadcast to every worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The reporting worker.
    pub worker: usize,
    /// Largest event time it admitted so far (`Time::MAX` once its share is done).
    pub max_seen: Time,
    /// What the batch held.
    pub counts: Counts,
    /// Whether the epoch of this report is a checkpoint epoch.
    pub checkpoint: bool,
    /// Whether this batch was the source's idle close (`--close-after-idle`): the
    /// partition's largest time was moved past every window open.
    pub idle: bool,
}

/// What the windows operator hears besides the pane statistics (broadcast to every worker).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// A worker's progress after one of its batches.
    Progress(Progress),
    /// Every worker's part of this checkpoint epoch is durable and committed.
    Committed(Epoch),
}

/// A worker's part of a checkpoint epoch is durable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The checkpoint epoch.
    pub epoch: Epoch,
    /// The worker.
    pub worker: usize,
    /// Largest event time admitted by each worker, as of the epoch.
    pub max_seen: Vec<Time>,
}
