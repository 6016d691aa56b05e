//! The whole of `tributary run` as one library call: generated records, sliding windows,
//! checkpoints in a RocksDB directory, models to a JSON-lines file. Then the same pipeline
//! again on the same checkpoint: it resumes from the newest commit, where the first run
//! ended, so it reads nothing again and writes nothing twice.
//!
//! Run with `cargo run --example pipeline`. It checks itself: every model equals an
//! independent least-squares fit (nalgebra's SVD on the raw records of its window).

use std::time::Duration;

use tributary::WindowConfig;
use tributary::{Fatal, GenReader, GenSpec, Job, ModelLine, Pipeline, Schema, SourceSpec};

mod oracle;
use oracle::WindowRows;

fn main() {
    tributary::logging::init(Default::default()); // log lines on stderr, as the command's
    let dir = std::env::temp_dir().join(format!("tributary-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a checkpoint left by an earlier run would resume
    // 20 000 generated records in batches of 1024: 3 keys, 2 features, one every 5 ms.
    let spec: GenSpec = "rows=20000,keys=3,features=2,seed=7,step=5,batch=1024"
        .parse()
        .unwrap();
    let windows = WindowConfig::new("sliding:20s/5s".parse().unwrap(), 2);
    let job = Job::new(SourceSpec::Gen(spec.clone()), Schema::generated(2), windows);
    let pipeline = Pipeline::new(job, exit)
        .models_to(dir.join("models.jsonl"))
        .checkpoint(dir.join("checkpoint"), Duration::from_millis(20))
        .workers(2);

    let first = pipeline.clone().run().unwrap();
    println!("first run:  {}", first.line());
    let written = std::fs::read_to_string(dir.join("models.jsonl")).unwrap();

    // The same pipeline on the same checkpoint resumes from its newest commit: the first
    // run's end.
    let again = pipeline.run().unwrap();
    println!("second run: {}", again.line());
    assert_eq!(
        again.metrics.records, 0,
        "resumed after the last batch: none read again"
    );
    let rewritten = std::fs::read_to_string(dir.join("models.jsonl")).unwrap();
    assert_eq!(rewritten, written, "no model written twice");

    let models: Vec<ModelLine> = written
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    check(&spec, &models);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What a fatal error does in this program (it is already logged): end with its code.
fn exit(fatal: Fatal) -> ! {
    std::process::exit(fatal.code)
}

/// The independent check: the raw records regenerated and put in every 20 s window (a
/// start every 5 s) they fall in, each window solved by SVD least squares on [1, x] (not
/// from sums); one final model per key and window with data, n equal, the coefficients
/// and r² within 1e-9.
fn check(spec: &GenSpec, models: &[ModelLine]) {
    let mut rows = WindowRows::new(); // (key, window start) → [(x, y)]
    GenReader::new(spec, 0, 1).generate(0, spec.rows, |r| {
        let last_start = r.time.div_euclid(5_000) * 5_000;
        for start in (0..4).map(|k| last_start - k * 5_000) {
            let y = r.z[r.z.len() - 1];
            rows.entry((r.key.to_owned(), start))
                .or_default()
                .push((r.x().to_vec(), y));
        }
    });
    oracle::assert_models_match(models, &rows, 20_000);
    println!(
        "{} models of {} windows, each equal to an independent least-squares fit",
        models.len(),
        rows.len()
    );
}
