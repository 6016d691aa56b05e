//! The process harness: temporary directories, running the `tributary` binary to its end
//! (bounded in time), the settings of one `tributary run`, loopback hostfiles, and
//! [`Reaped`], the one guard that kills and reaps a child process on every path out of a
//! test.

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
    let bin = env!("CARGO_BIN_EXE_tributary");
    let cmdline = format!("{bin} {}", args.join(" "));
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_p).unwrap())
        .stderr(std::fs::File::create(&err_p).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "engine did not finish within {RUN_TIMEOUT:?}\ncommand: {cmdline}\nstderr:\n{}",
                std::fs::read_to_string(&err_p).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
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
    let out = dir.path(out_name);
    let r = run_engine(dir, &cfg.args(&out));
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
