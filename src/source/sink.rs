//! What a reader hands on and how it fails: the [`RecordSink`] every reader fills, a
//! [`Malformed`] line, a [`SourceError`]. A leaf of `source/`: it imports none of its
//! siblings, so every reader imports it and it imports no reader.

use std::fmt;

use crate::record::RecordRef;
use crate::types::OnError;

/// Malformed lines a reader reports as warnings, per worker (or per feed), before going
/// quiet; all of them are counted. `--on-error skip` promises "the first 10 per worker".
pub const REPORT_MALFORMED: u64 = 10;

/// Why a line of `len` bytes (without its newline) is refused under the line limit `max`
/// (`--max-line-bytes`): every source says it in these words. A line of exactly `max`
/// bytes is taken; its newline (`\n`) does not count, a `\r` before it does.
pub fn line_too_long(len: u64, max: usize) -> String {
    format!("{len} bytes, longer than the limit of {max} bytes (--max-line-bytes)")
}

/// `--on-error` applied to a reader's malformed lines: under `fail` the first one stops the
/// source; under `skip` each is passed over, and the first [`REPORT_MALFORMED`] of the
/// reader's life are reported as warnings. Counting them is the caller's.
#[derive(Clone, Copy, Debug)]
pub struct MalformedPolicy {
    on_error: OnError,
    reported: u64,
}

impl MalformedPolicy {
    /// The policy of `on_error`, nothing reported yet.
    pub fn new(on_error: OnError) -> Self {
        MalformedPolicy {
            on_error,
            reported: 0,
        }
    }

    /// Applies the policy to `error`: the error that stops the source, or `Ok` to go on.
    pub fn apply(&mut self, error: Malformed) -> Result<(), SourceError> {
        if self.on_error == OnError::Fail {
            return Err(SourceError::Malformed(error));
        }
        if self.reported < REPORT_MALFORMED {
            self.reported += 1;
            tracing::warn!("skipping malformed line: {error}");
        }
        Ok(())
    }
}

/// A line that could not be read as a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// The source's file (or `gen`).
    pub file: String,
    /// 1-based line number.
    pub line: u64,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: line {}", self.file, self.line)?;
        if let Some(field) = &self.field {
            write!(f, ", field {field:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Errors that stop a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source could not be opened or read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The source does not fit the schema (e.g. a missing column).
    #[error("{0}")]
    Schema(String),
    /// A malformed line with `--on-error fail`.
    #[error("malformed input: {0}")]
    Malformed(Malformed),
}

/// Receives what a source reads.
pub trait RecordSink {
    /// A well-formed record.
    fn record(&mut self, record: RecordRef<'_>);
    /// A malformed line; returning an error stops the source with it.
    fn malformed(&mut self, error: Malformed) -> Result<(), SourceError>;
}
