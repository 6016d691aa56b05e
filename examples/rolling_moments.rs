//! The regression statistics used for something else than least squares: per key and
//! sliding window, the means, covariance and correlation matrix of `[x0, x1, y]`, from
//! the same per-pane `Stats` the regression sums. Checked against a direct two-pass
//! computation over the rows.
//!
//! Run with `cargo run --example rolling_moments`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::difference::Semigroup;
use timely::dataflow::ProbeHandle;
use tributary::{GenReader, GenSpec, RunContext, Schema, SourceReader, SourceSpec, Stats};
use tributary::{Window, WindowConfig, WindowSpec, ingest};

fn main() {
    let spec: GenSpec = "rows=30000,keys=3,features=2,seed=9,step=2,disorder=40"
        .parse()
        .unwrap();
    let source = SourceSpec::Gen(spec.clone());
    let window: WindowSpec = "sliding:10s/5s".parse().unwrap();
    // Lateness more than the disorder: no record is late.
    let config = WindowConfig::new(window, 2).lateness(1_000);
    let context = RunContext::default();
    let metrics = Arc::clone(&context.metrics);

    let per_worker = timely::execute(timely::Config::process(2), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let reader = SourceReader::open(&source, &Schema::generated(2), index, peers).unwrap();
        let totals: Rc<RefCell<BTreeMap<(String, Window), Stats>>> = Rc::default();
        let sums = Rc::clone(&totals);
        let probe = ProbeHandle::new();
        worker.dataflow(|scope| {
            let input = ingest(scope, reader, &config, &context);
            input
                .panes
                // Each pane's statistics count in every window holding the pane.
                .flat_map(move |(key, pane)| {
                    window
                        .windows_of_pane(pane.start)
                        .map(move |w| (key.clone(), w))
                })
                .consolidate() // one update per (key, window) and batch, on its owner
                .inspect(move |((key, w), _batch, stats)| {
                    sums.borrow_mut()
                        .entry((key.to_string(), *w))
                        .or_insert_with(Stats::zero)
                        .plus_equals(stats);
                })
                .probe_with(&probe);
        });
        while !probe.done() {
            worker.step();
        }
        totals.take()
    })
    .unwrap()
    .join();
    let windows: BTreeMap<(String, Window), Stats> =
        per_worker.into_iter().flat_map(|r| r.unwrap()).collect();
    assert_eq!(metrics.snapshot().late, 0);

    // The oracle: the rows themselves, grouped by key and window, two-pass moments.
    let mut rows: BTreeMap<(String, Window), Vec<Vec<f64>>> = BTreeMap::new();
    GenReader::new(&spec, 0, 1).generate(0, spec.rows, |r| {
        let (length, slide) = (10_000, 5_000);
        let mut start = r.time.div_euclid(slide) * slide;
        while start > r.time - length {
            let w = Window {
                start,
                end: start + length,
            };
            rows.entry((r.key.to_owned(), w))
                .or_default()
                .push(r.z.to_vec());
            start -= slide;
        }
    });
    assert_eq!(
        windows.keys().collect::<Vec<_>>(),
        rows.keys().collect::<Vec<_>>()
    );
    for (k, zs) in &rows {
        let stats = &windows[k];
        assert_eq!(stats.n as usize, zs.len(), "{k:?}");
        if zs.len() < 2 {
            continue;
        }
        let (mean, cov, corr) = two_pass(zs);
        let (m, c, r) = (
            stats.mean().unwrap(),
            stats.covariance().unwrap(),
            stats.correlation().unwrap(),
        );
        for i in 0..3 {
            assert!((m[i] - mean[i]).abs() <= 1e-9 * mean[i].abs().max(1.0));
            for j in 0..3 {
                assert!((c[i][j] - cov[i][j]).abs() <= 1e-9 * cov[i][i].max(cov[j][j]));
                assert!((r[i][j] - corr[i][j]).abs() <= 1e-9, "{k:?} corr");
            }
        }
        if k.1.start % 20_000 == 0 && k.0 == "k0" {
            println!(
                "{} [{}, {}) n={} mean y={:.3} var y={:.3} corr(x0,y)={:.3} corr(x1,y)={:.3}",
                k.0, k.1.start, k.1.end, stats.n, m[2], c[2][2], r[0][2], r[1][2]
            );
        }
    }
    println!(
        "{} windows: means, covariances and correlations equal the two-pass ones",
        rows.len()
    );
}

/// Means, sample covariances and correlations of the rows, in two passes.
#[allow(clippy::type_complexity)]
fn two_pass(zs: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let n = zs.len() as f64;
    let m = zs[0].len();
    let mean: Vec<f64> = (0..m)
        .map(|j| zs.iter().map(|z| z[j]).sum::<f64>() / n)
        .collect();
    let cov: Vec<Vec<f64>> = (0..m)
        .map(|i| {
            (0..m)
                .map(|j| {
                    zs.iter()
                        .map(|z| (z[i] - mean[i]) * (z[j] - mean[j]))
                        .sum::<f64>()
                        / (n - 1.0)
                })
                .collect()
        })
        .collect();
    let corr = (0..m)
        .map(|i| {
            (0..m)
                .map(|j| cov[i][j] / (cov[i][i] * cov[j][j]).sqrt())
                .collect()
        })
        .collect();
    (mean, cov, corr)
}
