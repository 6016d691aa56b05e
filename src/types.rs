//! The small types every layer shares: the timely timestamp, the malformed-line policy, a
//! source's counters, and a fatal error with its exit code ([`Fatal`], handed to the run's
//! [`OnFatal`] hook: library code never ends the process itself). A leaf: it imports
//! nothing of ours, so a lower module (a sink, the metrics, a source reader, the checkpoint
//! store) can name them without importing the dataflow above it.

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

/// Exit code of a run stopped because a source or an output failed during the run: a
/// malformed line under `--on-error fail`, an unreadable file, an output that cannot be
/// written (the table of docs/dataflow-spec.md, "Exit codes").
pub const EXIT_SOURCE_OR_OUTPUT: i32 = 2;

/// An error that ends a run, with the exit code the `tributary` command ends with for it
/// (the table of docs/dataflow-spec.md, "Exit codes").
///
/// Library code does not end the process: where it meets an error it cannot go on from
/// (in an operator, a source thread, the HTTP server's thread, the panic hook), it logs
/// the message (`tracing::error!`, where it happened, so that `RUST_LOG` and the log
/// line's `target` are those of the place) and hands a `Fatal` to the run's [`OnFatal`]
/// hook. Errors at start travel up as `Result`s instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fatal {
    /// The exit code (see [`EXIT_SOURCE_OR_OUTPUT`], `checkpoint::EXIT_WRITE_FAILED`,
    /// `checkpoint::EXIT_REFUSED`, `quarantine::EXIT_PANIC`, `quarantine::EXIT_PEER_LOST`).
    pub code: i32,
    /// What went wrong, as logged.
    pub message: String,
}

impl Fatal {
    /// A fatal error with exit code `code`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Fatal {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fatal {}

/// The hook a run hands its fatal errors to ([`Fatal`]): it must not return, since the
/// thread that calls it cannot go on. The error is already logged when it is called.
///
/// The `tributary` command's hook ends the process with [`Fatal::code`]; a program using
/// the library can install one that panics (ending the worker, and with timely's
/// `execute` the run, with the message) or records the error somewhere first. A hook
/// that panics is called from the panic hook too (`quarantine::install`: a lost peer, a
/// worker's panic), where a second panic aborts the process.
pub type OnFatal = fn(Fatal) -> !;

/// Logs a fatal error where it happened (`tracing::error!` with the formatted message, so
/// that the log line's `target` is the caller's module) and hands it, with exit code
/// `code`, to the `OnFatal` hook `hook`: `fatal!(hook, code, "format", args…)`.
macro_rules! fatal {
    ($hook:expr, $code:expr, $($arg:tt)+) => {{
        let message = format!($($arg)+);
        tracing::error!("{message}");
        ($hook)($crate::types::Fatal::new($code, message))
    }};
}
pub(crate) use fatal;
