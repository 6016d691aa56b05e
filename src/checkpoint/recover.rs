//! Recovery: the state at the newest complete checkpoint, read from every process's
//! store, and the refusals that keep a restart from mixing stores of different runs.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::CheckpointError;
use super::keys;
use super::records::{Commit, Part, Recovered};
use super::store::{Replay, Store, process_dir};
use crate::stats::Stats;
use crate::types::Epoch;
use crate::window::Pane;

impl Store {
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
        self.each_delta(generation, worker, from, epoch, |_, pane, stats| {
            match stats {
                Some(s) => panes.insert(pane, s),
                None => panes.remove(&pane),
            };
        })?;
        self.get::<Part>(&keys::part(generation, epoch, worker))?
            .ok_or_else(|| CheckpointError::Incomplete {
                path: self.path.display().to_string(),
                message: format!(
                    "epoch {epoch} is committed but worker {worker}'s part of it is missing"
                ),
            })
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
