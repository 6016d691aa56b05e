//! Lines into the ingest log: what the TCP source and a followed file share.
//!
//! A [`Feed`] parses lines as they arrive (the CSV header first), counts and reports
//! malformed ones under the run's [`OnError`] policy, and gathers records into a
//! [`RecordBatch`] that is appended to the [`IngestLog`] when it holds [`BATCH_RECORDS`]
//! records or its oldest record has waited [`BATCH_WAIT`]. While the dataflow is behind,
//! an append waits, so the reader stops reading and the sender is held back.
//!
//! Lines are at most [`FeedContext::max_line`] bytes (`--max-line-bytes`): the readers
//! never hold more of a line than that, and give a longer one to [`Feed::too_long`], which
//! counts and reports it as malformed like any other bad line. Text quoted from the input
//! in a message is cut (see [`echo`](super::lines::echo)).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::lines::{FileFormat, LineParser, shorten};
use super::log::{AppendError, IngestLog, RecordBatch};
use super::sink::{Malformed, REPORT_MALFORMED, line_too_long};
use crate::checkpoint::{EXIT_WRITE_FAILED, SourcePosition};
use crate::metrics::Metrics;
use crate::record::Schema;
use crate::types::{EXIT_SOURCE_OR_OUTPUT, OnError, OnFatal, fatal};

/// Largest batch appended to the log at once.
pub const BATCH_RECORDS: usize = 8192;

/// Longest a received record waits before its batch is appended.
pub const BATCH_WAIT: Duration = Duration::from_millis(20);

/// Default longest line, in bytes (`--max-line-bytes`).
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

/// What a feed needs from the run.
#[derive(Clone)]
pub struct FeedContext {
    /// Field names.
    pub schema: Schema,
    /// Where batches go.
    pub log: Arc<IngestLog>,
    /// Counters (malformed lines).
    pub metrics: Arc<Metrics>,
    /// Malformed-line policy: `fail` stops the run with the line's error, through
    /// `on_fatal` (or only the feed, see [`Feed::close_on_fail`]).
    pub on_error: OnError,
    /// The run's fatal-error hook ([`crate::dataflow::RunContext::on_fatal`]): a malformed
    /// line under `--on-error fail`, a batch the log cannot keep.
    pub on_fatal: OnFatal,
    /// Longest line in bytes (`--max-line-bytes`); a longer one is malformed.
    pub max_line: usize,
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
    /// Under `--on-error fail`, a malformed line ends this feed (an error from
    /// [`line`](Self::line)) instead of the process.
    close_on_fail: bool,
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
            close_on_fail: false,
        }
    }

    /// Makes a malformed line under `--on-error fail` end this feed only: [`line`](Self::line)
    /// and [`too_long`](Self::too_long) return the error, and the reader closes its stream
    /// (a connection of a listening TCP source, which any client can open).
    pub fn close_on_fail(mut self) -> Self {
        self.close_on_fail = true;
        self
    }

    /// Longest line accepted, in bytes.
    pub fn max_line(&self) -> usize {
        self.context.max_line
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
            .map_err(|e| shorten(&e.to_string()))
    }

    /// The next line, without its newline. Blank lines before a CSV header are skipped;
    /// an unusable header is an error that ends the feed, and so is a malformed line under
    /// `--on-error fail` when the feed [closes on fail](Self::close_on_fail).
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
                Ok(())
            }
            Ok(None) => Ok(()),
            Err((field, message)) => self.malformed(field, message),
        }
    }

    /// The next line, `len` bytes long without its newline, which is longer than
    /// [`max_line`](Self::max_line) and was dropped unread: a malformed line (a header line
    /// that long ends the feed).
    pub fn too_long(&mut self, len: u64) -> Result<(), String> {
        self.line += 1;
        let max = self.context.max_line;
        if self.parser.needs_header() {
            return Err(format!(
                "{}: line {} (header): {}",
                self.origin,
                self.line,
                line_too_long(len, max)
            ));
        }
        self.malformed(None, line_too_long(len, max))
    }

    /// Counts and reports a malformed line under the run's policy.
    fn malformed(&mut self, field: Option<String>, message: String) -> Result<(), String> {
        let error = Malformed {
            file: self.origin.clone(),
            line: self.line,
            field,
            message: shorten(&message),
        };
        self.context.metrics.malformed.fetch_add(1, Relaxed);
        if self.context.on_error == OnError::Fail {
            if self.close_on_fail {
                return Err(format!("malformed input (--on-error fail): {error}"));
            }
            fatal!(
                self.context.on_fatal,
                EXIT_SOURCE_OR_OUTPUT,
                "malformed input: {error}"
            );
        }
        if self.reported < REPORT_MALFORMED {
            self.reported += 1;
            tracing::warn!("skipping malformed line: {error}");
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
    /// waits while the dataflow is behind. A failed durable write stops the run (through
    /// the context's `on_fatal`, exit code [`EXIT_WRITE_FAILED`]): the records would be
    /// lost otherwise.
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
                    fatal!(
                        self.context.on_fatal,
                        EXIT_WRITE_FAILED,
                        "{}: {e}",
                        self.origin
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::lines::{ECHO_CHARS, echo};

    fn context(on_error: OnError, max_line: usize) -> FeedContext {
        FeedContext {
            schema: Schema::generated(1),
            log: Arc::new(IngestLog::open(None, None, 1_000_000).unwrap()),
            metrics: Arc::new(Metrics::default()),
            on_error,
            max_line,
            on_fatal: |f| panic!("{f}"),
        }
    }

    #[test]
    fn echoed_text_is_cut_with_its_length() {
        assert_eq!(echo(b"abc"), "\"abc\"");
        let long = vec![b'z'; 1 << 20];
        let shown = echo(&long);
        assert!(shown.len() < 2 * ECHO_CHARS, "{shown}");
        assert!(shown.ends_with("…\" (1048576 bytes)"), "{shown}");
        // Multi-byte characters are never cut in the middle.
        let wide = "é".repeat(1000);
        assert!(echo(wide.as_bytes()).ends_with("…\" (2000 bytes)"));
    }

    #[test]
    fn long_lines_and_bad_lines_are_malformed_and_messages_short() {
        let ctx = context(OnError::Skip, 100);
        let mut feed = Feed::new(FileFormat::Csv, "test".into(), 0, &ctx);
        // A header too long ends the feed.
        assert!(feed.too_long(101).unwrap_err().contains("--max-line-bytes"));
        let mut feed = Feed::new(FileFormat::Csv, "test".into(), 0, &ctx);
        feed.line(b"ts,key,x0,y").unwrap();
        feed.too_long(5_000_000).unwrap();
        feed.line(b"1,k,1,2").unwrap();
        let junk = format!("1,k,{},2", "9z".repeat(40_000));
        feed.line(junk.as_bytes()).unwrap();
        assert_eq!(ctx.metrics.malformed.load(Relaxed), 2);
        assert_eq!(feed.line_number(), 4);
        feed.flush(None);
        assert_eq!(ctx.log.stats().appended, 1);
    }

    #[test]
    fn under_fail_a_closing_feed_ends_with_the_error() {
        let ctx = context(OnError::Fail, 100);
        let mut feed = Feed::new(FileFormat::Csv, "conn".into(), 0, &ctx).close_on_fail();
        feed.line(b"ts,key,x0,y").unwrap();
        feed.line(b"1,k,1,2").unwrap();
        let e = feed.line(b"1,k,oops,2").unwrap_err();
        assert!(e.contains("conn: line 3") && e.contains("x0"), "{e}");
        let e = feed.too_long(101).unwrap_err();
        assert!(e.contains("--max-line-bytes"), "{e}");
        feed.flush(None);
        assert_eq!(ctx.log.stats().appended, 1, "the lines before are kept");
    }

    /// Under `--on-error fail`, a feed that does not close hands the run's hook the line's
    /// error with exit code 2, and the hook decides what follows: here it panics, and the
    /// process goes on.
    #[test]
    fn under_fail_the_run_hook_gets_the_error_and_its_exit_code() {
        let mut ctx = context(OnError::Fail, 100);
        ctx.on_fatal = |f| std::panic::panic_any(f);
        let mut feed = Feed::new(FileFormat::Csv, "file.csv".into(), 0, &ctx);
        feed.line(b"ts,key,x0,y").unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = feed.line(b"1,k,oops,2");
        }));
        let fatal = caught
            .unwrap_err()
            .downcast::<crate::types::Fatal>()
            .unwrap();
        assert_eq!(fatal.code, EXIT_SOURCE_OR_OUTPUT);
        assert!(
            fatal
                .message
                .starts_with("malformed input: file.csv: line 2")
                && fatal.message.contains("x0"),
            "{}",
            fatal.message
        );
    }
}
