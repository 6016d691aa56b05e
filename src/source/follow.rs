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
//!
//! Rotation by rename (`,rotate`): when the path names another file than the one open,
//! and the open file has not grown for [`ROTATE_GRACE`] since that was first seen, the open
//! file is read to its end (a last line without its newline counts as a line: the file is
//! finished), and the new file is read from its start. The position names its file by
//! inode as well: a restart whose file is no longer at the path looks for it by inode in
//! the path's directory, reads it to its end, then goes on with the file at the path. A
//! rotation by copy and truncate is still an error: the same file shrank.

use std::fs::File;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::feed::{Feed, FeedContext};
use super::lines::FileFormat;
use super::log::IngestLog;
use crate::checkpoint::SourcePosition;
use crate::types::fatal;

/// How often the end of the file is looked at for new lines.
pub const POLL: Duration = Duration::from_millis(10);

/// With `,rotate`: how long the file read must have been quiet, after the path was
/// first seen naming another file, before reading moves on to that file (the writer may
/// still be finishing its last lines in the renamed file).
pub const ROTATE_GRACE: Duration = Duration::from_secs(1);

/// At most this many entries of the path's directory are looked at for a rotated file
/// on restart.
const SCAN_ENTRIES: usize = 100_000;

/// Bytes read at a time.
const CHUNK: usize = 256 << 10;

/// At most this many of the file's first bytes, and of the bytes before the position,
/// identify it.
const HEAD: usize = 4 << 10;

/// The file being followed.
struct Followed {
    /// The path, as given.
    name: PathBuf,
    /// The path of the file open (the path as given, or where it was rotated to), for
    /// messages.
    path: String,
    file: File,
    format: FileFormat,
    /// `,rotate`: a file renamed away is read to its end, then the one at the path.
    rotate: bool,
    /// When the path was first seen naming another file than the one open (`,rotate`).
    renamed: Option<Instant>,
    /// When the open file last grew.
    grew: Instant,
    /// The position after the last line read.
    position: SourcePosition,
    /// The position last written to the store.
    saved: SourcePosition,
    /// The file's first bytes (up to [`HEAD`]), as read.
    head: Vec<u8>,
}

/// Exit code of a run whose followed file fails while it is followed (truncated, rewritten
/// or rotated away without `,rotate`, unreadable): docs/serving.md.
pub const EXIT_FOLLOW_FAILED: i32 = 3;

/// Opens `path` and checks it against `resume` (the position stored with the newest
/// batch of the log, when restarting), then follows it on a new thread. Errors here
/// (missing file, another file than the checkpoint's) stop the run before it starts;
/// errors while following are logged and handed to the context's `on_fatal` (exit code
/// [`EXIT_FOLLOW_FAILED`]).
/// With `rotate`, a restart whose file was renamed away finds it by inode in the path's
/// directory and reads it to its end first.
pub fn start(
    path: &Path,
    format: FileFormat,
    rotate: bool,
    resume: Option<SourcePosition>,
    context: FeedContext,
) -> Result<(), String> {
    let shown = path.display().to_string();
    let open = |file: &Path| Followed::open(path, file, format, rotate, resume);
    let mut followed = match resume {
        // With `,rotate`, the file the checkpoint was reading may have been renamed within
        // the path's directory: it is the one with its inode and the bytes it read (an
        // inode number can be reused by another file).
        Some(p) if rotate && p.ino != 0 && !same_file(path, p.ino) => {
            let moved = renamed_within(path, p.ino)
                .into_iter()
                .find_map(|file| open(&file).ok());
            match moved {
                Some(followed) => followed,
                None => open(path).map_err(|e| format!("{e}; {}", gone(path, p.ino)))?,
            }
        }
        _ => open(path)?,
    };
    if followed.path != shown {
        tracing::info!(
            "{shown}: the checkpoint was reading {} (rotated away): reading it to its end \
             first",
            followed.path
        );
    }
    std::thread::Builder::new()
        .name("follow".into())
        .spawn(move || {
            if let Err(e) = followed.follow(&context) {
                fatal!(context.on_fatal, EXIT_FOLLOW_FAILED, "{e}");
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The position at the start of the file with inode `ino`.
fn start_of(ino: u64) -> SourcePosition {
    let empty = crc32fast::hash(&[]);
    SourcePosition {
        offset: 0,
        line: 0,
        head_len: 0,
        head_crc: empty,
        tail_len: 0,
        tail_crc: empty,
        ino,
    }
}

/// Whether `path` names the file with inode `ino`.
fn same_file(path: &Path, ino: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.ino() == ino)
}

/// The directory `path` is in.
fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The regular files of `path`'s directory with inode `ino` (where logrotate renames a
/// file to), among its first [`SCAN_ENTRIES`] entries.
fn renamed_within(path: &Path, ino: u64) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(directory(path)) else {
        return Vec::new();
    };
    entries
        .take(SCAN_ENTRIES)
        .flatten()
        .filter(|e| e.ino() == ino && e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect()
}

/// Why a restart cannot read on: the file it was reading is gone.
fn gone(path: &Path, ino: u64) -> String {
    format!(
        "the file the checkpoint was reading (inode {ino}) is neither {} nor in {} any more: \
         rotated away and removed or compressed? its lines after the stored position cannot \
         be read",
        path.display(),
        directory(path).display()
    )
}

impl Followed {
    /// Opens `file` (the path followed, `name`, or where it was rotated to) and checks it
    /// against `resume`.
    fn open(
        name: &Path,
        file: &Path,
        format: FileFormat,
        rotate: bool,
        resume: Option<SourcePosition>,
    ) -> Result<Followed, String> {
        let shown = file.display().to_string();
        let opened = File::open(file).map_err(|e| format!("{shown}: cannot open: {e}"))?;
        let ino = opened
            .metadata()
            .map_err(|e| format!("{shown}: {e}"))?
            .ino();
        let start = resume.unwrap_or(start_of(ino));
        let mut followed = Followed {
            name: name.to_owned(),
            path: shown,
            file: opened,
            format,
            rotate,
            renamed: None,
            grew: Instant::now(),
            position: start,
            saved: start,
            head: Vec::new(),
        };
        followed.check_resume()?;
        // A store written before inodes were kept (or a copy of the file) names this one.
        followed.position.ino = ino;
        followed.saved.ino = ino;
        Ok(followed)
    }

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
    /// file (rotated, unless `,rotate`), or the file is shorter than what was read, or its
    /// first bytes or the byte before the position changed (truncated, rewritten).
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
        // With `,rotate` the path naming another file is a rotation (`rotation_due`).
        if !self.rotate {
            match std::fs::metadata(&self.name) {
                Ok(now) if (now.dev(), now.ino()) == (open.dev(), open.ino()) => {}
                Ok(_) => {
                    return stop(
                        "the path names another file (rotated or replaced; `,rotate` follows \
                         rotation by rename)"
                            .into(),
                    );
                }
                Err(e) => return stop(format!("the path is gone ({e})")),
            }
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

    /// With `,rotate`: whether reading moves on to the file now at the path — it names
    /// another file than the one open, and the open one has been quiet for
    /// [`ROTATE_GRACE`] since that was first seen. (While the path names no file, the open
    /// one is followed on.)
    fn rotation_due(&mut self) -> Result<bool, String> {
        let open = self
            .file
            .metadata()
            .map_err(|e| format!("{}: {e}", self.path))?;
        match std::fs::metadata(&self.name) {
            Ok(now) if (now.dev(), now.ino()) != (open.dev(), open.ino()) => {
                let seen = *self.renamed.get_or_insert_with(Instant::now);
                Ok(seen.elapsed() >= ROTATE_GRACE && self.grew.elapsed() >= ROTATE_GRACE)
            }
            _ => Ok(false),
        }
    }

    /// Moves on from the finished file to the one at the path: `rest` (bytes after the
    /// last newline, `dropped` more of them not held) is the finished file's last line;
    /// the batch is appended with the finished file's end as its position, and the new
    /// file is read from its start by a new feed. Returns false (nothing changed) when
    /// the path names no file after all.
    fn rotate_to_new<'a>(
        &mut self,
        feed: &mut Feed<'a>,
        rest: &mut Vec<u8>,
        dropped: &mut u64,
        context: &'a FeedContext,
    ) -> Result<bool, String> {
        let file = match File::open(&self.name) {
            Ok(file) => file,
            Err(_) => return Ok(false),
        };
        let ino = file
            .metadata()
            .map_err(|e| format!("{}: {e}", self.name.display()))?
            .ino();
        if !rest.is_empty() || *dropped > 0 {
            let len = *dropped + rest.len() as u64;
            if *dropped > 0 || rest.len() > feed.max_line() {
                feed.too_long(len)
            } else {
                feed.line(rest)
            }
            .map_err(|e| format!("{e}; following stops"))?;
            self.position.offset += len;
            self.position.line = feed.line_number();
            rest.clear();
            *dropped = 0;
        }
        let log = &*context.log;
        self.flush(feed, log)?;
        // Where the finished file lives now, for the message (renamed within its directory
        // as a rule).
        let finished = match renamed_within(&self.name, self.position.ino).first() {
            Some(moved) if *moved != self.name => moved.display().to_string(),
            _ => format!("{} (renamed away)", self.path),
        };
        self.path = self.name.display().to_string();
        tracing::info!(
            "{}: rotated: {finished} was read to its end ({} lines); reading the new file \
             from its start",
            self.path,
            self.position.line
        );
        self.file = file;
        self.head.clear();
        self.position = start_of(ino);
        log.save_position(&self.position)
            .map_err(|e| format!("{}: {e}", self.path))?;
        self.saved = self.position;
        self.renamed = None;
        self.grew = Instant::now();
        *feed = Feed::new(self.format, self.path.clone(), 0, context);
        Ok(true)
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
                if self.rotate
                    && self.rotation_due()?
                    && self.rotate_to_new(&mut feed, &mut buf, &mut dropped, context)?
                {
                    continue;
                }
                self.check_unchanged(read_from)?;
                if feed.due() || feed.is_empty() {
                    self.flush(&mut feed, log)?;
                }
                std::thread::sleep(POLL);
                continue;
            }
            self.grew = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_of_a_bare_name_is_the_current_one() {
        assert_eq!(directory(Path::new("app.log")), Path::new("."));
        assert_eq!(
            directory(Path::new("/var/log/app.log")),
            Path::new("/var/log")
        );
    }
}
