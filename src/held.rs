//! Data held back by epoch until the input's frontier passes it, each epoch with its own
//! capability: the loop of the sink (`sink::write_lines`) and of the checkpoint
//! coordinator. (The windows operator waits on two inputs and shares capabilities between
//! epochs; `window_panes` keeps one capability for its end-of-input report: each keeps its
//! own loop.)
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

/// Per epoch, a capability for one output and the data that came at that epoch.
pub struct Held<D> {
    pending: BTreeMap<Epoch, (Capability<Epoch>, Vec<D>)>,
}

impl<D> Default for Held<D> {
    fn default() -> Self {
        Held {
            pending: BTreeMap::new(),
        }
    }
}

impl<D> Held<D> {
    /// Holds `data`, which came with `cap`, keeping a capability for output `output` at
    /// its epoch (the first time the epoch is seen).
    pub fn hold(&mut self, cap: &InputCapability<Epoch>, output: usize, data: &mut Vec<D>) {
        let epoch = *cap.least().expect("a message has a time");
        let entry = self.pending.entry(epoch).or_insert_with(|| {
            (
                cap.retain_least(output).expect("a totally ordered time"),
                Vec::new(),
            )
        });
        entry.1.append(data);
    }

    /// The earliest epoch held, with what it holds so far.
    pub fn first(&self) -> Option<(Epoch, &[D])> {
        self.pending
            .first_key_value()
            .map(|(epoch, (_, data))| (*epoch, data.as_slice()))
    }

    /// Takes the earliest epoch held, whatever the frontier.
    pub fn take_first(&mut self) -> Option<(Capability<Epoch>, Vec<D>)> {
        self.pending.pop_first().map(|(_, held)| held)
    }

    /// Takes the earliest epoch held if `frontier` has passed it (no more data can come
    /// at it), with its capability and data, in epoch order.
    pub fn take_passed(
        &mut self,
        frontier: AntichainRef<'_, Epoch>,
    ) -> Option<(Capability<Epoch>, Vec<D>)> {
        let (epoch, _) = self.first()?;
        if frontier.less_equal(&epoch) {
            return None;
        }
        self.take_first()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}
