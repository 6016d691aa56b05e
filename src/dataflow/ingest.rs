//! The source operator: reads this worker's share of a source, batch by batch, into pane
//! statistics, its progress reports and the records set aside.

use std::sync::Arc;
use std::time::Instant;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use super::combiner::{Combiner, PaneFold, Quarantined};
use super::context::{PaneUpdate, RunContext, WindowConfig, owner, resumed_max_seen, vec_output};
use super::reading::{Poll, Reading};
use crate::key::Key;
use crate::messages::{Control, Progress, SetAside};
use crate::source::SourceReader;
use crate::stats::Stats;
use crate::types::{Counts, Epoch};
use crate::types::{EXIT_SOURCE_OR_OUTPUT, fatal};
use crate::window::{Pane, Time};
use crate::{failpoint, quarantine};

/// The streams that ingesting a source produces.
pub struct Ingested<'scope> {
    /// Pre-aggregated pane statistics: one update per (key, pane) per batch.
    pub panes: VecCollection<'scope, Epoch, (Key, Pane), Stats>,
    /// Each worker's progress after each of its batches, as [`Control`] messages.
    pub control: StreamVec<'scope, Epoch, Control>,
    /// Records set aside (late or too far ahead).
    pub aside: StreamVec<'scope, Epoch, SetAside>,
    /// Backpressure: attach it (`probe_with`) to the end of the dataflow, and the source
    /// stays at most [`MAX_AHEAD_PER_WORKER`](super::MAX_AHEAD_PER_WORKER) × workers
    /// batches, and at most [`MAX_PANES_AHEAD_PER_WORKER`] pane updates of its own, ahead
    /// of it, so buffers (and memory) stay bounded. Unattached, the source is not held
    /// back.
    pub throttle: ProbeHandle<Epoch>,
}

/// How many pane updates a worker's source may have emitted beyond the probe attached to
/// [`Ingested::throttle`]. With few keys a batch is a few panes and the bound in batches
/// holds first; with many keys a batch is up to one pane per record, and this bound keeps
/// the pane updates waiting in channels and in the windows operator (until every worker
/// has passed their epoch) from growing to the whole input.
pub const MAX_PANES_AHEAD_PER_WORKER: usize = 1 << 16;

/// The capabilities of the progress and set-aside outputs follow the panes' (`lead`):
/// at its time, or dropped with it.
fn follow(lead: &Option<Capability<Epoch>>, others: &mut [Option<Capability<Epoch>>; 2]) {
    match lead {
        Some(lead) => {
            for other in others.iter_mut().flatten() {
                if other.time() < lead.time() {
                    other.downgrade(lead.time());
                }
            }
        }
        None => *others = [None, None],
    }
}

/// Reads this worker's share of a source, batch by batch, into pane statistics.
///
/// Per batch, records are checked against the partition's
/// [`Watermark`](crate::window::Watermark) and folded into
/// per-(key, pane) statistics (the combiner), so differential sees one update per key and
/// pane per batch, not one per record. A source error (with `--on-error fail`, a malformed
/// line) is fatal: it is reported through `on_fatal`, which must not return.
pub fn ingest<'scope>(
    scope: Scope<'scope, Epoch>,
    mut reader: SourceReader,
    config: &WindowConfig,
    context: &RunContext,
) -> Ingested<'scope> {
    let worker = scope.index();
    let peers = scope.peers();
    let on_fatal = context.on_fatal;
    let mut combiner = Combiner::new(config, context.on_error);
    // A file read ahead is also folded into panes ahead: the combiner then only admits.
    reader.fold_ahead_with(|| Box::new(PaneFold::new(config)));
    let metrics = Arc::clone(&context.metrics);
    // Resuming: skip the batches in the checkpoint, restore the partition's watermark, and
    // hand the checkpointed panes this worker owns to the windows operator first.
    let checkpoint = context.checkpoint.clone();
    let every = checkpoint.as_ref().map(|c| c.every);
    let mut first = 0;
    let mut restored: Vec<PaneUpdate> = Vec::new();
    if let Some(recovered) = checkpoint.as_ref().and_then(|c| c.restored.clone())
        && let Some(commit) = &recovered.commit
    {
        first = commit.epoch + 1;
        reader.seek(first);
        combiner.watermark.max_seen = resumed_max_seen(commit, peers, false)[worker];
        restored = recovered
            .panes
            .iter()
            .map(|(key, pane, stats)| ((Key::from(key.as_str()), *pane), first, stats.clone()))
            .filter(|((key, _), _, _)| owner(key, peers) == worker)
            .collect();
    }
    // Live sources (the ingest log) bound each batch's advance of the watermark.
    let bounded_batches = matches!(reader, SourceReader::Log(_));
    let mut last_mark = Instant::now();
    let throttle = ProbeHandle::new();
    let held_back = throttle.clone();
    // Three outputs, each its own type: an update is moved once, into its output.
    let mut builder = OperatorBuilder::new("Ingest".to_owned(), scope);
    let info = builder.operator_info();
    let (mut panes_out, panes) = vec_output::<PaneUpdate>(&mut builder);
    let (mut control_out, control) = vec_output::<Control>(&mut builder);
    let (mut aside_out, aside) = vec_output::<SetAside>(&mut builder);
    builder.build(move |capabilities| {
        let mut reading = Reading::new(
            scope,
            info.address,
            reader,
            first,
            held_back,
            MAX_PANES_AHEAD_PER_WORKER,
        );
        let [panes_cap, control_cap, aside_cap]: [Capability<Epoch>; 3] = capabilities
            .try_into()
            .unwrap_or_else(|_| unreachable!("a capability per output"));
        // `cap` is the panes output's; the others follow it.
        let mut cap = Some(panes_cap);
        let mut others = [Some(control_cap), Some(aside_cap)];
        move |_frontiers| {
            let Some(c) = cap.as_mut() else { return };
            let (mut panes, mut control, mut aside) = (
                panes_out.activate(),
                control_out.activate(),
                aside_out.activate(),
            );
            if !restored.is_empty() {
                c.downgrade(&first);
                panes.session(&*c).give_iterator(restored.drain(..));
            }
            let mut mark = |done: bool| {
                let due = every.is_some_and(|every| done || last_mark.elapsed() >= every);
                if due {
                    last_mark = Instant::now();
                }
                due
            };
            let poll = reading.poll(c);
            follow(&cap, &mut others);
            let [Some(control_cap), Some(aside_cap)] = &others else {
                unreachable!("held while the panes' capability is")
            };
            let c = cap.as_ref().expect("held until released");
            match poll {
                Poll::Wait => {}
                Poll::Batch(batch) => {
                    let idle_close = reading.reader().idle_close_to();
                    let requested = reading.reader().checkpoint_requested();
                    if let Some(before) = reading.reader().partition_before() {
                        // One partition read by several workers: this batch is judged
                        // against the largest time of every batch before it.
                        combiner.watermark.max_seen = before;
                    }
                    if bounded_batches {
                        combiner.watermark.begin_batch();
                    }
                    let read = if quarantine::begin_batch(batch) {
                        reading.read(&mut Quarantined(&mut combiner))
                    } else {
                        if failpoint::active() {
                            failpoint::hit("ingest.batch", Some(&batch.to_string()));
                        }
                        reading.read(&mut combiner)
                    };
                    let next = match read {
                        Ok(next) => next,
                        Err(e) => fatal!(on_fatal, EXIT_SOURCE_OR_OUTPUT, "{e}"),
                    };
                    if let Some(to) = idle_close {
                        // The source was idle: its watermark moves past every open window.
                        combiner.watermark.max_seen = combiner.watermark.max_seen.max(to);
                    }
                    let done = next.is_none();
                    metrics.add(&combiner.counts);
                    metrics.add_folds(std::mem::take(&mut combiner.folds));
                    let count = combiner.pane_count();
                    let mut session = panes.session(c);
                    for (pane, stats) in combiner.drain_panes() {
                        session.give((pane, batch, stats));
                    }
                    drop(session);
                    if !combiner.aside.is_empty() {
                        aside
                            .session(aside_cap)
                            .give_iterator(combiner.aside.drain(..));
                    }
                    let checkpoint = mark(done || requested);
                    if checkpoint {
                        reading.reader().marked(batch);
                    }
                    control
                        .session(control_cap)
                        .give(Control::Progress(Progress {
                            worker,
                            max_seen: if done {
                                Time::MAX
                            } else {
                                combiner.watermark.max_seen
                            },
                            counts: std::mem::take(&mut combiner.counts),
                            checkpoint,
                            idle: idle_close.is_some(),
                        }));
                    reading.release(batch, count, next, &mut cap);
                }
                Poll::End => {
                    // A worker with no share (left), or whose live source was closed while
                    // it waited, still reports that it is done.
                    let at = (worker as Epoch).max(first).max(*c.time());
                    let report = control_cap.delayed(&at);
                    control.session(&report).give(Control::Progress(Progress {
                        worker,
                        max_seen: Time::MAX,
                        counts: Counts::default(),
                        checkpoint: mark(true),
                        idle: false,
                    }));
                    cap = None;
                }
            }
            follow(&cap, &mut others);
        }
    });
    let panes = panes.as_collection();
    Ingested {
        panes,
        control,
        aside,
        throttle,
    }
}
