//! Sources: where records come from, split across workers.
//!
//! Every source is cut into *batches* numbered `0, 1, 2, …` (file blocks of about
//! [`FileSpec::block`] ending on line boundaries, or generator chunks), and batch `k` is read
//! by worker `k mod workers`, so every worker is busy. The batch number is also the timely
//! epoch of its updates, and the next batch number is a worker's resumable position.
//!
//! Every line-based source (a file read once, [`file`](mod@file); a followed file,
//! [`follow`]; a TCP connection, [`tcp`]; a `POST /data` body) takes lines of at most
//! `--max-line-bytes`, not counting the newline: a longer one is malformed under
//! `--on-error`, reported in the same words ([`line_too_long`]), and the readers of files
//! and streams never hold it whole.

pub mod ahead;
mod decimal;
mod fast_csv;
pub mod feed;
pub mod file;
pub mod follow;
pub mod generator;
pub mod lines;
pub mod log;
mod reader;
mod sink;
mod spec;
pub mod tcp;

pub use ahead::{FoldWhen, Prefold, ReadAhead, ReadAheadMode};
pub use file::FileReader;
pub use generator::{GenReader, GenSpec};
pub use lines::{FileFormat, LineParser};
pub use log::{IngestLog, LogReader, RecordBatch};
pub use reader::SourceReader;
pub use sink::{
    Folded, Malformed, MalformedPolicy, REPORT_MALFORMED, RecordSink, Rows, SourceError,
    line_too_long,
};
pub use spec::{BLOCK_BYTES, FileSpec, SourceSpec};
pub use tcp::TcpSpec;
