//! Sources: where records come from, split across workers.
//!
//! Every source is cut into *batches* numbered `0, 1, 2, …` (file blocks of about
//! [`FileSpec::block`] ending on line boundaries, or generator chunks), and batch `k` is read
//! by worker `k mod workers`, so every worker is busy. The batch number is also the timely
//! epoch of its updates, and the next batch number is a worker's resumable position.

mod decimal;
mod fast_csv;
pub mod feed;
pub mod file;
pub mod follow;
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

/// Default size of one file batch (`csv:PATH,block=SIZE` sets another).
///
/// Every batch is a timely epoch, and an epoch costs the workers a round of progress
/// coordination however few records it holds: at 1 MiB (about 9 000 records of d = 8) that
/// overhead was 10–20 % of a CSV run, at 4 MiB it is a few per cent (benchmarks.md). Batch
/// numbers are checkpoint positions, so the size is part of a file dataflow's fingerprint.
/// Smaller blocks give the first models sooner; they matter little for a file read once.
pub const BLOCK_BYTES: usize = 4 << 20;

/// Where records come from (`--source`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SourceSpec {
    /// A CSV file with a header row.
    Csv(FileSpec),
    /// A file of JSON objects, one per line.
    Jsonl(FileSpec),
    /// The deterministic generator.
    Gen(GenSpec),
    /// Records posted to `POST /data` (needs `--serve`), through the ingest log.
    Http,
    /// Lines read from a TCP socket, through the ingest log.
    Tcp(TcpSpec),
}

/// A file source: the file, the size of its batches, and whether it is followed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileSpec {
    /// The file.
    pub path: PathBuf,
    /// Nominal batch size in bytes (batches end on line boundaries); [`BLOCK_BYTES`]
    /// unless the source says `,block=SIZE`.
    pub block: usize,
    /// `,follow`: read lines as they are appended, through the ingest log (see
    /// [`follow`]); the source never ends.
    #[serde(default)]
    pub follow: bool,
    /// `,rotate` (with `,follow`): when the file is renamed away and a new one appears at
    /// the path, the old file is read to its end, then the new one from its start (see
    /// [`follow`]).
    #[serde(default)]
    pub rotate: bool,
}

impl FileSpec {
    /// The file at `path`, read once, in batches of the default size.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSpec {
            path: path.into(),
            block: BLOCK_BYTES,
            follow: false,
            rotate: false,
        }
    }

    /// `PATH[,block=SIZE][,follow[,rotate]]`; SIZE in bytes, or with a suffix `KiB` / `MiB` (also
    /// `k`, `M`). Options are taken from the end, so a path may hold commas.
    fn parse(arg: &str, text: &str) -> Result<Self, String> {
        let mut spec = FileSpec::new(arg);
        let mut path = arg;
        let mut block = None;
        while let Some((rest, option)) = path.rsplit_once(',') {
            if option == "follow" {
                spec.follow = true;
            } else if option == "rotate" {
                spec.rotate = true;
            } else if let Some(size) = option.strip_prefix("block=") {
                block = Some(parse_size(size).ok_or_else(|| {
                    format!(
                        "source {text:?}: block must be a positive size such as 65536, 64KiB or 4MiB"
                    )
                })?);
            } else {
                break;
            }
            path = rest;
        }
        spec.path = PathBuf::from(path);
        if spec.rotate && !spec.follow {
            return Err(format!(
                "source {text:?}: `rotate` is for a followed file: add `,follow`"
            ));
        }
        match block {
            Some(_) if spec.follow => Err(format!(
                "source {text:?}: a followed file is read in batches of what arrived, not in \
                 blocks: drop `block=`"
            )),
            Some(block) => Ok(FileSpec { block, ..spec }),
            None => Ok(spec),
        }
    }
}

/// A positive size in bytes: digits, optionally followed by `k`/`K`/`KiB` or `M`/`MiB`.
fn parse_size(size: &str) -> Option<usize> {
    let (digits, unit) = size
        .find(|c: char| !c.is_ascii_digit())
        .map_or((size, ""), |i| size.split_at(i));
    let scale = match unit {
        "" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        _ => return None,
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&n| n > 0)
}

impl fmt::Display for FileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.block != BLOCK_BYTES {
            write!(f, ",block={}", self.block)?;
        }
        if self.follow {
            write!(f, ",follow")?;
        }
        if self.rotate {
            write!(f, ",rotate")?;
        }
        Ok(())
    }
}

impl SourceSpec {
    /// Whether records reach the dataflow through the [`IngestLog`] of process 0 (HTTP,
    /// TCP and followed files) rather than being read by every worker from the source.
    pub fn is_logged(&self) -> bool {
        match self {
            SourceSpec::Http | SourceSpec::Tcp(_) => true,
            SourceSpec::Csv(file) | SourceSpec::Jsonl(file) => file.follow,
            SourceSpec::Gen(_) => false,
        }
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
        match kind {
            "csv" => Ok(SourceSpec::Csv(FileSpec::parse(arg, text)?)),
            "jsonl" | "json" => Ok(SourceSpec::Jsonl(FileSpec::parse(arg, text)?)),
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
            SourceSpec::Csv(file) => write!(f, "csv:{file}"),
            SourceSpec::Jsonl(file) => write!(f, "jsonl:{file}"),
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
    /// The ingest log (HTTP, TCP and followed files).
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
            SourceSpec::Csv(file) if !file.follow => SourceReader::File(FileReader::open(
                &file.path,
                file.block,
                FileFormat::Csv,
                schema,
                index,
                peers,
            )?),
            SourceSpec::Jsonl(file) if !file.follow => SourceReader::File(FileReader::open(
                &file.path,
                file.block,
                FileFormat::Jsonl,
                schema,
                index,
                peers,
            )?),
            SourceSpec::Gen(g) => SourceReader::Gen(GenReader::new(g, index, peers)),
            SourceSpec::Csv(_) | SourceSpec::Jsonl(_) | SourceSpec::Http | SourceSpec::Tcp(_) => {
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

    /// When the next batch is an idle close of the ingest log (`--close-after-idle`):
    /// the partition's largest time after it.
    pub fn idle_close_to(&self) -> Option<crate::window::Time> {
        match self {
            SourceReader::Log(r) => r.idle_close_to(),
            _ => None,
        }
    }

    /// For one partition read by several workers (the ingest log), the partition's
    /// largest admitted event time before the next batch; `None` for partitioned sources.
    pub fn partition_before(&self) -> Option<crate::window::Time> {
        match self {
            SourceReader::Log(r) => r.partition_before(),
            _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sources_their_block_size_and_follow() {
        let spec: SourceSpec = "csv:data/in.csv".parse().unwrap();
        assert_eq!(spec, SourceSpec::Csv(FileSpec::new("data/in.csv")));
        assert_eq!(spec.to_string(), "csv:data/in.csv");
        for (text, block) in [("64KiB", 64 << 10), ("4M", 4 << 20), ("1000", 1000)] {
            let spec: SourceSpec = format!("jsonl:a,b.json,block={text}").parse().unwrap();
            let want = FileSpec {
                path: "a,b.json".into(),
                block,
                follow: false,
                rotate: false,
            };
            assert_eq!(spec, SourceSpec::Jsonl(want));
            assert_eq!(spec.to_string().parse::<SourceSpec>().unwrap(), spec);
        }
        let spec: SourceSpec = "csv:logs/a,b.csv,follow".parse().unwrap();
        let want = FileSpec {
            path: "logs/a,b.csv".into(),
            block: BLOCK_BYTES,
            follow: true,
            rotate: false,
        };
        assert_eq!(spec, SourceSpec::Csv(want));
        assert!(spec.is_logged());
        assert_eq!(spec.to_string(), "csv:logs/a,b.csv,follow");
        for text in [
            "csv:logs/a,b.csv,follow,rotate",
            "csv:logs/a,b.csv,rotate,follow",
        ] {
            let spec: SourceSpec = text.parse().unwrap();
            let want = FileSpec {
                path: "logs/a,b.csv".into(),
                block: BLOCK_BYTES,
                follow: true,
                rotate: true,
            };
            assert_eq!(spec, SourceSpec::Csv(want));
            assert_eq!(spec.to_string(), "csv:logs/a,b.csv,follow,rotate");
        }
        for bad in [
            "csv:x,block=0",
            "csv:x,block=4GB",
            "csv:x,block=",
            "csv:x,block=1M,follow",
            "csv:x,follow,block=1M",
            "csv:x,rotate",
        ] {
            assert!(bad.parse::<SourceSpec>().is_err(), "{bad}");
        }
    }
}
