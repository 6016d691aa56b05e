//! `tributary bench`: the real engine, measured end to end.
//!
//! `bench throughput` runs `tributary run` as child processes (one per configuration, so
//! each has its own peak RSS), on the generator and on a CSV file of the same stream, with
//! the requested worker counts and a 2-process loopback cluster, and reports records/s in
//! total and per worker. Ratios between rows come from one invocation, on one machine.
//!
//! One file per measure: `throughput`, `checkpoint` (the store's parts and recovery),
//! `incremental` (updating a window's model against recomputing it), `memory` (resident
//! set over a run, and over many keys), `keys` (the engine against the number of keys).
//! `engine` starts engine processes and reads their `done:` line.

mod checkpoint;
mod engine;
mod incremental;
mod keys;
mod memory;
mod throughput;

pub use checkpoint::{CheckpointRow, checkpoint, checkpoint_table};
pub use engine::{RunSummary, parse_summary};
pub use incremental::{IncrementalRow, incremental, incremental_table};
pub use keys::{KeysRow, KeysSettings, keys, keys_table};
pub use memory::{
    ManyKeysMemory, MemoryRun, many_keys_table, memory, memory_many_keys, memory_table,
};
pub use throughput::{ThroughputRow, ThroughputSettings, throughput, throughput_table};
