//! Hostile values and faults, with the real binary: values whose squares overflow are
//! malformed lines (not a crash); a panicking worker stops the whole process loudly, and
//! so does a file block that cannot be read, read in place or ahead; a batch that crashed
//! the engine twice is set aside on the next start (posted, or a file's); one request
//! cannot drag the watermark ahead; and a soak of concurrent posts under repeated
//! `kill -9` (restarted on other worker counts) loses no acknowledged record and counts
//! none twice. Everything on 127.0.0.1, bounded in time, processes killed on drop.

mod common;

use common::http::*;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TUMBLING: Win = Win::Tumbling(10_000);

/// Waits (bounded) for a server whose worker panicked to exit; returns its exit code.
fn wait_exit(server: &mut Server) -> Option<i32> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = server.exited() {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "server still running {WAIT:?} after the fault\nstderr:\n{}",
            server.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const FAILPOINTS: &str = "TRIBUTARY_FAILPOINTS";

#[test]
fn values_whose_squares_overflow_are_malformed_lines_not_a_crash() {
    let d = 2;
    let mut spec = GenSpec::new(3000, 3, d, 41);
    spec.disorder = 200;
    let rows = generate(&spec);
    let dir = TempDir::new("poison_values");
    let csv = dir.path("in.csv");
    let mut text = csv_header(d);
    text.push('\n');
    // The four rows of issue 13, in the middle of k0's data: finite, but 1e200² overflows.
    let poison = [
        "{t},k0,1e200,1,2",
        "{t},k0,1,-1e200,2",
        "{t},k0,1,2,1e200",
        "{t},k0,1e151,1e151,1e151",
    ];
    for (i, r) in rows.iter().enumerate() {
        text.push_str(&csv_line(r));
        text.push('\n');
        if i == 1500 {
            for p in poison {
                text.push_str(&p.replace("{t}", &r.ts.to_string()));
                text.push('\n');
            }
        }
    }
    std::fs::write(&csv, text).unwrap();
    let want = oracle(&rows, d, TUMBLING, None);
    // Parsed by the workers, or ahead of them.
    for ahead in ["off", "on"] {
        let mut cfg = RunCfg::csv(&csv, d, TUMBLING);
        cfg.workers = 2;
        cfg.source = format!("csv:{},block=16384", csv.display());
        cfg.extra = vec!["--read-ahead".into(), ahead.into()];
        let (run, out) = run_ok(&dir, &cfg, &format!("out-{ahead}.jsonl"));
        assert_eq!(run.summary("malformed"), Some(4), "{}", run.stderr);
        for field in ["x0", "x1", "y"] {
            assert!(
                run.stderr.lines().any(|l| l.contains("in.csv")
                    && l.contains(&format!("field \"{field}\""))
                    && l.contains("1e150")),
                "read ahead {ahead}: no warning naming in.csv, field {field} and the range:\n{}",
                run.stderr
            );
        }
        assert_matches_oracle(
            &keep_final(&parse_emissions(&out)),
            &want,
            want.len(),
            &format!("poison values, read ahead {ahead}"),
        );
    }
}

/// A CSV of 4 000 records (d = 1, 2 keys) read in blocks of 4 KiB (some 20 of them, so
/// that block 3 is read after the first batches went through), in a fresh directory.
fn small_blocks(name: &str) -> (TempDir, RunCfg, Vec<Row>) {
    let d = 1;
    let rows = generate(&GenSpec::new(4000, 2, d, 5));
    let dir = TempDir::new(name);
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let mut cfg = RunCfg::csv(&csv, d, TUMBLING);
    cfg.source = format!("csv:{},block=4096", csv.display());
    (dir, cfg, rows)
}

#[test]
fn a_panicking_worker_stops_the_whole_process_with_its_cause() {
    let (dir, mut cfg, _) = small_blocks("worker_panic");
    // Batch 3 is worker 1's; worker 0 alone would go on without it.
    cfg.workers = 2;
    let args = cfg.args(&dir.path("out.jsonl"));
    panic_stops_the_process(&dir, &args, "ingest.batch(3)=panic", "timely:work-1");
}

/// Runs `args` with the failpoint `fault` (a `panic` action) and checks that the process
/// stops with exit 70, its stderr naming the panic, the failpoint that fired and `thread`.
fn panic_stops_the_process(dir: &TempDir, args: &[String], fault: &str, thread: &str) {
    let run = run_engine_env(dir, args, &[(FAILPOINTS, fault)]);
    assert_eq!(
        run.code,
        Some(70),
        "{fault}: exit code; stderr:\n{}",
        run.stderr
    );
    let name = fault.split(['(', '=']).next().unwrap();
    assert!(
        run.stderr.contains("panicked at")
            && run.stderr.contains(&format!("failpoint {name} fired"))
            && run.stderr.contains(thread),
        "{fault}: stderr names the thread {thread} and the cause:\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Any {"), "{}", run.stderr);
}

/// A block of a file that cannot be read (EIO) stops the run naming the file, and a panic
/// where a block is read stops the process with its cause and the thread it hit: the
/// worker's when the worker reads its blocks, the reading thread's when they are read
/// ahead of it.
#[test]
fn a_block_that_fails_to_be_read_stops_the_run_read_ahead_or_in_place() {
    let (dir, mut cfg, _) = small_blocks("block_fails");
    for (ahead, thread) in [("on", "tributary:read-ahead-0"), ("off", "timely:work-0")] {
        cfg.extra = vec!["--read-ahead".into(), ahead.into()];
        let out = dir.path(&format!("out-{ahead}.jsonl"));
        let failed = run_engine_env(&dir, &cfg.args(&out), &[(FAILPOINTS, "file.block(3)=eio")]);
        assert_eq!(
            failed.code,
            Some(2),
            "read ahead {ahead}: {}",
            failed.stderr
        );
        assert!(
            failed.stderr.contains("in.csv") && failed.stderr.contains("os error 5"),
            "read ahead {ahead}: stderr names the file and the error:\n{}",
            failed.stderr
        );
        panic_stops_the_process(&dir, &cfg.args(&out), "file.block(3)=panic", thread);
    }
}

#[test]
fn a_batch_that_crashed_the_engine_twice_is_set_aside_and_the_run_goes_on() {
    let d = 2;
    let dir = TempDir::new("quarantine");
    let out = dir.path("out.jsonl");
    let late = dir.path("late.jsonl");
    let ckpt = dir.path("ckpt");
    let args = with(
        http_args(&out, d, TUMBLING, 0, 1),
        &[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--late-out",
            late.to_str().unwrap(),
        ],
    );
    let mut spec = GenSpec::new(900, 3, d, 77);
    spec.step = 100; // 90 s of event time
    let rows = generate(&spec);
    let (first, rest) = rows.split_at(300);
    let (poison, last) = rest.split_at(300);
    let fault = [(FAILPOINTS, "ingest.batch(1)=panic")];

    let mut server = Server::start_env(&dir, &args, &fault);
    assert_eq!(
        server.post_rows(first, d, false),
        0,
        "a new log starts at batch 0"
    );
    // Batch 1 is answered (durable), then crashes the worker that reads it.
    let answer = post_rows(&server.agent, &server.url("/data"), poison, d, false);
    if let Ok(r) = &answer {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["batch"], 1, "{}", r.body);
    }
    assert_eq!(wait_exit(&mut server), Some(70), "{}", server.stderr_text());
    // The restart replays batch 1 from the log and crashes again.
    let again = run_engine_env(&dir, &args, &fault);
    assert_eq!(again.code, Some(70), "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("crash recorded against source batch 1"),
        "{}",
        again.stderr
    );
    let crashes = std::fs::read_to_string(ckpt.join("crashes-p0.json")).unwrap();
    assert_eq!(crashes.matches("\"batch\": 1").count(), 2, "{crashes}");
    // The third start sets it aside, and goes on.
    let server = Server::start_env(&dir, &args, &fault);
    assert!(
        server
            .stderr_text()
            .contains("source batch 1 is set aside (quarantined)"),
        "{}",
        server.stderr_text()
    );
    server.post_rows(last, d, false);
    let kept: Vec<Row> = first.iter().chain(last).cloned().collect();
    let watermark = kept.iter().map(|r| r.ts).max().unwrap();
    let want: BTreeMap<WinKey, Model> = oracle(&kept, d, TUMBLING, None)
        .into_iter()
        .filter(|(k, _)| k.2 <= watermark)
        .collect();
    let got = server.wait_for("final models of batches 0 and 2", || {
        let got = read_models(&out);
        if got.len() >= want.len() {
            Ok(got)
        } else {
            Err(format!("{} of {} windows", got.len(), want.len()))
        }
    });
    assert_matches_oracle(&got, &want, want.len(), "around a quarantined batch");
    let set_aside: Vec<_> = late_lines(&late)
        .into_iter()
        .filter(|v| v["reason"] == "quarantined")
        .collect();
    assert_eq!(set_aside.len(), poison.len(), "every record of batch 1");
    let times: BTreeSet<i64> = set_aside
        .iter()
        .map(|v| v["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(times, poison.iter().map(|r| r.ts).collect());
    assert_eq!(
        server.metric("tributary_quarantined_batches_total"),
        Some(1.0)
    );
}

/// A file's batch that crashed the worker twice is set aside on the next start, with the
/// file read ahead of the worker: the restarts resume from the checkpoint, the crash is
/// held against the batch the worker was folding (not one the thread was parsing ahead
/// of it), and the third run sets aside exactly that block's records and writes every
/// other window as the oracle does.
#[test]
fn a_file_batch_that_crashed_twice_is_set_aside_when_read_ahead() {
    let (dir, mut cfg, rows) = small_blocks("quarantine_file");
    let (out, late, ckpt) = (
        dir.path("out.jsonl"),
        dir.path("late.jsonl"),
        dir.path("ckpt"),
    );
    cfg.extra = ["--read-ahead", "on", "--checkpoint", ckpt.to_str().unwrap()]
        .into_iter()
        .chain([
            "--checkpoint-every",
            "1ms",
            "--late-out",
            late.to_str().unwrap(),
        ])
        .map(String::from)
        .collect();
    let args = cfg.args(&out);
    let fault = [(FAILPOINTS, "ingest.batch(5)=panic")];
    for start in ["first", "second"] {
        let run = run_engine_env(&dir, &args, &fault);
        assert_eq!(run.code, Some(70), "{start} start: {}", run.stderr);
    }
    let crashes = std::fs::read_to_string(ckpt.join("crashes-p0.json")).unwrap();
    assert_eq!(crashes.matches("\"batch\": 5").count(), 2, "{crashes}");
    let run = run_engine_env(&dir, &args, &fault);
    run.assert_success();
    assert!(
        run.stderr
            .contains("source batch 5 is set aside (quarantined)"),
        "{}",
        run.stderr
    );
    let set_aside: BTreeSet<i64> = late_lines(&late)
        .into_iter()
        .filter(|v| v["reason"] == "quarantined")
        .map(|v| v["ts"].as_i64().unwrap())
        .collect();
    // Block 5 of 4 KiB: a run of consecutive lines, about 4 KiB of them.
    let at = rows.iter().position(|r| set_aside.contains(&r.ts)).unwrap();
    let block = &rows[at..at + set_aside.len()];
    let line_bytes = std::fs::metadata(dir.path("in.csv")).unwrap().len() / rows.len() as u64;
    let lines = (4096 / line_bytes) as usize;
    assert!(
        block.len().abs_diff(lines) <= 3,
        "{} records set aside, not ~{lines}",
        block.len()
    );
    assert!(
        block.iter().all(|r| set_aside.contains(&r.ts)),
        "one run of lines"
    );
    let kept: Vec<Row> = rows
        .iter()
        .filter(|r| !set_aside.contains(&r.ts))
        .cloned()
        .collect();
    let want = oracle(&kept, 1, TUMBLING, None);
    assert_matches_oracle(
        &read_models(&out),
        &want,
        want.len(),
        "around a quarantined block",
    );
}

#[test]
fn one_request_cannot_drag_the_watermark_ahead() {
    let d = 1;
    let dir = TempDir::new("staircase");
    let out = dir.path("out.jsonl");
    // A jump of up to 5 min is let through, and records 10 min behind are in time.
    let server = Server::start(
        &dir,
        &with(
            http_args(&out, d, TUMBLING, 600_000, 1),
            &["--max-jump", "5m"],
        ),
    );
    let mut spec = GenSpec::new(600, 2, d, 9);
    spec.step = 100;
    let rows = generate(&spec);
    let (before, after) = rows.split_at(300);
    server.post_rows(before, d, false);
    // 10 000 rows, each --max-jump after the last: per record, each is in bounds.
    let top = before.iter().map(|r| r.ts).max().unwrap();
    let stairs: Vec<Row> = (1..=10_000)
        .map(|i| Row {
            ts: top + i * 300_000,
            key: "stairs".into(),
            x: vec![0.5],
            y: 1.0,
        })
        .collect();
    server.post_rows(&stairs, d, false);
    server.post_rows(after, d, false);
    let metric = |name: &str| server.metric(name).unwrap_or(-1.0);
    server.wait_for("all records read", || {
        let read = metric("tributary_records_total");
        (read >= 10_600.0)
            .then_some(())
            .ok_or(format!("{read} records read"))
    });
    assert_eq!(
        metric("tributary_late_total"),
        0.0,
        "no real record is late"
    );
    assert_eq!(
        metric("tributary_too_far_ahead_total"),
        9_999.0,
        "the staircase beyond 5 min is set aside"
    );
}

/// A provisional window restored from a checkpoint becomes final when the watermark
/// passes it after the restart. (The soak below found a restore after which thousands
/// of provisional windows never became final: an evaluation that found a restored window
/// unchanged dropped it from the agenda. This small case passed with and without that
/// fix, since whether the trace already held the restored panes at that evaluation was a
/// matter of timing while the panes were in an arrangement; the soak reproduced it in
/// three runs out of three before the fix. The windows operator now holds the restored
/// panes from the first epoch, before any evaluation.)
#[test]
fn a_provisional_window_restored_from_a_checkpoint_becomes_final() {
    let d = 1;
    let dir = TempDir::new("restored_provisional");
    let out = dir.path("out.jsonl");
    let ckpt = dir.path("ckpt");
    let args = with(
        http_args(&out, d, TUMBLING, 30_000, 1),
        &[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--checkpoint-every",
            "50ms",
        ],
    );
    let mut spec = GenSpec::new(250, 2, d, 12);
    spec.step = 100; // 25 s: windows [0, 10 s) and [10 s, 20 s) end, none is final
    let mut rows = generate(&spec);
    // A key whose only window ends long before the restart's frontier: after the
    // restore, no agenda entry of a later window of its own brings it back.
    rows.extend((0..20).map(|i| Row {
        ts: T0 + i * 400,
        key: "early".into(),
        x: vec![i as f64],
        y: 2.0 * i as f64 + (i % 3) as f64,
    }));
    rows.sort_by_key(|r| r.ts);
    let mut server = Server::start(&dir, &args);
    server.post_rows(&rows[..125], d, false);
    let batch = server.post_rows(&rows[125..], d, false);
    assert_eq!(batch, 1);
    // A checkpoint is taken with a batch read once the interval has passed: a quiet
    // source is nudged with one more row (in the first window, in time) until one is.
    server.wait_for("a checkpoint after the batch", || {
        let epoch = server.get("/healthz").json()["checkpoint_epoch"].as_u64();
        if epoch >= Some(batch) {
            return Ok(());
        }
        let nudge = Row {
            ts: T0 + rows.len() as i64,
            key: "k1".into(),
            x: vec![0.5],
            y: 1.0,
        };
        server.post_rows(std::slice::from_ref(&nudge), d, false);
        rows.push(nudge);
        std::thread::sleep(Duration::from_millis(50));
        Err(format!("checkpoint epoch {epoch:?}"))
    });
    let provisional = parse_emissions(&std::fs::read_to_string(&out).unwrap());
    assert!(
        provisional.len() >= 5 && provisional.iter().all(|e| !e.model.is_final),
        "{provisional:?}"
    );
    server.kill();
    let server = Server::start(&dir, &args);
    // A key of its own: no restored key gets a record after the restart.
    let closing = Row {
        ts: T0 + 60_000,
        key: "closing".into(),
        x: vec![0.0],
        y: 0.0,
    };
    server.post_rows(&[closing], d, false);
    let want: BTreeMap<WinKey, Model> = oracle(&rows, d, TUMBLING, None)
        .into_iter()
        .filter(|(k, _)| k.2 <= T0 + 30_000)
        .collect();
    assert_eq!(want.len(), 7, "three windows of k0 and k1, one of early");
    let got = server.wait_for("the restored windows final", || {
        let got = read_models(&out);
        (got.len() >= want.len())
            .then_some(got.clone())
            .ok_or(format!("{} of {} final", got.len(), want.len()))
    });
    assert_matches_oracle(&got, &want, want.len(), "restored provisional windows");
}

/// A batch a client posted (its rows), and whether its answer said accepted.
type Tried = (Vec<Row>, bool);

/// Concurrent clients post while the server is killed with `kill -9` at random moments
/// (and restarted on 1, 2 or 3 workers): at the end, every acknowledged batch's models are
/// the oracle's, exactly once; a batch whose answer was lost is all there or not at all.
#[test]
fn soak_kill_9_under_concurrent_posts_loses_nothing_acknowledged() {
    let d = 2;
    let win = TUMBLING;
    let dir = TempDir::new("soak");
    let out = dir.path("out.jsonl");
    let ckpt = dir.path("ckpt");
    let args = |workers: usize| {
        with(
            http_args(&out, d, win, 3_600_000, workers),
            &[
                "--checkpoint",
                ckpt.to_str().unwrap(),
                "--checkpoint-every",
                "50ms",
                "--max-jump",
                "1d",
            ],
        )
    };
    // Each posted batch is one key's 40 rows over 20 s: its models depend on it alone.
    let batch_rows = move |client: usize, seq: usize| -> Vec<Row> {
        let key = format!("c{client}-{seq}");
        let beta = true_beta(seq as u64, client, d);
        let mut r = SplitMix64::new((client * 100_000 + seq) as u64);
        (0..40)
            .map(|j| {
                let x: Vec<f64> = (0..d).map(|_| r.uniform(-1.0, 1.0)).collect();
                let y = beta[0]
                    + x.iter().zip(&beta[1..]).map(|(a, b)| a * b).sum::<f64>()
                    + 0.1 * r.uniform(-1.0, 1.0);
                Row {
                    ts: T0 + (seq as i64 * 1_000) + j * 500,
                    key: key.clone(),
                    x,
                    y,
                }
            })
            .collect()
    };
    let url: Arc<Mutex<Option<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Every batch a client tried, and whether it was acknowledged.
    let tried: Arc<Mutex<Vec<Tried>>> = Arc::default();
    let clients: Vec<_> = (0..3)
        .map(|client| {
            let (url, stop, tried) = (url.clone(), stop.clone(), tried.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut seq = 0;
                while !stop.load(Ordering::SeqCst) {
                    let Some(base) = url.lock().unwrap().clone() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let rows = batch_rows(client, seq);
                    seq += 1;
                    let r = post_rows(&agent, &format!("{base}/data"), &rows, d, false);
                    let acked = matches!(&r, Ok(r) if r.status == 200);
                    tried.lock().unwrap().push((rows, acked));
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();
    let mut rng = SplitMix64::new(2026);
    let started = Instant::now();
    let kills = 12;
    for round in 0..kills {
        let workers = [2, 1, 3, 2][round % 4];
        let mut server = Server::start(&dir, &args(workers));
        *url.lock().unwrap() = Some(format!("http://{}", server.addr));
        std::thread::sleep(Duration::from_millis(
            100 + (rng.uniform(0.0, 600.0) as u64),
        ));
        *url.lock().unwrap() = None;
        server.kill();
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    // The last start, on one worker: one far-ahead record closes every window.
    let server = Server::start(&dir, &args(1));
    let tried = tried.lock().unwrap().clone();
    let acked = tried.iter().filter(|(_, a)| *a).count();
    assert!(
        acked >= 30,
        "only {acked} batches acknowledged in {kills} rounds"
    );
    let closing = Row {
        ts: T0 + 12 * 3_600_000,
        key: "closing".into(),
        x: vec![0.0; d],
        y: 0.0,
    };
    server.post_rows(&[closing], d, false);
    let mut want_acked = BTreeMap::new();
    let mut maybe: BTreeMap<String, BTreeMap<WinKey, Model>> = BTreeMap::new();
    for (rows, ack) in &tried {
        let o = oracle(rows, d, win, None);
        if *ack {
            want_acked.extend(o);
        } else {
            maybe.insert(rows[0].key.clone(), o);
        }
    }
    let got = server.wait_for("every acknowledged batch's windows", || {
        let got = read_models(&out);
        let missing = want_acked.keys().filter(|k| !got.contains_key(*k)).count();
        if missing == 0 {
            Ok(got)
        } else {
            Err(format!("{missing} windows missing"))
        }
    });
    let (mut got_acked, mut extra_keys) = (BTreeMap::new(), BTreeSet::new());
    for (k, m) in got {
        if want_acked.contains_key(&k) {
            got_acked.insert(k, m);
        } else {
            extra_keys.insert(k.0.clone());
        }
    }
    assert_matches_oracle(
        &got_acked,
        &want_acked,
        want_acked.len(),
        "acknowledged batches",
    );
    // A batch whose answer was lost in a kill: all of it or none of it, once.
    for key in &extra_keys {
        let want = maybe
            .get(key)
            .unwrap_or_else(|| panic!("models for {key}, which no client posted"));
        let got: BTreeMap<WinKey, Model> = read_models(&out)
            .into_iter()
            .filter(|(k, _)| &k.0 == key)
            .collect();
        assert_matches_oracle(
            &got,
            want,
            want.len(),
            &format!("unacknowledged batch {key}"),
        );
    }
    eprintln!(
        "soak: {kills} kills, {} batches tried, {acked} acknowledged, {} unacknowledged \
         but kept, {:?}",
        tried.len(),
        extra_keys.len(),
        started.elapsed()
    );
}
