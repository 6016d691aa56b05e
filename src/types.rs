//! The small types every layer shares: the timely timestamp, the malformed-line policy and
//! a source's counters. A leaf: it imports nothing of ours, so a lower module (a sink, the
//! metrics, a source reader, the checkpoint store) can name them without importing the
//! dataflow above it.

use serde::{Deserialize, Serialize};

/// Timely timestamps: source batch numbers (one epoch per source batch).
pub type Epoch = u64;

/// What to do with a malformed input line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Count it, report the first ones on stderr, and go on.
    #[default]
    Skip,
    /// Stop the run with an error naming file, line and field.
    Fail,
}

/// Counters of what a source read, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Well-formed records (admitted or not).
    pub records: u64,
    /// Malformed lines.
    pub malformed: u64,
    /// Records set aside as late.
    pub late: u64,
    /// Records set aside as too far ahead.
    pub too_far: u64,
}
