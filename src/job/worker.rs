//! What every worker of a run does: build the dataflow — the source operator, the windows,
//! the model and set-aside sinks, the served models, the commit loop of checkpoints — and
//! step it to the end, printing the progress line.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline as Pipelined;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, ConnectLoop, Exchange, Feedback, Probe};
use timely::dataflow::{ProbeHandle, StreamVec};
use timely::worker::Worker;

use super::settings::Job;
use super::summary::progress_line;
use crate::checkpoint;
use crate::checkpoint::coordinator::Coordinate;
use crate::dataflow::{
    Epoch, EstimateStats, MAX_AHEAD_PER_WORKER, ModelLine, RunContext, ingest, windowed_regression,
};
use crate::serve::ModelStore;
use crate::sink::{Ledger, WriteLines, open_output};
use crate::source::{IngestLog, LogReader, SourceReader};
use crate::types::{EXIT_SOURCE_OR_OUTPUT, fatal};

/// What every worker of a process is handed: the same for all of them.
#[derive(Clone)]
pub(super) struct Shared {
    /// The settings.
    pub job: Job,
    /// Policy, counters, the fatal-error hook, checkpoints.
    pub context: RunContext,
    /// The ingest log of a live source (process 0), read by every worker of the process.
    pub log: Option<Arc<IngestLog>>,
    /// The models served over HTTP (process 0, with a server).
    pub models: Option<Arc<ModelStore>>,
    /// Where the model output (`--out`) resumes: the committed offset.
    pub out_from: u64,
    /// Where the output of records set aside (`--late-out`) resumes.
    pub late_from: u64,
    /// Worker threads reading the ingest log.
    pub log_readers: usize,
    /// This process's index.
    pub process: usize,
    /// The cluster's process count.
    pub processes: usize,
    /// Whether worker 0 of process 0 prints the progress line.
    pub progress: bool,
}

/// Builds the dataflow on `worker` and steps it until every sink is through the last
/// epoch.
pub(super) fn run_worker(worker: &mut Worker, shared: &Shared) {
    let index = worker.index();
    let context = &shared.context;
    let reader = match &shared.log {
        Some(log) => SourceReader::Log(LogReader::new(Arc::clone(log), index, shared.log_readers)),
        None => SourceReader::open_limited(
            &shared.job.source,
            &shared.job.schema,
            index,
            worker.peers(),
            shared.job.max_line,
        )
        .unwrap_or_else(|e| fatal!(context.on_fatal, EXIT_SOURCE_OR_OUTPUT, "{e}")),
    };
    // The workers of this process: those of the whole cluster over its processes.
    let per_process = worker.peers() / shared.processes.max(1);
    // A file is parsed ahead where there is a core for it.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let reader = match shared.job.read_ahead.applies(per_process, cores) {
        true => reader.read_ahead(),
        false => reader,
    };
    let probe = ProbeHandle::new();
    // Heartbeats to process 0, from the first worker of each process (metrics.rs).
    let beats = index
        .is_multiple_of(per_process.max(1))
        .then_some(index / per_process.max(1));
    let heartbeats = worker.dataflow::<Epoch, _, _>(|scope| {
        let heartbeats =
            crate::metrics::heartbeats(scope, Arc::clone(&context.metrics), probe.clone(), beats);
        let job = &shared.job;
        let ingested = ingest(scope, reader, &job.windows, context);
        let (control, commits) = match &context.checkpoint {
            Some(_) => {
                // Commit notices come back a few batches later, so that the windows run
                // ahead of the commits instead of in lockstep with them.
                let slack = 8 * MAX_AHEAD_PER_WORKER * scope.peers() as u64;
                let (handle, committed) = scope.feedback(slack);
                (ingested.control.concat(committed), Some(handle))
            }
            None => (ingested.control, None),
        };
        let outputs = windowed_regression(ingested.panes, control, &job.windows, context);
        // The model sink (`--out`, worker 0).
        let out = job.out.clone();
        let out_from = shared.out_from;
        let out_ledger = Rc::new(RefCell::new(Ledger::default()));
        let open = move || open_output(&out, Some(out_from));
        let ledger = Some(Rc::clone(&out_ledger));
        let written = match job.serve {
            Some(_) => {
                let written = outputs
                    .models
                    .write_lines_passing(open, ledger, context.on_fatal);
                serve_models(written, outputs.estimates, &shared.models, &probe).map(|_| ())
            }
            None => outputs.models.write_lines(open, ledger, context.on_fatal),
        };
        // The sink of records set aside (`--late-out`, worker 0).
        let mut late_ledger = None;
        let written = match job.late_out.clone() {
            Some(late) => {
                let ledger = Rc::new(RefCell::new(Ledger::default()));
                late_ledger = Some(Rc::clone(&ledger));
                let late_from = shared.late_from;
                let late_written = ingested.aside.write_lines(
                    move || open_output(&late, Some(late_from)),
                    Some(ledger),
                    context.on_fatal,
                );
                written.concat(late_written)
            }
            None => written,
        };
        written
            .clone()
            .probe_with(&probe)
            .probe_with(&ingested.throttle);
        // Checkpoints: commit an epoch once every worker's part and the sinks are through
        // it, and feed the commit notice back to the windows.
        if let (Some(handle), Some(c)) = (commits, &context.checkpoint) {
            let (metrics, log) = (Arc::clone(&context.metrics), shared.log.clone());
            let on_fatal = context.on_fatal;
            outputs
                .acks
                .coordinate(
                    written,
                    Arc::clone(&c.store),
                    c.generation,
                    shared.processes,
                    Some(out_ledger),
                    late_ledger,
                    move |epoch| {
                        // Worker 0: the commit is durable. Batches of the ingest log that it
                        // covers leave the store.
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
    let print = shared.progress && index == 0 && shared.process == 0;
    let mut last = Instant::now();
    let mut last_records = 0;
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(50)));
        if print && last.elapsed() >= Duration::from_secs(1) {
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
}

/// Served models: what worker 0 wrote (`written`: its lines are moved into the store, and
/// the stream returned, which carries none, keeps its frontier for the sinks' probe) and
/// the statistics of the running `estimates` (solved only when read), folded into `models`
/// (process 0's store; `None` elsewhere), with the served mark: once neither stream can
/// bring anything at an epoch (batch) `k` or before, the store has folded in every batch
/// through `k` (`after_batch` reads wait for it). Built on every worker of every process
/// (a dataflow is the same everywhere).
fn serve_models<'scope>(
    written: StreamVec<'scope, Epoch, ModelLine>,
    estimates: StreamVec<'scope, Epoch, EstimateStats>,
    models: &Option<Arc<ModelStore>>,
    probe: &ProbeHandle<Epoch>,
) -> StreamVec<'scope, Epoch, ModelLine> {
    // Each stream's data moves into the store (no copy); the operator gives nothing, and
    // its output's frontier says which epochs are folded in.
    fn fold_into<'scope, D: timely::ExchangeData>(
        stream: StreamVec<'scope, Epoch, D>,
        name: &str,
        models: &Option<Arc<ModelStore>>,
        fold: fn(&ModelStore, std::vec::Drain<'_, D>),
    ) -> StreamVec<'scope, Epoch, ModelLine> {
        let store = models.clone();
        stream.unary::<CapacityContainerBuilder<Vec<ModelLine>>, _, _, _>(
            Pipelined,
            name,
            move |initial, _| {
                drop(initial);
                move |input, _| {
                    input.for_each(|_, data| match &store {
                        Some(store) => fold(store, data.drain(..)),
                        None => data.clear(),
                    });
                }
            },
        )
    }
    let estimates = fold_into(
        estimates.exchange(|_| 0),
        "ServeEstimates",
        models,
        |store, estimates| store.update_estimates(estimates),
    );
    estimates.clone().probe_with(probe);
    let written = fold_into(written, "ServeModels", models, |store, lines| {
        store.update(lines)
    });
    let served = models.clone();
    estimates
        .concat(written.clone())
        .sink(Pipelined, "ServedThrough", move |(input, frontier)| {
            input.for_each(|_, data| data.clear());
            let through = match frontier.frontier().iter().min() {
                Some(&first) => first.checked_sub(1),
                None => Some(Epoch::MAX),
            };
            if let (Some(through), Some(store)) = (through, &served) {
                store.served_through(through);
            }
        });
    written
}
