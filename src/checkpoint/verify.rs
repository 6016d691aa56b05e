//! `tributary checkpoint verify DIR`: every record's checksum, and the chain of commits.
//!
//! For each store `DIR/process-P`: the write-ahead log is replayed strictly (see
//! docs/checkpoint-format.md, "Write-ahead log"); every key is read with RocksDB's block
//! checksums verified, and every value decoded from its envelope (magic, version, CRC-32)
//! as the type its key's tag says. Then the chain: the newest commit names a generation,
//! an epoch and a worker count; every worker's part of that epoch must be present in its
//! process's store, no worker's base may be folded past it, and the ingest log's batches
//! after it are listed (gaps are reported, not counted as damage: a number given to an
//! append that failed or was cut short by a crash was never acknowledged).
//!
//! When the only damage is in a write-ahead log, the writes before the damage are checked
//! the same way: if they hold a complete checkpoint whose chain is intact, the report names
//! it ([`Report::older`]) and `run --resume-from EPOCH` resumes from it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use rocksdb::{DB, DBRecoveryMode, IteratorMode, ReadOptions};
use serde::de::DeserializeOwned;

use super::{
    CheckpointError, Commit, Epoch, Meta, Part, Replay, SourcePosition, Store, keys, process_dir,
};
use crate::messages::ModelLine;
use crate::record::RecordBatch;
use crate::stats::Stats;

/// What `verify` found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// What was checked, one line each, for people.
    pub text: String,
    /// Each damaged record or broken link, naming the store and the key.
    pub damage: Vec<String>,
    /// The newest complete checkpoint found intact (with damage: the one before the
    /// damage, which `run --resume-from` can resume from), if any.
    pub older: Option<Commit>,
}

impl Report {
    /// Whether anything is damaged.
    pub fn is_damaged(&self) -> bool {
        !self.damage.is_empty()
    }
}

/// What one store holds, as read.
#[derive(Default)]
struct Scan {
    records: u64,
    bytes: u64,
    counts: BTreeMap<char, u64>,
    meta: bool,
    commits: Vec<Commit>,
    parts: BTreeSet<(u64, Epoch, usize)>,
    folded: BTreeMap<(u64, usize), Epoch>,
    /// Newest delta epoch of each (generation, worker).
    deltas: BTreeMap<(u64, usize), Epoch>,
    generations: BTreeSet<u64>,
    ingest: Vec<u64>,
    damage: Vec<String>,
}

impl Scan {
    fn read(store: &Store) -> Scan {
        let mut scan = Scan::default();
        let mut options = ReadOptions::default();
        options.set_verify_checksums(true);
        options.fill_cache(false);
        let path = store.path.display().to_string();
        for item in store.db.iterator_opt(IteratorMode::Start, options) {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    scan.damage.push(format!(
                        "{path}: table data unreadable after {} records: {e}",
                        scan.records
                    ));
                    break;
                }
            };
            scan.records += 1;
            scan.bytes += (k.len() + v.len()) as u64;
            if let Err(why) = scan.record(&k, &v) {
                scan.damage
                    .push(format!("{path}: key {}: {why}", keys::printable(&k)));
            }
        }
        scan
    }

    /// Checks one record: its key's shape, and its value decoded as the tag says.
    fn record(&mut self, k: &[u8], v: &[u8]) -> Result<(), String> {
        fn decode<T: DeserializeOwned>(v: &[u8]) -> Result<T, String> {
            super::codec::decode(v).map_err(|e| e.to_string())
        }
        let tag = *k.first().ok_or("empty key")?;
        *self.counts.entry(tag as char).or_default() += 1;
        let bad_key = || Err::<(), String>("malformed key".into());
        let worker = |at: usize| u32::from_be_bytes(k[at..at + 4].try_into().expect("4")) as usize;
        match tag {
            b'M' if k.len() == 1 => {
                decode::<Meta>(v)?;
                self.meta = true;
            }
            b'C' if k.len() == 17 => {
                let c: Commit = decode(v)?;
                if (c.generation, c.epoch) != (keys::u64_at(k, 1), keys::u64_at(k, 9)) {
                    return Err(format!(
                        "commit of generation {} epoch {} stored under another key",
                        c.generation, c.epoch
                    ));
                }
                self.generations.insert(c.generation);
                self.commits.push(c);
            }
            b'P' if k.len() == 21 => {
                let p: Part = decode(v)?;
                let key = (keys::u64_at(k, 1), keys::u64_at(k, 9), worker(17));
                if (p.generation, p.epoch, p.worker) != key {
                    return Err(format!(
                        "part of generation {} epoch {} worker {} stored under another key",
                        p.generation, p.epoch, p.worker
                    ));
                }
                self.generations.insert(p.generation);
                self.parts.insert(key);
            }
            b'D' if k.len() > 21 => {
                keys::parse_pane(&k[21..]).ok_or("malformed key")?;
                decode::<Option<Stats>>(v)?;
                let (generation, epoch) = (keys::u64_at(k, 1), keys::u64_at(k, 9));
                self.generations.insert(generation);
                let newest = self.deltas.entry((generation, worker(17))).or_default();
                *newest = (*newest).max(epoch);
            }
            b'B' if k.len() > 13 => {
                keys::parse_pane(&k[13..]).ok_or("malformed key")?;
                decode::<Stats>(v)?;
                self.generations.insert(keys::u64_at(k, 1));
            }
            b'F' if k.len() == 13 => {
                let through: Epoch = decode(v)?;
                let generation = keys::u64_at(k, 1);
                self.generations.insert(generation);
                self.folded.insert((generation, worker(9)), through);
            }
            b'I' if k.len() == 9 => {
                decode::<RecordBatch>(v)?;
                self.ingest.push(keys::u64_at(k, 1));
            }
            b'S' if k.len() == 1 => {
                SourcePosition::decode_stored(v).map_err(|e| e.to_string())?;
            }
            b'L' => {
                ModelLine::decode_stored(v).map_err(|e| e.to_string())?;
            }
            b'M' | b'C' | b'P' | b'D' | b'B' | b'F' | b'I' | b'S' => return bad_key(),
            _ => return Err("unknown key tag".into()),
        }
        Ok(())
    }
}

/// Checks every store under `dir` (see the module documentation). `Err` only when `dir`
/// holds no store or one cannot be read for another reason than damage (e.g. I/O).
pub fn verify(dir: &Path) -> Result<Report, CheckpointError> {
    let mut stores = 0;
    while process_dir(dir, stores).join("CURRENT").exists() {
        stores += 1;
    }
    if stores == 0 {
        return Err(CheckpointError::Incomplete {
            path: dir.display().to_string(),
            message: "no checkpoint store here".into(),
        });
    }
    let mut report = Report::default();
    let mut out = String::new();
    // Damage of write-ahead logs (the scans then see the writes before it), and of records.
    let mut wal_damage = Vec::new();
    let mut scans: Vec<Option<Scan>> = Vec::new();
    let mut lost_batches: Vec<u64> = Vec::new();
    for process in 0..stores {
        let path = process_dir(dir, process);
        let store = match Store::open_read_only_with(&path, Replay::Strict) {
            Ok(store) => {
                let _ = writeln!(
                    out,
                    "store {}: write-ahead log: {}",
                    path.display(),
                    store.wal_note().unwrap_or("every record intact")
                );
                Some(store)
            }
            Err(CheckpointError::Damaged { message, .. }) => {
                wal_damage.push(format!("{}: {message}", path.display()));
                match Store::open_read_only_with(&path, Replay::BeforeDamage) {
                    Ok(store) => {
                        let _ = writeln!(
                            out,
                            "store {}: DAMAGED: {message}\n  the checks below read the writes before the damage",
                            path.display()
                        );
                        if process == 0 {
                            lost_batches = batches_after_damage(&path, &store);
                        }
                        Some(store)
                    }
                    Err(e) => {
                        let _ = writeln!(
                            out,
                            "store {}: DAMAGED: {message}\n  the writes before the damage cannot be read either: {e}",
                            path.display()
                        );
                        report
                            .damage
                            .push(format!("{}: unreadable: {e}", path.display()));
                        None
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let scan = store.as_ref().map(Scan::read);
        if let Some(scan) = &scan {
            let counts: Vec<String> = scan
                .counts
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "  {} records checked ({} bytes): {}; {}",
                scan.records,
                scan.bytes,
                if counts.is_empty() {
                    "none".to_owned()
                } else {
                    counts.join(", ")
                },
                if scan.damage.is_empty() {
                    "every checksum matches, every value decodes".to_owned()
                } else {
                    format!("{} damaged", scan.damage.len())
                }
            );
            if !scan.meta && scan.records > 0 {
                report.damage.push(format!(
                    "{}: the identity record (key M) is missing, but the store holds {} records",
                    path.display(),
                    scan.records
                ));
            }
            report.damage.extend(scan.damage.iter().cloned());
        }
        scans.push(scan);
    }
    let chain_damage_before = report.damage.len();
    let newest = scans[0].as_ref().and_then(|s| {
        s.commits
            .iter()
            .max_by_key(|c| (c.generation, c.epoch))
            .cloned()
    });
    match &newest {
        None => {
            let _ = writeln!(
                out,
                "chain: no complete checkpoint: a run starts from the beginning"
            );
        }
        Some(c) => chain(c, &scans, dir, &mut report.damage, &mut out),
    }
    let chain_intact = report.damage.len() == chain_damage_before;
    if let Some(s0) = &scans[0] {
        ingest(newest.as_ref().map(|c| c.epoch), s0, &mut out);
    }
    let records_intact = report.damage.is_empty();
    if chain_intact && records_intact {
        report.older = newest.clone();
    }
    report.damage.splice(0..0, wal_damage.iter().cloned());
    if !report.is_damaged() {
        match &newest {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "result: intact; a run resumes from checkpoint epoch {} (generation {})",
                    c.epoch, c.generation
                );
            }
            None => {
                let _ = writeln!(out, "result: intact");
            }
        }
    } else {
        let _ = writeln!(out, "result: DAMAGED ({} problems):", report.damage.len());
        for d in &report.damage {
            let _ = writeln!(out, "  damaged: {d}");
        }
        match (&report.older, wal_damage.is_empty()) {
            (Some(c), false) => {
                let _ = writeln!(
                    out,
                    "an older complete checkpoint is intact: epoch {} (generation {}), in the writes before the damage.\n  `tributary run ... --checkpoint {} --resume-from {}` resumes from it; the writes after the damage are dropped from the store for good (copy the directory first to keep them).",
                    c.epoch,
                    c.generation,
                    dir.display(),
                    c.epoch
                );
                if lost_batches.is_empty() {
                    let _ = writeln!(
                        out,
                        "  no ingest batch is readable after the damage (the damaged record itself may have been one)"
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "  ingest batches written after the damage, lost by resuming from it (besides the damaged record): {}",
                        ranges(&lost_batches)
                    );
                }
            }
            _ => {
                report.older = None;
                let _ = writeln!(
                    out,
                    "no older complete checkpoint is intact (a commit retires the previous one; only a damaged write-ahead log leaves an older state readable)"
                );
            }
        }
    }
    report.text = out;
    Ok(report)
}

/// Checks the links of the newest commit: parts, folds, generations.
fn chain(
    c: &Commit,
    scans: &[Option<Scan>],
    dir: &Path,
    damage: &mut Vec<String>,
    out: &mut String,
) {
    let store = |p: usize| process_dir(dir, p).display().to_string();
    let _ = writeln!(
        out,
        "chain: newest commit: epoch {} of generation {} (workers: {}, processes: {})",
        c.epoch, c.generation, c.workers, c.processes
    );
    if c.workers == 0 || c.processes == 0 || !c.workers.is_multiple_of(c.processes) {
        damage.push(format!(
            "{}: the commit of epoch {} names {} workers in {} processes",
            store(0),
            c.epoch,
            c.workers,
            c.processes
        ));
        return;
    }
    let per_process = c.workers / c.processes;
    let mut missing = 0;
    for worker in 0..c.workers {
        let process = worker / per_process;
        let Some(Some(scan)) = scans.get(process) else {
            damage.push(format!(
                "{}: missing or unreadable, but it holds worker {worker}'s part of committed epoch {}",
                store(process),
                c.epoch
            ));
            missing += 1;
            continue;
        };
        if !scan.parts.contains(&(c.generation, c.epoch, worker)) {
            damage.push(format!(
                "{}: worker {worker}'s part of committed epoch {} (key P gen {} epoch {} worker {worker}) is missing",
                store(process),
                c.epoch,
                c.generation,
                c.epoch
            ));
            missing += 1;
        }
        if let Some(&f) = scan.folded.get(&(c.generation, worker))
            && f > c.epoch
        {
            damage.push(format!(
                "{}: worker {worker}'s base is folded through epoch {f}, past the committed epoch {}",
                store(process),
                c.epoch
            ));
            missing += 1;
        }
        if let Some(&d) = scan.deltas.get(&(c.generation, worker))
            && d > c.epoch
        {
            let _ = writeln!(
                out,
                "  worker {worker}: deltas through epoch {d}, after the commit: an incomplete checkpoint, ignored by recovery"
            );
        }
    }
    if missing == 0 {
        let _ = writeln!(
            out,
            "  parts of all {} workers present; no base folded past epoch {}",
            c.workers, c.epoch
        );
    }
    for (process, scan) in scans.iter().enumerate() {
        let Some(scan) = scan else { continue };
        for &g in &scan.generations {
            if g > c.generation {
                let _ = writeln!(
                    out,
                    "  {}: generation {g}: leftovers of a run that never committed (deleted at the next start)",
                    store(process)
                );
            } else if g < c.generation {
                let _ = writeln!(
                    out,
                    "  {}: generation {g}: the previous generation, deleted once generation {}'s first commit is folded",
                    store(process),
                    c.generation
                );
            }
        }
    }
}

/// Lists the ingest log's batches after the commit of `epoch`, or all without a commit
/// (process 0).
fn ingest(epoch: Option<Epoch>, scan: &Scan, out: &mut String) {
    let first = epoch.map_or(0, |e| e + 1);
    let after_what = match epoch {
        Some(e) => format!("after epoch {e}"),
        None => "(no commit yet)".to_owned(),
    };
    let covered = scan.ingest.iter().filter(|&&s| s < first).count();
    let after: Vec<u64> = scan
        .ingest
        .iter()
        .copied()
        .filter(|&s| s >= first)
        .collect();
    if covered > 0 {
        let _ = writeln!(
            out,
            "ingest log: {covered} batches covered by the commit, not deleted yet (a crash between the commit and the truncation)"
        );
    }
    let Some(&last) = after.last() else {
        let _ = writeln!(out, "ingest log: no batch {after_what}");
        return;
    };
    let gaps: Vec<u64> = (first..last)
        .filter(|s| after.binary_search(s).is_err())
        .collect();
    let _ = writeln!(
        out,
        "ingest log: batches {} {after_what} ({} batches){}",
        ranges(&after),
        after.len(),
        if gaps.is_empty() {
            ", contiguous".to_owned()
        } else {
            format!(
                "; numbers without a batch: {} (appends that failed or were cut short by a crash: never acknowledged; they are read as empty)",
                ranges(&gaps)
            )
        }
    );
}

/// Ingest batches readable past the damage of process 0's write-ahead log (replaying it
/// skipping damaged records) that the writes before the damage do not hold.
fn batches_after_damage(path: &Path, before: &Store) -> Vec<u64> {
    let Ok(all) = DB::open_for_read_only(
        &Store::options(DBRecoveryMode::SkipAnyCorruptedRecord),
        path,
        false,
    ) else {
        return Vec::new();
    };
    let seqs = |db: &DB| -> BTreeSet<u64> {
        db.prefix_iterator(b"I")
            .map_while(Result::ok)
            .take_while(|(k, _)| k.first() == Some(&b'I'))
            .filter(|(k, _)| k.len() == 9)
            .map(|(k, _)| keys::u64_at(&k, 1))
            .collect()
    };
    let kept = seqs(&before.db);
    seqs(&all).difference(&kept).copied().collect()
}

/// `1..3, 7, 9..12`.
fn ranges(seqs: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] == seqs[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            seqs[i].to_string()
        } else {
            format!("{}..{}", seqs[i], seqs[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}
