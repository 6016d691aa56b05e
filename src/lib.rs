//! Tributary: streaming windowed linear regression on timely and differential dataflow.
//!
//! Records (event time, key, features, target) flow from a [`source`] through event-time
//! [`window`]s, where they are folded into per-key, per-pane regression [`stats`] — an
//! abelian group, and so the difference type of a differential-dataflow collection — to
//! [`model`]s emitted when windows close. The [`dataflow`] module holds the operators;
//! a [`Pipeline`] runs the whole of `tributary run` — source, windows, sinks, checkpoints,
//! serving — from its settings ([`job`]) in one call.
//!
//! A dataflow of your own needs only the crate root: a [`SourceSpec`] opened per worker as
//! a [`SourceReader`], a [`WindowConfig`] and a [`RunContext`], then either [`ingest`]
//! (the source straight into pane statistics) or [`ReadRecords`] and [`WindowPanes`]
//! (records you transform on the way), and [`windowed_regression`] for the models;
//! [`WindowStats`] sums windows of a collection whose records change. For example, per-key
//! models of 20-second windows of generated records:
//!
//! ```
//! use timely::dataflow::ProbeHandle;
//! use timely::dataflow::operators::{Inspect, Probe};
//! use tributary::{RunContext, Schema, SourceReader, SourceSpec, WindowConfig};
//! use tributary::{ingest, windowed_regression};
//!
//! let source: SourceSpec = "gen:rows=6000,keys=3,features=2,step=5".parse().unwrap();
//! let config = WindowConfig::new("tumbling:20s".parse().unwrap(), 2);
//! let context = RunContext::default();
//! let models = timely::execute(timely::Config::process(2), move |worker| {
//!     let (index, peers) = (worker.index(), worker.peers());
//!     let reader = SourceReader::open(&source, &Schema::generated(2), index, peers).unwrap();
//!     let probe = ProbeHandle::new();
//!     let count = std::rc::Rc::new(std::cell::Cell::new(0));
//!     let counted = count.clone();
//!     worker.dataflow(|scope| {
//!         let input = ingest(scope, reader, &config, &context);
//!         let windows =
//!             windowed_regression(input.panes, input.control, &config, &context);
//!         windows
//!             .models
//!             .inspect(move |_| counted.set(counted.get() + 1))
//!             .probe_with(&probe)
//!             .probe_with(&input.throttle);
//!     });
//!     while !probe.done() {
//!         worker.step();
//!     }
//!     count.get()
//! });
//! let models: usize = models.unwrap().join().into_iter().map(Result::unwrap).sum();
//! assert_eq!(models, 3 * 2, "30 s of records: two 20 s windows for each of 3 keys");
//! ```

#![forbid(missing_docs)]

pub mod bench;
pub mod checkpoint;
pub mod cluster;
pub mod dashboard;
pub mod dataflow;
pub mod failpoint;
pub mod held;
pub mod job;
pub mod key;
pub mod logging;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod operators;
pub mod quarantine;
pub mod record;
pub mod serve;
pub mod sink;
pub mod source;
pub mod stats;
pub mod types;
pub mod window;

pub use dataflow::{
    Control, Ingested, ModelLine, RunContext, SetAside, WindowConfig, WindowOutputs,
    WindowedModels, ingest, windowed_regression,
};
pub use job::{Job, Pipeline, Summary};
pub use key::Key;
pub use metrics::Metrics;
pub use model::{Fit, SolveOptions, Status, solve};
pub use operators::{Panes, ReadRecords, RecordStream, Row, WindowPanes, WindowStats};
pub use record::{Record, RecordRef, Schema};
pub use source::{FileSpec, GenReader, GenSpec, SourceReader, SourceSpec};
pub use stats::Stats;
pub use types::{Counts, Epoch, Fatal, OnError, OnFatal};
pub use window::{Pane, Window, WindowSpec};
