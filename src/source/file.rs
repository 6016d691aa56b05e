//! CSV and JSON-lines files, read in line-aligned blocks.
//!
//! Block `k` starts at the first line that begins at or after byte `k · block` of the
//! data (after the CSV header), so every worker finds the same boundaries on its own and
//! reads only its blocks. A block is read with positioned reads (`pread`) into the
//! worker's own buffer, a piece at a time, so it is parsed while it is in the cache, and
//! memory does not grow with the file. (Mapping the file instead cost page faults, and
//! dropping the pages read cost every other worker's core a TLB flush.) Lines are parsed
//! in place by a [`LineParser`]; quoted fields must not contain newlines.
//!
//! A line longer than `--max-line-bytes` (not counting its newline) is malformed, as it
//! is for every other source: it is not held whole (the reader holds at most the limit
//! and one piece of it), it is skipped to its newline and reported under `--on-error`
//! with its line number, its length and the flag; the lines after it are read. A CSV
//! header that long is an error that stops the run.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::lines::{FileFormat, LineParser};
use super::sink::{Malformed, RecordSink, SourceError, line_too_long};
use crate::record::Schema;

/// Bytes read from the file at a time.
const PIECE: usize = 512 << 10;

/// Lines that start this close to the end of what was read wait for the next piece,
/// so the CSV fast path sees the bytes after them (it reads ahead of a line's start).
const LOOKAHEAD: usize = 256;

/// Bytes kept before the data in the buffer: the CSV fast path reads a field as the 16
/// bytes that end with it, so the first field of a piece needs 16 bytes before it.
const SLACK: usize = 16;

/// One worker's share of a file.
pub struct FileReader {
    path: String,
    file: File,
    len: u64,
    /// Byte where data lines start (after the CSV header).
    data_start: u64,
    parser: LineParser,
    next: u64,
    blocks: u64,
    /// A known (byte, line number) pair, for numbering malformed lines.
    lines_before: (u64, u64),
    peers: u64,
    /// Nominal block size in bytes.
    block: u64,
    /// Longest line taken, in bytes without its newline (`--max-line-bytes`).
    max_line: usize,
    /// Read buffer: `SLACK` bytes, then data.
    buf: Vec<u8>,
}

impl FileReader {
    /// Opens worker `index`'s share (of `peers`) of the file at `path`, cut into blocks of
    /// about `block` bytes; a line longer than `max_line` bytes (without its newline) is
    /// malformed, and a CSV header that long an error.
    pub fn open(
        path: &Path,
        block: usize,
        format: FileFormat,
        schema: &Schema,
        index: usize,
        peers: usize,
        max_line: usize,
    ) -> Result<Self, SourceError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| io_error(&shown, e))?;
        let len = file.metadata().map_err(|e| io_error(&shown, e))?.len();
        let mut reader = FileReader {
            path: shown,
            file,
            len,
            data_start: 0,
            parser: LineParser::new(format, schema),
            next: index as u64,
            blocks: 0,
            lines_before: (0, 1),
            peers: peers as u64,
            block: 1,
            max_line,
            buf: Vec::new(),
        };
        if format == FileFormat::Csv && len > 0 {
            let end = reader.line_end(0)?;
            // Its length without the newline, checked before it is read.
            let header_len = end - u64::from(reader.ends_line(end)?);
            if header_len > max_line as u64 {
                return Err(SourceError::Schema(format!(
                    "{}: line 1 (header): {}",
                    reader.path,
                    line_too_long(header_len, max_line)
                )));
            }
            let mut header = vec![0; end as usize];
            reader.read_at(&mut header, 0)?;
            let origin = format!("{}: line 1", reader.path);
            reader.parser.header(&header, &origin)?;
            reader.data_start = end;
        }
        let data = len - reader.data_start;
        // A block larger than the data is the whole data (and keeps offsets in range).
        reader.block = (block as u64).clamp(1, data.max(1));
        reader.blocks = data.div_ceil(reader.block);
        Ok(reader)
    }

    /// The next block this worker reads, or `None` when done.
    pub fn next_batch(&self) -> Option<u64> {
        (self.next < self.blocks).then_some(self.next)
    }

    /// The file's name, as errors give it.
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// The block this worker reads next, its number of workers (the step from one of its
    /// blocks to the next) and the file's number of blocks.
    pub(super) fn share(&self) -> (u64, u64, u64) {
        (self.next, self.peers, self.blocks)
    }

    /// Makes `next`, one of this worker's blocks, the next read (even one read already:
    /// [`ReadAhead`](super::ahead::ReadAhead) stops a reader that went ahead of its worker).
    pub(super) fn set_next(&mut self, next: u64) {
        self.next = next;
    }

    /// Skips to the first of this worker's blocks at or after `batch`.
    pub fn seek(&mut self, batch: u64) {
        while self.next < batch {
            self.next += self.peers;
        }
    }

    /// Fills `buf` from byte `at` of the file.
    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<(), SourceError> {
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => SourceError::Io {
                    path: self.path.clone(),
                    message: format!(
                        "the file is shorter than when it was opened ({} bytes; bytes {}..{} \
                     are gone): it was truncated or rewritten while being read",
                        self.len,
                        at,
                        at + buf.len() as u64
                    ),
                },
                _ => io_error(&self.path, e),
            })
    }

    /// Reads bytes `from..to` of the file a chunk at a time, handing each chunk and its
    /// offset to `visit` until it returns a value. Chunks start at 4 KiB (a line end is
    /// usually near) and grow to 64 KiB.
    fn scan<T>(
        &self,
        mut from: u64,
        to: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Option<T>,
    ) -> Result<Option<T>, SourceError> {
        let mut chunk = vec![0; 4 << 10];
        while from < to {
            let n = chunk.len().min((to - from) as usize);
            self.read_at(&mut chunk[..n], from)?;
            if let Some(found) = visit(from, &chunk[..n]) {
                return Ok(Some(found));
            }
            from += n as u64;
            if chunk.len() < 64 << 10 {
                chunk.resize(chunk.len() * 2, 0);
            }
        }
        Ok(None)
    }

    /// The byte after the first newline at or after `at` (the file's length if none).
    fn line_end(&self, at: u64) -> Result<u64, SourceError> {
        let found = self.scan(at, self.len, |from, chunk| {
            memchr::memchr(b'\n', chunk).map(|i| from + i as u64 + 1)
        })?;
        Ok(found.unwrap_or(self.len))
    }

    /// Whether the byte before `end` (a line's end, from [`line_end`](Self::line_end)) is
    /// its newline (the file's last line may have none).
    fn ends_line(&self, end: u64) -> Result<bool, SourceError> {
        if end == 0 {
            return Ok(false);
        }
        let mut last = [0];
        self.read_at(&mut last, end - 1)?;
        Ok(last == [b'\n'])
    }

    /// The byte where block `k` starts: the first line start at or after its nominal start.
    fn block_start(&self, k: u64) -> Result<u64, SourceError> {
        if k == 0 {
            return Ok(self.data_start);
        }
        let nominal = self.data_start + k * self.block;
        if nominal >= self.len {
            return Ok(self.len);
        }
        // A line starts at `nominal` exactly when the byte before it is a newline.
        self.line_end(nominal - 1)
    }

    /// Reads the next block into `sink`.
    pub fn read_batch<S: RecordSink>(&mut self, sink: &mut S) -> Result<(), SourceError> {
        let Some(k) = self.next_batch() else {
            return Ok(());
        };
        self.next += self.peers;
        if crate::failpoint::active() {
            // Fails (`eio`) or panics where the block is read: on the worker, or on the
            // thread reading ahead of it.
            crate::failpoint::io_at("file.block", &k.to_string())
                .map_err(|e| io_error(&self.path, e))?;
        }
        let (start, end) = (self.block_start(k)?, self.block_start(k + 1)?);
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.read_block(&mut buf, start, end, sink);
        self.buf = buf;
        result
    }

    /// Parses the lines in bytes `start..end` of the file, reading a piece at a time: the
    /// unparsed end of a piece (a part of a line) moves to the front of the buffer and the
    /// next piece is read after it.
    fn read_block<S: RecordSink>(
        &mut self,
        buf: &mut Vec<u8>,
        start: u64,
        end: u64,
        sink: &mut S,
    ) -> Result<(), SourceError> {
        // `buf[SLACK..filled]` holds the file's bytes from `at`; lines from `pos` on are
        // not parsed yet.
        let (mut at, mut filled, mut pos) = (start, SLACK, SLACK);
        if buf.len() < SLACK {
            buf.resize(SLACK, 0);
        }
        loop {
            buf.copy_within(pos..filled, SLACK);
            at += (pos - SLACK) as u64;
            filled -= pos - SLACK;
            pos = SLACK;
            let want = PIECE.min((end - at) as usize - (filled - SLACK));
            if buf.len() < filled + want {
                buf.resize(filled + want, 0);
            }
            self.read_at(
                &mut buf[filled..filled + want],
                at + (filled - SLACK) as u64,
            )?;
            filled += want;
            let last = at + (filled - SLACK) as u64 == end;
            let bytes = &buf[..filled];
            let max = self.max_line;
            while pos < filled {
                if !last && filled - pos < LOOKAHEAD {
                    break;
                }
                let line_start = at + (pos - SLACK) as u64;
                if let Some((record, next)) = self.parser.parse_csv_at(bytes, pos) {
                    // `next` is past the newline; a line that long is refused below.
                    if next - pos - 1 <= max {
                        sink.record(record);
                        pos = next;
                        continue;
                    }
                }
                let stop = match memchr::memchr(b'\n', &bytes[pos..]) {
                    Some(i) => pos + i,
                    None if filled - pos > max => {
                        // Longer than the limit, and its newline not read yet: skip to it
                        // without reading the rest of the line into the buffer.
                        let after = self.skip_line(at + (filled - SLACK) as u64, end)?;
                        let len = after.newline.unwrap_or(end) - line_start;
                        self.refuse(line_start, len, sink)?;
                        // Go on reading after the line: nothing of the buffer is kept.
                        at = after.next;
                        filled = SLACK;
                        pos = SLACK;
                        break;
                    }
                    None if last => filled,
                    None => break, // the rest of the line is in the next piece
                };
                if stop - pos > max {
                    self.refuse(line_start, (stop - pos) as u64, sink)?;
                    pos = stop + 1;
                    continue;
                }
                match self.parser.parse(&bytes[pos..stop]) {
                    Ok(Some(record)) => sink.record(record),
                    Ok(None) => {}
                    Err((field, message)) => {
                        let offset = at + (pos - SLACK) as u64;
                        let line = self.line_number(offset)?;
                        sink.malformed(Malformed {
                            file: self.path.clone(),
                            line,
                            field,
                            message,
                        })?;
                    }
                }
                pos = stop + 1;
            }
            if at + (filled - SLACK) as u64 >= end && pos >= filled {
                return Ok(());
            }
        }
    }

    /// Reports the line starting at byte `start`, `len` bytes long without its newline and
    /// longer than the limit, as malformed.
    fn refuse<S: RecordSink>(
        &mut self,
        start: u64,
        len: u64,
        sink: &mut S,
    ) -> Result<(), SourceError> {
        let line = self.line_number(start)?;
        sink.malformed(Malformed {
            file: self.path.clone(),
            line,
            field: None,
            message: line_too_long(len, self.max_line),
        })
    }

    /// Finds the end of a line whose bytes before `from` hold no newline, reading the file
    /// a chunk at a time (nothing is kept), up to `end` (the block's end, a line start).
    fn skip_line(&self, from: u64, end: u64) -> Result<LineEnd, SourceError> {
        let newline = self.scan(from, end, |at, chunk| {
            memchr::memchr(b'\n', chunk).map(|i| at + i as u64)
        })?;
        Ok(LineEnd {
            newline,
            next: newline.map_or(end, |n| n + 1),
        })
    }

    /// The 1-based line number of the line starting at byte `offset`, counted from the
    /// last position asked for (errors come in increasing order within a worker), so many
    /// malformed lines cost one pass over the file, not one each.
    fn line_number(&mut self, offset: u64) -> Result<u64, SourceError> {
        let (from, mut line) = match self.lines_before {
            (at, count) if at <= offset => (at, count),
            _ => (0, 1),
        };
        self.scan(from, offset, |_, chunk| {
            line += memchr::memchr_iter(b'\n', chunk).count() as u64;
            None::<()>
        })?;
        self.lines_before = (offset, line);
        Ok(line)
    }
}

/// Where a skipped line ends: its newline (`None`: the file ends without one), and where
/// the next line starts.
struct LineEnd {
    newline: Option<u64>,
    next: u64,
}

fn io_error(path: &str, e: std::io::Error) -> SourceError {
    SourceError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordRef;

    struct Count(u64);

    impl RecordSink for Count {
        fn record(&mut self, _: RecordRef<'_>) {
            self.0 += 1;
        }
        fn malformed(&mut self, error: Malformed) -> Result<(), SourceError> {
            panic!("{error}")
        }
    }

    /// The schema of the test files: `ts`, `key`, one feature `x0`, target `y`.
    fn schema() -> Schema {
        Schema {
            time: "ts".into(),
            key: "key".into(),
            features: vec!["x0".into()],
            target: "y".into(),
        }
    }

    /// A fresh directory for a test, and the path of its `in.csv`.
    fn temp_file(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.csv");
        (dir, path)
    }

    /// Worker `index`'s share (of `peers`) of the file read whole into `sink`, in blocks of
    /// about `block` bytes, with lines of at most `max` bytes; the reader is returned for
    /// what a test checks after.
    fn read_share<S: RecordSink>(
        path: &Path,
        (block, format, max): (usize, FileFormat, usize),
        (index, peers): (usize, usize),
        sink: &mut S,
    ) -> FileReader {
        let mut reader = FileReader::open(path, block, format, &schema(), index, peers, max)
            .expect("the file opens");
        while reader.next_batch().is_some() {
            reader.read_batch(sink).expect("the share reads");
        }
        reader
    }

    /// Every record is read once, in blocks of any size (a byte, a line, the largest
    /// size there is), by one worker or several.
    #[test]
    fn any_block_size_reads_every_line_once() {
        let (dir, path) = temp_file("tributary-file");
        let mut text = String::from("ts,key,x0,y\n");
        for i in 0..100 {
            text.push_str(&format!("{i},k{},{}.5,{}\n", i % 3, i, i * 2));
        }
        std::fs::write(&path, text).unwrap();
        for block in [1, 7, 4096, usize::MAX] {
            for peers in [1, 3] {
                let mut count = Count(0);
                for index in 0..peers {
                    let how = (block, FileFormat::Csv, 1 << 20);
                    read_share(&path, how, (index, peers), &mut count);
                }
                assert_eq!(count.0, 100, "block {block}, {peers} workers");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Records and malformed lines (their numbers), as read.
    #[derive(Default)]
    struct Collect {
        records: Vec<(i64, String, Vec<f64>)>,
        malformed: Vec<u64>,
    }

    impl RecordSink for Collect {
        fn record(&mut self, r: RecordRef<'_>) {
            self.records.push((r.time, r.key.to_owned(), r.z.to_vec()));
        }
        fn malformed(&mut self, error: Malformed) -> Result<(), SourceError> {
            self.malformed.push(error.line);
            Ok(())
        }
    }

    /// A file of several pieces, with lines across the pieces' ends, a line longer than a
    /// piece, short and long numbers (fast path and not), blank lines, malformed lines and
    /// no newline at the end: every record is read once with its values, and every
    /// malformed line is reported with its number, by one worker or three.
    #[test]
    fn pieces_lose_and_repeat_nothing() {
        let (dir, path) = temp_file("tributary-pieces");
        let mut text = String::from("ts,key,note,x0,y\n");
        let (mut expected, mut bad) = (Vec::new(), Vec::new());
        let mut line = 1;
        for i in 0..60_000i64 {
            line += 1;
            let x = match i % 4 {
                0 => format!("{}.25", i),
                1 => format!("-0.{:09}", i),
                2 => format!("{}", (i as f64) / 7.0), // 17 digits: the general parser
                _ => format!("{i}e-3"),
            };
            let note = match i {
                12_345 => "n".repeat(PIECE + 1000),
                _ => "n".repeat((i % 40) as usize),
            };
            if i % 9_999 == 0 {
                text.push_str(&format!("{i},k,{note},oops,1\n"));
                bad.push(line);
                continue;
            }
            if i % 7_777 == 0 {
                text.push('\n');
                line += 1;
            }
            text.push_str(&format!("{i},k{},{note},{x},{}\n", i % 5, i % 11));
            expected.push((
                i,
                format!("k{}", i % 5),
                vec![x.parse::<f64>().unwrap(), (i % 11) as f64],
            ));
        }
        text.pop(); // the last line has no newline
        std::fs::write(&path, &text).unwrap();
        for (block, peers) in [(4 << 20, 1), (300_000, 3), (usize::MAX, 1)] {
            let mut got = Collect::default();
            for index in 0..peers {
                read_share(
                    &path,
                    (block, FileFormat::Csv, 1 << 20),
                    (index, peers),
                    &mut got,
                );
            }
            got.records.sort_by_key(|r| r.0);
            got.malformed.sort();
            assert_eq!(
                got.records.len(),
                expected.len(),
                "block {block}, {peers} workers"
            );
            assert!(got.records == expected, "block {block}, {peers} workers");
            assert_eq!(got.malformed, bad, "block {block}, {peers} workers");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every line longer than the limit (without its newline) is malformed, named by its
    /// number and length, whichever path would parse it (the CSV fast path, the general
    /// one, JSON lines), in blocks of any size and by one worker or three; a line of
    /// exactly the limit is taken; a line of many pieces is never held whole; the lines
    /// after each are read. Fails on the old code, which took every line.
    #[test]
    fn lines_over_the_limit_are_malformed_and_not_held() {
        let (dir, path) = temp_file("tributary-limit");
        for format in [FileFormat::Csv, FileFormat::Jsonl] {
            // Short lines (the fast path takes them) against a limit of 12 bytes, and a
            // huge one against the same limit.
            let line = |t: i64, key: &str| match format {
                FileFormat::Csv => format!("{t},{key},1.5,2"),
                FileFormat::Jsonl => format!(r#"{{"ts":{t},"key":"{key}","x0":1.5,"y":2}}"#),
            };
            let max = line(0, "k").len() + 2;
            let mut text = match format {
                FileFormat::Csv => String::from("ts,key,x0,y\n"),
                FileFormat::Jsonl => String::new(),
            };
            let header = usize::from(format == FileFormat::Csv);
            let (mut taken, mut refused) = (Vec::new(), Vec::new());
            for i in 0..3000i64 {
                let number = i as u64 + 1 + header as u64;
                let (key, over) = match i % 500 {
                    7 => ("k123", true),    // one byte over
                    8 => ("k12", false),    // exactly the limit
                    9 => ("k1", false),     // one byte under it
                    250 => ("k1234", true), // over
                    _ => ("k", false),
                };
                let key = if i == 1234 {
                    "h".repeat(PIECE + PIECE / 4 + 17)
                } else {
                    key.to_owned()
                };
                let text_line = line(i % 10, &key);
                if i == 1234 || over {
                    refused.push((number, text_line.len() as u64));
                } else {
                    assert!(text_line.len() <= max);
                    if i % 500 == 8 {
                        assert_eq!(text_line.len(), max);
                    }
                    taken.push(i % 10);
                }
                text.push_str(&text_line);
                text.push('\n');
            }
            // A last line over the limit, without its newline.
            text.push_str(&line(1, "k123"));
            refused.push((3001 + header as u64, line(1, "k123").len() as u64));
            std::fs::write(&path, &text).unwrap();
            for (block, peers) in [(4 << 20, 1), (4096, 3), (usize::MAX, 2), (100_000, 2)] {
                let mut got = Limited::default();
                for index in 0..peers {
                    let reader = read_share(&path, (block, format, max), (index, peers), &mut got);
                    assert!(
                        reader.buf.capacity() < 2 * PIECE,
                        "{} bytes held",
                        reader.buf.capacity()
                    );
                }
                got.taken.sort();
                got.refused.sort();
                let mut want = taken.clone();
                want.sort();
                let what = format!("{format:?}, block {block}, {peers} workers");
                assert!(
                    got.taken == want,
                    "{what}: {} records taken, {} wanted",
                    got.taken.len(),
                    want.len()
                );
                assert_eq!(got.refused, refused, "{what}");
                for m in &got.messages {
                    assert!(
                        m.contains("in.csv: line ")
                            && m.contains(&format!("longer than the limit of {max} bytes"))
                            && m.contains("(--max-line-bytes)"),
                        "{m}"
                    );
                }
            }
        }
        // A header over the limit stops the source, before it is read.
        std::fs::write(&path, "ts,key,x0,y\n1,k,1,2\n").unwrap();
        let e = FileReader::open(&path, 4096, FileFormat::Csv, &schema(), 0, 1, 10)
            .err()
            .expect("an error")
            .to_string();
        assert!(
            e.contains("line 1 (header): 11 bytes, longer than the limit of 10 bytes"),
            "{e}"
        );
        assert!(FileReader::open(&path, 4096, FileFormat::Csv, &schema(), 0, 1, 11).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Times of the records taken; (line, length) of the lines refused as too long, and
    /// their messages.
    #[derive(Default)]
    struct Limited {
        taken: Vec<i64>,
        refused: Vec<(u64, u64)>,
        messages: Vec<String>,
    }

    impl RecordSink for Limited {
        fn record(&mut self, r: RecordRef<'_>) {
            self.taken.push(r.time);
        }
        fn malformed(&mut self, error: Malformed) -> Result<(), SourceError> {
            let len = error.message.split(' ').next().unwrap().parse().unwrap();
            self.refused.push((error.line, len));
            self.messages.push(error.to_string());
            Ok(())
        }
    }

    /// A file cut short while it is read is an error naming it, not records lost quietly.
    #[test]
    fn a_file_truncated_while_read_is_an_error() {
        let (dir, path) = temp_file("tributary-cut");
        let mut text = String::from("ts,key,x0,y\n");
        for i in 0..1000 {
            text.push_str(&format!("{i},k,{i}.5,1\n"));
        }
        std::fs::write(&path, &text).unwrap();
        let schema = schema();
        let mut reader =
            FileReader::open(&path, 4096, FileFormat::Csv, &schema, 0, 1, 1 << 20).unwrap();
        reader.read_batch(&mut Count(0)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(5000)
            .unwrap();
        let error = (0..3)
            .find_map(|_| reader.read_batch(&mut Count(0)).err())
            .expect("an error");
        let message = error.to_string();
        assert!(
            message.contains("in.csv") && message.contains("truncated"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
