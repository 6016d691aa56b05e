//! The examples' independent check: least squares computed directly from a window's rows,
//! with none of the engine's code (no `Stats`, no `solve`). Each example uses a part.
#![allow(dead_code)]

use std::collections::BTreeMap;

use nalgebra::{DMatrix, DVector};
use tributary::{ModelLine, Status};

/// The raw records of each (key, window start): features `x` and target `y`.
pub type WindowRows = BTreeMap<(String, i64), Vec<(Vec<f64>, f64)>>;

/// Every model is final, `Ok`, `length` ms long, and equal to an SVD least-squares fit on
/// `[1, x]` of its window's raw records (not from sums): the same `n`, coefficients and r²
/// within 1e-9. And there is one model for every window with data.
pub fn assert_models_match(models: &[ModelLine], rows: &WindowRows, length: i64) {
    assert_eq!(
        models.len(),
        rows.len(),
        "a model for every window of the data"
    );
    for m in models {
        assert!(m.is_final && m.status == Status::Ok && m.window_end - m.window_start == length);
        let w = &rows[&(m.key.clone(), m.window_start)];
        assert_eq!(m.n as usize, w.len(), "{m:?}: n");
        let d = w[0].0.len();
        let a = DMatrix::from_fn(
            w.len(),
            d + 1,
            |i, j| if j == 0 { 1.0 } else { w[i].0[j - 1] },
        );
        let y = DVector::from_fn(w.len(), |i, _| w[i].1);
        let b = a.clone().svd(true, true).solve(&y, 1e-12).unwrap();
        let scale = b.iter().fold(1.0f64, |s, v| s.max(v.abs()));
        let coef = m.coef.as_ref().expect("determined");
        let err = coef
            .iter()
            .zip(b.iter())
            .fold(0.0f64, |e, (c, o)| e.max((c - o).abs()));
        assert!(
            err <= 1e-9 * scale,
            "{m:?}: independent fit {:?}",
            b.as_slice()
        );
        let sst: f64 = y.iter().map(|v| (v - y.mean()).powi(2)).sum();
        let r2 = 1.0 - (&y - &a * &b).norm_squared() / sst;
        assert!(
            (m.r2.unwrap() - r2).abs() <= 1e-9,
            "{m:?}: independent r2 {r2}"
        );
    }
}

/// Least squares with an intercept on rows `[x…, y]`: centred normal equations, solved by
/// Gaussian elimination with partial pivoting.
pub fn least_squares(rows: &[Vec<f64>]) -> Vec<f64> {
    let d = rows[0].len() - 1;
    let n = rows.len() as f64;
    let mean: Vec<f64> = (0..=d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let mut a = vec![vec![0.0; d + 1]; d];
    for r in rows {
        for i in 0..d {
            for j in 0..=d {
                a[i][j] += (r[i] - mean[i]) * (r[j] - mean[j]);
            }
        }
    }
    for col in 0..d {
        let pivot = (col..d)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .unwrap();
        a.swap(col, pivot);
        let (top, below) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for row in below {
            let f = row[col] / pivot_row[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
        }
    }
    let mut b = vec![0.0; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|j| a[i][j] * b[j]).sum();
        b[i] = (a[i][d] - s) / a[i][i];
    }
    let intercept = mean[d] - (0..d).map(|j| mean[j] * b[j]).sum::<f64>();
    std::iter::once(intercept).chain(b).collect()
}
