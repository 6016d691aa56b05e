//! `tributary checkpoint inspect DIR`: what every store holds, for people.

use std::path::Path;

use super::error::CheckpointError;
use super::keys;
use super::records::{Commit, Part};
use super::store::{Entry, Store, process_dir};

impl Store {
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
