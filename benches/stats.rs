//! The algebra's hot paths against the naive way, side by side in each group:
//! per-record update, pane merge, window slide, and solve, for d = 2, 8, 32.
//!
//! `cargo bench --bench stats`; criterion's report shows each group's ratio.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use differential_dataflow::difference::{Abelian, Semigroup};
use nalgebra::{DMatrix, DVector};
use tributary::{SolveOptions, Stats, solve};

/// Deterministic rows `z = [x, y]` (a xorshift, so the bench needs nothing else).
fn rows(n: usize, d: usize) -> Vec<Vec<f64>> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    (0..n).map(|_| (0..=d).map(|_| next()).collect()).collect()
}

fn stats_of(rows: &[Vec<f64>]) -> Stats {
    let mut s = Stats::with_features(rows[0].len() - 1);
    for z in rows {
        s.add_row(z);
    }
    s
}

/// The naive way: XᵀX and Xᵀy rebuilt from the window's rows with an intercept column,
/// then solved by nalgebra's least squares (SVD).
fn naive_solve(rows: &[Vec<f64>]) -> DVector<f64> {
    let d = rows[0].len() - 1;
    let x = DMatrix::from_fn(
        rows.len(),
        d + 1,
        |i, j| if j == 0 { 1.0 } else { rows[i][j - 1] },
    );
    let y = DVector::from_fn(rows.len(), |i, _| rows[i][d]);
    let xtx = x.transpose() * &x;
    let xty = x.transpose() * y;
    xtx.svd(true, true).solve(&xty, 1e-12).unwrap()
}

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    for d in [2usize, 8, 32] {
        let window = rows(1000, d);
        let row = rows(1, d).pop().unwrap();
        let mut stats = stats_of(&window);
        group.bench_with_input(BenchmarkId::new("incremental", d), &d, |b, _| {
            b.iter(|| stats.add_row(black_box(&row)))
        });
        group.bench_with_input(
            BenchmarkId::new("naive_recompute_1000_rows", d),
            &d,
            |b, _| b.iter(|| stats_of(black_box(&window))),
        );
    }
    group.finish();
}

fn merge_and_slide(c: &mut Criterion) {
    let mut group = c.benchmark_group("window");
    for d in [2usize, 8, 32] {
        let panes: Vec<Stats> = (0..7).map(|i| stats_of(&rows(1000 + i, d))).collect();
        group.bench_with_input(BenchmarkId::new("pane_merge", d), &d, |b, _| {
            b.iter(|| {
                let mut s = panes[0].clone();
                s.plus_equals(black_box(&panes[1]));
                s
            })
        });
        let mut window = Stats::zero();
        for p in &panes[..6] {
            window.plus_equals(p);
        }
        let mut oldest = panes[0].clone();
        oldest.negate();
        group.bench_with_input(
            BenchmarkId::new("slide_add_one_retract_one", d),
            &d,
            |b, _| {
                b.iter(|| {
                    let mut w = window.clone();
                    w.plus_equals(black_box(&panes[6]));
                    w.plus_equals(black_box(&oldest));
                    w
                })
            },
        );
        let all: Vec<Vec<f64>> = (1..7).flat_map(|i| rows(1000 + i, d)).collect();
        group.bench_with_input(BenchmarkId::new("naive_slide_from_rows", d), &d, |b, _| {
            b.iter(|| stats_of(black_box(&all)))
        });
    }
    group.finish();
}

fn solving(c: &mut Criterion) {
    let mut group = c.benchmark_group("solve");
    for d in [2usize, 8, 32] {
        let window = rows(6000, d);
        let stats = stats_of(&window);
        group.bench_with_input(BenchmarkId::new("cholesky_from_stats", d), &d, |b, _| {
            b.iter(|| solve(black_box(&stats), SolveOptions::default()))
        });
        let mut collinear = window.clone();
        for z in &mut collinear {
            z[1] = 2.0 * z[0];
        }
        let ill = stats_of(&collinear);
        group.bench_with_input(
            BenchmarkId::new("svd_fallback_from_stats", d),
            &d,
            |b, _| b.iter(|| solve(black_box(&ill), SolveOptions::default())),
        );
        group.bench_with_input(BenchmarkId::new("naive_from_6000_rows", d), &d, |b, _| {
            b.iter(|| naive_solve(black_box(&window)))
        });
    }
    group.finish();
}

criterion_group!(benches, update, merge_and_slide, solving);
criterion_main!(benches);
