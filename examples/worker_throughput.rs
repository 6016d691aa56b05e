//! Per-worker throughput of the whole pipeline (generator → panes → windows → models) on
//! 4 workers, and a check that every record was counted exactly once across them.
//!
//! Run with `cargo run --release --example worker_throughput` for representative figures.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};
use tributary::{Control, GenReader, GenSpec, RunContext, Schema, SourceReader, SourceSpec};
use tributary::{WindowConfig, ingest, windowed_regression};

const WORKERS: usize = 4;

fn main() {
    let spec: GenSpec = "rows=600000,keys=16,features=4,seed=3,batch=16384"
        .parse()
        .unwrap();
    let source = SourceSpec::Gen(spec.clone());
    let config = WindowConfig::new("sliding:60s/10s".parse().unwrap(), 4);
    let context = RunContext::default();

    let results = timely::execute(timely::Config::process(WORKERS), move |worker| {
        let index = worker.index();
        let reader =
            SourceReader::open(&source, &Schema::generated(4), index, worker.peers()).unwrap();
        // What this worker's source read: records, and the sum of their targets (a
        // checksum of which records they were), from the pane statistics it emitted.
        let records = Rc::new(Cell::new(0u64));
        let (admitted, y_sum) = (Rc::new(Cell::new(0i64)), Rc::new(Cell::new(0.0f64)));
        let (r, a, y) = (records.clone(), admitted.clone(), y_sum.clone());
        let probe = ProbeHandle::new();
        let started = Instant::now();
        worker.dataflow(|scope| {
            let input = ingest(scope, reader, &config, &context);
            let control = input.control.inspect(move |c| {
                if let Control::Progress(p) = c {
                    r.set(r.get() + p.counts.records);
                }
            });
            let panes = input.panes.inspect(move |(_, _, stats)| {
                a.set(a.get() + stats.n);
                y.set(y.get() + stats.sum()[4]);
            });
            let outputs = windowed_regression(panes, control, &config, &context);
            outputs
                .models
                .probe_with(&probe)
                .probe_with(&input.throttle);
        });
        while !probe.done() {
            worker.step();
        }
        let seconds = started.elapsed().as_secs_f64();
        (index, records.get(), admitted.get(), y_sum.get(), seconds)
    })
    .unwrap()
    .join();

    let mut results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    results.sort_by_key(|r| r.0);
    let total_seconds = results.iter().map(|r| r.4).fold(0.0, f64::max);
    for (index, records, _, _, seconds) in &results {
        println!(
            "worker {index}: {records:>7} records in {seconds:.3} s = {:>9.0} records/s",
            *records as f64 / seconds
        );
    }
    let total: u64 = results.iter().map(|r| r.1).sum();
    println!(
        "all {WORKERS} workers: {total} records in {total_seconds:.3} s = {:.0} records/s",
        total as f64 / total_seconds
    );

    // Exactly once: each worker read its own batches (batch k on worker k mod W), the
    // counts add up to the stream, and so does the checksum.
    for (index, records, admitted, _, _) in &results {
        let share: u64 = (0..spec.rows.div_ceil(spec.batch))
            .filter(|b| *b as usize % WORKERS == *index)
            .map(|b| spec.batch.min(spec.rows - b * spec.batch))
            .sum();
        assert_eq!(*records, share, "worker {index} read its batches once");
        assert_eq!(
            *admitted as u64, share,
            "worker {index} folded each record once"
        );
    }
    assert_eq!(total, spec.rows);
    let mut y_direct = 0.0;
    GenReader::new(&spec, 0, 1).generate(0, spec.rows, |r| y_direct += r.z[4]);
    let y_engine: f64 = results.iter().map(|r| r.3).sum();
    assert!(
        (y_engine - y_direct).abs() <= 1e-9 * y_direct.abs().max(spec.rows as f64),
        "Σy {y_engine} vs {y_direct}"
    );
    println!("every record counted exactly once (counts and Σy agree with the stream)");
}
