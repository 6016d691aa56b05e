//! Running a job: sources, the dataflow, checkpoints, sinks and serving, wired on a timely
//! cluster, with a progress line and the summary at the end.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use timely::dataflow::ProbeHandle;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, ConnectLoop, Exchange, Feedback, Inspect, Probe};

use super::settings::Job;
use crate::checkpoint::coordinator::Coordinate;
use crate::checkpoint::{self, Store};
use crate::cluster::ClusterConfig;
use crate::dataflow::{
    CheckpointContext, Epoch, MAX_AHEAD_PER_WORKER, ModelLine, RunContext, SetAside, frontier_of,
    ingest, windowed_regression,
};
use crate::metrics::{Metrics, Snapshot};
use crate::quarantine;
use crate::serve::{self, ModelStore, ServeContext};
use crate::sink::{Ledger, WriteLines, open_output};
use crate::source::feed::FeedContext;
use crate::source::{FileFormat, IngestLog, LogReader, SourceReader, SourceSpec};
use crate::source::{follow, tcp};
use crate::types::{EXIT_SOURCE_OR_OUTPUT, Fatal, OnFatal, fatal};
use crate::window::{Time, WindowSpec};

/// What a finished run reports.
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

/// Opens the checkpoint store of this process and recovers the newest complete state.
/// A store that cannot be used (damaged, another dataflow's, unreadable) is logged, with a
/// message naming the directory and the reason, and handed to `on_fatal` with
/// [`checkpoint::EXIT_REFUSED`].
fn open_checkpoint(
    job: &Job,
    dir: &Path,
    process: usize,
    on_fatal: OnFatal,
) -> Result<CheckpointContext, String> {
    let refuse = |e: checkpoint::CheckpointError| -> ! {
        tracing::error!("{e}");
        if let checkpoint::CheckpointError::Corrupt { .. }
        | checkpoint::CheckpointError::Incomplete { .. } = e
        {
            tracing::info!(
                "(`tributary checkpoint verify {}` lists every damaged record)",
                dir.display()
            );
        }
        on_fatal(Fatal::new(checkpoint::EXIT_REFUSED, e.to_string()))
    };
    let fingerprint = job.fingerprint();
    let restored =
        checkpoint::recover_from(dir, &fingerprint, job.resume_from).unwrap_or_else(|e| refuse(e));
    let commit = restored.as_ref().and_then(|r| r.commit.clone());
    let generation = commit.as_ref().map_or(1, |c| c.generation + 1);
    let replay = match job.resume_from {
        Some(_) => checkpoint::Replay::BeforeDamage,
        None => checkpoint::Replay::Strict,
    };
    let store = Store::open_with(dir, process, &fingerprint, replay).unwrap_or_else(|e| refuse(e));
    if let Some(note) = store.wal_note() {
        tracing::info!(
            "tributary: checkpoint store {}: {note}",
            store.path().display()
        );
    }
    store
        .drop_generations_from(generation)
        .map_err(|e| e.to_string())?;
    if let Some(c) = &commit
        && process == 0
    {
        tracing::info!(
            "tributary: resuming from checkpoint epoch {} (generation {}, {} panes)",
            c.epoch,
            c.generation,
            restored.as_ref().map_or(0, |r| r.panes.len())
        );
    }
    Ok(CheckpointContext {
        store: Arc::new(store),
        every: job.checkpoint_every,
        generation,
        restored: restored.filter(|r| r.commit.is_some()).map(Arc::new),
    })
}

/// Runs a job on a timely cluster; prints a progress line about once a second on stderr
/// (process 0) and returns the counters when every worker is done.
///
/// An error at start (a source that cannot be opened, a port taken, …) is returned. An
/// error the run cannot go on from — a checkpoint store refused at start, a source or
/// output failing, a checkpoint write failing, a panic — is logged where it happens and
/// handed to `on_fatal` ([`RunContext::on_fatal`]) with the exit code the `tributary`
/// command ends with for it; the command's hook ends the process, and library code never
/// does.
pub fn run(
    job: Job,
    cluster: ClusterConfig,
    progress: bool,
    on_fatal: OnFatal,
) -> Result<Summary, String> {
    // Fail early, on this thread, on a source that cannot be opened at all.
    if !job.source.is_logged() {
        SourceReader::open(&job.source, &job.schema, 0, 1).map_err(|e| e.to_string())?;
    }

    let metrics = Arc::new(Metrics::default());
    let checkpoint = match &job.checkpoint {
        Some(dir) => Some(open_checkpoint(&job, dir, cluster.process, on_fatal)?),
        None => None,
    };
    let store = checkpoint.as_ref().map(|c| Arc::clone(&c.store));
    // From here on a panic anywhere ends the process loudly; with a checkpoint, a batch
    // that crashed it twice is set aside.
    quarantine::install(
        job.checkpoint.as_deref(),
        cluster.process,
        checkpoint
            .as_ref()
            .and_then(|c| c.restored.as_ref())
            .and_then(|r| r.commit.as_ref())
            .map(|c| c.epoch),
        on_fatal,
    )?;
    // HTTP, TCP and followed-file records go through the ingest log of process 0 (durable
    // with a store).
    let log = match &job.source {
        source if source.is_logged() => {
            let (store, resume_after) = match &checkpoint {
                Some(c) if cluster.process == 0 => (Some(Arc::clone(&c.store)), c.resumed_at()),
                _ => (None, None),
            };
            // One partition, however many workers read it: resumed at the committed
            // frontier.
            let resumed = checkpoint
                .as_ref()
                .and_then(|c| c.restored.as_ref())
                .and_then(|r| r.commit.as_ref())
                .map_or(Time::MIN, |c| frontier_of(&c.max_seen, true));
            let log = Arc::new(
                IngestLog::open(store, resume_after, job.max_pending)
                    .map_err(|e| e.to_string())?
                    .with_max_pending_bytes(job.max_pending_bytes)
                    .with_partition(resumed, job.windows.max_jump),
            );
            Some(log)
        }
        _ => None,
    };
    if let (Some(log), Some(idle), 0) = (&log, job.close_after_idle, cluster.process) {
        // Every window a record so far can be in ends within the window's length (the
        // gap of sessions) of it; the lateness on top makes them final.
        let reach = match job.windows.window {
            WindowSpec::Tumbling { length } | WindowSpec::Sliding { length, .. } => length,
            WindowSpec::Session { gap } => gap,
        };
        let horizon = reach.saturating_add(job.windows.lateness);
        let log = Arc::clone(log);
        std::thread::Builder::new()
            .name("idle-close".into())
            .spawn(move || {
                loop {
                    let quiet = log.idle_for();
                    if quiet >= idle {
                        if let Some(batch) = log.close_idle(horizon) {
                            tracing::info!(
                                "tributary: no records for {quiet:.1?} (--close-after-idle): \
                                 closing every open window (batch {batch})"
                            );
                        }
                        std::thread::sleep(idle);
                    } else {
                        std::thread::sleep(idle - quiet);
                    }
                }
            })
            .map_err(|e| format!("--close-after-idle: {e}"))?;
    }
    if let (Some(log), 0) = (&log, cluster.process) {
        let feed = FeedContext {
            schema: job.schema.clone(),
            log: Arc::clone(log),
            metrics: Arc::clone(&metrics),
            on_error: job.on_error,
            max_line: job.max_line,
            on_fatal,
        };
        match &job.source {
            SourceSpec::Tcp(spec) => tcp::start(spec, job.tcp, feed)?,
            SourceSpec::Csv(file) | SourceSpec::Jsonl(file) if file.follow => {
                let format = match &job.source {
                    SourceSpec::Csv(_) => FileFormat::Csv,
                    _ => FileFormat::Jsonl,
                };
                // Where the previous run stopped reading, written with its newest batch.
                let resume = match &store {
                    Some(store) => store.source_position().map_err(|e| e.to_string())?,
                    None => None,
                };
                follow::start(&file.path, format, file.rotate, resume, feed)?;
            }
            _ => {}
        }
    }
    // The HTTP server of process 0, and the models it serves.
    let models = match (job.serve, cluster.process) {
        (Some(address), 0) => {
            let models = Arc::new(ModelStore::open(store.clone(), job.http.max_keys)?);
            let bound = serve::start(
                address,
                ServeContext {
                    models: Arc::clone(&models),
                    log: log.clone(),
                    accepts_posts: job.source == SourceSpec::Http,
                    source: job.source.to_string(),
                    schema: job.schema.clone(),
                    metrics: Arc::clone(&metrics),
                    max_body: job.max_body,
                    limits: job.http.clone(),
                    key_horizon: serve::key_horizon(&job.windows),
                    on_fatal,
                },
            )?;
            tracing::info!("tributary: serving on http://{bound}");
            Some(models)
        }
        _ => None,
    };
    let serving = job.serve.is_some();
    let commit = checkpoint
        .as_ref()
        .and_then(|c| c.restored.as_ref())
        .and_then(|r| r.commit.clone());
    if let Some(c) = &commit {
        metrics.checkpoint_epoch.store(c.epoch, Relaxed);
    }
    let out_from = commit.as_ref().and_then(|c| c.out_offset).unwrap_or(0);
    let late_from = commit.as_ref().and_then(|c| c.late_offset).unwrap_or(0);
    let context = RunContext {
        checkpoint,
        estimates: serving,
        one_partition: log.is_some(),
        ..RunContext::new(job.on_error, Arc::clone(&metrics), on_fatal)
    };
    let log_readers = cluster.workers;
    // The clock starts when the first worker does: after a cluster's processes have
    // connected (timely retries connections for as long as a peer is not up yet).
    let started: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let started_at_worker = Arc::clone(&started);
    let process = cluster.process;
    let processes = cluster.processes;
    // A cluster's connections are made (with a handshake: see `cluster`) before any
    // worker starts.
    let guards = cluster.execute(move |worker| {
        started_at_worker.get_or_init(Instant::now);
        let job = job.clone();
        let context = context.clone();
        let index = worker.index();
        let reader = match &log {
            Some(log) => SourceReader::Log(LogReader::new(Arc::clone(log), index, log_readers)),
            None => SourceReader::open(&job.source, &job.schema, index, worker.peers())
                .unwrap_or_else(|e| fatal!(context.on_fatal, EXIT_SOURCE_OR_OUTPUT, "{e}")),
        };
        let models = models.clone();
        let probe = ProbeHandle::new();
        // Heartbeats to process 0, from the first worker of each process (metrics.rs).
        let per_process = worker.peers() / processes.max(1);
        let beats = (index % per_process.max(1) == 0).then_some(index / per_process.max(1));
        let heartbeats = worker.dataflow::<Epoch, _, _>(|scope| {
            let heartbeats = crate::metrics::heartbeats(
                scope,
                Arc::clone(&context.metrics),
                probe.clone(),
                beats,
            );
            let ingested = ingest(scope, reader, &job.windows, &context);
            let (control, commits) = match &context.checkpoint {
                Some(_) => {
                    // Commit notices come back a few batches later, so that the windows
                    // run ahead of the commits instead of in lockstep with them.
                    let slack = 8 * MAX_AHEAD_PER_WORKER * scope.peers() as u64;
                    let (handle, committed) = scope.feedback(slack);
                    (ingested.control.concat(committed), Some(handle))
                }
                None => (ingested.control, None),
            };
            let (outputs, trace) =
                windowed_regression(scope, ingested.panes, control, &job.windows, &context);
            drop(trace);
            let out = job.out.clone();
            let out_ledger = Rc::new(RefCell::new(Ledger::default()));
            let written = outputs.models.write_lines(
                move || open_output(&out, Some(out_from)),
                |m: &ModelLine| {
                    let (a, b, c, d, e) = m.order();
                    (a, b.to_owned(), c, d, e)
                },
                Some(Rc::clone(&out_ledger)),
                context.on_fatal,
            );
            // Served models: what worker 0 wrote, and the running estimates.
            let written = if serving {
                let (sink, estimates_sink) = (models.clone(), models.clone());
                let estimates = outputs
                    .estimates
                    .exchange(|_| 0)
                    .inspect_core(move |event| {
                        if let (Ok((_, lines)), Some(store)) = (event, &estimates_sink) {
                            store.update(lines.iter());
                        }
                    });
                estimates.clone().probe_with(&probe);
                let written = written.inspect_core(move |event| {
                    if let (Ok((_, lines)), Some(store)) = (event, &sink) {
                        store.update(lines.iter());
                    }
                });
                // The served mark: once neither stream can bring anything at an epoch
                // (batch) `k` or before, the store has folded in every batch through `k`
                // (`after_batch` reads wait for it). Built on every worker of every process
                // (a dataflow is the same everywhere); only process 0 has a store.
                let served = models.clone();
                estimates.concat(written.clone()).sink(
                    Pipeline,
                    "ServedThrough",
                    move |(input, frontier)| {
                        input.for_each(|_, data| data.clear());
                        let through = match frontier.frontier().iter().min() {
                            Some(&first) => first.checked_sub(1),
                            None => Some(Epoch::MAX),
                        };
                        if let (Some(through), Some(store)) = (through, &served) {
                            store.served_through(through);
                        }
                    },
                );
                written
            } else {
                written
            }
            .map(|_| ());
            let mut late_ledger = None;
            let written = match job.late_out.clone() {
                Some(late) => {
                    let ledger = Rc::new(RefCell::new(Ledger::default()));
                    late_ledger = Some(Rc::clone(&ledger));
                    let late_written = ingested.aside.write_lines(
                        move || open_output(&late, Some(late_from)),
                        |a: &SetAside| (a.ts, a.key.clone()),
                        Some(ledger),
                        context.on_fatal,
                    );
                    written.concat(late_written.map(|_| ()))
                }
                None => written,
            };
            written
                .clone()
                .probe_with(&probe)
                .probe_with(&ingested.throttle);
            if let (Some(handle), Some(c)) = (commits, &context.checkpoint) {
                let (metrics, log) = (Arc::clone(&context.metrics), log.clone());
                outputs
                    .acks
                    .coordinate(
                        written,
                        Arc::clone(&c.store),
                        c.generation,
                        processes,
                        Some(out_ledger),
                        late_ledger,
                        move |epoch| {
                            // Worker 0: the commit is durable. Batches of the ingest log
                            // that it covers leave the store.
                            metrics.checkpoint_epoch.fetch_max(epoch, Relaxed);
                            if let Err(e) = log.as_ref().map_or(Ok(()), |l| l.committed(epoch)) {
                                fatal!(
                                    on_fatal,
                                    checkpoint::EXIT_WRITE_FAILED,
                                    "truncating the ingest log: {e}"
                                );
                            }
                        },
                        on_fatal,
                    )
                    .probe_with(&probe)
                    .connect_loop(handle);
            }
            heartbeats
        });
        let metrics = &context.metrics;
        let mut last = Instant::now();
        let mut last_records = 0;
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(50)));
            if progress && index == 0 && process == 0 && last.elapsed() >= Duration::from_secs(1) {
                let s = metrics.snapshot();
                let rate = (s.records - last_records) as f64 / last.elapsed().as_secs_f64();
                match metrics.processes_part() {
                    Some(peers) => eprintln!("progress: {} {peers}", progress_line(&s, rate)),
                    None => eprintln!("progress: {}", progress_line(&s, rate)),
                }
                last = Instant::now();
                last_records = s.records;
            }
        }
        heartbeats.stop();
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
        let per_worker: Vec<String> = self.worker_records.iter().map(u64::to_string).collect();
        format!(
            "done: {} provisional={} elapsed={:.3}s throughput={:.0} records/s peak_rss_mib={:.1} \
             worker_records={}",
            progress_line(&self.metrics, self.metrics.records as f64 / secs.max(1e-9)),
            self.metrics.windows_provisional,
            secs,
            self.metrics.records as f64 / secs.max(1e-9),
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
