//! Crash recovery with real processes: kill -9 at seeded random moments, restart with the
//! same command, and the output equals an uninterrupted run's; the same for a 2-process
//! cluster; rescaling; refusal of a checkpoint of another dataflow, of damaged stores;
//! and bounded checkpoint state. Everything runs on 127.0.0.1 with bounded time.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A generated stream long enough to be killed in the middle of.
const SOURCE: &str = "gen:rows=15000000,keys=8,features=3,seed=5,disorder=200,batch=4096";
const WINDOW: &str = "sliding:20s/5s";

fn args(out: &Path, checkpoint: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "-q",
        "--source",
        SOURCE,
        "--window",
        WINDOW,
        "--lateness",
        "1s",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    if let Some(dir) = checkpoint {
        a.extend(["--checkpoint".into(), dir.display().to_string()]);
        a.extend(["--checkpoint-every".into(), "20ms".into()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Starts the binary with `args` (stderr piped); killed on drop.
fn spawn(args: &[String]) -> Reaped {
    Reaped::spawn(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

/// Runs the binary with `args` to its end (within [`RUN_TIMEOUT`], 120 s) and asserts it
/// succeeded.
fn run_to_end(dir: &TempDir, args: &[String]) -> RunOutput {
    let run = run_engine(dir, args);
    run.assert_success();
    run
}

/// Final emissions, keyed by (key, start, end): the highest revision's line. Panics on
/// a window emitted final twice with different content.
fn finals(path: &Path) -> BTreeMap<(String, i64, i64), serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad output line {line:?}: {e}"));
        if v["final"] != true {
            continue;
        }
        let k = (
            v["key"].as_str().unwrap().to_owned(),
            v["window_start"].as_i64().unwrap(),
            v["window_end"].as_i64().unwrap(),
        );
        assert!(
            out.insert(k.clone(), v).is_none(),
            "window {k:?} emitted final twice"
        );
    }
    out
}

fn assert_same_models(
    a: &BTreeMap<(String, i64, i64), serde_json::Value>,
    b: &BTreeMap<(String, i64, i64), serde_json::Value>,
) {
    assert_eq!(a.len(), b.len(), "different numbers of final windows");
    for (k, va) in a {
        let vb = b.get(k).unwrap_or_else(|| panic!("window {k:?} missing"));
        assert_eq!(va["n"], vb["n"], "n of {k:?}");
        let (ca, cb) = (va["coef"].as_array(), vb["coef"].as_array());
        match (ca, cb) {
            (Some(ca), Some(cb)) => {
                let scale = ca
                    .iter()
                    .map(|c| c.as_f64().unwrap().abs())
                    .fold(1.0, f64::max);
                for (x, y) in ca.iter().zip(cb) {
                    let d = (x.as_f64().unwrap() - y.as_f64().unwrap()).abs();
                    assert!(d <= 1e-9 * scale, "coef of {k:?}: {ca:?} vs {cb:?}");
                }
            }
            (None, None) => {}
            _ => panic!("coef of {k:?}: {ca:?} vs {cb:?}"),
        }
    }
}

/// Seeded kill times: a small LCG, so every run of the test kills at the same moments.
fn kill_times(seed: u64, count: usize, max: Duration) -> Vec<Duration> {
    let mut s = seed;
    (0..count)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let frac = (s >> 11) as f64 / (1u64 << 53) as f64;
            Duration::from_secs_f64(0.05 + frac * max.as_secs_f64())
        })
        .collect()
}

/// Runs `args` to completion, first killing it (kill -9) each time its output file has
/// reached the next of `kill_at_lines` lines, and restarting it. Returns how many runs
/// were killed and how many resumed from a checkpoint.
fn run_with_kills(
    dir: &TempDir,
    args: &[String],
    out: &Path,
    kill_at_lines: &[usize],
) -> (usize, usize) {
    let lines = || line_count(out);
    let mut killed = 0;
    let mut resumed = 0;
    for &at in kill_at_lines {
        let mut child = spawn(args);
        // Polled every 10 ms: often enough to kill near the point, rare enough not to keep
        // a core busy re-reading the file.
        killed += child.kill_when(Duration::from_secs(60), || lines() >= at) as usize;
        let out = child.finish(Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "run panicked: {stderr}");
        resumed += stderr.contains("resuming from checkpoint") as usize;
    }
    let last = run_to_end(dir, args);
    resumed += last.stderr.contains("resuming from checkpoint") as usize;
    (killed, resumed)
}

/// The number of complete lines in a file (0 when it does not exist yet).
fn line_count(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count())
}

/// Seeded kill points: line counts between 10 % and 90 % of `total`, increasing.
fn kill_points(seed: u64, count: usize, total: usize) -> Vec<usize> {
    let mut points: Vec<usize> = kill_times(seed, count, Duration::from_secs(1))
        .into_iter()
        .map(|d| ((0.1 + 0.8 * (d.as_secs_f64() - 0.05).clamp(0.0, 1.0)) * total as f64) as usize)
        .collect();
    points.sort();
    points
}

fn reference(
    dir: &TempDir,
    workers: &str,
) -> (BTreeMap<(String, i64, i64), serde_json::Value>, Duration) {
    let out = dir.path(&format!("reference-w{workers}.jsonl"));
    let started = Instant::now();
    run_to_end(dir, &args(&out, None, &["-w", workers]));
    (finals(&out), started.elapsed())
}

#[test]
fn kill_9_at_random_moments_changes_nothing() {
    let dir = TempDir::new("kill");
    let (expected, _) = reference(&dir, "2");
    let out = dir.path("out.jsonl");
    let ckpt = dir.path("ckpt");
    let a = args(&out, Some(&ckpt), &["-w", "2"]);
    let total = std::fs::read_to_string(dir.path("reference-w2.jsonl"))
        .unwrap()
        .lines()
        .count();
    let (killed, resumed) = run_with_kills(&dir, &a, &out, &kill_points(42, 5, total));
    assert!(killed >= 3, "only {killed} of the runs were killed mid-way");
    assert!(
        resumed >= 3,
        "only {resumed} of the runs resumed from a checkpoint"
    );
    assert_same_models(&finals(&out), &expected);
    // The output file holds every line once, in the order of an uninterrupted run (the
    // restored panes sum in another order, so numbers may differ in the last bits).
    let uninterrupted = dir.path("uninterrupted.jsonl");
    run_to_end(
        &dir,
        &args(&uninterrupted, Some(&dir.path("ckpt2")), &["-w", "2"]),
    );
    assert_same_lines(&out, &uninterrupted);
}

/// Same lines in the same order: equal but for floating-point values within 1e-9.
fn assert_same_lines(a: &Path, b: &Path) {
    let (a, b) = (
        std::fs::read_to_string(a).unwrap(),
        std::fs::read_to_string(b).unwrap(),
    );
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    assert_eq!(a.len(), b.len(), "different numbers of lines");
    for (i, (la, lb)) in a.iter().zip(&b).enumerate() {
        let va: serde_json::Value = serde_json::from_str(la).unwrap();
        let vb: serde_json::Value = serde_json::from_str(lb).unwrap();
        assert!(close(&va, &vb), "line {}: {la} vs {lb}", i + 1);
    }
}

fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn rescaling_a_checkpoint_gives_identical_models() {
    let dir = TempDir::new("rescale");
    let (expected, _) = reference(&dir, "4");
    let total = std::fs::read_to_string(dir.path("reference-w4.jsonl"))
        .unwrap()
        .lines()
        .count();
    for workers in ["1", "3"] {
        let out = dir.path(&format!("out-{workers}.jsonl"));
        let ckpt = dir.path(&format!("ckpt-{workers}"));
        // Checkpoint with 4 workers, killed half-way through…
        let mut child = spawn(&args(&out, Some(&ckpt), &["-w", "4"]));
        let lines = || line_count(&out);
        assert!(
            child.kill_when(Duration::from_secs(60), || lines() >= total / 2),
            "finished before the kill"
        );
        // …restored onto another worker count.
        let o = run_to_end(&dir, &args(&out, Some(&ckpt), &["-w", workers]));
        let stderr = &o.stderr;
        assert!(stderr.contains("resuming from checkpoint"), "{stderr}");
        assert_same_models(&finals(&out), &expected);
    }
}

#[test]
fn two_process_cluster_survives_killing_one_process() {
    let dir = TempDir::new("cluster");
    let (expected, _) = reference(&dir, "2");
    let out = dir.path("out.jsonl");
    let ckpt = dir.path("ckpt");
    let hostfile = dir.path("hosts");
    let cluster = || {
        loopback_hostfile(&hostfile, 2);
        let h = hostfile.display().to_string();
        (0..2)
            .map(|i| {
                spawn(&args(
                    &out,
                    Some(&ckpt),
                    &["-w", "1", "-n", "2", "-p", &i.to_string(), "-h", &h],
                ))
            })
            .collect::<Vec<_>>()
    };
    let total = std::fs::read_to_string(dir.path("reference-w2.jsonl"))
        .unwrap()
        .lines()
        .count();
    let lines = || line_count(&out);
    for (round, at) in kill_points(7, 3, total).into_iter().enumerate() {
        let mut children = cluster();
        let deadline = Instant::now() + Duration::from_secs(60);
        while lines() < at && Instant::now() < deadline && children.iter_mut().all(|c| c.running())
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Kill one process; the other fails when its peer disappears (or is stopped).
        let _ = children[round % 2].kill();
        // The other is given 10 s to stop, then killed (dropping it kills and reaps it).
        for mut c in children {
            c.wait_within(Duration::from_secs(10));
        }
    }
    // The last run, to its end. Ports are probed free and then bound by the processes: if
    // something else took one in between, the cluster is started again on new ones.
    let mut resumed = false;
    for attempt in 1.. {
        let outputs = finish_all(cluster(), Duration::from_secs(120));
        let stderr: Vec<String> = outputs
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect();
        let port_taken = stderr.iter().any(|e| e.contains("Address already in use"));
        if port_taken && attempt < 3 {
            eprintln!("cluster: a port was taken; starting again: {stderr:?}");
            continue;
        }
        for (o, stderr) in outputs.iter().zip(&stderr) {
            assert!(
                o.status.success(),
                "process failed ({}):\n{stderr}",
                o.status
            );
            resumed |= stderr.contains("resuming from checkpoint");
        }
        break;
    }
    assert!(
        resumed,
        "the last cluster run did not resume from a checkpoint"
    );
    assert_same_models(&finals(&out), &expected);
}

#[test]
fn a_checkpoint_of_another_dataflow_is_refused() {
    let dir = TempDir::new("fingerprint");
    let out = dir.path("out.jsonl");
    let ckpt = dir.path("ckpt");
    run_to_end(&dir, &args(&out, Some(&ckpt), &[]));
    let mut other = args(&out, Some(&ckpt), &[]);
    let w = other.iter().position(|a| a == WINDOW).unwrap();
    other[w] = "tumbling:30s".into();
    let o = spawn(&other).finish(Duration::from_secs(60));
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("another dataflow"), "{stderr}");
    assert!(stderr.contains("tumbling"), "{stderr}");
}

#[test]
fn a_damaged_store_is_refused() {
    let dir = TempDir::new("damaged");
    let out = dir.path("out.jsonl");
    let ckpt = dir.path("ckpt");
    // A finished run: its store holds table files (SST) with the commits and state.
    run_to_end(&dir, &args(&out, Some(&ckpt), &[]));
    let store = ckpt.join("process-0");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 64)
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no data files in {store:?}");
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        f.set_len(len / 2).unwrap();
    }
    let o = spawn(&args(&out, Some(&ckpt), &[])).finish(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a truncated store was accepted: {stderr}"
    );
    // Refused as damaged (exit 4, docs/checkpoint-format.md), naming the store: not any
    // failure that happens to mention a checkpoint (a panic in src/checkpoint/ would).
    assert_eq!(o.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&store.display().to_string()) && !stderr.contains("panicked"),
        "the refusal names the store {store:?}: {stderr}"
    );
}

#[test]
fn checkpoint_state_stays_bounded_and_inspect_reports_it() {
    let dir = TempDir::new("bounded");
    let (_, _) = reference(&dir, "2");
    let total = std::fs::read_to_string(dir.path("reference-w2.jsonl"))
        .unwrap()
        .lines()
        .count();
    let out = dir.path("out.jsonl");
    let ckpt = dir.path("ckpt");
    let a = args(&out, Some(&ckpt), &["-w", "2"]);
    let inspect = || {
        let o = Reaped::spawn(
            Command::new(BIN)
                .args(["checkpoint", "inspect"])
                .arg(&ckpt)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .finish(Duration::from_secs(60));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let panes = |text: &str| -> usize {
        text.split("base: ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no base count in {text}"))
    };
    // Killed at 3/4 of the stream: the store holds the open panes, not the history —
    // 8 keys × the 4 panes of a 20 s / 5 s window, and one more pane each at most.
    let mut child = spawn(&a);
    let lines = || line_count(&out);
    assert!(
        child.kill_when(Duration::from_secs(60), || lines() >= total * 3 / 4),
        "finished before the kill"
    );
    let text = inspect();
    assert!(
        panes(&text) <= 8 * 5,
        "too many panes in the store mid-run: {text}"
    );
    assert!(text.contains("newest complete epoch"), "{text}");
    // Finished: every window closed, so no pane is left.
    run_to_end(&dir, &a);
    let text = inspect();
    assert_eq!(panes(&text), 0, "{text}");
    // The same command after completion has nothing left to do and writes nothing twice.
    let before = std::fs::read_to_string(&out).unwrap();
    run_to_end(&dir, &a);
    assert_eq!(before, std::fs::read_to_string(&out).unwrap());
}
