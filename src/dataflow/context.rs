//! What the dataflow's operators share: the window configuration, the run context, who
//! owns a key, the global frontier, and the pane updates' types. Imports nothing of the
//! dataflow.

use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::Hashable;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::checkpoint::{Commit, Recovered, Store};
use crate::key::Key;
use crate::metrics::Metrics;
use crate::model::SolveOptions;
use crate::stats::Stats;
use crate::types::{Epoch, Fatal, OnError, OnFatal};
use crate::window::{Pane, Time, WindowSpec};

/// A pane update: ((key, pane), time, statistics), as the pane collection carries it.
pub type PaneUpdate = ((Key, Pane), Epoch, Stats);

/// Everything the windows need to know, fixed for a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Window kind and size.
    pub window: WindowSpec,
    /// Allowed lateness (ms).
    pub lateness: Time,
    /// Largest advance of the watermark by one record (ms).
    pub max_jump: Time,
    /// Solver options.
    pub solve: SolveOptions,
    /// Number of features.
    pub features: usize,
}

impl WindowConfig {
    /// The largest advance of the watermark by one record that [`WindowConfig::new`]
    /// allows: one hour (in ms), the default of `tributary run --max-jump`.
    pub const DEFAULT_MAX_JUMP: Time = 3_600_000;

    /// Windows `window` over models of `features` features, with what `tributary run`
    /// takes by default: no lateness, a watermark advancing at most
    /// [`DEFAULT_MAX_JUMP`](Self::DEFAULT_MAX_JUMP) per record, and ordinary least squares
    /// (no ridge). The setters change one each:
    ///
    /// ```
    /// use tributary::WindowConfig;
    ///
    /// let config = WindowConfig::new("sliding:60s/10s".parse().unwrap(), 2)
    ///     .lateness(1_000)
    ///     .ridge(0.5);
    /// assert_eq!((config.features, config.lateness, config.max_jump), (2, 1_000, 3_600_000));
    /// assert_eq!(config.solve.ridge, 0.5);
    /// ```
    pub fn new(window: WindowSpec, features: usize) -> Self {
        WindowConfig {
            window,
            lateness: 0,
            max_jump: Self::DEFAULT_MAX_JUMP,
            solve: SolveOptions::default(),
            features,
        }
    }

    /// The same configuration with allowed lateness `ms` (milliseconds of event time).
    pub fn lateness(self, ms: Time) -> Self {
        WindowConfig {
            lateness: ms,
            ..self
        }
    }

    /// The same configuration with the watermark advancing at most `ms` per record.
    pub fn max_jump(self, ms: Time) -> Self {
        WindowConfig {
            max_jump: ms,
            ..self
        }
    }

    /// The same configuration with ridge penalty `lambda` on the slopes (`0` is OLS).
    pub fn ridge(self, lambda: f64) -> Self {
        WindowConfig {
            solve: SolveOptions { ridge: lambda },
            ..self
        }
    }
}

/// What a run shares with its operators beyond the window configuration.
#[derive(Clone)]
pub struct RunContext {
    /// Malformed-line policy.
    pub on_error: OnError,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where the run's operators hand an error they cannot go on from (a source error, a
    /// failed checkpoint write), once they logged it: the one fatal-error hook of a run
    /// (see [`OnFatal`]). It must not return; whether the process ends, with
    /// [`Fatal::code`](crate::types::Fatal::code), is the hook's choice.
    pub on_fatal: OnFatal,
    /// Checkpointing, when enabled.
    pub checkpoint: Option<CheckpointContext>,
    /// Whether the windows operator also emits a running estimate of each key's open
    /// window whenever new records change it ([`WindowOutputs::estimates`](super::WindowOutputs::estimates)).
    pub estimates: bool,
    /// Whether the source is one ordered partition however many workers read it (the
    /// ingest log: HTTP, TCP, followed files). Its watermark is then the log's: each
    /// batch is judged against the largest time of the batches before it, and the global
    /// frontier is the newest report, not the slowest worker's (see [`frontier_of`]).
    pub one_partition: bool,
}

impl RunContext {
    /// A context without checkpoints.
    pub fn new(on_error: OnError, metrics: Arc<Metrics>, on_fatal: OnFatal) -> Self {
        RunContext {
            on_error,
            metrics,
            on_fatal,
            checkpoint: None,
            estimates: false,
            one_partition: false,
        }
    }
}

impl Default for RunContext {
    /// The context of a program that wants to stop at the first problem: malformed lines
    /// are fatal ([`OnError::Fail`]), fresh [`Metrics`], no checkpoints, no running
    /// estimates, a partitioned source; and a fatal error (a malformed line, a source that
    /// cannot be read) panics with its message on the worker that met it, so that
    /// `timely::execute(..)`'s `join` reports it, rather than ending the process.
    ///
    /// ```
    /// use tributary::{OnError, RunContext};
    ///
    /// let context = RunContext::default();
    /// assert_eq!(context.on_error, OnError::Fail);
    /// assert_eq!(context.metrics.snapshot().records, 0);
    /// assert!(context.checkpoint.is_none());
    /// ```
    fn default() -> Self {
        RunContext::new(OnError::Fail, Arc::default(), panic_on_fatal)
    }
}

/// The fatal-error hook of [`RunContext::default`]: panics with the error's message.
fn panic_on_fatal(error: Fatal) -> ! {
    panic!("{error}")
}

/// The global frontier of the workers' reported largest times: for partitioned sources
/// the smallest (each worker reads a partition of its own); for one partition read by
/// several workers the largest, since each report already covers every batch before its
/// own. A worker with no share reports `Time::MAX` (done) at once: for one partition that
/// means "no more from me", not the end, until every worker says so.
pub fn frontier_of(max_seen: &[Time], one_partition: bool) -> Time {
    if one_partition {
        let live = max_seen.iter().copied().filter(|&t| t != Time::MAX).max();
        live.unwrap_or(Time::MAX)
    } else {
        max_seen.iter().copied().min().unwrap_or(Time::MIN)
    }
}

/// Checkpoint settings of a run.
#[derive(Clone)]
pub struct CheckpointContext {
    /// This process's store.
    pub store: Arc<Store>,
    /// Time between checkpoints (per worker; every worker's marks are checkpoint epochs).
    pub every: Duration,
    /// The generation this run writes.
    pub generation: u64,
    /// The state recovered at start, if any.
    pub restored: Option<Arc<Recovered>>,
}

impl CheckpointContext {
    /// The epoch the run resumes after, if it was restored.
    pub fn resumed_at(&self) -> Option<Epoch> {
        self.restored.as_ref()?.commit.as_ref().map(|c| c.epoch)
    }
}

/// The worker that owns `key` among `peers`: the one differential's exchange routes it to.
pub fn owner(key: &Key, peers: usize) -> usize {
    (key.hashed() % peers as u64) as usize
}

/// Each worker's largest admitted event time after resuming from `commit` with `peers`
/// workers: the recorded ones when the worker count is unchanged; otherwise, partitions
/// being different, every worker starts from the global frontier (their minimum), which
/// keeps lateness decisions consistent with the windows already closed.
pub fn resumed_max_seen(commit: &Commit, peers: usize, one_partition: bool) -> Vec<Time> {
    if commit.max_seen.len() == peers {
        commit.max_seen.clone()
    } else {
        vec![frontier_of(&commit.max_seen, one_partition); peers]
    }
}

/// The handle an operator gives vectors of `D` at, on one of its outputs.
pub(super) type VecOutput<D> = OutputBuilder<Epoch, CapacityContainerBuilder<Vec<D>>>;

/// A new output of `builder` carrying vectors of `D`: the handle to give at it and its
/// stream. The operators with an output per kind of element (the source's and the
/// windows') make each of them this way.
pub(super) fn vec_output<'scope, D: Clone + 'static>(
    builder: &mut OperatorBuilder<'scope, Epoch>,
) -> (VecOutput<D>, StreamVec<'scope, Epoch, D>) {
    let (output, stream) = builder.new_output();
    (OutputBuilder::from(output), stream)
}
