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
//!
//! Bincode does not skip missing fields, so a value whose layout grew is decoded here in
//! the layouts of earlier builds too: [`ModelLine::decode_stored`] (served models).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::messages::ModelLine;
use crate::model::Status;
use crate::window::Time;

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

/// The layout of [`ModelLine`] before `closed_by`, as stores written by earlier builds
/// hold their served models (bincode does not skip missing fields).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ModelLineV1 {
    key: String,
    window_start: Time,
    window_end: Time,
    n: i64,
    coef: Option<Vec<f64>>,
    r2: Option<f64>,
    rmse: Option<f64>,
    cond: Option<f64>,
    status: Status,
    is_final: bool,
    revision: u32,
}

impl ModelLine {
    /// Decodes a model kept in a checkpoint store, of this build's layout or the one
    /// before `closed_by`.
    pub fn decode_stored(bytes: &[u8]) -> Result<ModelLine, CodecError> {
        decode::<ModelLine>(bytes).or_else(|e| {
            let v1: ModelLineV1 = decode(bytes).map_err(|_| e)?;
            Ok(ModelLine {
                key: v1.key,
                window_start: v1.window_start,
                window_end: v1.window_end,
                n: v1.n,
                coef: v1.coef,
                r2: v1.r2,
                rmse: v1.rmse,
                cond: v1.cond,
                status: v1.status,
                is_final: v1.is_final,
                revision: v1.revision,
                closed_by: None,
            })
        })
    }
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

    /// A served model kept by an earlier build (without `closed_by`) still decodes.
    #[test]
    fn stored_models_of_the_layout_before_closed_by_decode() {
        use super::{ModelLine, ModelLineV1, Status};
        let old = ModelLineV1 {
            key: "k".into(),
            window_start: 0,
            window_end: 10,
            n: 3,
            coef: Some(vec![1.0, 2.0]),
            r2: Some(0.5),
            rmse: Some(0.1),
            cond: Some(1.0),
            status: Status::Ok,
            is_final: true,
            revision: 2,
        };
        let bytes = encode(&old);
        let line = ModelLine::decode_stored(&bytes).unwrap();
        assert_eq!((line.key.as_str(), line.n, line.revision), ("k", 3, 2));
        assert_eq!(line.closed_by, None);
        let mut now = line.clone();
        now.closed_by = Some("idle".into());
        let bytes = encode(&now);
        assert_eq!(ModelLine::decode_stored(&bytes).unwrap(), now);
        assert!(ModelLine::decode_stored(b"TRB1garbage").is_err());
    }
}
