//! The deterministic generator: keys with a known true β each, plus noise.
//!
//! Record `i` has key `k{i mod keys}`, time `start + i·step + u` with `u` uniform in
//! `[0, disorder]` (so timestamps are out of order by at most `disorder`), features
//! `x ~ N(0, 1)ᵈ` and target `y = β₀ + x·β + 0.1·ε` with the key's β. Records come in
//! [`GEN_BLOCK`]-record blocks, each drawn from its own PCG stream seeded by
//! `(seed, block)`, so the stream is the same whatever the number of workers or the batch
//! size; `tributary gen` writes exactly this stream as CSV.

use std::fmt;
use std::str::FromStr;

use rand::RngExt;
use rand_distr::StandardNormal;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::sink::RecordSink;
use crate::record::{RecordRef, TIME_LIMIT};
use crate::window::{Time, parse_duration};

/// Records per independently seeded block.
pub const GEN_BLOCK: u64 = 1024;

/// Parameters of the generated stream (`gen:rows=N,keys=K,features=D,seed=S,...`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GenSpec {
    /// Number of records.
    pub rows: u64,
    /// Number of keys.
    pub keys: u64,
    /// Number of features `d`.
    pub features: usize,
    /// Seed.
    pub seed: u64,
    /// Largest displacement of a timestamp (ms).
    pub disorder: Time,
    /// Time between consecutive records (ms).
    pub step: Time,
    /// Time of record 0 (ms since the epoch).
    pub start: Time,
    /// Records per batch (epoch); a multiple of [`GEN_BLOCK`].
    pub batch: u64,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            rows: 1_000_000,
            keys: 16,
            features: 8,
            seed: 42,
            disorder: 0,
            step: 1,
            start: 1_700_000_000_000,
            batch: 64 * GEN_BLOCK,
        }
    }
}

impl FromStr for GenSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut spec = GenSpec::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("gen: expected NAME=VALUE, found {part:?}"))?;
            let int = |v: &str| {
                v.replace('_', "")
                    .parse::<u64>()
                    .map_err(|_| format!("gen: {name}={v} is not a non-negative integer"))
            };
            match name {
                "rows" => spec.rows = int(value)?,
                "keys" => spec.keys = int(value)?,
                "features" | "d" => spec.features = int(value)? as usize,
                "seed" => spec.seed = int(value)?,
                "disorder" => spec.disorder = parse_duration(value)?,
                "step" => spec.step = parse_duration(value)?,
                "start" => {
                    spec.start = Time::try_from(int(value)?)
                        .map_err(|_| format!("gen: start={value} is out of range"))?
                }
                "batch" => spec.batch = int(value)?,
                _ => return Err(format!("gen: unknown parameter {name:?}")),
            }
        }
        spec.validate()?;
        Ok(spec)
    }
}

impl fmt::Display for GenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rows={},keys={},features={},seed={},disorder={},step={},start={},batch={}",
            self.rows,
            self.keys,
            self.features,
            self.seed,
            self.disorder,
            self.step,
            self.start,
            self.batch
        )
    }
}

impl GenSpec {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        if self.keys == 0 || self.features == 0 {
            return Err("gen: keys and features must be at least 1".into());
        }
        if self.batch == 0 || !self.batch.is_multiple_of(GEN_BLOCK) {
            return Err(format!(
                "gen: batch must be a positive multiple of {GEN_BLOCK}"
            ));
        }
        // The last record's time, at most: start + (rows - 1)·step + disorder.
        let last = (self.rows.saturating_sub(1) as i128) * self.step as i128
            + self.start as i128
            + self.disorder as i128;
        if last > TIME_LIMIT as i128 || self.start < -TIME_LIMIT {
            return Err(format!(
                "gen: times would pass {TIME_LIMIT} ms (start + rows·step + disorder), the \
                 largest event time"
            ));
        }
        Ok(())
    }

    /// The true coefficients `[β₀, β₁, …, β_d]` of key index `k`.
    pub fn beta(&self, k: u64) -> Vec<f64> {
        let mut beta = vec![0.0; self.features + 1];
        self.beta_into(k, &mut beta);
        beta
    }

    /// Writes [`GenSpec::beta`] of key index `k` into `beta` (`d + 1` long).
    pub fn beta_into(&self, k: u64, beta: &mut [f64]) {
        let mut rng = Pcg64Mcg::new(mix(self.seed ^ 0xB37A, k) as u128 | 1);
        for b in beta {
            *b = rng.random_range(-2.0..2.0);
        }
    }

    /// The number of batches.
    pub fn batches(&self) -> u64 {
        self.rows.div_ceil(self.batch)
    }
}

/// SplitMix64 of `a` and `b`: well-spread seeds for neighbouring block numbers.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Up to this many keys, a reader makes every key's name and β once, when it is made.
/// With more, it makes a record's as it generates the record (the same values: a key's β
/// is drawn from a stream of its own), so that making a reader takes neither time nor
/// memory in proportion to the keys: at a million keys, making them ahead took a third
/// of a million-record run's instructions, on each worker and on the thread that checks
/// the source.
const KEYS_MADE_AHEAD: u64 = 1 << 16;

/// And only while their β take at most this many numbers (8 MiB), so that many features
/// do not make a reader hold gigabytes before its first record.
const NUMBERS_MADE_AHEAD: u64 = 1 << 20;

/// One worker's share of the generated stream.
pub struct GenReader {
    spec: GenSpec,
    /// Every key's name, when there are at most [`KEYS_MADE_AHEAD`] (and their β at most
    /// [`NUMBERS_MADE_AHEAD`] numbers); otherwise empty.
    names: Vec<String>,
    /// Every key's β, `d + 1` numbers each, with `names`.
    betas: Vec<f64>,
    /// The current record's key name and β, when they are not made ahead.
    name: String,
    beta: Vec<f64>,
    next: u64,
    peers: u64,
    z: Vec<f64>,
}

impl GenReader {
    /// Worker `index`'s share (of `peers`): batches `index, index + peers, …`.
    pub fn new(spec: &GenSpec, index: usize, peers: usize) -> Self {
        Self::making_ahead(spec, index, peers, KEYS_MADE_AHEAD)
    }

    /// [`GenReader::new`], making keys ahead up to `limit` keys.
    fn making_ahead(spec: &GenSpec, index: usize, peers: usize, limit: u64) -> Self {
        let m = spec.features + 1;
        let numbers = spec.keys.saturating_mul(m as u64);
        let ahead = if spec.keys <= limit && numbers <= NUMBERS_MADE_AHEAD {
            spec.keys
        } else {
            0
        };
        let mut betas = vec![0.0; ahead as usize * m];
        for (k, beta) in betas.chunks_exact_mut(m).enumerate() {
            spec.beta_into(k as u64, beta);
        }
        GenReader {
            names: (0..ahead).map(|k| format!("k{k}")).collect(),
            betas,
            name: String::new(),
            beta: vec![0.0; m],
            spec: spec.clone(),
            next: index as u64,
            peers: peers as u64,
            z: vec![0.0; m],
        }
    }

    /// The next batch this worker generates, or `None` when done.
    pub fn next_batch(&self) -> Option<u64> {
        (self.next < self.spec.batches()).then_some(self.next)
    }

    /// Skips to the first of this worker's batches at or after `batch`.
    pub fn seek(&mut self, batch: u64) {
        while self.next < batch {
            self.next += self.peers;
        }
    }

    /// Generates the next batch into `sink`.
    ///
    /// Never inlined: inlined into the source operator, the normal samples stopped being
    /// inlined into the loop that makes them (a third more time at 16 keys, seen when the
    /// operator grew in session 22).
    #[inline(never)]
    pub fn read_batch<S: RecordSink>(&mut self, sink: &mut S) {
        let Some(b) = self.next_batch() else { return };
        self.next += self.peers;
        let first = b * self.spec.batch;
        let last = (first + self.spec.batch).min(self.spec.rows);
        self.generate(first, last, |r| sink.record(r));
    }

    /// Generates records `first..last` (`first` a multiple of [`GEN_BLOCK`]).
    pub fn generate(&mut self, first: u64, last: u64, mut f: impl FnMut(RecordRef<'_>)) {
        let d = self.spec.features;
        let mut i = first;
        while i < last {
            let block = i / GEN_BLOCK;
            let mut rng = Pcg64Mcg::new(mix(self.spec.seed, block) as u128 | 1);
            let end = ((block + 1) * GEN_BLOCK).min(last);
            while i < end {
                let k = (i % self.spec.keys) as usize;
                let jitter = if self.spec.disorder > 0 {
                    rng.random_range(0..=self.spec.disorder)
                } else {
                    0
                };
                let time = self.spec.start + i as Time * self.spec.step + jitter;
                let (key, beta) = if self.names.is_empty() {
                    self.name.clear();
                    self.name.push('k');
                    self.name.push_str(itoa::Buffer::new().format(k));
                    self.spec.beta_into(k as u64, &mut self.beta);
                    (self.name.as_str(), self.beta.as_slice())
                } else {
                    let m = d + 1;
                    (self.names[k].as_str(), &self.betas[k * m..k * m + m])
                };
                let (intercept, slopes) = beta.split_first().expect("d + 1 coefficients");
                let mut y = *intercept;
                for (z, slope) in self.z[..d].iter_mut().zip(slopes) {
                    let x: f64 = rng.sample(StandardNormal);
                    *z = x;
                    y += slope * x;
                }
                let noise: f64 = rng.sample(StandardNormal);
                self.z[d] = y + 0.1 * noise;
                f(RecordRef {
                    time,
                    key,
                    z: &self.z,
                });
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(spec: &GenSpec, peers: usize) -> Vec<(i64, String, Vec<f64>)> {
        all_making_ahead(spec, peers, KEYS_MADE_AHEAD)
    }

    fn all_making_ahead(spec: &GenSpec, peers: usize, limit: u64) -> Vec<(i64, String, Vec<f64>)> {
        struct Collect(Vec<(i64, String, Vec<f64>)>);
        impl RecordSink for Collect {
            fn record(&mut self, r: RecordRef<'_>) {
                self.0.push((r.time, r.key.to_owned(), r.z.to_vec()));
            }
            fn malformed(
                &mut self,
                _: crate::source::sink::Malformed,
            ) -> Result<(), crate::source::sink::SourceError> {
                unreachable!()
            }
        }
        let mut out = Collect(Vec::new());
        for w in 0..peers {
            let mut r = GenReader::making_ahead(spec, w, peers, limit);
            while r.next_batch().is_some() {
                r.read_batch(&mut out);
            }
        }
        out.0.sort_by(|a, b| a.partial_cmp(b).unwrap());
        out.0
    }

    #[test]
    fn times_stay_in_range() {
        let last = |spec: &str| spec.parse::<GenSpec>().map(|_| ());
        assert!(last("rows=1000,step=1000,start=4611686018427386000").is_err());
        assert!(last("rows=1,start=4611686018427387904").is_ok());
        assert!(last("rows=1,start=4611686018427387905").is_err());
        assert!(last("rows=2,start=9223372036854775808").is_err());
        assert!(last("rows=1000000,step=1000,start=1700000000000,disorder=5s").is_ok());
    }

    #[test]
    fn stream_does_not_depend_on_workers_or_batch() {
        let spec: GenSpec = "rows=5000,keys=3,features=2,seed=7,disorder=50,batch=1024"
            .parse()
            .unwrap();
        let one = all(&spec, 1);
        assert_eq!(one.len(), 5000);
        assert_eq!(one, all(&spec, 3));
        let bigger = GenSpec {
            batch: 4096,
            ..spec.clone()
        };
        assert_eq!(one, all(&bigger, 2));
    }

    /// Keys made as records are generated give the stream that keys made ahead give.
    #[test]
    fn keys_made_late_are_the_keys_made_ahead() {
        let spec: GenSpec = "rows=6000,keys=700,features=3,seed=11,disorder=20,batch=1024"
            .parse()
            .unwrap();
        let ahead = all_making_ahead(&spec, 2, u64::MAX);
        assert_eq!(ahead.len(), 6000);
        assert!(ahead.iter().any(|(_, key, _)| key == "k699"));
        assert_eq!(ahead, all_making_ahead(&spec, 2, 0));
        assert_eq!(ahead, all_making_ahead(&spec, 1, 699));
    }
}
