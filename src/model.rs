//! Solving a window's statistics for its regression model.
//!
//! With an intercept, the least-squares problem separates: the slope `b` solves the
//! *centered* normal equations `(Sxx + λI) b = Sxy`, where `Sxx = XᵀX − n x̄x̄ᵀ` and
//! `Sxy = Xᵀy − n x̄ȳ`, and the intercept is `b₀ = ȳ − x̄·b` (never penalized). Both come
//! straight from [`Stats`], in `O(d³)` whatever the number of rows.
//!
//! The system is first scaled by its diagonal (so features in different units do not look
//! ill-conditioned), then solved by Cholesky. The condition number reported bounds the
//! 2-norm condition `κ₂` of that scaled matrix from above: `‖S‖₁ · ‖L⁻¹‖_F²` from the
//! Cholesky factor `L` (at most `d^{3/2} κ₂`, and `O(d³/6)`), replaced by `κ₂` itself (a
//! symmetric eigen-decomposition) wherever the bound comes within a factor of 4 of a
//! decision below, so every status is decided on `κ₂` exactly. Above [`ILL_CONDITIONED`] the status is
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

use crate::stats::{Stats, packed_index};

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
    /// Condition number of the scaled normal matrix: its 2-norm condition where a status
    /// depends on it, elsewhere an upper bound of it (see the module documentation).
    pub cond: Option<f64>,
    /// Trustworthiness.
    pub status: Status,
}

impl Fit {
    /// The fit of a window with no more records than features: no coefficients.
    pub fn underdetermined() -> Fit {
        Fit {
            coef: None,
            r2: None,
            rmse: None,
            cond: None,
            status: Status::Underdetermined,
        }
    }

    /// The fit of a window whose sums or solution are not finite: no coefficients.
    fn not_finite() -> Fit {
        Fit {
            status: Status::NotFinite,
            ..Fit::underdetermined()
        }
    }
}

/// Whether `n` records can determine a model of `features` features (and an intercept):
/// [`solve`] gives [`Fit::underdetermined`] otherwise, from the count alone, so a caller
/// that knows the count need not sum the statistics.
#[inline]
pub fn determined(n: i64, features: usize) -> bool {
    n > features as i64
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
    let d = match checked(stats) {
        Ok(d) => d,
        Err(fit) => return fit,
    };
    // Up to eight features, everything on the stack with the loops' bounds known; the
    // same operations in the same order as `solve_dynamic`, so the same bits.
    match d {
        1 => solve_fixed::<1>(stats, options),
        2 => solve_fixed::<2>(stats, options),
        3 => solve_fixed::<3>(stats, options),
        4 => solve_fixed::<4>(stats, options),
        5 => solve_fixed::<5>(stats, options),
        6 => solve_fixed::<6>(stats, options),
        7 => solve_fixed::<7>(stats, options),
        8 => solve_fixed::<8>(stats, options),
        _ => solve_dynamic(stats, d, options),
    }
}

/// The number of features of `stats` if a model can be solved from them, or the fit
/// without one: underdetermined (no more records than features), or `not_finite` (sums
/// that overflowed).
fn checked(stats: &Stats) -> Result<usize, Fit> {
    let Some(d) = stats.features() else {
        return Err(Fit::underdetermined());
    };
    if !determined(stats.n, d) {
        return Err(Fit::underdetermined());
    }
    if !stats.sums().iter().all(|v| v.is_finite()) {
        return Err(Fit::not_finite());
    }
    Ok(d)
}

/// How much precision centering the raw sums lost (see the module documentation), against
/// the diagonal `a(j)` actually solved (the ridge included); a diagonal that is not
/// positive is the condition number's business. `cross` reads the raw sums.
fn precision_loss(
    d: usize,
    a: impl Fn(usize) -> f64,
    cross: impl Fn(usize, usize) -> f64,
    syy: f64,
) -> f64 {
    let cx = (0..d)
        .filter(|&j| a(j) > 0.0)
        .map(|j| cross(j, j) / a(j))
        .fold(1.0, f64::max);
    // A target without spread left (Syy ≤ 0) determines no slope: as bad as it gets.
    let cy = if syy > 0.0 {
        cross(d, d) / syy
    } else {
        f64::INFINITY
    };
    cx.max((cx * cy).sqrt())
}

/// The condition number and the decisions on it.
struct Conditioning {
    cond: f64,
    /// Too ill-conditioned for the Cholesky solve: the pseudo-inverse answers.
    ill: bool,
    /// The condition times the centering's loss is past the threshold.
    imprecise: bool,
}

/// The condition number: the cheap upper `bound` from the Cholesky factor, or the `exact`
/// 2-norm condition where the decisions could depend on the difference; `loss` is the
/// centering's ([`precision_loss`]).
fn conditioning(bound: f64, loss: f64, exact: impl FnOnce() -> f64) -> Conditioning {
    let cond = if bound.is_finite() && bound * loss <= ILL_CONDITIONED / BOUND_MARGIN {
        bound
    } else {
        exact()
    };
    Conditioning {
        cond,
        ill: cond.is_nan() || cond > ILL_CONDITIONED,
        imprecise: cond * loss > ILL_CONDITIONED,
    }
}

/// The fit of the solved intercept `b0` and slopes `b`, with the residual sum of squares
/// `sse` of `n` records whose target's centered sum of squares is `syy`: `not_finite` if
/// a coefficient is not finite.
fn fit_of(
    b0: f64,
    b: impl ExactSizeIterator<Item = f64>,
    (sse, syy, n): (f64, f64, f64),
    conditioning: Conditioning,
) -> Fit {
    let r2 = (syy > 0.0).then(|| 1.0 - sse / syy);
    let mut coef = Vec::with_capacity(b.len() + 1);
    coef.push(b0);
    coef.extend(b);
    if !coef.iter().all(|c| c.is_finite()) {
        return Fit::not_finite();
    }
    let Conditioning {
        cond,
        ill,
        imprecise,
    } = conditioning;
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

/// [`solve`] for `D` features, `1 ≤ D`, on statistics already checked (determined, sums
/// finite): no allocation but the coefficients' (and the rare exact condition number's
/// or pseudo-inverse's, on nalgebra's dynamic matrices as in [`solve_dynamic`]).
///
/// Bit-identical to [`solve_dynamic`]: each step repeats the floating-point operations of
/// the nalgebra call it replaces, in the same order (nalgebra's fixed-size matrices would
/// not: their dot products of 2 to 4 entries sum in another order). Matrices are stored
/// column by column, `m[j][i]` being entry `(i, j)`, as nalgebra stores them. nalgebra's
/// `y = a·x·c + b·y` with `b = c = 1` is `y += a·x` here: multiplying by one is exact and
/// a floating-point sum does not depend on its operands' order.
fn solve_fixed<const D: usize>(stats: &Stats, options: SolveOptions) -> Fit {
    let m = D + 1;
    let sums = stats.sums();
    let sums = &sums[..];
    // Stats::cross without recomputing the dimension each time.
    let cross = |i: usize, j: usize| {
        let (i, j) = if i <= j { (i, j) } else { (j, i) };
        sums[m + packed_index(m, i, j)]
    };
    let n = stats.n as f64;
    let xbar: [f64; D] = std::array::from_fn(|i| sums[i] / n);
    let ybar = sums[D] / n;

    // Centered normal equations (each entry from its own (i, j): n x̄ᵢ x̄ⱼ and n x̄ⱼ x̄ᵢ
    // may round differently).
    let sxx: [[f64; D]; D] =
        std::array::from_fn(|j| std::array::from_fn(|i| cross(i, j) - n * xbar[i] * xbar[j]));
    let sxy: [f64; D] = std::array::from_fn(|i| cross(i, D) - n * xbar[i] * ybar);
    let syy = cross(D, D) - n * ybar * ybar;
    if !(sxx.as_flattened().iter().chain(&sxy).all(|v| v.is_finite()) && syy.is_finite()) {
        return Fit::not_finite();
    }

    let mut a = sxx;
    for (i, column) in a.iter_mut().enumerate() {
        column[i] += options.ridge;
    }
    let scale: [f64; D] = std::array::from_fn(|i| {
        let v = a[i][i];
        if v > 0.0 { 1.0 / v.sqrt() } else { 1.0 }
    });
    let scaled: [[f64; D]; D] =
        std::array::from_fn(|j| std::array::from_fn(|i| a[j][i] * scale[i] * scale[j]));
    let rhs: [f64; D] = std::array::from_fn(|i| sxy[i] * scale[i]);

    let loss = precision_loss(D, |j| a[j][j], cross, syy);
    let cholesky = cholesky_fixed(&scaled);
    let bound = cholesky
        .as_ref()
        .map_or(f64::INFINITY, |l| condition_bound_fixed(&scaled, l));
    let dynamic = || DMatrix::from_column_slice(D, D, scaled.as_flattened());
    let conditioning = conditioning(bound, loss, || condition(&dynamic()));
    let solution = match cholesky {
        Some(l) if !conditioning.ill => Some(cholesky_solve_fixed(&l, rhs)),
        _ => pseudo_solve(&dynamic(), &DVector::from_column_slice(&rhs))
            .map(|x| std::array::from_fn(|i| x[i])),
    };
    let Some(solution) = solution else {
        return Fit::not_finite();
    };
    let b: [f64; D] = std::array::from_fn(|i| solution[i] * scale[i]);

    let b0 = ybar - nalgebra_dot(&b, &xbar);
    // Sxx·b as nalgebra's gemv: column 0 times b₀, then each further column's multiple
    // added.
    let mut sxx_b: [f64; D] = std::array::from_fn(|i| sxx[0][i] * b[0]);
    for j in 1..D {
        for (y, s) in sxx_b.iter_mut().zip(&sxx[j]) {
            *y += s * b[j];
        }
    }
    let sse = (syy - 2.0 * nalgebra_dot(&b, &sxy) + nalgebra_dot(&b, &sxx_b)).max(0.0);
    fit_of(b0, b.into_iter(), (sse, syy, n), conditioning)
}

/// The Cholesky factor of `s` (column by column, lower triangle; the strict upper
/// triangle keeps `s`'s entries), or `None` where a pivot is zero, negative or NaN:
/// nalgebra's `Cholesky::new`, operation for operation.
fn cholesky_fixed<const D: usize>(s: &[[f64; D]; D]) -> Option<[[f64; D]; D]> {
    let mut l = *s;
    for j in 0..D {
        for k in 0..j {
            // Column j (from row j down) += −L_jk · column k.
            let factor = -l[k][j];
            let (left, right) = l.split_at_mut(j);
            for (y, x) in right[0][j..].iter_mut().zip(&left[k][j..]) {
                *y += factor * x;
            }
        }
        let diag = l[j][j];
        // `is_zero`, or `try_sqrt` refusing it (negative or NaN).
        if diag.is_nan() || diag <= 0.0 {
            return None;
        }
        let denom = diag.sqrt();
        l[j][j] = denom;
        for v in &mut l[j][j + 1..] {
            *v /= denom;
        }
    }
    Some(l)
}

/// Solves `L Lᵀ x = rhs` as nalgebra's `Cholesky::solve` does: forward substitution by
/// columns (axpy), then back substitution by dot products.
fn cholesky_solve_fixed<const D: usize>(l: &[[f64; D]; D], rhs: [f64; D]) -> [f64; D] {
    let mut x = rhs;
    for i in 0..D {
        let coeff = x[i] / l[i][i];
        x[i] = coeff;
        for (y, v) in x[i + 1..].iter_mut().zip(&l[i][i + 1..]) {
            *y += -coeff * v;
        }
    }
    for i in (0..D).rev() {
        let dot = nalgebra_dot(&l[i][i + 1..], &x[i + 1..]);
        x[i] = (x[i] - dot) / l[i][i];
    }
    x
}

/// `Σ xᵢ yᵢ` summed as nalgebra sums the dot product of dynamically sized vectors: eight
/// interleaved accumulators over each block of eight, combined pairwise into a sum that
/// starts at `+0`, then the remaining entries one by one.
fn nalgebra_dot(x: &[f64], y: &[f64]) -> f64 {
    debug_assert_eq!(x.len(), y.len());
    let len = x.len();
    let mut acc = [0.0f64; 8];
    let mut i = 0;
    while len - i >= 8 {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc += x[i + k] * y[i + k];
        }
        i += 8;
    }
    let mut res = 0.0;
    res += acc[0] + acc[4];
    res += acc[1] + acc[5];
    res += acc[2] + acc[6];
    res += acc[3] + acc[7];
    for k in i..len {
        res += x[k] * y[k];
    }
    res
}

/// [`solve`] on nalgebra's dynamically sized matrices, for any dimension `d`, on
/// statistics [`checked`] already: the implementation for more than eight features, and
/// the reference `solve_fixed` is tested against bit for bit.
fn solve_dynamic(stats: &Stats, d: usize, options: SolveOptions) -> Fit {
    let n = stats.n as f64;
    let mean: Vec<f64> = stats.sum().iter().map(|s| s / n).collect();
    let (xbar, ybar) = (&mean[..d], mean[d]);

    // Centered normal equations.
    let sxx = DMatrix::from_fn(d, d, |i, j| stats.cross(i, j) - n * xbar[i] * xbar[j]);
    let sxy = DVector::from_fn(d, |i, _| stats.cross(i, d) - n * xbar[i] * ybar);
    let syy = stats.cross(d, d) - n * ybar * ybar;
    // Centering can overflow where the sums did not (n x̄ᵢ x̄ⱼ).
    if !(sxx.iter().chain(sxy.iter()).all(|v| v.is_finite()) && syy.is_finite()) {
        return Fit::not_finite();
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

    let loss = precision_loss(d, |j| a[(j, j)], |i, j| stats.cross(i, j), syy);
    let cholesky = scaled.clone().cholesky();
    let bound = cholesky.as_ref().map_or(f64::INFINITY, |c| {
        condition_bound(d, scaled.as_slice(), c.l_dirty().as_slice())
    });
    let conditioning = conditioning(bound, loss, || condition(&scaled));
    let solution = (!conditioning.ill)
        .then(|| cholesky.map(|c| c.solve(&rhs)))
        .flatten()
        .or_else(|| pseudo_solve(&scaled, &rhs));
    let Some(solution) = solution else {
        return Fit::not_finite();
    };
    let b = solution.component_mul(&scale);

    let b0 = ybar - b.dot(&DVector::from_column_slice(xbar));
    // SSE = Syy − 2 bᵀSxy + bᵀ Sxx b (exact for any b when b₀ = ȳ − x̄·b).
    let sse = (syy - 2.0 * b.dot(&sxy) + b.dot(&(&sxx * &b))).max(0.0);
    fit_of(b0, b.iter().copied(), (sse, syy, n), conditioning)
}

/// How far below the threshold the bound of [`condition_bound`] must be for the exact
/// condition number not to be computed: covers the rounding of the bound itself.
const BOUND_MARGIN: f64 = 4.0;

/// An upper bound of the 2-norm condition number of the symmetric positive definite `s`
/// from its Cholesky factor `l` (lower triangle; the upper is ignored), both `d × d` and
/// stored column by column:
/// `‖S‖₁ · ‖L⁻¹‖_F²`. `λ_max(S) ≤ ‖S‖₁`, and `‖S⁻¹‖₂ = ‖L⁻¹‖₂² ≤ ‖L⁻¹‖_F²`, so the bound
/// is at least the condition number, and at most `d^{3/2}` times it (`‖S‖₁ ≤ √d ‖S‖₂`,
/// `‖L⁻¹‖_F² ≤ d ‖L⁻¹‖₂²`). `O(d³/6)`, against a full eigen-decomposition's many sweeps.
fn condition_bound(d: usize, s: &[f64], l: &[f64]) -> f64 {
    let s = |i: usize, j: usize| s[i + j * d];
    let l = |i: usize, j: usize| l[i + j * d];
    if d == 0 {
        return 1.0;
    }
    let norm1 = (0..d)
        .map(|j| (0..d).map(|i| s(i, j).abs()).sum::<f64>())
        .fold(0.0, f64::max);
    // Column j of L⁻¹ by forward substitution: x_j = 1/L_jj, x_i = −(Σ L_ik x_k)/L_ii.
    let mut x = [0.0f64; 64];
    let mut heap = Vec::new();
    let x: &mut [f64] = if d <= x.len() {
        &mut x[..d]
    } else {
        heap.resize(d, 0.0);
        &mut heap
    };
    let mut frobenius = 0.0;
    for j in 0..d {
        x[j] = 1.0 / l(j, j);
        frobenius += x[j] * x[j];
        for i in j + 1..d {
            let mut acc = 0.0;
            for (k, xk) in x.iter().enumerate().take(i).skip(j) {
                acc += l(i, k) * xk;
            }
            x[i] = -acc / l(i, i);
            frobenius += x[i] * x[i];
        }
    }
    let bound = norm1 * frobenius;
    if bound.is_nan() { f64::INFINITY } else { bound }
}

/// [`condition_bound`] for `D × D` matrices stored column by column (`m[j][i]` is entry
/// `(i, j)`), to the bit: the same entries of `L⁻¹`, each from the same sum in the same
/// order, and `‖L⁻¹‖_F²` summed column by column as there; but `L⁻¹` is computed row by
/// row, so that the divisions of a row, independent of one another, overlap instead of
/// waiting each for the one before.
fn condition_bound_fixed<const D: usize>(s: &[[f64; D]; D], l: &[[f64; D]; D]) -> f64 {
    if D == 0 {
        return 1.0;
    }
    let norm1 = s
        .iter()
        .map(|column| column.iter().map(|v| v.abs()).sum::<f64>())
        .fold(0.0, f64::max);
    // inverse[j][i] = (L⁻¹)_ij, for i ≥ j.
    let mut inverse = [[0.0f64; D]; D];
    #[allow(clippy::needless_range_loop)] // (i, j, k) index three ways, as in the formula
    for i in 0..D {
        inverse[i][i] = 1.0 / l[i][i];
        for j in 0..i {
            let mut acc = 0.0;
            for k in j..i {
                acc += l[k][i] * inverse[j][k];
            }
            inverse[j][i] = -acc / l[i][i];
        }
    }
    let mut frobenius = 0.0;
    for (j, column) in inverse.iter().enumerate() {
        for x in &column[j..] {
            frobenius += x * x;
        }
    }
    let bound = norm1 * frobenius;
    if bound.is_nan() { f64::INFINITY } else { bound }
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
            prop_assert!(stats.sums().iter().all(|v| v.is_finite()));
            let fit = solve(&stats, SolveOptions::default());
            check_fit(&fit, d);
        }
    }

    /// The fit's numbers as bits, so that `-0.0 ≠ 0.0` and any last-digit difference
    /// shows.
    fn fit_bits(fit: &Fit) -> (Status, Option<Vec<u64>>, [Option<u64>; 3]) {
        (
            fit.status,
            fit.coef
                .as_ref()
                .map(|c| c.iter().map(|v| v.to_bits()).collect()),
            [fit.r2, fit.rmse, fit.cond].map(|v| v.map(f64::to_bits)),
        )
    }

    /// Rows reshaped into the windows that exercise every branch of `solve`: `shape`
    /// picks collinear, nearly collinear (noise `eps`), huge-mean (offset `big`),
    /// constant-target and exact-fit windows, or leaves them as they are.
    fn shaped(mut rows: Vec<Vec<f64>>, shape: u8, eps: f64, big: f64) -> Vec<Vec<f64>> {
        for (r, z) in rows.iter_mut().enumerate() {
            let d = z.len() - 1;
            let last = d - 1;
            match shape {
                1 => z[last] = if d > 1 { -3.0 * z[0] } else { 0.25 },
                2 => z[last] = z[0] + eps * z[last],
                3 => z[r % d] += big,
                4 => z[d] = big,
                5 => {
                    z[d] = 0.5
                        + z[..d]
                            .iter()
                            .enumerate()
                            .map(|(j, x)| (j as f64 - 2.0) * x)
                            .sum::<f64>()
                }
                6 => {
                    z[last] += big;
                    z[0] = z[last] + eps * z[0];
                }
                _ => {}
            }
        }
        rows
    }

    /// Statistics of any dimension from 1 to 9: of (reshaped) rows, or raw sums of any
    /// f64 (non-finite included) with any count (negative, zero, `n ≤ d`).
    fn any_window() -> impl Strategy<Value = Stats> {
        (1usize..=9).prop_flat_map(|d| {
            let m = d + 1;
            let from_rows = (
                prop::collection::vec(
                    prop::collection::vec(
                        prop_oneof![4 => -10.0..10.0f64, 1 => accepted_value()],
                        m,
                    ),
                    0..4 * m + 8,
                ),
                0u8..8,
                prop_oneof![Just(1e-4), Just(1e-6), Just(1e-8), 1e-9..1e-3f64],
                prop_oneof![Just(1e6), Just(1e9), Just(-3e7), 1e3..1e12f64],
            )
                .prop_map(|(rows, shape, eps, big)| {
                    let mut s = Stats::zero();
                    for z in shaped(rows, shape, eps, big) {
                        s.plus_equals(&Stats::of_row(&z));
                    }
                    s
                });
            let raw = (
                -2i64..3 * m as i64,
                prop::collection::vec(any_value(), m + m * (m + 1) / 2),
            )
                .prop_map(|(n, sums)| Stats::from_sums(n, sums));
            prop_oneof![6 => from_rows, 1 => raw]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The stack-allocated solve for up to eight features gives the very bits of the
        /// dynamic (nalgebra `DMatrix`) one it replaced, on every kind of window.
        #[test]
        fn fixed_solve_is_bit_identical_to_dynamic(
            stats in any_window(),
            ridge in prop_oneof![3 => Just(0.0), 1 => 0.0..10.0f64, 1 => Just(1e-6)],
        ) {
            let options = SolveOptions { ridge };
            let fit = solve(&stats, options);
            // The checks are shared; past them, the dynamic path is the reference.
            let reference = match checked(&stats) {
                Ok(d) => solve_dynamic(&stats, d, options),
                Err(fit) => fit,
            };
            prop_assert_eq!(fit_bits(&fit), fit_bits(&reference), "{:?} vs {:?}", fit, reference);
        }
    }

    /// A random symmetric positive definite matrix of dimension `d` with condition
    /// number about `10^spread`, scaled to unit diagonal as `solve` scales it.
    fn unit_diagonal_spd(d: usize, seed: u64, spread: f64) -> DMatrix<f64> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let q = DMatrix::from_fn(d, d, |_, _| next()).qr().q();
        let eig = DVector::from_fn(d, |i, _| 10f64.powf(spread * i as f64 / d.max(2) as f64));
        let a = &q * DMatrix::from_diagonal(&eig) * q.transpose();
        let a = (&a + a.transpose()) * 0.5;
        DMatrix::from_fn(d, d, |i, j| a[(i, j)] / (a[(i, i)] * a[(j, j)]).sqrt())
    }

    proptest! {
        /// The Cholesky bound is never below the 2-norm condition number, and never more
        /// than `d^{3/2}` times it.
        #[test]
        fn condition_bound_brackets_the_condition(
            d in 1usize..12,
            seed in any::<u64>(),
            spread in 0.0..9.0f64,
        ) {
            let s = unit_diagonal_spd(d, seed, spread);
            let exact = condition(&s);
            let chol = s.clone().cholesky().expect("positive definite");
            let bound = condition_bound(d, s.as_slice(), chol.l_dirty().as_slice());
            prop_assert!(bound >= exact * (1.0 - 1e-9), "bound {bound:e} < cond {exact:e}");
            prop_assert!(
                bound <= exact * (d as f64).powf(1.5) * (1.0 + 1e-9),
                "bound {bound:e} > d^1.5 cond {exact:e}"
            );
        }
    }

    /// Near the threshold the reported `cond` is the exact 2-norm condition number (the
    /// status is decided as if it had always been computed); far below it, a bound.
    #[test]
    fn cond_is_exact_near_the_threshold() {
        // Two features, correlation r: the scaled matrix [[1, r], [r, 1]] has condition
        // (1 + r) / (1 − r).
        let window = |r: f64| -> Stats {
            let rows: Vec<_> = (0..400)
                .map(|i| {
                    let u = ((i * 37) % 101) as f64 / 101.0 - 0.5;
                    let v = ((i * 61) % 103) as f64 / 103.0 - 0.5;
                    (vec![u, r * u + (1.0 - r * r).sqrt() * v], u + v)
                })
                .collect();
            stats_of(&rows)
        };
        for r in [0.9999999999, 0.99999999995, 0.999999999, 0.5] {
            let stats = window(r);
            let fit = solve(&stats, SolveOptions::default());
            let n = stats.n as f64;
            let m = stats.mean().unwrap();
            let sxx = DMatrix::from_fn(2, 2, |i, j| stats.cross(i, j) - n * m[i] * m[j]);
            let scaled = DMatrix::from_fn(2, 2, |i, j| {
                sxx[(i, j)] / (sxx[(i, i)] * sxx[(j, j)]).sqrt()
            });
            let exact = condition(&scaled);
            let cond = fit.cond.unwrap_or(f64::INFINITY);
            if exact > ILL_CONDITIONED / (BOUND_MARGIN * 2f64.powf(1.5)) {
                // The same matrix up to the rounding of its scaling, which the
                // conditioning magnifies: far closer than the bound's factor of 2^1.5.
                assert!(
                    (cond / exact - 1.0).abs() < 1e-3,
                    "r = {r}: {cond:e} vs {exact:e}"
                );
                assert_eq!(
                    fit.status == Status::Ok,
                    exact <= ILL_CONDITIONED,
                    "r = {r}"
                );
            } else {
                assert!(cond >= exact * (1.0 - 1e-12) && cond <= exact * 2f64.powf(1.5));
                assert_eq!(fit.status, Status::Ok);
            }
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
