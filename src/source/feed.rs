//! Lines into the ingest log: what the TCP source and a followed file share.
//!
//! A [`Feed`] parses lines as they arrive (the CSV header first), counts and reports
//! malformed ones under the run's [`OnError`] policy, and gathers records into a
//! [`RecordBatch`] that is appended to the [`IngestLog`] when it holds [`BATCH_RECORDS`]
//! records or its oldest record has waited [`BATCH_WAIT`]. While the dataflow is behind,
//! an append waits, so the reader stops reading and the sender is held back.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::log::{AppendError, IngestLog, RecordBatch};
use super::{FileFormat, LineParser, Malformed};
use crate::checkpoint::SourcePosition;
use crate::dataflow::OnError;
use crate::metrics::Metrics;
use crate::record::Schema;

/// Largest batch appended to the log at once.
pub const BATCH_RECORDS: usize = 8192;

/// Longest a received record waits before its batch is appended.
pub const BATCH_WAIT: Duration = Duration::from_millis(20);

/// Malformed lines reported on stderr per feed (all are counted).
const REPORT_MALFORMED: u64 = 10;

/// What a feed needs from the run.
#[derive(Clone)]
pub struct FeedContext {
    /// Field names.
    pub schema: Schema,
    /// Where batches go.
    pub log: Arc<IngestLog>,
    /// Counters (malformed lines).
    pub metrics: Arc<Metrics>,
    /// Malformed-line policy: `fail` stops the process with the line's error.
    pub on_error: OnError,
}

/// One stream of lines (a connection, a followed file) on its way into the log.
pub struct Feed<'a> {
    parser: LineParser,
    /// Names the stream in messages (`tcp:…`, a file's path).
    origin: String,
    context: &'a FeedContext,
    batch: RecordBatch,
    /// Number of the last line given (1-based).
    line: u64,
    reported: u64,
    /// When the batch's first record arrived.
    oldest: Option<Instant>,
}

impl<'a> Feed<'a> {
    /// A feed of `format` lines named `origin`, whose next line is line `line + 1`.
    pub fn new(format: FileFormat, origin: String, line: u64, context: &'a FeedContext) -> Self {
        Feed {
            parser: LineParser::new(format, &context.schema),
            origin,
            context,
            batch: RecordBatch::default(),
            line,
            reported: 0,
            oldest: None,
        }
    }

    /// The number of the last line given.
    pub fn line_number(&self) -> u64 {
        self.line
    }

    /// Whether the next line must be the CSV header.
    pub fn needs_header(&self) -> bool {
        self.parser.needs_header()
    }

    /// Takes `text` as the CSV header, read at line `number` (a resumed feed reads the
    /// header of its file again without counting it).
    pub fn header(&mut self, text: &[u8], number: u64) -> Result<(), String> {
        self.parser
            .header(text, &format!("{}: line {number}", self.origin))
            .map_err(|e| e.to_string())
    }

    /// The next line, without its newline. Blank lines before a CSV header are skipped;
    /// an unusable header is an error that ends the feed.
    pub fn line(&mut self, text: &[u8]) -> Result<(), String> {
        self.line += 1;
        if self.parser.needs_header() {
            if text.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            return self.header(text, self.line);
        }
        match self.parser.parse(text) {
            Ok(Some(record)) => {
                self.batch.push(record);
                self.oldest.get_or_insert_with(Instant::now);
            }
            Ok(None) => {}
            Err((field, message)) => {
                let error = Malformed {
                    file: self.origin.clone(),
                    line: self.line,
                    field,
                    message,
                };
                self.context.metrics.malformed.fetch_add(1, Relaxed);
                if self.context.on_error == OnError::Fail {
                    eprintln!("error: malformed input: {error}");
                    std::process::exit(2);
                }
                if self.reported < REPORT_MALFORMED {
                    self.reported += 1;
                    eprintln!("warning: skipping malformed line: {error}");
                }
            }
        }
        Ok(())
    }

    /// Whether no record waits in the batch.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Whether the batch is full.
    pub fn full(&self) -> bool {
        self.batch.len() >= BATCH_RECORDS
    }

    /// Whether the batch is due: full, or its oldest record has waited [`BATCH_WAIT`].
    pub fn due(&self) -> bool {
        self.full() || self.oldest.is_some_and(|t| t.elapsed() >= BATCH_WAIT)
    }

    /// Appends the batch (if it holds records) to the log, with `position` (the stream's
    /// position after the last line given) when the stream is a followed file;
    /// waits while the dataflow is behind. A failed durable write stops the process: the
    /// records would be lost otherwise.
    pub fn flush(&mut self, position: Option<&SourcePosition>) {
        self.oldest = None;
        if self.batch.is_empty() {
            return;
        }
        let batch = Arc::new(std::mem::take(&mut self.batch));
        loop {
            match self.context.log.append_at(Arc::clone(&batch), position) {
                Ok(_) => return,
                Err(AppendError::Backpressure { .. }) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", self.origin);
                    std::process::exit(3);
                }
            }
        }
    }
}
