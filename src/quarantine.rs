//! Crashes: a panic in the engine ends the process loudly, and a source batch that crashed
//! it twice is set aside on the next start instead of crashing it forever.
//!
//! [`install`] sets a panic hook for the run (the process's hook is set once; each run's
//! state — its crashes, its fatal-error hook, whether it failed — lasts while the
//! [`Installed`] guard it returns is held, and a panic outside a run goes to the hook
//! that was there before). A panic on any thread but the HTTP server's
//! (whose tokio runtime drops the one request) prints `error: thread '…' panicked at
//! FILE:LINE: MESSAGE`, marks the process failed (`/healthz` answers 503 from then on),
//! and hands the run's fatal-error hook exit code [`EXIT_PANIC`] (the `tributary`
//! command's hook ends the process with it), so a supervisor restarts it and the other
//! processes of a cluster stop too (their connections to it close). Timely would
//! otherwise leave the other workers waiting for the dead one forever.
//!
//! With `--checkpoint`, the hook also records a worker's crash in `DIR/crashes-pP.json`
//! (process `P`): the newest source batch this process had begun to read, and the
//! message. A lost peer process (timely's network threads panic when a connection
//! breaks) is not held against any batch. A restart replays every batch after the last commit, so a batch that makes
//! the engine panic would crash it on every start. When two recorded crashes name the
//! same batch, the next start sets that batch aside: its records go to the dead-letter
//! output (`--late-out`) with reason `quarantined`, are counted, and are not folded into
//! any window. The batch named is exact for a fault while a batch is read and folded
//! (parsing, the combiner); for a fault later in the dataflow it is the newest batch
//! read at the time, which is where a poison record of a live source is found, since
//! each request or chunk is its own batch.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock};

use serde::{Deserialize, Serialize};

use crate::types::{Fatal, OnFatal, fatal};

/// The exit code of a process ended by a panic (`EX_SOFTWARE`).
pub const EXIT_PANIC: i32 = 70;

/// The exit code of a process of a cluster that lost its connection to another process
/// (timely's network threads panic when a peer's socket closes): a consequence of the
/// other process's failure, not a fault of its own (`EX_TEMPFAIL`).
pub const EXIT_PEER_LOST: i32 = 75;

/// Crashes recorded on the same batch before it is set aside.
pub const CRASHES_TO_QUARANTINE: usize = 2;

/// Recorded crashes kept per process (the oldest are dropped).
const KEEP: usize = 32;

/// One recorded crash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Crash {
    /// The newest source batch the process had begun to read.
    pub batch: u64,
    /// The panic's message and place.
    pub message: String,
    /// When (ms since the Unix epoch).
    pub unix_ms: u64,
}

/// This run's crash bookkeeping (one per process).
pub struct Crashes {
    path: Option<PathBuf>,
    history: Mutex<Vec<Crash>>,
    quarantined: BTreeMap<u64, String>,
    /// The newest batch begun, plus one (0: none yet).
    newest: AtomicU64,
    /// Batches set aside by this run.
    set_aside: AtomicU64,
}

/// The state of the run in progress in this process, if any.
struct Run {
    crashes: Arc<Crashes>,
    on_fatal: OnFatal,
    /// Why the run failed, once a thread has panicked.
    failed: Option<String>,
}

static RUN: RwLock<Option<Run>> = RwLock::new(None);
static HOOK: Once = Once::new();

fn run_state() -> std::sync::RwLockReadGuard<'static, Option<Run>> {
    RUN.read().unwrap_or_else(|e| e.into_inner())
}

impl Crashes {
    fn load(dir: Option<&Path>, process: usize, committed: Option<u64>) -> Result<Self, String> {
        let path = dir.map(|d| d.join(format!("crashes-p{process}.json")));
        let mut history: Vec<Crash> = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            _ => Vec::new(),
        };
        // A committed batch is never replayed: its crashes are history.
        history.retain(|c| committed.is_none_or(|e| c.batch > e));
        let mut counts: BTreeMap<u64, (usize, &str)> = BTreeMap::new();
        for c in &history {
            let entry = counts.entry(c.batch).or_insert((0, &c.message));
            entry.0 += 1;
        }
        let quarantined = counts
            .into_iter()
            .filter(|(_, (n, _))| *n >= CRASHES_TO_QUARANTINE)
            .map(|(batch, (n, message))| (batch, format!("{n} crashes, last: {message}")))
            .collect();
        Ok(Crashes {
            path,
            history: Mutex::new(history),
            quarantined,
            newest: AtomicU64::new(0),
            set_aside: AtomicU64::new(0),
        })
    }

    fn record(&self, message: &str) {
        let Some(path) = &self.path else { return };
        let Some(batch) = self.newest.load(Ordering::SeqCst).checked_sub(1) else {
            return;
        };
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.push(Crash {
            batch,
            message: message.to_owned(),
            unix_ms: crate::checkpoint::unix_ms(),
        });
        let excess = history.len().saturating_sub(KEEP);
        history.drain(..excess);
        let write = || -> std::io::Result<()> {
            let tmp = path.with_extension("json.tmp");
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(&*history).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        match write() {
            Ok(()) => tracing::error!(
                "crash recorded against source batch {batch} in {}",
                path.display()
            ),
            Err(e) => tracing::error!("recording the crash in {}: {e}", path.display()),
        }
    }
}

/// Installs the panic hook and loads the crashes recorded in `dir` (the checkpoint
/// directory, if any) by process `process`; `committed` is the epoch the run resumes
/// after. Call once per run, before the workers start, and hold the returned guard until
/// the run ends: dropping it ends the run's hold on panics (a later panic goes to the hook
/// that was installed before the first run), so a second run in the same process gets
/// its own crashes and hook, not the first one's. One run at a time per process: a run
/// installed while another's guard is held takes the panics over, until either guard drops.
///
/// The panic hook logs a panic (and records it against the batch being read) and then
/// hands `on_fatal` a [`Fatal`]: exit code [`EXIT_PEER_LOST`] for a lost peer process,
/// [`EXIT_PANIC`] (with the panic's thread, place and message) for any other. It is
/// called inside the panic hook, so it must not panic itself (that aborts the process).
pub fn install(
    dir: Option<&Path>,
    process: usize,
    committed: Option<u64>,
    on_fatal: OnFatal,
) -> Result<Installed, String> {
    let crashes = Crashes::load(dir, process, committed)?;
    for (batch, why) in &crashes.quarantined {
        tracing::warn!("source batch {batch} is set aside (quarantined): {why}");
    }
    *RUN.write().unwrap_or_else(|e| e.into_inner()) = Some(Run {
        crashes: Arc::new(crashes),
        on_fatal,
        failed: None,
    });
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed");
            let run = run_state()
                .as_ref()
                .map(|r| (Arc::clone(&r.crashes), r.on_fatal));
            let Some((crashes, on_fatal)) = run.filter(|_| name != "serve") else {
                // Outside a run, or the HTTP server (whose runtime drops the request
                // whose handler panicked): as before the run.
                previous(info);
                return;
            };
            panicked(info, name, &crashes, on_fatal);
        }));
    });
    Ok(Installed(()))
}

/// The current run's hold on panics ([`install`]); dropping it ends the run's.
#[must_use = "the run's panic handling lasts while this guard is held"]
pub struct Installed(());

impl Drop for Installed {
    fn drop(&mut self) {
        *RUN.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// What the hook does with a panic during a run.
fn panicked(
    info: &std::panic::PanicHookInfo<'_>,
    name: &str,
    crashes: &Crashes,
    on_fatal: OnFatal,
) {
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    let place = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let message = format!("thread '{name}' panicked at {place}: {payload}");
    if let Some(run) = RUN.write().unwrap_or_else(|e| e.into_inner()).as_mut() {
        run.failed.get_or_insert_with(|| message.clone());
    }
    if name.starts_with("timely:recv") || name.starts_with("timely:send") {
        fatal!(
            on_fatal,
            EXIT_PEER_LOST,
            "lost the connection to another process of the cluster ({payload}); \
             stopping (exit {EXIT_PEER_LOST})"
        );
    }
    tracing::error!("{message}");
    // Only a worker's own fault is held against a batch: not a peer process lost (the
    // network threads' "timely communication error", and the workers' "MergeQueue
    // poisoned" that follows it), nor a source thread's.
    if name.starts_with("timely:work") && !payload.contains("MergeQueue") {
        crashes.record(&message);
    }
    tracing::error!("the engine failed; stopping (exit {EXIT_PANIC})");
    on_fatal(Fatal::new(EXIT_PANIC, message));
}

/// Notes that this process begins to read source batch `batch`, and says whether the
/// batch is quarantined (to be set aside instead of read into the windows).
#[inline]
pub fn begin_batch(batch: u64) -> bool {
    let run = run_state();
    let Some(crashes) = run.as_ref().map(|r| &r.crashes) else {
        return false;
    };
    crashes.newest.fetch_max(batch + 1, Ordering::SeqCst);
    if crashes.quarantined.contains_key(&batch) {
        crashes.set_aside.fetch_add(1, Ordering::Relaxed);
        true
    } else {
        false
    }
}

/// Batches set aside as quarantined by this process's run.
pub fn batches_set_aside() -> u64 {
    run_state()
        .as_ref()
        .map_or(0, |r| r.crashes.set_aside.load(Ordering::Relaxed))
}

/// Why the run failed, once a thread of it has panicked.
pub fn failure() -> Option<String> {
    run_state().as_ref().and_then(|r| r.failed.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_crashes_on_a_batch_quarantine_it_until_it_is_committed() {
        let dir = std::env::temp_dir().join(format!("tributary-crashes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let crashes = Crashes::load(Some(&dir), 0, None).unwrap();
        crashes.newest.store(8, Ordering::SeqCst); // batch 7 begun
        crashes.record("boom");
        let again = Crashes::load(Some(&dir), 0, None).unwrap();
        assert!(again.quarantined.is_empty(), "one crash is not enough");
        again.newest.store(8, Ordering::SeqCst);
        again.record("boom");
        let third = Crashes::load(Some(&dir), 0, Some(3)).unwrap();
        assert_eq!(third.quarantined.keys().copied().collect::<Vec<_>>(), [7]);
        assert!(third.quarantined[&7].contains("2 crashes"));
        // Once batch 7 is committed its crashes no longer count.
        assert!(
            Crashes::load(Some(&dir), 0, Some(7))
                .unwrap()
                .quarantined
                .is_empty()
        );
        // Another process's file is its own.
        assert!(
            Crashes::load(Some(&dir), 1, None)
                .unwrap()
                .quarantined
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
