//! The served models: the newest final model and running estimate of every key
//! ([`ModelStore`]), written by the dataflow's model sink and read by the server.
//!
//! A running estimate arrives as its statistics ([`EstimateStats`]) and is solved only
//! when a client reads it, once per change of the key's statistics (the solved line is
//! kept until the next estimate of the key replaces the statistics). Updates are one hash
//! lookup per line; the key order (for pages) and the age order (for `--max-keys`
//! eviction) change only when a key comes or goes, or its newest window end moves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::stream::ModelFeed;
use crate::checkpoint::{Store, codec};
use crate::dataflow::{EstimateStats, ModelLine};
use crate::model::SolveOptions;
use crate::window::Time;

/// The models of one key, as served.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyModels {
    /// The key.
    pub key: String,
    /// The newest final model (highest window end, then revision).
    #[serde(rename = "final")]
    pub last_final: Option<ModelLine>,
    /// The running estimate of the open window that closes next.
    pub open: Option<ModelLine>,
}

/// What a key's open window shows: a provisional (or revised) emission as the dataflow
/// made it, or a running estimate's statistics, solved when first read.
enum Open {
    /// A provisional or revised model line.
    Line(ModelLine),
    /// A running estimate: its statistics, and its line once solved (never after the
    /// statistics change: a new estimate replaces the whole value).
    Estimate(EstimateStats, OnceLock<ModelLine>),
}

impl Open {
    fn window_end(&self) -> Time {
        match self {
            Open::Line(line) => line.window_end,
            Open::Estimate(estimate, _) => estimate.window.end,
        }
    }

    /// The line served: solved with `options` on the first read of an estimate.
    fn line(&self, options: SolveOptions) -> ModelLine {
        match self {
            Open::Line(line) => line.clone(),
            Open::Estimate(estimate, solved) => {
                solved.get_or_init(|| estimate.solve(options)).clone()
            }
        }
    }
}

/// One key's models in the store.
struct Entry {
    /// The key (the same text as the maps' keys).
    name: Arc<str>,
    /// Shared with the feed of `/models/stream` (one copy of each final).
    last_final: Option<Arc<ModelLine>>,
    open: Option<Open>,
}

impl Entry {
    /// The end of the newest window this key has a model of: its age for eviction.
    fn newest_end(&self) -> Time {
        let final_end = self.last_final.as_ref().map_or(Time::MIN, |m| m.window_end);
        final_end.max(self.open.as_ref().map_or(Time::MIN, Open::window_end))
    }

    /// Shows `open` as the key's open window, unless its final model is as new.
    fn open_if_newer(&mut self, open: Open) {
        let end = open.window_end();
        if self.last_final.as_ref().is_none_or(|f| end > f.window_end) {
            self.open = Some(open);
        }
    }

    fn served(&self, options: SolveOptions) -> KeyModels {
        KeyModels {
            key: self.name.to_string(),
            last_final: self.last_final.as_deref().cloned(),
            open: self.open.as_ref().map(|o| o.line(options)),
        }
    }
}

/// Counts of a [`ModelStore`], kept as it changes (so reading them is O(1)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModelCounts {
    /// Keys held.
    pub keys: usize,
    /// Keys with a final model.
    pub finals: usize,
    /// Keys with a running estimate.
    pub open: usize,
    /// Keys forgotten to stay within `--max-keys` since the process started.
    pub evicted: u64,
}

#[derive(Default)]
struct Models {
    /// Every key's models, by its text (a hash lookup per update).
    keys: HashMap<Arc<str>, Entry>,
    /// The keys in order, for pages (changed only when a key comes or goes).
    order: BTreeSet<Arc<str>>,
    /// `(newest window end, key)` of every key: the oldest is evicted first. Made when the
    /// keys first pass `--max-keys` (until then nothing is evicted, so no order is needed),
    /// then kept, changed only when a key comes or goes or its newest window end moves.
    by_age: Option<BTreeSet<(Time, Arc<str>)>>,
    counts: ModelCounts,
}

impl Models {
    /// Applies `change` to `key`'s models (made if new), keeping the indexes and counts.
    fn change<R>(&mut self, key: &str, change: impl FnOnce(&mut Entry) -> R) -> R {
        let Models {
            keys,
            order,
            by_age,
            counts,
        } = self;
        let entry = match keys.get_mut(key) {
            Some(entry) => entry,
            None => {
                let name: Arc<str> = Arc::from(key);
                counts.keys += 1;
                order.insert(Arc::clone(&name));
                if let Some(by_age) = by_age {
                    by_age.insert((Time::MIN, Arc::clone(&name)));
                }
                keys.entry(Arc::clone(&name)).or_insert(Entry {
                    name,
                    last_final: None,
                    open: None,
                })
            }
        };
        let (age, had_final, had_open) = (
            entry.newest_end(),
            entry.last_final.is_some(),
            entry.open.is_some(),
        );
        let result = change(entry);
        let new_age = entry.newest_end();
        counts.finals = counts.finals + entry.last_final.is_some() as usize - had_final as usize;
        counts.open = counts.open + entry.open.is_some() as usize - had_open as usize;
        if let Some(by_age) = by_age
            && new_age != age
        {
            let name = Arc::clone(&entry.name);
            by_age.remove(&(age, Arc::clone(&name)));
            by_age.insert((new_age, name));
        }
        result
    }

    /// Forgets the keys with the oldest models until at most `max_keys` are left.
    fn evict(&mut self, max_keys: usize) {
        if self.keys.len() <= max_keys {
            return;
        }
        let keys = &self.keys;
        let by_age = self.by_age.get_or_insert_with(|| {
            (keys.values())
                .map(|e| (e.newest_end(), Arc::clone(&e.name)))
                .collect()
        });
        while self.keys.len() > max_keys {
            let Some((_, key)) = by_age.pop_first() else {
                break;
            };
            self.order.remove(&key);
            if let Some(gone) = self.keys.remove(&key) {
                self.counts.keys -= 1;
                self.counts.finals -= gone.last_final.is_some() as usize;
                self.counts.open -= gone.open.is_some() as usize;
                self.counts.evicted += 1;
            }
        }
    }
}

/// The newest models of every key: written by the dataflow's sink, read by the server.
///
/// It holds at most `max_keys` keys (`--max-keys`): past that, the keys whose newest
/// model (final or running estimate) has the oldest window end are forgotten first, so
/// that keys still receiving records stay. A forgotten key answers 404 until it has a
/// model again; its final models stay in `--out` (and in the checkpoint store, from which
/// a restart loads the newest `max_keys`).
///
/// Running estimates are kept as statistics ([`update_estimates`](Self::update_estimates))
/// and solved, with the run's [`SolveOptions`], when first read.
pub struct ModelStore {
    models: RwLock<Models>,
    store: Option<Arc<Store>>,
    max_keys: usize,
    /// How running estimates are solved (the run's options: ridge).
    solve: SolveOptions,
    /// The served mark: every epoch (ingest-log batch) through it is folded into
    /// `models` (`None`: none yet). Reads with `after_batch` wait on it.
    served: watch::Sender<Option<u64>>,
    /// The final models emitted by this process, for `GET /models/stream`.
    pub(super) feed: ModelFeed,
}

impl Default for ModelStore {
    fn default() -> ModelStore {
        ModelStore {
            models: RwLock::default(),
            store: None,
            max_keys: usize::MAX,
            solve: SolveOptions::default(),
            served: watch::channel(None).0,
            feed: ModelFeed::new(),
        }
    }
}

impl ModelStore {
    /// A model store of at most `max_keys` keys, kept in `store` too if given (and loaded
    /// from it now: the newest `max_keys`), that solves running estimates with `solve`.
    pub fn open(
        store: Option<Arc<Store>>,
        max_keys: usize,
        solve: SolveOptions,
    ) -> Result<ModelStore, String> {
        let mut models = Models::default();
        if let Some(store) = &store {
            for bytes in store.models().map_err(|e| e.to_string())? {
                let model = ModelLine::decode_stored(&bytes)
                    .map_err(|e| format!("{}: stored model: {e}", store.path().display()))?;
                models.change(&model.key.clone(), |entry| {
                    entry.last_final = Some(Arc::new(model))
                });
            }
            models.evict(max_keys);
            models.counts.evicted = 0;
        }
        Ok(ModelStore {
            models: RwLock::new(models),
            store,
            max_keys: max_keys.max(1),
            solve,
            served: watch::channel(None).0,
            feed: ModelFeed::new(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Models> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Models> {
        self.models.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes model emissions (final, provisional or revised), by value: a final line is
    /// kept once, shared by the key's models and the feed of `/models/stream`.
    pub fn update(&self, lines: impl IntoIterator<Item = ModelLine>) {
        let mut kept: Vec<Arc<ModelLine>> = Vec::new();
        let mut emitted: Vec<Arc<ModelLine>> = Vec::new();
        let keeps = self.store.is_some();
        {
            let mut models = self.write();
            for line in lines {
                if !line.is_final {
                    models.change(&line.key.clone(), |entry| {
                        entry.open_if_newer(Open::Line(line))
                    });
                    continue;
                }
                let line = Arc::new(line);
                let newest = |m: &ModelLine| (m.window_end, m.window_start, m.revision);
                let newer = models.change(&line.key, |entry| {
                    let newer =
                        (entry.last_final.as_ref()).is_none_or(|f| newest(&line) >= newest(f));
                    if newer {
                        entry.last_final = Some(Arc::clone(&line));
                    }
                    if (entry.open.as_ref()).is_some_and(|o| o.window_end() <= line.window_end) {
                        entry.open = None;
                    }
                    newer
                });
                if newer && keeps {
                    kept.push(Arc::clone(&line));
                }
                emitted.push(line);
            }
            models.evict(self.max_keys);
            self.feed.push(emitted);
        }
        if let Some(store) = &self.store
            && !kept.is_empty()
        {
            // The newest kept of each key (the last one taken).
            let finals: BTreeMap<&str, &ModelLine> =
                kept.iter().map(|m| (m.key.as_str(), &**m)).collect();
            let encoded = finals.into_iter().map(|(k, m)| (k, codec::encode(m)));
            if let Err(e) = store.put_models(encoded) {
                tracing::warn!("keeping models in the checkpoint store: {e}");
            }
        }
    }

    /// Takes the statistics of running estimates (each replaces its key's open window
    /// unless the key has a final model of that window or a later one). Nothing is solved
    /// here: a read solves the estimate it shows, once per change of its statistics.
    pub fn update_estimates(&self, estimates: impl IntoIterator<Item = EstimateStats>) {
        let mut models = self.write();
        for estimate in estimates {
            let key = estimate.key.clone();
            models.change(key.as_str(), |entry| {
                entry.open_if_newer(Open::Estimate(estimate, OnceLock::new()))
            });
        }
        models.evict(self.max_keys);
    }

    /// Every epoch (batch of the ingest log) through `epoch` has been folded in: the
    /// final models and running estimates of those epochs are all here. Called by the
    /// dataflow as the frontier of the streams that update the store passes `epoch`;
    /// the mark never goes back (`u64::MAX`: the dataflow has ended).
    pub fn served_through(&self, epoch: u64) {
        self.served.send_if_modified(|served| {
            let newer = served.is_none_or(|s| s < epoch);
            if newer {
                *served = Some(epoch);
            }
            newer
        });
    }

    /// The served mark: the last epoch folded in, if any (see
    /// [`served_through`](Self::served_through)).
    pub fn served(&self) -> Option<u64> {
        *self.served.borrow()
    }

    /// Waits (without blocking a thread) until batch `batch` has been folded in, at most
    /// `wait`: the served mark then, or, when the wait ran out, the mark as it is.
    pub async fn wait_served(&self, batch: u64, wait: Duration) -> Result<u64, Option<u64>> {
        let mut changes = self.served.subscribe();
        let reached =
            tokio::time::timeout(wait, changes.wait_for(|s| s.is_some_and(|s| s >= batch))).await;
        match reached {
            Ok(Ok(served)) => Ok(served.expect("the mark is at least `batch`")),
            _ => Err(self.served()),
        }
    }

    /// The models of `key` (its running estimate solved if not yet).
    pub fn get(&self, key: &str) -> Option<KeyModels> {
        self.read().keys.get(key).map(|e| e.served(self.solve))
    }

    /// The models of every key, by key (O(keys): `/models` reads [`page`](Self::page)s).
    pub fn all(&self) -> Vec<KeyModels> {
        let models = self.read();
        (models.order.iter())
            .filter_map(|key| models.keys.get(key))
            .map(|e| e.served(self.solve))
            .collect()
    }

    /// Up to `limit` keys' models in key order, from the first key after `after` (from
    /// the first key without it), and the key to give as `after` for the next page
    /// (`None`: this page is the last).
    pub fn page(&self, after: Option<&str>, limit: usize) -> (Vec<KeyModels>, Option<String>) {
        let models = self.read();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut keys: Vec<&Arc<str>> = models
            .order
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .collect();
        let next = if keys.len() > limit {
            keys.pop();
            keys.last().map(|k| k.to_string())
        } else {
            None
        };
        let page = (keys.into_iter())
            .filter_map(|key| models.keys.get(key))
            .map(|e| e.served(self.solve))
            .collect();
        (page, next)
    }

    /// Keys held, with a final model, with a running estimate, and forgotten.
    pub fn counts(&self) -> ModelCounts {
        self.read().counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;
    use std::time::Instant;

    fn line(key: &str, end: Time, is_final: bool) -> ModelLine {
        ModelLine {
            key: key.into(),
            window_start: end - 10,
            window_end: end,
            n: 1,
            coef: None,
            r2: None,
            rmse: None,
            cond: None,
            status: Status::Underdetermined,
            is_final,
            revision: 0,
            closed_by: None,
        }
    }

    #[test]
    fn model_store_counts_pages_and_evicts_the_oldest() {
        let store = ModelStore::open(None, 3, SolveOptions::default()).unwrap();
        store.update([
            line("a", 10, true),
            line("b", 20, false),
            line("c", 30, true),
        ]);
        store.update([line("c", 40, false)]);
        assert_eq!(
            store.counts(),
            ModelCounts {
                keys: 3,
                finals: 2,
                open: 2,
                evicted: 0
            }
        );
        // A fourth key: the one with the oldest newest window ("a", 10) goes.
        store.update([line("d", 50, false)]);
        assert!(store.get("a").is_none());
        assert_eq!(store.counts().keys, 3);
        assert_eq!(store.counts().evicted, 1);
        assert_eq!(store.counts().finals, 1);
        // "b" gets a newer model (60), and a fifth key comes: "c" (40) is the oldest.
        store.update([line("b", 60, true), line("e", 70, false)]);
        assert!(store.get("c").is_none(), "{:?}", store.all());
        let (page, next) = store.page(None, 2);
        let keys: Vec<&str> = page.iter().map(|m| m.key.as_str()).collect();
        assert_eq!((keys, next.as_deref()), (vec!["b", "d"], Some("d")));
        let (page, next) = store.page(Some("d"), 2);
        assert_eq!(page.len(), 1);
        assert_eq!((page[0].key.as_str(), next), ("e", None));
        let c = store.counts();
        assert_eq!((c.keys, c.finals, c.open), (3, 1, 2), "{c:?}");
    }

    /// Least squares of `rows` (`[x₁ … x_d, y]`) with an intercept and a ridge penalty
    /// `ridge` on the slopes, by modified Gram–Schmidt on the design matrix `[1, X]`
    /// augmented with `√ridge` rows: not the engine's path (sums, normal equations).
    fn least_squares(rows: &[Vec<f64>], ridge: f64) -> Vec<f64> {
        let d = rows[0].len() - 1;
        let p = d + 1;
        let mut design: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| std::iter::once(1.0).chain(r[..d].iter().copied()).collect())
            .collect();
        let mut y: Vec<f64> = rows.iter().map(|r| r[d]).collect();
        for j in 1..p {
            let mut penalty = vec![0.0; p];
            penalty[j] = ridge.sqrt();
            design.push(penalty);
            y.push(0.0);
        }
        // Columns of the design, orthonormalised in place (Q), with R beside.
        let mut q: Vec<Vec<f64>> = (0..p)
            .map(|j| design.iter().map(|r| r[j]).collect())
            .collect();
        let mut r = vec![vec![0.0; p]; p];
        for j in 0..p {
            for i in 0..j {
                let dot: f64 = q[i].iter().zip(&q[j]).map(|(a, b)| a * b).sum();
                r[i][j] = dot;
                let qi = q[i].clone();
                q[j].iter_mut().zip(&qi).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = q[j].iter().map(|a| a * a).sum::<f64>().sqrt();
            r[j][j] = norm;
            q[j].iter_mut().for_each(|a| *a /= norm);
        }
        let qty: Vec<f64> = (0..p)
            .map(|j| q[j].iter().zip(&y).map(|(a, b)| a * b).sum())
            .collect();
        let mut coef = vec![0.0; p];
        for j in (0..p).rev() {
            let known: f64 = (j + 1..p).map(|k| r[j][k] * coef[k]).sum();
            coef[j] = (qty[j] - known) / r[j][j];
        }
        coef
    }

    /// Every read (`get`, `all`, `page`) of a running estimate is the least-squares fit of
    /// the window's records as of the newest statistics, with the store's solve options:
    /// after each new estimate of the same window (a cached line of the previous one would
    /// be stale), and never once a final of that window came.
    #[test]
    fn estimates_are_solved_on_read_from_the_newest_statistics() {
        use crate::key::Key;
        use crate::stats::Stats;
        use crate::window::Window;
        use differential_dataflow::difference::Semigroup;

        let ridge = 0.75;
        let store = ModelStore::open(None, 10, SolveOptions { ridge }).unwrap();
        let mut seed = 11u64;
        let mut uniform = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        let rows: Vec<Vec<f64>> = (0..40)
            .map(|_| {
                let (x1, x2) = (10.0 * uniform(), 3.0 + uniform());
                vec![x1, x2, 1.5 - 2.0 * x1 + 0.5 * x2 + 0.1 * uniform()]
            })
            .collect();
        let window = Window {
            start: 60_000,
            end: 120_000,
        };
        let estimate = |n: usize| {
            let mut stats = Stats::zero();
            for row in &rows[..n] {
                stats.plus_equals(&Stats::of_row(row));
            }
            EstimateStats {
                key: Key::new("k"),
                window,
                stats,
            }
        };
        let reads = |store: &ModelStore| {
            let (page, _) = store.page(None, 10);
            [
                store.get("k").and_then(|m| m.open),
                store
                    .all()
                    .into_iter()
                    .find(|m| m.key == "k")
                    .and_then(|m| m.open),
                page.into_iter().find(|m| m.key == "k").and_then(|m| m.open),
            ]
        };
        // Another key, so that pages and `all` hold more than the one read.
        store.update_estimates([EstimateStats {
            key: Key::new("j"),
            ..estimate(5)
        }]);
        for n in [2, 3, 7, 8, 25, 40] {
            store.update_estimates([estimate(n)]);
            for open in reads(&store) {
                let open = open.unwrap_or_else(|| panic!("no estimate of k at n = {n}"));
                let what = format!("n = {n}: {open:?}");
                assert_eq!(open.key, "k", "{what}");
                assert_eq!((open.window_start, open.window_end), (60_000, 120_000));
                assert_eq!((open.n, open.is_final, open.revision), (n as i64, false, 0));
                if n <= 2 {
                    assert_eq!(open.status, crate::model::Status::Underdetermined, "{what}");
                    assert!(open.coef.is_none(), "{what}");
                    continue;
                }
                let coef = open
                    .coef
                    .unwrap_or_else(|| panic!("no coefficients: {what}"));
                let expected = least_squares(&rows[..n], ridge);
                for (got, want) in coef.iter().zip(&expected) {
                    assert!(
                        (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                        "{what}: coefficients {coef:?}, least squares {expected:?}"
                    );
                }
            }
        }
        assert_eq!(store.counts().open, 2);
        // The window's final: the estimate goes, and a late estimate of it does not return.
        let mut last = line("k", 120_000, true);
        last.window_start = 60_000;
        store.update([last]);
        store.update_estimates([estimate(40)]);
        assert!(
            reads(&store).iter().all(Option::is_none),
            "{:?}",
            reads(&store)
        );
        assert_eq!(store.counts().open, 1);
    }

    #[test]
    fn the_served_mark_only_advances_and_wakes_waiting_reads() {
        let store = Arc::new(ModelStore::default());
        assert_eq!(store.served(), None);
        store.served_through(3);
        store.served_through(1);
        assert_eq!(store.served(), Some(3));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            // Already folded in: at once.
            assert_eq!(store.wait_served(2, Duration::ZERO).await, Ok(3));
            // Not yet: the wait runs out, with the mark as it is.
            let started = Instant::now();
            assert_eq!(
                store.wait_served(5, Duration::from_millis(50)).await,
                Err(Some(3))
            );
            assert!(started.elapsed() >= Duration::from_millis(50));
            // Folded in while waiting: woken, not at the end of the wait.
            let advancing = Arc::clone(&store);
            let advance = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                advancing.served_through(4);
                advancing.served_through(6);
            });
            let started = Instant::now();
            assert_eq!(store.wait_served(5, Duration::from_secs(30)).await, Ok(6));
            assert!(started.elapsed() < Duration::from_secs(10));
            advance.await.unwrap();
        });
    }
}
