//! The dataflow, as operators on timely streams and differential collections.
//!
//! ```text
//!  source batch k ──► ingest (worker k mod W) ──► panes: ((key, pane), k, Stats) ─┐
//!     │   watermark, lateness, combiner per (key, pane)                          │ concat
//!     ├──► progress (max event time, counts) ── broadcast ──┐                    ▼
//!     └──► set aside (late, too far ahead) ─► late sink     │   arrange_by_key (exchange by key)
//!                                                           ▼                    │
//!             retractions of expired panes (epoch + delay) ◄── windows ◄─────────┘
//!                                                              │ sums of panes, solve
//!                                                              ▼
//!                                                     models ─► sink (worker 0)
//! ```
//!
//! Timely epochs are source batch numbers; event time lives in the data. The arrangement
//! holds, per key and pane, the statistics of the pane's admitted records: the only copy of
//! the state. The windows operator keeps an index of which panes exist (no statistics),
//! reads pane statistics from the arrangement's trace when a window is due, and retracts a
//! pane (its exact total, read back from the trace) once every window holding it is final,
//! so the arrangement holds only open panes.
//!
//! One concept per file: [`ingest`] (the source operator) folds records into panes with
//! the per-batch `combiner`; the `windows` operator ([`WindowedModels`]) turns arranged
//! panes into models and retractions; its `checkpointer` writes what changed beside it.
//! What they share (configuration, run context, key owners, frontier) is in `context`;
//! this file wires them together ([`windowed_regression`]).

mod checkpointer;
mod combiner;
mod context;
mod ingest;
mod reading;
mod windows;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::operators::{ConnectLoop, Feedback};
use timely::dataflow::{Scope, StreamVec};

use crate::key::Key;
use crate::stats::Stats;
use crate::window::Pane;

pub use crate::messages::{Ack, Control, ModelLine, Progress, SetAside};
pub use crate::types::{Counts, Epoch, OnError};
pub(crate) use combiner::Combiner;
pub use context::{
    CheckpointContext, PaneTrace, PaneUpdate, RETRACTION_DELAY_PER_WORKER, RunContext,
    WindowConfig, frontier_of, owner, resumed_max_seen, retraction_delay,
};
pub use ingest::{Ingested, MAX_PANES_AHEAD_PER_WORKER, ingest};
pub use reading::MAX_AHEAD_PER_WORKER;
pub(crate) use reading::{Poll, Reading};
pub use windows::{WindowOutputs, WindowedModels};

/// Builds the windowed-regression dataflow on `panes`: the arrangement, the windows
/// operator, and the loop that retracts expired panes. `control` carries the workers'
/// progress (and, with checkpoints, commit notices). Returns the windows operator's
/// outputs (retractions already connected) and the trace of pane statistics, which the
/// caller must drop or keep advancing.
pub fn windowed_regression<'scope>(
    scope: Scope<'scope, Epoch>,
    panes: VecCollection<'scope, Epoch, (Key, Pane), Stats>,
    control: StreamVec<'scope, Epoch, Control>,
    config: &WindowConfig,
    context: &RunContext,
) -> (WindowOutputs<'scope>, PaneTrace) {
    let (handle, retractions) = scope.feedback(retraction_delay(scope.peers()));
    let arranged = panes
        .concat(retractions.as_collection())
        .arrange_by_key_named("PaneStats");
    let trace = arranged.trace.clone();
    let outputs = arranged.windowed_models(control, config, context);
    outputs.retractions.clone().connect_loop(handle);
    (outputs, trace)
}
