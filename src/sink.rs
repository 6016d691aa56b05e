//! Sinks: JSON lines written by worker 0, epoch by epoch, in a deterministic order.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::rc::Rc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;

use crate::held::Held;
use crate::types::{EXIT_SOURCE_OR_OUTPUT, Epoch, OnFatal, fatal};

/// Opens `path` for JSON lines (`-` is stdout), truncating it or appending to it.
pub fn open_lines(path: &Path, append: bool) -> io::Result<Box<dyn Write>> {
    Ok(open_output(path, if append { None } else { Some(0) })?.writer)
}

/// An opened output: the writer, and for files a handle to sync and the length.
pub struct Output {
    /// Buffered writer.
    pub writer: Box<dyn Write>,
    /// The file, for `sync_data` (None for stdout).
    pub file: Option<File>,
    /// The file's length when opened.
    pub len: u64,
}

/// Opens `path` for JSON lines (`-` is stdout). With `truncate_to = Some(n)` the file is
/// cut to `n` bytes first (0: a fresh file; a checkpoint's offset: drop what was written
/// after it); with `None` it is appended to.
pub fn open_output(path: &Path, truncate_to: Option<u64>) -> io::Result<Output> {
    if path == Path::new("-") {
        return Ok(Output {
            writer: Box::new(BufWriter::new(io::stdout())),
            file: None,
            len: 0,
        });
    }
    let file: File = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    if let Some(len) = truncate_to
        && file.metadata()?.is_file()
    {
        file.set_len(len.min(file.metadata()?.len()))?;
    }
    let len = file.metadata()?.len();
    let mut writer = file.try_clone()?;
    io::Seek::seek(&mut writer, io::SeekFrom::End(0))?;
    Ok(Output {
        writer: Box::new(BufWriter::with_capacity(1 << 16, writer)),
        file: Some(file),
        len,
    })
}

/// Where a sink's file stood after each epoch it wrote: what a checkpoint records, so
/// that a restart cuts the file back to the last complete epoch (no line twice).
#[derive(Debug, Default)]
pub struct Ledger {
    file: Option<File>,
    initial: u64,
    offsets: BTreeMap<Epoch, u64>,
}

/// A ledger shared by a sink and the checkpoint coordinator (same worker).
pub type SharedLedger = Rc<RefCell<Ledger>>;

impl Ledger {
    /// The length of the file after every line of epochs `≤ epoch`, made durable first.
    pub fn durable_offset(&mut self, epoch: Epoch) -> io::Result<Option<u64>> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        file.sync_data()?;
        let offset = self
            .offsets
            .range(..=epoch)
            .next_back()
            .map_or(self.initial, |(_, o)| *o);
        // Older entries are no longer needed.
        let keep = self.offsets.split_off(&epoch);
        self.initial = offset;
        self.offsets = keep;
        Ok(Some(offset))
    }
}

/// Elements written as one JSON object per line.
pub trait JsonLine {
    /// The order in which an epoch's elements are written: the same whatever the worker
    /// count, so that an output does not depend on it.
    type Order<'a>: Ord
    where
        Self: 'a;

    /// This element's place in that order.
    fn order(&self) -> Self::Order<'_>;

    /// Appends the element to `out` as one JSON object (no newline).
    fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()>;
}

/// Bytes of formatted lines gathered before they are handed to the writer.
const LINE_CHUNK: usize = 1 << 16;

/// Writes a stream as JSON lines on worker 0.
pub trait WriteLines<'scope, D> {
    /// Routes every element to worker 0, which writes each completed epoch's elements,
    /// in their [`JsonLine::order`], to `writer` (opened by `open` on worker 0 only) and
    /// flushes.
    /// Returns the stream of written elements, for probing. An output that cannot be
    /// opened or written is logged and handed to `on_fatal` (exit code
    /// [`EXIT_SOURCE_OR_OUTPUT`]).
    fn write_lines<F>(
        self,
        open: F,
        ledger: Option<SharedLedger>,
        on_fatal: OnFatal,
    ) -> StreamVec<'scope, Epoch, D>
    where
        F: FnOnce() -> io::Result<Output> + 'static;
}

impl<'scope, D> WriteLines<'scope, D> for StreamVec<'scope, Epoch, D>
where
    D: timely::ExchangeData + JsonLine + Clone,
{
    fn write_lines<F>(
        self,
        open: F,
        ledger: Option<SharedLedger>,
        on_fatal: OnFatal,
    ) -> StreamVec<'scope, Epoch, D>
    where
        F: FnOnce() -> io::Result<Output> + 'static,
    {
        let worker = self.scope().index();
        let mut writer = if worker == 0 {
            match open() {
                Ok(output) => {
                    if let Some(ledger) = &ledger {
                        let mut l = ledger.borrow_mut();
                        // Only regular files can be synced and cut back.
                        l.file = output
                            .file
                            .as_ref()
                            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
                            .and_then(|f| f.try_clone().ok());
                        l.initial = output.len;
                    }
                    Some((output.writer, output.len))
                }
                Err(e) => fatal!(on_fatal, EXIT_SOURCE_OR_OUTPUT, "cannot open output: {e}"),
            }
        } else {
            None
        };
        self.unary_frontier(
            Exchange::new(|_: &D| 0),
            "WriteLines",
            move |_cap, _info| {
                let mut held: Held<D> = Held::default();
                let mut line: Vec<u8> = Vec::with_capacity(2 * LINE_CHUNK);
                move |(input, frontier),
                      output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
                    '_,
                    Epoch,
                    _,
                >| {
                    input.for_each(|cap, data| held.hold(&cap, output.output_index(), data));
                    while let Some((cap, items)) = held.take_passed(frontier.frontier()) {
                        let epoch = *cap.time();
                        // Written in order; the items themselves stay where they are (a
                        // model line is a few hundred bytes to move): their places in the
                        // order are sorted, each with its index.
                        let mut sorted: Vec<(D::Order<'_>, usize)> =
                            items.iter().map(|item| item.order()).zip(0..).collect();
                        sorted.sort_unstable();
                        if let Some((w, len)) = writer.as_mut() {
                            let mut counting = Counting {
                                inner: &mut **w,
                                written: 0,
                            };
                            // Lines are formatted into one reused buffer, handed to the
                            // writer a chunk at a time.
                            let written = sorted
                                .iter()
                                .try_for_each(|&(_, i)| {
                                    items[i].write_json(&mut line)?;
                                    line.push(b'\n');
                                    if line.len() >= LINE_CHUNK {
                                        counting.write_all(&line)?;
                                        line.clear();
                                    }
                                    Ok(())
                                })
                                .and_then(|()| counting.write_all(&line));
                            line.clear();
                            *len += counting.written;
                            if let Err(e) = written.and_then(|()| w.flush()) {
                                fatal!(on_fatal, EXIT_SOURCE_OR_OUTPUT, "writing output: {e}");
                            }
                            if let Some(ledger) = &ledger {
                                ledger.borrow_mut().offsets.insert(epoch, *len);
                            }
                        }
                        drop(sorted);
                        output.session(&cap).give_iterator(items.into_iter());
                    }
                }
            },
        )
    }
}

/// Counts the bytes written through it.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind, panic_any};

    use timely::dataflow::operators::ToStream;

    use super::*;
    use crate::messages::SetAside;
    use crate::types::Fatal;

    /// An output that cannot be opened is handed to the run's hook with exit code 2: the
    /// hook (here one that panics) decides what follows, not the sink.
    #[test]
    fn an_output_that_cannot_be_opened_goes_to_the_run_hook() {
        let caught = catch_unwind(AssertUnwindSafe(|| {
            timely::execute_directly(|worker| {
                worker.dataflow::<Epoch, _, _>(|scope| {
                    Vec::<SetAside>::new().to_stream(scope).write_lines(
                        || Err(io::Error::other("disk gone")),
                        None,
                        |f| panic_any(f),
                    );
                });
            })
        }));
        let fatal = caught.unwrap_err().downcast::<Fatal>().unwrap();
        assert_eq!(
            *fatal,
            Fatal::new(EXIT_SOURCE_OR_OUTPUT, "cannot open output: disk gone")
        );
    }
}
