//! The engine as a child process: starting one (or a loopback cluster of them) and
//! reading the `done:` line it ends with.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Starts `processes` engine processes (a loopback cluster when more than one) and
/// returns each one's stderr; fails if any fails.
pub(super) fn run_cluster(
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
