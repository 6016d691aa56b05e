//! Data held back by epoch until the frontiers of every input it waits on have passed
//! the epoch, then released in epoch order with a capability to emit at it: the loop of
//! the sink (`sink::write_lines`), of the checkpoint coordinator, of the windows operator
//! (two inputs; a differential collection's updates may be at later times than the
//! message carrying them, so capabilities are shared between epochs) and of
//! [`WindowPanes::window_panes`](crate::operators::WindowPanes::window_panes) (which keeps
//! one capability of its own for its end-of-input report: that report is due when the
//! input's frontier empties, not at an epoch that holds data).
//!
//! [`ByEpoch`] holds, per epoch, a bucket of anything (`B`); [`Held`] is the common case,
//! the items that came at each epoch. Only the capabilities that what is still held needs
//! are kept: releasing an epoch lets the output's frontier advance past it.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//!
//! use timely::dataflow::channels::pact::Pipeline;
//! use timely::dataflow::operators::{Inspect, Operator, ToStream};
//! use timely::dataflow::StreamVec;
//! use tributary::held::Held;
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let out = Arc::clone(&seen);
//! timely::example(move |scope| {
//!     let input = vec![3u64, 1, 2].to_stream(scope);
//!     // Each epoch's data, sorted, once nothing more can come at the epoch.
//!     let sorted: StreamVec<'_, u64, u64> =
//!         input.unary_frontier(Pipeline, "Sorted", |_, _| {
//!             let mut held = Held::default();
//!             move |(input, frontier), output| {
//!                 input.for_each(|cap, data| held.hold(&cap, output.output_index(), data));
//!                 while let Some((cap, mut data)) = held.take_passed(frontier.frontier()) {
//!                     data.sort();
//!                     output.session(&cap).give_iterator(data.into_iter());
//!                 }
//!             }
//!         });
//!     sorted.inspect(move |x| out.lock().unwrap().push(*x));
//! });
//! assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
//! ```

use std::collections::BTreeMap;

use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::AntichainRef;

use crate::types::Epoch;

/// Per epoch, what came at it (a bucket `B`), and the capabilities for one output (or,
/// with [`capabilities`](Self::capabilities), several) that the epochs held need.
///
/// A capability is kept at the time of each message ([`capability`](Self::capability));
/// what is held at an epoch ([`at`](Self::at)) may be at that time or later. An epoch is
/// released ([`take_passed_all`](Self::take_passed_all) and the other `take`s) with a
/// capability at it, delayed from the latest kept at or before it; every `take` then
/// drops the capabilities that the epochs still held no longer need.
pub struct ByEpoch<B> {
    pending: BTreeMap<Epoch, B>,
    /// Per message time, a capability for each output kept.
    caps: BTreeMap<Epoch, Vec<Capability<Epoch>>>,
}

/// Per epoch, the items that came at it, with a capability for one output: the common case
/// of [`ByEpoch`], filled by [`hold`](ByEpoch::hold).
pub type Held<D> = ByEpoch<Vec<D>>;

impl<B> Default for ByEpoch<B> {
    fn default() -> Self {
        ByEpoch {
            pending: BTreeMap::new(),
            caps: BTreeMap::new(),
        }
    }
}

impl<D> ByEpoch<Vec<D>> {
    /// Holds `data`, which came with `cap`, at `cap`'s epoch, keeping a capability for
    /// output `output` there (the first time the epoch is seen).
    pub fn hold(&mut self, cap: &InputCapability<Epoch>, output: usize, data: &mut Vec<D>) {
        let epoch = self.capability(cap, output);
        self.at(epoch).append(data);
    }
}

impl<B: Default> ByEpoch<B> {
    /// Keeps a capability for output `output` at the time of the message `cap` came with
    /// (unless one is kept there already), and returns that time. What the message carries
    /// may then be held at that time or any later one.
    pub fn capability(&mut self, cap: &InputCapability<Epoch>, output: usize) -> Epoch {
        self.capabilities(cap, &[output])
    }

    /// [`capability`](Self::capability) for each of several `outputs` (the same ones at
    /// every call), released by [`take_passed_all_outputs`](Self::take_passed_all_outputs).
    pub fn capabilities(&mut self, cap: &InputCapability<Epoch>, outputs: &[usize]) -> Epoch {
        let epoch = *cap.least().expect("a message has a time");
        self.caps.entry(epoch).or_insert_with(|| {
            let retain = |&output| cap.retain_least(output).expect("a totally ordered time");
            outputs.iter().map(retain).collect()
        });
        epoch
    }

    /// What is held at `epoch` (empty at first). A capability must be kept at or before
    /// `epoch` ([`capability`](Self::capability), in the same activation): the `take`s
    /// panic otherwise.
    pub fn at(&mut self, epoch: Epoch) -> &mut B {
        debug_assert!(
            self.caps.range(..=epoch).next_back().is_some(),
            "held at {epoch} without a capability at or before it"
        );
        self.pending.entry(epoch).or_default()
    }

    /// The earliest epoch held, with what it holds so far.
    pub fn first(&self) -> Option<(Epoch, &B)> {
        self.pending
            .first_key_value()
            .map(|(epoch, bucket)| (*epoch, bucket))
    }

    /// Takes the earliest epoch held, whatever the frontiers, with a capability at it.
    pub fn take_first(&mut self) -> Option<(Capability<Epoch>, B)> {
        first(self.take_if(|_| true))
    }

    /// Takes the earliest epoch held if `frontier` has passed it (no more data can come at
    /// it), with a capability at it: called until `None`, the passed epochs in order.
    pub fn take_passed(
        &mut self,
        frontier: AntichainRef<'_, Epoch>,
    ) -> Option<(Capability<Epoch>, B)> {
        first(self.take_if(|epoch| !frontier.less_equal(&epoch)))
    }

    /// Takes the earliest epoch held if every one of `frontiers` (one per input that feeds
    /// it) has passed it, with a capability at it: called until `None`, the epochs complete
    /// on every input, in order.
    pub fn take_passed_all(
        &mut self,
        frontiers: &[AntichainRef<'_, Epoch>],
    ) -> Option<(Capability<Epoch>, B)> {
        first(self.take_passed_all_outputs(frontiers))
    }

    /// [`take_passed_all`](Self::take_passed_all), with a capability at the epoch for each
    /// output kept by [`capabilities`](Self::capabilities), in their order.
    pub fn take_passed_all_outputs(
        &mut self,
        frontiers: &[AntichainRef<'_, Epoch>],
    ) -> Option<(Vec<Capability<Epoch>>, B)> {
        self.take_if(|epoch| frontiers.iter().all(|f| !f.less_equal(&epoch)))
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes the earliest epoch held if `ready` says so, then drops the capabilities no
    /// longer needed (also when it takes nothing: a message may have brought a capability
    /// and nothing to hold).
    fn take_if(
        &mut self,
        ready: impl FnOnce(Epoch) -> bool,
    ) -> Option<(Vec<Capability<Epoch>>, B)> {
        let taken = match self.pending.first_key_value() {
            Some((&epoch, _)) if ready(epoch) => {
                let (_, bucket) = self.pending.pop_first().expect("present");
                let cap = self
                    .caps
                    .range(..=epoch)
                    .next_back()
                    .map(|(_, caps)| caps.iter().map(|c| c.delayed(&epoch)).collect())
                    .expect("a capability at or before every epoch held");
                Some((cap, bucket))
            }
            _ => None,
        };
        self.release_unneeded();
        taken
    }

    /// Keeps only the capabilities that epochs held still need: the latest at or before
    /// the earliest epoch held, and the later ones.
    fn release_unneeded(&mut self) {
        let Some(&first) = self.pending.keys().next() else {
            self.caps.clear();
            return;
        };
        while let Some(&second) = self.caps.keys().nth(1) {
            if second > first {
                break;
            }
            self.caps.pop_first();
        }
    }
}

/// A release with the capability of the first output kept.
fn first<B>(taken: Option<(Vec<Capability<Epoch>>, B)>) -> Option<(Capability<Epoch>, B)> {
    taken.map(|(mut caps, bucket)| (caps.swap_remove(0), bucket))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::probe::Handle;
    use timely::dataflow::operators::vec::Input;
    use timely::dataflow::operators::{Operator, Probe};
    use timely::dataflow::{InputHandleVec, StreamVec};
    use timely::worker::Worker;

    use super::ByEpoch;
    use crate::types::Epoch;

    /// (epoch released, time of the capability released with it, items), in release order.
    type Released = Rc<RefCell<Vec<(Epoch, Epoch, Vec<&'static str>)>>>;

    /// Steps until the probe's frontier reaches `time`, at most 100 steps (a capability
    /// kept by mistake would hold it back for ever); whether it did.
    fn step_until(worker: &mut Worker, probe: &Handle<Epoch>, time: Epoch) -> bool {
        for _ in 0..100 {
            if !probe.less_than(&time) {
                return true;
            }
            worker.step();
        }
        !probe.less_than(&time)
    }

    fn epochs(released: &Released) -> Vec<Epoch> {
        released.borrow().iter().map(|(e, _, _)| *e).collect()
    }

    /// Two inputs whose frontiers advance at different paces; input `a`'s items name an
    /// epoch some `delay` later than their message's (as a differential collection's
    /// updates may), so capabilities are shared between epochs. Each epoch is released
    /// once, in order, only after both frontiers passed it, with a capability at it; and
    /// the capabilities released epochs needed are dropped (the output's frontier moves
    /// on).
    #[test]
    fn two_inputs_release_each_epoch_once_in_order_after_both_frontiers() {
        let released = timely::execute_directly(|worker| {
            let released: Released = Rc::default();
            let out = Rc::clone(&released);
            let mut a: InputHandleVec<Epoch, (Epoch, &'static str)> = InputHandleVec::new();
            let mut b: InputHandleVec<Epoch, &'static str> = InputHandleVec::new();
            let probe = Handle::new();
            worker.dataflow(|scope| {
                let a = scope.input_from(&mut a);
                let b = scope.input_from(&mut b);
                let both: StreamVec<'_, Epoch, Epoch> =
                    a.binary_frontier(b, Pipeline, Pipeline, "Both", |_, _| {
                        let mut held: ByEpoch<Vec<&'static str>> = ByEpoch::default();
                        move |(a, a_frontier), (b, b_frontier), output| {
                            a.for_each(|cap, data| {
                                let time = held.capability(&cap, output.output_index());
                                for (delay, item) in data.drain(..) {
                                    held.at(time + delay).push(item);
                                }
                            });
                            b.for_each(|cap, data| held.hold(&cap, output.output_index(), data));
                            let frontiers = [a_frontier.frontier(), b_frontier.frontier()];
                            while let Some((cap, mut items)) = held.take_passed_all(&frontiers) {
                                let epoch = *cap.time();
                                assert!(frontiers.iter().all(|f| !f.less_equal(&epoch)));
                                items.sort();
                                out.borrow_mut().push((epoch, *cap.time(), items));
                                output.session(&cap).give(epoch);
                            }
                        }
                    });
                both.probe_with(&probe);
            });

            // `a` runs ahead to 4; `b` stays at 1. Epoch 2 holds an item carried at 0.
            a.send((0, "a0"));
            a.send((2, "a0@2"));
            b.send("b0");
            a.advance_to(1);
            a.send((0, "a1"));
            a.advance_to(4);
            b.advance_to(1);
            assert!(
                step_until(worker, &probe, 1),
                "epoch 0 released, its capability (at 0, serving epoch 2) dropped for the \
                 one at 1"
            );
            assert_eq!(
                epochs(&released),
                [0],
                "epochs 1, 2: `b` has not passed them"
            );
            assert!(probe.less_than(&2), "epoch 1 is still held");

            // `b` catches up past `a`'s items: epochs 1 and 2 (capability delayed from 1).
            b.send("b1");
            b.advance_to(3);
            assert!(step_until(worker, &probe, 3));
            assert_eq!(epochs(&released), [0, 1, 2]);

            // Now `b` runs ahead (to 6) and `a` lags at 5: epoch 3 goes, epoch 5 (carried
            // at 4) waits for `a`.
            a.send((1, "a4@5"));
            b.send("b3");
            b.advance_to(6);
            a.advance_to(5);
            assert!(step_until(worker, &probe, 4));
            assert_eq!(
                epochs(&released),
                [0, 1, 2, 3],
                "epoch 5: `a` has not passed it"
            );
            assert!(probe.less_than(&5), "the capability at 4 serves epoch 5");
            a.advance_to(6);
            assert!(step_until(worker, &probe, 6));
            a.close();
            b.close();
            worker.step_while(|| !probe.done());
            released.take()
        });
        let expected: [(Epoch, Epoch, Vec<&str>); 5] = [
            (0, 0, vec!["a0", "b0"]),
            (1, 1, vec!["a1", "b1"]),
            (2, 2, vec!["a0@2"]),
            (3, 3, vec!["b3"]),
            (5, 5, vec!["a4@5"]),
        ];
        assert_eq!(
            *released, expected,
            "each epoch once, in order, with a capability at it"
        );
    }
}
