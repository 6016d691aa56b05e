//! A followed file (`csv:PATH,follow`, `jsonl:PATH,follow`): lines appended to the file
//! are read as they arrive, like `tail -f`, into the ingest log.
//!
//! One thread of process 0 reads the file from where it stopped and hands complete lines
//! to a [`Feed`], which appends them to the [`IngestLog`] in batches. A last line without
//! its newline waits for it: a writer may be half-way through it. At the end of the file
//! the thread looks for growth every [`POLL`]. The source never ends; the run goes on
//! until the process is stopped. A line longer than `--max-line-bytes` is not held in
//! memory: it is skipped as it is read and counted malformed (under `--on-error fail`
//! the process stops, as for any malformed line of a file).
//!
//! Exactly once: with `--checkpoint`, every batch is written to the store together with
//! the [`SourcePosition`] after its last line, in one synced write (lines that give no
//! record, blank or malformed, move the stored position alone). On restart the log
//! replays its batches after the last commit, and reading goes on from the stored
//! position, so every line is in exactly one batch.
//!
//! The position carries checksums of the file's first bytes and of the bytes before the
//! position: a restart on a file shorter than the position or differing in either is
//! refused. While following, at every look for growth, the file must still be the one
//! opened (the path names the same inode), as long as before, with the same first bytes
//! and a newline before the position; if not (truncated, rewritten, rotated), the process
//! stops with an error, since lines already counted cannot be taken back.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::FileFormat;
use super::feed::{Feed, FeedContext};
use super::log::IngestLog;
use crate::checkpoint::SourcePosition;

/// How often the end of the file is looked at for new lines.
pub const POLL: Duration = Duration::from_millis(10);

/// Bytes read at a time.
const CHUNK: usize = 256 << 10;

/// At most this many of the file's first bytes, and of the bytes before the position,
/// identify it.
const HEAD: usize = 4 << 10;

/// The file being followed.
struct Followed {
    /// The path, as given.
    name: PathBuf,
    /// The path, for messages.
    path: String,
    file: File,
    format: FileFormat,
    /// The position after the last line read.
    position: SourcePosition,
    /// The position last written to the store.
    saved: SourcePosition,
    /// The file's first bytes (up to [`HEAD`]), as read.
    head: Vec<u8>,
}

/// Opens `path` and checks it against `resume` (the position stored with the newest
/// batch of the log, when restarting), then follows it on a new thread. Errors here
/// (missing file, another file than the checkpoint's) stop the run before it starts.
pub fn start(
    path: &Path,
    format: FileFormat,
    resume: Option<SourcePosition>,
    context: FeedContext,
) -> Result<(), String> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| format!("{shown}: cannot open: {e}"))?;
    let empty = crc32fast::hash(&[]);
    let start = resume.unwrap_or(SourcePosition {
        offset: 0,
        line: 0,
        head_len: 0,
        head_crc: empty,
        tail_len: 0,
        tail_crc: empty,
    });
    let mut followed = Followed {
        name: path.to_owned(),
        path: shown,
        file,
        format,
        position: start,
        saved: start,
        head: Vec::new(),
    };
    followed.check_resume()?;
    std::thread::Builder::new()
        .name("follow".into())
        .spawn(move || {
            if let Err(e) = followed.follow(&context) {
                tracing::error!("{e}");
                std::process::exit(3);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

impl Followed {
    /// Refuses a file that is not the one the stored position was taken on: shorter than
    /// the position, or with other first bytes, or other bytes before the position.
    fn check_resume(&mut self) -> Result<(), String> {
        let p = self.position;
        let len = self.len()?;
        if len < p.offset {
            return Err(format!(
                "{}: the file has {len} bytes, but the checkpoint has read {} of it: it was \
                 truncated or replaced (remove the checkpoint directory to start over)",
                self.path, p.offset
            ));
        }
        let mut head = vec![0; HEAD.max(p.head_len as usize)];
        let n = self.read_at(&mut head, 0)?;
        head.truncate(n);
        let head_crc = crc32fast::hash(&head[..(p.head_len as usize).min(n)]);
        let differ = if head_crc != p.head_crc {
            Some(format!("its first {} bytes", p.head_len))
        } else if self.tail_crc(p.offset, p.tail_len)? != p.tail_crc {
            Some(format!("the {} bytes before byte {}", p.tail_len, p.offset))
        } else {
            None
        };
        if let Some(what) = differ {
            return Err(format!(
                "{}: {what} differ from those of the file the checkpoint read: it is another \
                 file (remove the checkpoint directory to start over)",
                self.path
            ));
        }
        head.truncate(HEAD);
        self.head = Vec::with_capacity(HEAD);
        self.note_head(&head, 0);
        Ok(())
    }

    /// CRC-32 of the `len` bytes before byte `offset`.
    fn tail_crc(&self, offset: u64, len: u32) -> Result<u32, String> {
        let mut tail = vec![0; len as usize];
        let n = self.read_at(&mut tail, offset.saturating_sub(len as u64))?;
        Ok(crc32fast::hash(&tail[..n]))
    }

    /// Stops following a file that is not the one read any more: the path names another
    /// file (rotated), or the file is shorter than what was read, or its first bytes or the
    /// byte before the position changed (truncated, rewritten).
    fn check_unchanged(&self, read_to: u64) -> Result<(), String> {
        let stop = |what: String| {
            Err(format!(
                "{}: {what} while followed; its lines are counted and cannot be taken back, \
                 so following stops",
                self.path
            ))
        };
        let open = self
            .file
            .metadata()
            .map_err(|e| format!("{}: {e}", self.path))?;
        match std::fs::metadata(&self.name) {
            Ok(now) if (now.dev(), now.ino()) == (open.dev(), open.ino()) => {}
            Ok(_) => return stop("the path names another file (rotated or replaced)".into()),
            Err(e) => return stop(format!("the path is gone ({e})")),
        }
        if open.len() < read_to {
            return stop(format!(
                "the file shrank from {read_to} to {} bytes (truncated or rewritten)",
                open.len()
            ));
        }
        let mut head = vec![0; self.head.len()];
        let n = self.read_at(&mut head, 0)?;
        let mut before = [b'\n'];
        if self.position.offset > 0 {
            self.read_at(&mut before, self.position.offset - 1)?;
        }
        if head[..n] != self.head[..] || before != [b'\n'] {
            return stop("the file was rewritten (its bytes already read changed)".into());
        }
        Ok(())
    }

    /// Appends the feed's batch to the log with the position after its last line; with no
    /// record waiting, writes a position that moved (past lines that gave no record)
    /// alone, so that a restart does not read those lines again.
    fn flush(&mut self, feed: &mut Feed, log: &IngestLog) -> Result<(), String> {
        if !log.is_durable() {
            feed.flush(None);
            return Ok(());
        }
        if self.position.offset == self.saved.offset {
            return Ok(());
        }
        let len = (self.position.offset.min(HEAD as u64)) as u32;
        self.position.tail_len = len;
        self.position.tail_crc = self.tail_crc(self.position.offset, len)?;
        if feed.is_empty() {
            log.save_position(&self.position)
                .map_err(|e| format!("{}: {e}", self.path))?;
        } else {
            feed.flush(Some(&self.position));
        }
        self.saved = self.position;
        Ok(())
    }

    fn len(&self) -> Result<u64, String> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", self.path))
    }

    /// Fills as much of `buf` as the file has from byte `at`; returns how much.
    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<usize, String> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.file.read_at(&mut buf[filled..], at + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("{}: {e}", self.path)),
            }
        }
        Ok(filled)
    }

    /// The CSV header of a resumed feed: the file's first non-blank line.
    fn header(&self, feed: &mut Feed) -> Result<(), String> {
        let mut at = 0;
        let mut number = 0;
        let mut line = Vec::new();
        let mut chunk = vec![0; 4 << 10];
        while at < self.position.offset {
            let n = self.read_at(&mut chunk, at)?;
            if n == 0 {
                break;
            }
            let mut rest = &chunk[..n];
            while let Some(i) = memchr::memchr(b'\n', rest) {
                line.extend_from_slice(&rest[..i]);
                number += 1;
                if !line.iter().all(u8::is_ascii_whitespace) {
                    return feed.header(&line, number);
                }
                line.clear();
                rest = &rest[i + 1..];
            }
            line.extend_from_slice(rest);
            at += n as u64;
        }
        Err(format!(
            "{}: no header line before byte {}",
            self.path, self.position.offset
        ))
    }

    /// Takes the file's bytes `bytes`, read from byte `at`, into the head if they extend
    /// it, and the position's checksum with them.
    fn note_head(&mut self, bytes: &[u8], at: u64) {
        let have = self.head.len() as u64;
        if have < HEAD as u64 && at <= have && at + bytes.len() as u64 > have {
            let from = (have - at) as usize;
            let take = (HEAD - self.head.len()).min(bytes.len() - from);
            self.head.extend_from_slice(&bytes[from..from + take]);
            self.position.head_len = self.head.len() as u32;
            self.position.head_crc = crc32fast::hash(&self.head);
        }
    }

    /// Reads lines as they are appended, forever; returns only with an error.
    fn follow(&mut self, context: &FeedContext) -> Result<(), String> {
        let mut feed = Feed::new(self.format, self.path.clone(), self.position.line, context);
        if feed.needs_header() && self.position.offset > 0 {
            self.header(&mut feed)?;
        }
        let log = &*context.log;
        // `buf` holds the file's bytes from `position.offset + dropped` on: the start of a
        // line whose newline has not been read yet. A line longer than the feed's
        // `max_line` is not held: its bytes are counted in `dropped` as they are read,
        // and the line is given to `Feed::too_long` when its newline comes.
        let max = feed.max_line();
        let mut buf: Vec<u8> = Vec::new();
        let mut dropped: u64 = 0;
        loop {
            let base = self.position.offset + dropped;
            let filled = buf.len();
            let read_from = base + filled as u64;
            buf.resize(filled + CHUNK, 0);
            let n = self.read_at(&mut buf[filled..], read_from)?;
            buf.truncate(filled + n);
            if n == 0 {
                self.check_unchanged(read_from)?;
                if feed.due() || feed.is_empty() {
                    self.flush(&mut feed, log)?;
                }
                std::thread::sleep(POLL);
                continue;
            }
            self.note_head(&buf[filled..], read_from);
            // The bytes before `filled` hold no newline: they were searched before.
            let (mut line_start, mut search) = (0, filled);
            while let Some(i) = memchr::memchr(b'\n', &buf[search..]) {
                let end = search + i;
                let len = dropped + (end - line_start) as u64;
                if dropped > 0 || end - line_start > max {
                    feed.too_long(len)
                } else {
                    feed.line(&buf[line_start..end])
                }
                .map_err(|e| format!("{e}; following stops"))?;
                dropped = 0;
                line_start = end + 1;
                search = line_start;
                self.position.offset = base + line_start as u64;
                self.position.line = feed.line_number();
                if feed.full() {
                    self.flush(&mut feed, log)?;
                }
            }
            buf.drain(..line_start);
            if dropped > 0 || buf.len() > max {
                dropped += buf.len() as u64;
                buf.clear();
            }
            if feed.due() {
                self.flush(&mut feed, log)?;
            }
        }
    }
}
