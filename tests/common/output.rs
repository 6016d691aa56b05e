//! The engine's output: its JSON lines parsed into emissions, the final models a consumer
//! keeps, revision checks, and the tokens of its exit summary on stderr.

use super::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct Emission {
    pub key: WinKey,
    pub model: Model,
    pub raw: Value,
}

fn as_i64(v: &Value, what: &str, line: &str) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("{what} is not an integer in output line {line}"))
}

/// Parses every JSON line of an output file (panics on a line that is not a JSON object
/// with the contract's fields).
pub fn parse_emissions(text: &str) -> Vec<Emission> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("output line is not JSON ({e}): {line}"));
        let key = v["key"]
            .as_str()
            .unwrap_or_else(|| panic!("key is not a string in output line {line}"))
            .to_string();
        let ws = as_i64(&v["window_start"], "window_start", line);
        let we = as_i64(&v["window_end"], "window_end", line);
        let n = v["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("n is not an unsigned integer in output line {line}"))
            as usize;
        let coef = match &v["coef"] {
            Value::Null => None,
            Value::Array(a) => Some(
                a.iter()
                    .map(|c| {
                        c.as_f64()
                            .unwrap_or_else(|| panic!("coef entry not a number in {line}"))
                    })
                    .collect::<Vec<f64>>(),
            ),
            other => panic!("coef is neither null nor an array ({other}) in {line}"),
        };
        let status = v["status"].as_str().map(|s| s.to_string());
        let is_final = match &v["final"] {
            Value::Bool(b) => *b,
            other => panic!("final is not a bool ({other}) in {line}"),
        };
        let revision = match &v["revision"] {
            Value::Null => 0,
            r => r
                .as_u64()
                .unwrap_or_else(|| panic!("revision not an unsigned integer in {line}")),
        };
        let cond = v["cond"].as_f64().unwrap_or(f64::NAN);
        let num = |name: &str| match &v[name] {
            Value::Null => None,
            x => Some(
                x.as_f64()
                    .unwrap_or_else(|| panic!("{name} is not a number in output line {line}")),
            ),
        };
        let mut model = Model::engine(n, coef, cond);
        model.r2 = num("r2");
        model.rmse = num("rmse");
        model.status = status;
        model.revision = revision;
        model.is_final = is_final;
        out.push(Emission {
            key: (key, ws, we),
            model,
            raw: v,
        });
    }
    out
}

/// What a consumer keeps: per (key, window_start, window_end), the final emission with the
/// highest revision (later lines win ties).
pub fn keep_final(ems: &[Emission]) -> BTreeMap<WinKey, Model> {
    let mut out: BTreeMap<WinKey, Model> = BTreeMap::new();
    for e in ems {
        if !e.model.is_final {
            continue;
        }
        match out.get(&e.key) {
            Some(m) if m.revision > e.model.revision => {}
            _ => {
                out.insert(e.key.clone(), e.model.clone());
            }
        }
    }
    out
}

/// The complete lines of a file that may be being written: a last line without its
/// newline is not whole yet.
pub fn complete_lines(text: &str) -> &str {
    text.rfind('\n').map_or("", |end| &text[..=end])
}

/// The final models of an output file (of its complete lines: it may be being written).
pub fn read_models(path: &Path) -> BTreeMap<WinKey, Model> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    keep_final(&parse_emissions(complete_lines(&text)))
}

/// Checks the revisions of an output's emissions against its history: per key and window
/// start, the first emission has revision 0; each later one that changed the window (its
/// end or n) or is a provisional one has the previous revision + 1, and a final one equal
/// to the last provisional one keeps its revision; nothing follows a final one. Lines
/// repeated exactly (a restart replaying output not yet checkpointed) are skipped.
pub fn assert_revisions(ems: &[Emission], ctx: &str) {
    type Seen = (i64, usize, u64, bool);
    let mut hist: BTreeMap<(String, i64), Vec<Seen>> = BTreeMap::new();
    for e in ems {
        let (key, ws, we) = &e.key;
        let m = &e.model;
        let this: Seen = (*we, m.n, m.revision, m.is_final);
        let h = hist.entry((key.clone(), *ws)).or_default();
        if h.contains(&this) {
            continue;
        }
        let want = match h.last() {
            None => 0,
            Some(&(_, _, _, true)) => panic!(
                "{ctx}: window ({key}, {ws}) emitted again after its final model: {}",
                e.raw
            ),
            Some(&(pe, pn, pr, false)) => {
                if pe == *we && pn == m.n && m.is_final {
                    pr
                } else {
                    pr + 1
                }
            }
        };
        assert_eq!(
            m.revision, want,
            "{ctx}: window ({key}, {ws}, {we}) revision {} but its history {h:?} makes it {want}: {}",
            m.revision, e.raw
        );
        h.push(this);
    }
}

/// Reads an output file whole (it must have finished), checks its revisions
/// ([`assert_revisions`]) and its final models against the oracle
/// ([`assert_matches_oracle`]).
pub fn assert_out_matches(
    path: &Path,
    want: &BTreeMap<WinKey, Model>,
    expected: usize,
    ctx: &str,
) -> usize {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{ctx}: cannot read {}: {e}", path.display()));
    let ems = parse_emissions(complete_lines(&text));
    assert_revisions(&ems, ctx);
    assert_matches_oracle(&keep_final(&ems), want, expected, ctx)
}

/// Every final revision-0 line of `--out` appears once per window (windows written final
/// are never written again, across restarts too).
pub fn assert_written_once(out: &Path) {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut seen: BTreeMap<(WinKey, u64), usize> = BTreeMap::new();
    for e in parse_emissions(complete_lines(&text)) {
        if e.model.is_final {
            *seen.entry((e.key.clone(), e.model.revision)).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "{}: windows written final more than once (first 5, with count): {twice:?}",
        out.display()
    );
}

pub fn late_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("late-out line not JSON ({e}): {l}"))
        })
        .collect()
}

pub fn summary_token(stderr: &str, name: &str) -> Option<u64> {
    let prefix = format!("{name}=");
    let mut found = None;
    for tok in stderr.split(|c: char| c.is_whitespace() || c == ',' || c == ';') {
        if let Some(rest) = tok.strip_prefix(&prefix) {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(v) = digits.parse() {
                found = Some(v);
            }
        }
    }
    found
}

/// The records each worker read, from the exit summary's `worker_records=a/b/…`.
pub fn worker_records(stderr: &str) -> Vec<u64> {
    stderr
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("worker_records="))
        .next_back()
        .map(|list| list.split('/').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// Asserts the exit summary's `worker_records=a/b/…` has one count per worker, every one
/// non-zero, summing to `total`; returns the counts.
pub fn assert_every_worker_read(stderr: &str, workers: usize, total: u64, ctx: &str) -> Vec<u64> {
    let per_worker = worker_records(stderr);
    assert_eq!(
        per_worker.len(),
        workers,
        "{ctx}: worker_records of {workers} workers expected; stderr:\n{stderr}"
    );
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "{ctx}: a worker read nothing: {per_worker:?}"
    );
    assert_eq!(
        per_worker.iter().sum::<u64>(),
        total,
        "{ctx}: worker_records {per_worker:?} do not add up to the records"
    );
    per_worker
}
