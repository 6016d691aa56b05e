//! Sufficient statistics of linear regression, as a difference type.
//!
//! For rows `z = [x₁ … x_d, y]` the statistics are the count `n`, the sums `Σz`, and the
//! upper triangle of `ZᵀZ` (which holds `XᵀX`, `Xᵀy` and `Σy²`). They form an abelian
//! group under addition: the statistics of a union of row sets are the sum of theirs, and
//! negation retracts rows. That makes [`Stats`] a *difference* for differential dataflow:
//! the pane collection's differences are `Stats`, and their sum per (key, pane) is the
//! statistics of all the rows that were added and not retracted.
//!
//! Floating-point sums do not cancel exactly, so zero-ness is decided by the exact integer
//! count alone: statistics with `n == 0` are zero, and are canonicalised to the empty
//! value so that equality, order and hashing agree with it. The engine keeps this sound
//! by never retracting a pane: the windows operator drops a pane no open window needs.
//! A negative update (a correction) must retract rows that were added (why
//! [`window_panes`](crate::operators::WindowPanes::window_panes) takes insert-only
//! records: [`crate::operators`]); then a pane whose count sums to zero really has no
//! rows, whatever residue the sums held.

use std::borrow::Cow;
use std::cmp::Ordering;

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use serde::{Deserialize, Serialize};

/// The number of entries in the packed upper triangle of an `m × m` matrix.
#[inline]
pub const fn packed_len(m: usize) -> usize {
    m * (m + 1) / 2
}

/// The position of entry `(i, j)`, `i ≤ j`, in the packed upper triangle of an `m × m`
/// matrix stored row by row.
#[inline]
pub const fn packed_index(m: usize, i: usize, j: usize) -> usize {
    i * m - i * i.saturating_sub(1) / 2 + (j - i)
}

/// Regression statistics of a multiset of rows `z = [x, y]` with `d` features.
///
/// Layout of [`Stats::sums`]: the first `m = d + 1` entries are `Σz`, then the packed upper
/// triangle of `ZᵀZ`, row by row (`(0,0), (0,1), …, (0,m-1), (1,1), …`).
///
/// The statistics of a single row ([`Stats::of_row`]) keep the row itself, `m` numbers
/// instead of `m + m(m+1)/2`, and make its products only when another row or a negation
/// needs them: with many keys most panes hold one record, and the sums of a pane of
/// `d = 8` are 432 bytes against the row's 72. The products are the ones
/// [`Stats::add_row`] makes, rounded the same way, so a sum does not depend on when they
/// were made. Equality, order and the serialized form are those of the sums.
///
/// ```
/// use differential_dataflow::difference::{Abelian, IsZero, Semigroup};
/// use tributary::Stats;
///
/// // Two rows with one feature: z = [x, y].
/// let mut window = Stats::of_row(&[1.0, 2.0]);
/// window.plus_equals(&Stats::of_row(&[3.0, 5.0]));
/// assert_eq!(window.n, 2);
/// assert_eq!(window.sum(), &[4.0, 7.0]);
/// assert_eq!(window.cross(0, 1), 1.0 * 2.0 + 3.0 * 5.0); // Σxy
///
/// // Retracting both rows gives zero, whatever the floating-point residue.
/// let mut retraction = window.clone();
/// retraction.negate();
/// window.plus_equals(&retraction);
/// assert!(window.is_zero());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Number of rows (negative while a retraction is being accumulated).
    pub n: i64,
    /// `Σz` followed by the packed upper triangle of `ZᵀZ`, or the row `z` itself when
    /// `row`; empty when `n == 0`.
    sums: Vec<f64>,
    /// Whether `sums` is a single row (then `n == 1`).
    row: bool,
}

/// The serialized form of [`Stats`]: the count and the sums (a row's made).
#[derive(Serialize, Deserialize)]
#[serde(rename = "Stats")]
struct StatsForm<'a> {
    n: i64,
    sums: Cow<'a, [f64]>,
}

impl Serialize for Stats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StatsForm {
            n: self.n,
            sums: self.sums(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Stats {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let form = StatsForm::deserialize(deserializer)?;
        Ok(Stats::from_sums(form.n, form.sums.into_owned()))
    }
}

impl Stats {
    /// The zero statistics, valid for any dimension.
    pub const fn zero() -> Self {
        Stats {
            n: 0,
            sums: Vec::new(),
            row: false,
        }
    }

    /// Empty statistics with room for `d` features, ready for [`Stats::add_row`].
    pub fn with_features(d: usize) -> Self {
        let m = d + 1;
        Stats {
            n: 0,
            sums: vec![0.0; m + packed_len(m)],
            row: false,
        }
    }

    /// The statistics of count `n` and sums `sums` in the full layout (see [`Stats`]; any
    /// length of it is taken as is). With `n == 0` they are zero, whatever `sums` holds.
    pub fn from_sums(n: i64, sums: Vec<f64>) -> Self {
        let mut stats = Stats {
            n,
            sums,
            row: false,
        };
        stats.canonicalize();
        stats
    }

    /// The statistics of a single row `z = [x, y]`, which keep the row until its products
    /// are needed.
    pub fn of_row(z: &[f64]) -> Self {
        assert!(!z.is_empty(), "a row holds at least its target");
        Stats {
            n: 1,
            sums: z.to_vec(),
            row: true,
        }
    }

    /// `Σz` followed by the packed upper triangle of `ZᵀZ` (empty for zero statistics):
    /// borrowed, or made from a single row.
    pub fn sums(&self) -> Cow<'_, [f64]> {
        match self.row {
            true => {
                let mut full = Vec::new();
                products_into(&mut full, &self.sums);
                Cow::Owned(full)
            }
            false => Cow::Borrowed(&self.sums),
        }
    }

    /// The storage of the statistics: the sums, or the single row (for a prefetch).
    pub(crate) fn storage(&self) -> &[f64] {
        &self.sums
    }

    /// Makes the products of a single row, so that `sums` is the full layout.
    fn expand(&mut self) {
        if self.row {
            let z = std::mem::take(&mut self.sums);
            products_into(&mut self.sums, &z);
            self.row = false;
        }
    }

    /// Becomes a copy of `other` in the full layout, reusing its storage: a sum of
    /// statistics starts so ([`Semigroup::plus_equals`] of zero copies `other`'s form).
    pub(crate) fn assign(&mut self, other: &Stats) {
        if other.row {
            products_into(&mut self.sums, &other.sums);
        } else {
            self.sums.clear();
            self.sums.extend_from_slice(&other.sums);
        }
        self.n = other.n;
        self.row = false;
    }

    /// Adds one row `z = [x₁ … x_d, y]` in `O(d²)`, without allocating.
    ///
    /// The statistics must have been made for `z.len() - 1` features.
    #[inline]
    pub fn add_row(&mut self, z: &[f64]) {
        self.expand();
        let m = z.len();
        debug_assert_eq!(
            self.sums.len(),
            m + packed_len(m),
            "row of another dimension"
        );
        self.n += 1;
        add_products(&mut self.sums, z);
    }

    /// The number of features `d`, or `None` for the zero statistics.
    pub fn features(&self) -> Option<usize> {
        if self.sums.is_empty() {
            return None;
        }
        if self.row {
            return Some(self.sums.len() - 1);
        }
        // len = m + m(m+1)/2  =>  m² + 3m − 2·len = 0.
        let len = self.sums.len() as f64;
        let m = ((-3.0 + (9.0 + 8.0 * len).sqrt()) / 2.0).round() as usize;
        Some(m - 1)
    }

    /// `Σz`: the sums of the features followed by the sum of the target.
    pub fn sum(&self) -> &[f64] {
        let m = self.features().map_or(0, |d| d + 1);
        &self.sums[..m]
    }

    /// Entry `(i, j)` of `ZᵀZ` (symmetric; indices `0..=d`, `d` being the target).
    pub fn cross(&self, i: usize, j: usize) -> f64 {
        let m = self.features().expect("cross of zero statistics") + 1;
        let (i, j) = if i <= j { (i, j) } else { (j, i) };
        if self.row {
            return self.sums[i] * self.sums[j];
        }
        self.sums[m + packed_index(m, i, j)]
    }

    /// The mean of each column of `z = [x₁ … x_d, y]`, or `None` when `n ≤ 0`.
    ///
    /// ```
    /// use tributary::Stats;
    /// let mut s = Stats::of_row(&[1.0, 10.0]);
    /// differential_dataflow::difference::Semigroup::plus_equals(&mut s, &Stats::of_row(&[3.0, 20.0]));
    /// assert_eq!(s.mean(), Some(vec![2.0, 15.0]));
    /// ```
    pub fn mean(&self) -> Option<Vec<f64>> {
        if self.n <= 0 {
            return None;
        }
        Some(self.sum().iter().map(|s| s / self.n as f64).collect())
    }

    /// The sample covariance matrix of `z = [x₁ … x_d, y]` (denominator `n − 1`), row by
    /// row, or `None` when `n < 2`. Computed from the raw sums,
    /// `(Σzᵢzⱼ − n·z̄ᵢz̄ⱼ) / (n − 1)`: exact up to rounding when the columns' means are not
    /// large against their spreads (the relative error grows like `ε·(mean/sd)²`).
    pub fn covariance(&self) -> Option<Vec<Vec<f64>>> {
        if self.n < 2 {
            return None;
        }
        let mean = self.mean()?;
        let m = mean.len();
        let n = self.n as f64;
        Some(
            (0..m)
                .map(|i| {
                    (0..m)
                        .map(|j| (self.cross(i, j) - n * mean[i] * mean[j]) / (n - 1.0))
                        .collect()
                })
                .collect(),
        )
    }

    /// The Pearson correlation matrix of `z = [x₁ … x_d, y]`, or `None` when `n < 2`;
    /// entries of a column without variance are NaN.
    pub fn correlation(&self) -> Option<Vec<Vec<f64>>> {
        let cov = self.covariance()?;
        let sd: Vec<f64> = (0..cov.len()).map(|i| cov[i][i].max(0.0).sqrt()).collect();
        Some(
            cov.iter()
                .enumerate()
                .map(|(i, row)| {
                    row.iter()
                        .enumerate()
                        .map(|(j, c)| {
                            if sd[i] > 0.0 && sd[j] > 0.0 {
                                c / (sd[i] * sd[j])
                            } else {
                                f64::NAN
                            }
                        })
                        .collect()
                })
                .collect(),
        )
    }

    fn canonicalize(&mut self) {
        if self.n == 0 {
            self.sums.clear();
            self.row = false;
        }
    }
}

/// `sums += [z, upper triangle of z zᵀ]`: up to eight features, a loop per dimension that
/// the compiler unrolls flat ([`add_fixed`]).
#[inline]
fn add_products(sums: &mut [f64], z: &[f64]) {
    match z.len() {
        2 => add_fixed::<2>(sums, z),
        3 => add_fixed::<3>(sums, z),
        4 => add_fixed::<4>(sums, z),
        5 => add_fixed::<5>(sums, z),
        6 => add_fixed::<6>(sums, z),
        7 => add_fixed::<7>(sums, z),
        8 => add_fixed::<8>(sums, z),
        9 => add_fixed::<9>(sums, z),
        _ => add(sums, z),
    }
}

/// `sums` becomes the full layout of the single row `z` (zeros plus its products, as
/// [`Stats::add_row`] would make them), reusing its storage.
fn products_into(sums: &mut Vec<f64>, z: &[f64]) {
    sums.clear();
    sums.resize(z.len() + packed_len(z.len()), 0.0);
    add_products(sums, z);
}

/// `sums += [z, upper triangle of z zᵀ]`, for any length of `z`.
#[inline]
fn add(sums: &mut [f64], z: &[f64]) {
    let m = z.len();
    let (sum, cross) = sums.split_at_mut(m);
    for (s, zi) in sum.iter_mut().zip(z) {
        *s += zi;
    }
    let mut row = cross;
    for i in 0..m {
        let zi = z[i];
        let (this, rest) = row.split_at_mut(m - i);
        for (c, zj) in this.iter_mut().zip(&z[i..]) {
            *c += zi * zj;
        }
        row = rest;
    }
}

/// [`add`] for `z` of length `M`, known when compiling: no loop is left.
#[inline]
fn add_fixed<const M: usize>(sums: &mut [f64], z: &[f64]) {
    let (Ok(z), Some((sum, cross))) = (<&[f64; M]>::try_from(z), sums.split_first_chunk_mut::<M>())
    else {
        return add(sums, z);
    };
    for i in 0..M {
        sum[i] += z[i];
    }
    let mut k = 0;
    for i in 0..M {
        for j in i..M {
            cross[k] += z[i] * z[j];
            k += 1;
        }
    }
}

impl IsZero for Stats {
    #[inline]
    fn is_zero(&self) -> bool {
        self.n == 0
    }
}

impl Semigroup for Stats {
    fn plus_equals(&mut self, rhs: &Self) {
        if rhs.n == 0 {
            return;
        }
        if self.sums.is_empty() {
            self.sums.extend_from_slice(&rhs.sums);
            self.row = rhs.row;
            self.n = rhs.n;
            return;
        }
        self.expand();
        if rhs.row {
            let m = rhs.sums.len();
            assert_eq!(
                self.sums.len(),
                m + packed_len(m),
                "statistics of different dimensions"
            );
            add_products(&mut self.sums, &rhs.sums);
        } else {
            assert_eq!(
                self.sums.len(),
                rhs.sums.len(),
                "statistics of different dimensions"
            );
            for (a, b) in self.sums.iter_mut().zip(&rhs.sums) {
                *a += b;
            }
        }
        self.n += rhs.n;
        self.canonicalize();
    }
}

impl Monoid for Stats {
    fn zero() -> Self {
        Stats::zero()
    }
}

impl Abelian for Stats {
    fn negate(&mut self) {
        self.expand();
        self.n = -self.n;
        for s in &mut self.sums {
            *s = -*s;
        }
    }
}

/// A total order (by `n`, then the sums by [`f64::total_cmp`]), as differential requires
/// of its data and differences. Zero statistics are all equal, whatever their dimension.
impl Ord for Stats {
    fn cmp(&self, other: &Self) -> Ordering {
        self.n.cmp(&other.n).then_with(|| {
            let (a, b) = (self.sums(), other.sums());
            a.len().cmp(&b.len()).then_with(|| {
                a.iter()
                    .zip(b.iter())
                    .map(|(x, y)| x.total_cmp(y))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            })
        })
    }
}

impl PartialOrd for Stats {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Stats {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Stats {}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_cross(rows: &[Vec<f64>], i: usize, j: usize) -> f64 {
        rows.iter().map(|z| z[i] * z[j]).sum()
    }

    #[test]
    fn rows_accumulate_into_cross_products() {
        let rows = vec![
            vec![1.0, 2.0, 3.0],
            vec![-1.0, 0.5, 4.0],
            vec![2.0, 2.0, -1.0],
        ];
        let mut s = Stats::zero();
        for z in &rows {
            s.plus_equals(&Stats::of_row(z));
        }
        assert_eq!(s.n, 3);
        assert_eq!(s.features(), Some(2));
        assert_eq!(s.sum(), &[2.0, 4.5, 6.0]);
        for i in 0..3 {
            for j in 0..3 {
                assert_eq!(s.cross(i, j), brute_cross(&rows, i, j), "({i},{j})");
            }
        }
    }

    #[test]
    fn retraction_to_zero_count_is_zero_despite_residue() {
        let mut s = Stats::of_row(&[0.1, 0.2]);
        s.plus_equals(&Stats::of_row(&[0.7, 0.3]));
        let mut back = Stats::of_row(&[0.7, 0.3]);
        back.plus_equals(&Stats::of_row(&[0.1, 0.2]));
        back.negate();
        s.plus_equals(&back);
        assert!(s.is_zero());
        assert_eq!(s, Stats::zero());
        assert!(s.sums().is_empty());
    }

    #[test]
    fn moments_match_two_pass_formulas() {
        let rows = vec![
            vec![1.0, 2.0, 3.0],
            vec![-1.0, 0.5, 4.0],
            vec![2.0, 2.0, -1.0],
            vec![0.5, -3.0, 2.0],
        ];
        let mut s = Stats::zero();
        for z in &rows {
            s.plus_equals(&Stats::of_row(z));
        }
        let n = rows.len() as f64;
        let mean: Vec<f64> = (0..3)
            .map(|j| rows.iter().map(|z| z[j]).sum::<f64>() / n)
            .collect();
        let cov = s.covariance().unwrap();
        let corr = s.correlation().unwrap();
        for i in 0..3 {
            assert!((s.mean().unwrap()[i] - mean[i]).abs() < 1e-15);
            for j in 0..3 {
                let c = rows
                    .iter()
                    .map(|z| (z[i] - mean[i]) * (z[j] - mean[j]))
                    .sum::<f64>()
                    / (n - 1.0);
                assert!((cov[i][j] - c).abs() < 1e-12, "cov ({i},{j})");
                let vi: f64 = rows.iter().map(|z| (z[i] - mean[i]).powi(2)).sum();
                let vj: f64 = rows.iter().map(|z| (z[j] - mean[j]).powi(2)).sum();
                let r = c * (n - 1.0) / (vi * vj).sqrt();
                assert!((corr[i][j] - r).abs() < 1e-12, "corr ({i},{j})");
            }
        }
        assert_eq!(Stats::of_row(&[1.0, 2.0]).covariance(), None);
    }

    /// The statistics of `rows` made the old way: the full layout from the start, one
    /// `add_row` after the other.
    fn full(rows: &[Vec<f64>]) -> Stats {
        let mut s = Stats::with_features(rows[0].len() - 1);
        rows.iter().for_each(|z| s.add_row(z));
        s
    }

    /// Bitwise equality of the count and the sums.
    fn same_bits(a: &Stats, b: &Stats) -> bool {
        let bits = |s: &Stats| s.sums().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        a.n == b.n && bits(a) == bits(b)
    }

    #[test]
    fn a_single_row_is_its_products_in_every_view() {
        let z = vec![0.1, -3.5, 1e150, 7.0];
        let (row, made) = (Stats::of_row(&z), full(std::slice::from_ref(&z)));
        assert!(row.row && !made.row);
        assert_eq!(row.storage().len(), 4, "the row, not its products");
        assert!(same_bits(&row, &made));
        assert_eq!(row, made);
        assert_eq!(row.cmp(&made), Ordering::Equal);
        assert_eq!((row.features(), row.sum()), (made.features(), made.sum()));
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(row.cross(i, j).to_bits(), made.cross(i, j).to_bits());
            }
        }
        assert_eq!(row.mean(), made.mean());
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(json, serde_json::to_string(&made).unwrap());
        let bytes = bincode::serialize(&row).unwrap();
        assert_eq!(bytes, bincode::serialize(&made).unwrap());
        let back: Stats = bincode::deserialize(&bytes).unwrap();
        assert!(same_bits(&back, &made) && !back.row);
        let mut negated = row.clone();
        negated.negate();
        let mut want = made.clone();
        want.negate();
        assert!(same_bits(&negated, &want));
        let mut assigned = Stats::with_features(9);
        assigned.assign(&row);
        assert!(same_bits(&assigned, &made) && !assigned.row);
        // No feature: the target alone.
        let (alone, made) = (Stats::of_row(&[2.5]), full(&[vec![2.5]]));
        assert!(same_bits(&alone, &made) && alone.features() == Some(0));
    }

    proptest::proptest! {
        /// Sums of single rows and of sums, in any order and with negations, are bit for
        /// bit the sums made the old way (every statistic in the full layout) by the same
        /// operations: when a row's products are made does not change a sum.
        #[test]
        fn rows_kept_or_made_give_the_same_bits(
            rows in proptest::collection::vec(proptest::collection::vec(-1e6f64..1e6, 3), 1..12),
            splits in proptest::collection::vec(0usize..4, 1..12),
            negated in proptest::collection::vec(proptest::bool::ANY, 12),
        ) {
            // Groups of rows (a group of one is a kept row), each maybe negated, summed.
            let (mut ours, mut theirs) = (Stats::zero(), Stats::zero());
            let mut at = 0;
            for (g, &len) in splits.iter().enumerate() {
                let group = &rows[at.min(rows.len())..(at + len.max(1)).min(rows.len())];
                at += len.max(1);
                if group.is_empty() {
                    break;
                }
                let mut ours_g = Stats::of_row(&group[0]);
                group[1..].iter().for_each(|z| ours_g.add_row(z));
                let mut theirs_g = full(group);
                if negated[g] {
                    ours_g.negate();
                    theirs_g.negate();
                }
                ours.plus_equals(&ours_g);
                theirs.plus_equals(&theirs_g);
                proptest::prop_assert!(same_bits(&ours, &theirs));
                proptest::prop_assert_eq!(ours.is_zero(), theirs.is_zero());
            }
        }
    }

    #[test]
    fn features_inverts_layout_length() {
        for d in [1, 2, 8, 32, 100] {
            assert_eq!(Stats::with_features(d).features(), Some(d));
        }
    }
}
