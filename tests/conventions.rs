//! The conventions of a Rust service, on the real binary: `--version` names the git
//! commit, shell completions and man pages come from the clap definitions, log lines go
//! through `tracing` (`--log-format json`, `RUST_LOG`), and the progress line is for
//! terminals only unless `--progress` asks for it. Bounded in time; processes killed on
//! drop; loopback only.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Runs the binary to its end, within [`WAIT`].
fn tributary(args: &[&str], env: &[(&str, &str)]) -> Output {
    Reaped::spawn(
        Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .finish(WAIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_names_the_git_commit() {
    let out = tributary(&["--version"], &[]);
    assert!(out.status.success());
    let version = text(&out.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match head {
        Ok(head) if head.status.success() => {
            let commit = text(&head.stdout).trim().to_owned();
            assert_eq!(
                version.trim(),
                format!("tributary {} (commit {commit})", env!("CARGO_PKG_VERSION"))
            );
        }
        // Built outside a git checkout.
        _ => assert!(version.contains("(commit unknown)"), "{version}"),
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = tributary(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in [
            "tributary",
            "checkpoint",
            "completions",
            "no-dashboard",
            "log-format",
        ] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    // The bash script is valid bash.
    let dir = TempDir::new("completions");
    let path = dir.path("tributary.bash");
    std::fs::write(&path, tributary(&["completions", "bash"], &[]).stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    let bad = tributary(&["completions", "tcsh"], &[]);
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn man_pages_of_the_command_and_its_subcommands() {
    let out = tributary(&["man"], &[]);
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(page.contains(".TH tributary 1"), "{page}");
    for word in ["completions", "checkpoint", "launch", "EXIT STATUS"] {
        assert!(page.contains(word), "man page lacks {word}");
    }
    let run = text(&tributary(&["man", "run"], &[]).stdout);
    assert!(run.contains(".TH tributary-run 1"), "{run}");
    for flag in [
        "\\-\\-token\\-file",
        "\\-\\-no\\-dashboard",
        "\\-\\-progress",
    ] {
        assert!(run.contains(flag), "man run lacks {flag}");
    }
    let bad = tributary(&["man", "nope"], &[]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("no subcommand \"nope\""));
}

fn gen_run(extra: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = TempDir::new("logs");
    let out = dir.path("m.jsonl");
    let mut args = vec![
        "run",
        "--source",
        "gen:rows=2000,keys=2,features=1,seed=5",
        "--window",
        "tumbling:1s",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = tributary(&args, env);
    assert!(output.status.success(), "{}", text(&output.stderr));
    output
}

#[test]
fn log_lines_are_json_with_log_format_json_and_filtered_by_rust_log() {
    // Text: as a person reads it.
    let plain = text(&gen_run(&[], &[]).stderr);
    assert!(plain.starts_with("tributary: gen:"), "{plain}");
    assert!(plain.contains("\ndone: "), "{plain}");

    let json = text(&gen_run(&["--log-format", "json"], &[]).stderr);
    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{json}");
    for line in &lines {
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["target"].as_str().unwrap().starts_with("tributary"));
    }
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["fields"]["message"].as_str().unwrap())
        .collect();
    assert!(messages[0].starts_with("tributary: gen:"), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.starts_with("done: ")),
        "{messages:?}"
    );

    // RUST_LOG=warn keeps only warnings and errors: none in a good run.
    let quiet = gen_run(&[], &[("RUST_LOG", "warn")]);
    assert_eq!(text(&quiet.stderr), "");
    // An error still shows under RUST_LOG=warn, as `error: …`.
    let dir = TempDir::new("logs-error");
    let bad = tributary(
        &[
            "run",
            "--source",
            "csv:/no/such/file.csv",
            "--features",
            "x0",
            "--out",
            dir.path("m.jsonl").to_str().unwrap(),
        ],
        &[("RUST_LOG", "warn")],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).starts_with("error: "),
        "{}",
        text(&bad.stderr)
    );
    // A RUST_LOG that is no filter is said, and info used.
    let odd = text(&gen_run(&[], &[("RUST_LOG", "tributary=loud")]).stderr);
    assert!(
        odd.starts_with("warning: RUST_LOG=\"tributary=loud\""),
        "{odd}"
    );
    assert!(odd.contains("done: "), "{odd}");
}

/// A server process (killed on drop) and its stderr file.
struct Proc(Reaped, PathBuf);

#[test]
fn the_progress_line_is_for_terminals_unless_asked_for() {
    let dir = TempDir::new("progress");
    let start = |name: &str, extra: &[&str]| {
        let stderr = dir.path(&format!("{name}.stderr"));
        let child = Reaped::spawn(
            Command::new(BIN)
                .args([
                    "run",
                    "--source",
                    "http",
                    "--serve",
                    "127.0.0.1:0",
                    "--features",
                    "x0",
                    "--out",
                    dir.path(&format!("{name}.jsonl")).to_str().unwrap(),
                ])
                .args(extra)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr).unwrap()),
        );
        Proc(child, stderr)
    };
    // stderr is a file here, not a terminal: only --progress prints the line.
    let default = start("default", &[]);
    let mut asked = start("asked", &["--progress"]);
    let read = |p: &Proc| std::fs::read_to_string(&p.1).unwrap_or_default();
    let deadline = Instant::now() + WAIT;
    while read(&asked).matches("progress: ").count() < 2 {
        assert!(asked.0.try_wait().unwrap().is_none(), "{}", read(&asked));
        assert!(
            Instant::now() < deadline,
            "no progress line: {}",
            read(&asked)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both started together and the one asked has printed two: the other would have too.
    let quiet = read(&default);
    assert!(quiet.contains("serving on"), "{quiet}");
    assert!(!quiet.contains("progress:"), "{quiet}");
    // --quiet and --progress contradict each other.
    let both = tributary(&["run", "--quiet", "--progress"], &[]);
    assert_eq!(both.status.code(), Some(1));
}
