//! `bench checkpoint`: the engine with and without checkpoints, then the store alone: a
//! checkpoint part against the panes it changes, and recovery against the state size.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::engine::{parse_summary, run_cluster};

/// One row of `bench checkpoint`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRow {
    /// What was measured.
    pub measure: String,
    /// Panes in the store before the measured operation.
    pub state_panes: u64,
    /// Panes changed by the measured checkpoint part (0 for other measures).
    pub changed_panes: u64,
    /// Milliseconds (median of the repetitions).
    pub millis: f64,
    /// Records/s of the engine (throughput rows only).
    pub records_per_s: f64,
}

/// `bench checkpoint`: the engine's throughput with and without checkpoints (child
/// processes, generator source), then the store alone: the time of a checkpoint part
/// against the number of changed panes at several state sizes, and the time of
/// recovery against the state size.
pub fn checkpoint(rows: u64, workers: usize, dir: &Path) -> Result<Vec<CheckpointRow>, String> {
    use crate::checkpoint::{Commit, Part, Store, recover};
    use crate::stats::Stats;
    use crate::window::Pane;

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let source = format!("gen:rows={rows},keys=16,features=8,seed=42");
    let mut out = Vec::new();
    for (label, every) in [
        ("throughput without checkpoints", None),
        ("throughput, checkpoint every 1s", Some("1s")),
    ] {
        let ckpt = dir.join("engine-ckpt");
        let _ = std::fs::remove_dir_all(&ckpt);
        let mut args = vec![
            "run",
            "-q",
            "--source",
            &source,
            "--window",
            "sliding:60s/10s",
            "--out",
            "/dev/null",
        ];
        let ckpt_text = ckpt.display().to_string();
        if let Some(every) = every {
            args.extend(["--checkpoint", &ckpt_text, "--checkpoint-every", every]);
        }
        let outputs = run_cluster(&exe, &args, 1, workers, dir)?;
        let s = parse_summary(&outputs[0]).ok_or("no summary from the engine")?;
        out.push(CheckpointRow {
            measure: label.into(),
            state_panes: 0,
            changed_panes: 0,
            millis: s.seconds * 1e3,
            records_per_s: s.records as f64 / s.seconds,
        });
    }

    let stats = {
        let mut s = Stats::with_features(8);
        s.add_row(&[0.5; 9]);
        s
    };
    let pane = |i: u64| Pane {
        start: i as i64 * 10_000,
        end: i as i64 * 10_000 + 10_000,
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for state in [10_000u64, 100_000] {
        let path = dir.join(format!("store-{state}"));
        let store = Store::open(&path, 0, "bench").map_err(|e| e.to_string())?;
        let part = |epoch| Part {
            generation: 1,
            epoch,
            worker: 0,
            emitted: vec![],
            puts: 0,
            deletes: 0,
        };
        let fill: Vec<_> = (0..state)
            .map(|i| {
                (
                    crate::key::Key::from(format!("k{}", i % 1000)),
                    pane(i / 1000),
                    Some(stats.clone()),
                )
            })
            .collect();
        store
            .write_part(&part(0), &fill)
            .map_err(|e| e.to_string())?;
        store.fold(1, 0, 0).map_err(|e| e.to_string())?;
        let mut epoch = 1;
        for changed in [100u64, 1_000, 10_000] {
            let changes: Vec<_> = (0..changed)
                .map(|i| {
                    (
                        crate::key::Key::from(format!("k{}", i % 1000)),
                        pane(i / 1000),
                        Some(stats.clone()),
                    )
                })
                .collect();
            let times = (0..5)
                .map(|_| {
                    let started = std::time::Instant::now();
                    store.write_part(&part(epoch), &changes).expect("write");
                    epoch += 1;
                    started.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            out.push(CheckpointRow {
                measure: "checkpoint part write (synced)".into(),
                state_panes: state,
                changed_panes: changed,
                millis: median(times),
                records_per_s: 0.0,
            });
        }
        store.fold(1, 0, epoch - 1).map_err(|e| e.to_string())?;
        store
            .write_commit(&Commit {
                generation: 1,
                epoch: epoch - 1,
                workers: 1,
                processes: 1,
                max_seen: vec![0],
                out_offset: None,
                late_offset: None,
                unix_ms: 0,
            })
            .map_err(|e| e.to_string())?;
        drop(store);
        let times = (0..3)
            .map(|_| {
                let started = std::time::Instant::now();
                let r = recover(&path, "bench").expect("recover").expect("state");
                assert_eq!(r.panes.len() as u64, state);
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        out.push(CheckpointRow {
            measure: "recovery".into(),
            state_panes: state,
            changed_panes: 0,
            millis: median(times),
            records_per_s: 0.0,
        });
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(out)
}

/// Formats `bench checkpoint` rows as a table.
pub fn checkpoint_table(rows: &[CheckpointRow]) -> String {
    let mut out = format!(
        "{:<36} {:>12} {:>14} {:>10} {:>12}\n",
        "measure", "state panes", "changed panes", "ms", "records/s"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<36} {:>12} {:>14} {:>10.3} {:>12.0}\n",
            r.measure, r.state_panes, r.changed_panes, r.millis, r.records_per_s
        ));
    }
    out
}
