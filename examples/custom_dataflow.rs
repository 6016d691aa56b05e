//! A custom dataflow on Tributary's operators: generated records, our own filter between
//! the source and the regression, per-key tumbling-window models, printed.
//!
//! Run with `cargo run --example custom_dataflow`.
//!
//! It checks itself: every model printed is compared with an independent least-squares fit
//! (nalgebra's SVD on the raw records of its window, regenerated here), n exactly and the
//! coefficients and r² to 1e-9.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use nalgebra::{DMatrix, DVector};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};
use tributary::dataflow::{OnError, RunContext, WindowConfig, ingest, windowed_regression};
use tributary::metrics::Metrics;
use tributary::source::generator::GenReader;
use tributary::source::{SourceReader, SourceSpec};
use tributary::{Schema, SolveOptions, Status};

/// A final model as emitted: key, window start and end, n, coefficients, r².
type Emitted = (String, i64, i64, i64, Vec<f64>, f64);

/// The raw rows of a (key, window start): features and target.
type WindowRows = BTreeMap<(String, i64), Vec<(Vec<f64>, f64)>>;

fn main() {
    // 20 000 generated records: 4 keys, 2 features, one every 5 ms (100 s of event time).
    let source: SourceSpec = "gen:rows=20000,keys=4,features=2,seed=1,step=5"
        .parse()
        .unwrap();
    let config = WindowConfig {
        window: "tumbling:20s".parse().unwrap(),
        lateness: 0,
        max_jump: 3_600_000,
        solve: SolveOptions { ridge: 0.0 },
        features: 2,
    };
    let context = RunContext::new(OnError::Fail, Arc::new(Metrics::default()), |e| {
        panic!("{e}")
    });

    let emitted: Arc<Mutex<Vec<Emitted>>> = Arc::default();
    let collect = Arc::clone(&emitted);
    let gen_spec = match &source {
        SourceSpec::Gen(g) => g.clone(),
        _ => unreachable!("a generator source"),
    };

    let finals = timely::execute(timely::Config::process(2), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let reader = SourceReader::open(&source, &Schema::generated(2), index, peers).unwrap();
        let probe = ProbeHandle::new();
        let seen = std::rc::Rc::new(std::cell::Cell::new(0));
        let count = seen.clone();
        let collect = Arc::clone(&collect);
        worker.dataflow(|scope| {
            let input = ingest(scope, reader, &config, &context);
            // Our own transform between the source and the regression: keep two keys.
            let panes = input
                .panes
                .filter(|(key, _pane)| key == "k0" || key == "k1");
            let (windows, _trace) =
                windowed_regression(scope, panes, input.control, &config, &context);
            windows
                .models
                .inspect(move |m| {
                    assert_eq!(m.status, Status::Ok);
                    count.set(count.get() + 1);
                    let coef = m.coef.as_ref().unwrap();
                    println!(
                        "{} [{}, {}) n={} coef={coef:.3?}",
                        m.key, m.window_start, m.window_end, m.n
                    );
                    collect.lock().unwrap().push((
                        m.key.clone(),
                        m.window_start,
                        m.window_end,
                        m.n,
                        coef.clone(),
                        m.r2.unwrap(),
                    ));
                })
                .probe_with(&probe);
        });
        while !probe.done() {
            worker.step();
        }
        seen.get()
    })
    .unwrap()
    .join()
    .into_iter()
    .map(Result::unwrap)
    .sum::<usize>();

    // Five 20 s windows for each of the two kept keys, each emitted once, final.
    assert_eq!(finals, 2 * 5, "one final model per kept key and window");

    // The independent check: the raw records of k0 and k1 regenerated, grouped by 20 s
    // window, each window solved by SVD least squares on [1, x] (not from sums).
    let mut rows: WindowRows = BTreeMap::new();
    GenReader::new(&gen_spec, 0, 1).generate(0, gen_spec.rows, |r| {
        if r.key == "k0" || r.key == "k1" {
            let start = r.time.div_euclid(20_000) * 20_000;
            rows.entry((r.key.to_owned(), start))
                .or_default()
                .push((r.x().to_vec(), r.z[r.z.len() - 1]));
        }
    });
    let emitted = emitted.lock().unwrap();
    assert_eq!(
        emitted.len(),
        rows.len(),
        "a model for every window of the data"
    );
    for (key, start, end, n, coef, r2) in emitted.iter() {
        assert_eq!(end - start, 20_000);
        let w = &rows[&(key.clone(), *start)];
        assert_eq!(*n as usize, w.len(), "{key} [{start}, {end}): n");
        let a = DMatrix::from_fn(w.len(), 3, |i, j| if j == 0 { 1.0 } else { w[i].0[j - 1] });
        let y = DVector::from_fn(w.len(), |i, _| w[i].1);
        let b = a.clone().svd(true, true).solve(&y, 1e-12).unwrap();
        let err = coef
            .iter()
            .zip(b.iter())
            .map(|(c, o)| (c - o).abs())
            .fold(0.0, f64::max);
        let scale = b.iter().map(|v| v.abs()).fold(1.0, f64::max);
        assert!(
            err <= 1e-9 * scale,
            "{key} [{start}, {end}): coef {coef:?}, independent fit {:?}",
            b.as_slice()
        );
        let resid = &y - &a * &b;
        let ybar = y.mean();
        let sst: f64 = y.iter().map(|v| (v - ybar).powi(2)).sum();
        let want_r2 = 1.0 - resid.norm_squared() / sst;
        assert!(
            (r2 - want_r2).abs() <= 1e-9,
            "{key} [{start}, {end}): r2 {r2} vs {want_r2}"
        );
    }
    println!("{finals} models, each equal to an independent least-squares fit");
}
