//! `bench incremental`: updating a window's model as the engine does, against recomputing
//! it from the window's rows.

use serde::{Deserialize, Serialize};

/// One row of `bench incremental`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncrementalRow {
    /// `absorb` (b new records), `correct` (retract and re-add one record of a closed
    /// window), each followed by the window's updated model.
    pub operation: String,
    /// Records in the window.
    pub window_records: u64,
    /// Records absorbed per update.
    pub batch: u64,
    /// Median latency of the incremental update and solve (µs).
    pub incremental_p50_us: f64,
    /// 99th percentile (µs).
    pub incremental_p99_us: f64,
    /// Recomputing the same model from the window's rows (ms).
    pub recompute_ms: f64,
    /// `recompute / incremental p50`.
    pub ratio: f64,
}

/// `bench incremental`: a sliding window of `records` rows (d features) held as the
/// engine holds it — per-pane [`Stats`](crate::stats::Stats), six panes per window —
/// then, timed: absorbing a batch of b new rows into the newest pane and solving the
/// window (the work the engine does per batch and window), correcting one row of a
/// closed window, and recomputing the model from the window's rows from scratch.
pub fn incremental(records: u64, d: usize, batches: &[u64]) -> Vec<IncrementalRow> {
    use crate::model::{SolveOptions, solve};
    use crate::stats::Stats;
    use differential_dataflow::difference::{Abelian, Semigroup};
    use std::time::Instant;

    const PANES: usize = 6;
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let row = |next: &mut dyn FnMut() -> f64| -> Vec<f64> {
        let x: Vec<f64> = (0..d).map(|_| next()).collect();
        let y = 1.0
            + x.iter()
                .enumerate()
                .map(|(i, v)| (i as f64 + 1.0) * v)
                .sum::<f64>()
            + 0.01 * next();
        x.into_iter().chain([y]).collect()
    };
    let rows: Vec<Vec<f64>> = (0..records).map(|_| row(&mut next)).collect();
    let per_pane = rows.len().div_ceil(PANES);
    let mut panes: Vec<Stats> = rows
        .chunks(per_pane)
        .map(|chunk| {
            let mut p = Stats::with_features(d);
            chunk.iter().for_each(|z| p.add_row(z));
            p
        })
        .collect();
    let window = |panes: &[Stats]| {
        let mut w = Stats::zero();
        panes.iter().for_each(|p| w.plus_equals(p));
        w
    };
    let options = SolveOptions::default();
    let percentile = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };

    // Recompute from scratch: fold every row of the window, then solve.
    let recompute_ms = {
        let mut times: Vec<f64> = (0..3)
            .map(|_| {
                let started = Instant::now();
                let mut w = Stats::with_features(d);
                rows.iter().for_each(|z| w.add_row(z));
                std::hint::black_box(solve(&w, options));
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        percentile(&mut times, 0.5)
    };

    let mut out = Vec::new();
    let mut measure = |operation: &str, batch: u64, f: &mut dyn FnMut()| {
        let reps = (200_000 / batch.max(1)).clamp(50, 2_000);
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        let (p50, p99) = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
        out.push(IncrementalRow {
            operation: operation.into(),
            window_records: records,
            batch,
            incremental_p50_us: p50,
            incremental_p99_us: p99,
            recompute_ms,
            ratio: recompute_ms * 1e3 / p50,
        });
    };
    for &b in batches {
        let fresh: Vec<Vec<f64>> = (0..b).map(|_| row(&mut next)).collect();
        measure("absorb", b, &mut || {
            let newest = panes.last_mut().expect("panes");
            fresh.iter().for_each(|z| newest.add_row(z));
            std::hint::black_box(solve(&window(&panes), options));
        });
    }
    // A late correction of a closed window: retract one record, add its corrected value.
    let mut closed = panes.clone();
    let wrong = rows[0].clone();
    let mut right = wrong.clone();
    right[d] += 1.0;
    measure("correct", 1, &mut || {
        let mut retraction = Stats::of_row(&wrong);
        retraction.negate();
        closed[0].plus_equals(&retraction);
        closed[0].add_row(&right);
        std::hint::black_box(solve(&window(&closed), options));
    });
    out
}

/// Formats `bench incremental` rows as a table.
pub fn incremental_table(rows: &[IncrementalRow]) -> String {
    let mut out = format!(
        "{:<9} {:>14} {:>7} {:>12} {:>12} {:>13} {:>10}\n",
        "operation", "window rows", "batch", "p50 µs", "p99 µs", "recompute ms", "ratio"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<9} {:>14} {:>7} {:>12.2} {:>12.2} {:>13.1} {:>10.0}\n",
            r.operation,
            r.window_records,
            r.batch,
            r.incremental_p50_us,
            r.incremental_p99_us,
            r.recompute_ms,
            r.ratio
        ));
    }
    out
}
