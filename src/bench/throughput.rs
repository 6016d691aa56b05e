//! `bench throughput`: records/s of the engine by source, worker count and processes.

use std::path::PathBuf;
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::engine::{parse_summary, run_cluster};

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
