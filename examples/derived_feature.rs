//! A derived feature before the regression: records from the generator, an interaction
//! term x0·x1 appended to each record, per-key tumbling-window models of y on
//! [x0, x1, x0·x1], printed, and checked against least squares computed directly.
//! (The final code of docs/tutorial.md.)
//!
//! Run with `cargo run --example derived_feature`.

use std::sync::{Arc, Mutex};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Inspect, Probe};
use tributary::{GenReader, GenSpec, ModelLine, Record, RunContext, Schema, SourceReader};
use tributary::{ReadRecords, SourceSpec, WindowConfig, WindowPanes, windowed_regression};

mod oracle;
use oracle::least_squares;

fn main() {
    // 1. The source: 12 000 generated records, 3 keys, 2 features, one every 5 ms.
    let spec: GenSpec = "rows=12000,keys=3,features=2,seed=4,step=5"
        .parse()
        .unwrap();
    let source = SourceSpec::Gen(spec.clone());
    // 2. The windows and the model: 3 features once x0·x1 is added.
    let config = WindowConfig::new("tumbling:20s".parse().unwrap(), 3);
    let context = RunContext::default();
    let models: Arc<Mutex<Vec<ModelLine>>> = Arc::default();
    let out = Arc::clone(&models);

    timely::execute(timely::Config::process(2), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let reader = SourceReader::open(&source, &Schema::generated(2), index, peers).unwrap();
        let out = Arc::clone(&out);
        let probe = ProbeHandle::new();
        worker.dataflow(|scope| {
            // 3. Records, batch by batch.
            let read = scope.read_records(reader, &context);
            // 4. Our transform: append the interaction term.
            let records = read.records.map(|mut r: Record| {
                r.x.push(r.x[0] * r.x[1]);
                r
            });
            // 5. Into pane statistics (watermark, lateness), then the windows' models.
            let panes = records.window_panes(&config);
            let windows = windowed_regression(panes.panes, panes.control, &config, &context);
            // 6. Print each final model.
            windows
                .models
                .inspect(move |m| {
                    let coef = m.coef.as_deref().unwrap_or_default();
                    println!(
                        "{} [{}, {}) n={} coef={coef:.3?}",
                        m.key, m.window_start, m.window_end, m.n
                    );
                    out.lock().unwrap().push(m.clone());
                })
                .probe_with(&probe)
                .probe_with(&read.throttle);
        });
        while !probe.done() {
            worker.step();
        }
    })
    .unwrap();

    check(&spec, &models.lock().unwrap());
}

/// The check: least squares of y on [1, x0, x1, x0·x1] over each window's rows, computed
/// directly from the regenerated records; one final model per key and window.
fn check(spec: &GenSpec, models: &[ModelLine]) {
    let mut rows: Vec<(String, i64, Vec<f64>)> = Vec::new();
    GenReader::new(spec, 0, 1).generate(0, spec.rows, |r| {
        let (x0, x1, y) = (r.z[0], r.z[1], r.z[2]);
        rows.push((r.key.to_owned(), r.time, vec![x0, x1, x0 * x1, y]));
    });
    let windows = rows.last().unwrap().1 / 20_000 - rows[0].1 / 20_000 + 1;
    assert_eq!(
        models.len() as i64,
        3 * windows,
        "one model per key and window"
    );
    for m in models.iter() {
        assert!(m.is_final);
        let in_window: Vec<Vec<f64>> = rows
            .iter()
            .filter(|(k, t, _)| *k == m.key && m.window_start <= *t && *t < m.window_end)
            .map(|(_, _, z)| z.clone())
            .collect();
        assert_eq!(m.n as usize, in_window.len());
        let want = least_squares(&in_window);
        let got = m.coef.as_ref().expect("determined");
        let size = want.iter().fold(1.0f64, |a, b| a.max(b.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-9 * size, "{m:?} vs {want:?}");
        }
    }
    println!("{} models equal direct least squares", models.len());
}
