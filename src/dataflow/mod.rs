//! The dataflow, as operators on timely streams and differential collections.
//!
//! ```text
//!  source batch k ──► ingest (worker k mod W) ──► panes: ((key, pane), k, Stats)
//!     │   watermark, lateness, combiner per (key, pane)      │ exchange by key
//!     ├──► progress (max event time, counts) ── broadcast ──► windows (per worker: its
//!     │                                                        │ keys' open panes)
//!     └──► set aside (late, too far ahead) ─► late sink       │ sums of panes, solve
//!                                                             ▼
//!                                                    models ─► sink (worker 0)
//! ```
//!
//! Timely epochs are source batch numbers; event time lives in the data. The panes are a
//! differential collection: per key and pane, updates whose differences are the
//! statistics of the records admitted in a batch (a correction would be a negative one).
//! The windows operator of the key's worker accumulates them as of each epoch, the only
//! copy of the state, solves a window's sum of panes when it is due, and drops a pane once
//! every window holding it is final, so it holds only open panes.
//!
//! One concept per file: [`ingest`] (the source operator) folds records into panes with
//! the per-batch `combiner`; the `windows` operator ([`WindowedModels`]) turns panes into
//! models; its `checkpointer` writes what changed beside it, and `estimate` is what it
//! sends the served models for a running estimate ([`EstimateStats`]). What they share
//! (configuration, run context, key owners, frontier) is in `context`; this file wires
//! them together ([`windowed_regression`]).

mod checkpointer;
mod combiner;
mod context;
mod estimate;
mod ingest;
mod reading;
mod windows;

use differential_dataflow::VecCollection;
use timely::dataflow::StreamVec;

use crate::key::Key;
use crate::stats::Stats;
use crate::window::Pane;

pub use crate::messages::{Ack, Control, ModelLine, Progress, SetAside};
pub use crate::types::{Counts, Epoch, OnError};
pub(crate) use combiner::Combiner;
pub use context::{
    CheckpointContext, PaneUpdate, RunContext, WindowConfig, frontier_of, owner, resumed_max_seen,
};
pub use estimate::EstimateStats;
pub use ingest::{Ingested, MAX_PANES_AHEAD_PER_WORKER, ingest};
pub use reading::MAX_AHEAD_PER_WORKER;
pub(crate) use reading::{Poll, Reading};
pub use windows::{WindowOutputs, WindowedModels};

/// Builds the windowed-regression dataflow on `panes`: the windows operator, fed the pane
/// updates by key. `control` carries the workers' progress (and, with checkpoints, commit
/// notices). Returns the windows operator's outputs.
pub fn windowed_regression<'scope>(
    panes: VecCollection<'scope, Epoch, (Key, Pane), Stats>,
    control: StreamVec<'scope, Epoch, Control>,
    config: &WindowConfig,
    context: &RunContext,
) -> WindowOutputs<'scope> {
    panes.windowed_models(control, config, context)
}
