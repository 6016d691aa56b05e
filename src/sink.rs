//! Sinks: JSON lines written by worker 0, epoch by epoch, in a deterministic order.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;

use crate::dataflow::Epoch;

/// Opens `path` for JSON lines (`-` is stdout), truncating it or appending to it.
pub fn open_lines(path: &Path, append: bool) -> io::Result<Box<dyn Write>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufWriter::new(io::stdout())));
    }
    let file: File = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)?;
    Ok(Box::new(BufWriter::with_capacity(1 << 16, file)))
}

/// Elements written as one JSON object per line.
pub trait JsonLine {
    /// Writes the element as one JSON object (no newline).
    fn write_json(&self, w: &mut dyn Write) -> io::Result<()>;
}

/// Writes a stream as JSON lines on worker 0.
pub trait WriteLines<'scope, D> {
    /// Routes every element to worker 0, which writes each completed epoch's elements,
    /// sorted by `order`, to `writer` (opened by `open` on worker 0 only) and flushes.
    /// Returns the stream of written elements, for probing.
    fn write_lines<K: Ord, O, F>(self, open: F, order: O) -> StreamVec<'scope, Epoch, D>
    where
        F: FnOnce() -> io::Result<Box<dyn Write>> + 'static,
        O: Fn(&D) -> K + 'static;
}

impl<'scope, D> WriteLines<'scope, D> for StreamVec<'scope, Epoch, D>
where
    D: timely::ExchangeData + JsonLine + Clone,
{
    fn write_lines<K: Ord, O, F>(self, open: F, order: O) -> StreamVec<'scope, Epoch, D>
    where
        F: FnOnce() -> io::Result<Box<dyn Write>> + 'static,
        O: Fn(&D) -> K + 'static,
    {
        let worker = self.scope().index();
        let mut writer = if worker == 0 {
            match open() {
                Ok(w) => Some(w),
                Err(e) => {
                    eprintln!("error: cannot open output: {e}");
                    std::process::exit(2);
                }
            }
        } else {
            None
        };
        self.unary_frontier(
            Exchange::new(|_: &D| 0),
            "WriteLines",
            move |_cap, _info| {
                let mut pending: BTreeMap<
                    Epoch,
                    (timely::dataflow::operators::Capability<Epoch>, Vec<D>),
                > = BTreeMap::new();
                move |(input, frontier),
                      output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
                    '_,
                    Epoch,
                    _,
                >| {
                    input.for_each(|cap, data| {
                        let time = *cap.least().expect("a message has a time");
                        let entry = pending.entry(time).or_insert_with(|| {
                            (
                                cap.retain_least(output.output_index())
                                    .expect("total order"),
                                Vec::new(),
                            )
                        });
                        entry.1.append(data);
                    });
                    while let Some((&epoch, _)) = pending.first_key_value() {
                        if frontier.less_equal(&epoch) {
                            break;
                        }
                        let (cap, mut items) = pending.remove(&epoch).expect("present");
                        items.sort_by_key(|item| order(item));
                        if let Some(w) = writer.as_mut() {
                            let written = items.iter().try_for_each(|item| {
                                item.write_json(&mut *w)?;
                                w.write_all(b"\n")
                            });
                            if let Err(e) = written.and_then(|()| w.flush()) {
                                eprintln!("error: writing output: {e}");
                                std::process::exit(2);
                            }
                        }
                        output.session(&cap).give_iterator(items.into_iter());
                    }
                }
            },
        )
    }
}
