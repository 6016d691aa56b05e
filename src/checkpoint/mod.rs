//! Checkpoints: the pane statistics and the run's positions, in RocksDB, consistent at one
//! epoch across every worker, written incrementally, and recovered after a crash.
//!
//! See docs/checkpoint-format.md for the key layout and the protocol. In short: every
//! process has its own RocksDB at `DIR/process-P`. At a checkpoint epoch `E`, each worker
//! writes, in one synced `WriteBatch`, the panes it owns that changed since its previous
//! checkpoint (`D` deltas: the new total, or a tombstone for a pane that expired) and a
//! part record (`P`). Worker 0 writes the commit record (`C`) once every worker's part and
//! the output files through `E` are durable; a commit makes `E` complete. Committed deltas
//! are then folded into each worker's base (`B`). Recovery reads, from every process's
//! store, base + deltas through the newest complete epoch, and starts a new *generation*
//! (a full snapshot under the new worker count) whose first commit retires the old one.

pub mod codec;
pub mod coordinator;
pub mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rocksdb::{
    DB, DBRecoveryMode, ErrorKind, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::key::Key;
use crate::stats::Stats;
use crate::window::{Pane, Time};

pub use codec::{CodecError, FORMAT_VERSION};

pub use crate::types::Epoch;

/// Exit code of a run stopped because a checkpoint write failed (a part, a commit, a fold,
/// the output sync): the state on disk is the last complete checkpoint, and a restart
/// resumes from it.
pub const EXIT_WRITE_FAILED: i32 = 3;

/// Exit code of a run that refuses its checkpoint directory at start (damaged, identity
/// record missing, another dataflow's, unreadable), and of `tributary checkpoint verify`
/// when it finds damage.
pub const EXIT_REFUSED: i32 = 4;

/// What went wrong with a checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// RocksDB failed (I/O, corruption it detected itself, a lock).
    #[error("checkpoint store {path}: {message}")]
    Store {
        /// The store.
        path: String,
        /// RocksDB's message.
        message: String,
    },
    /// A value failed its checksum or did not decode.
    #[error("checkpoint store {path}: corrupted value under key {key}: {error}")]
    Corrupt {
        /// The store.
        path: String,
        /// The key, printable.
        key: String,
        /// Why.
        error: CodecError,
    },
    /// The store was written by another dataflow.
    #[error(
        "checkpoint {path} was written by another dataflow; refusing to reuse it\n  stored:  {stored}\n  running: {running}\n(use another --checkpoint directory, or delete this one to start over)"
    )]
    Fingerprint {
        /// The store.
        path: String,
        /// The dataflow that wrote it.
        stored: String,
        /// This run's dataflow.
        running: String,
    },
    /// Something the protocol guarantees is missing.
    #[error("checkpoint {path}: incomplete: {message}")]
    Incomplete {
        /// The store.
        path: String,
        /// What is missing.
        message: String,
    },
    /// The store is damaged: RocksDB found corruption (write-ahead log, table files), or
    /// a record every store with data has (the identity record) is missing.
    #[error(
        "checkpoint store {path} is damaged: {message}\n(`tributary checkpoint verify {dir}` lists every damaged record and says whether an older complete checkpoint is intact)"
    )]
    Damaged {
        /// The store.
        path: String,
        /// The checkpoint directory (the store's parent).
        dir: String,
        /// What is wrong.
        message: String,
    },
    /// Another process holds the store: RocksDB's lock file (`LOCK`) is locked.
    #[error(
        "checkpoint store {path} is in use by another process: its lock file {path}/LOCK is held ({message}).\n(Two processes must never write one store: is a `tributary run` with this --checkpoint and the same -p still running, on this host or, on a shared file system, on another one? Stop it first, or give this run another --checkpoint directory.)"
    )]
    Locked {
        /// The store.
        path: String,
        /// RocksDB's message.
        message: String,
    },
    /// The file system under the store refuses file locks (e.g. NFS without a lock
    /// manager): RocksDB cannot make sure no other process writes the store.
    #[error(
        "checkpoint store {path}: the file system refuses to lock {path}/LOCK ({message}); RocksDB needs POSIX (fcntl) locks to keep two processes from writing one store. On NFS, run the lock manager (NFSv3 lockd/statd, or NFSv4), or put --checkpoint on a local or cluster file system that supports them (see checkpoint-format.md, \"Storage\")"
    )]
    NoLocks {
        /// The store.
        path: String,
        /// RocksDB's message.
        message: String,
    },
    /// A store that does not belong with the others: from another generation (another
    /// run) than the newest commit, or missing.
    #[error("checkpoint {path}: {message}\n(see checkpoint-format.md, \"Storage\")")]
    Mismatch {
        /// The store.
        path: String,
        /// What does not match.
        message: String,
    },
    /// A durable write failed (the store is left as it was before it).
    #[error("checkpoint store {path}: {what} failed: {message}")]
    Write {
        /// The store.
        path: String,
        /// Which write: e.g. `writing worker 1's part of checkpoint epoch 7`.
        what: String,
        /// The I/O or RocksDB error.
        message: String,
    },
}

impl CheckpointError {
    fn damaged(path: &Path, message: impl Into<String>) -> CheckpointError {
        CheckpointError::Damaged {
            path: path.display().to_string(),
            dir: path
                .parent()
                .unwrap_or(Path::new("."))
                .display()
                .to_string(),
            message: message.into(),
        }
    }
}

/// How much of a damaged write-ahead log opening a store accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Replay {
    /// Every record must be intact; only an incomplete last record (a write cut short by a
    /// crash, never acknowledged) is dropped, and reported. Anything else is refused.
    #[default]
    Strict,
    /// Replay up to the first damaged record and drop the rest (`run --resume-from`):
    /// the store goes back to the state it had before the damaged write.
    BeforeDamage,
}

/// Written once per store: which dataflow owns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Canonical description of the dataflow (source, schema, windows, solver).
    pub dataflow: String,
}

/// The commit record of a complete epoch (process 0's store).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// Generation (a restart begins a new one).
    pub generation: u64,
    /// The epoch: every source batch `≤ epoch` is in the state, none after it.
    pub epoch: Epoch,
    /// Total workers of the generation.
    pub workers: usize,
    /// Processes of the generation.
    pub processes: usize,
    /// Largest event time admitted by each worker's partition.
    pub max_seen: Vec<Time>,
    /// Length of `--out` after the epoch's models (None for stdout).
    pub out_offset: Option<u64>,
    /// Length of `--late-out` after the epoch (None when absent or stdout).
    pub late_offset: Option<u64>,
    /// Wall-clock time of the commit (ms since the Unix epoch).
    pub unix_ms: u64,
}

/// Where a followed file's reader stands after the newest ingest batch (`S`), written
/// with that batch (or alone, past lines that gave no record): a restart reads on from
/// here while the log replays the batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// Byte offset after the last line read.
    pub offset: u64,
    /// Number of that line (1-based; 0 before any).
    pub line: u64,
    /// How many of the file's first bytes `head_crc` covers (at most 4 KiB).
    pub head_len: u32,
    /// CRC-32 of those bytes: a restart on another file is refused.
    pub head_crc: u32,
    /// How many bytes before `offset` `tail_crc` covers (at most 4 KiB).
    pub tail_len: u32,
    /// CRC-32 of those bytes: a restart on a file that differs there is refused.
    pub tail_crc: u32,
    /// Inode number of the file read (0: unknown, a store written before rotation was
    /// followed): with `,rotate`, a restart finds a file rotated away by it.
    pub ino: u64,
}

/// The layout of a [`SourcePosition`] before `ino`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct SourcePositionV1 {
    offset: u64,
    line: u64,
    head_len: u32,
    head_crc: u32,
    tail_len: u32,
    tail_crc: u32,
}

impl SourcePosition {
    /// Decodes a position kept in a store, of this build's layout or the one before `ino`
    /// (whose inode is then unknown, 0).
    pub fn decode_stored(bytes: &[u8]) -> Result<SourcePosition, codec::CodecError> {
        codec::decode::<SourcePosition>(bytes).or_else(|e| {
            let v1: SourcePositionV1 = codec::decode(bytes).map_err(|_| e)?;
            Ok(SourcePosition {
                offset: v1.offset,
                line: v1.line,
                head_len: v1.head_len,
                head_crc: v1.head_crc,
                tail_len: v1.tail_len,
                tail_crc: v1.tail_crc,
                ino: 0,
            })
        })
    }
}

/// A worker's part of a checkpoint epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Generation.
    pub generation: u64,
    /// Epoch.
    pub epoch: Epoch,
    /// Worker (global index).
    pub worker: usize,
    /// Windows emitted provisionally and not final yet: (key, start, end, n, revision).
    pub emitted: Vec<ProvisionalWindow>,
    /// Panes written.
    pub puts: u64,
    /// Panes deleted.
    pub deletes: u64,
}

/// A window emitted provisionally: (key, start, end, n, revision).
pub type ProvisionalWindow = (String, Time, Time, i64, u32);

/// What recovery found: the state as of the newest complete epoch.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The commit of that epoch.
    pub commit: Option<Commit>,
    /// Every open pane and its statistics.
    pub panes: Vec<(String, Pane, Stats)>,
    /// Windows emitted provisionally.
    pub emitted: Vec<ProvisionalWindow>,
}

mod keys {
    //! Key layout: a tag byte, then big-endian fields, so that prefixes scan in order.
    use super::*;

    pub const META: &[u8] = b"M";
    pub const SOURCE: &[u8] = b"S";

    fn time(t: Time) -> [u8; 8] {
        ((t as u64) ^ (1 << 63)).to_be_bytes()
    }

    pub fn commit(generation: u64, epoch: Epoch) -> Vec<u8> {
        [&b"C"[..], &generation.to_be_bytes(), &epoch.to_be_bytes()].concat()
    }
    pub fn part(generation: u64, epoch: Epoch, worker: usize) -> Vec<u8> {
        [
            &b"P"[..],
            &generation.to_be_bytes(),
            &epoch.to_be_bytes(),
            &(worker as u32).to_be_bytes(),
        ]
        .concat()
    }
    fn pane_suffix(key: &str, pane: Pane) -> Vec<u8> {
        [
            &(key.len() as u32).to_be_bytes()[..],
            key.as_bytes(),
            &time(pane.start),
            &time(pane.end),
        ]
        .concat()
    }
    pub fn delta_prefix(generation: u64, epoch: Epoch, worker: usize) -> Vec<u8> {
        [
            &b"D"[..],
            &generation.to_be_bytes(),
            &epoch.to_be_bytes(),
            &(worker as u32).to_be_bytes(),
        ]
        .concat()
    }
    pub fn delta(generation: u64, epoch: Epoch, worker: usize, key: &str, pane: Pane) -> Vec<u8> {
        [
            delta_prefix(generation, epoch, worker),
            pane_suffix(key, pane),
        ]
        .concat()
    }
    pub fn base_prefix(generation: u64, worker: usize) -> Vec<u8> {
        [
            &b"B"[..],
            &generation.to_be_bytes(),
            &(worker as u32).to_be_bytes(),
        ]
        .concat()
    }
    pub fn base(generation: u64, worker: usize, key: &str, pane: Pane) -> Vec<u8> {
        [base_prefix(generation, worker), pane_suffix(key, pane)].concat()
    }
    pub fn folded(generation: u64, worker: usize) -> Vec<u8> {
        [
            &b"F"[..],
            &generation.to_be_bytes(),
            &(worker as u32).to_be_bytes(),
        ]
        .concat()
    }
    pub fn ingest(seq: u64) -> Vec<u8> {
        [&b"I"[..], &seq.to_be_bytes()].concat()
    }
    pub fn model(key: &str) -> Vec<u8> {
        [&b"L"[..], key.as_bytes()].concat()
    }
    /// The (key, pane) at the end of a delta or base key.
    pub fn parse_pane(suffix: &[u8]) -> Option<(String, Pane)> {
        let len = u32::from_be_bytes(suffix.get(..4)?.try_into().ok()?) as usize;
        let key = std::str::from_utf8(suffix.get(4..4 + len)?)
            .ok()?
            .to_owned();
        let rest = suffix.get(4 + len..)?;
        let t = |b: &[u8]| (u64::from_be_bytes(b.try_into().unwrap()) ^ (1 << 63)) as Time;
        if rest.len() != 16 {
            return None;
        }
        Some((
            key,
            Pane {
                start: t(&rest[..8]),
                end: t(&rest[8..]),
            },
        ))
    }
    pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    }
    pub fn printable(key: &[u8]) -> String {
        key.iter()
            .map(|b| {
                if b.is_ascii_graphic() {
                    (*b as char).to_string()
                } else {
                    format!("\\x{b:02x}")
                }
            })
            .collect()
    }
}

/// A raw key and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// A batch of the ingest log: its number and its encoded records.
pub type LogEntry = (u64, Box<[u8]>);

/// One process's RocksDB store (`DIR/process-P`).
pub struct Store {
    db: DB,
    path: PathBuf,
    /// What opening found in the write-ahead log (an incomplete last record, or the
    /// damage before which it stopped), if anything.
    wal_note: Option<String>,
}

/// The store directory of process `process` under `dir`.
pub fn process_dir(dir: &Path, process: usize) -> PathBuf {
    dir.join(format!("process-{process}"))
}

impl Store {
    fn options(mode: DBRecoveryMode) -> Options {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_paranoid_checks(true);
        options.set_wal_recovery_mode(mode);
        options
    }

    /// Opens the RocksDB of `path` (see docs/checkpoint-format.md, "Write-ahead log").
    ///
    /// First a read-only probe with `AbsoluteConsistency`: any damage, even an incomplete
    /// last record, fails it. If it fails, a probe with `TolerateCorruptedTailRecords`
    /// tells a crash during a write (an incomplete last record: accepted, and reported in
    /// the note) from damage (a checksum mismatch anywhere: refused, or with
    /// [`Replay::BeforeDamage`], replayed up to the damage with `PointInTime`). The store
    /// itself is then opened in the mode the probes chose.
    fn open_db(
        path: &Path,
        read_only: bool,
        replay: Replay,
    ) -> Result<(DB, Option<String>), CheckpointError> {
        let open = |mode, read_only| {
            if read_only {
                DB::open_for_read_only(&Self::options(mode), path, false)
            } else {
                DB::open(&Self::options(mode), path)
            }
        };
        let fresh = !path.join("CURRENT").exists();
        let strict = if fresh {
            Ok(())
        } else {
            match open(DBRecoveryMode::AbsoluteConsistency, true) {
                // Read-only, the probe is the store: no second replay of the log.
                Ok(db) if read_only => return Ok((db, None)),
                result => result.map(drop),
            }
        };
        let (mode, note) = match strict {
            Ok(()) => (DBRecoveryMode::TolerateCorruptedTailRecords, None),
            Err(e) if e.kind() != ErrorKind::Corruption => return Err(Self::err(path, e)),
            Err(strict) => match open(DBRecoveryMode::TolerateCorruptedTailRecords, true) {
                Ok(_) => (
                    DBRecoveryMode::TolerateCorruptedTailRecords,
                    Some(format!(
                        "the write-ahead log ends in an incomplete record, a write cut short by a crash (so never acknowledged); it is dropped ({strict})"
                    )),
                ),
                Err(damage) if damage.kind() != ErrorKind::Corruption => {
                    return Err(Self::err(path, damage));
                }
                Err(damage) => match replay {
                    Replay::Strict => {
                        // Where: only damage in a write-ahead log leaves the writes before
                        // it readable.
                        let wal = open(DBRecoveryMode::PointInTime, true).is_ok();
                        return Err(CheckpointError::damaged(
                            path,
                            match wal {
                                true => format!(
                                    "a record of its write-ahead log (*.log) is damaged: {damage}"
                                ),
                                false => format!("RocksDB refuses to open it: {damage}"),
                            },
                        ));
                    }
                    Replay::BeforeDamage => (
                        DBRecoveryMode::PointInTime,
                        Some(format!(
                            "the write-ahead log is damaged ({damage}); only the writes before the damage are kept"
                        )),
                    ),
                },
            },
        };
        let db = open(mode, read_only).map_err(|e| match e.kind() {
            ErrorKind::Corruption => {
                CheckpointError::damaged(path, format!("RocksDB refuses to open it: {e}"))
            }
            _ => Self::open_err(path, e),
        })?;
        Ok((db, note))
    }

    /// An error opening the store: its lock held by another process, locks refused by
    /// the file system, or anything else RocksDB says.
    fn open_err(path: &Path, e: rocksdb::Error) -> CheckpointError {
        let message = e.to_string();
        let path_text = path.display().to_string();
        // RocksDB's PosixEnv::LockFile: "While lock file: PATH/LOCK: <strerror>", or
        // "lock hold by current process" when this process holds it already.
        if message.contains("lock hold by current process") {
            return CheckpointError::Locked {
                path: path_text,
                message,
            };
        }
        if message.contains("While lock file") {
            if message.contains("No locks available") || message.contains("not supported") {
                return CheckpointError::NoLocks {
                    path: path_text,
                    message,
                };
            }
            // fcntl(F_SETLK) failed: EAGAIN or EACCES, another process holds the lock.
            return CheckpointError::Locked {
                path: path_text,
                message,
            };
        }
        Self::err(path, message)
    }

    /// Opens (creating if needed) the store of `process` under `dir` for writing, and
    /// checks (or records) that it belongs to `dataflow`.
    pub fn open(dir: &Path, process: usize, dataflow: &str) -> Result<Store, CheckpointError> {
        Self::open_with(dir, process, dataflow, Replay::Strict)
    }

    /// [`open`](Self::open), accepting a damaged write-ahead log as `replay` says.
    pub fn open_with(
        dir: &Path,
        process: usize,
        dataflow: &str,
        replay: Replay,
    ) -> Result<Store, CheckpointError> {
        let path = process_dir(dir, process);
        let first = process_dir(dir, 0);
        if process > 0 && !first.join("CURRENT").exists() && path.join("CURRENT").exists() {
            // Recovery found nothing, because process 0's store is not here; this one
            // holds data: starting over would mix a new run with an old one.
            return Err(CheckpointError::Mismatch {
                path: path.display().to_string(),
                message: format!(
                    "this store of process {process} holds a checkpoint, but process 0's store {} does not exist here. Process 0's store holds the commit records, and every process reads it (and, at a restart, every store of the last run): on several machines, --checkpoint must be a directory all of them share. Refusing to start over next to an old store; delete {} to start over",
                    first.display(),
                    path.display()
                ),
            });
        }
        std::fs::create_dir_all(&path).map_err(|e| CheckpointError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let (db, wal_note) = Self::open_db(&path, false, replay)?;
        let store = Store { db, path, wal_note };
        match store.get::<Meta>(keys::META)? {
            Some(meta) => store.check(&meta, dataflow)?,
            None => {
                store.refuse_without_identity()?;
                store.put_sync(
                    keys::META,
                    &codec::encode(&Meta {
                        dataflow: dataflow.to_owned(),
                    }),
                )?
            }
        }
        Ok(store)
    }

    /// Opens an existing store read-only (another process may be writing it).
    pub fn open_read_only(path: &Path) -> Result<Store, CheckpointError> {
        Self::open_read_only_with(path, Replay::Strict)
    }

    /// [`open_read_only`](Self::open_read_only), accepting a damaged write-ahead log as
    /// `replay` says.
    pub fn open_read_only_with(path: &Path, replay: Replay) -> Result<Store, CheckpointError> {
        let (db, wal_note) = Self::open_db(path, true, replay)?;
        Ok(Store {
            db,
            path: path.to_owned(),
            wal_note,
        })
    }

    /// What opening found in the write-ahead log: an incomplete last record that was
    /// dropped, or (with [`Replay::BeforeDamage`]) the damage before which it stopped.
    pub fn wal_note(&self) -> Option<&str> {
        self.wal_note.as_deref()
    }

    /// The first key of the store, if any.
    fn first_key(&self) -> Result<Option<Box<[u8]>>, CheckpointError> {
        match self.db.iterator(IteratorMode::Start).next() {
            Some(item) => Ok(Some(item.map_err(|e| Self::err(&self.path, e))?.0)),
            None => Ok(None),
        }
    }

    /// A store without its identity record must be empty: the record is the first one
    /// every store gets. Data without it means a damaged store, not a new one.
    fn refuse_without_identity(&self) -> Result<(), CheckpointError> {
        match self.first_key()? {
            None => Ok(()),
            Some(key) => Err(CheckpointError::damaged(
                &self.path,
                format!(
                    "its identity record (key M: which dataflow wrote it) is missing, but it holds data (first key {}); refusing to start it over",
                    keys::printable(&key)
                ),
            )),
        }
    }

    fn err(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// A failed durable write, named.
    fn write_err(&self, what: impl Into<String>, e: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Write {
            path: self.path.display().to_string(),
            what: what.into(),
            message: e.to_string(),
        }
    }

    /// Refuses a store of another dataflow, and a store with data but no identity record.
    fn check_identity(&self, dataflow: &str) -> Result<(), CheckpointError> {
        match self.meta()? {
            Some(meta) => self.check(&meta, dataflow),
            None => self.refuse_without_identity(),
        }
    }

    /// Decodes the ingest log's batches numbered `from` and later, and the followed
    /// file's position: a damaged one is refused here, at start, naming its key.
    fn check_ingest(&self, from: u64) -> Result<(), CheckpointError> {
        for (seq, bytes) in self.ingest_batches(from)? {
            self.decode::<crate::record::RecordBatch>(&keys::ingest(seq), &bytes)?;
        }
        self.source_position()?;
        Ok(())
    }

    fn check(&self, meta: &Meta, dataflow: &str) -> Result<(), CheckpointError> {
        if meta.dataflow != dataflow {
            return Err(CheckpointError::Fingerprint {
                path: self.path.display().to_string(),
                stored: meta.dataflow.clone(),
                running: dataflow.to_owned(),
            });
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, key: &[u8], value: &[u8]) -> Result<T, CheckpointError> {
        codec::decode(value).map_err(|error| CheckpointError::Corrupt {
            path: self.path.display().to_string(),
            key: keys::printable(key),
            error,
        })
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, CheckpointError> {
        match self.db.get(key).map_err(|e| Self::err(&self.path, e))? {
            Some(v) => self.decode(key, &v).map(Some),
            None => Ok(None),
        }
    }

    fn put_sync(&self, key: &[u8], value: &[u8]) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        batch.put(key, value);
        self.write(batch)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), CheckpointError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| Self::err(&self.path, e))
    }

    /// Every `(key, value)` under `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, CheckpointError> {
        let mut options = ReadOptions::default();
        options.set_iterate_range(rocksdb::PrefixRange(prefix));
        let mut out = Vec::new();
        for item in self.db.iterator_opt(
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
            options,
        ) {
            let (k, v) = item.map_err(|e| Self::err(&self.path, e))?;
            out.push((k, v));
        }
        Ok(out)
    }

    /// The dataflow description stored, if any.
    pub fn meta(&self) -> Result<Option<Meta>, CheckpointError> {
        self.get(keys::META)
    }

    /// Writes a worker's part of epoch `part.epoch`: the changed panes (`None` = expired)
    /// and the part record, in one synced batch.
    pub fn write_part(
        &self,
        part: &Part,
        changes: &[(Key, Pane, Option<Stats>)],
    ) -> Result<u64, CheckpointError> {
        let mut batch = WriteBatch::default();
        let mut bytes = 0;
        for (key, pane, stats) in changes {
            let k = keys::delta(
                part.generation,
                part.epoch,
                part.worker,
                key.as_str(),
                *pane,
            );
            let v = codec::encode(stats);
            bytes += k.len() + v.len();
            batch.put(k, v);
        }
        let k = keys::part(part.generation, part.epoch, part.worker);
        let v = codec::encode(part);
        bytes += k.len() + v.len();
        batch.put(k, v);
        let what = || {
            format!(
                "writing worker {}'s part of checkpoint epoch {} (generation {})",
                part.worker, part.epoch, part.generation
            )
        };
        crate::failpoint::io("checkpoint.part").map_err(|e| self.write_err(what(), e))?;
        self.write(batch).map_err(|e| self.write_err(what(), e))?;
        Ok(bytes as u64)
    }

    /// Writes the commit record that makes `commit.epoch` complete, and forgets older
    /// commits of the generation.
    pub fn write_commit(&self, commit: &Commit) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        batch.delete_range(
            keys::commit(commit.generation, 0),
            keys::commit(commit.generation, commit.epoch),
        );
        batch.put(
            keys::commit(commit.generation, commit.epoch),
            codec::encode(commit),
        );
        let what = || {
            format!(
                "writing the commit record of checkpoint epoch {} (generation {})",
                commit.epoch, commit.generation
            )
        };
        crate::failpoint::io("checkpoint.commit").map_err(|e| self.write_err(what(), e))?;
        self.write(batch).map_err(|e| self.write_err(what(), e))
    }

    /// Folds a worker's deltas of epochs `≤ through` (all committed) into its base, and
    /// deletes them and its older part records.
    pub fn fold(
        &self,
        generation: u64,
        worker: usize,
        through: Epoch,
    ) -> Result<(), CheckpointError> {
        let from = self
            .get::<Epoch>(&keys::folded(generation, worker))?
            .map_or(0, |e| e + 1);
        if from > through {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let start = keys::delta_prefix(generation, from, worker);
        let end = keys::delta_prefix(generation, through + 1, 0);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(end.clone());
        for item in self.db.iterator_opt(
            IteratorMode::From(&start, rocksdb::Direction::Forward),
            options,
        ) {
            let (k, v) = item.map_err(|e| Self::err(&self.path, e))?;
            // Deltas of other workers share the epoch range: skip them.
            if k.len() < 21 || u32::from_be_bytes(k[17..21].try_into().unwrap()) as usize != worker
            {
                continue;
            }
            let (key, pane) =
                keys::parse_pane(&k[21..]).ok_or_else(|| CheckpointError::Corrupt {
                    path: self.path.display().to_string(),
                    key: keys::printable(&k),
                    error: CodecError::Payload("bad delta key".into()),
                })?;
            let stats: Option<Stats> = self.decode(&k, &v)?;
            let base = keys::base(generation, worker, &key, pane);
            match stats {
                Some(s) => batch.put(base, codec::encode(&s)),
                None => batch.delete(base),
            }
            batch.delete(&k);
        }
        for (k, _) in self.scan(&[&b"P"[..], &generation.to_be_bytes()].concat())? {
            let epoch = keys::u64_at(&k, 9);
            let owner = u32::from_be_bytes(k[17..21].try_into().expect("4 bytes")) as usize;
            if owner == worker && epoch < through {
                batch.delete(&k);
            }
        }
        batch.put(keys::folded(generation, worker), codec::encode(&through));
        self.write(batch)
    }

    /// Deletes everything of generations before `generation`.
    pub fn drop_generations_before(&self, generation: u64) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        for tag in [b'C', b'P', b'D', b'B', b'F'] {
            batch.delete_range(vec![tag], [&[tag][..], &generation.to_be_bytes()].concat());
        }
        self.write(batch)?;
        for tag in [b'C', b'P', b'D', b'B', b'F'] {
            self.db.compact_range(
                Some(vec![tag]),
                Some([&[tag][..], &generation.to_be_bytes()].concat()),
            );
        }
        Ok(())
    }

    /// Deletes everything of generations `generation` and later: leftovers of a run that
    /// crashed before its generation committed anything.
    pub fn drop_generations_from(&self, generation: u64) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        for tag in [b'C', b'P', b'D', b'B', b'F'] {
            batch.delete_range(
                [&[tag][..], &generation.to_be_bytes()].concat(),
                vec![tag + 1],
            );
        }
        self.write(batch)
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes batch `seq` of the ingest log (encoded), and the position of its source
    /// after it if given (encoded), in one synced write: durable on return.
    pub fn append_ingest(
        &self,
        seq: u64,
        batch: &[u8],
        position: Option<&SourcePosition>,
    ) -> Result<(), CheckpointError> {
        let mut write = WriteBatch::default();
        write.put(keys::ingest(seq), batch);
        if let Some(position) = position {
            write.put(keys::SOURCE, codec::encode(position));
        }
        let what = || format!("appending batch {seq} to the ingest log");
        crate::failpoint::io("ingest.append").map_err(|e| self.write_err(what(), e))?;
        self.write(write).map_err(|e| self.write_err(what(), e))
    }

    /// Writes where a followed file's reader stands (synced), with no batch.
    pub fn put_source_position(&self, position: &SourcePosition) -> Result<(), CheckpointError> {
        self.put_sync(keys::SOURCE, &codec::encode(position))
    }

    /// Where a followed file's reader stood after the newest ingest batch written.
    pub fn source_position(&self) -> Result<Option<SourcePosition>, CheckpointError> {
        match self
            .db
            .get(keys::SOURCE)
            .map_err(|e| Self::err(&self.path, e))?
        {
            Some(v) => SourcePosition::decode_stored(&v)
                .map(Some)
                .map_err(|error| CheckpointError::Corrupt {
                    path: self.path.display().to_string(),
                    key: keys::printable(keys::SOURCE),
                    error,
                }),
            None => Ok(None),
        }
    }

    /// The ingest log's batches numbered `from` and later, in order (encoded).
    pub fn ingest_batches(&self, from: u64) -> Result<Vec<LogEntry>, CheckpointError> {
        let start = keys::ingest(from);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(b"J".to_vec());
        let mut out = Vec::new();
        for item in self.db.iterator_opt(
            IteratorMode::From(&start, rocksdb::Direction::Forward),
            options,
        ) {
            let (k, v) = item.map_err(|e| Self::err(&self.path, e))?;
            if k.len() != 9 {
                return Err(self.bad_key(&k));
            }
            out.push((keys::u64_at(&k, 1), v));
        }
        Ok(out)
    }

    /// Deletes the ingest log's batches numbered `≤ through` (a commit covers them).
    pub fn truncate_ingest(&self, through: u64) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        batch.delete_range(keys::ingest(0), keys::ingest(through.saturating_add(1)));
        self.write(batch)
    }

    /// Stores the newest final model of each key (encoded), replacing older ones. Not
    /// synced: a cache that lets a restarted server answer at once.
    pub fn put_models<'a>(
        &self,
        models: impl IntoIterator<Item = (&'a str, Vec<u8>)>,
    ) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        for (key, value) in models {
            batch.put(keys::model(key), value);
        }
        self.db.write(batch).map_err(|e| Self::err(&self.path, e))
    }

    /// Every stored model (encoded).
    pub fn models(&self) -> Result<Vec<Box<[u8]>>, CheckpointError> {
        Ok(self.scan(b"L")?.into_iter().map(|(_, v)| v).collect())
    }

    /// The newest commit (highest generation, then epoch), if any.
    pub fn latest_commit(&self) -> Result<Option<Commit>, CheckpointError> {
        let mut last = None;
        for (k, v) in self.scan(b"C")? {
            last = Some(self.decode::<Commit>(&k, &v)?);
        }
        Ok(last)
    }

    /// Reads worker `worker`'s state of `generation` as of `epoch`: base plus deltas.
    fn worker_state(
        &self,
        generation: u64,
        worker: usize,
        epoch: Epoch,
        panes: &mut BTreeMap<(String, Pane), Stats>,
    ) -> Result<Part, CheckpointError> {
        for (k, v) in self.scan(&keys::base_prefix(generation, worker))? {
            let (key, pane) = keys::parse_pane(&k[13..]).ok_or_else(|| self.bad_key(&k))?;
            panes.insert((key, pane), self.decode(&k, &v)?);
        }
        let folded = self.get::<Epoch>(&keys::folded(generation, worker))?;
        if let Some(f) = folded
            && f > epoch
        {
            return Err(CheckpointError::Incomplete {
                path: self.path.display().to_string(),
                message: format!(
                    "worker {worker}'s base is folded through epoch {f}, past the checkpoint of epoch {epoch}: the state at epoch {epoch} is gone"
                ),
            });
        }
        let from = folded.map_or(0, |e| e + 1);
        let start = keys::delta_prefix(generation, from, 0);
        let end = keys::delta_prefix(generation, epoch + 1, 0);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(end);
        for item in self.db.iterator_opt(
            IteratorMode::From(&start, rocksdb::Direction::Forward),
            options,
        ) {
            let (k, v) = item.map_err(|e| Self::err(&self.path, e))?;
            if k.len() < 21 || u32::from_be_bytes(k[17..21].try_into().unwrap()) as usize != worker
            {
                continue;
            }
            let (key, pane) = keys::parse_pane(&k[21..]).ok_or_else(|| self.bad_key(&k))?;
            match self.decode::<Option<Stats>>(&k, &v)? {
                Some(s) => panes.insert((key, pane), s),
                None => panes.remove(&(key, pane)),
            };
        }
        self.get::<Part>(&keys::part(generation, epoch, worker))?
            .ok_or_else(|| CheckpointError::Incomplete {
                path: self.path.display().to_string(),
                message: format!(
                    "epoch {epoch} is committed but worker {worker}'s part of it is missing"
                ),
            })
    }

    fn bad_key(&self, k: &[u8]) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.path.display().to_string(),
            key: keys::printable(k),
            error: CodecError::Payload("malformed key".into()),
        }
    }

    /// The generations this store holds parts or folded bases of.
    fn generations(&self) -> Result<std::collections::BTreeSet<u64>, CheckpointError> {
        let mut generations = std::collections::BTreeSet::new();
        for tag in [b"P", b"F"] {
            for (k, _) in self.scan(tag)? {
                if k.len() < 9 {
                    return Err(self.bad_key(&k));
                }
                generations.insert(keys::u64_at(&k, 1));
            }
        }
        Ok(generations)
    }

    /// Refuses a store of process `process` that holds nothing of `commit`'s generation:
    /// a copy from another run (older: a stale local directory or a restored backup;
    /// newer: process 0's store is the stale one), which recovery would otherwise read as
    /// missing parts, or as nothing.
    fn check_generation(&self, process: usize, commit: &Commit) -> Result<(), CheckpointError> {
        let generations = self.generations()?;
        if generations.contains(&commit.generation) {
            return Ok(());
        }
        let held = match (generations.first(), generations.last()) {
            (Some(a), Some(b)) if a == b => format!("generation {a}"),
            (Some(a), Some(b)) => format!("generations {a} to {b}"),
            _ => "no checkpoint at all".to_owned(),
        };
        let why = match generations.last() {
            Some(&newest) if newest > commit.generation => format!(
                "it is newer than process 0's store {}: that store is the stale one (a copy or backup of an older run?)",
                self.path
                    .parent()
                    .map_or_else(|| "process-0".into(), |d| process_dir(d, 0).display().to_string())
            ),
            Some(_) => "it is older: a copy of an earlier run (a local directory of this host that the last run did not write, or a restored backup?)".to_owned(),
            None => "it was never written by that run (a new or other store in its place?)".to_owned(),
        };
        Err(CheckpointError::Mismatch {
            path: self.path.display().to_string(),
            message: format!(
                "the store of process {process} holds {held}, not generation {} of the newest complete checkpoint (epoch {}, {} processes, in process 0's store): {why}. Every store of a checkpoint must be the one its run wrote",
                commit.generation, commit.epoch, commit.processes
            ),
        })
    }

    /// A summary of the store's contents, for `tributary checkpoint inspect`.
    pub fn describe(&self) -> Result<String, CheckpointError> {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "store {}", self.path.display());
        match self.meta()? {
            Some(m) => {
                let _ = writeln!(out, "  dataflow: {}", m.dataflow);
            }
            None => {
                let _ = writeln!(out, "  (no meta record)");
            }
        }
        for (k, v) in self.scan(b"C")? {
            let c: Commit = self.decode(&k, &v)?;
            let _ = writeln!(
                out,
                "  commit: generation {} epoch {} complete ({} workers in {} processes) out_offset={:?} late_offset={:?} at {} ms",
                c.generation,
                c.epoch,
                c.workers,
                c.processes,
                c.out_offset,
                c.late_offset,
                c.unix_ms
            );
        }
        for (k, v) in self.scan(b"P")? {
            let p: Part = self.decode(&k, &v)?;
            let _ = writeln!(
                out,
                "  part: generation {} epoch {} worker {}: {} panes written, {} deleted, {} provisional windows",
                p.generation,
                p.epoch,
                p.worker,
                p.puts,
                p.deletes,
                p.emitted.len()
            );
        }
        let base = self.scan(b"B")?;
        let deltas = self.scan(b"D")?;
        let mut keys = std::collections::BTreeSet::new();
        for (k, _) in &base {
            if let Some((key, _)) = keys::parse_pane(&k[13..]) {
                keys.insert(key);
            }
        }
        let size = |v: &[Entry]| v.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let _ = writeln!(
            out,
            "  base: {} panes of {} keys ({} bytes); deltas not yet folded: {} ({} bytes)",
            base.len(),
            keys.len(),
            size(&base),
            deltas.len(),
            size(&deltas)
        );
        let ingest = self.scan(b"I")?;
        if !ingest.is_empty() {
            let _ = writeln!(
                out,
                "  ingest log: {} batches after the newest commit ({} bytes)",
                ingest.len(),
                size(&ingest)
            );
        }
        if let Some(p) = self.source_position()? {
            let _ = writeln!(
                out,
                "  followed file: read through byte {} (line {}) of inode {}",
                p.offset, p.line, p.ino
            );
        }
        if let Ok(Some(sst)) = self.db.property_int_value("rocksdb.total-sst-files-size") {
            let _ = writeln!(out, "  sst files: {sst} bytes");
        }
        Ok(out)
    }
}

/// Finds the newest complete checkpoint under `dir` and reads the state at it.
///
/// Returns `Ok(None)` when `dir` holds no store yet; refuses a store of another dataflow,
/// a newer format, or damaged values.
pub fn recover(dir: &Path, dataflow: &str) -> Result<Option<Recovered>, CheckpointError> {
    recover_from(dir, dataflow, None)
}

/// [`recover`], or with `resume_from = Some(E)` (`run --resume-from E`): resumes from
/// epoch `E`, which must be the newest complete checkpoint in the intact part of every
/// store (a damaged write-ahead log is replayed up to the damage, [`Replay::BeforeDamage`]).
pub fn recover_from(
    dir: &Path,
    dataflow: &str,
    resume_from: Option<Epoch>,
) -> Result<Option<Recovered>, CheckpointError> {
    let replay = match resume_from {
        Some(_) => Replay::BeforeDamage,
        None => Replay::Strict,
    };
    let first = process_dir(dir, 0);
    if !first.join("CURRENT").exists() {
        if let Some(epoch) = resume_from {
            return Err(CheckpointError::Incomplete {
                path: dir.display().to_string(),
                message: format!("--resume-from {epoch}: no checkpoint store here"),
            });
        }
        return Ok(None);
    }
    let store = Store::open_read_only_with(&first, replay)?;
    store.check_identity(dataflow)?;
    let latest = store.latest_commit()?;
    if let Some(epoch) = resume_from
        && latest.as_ref().map(|c| c.epoch) != Some(epoch)
    {
        return Err(CheckpointError::Incomplete {
            path: first.display().to_string(),
            message: match &latest {
                Some(c) => format!(
                    "--resume-from {epoch}: the newest complete checkpoint intact here is epoch {} (generation {})",
                    c.epoch, c.generation
                ),
                None => format!("--resume-from {epoch}: no complete checkpoint is intact here"),
            },
        });
    }
    let Some(commit) = latest else {
        store.check_ingest(0)?;
        return Ok(Some(Recovered::default()));
    };
    // The batches the resumed run reads again from the ingest log must decode.
    store.check_ingest(commit.epoch + 1)?;
    drop(store);
    let mut panes = BTreeMap::new();
    let mut emitted = Vec::new();
    let per_process = commit.workers / commit.processes.max(1);
    for process in 0..commit.processes {
        let path = process_dir(dir, process);
        if !path.join("CURRENT").exists() {
            return Err(CheckpointError::Mismatch {
                path: path.display().to_string(),
                message: format!(
                    "the newest complete checkpoint (epoch {}, generation {}) was written by {} processes, and the store of process {process} does not exist here. A restart reads every store of that checkpoint: on several machines, --checkpoint must be a directory all of them share",
                    commit.epoch, commit.generation, commit.processes
                ),
            });
        }
        let store = Store::open_read_only_with(&path, replay).map_err(|e| match e {
            e @ CheckpointError::Damaged { .. } => e,
            e => CheckpointError::Incomplete {
                path: path.display().to_string(),
                message: format!("the store of process {process} cannot be read: {e}"),
            },
        })?;
        store.check_identity(dataflow)?;
        store.check_generation(process, &commit)?;
        for worker in process * per_process..(process + 1) * per_process {
            let part = store.worker_state(commit.generation, worker, commit.epoch, &mut panes)?;
            emitted.extend(part.emitted);
        }
    }
    Ok(Some(Recovered {
        commit: Some(commit),
        panes: panes.into_iter().map(|((k, p), s)| (k, p, s)).collect(),
        emitted,
    }))
}

/// The description of every store under `dir`.
pub fn inspect(dir: &Path) -> Result<String, CheckpointError> {
    let mut out = String::new();
    let mut process = 0;
    while process_dir(dir, process).join("CURRENT").exists() {
        out.push_str(&Store::open_read_only(&process_dir(dir, process))?.describe()?);
        process += 1;
    }
    if process == 0 {
        return Err(CheckpointError::Incomplete {
            path: dir.display().to_string(),
            message: "no checkpoint store here".into(),
        });
    }
    let latest = Store::open_read_only(&process_dir(dir, 0))?.latest_commit()?;
    match latest {
        Some(c) => out.push_str(&format!(
            "newest complete epoch: {} (generation {}); a restart resumes after source batch {}\n",
            c.epoch, c.generation, c.epoch
        )),
        None => out.push_str("no complete epoch yet: a restart starts from the beginning\n"),
    }
    Ok(out)
}

/// Current wall-clock time in ms since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A position written before inodes were kept reads with inode 0 (unknown), and one
    /// of this build reads as written.
    #[test]
    fn stored_positions_of_both_layouts_decode() {
        let before = SourcePositionV1 {
            offset: 4096,
            line: 17,
            head_len: 4096,
            head_crc: 7,
            tail_len: 4096,
            tail_crc: 9,
        };
        let read = SourcePosition::decode_stored(&codec::encode(&before)).unwrap();
        assert_eq!(
            (read.offset, read.line, read.tail_crc, read.ino),
            (4096, 17, 9, 0)
        );
        let now = SourcePosition { ino: 42, ..read };
        assert_eq!(
            SourcePosition::decode_stored(&codec::encode(&now)).unwrap(),
            now
        );
        assert!(SourcePosition::decode_stored(b"TRB1garbage").is_err());
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pane(start: Time) -> Pane {
        Pane {
            start,
            end: start + 10,
        }
    }

    fn part(epoch: Epoch, worker: usize) -> Part {
        Part {
            generation: 1,
            epoch,
            worker,
            emitted: vec![],
            puts: 0,
            deletes: 0,
        }
    }

    fn commit(epoch: Epoch) -> Commit {
        Commit {
            generation: 1,
            epoch,
            workers: 2,
            processes: 1,
            max_seen: vec![100, 200],
            out_offset: Some(7),
            late_offset: None,
            unix_ms: 0,
        }
    }

    fn state(dir: &Path) -> (Epoch, Vec<(String, Pane, i64)>) {
        let r = recover(dir, "df").unwrap().unwrap();
        let panes = r.panes.into_iter().map(|(k, p, s)| (k, p, s.n)).collect();
        (r.commit.unwrap().epoch, panes)
    }

    #[test]
    fn incomplete_epochs_are_ignored_and_folding_keeps_the_state() {
        let dir =
            Dir(std::env::temp_dir().join(format!("tributary-ckpt-unit-{}", std::process::id())));
        let store = Store::open(&dir.0, 0, "df").unwrap();
        let s = |n: usize| {
            let mut st = Stats::with_features(1);
            for i in 0..n {
                st.add_row(&[i as f64, 1.0]);
            }
            st
        };
        store
            .write_part(&part(5, 0), &[("a".into(), pane(0), Some(s(1)))])
            .unwrap();
        store
            .write_part(&part(5, 1), &[("b".into(), pane(0), Some(s(2)))])
            .unwrap();
        store.write_commit(&commit(5)).unwrap();
        // Epoch 9: worker 0 wrote its part, worker 1 did not, nothing committed.
        store
            .write_part(
                &part(9, 0),
                &[
                    ("a".into(), pane(0), None),
                    ("c".into(), pane(10), Some(s(3))),
                ],
            )
            .unwrap();
        drop(store);
        let expected = vec![("a".to_owned(), pane(0), 1), ("b".to_owned(), pane(0), 2)];
        assert_eq!(state(&dir.0), (5, expected));

        // Once epoch 9 is complete, its changes count; folding does not change the state.
        let store = Store::open(&dir.0, 0, "df").unwrap();
        store.write_part(&part(9, 1), &[]).unwrap();
        store.write_commit(&commit(9)).unwrap();
        store.fold(1, 0, 9).unwrap();
        store.fold(1, 1, 9).unwrap();
        drop(store);
        let expected = vec![("b".to_owned(), pane(0), 2), ("c".to_owned(), pane(10), 3)];
        assert_eq!(state(&dir.0), (9, expected));

        // Another dataflow is refused.
        assert!(matches!(
            recover(&dir.0, "other"),
            Err(CheckpointError::Fingerprint { .. })
        ));
        assert!(matches!(
            Store::open(&dir.0, 0, "other"),
            Err(CheckpointError::Fingerprint { .. })
        ));
    }

    #[test]
    fn stores_of_another_generation_missing_or_locked_are_refused_by_name() {
        let dir =
            Dir(std::env::temp_dir().join(format!("tributary-ckpt-mix-{}", std::process::id())));
        let part_of = |generation, worker| Part {
            generation,
            ..part(5, worker)
        };
        // Generation 2 of a 2-process run: process 0 holds worker 0's part and the
        // commit; process 1's store holds only generation 1 (a stale copy).
        let first = Store::open(&dir.0, 0, "df").unwrap();
        first.write_part(&part_of(2, 0), &[]).unwrap();
        first
            .write_commit(&Commit {
                generation: 2,
                processes: 2,
                ..commit(5)
            })
            .unwrap();
        drop(first);
        let second = Store::open(&dir.0, 1, "df").unwrap();
        second.write_part(&part_of(1, 1), &[]).unwrap();
        // A second writer of the same store, even in this process, is refused by name.
        let locked = Store::open(&dir.0, 1, "df").err().expect("refused");
        assert!(matches!(locked, CheckpointError::Locked { .. }), "{locked}");
        let message = locked.to_string();
        assert!(message.contains("in use by another process"), "{message}");
        assert!(message.contains("process-1/LOCK"), "{message}");
        drop(second);
        let message = recover(&dir.0, "df").expect_err("refused").to_string();
        for part in [
            "process-1: the store of process 1 holds generation 1, not generation 2",
            "it is older",
        ] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
        // A newer one names process 0's store as the stale one.
        let second = Store::open(&dir.0, 1, "df").unwrap();
        second.write_part(&part_of(3, 1), &[]).unwrap();
        drop(second);
        let message = recover(&dir.0, "df").expect_err("refused").to_string();
        assert!(message.contains("holds generations 1 to 3"), "{message}");
        assert!(
            message.contains("process-0: that store is the stale one"),
            "{message}"
        );
        // The right one is read.
        let second = Store::open(&dir.0, 1, "df").unwrap();
        second.write_part(&part_of(2, 1), &[]).unwrap();
        drop(second);
        assert_eq!(state(&dir.0), (5, vec![]));
        // A missing store of the checkpoint: the shared directory is not shared.
        std::fs::remove_dir_all(process_dir(&dir.0, 1)).unwrap();
        let message = recover(&dir.0, "df").expect_err("refused").to_string();
        assert!(
            message.contains("the store of process 1 does not exist here"),
            "{message}"
        );
        assert!(message.contains("directory all of them share"), "{message}");
        // Process 1 with its store but without process 0's: not started over.
        Store::open(&dir.0, 1, "df").unwrap();
        std::fs::remove_dir_all(process_dir(&dir.0, 0)).unwrap();
        assert!(recover(&dir.0, "df").unwrap().is_none());
        let message = Store::open(&dir.0, 1, "df")
            .err()
            .expect("refused")
            .to_string();
        assert!(
            message.contains("process 0's store") && message.contains("does not exist here"),
            "{message}"
        );
    }

    #[test]
    fn verify_names_a_missing_part_and_a_store_without_identity_is_refused() {
        let dir =
            Dir(std::env::temp_dir().join(format!("tributary-ckpt-verify-{}", std::process::id())));
        let store = Store::open(&dir.0, 0, "df").unwrap();
        store.write_part(&part(5, 0), &[]).unwrap();
        store.write_commit(&commit(5)).unwrap();
        drop(store);
        let report = verify::verify(&dir.0).unwrap();
        assert!(report.is_damaged(), "{}", report.text);
        assert!(
            report.damage[0].contains("worker 1's part of committed epoch 5"),
            "{:?}",
            report.damage
        );
        assert!(report.older.is_none());
        assert!(matches!(
            recover(&dir.0, "df"),
            Err(CheckpointError::Incomplete { .. })
        ));

        // Once the part is there, the chain is intact.
        let store = Store::open(&dir.0, 0, "df").unwrap();
        store.write_part(&part(5, 1), &[]).unwrap();
        // Without its identity record, the store is damaged: not started over.
        store.db.delete(keys::META).unwrap();
        drop(store);
        for error in [
            Store::open(&dir.0, 0, "df").err(),
            recover(&dir.0, "df").err(),
        ] {
            let message = error.expect("refused").to_string();
            assert!(message.contains("identity record"), "{message}");
            assert!(message.contains("is damaged"), "{message}");
        }
        let report = verify::verify(&dir.0).unwrap();
        assert_eq!(report.damage.len(), 1, "{}", report.text);
        assert!(report.damage[0].contains("identity record"));
    }
}
