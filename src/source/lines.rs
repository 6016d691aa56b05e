//! Lines of CSV or JSON into records: the parser every line-based source shares (files,
//! `POST /data` bodies, TCP lines).
//!
//! Parsing does not allocate per record: fields are sliced out of the line and numbers
//! parsed in place into the parser's scratch record. A quoted CSV line takes a slower path
//! through the `csv` crate.

use std::collections::HashMap;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::decimal;
use super::fast_csv::{self, Slot};
use super::sink::SourceError;
use crate::record::{MAX_ABS_VALUE, RecordRef, Schema, check_time, check_value};

/// The line format of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileFormat {
    /// Comma-separated values with a header row naming the columns.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// Parses lines of one format against a [`Schema`], one record at a time.
pub struct LineParser {
    format: FileFormat,
    /// CSV: the slot of each column (set by [`header`](Self::header)); JSON: unused.
    columns: Vec<Slot>,
    /// Field names, by slot order: time, key, z…
    names: Vec<String>,
    json_slots: HashMap<String, Slot>,
    // Per-record scratch, reused.
    time: i64,
    z: Vec<f64>,
    /// The fast path's powers of ten, one per `z`.
    scale: Vec<f64>,
    key: String,
    record: csv::ByteRecord,
    /// Whether CSV lines may take the vectorised fast path ([`fast_csv`]).
    fast: bool,
    /// Whether the columns are exactly time, key, z… (set with the header).
    in_order: bool,
    /// Lines the fast path declined in a row; past [`GIVE_UP`] it is tried only on one
    /// line in 256, so data it never fits (long numbers) costs nearly nothing.
    declined: u32,
    tries: u8,
}

/// Declined lines in a row after which the fast path is tried only now and then.
const GIVE_UP: u32 = 16;

impl LineParser {
    /// A parser of `format` lines for `schema`. A CSV parser needs its
    /// [`header`](Self::header) before any data line.
    pub fn new(format: FileFormat, schema: &Schema) -> Self {
        let d = schema.d();
        let mut names = vec![schema.time.clone(), schema.key.clone()];
        names.extend(schema.features.iter().cloned());
        names.push(schema.target.clone());
        let json_slots = names
            .iter()
            .zip(all_slots(d))
            .map(|(n, s)| (n.clone(), s))
            .collect();
        LineParser {
            format,
            columns: Vec::new(),
            names,
            json_slots,
            time: 0,
            z: vec![0.0; d + 1],
            scale: vec![1.0; d + 1],
            key: String::new(),
            record: csv::ByteRecord::new(),
            fast: format == FileFormat::Csv && fast_csv::available(),
            in_order: false,
            declined: 0,
            tries: 0,
        }
    }

    /// The format parsed.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// Whether the next non-blank line must be a [`header`](Self::header): a CSV parser
    /// that has not read one yet.
    pub fn needs_header(&self) -> bool {
        self.format == FileFormat::Csv && self.columns.is_empty()
    }

    /// Reads a CSV header row: which column holds what. Every field of the schema must be
    /// present; `origin` names the input in the error (e.g. a file and line).
    pub fn header(&mut self, line: &[u8], origin: &str) -> Result<(), SourceError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(line);
        let mut header = csv::StringRecord::new();
        reader
            .read_record(&mut header)
            .map_err(|e| SourceError::Schema(format!("{origin} (header): {e}")))?;
        let columns: Vec<Slot> = header.iter().map(|h| self.slot_of(h.trim())).collect();
        // A field of the schema named twice: which column is meant is anyone's guess.
        for (i, slot) in columns.iter().enumerate() {
            if *slot != Slot::Skip && columns[..i].contains(slot) {
                return Err(SourceError::Schema(format!(
                    "{origin}: column {:?} appears twice in the header ({})",
                    header.get(i).unwrap_or_default().trim(),
                    header.iter().collect::<Vec<_>>().join(",")
                )));
            }
        }
        for (name, slot) in self.names.iter().zip(all_slots(self.z.len() - 1)) {
            if !columns.contains(&slot) {
                return Err(SourceError::Schema(format!(
                    "{origin}: column {name:?} is not in the header ({})",
                    header.iter().collect::<Vec<_>>().join(",")
                )));
            }
        }
        self.in_order = fast_csv::in_order(&columns, self.z.len());
        self.columns = columns;
        Ok(())
    }

    fn slot_of(&self, name: &str) -> Slot {
        self.json_slots.get(name).copied().unwrap_or(Slot::Skip)
    }

    /// Parses one line (without its newline; a trailing `\r` is ignored): `Ok(None)` for a
    /// blank line, the record otherwise, borrowed from the parser's scratch.
    #[inline]
    pub fn parse(&mut self, line: &[u8]) -> Result<Option<RecordRef<'_>>, LineError> {
        let line = match line {
            [rest @ .., b'\r'] => rest,
            _ => line,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        match self.format {
            FileFormat::Csv => self.parse_csv(line)?,
            FileFormat::Jsonl => self.parse_json(line)?,
        }
        Ok(Some(RecordRef {
            time: self.time,
            key: &self.key,
            z: &self.z,
        }))
    }
}

impl LineParser {
    /// Parses the CSV line that starts at byte `pos` of `bytes` on the vectorised fast
    /// path, if it qualifies: the record, borrowed from the parser's scratch and `bytes`,
    /// and where the next line starts. A line qualifies when its numbers are plain
    /// decimals (`[-]digits[.digits]`) of at most 15 bytes, its key is printable ASCII
    /// without spaces or quotes, no field is longer than 15 bytes or quoted, it ends in a
    /// newline, and this CPU has SSSE3 and SSE4.1; the value read is the one
    /// [`parse`](Self::parse) gives, to the bit. `None` leaves the line to `parse`, which
    /// parses any line and reports errors. The fast path reads `bytes` up to 64 bytes past
    /// the line's end, and declines a line that has fewer after it; it never reads
    /// past `bytes`.
    #[inline]
    pub fn parse_csv_at<'a>(
        &'a mut self,
        bytes: &'a [u8],
        pos: usize,
    ) -> Option<(RecordRef<'a>, usize)> {
        if !self.fast || self.columns.is_empty() {
            return None;
        }
        if self.declined >= GIVE_UP {
            self.tries = self.tries.wrapping_add(1);
            if self.tries != 0 {
                return None;
            }
        }
        let mut key = 0..0;
        let out = fast_csv::Scratch {
            time: &mut self.time,
            key: &mut key,
            z: &mut self.z,
            scale: &mut self.scale,
        };
        // SAFETY: `fast` is only set when `fast_csv::available` said the CPU can.
        let next = unsafe { fast_csv::line(bytes, pos, &self.columns, self.in_order, out) };
        let Some(next) = next else {
            self.declined = self.declined.saturating_add(1);
            return None;
        };
        self.declined = 0;
        let key = &bytes[key];
        debug_assert!(key.iter().all(|b| b.is_ascii_graphic()));
        // SAFETY: the fast path took the line only with a key of printable ASCII bytes
        // (its contract), which is UTF-8.
        let key = unsafe { std::str::from_utf8_unchecked(key) };
        let record = RecordRef {
            time: self.time,
            key,
            z: &self.z,
        };
        Some((record, next))
    }
}

/// Slots in the order of `LineParser::names`.
fn all_slots(d: usize) -> impl Iterator<Item = Slot> {
    [Slot::Time, Slot::Key]
        .into_iter()
        .chain((0..=d).map(Slot::Z))
}

/// A line that did not parse: the field at fault (if one is) and what is wrong.
pub type LineError = (Option<String>, String);

/// An event time: integer ms since the Unix epoch (an integral float such as
/// `1700000000000.0` too), or a date-time (see [`parse_datetime`]).
fn parse_time(bytes: &[u8]) -> Result<i64, String> {
    let text = trim(bytes);
    let t = lexical_core::parse::<i64>(text)
        .ok()
        .or_else(|| {
            let f = lexical_core::parse::<f64>(text).ok()?;
            (f.fract() == 0.0 && f.abs() < 9e15).then_some(f as i64)
        })
        .or_else(|| parse_datetime(std::str::from_utf8(text).ok()?))
        .ok_or_else(|| {
            format!(
                "not a time (integer ms since the epoch, or a date-time such as \
                 2024-05-01T12:00:00Z): {}",
                echo(text)
            )
        })?;
    check_time(t)
}

/// An RFC 3339 date-time (`2024-05-01T12:00:00.250Z`, `2024-05-01 14:00:00+02:00`), or
/// one without an offset (`2024-05-01T12:00:00`, `2024-05-01 12:00:00.5`), taken as UTC:
/// ms since the epoch; digits finer than a millisecond are dropped (towards the past).
fn parse_datetime(text: &str) -> Option<i64> {
    if text.len() < 19 || text.as_bytes()[4] != b'-' {
        return None;
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
        .map(|t| t.and_utc().timestamp_millis())
}

fn parse_number(bytes: &[u8]) -> Result<f64, String> {
    let text = trim(bytes);
    match lexical_core::parse::<f64>(text) {
        Ok(v) => check_value(v)
            .map_err(|_| format!("{} is not a finite number within ±1e150", echo(text))),
        Err(_) => Err(format!("not a number: {}", echo(text))),
    }
}

/// Whether a number `n` bytes long at the start of `rest` is the whole field.
#[inline]
fn at_field_end(rest: &[u8], n: usize) -> bool {
    matches!(rest.get(n), None | Some(b','))
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

impl LineParser {
    fn slot_name(&self, slot: Slot) -> String {
        let i = match slot {
            Slot::Time => 0,
            Slot::Key => 1,
            Slot::Z(i) => 2 + i,
            Slot::Skip => return "?".into(),
        };
        self.names[i].clone()
    }

    /// One pass over the line: each field is parsed where it starts, and numbers in the
    /// common short form ([`decimal`]) find their own end, so most fields are never
    /// scanned twice. Anything unusual in a field (spaces, long numbers, a bad value)
    /// takes the general per-field path with its error messages; a quote anywhere sends
    /// the whole line to the quoting-aware parser.
    fn parse_csv(&mut self, line: &[u8]) -> Result<(), LineError> {
        let expected = self.columns.len();
        let mut pos = 0;
        for c in 0..expected {
            if pos > line.len() {
                // Every field so far was scanned, and none had a quote.
                return Err((None, format!("expected {expected} fields, found {c}")));
            }
            let slot = self.columns[c];
            let rest = &line[pos..];
            let fast = match slot {
                // Out of range: the general path says why.
                Slot::Z(i) => decimal::parse_f64_prefix(rest).and_then(|(v, n)| {
                    (at_field_end(rest, n) && v.abs() <= MAX_ABS_VALUE).then(|| {
                        self.z[i] = v;
                        n
                    })
                }),
                Slot::Time => decimal::parse_i64_prefix(rest).and_then(|(t, n)| {
                    at_field_end(rest, n).then(|| {
                        self.time = t;
                        n
                    })
                }),
                Slot::Key | Slot::Skip => None,
            };
            let end = match fast {
                Some(n) => pos + n,
                None => {
                    // Fields are short: a byte loop beats a call to a vectorised search.
                    let mut end = pos;
                    while let Some(&b) = line.get(end)
                        && b != b','
                    {
                        if b == b'"' {
                            return self.parse_quoted_csv(line);
                        }
                        end += 1;
                    }
                    self.field(slot, &line[pos..end])?;
                    end
                }
            };
            pos = end + 1;
        }
        if pos <= line.len() {
            // Fields beyond the header's: unless quoting says otherwise.
            let tail = &line[pos..];
            if memchr::memchr(b'"', tail).is_some() {
                return self.parse_quoted_csv(line);
            }
            let found = expected + 1 + memchr::memchr_iter(b',', tail).count();
            return Err((None, format!("expected {expected} fields, found {found}")));
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
            let message = message.split(" at line ").next().unwrap_or(&message);
            return Err((field, shorten(message)));
        }
        for (slot, seen) in all_slots(self.z.len() - 1).zip(seen) {
            if !seen {
                return Err((Some(self.slot_name(slot)), "missing field".into()));
            }
        }
        Ok(())
    }
}

/// Characters of a field's text that an error message shows.
pub const ECHO_CHARS: usize = 80;

/// A field's text for an error message, quoted: at most [`ECHO_CHARS`] characters, and a
/// longer text cut with an ellipsis and its length in bytes (`"abc…" (1048576 bytes)`), so
/// that one huge field never makes a huge message.
pub fn echo(bytes: &[u8]) -> String {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4 * ECHO_CHARS)]);
    match head.char_indices().nth(ECHO_CHARS) {
        None if bytes.len() <= 4 * ECHO_CHARS => format!("{head:?}"),
        cut => {
            let shown = &head[..cut.map_or(head.len(), |(i, _)| i)];
            format!("{:?} ({} bytes)", format!("{shown}…"), bytes.len())
        }
    }
}

/// A message that may quote input (e.g. serde's `invalid type: string "…"`), cut to about
/// four times [`ECHO_CHARS`] characters, with its length in bytes when cut.
pub fn shorten(message: &str) -> String {
    match message.char_indices().nth(4 * ECHO_CHARS) {
        None => message.to_owned(),
        Some((i, _)) => format!("{}… ({} bytes)", &message[..i], message.len()),
    }
}

/// Fills a [`LineParser`]'s scratch record from one JSON object, without allocating.
struct JsonLine<'a> {
    reader: &'a mut LineParser,
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
                    check_value(v).map_err(de::Error::custom)?;
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
        check_time(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v)
            .map_err(|_| format!("time {v} is out of range (at most ±2^62 ms)"))
            .and_then(check_time)
            .map_err(E::custom)
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

#[cfg(test)]
pub(super) mod tests;
