//! One process's RocksDB store: opening it (and what a damaged write-ahead log allows),
//! the reads and synced writes every record goes through, and the checkpoint's own
//! writes: workers' parts, commits, folding deltas into the base, retiring generations.

use std::path::{Path, PathBuf};

use rocksdb::{
    DB, DBRecoveryMode, ErrorKind, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};
use serde::de::DeserializeOwned;

use super::codec::{self, CodecError};
use super::error::CheckpointError;
use super::keys;
use super::records::{Commit, Meta, Part};
use crate::key::Key;
use crate::stats::Stats;
use crate::types::Epoch;
use crate::window::Pane;

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

/// A raw key and value.
pub(super) type Entry = (Box<[u8]>, Box<[u8]>);

/// One process's RocksDB store (`DIR/process-P`).
pub struct Store {
    pub(super) db: DB,
    pub(super) path: PathBuf,
    /// What opening found in the write-ahead log (an incomplete last record, or the
    /// damage before which it stopped), if anything.
    wal_note: Option<String>,
}

/// The store directory of process `process` under `dir`.
pub fn process_dir(dir: &Path, process: usize) -> PathBuf {
    dir.join(format!("process-{process}"))
}

impl Store {
    pub(super) fn options(mode: DBRecoveryMode) -> Options {
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

    pub(super) fn err(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// A failed durable write, named.
    pub(super) fn write_err(
        &self,
        what: impl Into<String>,
        e: impl std::fmt::Display,
    ) -> CheckpointError {
        CheckpointError::Write {
            path: self.path.display().to_string(),
            what: what.into(),
            message: e.to_string(),
        }
    }

    /// Refuses a store of another dataflow, and a store with data but no identity record.
    pub(super) fn check_identity(&self, dataflow: &str) -> Result<(), CheckpointError> {
        match self.meta()? {
            Some(meta) => self.check(&meta, dataflow),
            None => self.refuse_without_identity(),
        }
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

    pub(super) fn decode<T: DeserializeOwned>(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<T, CheckpointError> {
        codec::decode(value).map_err(|error| CheckpointError::Corrupt {
            path: self.path.display().to_string(),
            key: keys::printable(key),
            error,
        })
    }

    pub(super) fn get<T: DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, CheckpointError> {
        match self.db.get(key).map_err(|e| Self::err(&self.path, e))? {
            Some(v) => self.decode(key, &v).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn put_sync(&self, key: &[u8], value: &[u8]) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        batch.put(key, value);
        self.write(batch)
    }

    pub(super) fn write(&self, batch: WriteBatch) -> Result<(), CheckpointError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| Self::err(&self.path, e))
    }

    /// Every `(key, value)` under `prefix`, in key order.
    pub(super) fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, CheckpointError> {
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
        self.each_delta(
            generation,
            worker,
            from,
            through,
            |k, (key, pane), stats| {
                let base = keys::base(generation, worker, &key, pane);
                match stats {
                    Some(s) => batch.put(base, codec::encode(&s)),
                    None => batch.delete(base),
                }
                batch.delete(k);
            },
        )?;
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

    /// Visits worker `worker`'s deltas of `generation` in epochs `from..=through`, in key
    /// order: `visit(stored key, (key, pane), statistics, or None for a pane deleted)`.
    pub(super) fn each_delta(
        &self,
        generation: u64,
        worker: usize,
        from: Epoch,
        through: Epoch,
        mut visit: impl FnMut(&[u8], (String, Pane), Option<Stats>),
    ) -> Result<(), CheckpointError> {
        let start = keys::delta_prefix(generation, from, worker);
        let end = keys::delta_prefix(generation, through + 1, 0);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(end);
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
            let pane = keys::parse_pane(&k[21..]).ok_or_else(|| self.bad_key(&k))?;
            visit(&k, pane, self.decode(&k, &v)?);
        }
        Ok(())
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

    pub(super) fn bad_key(&self, k: &[u8]) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.path.display().to_string(),
            key: keys::printable(k),
            error: CodecError::Payload("malformed key".into()),
        }
    }
}
