//! A file read ahead of its worker: [`ReadAhead`] parses a [`FileReader`]'s next batches
//! on a thread of its own while the worker folds the current one into panes.
//!
//! Reading a file is the larger half of a worker's work when windows are cheap: parsing a
//! CSV line of eight features costs about as much as folding it into its pane. On a
//! machine with more cores than workers, a thread per worker that reads and parses the
//! worker's next blocks overlaps the two. The batches are the same (the same blocks, in
//! the same order, handed over whole), so positions, checkpoints and output do not change:
//! only when the parsing happens does. The thread runs at most [`DEPTH`] batches ahead,
//! and the buffers it fills are handed back once replayed, so its memory is a few
//! batches' records, allocated once.
//!
//! A malformed line is found by the thread and reported by the worker, in its place among
//! the batch's records, to the worker's own [`RecordSink`] (which applies `--on-error`):
//! what the worker sees is what it would have seen reading the block itself. An error
//! that stops the source (an I/O error, a file cut short) ends the batch it happened in,
//! after that batch's records read before it, and the thread.
//!
//! The thread may also fold each batch ahead of the worker ([`Prefold`]): the windowed
//! dataflow folds a batch's records into its panes' statistics there
//! ([`ReadAhead::fold_with`]), and the worker, whose sink keeps the watermark, only checks
//! that every record is admitted before it takes the panes: the part of a record's cost
//! that does not depend on the worker's state is spent on the thread's core.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError, channel, sync_channel};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::file::FileReader;
use super::sink::{Folded, Malformed, RecordSink, Rows, SourceError};
use crate::record::RecordRef;
use crate::window::Time;

/// What a reading thread does with each batch it parsed, beyond parsing: fold its records
/// as the worker's sink would, for the sink to take whole
/// ([`RecordSink::take_folded`]). It sees only batches that parsed without a malformed
/// line or an error, and must give the sink a fold that equals the sink's own folding of
/// the same records, for the sink takes it in their place.
pub trait Prefold: Send {
    /// Folds the batch `rows`, into storage a fold handed back earlier when there is one
    /// ([`reuse`](Prefold::reuse)); `None` when it will not (the worker's sink is then
    /// given the records).
    fn fold(&mut self, rows: Rows<'_>) -> Option<Folded>;
    /// Takes back a fold the worker is done with (taken and emptied, or refused), to fold
    /// into again.
    fn reuse(&mut self, spent: Folded);
}

/// What the thread folds batches with, and which.
type Folding = (Box<dyn Prefold>, FoldWhen);

/// Which of the batches that parsed cleanly the reading thread folds ([`Prefold`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoldWhen {
    /// Every one.
    Always,
    /// The next one after a batch that had to wait for the worker to take the one before
    /// it: the thread is then ahead, with time to spare, and folding moves work off the
    /// worker. When the worker is the one waiting (it folds faster than the thread parses,
    /// as with few keys), the thread only parses, and the worker folds. So the work
    /// settles between the two wherever the worker's costs lie.
    Ahead,
}

/// Batches the thread may have parsed and the worker not yet taken (one more may be in
/// the making): with the one the worker replays, three batches' buffers at most. Two
/// waiting gained nothing measurable on the peers' file and held a buffer more (a 4 MiB
/// block of eight features is ~4 MB parsed).
pub const DEPTH: usize = 1;

/// Whether a file source is read ahead of its workers (`--read-ahead`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ReadAheadMode {
    /// When the machine has more cores than the process has workers: a reading thread
    /// then has a core to itself.
    #[default]
    Auto,
    /// Always: a thread per worker.
    On,
    /// Never: each worker parses its blocks itself.
    Off,
}

impl ReadAheadMode {
    /// Whether a process of `workers` workers reads ahead, on a machine of `cores` cores.
    pub fn applies(self, workers: usize, cores: usize) -> bool {
        match self {
            ReadAheadMode::Auto => cores > workers,
            ReadAheadMode::On => true,
            ReadAheadMode::Off => false,
        }
    }
}

/// A [`FileReader`] whose batches are read and parsed on a thread of their own, up to
/// [`DEPTH`] batches ahead of [`read_batch`](ReadAhead::read_batch).
///
/// The thread starts at the first batch read and ends at the end of the worker's share,
/// at an error, or when the `ReadAhead` is dropped or [`seek`](ReadAhead::seek)s.
pub struct ReadAhead {
    /// The reader while no thread holds it (before the first batch, after a seek).
    idle: Option<FileReader>,
    /// In a mutex only so that a reader can be shared between threads (`Sync`) while not
    /// read, as the other readers can; it is reached through `&mut self`, never locked.
    thread: Mutex<Option<Thread>>,
    /// The batch the worker reads next, as the reader would say (the thread's reader is
    /// ahead of it).
    next: u64,
    peers: u64,
    blocks: u64,
    path: String,
    /// What the thread folds batches with, and which, while no thread holds it (in a
    /// mutex for the reason `thread` is).
    prefold: Mutex<Option<Folding>>,
}

/// The thread reading ahead, and the channels to it.
struct Thread {
    /// Parsed batches, in order.
    parsed: Receiver<Parsed>,
    /// Buffers replayed, for the thread to fill again.
    spent: Sender<Parsed>,
    handle: JoinHandle<(FileReader, Option<Folding>)>,
}

impl ReadAhead {
    /// `reader`, to be read ahead from its current position.
    pub fn new(reader: FileReader) -> Self {
        let (next, peers, blocks) = reader.share();
        ReadAhead {
            path: reader.path().to_owned(),
            idle: Some(reader),
            thread: Mutex::new(None),
            next,
            peers,
            blocks,
            prefold: Mutex::new(None),
        }
    }

    /// Has the thread also fold batches with `prefold` (those `when` says), from the next
    /// batch it parses.
    pub fn fold_with(&mut self, prefold: Box<dyn Prefold>, when: FoldWhen) {
        // A thread that ran ahead stops: it starts again at the batch the worker reads next.
        let mut reader = self.stop();
        reader.set_next(self.next);
        self.idle = Some(reader);
        *self.prefold() = Some((prefold, when));
    }

    /// The batch (= epoch) this worker reads next, or `None` when its share is done.
    pub fn next_batch(&self) -> Option<u64> {
        (self.next < self.blocks).then_some(self.next)
    }

    /// Moves to the first of this worker's batches at or after `batch`: the batches the
    /// thread read ahead are dropped, and it starts again from there at the next read.
    pub fn seek(&mut self, batch: u64) {
        let mut reader = self.stop();
        reader.set_next(self.next);
        reader.seek(batch);
        self.next = reader.share().0;
        self.idle = Some(reader);
    }

    /// Hands batch [`next_batch`](Self::next_batch), as parsed by the thread, to `sink`:
    /// its records and malformed lines in file order, then the error that ended it, if
    /// one did.
    pub fn read_batch<S: RecordSink>(&mut self, sink: &mut S) -> Result<(), SourceError> {
        if self.next_batch().is_none() {
            return Ok(());
        }
        let thread = match self.thread().take() {
            Some(thread) => thread,
            None => self.start(),
        };
        let Ok(mut parsed) = thread.parsed.recv() else {
            // The thread ended without the batch: it panicked (the run's panic hook has
            // it), and this source stops here.
            let _ = thread.handle.join();
            return Err(SourceError::Io {
                path: self.path.clone(),
                message: format!("the thread reading batch {} ahead stopped", self.next),
            });
        };
        debug_assert_eq!(parsed.batch, self.next, "batches come in order");
        self.next += self.peers;
        let result = parsed.replay(sink);
        let _ = thread.spent.send(parsed);
        *self.thread() = Some(thread);
        result
    }

    /// The thread, if one runs.
    fn thread(&mut self) -> &mut Option<Thread> {
        self.thread
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The fold the thread is to have, while none runs.
    fn prefold(&mut self) -> &mut Option<Folding> {
        self.prefold
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the thread on the idle reader.
    fn start(&mut self) -> Thread {
        let mut reader = self
            .idle
            .take()
            .expect("a reader not read by a thread is idle");
        let mut prefold = self.prefold().take();
        let (to_worker, parsed) = sync_channel::<Parsed>(DEPTH);
        let (spent, from_worker) = channel::<Parsed>();
        let handle = std::thread::Builder::new()
            .name(format!(
                "tributary:read-ahead-{}",
                self.next % self.peers.max(1)
            ))
            .spawn(move || {
                read(&mut reader, &mut prefold, &to_worker, &from_worker);
                (reader, prefold)
            })
            .expect("a thread to read ahead");
        Thread {
            parsed,
            spent,
            handle,
        }
    }

    /// Stops the thread, if one runs, and returns the reader (at some batch past
    /// [`next`](Self::next_batch)).
    fn stop(&mut self) -> FileReader {
        match self.thread().take() {
            Some(thread) => {
                let (reader, prefold) = thread
                    .end()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                *self.prefold() = prefold;
                reader
            }
            None => self
                .idle
                .take()
                .expect("a reader not read by a thread is idle"),
        }
    }
}

impl Thread {
    /// Ends the thread and returns its reader: a thread waiting to hand over a batch sees
    /// the receiver gone and stops.
    fn end(self) -> std::thread::Result<(FileReader, Option<Folding>)> {
        drop((self.parsed, self.spent));
        self.handle.join()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some(thread) = self.thread().take() {
            // Its panic, if any, has gone to the run's hook already.
            let _ = thread.end();
        }
    }
}

/// The thread: parses the reader's batches into buffers (the worker's spent ones when
/// there are), folds those that parsed cleanly with `prefold` if there is one (and its
/// [`FoldWhen`] says so), and hands them over, until the share is done, a batch fails, or
/// the worker is gone.
fn read(
    reader: &mut FileReader,
    prefold: &mut Option<Folding>,
    to_worker: &SyncSender<Parsed>,
    spent: &Receiver<Parsed>,
) {
    // The lengths of the last batch parsed: a new buffer is made that large at once
    // rather than grown to it by doubling (which leaves up to half of it unused).
    let mut last = Sizes::default();
    // Whether the last batch waited for the worker (the first one: the worker waits).
    let mut waited = false;
    while let Some(batch) = reader.next_batch() {
        let mut parsed = spent.try_recv().unwrap_or_else(|_| Parsed::sized_as(&last));
        if let (Some((prefold, _)), Some(folded)) = (prefold.as_mut(), parsed.folded.take()) {
            prefold.reuse(folded);
        }
        parsed.clear(batch);
        parsed.error = reader.read_batch(&mut parsed).err();
        if let Some((prefold, when)) = prefold.as_mut()
            && (*when == FoldWhen::Always || waited)
            && parsed.error.is_none()
            && parsed.malformed.is_empty()
        {
            parsed.folded = prefold.fold(parsed.rows());
        }
        last = Sizes {
            records: parsed.times.len(),
            key_bytes: parsed.keys.len(),
            numbers: parsed.z.len(),
        };
        let failed = parsed.error.is_some();
        let sent = match to_worker.try_send(parsed) {
            Ok(()) => {
                waited = false;
                Ok(())
            }
            Err(TrySendError::Full(parsed)) => {
                waited = true;
                to_worker.send(parsed).map_err(drop)
            }
            Err(TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() || failed {
            return;
        }
    }
}

/// One batch as parsed: its records (times, keys and rows side by side), the malformed
/// lines among them, and the error that ended it.
#[derive(Default)]
struct Parsed {
    batch: u64,
    times: Vec<Time>,
    /// The keys, one after the other; `key_ends[i]` is where record `i`'s ends.
    keys: String,
    key_ends: Vec<usize>,
    /// The rows `z = [x, y]`, one after the other, each `width` numbers (a file has one
    /// schema, so every row of it is as wide).
    z: Vec<f64>,
    width: usize,
    /// The malformed lines, each after the number of records read before it.
    malformed: Vec<(usize, Malformed)>,
    error: Option<SourceError>,
    /// The batch as the thread's [`Prefold`] folded it; once replayed, what is left of it.
    folded: Option<Folded>,
}

/// The lengths of a [`Parsed`] batch.
#[derive(Default)]
struct Sizes {
    records: usize,
    key_bytes: usize,
    numbers: usize,
}

impl Parsed {
    /// Empties it (keeping its storage) for `batch`.
    fn clear(&mut self, batch: u64) {
        self.batch = batch;
        self.times.clear();
        self.keys.clear();
        self.key_ends.clear();
        self.z.clear();
        self.malformed.clear();
        self.error = None;
    }

    /// An empty buffer with room for a batch the size of `like` (an eighth more).
    fn sized_as(like: &Sizes) -> Parsed {
        let room = |len: usize| len + len / 8;
        Parsed {
            times: Vec::with_capacity(room(like.records)),
            keys: String::with_capacity(room(like.key_bytes)),
            key_ends: Vec::with_capacity(room(like.records)),
            z: Vec::with_capacity(room(like.numbers)),
            ..Parsed::default()
        }
    }

    /// Its records.
    fn rows(&self) -> Rows<'_> {
        Rows::new(&self.times, &self.keys, &self.key_ends, &self.z, self.width)
    }

    /// Hands the batch to `sink` as the reader would have: records and malformed lines in
    /// file order, then the error that ended the batch; a malformed line the sink refuses
    /// stops it there. A batch the thread folded is offered to the sink whole first.
    fn replay<S: RecordSink>(&mut self, sink: &mut S) -> Result<(), SourceError> {
        if let Some(folded) = self.folded.take() {
            // Only a batch without malformed lines is folded: taken, it is all replayed.
            match sink.take_folded(self.rows(), folded) {
                Ok(spent) => {
                    self.folded = Some(spent);
                    return self.error.take().map_or(Ok(()), Err);
                }
                Err(refused) => self.folded = Some(refused),
            }
        }
        // Taken out while the records are read, and put back (empty) for its storage.
        let mut malformed = std::mem::take(&mut self.malformed);
        let mut replay = || {
            let rows = self.rows();
            let mut from = 0;
            for (before, error) in malformed.drain(..) {
                (from..before).for_each(|i| sink.record(rows.get(i)));
                from = before;
                sink.malformed(error)?;
            }
            (from..rows.len()).for_each(|i| sink.record(rows.get(i)));
            Ok(())
        };
        let replayed = replay();
        self.malformed = malformed;
        replayed?;
        self.error.take().map_or(Ok(()), Err)
    }
}

impl RecordSink for Parsed {
    fn record(&mut self, record: RecordRef<'_>) {
        self.times.push(record.time);
        self.keys.push_str(record.key);
        self.key_ends.push(self.keys.len());
        if self.times.len() == 1 {
            self.width = record.z.len();
        }
        assert_eq!(
            record.z.len(),
            self.width,
            "the rows of one file are as wide"
        );
        self.z.extend_from_slice(record.z);
    }

    fn malformed(&mut self, error: Malformed) -> Result<(), SourceError> {
        // Kept for the worker, whose policy decides; the thread reads on.
        self.malformed.push((self.times.len(), error));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::source::FileFormat;
    use crate::source::lines::tests::schema;

    /// What a sink was handed, in order: records, and malformed lines (line, field).
    #[derive(Debug, Default)]
    struct Events {
        seen: Vec<Event>,
        /// Refuse the malformed line at this place among them (`--on-error fail`).
        refuse_at: Option<usize>,
        /// Take batches folded ahead by [`Collect`] (else they come record by record).
        take_folds: bool,
        /// Batches taken folded.
        folds_taken: usize,
    }

    /// What a sink was handed is what counts, not how.
    impl PartialEq for Events {
        fn eq(&self, other: &Self) -> bool {
            (&self.seen, self.refuse_at) == (&other.seen, other.refuse_at)
        }
    }

    /// A fold of a batch's records into the events a sink would see of them (the
    /// [`Prefold`] of these tests), counting the folds handed back.
    #[derive(Default)]
    struct Collect {
        reused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Prefold for Collect {
        fn fold(&mut self, rows: Rows<'_>) -> Option<Folded> {
            let events: Vec<Event> = (0..rows.len())
                .map(|i| rows.get(i))
                .map(|r| Event::Record(r.time, r.key.to_owned(), r.z.to_vec()))
                .collect();
            Some(Box::new(events))
        }
        fn reuse(&mut self, spent: Folded) {
            assert!(spent.is::<Vec<Event>>());
            self.reused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[derive(Debug, PartialEq)]
    enum Event {
        Record(Time, String, Vec<f64>),
        Malformed(u64, Option<String>, String),
    }

    impl RecordSink for Events {
        fn record(&mut self, r: RecordRef<'_>) {
            (self.seen).push(Event::Record(r.time, r.key.to_owned(), r.z.to_vec()));
        }
        fn take_folded(&mut self, rows: Rows<'_>, folded: Folded) -> Result<Folded, Folded> {
            if !self.take_folds {
                return Err(folded);
            }
            let mut events = folded.downcast::<Vec<Event>>().unwrap();
            assert_eq!(events.len(), rows.len(), "a fold is of the batch's records");
            self.seen.append(&mut events);
            self.folds_taken += 1;
            Ok(events)
        }
        fn malformed(&mut self, e: Malformed) -> Result<(), SourceError> {
            let at = self.seen.len();
            self.seen
                .push(Event::Malformed(e.line, e.field.clone(), e.message.clone()));
            match self.refuse_at {
                Some(refused) if refused <= at => Err(SourceError::Malformed(e)),
                _ => Ok(()),
            }
        }
    }

    /// A CSV file and a JSON lines file of the same 3 000 records with malformed lines among
    /// them (a number that is not one, a missing field, a line longer than the limit of 200
    /// bytes), keys of every length up to 40 bytes, in a fresh directory.
    fn file(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("tributary-ahead-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.csv");
        let mut text = String::from("ts,key,x0,x1,y\n");
        let mut json = String::new();
        for i in 0..3000u64 {
            let key = "k".repeat((i % 40) as usize + 1);
            let (x0, x1, y) = match i % 397 {
                5 => ("1.5".to_owned(), "\"oops\"".to_owned(), "2".to_owned()),
                11 => {
                    text.push_str(&format!("{i},{key},1.5\n"));
                    json.push_str(&format!("{{\"ts\":{i},\"key\":\"{key}\",\"x0\":1.5}}\n"));
                    continue;
                }
                17 => ("9".repeat(300), "1".to_owned(), "2".to_owned()),
                _ => (
                    format!("{}.25", i % 7),
                    format!("-{i}e-3"),
                    format!("{}", i * 3),
                ),
            };
            text.push_str(&format!("{i},{key},{x0},{},{y}\n", x1.trim_matches('"')));
            json.push_str(&format!(
                "{{\"ts\":{i},\"key\":\"{key}\",\"x0\":{x0},\"x1\":{x1},\"y\":{y}}}\n"
            ));
        }
        std::fs::write(&path, text).unwrap();
        std::fs::write(dir.join("in.jsonl"), json).unwrap();
        (dir, path)
    }

    fn open(path: &std::path::Path, block: usize, index: usize, peers: usize) -> FileReader {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => FileFormat::Jsonl,
            _ => FileFormat::Csv,
        };
        FileReader::open(path, block, format, &schema(), index, peers, 200).unwrap()
    }

    /// A reader read in place or ahead, as the tests read them.
    trait Batches {
        fn next(&self) -> Option<u64>;
        fn read(&mut self, sink: &mut Events) -> Result<(), SourceError>;
    }

    impl Batches for FileReader {
        fn next(&self) -> Option<u64> {
            self.next_batch()
        }
        fn read(&mut self, sink: &mut Events) -> Result<(), SourceError> {
            self.read_batch(sink)
        }
    }

    impl Batches for ReadAhead {
        fn next(&self) -> Option<u64> {
            self.next_batch()
        }
        fn read(&mut self, sink: &mut Events) -> Result<(), SourceError> {
            self.read_batch(sink)
        }
    }

    /// Batch by batch to the end of the share or the first error: the batch number, then
    /// what it handed over and how it ended.
    fn batches(
        reader: &mut impl Batches,
        refuse_at: Option<usize>,
    ) -> Vec<(u64, Events, Option<String>)> {
        batches_taking(reader, refuse_at, false)
    }

    /// [`batches`], into sinks that take batches folded ahead when `take_folds`.
    fn batches_taking(
        reader: &mut impl Batches,
        refuse_at: Option<usize>,
        take_folds: bool,
    ) -> Vec<(u64, Events, Option<String>)> {
        let mut out = Vec::new();
        while let Some(batch) = reader.next() {
            let mut events = Events {
                refuse_at,
                take_folds,
                ..Events::default()
            };
            let ended = reader.read(&mut events).err().map(|e| e.to_string());
            let stop = ended.is_some();
            out.push((batch, events, ended));
            if stop {
                break;
            }
        }
        out
    }

    /// Read ahead or not, every worker's share gives the same batches with the same
    /// records and malformed lines (numbers, fields and messages) in the same order, for
    /// CSV and JSON lines, blocks of a few lines to the whole file and one to three workers.
    #[test]
    fn batches_read_ahead_are_the_batches_read_in_place() {
        let (dir, csv) = file("same");
        for (path, block) in [300, 4096, 1 << 20]
            .into_iter()
            .flat_map(|block| [(csv.clone(), block), (dir.join("in.jsonl"), block)])
        {
            for peers in 1..=3 {
                for index in 0..peers {
                    let expected = batches(&mut open(&path, block, index, peers), None);
                    let mut reader = ReadAhead::new(open(&path, block, index, peers));
                    let ahead = batches(&mut reader, None);
                    assert!(index > 0 || !expected.is_empty());
                    if peers == 1 {
                        let seen = expected.iter().flat_map(|b| &b.1.seen);
                        let malformed = seen.filter(|e| matches!(e, Event::Malformed(..)));
                        assert_eq!(malformed.count(), 3 * 8, "every malformed line is seen");
                    }
                    let what = format!("{}, block {block}", path.display());
                    assert_eq!(ahead, expected, "{what}, worker {index} of {peers}");
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// With a [`Prefold`], a sink that takes the folds sees what it sees read in place: the
    /// batches without a malformed line as folded on the thread, the others record by
    /// record; a sink that refuses them is handed the records, and the folds go back to
    /// the thread. Also after a seek, which restarts the thread with its fold.
    #[test]
    fn batches_folded_ahead_are_the_batches_read_in_place() {
        let (dir, csv) = file("folded");
        for (path, block) in [(csv.clone(), 300), (dir.join("in.jsonl"), 4096)] {
            for peers in 1..=2 {
                for index in 0..peers {
                    let expected = batches(&mut open(&path, block, index, peers), None);
                    let clean = expected
                        .iter()
                        .filter(|(_, events, ended)| {
                            let mut seen = events.seen.iter();
                            ended.is_none() && !seen.any(|e| matches!(e, Event::Malformed(..)))
                        })
                        .count();
                    assert!(clean > 3, "most batches have no malformed line");
                    for take_folds in [true, false] {
                        let prefold = Collect::default();
                        let reused = std::sync::Arc::clone(&prefold.reused);
                        let mut reader = ReadAhead::new(open(&path, block, index, peers));
                        reader.fold_with(Box::new(prefold), FoldWhen::Always);
                        let ahead = batches_taking(&mut reader, None, take_folds);
                        let what = format!(
                            "{}, block {block}, worker {index} of {peers}",
                            path.display()
                        );
                        assert!(ahead == expected, "{what}, taking folds: {take_folds}");
                        let taken: usize = ahead.iter().map(|(_, e, _)| e.folds_taken).sum();
                        assert_eq!(taken, if take_folds { clean } else { 0 }, "{what}");
                        drop(reader);
                        let handed_back = reused.load(std::sync::atomic::Ordering::Relaxed);
                        assert!(
                            handed_back > 0 && handed_back <= clean,
                            "{what}: {handed_back}"
                        );
                        // Folding from the second batch on, the first read (and the
                        // next ones read ahead) before; then from the middle of the share.
                        let mut reader = ReadAhead::new(open(&path, block, index, peers));
                        let mut first = Events::default();
                        reader.read_batch(&mut first).unwrap();
                        reader.fold_with(Box::new(Collect::default()), FoldWhen::Always);
                        let mut second = Events {
                            take_folds,
                            ..Events::default()
                        };
                        reader.read_batch(&mut second).unwrap();
                        assert!(second == expected[1].1, "{what}: the batch after the first");
                        let from = expected[expected.len() / 2].0;
                        reader.seek(from);
                        let rest = batches_taking(&mut reader, None, take_folds);
                        assert!(
                            rest == expected[expected.len() / 2..],
                            "{what}, from {from}"
                        );
                    }
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Folding only when ahead ([`FoldWhen::Ahead`]): behind a slow worker (a sink that
    /// takes 2 ms a batch) the thread folds, behind a fast one it need not; either way the
    /// sink sees what it sees read in place.
    #[test]
    fn a_thread_ahead_of_a_slow_worker_folds() {
        let (dir, path) = file("fold-ahead");
        let expected = batches(&mut open(&path, 1024, 0, 1), None);
        for pause in [Duration::from_millis(2), Duration::ZERO] {
            let mut reader = ReadAhead::new(open(&path, 1024, 0, 1));
            reader.fold_with(Box::new(Collect::default()), FoldWhen::Ahead);
            let mut ahead = Vec::new();
            while let Some(batch) = reader.next_batch() {
                std::thread::sleep(pause);
                let mut events = Events {
                    take_folds: true,
                    ..Events::default()
                };
                let ended = reader.read_batch(&mut events).err().map(|e| e.to_string());
                ahead.push((batch, events, ended));
            }
            assert!(ahead == expected, "pause {pause:?}");
            let taken: usize = ahead.iter().map(|(_, e, _)| e.folds_taken).sum();
            if !pause.is_zero() {
                assert!(taken > expected.len() / 4, "{taken} of {}", expected.len());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A malformed line refused by the sink (`--on-error fail`) ends the batch there, after
    /// the records before it, as it does read in place.
    #[test]
    fn a_refused_line_ends_its_batch_as_in_place() {
        let (dir, path) = file("refused");
        let expected = batches(&mut open(&path, 1 << 20, 0, 1), Some(0));
        let ahead = batches(&mut ReadAhead::new(open(&path, 1 << 20, 0, 1)), Some(0));
        assert_eq!(ahead, expected);
        let (_, events, ended) = &ahead[0];
        assert_eq!(
            events.seen.len(),
            6,
            "five records, then the first malformed line"
        );
        assert!(ended.as_deref().unwrap().contains("line 7"), "{ended:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A seek, before the thread starts or after it has read ahead, continues from the
    /// batch sought, as a reader read in place does.
    #[test]
    fn a_seek_continues_from_the_batch_sought() {
        let (dir, path) = file("seek");
        let (block, peers) = (2048, 2);
        for (read_first, seek_to) in [(0, 5), (2, 9), (3, 6), (1, 0), (4, 1000)] {
            let mut inline = open(&path, block, 1, peers);
            let mut ahead = ReadAhead::new(open(&path, block, 1, peers));
            for _ in 0..read_first {
                let (mut a, mut b) = (Events::default(), Events::default());
                inline.read_batch(&mut a).unwrap();
                ahead.read_batch(&mut b).unwrap();
                assert_eq!(a, b);
            }
            // Let the thread run ahead before the seek.
            std::thread::sleep(std::time::Duration::from_millis(20));
            inline.seek(seek_to);
            ahead.seek(seek_to);
            let expected = batches(&mut inline, None);
            let got = batches(&mut ahead, None);
            assert_eq!(
                got, expected,
                "{read_first} batches read, then a seek to {seek_to}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file cut short once opened stops the source with the reader's own error, on the
    /// batch where the bytes are missing; dropping a reader whose thread is ahead ends it.
    #[test]
    fn a_file_cut_short_stops_the_source_and_a_drop_ends_the_thread() {
        let (dir, path) = file("cut");
        let mut ahead = ReadAhead::new(open(&path, 1 << 20, 0, 1));
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 3).unwrap();
        let mut events = Events::default();
        let error = ahead.read_batch(&mut events).unwrap_err().to_string();
        assert!(error.contains("shorter than when it was opened"), "{error}");
        assert!(events.seen.is_empty());
        drop(ahead);

        std::fs::write(dir.join("long.csv"), {
            let mut text = String::from("ts,key,x0,x1,y\n");
            (0..50_000).for_each(|i| text.push_str(&format!("{i},k,1,2,3\n")));
            text
        })
        .unwrap();
        let mut ahead = ReadAhead::new(open(&dir.join("long.csv"), 4096, 0, 1));
        ahead.read_batch(&mut Events::default()).unwrap();
        // The thread waits with DEPTH batches parsed; the drop must not hang on it.
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(ahead);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn auto_reads_ahead_when_a_core_is_free() {
        assert!(ReadAheadMode::Auto.applies(1, 2));
        assert!(!ReadAheadMode::Auto.applies(2, 2));
        assert!(!ReadAheadMode::Auto.applies(4, 2));
        assert!(ReadAheadMode::On.applies(4, 2));
        assert!(!ReadAheadMode::Off.applies(1, 8));
    }
}
