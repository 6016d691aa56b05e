//! A job: the settings of one dataflow (from SPEC.toml and flags) and the [`Pipeline`]
//! that runs it.
//!
//! `settings` declares every setting once (SPEC.toml key and flag) and resolves them into
//! a [`Job`]; `pipeline` is the public entry point, [`Pipeline::run`], which calls `start`
//! (what a process sets up before its workers: checkpoint store, ingest log and feeds,
//! HTTP server) and `worker` (the dataflow each worker builds and steps: source, windows,
//! sinks, served models, the commit loop), and returns the `summary`.

mod pipeline;
mod settings;
mod start;
mod summary;
mod worker;

pub use pipeline::Pipeline;
pub use settings::{DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_BYTES, Job, JobSpec};
pub use summary::{Summary, peak_rss_bytes};
