//! CSV and JSON-lines files, memory-mapped and split into line-aligned blocks.
//!
//! Block `k` starts at the first line that begins at or after byte `k · block` of the
//! data (after the CSV header), so every worker finds the same boundaries on its own and
//! reads only its blocks. Lines are parsed in place by a [`LineParser`]; quoted fields
//! must not contain newlines.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::lines::{FileFormat, LineParser};
use super::{Malformed, RecordSink, SourceError};
use crate::record::Schema;

/// The most the kernel maps about a faulting page of a file mapping (Linux's default
/// `fault_around_bytes`).
const FAULT_AROUND: usize = 64 << 10;

/// One worker's share of a file.
pub struct FileReader {
    path: String,
    map: Option<Mmap>,
    /// Byte where data lines start (after the CSV header).
    data_start: usize,
    parser: LineParser,
    next: u64,
    blocks: u64,
    /// A known (byte, line number) pair, for numbering malformed lines.
    lines_before: (usize, u64),
    peers: u64,
    /// Nominal block size in bytes.
    block: usize,
}

impl FileReader {
    /// Opens worker `index`'s share (of `peers`) of the file at `path`, cut into blocks of
    /// about `block` bytes.
    pub fn open(
        path: &Path,
        block: usize,
        format: FileFormat,
        schema: &Schema,
        index: usize,
        peers: usize,
    ) -> Result<Self, SourceError> {
        let shown = path.display().to_string();
        let io = |e: std::io::Error| SourceError::Io {
            path: shown.clone(),
            message: e.to_string(),
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // SAFETY: the file is only read; a file truncated while mapped is the user's
        // contract to avoid (documented), as with every reader of memory-mapped input.
        let map = if len == 0 {
            None
        } else {
            let map = unsafe { Mmap::map(&file) }.map_err(io)?;
            let _ = map.advise(memmap2::Advice::Sequential);
            Some(map)
        };
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let mut parser = LineParser::new(format, schema);
        let mut data_start = 0;
        if format == FileFormat::Csv && !bytes.is_empty() {
            let end = memchr::memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1);
            parser.header(&bytes[..end], &format!("{shown}: line 1"))?;
            data_start = end;
        }
        let data = bytes.len().saturating_sub(data_start);
        // A block larger than the data is the whole data (and keeps offsets in range).
        let block = block.clamp(1, data.max(1));
        let blocks = data.div_ceil(block) as u64;
        Ok(FileReader {
            path: shown,
            map,
            data_start,
            parser,
            next: index as u64,
            blocks,
            lines_before: (0, 1),
            peers: peers as u64,
            block,
        })
    }

    /// The next block this worker reads, or `None` when done.
    pub fn next_batch(&self) -> Option<u64> {
        (self.next < self.blocks).then_some(self.next)
    }

    /// Skips to the first of this worker's blocks at or after `batch`.
    pub fn seek(&mut self, batch: u64) {
        while self.next < batch {
            self.next += self.peers;
        }
    }

    /// The byte where block `k` starts: the first line start at or after its nominal start.
    fn block_start(&self, bytes: &[u8], k: u64) -> usize {
        let data_start = self.data_start;
        if k == 0 {
            return data_start;
        }
        let nominal = data_start + k as usize * self.block;
        if nominal >= bytes.len() {
            return bytes.len();
        }
        // A line starts at `nominal` exactly when the byte before it is a newline.
        match memchr::memchr(b'\n', &bytes[nominal - 1..]) {
            Some(i) => nominal + i,
            None => bytes.len(),
        }
    }

    /// Reads the next block into `sink`.
    pub fn read_batch<S: RecordSink>(&mut self, sink: &mut S) -> Result<(), SourceError> {
        let Some(k) = self.next_batch() else {
            return Ok(());
        };
        self.next += self.peers;
        let Some(map) = self.map.take() else {
            return Ok(());
        };
        let result = self.read_block(&map, k, sink);
        // The block's pages are not needed again: drop them from this worker's mapping
        // (they stay in the page cache), so memory does not grow with the file. Finding
        // the block's bounds touched a page on each side of it, and the kernel's
        // fault-around mapped up to `FAULT_AROUND` bytes about each touched page: pages of
        // the neighbouring blocks, which other workers read through their own mappings.
        // They are dropped too (this mapping only), or they would stay for the whole run.
        let (start, end) = (self.block_start(&map, k), self.block_start(&map, k + 1));
        let page = 4096;
        let from = start.saturating_sub(FAULT_AROUND + page) / page * page;
        let to = (end + FAULT_AROUND + page).min(map.len());
        if to > from {
            // SAFETY: the mapping is private and read-only; dropped pages of a file
            // mapping are read back from the file if touched again.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
            };
        }
        self.map = Some(map);
        result
    }

    fn read_block<S: RecordSink>(
        &mut self,
        bytes: &[u8],
        k: u64,
        sink: &mut S,
    ) -> Result<(), SourceError> {
        let start = self.block_start(bytes, k);
        let end = self.block_start(bytes, k + 1);
        let mut pos = start;
        // The block's own bytes: the fast path reads no further.
        let block = &bytes[..end];
        while pos < end {
            if let Some((record, next)) = self.parser.parse_csv_at(block, pos) {
                sink.record(record);
                pos = next;
                continue;
            }
            let stop = memchr::memchr(b'\n', &bytes[pos..end]).map_or(end, |i| pos + i);
            match self.parser.parse(&bytes[pos..stop]) {
                Ok(Some(record)) => sink.record(record),
                Ok(None) => {}
                Err((field, message)) => {
                    let line = self.line_number(bytes, pos);
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
        Ok(())
    }
}

impl FileReader {
    /// The 1-based line number of the line starting at byte `pos`, counted from the last
    /// position asked for (errors come in increasing order within a worker), so many
    /// malformed lines cost one pass over the file, not one each.
    fn line_number(&mut self, bytes: &[u8], pos: usize) -> u64 {
        let (from, mut line) = match self.lines_before {
            (at, count) if at <= pos => (at, count),
            _ => (0, 1),
        };
        line += memchr::memchr_iter(b'\n', &bytes[from..pos]).count() as u64;
        self.lines_before = (pos, line);
        line
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

    /// Every record is read once, in blocks of any size (a byte, a line, the largest
    /// size there is), by one worker or several.
    #[test]
    fn any_block_size_reads_every_line_once() {
        let dir = std::env::temp_dir().join(format!("tributary-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.csv");
        let mut text = String::from("ts,key,x0,y\n");
        for i in 0..100 {
            text.push_str(&format!("{i},k{},{}.5,{}\n", i % 3, i, i * 2));
        }
        std::fs::write(&path, text).unwrap();
        let schema = Schema {
            time: "ts".into(),
            key: "key".into(),
            features: vec!["x0".into()],
            target: "y".into(),
        };
        for block in [1, 7, 4096, usize::MAX] {
            for peers in [1, 3] {
                let mut count = Count(0);
                for index in 0..peers {
                    let mut reader =
                        FileReader::open(&path, block, FileFormat::Csv, &schema, index, peers)
                            .unwrap();
                    while reader.next_batch().is_some() {
                        reader.read_batch(&mut count).unwrap();
                    }
                }
                assert_eq!(count.0, 100, "block {block}, {peers} workers");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
