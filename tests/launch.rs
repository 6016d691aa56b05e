//! `tributary launch`: a 2-process loopback cluster gives the models of a 1-worker run
//! (and of the independent oracle); stdout stays pipeable; a child killed with kill -9
//! makes the launcher stop the other one, name the dead one and exit non-zero; SIGTERM to
//! the launcher stops everything. Real processes on 127.0.0.1 only, every wait bounded.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a launched cluster may take before the test kills it and fails.
const LIMIT: Duration = Duration::from_secs(90);

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `run` arguments for a CSV file (no cluster flags).
fn run_args(csv: &Path, d: usize, win: Win, out: &str) -> Vec<String> {
    let mut a = strings(&["run", "-q", "--source"]);
    a.push(format!("csv:{}", csv.display()));
    a.extend(strings(&["--features", &feature_list(d), "--window"]));
    a.push(win.arg());
    a.extend(strings(&["--lateness", "1s", "--out", out]));
    a
}

fn launch_cmd(launch: &[&str], run: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("launch")
        .args(launch)
        .arg("--")
        .args(run)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs a launch to its end. The launcher probes free ports and releases them for its
/// children to bind: if another process takes one in between, the cluster fails with
/// "Address already in use" and is launched again (at most 3 times).
fn launch_to_end(launch: &[&str], run: &[String]) -> Output {
    for attempt in 1..=3 {
        let out = Reaped::spawn(&mut launch_cmd(launch, run)).finish(LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && stderr.contains("Address already in use") && attempt < 3 {
            eprintln!("launch: a port was taken; launching again: {stderr}");
            continue;
        }
        return out;
    }
    unreachable!()
}

fn data(dir: &TempDir, d: usize) -> (std::path::PathBuf, Vec<Row>) {
    let mut spec = GenSpec::new(30_000, 5, d, 77);
    spec.disorder = 300; // within the 1 s lateness: final models do not depend on workers
    let mut rows = generate(&spec);
    // Keys of more than 15 bytes travel as text beside a hash, shorter ones as one word:
    // both kinds cross between the processes.
    for r in rows
        .iter_mut()
        .filter(|r| !r.key.ends_with(['0', '2', '4']))
    {
        r.key = format!("{}: a key of more than fifteen bytes", r.key);
    }
    assert!(rows.iter().any(|r| r.key.len() <= 15) && rows.iter().any(|r| r.key.len() > 15));
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    (csv, rows)
}

#[test]
fn two_processes_give_the_models_of_one_worker() {
    let dir = TempDir::new("launch-models");
    let d = 3;
    let win = Win::Sliding(20_000, 5_000);
    let (csv, rows) = data(&dir, d);
    let want = oracle(&rows, d, win, None);

    let single = dir.path("w1.jsonl");
    let r = run_engine(&dir, &run_args(&csv, d, win, &single.display().to_string()));
    r.assert_success();
    let reference = read_models(&single);
    assert_matches_oracle(&reference, &want, want.len(), "-w 1 vs oracle");

    let launched = dir.path("launched.jsonl");
    // Blocks small enough for two per worker: all 4 workers of the 2 processes read.
    let mut args = run_args(&csv, d, win, &launched.display().to_string());
    let src = args.iter().position(|a| a.starts_with("csv:")).unwrap();
    args[src] = format!("csv:{},block={}", csv.display(), block_for(&csv, 4));
    let out = launch_to_end(&["-n", "2", "-w", "2"], &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "launch failed: {stderr}");
    assert!(out.stdout.is_empty(), "models went to --out, not stdout");
    for p in [
        "[p0] done:",
        "[p1] done:",
        "launch: all 2 processes finished",
    ] {
        assert!(stderr.contains(p), "no {p:?} on stderr: {stderr}");
    }
    // Process 0's summary counts every worker of the cluster (by global index).
    let p0: String = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("[p0] "))
        .collect::<Vec<_>>()
        .join("\n");
    assert_every_worker_read(&p0, 4, rows.len() as u64, "launch -n 2 -w 2");
    let got = read_models(&launched);
    assert_matches_oracle(
        &got,
        &with_oracle_cond(&reference, &want),
        want.len(),
        "launch vs -w 1",
    );
    assert_matches_oracle(&got, &want, want.len(), "launch vs oracle");
}

#[test]
fn stdout_models_stay_pipeable_unless_prefixed() {
    let dir = TempDir::new("launch-stdout");
    let d = 2;
    let win = Win::Tumbling(10_000);
    let (csv, rows) = data(&dir, d);
    let want = oracle(&rows, d, win, None);

    let out = launch_to_end(&["-n", "2"], &run_args(&csv, d, win, "-"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unprefixed: every stdout line is a model, as from a single process.
    let text = String::from_utf8(out.stdout).unwrap();
    assert_matches_oracle(
        &keep_final(&parse_emissions(&text)),
        &want,
        want.len(),
        "stdout vs oracle",
    );

    let out = launch_to_end(
        &["-n", "2", "--prefix-stdout"],
        &run_args(&csv, d, win, "-"),
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    assert!(
        lines.iter().all(|l| l.starts_with("[p0] {")),
        "with --prefix-stdout, models come from process 0, prefixed: {:?}",
        &lines[..3.min(lines.len())]
    );
    let stripped: String = lines
        .iter()
        .map(|l| format!("{}\n", &l[5..]))
        .collect::<String>();
    assert_matches_oracle(
        &keep_final(&parse_emissions(&stripped)),
        &want,
        want.len(),
        "prefixed stdout vs oracle",
    );
}

/// A long-running 2-process launch; returns it (the launcher, killed on drop with the two
/// processes), its collected stderr, and the two pids (read from the launcher's
/// `launch: process i pid N` lines).
fn start_long_cluster(dir: &TempDir) -> (Reaped, Arc<Mutex<Vec<String>>>, Vec<i32>) {
    let out = dir.path("out.jsonl");
    let mut run = strings(&[
        "run",
        "-q",
        "--source",
        "gen:rows=500000000,keys=8,features=3,seed=3",
        "--window",
        "sliding:20s/5s",
        "--out",
    ]);
    run.push(out.display().to_string());
    let mut child = Reaped::spawn(
        launch_cmd(&["-n", "2", "-w", "1", "--grace", "3s"], &run).stdout(Stdio::null()),
    );
    let lines = lines_in_background(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let pids = loop {
        let pids: Vec<i32> = (0..2)
            .filter_map(|i| {
                let prefix = format!("launch: process {i} pid ");
                lines.lock().unwrap().iter().find_map(|l| {
                    l.strip_prefix(&prefix)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
            })
            .collect();
        if pids.len() == 2 {
            break pids;
        }
        if Instant::now() > deadline {
            panic!("the launcher did not print two pids: {:?}", lines.lock());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for pid in &pids {
        child.also_kill(*pid as u32);
    }
    // Running for real: process 0 writes models (the cluster is connected and working).
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(&out).map_or(0, |b| b.len()) == 0 {
        if Instant::now() > deadline || child.exited().is_some() {
            panic!("the cluster wrote no model: {:?}", lines.lock());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, lines, pids)
}

fn alive(pid: i32) -> bool {
    // A reaped process has no /proc entry; a zombie would still count as left behind.
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (at most 30 s) for the launcher to exit; its processes are killed with it if the
/// test fails, and not before the test has checked them.
fn wait_until_done(child: &mut Reaped) -> ExitStatus {
    child
        .wait_within(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("launch did not exit within 30 s"))
}

/// The launcher's stderr after it exited (the reader thread reaches end of file).
fn final_stderr(lines: &Arc<Mutex<Vec<String>>>) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(lines) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    lines.lock().unwrap().join("\n")
}

#[test]
fn a_killed_process_stops_the_cluster_and_is_named() {
    let dir = TempDir::new("launch-kill");
    let (mut child, lines, pids) = start_long_cluster(&dir);
    let killed = Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_until_done(&mut child);
    let stderr = final_stderr(&lines);
    assert!(
        !status.success(),
        "launch exited 0 after a child was killed"
    );
    let named = format!(
        "error: launch: process 1 (pid {}) was killed by signal 9 (SIGKILL)",
        pids[1]
    );
    assert!(stderr.contains(&named), "no {named:?} in: {stderr}");
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} left behind");
    }
}

#[test]
fn sigterm_to_the_launcher_stops_every_process() {
    let dir = TempDir::new("launch-term");
    let (mut child, lines, pids) = start_long_cluster(&dir);
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_until_done(&mut child);
    let stderr = final_stderr(&lines);
    assert!(!status.success());
    assert!(
        stderr.contains("interrupted by signal 15 (SIGTERM); all 2 processes were stopped"),
        "{stderr}"
    );
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} left behind");
    }
}

#[test]
fn cluster_flags_in_the_forwarded_command_are_refused() {
    let out = Reaped::spawn(&mut launch_cmd(&["-n", "2"], &strings(&["run", "-w", "2"])))
        .finish(Duration::from_secs(10));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"-w\" is the launcher's to set"),
        "{stderr}"
    );
    assert!(!stderr.contains("launch: process"), "nothing is started");
}
