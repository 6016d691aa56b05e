//! A custom dataflow on Tributary's operators: generated records, our own filter between
//! the source and the regression, per-key tumbling-window models, printed.
//!
//! Run with `cargo run --example custom_dataflow`.

use std::sync::Arc;

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};
use tributary::dataflow::{OnError, RunContext, WindowConfig, ingest, windowed_regression};
use tributary::metrics::Metrics;
use tributary::source::{SourceReader, SourceSpec};
use tributary::{Schema, SolveOptions, Status};

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

    let finals = timely::execute(timely::Config::process(2), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let reader = SourceReader::open(&source, &Schema::generated(2), index, peers).unwrap();
        let probe = ProbeHandle::new();
        let seen = std::rc::Rc::new(std::cell::Cell::new(0));
        let count = seen.clone();
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
    println!("{finals} models");
}
