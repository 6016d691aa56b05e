//! The independent oracle: reads a CSV the way a correct engine must, groups rows into
//! windows, solves each window by nalgebra SVD least squares over its exact rows, and
//! compares the engine's models with it field by field (tolerances documented here).

use super::*;
use nalgebra::{DMatrix, DVector};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Relative tolerance on coefficients (normwise: max|b - b_ref| / max(max|b_ref|, 1)).
pub const COEF_TOL: f64 = 1e-9;

/// Windows whose design matrix [1, X] has a condition number above this are too badly
/// conditioned for a 1e-9 coefficient comparison to be meaningful; their coefficients are
/// not compared (n and the set of windows still are). Test data is built so that such
/// windows do not occur except where a test wants them.
pub const COND_COMPARE_LIMIT: f64 = 1e6;

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
    pub(super) fn engine(n: usize, coef: Option<Vec<f64>>, cond: f64) -> Model {
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

/// [`assert_matches_oracle`] expecting exactly the reference's windows (kept for the
/// tests of other owners; new tests state the number they expect).
pub fn assert_models_match(
    got: &BTreeMap<WinKey, Model>,
    want: &BTreeMap<WinKey, Model>,
    ctx: &str,
) {
    assert_matches_oracle(got, want, want.len(), ctx);
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
