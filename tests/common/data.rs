//! Test data: a deterministic generator (splitmix64, rows of known coefficients with
//! chosen disorder and pauses) and its CSV / JSON-lines writers.

use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// 2023-11-14T22:13:20Z, a multiple of 10 s (and of 2 s, 60 s ...).
pub const T0: i64 = 1_700_000_000_000;

/// splitmix64: tiny, deterministic, good enough for test data.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64(); // (0, 1]
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub ts: i64,
    pub key: String,
    pub x: Vec<f64>,
    pub y: f64,
}

#[derive(Clone, Debug)]
pub struct GenSpec {
    pub rows: usize,
    pub keys: usize,
    pub d: usize,
    pub seed: u64,
    /// Time of the first nominal timestamp (ms).
    pub start: i64,
    /// Nominal spacing of consecutive rows (ms).
    pub step: i64,
    /// Each row's timestamp is its nominal time minus a uniform integer in [0, disorder].
    /// Since a row's nominal time is `step` above the previous one, a row is never more
    /// than `disorder - step` ms behind the largest timestamp seen before it, in the whole
    /// stream and in any subsequence of it (so in any input partition too).
    pub disorder: i64,
    /// With this probability, the nominal time jumps by `pause` instead of `step` (to
    /// create session gaps). 0 for none.
    pub pause_prob: f64,
    pub pause: i64,
    /// Standard deviation of the noise on y.
    pub noise: f64,
}

impl GenSpec {
    pub fn new(rows: usize, keys: usize, d: usize, seed: u64) -> Self {
        GenSpec {
            rows,
            keys,
            d,
            seed,
            start: T0,
            step: 10,
            disorder: 0,
            pause_prob: 0.0,
            pause: 0,
            noise: 0.1,
        }
    }
}

/// The "true" coefficients [b0, b1..bd] of key number `k` (deterministic in seed and k).
pub fn true_beta(seed: u64, k: usize, d: usize) -> Vec<f64> {
    let mut r = SplitMix64::new(seed ^ 0xBE7A_0000 ^ ((k as u64) << 32));
    (0..=d).map(|_| r.uniform(-3.0, 3.0)).collect()
}

pub fn key_name(k: usize) -> String {
    format!("k{k}")
}

/// Generates rows in arrival order (the order written to the file).
pub fn generate(spec: &GenSpec) -> Vec<Row> {
    let mut r = SplitMix64::new(spec.seed);
    let betas: Vec<Vec<f64>> = (0..spec.keys)
        .map(|k| true_beta(spec.seed, k, spec.d))
        .collect();
    let mut out = Vec::with_capacity(spec.rows);
    let mut nominal = spec.start;
    for i in 0..spec.rows {
        if i > 0 {
            if spec.pause_prob > 0.0 && r.f64() < spec.pause_prob {
                nominal += spec.pause;
            } else {
                nominal += spec.step;
            }
        }
        let jitter = if spec.disorder > 0 {
            r.below(spec.disorder as u64 + 1) as i64
        } else {
            0
        };
        let k = r.below(spec.keys as u64) as usize;
        let x: Vec<f64> = (0..spec.d).map(|_| r.uniform(-1.0, 1.0)).collect();
        let b = &betas[k];
        let y =
            b[0] + x.iter().zip(&b[1..]).map(|(a, c)| a * c).sum::<f64>() + spec.noise * r.normal();
        out.push(Row {
            // Clipped at `start` so that the first windows are not thinly populated by a few
            // rows pushed before the start (this keeps the disorder bound).
            ts: (nominal - jitter).max(spec.start),
            key: key_name(k),
            x,
            y,
        });
    }
    out
}

pub fn feature_names(d: usize) -> Vec<String> {
    (0..d).map(|j| format!("x{j}")).collect()
}

pub fn feature_list(d: usize) -> String {
    feature_names(d).join(",")
}

pub fn csv_header(d: usize) -> String {
    let mut h = String::from("ts,key");
    for j in 0..d {
        write!(h, ",x{j}").unwrap();
    }
    h.push_str(",y");
    h
}

/// One CSV data line (no newline). `{}` on f64 prints the shortest string that parses back
/// to the same value, so the engine and the oracle see identical numbers.
pub fn csv_line(r: &Row) -> String {
    let mut s = format!("{},{}", r.ts, r.key);
    for v in &r.x {
        write!(s, ",{v}").unwrap();
    }
    write!(s, ",{}", r.y).unwrap();
    s
}

/// Header plus one line per row, each terminated by '\n'.
pub fn csv_text(rows: &[Row], d: usize) -> String {
    let mut s = csv_header(d);
    s.push('\n');
    for r in rows {
        s.push_str(&csv_line(r));
        s.push('\n');
    }
    s
}

/// `rows` as CSV lines, each with its newline.
pub fn csv_lines(rows: &[Row]) -> String {
    rows.iter().map(|r| csv_line(r) + "\n").collect()
}

pub fn write_csv(path: &Path, rows: &[Row], d: usize) {
    std::fs::write(path, csv_text(rows, d)).unwrap();
}

pub fn jsonl_line(r: &Row) -> String {
    let mut m = serde_json::Map::new();
    m.insert("ts".into(), Value::from(r.ts));
    m.insert("key".into(), Value::from(r.key.clone()));
    for (j, v) in r.x.iter().enumerate() {
        m.insert(format!("x{j}"), Value::from(*v));
    }
    m.insert("y".into(), Value::from(r.y));
    Value::Object(m).to_string()
}

pub fn write_jsonl(path: &Path, rows: &[Row]) {
    let mut s = String::new();
    for r in rows {
        s.push_str(&jsonl_line(r));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Appends `text` to the file at `path`.
pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
}
