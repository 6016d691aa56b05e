//! Running estimates served over HTTP are exact as of the batch read (docs/serving.md):
//! records of one open window posted in rounds, each round's estimate read back with
//! `after_batch` from `/model`, `/models` and `/predict` (`"use": "latest"`) and compared
//! with an independent least-squares fit (the tests' SVD oracle) of the records posted so
//! far, with the run's ridge. An estimate solved once and served again after its key's
//! records changed would fail the next round. `-w 2`, on 127.0.0.1, bounded in time, the
//! server killed on drop.

mod common;

use common::http::*;
use common::*;
use serde_json::{Value, json};

/// Long enough that nothing posted closes: every read shows the running estimate.
const WIN: Win = Win::Tumbling(3_600_000);
const D: usize = 2;
const RIDGE: f64 = 0.5;
/// The start of an hour window.
const START: i64 = 3_600_000 * 472_100;
const KEYS: [&str; 2] = ["alpha", "beta"];
/// Records per key posted in each round (the first leaves the window underdetermined).
const ROUNDS: [usize; 4] = [2, 5, 9, 30];

/// Every key's records, in posting order, all in the window at `START`.
fn key_rows(k: usize) -> Vec<Row> {
    let total = ROUNDS.iter().sum();
    let mut spec = GenSpec::new(total, 1, D, 8_100 + k as u64);
    spec.start = START + 1_000 * k as i64;
    spec.step = 7;
    generate(&spec)
        .into_iter()
        .map(|r| Row {
            key: KEYS[k].to_string(),
            ..r
        })
        .collect()
}

/// Checks a served running estimate against the oracle on `rows` (the key's records so
/// far): window, n, not final, revision 0, and the coefficients within 1e-9 (relative).
fn check_estimate(open: &Value, rows: &[Row], what: &str) -> Result<(), String> {
    let n = rows.len();
    if open["n"] != n as u64 || open["final"] != false || open["revision"] != 0 {
        return Err(format!("{what}: not the estimate of {n} records: {open}"));
    }
    if open["window_start"] != START || open["window_end"] != START + 3_600_000 {
        return Err(format!("{what}: not the window at {START}: {open}"));
    }
    let oracle = solve_window(rows, D, Some(RIDGE));
    match (&oracle.coef, open["coef"].as_array()) {
        (None, None) if open["status"] == "underdetermined" => Ok(()),
        (Some(want), Some(got)) => {
            let got: Vec<f64> = got.iter().filter_map(Value::as_f64).collect();
            let close = got.len() == want.len()
                && (got.iter().zip(want)).all(|(g, w)| (g - w).abs() <= 1e-9 * (1.0 + w.abs()));
            if close {
                Ok(())
            } else {
                Err(format!(
                    "{what}: coef {got:?}, the oracle says {want:?}: {open}"
                ))
            }
        }
        _ => Err(format!("{what}: the oracle has {:?}: {open}", oracle.coef)),
    }
}

#[test]
fn estimates_read_after_each_batch_are_the_least_squares_fit_of_its_records() {
    let dir = TempDir::new("served_estimates");
    let out = dir.path("out.jsonl");
    let args = with(
        http_args(&out, D, WIN, 1_000, 2),
        &["--ridge", &RIDGE.to_string()],
    );
    let server = Server::start(&dir, &args);
    let rows: Vec<Vec<Row>> = (0..KEYS.len()).map(key_rows).collect();
    let mut posted = 0;
    for (round, &count) in ROUNDS.iter().enumerate() {
        let batch_rows: Vec<Row> = (rows.iter())
            .flat_map(|r| r[posted..posted + count].iter().cloned())
            .collect();
        let batch = server.post_rows(&batch_rows, D, round % 2 == 1);
        posted += count;
        let fail = |e: String| server.fail(&format!("round {round} (batch {batch}): {e}"));
        for (k, key) in KEYS.iter().enumerate() {
            let so_far = &rows[k][..posted];
            let r = server.get(&format!("/model?key={key}&after_batch={batch}&wait=30s"));
            if r.status != 200 {
                fail(format!("GET /model?key={key}: {}: {}", r.status, r.body));
            }
            let v = r.json();
            if !v["final"].is_null() {
                fail(format!(
                    "{key}: a final model in an open window: {}",
                    r.body
                ));
            }
            check_estimate(&v["open"], so_far, &format!("/model?key={key}")).unwrap_or_else(&fail);
            // `/predict` with the running estimate: b₀ + b·x of the oracle's fit.
            let x = [0.5, -1.25];
            let request =
                json!({"key": key, "x": x, "use": "latest", "after_batch": batch, "wait": "30s"});
            let p = server.post("/predict", Some("application/json"), &request.to_string());
            let oracle = solve_window(so_far, D, Some(RIDGE));
            match &oracle.coef {
                Some(coef) => {
                    let want = coef[0] + x.iter().zip(&coef[1..]).map(|(a, b)| a * b).sum::<f64>();
                    let pv = p.json();
                    let got = pv["prediction"].as_f64();
                    let exact = got.is_some_and(|g| (g - want).abs() <= 1e-9 * (1.0 + want.abs()));
                    if p.status != 200 || pv["used"] != "latest" || !exact {
                        fail(format!(
                            "/predict {key}: {} {}, want {want}",
                            p.status, p.body
                        ));
                    }
                }
                // No coefficients yet: never a 200 with a made-up prediction.
                None if p.status == 200 => {
                    fail(format!("/predict {key} underdetermined: {}", p.body))
                }
                None => {}
            }
        }
        // Both keys in one page, in key order.
        let r = server.get(&format!("/models?after_batch={batch}&wait=30s&limit=10"));
        let v = r.json();
        let models = v["models"].as_array().cloned().unwrap_or_default();
        let keys: Vec<&str> = models.iter().filter_map(|m| m["key"].as_str()).collect();
        if r.status != 200 || keys != KEYS {
            fail(format!("/models: {} {}", r.status, r.body));
        }
        for (k, m) in models.iter().enumerate() {
            check_estimate(
                &m["open"],
                &rows[k][..posted],
                &format!("/models {}", KEYS[k]),
            )
            .unwrap_or_else(&fail);
        }
    }
}
