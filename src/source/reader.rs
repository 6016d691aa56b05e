//! One worker's share of a source, whatever its kind: the [`SourceReader`] the source
//! operators read batch by batch.

use super::ahead::{FoldWhen, Prefold, ReadAhead};
use super::feed::DEFAULT_MAX_LINE;
use super::file::FileReader;
use super::generator::GenReader;
use super::lines::FileFormat;
use super::log::LogReader;
use super::sink::{RecordSink, SourceError};
use super::spec::SourceSpec;
use crate::record::Schema;

/// One worker's share of a source.
pub enum SourceReader {
    /// CSV or JSON lines file.
    File(FileReader),
    /// CSV or JSON lines file, read and parsed ahead on a thread of its own
    /// ([`read_ahead`](SourceReader::read_ahead)).
    Ahead(ReadAhead),
    /// Generator.
    Gen(GenReader),
    /// The ingest log (HTTP, TCP and followed files).
    Log(LogReader),
}

impl SourceReader {
    /// Opens worker `index`'s share (of `peers`) of the source, with the default line
    /// limit ([`DEFAULT_MAX_LINE`]; see [`open_limited`](Self::open_limited)).
    pub fn open(
        spec: &SourceSpec,
        schema: &Schema,
        index: usize,
        peers: usize,
    ) -> Result<Self, SourceError> {
        Self::open_limited(spec, schema, index, peers, DEFAULT_MAX_LINE)
    }

    /// Opens worker `index`'s share (of `peers`) of the source; a line of a file longer
    /// than `max_line` bytes without its newline (`--max-line-bytes`) is malformed, as it
    /// is for the sources read through the ingest log.
    pub fn open_limited(
        spec: &SourceSpec,
        schema: &Schema,
        index: usize,
        peers: usize,
        max_line: usize,
    ) -> Result<Self, SourceError> {
        Ok(match spec {
            SourceSpec::Csv(file) if !file.follow => SourceReader::File(FileReader::open(
                &file.path,
                file.block,
                FileFormat::Csv,
                schema,
                index,
                peers,
                max_line,
            )?),
            SourceSpec::Jsonl(file) if !file.follow => SourceReader::File(FileReader::open(
                &file.path,
                file.block,
                FileFormat::Jsonl,
                schema,
                index,
                peers,
                max_line,
            )?),
            SourceSpec::Gen(g) => SourceReader::Gen(GenReader::new(g, index, peers)),
            SourceSpec::Csv(_) | SourceSpec::Jsonl(_) | SourceSpec::Http | SourceSpec::Tcp(_) => {
                return Err(SourceError::Schema(format!(
                    "source {spec} is read through the ingest log (LogReader), not opened per worker"
                )));
            }
        })
    }

    /// This reader with its batches read and parsed on a thread of their own, ahead of
    /// the worker ([`ReadAhead`]), if it reads a file; another source as it is (the
    /// generator costs less than handing its records over; the ingest log is parsed
    /// already).
    pub fn read_ahead(self) -> Self {
        match self {
            SourceReader::File(r) => SourceReader::Ahead(ReadAhead::new(r)),
            other => other,
        }
    }

    /// Has the thread of a reader read ahead ([`read_ahead`](Self::read_ahead)) also fold
    /// batches with `prefold` when it is ahead of the worker ([`ReadAhead::fold_with`],
    /// [`FoldWhen::Ahead`]); returns whether it does (no other reader has a thread).
    pub fn fold_ahead_with(&mut self, prefold: impl FnOnce() -> Box<dyn Prefold>) -> bool {
        match self {
            SourceReader::Ahead(r) => {
                r.fold_with(prefold(), FoldWhen::Ahead);
                true
            }
            _ => false,
        }
    }

    /// The batch (= epoch) this worker reads next, or `None` when its share is done.
    pub fn next_batch(&self) -> Option<u64> {
        match self {
            SourceReader::File(r) => r.next_batch(),
            SourceReader::Ahead(r) => r.next_batch(),
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

    /// Whether the next batch is a checkpoint request of the ingest log (a live source
    /// gone quiet, [`IngestLog::checkpoint_quiet`](super::log::IngestLog::checkpoint_quiet)):
    /// it is a checkpoint epoch whatever the clock says.
    pub fn checkpoint_requested(&self) -> bool {
        match self {
            SourceReader::Log(r) => r.checkpoint_requested(),
            _ => false,
        }
    }

    /// Batch `batch`, just read, is a checkpoint epoch (the ingest log then asks for no
    /// checkpoint through it, [`IngestLog::checkpoint_quiet`](super::log::IngestLog::checkpoint_quiet)).
    pub fn marked(&self, batch: u64) {
        if let SourceReader::Log(r) = self {
            r.marked(batch);
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
            SourceReader::Ahead(r) => r.read_batch(sink),
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
            SourceReader::Ahead(r) => r.seek(batch),
            SourceReader::Gen(r) => r.seek(batch),
            SourceReader::Log(r) => r.seek(batch),
        }
    }
}
