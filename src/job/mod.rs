//! A job: the settings of one dataflow (from SPEC.toml and flags) and running it.
//!
//! `settings` declares every setting once (SPEC.toml key and flag) and resolves them into
//! a [`Job`]; `run` sets up the sources, the dataflow, checkpoints, sinks and serving for
//! it on a timely cluster.

mod run;
mod settings;

pub use run::{Summary, peak_rss_bytes, run};
pub use settings::{DEFAULT_MAX_PENDING_BYTES, Job, JobSpec};
