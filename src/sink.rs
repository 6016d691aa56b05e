//! Sinks: JSON lines written by worker 0, epoch by epoch, in a deterministic order.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::vec::Map;

use crate::held::{ByEpoch, Held};
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
    /// Appends this element's place in the order in which an epoch's elements are
    /// written: the same whatever the worker count, so that an output does not depend on
    /// it. The fields are appended most significant first ([`OrderKey`]).
    fn order(&self, key: &mut OrderKey<'_>);

    /// Appends the element to `out` as one JSON object (no newline).
    fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()>;
}

/// An element's place in the written order, as bytes whose lexicographic order is the
/// order of the fields appended, first to last (the order of a tuple of them): times
/// big-endian with the sign bit flipped, text with its zero bytes escaped and then
/// terminated. Each worker sorts its lines by it, and worker 0 merges the workers' runs
/// of lines by it, without the elements themselves.
pub struct OrderKey<'a> {
    bytes: &'a mut Vec<u8>,
}

impl OrderKey<'_> {
    /// Appends a time (or any `i64`).
    pub fn time(&mut self, time: i64) -> &mut Self {
        let flipped = (time as u64) ^ (1 << 63);
        self.bytes.extend_from_slice(&flipped.to_be_bytes());
        self
    }

    /// Appends a text: byte order, and a text before every longer text it begins.
    pub fn text(&mut self, text: &str) -> &mut Self {
        let bytes = text.as_bytes();
        if bytes.contains(&0) {
            for &b in bytes {
                self.bytes.push(b);
                if b == 0 {
                    self.bytes.push(0xFF);
                }
            }
        } else {
            self.bytes.extend_from_slice(bytes);
        }
        // The terminator is below every escaped zero (0x00 0xFF) and every other byte.
        self.bytes.extend_from_slice(&[0, 0]);
        self
    }

    /// Appends a flag (`false` first).
    pub fn flag(&mut self, flag: bool) -> &mut Self {
        self.bytes.push(u8::from(flag));
        self
    }

    /// Appends a count.
    pub fn count(&mut self, count: u32) -> &mut Self {
        self.bytes.extend_from_slice(&count.to_be_bytes());
        self
    }
}

/// Bytes of formatted lines gathered before they are handed to the writer.
const LINE_CHUNK: usize = 1 << 16;

/// One worker's elements of one epoch, formatted, with their written order: what it
/// hands to worker 0, which only has to merge the workers' runs.
#[derive(Clone, Serialize, Deserialize)]
struct LineRun<D> {
    /// The worker that made it: runs are merged in worker order where keys tie.
    worker: usize,
    /// The lines, each ending in a newline, in the order the elements came.
    text: Vec<u8>,
    /// The lines' order keys, in the order the elements came (only when there are runs
    /// to merge).
    keys: Vec<u8>,
    /// The lines, in written order.
    spans: Vec<Span>,
    /// The elements themselves, when they are passed on once written.
    items: Vec<D>,
}

/// One line of a [`LineRun`].
#[derive(Clone, Copy, Serialize, Deserialize)]
struct Span {
    /// The first 16 bytes of its order key (zeros after a shorter one), as a number: it
    /// orders most lines without comparing the keys themselves (at a million keys the
    /// comparisons of the sort were a fifth of the run).
    prefix: u128,
    /// Its order key's bounds in the run's keys (valid only while they are kept).
    key: (usize, usize),
    /// Its bounds in the run's text.
    text: (usize, usize),
}

impl Span {
    /// The order of two lines' keys, this one's in `keys` and the other's in
    /// `other_keys` (the same storage within a run, another run's when merging).
    fn cmp(&self, keys: &[u8], other: &Span, other_keys: &[u8]) -> std::cmp::Ordering {
        let key = &keys[self.key.0..self.key.1];
        let other_key = &other_keys[other.key.0..other.key.1];
        (self.prefix.cmp(&other.prefix)).then_with(|| key.cmp(other_key))
    }
}

/// Sorts `spans` (keys in `keys`) by order key, stably.
///
/// An epoch's lines often come as a few sorted sequences interleaved: the windows
/// operator takes keys in written order, and each key's windows in turn, so there is one
/// sequence per window end (the first 8 bytes of a model line's order key), and the sort
/// would find no run to keep. Grouping the spans by their first 8 bytes first, stably,
/// when they hold only a few values, leaves it runs that are sorted already; a stable sort
/// of the grouped spans is the stable sort of the spans (spans with equal keys have equal
/// first bytes, and keep their order in the grouping).
fn sort_spans(spans: &mut Vec<Span>, keys: &[u8]) {
    /// The most distinct leading 8 bytes that are grouped.
    const GROUPS: usize = 16;
    // Lines most often come in written order already (the windows operator gives them on
    // by window end, each end's keys in written order): one pass says so.
    if spans.is_sorted_by(|a, b| a.cmp(keys, b, keys).is_le()) {
        return;
    }
    let head = |span: &Span| (span.prefix >> 64) as u64;
    let mut heads: Vec<u64> = Vec::with_capacity(GROUPS);
    let few = spans.iter().all(|span| {
        let h = head(span);
        heads.contains(&h)
            || (heads.len() < GROUPS && {
                heads.push(h);
                true
            })
    });
    if few && heads.len() > 1 {
        heads.sort_unstable();
        let mut grouped = Vec::with_capacity(spans.len());
        for &h in &heads {
            grouped.extend(spans.iter().filter(|span| head(span) == h));
        }
        *spans = grouped;
    }
    spans.sort_by(|a, b| a.cmp(keys, b, keys));
}

impl<D: JsonLine> LineRun<D> {
    /// The run of the elements of `batches`, sorted by order key (stably: ties stay in
    /// arrival order), with the keys kept when `merged` and the elements when `pass`;
    /// `keys` is storage reused for the order keys otherwise, and `text_hint` the bytes to
    /// make room for.
    ///
    /// The elements are read once, in the order they came, each formatted and then (unless
    /// passed on) dropped: an epoch's elements are many and large, and reading them in
    /// written order instead was a cache miss each. Only the lines' bounds are sorted.
    fn of(
        worker: usize,
        batches: Vec<Vec<D>>,
        merged: bool,
        pass: bool,
        keys: &mut Vec<u8>,
        text_hint: usize,
    ) -> io::Result<LineRun<D>> {
        let len = batches.iter().map(Vec::len).sum();
        let mut run = LineRun {
            worker,
            text: Vec::with_capacity(text_hint),
            keys: Vec::new(),
            spans: Vec::with_capacity(len),
            items: Vec::with_capacity(if pass { len } else { 0 }),
        };
        let mut add = |item: &D| {
            let (key_from, text_from) = (keys.len(), run.text.len());
            item.order(&mut OrderKey { bytes: keys });
            item.write_json(&mut run.text)?;
            run.text.push(b'\n');
            let key = &keys[key_from..];
            let mut prefix = [0; 16];
            prefix[..key.len().min(16)].copy_from_slice(&key[..key.len().min(16)]);
            run.spans.push(Span {
                prefix: u128::from_be_bytes(prefix),
                key: (key_from, keys.len()),
                text: (text_from, run.text.len()),
            });
            io::Result::Ok(())
        };
        // Batch by batch, as they came: each is dropped (or moved on) once formatted, so
        // the epoch's elements and its text are not all held at once.
        for batch in batches {
            batch.iter().try_for_each(&mut add)?;
            if pass {
                run.items.extend(batch);
            }
        }
        sort_spans(&mut run.spans, keys);
        if merged {
            run.keys = std::mem::take(keys);
        } else {
            keys.clear();
        }
        Ok(run)
    }

    /// Line `i` in written order: its order key (empty unless merged) and its text.
    #[cfg(test)]
    fn line(&self, i: usize) -> (&[u8], &[u8]) {
        let Span { key, text, .. } = self.spans[i];
        let key = self.keys.get(key.0..key.1).unwrap_or_default();
        (key, &self.text[text.0..text.1])
    }
}

/// Writes the lines of `runs` to `out`, merged in order (the lower worker first where
/// keys tie), a chunk at a time through `chunk`.
fn merge_runs<D: JsonLine>(
    runs: &mut [LineRun<D>],
    chunk: &mut Vec<u8>,
    out: &mut dyn Write,
) -> io::Result<()> {
    runs.sort_by_key(|r| r.worker);
    let mut next = vec![0; runs.len()];
    // The piece of a run's text not written yet: (run, from, to).
    let mut pending: Option<(usize, usize, usize)> = None;
    loop {
        // The run whose next line is least (the only run, with one worker), by the
        // order the runs were sorted in: strictly less, so a tie keeps the lower worker.
        let mut least: Option<usize> = None;
        for (r, run) in runs.iter().enumerate() {
            if next[r] < run.spans.len() {
                let less = least.is_none_or(|l| {
                    let head = &runs[l];
                    let span = &run.spans[next[r]];
                    span.cmp(&run.keys, &head.spans[next[l]], &head.keys)
                        .is_lt()
                });
                if less {
                    least = Some(r);
                }
            }
        }
        let Some(r) = least else {
            break;
        };
        // Lines next to each other in their run's text go out as one piece (lines that
        // came in written order are one piece each epoch).
        let text = runs[r].spans[next[r]].text;
        next[r] += 1;
        match &mut pending {
            Some((at, _, to)) if *at == r && *to == text.0 => *to = text.1,
            _ => {
                if let Some((at, from, to)) = pending.replace((r, text.0, text.1)) {
                    write_piece(&runs[at].text[from..to], chunk, out)?;
                }
            }
        }
    }
    if let Some((at, from, to)) = pending {
        write_piece(&runs[at].text[from..to], chunk, out)?;
    }
    out.write_all(chunk)?;
    chunk.clear();
    Ok(())
}

/// Writes `piece` through `chunk`: small pieces are gathered there, a large one goes out
/// as it is (after what `chunk` holds).
fn write_piece(piece: &[u8], chunk: &mut Vec<u8>, out: &mut dyn Write) -> io::Result<()> {
    if piece.len() >= LINE_CHUNK {
        out.write_all(chunk)?;
        chunk.clear();
        return out.write_all(piece);
    }
    chunk.extend_from_slice(piece);
    if chunk.len() >= LINE_CHUNK {
        out.write_all(chunk)?;
        chunk.clear();
    }
    Ok(())
}

/// Writes a stream as JSON lines on worker 0.
///
/// Each worker formats its own elements of an epoch, in their [`JsonLine::order`], once
/// the epoch is complete, and hands the run of lines to worker 0; worker 0 merges the
/// runs, writes them to the output (opened by `open` on worker 0 only) and flushes. An
/// output that cannot be opened or written is logged and handed to `on_fatal` (exit code
/// [`EXIT_SOURCE_OR_OUTPUT`]). With a `ledger`, the output's length after each epoch is
/// noted in it.
pub trait WriteLines<'scope, D> {
    /// Writes the stream, and returns a stream without data whose frontier passes an
    /// epoch once every line of it is written (to probe, or to wait on).
    fn write_lines<F>(
        self,
        open: F,
        ledger: Option<SharedLedger>,
        on_fatal: OnFatal,
    ) -> StreamVec<'scope, Epoch, ()>
    where
        F: FnOnce() -> io::Result<Output> + 'static;

    /// Writes the stream as [`write_lines`](WriteLines::write_lines) does, and returns the
    /// elements written, on worker 0, each epoch's once they are written.
    fn write_lines_passing<F>(
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
    D: timely::ExchangeData + JsonLine,
{
    fn write_lines<F>(
        self,
        open: F,
        ledger: Option<SharedLedger>,
        on_fatal: OnFatal,
    ) -> StreamVec<'scope, Epoch, ()>
    where
        F: FnOnce() -> io::Result<Output> + 'static,
    {
        let written: StreamVec<'scope, Epoch, D> = write(self, open, ledger, on_fatal, false);
        written.map(|_| ())
    }

    fn write_lines_passing<F>(
        self,
        open: F,
        ledger: Option<SharedLedger>,
        on_fatal: OnFatal,
    ) -> StreamVec<'scope, Epoch, D>
    where
        F: FnOnce() -> io::Result<Output> + 'static,
    {
        write(self, open, ledger, on_fatal, true)
    }
}

/// [`WriteLines`]: each worker's runs of lines, merged and written by worker 0, which
/// passes the elements on if `pass`.
fn write<'scope, D, F>(
    stream: StreamVec<'scope, Epoch, D>,
    open: F,
    ledger: Option<SharedLedger>,
    on_fatal: OnFatal,
    pass: bool,
) -> StreamVec<'scope, Epoch, D>
where
    D: timely::ExchangeData + JsonLine,
    F: FnOnce() -> io::Result<Output> + 'static,
{
    let scope = stream.scope();
    let (worker, merged) = (scope.index(), scope.peers() > 1);
    let runs = stream.unary_frontier(Pipeline, "FormatLines", move |_cap, _info| {
        // An epoch's elements in the batches they came in.
        let mut held: ByEpoch<Vec<Vec<D>>> = ByEpoch::default();
        let mut keys = Vec::new();
        // Bytes per line in the last run: room for the next is made at once.
        let mut line_bytes = 0;
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let epoch = held.capability(&cap, output.output_index());
                held.at(epoch).push(std::mem::take(data));
            });
            while let Some((cap, batches)) = held.take_passed(frontier.frontier()) {
                let hint = batches.iter().map(Vec::len).sum::<usize>() * line_bytes;
                match LineRun::of(worker, batches, merged, pass, &mut keys, hint) {
                    Ok(run) => {
                        line_bytes = run.text.len().div_ceil(run.spans.len().max(1)) + 8;
                        output.session(&cap).give(run);
                    }
                    Err(e) => fatal!(on_fatal, EXIT_SOURCE_OR_OUTPUT, "formatting output: {e}"),
                }
            }
        }
    });
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
    runs.unary_frontier(
        Exchange::new(|_: &LineRun<D>| 0),
        "WriteLines",
        move |_cap, _info| {
            let mut held: Held<LineRun<D>> = Held::default();
            let mut chunk: Vec<u8> = Vec::with_capacity(2 * LINE_CHUNK);
            move |(input, frontier), output| {
                input.for_each(|cap, data| held.hold(&cap, output.output_index(), data));
                while let Some((cap, mut runs)) = held.take_passed(frontier.frontier()) {
                    if let Some((w, len)) = writer.as_mut() {
                        let mut counting = Counting {
                            inner: &mut **w,
                            written: 0,
                        };
                        let written = merge_runs(&mut runs, &mut chunk, &mut counting);
                        *len += counting.written;
                        if let Err(e) = written.and_then(|()| w.flush()) {
                            fatal!(on_fatal, EXIT_SOURCE_OR_OUTPUT, "writing output: {e}");
                        }
                        if let Some(ledger) = &ledger {
                            ledger.borrow_mut().offsets.insert(*cap.time(), *len);
                        }
                    }
                    if pass {
                        let items = runs.into_iter().flat_map(|run| run.items);
                        output.session(&cap).give_iterator(items);
                    }
                }
            }
        },
    )
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

    use proptest::prelude::*;

    /// The bytes of `(end, key, start, flag, count)` as [`OrderKey`] appends them.
    fn key_bytes(t: &(i64, String, i64, bool, u32)) -> Vec<u8> {
        let mut bytes = Vec::new();
        OrderKey { bytes: &mut bytes }
            .time(t.0)
            .text(&t.1)
            .time(t.2)
            .flag(t.3)
            .count(t.4);
        bytes
    }

    proptest! {
        /// Order keys compare as the tuples of their fields do, whatever the text holds
        /// (zero bytes, one text beginning another) and the signs of the times.
        #[test]
        fn order_keys_compare_as_their_fields(
            a in (any::<i64>(), "[a\\x00\\x01\\u{ff}]{0,4}", -3i64..3, any::<bool>(), 0u32..3),
            b in (any::<i64>(), "[a\\x00\\x01\\u{ff}]{0,4}", -3i64..3, any::<bool>(), 0u32..3),
            same_end in any::<bool>(),
        ) {
            let b = if same_end { (a.0, b.1, b.2, b.3, b.4) } else { b };
            prop_assert_eq!(key_bytes(&a).cmp(&key_bytes(&b)), a.cmp(&b));
        }

        /// Lines are sorted as their order keys, whether the keys differ in the 16 bytes
        /// their spans carry as a number or only after them (long texts alike at first).
        #[test]
        fn spans_compare_as_their_order_keys(
            a in (0i64..2, "a{6}[ab]{0,4}", -2i64..2, any::<bool>(), 0u32..2),
            b in (0i64..2, "a{6}[ab]{0,4}", -2i64..2, any::<bool>(), 0u32..2),
        ) {
            let items = vec![vec![Keyed(a.clone()), Keyed(b.clone())]];
            let run = LineRun::of(0, items, true, false, &mut Vec::new(), 0).unwrap();
            let (first, second) = if a <= b { (&a, &b) } else { (&b, &a) };
            prop_assert_eq!(run.line(0).0, &key_bytes(first)[..]);
            prop_assert_eq!(run.line(1).0, &key_bytes(second)[..]);
        }
    }

    proptest! {
        /// A run's lines are the stable sort of its elements by order key, whether their
        /// times take few values (grouped before the sort) or many (more than 16), and
        /// whatever order they came in.
        #[test]
        fn runs_are_the_stable_sort_of_their_elements(
            items in proptest::collection::vec((0i64..20, "[ab]{0,2}"), 0..200),
            few in any::<bool>(),
        ) {
            let items: Vec<Tagged> = (items.into_iter().enumerate())
                .map(|(tag, (t, text))| Tagged(if few { t % 4 } else { t }, text, tag))
                .collect();
            let run = LineRun::of(0, vec![items.clone()], false, false, &mut Vec::new(), 0)
                .unwrap();
            let mut want = items;
            want.sort_by_key(|t| (t.0, t.1.clone()));
            let got: Vec<&[u8]> = (0..run.spans.len()).map(|i| run.line(i).1).collect();
            let want: Vec<String> = want.iter().map(|t| format!("{}\n", t.2)).collect();
            prop_assert_eq!(got, want.iter().map(|w| w.as_bytes()).collect::<Vec<_>>());
        }
    }

    /// An element ordered by time and text, written as its tag (its place in the input).
    #[derive(Clone, Serialize, Deserialize)]
    struct Tagged(i64, String, usize);

    impl JsonLine for Tagged {
        fn order(&self, key: &mut OrderKey<'_>) {
            key.time(self.0).text(&self.1);
        }
        fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()> {
            out.extend_from_slice(self.2.to_string().as_bytes());
            Ok(())
        }
    }

    /// An element ordered by a model line's fields.
    #[derive(Clone, Serialize, Deserialize)]
    struct Keyed((i64, String, i64, bool, u32));

    impl JsonLine for Keyed {
        fn order(&self, key: &mut OrderKey<'_>) {
            let t = &self.0;
            key.time(t.0).text(&t.1).time(t.2).flag(t.3).count(t.4);
        }
        fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()> {
            out.extend_from_slice(self.0.1.as_bytes());
            Ok(())
        }
    }

    /// A text element: `(order, line)`.
    #[derive(Clone, Serialize, Deserialize)]
    struct Line(i64, &'static str);

    impl JsonLine for Line {
        fn order(&self, key: &mut OrderKey<'_>) {
            key.time(self.0);
        }
        fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()> {
            out.extend_from_slice(self.1.as_bytes());
            Ok(())
        }
    }

    /// Runs of several workers come out merged by order key, ties in worker order and,
    /// within a worker, in the order its elements came; one worker's run is sorted.
    #[test]
    fn runs_are_sorted_and_merged_by_order_key() {
        let run = |worker, items: Vec<Line>| {
            LineRun::of(worker, vec![items], true, false, &mut Vec::new(), 0).unwrap()
        };
        let mut runs = vec![
            run(
                1,
                vec![Line(3, "1c"), Line(1, "1a"), Line(2, "1b"), Line(1, "1a'")],
            ),
            run(0, vec![Line(2, "0b"), Line(4, "0d"), Line(1, "0a")]),
            run(2, vec![]),
        ];
        let (mut chunk, mut out) = (Vec::new(), Vec::new());
        merge_runs(&mut runs, &mut chunk, &mut out).unwrap();
        let lines = String::from_utf8(out).unwrap();
        assert_eq!(lines, "0a\n1a\n1a'\n0b\n1b\n1c\n0d\n");
        let mut one = vec![
            LineRun::of(
                0,
                vec![vec![Line(2, "b")], vec![Line(1, "a")]],
                false,
                true,
                &mut Vec::new(),
                0,
            )
            .unwrap(),
        ];
        assert!(one[0].keys.is_empty(), "one worker: no keys to merge by");
        assert_eq!(one[0].items.len(), 2, "passed on");
        let mut out = Vec::new();
        merge_runs(&mut one, &mut chunk, &mut out).unwrap();
        assert_eq!(out, b"a\nb\n");
    }

    /// Lines that come in written order go out as whole pieces, lines longer than a chunk
    /// included, and merged with another run's they are still each in their place.
    #[test]
    fn pieces_in_written_order_are_written_whole() {
        let long = "x".repeat(LINE_CHUNK + 5);
        let text: &'static [String] = Vec::leak(
            (0..40)
                .map(|i| match i % 7 {
                    3 => format!("{long}{i}"),
                    _ => format!("line {i}"),
                })
                .collect(),
        );
        let line = |i: usize| Line(i as i64, &text[i]);
        let expected = |of: &mut dyn Iterator<Item = usize>| {
            of.map(|i| format!("{}\n", text[i])).collect::<String>()
        };
        // One worker, in written order: the run's text as it is.
        let run = |worker, items: Vec<Line>, merged| {
            LineRun::of(worker, vec![items], merged, false, &mut Vec::new(), 0).unwrap()
        };
        let mut one = vec![run(0, (0..40).map(line).collect(), false)];
        let (mut chunk, mut out) = (Vec::new(), Vec::new());
        merge_runs(&mut one, &mut chunk, &mut out).unwrap();
        assert!(out == expected(&mut (0..40)).into_bytes());
        assert!(chunk.is_empty());
        // Two workers, the even lines on one and the odd on the other.
        let mut two = vec![
            run(0, (0..40).step_by(2).map(line).collect(), true),
            run(1, (1..40).step_by(2).map(line).collect(), true),
        ];
        let mut out = Vec::new();
        merge_runs(&mut two, &mut chunk, &mut out).unwrap();
        assert!(out == expected(&mut (0..40)).into_bytes());
    }

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
