//! What a run reports: the progress line printed while it runs and the [`Summary`] at its
//! end.

use std::time::Duration;

use crate::metrics::Snapshot;
use crate::window::Time;

/// What a finished run reports ([`Pipeline::run`](super::Pipeline::run)).
#[derive(Clone, Debug)]
pub struct Summary {
    /// Final counters (of this process).
    pub metrics: Snapshot,
    /// Wall-clock time from the first worker's start (after a cluster's processes have
    /// connected) to the end of the run.
    pub elapsed: Duration,
    /// Records read by each worker of the cluster (as process 0 heard them).
    pub worker_records: Vec<u64>,
}

/// The progress line's counters (`records=… rate=…/s watermark=… …`), at `rate` records a
/// second.
pub(super) fn progress_line(s: &Snapshot, rate: f64) -> String {
    let watermark = match s.watermark {
        Time::MIN => "-".to_owned(),
        Time::MAX => "end".to_owned(),
        w => w.to_string(),
    };
    format!(
        "records={} rate={:.0}/s watermark={} open_panes={} windows_final={} late={} too_far_ahead={} malformed={}",
        s.records, rate, watermark, s.open_panes, s.windows_final, s.late, s.too_far, s.malformed
    )
}

impl Summary {
    /// The one-line summary printed at exit.
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let per_worker: Vec<String> = self.worker_records.iter().map(u64::to_string).collect();
        let s = &self.metrics;
        let rate = s.records as f64 / secs.max(1e-9);
        // Only for a run whose files were read ahead and folded on the reading thread.
        let folds = if s.folded_ahead + s.folds_refused > 0 {
            format!(
                " folded_ahead={} folds_refused={}",
                s.folded_ahead, s.folds_refused
            )
        } else {
            String::new()
        };
        format!(
            "done: {} provisional={} elapsed={:.3}s throughput={:.0} records/s peak_rss_mib={:.1} \
             worker_records={}{folds}",
            progress_line(s, rate),
            s.windows_provisional,
            secs,
            rate,
            peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
            per_worker.join("/"),
        )
    }
}

/// This process's peak resident set size (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(folded_ahead: u64, folds_refused: u64) -> String {
        let metrics = Snapshot {
            records: 1000,
            folded_ahead,
            folds_refused,
            ..Snapshot::default()
        };
        let elapsed = Duration::from_millis(500);
        let worker_records = vec![600, 400];
        Summary {
            metrics,
            elapsed,
            worker_records,
        }
        .line()
    }

    /// The fold counters end the line when a batch was folded ahead (taken or refused),
    /// and are absent otherwise; the fields before them do not move.
    #[test]
    fn the_summary_names_the_folds_only_when_there_were_some() {
        let none = summary(0, 0);
        assert!(
            none.starts_with("done: records=1000 rate=2000/s "),
            "{none}"
        );
        assert!(none.ends_with(" worker_records=600/400"), "{none}");
        assert!(!none.contains("fold"), "{none}");
        for (taken, refused) in [(3, 1), (0, 2), (5, 0)] {
            let line = summary(taken, refused);
            let tail =
                format!(" worker_records=600/400 folded_ahead={taken} folds_refused={refused}");
            assert!(line.ends_with(&tail), "{line}");
            assert!(line.contains(" throughput=2000 records/s "), "{line}");
        }
    }
}
