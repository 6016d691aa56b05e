//! CSV and JSON-lines files, memory-mapped and split into line-aligned blocks.
//!
//! Block `k` starts at the first line that begins at or after byte `k · BLOCK_BYTES` of the
//! data (after the CSV header), so every worker finds the same boundaries on its own and
//! reads only its blocks. Parsing does not allocate per record: fields are sliced out of
//! the mapped bytes and numbers parsed in place. A quoted CSV line takes a slower path
//! through the `csv` crate; quoted fields must not contain newlines.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::{BLOCK_BYTES, Malformed, RecordSink, SourceError};
use crate::record::{RecordRef, Schema};

/// The line format of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated values with a header row naming the columns.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// What a column or JSON field is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Time,
    Key,
    /// Index into `z = [x, y]`.
    Z(usize),
    Skip,
}

/// One worker's share of a file.
pub struct FileReader {
    path: String,
    format: FileFormat,
    map: Option<Mmap>,
    /// Byte where data lines start (after the CSV header).
    data_start: usize,
    /// CSV: the slot of each column; JSON: unused.
    columns: Vec<Slot>,
    /// Column (CSV) or field (JSON) names, by slot order: time, key, z…
    names: Vec<String>,
    json_slots: HashMap<String, Slot>,
    next: u64,
    blocks: u64,
    /// A known (byte, line number) pair, for numbering malformed lines.
    lines_before: (usize, u64),
    peers: u64,
    // Per-record scratch, reused.
    time: i64,
    z: Vec<f64>,
    key: String,
    record: csv::ByteRecord,
}

impl FileReader {
    /// Opens worker `index`'s share (of `peers`) of the file at `path`.
    pub fn open(
        path: &Path,
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
        let d = schema.d();
        let mut names = vec![schema.time.clone(), schema.key.clone()];
        names.extend(schema.features.iter().cloned());
        names.push(schema.target.clone());
        let wanted = |name: &str| -> Slot {
            if name == schema.time {
                Slot::Time
            } else if name == schema.key {
                Slot::Key
            } else if let Some(i) = schema.features.iter().position(|f| f == name) {
                Slot::Z(i)
            } else if name == schema.target {
                Slot::Z(d)
            } else {
                Slot::Skip
            }
        };

        let mut columns = Vec::new();
        let mut data_start = 0;
        if format == FileFormat::Csv && !bytes.is_empty() {
            let end = memchr::memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1);
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(&bytes[..end]);
            let mut header = csv::StringRecord::new();
            reader
                .read_record(&mut header)
                .map_err(|e| SourceError::Schema(format!("{shown}: line 1 (header): {e}")))?;
            columns = header.iter().map(|h| wanted(h.trim())).collect();
            for (name, slot) in names.iter().zip(all_slots(d)) {
                if !columns.contains(&slot) {
                    return Err(SourceError::Schema(format!(
                        "{shown}: column {name:?} is not in the header ({})",
                        header.iter().collect::<Vec<_>>().join(",")
                    )));
                }
            }
            data_start = end;
        }
        let json_slots = names
            .iter()
            .zip(all_slots(d))
            .map(|(n, s)| (n.clone(), s))
            .collect();
        let data = bytes.len().saturating_sub(data_start);
        let blocks = data.div_ceil(BLOCK_BYTES) as u64;
        Ok(FileReader {
            path: shown,
            format,
            map,
            data_start,
            columns,
            names,
            json_slots,
            next: index as u64,
            blocks,
            lines_before: (0, 1),
            peers: peers as u64,
            time: 0,
            z: vec![0.0; d + 1],
            key: String::new(),
            record: csv::ByteRecord::new(),
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
    fn block_start(bytes: &[u8], data_start: usize, k: u64) -> usize {
        if k == 0 {
            return data_start;
        }
        let nominal = data_start + k as usize * BLOCK_BYTES;
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
        // The block's pages are not needed again: drop them from this process's resident
        // set (they stay in the page cache), so memory does not grow with the file.
        let (start, end) = (
            Self::block_start(&map, self.data_start, k),
            Self::block_start(&map, self.data_start, k + 1),
        );
        let page = 4096;
        let (from, to) = (start.div_ceil(page) * page, end / page * page);
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
        let start = Self::block_start(bytes, self.data_start, k);
        let end = Self::block_start(bytes, self.data_start, k + 1);
        let mut pos = start;
        while pos < end {
            let stop = memchr::memchr(b'\n', &bytes[pos..end]).map_or(end, |i| pos + i);
            let mut line = &bytes[pos..stop];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let parsed = if line.iter().all(u8::is_ascii_whitespace) {
                Ok(false)
            } else {
                match self.format {
                    FileFormat::Csv => self.parse_csv(line),
                    FileFormat::Jsonl => self.parse_json(line),
                }
                .map(|()| true)
            };
            match parsed {
                Ok(true) => {
                    let time = self.time;
                    sink.record(RecordRef {
                        time,
                        key: &self.key,
                        z: &self.z,
                    });
                }
                Ok(false) => {}
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

/// Slots in the order of `FileReader::names`.
fn all_slots(d: usize) -> impl Iterator<Item = Slot> {
    [Slot::Time, Slot::Key]
        .into_iter()
        .chain((0..=d).map(Slot::Z))
}

type LineError = (Option<String>, String);

fn parse_time(bytes: &[u8]) -> Result<i64, String> {
    let text = trim(bytes);
    lexical_core::parse::<i64>(text)
        .ok()
        .or_else(|| {
            // Integral floats such as `1700000000000.0` are accepted too.
            let f = lexical_core::parse::<f64>(text).ok()?;
            (f.fract() == 0.0 && f.abs() < 9e15).then_some(f as i64)
        })
        .ok_or_else(|| {
            format!(
                "not an integer time in ms: {:?}",
                String::from_utf8_lossy(text)
            )
        })
}

fn parse_number(bytes: &[u8]) -> Result<f64, String> {
    let text = trim(bytes);
    match lexical_core::parse::<f64>(text) {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!(
            "not a finite number: {:?}",
            String::from_utf8_lossy(text)
        )),
        Err(_) => Err(format!("not a number: {:?}", String::from_utf8_lossy(text))),
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

impl FileReader {
    fn slot_name(&self, slot: Slot) -> String {
        let i = match slot {
            Slot::Time => 0,
            Slot::Key => 1,
            Slot::Z(i) => 2 + i,
            Slot::Skip => return "?".into(),
        };
        self.names[i].clone()
    }

    fn parse_csv(&mut self, line: &[u8]) -> Result<(), LineError> {
        if memchr::memchr(b'"', line).is_some() {
            return self.parse_quoted_csv(line);
        }
        let mut count = 0;
        let expected = self.columns.len();
        for field in line.split(|b| *b == b',') {
            if count < expected {
                self.field(self.columns[count], field)?;
            }
            count += 1;
        }
        if count != expected {
            return Err((None, format!("expected {expected} fields, found {count}")));
        }
        Ok(())
    }

    fn parse_quoted_csv(&mut self, line: &[u8]) -> Result<(), LineError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(line);
        let mut record = std::mem::take(&mut self.record);
        let result = match reader.read_byte_record(&mut record) {
            Ok(_) if record.len() != self.columns.len() => Err((
                None,
                format!(
                    "expected {} fields, found {}",
                    self.columns.len(),
                    record.len()
                ),
            )),
            Ok(_) => record
                .iter()
                .zip(self.columns.clone())
                .try_for_each(|(field, slot)| self.field(slot, field)),
            Err(e) => Err((None, e.to_string())),
        };
        self.record = record;
        result
    }

    #[inline]
    fn field(&mut self, slot: Slot, bytes: &[u8]) -> Result<(), LineError> {
        let fail = |this: &Self, message: String| (Some(this.slot_name(slot)), message);
        match slot {
            Slot::Time => self.time = parse_time(bytes).map_err(|m| fail(self, m))?,
            Slot::Key => {
                let key = std::str::from_utf8(trim(bytes))
                    .map_err(|_| fail(self, "key is not UTF-8".into()))?;
                self.key.clear();
                self.key.push_str(key);
            }
            Slot::Z(i) => self.z[i] = parse_number(bytes).map_err(|m| fail(self, m))?,
            Slot::Skip => {}
        }
        Ok(())
    }

    fn parse_json(&mut self, line: &[u8]) -> Result<(), LineError> {
        let mut seen = vec![false; self.z.len() + 2];
        let mut current = None;
        let mut de = serde_json::Deserializer::from_slice(line);
        let result = de::Deserializer::deserialize_map(
            &mut de,
            JsonLine {
                reader: self,
                seen: &mut seen,
                current: &mut current,
            },
        )
        .and_then(|()| de.end());
        if let Err(e) = result {
            let field = current.map(|s| self.slot_name(s));
            let message = e.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned();
            return Err((field, message));
        }
        for (slot, seen) in all_slots(self.z.len() - 1).zip(seen) {
            if !seen {
                return Err((Some(self.slot_name(slot)), "missing field".into()));
            }
        }
        Ok(())
    }
}

/// Fills a [`FileReader`]'s scratch record from one JSON object, without allocating.
struct JsonLine<'a> {
    reader: &'a mut FileReader,
    seen: &'a mut Vec<bool>,
    current: &'a mut Option<Slot>,
}

impl<'de> Visitor<'de> for JsonLine<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(slot) = map.next_key_seed(FieldName(&self.reader.json_slots))? {
            *self.current = Some(slot);
            match slot {
                Slot::Skip => {
                    map.next_value::<IgnoredAny>()?;
                }
                Slot::Time => {
                    self.reader.time = map.next_value_seed(TimeValue)?;
                }
                Slot::Key => {
                    map.next_value_seed(KeyValue(&mut self.reader.key))?;
                }
                Slot::Z(i) => {
                    let v: f64 = map.next_value()?;
                    if !v.is_finite() {
                        return Err(de::Error::custom("not a finite number"));
                    }
                    self.reader.z[i] = v;
                }
            }
            let index = match slot {
                Slot::Time => 0,
                Slot::Key => 1,
                Slot::Z(i) => 2 + i,
                Slot::Skip => continue,
            };
            self.seen[index] = true;
        }
        *self.current = None;
        Ok(())
    }
}

struct FieldName<'a>(&'a HashMap<String, Slot>);

impl<'de> DeserializeSeed<'de> for FieldName<'_> {
    type Value = Slot;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Slot, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldName<'_> {
    type Value = Slot;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, name: &str) -> Result<Slot, E> {
        Ok(self.0.get(name).copied().unwrap_or(Slot::Skip))
    }
}

struct TimeValue;

impl<'de> DeserializeSeed<'de> for TimeValue {
    type Value = i64;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TimeValue {
    type Value = i64;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer time in ms")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom("time out of range"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && v.abs() < 9e15 {
            Ok(v as i64)
        } else {
            Err(E::custom("not an integer time in ms"))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        parse_time(v.as_bytes()).map_err(E::custom)
    }
}

/// A key: a string, or a number spelled as text.
struct KeyValue<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for KeyValue<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyValue<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string or number key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.clear();
        self.0.push_str(v);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        use std::fmt::Write;
        self.0.clear();
        let _ = write!(self.0, "{v}");
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        use std::fmt::Write;
        self.0.clear();
        let _ = write!(self.0, "{v}");
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        use std::fmt::Write;
        self.0.clear();
        let _ = write!(self.0, "{v}");
        Ok(())
    }
}
