//! The process harness: temporary directories, running the `tributary` binary to its end
//! (bounded in time), the settings of one `tributary run`, loopback hostfiles, and
//! [`Reaped`], the one guard that kills and reaps a child process on every path out of a
//! test.

use super::*;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The `tributary` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_tributary");

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory removed on drop (kept when the env var TRIBUTARY_KEEP_TMP is set).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> Self {
        let c = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!(
            "tributary-it-{}-{}-{}",
            std::process::id(),
            test,
            c
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("TRIBUTARY_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub struct RunOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub cmdline: String,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    pub fn assert_success(&self) {
        assert!(
            self.success(),
            "engine failed (exit {:?})\ncommand: {}\nstderr:\n{}",
            self.code,
            self.cmdline,
            self.stderr
        );
    }
    /// The value of the last `name=N` token on stderr (the exit summary).
    pub fn summary(&self, name: &str) -> Option<u64> {
        summary_token(&self.stderr, name)
    }
}

/// A block size that cuts the file into at least two blocks per worker (block k goes to
/// worker k mod W), so that every one of `workers` workers reads.
pub fn block_for(path: &Path, workers: usize) -> u64 {
    (std::fs::metadata(path).unwrap().len() / (2 * workers as u64)).max(64)
}

/// Maximum wall time of one engine run before it is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `tributary` with these arguments; stdout/stderr go to files in `dir`.
pub fn run_engine(dir: &TempDir, args: &[String]) -> RunOutput {
    run_engine_env(dir, args, &[])
}

/// [`run_engine`] with these environment variables set for the engine.
pub fn run_engine_env(dir: &TempDir, args: &[String], env: &[(&str, &str)]) -> RunOutput {
    let c = COUNTER.fetch_add(1, Ordering::SeqCst);
    let out_p = dir.path(&format!("stdout-{c}.txt"));
    let err_p = dir.path(&format!("stderr-{c}.txt"));
    let cmdline = format!("{BIN} {}", args.join(" "));
    let mut child = Reaped::spawn(
        Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_p).unwrap())
            .stderr(std::fs::File::create(&err_p).unwrap()),
    );
    let Some(status) = child.wait_within(RUN_TIMEOUT) else {
        child.kill_and_wait();
        panic!(
            "engine did not finish within {RUN_TIMEOUT:?}\ncommand: {cmdline}\nstderr:\n{}",
            std::fs::read_to_string(&err_p).unwrap_or_default()
        );
    };
    RunOutput {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_p).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_p).unwrap_or_default(),
        cmdline,
    }
}

/// Settings of one `tributary run`.
#[derive(Clone, Debug)]
pub struct RunCfg {
    pub source: String,
    pub features: String,
    pub win: Win,
    pub lateness: String,
    pub ridge: Option<f64>,
    pub workers: usize,
    pub extra: Vec<String>,
}

impl RunCfg {
    pub fn csv(path: &Path, d: usize, win: Win) -> Self {
        RunCfg {
            source: format!("csv:{}", path.display()),
            features: feature_list(d),
            win,
            lateness: "5s".into(),
            ridge: None,
            workers: 1,
            extra: Vec::new(),
        }
    }
    pub fn args(&self, out: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--source".into(),
            self.source.clone(),
            "--time".into(),
            "ts".into(),
            "--key".into(),
            "key".into(),
            "--features".into(),
            self.features.clone(),
            "--target".into(),
            "y".into(),
            "--window".into(),
            self.win.arg(),
            "--lateness".into(),
            self.lateness.clone(),
            "--out".into(),
            out.display().to_string(),
            "-w".into(),
            self.workers.to_string(),
        ];
        if let Some(l) = self.ridge {
            a.push("--ridge".into());
            a.push(format!("{l}"));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// Runs the engine with `cfg`, asserts success, returns (run output, raw output text).
pub fn run_ok(dir: &TempDir, cfg: &RunCfg, out_name: &str) -> (RunOutput, String) {
    run_ok_env(dir, cfg, out_name, &[])
}

/// [`run_ok`] with these environment variables set for the engine.
pub fn run_ok_env(
    dir: &TempDir,
    cfg: &RunCfg,
    out_name: &str,
    env: &[(&str, &str)],
) -> (RunOutput, String) {
    let out = dir.path(out_name);
    let r = run_engine_env(dir, &cfg.args(&out), env);
    r.assert_success();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    (r, text)
}

/// Writes a hostfile of `n` free ports on 127.0.0.1 and returns them. The ports are
/// probed and released for the processes to bind: another process may take one in
/// between, which a test meets by starting again on new ports.
pub fn loopback_hostfile(path: &Path, n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let lines: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(path, lines).unwrap();
    ports
}

/// How often a wait of the harness polls a child.
const POLL: Duration = Duration::from_millis(10);

/// A child process that is killed (SIGKILL) and reaped when dropped: on every path out of
/// a test, a failed assertion or a panic included, no process is left behind. Processes
/// named with [`Reaped::also_kill`] (the children of a `tributary launch`) are continued
/// (a stopped process ignores SIGTERM) and killed with it.
///
/// It dereferences to the [`Child`], so `try_wait`, `id`, `kill` and the pipes are at
/// hand; dropping it (or [`Reaped::kill_and_wait`]) is the way to stop it.
pub struct Reaped {
    child: Option<Child>,
    what: String,
    /// Other processes to kill with it: (pid, start time), so that a pid reused by
    /// another process after they ended is left alone.
    also: Vec<(u32, Option<u64>)>,
}

impl Reaped {
    /// Guards a child started elsewhere.
    pub fn new(child: Child) -> Reaped {
        let what = format!("process {}", child.id());
        Reaped {
            child: Some(child),
            what,
            also: Vec::new(),
        }
    }

    /// Starts `cmd` (panics naming it if it cannot be started).
    pub fn spawn(cmd: &mut Command) -> Reaped {
        let what = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Reaped {
            child: Some(child),
            what,
            also: Vec::new(),
        }
    }

    /// Kills the process `pid` (SIGCONT, then SIGKILL) too when this is dropped, if it
    /// is still the process that had this pid now.
    pub fn also_kill(&mut self, pid: u32) {
        self.also.push((pid, start_time(pid)));
    }

    /// How the process ended, once it has (`None` while it runs).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.try_wait().unwrap()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Polls (every 10 ms) until the process ends, at most `limit`: its status, or `None`
    /// if it still runs then (the caller decides whether that fails the test).
    pub fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls (every 10 ms) until `reached()` holds or the process ends, at most `limit`;
    /// then kills it (-9) and reaps it if it still runs. Whether it killed it (`false`: it
    /// ended before).
    pub fn kill_when(&mut self, limit: Duration, mut reached: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while self.running() && !reached() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if self.running() {
            self.kill().unwrap();
            let _ = self.wait();
            true
        } else {
            false
        }
    }

    /// kill -9, and waits until the process is gone (nothing if it had ended already).
    pub fn kill_and_wait(&mut self) {
        let child = self.child.as_mut().expect("a child");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs the process to its end, at most `limit`, collecting what it writes to piped
    /// stdout/stderr (read as it comes, so a full pipe never stalls it); past `limit` it is
    /// killed and the test fails with its stderr.
    pub fn finish(mut self, limit: Duration) -> Output {
        let child = self.child.as_mut().expect("a child");
        let stdout = child.stdout.take().map(read_in_background);
        let stderr = child.stderr.take().map(read_in_background);
        let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>, wait: Option<Duration>| {
            rx.and_then(|rx| match wait {
                None => rx.recv().ok(),
                Some(d) => rx.recv_timeout(d).ok(),
            })
            .unwrap_or_default()
        };
        match self.wait_within(limit) {
            Some(status) => Output {
                status,
                stdout: collect(stdout, None),
                stderr: collect(stderr, None),
            },
            None => {
                self.kill_and_wait();
                // Not waiting long: a process it started may hold the pipe open.
                let stderr = collect(stderr, Some(Duration::from_secs(5)));
                panic!(
                    "{} did not finish within {limit:?}\nstderr:\n{}",
                    self.what,
                    String::from_utf8_lossy(&stderr)
                );
            }
        }
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.child.as_ref().expect("a child")
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("a child")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        for &(pid, started) in &self.also {
            if started.is_none() || start_time(pid) != started {
                continue;
            }
            for signal in ["-CONT", "-9"] {
                let _ = Command::new("kill")
                    .args([signal, &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for every process of a cluster, at most `limit`; once one has failed, the others
/// (which would wait for it forever) are killed. Their outputs, in order; past `limit`
/// every one is killed and the test fails.
pub fn finish_all(mut children: Vec<Reaped>, limit: Duration) -> Vec<Output> {
    let deadline = Instant::now() + limit;
    loop {
        let mut done = 0;
        let mut failed = false;
        for c in children.iter_mut() {
            if let Some(status) = c.exited() {
                done += 1;
                failed |= !status.success();
            }
        }
        if done == children.len() || failed {
            break;
        }
        if Instant::now() > deadline {
            // Dropping them kills and reaps them.
            drop(children);
            panic!("the cluster did not finish within {limit:?}");
        }
        std::thread::sleep(POLL);
    }
    children
        .into_iter()
        .map(|mut c| {
            c.kill_and_wait();
            c.finish(Duration::from_secs(10))
        })
        .collect()
}

/// When process `pid` started (`/proc/PID/stat` field 22), while it exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Reads `from` to its end on a thread of its own; the bytes arrive on the channel.
fn read_in_background(mut from: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}

/// Collects the lines of `from` (a child's stderr, say) on a thread of its own, as they
/// come; the thread drops its handle at the end of the input.
pub fn lines_in_background(from: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}
