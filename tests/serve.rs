//! Serving (docs/serving.md) with the real binary: records posted over HTTP give the
//! oracle's models in `--out`, in `/models`, `/model` and `/predict`, and in the running
//! estimates of open windows; `kill -9` after an answer loses nothing and counts nothing
//! twice; errors have the documented statuses and JSON bodies; backpressure answers 503
//! with `Retry-After` and refused records are not counted; a bounded load test. (The TCP
//! line source: tests/tcp.rs; a followed file: tests/follow.rs.) Everything on 127.0.0.1,
//! bounded in time, processes killed on drop.

mod common;

use common::http::*;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A key's expected (newest final, open estimate, windows a provisional emission may show).
type ExpectedKeys = BTreeMap<String, (Option<WinKey>, Option<WinKey>, Vec<WinKey>)>;

fn oracle_one(rows: &[Row], key: &WinKey, d: usize, win: Win) -> BTreeMap<WinKey, Model> {
    let groups = group_windows(rows, win);
    let g = groups
        .get(key)
        .unwrap_or_else(|| panic!("oracle has no window {key:?}"));
    BTreeMap::from([(key.clone(), solve_window(g, d, None))])
}

// ---------------------------------------------------------------------------------------
// 1. Oracle agreement: --out, /models, /model, /predict, running estimates
// ---------------------------------------------------------------------------------------

/// What the served state must be once the dataflow has read `posted` (data rows only),
/// with `worker_max[p]` the largest time in the batches of partition `p` (the ingest log is
/// one partition, whatever the worker count): per key, the window
/// of the newest final model, the window of the running estimate (min end after the
/// frontier), and the windows a provisional emission may show (end in (watermark,
/// frontier]).
struct Expected {
    frontier: i64,
    watermark: i64,
    keys: ExpectedKeys,
}

fn expected_live(posted: &[Row], worker_max: &[i64], win: Win, lateness_ms: i64) -> Expected {
    let frontier = *worker_max.iter().min().unwrap();
    let watermark = frontier - lateness_ms;
    let mut keys: ExpectedKeys = BTreeMap::new();
    for k in group_windows(posted, win).keys() {
        let e = keys.entry(k.0.clone()).or_default();
        if k.2 <= watermark {
            // Newest final: highest end, then highest start.
            if e.0.as_ref().is_none_or(|f| (k.2, k.1) > (f.2, f.1)) {
                e.0 = Some(k.clone());
            }
        } else if k.2 > frontier {
            if e.1.as_ref().is_none_or(|o| (k.2, k.1) < (o.2, o.1)) {
                e.1 = Some(k.clone());
            }
        } else {
            e.2.push(k.clone());
        }
    }
    Expected {
        frontier,
        watermark,
        keys,
    }
}

/// Waits until `/models` shows, for every key, the expected final window and an open
/// window that is the expected estimate (or a provisional emission) with the n of the
/// records posted so far; then compares both with the oracle: finals on all rows (`all`:
/// a closed window has all its records), the open one on the rows posted so far.
#[allow(clippy::too_many_arguments)]
fn check_live(
    server: &Server,
    posted: &[Row],
    all: &[Row],
    worker_max: &[i64],
    win: Win,
    lateness_ms: i64,
    d: usize,
    ctx: &str,
) {
    let exp = expected_live(posted, worker_max, win, lateness_ms);
    let posted_groups = group_windows(posted, win);
    let (watermark, models) = server.wait_for(&format!("{ctx}: live models"), || {
        let (watermark, models) = served_models(server);
        for (key, (fin, open, provisional)) in &exp.keys {
            let Some((sf, so)) = models.get(key) else {
                return Err(format!("no models for key {key}"));
            };
            if sf.as_ref().map(|e| &e.key) != fin.as_ref() {
                return Err(format!(
                    "key {key}: final window {:?}, expected {fin:?}",
                    sf.as_ref().map(|e| &e.key)
                ));
            }
            let so = match so {
                Some(so) => so,
                None if open.is_none() && provisional.is_empty() => continue,
                None => return Err(format!("key {key}: no open model, expected {open:?}")),
            };
            if open.is_none() && provisional.is_empty() {
                return Err(format!(
                    "key {key}: open model {:?} although every window of the key is final",
                    so.key
                ));
            }
            if Some(&so.key) != open.as_ref() && !provisional.contains(&so.key) {
                return Err(format!(
                    "key {key}: open window {:?}, expected {open:?} (or provisional {provisional:?})",
                    so.key
                ));
            }
            let n = posted_groups[&so.key].len();
            if so.model.n != n {
                return Err(format!(
                    "key {key}: open window {:?} has n {}, {n} posted",
                    so.key, so.model.n
                ));
            }
        }
        Ok((watermark, models))
    });
    assert_eq!(
        watermark, exp.watermark,
        "{ctx}: served watermark (frontier {})",
        exp.frontier
    );
    for (key, (fin, _, _)) in &exp.keys {
        let (sf, so) = &models[key];
        if let (Some(f), Some(wk)) = (sf, fin) {
            assert_matches_oracle(
                &one(f),
                &oracle_one(all, wk, d, win),
                1,
                &format!("{ctx}: /models final of {key}"),
            );
        }
        let Some(o) = so.as_ref() else {
            // No open window (checked above): /model?key=K agrees.
            let r = server.get(&format!("/model?key={key}"));
            assert_eq!(r.status, 200, "{ctx}: /model?key={key}: {}", r.body);
            assert_eq!(
                r.json()["open"],
                Value::Null,
                "{ctx}: /model?key={key}: {}",
                r.body
            );
            continue;
        };
        // The running estimate is not final: compare everything but the flag.
        let mut got = one(o);
        got.values_mut().for_each(|m| m.is_final = true);
        assert_matches_oracle(
            &got,
            &oracle_one(posted, &o.key, d, win),
            1,
            &format!(
                "{ctx}: /models open of {key} (running estimate on the records posted so far)"
            ),
        );
        // /model?key=K says the same.
        let r = server.get(&format!("/model?key={key}"));
        assert_eq!(r.status, 200, "{ctx}: /model?key={key}: {}", r.body);
        let v = r.json();
        assert_eq!(v["key"], key.as_str());
        assert_eq!(
            served(&v["open"]).map(|e| e.key),
            Some(o.key.clone()),
            "{ctx}: /model?key={key} open differs from /models: {}",
            r.body
        );
    }
}

fn predict_tol(coef: &[f64], x: &[f64]) -> f64 {
    let scale = coef.iter().map(|c| c.abs()).fold(1.0, f64::max);
    COEF_TOL * scale * (1.0 + x.iter().map(|v| v.abs()).sum::<f64>())
}

fn oracle_agreement(workers: usize, win: Win, name: &str) {
    let started = Instant::now();
    let d = 3;
    let lateness = 1000;
    let mut spec = GenSpec::new(20_000, 4, d, 11 + workers as u64);
    spec.disorder = 500;
    if let Win::Session(_) = win {
        // Pauses longer than the gap and the lateness: sessions end, and close.
        spec.pause_prob = 0.002;
        spec.pause = 3_000;
    }
    let rows = generate(&spec);
    let want = oracle(&rows, d, win, None);
    let dir = TempDir::new(name);
    let out = dir.path("models.jsonl");
    let server = Server::start(&dir, &http_args(&out, d, win, lateness, workers));

    let chunks: Vec<&[Row]> = rows.chunks(1000).collect();
    // The ingest log is one partition: its frontier is the largest time posted, however
    // the batches are spread over the workers.
    let mut log_max = [i64::MIN];
    let mut posted = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let batch = server.post_rows(chunk, d, i % 2 == 1);
        assert_eq!(batch, i as u64, "{name}: batch numbers count the posts");
        log_max[0] = log_max[0].max(chunk.iter().map(|r| r.ts).max().unwrap());
        posted += chunk.len();
        if i + 1 == chunks.len() / 2 || i + 1 == chunks.len() {
            check_live(
                &server,
                &rows[..posted],
                &rows,
                &log_max,
                win,
                lateness,
                d,
                &format!("{name}: after {} posts", i + 1),
            );
        }
    }

    post_sentinel(&server, closing_time(&want, lateness), d);

    // (a) --out: the final models equal the oracle's windows.
    let got = wait_for_out(&server, &out, &want);
    assert_matches_oracle(&got, &want, want.len(), &format!("{name}: --out"));
    assert_written_once(&out);

    // (b) /models and /model: each key's newest window, final, equal to the oracle.
    let mut newest: BTreeMap<String, WinKey> = BTreeMap::new();
    for k in want.keys() {
        let e = newest.entry(k.0.clone()).or_insert_with(|| k.clone());
        if (k.2, k.1) > (e.2, e.1) {
            *e = k.clone();
        }
    }
    let (_, models) = server.wait_for(&format!("{name}: /models final"), || {
        let (w, m) = served_models(&server);
        for (key, wk) in &newest {
            let f = m.get(key).and_then(|(f, _)| f.as_ref()).map(|e| &e.key);
            if f != Some(wk) {
                return Err(format!("key {key}: final {f:?}, expected {wk:?}"));
            }
        }
        Ok((w, m))
    });
    for (key, wk) in &newest {
        let want_one = BTreeMap::from([(wk.clone(), want[wk].clone())]);
        let f = models[key].0.as_ref().unwrap();
        assert_matches_oracle(
            &one(f),
            &want_one,
            want_one.len(),
            &format!("{name}: /models final of {key}"),
        );
        let r = server.get(&format!("/model?key={key}"));
        assert_eq!(r.status, 200, "/model?key={key}: {}", r.body);
        let v = r.json();
        assert_eq!(v["key"], key.as_str(), "{}", r.body);
        let f = served(&v["final"]).unwrap_or_else(|| panic!("no final in {}", r.body));
        assert_matches_oracle(
            &one(&f),
            &want_one,
            want_one.len(),
            &format!("{name}: /model?key={key}"),
        );

        // (c) /predict, one row and several, from the oracle's coefficients.
        let coef = want[wk].coef.clone().expect("determined window");
        let yhat = |x: &[f64]| coef[0] + x.iter().zip(&coef[1..]).map(|(a, b)| a * b).sum::<f64>();
        let x = vec![0.25, -0.5, 0.75];
        let r = server.post(
            "/predict",
            Some("application/json"),
            &serde_json::json!({"key": key, "x": x}).to_string(),
        );
        assert_eq!(r.status, 200, "/predict {key}: {}", r.body);
        let v = r.json();
        assert_eq!(v["key"], key.as_str(), "{}", r.body);
        assert_eq!(
            v["window_start"], wk.1,
            "/predict names the window: {}",
            r.body
        );
        assert_eq!(
            v["window_end"], wk.2,
            "/predict names the window: {}",
            r.body
        );
        let p = v["prediction"]
            .as_f64()
            .unwrap_or_else(|| panic!("{}", r.body));
        assert!(
            (p - yhat(&x)).abs() <= predict_tol(&coef, &x),
            "{name}: /predict {key} x={x:?}: {p} vs oracle {}",
            yhat(&x)
        );
        let rows_x = vec![
            vec![0.0, 0.0, 0.0],
            vec![1.0, -1.0, 0.5],
            vec![-0.9, 0.3, 0.1],
        ];
        let r = server.post(
            "/predict",
            None,
            &serde_json::json!({"key": key, "rows": rows_x}).to_string(),
        );
        assert_eq!(r.status, 200, "/predict rows {key}: {}", r.body);
        let v = r.json();
        assert_eq!(v["window_start"], wk.1, "{}", r.body);
        assert_eq!(v["window_end"], wk.2, "{}", r.body);
        let ps = v["predictions"]
            .as_array()
            .unwrap_or_else(|| panic!("no predictions: {}", r.body));
        assert_eq!(ps.len(), rows_x.len(), "{}", r.body);
        for (p, x) in ps.iter().zip(&rows_x) {
            let p = p.as_f64().unwrap();
            assert!(
                (p - yhat(x)).abs() <= predict_tol(&coef, x),
                "{name}: /predict rows {key} x={x:?}: {p} vs oracle {}",
                yhat(x)
            );
        }
    }
    eprintln!(
        "{name}: {} windows, {} rows, {:?}",
        want.len(),
        rows.len(),
        started.elapsed()
    );
}

#[test]
fn posted_records_give_the_oracle_models_one_worker() {
    oracle_agreement(1, Win::Tumbling(10_000), "oracle-w1");
}

#[test]
fn posted_records_give_the_oracle_models_two_workers() {
    oracle_agreement(2, Win::Sliding(20_000, 10_000), "oracle-w2");
}

#[test]
fn posted_records_give_the_oracle_models_sessions_two_workers() {
    oracle_agreement(2, Win::Session(1_500), "oracle-session-w2");
}

// ---------------------------------------------------------------------------------------
// 2. kill -9 right after an answer: nothing accepted is lost, nothing counted twice
// ---------------------------------------------------------------------------------------

/// Asserts that, right after a (re)start and before any post, `/model?key=K` answers every
/// key of `seen` with a final model at least as new as the one seen before the kill, and
/// equal to the oracle's model of its window.
fn assert_models_kept(
    server: &Server,
    seen: &BTreeMap<String, WinKey>,
    want: &BTreeMap<WinKey, Model>,
    ctx: &str,
) {
    for (key, before) in seen {
        let r = server.get(&format!("/model?key={key}"));
        assert_eq!(
            r.status,
            200,
            "{ctx}: /model?key={key} right after the restart: {}\nstderr:\n{}",
            r.body,
            server.stderr_text()
        );
        let f = served(&r.json()["final"])
            .unwrap_or_else(|| panic!("{ctx}: /model?key={key}: no final model: {}", r.body));
        assert!(
            (f.key.2, f.key.1) >= (before.2, before.1),
            "{ctx}: /model?key={key} after the restart serves {:?}, older than {before:?} served before the kill",
            f.key
        );
        let w = want
            .get(&f.key)
            .unwrap_or_else(|| panic!("{ctx}: served window {:?} is not an oracle window", f.key));
        assert_matches_oracle(
            &one(&f),
            &BTreeMap::from([(f.key.clone(), w.clone())]),
            1,
            &format!("{ctx}: /model?key={key} after the restart"),
        );
    }
}

/// After a restart: it resumed from a checkpoint epoch `E` (stderr), and its ingest log
/// holds exactly the batches after `E` (read again), numbered on from the last one.
fn assert_replays_log_tail(server: &Server, sizes: &[usize], ctx: &str) {
    let epoch = resumed_epoch(server) as usize;
    // Usually the post answered right before the kill is not covered by a checkpoint yet
    // and is read again from the log; when a checkpoint came in between, the tail is
    // empty. Either way the log must hold exactly the batches after the epoch. (A
    // checkpoint may be at an empty batch the log numbered itself, after the last post:
    // see `a_quiet_source_is_checkpointed_through_its_last_batch`.)
    let h = server.get("/healthz");
    let v = h.json();
    let tail: usize = sizes.get(epoch + 1..).unwrap_or_default().iter().sum();
    assert_eq!(
        v["ingest"]["next_batch"],
        sizes.len().max(epoch + 1),
        "{ctx}: the ingest log numbers on: {}",
        h.body
    );
    assert_eq!(
        v["ingest"]["appended"], tail,
        "{ctx}: the log holds the records of batches after epoch {epoch}: {}",
        h.body
    );
    eprintln!(
        "kill9: {ctx} resumed from epoch {epoch}, replays {tail} records; healthz {}",
        h.body
    );
}

#[test]
fn kill_9_after_an_answer_loses_nothing_and_counts_nothing_twice() {
    let d = 3;
    let lateness = 1000;
    let workers = 2;
    let win = Win::Tumbling(10_000);
    let mut spec = GenSpec::new(12_000, 3, d, 23);
    spec.disorder = 500;
    let rows = generate(&spec);
    let want = oracle(&rows, d, win, None);
    let dir = TempDir::new("kill9");
    let out = dir.path("models.jsonl");
    let ckpt = dir.path("ckpt");
    let args = with(
        http_args(&out, d, win, lateness, workers),
        &[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--checkpoint-every",
            "50ms",
        ],
    );
    let chunks: Vec<&[Row]> = rows.chunks(1000).collect();
    let kills_after = [3usize, 7]; // kill right after the answer to post number 3 and 7
    let mut next = 0;
    let mut seen: BTreeMap<String, WinKey> = BTreeMap::new();
    // Records of each ingest-log batch so far, by batch number (0 for the empty batches
    // the log numbers itself, checkpoint requests while the posts pause).
    let mut sizes: Vec<usize> = Vec::new();
    let numbered = |sizes: &mut Vec<usize>, batch: u64, records: usize| {
        assert!(
            batch as usize >= sizes.len(),
            "batch numbers go on across restarts: {batch} after {}",
            sizes.len()
        );
        sizes.resize(batch as usize, 0);
        sizes.push(records);
    };
    for (round, &kill_after) in kills_after.iter().enumerate() {
        let mut server = Server::start(&dir, &args);
        if round > 0 {
            assert_models_kept(&server, &seen, &want, &format!("restart {round}"));
            assert_replays_log_tail(&server, &sizes, &format!("restart {round}"));
        }
        while next < kill_after {
            let batch = server.post_rows(chunks[next], d, next % 2 == 0);
            numbered(&mut sizes, batch, chunks[next].len());
            next += 1;
            // Spaced posts, so that checkpoint epochs (every 50 ms) fall on them.
            std::thread::sleep(Duration::from_millis(60));
        }
        // Before the kill, let the server show a final model for every key, so that the
        // restart has something to serve at once.
        seen = server.wait_for(&format!("round {round}: finals before the kill"), || {
            let (_, m) = served_models(&server);
            let keys: BTreeSet<String> =
                rows[..next * 1000].iter().map(|r| r.key.clone()).collect();
            let mut out = BTreeMap::new();
            for key in keys {
                match m.get(&key).and_then(|(f, _)| f.as_ref()) {
                    Some(f) if f.key.2 > seen.get(&key).map_or(i64::MIN, |s| s.2) => {
                        out.insert(key, f.key.clone());
                    }
                    other => return Err(format!("key {key}: final {:?}", other.map(|e| &e.key))),
                }
            }
            Ok(out)
        });
        // One more post; kill -9 as soon as it is answered.
        let batch = server.post_rows(chunks[next], d, next % 2 == 0);
        numbered(&mut sizes, batch, chunks[next].len());
        next += 1;
        server.kill();
        eprintln!("kill9: killed after post {next}; finals served before: {seen:?}");
    }
    let server = Server::start(&dir, &args);
    assert_models_kept(&server, &seen, &want, "last restart");
    assert_replays_log_tail(&server, &sizes, "last restart");
    while next < chunks.len() {
        server.post_rows(chunks[next], d, next % 2 == 0);
        next += 1;
    }
    post_sentinel(&server, closing_time(&want, lateness), d);
    let got = wait_for_out(&server, &out, &want);
    assert_matches_oracle(
        &got,
        &want,
        want.len(),
        "kill9: --out after two kill -9 (exactly once: n)",
    );
    assert_written_once(&out);
    let total: usize = got.values().map(|m| m.n).sum();
    assert_eq!(total, rows.len(), "kill9: records over the final windows");
}

/// Posts 5 000 records in 5 spaced posts (checkpoints every 20 ms), reads `/healthz`,
/// kills the server (-9) and restarts it: (server, resumed epoch, healthz before the kill).
fn restarted_after_checkpoints(dir: &TempDir) -> (Server, u64, Value) {
    let d = 2;
    let mut spec = GenSpec::new(5_000, 2, d, 5);
    spec.disorder = 100;
    let rows = generate(&spec);
    let out = dir.path("models.jsonl");
    let ckpt = dir.path("ckpt");
    let args = with(
        http_args(&out, d, Win::Tumbling(10_000), 1000, 1),
        &[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--checkpoint-every",
            "20ms",
        ],
    );
    let mut server = Server::start(dir, &args);
    for chunk in rows.chunks(1000) {
        server.post_rows(chunk, d, false);
        std::thread::sleep(Duration::from_millis(40));
    }
    server.wait_for("every record read", || {
        let v = server.get("/healthz").json();
        (v["records"] == rows.len())
            .then_some(())
            .ok_or(v.to_string())
    });
    // Give a commit of these epochs up to 5 s to show in /healthz (not asserted here).
    let deadline = Instant::now() + Duration::from_secs(5);
    let before = loop {
        let v = server.get("/healthz").json();
        if v["checkpoint_epoch"].as_u64().is_some_and(|e| e > 0) || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    server.kill();
    let server = Server::start(dir, &args);
    let epoch = resumed_epoch(&server);
    (server, epoch, before)
}

/// Regression test for an ENGINE BUG seen at 141cc8f (the src/ committed then): the
/// `checkpoint_epoch` of `/healthz` and `tributary_checkpoint_epoch` of `/metrics`
/// ("newest committed checkpoint epoch", docs/serving.md) were wrong with an HTTP source:
/// (1) before a kill they stayed 0 although checkpoints were committed: the commit is
///     written to the store at once (a restart resumes from it), but the `Committed`
///     notice that set the metric (and truncated the ingest log) came back through a
///     feedback edge delayed by 8 × MAX_AHEAD_PER_WORKER × workers = 4096 × workers epochs
///     (then src/job/run.rs, now src/job/worker.rs: `scope.feedback(slack)`), i.e. only after thousands more posts;
/// (2) after a restart that resumed from epoch E, they said 0 until the next commit.
/// Fixed by fc4e5a3 (the coordinator reports each commit at once; a resumed run
/// reports its commit).
#[test]
fn checkpoint_epoch_reports_the_committed_checkpoint() {
    let dir = TempDir::new("ckpt-epoch");
    let (server, epoch, before) = restarted_after_checkpoints(&dir);
    assert!(
        before["checkpoint_epoch"].as_u64().is_some_and(|e| e > 0),
        "ENGINE BUG: 5 posts 40 ms apart with --checkpoint-every 20ms, every record read, \
         5 s waited: /healthz still says {before} (the run then resumed from committed \
         epoch {epoch})"
    );
    let health = server.get("/healthz");
    let metric = server.metric("tributary_checkpoint_epoch");
    assert!(
        health.json()["checkpoint_epoch"]
            .as_u64()
            .is_some_and(|e| e >= epoch)
            && metric.is_some_and(|m| m >= epoch as f64),
        "ENGINE BUG: the run resumed from committed checkpoint epoch {epoch}, but /healthz \
         says {} and /metrics tributary_checkpoint_epoch {metric:?} (before the kill, \
         /healthz said {before})",
        health.body
    );
}

/// Regression test for an ENGINE BUG seen at d15befa (session 24's flaky
/// `followed_file_is_read_as_it_grows_exactly_once_across_kill_9`): a worker marks a batch
/// of a live source as a checkpoint epoch only if `--checkpoint-every` has passed since its
/// last mark when the batch arrives, so records posted in a burst and then nothing were
/// never checkpointed: the newest checkpoint lagged until more records came, and a restart
/// read the whole burst again from the ingest log. Now the log, quiet for
/// `--checkpoint-every`, asks for a checkpoint through its newest batch. Three posts right
/// after the start (within the 2 s of `--checkpoint-every`: the clock most likely marks
/// none of them), `-w 2`: a checkpoint covers them all, the restart after kill -9 replays nothing,
/// and the final models equal the oracle's.
#[test]
fn a_quiet_source_is_checkpointed_through_its_last_batch() {
    let dir = TempDir::new("quiet-checkpoint");
    let d = 2;
    let win = Win::Tumbling(10_000);
    let lateness = 1000;
    let mut spec = GenSpec::new(3_000, 3, d, 23);
    spec.disorder = 100;
    let rows = generate(&spec);
    let want = oracle(&rows, d, win, None);
    let out = dir.path("models.jsonl");
    let ckpt = dir.path("ckpt");
    let args = with(
        http_args(&out, d, win, lateness, 2),
        &[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--checkpoint-every",
            "2s",
        ],
    );
    let mut server = Server::start(&dir, &args);
    let batches: Vec<u64> = rows
        .chunks(1000)
        .map(|chunk| server.post_rows(chunk, d, false))
        .collect();
    let last = *batches.last().unwrap();
    let covered = server.wait_for("a checkpoint through the last post", || {
        let v = server.get("/healthz").json();
        match (
            v["checkpoint_epoch"].as_u64(),
            v["ingest"]["next_batch"].as_u64(),
        ) {
            (Some(e), Some(next)) if e >= last && e + 1 == next => Ok(v),
            _ => Err(v.to_string()),
        }
    });
    // At most one request (an empty batch after the posts), and no more while nothing
    // comes.
    std::thread::sleep(Duration::from_millis(4500));
    let v = server.get("/healthz").json();
    assert_eq!(
        (&v["ingest"]["next_batch"], &v["checkpoint_epoch"]),
        (
            &covered["ingest"]["next_batch"],
            &covered["checkpoint_epoch"]
        ),
        "one checkpoint request per quiet spell: {v}, was {covered}"
    );
    assert!(v["ingest"]["next_batch"].as_u64() <= Some(last + 2), "{v}");
    server.kill();
    drop(server);

    let server = Server::start(&dir, &args);
    assert!(resumed_epoch(&server) >= last);
    let v = server.get("/healthz").json();
    assert_eq!(
        v["ingest"]["appended"], 0,
        "the checkpoint covers every post: nothing to replay: {v}"
    );
    post_sentinel(&server, closing_time(&want, lateness), d);
    let got = wait_for_out(&server, &out, &want);
    assert_matches_oracle(&got, &want, want.len(), "posts, a quiet spell, kill -9");
    assert_written_once(&out);
}

/// Regression test for an engine bug seen at 141cc8f and fc4e5a3: right after a restart from a checkpoint, `/models` and
/// `/healthz` report the watermark as 0 (1970) until the next batch is read, although the
/// run resumed with the watermark of its checkpoint (the gauge is only set when the
/// windows operator processes an epoch).
#[test]
fn the_watermark_is_reported_right_after_a_restart() {
    let dir = TempDir::new("restart-watermark");
    let (server, epoch, before) = restarted_after_checkpoints(&dir);
    let served = server.get("/models").json()["watermark"].as_i64();
    let health = server.get("/healthz").json()["watermark"].as_i64();
    assert!(
        served.is_some_and(|w| w >= T0) && health.is_some_and(|w| w >= T0),
        "ENGINE BUG: resumed from checkpoint epoch {epoch}; /models watermark {served:?}, \
         /healthz watermark {health:?} (before the kill: {})",
        before["watermark"]
    );
}

// ---------------------------------------------------------------------------------------
// 3. Errors: statuses and JSON bodies; the server goes on serving; metrics
// ---------------------------------------------------------------------------------------

/// The `errors` of a `POST /data` answer as (line, field).
fn line_errors(v: &Value) -> Vec<(u64, Option<String>)> {
    v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array in {v}"))
        .iter()
        .map(|e| {
            let msg = e["message"].as_str().unwrap_or_default();
            assert!(!msg.is_empty(), "line error without a message: {e}");
            (
                e["line"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no line in {e}")),
                e["field"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn row(ts: i64, key: &str, x: &[f64], y: f64) -> Row {
    Row {
        ts,
        key: key.into(),
        x: x.to_vec(),
        y,
    }
}

#[test]
fn errors_have_their_statuses_and_the_server_goes_on() {
    let d = 3;
    let win = Win::Tumbling(10_000);
    let dir = TempDir::new("errors");
    let out = dir.path("models.jsonl");
    let server = Server::start(
        &dir,
        &with(http_args(&out, d, win, 0, 1), &["--max-body", "1000"]),
    );
    let mut accepted: Vec<Row> = Vec::new();
    let mut rejected_total = 0u64;

    // Malformed CSV lines within a body: reported with line number and field, the others
    // accepted. Body line 1 is the header.
    let good: Vec<Row> = (0..6)
        .map(|i| {
            let x = [
                i as f64 * 0.5,
                (i * i) as f64 * 0.1 - 1.0,
                1.0 - i as f64 * 0.3,
            ];
            row(
                T0 + 1000 * i,
                "a",
                &x,
                1.0 + x[0] - 2.0 * x[1] + 0.5 * x[2] + 0.01 * i as f64,
            )
        })
        .collect();
    let body = format!(
        "{}\n{}\n{}\n{},a,1.0,abc,2.0,3.0\n{}\n{},a,1.0,2.0\n{}\n{},a,1.0,2.0,3.0,NaN\n{}\n{}\n",
        csv_header(d),
        csv_line(&good[0]),
        csv_line(&good[1]),
        T0 + 2500, // line 4: x1 is not a number
        csv_line(&good[2]),
        T0 + 3500, // line 6: too few fields
        csv_line(&good[3]),
        T0 + 4500, // line 8: y is NaN
        csv_line(&good[4]),
        csv_line(&good[5]),
    );
    let r = server.post("/data", Some("text/csv"), &body);
    assert_eq!(r.status, 200, "partly malformed CSV: {}", r.body);
    let v = r.json();
    assert_eq!(v["accepted"], 6, "{}", r.body);
    assert_eq!(v["rejected"], 3, "{}", r.body);
    let errs = line_errors(&v);
    assert_eq!(
        errs.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![4, 6, 8],
        "line numbers of the malformed lines: {}",
        r.body
    );
    assert_eq!(
        errs[0].1.as_deref(),
        Some("x1"),
        "field of line 4: {}",
        r.body
    );
    assert_eq!(
        errs[2].1.as_deref(),
        Some("y"),
        "field of line 8: {}",
        r.body
    );
    accepted.extend(good);
    rejected_total += 3;

    // The same in JSON lines: a missing field, a string for a number.
    let j: Vec<Row> = (0..4)
        .map(|i| {
            let x = [0.2 * i as f64, 1.0 - 0.4 * i as f64, (i % 2) as f64];
            row(T0 + 6000 + 500 * i, "a", &x, 0.3 * i as f64 - x[2])
        })
        .collect();
    let body = format!(
        "{}\n{{\"ts\":{},\"key\":\"a\",\"x0\":1.0,\"x1\":2.0,\"y\":3.0}}\n{}\n{{\"ts\":{},\"key\":\"a\",\"x0\":\"oops\",\"x1\":2.0,\"x2\":1.0,\"y\":3.0}}\n{}\n{}\n",
        jsonl_line(&j[0]),
        T0 + 6100, // line 2: no x2
        jsonl_line(&j[1]),
        T0 + 6200, // line 4: x0 is a string
        jsonl_line(&j[2]),
        jsonl_line(&j[3]),
    );
    let r = server.post("/data", Some("application/x-ndjson"), &body);
    assert_eq!(r.status, 200, "partly malformed JSON lines: {}", r.body);
    let v = r.json();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(4), Some(2)),
        "{}",
        r.body
    );
    assert_eq!(
        line_errors(&v),
        vec![(2, Some("x2".into())), (4, Some("x0".into()))],
        "{}",
        r.body
    );
    accepted.extend(j);
    rejected_total += 2;

    // Nothing parses: 400, with the line errors.
    let body = format!(
        "{}\n{},a,x,1,2,3\n{},a,1,2\n",
        csv_header(d),
        T0 + 9000,
        T0 + 9100
    );
    let r = server.post("/data", Some("text/csv"), &body);
    let v = r.assert_error(400, "a body where nothing parses");
    assert_eq!(v["rejected"], 2, "{}", r.body);
    assert_eq!(
        line_errors(&v).iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![2, 3],
        "{}",
        r.body
    );
    rejected_total += 2;
    // A CSV body without a usable header (no x2 column): 400.
    let r = server.post(
        "/data",
        Some("text/csv"),
        &format!("ts,key,x0,x1,y\n{},a,1,2,3\n", T0 + 9200),
    );
    r.assert_error(400, "a CSV header without a feature column");

    // A body over --max-body 1000: 413, whether its length is declared or not.
    let big = csv_text(
        &(0..80)
            .map(|i| row(T0 + 9300 + i, "a", &[1.0, 2.0, 3.0], 4.0))
            .collect::<Vec<_>>(),
        d,
    );
    assert!(big.len() > 1000);
    let r = server.post("/data", Some("text/csv"), &big);
    r.assert_error(413, "a body over --max-body (Content-Length)");
    let mut reader = std::io::Cursor::new(big.clone().into_bytes());
    let chunked = finish(
        server
            .agent
            .post(server.url("/data"))
            .header("Content-Type", "text/csv")
            .send(ureq::SendBody::from_reader(&mut reader)),
    )
    .unwrap_or_else(|e| server.fail(&format!("chunked POST /data: {e}")));
    chunked.assert_error(413, "a body over --max-body (chunked, no Content-Length)");

    // Content-Type missing or not a records type: 415.
    let small = csv_text(&[row(T0 + 9400, "a", &[1.0, 2.0, 3.0], 4.0)], d);
    server
        .post("/data", None, &small)
        .assert_error(415, "POST /data without Content-Type");
    server
        .post("/data", Some("text/plain"), &small)
        .assert_error(415, "POST /data as text/plain");

    // Close the window [T0, T0 + 10 s) of "a" (lateness 0), and give key "u" an
    // underdetermined window (2 records, d = 3).
    let more = vec![
        row(T0 + 3000, "u", &[1.0, 0.0, 0.0], 1.0),
        row(T0 + 4000, "u", &[0.0, 1.0, 0.0], 2.0),
        row(T0 + 12_000, "a", &[0.5, 0.5, 0.5], 1.5),
    ];
    assert_eq!(server.post_rows(&more, d, false), 2);
    accepted.extend(more);
    let want = oracle(&accepted, d, win, None);
    let closed: BTreeMap<WinKey, Model> = want
        .iter()
        .filter(|(k, _)| k.2 <= T0 + 12_000)
        .map(|(k, m)| (k.clone(), m.clone()))
        .collect();
    assert_eq!(closed.len(), 2);
    let got = wait_for_out(&server, &out, &closed);
    assert_matches_oracle(
        &got,
        &closed,
        closed.len(),
        "errors: --out has exactly the accepted records",
    );

    // /model and /predict errors.
    server
        .get("/model?key=nope")
        .assert_error(404, "/model of an unknown key");
    server.get("/model").assert_error(400, "/model without key");
    let predict = |body: &str| server.post("/predict", Some("application/json"), body);
    predict(r#"{"key":"nope","x":[1,2,3]}"#).assert_error(404, "/predict of an unknown key");
    predict(r#"{"key":"a","x":[1,2]}"#).assert_error(400, "/predict with 2 features of 3");
    predict(r#"{"key":"a","rows":[[1,2,3],[1,2]]}"#)
        .assert_error(400, "/predict rows with a short row");
    predict(r#"{"key":"a","x":[1,2,3"#).assert_error(400, "/predict with bad JSON");
    predict(r#"{"key":"a","x":[1,2,3],"rows":[[1,2,3]]}"#)
        .assert_error(400, "/predict with x and rows");
    predict(r#"{"key":"a"}"#).assert_error(400, "/predict without x or rows");
    predict(r#"{"key":"u","x":[1,2,3]}"#).assert_error(409, "/predict on an underdetermined model");
    // A key with a running estimate but no final model yet: 404.
    assert_eq!(
        server.post_rows(
            &[row(T0 + 12_500, "late-comer", &[1.0, 1.0, 1.0], 1.0)],
            d,
            false
        ),
        3
    );
    accepted.push(row(T0 + 12_500, "late-comer", &[1.0, 1.0, 1.0], 1.0));
    server.wait_for("the running estimate of a new key", || {
        let r = server.get("/model?key=late-comer");
        (r.status == 200).then_some(()).ok_or(r.body)
    });
    predict(r#"{"key":"late-comer","x":[1,2,3]}"#)
        .assert_error(404, "/predict with no final model yet");
    server
        .get("/no/such/endpoint")
        .assert_error(404, "an unknown endpoint");

    // /predict still works for "a" and uses the oracle's window.
    let wk = closed.keys().find(|k| k.0 == "a").unwrap().clone();
    let coef = want[&wk].coef.clone().unwrap();
    let r = predict(r#"{"key":"a","x":[1,2,3]}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json()["prediction"].as_f64().unwrap();
    let yhat = coef[0] + coef[1] + 2.0 * coef[2] + 3.0 * coef[3];
    assert!(
        (p - yhat).abs() <= predict_tol(&coef, &[1.0, 2.0, 3.0]),
        "{p} vs {yhat}"
    );

    // Still serving after all that: healthz, and a valid post is accepted.
    let h = server.get("/healthz");
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.json()["status"], "ok", "{}", h.body);
    let last = row(T0 + 13_000, "a", &[0.1, 0.2, 0.3], 0.4);
    assert_eq!(server.post_rows(std::slice::from_ref(&last), d, true), 4);
    accepted.push(last);

    // Metrics: the documented names, and the counts of what was posted.
    let n = accepted.len() as f64;
    // The per-worker tally comes from the progress reports, which the windows operator
    // reads after the source counted the records: wait for both.
    let text = server.wait_for("records counted, in total and per worker", || {
        let text = server.get("/metrics").body;
        let total = metric_value(&text, "tributary_records_total");
        let worker = metric_value(&text, "tributary_worker_records_total{worker=\"0\"}");
        match (total, worker) {
            (Some(t), Some(w)) if t == n && w == n => Ok(text),
            v => Err(format!("(records_total, worker 0) {v:?}, {n} accepted")),
        }
    });
    for name in [
        "tributary_records_total",
        "tributary_ingest_lag_records",
        "tributary_worker_records_total",
        "tributary_windows_closed_total",
        "tributary_malformed_total",
        "tributary_ingest_records_total",
        "tributary_watermark_ms",
        "tributary_http_requests_total",
        "tributary_http_request_seconds",
    ] {
        assert!(
            text.contains(&format!("\n{name}")),
            "/metrics has no {name}:\n{text}"
        );
    }
    assert_eq!(
        metric_value(&text, "tributary_ingest_records_total"),
        Some(n),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "tributary_worker_records_total{worker=\"0\"}"),
        Some(n),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "tributary_ingest_lag_records"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "tributary_malformed_total"),
        Some(rejected_total as f64),
        "malformed lines of all posts (the 400 one too): {text}"
    );
    assert_eq!(
        metric_value(&text, "tributary_windows_closed_total"),
        Some(closed.len() as f64),
        "windows emitted final: {text}"
    );
    // The open windows: each (key, 10 s window) with an accepted record that ends after
    // the newest record (lateness 0), counted from the posts. (The gauge had its sign
    // reversed in sessions 17 and 18.)
    let newest = accepted.iter().map(|r| r.ts).max().unwrap();
    let open: BTreeSet<(&str, i64)> = (accepted.iter())
        .map(|r| (r.key.as_str(), r.ts - r.ts.rem_euclid(10_000)))
        .filter(|&(_, start)| start + 10_000 > newest)
        .collect();
    server.wait_for("the open windows counted", || {
        let text = server.get("/metrics").body;
        match metric_value(&text, "tributary_windows_open") {
            Some(v) if v == open.len() as f64 => Ok(()),
            v => Err(format!("tributary_windows_open {v:?}, {open:?} open")),
        }
    });
    assert_eq!(
        metric_value(
            &text,
            "tributary_http_requests_total{endpoint=\"/data\",status=\"413\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "tributary_http_requests_total{endpoint=\"/data\",status=\"415\"}"
        ),
        Some(2.0),
        "{text}"
    );
}

/// `POST /data` to a run whose source is not `http`: 409, and the other endpoints serve.
#[test]
fn posting_to_a_run_that_reads_another_source_is_409() {
    let d = 3;
    let dir = TempDir::new("409");
    let body = csv_text(&[row(T0, "a", &[1.0, 2.0, 3.0], 4.0)], d);
    // A TCP listener source and a followed file: neither ends by itself, so the server
    // is certainly still running when the post arrives (a bounded source, such as the
    // generator, may have finished by then on a fast machine).
    let followed = dir.path("followed.csv");
    std::fs::write(&followed, csv_header(d) + "\n").unwrap();
    for listen in [true, false] {
        let make = |port: u16| {
            let mut args = http_args(&dir.path("out.jsonl"), d, Win::Tumbling(10_000), 0, 1);
            args[3] = if listen {
                format!("tcp:127.0.0.1:{port},listen")
            } else {
                format!("csv:{},follow", followed.display())
            };
            args
        };
        let source = make(0)[3].clone();
        let (mut server, _) = Server::start_on_free_port(&dir, make);
        let answer = server.post("/data", Some("text/csv"), &body);
        let v = answer.assert_error(409, &format!("POST /data with --source {source}"));
        // Answered before its body was read: the connection closes after the answer, and
        // says so, so the client's next request goes down a new one.
        assert_eq!(answer.connection.as_deref(), Some("close"));
        assert!(
            v["error"].as_str().unwrap().contains("http"),
            "the 409 message says what is needed: {v}"
        );
        let h = server.get("/healthz");
        assert_eq!(h.status, 200, "{}", h.body);
        server.kill();
    }
}

// ---------------------------------------------------------------------------------------
// 4. Backpressure: 503 with Retry-After; refused records are not counted
// ---------------------------------------------------------------------------------------

/// With `--max-pending 10` and the reader paused on the first batch (the failpoint
/// `ingest.batch=pause:FILE`, released by creating FILE), 30 one-record posts in a row: the
/// log fills to exactly the limit, every post after that is 503 (`Retry-After: 1`, a JSON
/// error naming the flag) and no 200 follows a 503; the lag gauge shows exactly the limit.
/// Released, the reader catches up, the refused records posted again are accepted, and
/// the final models count exactly the records answered 200. Deterministic: nothing here
/// depends on how fast the worker is.
#[test]
fn backpressure_answers_503_and_refused_records_are_not_counted() {
    let d = 3;
    let win = Win::Tumbling(10_000);
    let lateness = 600_000;
    let (posts, limit) = (30usize, 10usize);
    let mut spec = GenSpec::new(1 + posts, 4, d, 31);
    spec.step = 1;
    let rows = generate(&spec);
    let dir = TempDir::new("backpressure");
    let out = dir.path("models.jsonl");
    let release = dir.path("release");
    let fp = format!("ingest.batch=pause:{}*1", release.display());
    let server = Server::start_env(
        &dir,
        &with(
            http_args(&out, d, win, lateness, 1),
            &["--max-pending", &limit.to_string()],
        ),
        &[("TRIBUTARY_FAILPOINTS", &fp)],
    );
    // Released on every path out of the test (a failed assertion included).
    struct Release(std::path::PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let guard = Release(release.clone());
    server.post_rows(&rows[..1], d, false);
    let url = server.url("/data");
    let mut statuses = Vec::new();
    let mut accepted: Vec<Row> = rows[..1].to_vec();
    let mut refused: Vec<Row> = Vec::new();
    for (i, r) in rows[1..].iter().enumerate() {
        let a = post_rows(&server.agent, &url, std::slice::from_ref(r), d, i % 2 == 0)
            .unwrap_or_else(|e| server.fail(&format!("POST /data: {e}")));
        match a.status {
            200 => accepted.push(r.clone()),
            503 => {
                let v = a.assert_error(503, "backpressure");
                assert!(
                    v["error"].as_str().unwrap().contains("--max-pending"),
                    "the 503 names the flag: {v}"
                );
                assert_eq!(
                    a.retry_after.as_deref(),
                    Some("1"),
                    "503 without Retry-After: 1"
                );
                assert!(
                    a.content_type
                        .as_deref()
                        .is_some_and(|c| c.starts_with("application/json")),
                    "503 content type {:?}",
                    a.content_type
                );
                refused.push(r.clone());
            }
            s => server.fail(&format!("POST /data answered {s}: {}", a.body)),
        }
        statuses.push(a.status);
    }
    // The first batch may or may not still count as unread (taken by the paused reader or
    // not): the posts accepted after it are limit - 1 or limit, then only 503s.
    let ok = statuses.iter().take_while(|&&s| s == 200).count();
    assert!(
        ok == limit || ok == limit - 1,
        "{ok} posts accepted before the first 503 with --max-pending {limit}: {statuses:?}"
    );
    assert!(
        statuses[ok..].iter().all(|&s| s == 503),
        "a post accepted after a 503 while the reader is paused: {statuses:?}"
    );
    assert_eq!(
        server.metric("tributary_ingest_lag_records"),
        Some(limit as f64),
        "the log holds exactly the limit unread"
    );
    drop(guard);
    // Released: the refused records, posted again as a client would, are accepted.
    // (The reader may still be catching up: a retry can be refused again, and counts.)
    let mut answered_503 = refused.len();
    for r in &refused {
        server.wait_for("a refused record accepted after the release", || {
            let a = post_rows(&server.agent, &url, std::slice::from_ref(r), d, false)?;
            answered_503 += usize::from(a.status == 503);
            (a.status == 200).then_some(()).ok_or(a.body)
        });
        accepted.push(r.clone());
    }
    let want = oracle(&accepted, d, win, None);
    post_sentinel(&server, closing_time(&want, lateness), d);
    let got = wait_for_out(&server, &out, &want);
    assert_matches_oracle(
        &got,
        &want,
        want.len(),
        "backpressure: models over the records answered 200",
    );
    let total: usize = got.values().map(|m| m.n).sum();
    assert_eq!(total, posts + 1);
    let text = server.get("/metrics").body;
    assert_eq!(
        metric_value(
            &text,
            "tributary_http_requests_total{endpoint=\"/data\",status=\"503\"}"
        ),
        Some(answered_503 as f64),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Load (bounded; figures printed, not asserted)
// ---------------------------------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 8 concurrent clients × 50 posts × 200 records on `-w 2` with `--max-pending 2000`: every
/// post ends accepted (503s are retried after 5 ms — not the advertised 1 s, to keep the
/// test short), the final models equal the oracle over all of them, and the total n is
/// the number of records accepted. Throughput and latency are printed, not asserted.
#[test]
fn load_every_accepted_record_counts_once() {
    let d = 3;
    let win = Win::Tumbling(10_000);
    let lateness = 600_000;
    let workers = 2;
    let (clients, posts, per_post) = (8usize, 50usize, 200usize);
    let limit = Duration::from_secs(60);
    let mut spec = GenSpec::new(clients * posts * per_post, 4, d, 41);
    spec.step = 1;
    let rows = Arc::new(generate(&spec));
    let want = oracle(&rows, d, win, None);
    let dir = TempDir::new("load");
    let out = dir.path("models.jsonl");
    let server = Server::start(
        &dir,
        &with(
            http_args(&out, d, win, lateness, workers),
            &["--max-pending", "2000"],
        ),
    );
    let url = server.url("/data");
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (agent, url, rows) = (server.agent.clone(), url.clone(), Arc::clone(&rows));
            std::thread::spawn(move || {
                let mut ok_latency = Vec::new();
                let mut refused = 0usize;
                let mut accepted = 0usize;
                for p in 0..posts {
                    let from = (c * posts + p) * per_post;
                    let body = &rows[from..from + per_post];
                    loop {
                        assert!(started.elapsed() < limit, "load test over {limit:?}");
                        let t = Instant::now();
                        let r = post_rows(&agent, &url, body, d, (c + p) % 2 == 0)
                            .unwrap_or_else(|e| panic!("POST /data: {e}"));
                        match r.status {
                            200 => {
                                ok_latency.push(t.elapsed());
                                assert_eq!(r.json()["accepted"], per_post, "{}", r.body);
                                accepted += per_post;
                                break;
                            }
                            503 => {
                                assert_eq!(r.retry_after.as_deref(), Some("1"));
                                refused += 1;
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            s => panic!("POST /data answered {s}: {}", r.body),
                        }
                    }
                }
                (ok_latency, refused, accepted)
            })
        })
        .collect();
    let mut latency = Vec::new();
    let (mut refused, mut accepted) = (0, 0);
    for h in handles {
        let (l, r, a) = h.join().expect("client thread");
        latency.extend(l);
        refused += r;
        accepted += a;
    }
    let posting = started.elapsed();
    post_sentinel(&server, closing_time(&want, lateness), d);
    let got = wait_for_out(&server, &out, &want);
    let end_to_end = started.elapsed();
    latency.sort();
    eprintln!(
        "load: {accepted} records in {} posts by {clients} clients: accepted in {posting:?} \
         ({:.0} records/s), all windows final in --out after {end_to_end:?} ({:.0} records/s); \
         {refused} answers 503 (retried); latency of 200 answers p50 {:?} p99 {:?} max {:?}",
        latency.len(),
        accepted as f64 / posting.as_secs_f64(),
        accepted as f64 / end_to_end.as_secs_f64(),
        percentile(&latency, 0.5),
        percentile(&latency, 0.99),
        latency.last().copied().unwrap_or_default(),
    );
    assert_eq!(accepted, rows.len());
    assert_matches_oracle(&got, &want, want.len(), "load: --out");
    let total: usize = got.values().map(|m| m.n).sum();
    assert_eq!(total, accepted, "load: n over the final windows");
    let text = server.get("/metrics").body;
    assert_eq!(
        metric_value(&text, "tributary_records_total"),
        Some((accepted + 1) as f64),
        "records_total: the posts and the sentinel: {text}"
    );
}
