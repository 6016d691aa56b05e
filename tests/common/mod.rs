//! Shared helpers for the integration tests: a deterministic data generator, CSV/JSONL
//! writers, an independent oracle (nalgebra SVD least squares over the exact window rows),
//! a parser of the engine's JSON-lines output and comparisons.
//!
//! Nothing here uses code from the `tributary` crate: the engine is only run as a binary.
#![allow(dead_code)]

pub mod http;

use nalgebra::{DMatrix, DVector};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// 2023-11-14T22:13:20Z, a multiple of 10 s (and of 2 s, 60 s ...).
pub const T0: i64 = 1_700_000_000_000;

/// Relative tolerance on coefficients (normwise: max|b - b_ref| / max(max|b_ref|, 1)).
pub const COEF_TOL: f64 = 1e-9;

/// Windows whose design matrix [1, X] has a condition number above this are too badly
/// conditioned for a 1e-9 coefficient comparison to be meaningful; their coefficients are
/// not compared (n and the set of windows still are). Test data is built so that such
/// windows do not occur except where a test wants them.
pub const COND_COMPARE_LIMIT: f64 = 1e6;

// ---------------------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Records and generation
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Oracle: reading the CSV
// ---------------------------------------------------------------------------------------

/// Reads a CSV file the way a correct engine must: header required, columns by name, a
/// line with the wrong column count, an unparsable integer time, an unparsable or
/// non-finite number is malformed (counted, skipped). Returns (good rows, malformed count).
/// The files written by the tests contain no quoting, so a plain split on ',' is exact.
pub fn read_csv_oracle(path: &Path, d: usize) -> (Vec<Row>, usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return (Vec::new(), 0);
    };
    let cols: Vec<&str> = header.split(',').collect();
    let idx = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("oracle: no column {name}"))
    };
    let it = idx("ts");
    let ik = idx("key");
    let ix: Vec<usize> = feature_names(d).iter().map(|n| idx(n)).collect();
    let iy = idx("y");
    let mut rows = Vec::new();
    let mut bad = 0;
    for line in lines {
        if line.is_empty() {
            // Only a trailing newline produces this with `lines()`; the tests never write
            // blank lines in the middle of a file.
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let parsed = (|| {
            if f.len() != cols.len() {
                return None;
            }
            let ts: i64 = f[it].parse().ok()?;
            let key = f[ik].to_string();
            let mut x = Vec::with_capacity(d);
            for &j in &ix {
                let v: f64 = f[j].parse().ok()?;
                if !v.is_finite() {
                    return None;
                }
                x.push(v);
            }
            let y: f64 = f[iy].parse().ok()?;
            if !y.is_finite() {
                return None;
            }
            Some(Row { ts, key, x, y })
        })();
        match parsed {
            Some(r) => rows.push(r),
            None => bad += 1,
        }
    }
    (rows, bad)
}

// ---------------------------------------------------------------------------------------
// Oracle: windows and models
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Win {
    Tumbling(i64),
    /// (length, slide)
    Sliding(i64, i64),
    Session(i64),
}

impl Win {
    /// Argument for `--window`, in plain ms units.
    pub fn arg(&self) -> String {
        match *self {
            Win::Tumbling(l) => format!("tumbling:{l}ms"),
            Win::Sliding(l, s) => format!("sliding:{l}ms/{s}ms"),
            Win::Session(g) => format!("session:{g}ms"),
        }
    }
}

pub type WinKey = (String, i64, i64);

/// Groups rows into (key, window_start, window_end) -> rows (rows of a window sorted by
/// time, stable).
pub fn group_windows(rows: &[Row], win: Win) -> BTreeMap<WinKey, Vec<Row>> {
    let mut per_key: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for r in rows {
        per_key.entry(r.key.clone()).or_default().push(r.clone());
    }
    let mut out: BTreeMap<WinKey, Vec<Row>> = BTreeMap::new();
    for (k, mut recs) in per_key {
        recs.sort_by_key(|r| r.ts);
        match win {
            Win::Tumbling(l) => {
                for r in recs {
                    let s = r.ts.div_euclid(l) * l;
                    out.entry((k.clone(), s, s + l)).or_default().push(r);
                }
            }
            Win::Sliding(l, sl) => {
                for r in recs {
                    let mut s = r.ts.div_euclid(sl) * sl;
                    while s > r.ts - l {
                        out.entry((k.clone(), s, s + l))
                            .or_default()
                            .push(r.clone());
                        s -= sl;
                    }
                }
            }
            Win::Session(gap) => {
                let mut cur: Vec<Row> = Vec::new();
                for r in recs {
                    if let Some(last) = cur.last()
                        && r.ts - last.ts >= gap
                    {
                        let s = cur[0].ts;
                        let e = cur.last().unwrap().ts + gap;
                        out.insert((k.clone(), s, e), std::mem::take(&mut cur));
                    }
                    cur.push(r);
                }
                if !cur.is_empty() {
                    let s = cur[0].ts;
                    let e = cur.last().unwrap().ts + gap;
                    out.insert((k.clone(), s, e), cur);
                }
            }
        }
    }
    out
}

/// One window's model: as the engine wrote it (the `oracle_*` fields NaN), or as the
/// oracle computes it from the window's raw rows (status `None`).
#[derive(Clone, Debug)]
pub struct Model {
    pub n: usize,
    pub coef: Option<Vec<f64>>,
    /// The engine's `cond`: the 2-norm condition number of the diagonally scaled, centered
    /// normal matrix `D (XcᵀXc + λI) D` (docs/statistics.md). The oracle computes the same
    /// quantity independently, as `cond(M D)²` with `M = [Xc; √λ I]` from an SVD of the
    /// two-pass centered rows (infinite when singular; NaN when n <= d or not reported).
    pub cond: f64,
    pub r2: Option<f64>,
    pub rmse: Option<f64>,
    pub status: Option<String>,
    pub revision: u64,
    pub is_final: bool,
    /// Oracle only (NaN otherwise): the condition number of the raw design matrix
    /// `[1, X]`, which bounds how far a solver from unshifted sums may be from the exact
    /// coefficients (it sees offsets that the centered `cond` does not).
    pub design_cond: f64,
    /// Oracle only: `cond · max(c, √(c·c_y))`, the measure the engine's status compares
    /// with its threshold (`c` the largest `Σx_j² / (Sxx_jj + λ)`, `c_y = Σy² / Syy`;
    /// docs/statistics.md).
    pub ill_measure: f64,
    /// Oracle only: the centered target sum of squares `Syy` (two-pass).
    pub syy: f64,
    /// Oracle only: `Σ (|y| + |b₀| + Σ|b_j x_j|)²`, the size of the terms a residual sum of
    /// squares is computed from; errors in SSE are relative to it.
    pub fit_scale: f64,
}

impl Model {
    fn engine(n: usize, coef: Option<Vec<f64>>, cond: f64) -> Model {
        Model {
            n,
            coef,
            cond,
            r2: None,
            rmse: None,
            status: None,
            revision: 0,
            is_final: true,
            design_cond: f64::NAN,
            ill_measure: f64::NAN,
            syy: f64::NAN,
            fit_scale: f64::NAN,
        }
    }
    /// Whether this carries the oracle's measures (a reference model).
    pub fn has_oracle(&self) -> bool {
        !self.design_cond.is_nan()
    }
}

/// OLS (ridge None) or ridge (intercept not penalized, λ not scaled by n), with r², rmse,
/// the engine-definition condition number and the measures the comparison uses.
pub fn solve_window(rows: &[Row], d: usize, ridge: Option<f64>) -> Model {
    let n = rows.len();
    let design = DMatrix::from_fn(n, d + 1, |i, j| if j == 0 { 1.0 } else { rows[i].x[j - 1] });
    if n <= d {
        let mut m = Model::engine(n, None, f64::NAN);
        m.design_cond = f64::NAN;
        return m;
    }
    let sv = design.clone().svd(false, false).singular_values;
    let smax = sv.max();
    let smin = sv.min();
    let design_cond = if smin > 0.0 {
        smax / smin
    } else {
        f64::INFINITY
    };
    let y = DVector::from_fn(n, |i, _| rows[i].y);
    let lambda = ridge.unwrap_or(0.0);
    let coef = if lambda == 0.0 {
        let svd = design.svd(true, true);
        let eps = smax * (n.max(d + 1) as f64) * f64::EPSILON;
        let b = svd.solve(&y, eps).expect("svd solve");
        b.iter().copied().collect::<Vec<f64>>()
    } else {
        // Centered problem, solved as the least-squares problem
        // [Xc; sqrt(λ) I] b ≈ [yc; 0], which is (XcᵀXc + λI) b = Xcᵀyc.
        let xm: Vec<f64> = (0..d)
            .map(|j| rows.iter().map(|r| r.x[j]).sum::<f64>() / n as f64)
            .collect();
        let ym = rows.iter().map(|r| r.y).sum::<f64>() / n as f64;
        let sl = lambda.sqrt();
        let a = DMatrix::from_fn(n + d, d, |i, j| {
            if i < n {
                rows[i].x[j] - xm[j]
            } else if i - n == j {
                sl
            } else {
                0.0
            }
        });
        let rhs = DVector::from_fn(n + d, |i, _| if i < n { rows[i].y - ym } else { 0.0 });
        let svd = a.svd(true, true);
        let b = svd.solve(&rhs, 0.0).expect("svd solve");
        let b0 = ym - xm.iter().zip(b.iter()).map(|(m, c)| m * c).sum::<f64>();
        let mut v = vec![b0];
        v.extend(b.iter().copied());
        v
    };

    // The engine's condition number, independently: M = [Xc; √λ I] (two-pass centered),
    // D = diag(1 / ‖M_j‖), cond(D MᵀM D) = cond(M D)².
    let nf = n as f64;
    let xm: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r.x[j]).sum::<f64>() / nf)
        .collect();
    let ym = rows.iter().map(|r| r.y).sum::<f64>() / nf;
    let sl = lambda.sqrt();
    let m = DMatrix::from_fn(n + d, d, |i, j| {
        if i < n {
            rows[i].x[j] - xm[j]
        } else if i - n == j {
            sl
        } else {
            0.0
        }
    });
    let diag: Vec<f64> = (0..d).map(|j| m.column(j).norm_squared()).collect();
    let md = DMatrix::from_fn(n + d, d, |i, j| {
        if diag[j] > 0.0 {
            m[(i, j)] / diag[j].sqrt()
        } else {
            m[(i, j)]
        }
    });
    let cond = if d == 0 {
        1.0
    } else {
        let s = md.svd(false, false).singular_values;
        let (hi, lo) = (s.max(), s.min());
        if lo > 0.0 {
            (hi / lo).powi(2)
        } else {
            f64::INFINITY
        }
    };
    let syy = rows.iter().map(|r| (r.y - ym).powi(2)).sum::<f64>();
    let sum_y2 = rows.iter().map(|r| r.y * r.y).sum::<f64>();
    let cx = (0..d)
        .filter(|&j| diag[j] > 0.0)
        .map(|j| rows.iter().map(|r| r.x[j] * r.x[j]).sum::<f64>() / diag[j])
        .fold(1.0, f64::max);
    let cy = if syy > 0.0 {
        sum_y2 / syy
    } else {
        f64::INFINITY
    };
    let ill_measure = cond * cx.max((cx * cy).sqrt());
    let resid =
        |r: &Row| r.y - coef[0] - r.x.iter().zip(&coef[1..]).map(|(a, b)| a * b).sum::<f64>();
    let sse = rows.iter().map(|r| resid(r).powi(2)).sum::<f64>();
    let fit_scale = rows
        .iter()
        .map(|r| {
            (r.y.abs()
                + coef[0].abs()
                + r.x
                    .iter()
                    .zip(&coef[1..])
                    .map(|(a, b)| (a * b).abs())
                    .sum::<f64>())
            .powi(2)
        })
        .sum::<f64>();
    let mut out = Model::engine(n, Some(coef), cond);
    out.r2 = (syy > 0.0).then(|| 1.0 - sse / syy);
    out.rmse = Some((sse / nf).sqrt());
    out.design_cond = design_cond;
    out.ill_measure = ill_measure;
    out.syy = syy;
    out.fit_scale = fit_scale;
    out
}

pub fn oracle(rows: &[Row], d: usize, win: Win, ridge: Option<f64>) -> BTreeMap<WinKey, Model> {
    group_windows(rows, win)
        .into_iter()
        .map(|(k, g)| {
            let m = solve_window(&g, d, ridge);
            (k, m)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Engine output
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Emission {
    pub key: WinKey,
    pub model: Model,
    pub raw: Value,
}

fn as_i64(v: &Value, what: &str, line: &str) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("{what} is not an integer in output line {line}"))
}

/// Parses every JSON line of an output file (panics on a line that is not a JSON object
/// with the contract's fields).
pub fn parse_emissions(text: &str) -> Vec<Emission> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("output line is not JSON ({e}): {line}"));
        let key = v["key"]
            .as_str()
            .unwrap_or_else(|| panic!("key is not a string in output line {line}"))
            .to_string();
        let ws = as_i64(&v["window_start"], "window_start", line);
        let we = as_i64(&v["window_end"], "window_end", line);
        let n = v["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("n is not an unsigned integer in output line {line}"))
            as usize;
        let coef = match &v["coef"] {
            Value::Null => None,
            Value::Array(a) => Some(
                a.iter()
                    .map(|c| {
                        c.as_f64()
                            .unwrap_or_else(|| panic!("coef entry not a number in {line}"))
                    })
                    .collect::<Vec<f64>>(),
            ),
            other => panic!("coef is neither null nor an array ({other}) in {line}"),
        };
        let status = v["status"].as_str().map(|s| s.to_string());
        let is_final = match &v["final"] {
            Value::Bool(b) => *b,
            other => panic!("final is not a bool ({other}) in {line}"),
        };
        let revision = match &v["revision"] {
            Value::Null => 0,
            r => r
                .as_u64()
                .unwrap_or_else(|| panic!("revision not an unsigned integer in {line}")),
        };
        let cond = v["cond"].as_f64().unwrap_or(f64::NAN);
        let num = |name: &str| match &v[name] {
            Value::Null => None,
            x => Some(
                x.as_f64()
                    .unwrap_or_else(|| panic!("{name} is not a number in output line {line}")),
            ),
        };
        let mut model = Model::engine(n, coef, cond);
        model.r2 = num("r2");
        model.rmse = num("rmse");
        model.status = status;
        model.revision = revision;
        model.is_final = is_final;
        out.push(Emission {
            key: (key, ws, we),
            model,
            raw: v,
        });
    }
    out
}

/// What a consumer keeps: per (key, window_start, window_end), the final emission with the
/// highest revision (later lines win ties).
pub fn keep_final(ems: &[Emission]) -> BTreeMap<WinKey, Model> {
    let mut out: BTreeMap<WinKey, Model> = BTreeMap::new();
    for e in ems {
        if !e.model.is_final {
            continue;
        }
        match out.get(&e.key) {
            Some(m) if m.revision > e.model.revision => {}
            _ => {
                out.insert(e.key.clone(), e.model.clone());
            }
        }
    }
    out
}

/// The complete lines of a file that may be being written: a last line without its
/// newline is not whole yet.
pub fn complete_lines(text: &str) -> &str {
    text.rfind('\n').map_or("", |end| &text[..=end])
}

/// The final models of an output file (of its complete lines: it may be being written).
pub fn read_models(path: &Path) -> BTreeMap<WinKey, Model> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    keep_final(&parse_emissions(complete_lines(&text)))
}

/// Normwise relative error max|b - b_ref| / max(max|b_ref|, 1).
pub fn rel_err(b: &[f64], bref: &[f64]) -> f64 {
    assert_eq!(b.len(), bref.len());
    let num = b
        .iter()
        .zip(bref)
        .map(|(a, c)| (a - c).abs())
        .fold(0.0, f64::max);
    let den = bref.iter().map(|c| c.abs()).fold(1.0, f64::max);
    num / den
}

/// Tolerance for a window whose design matrix has condition number `cond`: COEF_TOL up to
/// cond 1e3 (where even a method squaring the condition number, like normal equations,
/// stays well within it), then growing like cond² (the forward error bound of such
/// methods). The test data keeps nearly every window far below 1e3.
pub fn coef_tol(cond: f64) -> f64 {
    COEF_TOL * (cond / 1e3).powi(2).max(1.0)
}

/// Half-width (a factor either way) of the band around the `ill_conditioned` threshold
/// where the oracle does not predict the status: the oracle's condition number and the
/// engine's are computed by different algorithms, and rounding decides near the line.
pub const COND_FACTOR: f64 = 10.0;

/// Relative rounding allowed on the engine's `cond` against the bracket docs/statistics.md
/// promises: `κ₂(S) ≤ cond ≤ d^{3/2} · κ₂(S)`, with `κ₂(S)` the oracle's (the 2-norm
/// condition of the scaled centered normal matrix, from an SVD of the centered rows).
pub const COND_ROUNDING: f64 = 1e-4;

/// The engine's threshold for `ill_conditioned` (src/model.rs `ILL_CONDITIONED`), written
/// here again: the tests do not link the crate.
pub const ILL_CONDITIONED: f64 = 1e10;

/// Relative tolerance on the residual sum of squares, against [`Model::fit_scale`] (so on
/// `r2 · Syy` and `rmse² · n`), for windows whose coefficients are compared at `COEF_TOL`;
/// it grows with the coefficient tolerance.
pub const FIT_TOL: f64 = 1e-10;

/// The status the oracle expects, or `None` in the band around the threshold where an
/// estimated condition number may fall either side (a factor `COND_FACTOR²` wide each way).
pub fn expected_status(w: &Model) -> Option<&'static str> {
    if w.coef.is_none() {
        return Some("underdetermined");
    }
    let band = COND_FACTOR * COND_FACTOR;
    if w.ill_measure.is_nan() || w.ill_measure > ILL_CONDITIONED * band {
        Some("ill_conditioned")
    } else if w.ill_measure <= ILL_CONDITIONED / band {
        Some("ok")
    } else {
        None
    }
}

/// Compares one window's model with the reference; `Err` says which field and how.
fn compare_model(g: &Model, w: &Model) -> Result<(), String> {
    if g.n != w.n {
        return Err(format!("n: engine {} oracle {}", g.n, w.n));
    }
    // The oracle's models have no status; an engine model used as the reference has one.
    let oracle = w.has_oracle() || w.status.is_none();
    // Status.
    let want_status: Option<String> = if oracle {
        expected_status(w).map(str::to_owned)
    } else {
        w.status.clone()
    };
    match (&g.status, &want_status) {
        (None, _) => return Err("no status".into()),
        (Some(s), Some(ws)) if s != ws => {
            return Err(format!(
                "status: engine {s:?} expected {ws:?} (oracle cond {:e}, precision measure {:e})",
                w.cond, w.ill_measure
            ));
        }
        (Some(s), None) if s != "ok" && s != "ill_conditioned" => {
            return Err(format!("status {s:?} near the ill-conditioned threshold"));
        }
        _ => {}
    }
    let (gb, wb) = match (&g.coef, &w.coef) {
        (None, None) => {
            if g.r2.is_some() || g.rmse.is_some() || !g.cond.is_nan() {
                return Err(format!(
                    "n <= d window has r2 {:?} rmse {:?} cond {}",
                    g.r2, g.rmse, g.cond
                ));
            }
            return Ok(());
        }
        (Some(_), None) => return Err("engine gives coef for an n <= d window".into()),
        (None, Some(_)) => {
            return Err(format!(
                "engine gives null coef (status {:?}) but the reference has a solution",
                g.status
            ));
        }
        (Some(gb), Some(wb)) => (gb, wb),
    };
    if gb.len() != wb.len() {
        return Err(format!("coef length {} vs {}", gb.len(), wb.len()));
    }
    // cond, in the documented bracket [κ₂, d^1.5 · κ₂] of the reference's κ₂, where the
    // reference's is clear of the threshold.
    let wc = w.cond;
    if wc.is_finite() && wc <= ILL_CONDITIONED / COND_FACTOR {
        let d = (gb.len() - 1) as f64;
        let (lo, hi) = (
            wc * (1.0 - COND_ROUNDING),
            wc * d.max(1.0).powf(1.5) * (1.0 + COND_ROUNDING),
        );
        let ok = g.cond.is_finite() && g.cond >= lo && g.cond <= hi;
        // A 1x1 scaled matrix is exactly 1; an estimate must not go below 1 either.
        if !ok || g.cond < 1.0 - 1e-9 {
            return Err(format!(
                "cond: engine {:e} outside [κ₂, d^1.5·κ₂] = [{lo:e}, {hi:e}] of the \
                 reference κ₂ {wc:e}",
                g.cond
            ));
        }
    } else if wc.is_nan() && !oracle {
        // Engine vs engine with no oracle measures: both must say the same.
        if !g.cond.is_nan() {
            return Err(format!("cond: engine {:e}, reference none", g.cond));
        }
    } else if !(g.cond.is_nan() || g.cond >= ILL_CONDITIONED / (COND_FACTOR * COND_FACTOR)) {
        // The reference is singular or beyond the threshold: null, or large.
        return Err(format!(
            "cond: engine {:e} but the reference is {wc:e} (near singular)",
            g.cond
        ));
    }
    let dc = if w.design_cond.is_nan() {
        1.0
    } else {
        w.design_cond
    };
    if dc > COND_COMPARE_LIMIT {
        return Ok(());
    }
    let tol = coef_tol(dc);
    let e = rel_err(gb, wb);
    if e > tol {
        return Err(format!(
            "coef relative error {e:e} > {tol:e} (design cond {dc:e}):\n engine: {gb:?}\n oracle: {wb:?}"
        ));
    }
    // r2 and rmse: through the residual sum of squares they come from.
    let scale = if w.fit_scale.is_nan() {
        // Engine vs engine: relative to the reference's own values.
        f64::NAN
    } else {
        w.fit_scale
    };
    let ftol = FIT_TOL * tol / COEF_TOL;
    let nf = w.n as f64;
    match (g.rmse, w.rmse) {
        (Some(a), Some(b)) => {
            let err = (a * a - b * b).abs() * nf;
            let bound = if scale.is_nan() {
                ftol * (b * b * nf).max(1.0)
            } else {
                ftol * scale
            };
            if err > bound {
                return Err(format!(
                    "rmse: engine {a:e} reference {b:e} (SSE differs by {err:e} > {bound:e})"
                ));
            }
        }
        (a, b) => return Err(format!("rmse: engine {a:?} reference {b:?}")),
    }
    let syy_zero = !w.syy.is_nan() && w.syy <= 0.0;
    match (g.r2, w.r2) {
        (Some(a), Some(b)) => {
            let syy = if w.syy.is_nan() { 1.0 } else { w.syy };
            let err = (a - b).abs() * syy;
            let bound = if scale.is_nan() {
                ftol * syy.max(1.0)
            } else {
                ftol * scale
            };
            if err > bound {
                return Err(format!(
                    "r2: engine {a} reference {b} (times Syy {syy:e}: {err:e} > {bound:e})"
                ));
            }
        }
        (None, None) => {}
        // A constant target: the oracle's two-pass Syy is 0, the engine's from unshifted
        // sums may keep a residue (its status is ill_conditioned then, checked above).
        (_, None) if syy_zero => {}
        (a, b) => return Err(format!("r2: engine {a:?} reference {b:?}")),
    }
    Ok(())
}

/// Asserts the engine's kept models equal the reference in every field: the same set of
/// windows (so the same `window_end` of each), exactly `expected` of them, and per window
/// `n` exactly, the final flag, `coef` within `coef_tol(design cond)` (not compared above
/// `COND_COMPARE_LIMIT`), `r2` and `rmse` within `FIT_TOL` of the residual sum of squares'
/// scale, `cond` in its documented bracket of the oracle's κ₂, and the status the oracle expects
/// (outside the band around the threshold). The message names the window that failed.
/// Returns the number of windows compared.
pub fn assert_matches_oracle(
    got: &BTreeMap<WinKey, Model>,
    want: &BTreeMap<WinKey, Model>,
    expected: usize,
    ctx: &str,
) -> usize {
    assert!(
        expected > 0,
        "{ctx}: a comparison of no windows proves nothing (expected 0)"
    );
    let gk: BTreeSet<&WinKey> = got.keys().collect();
    let wk: BTreeSet<&WinKey> = want.keys().collect();
    let missing: Vec<_> = wk.difference(&gk).take(10).collect();
    let extra: Vec<_> = gk.difference(&wk).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{ctx}: window sets differ ({} engine, {} oracle); missing from engine (first 10): \
         {missing:?}; extra in engine (first 10): {extra:?}",
        got.len(),
        want.len()
    );
    let mut compared = 0;
    for (k, w) in want {
        if let Err(why) = compare_model(&got[k], w) {
            panic!(
                "{ctx}: window {k:?} (n={}, window_end {}): {why}\n engine: {:?}",
                w.n, k.2, got[k]
            );
        }
        compared += 1;
    }
    assert_eq!(
        compared, expected,
        "{ctx}: compared {compared} windows, expected {expected}"
    );
    compared
}

/// Checks the revisions of an output's emissions against its history: per key and window
/// start, the first emission has revision 0; each later one that changed the window (its
/// end or n) or is a provisional one has the previous revision + 1, and a final one equal
/// to the last provisional one keeps its revision; nothing follows a final one. Lines
/// repeated exactly (a restart replaying output not yet checkpointed) are skipped.
pub fn assert_revisions(ems: &[Emission], ctx: &str) {
    type Seen = (i64, usize, u64, bool);
    let mut hist: BTreeMap<(String, i64), Vec<Seen>> = BTreeMap::new();
    for e in ems {
        let (key, ws, we) = &e.key;
        let m = &e.model;
        let this: Seen = (*we, m.n, m.revision, m.is_final);
        let h = hist.entry((key.clone(), *ws)).or_default();
        if h.contains(&this) {
            continue;
        }
        let want = match h.last() {
            None => 0,
            Some(&(_, _, _, true)) => panic!(
                "{ctx}: window ({key}, {ws}) emitted again after its final model: {}",
                e.raw
            ),
            Some(&(pe, pn, pr, false)) => {
                if pe == *we && pn == m.n && m.is_final {
                    pr
                } else {
                    pr + 1
                }
            }
        };
        assert_eq!(
            m.revision, want,
            "{ctx}: window ({key}, {ws}, {we}) revision {} but its history {h:?} makes it {want}: {}",
            m.revision, e.raw
        );
        h.push(this);
    }
}

/// Reads an output file whole (it must have finished), checks its revisions
/// ([`assert_revisions`]) and its final models against the oracle
/// ([`assert_matches_oracle`]).
pub fn assert_out_matches(
    path: &Path,
    want: &BTreeMap<WinKey, Model>,
    expected: usize,
    ctx: &str,
) -> usize {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{ctx}: cannot read {}: {e}", path.display()));
    let ems = parse_emissions(complete_lines(&text));
    assert_revisions(&ems, ctx);
    assert_matches_oracle(&keep_final(&ems), want, expected, ctx)
}

/// [`assert_matches_oracle`] expecting exactly the reference's windows (kept for the
/// tests of other owners; new tests state the number they expect).
pub fn assert_models_match(
    got: &BTreeMap<WinKey, Model>,
    want: &BTreeMap<WinKey, Model>,
    ctx: &str,
) {
    assert_matches_oracle(got, want, want.len(), ctx);
}

// ---------------------------------------------------------------------------------------
// Running the engine
// ---------------------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory removed on drop (kept when the env var TRIBUTARY_KEEP_TMP is set).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> Self {
        let c = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!(
            "tributary-it-{}-{}-{}",
            std::process::id(),
            test,
            c
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("TRIBUTARY_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub struct RunOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub cmdline: String,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    pub fn assert_success(&self) {
        assert!(
            self.success(),
            "engine failed (exit {:?})\ncommand: {}\nstderr:\n{}",
            self.code,
            self.cmdline,
            self.stderr
        );
    }
    /// The value of the last `name=N` token on stderr (the exit summary).
    pub fn summary(&self, name: &str) -> Option<u64> {
        summary_token(&self.stderr, name)
    }
}

/// The records each worker read, from the exit summary's `worker_records=a/b/…`.
pub fn worker_records(stderr: &str) -> Vec<u64> {
    stderr
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("worker_records="))
        .next_back()
        .map(|list| list.split('/').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// A block size that cuts the file into at least two blocks per worker (block k goes to
/// worker k mod W), so that every one of `workers` workers reads.
pub fn block_for(path: &Path, workers: usize) -> u64 {
    (std::fs::metadata(path).unwrap().len() / (2 * workers as u64)).max(64)
}

/// Asserts the exit summary's `worker_records=a/b/…` has one count per worker, every one
/// non-zero, summing to `total`; returns the counts.
pub fn assert_every_worker_read(stderr: &str, workers: usize, total: u64, ctx: &str) -> Vec<u64> {
    let per_worker = worker_records(stderr);
    assert_eq!(
        per_worker.len(),
        workers,
        "{ctx}: worker_records of {workers} workers expected; stderr:\n{stderr}"
    );
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "{ctx}: a worker read nothing: {per_worker:?}"
    );
    assert_eq!(
        per_worker.iter().sum::<u64>(),
        total,
        "{ctx}: worker_records {per_worker:?} do not add up to the records"
    );
    per_worker
}

pub fn summary_token(stderr: &str, name: &str) -> Option<u64> {
    let prefix = format!("{name}=");
    let mut found = None;
    for tok in stderr.split(|c: char| c.is_whitespace() || c == ',' || c == ';') {
        if let Some(rest) = tok.strip_prefix(&prefix) {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(v) = digits.parse() {
                found = Some(v);
            }
        }
    }
    found
}

/// Maximum wall time of one engine run before it is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `tributary` with these arguments; stdout/stderr go to files in `dir`.
pub fn run_engine(dir: &TempDir, args: &[String]) -> RunOutput {
    run_engine_env(dir, args, &[])
}

/// [`run_engine`] with these environment variables set for the engine.
pub fn run_engine_env(dir: &TempDir, args: &[String], env: &[(&str, &str)]) -> RunOutput {
    let c = COUNTER.fetch_add(1, Ordering::SeqCst);
    let out_p = dir.path(&format!("stdout-{c}.txt"));
    let err_p = dir.path(&format!("stderr-{c}.txt"));
    let bin = env!("CARGO_BIN_EXE_tributary");
    let cmdline = format!("{bin} {}", args.join(" "));
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_p).unwrap())
        .stderr(std::fs::File::create(&err_p).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "engine did not finish within {RUN_TIMEOUT:?}\ncommand: {cmdline}\nstderr:\n{}",
                std::fs::read_to_string(&err_p).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    RunOutput {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_p).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_p).unwrap_or_default(),
        cmdline,
    }
}

/// Settings of one `tributary run`.
#[derive(Clone, Debug)]
pub struct RunCfg {
    pub source: String,
    pub features: String,
    pub win: Win,
    pub lateness: String,
    pub ridge: Option<f64>,
    pub workers: usize,
    pub extra: Vec<String>,
}

impl RunCfg {
    pub fn csv(path: &Path, d: usize, win: Win) -> Self {
        RunCfg {
            source: format!("csv:{}", path.display()),
            features: feature_list(d),
            win,
            lateness: "5s".into(),
            ridge: None,
            workers: 1,
            extra: Vec::new(),
        }
    }
    pub fn args(&self, out: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--source".into(),
            self.source.clone(),
            "--time".into(),
            "ts".into(),
            "--key".into(),
            "key".into(),
            "--features".into(),
            self.features.clone(),
            "--target".into(),
            "y".into(),
            "--window".into(),
            self.win.arg(),
            "--lateness".into(),
            self.lateness.clone(),
            "--out".into(),
            out.display().to_string(),
            "-w".into(),
            self.workers.to_string(),
        ];
        if let Some(l) = self.ridge {
            a.push("--ridge".into());
            a.push(format!("{l}"));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// Runs the engine with `cfg`, asserts success, returns (run output, raw output text).
pub fn run_ok(dir: &TempDir, cfg: &RunCfg, out_name: &str) -> (RunOutput, String) {
    let out = dir.path(out_name);
    let r = run_engine(dir, &cfg.args(&out));
    r.assert_success();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    (r, text)
}

pub fn late_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("late-out line not JSON ({e}): {l}"))
        })
        .collect()
}

/// The reference for comparing two engine runs with each other: the models of `a` with
/// the oracle's condition numbers and measures (so the tolerances and the expected status
/// are the same as against the oracle).
pub fn with_oracle_cond(
    a: &BTreeMap<WinKey, Model>,
    oracle: &BTreeMap<WinKey, Model>,
) -> BTreeMap<WinKey, Model> {
    a.iter()
        .map(|(k, m)| {
            let mut m = m.clone();
            if let Some(o) = oracle.get(k) {
                m.cond = o.cond;
                m.design_cond = o.design_cond;
                m.ill_measure = o.ill_measure;
                m.syy = o.syy;
                m.fit_scale = o.fit_scale;
            }
            (k.clone(), m)
        })
        .collect()
}

/// Summary of the oracle's windows, for messages: (windows, underdetermined, max design
/// cond of the determined ones).
pub fn oracle_stats(o: &BTreeMap<WinKey, Model>) -> (usize, usize, f64) {
    let under = o.values().filter(|m| m.coef.is_none()).count();
    let maxc = o
        .values()
        .filter(|m| m.coef.is_some())
        .map(|m| m.design_cond)
        .fold(0.0, f64::max);
    (o.len(), under, maxc)
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

/// `rows` as CSV lines, each with its newline.
pub fn csv_lines(rows: &[Row]) -> String {
    rows.iter().map(|r| csv_line(r) + "\n").collect()
}

/// Every final revision-0 line of `--out` appears once per window (windows written final
/// are never written again, across restarts too).
pub fn assert_written_once(out: &Path) {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut seen: BTreeMap<(WinKey, u64), usize> = BTreeMap::new();
    for e in parse_emissions(complete_lines(&text)) {
        if e.model.is_final {
            *seen.entry((e.key.clone(), e.model.revision)).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "{}: windows written final more than once (first 5, with count): {twice:?}",
        out.display()
    );
}

/// Writes a hostfile of `n` free ports on 127.0.0.1 and returns them. The ports are
/// probed and released for the processes to bind: another process may take one in
/// between, which a test meets by starting again on new ports.
pub fn loopback_hostfile(path: &Path, n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let lines: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(path, lines).unwrap();
    ports
}
