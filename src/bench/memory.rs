//! `bench memory`: the resident set of an engine run, sampled while it runs; and with
//! `--many-keys`, peak RSS over record counts on many keys.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use super::engine::parse_summary;

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
