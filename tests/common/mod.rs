//! Shared helpers for the integration tests, one concern a file:
//!
//! - [`data`]: the deterministic generator and the CSV/JSONL writers;
//! - [`oracle`]: the independent oracle (nalgebra SVD least squares over the exact window
//!   rows) and the comparisons with it;
//! - [`output`]: the parser of the engine's JSON-lines output and of its exit summary;
//! - [`engine`]: the process harness (running the binary, [`Reaped`] child processes,
//!   temporary directories);
//! - [`http`]: the HTTP client and the `--serve` server harness.
//!
//! Everything is re-exported here, so a test writes `use common::*;`. Nothing here uses
//! code from the `tributary` crate: the engine is only run as a binary.
#![allow(dead_code)]

pub mod data;
pub mod engine;
pub mod http;
pub mod oracle;
pub mod output;

pub use data::*;
pub use engine::*;
pub use oracle::*;
pub use output::*;
