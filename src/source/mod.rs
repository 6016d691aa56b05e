//! Sources: where records come from, split across workers.
//!
//! Every source is cut into *batches* numbered `0, 1, 2, …` (file blocks of about
//! [`BLOCK_BYTES`] ending on line boundaries, or generator chunks), and batch `k` is read
//! by worker `k mod workers`, so every worker is busy. The batch number is also the timely
//! epoch of its updates, and the next batch number is a worker's resumable position.

mod decimal;
pub mod file;
pub mod generator;
pub mod lines;
pub mod log;
pub mod tcp;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::record::{RecordRef, Schema};

pub use file::FileReader;
pub use generator::{GenReader, GenSpec};
pub use lines::{FileFormat, LineParser};
pub use log::{IngestLog, LogReader, RecordBatch};
pub use tcp::TcpSpec;

/// Target size of one file batch.
///
/// Every batch is a timely epoch, and an epoch costs the workers a round of progress
/// coordination however few records it holds: at 1 MiB (about 9 000 records of d = 8) that
/// overhead was 10–20 % of a CSV run, at 4 MiB it is a few per cent (benchmarks.md). Batch
/// numbers are checkpoint positions, so the size is part of a file dataflow's fingerprint.
pub const BLOCK_BYTES: usize = 4 << 20;

/// Where records come from (`--source`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SourceSpec {
    /// A CSV file with a header row.
    Csv(PathBuf),
    /// A file of JSON objects, one per line.
    Jsonl(PathBuf),
    /// The deterministic generator.
    Gen(GenSpec),
    /// Records posted to `POST /data` (needs `--serve`), through the ingest log.
    Http,
    /// Lines read from a TCP socket, through the ingest log.
    Tcp(TcpSpec),
}

impl SourceSpec {
    /// Whether records reach the dataflow through the [`IngestLog`] of process 0 (HTTP
    /// and TCP sources) rather than being read by every worker from the source itself.
    pub fn is_logged(&self) -> bool {
        matches!(self, SourceSpec::Http | SourceSpec::Tcp(_))
    }
}

impl FromStr for SourceSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "http" {
            return Ok(SourceSpec::Http);
        }
        let (kind, arg) = text.split_once(':').ok_or_else(|| {
            format!(
                "source {text:?}: expected csv:PATH, jsonl:PATH, gen:..., tcp:HOST:PORT or http"
            )
        })?;
        let file = |arg: &str| -> Result<PathBuf, String> {
            match arg.rsplit_once(',') {
                Some((_, "follow")) => Err(format!(
                    "source {text:?}: `follow` is not supported yet; files are read once"
                )),
                _ => Ok(PathBuf::from(arg)),
            }
        };
        match kind {
            "csv" => Ok(SourceSpec::Csv(file(arg)?)),
            "jsonl" | "json" => Ok(SourceSpec::Jsonl(file(arg)?)),
            "gen" => Ok(SourceSpec::Gen(arg.parse()?)),
            "tcp" => Ok(SourceSpec::Tcp(arg.parse()?)),
            _ => Err(format!(
                "source {text:?}: kind must be csv, jsonl, gen, tcp or http"
            )),
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Csv(p) => write!(f, "csv:{}", p.display()),
            SourceSpec::Jsonl(p) => write!(f, "jsonl:{}", p.display()),
            SourceSpec::Gen(g) => write!(f, "gen:{g}"),
            SourceSpec::Http => write!(f, "http"),
            SourceSpec::Tcp(t) => write!(f, "tcp:{t}"),
        }
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

/// One worker's share of a source.
pub enum SourceReader {
    /// CSV or JSON lines file.
    File(FileReader),
    /// Generator.
    Gen(GenReader),
    /// The ingest log (HTTP and TCP sources).
    Log(LogReader),
}

impl SourceReader {
    /// Opens worker `index`'s share (of `peers`) of the source.
    pub fn open(
        spec: &SourceSpec,
        schema: &Schema,
        index: usize,
        peers: usize,
    ) -> Result<Self, SourceError> {
        Ok(match spec {
            SourceSpec::Csv(path) => SourceReader::File(FileReader::open(
                path,
                FileFormat::Csv,
                schema,
                index,
                peers,
            )?),
            SourceSpec::Jsonl(path) => SourceReader::File(FileReader::open(
                path,
                FileFormat::Jsonl,
                schema,
                index,
                peers,
            )?),
            SourceSpec::Gen(g) => SourceReader::Gen(GenReader::new(g, index, peers)),
            SourceSpec::Http | SourceSpec::Tcp(_) => {
                return Err(SourceError::Schema(format!(
                    "source {spec} is read through the ingest log (LogReader), not opened per worker"
                )));
            }
        })
    }

    /// The batch (= epoch) this worker reads next, or `None` when its share is done.
    pub fn next_batch(&self) -> Option<u64> {
        match self {
            SourceReader::File(r) => r.next_batch(),
            SourceReader::Gen(r) => r.next_batch(),
            SourceReader::Log(r) => r.next_batch(),
        }
    }

    /// Whether batch [`next_batch`](Self::next_batch) can be read now (a live source's
    /// batch may not have arrived yet; files and the generator are always ready).
    pub fn ready(&self) -> bool {
        match self {
            SourceReader::Log(r) => r.ready(),
            _ => true,
        }
    }

    /// Asks a live source to wake `activator` when a batch arrives.
    pub fn wake(&self, activator: timely::scheduling::SyncActivator) {
        if let SourceReader::Log(r) = self {
            r.wake(activator);
        }
    }

    /// Reads batch [`next_batch`](Self::next_batch) into `sink` and moves past it.
    pub fn read_batch<S: RecordSink>(&mut self, sink: &mut S) -> Result<(), SourceError> {
        match self {
            SourceReader::File(r) => r.read_batch(sink),
            SourceReader::Gen(r) => {
                r.read_batch(sink);
                Ok(())
            }
            SourceReader::Log(r) => r.read_batch(sink),
        }
    }

    /// Moves to batch `batch` (a resumed position); earlier batches are skipped.
    pub fn seek(&mut self, batch: u64) {
        match self {
            SourceReader::File(r) => r.seek(batch),
            SourceReader::Gen(r) => r.seek(batch),
            SourceReader::Log(r) => r.seek(batch),
        }
    }
}
