//! Records: (event time, key, features x, target y), and the schema naming their fields.

use serde::{Deserialize, Serialize};

use crate::window::Time;

/// The largest magnitude of an event time (ms): 2⁶², about 146 million years either side
/// of 1970. Every source refuses times beyond it, as malformed. The room left keeps window
/// arithmetic (a time plus a duration of at most 10¹⁵ ms) from overflowing and clear of
/// the engine's own markers `Time::MIN` and `Time::MAX`.
pub const TIME_LIMIT: Time = 1 << 62;

/// `t` if it is an event time the engine takes (`|t| ≤` [`TIME_LIMIT`]), else why not.
pub fn check_time(t: Time) -> Result<Time, String> {
    if (-TIME_LIMIT..=TIME_LIMIT).contains(&t) {
        Ok(t)
    } else {
        Err(format!("time {t} is out of range (at most ±2^62 ms)"))
    }
}

/// The largest magnitude of a feature or target value: 10¹⁵⁰. The square or product of
/// two such values is at most 10³⁰⁰, below `f64::MAX` (≈ 1.8·10³⁰⁸), so one row's
/// statistics never overflow, and a window's only past about 10⁸ rows at this magnitude
/// (then its model is reported `not_finite`, never a panic). Every source refuses values
/// beyond it as malformed, naming the field; user dataflows' records beyond it are set
/// aside (`value_out_of_range`).
pub const MAX_ABS_VALUE: f64 = 1e150;

/// `v` if it is a value the engine takes (finite, `|v| ≤` [`MAX_ABS_VALUE`]), else why not.
#[inline]
pub fn check_value(v: f64) -> Result<f64, String> {
    if v.abs() <= MAX_ABS_VALUE {
        Ok(v)
    } else if v.is_finite() {
        Err(format!("{v:e} is out of range (at most ±1e150)"))
    } else {
        Err(format!("not a finite number: {v}"))
    }
}

/// A record borrowed from a source's buffer: nothing is allocated per record.
///
/// `z` is `[x₁ … x_d, y]`: the features followed by the target, the layout
/// [`Stats::add_row`](crate::stats::Stats::add_row) takes.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    /// Event time (ms since the Unix epoch).
    pub time: Time,
    /// Key.
    pub key: &'a str,
    /// Features followed by the target.
    pub z: &'a [f64],
}

impl RecordRef<'_> {
    /// The features `x`.
    pub fn x(&self) -> &[f64] {
        &self.z[..self.z.len() - 1]
    }
    /// The target `y`.
    pub fn y(&self) -> f64 {
        self.z[self.z.len() - 1]
    }
    /// An owned copy.
    pub fn to_owned(&self) -> Record {
        Record {
            time: self.time,
            key: self.key.to_owned(),
            x: self.x().to_vec(),
            y: self.y(),
        }
    }
}

/// An owned record.
#[derive(Clone, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
pub struct Record {
    /// Event time (ms since the Unix epoch).
    pub time: Time,
    /// Key.
    pub key: String,
    /// Features.
    pub x: Vec<f64>,
    /// Target.
    pub y: f64,
}

impl Record {
    /// `[x, y]`, the row layout of the statistics.
    pub fn z(&self) -> Vec<f64> {
        let mut z = self.x.clone();
        z.push(self.y);
        z
    }
}

/// Which input fields hold the time, key, features and target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Schema {
    /// Time field (integer ms since the epoch).
    pub time: String,
    /// Key field.
    pub key: String,
    /// Feature fields, in order.
    pub features: Vec<String>,
    /// Target field.
    pub target: String,
}

impl Schema {
    /// The number of features `d`.
    pub fn d(&self) -> usize {
        self.features.len()
    }

    /// The default schema of `d` features: `ts`, `key`, `x0 … x{d-1}`, `y` (what
    /// `tributary gen` writes).
    pub fn generated(d: usize) -> Self {
        Schema {
            time: "ts".into(),
            key: "key".into(),
            features: (0..d).map(|i| format!("x{i}")).collect(),
            target: "y".into(),
        }
    }
}

/// Expands a feature list: comma-separated names, where `x0..x7` stands for `x0, …, x7`.
pub fn parse_features(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once("..") {
            let split = |s: &str| {
                let i = s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
                let (p, n) = s.split_at(i);
                n.parse::<usize>().ok().map(|n| (p.to_owned(), n))
            };
            match (split(a), split(b)) {
                (Some((pa, na)), Some((pb, nb))) if (pa == pb || pb.is_empty()) && na <= nb => {
                    out.extend((na..=nb).map(|i| format!("{pa}{i}")))
                }
                _ => return Err(format!("feature range {part:?}: expected e.g. x0..x7")),
            }
        } else {
            out.push(part.to_owned());
        }
    }
    if out.is_empty() {
        return Err("no features given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_ranges_expand() {
        assert_eq!(
            parse_features("a, x1..x3,b").unwrap(),
            vec!["a", "x1", "x2", "x3", "b"]
        );
        assert_eq!(parse_features("x0..7").unwrap().len(), 8);
        assert!(parse_features("x3..x1").is_err());
        assert!(parse_features("").is_err());
    }
}

/// Records in columns: what one append carries, and one batch of the log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordBatch {
    /// Event times.
    pub time: Vec<Time>,
    /// Keys.
    pub key: Vec<String>,
    /// Rows `z = [x, y]`, `d + 1` values each, one after the other.
    pub z: Vec<f64>,
}

impl RecordBatch {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.time.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }

    /// Appends a record.
    pub fn push(&mut self, record: RecordRef<'_>) {
        self.time.push(record.time);
        self.key.push(record.key.to_owned());
        self.z.extend_from_slice(record.z);
    }

    /// The batch's size in memory, as the ingest log counts it against
    /// `--max-pending-bytes`: per record its key (bytes plus a `String`'s 24), its time
    /// and its values (8 bytes each).
    pub fn bytes(&self) -> u64 {
        let keys: usize = self.key.iter().map(|k| k.len() + 24).sum();
        (keys + 8 * self.time.len() + 8 * self.z.len()) as u64
    }

    /// The records, borrowed.
    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> {
        let width = self.z.len().checked_div(self.len()).unwrap_or(0);
        self.time
            .iter()
            .zip(&self.key)
            .zip(self.z.chunks_exact(width.max(1)))
            .map(|((&time, key), z)| RecordRef { time, key, z })
    }
}
