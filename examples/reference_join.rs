//! Records joined with a slowly changing reference collection before the regression:
//! per key, a scale for feature x0 (say, a unit). Changing one key's scale re-emits the
//! models of that key's windows and of no other key.
//!
//! Run with `cargo run --example reference_join`.

use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use tributary::{Row, SolveOptions, Stats, Window, WindowSpec, WindowStats, solve};

mod oracle;
use oracle::least_squares;

/// (epoch, key, window, statistics, +1 added / −1 retracted)
type Change = (u64, String, Window, Stats, isize);

fn main() {
    let rows = rows();
    let window: WindowSpec = "sliding:20s/10s".parse().unwrap();
    let changes: Arc<Mutex<Vec<Change>>> = Arc::default();
    let seen = Arc::clone(&changes);
    let input = rows.clone();

    timely::execute(timely::Config::process(2), move |worker| {
        let seen = Arc::clone(&seen);
        let probe = timely::dataflow::ProbeHandle::new();
        let (mut records, mut scales) = worker.dataflow::<u64, _, _>(|scope| {
            let (records_in, records) = scope.new_collection::<Row, isize>();
            let (scales_in, scales) = scope.new_collection::<(String, i64), isize>();
            records
                .map(|row| (row.key.clone(), row))
                .join_map(scales, |_key, row, scale| {
                    let mut row = row.clone();
                    row.z[0] *= *scale as f64;
                    row
                })
                .window_stats(window)
                .inspect(move |(((key, w), stats), epoch, diff)| {
                    seen.lock()
                        .unwrap()
                        .push((*epoch, key.clone(), *w, stats.clone(), *diff));
                })
                .probe_with(&probe);
            (records_in, scales_in)
        });
        if worker.index() == 0 {
            for row in &input {
                records.insert(row.clone());
            }
            for key in ["a", "b", "c"] {
                scales.insert((key.to_owned(), 1));
            }
        }
        // Epoch 1: key b's x0 is now in units three times smaller.
        records.advance_to(1);
        scales.advance_to(1);
        records.flush();
        scales.flush();
        worker.step_while(|| probe.less_than(&1));
        if worker.index() == 0 {
            scales.remove(("b".to_owned(), 1));
            scales.insert(("b".to_owned(), 3));
        }
        records.advance_to(2);
        scales.advance_to(2);
        records.flush();
        scales.flush();
        worker.step_while(|| probe.less_than(&2));
    })
    .unwrap();

    let changes = changes.lock().unwrap();
    let windows_of = |key: &str| {
        let mut w: Vec<Window> = brute_force_windows(&rows, key, 20_000, 10_000);
        w.sort();
        w
    };
    // Epoch 0: every window of every key, once.
    let first: Vec<&Change> = changes.iter().filter(|c| c.0 == 0).collect();
    assert_eq!(
        first.len(),
        ["a", "b", "c"]
            .iter()
            .map(|k| windows_of(k).len())
            .sum::<usize>()
    );
    // Epoch 1: only key b, each of its windows retracted once and added once.
    let second: Vec<&Change> = changes.iter().filter(|c| c.0 == 1).collect();
    assert!(
        second.iter().all(|c| c.1 == "b"),
        "a change of b's scale re-emitted another key's models"
    );
    for sign in [-1, 1] {
        let mut w: Vec<Window> = second.iter().filter(|c| c.4 == sign).map(|c| c.2).collect();
        w.sort();
        assert_eq!(w, windows_of("b"), "b's windows with diff {sign}");
    }
    println!(
        "epoch 0: {} windows; epoch 1 (b's scale 1 → 3): {} changes, all of key b",
        first.len(),
        second.len()
    );

    // The models now: each against least squares on the scaled rows, computed directly.
    for key in ["a", "b", "c"] {
        let scale = if key == "b" { 3.0 } else { 1.0 };
        for w in windows_of(key) {
            let current: Vec<&Change> = changes.iter().filter(|c| c.1 == key && c.2 == w).collect();
            let net: isize = current.iter().map(|c| c.4).sum();
            assert_eq!(net, 1, "{key} {w:?}: one current model");
            // The current statistics: added and never retracted.
            let stats = &current
                .iter()
                .find(|c| c.4 == 1 && !current.iter().any(|r| r.4 == -1 && r.3 == c.3))
                .expect("a current version")
                .3;
            let fit = solve(stats, SolveOptions { ridge: 0.0 });
            let coef = fit.coef.expect("determined");
            let in_window: Vec<Vec<f64>> = rows
                .iter()
                .filter(|r| r.key == key && w.start <= r.time && r.time < w.end)
                .map(|r| vec![r.z[0] * scale, r.z[1], r.z[2]])
                .collect();
            let want = least_squares(&in_window);
            assert_eq!(stats.n as usize, in_window.len());
            let size = want.iter().fold(1.0f64, |m, b| m.max(b.abs()));
            for (g, e) in coef.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= 1e-9 * size,
                    "{key} {w:?}: {coef:?} vs {want:?}"
                );
            }
            if key == "b" && w.start == 0 {
                println!(
                    "b [{}, {}) n={} coef={coef:.4?} (x0's slope is a third of before)",
                    w.start, w.end, stats.n
                );
            }
        }
    }
    println!("every model equals least squares on its scaled rows");
}

/// 60 s of records, one every 10 ms, keys a, b, c in turn; y = 1 + 2·x0 − x1 + noise.
fn rows() -> Vec<Row> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    (0..6000)
        .map(|i| {
            let (x0, x1) = (uniform(), uniform());
            let y = 1.0 + 2.0 * x0 - x1 + 0.1 * uniform();
            Row {
                time: i * 10,
                key: ["a", "b", "c"][i as usize % 3].to_owned(),
                z: vec![x0, x1, y],
            }
        })
        .collect()
}

/// The sliding windows (length, slide) holding at least one row of `key`.
fn brute_force_windows(rows: &[Row], key: &str, length: i64, slide: i64) -> Vec<Window> {
    let mut out = std::collections::BTreeSet::new();
    for r in rows.iter().filter(|r| r.key == key) {
        let mut start = r.time.div_euclid(slide) * slide;
        while start > r.time - length {
            out.insert(Window {
                start,
                end: start + length,
            });
            start -= slide;
        }
    }
    out.into_iter().collect()
}
