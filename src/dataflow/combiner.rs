//! The per-worker combiner: watermark, lateness, and the per-(key, pane) pre-aggregation
//! of one batch's records, so that differential sees one update per key and pane per batch.
//! A file read ahead of its worker is pre-aggregated on its reading thread
//! ([`PaneFold`]), and the combiner only admits the batch's records before it takes the
//! thread's panes.

use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;

use super::context::WindowConfig;
use crate::key::{Key, pack};
use crate::messages::SetAside;
use crate::metrics::Folds;
use crate::record::{MAX_ABS_VALUE, Record, RecordRef, TIME_LIMIT, check_time};
use crate::source::{Folded, Malformed, MalformedPolicy, Prefold, RecordSink, Rows, SourceError};
use crate::stats::Stats;
use crate::types::{Counts, OnError};
use crate::window::{Admission, Pane, Time, Watermark, WindowSpec};

/// The per-worker combiner: watermark, lateness, and per-(key, pane) pre-aggregation of
/// the records of one batch (shared by [`ingest`] and the record-level operators).
pub(crate) struct Combiner {
    window: WindowSpec,
    pub(crate) watermark: Watermark,
    on_malformed: MalformedPolicy,
    panes: Panes,
    buckets: Buckets,
    /// What the records fed since the last `take` held.
    pub(crate) counts: Counts,
    /// The batches folded ahead taken and refused since the last `take`.
    pub(crate) folds: Folds,
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

/// Records folded into the statistics of their (key, pane): a batch's, by the combiner or
/// by a reading thread ahead of it.
#[derive(Default)]
struct Panes {
    keys: KeyCodes,
    folded: FxHashMap<(u128, Time), PaneAcc>,
}

impl Panes {
    /// Folds `r`, of the bucket starting at `bucket`, into its pane.
    #[inline]
    fn add(&mut self, r: RecordRef<'_>, bucket: Time) {
        let k = self.keys.code(r.key);
        match self.folded.entry((k, bucket)) {
            // A pane's first record is kept as it is (with many keys, most panes of a
            // batch hold one), the next ones make the sums.
            Entry::Vacant(vacant) => {
                vacant.insert(PaneAcc {
                    first: r.time,
                    last: r.time,
                    stats: Stats::of_row(r.z),
                });
            }
            Entry::Occupied(occupied) => {
                let acc = occupied.into_mut();
                acc.first = acc.first.min(r.time);
                acc.last = acc.last.max(r.time);
                acc.stats.add_row(r.z);
            }
        }
    }

    /// Empties it, keeping the storage of its map.
    fn clear(&mut self) {
        self.keys = KeyCodes::default();
        self.folded.clear();
    }
}

/// The buckets of a window spec, with the bounds of the last one found.
#[derive(Clone, Copy)]
struct Buckets {
    window: WindowSpec,
    /// The bounds of the last time's bucket.
    last: (Time, Time),
}

impl Buckets {
    fn new(window: WindowSpec) -> Self {
        Buckets {
            window,
            last: (0, 0),
        }
    }

    /// The start of the bucket of `t`, or `None` for a time beyond the time limit. Times
    /// mostly fall in the bucket of the one before: no division for them. The cached
    /// bounds stop at the time limit, so a time beyond it never hits the cache.
    #[inline]
    fn of(&mut self, t: Time) -> Option<Time> {
        let (start, end) = self.last;
        if start <= t && t < end {
            return Some(start);
        }
        check_time(t).ok()?;
        let start = self.window.bucket_start(t);
        let end = start.saturating_add(self.window.bucket());
        self.last = (start.max(-TIME_LIMIT), end.min(TIME_LIMIT + 1));
        Some(start)
    }
}

/// Whether every value of a row is one a source lets through (see `MAX_ABS_VALUE`).
#[inline]
fn in_range(z: &[f64]) -> bool {
    z.iter().all(|v| v.abs() <= MAX_ABS_VALUE)
}

/// A batch's records folded into their panes on the thread that reads a file ahead of
/// its worker ([`Prefold`]), as the worker's combiner would fold them: the combiner takes
/// the panes when it admits every record of the batch ([`RecordSink::take_folded`]).
pub(crate) struct PaneFold {
    buckets: Buckets,
    /// Panes handed back by the combiner, to fold the next batch into.
    spare: Option<Box<Panes>>,
}

impl PaneFold {
    pub(crate) fn new(config: &WindowConfig) -> Self {
        PaneFold {
            buckets: Buckets::new(config.window),
            spare: None,
        }
    }
}

impl Prefold for PaneFold {
    fn fold(&mut self, rows: Rows<'_>) -> Option<Folded> {
        let mut panes = self.spare.take().unwrap_or_default();
        panes.clear();
        for i in 0..rows.len() {
            let r = rows.get(i);
            // A record the combiner sets aside (no source lets one through): the
            // combiner has the batch record by record.
            let bucket = self.buckets.of(r.time).filter(|_| in_range(r.z));
            let Some(bucket) = bucket else {
                self.spare = Some(panes);
                return None;
            };
            panes.add(r, bucket);
        }
        Some(panes)
    }

    fn reuse(&mut self, spent: Folded) {
        self.spare = spent.downcast::<Panes>().ok();
    }
}

impl Combiner {
    pub(crate) fn new(config: &WindowConfig, on_error: OnError) -> Self {
        Combiner {
            window: config.window,
            watermark: Watermark::new(config.lateness, config.max_jump),
            on_malformed: MalformedPolicy::new(on_error),
            panes: Panes::default(),
            buckets: Buckets::new(config.window),
            counts: Counts::default(),
            folds: Folds::default(),
            aside: Vec::new(),
        }
    }

    /// Keeps `r` for the late output, with `reason`.
    fn set_aside(&mut self, r: RecordRef<'_>, reason: &str) {
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

    /// What the watermark does with a record at `t`, of the bucket starting at `bucket`
    /// (moving it if admitted): for records fed one by one and batches folded ahead alike.
    #[inline]
    fn admit(&mut self, t: Time, bucket: Time) -> Admission {
        self.watermark.admit(t, self.window.late_at_in(t, bucket))
    }

    /// The number of panes the records fed since the last drain fall in.
    pub(crate) fn pane_count(&self) -> usize {
        self.panes.folded.len()
    }

    /// The panes of the records fed since the last drain, with their statistics.
    pub(crate) fn drain_panes(&mut self) -> impl Iterator<Item = ((Key, Pane), Stats)> + '_ {
        let keys = std::mem::take(&mut self.panes.keys);
        let window = self.window;
        self.panes.folded.drain().map(move |((code, bucket), acc)| {
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
    fn record(&mut self, r: RecordRef<'_>) {
        let Some(bucket) = self.buckets.of(r.time) else {
            // Only records that come from no source (user dataflows) get here: the
            // sources refuse such times as malformed.
            self.counts.malformed += 1;
            self.set_aside(r, "time_out_of_range");
            return;
        };
        // Sources refuse such values as malformed; records of user dataflows are set
        // aside, so no sum overflows from one row (see `MAX_ABS_VALUE`).
        if !in_range(r.z) {
            self.counts.malformed += 1;
            self.set_aside(r, "value_out_of_range");
            return;
        }
        self.counts.records += 1;
        match self.admit(r.time, bucket) {
            Admission::Admit => self.panes.add(r, bucket),
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

    /// Takes a batch a [`PaneFold`] folded when the combiner holds no panes yet and would
    /// admit every record of it: the watermark moves as the records would have moved it,
    /// and the fold's panes are the ones [`record`](RecordSink::record) would have made
    /// (the same rows added in the same order). Otherwise the watermark is left as it was
    /// and the records come one by one.
    fn take_folded(&mut self, rows: Rows<'_>, folded: Folded) -> Result<Folded, Folded> {
        if !self.panes.folded.is_empty() || !folded.is::<Panes>() {
            self.folds.refused += 1;
            return Err(folded);
        }
        let (watermark, buckets) = (self.watermark.clone(), self.buckets);
        for &t in rows.times() {
            let admitted =
                (self.buckets.of(t)).is_some_and(|b| self.admit(t, b) == Admission::Admit);
            if !admitted {
                (self.watermark, self.buckets) = (watermark, buckets);
                self.folds.refused += 1;
                return Err(folded);
            }
        }
        self.counts.records += rows.len() as u64;
        self.folds.taken += 1;
        let mut panes = folded.downcast::<Panes>().expect("a fold of panes");
        std::mem::swap(&mut self.panes, &mut panes);
        Ok(panes)
    }
}

/// Sets aside every record of a quarantined batch (see [`crate::quarantine`]).
pub(super) struct Quarantined<'a>(pub(super) &'a mut Combiner);

impl RecordSink for Quarantined<'_> {
    fn record(&mut self, r: RecordRef<'_>) {
        self.0.set_aside(r, "quarantined");
    }

    fn malformed(&mut self, error: Malformed) -> Result<(), SourceError> {
        self.0.malformed(error)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Combiner, KeyCodes, PaneFold, RecordSink};
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
        assert!(panes[0].1.sums().iter().all(|v| v.is_finite()));
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

    /// A batch folded ahead by a [`PaneFold`] and taken whole gives the panes (bit for
    /// bit), counts, watermark and bucket cache that its records fed one by one give; a
    /// batch with a record the watermark does not admit is refused, with the watermark
    /// left as it was, and then fed one by one as usual. Tumbling, sliding and session
    /// windows, keys short and long, records out of order.
    #[test]
    fn a_batch_folded_ahead_is_the_batch_folded_in_place() {
        use crate::source::{Prefold, Rows};
        for window in ["tumbling:10s", "sliding:60s/10s", "session:5s"] {
            let config = WindowConfig {
                window: window.parse::<WindowSpec>().unwrap(),
                lateness: 2_000,
                max_jump: 3_600_000,
                solve: SolveOptions::default(),
                features: 1,
            };
            let mut fed = Combiner::new(&config, OnError::Skip);
            let mut taken = Combiner::new(&config, OnError::Skip);
            let mut fold = PaneFold::new(&config);
            let (mut takes, mut refusals) = (0, 0);
            for batch in 0..12i64 {
                let (mut times, mut keys, mut key_ends, mut z) =
                    (vec![], String::new(), vec![], vec![]);
                for i in 0..200i64 {
                    // Out of order within a batch by less than the lateness; every
                    // fourth batch has one record long behind the watermark (late), and
                    // one batch one record hours ahead.
                    let mut t = batch * 7_000 + i * 30 + (i * 37) % 1_000;
                    if batch % 4 == 3 && i == 150 {
                        t -= 40_000;
                    }
                    if batch == 6 && i == 20 {
                        t += 10 * 3_600_000;
                    }
                    times.push(t);
                    let key = if i % 3 == 0 {
                        format!("a long key, number {}", i % 5)
                    } else {
                        format!("k{}", i % 7)
                    };
                    keys.push_str(&key);
                    key_ends.push(keys.len());
                    z.extend([(i as f64) * 0.1 + batch as f64, (i * i) as f64 / 7.0]);
                }
                let rows = Rows::new(&times, &keys, &key_ends, &z, 2);
                for i in 0..rows.len() {
                    fed.record(rows.get(i));
                }
                let folded = fold.fold(rows).expect("a batch in range is folded");
                match taken.take_folded(rows, folded) {
                    Ok(spent) => {
                        takes += 1;
                        fold.reuse(spent);
                    }
                    Err(refused) => {
                        refusals += 1;
                        fold.reuse(refused);
                        for i in 0..rows.len() {
                            taken.record(rows.get(i));
                        }
                    }
                }
                let what = format!("{window}, batch {batch}");
                assert_eq!(fed.counts, taken.counts, "{what}");
                assert_eq!(fed.watermark.max_seen, taken.watermark.max_seen, "{what}");
                assert_eq!(fed.buckets.last, taken.buckets.last, "{what}");
                assert_eq!(aside_reasons(&fed), aside_reasons(&taken), "{what}");
                let mut panes = [&mut fed, &mut taken].map(|c| {
                    let mut panes: Vec<_> = c
                        .drain_panes()
                        .map(|((key, pane), stats)| {
                            (key.to_string(), pane, stats.n, stats.sums().into_owned())
                        })
                        .collect();
                    panes.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                    panes
                });
                assert!(!panes[0].is_empty(), "{what}");
                let [a, b] = &mut panes;
                for (a, b) in a.iter().zip(b.iter()) {
                    assert_eq!((&a.0, a.1, a.2), (&b.0, b.1, b.2), "{what}");
                    let bits = |s: &[f64]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a.3), bits(&b.3), "{what}: {} {:?}", a.0, a.1);
                }
                assert_eq!(a.len(), b.len(), "{what}");
                fed.aside.clear();
                taken.aside.clear();
            }
            assert_eq!(
                (takes, refusals),
                (8, 4),
                "{window}: batches taken, refused"
            );
        }
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
