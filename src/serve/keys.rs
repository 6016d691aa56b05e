//! The live keys of `POST /data`, capped at `--max-keys` ([`KeyTracker`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::dataflow::WindowConfig;
use crate::source::RecordBatch;
use crate::window::{Time, WindowSpec};

/// How long a posted key stays live after its newest record (live keys are capped at
/// `--max-keys`: docs/serving.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyHorizon {
    /// The longest a record keeps a window open after its time: the window length (the
    /// gap of sessions), ms.
    pub extent: Time,
    /// `--max-jump`: a record's time counts no further than this past the watermark, ms.
    pub max_jump: Time,
}

/// The [`KeyHorizon`] of a dataflow's windows.
pub fn key_horizon(windows: &WindowConfig) -> KeyHorizon {
    let extent = match windows.window {
        WindowSpec::Tumbling { length } | WindowSpec::Sliding { length, .. } => length,
        WindowSpec::Session { gap } => gap,
    };
    KeyHorizon {
        extent,
        max_jump: windows.max_jump,
    }
}

/// The live keys of `POST /data`, capped at `--max-keys`.
///
/// A key is *live* from the first accepted record of it until the watermark passes the
/// end of every window its newest record can be in: until `watermark > t + extent`, with
/// `t` the newest record's time and `extent` the window length (the gap of sessions).
/// `t` counts no further than `--max-jump` past the largest time admitted before its
/// batch, so that a record far ahead cannot keep its key live for long. A record already
/// behind that bound (late) adds no live key.
/// A `POST /data` whose records would take the live keys over the cap is refused whole.
pub(crate) struct KeyTracker {
    max_keys: usize,
    horizon: KeyHorizon,
    live: Mutex<LiveKeys>,
}

struct LiveKeys {
    /// Key → the watermark up to which it is live.
    until: HashMap<Arc<str>, Time>,
    by_until: BTreeSet<(Time, Arc<str>)>,
    /// The largest record time admitted (as counted, see [`KeyTracker`]); `Time::MIN`
    /// before the first.
    high: Time,
}

impl Default for LiveKeys {
    fn default() -> LiveKeys {
        LiveKeys {
            until: HashMap::new(),
            by_until: BTreeSet::new(),
            high: Time::MIN,
        }
    }
}

/// The keys an admitted batch made live, to forget again if the batch is not accepted.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    added: Vec<(Arc<str>, Time)>,
}

/// Why a batch's keys were refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooManyKeys {
    /// Keys live now.
    pub live: usize,
    /// Keys the batch would add.
    pub new: usize,
    /// The cap.
    pub limit: usize,
}

impl std::fmt::Display for TooManyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} live keys and {} new in this body would exceed the limit of {} live keys \
             (--max-keys); nothing was accepted. Keys stop being live once the watermark \
             passes their windows; retry later",
            self.live, self.new, self.limit
        )
    }
}

impl KeyTracker {
    /// A tracker of at most `max_keys` live keys.
    pub fn new(max_keys: usize, horizon: KeyHorizon) -> KeyTracker {
        KeyTracker {
            max_keys,
            horizon,
            live: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LiveKeys> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the keys the watermark has passed.
    fn prune(live: &mut LiveKeys, watermark: Time) {
        while let Some((until, _)) = live.by_until.first() {
            if *until >= watermark {
                break;
            }
            if let Some((_, key)) = live.by_until.pop_first() {
                live.until.remove(&key);
            }
        }
    }

    /// Makes the keys of `batch` live, or refuses them all if that would exceed the cap.
    pub fn admit(&self, batch: &RecordBatch, watermark: Time) -> Result<Admitted, TooManyKeys> {
        let mut newest: HashMap<&str, Time> = HashMap::new();
        for (&t, key) in batch.time.iter().zip(&batch.key) {
            let e = newest.entry(key.as_str()).or_insert(t);
            *e = (*e).max(t);
        }
        let mut live = self.lock();
        Self::prune(&mut live, watermark);
        let mut changes: Vec<(&str, Time, Option<Time>)> = Vec::new();
        let mut new = 0;
        let mut high = live.high;
        for (key, t) in newest {
            // Counted no further than --max-jump past the largest time admitted before
            // this batch (the watermark itself may not have caught up with it yet).
            let counted = match live.high {
                Time::MIN => t,
                before => t.min(before.saturating_add(self.horizon.max_jump)),
            };
            let until = counted.saturating_add(self.horizon.extent);
            if until < watermark {
                continue;
            }
            high = high.max(counted);
            match live.until.get(key) {
                Some(&old) if old >= until => {}
                Some(&old) => changes.push((key, until, Some(old))),
                None => {
                    new += 1;
                    changes.push((key, until, None));
                }
            }
        }
        if live.until.len() + new > self.max_keys {
            return Err(TooManyKeys {
                live: live.until.len(),
                new,
                limit: self.max_keys,
            });
        }
        live.high = high;
        let mut admitted = Admitted::default();
        for (key, until, old) in changes {
            let key: Arc<str> = match old {
                Some(old) => {
                    let (key, _) = live.until.get_key_value(key).expect("live key");
                    let key = Arc::clone(key);
                    live.by_until.remove(&(old, Arc::clone(&key)));
                    key
                }
                None => {
                    let key: Arc<str> = key.into();
                    admitted.added.push((Arc::clone(&key), until));
                    key
                }
            };
            live.until.insert(Arc::clone(&key), until);
            live.by_until.insert((until, key));
        }
        Ok(admitted)
    }

    /// The batch `admitted` was for was not accepted: forgets the keys it made live (those
    /// no other batch has made live since).
    pub fn undo(&self, admitted: Admitted) {
        let mut live = self.lock();
        for (key, until) in admitted.added {
            if live.until.get(&key) == Some(&until) {
                live.until.remove(&key);
                live.by_until.remove(&(until, key));
            }
        }
    }

    /// Keys live now (as of the last post).
    pub fn live(&self) -> usize {
        self.lock().until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rows: &[(Time, &str)]) -> RecordBatch {
        let mut b = RecordBatch::default();
        for (t, k) in rows {
            b.time.push(*t);
            b.key.push((*k).to_owned());
            b.z.push(0.0);
        }
        b
    }

    #[test]
    fn live_keys_are_capped_and_forgotten_behind_the_watermark() {
        let horizon = KeyHorizon {
            extent: 100,
            max_jump: 1000,
        };
        let keys = KeyTracker::new(2, horizon);
        keys.admit(&batch(&[(0, "a"), (5, "b")]), Time::MIN)
            .unwrap();
        let refused = keys.admit(&batch(&[(6, "a"), (6, "c")]), 0).unwrap_err();
        assert_eq!((refused.live, refused.new, refused.limit), (2, 1, 2));
        assert!(refused.to_string().contains("--max-keys"));
        // Known keys are taken; a late record adds no live key.
        keys.admit(&batch(&[(50, "a"), (-500, "late")]), 0).unwrap();
        assert_eq!(keys.live(), 2);
        // The watermark passes b's window (5 + 100) but not a's (50 + 100).
        keys.admit(&batch(&[(120, "c")]), 110).unwrap();
        assert_eq!(keys.live(), 2);
        // b is forgotten; a record far ahead counts as no later than the largest time
        // before it (120) + max_jump: live until 1220, not 1 000 000 + 100.
        keys.admit(&batch(&[(1_000_000, "far")]), 160).unwrap();
        assert_eq!(keys.live(), 2, "c and far");
        keys.admit(&batch(&[(0, "x")]), 1200).unwrap();
        assert_eq!(keys.live(), 1, "far only (x is late)");
        keys.admit(&batch(&[(0, "y")]), 1221).unwrap();
        assert_eq!(keys.live(), 0, "far is forgotten after 1220");
        // A refused append gives the keys it made live back.
        let admitted = keys
            .admit(&batch(&[(1300, "p"), (1300, "q")]), 1261)
            .unwrap();
        assert_eq!(keys.live(), 2);
        keys.undo(admitted);
        assert_eq!(keys.live(), 0);
    }
}
