//! What a run sets up in a process before its workers start: the checkpoint store (and the
//! state recovered from it), the ingest log of a live source with the threads that feed
//! it, and the HTTP server. Each step is a function [`Pipeline::run`](super::Pipeline::run)
//! calls in turn.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::settings::Job;
use crate::checkpoint::{self, Store};
use crate::dataflow::{CheckpointContext, frontier_of};
use crate::metrics::Metrics;
use crate::serve::{self, ModelStore, ServeContext};
use crate::source::feed::FeedContext;
use crate::source::{FileFormat, IngestLog, SourceSpec};
use crate::source::{follow, tcp};
use crate::types::{Fatal, OnFatal};
use crate::window::{Time, WindowSpec};

/// Opens the checkpoint store of this process and recovers the newest complete state.
/// A store that cannot be used (damaged, another dataflow's, unreadable) is logged, with a
/// message naming the directory and the reason, and handed to `on_fatal` with
/// [`checkpoint::EXIT_REFUSED`].
pub(super) fn open_checkpoint(
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

/// The ingest log that HTTP, TCP and followed-file records go through (in process 0's
/// store with a checkpoint, so durable), or `None` for a source every worker reads a
/// share of itself. It is one partition however many workers read it, resumed at the
/// committed frontier.
pub(super) fn open_ingest_log(
    job: &Job,
    checkpoint: Option<&CheckpointContext>,
    process: usize,
) -> Result<Option<Arc<IngestLog>>, String> {
    if !job.source.is_logged() {
        return Ok(None);
    }
    let (store, resume_after) = match checkpoint {
        Some(c) if process == 0 => (Some(Arc::clone(&c.store)), c.resumed_at()),
        _ => (None, None),
    };
    let resumed = checkpoint
        .and_then(|c| c.restored.as_ref())
        .and_then(|r| r.commit.as_ref())
        .map_or(Time::MIN, |c| frontier_of(&c.max_seen, true));
    let log = IngestLog::open(store, resume_after, job.max_pending)
        .map_err(|e| e.to_string())?
        .with_max_pending_bytes(job.max_pending_bytes)
        .with_partition(resumed, job.windows.max_jump);
    Ok(Some(Arc::new(log)))
}

/// `--close-after-idle`: a thread of process 0 that closes every open window once the
/// ingest log `log` has had no records for `idle`.
pub(super) fn close_when_idle(
    job: &Job,
    log: &Arc<IngestLog>,
    idle: Duration,
) -> Result<(), String> {
    // Every window a record so far can be in ends within the window's length (the gap of
    // sessions) of it; the lateness on top makes them final.
    let reach = match job.windows.window {
        WindowSpec::Tumbling { length } | WindowSpec::Sliding { length, .. } => length,
        WindowSpec::Session { gap } => gap,
    };
    let horizon = reach.saturating_add(job.windows.lateness);
    when_quiet(log, "idle-close", idle, move |log, quiet| {
        if let Some(batch) = log.close_idle(horizon) {
            tracing::info!(
                "tributary: no records for {quiet:.1?} (--close-after-idle): \
                 closing every open window (batch {batch})"
            );
        }
    })
    .map_err(|e| format!("--close-after-idle: {e}"))
}

/// With a checkpoint store: a thread of process 0 that asks for a checkpoint through the
/// ingest log's newest batch once the log has had no records for `every`
/// (`--checkpoint-every`), so that a live source gone quiet is checkpointed through
/// everything it sent ([`IngestLog::checkpoint_quiet`]).
pub(super) fn checkpoint_when_quiet(log: &Arc<IngestLog>, every: Duration) -> Result<(), String> {
    when_quiet(log, "quiet-checkpoint", every, move |log, _| {
        if let Some(batch) = log.checkpoint_quiet(every) {
            tracing::debug!("ingest log quiet for {every:?}: checkpoint at batch {batch}");
        }
    })
    .map_err(|e| format!("--checkpoint-every: {e}"))
}

/// A thread that calls `act` (with how long the log has been quiet) whenever `log` has
/// had no records for `quiet`, then waits `quiet` again; it ends with the log.
fn when_quiet(
    log: &Arc<IngestLog>,
    name: &str,
    quiet: Duration,
    act: impl Fn(&IngestLog, Duration) + Send + 'static,
) -> std::io::Result<()> {
    let log = Arc::downgrade(log);
    let quiet = quiet.max(Duration::from_millis(1));
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Some(log) = log.upgrade() {
                let idle = log.idle_for();
                let wait = if idle >= quiet {
                    act(&log, idle);
                    quiet
                } else {
                    quiet - idle
                };
                drop(log);
                std::thread::sleep(wait);
            }
        })
        .map(drop)
}

/// Starts the threads of process 0 that append a TCP source's or a followed file's lines
/// to the ingest log `log` (HTTP records arrive through the server instead). A followed
/// file resumes where the previous run stopped reading (`store`'s position).
pub(super) fn start_feeds(
    job: &Job,
    log: &Arc<IngestLog>,
    store: Option<&Arc<Store>>,
    metrics: &Arc<Metrics>,
    on_fatal: OnFatal,
) -> Result<(), String> {
    let feed = FeedContext {
        schema: job.schema.clone(),
        log: Arc::clone(log),
        metrics: Arc::clone(metrics),
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
            let resume = match store {
                Some(store) => store.source_position().map_err(|e| e.to_string())?,
                None => None,
            };
            follow::start(&file.path, format, file.rotate, resume, feed)?;
        }
        _ => {}
    }
    Ok(())
}

/// Starts the HTTP server on `address` (process 0) and returns the models it serves, which
/// the workers' model sink and running estimates update (an estimate is solved when read,
/// with the run's solve options).
pub(super) fn start_serving(
    job: &Job,
    address: std::net::SocketAddr,
    store: Option<Arc<Store>>,
    log: Option<Arc<IngestLog>>,
    metrics: &Arc<Metrics>,
    on_fatal: OnFatal,
) -> Result<Arc<ModelStore>, String> {
    let models = Arc::new(ModelStore::open(
        store,
        job.http.max_keys,
        job.windows.solve,
    )?);
    let bound = serve::start(
        address,
        ServeContext {
            models: Arc::clone(&models),
            log,
            accepts_posts: job.source == SourceSpec::Http,
            source: job.source.to_string(),
            schema: job.schema.clone(),
            metrics: Arc::clone(metrics),
            max_body: job.max_body,
            max_line: job.max_line,
            limits: job.http.clone(),
            key_horizon: serve::key_horizon(&job.windows),
            on_fatal,
        },
    )?;
    tracing::info!("tributary: serving on http://{bound}");
    Ok(models)
}
