//! `tributary bench`: the real engine, measured end to end.
//!
//! `bench throughput` runs `tributary run` as child processes (one per configuration, so
//! each has its own peak RSS), on the generator and on a CSV file of the same stream, with
//! the requested worker counts and a 2-process loopback cluster, and reports records/s in
//! total and per worker. Ratios between rows come from one invocation, on one machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One measured configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThroughputRow {
    /// `gen`, `csv` (numbers of up to 17 digits) or `csv9` (9 significant digits).
    pub source: String,
    /// Processes.
    pub processes: usize,
    /// Worker threads per process.
    pub workers: usize,
    /// Records read.
    pub records: u64,
    /// Run time reported by the engine (s), from start to the last model written.
    pub seconds: f64,
    /// Records per second, in total.
    pub records_per_s: f64,
    /// Records per second per worker.
    pub records_per_s_per_worker: f64,
    /// Largest peak RSS of the processes (MiB).
    pub peak_rss_mib: f64,
    /// Final model emissions.
    pub windows_final: u64,
}

/// Settings of `bench throughput`.
#[derive(Clone, Debug)]
pub struct ThroughputSettings {
    /// Records per run.
    pub rows: u64,
    /// Keys.
    pub keys: u64,
    /// Features.
    pub features: usize,
    /// Window spec.
    pub window: String,
    /// Worker counts to run (single process).
    pub workers: Vec<usize>,
    /// Also run a 2-process × 1-worker cluster on loopback.
    pub cluster: bool,
    /// Measure the CSV sources too (numbers of up to 17 digits, and of 9).
    pub csv: bool,
    /// Directory for the CSV file.
    pub dir: PathBuf,
}

/// Runs the throughput benchmark.
pub fn throughput(s: &ThroughputSettings) -> Result<Vec<ThroughputRow>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let gen_source = format!(
        "gen:rows={},keys={},features={},seed=42",
        s.rows, s.keys, s.features
    );
    let mut sources = vec![("gen".to_owned(), gen_source)];
    if s.csv {
        std::fs::create_dir_all(&s.dir).map_err(|e| e.to_string())?;
        // Numbers as `tributary gen` writes them (up to 17 digits: the general parser),
        // and with 9 significant digits as the peers' data (the vectorised fast path).
        for (name, digits) in [("csv", None), ("csv9", Some(9))] {
            let csv = s.dir.join(format!(
                "bench-{}-{}-{}-{name}.csv",
                s.rows, s.keys, s.features
            ));
            let mut command = Command::new(&exe);
            command
                .args(["gen", "--rows", &s.rows.to_string()])
                .args(["--keys", &s.keys.to_string()])
                .args(["--features", &s.features.to_string(), "--seed", "42"]);
            if let Some(digits) = digits {
                command.args(["--digits", &digits.to_string()]);
            }
            let status = command
                .arg("--out")
                .arg(&csv)
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("tributary gen failed".into());
            }
            sources.push((name.to_owned(), format!("csv:{}", csv.display())));
        }
    }
    let mut rows = Vec::new();
    for (name, source) in &sources {
        let mut configs: Vec<(usize, usize)> = s.workers.iter().map(|&w| (1, w)).collect();
        if s.cluster {
            configs.push((2, 1));
        }
        for (processes, workers) in configs {
            let base = [
                "run",
                "-q",
                "--source",
                source,
                "--window",
                &s.window,
                "--out",
                "/dev/null",
            ];
            let outputs = run_cluster(&exe, &base, processes, workers, &s.dir)?;
            let first = parse_summary(&outputs[0])
                .ok_or_else(|| format!("no summary from the engine: {}", outputs[0]))?;
            let peak = outputs
                .iter()
                .filter_map(|o| parse_summary(o).map(|s| s.peak_rss_mib))
                .fold(0.0, f64::max);
            let total_workers = (processes * workers) as f64;
            let records = outputs
                .iter()
                .filter_map(|o| parse_summary(o).map(|s| s.records))
                .sum::<u64>();
            let rate = records as f64 / first.seconds;
            rows.push(ThroughputRow {
                source: name.clone(),
                processes,
                workers,
                records,
                seconds: first.seconds,
                records_per_s: rate,
                records_per_s_per_worker: rate / total_workers,
                peak_rss_mib: peak,
                windows_final: first.windows_final,
            });
        }
    }
    Ok(rows)
}

/// Starts `processes` engine processes (a loopback cluster when more than one) and
/// returns each one's stderr; fails if any fails.
fn run_cluster(
    exe: &Path,
    args: &[&str],
    processes: usize,
    workers: usize,
    dir: &Path,
) -> Result<Vec<String>, String> {
    let mut extra: Vec<String> = vec!["-w".into(), workers.to_string()];
    if processes > 1 {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let hostfile = dir.join("bench-hosts.txt");
        let ports = free_ports(processes)?;
        let hosts: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
        std::fs::write(&hostfile, hosts).map_err(|e| e.to_string())?;
        extra.extend(["-n".into(), processes.to_string(), "-h".into()]);
        extra.push(hostfile.display().to_string());
    }
    let children: Vec<Child> = (0..processes)
        .map(|p| {
            Command::new(exe)
                .args(args)
                .args(&extra)
                .args(["-p", &p.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let mut outputs = Vec::new();
    let mut failed = None;
    for (p, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() && failed.is_none() {
            failed = Some(format!("process {p} failed ({}): {text}", out.status));
        }
        outputs.push(text);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(outputs),
    }
}

/// Distinct loopback ports that were free a moment ago.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect();
    drop(listeners);
    std::thread::sleep(Duration::from_millis(10));
    ports
}

/// The fields of the engine's `done:` line that the benchmark uses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunSummary {
    /// `records=`.
    pub records: u64,
    /// `elapsed=` (s).
    pub seconds: f64,
    /// `windows_final=`.
    pub windows_final: u64,
    /// `peak_rss_mib=`.
    pub peak_rss_mib: f64,
}

/// Parses the `done:` summary line out of an engine's stderr.
pub fn parse_summary(stderr: &str) -> Option<RunSummary> {
    let line = stderr.lines().rev().find(|l| l.starts_with("done:"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim_end_matches('s').to_owned())
    };
    Some(RunSummary {
        records: field("records")?.parse().ok()?,
        seconds: field("elapsed")?.parse().ok()?,
        windows_final: field("windows_final")?.parse().ok()?,
        peak_rss_mib: field("peak_rss_mib")?.parse().ok()?,
    })
}

/// Formats throughput rows as a table, with the ratio of each row to the first row of
/// its source.
pub fn throughput_table(rows: &[ThroughputRow]) -> String {
    let mut out = String::from(
        "source  procs  workers     records   seconds     records/s   per worker  vs 1st  peak RSS MiB\n",
    );
    for row in rows {
        let base = rows
            .iter()
            .find(|r| r.source == row.source)
            .map_or(1.0, |r| r.records_per_s);
        out.push_str(&format!(
            "{:<6} {:>6} {:>8} {:>11} {:>9.3} {:>13.0} {:>12.0} {:>6.2}x {:>13.1}\n",
            row.source,
            row.processes,
            row.workers,
            row.records,
            row.seconds,
            row.records_per_s,
            row.records_per_s_per_worker,
            row.records_per_s / base,
            row.peak_rss_mib
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_parses() {
        let text = "progress: x\ndone: records=100 rate=5/s watermark=end open_panes=0 windows_final=7 late=0 too_far_ahead=0 malformed=0 provisional=0 elapsed=2.500s throughput=40 records/s peak_rss_mib=12.5\n";
        let s = parse_summary(text).unwrap();
        assert_eq!(s.records, 100);
        assert_eq!(s.seconds, 2.5);
        assert_eq!(s.windows_final, 7);
        assert_eq!(s.peak_rss_mib, 12.5);
    }
}

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

/// One row of `bench incremental`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncrementalRow {
    /// `absorb` (b new records), `correct` (retract and re-add one record of a closed
    /// window), each followed by the window's updated model.
    pub operation: String,
    /// Records in the window.
    pub window_records: u64,
    /// Records absorbed per update.
    pub batch: u64,
    /// Median latency of the incremental update and solve (µs).
    pub incremental_p50_us: f64,
    /// 99th percentile (µs).
    pub incremental_p99_us: f64,
    /// Recomputing the same model from the window's rows (ms).
    pub recompute_ms: f64,
    /// `recompute / incremental p50`.
    pub ratio: f64,
}

/// `bench incremental`: a sliding window of `records` rows (d features) held as the
/// engine holds it — per-pane [`Stats`](crate::stats::Stats), six panes per window —
/// then, timed: absorbing a batch of b new rows into the newest pane and solving the
/// window (the work the engine does per batch and window), correcting one row of a
/// closed window, and recomputing the model from the window's rows from scratch.
pub fn incremental(records: u64, d: usize, batches: &[u64]) -> Vec<IncrementalRow> {
    use crate::model::{SolveOptions, solve};
    use crate::stats::Stats;
    use differential_dataflow::difference::{Abelian, Semigroup};
    use std::time::Instant;

    const PANES: usize = 6;
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let row = |next: &mut dyn FnMut() -> f64| -> Vec<f64> {
        let x: Vec<f64> = (0..d).map(|_| next()).collect();
        let y = 1.0
            + x.iter()
                .enumerate()
                .map(|(i, v)| (i as f64 + 1.0) * v)
                .sum::<f64>()
            + 0.01 * next();
        x.into_iter().chain([y]).collect()
    };
    let rows: Vec<Vec<f64>> = (0..records).map(|_| row(&mut next)).collect();
    let per_pane = rows.len().div_ceil(PANES);
    let mut panes: Vec<Stats> = rows
        .chunks(per_pane)
        .map(|chunk| {
            let mut p = Stats::with_features(d);
            chunk.iter().for_each(|z| p.add_row(z));
            p
        })
        .collect();
    let window = |panes: &[Stats]| {
        let mut w = Stats::zero();
        panes.iter().for_each(|p| w.plus_equals(p));
        w
    };
    let options = SolveOptions::default();
    let percentile = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };

    // Recompute from scratch: fold every row of the window, then solve.
    let recompute_ms = {
        let mut times: Vec<f64> = (0..3)
            .map(|_| {
                let started = Instant::now();
                let mut w = Stats::with_features(d);
                rows.iter().for_each(|z| w.add_row(z));
                std::hint::black_box(solve(&w, options));
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        percentile(&mut times, 0.5)
    };

    let mut out = Vec::new();
    let mut measure = |operation: &str, batch: u64, f: &mut dyn FnMut()| {
        let reps = (200_000 / batch.max(1)).clamp(50, 2_000);
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        let (p50, p99) = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
        out.push(IncrementalRow {
            operation: operation.into(),
            window_records: records,
            batch,
            incremental_p50_us: p50,
            incremental_p99_us: p99,
            recompute_ms,
            ratio: recompute_ms * 1e3 / p50,
        });
    };
    for &b in batches {
        let fresh: Vec<Vec<f64>> = (0..b).map(|_| row(&mut next)).collect();
        measure("absorb", b, &mut || {
            let newest = panes.last_mut().expect("panes");
            fresh.iter().for_each(|z| newest.add_row(z));
            std::hint::black_box(solve(&window(&panes), options));
        });
    }
    // A late correction of a closed window: retract one record, add its corrected value.
    let mut closed = panes.clone();
    let wrong = rows[0].clone();
    let mut right = wrong.clone();
    right[d] += 1.0;
    measure("correct", 1, &mut || {
        let mut retraction = Stats::of_row(&wrong);
        retraction.negate();
        closed[0].plus_equals(&retraction);
        closed[0].add_row(&right);
        std::hint::black_box(solve(&window(&closed), options));
    });
    out
}

/// Formats `bench incremental` rows as a table.
pub fn incremental_table(rows: &[IncrementalRow]) -> String {
    let mut out = format!(
        "{:<9} {:>14} {:>7} {:>12} {:>12} {:>13} {:>10}\n",
        "operation", "window rows", "batch", "p50 µs", "p99 µs", "recompute ms", "ratio"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<9} {:>14} {:>7} {:>12.2} {:>12.2} {:>13.1} {:>10.0}\n",
            r.operation,
            r.window_records,
            r.batch,
            r.incremental_p50_us,
            r.incremental_p99_us,
            r.recompute_ms,
            r.ratio
        ));
    }
    out
}

/// What `tributary bench memory` measured: the resident set of one engine run, sampled
/// while it ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemoryRun {
    /// Records read.
    pub records: u64,
    /// Engine time (s), from its `done:` line.
    pub seconds: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Final windows emitted.
    pub windows_final: u64,
    /// Resident set (MiB) at every sample, in order.
    pub rss_mib: Vec<f64>,
    /// Smallest and largest sample after the first second.
    pub steady_min_mib: f64,
    /// See `steady_min_mib`.
    pub steady_max_mib: f64,
    /// Peak resident set (VmHWM) reported by the engine.
    pub peak_rss_mib: f64,
}

/// Runs the engine on `rows` generated records (d = `features`, `keys` keys, `window`),
/// sampling its resident set every `every`: memory must stay flat however long the stream.
pub fn memory(
    rows: u64,
    keys: u64,
    features: usize,
    window: &str,
    every: Duration,
) -> Result<MemoryRun, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let source = format!("gen:rows={rows},keys={keys},features={features},seed=42,disorder=500");
    let mut child = Command::new(exe)
        .args(["run", "-q", "--source", &source, "--window", window])
        .args(["--lateness", "1s", "--out", "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let status_file = format!("/proc/{}/status", child.id());
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        let rss = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        });
        if let Some(kib) = rss {
            samples.push((started.elapsed(), kib / 1024.0));
        }
        std::thread::sleep(every);
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("the engine failed: {stderr}"));
    }
    let summary = parse_summary(&stderr).ok_or("no done: line from the engine")?;
    let steady: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| t.as_secs_f64() >= 1.0)
        .map(|(_, m)| *m)
        .collect();
    Ok(MemoryRun {
        records: summary.records,
        seconds: summary.seconds,
        records_per_s: summary.records as f64 / summary.seconds.max(1e-9),
        windows_final: summary.windows_final,
        rss_mib: samples.iter().map(|(_, m)| *m).collect(),
        steady_min_mib: steady.iter().copied().fold(f64::INFINITY, f64::min),
        steady_max_mib: steady.iter().copied().fold(0.0, f64::max),
        peak_rss_mib: summary.peak_rss_mib,
    })
}

/// Formats a memory run.
pub fn memory_table(run: &MemoryRun) -> String {
    let samples: Vec<String> = run.rss_mib.iter().map(|m| format!("{m:.1}")).collect();
    format!(
        "records {}  seconds {:.3}  records/s {:.0}  final windows {}\n\
         RSS MiB after the first second: min {:.1} max {:.1}  peak {:.1}\n\
         samples (MiB): {}\n",
        run.records,
        run.seconds,
        run.records_per_s,
        run.windows_final,
        run.steady_min_mib,
        run.steady_max_mib,
        run.peak_rss_mib,
        samples.join(" ")
    )
}

/// One row of `bench keys`: the engine on the same generated records, spread over a
/// number of keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeysRow {
    /// Keys of the generator.
    pub keys: u64,
    /// Records read (0 when the run was stopped at the memory limit).
    pub records: u64,
    /// Run time reported by the engine (s); for a stopped run, the time until it was.
    pub seconds: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Final model emissions.
    pub windows_final: u64,
    /// Final windows per second.
    pub windows_final_per_s: f64,
    /// Run time per final window (µs), amortised over everything the run did.
    pub us_per_final_window: f64,
    /// Peak RSS of the run (MiB).
    pub peak_rss_mib: f64,
    /// Whether the run was stopped for passing `--max-rss-mib` (its figures are then
    /// lower bounds of the time and memory it needed).
    pub stopped: bool,
}

/// Settings of `bench keys`.
#[derive(Clone, Debug)]
pub struct KeysSettings {
    /// Records per run (the same records for every key count, up to the key names).
    pub rows: u64,
    /// Key counts to run.
    pub keys: Vec<u64>,
    /// Features.
    pub features: usize,
    /// Window spec.
    pub window: String,
    /// Worker threads.
    pub workers: usize,
    /// The engine to run (default: this executable), e.g. an earlier build to compare.
    pub engine: Option<PathBuf>,
    /// Stop a run whose resident set passes this many MiB (0: no limit).
    pub max_rss_mib: f64,
}

/// `bench keys`: one `tributary run` child process per key count (so each has its own
/// peak RSS) on `gen:rows=N,keys=K,features=D,seed=3`, models to `/dev/null`.
pub fn keys(s: &KeysSettings) -> Result<Vec<KeysRow>, String> {
    let exe = match &s.engine {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let mut rows = Vec::new();
    for &k in &s.keys {
        let source = format!(
            "gen:rows={},keys={k},features={},seed=3",
            s.rows, s.features
        );
        let mut child = Command::new(&exe)
            .args(["run", "-q", "--source", &source, "--window", &s.window])
            .args(["--out", "/dev/null", "-w", &s.workers.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        let status_file = format!("/proc/{}/status", child.id());
        let started = std::time::Instant::now();
        let mut peak_seen: f64 = 0.0;
        let mut stopped = false;
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if let Some(mib) = read_rss_mib(&status_file) {
                peak_seen = peak_seen.max(mib);
                if s.max_rss_mib > 0.0 && mib > s.max_rss_mib {
                    let _ = child.kill();
                    stopped = true;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let elapsed = started.elapsed().as_secs_f64();
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let row = if stopped {
            KeysRow {
                keys: k,
                records: 0,
                seconds: elapsed,
                records_per_s: 0.0,
                windows_final: 0,
                windows_final_per_s: 0.0,
                us_per_final_window: 0.0,
                peak_rss_mib: peak_seen,
                stopped: true,
            }
        } else {
            if !output.status.success() {
                return Err(format!("the engine failed at {k} keys: {stderr}"));
            }
            let r = parse_summary(&stderr)
                .ok_or_else(|| format!("no summary from the engine at {k} keys: {stderr}"))?;
            let seconds = r.seconds.max(1e-9);
            KeysRow {
                keys: k,
                records: r.records,
                seconds: r.seconds,
                records_per_s: r.records as f64 / seconds,
                windows_final: r.windows_final,
                windows_final_per_s: r.windows_final as f64 / seconds,
                us_per_final_window: if r.windows_final > 0 {
                    r.seconds * 1e6 / r.windows_final as f64
                } else {
                    0.0
                },
                peak_rss_mib: r.peak_rss_mib,
                stopped: false,
            }
        };
        rows.push(row);
    }
    Ok(rows)
}

/// The resident set (MiB) in a `/proc/PID/status` file, if readable.
fn read_rss_mib(status_file: &str) -> Option<f64> {
    let s = std::fs::read_to_string(status_file).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

/// Formats `bench keys` rows as a table, records/s also as a ratio to the first row.
pub fn keys_table(rows: &[KeysRow]) -> String {
    let base = rows.first().map_or(1.0, |r| r.records_per_s.max(1e-9));
    let mut out = format!(
        "{:>9} {:>10} {:>9} {:>12} {:>7} {:>12} {:>12} {:>10} {:>13}\n",
        "keys",
        "records",
        "seconds",
        "records/s",
        "vs 1st",
        "finals",
        "finals/s",
        "µs/final",
        "peak RSS MiB"
    );
    for r in rows {
        if r.stopped {
            out.push_str(&format!(
                "{:>9} stopped after {:.1} s at the memory limit ({:.0} MiB)\n",
                r.keys, r.seconds, r.peak_rss_mib
            ));
            continue;
        }
        out.push_str(&format!(
            "{:>9} {:>10} {:>9.3} {:>12.0} {:>6.3}x {:>12} {:>12.0} {:>10.2} {:>13.1}\n",
            r.keys,
            r.records,
            r.seconds,
            r.records_per_s,
            r.records_per_s / base,
            r.windows_final,
            r.windows_final_per_s,
            r.us_per_final_window,
            r.peak_rss_mib
        ));
    }
    out
}

/// What `bench memory --many-keys K` measured: one memory run per record count, all on
/// `K` keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ManyKeysMemory {
    /// Keys.
    pub keys: u64,
    /// One run per record count, in the order asked.
    pub runs: Vec<MemoryRun>,
    /// Largest peak RSS over the smallest: 1 when memory is flat in the records read.
    pub peak_ratio: f64,
}

/// Runs [`memory`] on `keys` keys for each record count in `rows`: peak RSS must follow
/// the open windows (keys × panes × d²), not the records read or the windows emitted.
pub fn memory_many_keys(
    keys: u64,
    rows: &[u64],
    features: usize,
    window: &str,
    every: Duration,
) -> Result<ManyKeysMemory, String> {
    let runs = rows
        .iter()
        .map(|&n| memory(n, keys, features, window, every))
        .collect::<Result<Vec<_>, _>>()?;
    let peaks = runs.iter().map(|r| r.peak_rss_mib);
    let (low, high) = peaks.fold((f64::INFINITY, 0.0f64), |(l, h), p| (l.min(p), h.max(p)));
    Ok(ManyKeysMemory {
        keys,
        peak_ratio: if low > 0.0 { high / low } else { f64::NAN },
        runs,
    })
}

/// Formats a many-keys memory measurement.
pub fn many_keys_table(m: &ManyKeysMemory) -> String {
    let mut out = format!(
        "{:>7} {:>11} {:>9} {:>11} {:>10} {:>13} {:>13}\n",
        "keys", "records", "seconds", "records/s", "finals", "steady max", "peak RSS MiB"
    );
    for r in &m.runs {
        out.push_str(&format!(
            "{:>7} {:>11} {:>9.3} {:>11.0} {:>10} {:>13.1} {:>13.1}\n",
            m.keys,
            r.records,
            r.seconds,
            r.records_per_s,
            r.windows_final,
            r.steady_max_mib,
            r.peak_rss_mib
        ));
    }
    out.push_str(&format!(
        "largest peak / smallest peak: {:.3}\n",
        m.peak_ratio
    ));
    out
}
