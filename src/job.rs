//! A job: the settings of one dataflow (from SPEC.toml and flags) and running it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::Probe;

use crate::cluster::ClusterConfig;
use crate::dataflow::{
    Epoch, ModelLine, OnError, SetAside, WindowConfig, ingest, windowed_regression,
};
use crate::metrics::{Metrics, Snapshot};
use crate::model::SolveOptions;
use crate::record::{Schema, parse_features};
use crate::sink::{WriteLines, open_lines};
use crate::source::{SourceError, SourceReader, SourceSpec};
use crate::window::{Time, WindowSpec, parse_duration};

/// The settings of a job as written in a SPEC.toml file; every field is optional there
/// and on the command line, and flags override the file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// `csv:PATH`, `jsonl:PATH` or `gen:...` (relative paths are relative to the spec file).
    pub source: Option<String>,
    /// Time field (default `ts`).
    pub time: Option<String>,
    /// Key field (default `key`).
    pub key: Option<String>,
    /// Feature fields, e.g. `x0..x7` (default: the generator's, or every other CSV column).
    pub features: Option<String>,
    /// Target field (default `y`).
    pub target: Option<String>,
    /// `tumbling:60s`, `sliding:60s/10s` or `session:30s` (default `sliding:60s/10s`).
    pub window: Option<String>,
    /// Allowed lateness (default `0s`).
    pub lateness: Option<String>,
    /// Largest advance of the watermark by one record (default `1h`).
    pub max_jump: Option<String>,
    /// Ridge penalty λ (default 0: OLS).
    pub ridge: Option<f64>,
    /// Model output, JSON lines (`-` = stdout, the default).
    pub out: Option<PathBuf>,
    /// Output for records set aside (late or too far ahead).
    pub late_out: Option<PathBuf>,
    /// `skip` (default) or `fail`.
    pub on_error: Option<OnError>,
    /// Worker threads per process (default 1).
    pub workers: Option<usize>,
}

impl JobSpec {
    /// Reads a SPEC.toml file; relative source paths are made relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut spec: JobSpec =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(source) = &spec.source
            && let Some((kind, rest)) = source.split_once(':')
            && matches!(kind, "csv" | "jsonl" | "json")
            && Path::new(rest).is_relative()
        {
            let dir = path.parent().unwrap_or(Path::new("."));
            spec.source = Some(format!("{kind}:{}", dir.join(rest).display()));
        }
        Ok(spec)
    }

    /// `self` with every field that `flags` sets replaced.
    pub fn overridden_by(self, flags: JobSpec) -> JobSpec {
        JobSpec {
            source: flags.source.or(self.source),
            time: flags.time.or(self.time),
            key: flags.key.or(self.key),
            features: flags.features.or(self.features),
            target: flags.target.or(self.target),
            window: flags.window.or(self.window),
            lateness: flags.lateness.or(self.lateness),
            max_jump: flags.max_jump.or(self.max_jump),
            ridge: flags.ridge.or(self.ridge),
            out: flags.out.or(self.out),
            late_out: flags.late_out.or(self.late_out),
            on_error: flags.on_error.or(self.on_error),
            workers: flags.workers.or(self.workers),
        }
    }

    /// Checks and completes the settings into a runnable [`Job`].
    pub fn resolve(self) -> Result<Job, String> {
        let source: SourceSpec = self
            .source
            .as_deref()
            .unwrap_or("gen:rows=1000000,keys=16,features=8,seed=42,disorder=500")
            .parse()?;
        let time = self.time.unwrap_or_else(|| "ts".into());
        let key = self.key.unwrap_or_else(|| "key".into());
        let target = self.target.unwrap_or_else(|| "y".into());
        let features = match (&self.features, &source) {
            (Some(f), _) => parse_features(f)?,
            (None, SourceSpec::Gen(g)) => Schema::generated(g.features).features,
            (None, SourceSpec::Csv(path)) => {
                let header = csv_header(path)?;
                let f: Vec<String> = header
                    .into_iter()
                    .filter(|c| *c != time && *c != key && *c != target)
                    .collect();
                if f.is_empty() {
                    return Err(format!(
                        "{}: no feature columns besides {time}, {key}, {target}; name them with --features",
                        path.display()
                    ));
                }
                f
            }
            (None, SourceSpec::Jsonl(_)) => {
                return Err("--features is required for JSON lines sources".into());
            }
        };
        if let SourceSpec::Gen(g) = &source
            && g.features != features.len()
        {
            return Err(format!(
                "the generator makes {} features but {} are named",
                g.features,
                features.len()
            ));
        }
        let duration = |v: &Option<String>, default: &str, what: &str| -> Result<Time, String> {
            parse_duration(v.as_deref().unwrap_or(default)).map_err(|e| format!("{what}: {e}"))
        };
        let ridge = self.ridge.unwrap_or(0.0);
        if !(ridge >= 0.0 && ridge.is_finite()) {
            return Err(format!(
                "--ridge must be a non-negative number, not {ridge}"
            ));
        }
        let d = features.len();
        let window: WindowSpec = self
            .window
            .as_deref()
            .unwrap_or("sliding:60s/10s")
            .parse()?;
        Ok(Job {
            schema: Schema {
                time,
                key,
                features,
                target,
            },
            windows: WindowConfig {
                window,
                lateness: duration(&self.lateness, "0s", "--lateness")?,
                max_jump: duration(&self.max_jump, "1h", "--max-jump")?,
                solve: SolveOptions { ridge },
                features: d,
            },
            source,
            out: self.out.unwrap_or_else(|| PathBuf::from("-")),
            late_out: self.late_out,
            on_error: self.on_error.unwrap_or_default(),
        })
    }
}

/// Reads the header row of a CSV file.
fn csv_header(path: &Path) -> Result<Vec<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(file);
    let mut header = csv::StringRecord::new();
    match reader.read_record(&mut header) {
        Ok(true) => Ok(header.iter().map(|h| h.trim().to_owned()).collect()),
        Ok(false) => Ok(Vec::new()),
        Err(e) => Err(format!("{}: line 1 (header): {e}", path.display())),
    }
}

/// A resolved job, ready to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Where records come from.
    pub source: SourceSpec,
    /// Field names.
    pub schema: Schema,
    /// Windows, lateness, solver.
    pub windows: WindowConfig,
    /// Model output (`-` = stdout).
    pub out: PathBuf,
    /// Output of records set aside.
    pub late_out: Option<PathBuf>,
    /// Malformed-line policy.
    pub on_error: OnError,
}

/// What a finished run reports.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Final counters (of this process).
    pub metrics: Snapshot,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

fn fatal(error: SourceError) -> ! {
    eprintln!("error: {error}");
    std::process::exit(2);
}

/// Runs a job on a timely cluster; prints a progress line about once a second on stderr
/// (process 0) and returns the counters when every worker is done.
pub fn run(job: Job, cluster: ClusterConfig, progress: bool) -> Result<Summary, String> {
    // Fail early, on this thread, on a source that cannot be opened at all.
    SourceReader::open(&job.source, &job.schema, 0, 1).map_err(|e| e.to_string())?;

    let metrics = Arc::new(Metrics::default());
    let started = Instant::now();
    let shared = Arc::clone(&metrics);
    let process = cluster.process;
    let guards = timely::execute(cluster.timely_config()?, move |worker| {
        let job = job.clone();
        let metrics = Arc::clone(&shared);
        let index = worker.index();
        let reader = SourceReader::open(&job.source, &job.schema, index, worker.peers())
            .unwrap_or_else(|e| fatal(e));
        let probe = ProbeHandle::new();
        worker.dataflow::<Epoch, _, _>(|scope| {
            let ingested = ingest(
                scope,
                reader,
                &job.windows,
                job.on_error,
                Arc::clone(&metrics),
                fatal,
            );
            let (models, trace) = windowed_regression(
                scope,
                ingested.panes,
                ingested.progress,
                &job.windows,
                Arc::clone(&metrics),
            );
            drop(trace);
            let out = job.out.clone();
            models
                .write_lines(
                    move || open_lines(&out, false),
                    |m: &ModelLine| {
                        let (a, b, c, d, e) = m.order();
                        (a, b.to_owned(), c, d, e)
                    },
                )
                .probe_with(&probe);
            if let Some(late) = job.late_out.clone() {
                ingested
                    .aside
                    .write_lines(
                        move || open_lines(&late, false),
                        |a: &SetAside| (a.ts, a.key.clone()),
                    )
                    .probe_with(&probe);
            }
        });
        let mut last = Instant::now();
        let mut last_records = 0;
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(50)));
            if progress && index == 0 && process == 0 && last.elapsed() >= Duration::from_secs(1) {
                let s = metrics.snapshot();
                let rate = (s.records - last_records) as f64 / last.elapsed().as_secs_f64();
                eprintln!("progress: {}", progress_line(&s, rate));
                last = Instant::now();
                last_records = s.records;
            }
        }
    })?;
    for result in guards.join() {
        result?;
    }
    Ok(Summary {
        metrics: metrics.snapshot(),
        elapsed: started.elapsed(),
    })
}

fn progress_line(s: &Snapshot, rate: f64) -> String {
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
        format!(
            "done: {} provisional={} elapsed={:.3}s throughput={:.0} records/s peak_rss_mib={:.1}",
            progress_line(&self.metrics, self.metrics.records as f64 / secs.max(1e-9)),
            self.metrics.windows_provisional,
            secs,
            self.metrics.records as f64 / secs.max(1e-9),
            peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
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
