//! The examples' independent check: least squares computed directly from a window's rows,
//! with none of the engine's code (no `Stats`, no `solve`).

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
