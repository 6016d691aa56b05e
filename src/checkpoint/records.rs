//! The records a store keeps: its identity, commits, workers' parts, a followed file's
//! position, and what recovery reads back.

use serde::{Deserialize, Serialize};

use super::codec;
use crate::stats::Stats;
use crate::types::Epoch;
use crate::window::{Pane, Time};

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

/// A batch of the ingest log: its number and its encoded records.
pub type LogEntry = (u64, Box<[u8]>);

#[cfg(test)]
mod tests {
    use super::*;

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
}
