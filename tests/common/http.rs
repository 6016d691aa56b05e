//! The HTTP harness of the serving tests: a `ureq` client, and the real binary started
//! with `--serve 127.0.0.1:0`, killed (SIGKILL) on drop (a [`Reaped`] child).

use super::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for anything asynchronous (server ready, models caught up).
pub const WAIT: Duration = Duration::from_secs(60);

pub static STARTS: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// A complete answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub connection: Option<String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer (status {}) is not JSON ({e}): {}",
                self.status, self.body
            )
        })
    }
    /// Asserts the documented error shape `{"error": "..."}` with this status.
    pub fn assert_error(&self, status: u16, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: status; body: {}", self.body);
        let v = self.json();
        let msg = v["error"].as_str().unwrap_or_else(|| {
            panic!(
                "{what}: error answer without an \"error\" string: {}",
                self.body
            )
        });
        assert!(!msg.is_empty(), "{what}: empty error message");
        v
    }
}

pub fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Resp, String> {
    let mut r = r.map_err(|e| e.to_string())?;
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header("retry-after");
    let content_type = header("content-type");
    let connection = header("connection");
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        retry_after,
        content_type,
        connection,
        body,
    })
}

pub fn http_get(agent: &ureq::Agent, url: &str) -> Result<Resp, String> {
    finish(agent.get(url).call())
}

pub fn http_post(
    agent: &ureq::Agent,
    url: &str,
    content_type: Option<&str>,
    body: &str,
) -> Result<Resp, String> {
    let mut req = agent.post(url);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    finish(req.send(body))
}

// ---------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------

/// A running `tributary run --serve`: killed (SIGKILL) on drop.
pub struct Server {
    pub child: Option<Reaped>,
    pub addr: String,
    pub stderr: PathBuf,
    pub agent: ureq::Agent,
}

impl Server {
    /// Starts the binary with `args` (which must include `--serve 127.0.0.1:0`) and waits
    /// until it says where it serves.
    pub fn start(dir: &TempDir, args: &[String]) -> Server {
        Server::start_env(dir, args, &[])
    }

    /// [`Server::start`] with these environment variables set for the server.
    pub fn start_env(dir: &TempDir, args: &[String], env: &[(&str, &str)]) -> Server {
        let mut server = Server::spawn_env(dir, args, env);
        if let Some(status) = server.exited() {
            panic!(
                "server exited ({status}) before serving\nargs: {args:?}\nstderr:\n{}",
                server.stderr_text()
            );
        }
        // Ready means answering, too.
        let health = server.get("/healthz");
        assert_eq!(health.status, 200, "healthz: {}", health.body);
        assert_eq!(health.json()["status"], "ok", "healthz: {}", health.body);
        server
    }

    /// Starts the binary with these environment variables and returns once it says where
    /// it serves, or once it has exited (a fault injected at start-up): then `addr` is
    /// empty and [`Server::exited`] says how it ended.
    pub fn spawn_env(dir: &TempDir, args: &[String], env: &[(&str, &str)]) -> Server {
        let n = STARTS.fetch_add(1, Ordering::SeqCst);
        let stderr = dir.path(&format!("server-{n}.stderr"));
        // A measurement may run another build of the binary (a release one).
        let bin = std::env::var("TRIBUTARY_BIN").unwrap_or_else(|_| BIN.to_owned());
        let child = Reaped::spawn(
            Command::new(&bin)
                .args(args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr).unwrap()),
        );
        let mut server = Server {
            child: Some(child),
            addr: String::new(),
            stderr,
            agent: agent(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let text = server.stderr_text();
            if let Some(rest) = text.split("tributary: serving on http://").nth(1) {
                server.addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                return server;
            }
            if server.exited().is_some() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready within {WAIT:?}\nargs: {args:?}\nstderr:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a server whose arguments need a free port of their own (a `tcp:…,listen`
    /// source, which does not report the port it bound): a port is probed free, and if
    /// something else takes it before the server binds it, the server is started again on
    /// another (at most 5 attempts). Returns the server and its port.
    pub fn start_on_free_port(dir: &TempDir, args: impl Fn(u16) -> Vec<String>) -> (Server, u16) {
        for attempt in 1..=5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let a = args(port);
            let mut server = Server::spawn_env(dir, &a, &[]);
            if let Some(status) = server.exited() {
                let text = server.stderr_text();
                if text.contains("in use") && attempt < 5 {
                    eprintln!("port {port} was taken; starting again on another");
                    continue;
                }
                panic!("server exited ({status}) before serving\nargs: {a:?}\nstderr:\n{text}");
            }
            let health = server.get("/healthz");
            assert_eq!(health.status, 200, "healthz: {}", health.body);
            return (server, port);
        }
        unreachable!()
    }

    /// How the process ended, once it has (`None` while it runs, or once killed).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.exited()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn fail(&self, what: &str) -> ! {
        panic!("{what}\nserver stderr:\n{}", self.stderr_text())
    }

    pub fn get(&self, path: &str) -> Resp {
        http_get(&self.agent, &self.url(path))
            .unwrap_or_else(|e| self.fail(&format!("GET {path}: {e}")))
    }

    pub fn post(&self, path: &str, content_type: Option<&str>, body: &str) -> Resp {
        http_post(&self.agent, &self.url(path), content_type, body)
            .unwrap_or_else(|e| self.fail(&format!("POST {path}: {e}")))
    }

    /// Posts records; asserts they are all accepted; returns the batch number.
    pub fn post_rows(&self, rows: &[Row], d: usize, jsonl: bool) -> u64 {
        let r = post_rows(&self.agent, &self.url("/data"), rows, d, jsonl)
            .unwrap_or_else(|e| self.fail(&format!("POST /data: {e}")));
        if r.status != 200 {
            self.fail(&format!("POST /data: status {}: {}", r.status, r.body));
        }
        let v = r.json();
        assert_eq!(v["accepted"], rows.len() as u64, "answer {}", r.body);
        assert_eq!(v["rejected"], 0, "answer {}", r.body);
        assert_eq!(v["errors"], Value::Array(vec![]), "answer {}", r.body);
        v["batch"]
            .as_u64()
            .unwrap_or_else(|| panic!("no batch number in {}", r.body))
    }

    /// Polls `check` until it gives a value; panics with its last complaint and the
    /// server's stderr after `WAIT`.
    pub fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            match check() {
                Ok(v) => return v,
                Err(why) => {
                    if Instant::now() > deadline {
                        self.fail(&format!("{what}: not within {WAIT:?}: {why}"));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, and wait for the process to be gone.
    pub fn kill(&mut self) {
        // Dropping the guard kills and reaps the process.
        self.child.take();
    }

    /// The value of an unlabelled (or exactly labelled) metric line of `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.get("/metrics").body, name)
    }
}

pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok())?
    })
}

pub fn body_of(rows: &[Row], d: usize, jsonl: bool) -> String {
    if jsonl {
        let mut s = String::new();
        for r in rows {
            s.push_str(&jsonl_line(r));
            s.push('\n');
        }
        s
    } else {
        csv_text(rows, d)
    }
}

pub fn post_rows(
    agent: &ureq::Agent,
    url: &str,
    rows: &[Row],
    d: usize,
    jsonl: bool,
) -> Result<Resp, String> {
    let ct = if jsonl {
        "application/x-ndjson"
    } else {
        "text/csv"
    };
    http_post(agent, url, Some(ct), &body_of(rows, d, jsonl))
}

/// `tributary run --source http --serve 127.0.0.1:0 ...`
pub fn http_args(out: &Path, d: usize, win: Win, lateness_ms: i64, workers: usize) -> Vec<String> {
    vec![
        "run".into(),
        "-q".into(),
        "--source".into(),
        "http".into(),
        "--serve".into(),
        "127.0.0.1:0".into(),
        "--time".into(),
        "ts".into(),
        "--key".into(),
        "key".into(),
        "--features".into(),
        feature_list(d),
        "--target".into(),
        "y".into(),
        "--window".into(),
        win.arg(),
        "--lateness".into(),
        format!("{lateness_ms}ms"),
        "--out".into(),
        out.display().to_string(),
        "-w".into(),
        workers.to_string(),
    ]
}

pub fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts `tributary run -q --source tcp:ADDR ARGS…` (client mode) against a listener of
/// the test on 127.0.0.1, and waits (bounded) for the connection it makes. Returns the
/// engine (killed on drop, unless the caller waits for it), the connection, and its
/// stderr file.
pub fn spawn_tcp_client(dir: &TempDir, args: &[&str]) -> (Reaped, std::net::TcpStream, PathBuf) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stderr = dir.path(&format!(
        "tcp-client-{}.stderr",
        STARTS.fetch_add(1, Ordering::SeqCst)
    ));
    let mut child = Reaped::spawn(
        Command::new(BIN)
            .args(["run", "-q", "--source", &format!("tcp:{addr}")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap()),
    );
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + WAIT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline || child.exited().is_some() {
                    child.kill_and_wait();
                    panic!(
                        "the engine did not connect: {e}\nstderr:\n{}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    (child, stream, stderr)
}

// ---------------------------------------------------------------------------------------
// The sentinel, and waiting for --out
// ---------------------------------------------------------------------------------------

/// The sentinel key: records of it only push the watermark; excluded from comparisons.
pub const SENTINEL: &str = "zz";

pub fn sentinel(ts: i64, d: usize) -> Row {
    Row {
        ts,
        key: SENTINEL.into(),
        x: vec![0.0; d],
        y: 0.0,
    }
}

/// Posts the sentinel, once: the ingest log is one partition, so one batch moves the
/// watermark of every worker that reads it (no batch per worker needed).
pub fn post_sentinel(server: &Server, ts: i64, d: usize) {
    server.post_rows(&[sentinel(ts, d)], d, false);
}

/// A time past every window of `rows` plus the lateness: posting it closes them all.
pub fn closing_time(want: &BTreeMap<WinKey, Model>, lateness_ms: i64) -> i64 {
    want.keys().map(|k| k.2).max().unwrap() + lateness_ms + 1000
}

pub fn without_sentinel(models: BTreeMap<WinKey, Model>) -> BTreeMap<WinKey, Model> {
    models
        .into_iter()
        .filter(|(k, _)| k.0 != SENTINEL)
        .collect()
}

/// Polls `--out` until its final models cover exactly the oracle's windows (excluding
/// the sentinel key), then returns them.
pub fn wait_for_out(
    server: &Server,
    out: &Path,
    want: &BTreeMap<WinKey, Model>,
) -> BTreeMap<WinKey, Model> {
    let wanted: BTreeSet<&WinKey> = want.keys().collect();
    server.wait_for("--out has every final window", || {
        let got = without_sentinel(read_models(out));
        let have: BTreeSet<&WinKey> = got.keys().collect();
        if wanted.is_subset(&have) {
            Ok(got)
        } else {
            Err(format!(
                "{} of {} windows final in --out; first missing: {:?}",
                wanted.intersection(&have).count(),
                wanted.len(),
                wanted.difference(&have).next()
            ))
        }
    })
}

// ---------------------------------------------------------------------------------------
// What the server says: served models, the resumed epoch, records read
// ---------------------------------------------------------------------------------------

/// A served model line (`final` or `open` of `/model`) parsed like an `--out` line.
pub fn served(v: &Value) -> Option<Emission> {
    if v.is_null() {
        return None;
    }
    Some(
        parse_emissions(&v.to_string())
            .pop()
            .expect("one model line"),
    )
}

/// A key's served (final, open) models.
pub type Served = BTreeMap<String, (Option<Emission>, Option<Emission>)>;

/// The served models of every key: key -> (final, open).
pub fn served_models(server: &Server) -> (i64, Served) {
    let r = server.get("/models");
    assert_eq!(r.status, 200, "/models: {}", r.body);
    let v = r.json();
    let watermark = v["watermark"]
        .as_i64()
        .unwrap_or_else(|| panic!("/models without a watermark: {}", r.body));
    let mut out = BTreeMap::new();
    for m in v["models"]
        .as_array()
        .unwrap_or_else(|| panic!("/models without models: {}", r.body))
    {
        let key = m["key"].as_str().expect("key").to_owned();
        let fin = served(&m["final"]);
        let open = served(&m["open"]);
        if let Some(f) = &fin {
            assert!(f.model.is_final, "final of {key} is not final: {m}");
            assert_eq!(f.key.0, key);
        }
        if let Some(o) = &open {
            assert!(!o.model.is_final, "open of {key} says final: {m}");
            assert_eq!(o.key.0, key);
        }
        out.insert(key, (fin, open));
    }
    (watermark, out)
}

/// One model as a map, for `assert_matches_oracle`.
pub fn one(e: &Emission) -> BTreeMap<WinKey, Model> {
    BTreeMap::from([(e.key.clone(), e.model.clone())])
}

/// The epoch of `tributary: resuming from checkpoint epoch E` on the server's stderr.
pub fn resumed_epoch(server: &Server) -> u64 {
    let text = server.stderr_text();
    text.split("resuming from checkpoint epoch ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| server.fail("the restart did not resume from a checkpoint"))
}

/// Waits until `/healthz` says `n` records were read since the process started.
pub fn wait_for_records(server: &Server, n: usize, what: &str) {
    server.wait_for(what, || {
        let v = server.get("/healthz").json();
        (v["records"] == n).then_some(()).ok_or(v.to_string())
    });
}
