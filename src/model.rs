//! Solving a window's statistics for its regression model.
//!
//! With an intercept, the least-squares problem separates: the slope `b` solves the
//! *centered* normal equations `(Sxx + λI) b = Sxy`, where `Sxx = XᵀX − n x̄x̄ᵀ` and
//! `Sxy = Xᵀy − n x̄ȳ`, and the intercept is `b₀ = ȳ − x̄·b` (never penalized). Both come
//! straight from [`Stats`], in `O(d³)` whatever the number of rows.
//!
//! The system is first scaled by its diagonal (so features in different units do not look
//! ill-conditioned), then solved by Cholesky. The condition number reported is the 2-norm
//! condition of that scaled matrix. Above [`ILL_CONDITIONED`] the status is
//! `ill_conditioned`: coefficients are still given (from an SVD pseudo-inverse when
//! Cholesky fails) but should not be trusted.
//!
//! The sums are not shifted, so centering cancels digits when a feature's mean is large
//! against its spread: `Sxx_jj` keeps about `1 / c_j` of the precision of `Σx_j²`, with
//! `c_j = Σx_j² / (Sxx_jj + λ)`, and `Sxy_j` about `1 / √(c_j c_y)`, with
//! `c_y = Σy² / Syy`. The status is also `ill_conditioned` when the condition number times
//! `max(c, √(c c_y))` (`c` the largest `c_j`) exceeds [`ILL_CONDITIONED`], so digits lost
//! that way are not reported `ok`; so is a window whose target has no spread left
//! (`Syy ≤ 0`: a constant target, or one whose spread the sums could not hold).
//!
//! [`solve`] is total: it never panics, whatever the statistics hold. Sources refuse
//! values beyond [`MAX_ABS_VALUE`](crate::record::MAX_ABS_VALUE), so no square or product
//! of two values overflows, but sums of very many extreme rows (or statistics built by
//! hand) can still overflow, and so can a coefficient (a slope of 1e149 / 1e-161); a
//! window whose sums, centered matrix or coefficients are not finite is reported
//! `not_finite`, with no coefficients.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::stats::Stats;

/// Condition number (of the diagonally scaled centered normal matrix) above which a model
/// is reported `ill_conditioned`. At `1e10` the forward error bound of the coefficients is
/// about `1e10 · 2⁻⁵² ≈ 2e-6` relative.
pub const ILL_CONDITIONED: f64 = 1e10;

/// How models are solved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SolveOptions {
    /// Ridge penalty λ on the slopes (not the intercept), not scaled by `n`; `0` is OLS.
    pub ridge: f64,
}

/// How trustworthy a model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Well determined.
    Ok,
    /// Solved, but the condition number exceeds [`ILL_CONDITIONED`], or centering the
    /// sums cancelled too many digits (see the module documentation).
    IllConditioned,
    /// `n ≤ d`: not enough rows; no coefficients.
    Underdetermined,
    /// The window's sums or coefficients overflowed (are not finite numbers); no
    /// coefficients.
    NotFinite,
}

/// The solution of one window's regression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    /// `[b₀, b₁, …, b_d]`, or `None` when underdetermined.
    pub coef: Option<Vec<f64>>,
    /// Coefficient of determination `1 − SSE/SST` (`None` when undefined).
    pub r2: Option<f64>,
    /// Root mean squared residual `√(SSE/n)`.
    pub rmse: Option<f64>,
    /// Condition number of the scaled normal matrix.
    pub cond: Option<f64>,
    /// Trustworthiness.
    pub status: Status,
}

/// Solves the statistics for the regression coefficients (see the module docs).
///
/// ```
/// use differential_dataflow::difference::Semigroup;
/// use tributary::{SolveOptions, Stats, Status, solve};
///
/// // y = 1 + 2x, exactly.
/// let mut stats = Stats::zero();
/// for x in 0..10 {
///     let x = x as f64;
///     stats.plus_equals(&Stats::of_row(&[x, 1.0 + 2.0 * x]));
/// }
/// let fit = solve(&stats, SolveOptions::default());
/// assert_eq!(fit.status, Status::Ok);
/// let coef = fit.coef.unwrap();
/// assert!((coef[0] - 1.0).abs() < 1e-12 && (coef[1] - 2.0).abs() < 1e-12);
/// ```
pub fn solve(stats: &Stats, options: SolveOptions) -> Fit {
    let underdetermined = Fit {
        coef: None,
        r2: None,
        rmse: None,
        cond: None,
        status: Status::Underdetermined,
    };
    let Some(d) = stats.features() else {
        return underdetermined;
    };
    if stats.n <= d as i64 {
        return underdetermined;
    }
    let not_finite = Fit {
        status: Status::NotFinite,
        ..underdetermined
    };
    if !stats.sums.iter().all(|v| v.is_finite()) {
        return not_finite;
    }
    let n = stats.n as f64;
    let mean: Vec<f64> = stats.sum().iter().map(|s| s / n).collect();
    let (xbar, ybar) = (&mean[..d], mean[d]);

    // Centered normal equations.
    let sxx = DMatrix::from_fn(d, d, |i, j| stats.cross(i, j) - n * xbar[i] * xbar[j]);
    let sxy = DVector::from_fn(d, |i, _| stats.cross(i, d) - n * xbar[i] * ybar);
    let syy = stats.cross(d, d) - n * ybar * ybar;
    // Centering can overflow where the sums did not (n x̄ᵢ x̄ⱼ).
    if !(sxx.iter().chain(sxy.iter()).all(|v| v.is_finite()) && syy.is_finite()) {
        return not_finite;
    }

    let mut a = sxx.clone();
    for i in 0..d {
        a[(i, i)] += options.ridge;
    }
    // Jacobi scaling: A = D S D with S unit-diagonal.
    let scale = DVector::from_fn(d, |i, _| {
        let v = a[(i, i)];
        if v > 0.0 { 1.0 / v.sqrt() } else { 1.0 }
    });
    let scaled = DMatrix::from_fn(d, d, |i, j| a[(i, j)] * scale[i] * scale[j]);
    let rhs = sxy.component_mul(&scale);

    let cond = condition(&scaled);
    let ill = cond.is_nan() || cond > ILL_CONDITIONED;
    // Precision lost by centering the raw sums (see the module documentation), against
    // the diagonal actually solved (the ridge included); a diagonal that is not positive
    // is the condition number's business.
    let cx = (0..d)
        .filter(|&j| a[(j, j)] > 0.0)
        .map(|j| stats.cross(j, j) / a[(j, j)])
        .fold(1.0, f64::max);
    // A target without spread left (Syy ≤ 0) determines no slope: as bad as it gets.
    let cy = if syy > 0.0 {
        stats.cross(d, d) / syy
    } else {
        f64::INFINITY
    };
    let imprecise = cond * cx.max((cx * cy).sqrt()) > ILL_CONDITIONED;
    let solution = (!ill)
        .then(|| scaled.clone().cholesky().map(|c| c.solve(&rhs)))
        .flatten()
        .or_else(|| pseudo_solve(&scaled, &rhs));
    let Some(solution) = solution else {
        return not_finite;
    };
    let b = solution.component_mul(&scale);

    let b0 = ybar - b.dot(&DVector::from_column_slice(xbar));
    // SSE = Syy − 2 bᵀSxy + bᵀ Sxx b (exact for any b when b₀ = ȳ − x̄·b).
    let sse = (syy - 2.0 * b.dot(&sxy) + b.dot(&(&sxx * &b))).max(0.0);
    let r2 = (syy > 0.0).then(|| 1.0 - sse / syy);
    let mut coef = Vec::with_capacity(d + 1);
    coef.push(b0);
    coef.extend(b.iter());
    if !coef.iter().all(|c| c.is_finite()) {
        return not_finite;
    }
    Fit {
        coef: Some(coef),
        r2: r2.filter(|v| v.is_finite()),
        rmse: Some((sse / n).sqrt()).filter(|v| v.is_finite()),
        cond: Some(cond).filter(|c| c.is_finite()),
        status: if ill || imprecise {
            Status::IllConditioned
        } else {
            Status::Ok
        },
    }
}

/// 2-norm condition number of a symmetric positive semi-definite matrix (∞ if singular
/// or not finite).
fn condition(a: &DMatrix<f64>) -> f64 {
    if a.nrows() == 0 {
        return 1.0;
    }
    if !a.iter().all(|v| v.is_finite()) {
        return f64::INFINITY;
    }
    let eig = a.clone().symmetric_eigenvalues();
    let max = eig.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let min = eig.iter().cloned().fold(f64::INFINITY, f64::min);
    if min <= 0.0 || !min.is_finite() || !max.is_finite() {
        f64::INFINITY
    } else {
        max / min
    }
}

/// Most sweeps the SVD may take (it converges in a few dozen on any finite matrix).
const SVD_MAX_ITERATIONS: usize = 10_000;

/// Minimum-norm solution by SVD, dropping singular values below a relative tolerance;
/// `None` when the matrix or the right-hand side is not finite, or the SVD does not
/// converge (nalgebra's panicking `svd` is never called).
fn pseudo_solve(a: &DMatrix<f64>, rhs: &DVector<f64>) -> Option<DVector<f64>> {
    if !a.iter().chain(rhs.iter()).all(|v| v.is_finite()) {
        return None;
    }
    let svd = nalgebra::SVD::try_new(a.clone(), true, true, f64::EPSILON, SVD_MAX_ITERATIONS)?;
    let max = svd.singular_values.max();
    let eps = max * a.nrows() as f64 * f64::EPSILON;
    let x = svd.solve(rhs, eps).ok()?;
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Evaluates `ŷ = b₀ + b·x` for coefficients `[b₀, b₁, …, b_d]`.
pub fn predict(coef: &[f64], x: &[f64]) -> f64 {
    coef[0] + coef[1..].iter().zip(x).map(|(b, x)| b * x).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::MAX_ABS_VALUE;
    use differential_dataflow::difference::{Abelian, Semigroup};
    use proptest::prelude::*;

    fn stats_of(rows: &[(Vec<f64>, f64)]) -> Stats {
        let mut s = Stats::zero();
        for (x, y) in rows {
            let mut z = x.clone();
            z.push(*y);
            s.plus_equals(&Stats::of_row(&z));
        }
        s
    }

    /// A feature whose mean dwarfs its spread loses its digits to centering: such a
    /// window is not reported `ok`; the same spread near zero is.
    #[test]
    fn digits_lost_to_centering_are_not_ok() {
        let rows = |offset: f64| -> Vec<(Vec<f64>, f64)> {
            (0..50)
                .map(|i| {
                    let x = offset + 1e-3 * ((i * 37) % 11) as f64;
                    (vec![x], 2.0 * (x - offset) + 0.01 * ((i * 13) % 7) as f64)
                })
                .collect()
        };
        let near_zero = solve(&stats_of(&rows(0.0)), SolveOptions::default());
        assert_eq!(near_zero.status, Status::Ok);
        let far = solve(&stats_of(&rows(1e6)), SolveOptions::default());
        assert_eq!(far.status, Status::IllConditioned, "{far:?}");
        // A moderate offset keeps enough digits (1e4 ± 3: c ≈ 1e7, cond 1).
        let moderate_rows: Vec<_> = rows(0.0)
            .into_iter()
            .map(|(x, y)| (vec![x[0] * 1e3 + 1e4], y))
            .collect();
        let moderate = solve(&stats_of(&moderate_rows), SolveOptions::default());
        assert_eq!(moderate.status, Status::Ok, "{moderate:?}");
        // The target's digits: y = 1e8 + 1e-4·x.
        let far_y: Vec<_> = rows(0.0)
            .into_iter()
            .map(|(x, _)| (vec![x[0] * 1e3], 1e8 + 1e-4 * x[0] * 1e3))
            .collect();
        let fit = solve(&stats_of(&far_y), SolveOptions::default());
        assert_eq!(fit.status, Status::IllConditioned, "{fit:?}");
        // With a ridge, a constant feature (its Sxx rounding residue) is determined by λ,
        // and the huge-mean feature is still caught.
        let ridge = SolveOptions { ridge: 0.5 };
        let constant: Vec<_> = rows(0.0)
            .into_iter()
            .map(|(x, y)| (vec![x[0], 0.1], y))
            .collect();
        assert_eq!(solve(&stats_of(&constant), ridge).status, Status::Ok);
        assert_eq!(
            solve(&stats_of(&rows(1e6)), SolveOptions { ridge: 1e-6 }).status,
            Status::IllConditioned
        );
    }

    /// Any f64 at all: huge, tiny, subnormal, ±0, ±∞, NaN.
    fn any_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            -1e3..1e3f64,
            prop::num::f64::SUBNORMAL | prop::num::f64::NEGATIVE | prop::num::f64::POSITIVE,
            Just(-0.0),
            Just(1e200),
            Just(-1e300),
            Just(f64::MAX),
        ]
    }

    /// Values a source accepts, of mixed magnitudes.
    fn accepted_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e3..1e3f64,
            -MAX_ABS_VALUE..MAX_ABS_VALUE,
            (-1.0..1.0f64, -300i32..150).prop_map(|(m, e)| m * 10f64.powi(e)),
            Just(MAX_ABS_VALUE),
            Just(-MAX_ABS_VALUE),
            Just(-0.0),
            Just(5e-324),
        ]
    }

    /// The fit's invariants: never a non-finite number with status `ok`, coefficients
    /// exactly when the status has them.
    fn check_fit(fit: &Fit, d: usize) {
        match fit.status {
            Status::Ok | Status::IllConditioned => {
                let coef = fit.coef.as_ref().expect("a solved status has coefficients");
                assert_eq!(coef.len(), d + 1);
                assert!(coef.iter().all(|c| c.is_finite()), "{fit:?}");
            }
            Status::Underdetermined | Status::NotFinite => assert!(fit.coef.is_none()),
        }
        if fit.status == Status::Ok {
            assert!(
                fit.cond
                    .is_some_and(|c| c.is_finite() && c <= ILL_CONDITIONED)
            );
            assert!(fit.rmse.is_some_and(f64::is_finite), "{fit:?}");
        }
        for v in [fit.r2, fit.rmse, fit.cond].into_iter().flatten() {
            assert!(v.is_finite(), "{fit:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// `Stats` and `solve` take any f64 without panicking, and never call a
        /// non-finite model `ok`.
        #[test]
        fn solve_is_total(
            rows in (1usize..4).prop_flat_map(|d| {
                prop::collection::vec(prop::collection::vec(any_value(), d + 1), 0..12)
            }),
            ridge in prop_oneof![Just(0.0), 0.0..10.0f64],
        ) {
            let d = rows.first().map_or(1, |r| r.len() - 1);
            let mut stats = Stats::zero();
            for z in &rows {
                stats.plus_equals(&Stats::of_row(z));
            }
            let fit = solve(&stats, SolveOptions { ridge });
            check_fit(&fit, d);
            // Retracting a row keeps it total as well.
            if let Some(z) = rows.first() {
                let mut minus = Stats::of_row(z);
                minus.negate();
                stats.plus_equals(&minus);
                check_fit(&solve(&stats, SolveOptions { ridge }), d);
            }
        }

        /// Within the accepted range no sum of a few rows overflows: the statistics stay
        /// finite. (A coefficient itself can still exceed `f64`, e.g. a slope of
        /// 1e149 / 1e-161: then the status is `not_finite`, never `ok`.)
        #[test]
        fn accepted_values_never_overflow(
            rows in (1usize..4).prop_flat_map(|d| {
                prop::collection::vec(prop::collection::vec(accepted_value(), d + 1), 0..12)
            }),
        ) {
            let d = rows.first().map_or(1, |r| r.len() - 1);
            let mut stats = Stats::zero();
            for z in &rows {
                stats.plus_equals(&Stats::of_row(z));
            }
            prop_assert!(stats.sums.iter().all(|v| v.is_finite()));
            let fit = solve(&stats, SolveOptions::default());
            check_fit(&fit, d);
        }
    }

    /// The poison rows of issue 13: finite values whose squares overflow.
    #[test]
    fn overflowing_sums_are_not_finite_not_a_panic() {
        let rows: Vec<_> = (0..4)
            .map(|i| (vec![1e200 * (i + 1) as f64], 1.0 + i as f64))
            .collect();
        let fit = solve(&stats_of(&rows), SolveOptions::default());
        assert_eq!(fit.status, Status::NotFinite);
        assert!(fit.coef.is_none());
        let line = serde_json::to_string(&fit).unwrap();
        assert!(line.contains("\"not_finite\""), "{line}");
    }

    #[test]
    fn exact_line_is_recovered() {
        let rows: Vec<_> = (0..20)
            .map(|i| {
                let x = vec![i as f64, ((i * 7) % 5) as f64];
                let y = 1.5 + 2.0 * x[0] - 3.0 * x[1];
                (x, y)
            })
            .collect();
        let fit = solve(&stats_of(&rows), SolveOptions::default());
        assert_eq!(fit.status, Status::Ok);
        let coef = fit.coef.unwrap();
        for (c, e) in coef.iter().zip([1.5, 2.0, -3.0]) {
            assert!((c - e).abs() < 1e-10, "{coef:?}");
        }
        assert!(fit.rmse.unwrap() < 1e-7);
        assert!((fit.r2.unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn too_few_rows_are_underdetermined() {
        let rows = vec![(vec![1.0, 2.0], 1.0), (vec![2.0, 1.0], 0.0)];
        let fit = solve(&stats_of(&rows), SolveOptions::default());
        assert_eq!(fit.status, Status::Underdetermined);
        assert!(fit.coef.is_none());
    }

    #[test]
    fn collinear_features_are_ill_conditioned() {
        let rows: Vec<_> = (0..10)
            .map(|i| (vec![i as f64, 2.0 * i as f64], 1.0 + i as f64))
            .collect();
        let fit = solve(&stats_of(&rows), SolveOptions::default());
        assert_eq!(fit.status, Status::IllConditioned);
        let coef = fit.coef.unwrap();
        // The minimum-norm solution still fits the data.
        for (x, y) in &rows {
            assert!((predict(&coef, x) - y).abs() < 1e-6);
        }
    }
}
