//! Failpoints: faults that tests inject into a running process through the environment.
//!
//! `TRIBUTARY_FAILPOINTS` holds `;`-separated entries `NAME[(ARG)]=ACTION[*COUNT]`:
//!
//! | part | meaning |
//! |---|---|
//! | `NAME` | the place, e.g. `checkpoint.part`, `checkpoint.commit`, `ingest.append`, `windows.key`, `file.block` (ARG: the block) |
//! | `ARG` | fire only when the place's argument equals it (e.g. a key); any argument if absent |
//! | `ACTION` | `eio` or `enospc` (the place fails with that I/O error), `panic`, `pause:PATH` (the thread waits there until the file `PATH` exists, at most 60 s: a paused reader), or `sleep:MS` (the thread sleeps `MS` milliseconds, at most 10 000: a slow worker) |
//! | `COUNT` | fire at most this many times in this process (every time if absent) |
//!
//! Unset (the normal case), [`hit`] is one relaxed atomic load. The variable is read once,
//! at the first [`hit`]. Failpoints are for tests: nothing in a production configuration
//! sets them.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The environment variable that configures failpoints.
pub const VAR: &str = "TRIBUTARY_FAILPOINTS";

/// What a failpoint does when it fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The operation fails with `EIO`.
    Eio,
    /// The operation fails with `ENOSPC`.
    Enospc,
    /// The thread panics.
    Panic,
    /// The thread waits until this file exists (at most 60 s), then goes on.
    Pause(String),
    /// The thread sleeps this long, then goes on.
    Sleep(std::time::Duration),
}

struct Entry {
    name: String,
    arg: Option<String>,
    action: Action,
    /// Firings left (`u64::MAX`: unbounded).
    left: AtomicU64,
}

static ANY: AtomicBool = AtomicBool::new(true);
static ENTRIES: OnceLock<Vec<Entry>> = OnceLock::new();

fn entries() -> &'static [Entry] {
    ENTRIES.get_or_init(|| {
        let parsed = std::env::var(VAR)
            .map(|text| parse(&text).unwrap_or_else(|e| panic!("{VAR}: {e}")))
            .unwrap_or_default();
        ANY.store(!parsed.is_empty(), Ordering::Relaxed);
        parsed
    })
}

fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (place, action) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected NAME[(ARG)]=ACTION[*COUNT]"))?;
        let (name, arg) = match place.split_once('(') {
            Some((name, rest)) => {
                let arg = rest
                    .strip_suffix(')')
                    .ok_or_else(|| format!("{item:?}: unclosed ("))?;
                (name, Some(arg.to_owned()))
            }
            None => (place, None),
        };
        let (action, count) = match action.split_once('*') {
            Some((a, c)) => (
                a,
                c.parse::<u64>()
                    .map_err(|_| format!("{item:?}: bad count {c:?}"))?,
            ),
            None => (action, u64::MAX),
        };
        let action = match action {
            "eio" => Action::Eio,
            "enospc" => Action::Enospc,
            "panic" => Action::Panic,
            other if other.starts_with("pause:") => {
                Action::Pause(other["pause:".len()..].to_owned())
            }
            other if other.starts_with("sleep:") => {
                let ms = other["sleep:".len()..]
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= 10_000)
                    .ok_or_else(|| format!("{item:?}: sleep:MS takes 0 to 10000 ms"))?;
                Action::Sleep(std::time::Duration::from_millis(ms))
            }
            other => return Err(format!("{item:?}: unknown action {other:?}")),
        };
        out.push(Entry {
            name: name.to_owned(),
            arg,
            action,
            left: AtomicU64::new(count),
        });
    }
    Ok(out)
}

/// Whether any failpoint is configured (to skip preparing an argument when none is).
#[inline]
pub fn active() -> bool {
    ANY.load(Ordering::Relaxed) && !entries().is_empty()
}

/// Whether failpoint `name` fires for `arg`; `panic` actions panic here.
#[inline]
pub fn hit(name: &str, arg: Option<&str>) -> Option<Action> {
    if !ANY.load(Ordering::Relaxed) {
        return None;
    }
    for entry in entries() {
        if entry.name != name || entry.arg.as_deref().is_some_and(|a| Some(a) != arg) {
            continue;
        }
        let fired = entry
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if fired {
            match &entry.action {
                Action::Panic => panic!("failpoint {name} fired ({VAR})"),
                Action::Pause(path) => {
                    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
                    while !std::path::Path::new(path).exists() && std::time::Instant::now() < until
                    {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
                Action::Sleep(pause) => std::thread::sleep(*pause),
                _ => {}
            }
            return Some(entry.action.clone());
        }
    }
    None
}

/// Failpoint `name` as an I/O result: `Err` (EIO or ENOSPC) when it fires.
#[inline]
pub fn io(name: &str) -> io::Result<()> {
    io_hit(hit(name, None))
}

/// [`io()`] at a place with an argument: fires only where the entry's `ARG`, if it has one,
/// equals `arg`.
pub fn io_at(name: &str, arg: &str) -> io::Result<()> {
    io_hit(hit(name, Some(arg)))
}

fn io_hit(action: Option<Action>) -> io::Result<()> {
    match action {
        Some(Action::Eio) => Err(io::Error::from_raw_os_error(libc::EIO)),
        Some(Action::Enospc) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries() {
        let e = parse("checkpoint.commit=eio*2; windows.key(k1)=panic").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "checkpoint.commit");
        assert_eq!(e[0].action, Action::Eio);
        assert_eq!(e[0].left.load(Ordering::Relaxed), 2);
        assert_eq!(e[1].arg.as_deref(), Some("k1"));
        assert_eq!(e[1].action, Action::Panic);
        let p = parse("ingest.batch(3)=pause:/tmp/go*1").unwrap();
        assert_eq!(p[0].action, Action::Pause("/tmp/go".into()));
        assert_eq!(p[0].left.load(Ordering::Relaxed), 1);
        let s = parse("ingest.batch=sleep:20").unwrap();
        assert_eq!(
            s[0].action,
            Action::Sleep(std::time::Duration::from_millis(20))
        );
        assert!(parse("x=sleep:20000").is_err());
        assert!(parse("x=sleep:soon").is_err());
        assert!(parse("x=boom").is_err());
        assert!(parse("x").is_err());
        assert!(parse("x(a=eio").is_err());
    }
}
