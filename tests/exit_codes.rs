//! The exit codes of docs/dataflow-spec.md, each run here where no other test runs it
//! unconditionally: 0 (a run that ends), 1 (a usage error, a bad setting, a port taken),
//! 2 (a malformed line under `--on-error fail`, an output that cannot be opened), 75 (a
//! process of a loopback cluster killed under the other). 3 is run by
//! tests/store_integrity.rs, 4 by tests/recovery.rs and tests/store_integrity.rs, 70 by
//! tests/faults.rs; the table itself is checked against `tributary man` here. Every
//! process is bounded in time and killed on drop; loopback only.

mod common;

use common::*;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(90);

/// Runs the binary to its end (bounded): exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Reaped::spawn(
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .finish(WAIT);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn exit_0_when_the_run_ends() {
    let dir = TempDir::new("exit0");
    let out = dir.path("m.jsonl");
    let (code, stderr) = run(&[
        "run",
        "--source",
        "gen:rows=5000,keys=2,features=2,seed=1",
        "--window",
        "tumbling:1s",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("done:"), "{stderr}");
}

#[test]
fn exit_1_on_an_error_at_start() {
    // A usage error (clap's own code would be 2, the code of a failure during the run).
    let (code, stderr) = run(&["run", "--no-such-flag"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    let (code, stderr) = run(&["no-such-command"]);
    assert_eq!(code, Some(1), "{stderr}");
    // Help and the version are not errors.
    assert_eq!(run(&["--help"]).0, Some(0));
    assert_eq!(run(&["--version"]).0, Some(0));
    // A bad setting.
    let (code, stderr) = run(&["run", "--source", "gen:rows=10", "--window", "weekly"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("weekly"), "{stderr}");
    // A port taken.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run(&[
        "run",
        "--source",
        "http",
        "--features",
        "x0",
        "--serve",
        &address,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
}

#[test]
fn exit_2_when_a_source_or_output_fails_during_the_run() {
    let dir = TempDir::new("exit2");
    let csv = dir.path("in.csv");
    std::fs::write(&csv, "ts,key,x0,y\n1000,a,1,2\n2000,a,oops,3\n").unwrap();
    let out = dir.path("m.jsonl");
    let (code, stderr) = run(&[
        "run",
        "--source",
        &format!("csv:{}", csv.display()),
        "--window",
        "tumbling:1s",
        "--on-error",
        "fail",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("oops") || stderr.contains("line 3"),
        "{stderr}"
    );

    let nowhere = dir.path("no-such-dir/m.jsonl");
    let (code, stderr) = run(&[
        "run",
        "--source",
        &format!("csv:{}", csv.display()),
        "--window",
        "tumbling:1s",
        "--out",
        nowhere.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("output"), "{stderr}");
}

/// One process of the loopback cluster (killed on drop) and its stderr file.
struct Proc(Reaped, PathBuf);

#[test]
fn exit_75_when_another_process_of_the_cluster_is_lost() {
    let dir = TempDir::new("exit75");
    let hostfile = dir.path("hosts.txt");
    loopback_hostfile(&hostfile, 2);
    let start = |p: usize| {
        let stderr = dir.path(&format!("p{p}.stderr"));
        let child = Reaped::spawn(
            Command::new(BIN)
                .args([
                    "run",
                    "--progress",
                    "--source",
                    "gen:rows=100000000000,keys=4,features=2,seed=3",
                    "--window",
                    "tumbling:10s",
                    "--out",
                    dir.path(&format!("p{p}.jsonl")).to_str().unwrap(),
                    "--peer-timeout",
                    "5s",
                    "-n",
                    "2",
                    "-p",
                    &p.to_string(),
                    "-h",
                    hostfile.to_str().unwrap(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr).unwrap()),
        );
        Proc(child, stderr)
    };
    let mut p0 = start(0);
    let mut p1 = start(1);
    // Running: process 0 prints its progress line once the cluster is up.
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&p0.1)
        .unwrap_or_default()
        .contains("progress:")
    {
        assert!(p0.0.try_wait().unwrap().is_none(), "process 0 ended");
        assert!(p1.0.try_wait().unwrap().is_none(), "process 1 ended");
        assert!(Instant::now() < deadline, "the cluster did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    p1.0.kill().unwrap();
    p1.0.wait().unwrap();
    let status = loop {
        if let Some(status) = p0.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "process 0 did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&p0.1).unwrap();
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("lost"), "{stderr}");
}

#[test]
fn the_table_of_docs_and_the_man_page_name_the_same_codes() {
    let spec = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/dataflow-spec.md"
    ))
    .unwrap();
    let table = spec
        .split("## Exit codes")
        .nth(1)
        .expect("an Exit codes section");
    let mut documented: Vec<u32> = table
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap().trim().parse().unwrap())
        .collect();
    documented.sort();
    let man = Command::new(BIN).arg("man").output().unwrap();
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    let section = page
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .expect("EXIT STATUS");
    let mut in_man: Vec<u32> = section
        .lines()
        .filter_map(|l| l.strip_prefix("\\fB")?.strip_suffix("\\fR")?.parse().ok())
        .collect();
    in_man.sort();
    assert_eq!(documented, [0, 1, 2, 3, 4, 70, 75]);
    assert_eq!(in_man, documented);
}
