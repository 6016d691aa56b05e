//! What a reader hands on and how it fails: the [`RecordSink`] every reader fills, a
//! [`Malformed`] line, a [`SourceError`]. A leaf of `source/`: it imports none of its
//! siblings, so every reader imports it and it imports no reader.

use std::any::Any;
use std::fmt;

use crate::record::RecordRef;
use crate::types::OnError;
use crate::window::Time;

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
    /// A whole batch of well-formed records, `rows`, that a reading thread has also folded
    /// ahead of the worker ([`Prefold`](super::ahead::Prefold)) into `folded`. The sink
    /// takes the fold in place of the records and returns `Ok` with what is left of it
    /// (its storage, for the thread to fold into again); or it returns `Err` with the fold
    /// untouched, and is then handed the records one by one, as every sink is by default.
    fn take_folded(&mut self, rows: Rows<'_>, folded: Folded) -> Result<Folded, Folded> {
        let _ = rows;
        Err(folded)
    }
}

/// A batch's records as a [`Prefold`](super::ahead::Prefold) folded them, of the type it
/// and the sink that takes it agree on.
pub type Folded = Box<dyn Any + Send>;

/// The records of one batch, side by side: their times, keys and rows.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    times: &'a [Time],
    /// The keys, one after the other; `key_ends[i]` is where record `i`'s ends.
    keys: &'a str,
    key_ends: &'a [usize],
    /// The rows `z = [x, y]`, one after the other, each `width` numbers.
    z: &'a [f64],
    width: usize,
}

impl<'a> Rows<'a> {
    /// Records side by side: `key_ends` has an end in `keys` per time, and `z` a row of
    /// `width` numbers per time.
    pub fn new(
        times: &'a [Time],
        keys: &'a str,
        key_ends: &'a [usize],
        z: &'a [f64],
        width: usize,
    ) -> Self {
        assert_eq!(times.len(), key_ends.len(), "a key per record");
        assert_eq!(times.len() * width, z.len(), "a row per record");
        Rows {
            times,
            keys,
            key_ends,
            z,
            width,
        }
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// The records' times, in order.
    pub fn times(&self) -> &'a [Time] {
        self.times
    }

    /// Record `i`.
    #[inline]
    pub fn get(&self, i: usize) -> RecordRef<'a> {
        let key_from = i.checked_sub(1).map_or(0, |j| self.key_ends[j]);
        RecordRef {
            time: self.times[i],
            key: &self.keys[key_from..self.key_ends[i]],
            z: &self.z[i * self.width..(i + 1) * self.width],
        }
    }
}
