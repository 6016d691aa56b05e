//! The per-worker combiner: watermark, lateness, and the per-(key, pane) pre-aggregation
//! of one batch's records, so that differential sees one update per key and pane per batch.

use rustc_hash::FxHashMap;

use super::context::WindowConfig;
use crate::key::{Key, pack};
use crate::messages::SetAside;
use crate::record::{MAX_ABS_VALUE, Record, TIME_LIMIT, check_time};
use crate::source::{Malformed, MalformedPolicy, RecordSink, SourceError};
use crate::stats::Stats;
use crate::types::{Counts, OnError};
use crate::window::{Admission, Pane, Time, Watermark, WindowSpec};

/// The per-worker combiner: watermark, lateness, and per-(key, pane) pre-aggregation of
/// the records of one batch (shared by [`ingest`] and the record-level operators).
pub(crate) struct Combiner {
    window: WindowSpec,
    pub(crate) watermark: Watermark,
    features: usize,
    on_malformed: MalformedPolicy,
    keys: KeyCodes,
    panes: FxHashMap<(u128, Time), PaneAcc>,
    /// The bounds of the last record's bucket.
    bucket: (Time, Time),
    /// What the records fed since the last `take` held.
    pub(crate) counts: Counts,
    /// Records set aside since the last drain.
    pub(crate) aside: Vec<SetAside>,
}

/// A key as one 128-bit integer, so a record finds its pane with a single lookup of
/// integers: a key of at most 15 bytes is its [`pack`] code; a longer key is numbered in
/// order of first sight, the number tagged apart from every short key. The numbers of long
/// keys go with each drain, so keys that stop coming leave no trace.
#[derive(Default)]
struct KeyCodes {
    long: FxHashMap<Box<str>, u32>,
    keys: Vec<Key>,
}

/// The top byte of the code of a long key (a short key's is its length, at most 15).
const LONG_KEY: u128 = 0xff << 120;

impl KeyCodes {
    /// The code of `key`.
    #[inline]
    fn code(&mut self, key: &str) -> u128 {
        if let Some(packed) = pack(key.as_bytes()) {
            return packed;
        }
        let number = match self.long.get(key) {
            Some(&k) => k,
            None => {
                let k = self.keys.len() as u32;
                self.long.insert(key.into(), k);
                self.keys.push(Key::new(key));
                k
            }
        };
        LONG_KEY | number as u128
    }

    /// The key whose code is `code`, a code [`code`](Self::code) gave.
    fn key(&self, code: u128) -> Key {
        if code & LONG_KEY == LONG_KEY {
            return self.keys[code as u32 as usize].clone();
        }
        // SAFETY: a short key's code is the packed bytes of the key's str (`code`).
        unsafe { Key::short(code) }
    }
}

struct PaneAcc {
    first: Time,
    last: Time,
    stats: Stats,
}

impl Combiner {
    pub(crate) fn new(config: &WindowConfig, on_error: OnError) -> Self {
        Combiner {
            window: config.window,
            watermark: Watermark::new(config.lateness, config.max_jump),
            features: config.features,
            on_malformed: MalformedPolicy::new(on_error),
            keys: KeyCodes::default(),
            panes: FxHashMap::default(),
            bucket: (0, 0),
            counts: Counts::default(),
            aside: Vec::new(),
        }
    }

    /// Keeps `r` for the late output, with `reason`.
    fn set_aside(&mut self, r: crate::record::RecordRef<'_>, reason: &str) {
        let Record { time, key, x, y } = r.to_owned();
        self.aside.push(SetAside {
            ts: time,
            key,
            x,
            y,
            reason: reason.to_owned(),
            watermark: self.watermark.current(),
        });
    }

    /// The number of panes the records fed since the last drain fall in.
    pub(crate) fn pane_count(&self) -> usize {
        self.panes.len()
    }

    /// The panes of the records fed since the last drain, with their statistics.
    pub(crate) fn drain_panes(&mut self) -> impl Iterator<Item = ((Key, Pane), Stats)> + '_ {
        let keys = std::mem::take(&mut self.keys);
        let window = self.window;
        self.panes.drain().map(move |((code, bucket), acc)| {
            let pane = if window.is_session() {
                Pane {
                    start: acc.first,
                    end: acc.last + 1,
                }
            } else {
                Pane {
                    start: bucket,
                    end: bucket + window.bucket(),
                }
            };
            ((keys.key(code), pane), acc.stats)
        })
    }
}

impl RecordSink for Combiner {
    #[inline]
    fn record(&mut self, r: crate::record::RecordRef<'_>) {
        // Records mostly fall in the bucket of the one before: no division for them. The
        // cached bounds stop at the time limit, so a time beyond it never hits the cache.
        let (start, end) = self.bucket;
        let bucket = if start <= r.time && r.time < end {
            start
        } else {
            if check_time(r.time).is_err() {
                // Only records that come from no source (user dataflows) get here: the
                // sources refuse such times as malformed.
                self.counts.malformed += 1;
                self.set_aside(r, "time_out_of_range");
                return;
            }
            let start = self.window.bucket_start(r.time);
            let end = start.saturating_add(self.window.bucket());
            self.bucket = (start.max(-TIME_LIMIT), end.min(TIME_LIMIT + 1));
            start
        };
        // Sources refuse such values as malformed; records of user dataflows are set
        // aside, so no sum overflows from one row (see `MAX_ABS_VALUE`).
        if !r.z.iter().all(|v| v.abs() <= MAX_ABS_VALUE) {
            self.counts.malformed += 1;
            self.set_aside(r, "value_out_of_range");
            return;
        }
        self.counts.records += 1;
        match self
            .watermark
            .admit(r.time, self.window.late_at_in(r.time, bucket))
        {
            Admission::Admit => {
                let k = self.keys.code(r.key);
                let features = self.features;
                let acc = self.panes.entry((k, bucket)).or_insert_with(|| PaneAcc {
                    first: r.time,
                    last: r.time,
                    stats: Stats::with_features(features),
                });
                acc.first = acc.first.min(r.time);
                acc.last = acc.last.max(r.time);
                acc.stats.add_row(r.z);
            }
            admission => {
                if admission == Admission::Late {
                    self.counts.late += 1;
                } else {
                    self.counts.too_far += 1;
                }
                self.set_aside(r, admission.reason());
            }
        }
    }

    fn malformed(&mut self, error: Malformed) -> Result<(), SourceError> {
        self.counts.malformed += 1;
        self.on_malformed.apply(error)
    }
}

/// Sets aside every record of a quarantined batch (see [`crate::quarantine`]).
pub(super) struct Quarantined<'a>(pub(super) &'a mut Combiner);

impl RecordSink for Quarantined<'_> {
    fn record(&mut self, r: crate::record::RecordRef<'_>) {
        self.0.set_aside(r, "quarantined");
    }

    fn malformed(&mut self, error: Malformed) -> Result<(), SourceError> {
        self.0.malformed(error)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Combiner, KeyCodes, RecordSink};
    use crate::dataflow::{OnError, WindowConfig};
    use crate::key::pack;
    use crate::model::SolveOptions;
    use crate::record::{RecordRef, TIME_LIMIT};
    use crate::window::WindowSpec;

    proptest! {
        /// Two short keys pack to the same integer exactly when they are equal.
        #[test]
        fn packed_keys_are_the_keys(a in proptest::collection::vec(0u8..4, 0..17),
                                    b in proptest::collection::vec(0u8..4, 0..17)) {
            match (pack(&a), pack(&b)) {
                (Some(p), Some(q)) => prop_assert_eq!(p == q, a == b),
                (p, q) => {
                    prop_assert_eq!(p.is_none(), a.len() >= 16);
                    prop_assert_eq!(q.is_none(), b.len() >= 16);
                }
            }
        }
    }

    /// The time and reason of every record the combiner set aside, in order.
    fn aside_reasons(combiner: &Combiner) -> Vec<(i64, &str)> {
        combiner
            .aside
            .iter()
            .map(|a| (a.ts, a.reason.as_str()))
            .collect()
    }

    /// A combiner of records with one feature, no lateness and no bound on jumps.
    fn combiner_of_one_feature(window: &str) -> Combiner {
        let config = WindowConfig {
            window: window.parse::<WindowSpec>().unwrap(),
            lateness: 0,
            max_jump: i64::MAX,
            solve: SolveOptions::default(),
            features: 1,
        };
        Combiner::new(&config, OnError::Skip)
    }

    /// Values beyond ±1e150 or not finite (which no source lets through, but a user
    /// dataflow can feed) are set aside, not folded into statistics that would overflow.
    #[test]
    fn values_out_of_range_are_set_aside() {
        let mut combiner = combiner_of_one_feature("tumbling:10s");
        let values = [
            [1.0, 2.0],
            [1e200, 2.0],
            [1.0, -1e151],
            [f64::NAN, 0.0],
            [f64::INFINITY, 0.0],
            [crate::record::MAX_ABS_VALUE, -crate::record::MAX_ABS_VALUE],
        ];
        for (i, z) in values.iter().enumerate() {
            combiner.record(RecordRef {
                time: i as i64,
                key: "k",
                z,
            });
        }
        let reasons = aside_reasons(&combiner);
        assert_eq!(
            reasons,
            [1, 2, 3, 4].map(|t| (t, "value_out_of_range")).to_vec()
        );
        assert_eq!(combiner.counts.malformed, 4);
        assert_eq!(combiner.counts.records, 2);
        let panes: Vec<_> = combiner.drain_panes().collect();
        assert_eq!(panes.len(), 1);
        assert_eq!(panes[0].1.n, 2);
        assert!(panes[0].1.sums.iter().all(|v| v.is_finite()));
    }

    /// Times beyond ±2⁶² (which no source lets through, but a user dataflow can feed)
    /// are set aside, not folded into a pane whose bounds would overflow.
    #[test]
    fn times_out_of_range_are_set_aside() {
        let mut combiner = combiner_of_one_feature("sliding:60s/10s");
        // Each time beyond the limit comes right after one in range in the same bucket,
        // so that the bucket cache cannot let it through.
        let times = [
            -TIME_LIMIT,
            -TIME_LIMIT - 1,
            i64::MIN,
            0,
            TIME_LIMIT,
            TIME_LIMIT + 1,
            i64::MAX,
        ];
        for time in times {
            let z = [1.0, 2.0];
            combiner.record(RecordRef {
                time,
                key: "k",
                z: &z,
            });
        }
        let reasons = aside_reasons(&combiner);
        assert_eq!(
            reasons,
            [
                (-TIME_LIMIT - 1, "time_out_of_range"),
                (i64::MIN, "time_out_of_range"),
                (TIME_LIMIT + 1, "time_out_of_range"),
                (i64::MAX, "time_out_of_range")
            ]
        );
        assert_eq!(combiner.counts.malformed, 4);
        assert_eq!(
            combiner.counts.records, 3,
            "set-aside times are not records"
        );
        let panes: Vec<_> = combiner.drain_panes().map(|((_, pane), _)| pane).collect();
        assert_eq!(panes.len(), 3, "the three times in range have their panes");
        assert!(panes.iter().all(|p| p.start < p.end));
    }

    #[test]
    fn keys_come_back_from_their_codes() {
        let mut keys = KeyCodes::default();
        let long = "a key of more than fifteen bytes";
        let all = [
            "b",
            "a",
            long,
            "",
            "a\0",
            "fifteen bytes!!",
            "sixteen bytes!!!",
            "ключ",
        ];
        let codes: Vec<u128> = all.iter().map(|k| keys.code(k)).collect();
        for (key, &code) in all.iter().zip(&codes) {
            assert_eq!(keys.key(code), *key);
            assert_eq!(keys.code(key), code, "{key:?} coded twice alike");
        }
        let mut distinct = codes.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), all.len());
    }
}
