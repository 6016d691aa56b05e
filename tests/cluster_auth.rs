//! The connections between the processes of a cluster, on 127.0.0.1: during start-up a
//! stranger that connects to process 0's port and sends garbage (or nothing) is dropped
//! and logged, and the cluster still completes with the oracle's models (timely's own
//! start-up panicked, or waited on the silent one forever); with `--cluster-token-file`,
//! a process with another token is refused with a message saying so, process 0 goes on
//! waiting, and a process with the right token joins it. Every wait is bounded; every
//! process is killed when a test ends, failed or not.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest any wait of these tests lasts.
const WAIT: Duration = Duration::from_secs(90);

/// One engine process (killed on drop), its stderr file and its name.
struct Proc {
    child: Reaped,
    stderr: PathBuf,
    name: String,
}

impl Proc {
    fn start(dir: &TempDir, name: &str, args: &[String]) -> Proc {
        let stderr = dir.path(&format!("{name}.stderr"));
        let child = Reaped::spawn(
            Command::new(BIN)
                .args(args)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.path(&format!("{name}.stdout"))).unwrap())
                .stderr(std::fs::File::create(&stderr).unwrap()),
        );
        Proc {
            child,
            stderr,
            name: name.to_owned(),
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (bounded) until stderr holds `text`; `None` if the process exited first.
    fn wait_for_stderr(&mut self, text: &str) -> Option<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.stderr_text().contains(text) {
                return Some(());
            }
            if self.child.exited().is_some() {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {text:?} on stderr:\n{}",
                self.name,
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the exit.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish:\n{}",
                self.name,
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&mut self) -> bool {
        self.child.running()
    }
}

/// The data, its oracle and the `run` arguments shared by both processes (without `-p`).
struct Setup {
    want: std::collections::BTreeMap<WinKey, Model>,
    out: PathBuf,
    common: Vec<String>,
    port0: u16,
    hostfile: PathBuf,
}

fn setup(dir: &TempDir) -> Setup {
    let d = 2;
    let win = Win::Tumbling(10_000);
    let mut spec = GenSpec::new(20_000, 4, d, 91);
    spec.disorder = 300;
    let rows = generate(&spec);
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let hostfile = dir.path("hosts.txt");
    let port0 = loopback_hostfile(&hostfile, 2)[0];
    let out = dir.path("models.jsonl");
    let common = [
        "run",
        "-q",
        "--source",
        &format!("csv:{}", csv.display()),
        "--features",
        &feature_list(d),
        "--window",
        &win.arg(),
        "--lateness",
        "1s",
        "--out",
        &out.display().to_string(),
        "-n",
        "2",
        "-h",
        &hostfile.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Setup {
        want: oracle(&rows, d, win, None),
        out,
        common,
        port0,
        hostfile,
    }
}

/// Starts process 0 with `extra` arguments and waits until it listens. Its port was
/// probed free and released: if another process took it before process 0 bound it, the
/// hostfile gets new ports and process 0 is started again (at most 3 times).
fn start_p0(dir: &TempDir, s: &mut Setup, extra: &[&str]) -> Proc {
    for attempt in 1..=3 {
        let name = if attempt == 1 {
            "p0".to_owned()
        } else {
            format!("p0-try{attempt}")
        };
        let mut p0 = Proc::start(
            dir,
            &name,
            &with(&s.common, &[&["-p", "0"], extra].concat()),
        );
        if p0.wait_for_stderr("listening on").is_some() {
            return p0;
        }
        let stderr = p0.stderr_text();
        assert!(
            attempt < 3 && stderr.contains("Address already in use"),
            "process 0 exited before listening:\n{stderr}"
        );
        s.port0 = loopback_hostfile(&s.hostfile, 2)[0];
    }
    unreachable!()
}

fn with(common: &[String], extra: &[&str]) -> Vec<String> {
    let mut a = common.to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn token_file(dir: &TempDir, name: &str, secret: &str) -> String {
    let path = dir.path(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// Both processes exit 0 and process 0's `--out` holds the oracle's models.
fn assert_completes(
    p0: &mut Proc,
    p1: &mut Proc,
    out: &Path,
    want: &std::collections::BTreeMap<WinKey, Model>,
) {
    for p in [&mut *p1, &mut *p0] {
        let status = p.wait();
        assert!(
            status.success(),
            "{} {status}:\n{}",
            p.name,
            p.stderr_text()
        );
    }
    assert_matches_oracle(
        &read_models(out),
        want,
        want.len(),
        "2-process cluster vs oracle",
    );
}

/// A stranger connects to process 0's port while it waits for process 1 and sends an
/// HTTP request; another connects and sends nothing. Process 0 drops the first (logged:
/// not a cluster process), is not held up by the second, and when process 1 starts the
/// cluster gives the oracle's models. No token: the handshake alone keeps strangers'
/// bytes from reaching timely. Fails on the old code: timely read the garbage as a worker
/// index and panicked (`failed to decode worker index` or an index out of bounds), and a
/// silent connection held its accept loop for good.
#[test]
fn a_strangers_connection_during_start_up_is_dropped_and_the_cluster_completes() {
    let dir = TempDir::new("cluster-stranger");
    let mut s = setup(&dir);
    let mut p0 = start_p0(&dir, &mut s, &[]);
    // Process 0 listens (it said so).
    let deadline = Instant::now() + WAIT;
    let mut stranger = loop {
        match TcpStream::connect(("127.0.0.1", s.port0)) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline && p0.running() => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("process 0 does not listen ({e}):\n{}", p0.stderr_text()),
        }
    };
    let silent = TcpStream::connect(("127.0.0.1", s.port0)).unwrap();
    stranger
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Process 0 closes it: an end of stream, or a reset (the rest of the request unread).
    let mut greeting = Vec::new();
    if let Err(e) = stranger.read_to_end(&mut greeting) {
        assert_eq!(
            e.kind(),
            ErrorKind::ConnectionReset,
            "process 0 does not close the stranger's connection: {e}\n{}",
            p0.stderr_text()
        );
    }
    assert!(
        p0.wait_for_stderr("dropped a connection").is_some(),
        "process 0 exited:\n{}",
        p0.stderr_text()
    );
    let stderr = p0.stderr_text();
    assert!(
        stderr.contains("not a Tributary cluster process"),
        "{stderr}"
    );
    assert!(p0.running(), "process 0 runs on:\n{stderr}");
    let mut p1 = Proc::start(&dir, "p1", &with(&s.common, &["-p", "1"]));
    assert_completes(&mut p0, &mut p1, &s.out, &s.want);
    drop(silent);
}

/// With `--cluster-token-file`: process 1 started with another token is refused, exits
/// non-zero and says the token differs; process 0 logs the refusal and goes on waiting;
/// process 1 started again with the right token joins, and the cluster gives the oracle's
/// models. Fails on the old code (no such flag).
#[test]
fn a_process_with_another_token_is_refused_and_the_right_one_joins() {
    let dir = TempDir::new("cluster-token");
    let mut s = setup(&dir);
    let good = token_file(&dir, "token-a", "correct horse battery staple");
    let bad = token_file(&dir, "token-b", "another secret");
    let mut p0 = start_p0(&dir, &mut s, &["--cluster-token-file", &good]);
    let mut wrong = Proc::start(
        &dir,
        "p1-wrong-token",
        &with(&s.common, &["-p", "1", "--cluster-token-file", &bad]),
    );
    let status = wrong.wait();
    let stderr = wrong.stderr_text();
    assert!(!status.success(), "{status}:\n{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("cluster token differs"),
        "{stderr}"
    );
    assert!(
        p0.wait_for_stderr("proof does not match").is_some(),
        "process 0 exited:\n{}",
        p0.stderr_text()
    );
    assert!(p0.running());
    // A process without a token is refused the same way.
    let mut none = Proc::start(&dir, "p1-no-token", &with(&s.common, &["-p", "1"]));
    assert!(!none.wait().success());
    assert!(
        none.stderr_text().contains("this process has none"),
        "{}",
        none.stderr_text()
    );
    let mut p1 = Proc::start(
        &dir,
        "p1",
        &with(&s.common, &["-p", "1", "--cluster-token-file", &good]),
    );
    assert_completes(&mut p0, &mut p1, &s.out, &s.want);
}
