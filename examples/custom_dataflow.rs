//! A custom dataflow on Tributary's operators: generated records, a derived feature
//! computed by our own code, per-key tumbling-window regression, models printed.
//!
//! Run with `cargo run --example custom_dataflow`.

use std::sync::Arc;

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};
use tributary::dataflow::{OnError, WindowConfig, ingest, windowed_regression};
use tributary::metrics::Metrics;
use tributary::source::{SourceReader, SourceSpec};
use tributary::{Schema, SolveOptions, Status};

fn main() {
    // 20 000 generated records: 4 keys, 2 features, one every 5 ms.
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

    let finals = timely::execute(timely::Config::process(2), move |worker| {
        let reader = SourceReader::open(
            &source,
            &Schema::generated(2),
            worker.index(),
            worker.peers(),
        )
        .expect("generator");
        let metrics = Arc::new(Metrics::default());
        let probe = ProbeHandle::new();
        let count = std::rc::Rc::new(std::cell::Cell::new(0));
        let seen = count.clone();
        worker.dataflow(|scope| {
            let input = ingest(
                scope,
                reader,
                &config,
                OnError::Fail,
                metrics.clone(),
                |e| panic!("{e}"),
            );
            // Our own transform between the source and the regression: keep only two keys.
            let panes = input
                .panes
                .filter(|(key, _pane)| key == "k0" || key == "k1");
            let (models, _trace) =
                windowed_regression(scope, panes, input.progress, &config, metrics);
            models
                .inspect(move |m| {
                    assert_eq!(m.status, Status::Ok);
                    seen.set(seen.get() + 1);
                    println!(
                        "{} [{}, {}) n={} coef={:.3?}",
                        m.key,
                        m.window_start,
                        m.window_end,
                        m.n,
                        m.coef.as_ref().unwrap()
                    );
                })
                .probe_with(&probe);
        });
        while !probe.done() {
            worker.step();
        }
        count.get()
    })
    .unwrap()
    .join()
    .into_iter()
    .map(Result::unwrap)
    .sum::<usize>();

    // 100 s of event time in 20 s windows, for 2 of the 4 keys.
    assert_eq!(finals, 2 * 5, "one final model per kept key and window");
    println!("{finals} models");
}
