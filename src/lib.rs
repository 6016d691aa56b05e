//! Tributary: streaming windowed linear regression on timely and differential dataflow.
//!
//! Records (event time, key, features, target) flow from a [`source`] through event-time
//! [`window`]s, where they are folded into per-key, per-pane regression [`stats`] — an
//! abelian group, and so the difference type of a differential-dataflow arrangement — to
//! [`model`]s emitted when windows close. The [`dataflow`] module holds the operators,
//! [`job`] runs a whole dataflow from its settings.

#![deny(missing_docs)]

pub mod bench;
pub mod checkpoint;
pub mod cluster;
pub mod dashboard;
pub mod dataflow;
pub mod failpoint;
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

pub use dataflow::{ModelLine, WindowConfig};
pub use key::Key;
pub use model::{Fit, SolveOptions, Status, solve};
pub use record::{Record, RecordRef, Schema};
pub use stats::Stats;
pub use types::{Counts, Epoch, Fatal, OnError, OnFatal};
pub use window::{Pane, Window, WindowSpec};
