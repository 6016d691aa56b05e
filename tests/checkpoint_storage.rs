//! Checkpoint storage shared between processes: a second `tributary run` on a store that
//! a running process holds is refused by name (exit 4) and leaves the running one and its
//! output alone; a restart on a directory where one process's store is a stale copy of an
//! older run (another generation) is refused by name, not read as missing parts; and
//! host-local checkpoint directories (each host sees only its own store) are refused on
//! both sides instead of one process starting over. Real
//! processes, no network besides what `launch` does on 127.0.0.1; every wait bounded.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run_args(ckpt: &std::path::Path, out: &std::path::Path, rows: u64) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "-q",
        "--source",
        &format!("gen:rows={rows},keys=8,features=2,seed=5"),
        "--window",
        "tumbling:10s",
        "--checkpoint-every",
        "200ms",
        "--checkpoint",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(ckpt.display().to_string());
    args.push("--out".into());
    args.push(out.display().to_string());
    args
}

/// Runs `cmd` to its end within `limit` (killed and failed otherwise).
fn finish(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
    let output = Reaped::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .finish(limit);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_store_another_process_holds_is_refused_by_name() {
    let dir = TempDir::new("ckpt-locked");
    let (ckpt, out) = (dir.path("ckpt"), dir.path("out.jsonl"));
    let args = run_args(&ckpt, &out, 500_000_000);
    let mut first = Reaped::spawn(
        Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // Running for real: models written (so the store is open and committing).
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&out).map_or(0, |m| m.len()) == 0 {
        assert!(first.try_wait().unwrap().is_none(), "the first run ended");
        assert!(Instant::now() < deadline, "the first run wrote no model");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = std::fs::metadata(&out).unwrap().len();
    // The same command again (a supervisor's duplicate start).
    let (code, stderr) = finish(Command::new(BIN).args(&args), Duration::from_secs(60));
    assert_eq!(code, Some(4), "{stderr}");
    let store = ckpt.join("process-0");
    let named = format!(
        "checkpoint store {} is in use by another process",
        store.display()
    );
    assert!(stderr.contains(&named), "no {named:?} in: {stderr}");
    assert!(stderr.contains("LOCK"), "{stderr}");
    // The first run goes on, and its output was not cut back by the refused one.
    assert!(first.try_wait().unwrap().is_none(), "the first run stopped");
    assert!(std::fs::metadata(&out).unwrap().len() >= before);
}

#[test]
fn a_stale_store_of_an_older_run_is_refused_by_name() {
    let dir = TempDir::new("ckpt-stale");
    let (ckpt, out) = (dir.path("ckpt"), dir.path("out.jsonl"));
    let launch = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["launch", "-n", "2", "-w", "1", "--"])
            .args(run_args(&ckpt, &out, 20_000))
            .args(extra);
        c
    };
    // Generation 1: a whole run of 2 processes.
    let (code, stderr) = finish(&mut launch(&[]), Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    // Keep process 1's store of generation 1 (as a host-local copy would stay behind).
    let stale = dir.path("stale-process-1");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(ckpt.join("process-1"))
        .arg(&stale)
        .status()
        .unwrap();
    assert!(copied.success());
    // Generation 2: the restart resumes and commits, retiring generation 1.
    let (code, stderr) = finish(&mut launch(&[]), Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("generation 1"), "no resume: {stderr}");
    // The stale copy back in place of process 1's store: refused, naming it.
    std::fs::remove_dir_all(ckpt.join("process-1")).unwrap();
    std::fs::rename(&stale, ckpt.join("process-1")).unwrap();
    let (code, stderr) = finish(&mut launch(&[]), Duration::from_secs(120));
    assert_ne!(code, Some(0), "{stderr}");
    for part in [
        format!(
            "{}: the store of process 1 holds generation 1, not generation 2",
            ckpt.join("process-1").display()
        ),
        "it is older".to_owned(),
    ] {
        assert!(stderr.contains(&part), "no {part:?} in: {stderr}");
    }
}

#[test]
fn host_local_checkpoint_directories_are_refused_on_both_sides() {
    let dir = TempDir::new("ckpt-local");
    let (ckpt, out) = (dir.path("ckpt"), dir.path("out.jsonl"));
    let (code, stderr) = finish(
        Command::new(BIN)
            .args(["launch", "-n", "2", "-w", "1", "--"])
            .args(run_args(&ckpt, &out, 20_000)),
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "{stderr}");
    // Each "host" keeps only the store its process wrote, as local disks would.
    let local = |p: usize| {
        let host = dir.path(&format!("host{p}"));
        std::fs::create_dir_all(&host).unwrap();
        std::fs::rename(
            ckpt.join(format!("process-{p}")),
            host.join(format!("process-{p}")),
        )
        .unwrap();
        host
    };
    let (host0, host1) = (local(0), local(1));
    // Each process alone: both are refused before they would connect to the other.
    let alone = |p: usize, host: &std::path::Path| {
        let mut c = Command::new(BIN);
        c.args(run_args(host, &out, 20_000)).args([
            "-n",
            "2",
            "-p",
            &p.to_string(),
            "--peer-timeout",
            "5s",
        ]);
        finish(&mut c, Duration::from_secs(60))
    };
    let (code, stderr) = alone(0, &host0);
    assert_eq!(code, Some(4), "{stderr}");
    let named = format!(
        "{}: the newest complete checkpoint (epoch",
        host0.join("process-1").display()
    );
    assert!(stderr.contains(&named), "no {named:?} in: {stderr}");
    assert!(
        stderr.contains("the store of process 1 does not exist here"),
        "{stderr}"
    );
    let (code, stderr) = alone(1, &host1);
    assert_eq!(code, Some(4), "{stderr}");
    let named = format!(
        "process 0's store {} does not exist here",
        host1.join("process-0").display()
    );
    assert!(stderr.contains(&named), "no {named:?} in: {stderr}");
    // Nothing was started over: process 1's store still holds its checkpoint.
    let (code, stderr) = alone(1, &host1);
    assert_eq!(code, Some(4), "refused again: {stderr}");
}
