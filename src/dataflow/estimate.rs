//! The running estimate of an open window, carried as its statistics ([`EstimateStats`]):
//! what the windows operator emits for the served models instead of a solved line.
//!
//! With `--serve`, every key touched in an epoch has a new running estimate (the open
//! window that closes next, on its records so far). Most are never read: solving each
//! one, formatting it and folding the line into the served models cost more than the
//! run itself at many keys. So the operator sends the window's summed statistics, and
//! the served models ([`ModelStore`](crate::serve::ModelStore)) solve one only when a
//! client reads it ([`EstimateStats::solve`]), with the same solve options as the run.

use serde::{Deserialize, Serialize};

use crate::key::Key;
use crate::messages::ModelLine;
use crate::model::{SolveOptions, solve};
use crate::stats::Stats;
use crate::window::Window;

/// The statistics of one key's running estimate: its open window that closes next and
/// the sum of the statistics of that window's records so far.
///
/// Exchanged between processes (bincode): the key as its text, the window's bounds and
/// the sums (`(d + 1)(d + 4) / 2` numbers for `d` features).
///
/// ```
/// use differential_dataflow::difference::Semigroup;
/// use tributary::dataflow::EstimateStats;
/// use tributary::window::Window;
/// use tributary::{Key, SolveOptions, Stats};
///
/// // y = 1 + 2x on three records of the window [0, 10 s).
/// let mut stats = Stats::zero();
/// for x in [0.0, 1.0, 2.0] {
///     stats.plus_equals(&Stats::of_row(&[x, 1.0 + 2.0 * x]));
/// }
/// let window = Window { start: 0, end: 10_000 };
/// let estimate = EstimateStats { key: Key::new("a"), window, stats };
/// let line = estimate.solve(SolveOptions::default());
/// assert!(!line.is_final);
/// assert_eq!((line.key.as_str(), line.n, line.revision), ("a", 3, 0));
/// let coef = line.coef.unwrap();
/// assert!((coef[0] - 1.0).abs() < 1e-12 && (coef[1] - 2.0).abs() < 1e-12);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EstimateStats {
    /// The key.
    pub key: Key,
    /// The open window that closes next (the first to end after the frontier).
    pub window: Window,
    /// The sum of the statistics of the window's panes so far (`n` is its record count).
    pub stats: Stats,
}

impl EstimateStats {
    /// The running estimate as served: the window's model solved with `options` (the
    /// run's), not final, revision 0.
    pub fn solve(&self, options: SolveOptions) -> ModelLine {
        let fit = solve(&self.stats, options);
        ModelLine::new(self.key.as_str(), self.window, self.stats.n, fit, false, 0)
    }
}
