//! The checkpoint coordinator: worker 0 commits an epoch once it is durable everywhere.

use std::sync::Arc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Operator;

use super::{Commit, EXIT_WRITE_FAILED, Store, unix_ms};
use crate::held::Held;
use crate::messages::{Ack, Control};
use crate::sink::SharedLedger;
use crate::types::{Epoch, OnFatal, fatal};

/// Commits checkpoint epochs.
pub trait Coordinate<'scope> {
    /// Collects every worker's [`Ack`] on worker 0; once all `peers` acknowledged epoch
    /// `E` and the sinks (whose written streams are `written`) are through `E`, makes the
    /// output files durable, writes the commit record of `E` into `store` (process 0's),
    /// calls `on_commit(E)` at once, and emits [`Control::Committed`]`(E)`, for the workers
    /// to fold their deltas. An epoch that cannot be committed (a worker's
    /// acknowledgement missing, an output or the commit record not written) is logged and
    /// handed to `on_fatal` (exit code [`EXIT_WRITE_FAILED`]).
    #[allow(clippy::too_many_arguments)]
    fn coordinate(
        self,
        written: StreamVec<'scope, Epoch, ()>,
        store: Arc<Store>,
        generation: u64,
        processes: usize,
        out: Option<SharedLedger>,
        late: Option<SharedLedger>,
        on_commit: impl FnMut(Epoch) + 'static,
        on_fatal: OnFatal,
    ) -> StreamVec<'scope, Epoch, Control>;
}

impl<'scope> Coordinate<'scope> for StreamVec<'scope, Epoch, Ack> {
    fn coordinate(
        self,
        written: StreamVec<'scope, Epoch, ()>,
        store: Arc<Store>,
        generation: u64,
        processes: usize,
        out: Option<SharedLedger>,
        late: Option<SharedLedger>,
        mut on_commit: impl FnMut(Epoch) + 'static,
        on_fatal: OnFatal,
    ) -> StreamVec<'scope, Epoch, Control> {
        let peers = self.scope().peers();
        self.binary_frontier(
            written,
            Exchange::new(|_: &Ack| 0),
            Pipeline,
            "Coordinate",
            move |_cap, _info| {
                let mut held: Held<Ack> = Held::default();
                move |(acks, acks_frontier), (written, written_frontier), output| {
                    written.for_each(|_, data| data.clear());
                    acks.for_each(|cap, data| held.hold(&cap, output.output_index(), data));
                    while let Some((epoch, acks)) = held.first() {
                        let complete = acks.len() == peers;
                        if !complete && !acks_frontier.less_equal(&epoch) {
                            fatal!(
                                on_fatal,
                                EXIT_WRITE_FAILED,
                                "checkpoint epoch {epoch}: {} of {peers} workers acknowledged",
                                acks.len()
                            );
                        }
                        if !complete || written_frontier.less_equal(&epoch) {
                            break;
                        }
                        let (cap, acks) = held.take_first().expect("present");
                        let durable = |ledger: &Option<SharedLedger>| match ledger {
                            Some(l) => l.borrow_mut().durable_offset(epoch),
                            None => Ok(None),
                        };
                        let offsets = durable(&out).and_then(|o| Ok((o, durable(&late)?)));
                        let (out_offset, late_offset) = match offsets {
                            Ok(o) => o,
                            Err(e) => fatal!(
                                on_fatal,
                                EXIT_WRITE_FAILED,
                                "syncing output for checkpoint: {e}"
                            ),
                        };
                        let max_seen = acks
                            .iter()
                            .find(|a| a.worker == 0)
                            .map(|a| a.max_seen.clone())
                            .unwrap_or_default();
                        let commit = Commit {
                            generation,
                            epoch,
                            workers: peers,
                            processes,
                            max_seen,
                            out_offset,
                            late_offset,
                            unix_ms: unix_ms(),
                        };
                        if let Err(e) = store.write_commit(&commit) {
                            fatal!(on_fatal, EXIT_WRITE_FAILED, "committing checkpoint: {e}");
                        }
                        on_commit(epoch);
                        output.session(&cap).give(Control::Committed(epoch));
                    }
                }
            },
        )
    }
}
