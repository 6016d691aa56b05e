//! Reads that see your own writes: `after_batch` (and `wait`) on `/model`, `/models` and
//! `/predict`, the `as_of` of every answer, and `/predict` with `"use": "latest"`. All
//! with `-w 2`, on 127.0.0.1, bounded in time and count, the server killed on drop.

mod common;

use common::http::*;
use common::*;
use serde_json::{Value, json};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Long enough that nothing the tests post closes: every answer has an open window.
const WIN: Win = Win::Tumbling(3_600_000);
const LATENESS_MS: i64 = 1_000;
const D: usize = 2;
/// The start of an hour window (a multiple of its length).
const START: i64 = 3_600_000 * 472_000;
const CLIENTS: usize = 50;
const ROWS: usize = 20;

/// Client `i`'s records: `ROWS` rows of its own key, all in the window at `START`.
fn client_rows(i: usize) -> Vec<Row> {
    let mut spec = GenSpec::new(ROWS, 1, D, 7_000 + i as u64);
    spec.start = START;
    spec.step = 10;
    generate(&spec)
        .into_iter()
        .map(|r| Row {
            key: format!("client{i}"),
            ..r
        })
        .collect()
}

/// `b₀ + b·x` of the oracle's least-squares fit of `rows`.
fn oracle_prediction(rows: &[Row], x: &[f64]) -> f64 {
    let model = solve_window(rows, D, None);
    let coef = model.coef.expect("the oracle solves the window");
    coef[0] + x.iter().zip(&coef[1..]).map(|(a, b)| a * b).sum::<f64>()
}

/// Checks `as_of` of an answer: present, with a batch at least `at_least` and a number
/// for the watermark.
fn check_as_of(v: &Value, at_least: u64, what: &str) -> Result<(), String> {
    let as_of = &v["as_of"];
    let batch = as_of["batch"]
        .as_u64()
        .ok_or_else(|| format!("{what}: no as_of.batch in {v}"))?;
    if batch < at_least {
        return Err(format!("{what}: as_of.batch {batch} < {at_least}: {v}"));
    }
    if !as_of["watermark"].is_i64() {
        return Err(format!("{what}: no as_of.watermark in {v}"));
    }
    Ok(())
}

/// One client: posts its rows, then at once reads them back with `after_batch`.
fn client(server_url: &dyn Fn(&str) -> String, i: usize, start: &Barrier) -> Result<u64, String> {
    let agent = agent();
    let rows = client_rows(i);
    let key = format!("client{i}");
    start.wait();
    let posted = post_rows(&agent, &server_url("/data"), &rows, D, i.is_multiple_of(2))?;
    if posted.status != 200 {
        return Err(format!(
            "{key}: POST /data: {}: {}",
            posted.status, posted.body
        ));
    }
    let batch = posted.json()["batch"]
        .as_u64()
        .ok_or_else(|| format!("{key}: no batch in {}", posted.body))?;

    // The model, right away.
    let url = server_url(&format!("/model?key={key}&after_batch={batch}&wait=30s"));
    let r = http_get(&agent, &url)?;
    if r.status != 200 {
        return Err(format!("{key}: GET /model: {}: {}", r.status, r.body));
    }
    let v = r.json();
    check_as_of(&v, batch, &format!("{key}: /model"))?;
    if v["open"]["n"].as_u64() != Some(ROWS as u64) || !v["final"].is_null() {
        return Err(format!(
            "{key}: /model after batch {batch} does not reflect its {ROWS} records: {}",
            r.body
        ));
    }

    // A prediction from the running estimate (after_batch as a JSON field).
    let x = [0.25, -0.5];
    let request = json!({"key": key, "x": x, "use": "latest", "after_batch": batch, "wait": "30s"});
    let p = http_post(
        &agent,
        &server_url("/predict"),
        Some("application/json"),
        &request.to_string(),
    )?;
    if p.status != 200 {
        return Err(format!("{key}: /predict latest: {}: {}", p.status, p.body));
    }
    let pv = p.json();
    check_as_of(&pv, batch, &format!("{key}: /predict"))?;
    let want = oracle_prediction(&rows, &x);
    let got = pv["prediction"]
        .as_f64()
        .ok_or_else(|| format!("{key}: /predict: no prediction: {}", p.body))?;
    if pv["used"] != "latest" || pv["n"] != ROWS as u64 {
        return Err(format!(
            "{key}: /predict did not use the estimate: {}",
            p.body
        ));
    }
    if (got - want).abs() > 1e-6 * (1.0 + want.abs()) {
        return Err(format!(
            "{key}: /predict latest: {got}, the oracle says {want}: {}",
            p.body
        ));
    }

    // The default is the final model, which does not exist yet: an error, never a 200
    // with a null prediction (after_batch as a query parameter).
    let p = http_post(
        &agent,
        &server_url(&format!("/predict?after_batch={batch}")),
        Some("application/json"),
        &json!({"key": key, "x": x}).to_string(),
    )?;
    if p.status != 404 || !p.json()["error"].is_string() {
        return Err(format!(
            "{key}: /predict of a key without a final model: {}: {}",
            p.status, p.body
        ));
    }
    check_as_of(&p.json(), batch, &format!("{key}: /predict 404"))?;
    Ok(batch)
}

#[test]
fn fifty_concurrent_clients_read_their_own_writes() {
    let dir = TempDir::new("fresh_fifty");
    let out = dir.path("out.jsonl");
    let server = Server::start(&dir, &http_args(&out, D, WIN, LATENESS_MS, 2));
    let url = |path: &str| server.url(path);
    let start = Barrier::new(CLIENTS);
    let started = Instant::now();
    let results: Vec<Result<u64, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (url, start) = (&url, &start);
                scope.spawn(move || client(url, i, start))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !failures.is_empty() {
        server.fail(&format!(
            "{} of {CLIENTS} clients did not read their own writes:\n{}",
            failures.len(),
            failures
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    assert!(started.elapsed() < WAIT, "took {:?}", started.elapsed());
    let newest = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .max()
        .copied();
    let newest = newest.expect("batches");

    // Every key's records, in one page read after the newest batch.
    let r = server.get(&format!("/models?after_batch={newest}&limit=1000"));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    check_as_of(&v, newest, "/models").unwrap();
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), CLIENTS, "{}", r.body);
    for m in models {
        assert_eq!(m["open"]["n"], ROWS as u64, "{m}");
    }
}

/// One read of a test, asked again.
type Ask<'a> = Box<dyn Fn() -> Resp + 'a>;

#[test]
fn a_batch_not_yet_folded_in_is_a_503_with_retry_after() {
    let dir = TempDir::new("fresh_503");
    let out = dir.path("out.jsonl");
    let server = Server::start(&dir, &http_args(&out, D, WIN, LATENESS_MS, 2));
    let rows = client_rows(0);
    let batch = server.post_rows(&rows, D, false);
    let future = batch + 1_000;
    let wait_ms = 300;
    let predict = json!({"key": "client0", "x": [1.0, 2.0], "use": "latest",
                         "after_batch": future, "wait": format!("{wait_ms}ms")});
    let attempts: [(&str, Ask); 3] = [
        (
            "/model",
            Box::new(|| {
                server.get(&format!(
                    "/model?key=client0&after_batch={future}&wait={wait_ms}ms"
                ))
            }),
        ),
        (
            "/models",
            Box::new(|| server.get(&format!("/models?after_batch={future}&wait={wait_ms}"))),
        ),
        (
            "/predict",
            Box::new(|| server.post("/predict", Some("application/json"), &predict.to_string())),
        ),
    ];
    for (what, ask) in attempts {
        let asked = Instant::now();
        let r = ask();
        let took = asked.elapsed();
        let v = r.assert_error(503, what);
        assert!(
            r.retry_after
                .as_deref()
                .is_some_and(|s| s.parse::<u64>().is_ok()),
            "{what}: Retry-After: {:?}",
            r.retry_after
        );
        assert!(
            v["error"].as_str().unwrap().contains(&future.to_string()),
            "{what}: {v}"
        );
        assert!(v["as_of"].is_object(), "{what}: no as_of: {v}");
        assert!(
            took >= Duration::from_millis(wait_ms) && took < Duration::from_secs(10),
            "{what}: answered after {took:?}, the wait was {wait_ms} ms"
        );
    }
    // The batch that was posted is folded in; a wait that is no duration is a 400.
    let r = server.get(&format!("/model?key=client0&after_batch={batch}"));
    assert_eq!(r.status, 200, "{}", r.body);
    check_as_of(&r.json(), batch, "/model").unwrap();
    assert_eq!(r.json()["open"]["n"], ROWS as u64, "{}", r.body);
    server
        .get(&format!("/model?key=client0&after_batch={batch}&wait=soon"))
        .assert_error(400, "wait=soon");
}

#[test]
fn a_post_that_closes_windows_is_read_back_final() {
    // 25 s of one key in one POST: with 10 s windows and 1 s of lateness, the batch's own
    // watermark closes [0, 10 s) and [10 s, 20 s), and [20 s, 30 s) stays open.
    let win = Win::Tumbling(10_000);
    let dir = TempDir::new("fresh_final");
    let out = dir.path("out.jsonl");
    let server = Server::start(&dir, &http_args(&out, D, win, LATENESS_MS, 2));
    let mut spec = GenSpec::new(250, 1, D, 99);
    spec.start = START;
    spec.step = 100;
    let rows = generate(&spec);
    let want = oracle(&rows, D, win, None);
    let key = rows[0].key.clone();
    let closed = &want[&(key.clone(), START + 10_000, START + 20_000)];
    let open = &want[&(key.clone(), START + 20_000, START + 30_000)];

    let batch = server.post_rows(&rows, D, false);
    let r = server.get(&format!("/model?key={key}&after_batch={batch}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    check_as_of(&v, batch, "/model").unwrap();
    assert_eq!(v["final"]["window_start"], START + 10_000, "{}", r.body);
    assert_eq!(v["final"]["n"], closed.n as u64, "{}", r.body);
    assert_eq!(v["open"]["window_start"], START + 20_000, "{}", r.body);
    assert_eq!(v["open"]["n"], open.n as u64, "{}", r.body);
    let n_final_and_open = v["final"]["n"].as_u64().unwrap() + v["open"]["n"].as_u64().unwrap();
    assert_eq!(n_final_and_open, (closed.n + open.n) as u64);

    // The default prediction is the final model's, and says so.
    let x = [0.5, 1.5];
    let p = server.post(
        "/predict",
        Some("application/json"),
        &json!({"key": key, "x": x, "after_batch": batch}).to_string(),
    );
    assert_eq!(p.status, 200, "{}", p.body);
    let pv = p.json();
    check_as_of(&pv, batch, "/predict").unwrap();
    assert_eq!(pv["used"], "final", "{}", p.body);
    assert_eq!(pv["window_start"], START + 10_000, "{}", p.body);
    let coef = closed.coef.as_ref().unwrap();
    let want_y = coef[0] + x.iter().zip(&coef[1..]).map(|(a, b)| a * b).sum::<f64>();
    let got = pv["prediction"].as_f64().unwrap();
    assert!(
        (got - want_y).abs() <= 1e-6 * (1.0 + want_y.abs()),
        "{got} vs the oracle's {want_y}"
    );
}

#[test]
fn two_processes_read_their_own_writes() {
    // `launch -n 2 -w 2`: four workers in two processes, the server on process 0. The
    // served mark follows the global frontier, and the dataflow is the same on both.
    let dir = TempDir::new("fresh_launch");
    let out = dir.path("out.jsonl");
    let mut run = http_args(&out, D, WIN, LATENESS_MS, 1);
    let w = run.iter().position(|a| a == "-w").unwrap();
    run.drain(w..w + 2);
    let mut args: Vec<String> = ["launch", "-n", "2", "-w", "2", "--"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(run);
    let server = Server::start(&dir, &args);
    let url = |path: &str| server.url(path);
    let clients = 10;
    let start = Barrier::new(clients);
    let results: Vec<Result<u64, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (url, start) = (&url, &start);
                scope.spawn(move || client(url, i, start))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        if let Err(e) = r {
            server.fail(e);
        }
    }
}
