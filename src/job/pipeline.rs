//! [`Pipeline`]: the whole run of `tributary run` — a source, the windowed regression,
//! model and set-aside sinks, checkpoints, serving — as one call of the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::settings::Job;
use super::start::{
    checkpoint_when_quiet, close_when_idle, open_checkpoint, open_ingest_log, start_feeds,
    start_serving,
};
use super::summary::Summary;
use super::worker::{Shared, run_worker};
use crate::cluster::ClusterConfig;
use crate::dataflow::RunContext;
use crate::metrics::Metrics;
use crate::quarantine;
use crate::source::SourceReader;
use crate::types::{OnError, OnFatal};

/// A whole run, as `tributary run` does it: the [`Job`]'s source read on every worker of a
/// timely cluster, windowed regression models written to a JSON-lines sink, records set
/// aside written to another, checkpoints to RocksDB (and resuming from them), models
/// served over HTTP — then [`run`](Pipeline::run) returns the run's [`Summary`].
///
/// Build one from a [`Job`] (settings resolved from a SPEC.toml and flags by
/// [`JobSpec::resolve`](super::JobSpec::resolve), or [`Job::new`] and its fields) and a
/// fatal-error hook, then change what you need with the setters:
///
/// ```
/// use tributary::{Fatal, Job, ModelLine, Pipeline, Schema, WindowConfig};
///
/// // The program chooses what a fatal error does (it is already logged): here, like the
/// // `tributary` command, end with its exit code.
/// fn exit(fatal: Fatal) -> ! {
///     std::process::exit(fatal.code)
/// }
///
/// let dir = std::env::temp_dir().join(format!("tributary-pipeline-doc-{}", std::process::id()));
/// let _ = std::fs::remove_dir_all(&dir); // a checkpoint left there would be resumed
/// let job = Job::new(
///     "gen:rows=3000,keys=2,features=1,step=10".parse().unwrap(),
///     Schema::generated(1),
///     WindowConfig::new("tumbling:10s".parse().unwrap(), 1),
/// );
/// let summary = Pipeline::new(job, exit)
///     .models_to(dir.join("models.jsonl"))
///     .checkpoint(dir.join("checkpoint"), std::time::Duration::from_millis(100))
///     .workers(2)
///     .run()
///     .unwrap();
/// assert_eq!(summary.metrics.records, 3000);
/// let text = std::fs::read_to_string(dir.join("models.jsonl")).unwrap();
/// let models: Vec<ModelLine> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
/// assert_eq!(models.len(), 2 * 3, "30 s of records: three 10 s windows of two keys");
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// # Errors
///
/// [`run`](Pipeline::run) returns an error found at start (a source that cannot be
/// opened, a port taken, …). An error the run cannot go on from — a checkpoint store
/// refused at start, a source or output failing, a checkpoint write failing, a lost peer,
/// a panic on any thread — is logged where it happens and handed to the hook
/// ([`Pipeline::on_fatal`], [`RunContext::on_fatal`]) with the exit code the `tributary`
/// command ends with for it. The hook must not return; the library never ends the process,
/// the hook chooses. While it runs, a panic on any thread of the process (but the HTTP
/// server's) is handed to the same hook ([`quarantine::install`]): a hook that panics there
/// aborts the process. Once `run` returns, panics go to the hook the process had before,
/// and a later run has its own hook and crash records.
#[derive(Clone)]
pub struct Pipeline {
    /// The settings: source, schema, windows, sinks, checkpoints, serving and limits.
    pub job: Job,
    /// Workers per process, processes, and where they are (one process of one worker by
    /// default).
    pub cluster: ClusterConfig,
    /// Whether worker 0 of process 0 prints a progress line on stderr about once a second
    /// (off by default).
    pub progress: bool,
    /// The fatal-error hook of the run (see [`OnFatal`]).
    pub on_fatal: OnFatal,
}

impl Pipeline {
    /// The pipeline of `job` on one worker, without a progress line, handing its fatal
    /// errors to `on_fatal`.
    pub fn new(job: Job, on_fatal: OnFatal) -> Pipeline {
        Pipeline {
            job,
            cluster: ClusterConfig::default(),
            progress: false,
            on_fatal,
        }
    }

    /// Models (JSON lines, one [`ModelLine`](crate::ModelLine) each) to the file `path`,
    /// or stdout for `-` (the default); with checkpoints, exactly once across restarts
    /// (`--out`).
    pub fn models_to(mut self, path: impl Into<PathBuf>) -> Pipeline {
        self.job.out = path.into();
        self
    }

    /// Records set aside (late, too far ahead, quarantined; JSON lines, one
    /// [`SetAside`](crate::SetAside) each) to the file `path` (`--late-out`).
    pub fn set_aside_to(mut self, path: impl Into<PathBuf>) -> Pipeline {
        self.job.late_out = Some(path.into());
        self
    }

    /// Checkpoints into the RocksDB directory `dir`, one every `every` (`--checkpoint`,
    /// `--checkpoint-every`). A run on a directory that holds a checkpoint of the same
    /// dataflow resumes from its newest complete one.
    pub fn checkpoint(mut self, dir: impl Into<PathBuf>, every: Duration) -> Pipeline {
        self.job.checkpoint = Some(dir.into());
        self.job.checkpoint_every = every.max(Duration::from_millis(1));
        self
    }

    /// Resumes from the checkpoint of epoch `epoch`, which must be the newest complete one
    /// in the intact part of every store (`--resume-from`; needs
    /// [`checkpoint`](Pipeline::checkpoint)).
    pub fn resume_from(mut self, epoch: u64) -> Pipeline {
        self.job.resume_from = Some(epoch);
        self
    }

    /// Serves HTTP on `address` in process 0: the models, predictions, metrics, and
    /// `POST /data` for the `http` source (`--serve`; see docs/serving.md).
    pub fn serve(mut self, address: SocketAddr) -> Pipeline {
        self.job.serve = Some(address);
        self
    }

    /// What a malformed line does (`--on-error`; skipped by default).
    pub fn on_error(mut self, policy: OnError) -> Pipeline {
        self.job.on_error = policy;
        self
    }

    /// `workers` worker threads in this process (`-w`).
    pub fn workers(mut self, workers: usize) -> Pipeline {
        self.cluster.workers = workers;
        self
    }

    /// Runs on the cluster `cluster` (processes, workers, hostfile: see
    /// [`ClusterConfig`]).
    pub fn cluster(mut self, cluster: ClusterConfig) -> Pipeline {
        self.cluster = cluster;
        self
    }

    /// Prints (`true`) or not the progress line on stderr.
    pub fn progress(mut self, progress: bool) -> Pipeline {
        self.progress = progress;
        self
    }

    /// Hands the run's fatal errors to `on_fatal` instead.
    pub fn on_fatal(mut self, on_fatal: OnFatal) -> Pipeline {
        self.on_fatal = on_fatal;
        self
    }

    /// Runs the pipeline on its cluster and returns the counters when every worker is
    /// done: sets up this process (the source checked, the checkpoint store opened and the
    /// state recovered, the panic hook, the ingest log of a live source and what feeds it,
    /// the HTTP server), then builds the dataflow on every worker and steps it to the end.
    /// See [`Pipeline`] for the errors.
    pub fn run(self) -> Result<Summary, String> {
        let Pipeline {
            job,
            cluster,
            progress,
            on_fatal,
        } = self;
        let process = cluster.process;
        job.check()?;
        if cluster.workers == 0 {
            return Err("a run needs at least one worker".into());
        }
        // Fail early, on this thread, on a source that cannot be opened at all.
        if !job.source.is_logged() {
            SourceReader::open_limited(&job.source, &job.schema, 0, 1, job.max_line)
                .map_err(|e| e.to_string())?;
        }
        let metrics = Arc::new(Metrics::default());
        let checkpoint = match &job.checkpoint {
            Some(dir) => Some(open_checkpoint(&job, dir, process, on_fatal)?),
            None => None,
        };
        let store = checkpoint.as_ref().map(|c| Arc::clone(&c.store));
        let commit = checkpoint
            .as_ref()
            .and_then(|c| c.restored.as_ref())
            .and_then(|r| r.commit.clone());
        // From here on a panic anywhere ends the run loudly; with a checkpoint, a batch
        // that crashed it twice is set aside.
        // Held to the end of the run: a panic after it goes to the hook from before.
        let _panics = quarantine::install(
            job.checkpoint.as_deref(),
            process,
            commit.as_ref().map(|c| c.epoch),
            on_fatal,
        )?;
        // HTTP, TCP and followed-file records go through the ingest log of process 0.
        let log = open_ingest_log(&job, checkpoint.as_ref(), process)?;
        if let (Some(log), 0) = (&log, process) {
            if let Some(idle) = job.close_after_idle {
                close_when_idle(&job, log, idle)?;
            }
            if let Some(c) = &checkpoint {
                checkpoint_when_quiet(log, c.every)?;
            }
            start_feeds(&job, log, store.as_ref(), &metrics, on_fatal)?;
        }
        // The HTTP server of process 0, and the models it serves.
        let models = match (job.serve, process) {
            (Some(address), 0) => Some(start_serving(
                &job,
                address,
                store.clone(),
                log.clone(),
                &metrics,
                on_fatal,
            )?),
            _ => None,
        };
        if let Some(c) = &commit {
            metrics.checkpoint_epoch.store(c.epoch, Relaxed);
        }
        let shared = Shared {
            out_from: commit.as_ref().and_then(|c| c.out_offset).unwrap_or(0),
            late_from: commit.as_ref().and_then(|c| c.late_offset).unwrap_or(0),
            context: RunContext {
                checkpoint,
                estimates: job.serve.is_some(),
                one_partition: log.is_some(),
                ..RunContext::new(job.on_error, Arc::clone(&metrics), on_fatal)
            },
            job,
            log,
            models,
            log_readers: cluster.workers,
            process,
            processes: cluster.processes,
            progress,
        };
        // The clock starts when the first worker does: after a cluster's processes have
        // connected (timely retries connections for as long as a peer is not up yet),
        // with the handshake of `cluster`.
        let started: Arc<OnceLock<Instant>> = Arc::default();
        let started_at_worker = Arc::clone(&started);
        let guards = cluster.execute(move |worker| {
            started_at_worker.get_or_init(Instant::now);
            run_worker(worker, &shared)
        })?;
        for result in guards.join() {
            result?;
        }
        Ok(Summary {
            metrics: metrics.snapshot(),
            elapsed: started.get().map_or(Duration::ZERO, Instant::elapsed),
            worker_records: metrics.worker_records(),
        })
    }
}
