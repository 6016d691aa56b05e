//! The store's two other concerns beside pane checkpoints: the ingest log (live sources'
//! batches, with a followed file's position) and the cache of served models.

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};

use super::error::CheckpointError;
use super::records::{LogEntry, SourcePosition};
use super::store::Store;
use super::{codec, keys};

impl Store {
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

    /// Decodes the ingest log's batches numbered `from` and later, and the followed
    /// file's position: a damaged one is refused here, at start, naming its key.
    pub(super) fn check_ingest(&self, from: u64) -> Result<(), CheckpointError> {
        for (seq, bytes) in self.ingest_batches(from)? {
            self.decode::<crate::record::RecordBatch>(&keys::ingest(seq), &bytes)?;
        }
        self.source_position()?;
        Ok(())
    }
}
