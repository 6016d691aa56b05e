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
//!
//! Storage only, by concept: `keys` (the key layout), `records` (what a store keeps),
//! `store` (opening a store; parts, commits, folding), `log` (the ingest log and the
//! served-model cache), `recover`, `inspect`, `verify`, `codec` (the value envelope),
//! `error`; `coordinator` decides when worker 0 commits.

pub mod codec;
pub mod coordinator;
mod error;
mod inspect;
mod keys;
mod log;
mod records;
mod recover;
mod store;
pub mod verify;

pub use codec::{CodecError, FORMAT_VERSION};
pub use error::CheckpointError;
pub use inspect::inspect;
pub use records::{Commit, LogEntry, Meta, Part, ProvisionalWindow, Recovered, SourcePosition};
pub use recover::{recover, recover_from};
pub use store::{Replay, Store, process_dir};

pub use crate::types::Epoch;

/// Exit code of a run stopped because a checkpoint write failed (a part, a commit, a fold,
/// the output sync): the state on disk is the last complete checkpoint, and a restart
/// resumes from it.
pub const EXIT_WRITE_FAILED: i32 = 3;

/// Exit code of a run that refuses its checkpoint directory at start (damaged, identity
/// record missing, another dataflow's, unreadable), and of `tributary checkpoint verify`
/// when it finds damage.
pub const EXIT_REFUSED: i32 = 4;

/// Current wall-clock time in ms since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
