//! A custom dataflow on Tributary's operators: generated records, our own filter between
//! the source and the regression, per-key tumbling-window models, printed.
//!
//! Run with `cargo run --example custom_dataflow`. It checks itself: every model equals an
//! independent least-squares fit (nalgebra's SVD on the raw records of its window).

use std::sync::{Arc, Mutex};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};
use tributary::{GenReader, GenSpec, ModelLine, RunContext, Schema, SourceReader, SourceSpec};
use tributary::{WindowConfig, ingest, windowed_regression};

mod oracle;
use oracle::WindowRows;

fn main() {
    // 20 000 generated records: 4 keys, 2 features, one every 5 ms (100 s of event time).
    let spec: GenSpec = "rows=20000,keys=4,features=2,seed=1,step=5"
        .parse()
        .unwrap();
    let source = SourceSpec::Gen(spec.clone());
    let config = WindowConfig::new("tumbling:20s".parse().unwrap(), 2);
    let context = RunContext::default();
    let models: Arc<Mutex<Vec<ModelLine>>> = Arc::default();
    let out = Arc::clone(&models);

    timely::execute(timely::Config::process(2), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let reader = SourceReader::open(&source, &Schema::generated(2), index, peers).unwrap();
        let out = Arc::clone(&out);
        let probe = ProbeHandle::new();
        worker.dataflow(|scope| {
            let input = ingest(scope, reader, &config, &context);
            // Our own transform between the source and the regression: keep two keys.
            let panes = input
                .panes
                .filter(|(key, _pane)| key == "k0" || key == "k1");
            let windows = windowed_regression(panes, input.control, &config, &context);
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
                .probe_with(&input.throttle);
        });
        while !probe.done() {
            worker.step();
        }
    })
    .unwrap();

    check(&spec, &models.lock().unwrap());
}

/// The independent check: the raw records of k0 and k1 regenerated, grouped by 20 s
/// window, each window solved by SVD least squares on [1, x] (not from sums); n must be
/// equal, the coefficients and r² within 1e-9; one final model per kept key and window.
fn check(spec: &GenSpec, models: &[ModelLine]) {
    let mut rows = WindowRows::new(); // (key, window start) → [(x, y)]
    GenReader::new(spec, 0, 1).generate(0, spec.rows, |r| {
        if r.key == "k0" || r.key == "k1" {
            let window = (r.key.to_owned(), r.time.div_euclid(20_000) * 20_000);
            let y = r.z[r.z.len() - 1];
            rows.entry(window).or_default().push((r.x().to_vec(), y));
        }
    });
    assert_eq!(
        models.len(),
        2 * 5,
        "one model per kept key and 20 s window"
    );
    oracle::assert_models_match(models, &rows, 20_000);
    println!(
        "{} models, each equal to an independent least-squares fit",
        models.len()
    );
}
