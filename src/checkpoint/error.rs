//! What goes wrong with a checkpoint store, named for the person who runs it.

use std::path::Path;

use super::codec::CodecError;

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
    pub(super) fn damaged(path: &Path, message: impl Into<String>) -> CheckpointError {
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
