//! The envelope of every value in the checkpoint store: versioned and checksummed.
//!
//! ```text
//! ┌──────────┬──────────────┬──────────────┬─────────────────────────┐
//! │ "TRB1"   │ version u16  │ crc32 u32    │ payload (bincode, serde) │
//! │ 4 bytes  │ little endian│ of payload   │                          │
//! └──────────┴──────────────┴──────────────┴─────────────────────────┘
//! ```
//!
//! Decoding checks the magic, refuses a newer version, verifies the checksum, and only
//! then deserializes with serde (bounded by the payload length): corrupted or truncated
//! bytes give an error, never undefined behaviour.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Magic bytes at the start of every value.
pub const MAGIC: &[u8; 4] = b"TRB1";

/// The format version this build writes (and the newest it reads).
pub const FORMAT_VERSION: u16 = 1;

const HEADER: usize = 4 + 2 + 4;

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Too short to hold the header.
    #[error("value truncated ({0} bytes)")]
    Truncated(usize),
    /// Not written by Tributary.
    #[error("bad magic bytes")]
    Magic,
    /// Written by a newer Tributary.
    #[error("format version {0} is newer than this build's {FORMAT_VERSION}")]
    Version(u16),
    /// The bytes changed after they were written.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Stored checksum.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// The payload does not decode.
    #[error("payload does not decode: {0}")]
    Payload(String),
}

/// Encodes a value in the envelope.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let payload = bincode::serialize(value).expect("checkpoint values serialize");
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a value from the envelope, checking magic, version and checksum.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < HEADER {
        return Err(CodecError::Truncated(bytes.len()));
    }
    if &bytes[..4] != MAGIC {
        return Err(CodecError::Magic);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version > FORMAT_VERSION {
        return Err(CodecError::Version(version));
    }
    let stored = u32::from_le_bytes(bytes[6..10].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    bincode::deserialize(payload).map_err(|e| CodecError::Payload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    #[test]
    fn round_trips_and_detects_damage() {
        let stats = Stats::of_row(&[1.0, 2.0, 3.0]);
        let bytes = encode(&stats);
        assert_eq!(decode::<Stats>(&bytes), Ok(stats));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode::<Stats>(&flipped),
            Err(CodecError::Checksum { .. })
        ));
        assert_eq!(decode::<Stats>(&bytes[..7]), Err(CodecError::Truncated(7)));
        let mut newer = bytes.clone();
        newer[4] = 9;
        assert_eq!(decode::<Stats>(&newer), Err(CodecError::Version(9)));
        assert_eq!(decode::<Stats>(b"XXXX0000000000"), Err(CodecError::Magic));
    }
}
