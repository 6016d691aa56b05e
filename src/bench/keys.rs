//! `bench keys`: the engine on the same generated records spread over a number of keys.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::engine::parse_summary;

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
