//! HTTP under abuse (docs/serving.md, "Limits and guarantees"), with the real binary on
//! 127.0.0.1: slow heads, slow and trickled bodies and idle connections are cut off while
//! `/healthz` stays fast; the connection cap answers 503; the global budget of body bytes
//! answers 503; keys too long or too many refuse the whole POST; `/models` pages cover
//! every key once; every error is JSON; the Host allow-list and the bearer token;
//! `/predict` never answers 200 without a number. Bounded in time, processes killed on
//! drop, only loopback traffic.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static STARTS: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 client (so that tests control every byte and header)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer (status {}) is not JSON ({e}): {}",
                self.status, self.body
            )
        })
    }
    /// Asserts `{"error": "..."}` with this status and a JSON content type; returns the
    /// message.
    fn assert_error(&self, status: u16, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: status; answer: {self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{what}: content type of an error: {self:?}"
        );
        let message = self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no \"error\" string: {}", self.body))
            .to_owned();
        assert!(!message.is_empty(), "{what}: empty error message");
        message
    }
}

/// Parses a complete answer (head and body, `Content-Length` or chunked).
fn parse_answer(bytes: &[u8]) -> Result<Answer, String> {
    let text = String::from_utf8_lossy(bytes);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete answer head in {} bytes: {text:?}", bytes.len()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let body = if let Some(n) = header("content-length") {
        let n: usize = n.parse().map_err(|_| format!("content-length {n:?}"))?;
        if rest.len() < n {
            return Err(format!("body of {} bytes, {n} announced", rest.len()));
        }
        rest[..n].to_owned()
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut out = String::new();
        let mut rest = rest;
        loop {
            let (size, after) = rest.split_once("\r\n").ok_or("truncated chunk")?;
            let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        rest.to_owned()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A request's bytes: `Connection: close`, `Host` (unless `host` is `None`), the extra
/// headers, `Content-Length` when there is a body.
fn request(
    method: &str,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if let Some(host) = host {
        r.push_str(&format!("Host: {host}\r\n"));
    }
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends `bytes` on a new connection and reads the answer until the server closes.
fn exchange(addr: &str, bytes: &[u8]) -> Result<Answer, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // A server that answers before reading the whole body may close early: the answer
    // is still read.
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    parse_answer(&got)
}

// ---------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------

/// A running `tributary run --source http --serve 127.0.0.1:0`: the shared harness
/// (started, polled for readiness with a deadline, killed on drop), spoken to here with
/// raw bytes, since these tests send requests no HTTP client library would.
struct Server {
    inner: common::http::Server,
    addr: String,
}

impl Server {
    fn start(dir: &TempDir, extra: &[&str]) -> Server {
        Self::try_start(dir, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the server; `Err` with its stderr if it exits before serving.
    fn try_start(dir: &TempDir, extra: &[&str]) -> Result<Server, String> {
        let n = STARTS.fetch_add(1, Ordering::SeqCst);
        let mut args: Vec<String> = [
            "run",
            "-q",
            "--source",
            "http",
            "--serve",
            "127.0.0.1:0",
            "--features",
            "x0",
            "--window",
            "tumbling:10s",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(dir.path(&format!("out-{n}.jsonl")).display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut inner = common::http::Server::spawn_env(dir, &args, &[]);
        if let Some(status) = inner.exited() {
            return Err(format!(
                "server exited ({status}) before serving\nargs: {args:?}\nstderr:\n{}",
                inner.stderr_text()
            ));
        }
        let server = Server {
            addr: inner.addr.clone(),
            inner,
        };
        let health = server.get("/healthz");
        assert_eq!(health.status, 200, "healthz: {health:?}");
        Ok(server)
    }

    fn fail(&self, what: &str) -> ! {
        self.inner.fail(what)
    }

    fn send(&self, bytes: &[u8]) -> Answer {
        exchange(&self.addr, bytes).unwrap_or_else(|e| self.fail(&e))
    }

    /// A request with the right Host and the extra headers.
    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        self.send(&request(method, path, Some(&self.addr), headers, body))
    }

    fn get(&self, path: &str) -> Answer {
        self.call("GET", path, &[], b"")
    }

    fn post_csv(&self, body: &str) -> Answer {
        self.call(
            "POST",
            "/data",
            &[("Content-Type", "text/csv")],
            body.as_bytes(),
        )
    }

    fn metric(&self, name: &str) -> Option<f64> {
        common::http::metric_value(&self.get("/metrics").body, name)
    }

    /// Polls `check` until it gives a value, for at most `WAIT`.
    fn wait_for<T>(&self, what: &str, check: impl FnMut() -> Result<T, String>) -> T {
        self.inner.wait_for(what, check)
    }

    /// Polls `GET /healthz` on a new connection each time (for at most `WAIT`) until it is
    /// answered `status`; that answer.
    fn wait_for_status(&self, what: &str, status: u16) -> Answer {
        self.wait_for(what, || {
            let a = exchange(
                &self.addr,
                &request("GET", "/healthz", Some(&self.addr), &[], b""),
            )?;
            if a.status == status {
                Ok(a)
            } else {
                Err(format!("{a:?}"))
            }
        })
    }

    /// Posts `rows`, then a record of key `zz` 30 s later that closes their windows;
    /// asserts both are accepted.
    fn post_and_close(&self, rows: &[(i64, &str, f64, f64)]) {
        assert_eq!(self.post_csv(&csv(rows)).status, 200);
        assert_eq!(
            self.post_csv(&csv(&[(T0 + 30_000, "zz", 0.0, 0.0)])).status,
            200
        );
    }

    fn pid(&self) -> u32 {
        self.inner.child.as_ref().unwrap().id()
    }
}

/// CSV of `(ts, key, x, y)` rows with the header `ts,key,x0,y`.
fn csv(rows: &[(i64, &str, f64, f64)]) -> String {
    let mut s = String::from("ts,key,x0,y\n");
    for (ts, key, x, y) in rows {
        s.push_str(&format!("{ts},{key},{x},{y}\n"));
    }
    s
}

/// Whether the server has closed `stream` (EOF or reset), reading what it sent; waits at
/// most `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "still open after {within:?} (got {} bytes)",
                got.len()
            ));
        }
        stream.set_read_timeout(Some(left)).unwrap();
        if !read_more(stream, &mut got) {
            return Ok(got);
        }
    }
}

/// One read of `stream` (within its read timeout), appended to `got`: `false` once the
/// peer has closed it (end of stream, or a reset), `true` after data or a timeout.
fn read_more(stream: &mut TcpStream, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => false,
        Ok(n) => {
            got.extend_from_slice(&buf[..n]);
            true
        }
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------

/// 100 connections stuck in their request head, 100 stuck in their body, 10 that trickle
/// a body a byte at a time, 10 that never send anything and one idle after a keep-alive
/// answer: `/healthz` stays fast while they are open, and each is closed within its
/// timeout (bodies with a 408 JSON answer).
#[test]
fn slow_clients_are_cut_off_and_healthz_stays_fast() {
    let dir = TempDir::new("slow");
    let server = Server::start(
        &dir,
        &[
            "--header-timeout",
            "2s",
            "--body-timeout",
            "2s",
            "--http-idle-timeout",
            "2s",
        ],
    );
    let addr = server.addr.clone();
    let opened = Instant::now();
    let mut heads = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(
            format!("POST /data HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/csv\r\nX-Slow: {i}")
                .as_bytes(),
        )
        .unwrap();
        heads.push(s);
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(
            format!(
                "POST /data HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/csv\r\n\
                 Content-Length: 100000\r\n\r\nts,key,x0,y\n{},a,1,2\n",
                T0 + i
            )
            .as_bytes(),
        )
        .unwrap();
        bodies.push(s);
    }
    let silent: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // Tricklers: one byte of body every 100 ms, until the server stops them.
    let tricklers: Vec<_> = (0..10)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || -> (Duration, Vec<u8>) {
                let mut s = TcpStream::connect(&addr).unwrap();
                let started = Instant::now();
                let head = format!(
                    "POST /data HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/csv\r\n\
                     Content-Length: 100000\r\n\r\n"
                );
                s.write_all(head.as_bytes()).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut got = Vec::new();
                while started.elapsed() < Duration::from_secs(20) {
                    if s.write_all(b"1").is_err() || !read_more(&mut s, &mut got) {
                        break;
                    }
                }
                (started.elapsed(), got)
            })
        })
        .collect();
    // A keep-alive client that goes idle after one answer.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();

    // While all that is open: /healthz answers fast, every time.
    for i in 0..10 {
        let started = Instant::now();
        let h = server.get("/healthz");
        let took = started.elapsed();
        assert_eq!(
            h.status, 200,
            "healthz {i} with 230 slow connections: {h:?}"
        );
        assert!(
            took < Duration::from_millis(1000),
            "healthz {i} took {took:?} with 230 slow connections open"
        );
    }
    // Each is cut off: heads and silent connections without an answer, bodies with 408.
    let limit = Duration::from_secs(15);
    for (i, s) in heads.iter_mut().enumerate() {
        closed_within(s, limit.saturating_sub(opened.elapsed()))
            .unwrap_or_else(|e| server.fail(&format!("slow head {i}: {e}")));
    }
    for (i, s) in bodies.iter_mut().enumerate() {
        let got = closed_within(s, limit.saturating_sub(opened.elapsed()))
            .unwrap_or_else(|e| server.fail(&format!("slow body {i}: {e}")));
        let answer =
            parse_answer(&got).unwrap_or_else(|e| server.fail(&format!("slow body {i}: {e}")));
        let message = answer.assert_error(408, "a body not sent in time");
        assert!(message.contains("--body-timeout"), "{message}");
    }
    for (i, mut s) in silent.into_iter().enumerate() {
        closed_within(&mut s, limit.saturating_sub(opened.elapsed()))
            .unwrap_or_else(|e| server.fail(&format!("silent connection {i}: {e}")));
    }
    let got = closed_within(&mut idle, limit.saturating_sub(opened.elapsed()))
        .unwrap_or_else(|e| server.fail(&format!("idle keep-alive connection: {e}")));
    assert_eq!(parse_answer(&got).unwrap().status, 200);
    for t in tricklers {
        let (took, got) = t.join().unwrap();
        assert!(
            took < Duration::from_secs(10),
            "a trickled body was read for {took:?} with --body-timeout 2s"
        );
        let answer = parse_answer(&got).unwrap_or_else(|e| server.fail(&format!("trickler: {e}")));
        answer.assert_error(408, "a trickled body");
    }
    // Nothing of the slow bodies was accepted, and the timeouts are counted.
    assert_eq!(server.metric("tributary_ingest_records_total"), Some(0.0));
    assert!(server.metric("tributary_http_body_timeouts_total").unwrap() >= 110.0);
    assert!(
        server
            .metric("tributary_http_header_timeouts_total")
            .unwrap()
            >= 100.0
    );
    assert!(server.metric("tributary_http_idle_timeouts_total").unwrap() >= 11.0);
    // Still serving.
    let r = server.post_csv(&csv(&[(T0, "a", 1.0, 2.0)]));
    assert_eq!(r.status, 200, "{r:?}");
}

/// Over `--max-connections`, a new connection is answered 503 (JSON, naming the flag)
/// and closed; once connections close, the server answers again.
#[test]
fn connections_over_the_cap_are_refused_with_503() {
    let dir = TempDir::new("conn-cap");
    let server = Server::start(
        &dir,
        &["--max-connections", "20", "--http-idle-timeout", "60s"],
    );
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    let refused = server.wait_for_status("a 503 over --max-connections 20", 503);
    let message = refused.assert_error(503, "over --max-connections");
    assert!(
        message.contains("--max-connections") && message.contains("20"),
        "{message}"
    );
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    // Still refused while all 20 are held.
    let again = server.send(&request("GET", "/models", Some(&server.addr), &[], b""));
    again.assert_error(503, "still over --max-connections");
    held.truncate(10);
    let h = server.wait_for_status("served again once connections closed", 200);
    assert_eq!(h.json()["status"], "ok");
    assert!(
        server
            .metric("tributary_http_connections_refused_total")
            .unwrap()
            >= 2.0
    );
}

/// With a body budget of 200 000 bytes, a request holding 190 000 bytes of an
/// unfinished body leaves no room: another post is answered 503 (JSON, `Retry-After`,
/// naming `--max-inflight-bytes`) and not counted; once the first is gone, posts are
/// accepted again.
#[test]
fn body_bytes_over_the_budget_answer_503() {
    let dir = TempDir::new("budget");
    let server = Server::start(
        &dir,
        &[
            "--max-inflight-bytes",
            "200000",
            "--max-body",
            "195000",
            "--body-timeout",
            "60s",
        ],
    );
    let mut hog = TcpStream::connect(&server.addr).unwrap();
    let mut body = String::from("ts,key,x0,y\n");
    while body.len() < 190_000 {
        body.push_str(&format!("{},hog,1,2\n", T0));
    }
    hog.write_all(
        format!(
            "POST /data HTTP/1.1\r\nHost: {}\r\nContent-Type: text/csv\r\nContent-Length: 195000\r\n\r\n",
            server.addr
        )
        .as_bytes(),
    )
    .unwrap();
    hog.write_all(&body.as_bytes()[..190_000]).unwrap();
    // Once the server holds the hog's bytes (a post racing with it may take the budget
    // first: then the hog is the one refused), there is no room for another body.
    server.wait_for("the hog's bytes held", || {
        let held = server.metric("tributary_http_body_bytes_in_flight");
        (held >= Some(190_000.0))
            .then_some(())
            .ok_or(format!("{held:?}"))
    });
    let small: Vec<(i64, &str, f64, f64)> =
        (0..500).map(|i| (T0 + i, "b", i as f64, 1.0)).collect();
    let small = csv(&small);
    assert!(small.len() > 10_000);
    let refused = server.post_csv(&small);
    let message = refused.assert_error(503, "over the body budget");
    assert!(
        message.contains("--max-inflight-bytes") && message.contains("200000"),
        "{message}"
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    drop(hog);
    server.wait_for("accepted again once the hog is gone", || {
        let a = server.post_csv(&small);
        match a.status {
            200 => Ok(()),
            _ => Err(format!("{a:?}")),
        }
    });
    let accepted = 500u64;
    server.wait_for("only accepted records counted", || {
        let n = server.metric("tributary_ingest_records_total");
        (n == Some(accepted as f64))
            .then_some(())
            .ok_or(format!("{n:?} vs {accepted}"))
    });
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// A key over `--max-key-bytes` refuses the whole POST (400 naming the limit and the
/// line); nothing of it is accepted. The default limit is 256 bytes.
#[test]
fn a_key_too_long_refuses_the_whole_post() {
    let dir = TempDir::new("key-len");
    let server = Server::start(&dir, &["--max-key-bytes", "16"]);
    let long = "k".repeat(17);
    let body = csv(&[
        (T0, "a", 1.0, 2.0),
        (T0 + 1, "b", 1.0, 2.0),
        (T0 + 2, &long, 1.0, 2.0),
        (T0 + 3, "c", 1.0, 2.0),
    ]);
    let r = server.post_csv(&body);
    let message = r.assert_error(400, "a key of 17 bytes over --max-key-bytes 16");
    assert!(
        message.contains("--max-key-bytes") && message.contains("16"),
        "{message}"
    );
    let v = r.json();
    assert_eq!(v["accepted"], 0, "{}", r.body);
    assert_eq!(v["errors"][0]["line"], 4, "{}", r.body);
    assert_eq!(v["errors"][0]["field"], "key", "{}", r.body);
    // A 1 MiB key: the same, and the answer does not echo it.
    let huge = "h".repeat(1 << 20);
    let r = server.post_csv(&csv(&[(T0, &huge, 1.0, 2.0)]));
    r.assert_error(400, "a 1 MiB key");
    assert!(r.body.len() < 2000, "answer of {} bytes", r.body.len());
    assert_eq!(server.metric("tributary_ingest_records_total"), Some(0.0));
    let ok = server.post_csv(&csv(&[
        (T0, "a", 1.0, 2.0),
        (T0 + 1, &"k".repeat(16), 1.0, 2.0),
    ]));
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["accepted"], 2);

    let default = Server::start(&dir, &[]);
    let r = default.post_csv(&csv(&[(T0, &"d".repeat(257), 1.0, 2.0)]));
    let message = r.assert_error(400, "a key of 257 bytes with the default limit");
    assert!(message.contains("256"), "{message}");
    let r = default.post_csv(&csv(&[(T0, &"d".repeat(256), 1.0, 2.0)]));
    assert_eq!(r.status, 200, "{r:?}");
}

/// `--max-keys 50`: 50 live keys are taken, a 51st is refused whole (503 naming the
/// limit), known keys still are taken; once the watermark passes their windows the keys
/// are no longer live and new ones are taken; the served models stay within 50 keys.
#[test]
fn distinct_live_keys_are_capped() {
    let dir = TempDir::new("key-cap");
    let server = Server::start(&dir, &["--max-keys", "50"]);
    let names: Vec<String> = (0..50).map(|i| format!("k{i:02}")).collect();
    let rows: Vec<(i64, &str, f64, f64)> =
        names.iter().map(|k| (T0, k.as_str(), 1.0, 2.0)).collect();
    let r = server.post_csv(&csv(&rows));
    assert_eq!(r.status, 200, "{r:?}");
    let r = server.post_csv(&csv(&[
        (T0 + 1, "k00", 2.0, 3.0),
        (T0 + 1, "new", 1.0, 1.0),
    ]));
    let message = r.assert_error(503, "a 51st live key");
    assert!(
        message.contains("--max-keys") && message.contains("50"),
        "{message}"
    );
    let many: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    let rows: Vec<(i64, &str, f64, f64)> = many
        .iter()
        .map(|k| (T0 + 2, k.as_str(), 1.0, 2.0))
        .collect();
    server
        .post_csv(&csv(&rows))
        .assert_error(503, "60 new keys at once");
    let r = server.post_csv(&csv(&[(T0 + 3, "k01", 2.0, 3.0)]));
    assert_eq!(r.status, 200, "a live key is still taken: {r:?}");
    assert_eq!(server.metric("tributary_ingest_records_total"), Some(51.0));
    // Past the windows of T0 (tumbling 10 s): the old keys stop being live.
    let r = server.post_csv(&csv(&[(T0 + 25_000, "k02", 1.0, 2.0)]));
    assert_eq!(r.status, 200, "{r:?}");
    server.wait_for("the watermark past the first windows", || {
        let w = server.get("/models?limit=1").json()["watermark"].as_i64();
        (w >= Some(T0 + 20_000))
            .then_some(())
            .ok_or(format!("{w:?}"))
    });
    let fresh: Vec<String> = (0..40).map(|i| format!("f{i:02}")).collect();
    let rows: Vec<(i64, &str, f64, f64)> = fresh
        .iter()
        .map(|k| (T0 + 25_001, k.as_str(), 1.0, 2.0))
        .collect();
    let r = server.post_csv(&csv(&rows));
    assert_eq!(
        r.status, 200,
        "new keys once the old ones are no longer live: {r:?}"
    );
    // Served models: 50 old keys with final models, 40 new with estimates: 90 > 50.
    server.wait_for("served keys bounded by --max-keys", || {
        let served = server.metric("tributary_keys{kind=\"served\"}");
        let evicted = server.metric("tributary_keys_evicted_total");
        match (served, evicted) {
            (Some(s), Some(e)) if s <= 50.0 && e >= 40.0 => Ok(()),
            v => Err(format!("(served, evicted) {v:?}")),
        }
    });
    let h = server.get("/healthz").json();
    assert!(h["keys"]["keys"].as_u64().unwrap() <= 50, "{h}");
}

// ---------------------------------------------------------------------------------------
// /models pages
// ---------------------------------------------------------------------------------------

/// 2 500 keys: pages of 333 cover each exactly once, in order, the last without `next`;
/// no `limit` gives 1 000 with a `next`; bad limits are 400 JSON.
#[test]
fn models_pages_cover_every_key_exactly_once() {
    let dir = TempDir::new("pages");
    let server = Server::start(&dir, &[]);
    let names: Vec<String> = (0..2500).map(|i| format!("key-{i:05}")).collect();
    let rows: Vec<(i64, &str, f64, f64)> =
        names.iter().map(|k| (T0, k.as_str(), 1.0, 2.0)).collect();
    // Close the windows: every key gets a final model.
    server.post_and_close(&rows);
    let mut want: BTreeSet<String> = names.iter().cloned().collect();
    want.insert("zz".into());
    server.wait_for("every key served", || {
        let n = server.metric("tributary_keys{kind=\"final\"}");
        (n == Some(2500.0)).then_some(()).ok_or(format!("{n:?}"))
    });
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/models?limit=333&after={a}"),
            None => "/models?limit=333".to_owned(),
        };
        let r = server.get(&path);
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        let page: Vec<String> = v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["key"].as_str().unwrap().to_owned())
            .collect();
        assert!(page.len() <= 333);
        seen.extend(page.iter().cloned());
        pages += 1;
        match v["next"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), page.last().map(String::as_str), "{path}");
                after = Some(next.to_owned());
            }
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    assert_eq!(pages, 8, "2 501 keys in pages of 333");
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a key served twice");
    assert_eq!(unique, want, "every key, exactly once");
    let sorted = {
        let mut s = seen.clone();
        s.sort();
        s
    };
    assert_eq!(seen, sorted, "pages in key order");

    let v = server.get("/models").json();
    assert_eq!(v["models"].as_array().unwrap().len(), 1000);
    assert_eq!(v["next"], "key-00999");
    let v = server.get("/models?after=zz").json();
    assert_eq!(v["models"].as_array().unwrap().len(), 0);
    assert!(v["next"].is_null());
    for bad in [
        "/models?limit=0",
        "/models?limit=10001",
        "/models?limit=abc",
    ] {
        server.get(bad).assert_error(400, bad);
    }
}

// ---------------------------------------------------------------------------------------
// Errors, access
// ---------------------------------------------------------------------------------------

/// 405 (with `Allow`), query errors and `/predict`'s body limit are JSON errors.
#[test]
fn every_error_is_json() {
    let dir = TempDir::new("json-errors");
    let server = Server::start(&dir, &["--max-body", "1000"]);
    let r = server.get("/data");
    let message = r.assert_error(405, "GET /data");
    assert!(message.contains("POST"), "{message}");
    assert_eq!(r.header("allow"), Some("POST"), "{r:?}");
    server
        .call("DELETE", "/models", &[], b"")
        .assert_error(405, "DELETE /models");
    server
        .get("/model?key=a&key=b")
        .assert_error(400, "/model with two keys");
    server
        .get("/models?limit=-1")
        .assert_error(400, "/models with a negative limit");
    let big = format!(
        "{{\"key\":\"a\",\"rows\":[{}]}}",
        vec!["[1.0]"; 400].join(",")
    );
    let r = server.call(
        "POST",
        "/predict",
        &[("Content-Type", "application/json")],
        big.as_bytes(),
    );
    let message = r.assert_error(413, "/predict over --max-body");
    assert!(message.contains("--max-body"), "{message}");
    server.get("/nowhere").assert_error(404, "no such endpoint");
}

/// Only loopback names and the bound address are accepted as Host by default (403 JSON
/// naming `--allow-host` otherwise, `/healthz` excepted); `--allow-host` adds names.
#[test]
fn host_header_allow_list() {
    let dir = TempDir::new("host");
    let server = Server::start(&dir, &[]);
    let port = server.addr.rsplit_once(':').unwrap().1.to_owned();
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("127.0.0.2:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        let r = server.send(&request("GET", "/models", Some(&host), &[], b""));
        let message = r.assert_error(403, &format!("Host {host}"));
        assert!(message.contains("--allow-host"), "{message}");
        let r = server.send(&request(
            "POST",
            "/data",
            Some(&host),
            &[("Content-Type", "text/csv")],
            csv(&[(T0, "a", 1.0, 2.0)]).as_bytes(),
        ));
        r.assert_error(403, &format!("POST with Host {host}"));
    }
    for host in [
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        "localhost".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = server.send(&request("GET", "/models", Some(&host), &[], b""));
        assert_eq!(r.status, 200, "Host {host}: {r:?}");
    }
    let r = server.send(&request("GET", "/healthz", Some("evil.example"), &[], b""));
    assert_eq!(r.status, 200, "/healthz with any Host: {r:?}");
    assert_eq!(server.metric("tributary_ingest_records_total"), Some(0.0));

    let allowed = Server::start(
        &dir,
        &[
            "--allow-host",
            "tributary.example",
            "--allow-host",
            "10.1.2.3",
        ],
    );
    for host in ["tributary.example:8080", "TRIBUTARY.example", "10.1.2.3:80"] {
        let r = allowed.send(&request("GET", "/models", Some(host), &[], b""));
        assert_eq!(r.status, 200, "Host {host} with --allow-host: {r:?}");
    }
    let r = allowed.send(&request("GET", "/models", Some("evil.example"), &[], b""));
    r.assert_error(403, "a name not allowed");
}

/// `--token-file`: every endpoint but `/healthz` needs the bearer token (401 JSON with
/// `WWW-Authenticate` without it or with a wrong one); an empty file is refused at start.
#[test]
fn bearer_token_is_required_when_configured() {
    let dir = TempDir::new("token");
    let token_file = dir.path("token");
    std::fs::write(&token_file, "s3cret-Token_42\n").unwrap();
    let token = token_file.display().to_string();
    let server = Server::start(&dir, &["--token-file", &token]);
    let data = csv(&[(T0, "a", 1.0, 2.0)]);
    for (method, path) in [
        ("GET", "/models"),
        ("GET", "/model?key=a"),
        ("GET", "/metrics"),
    ] {
        let r = server.call(method, path, &[], b"");
        let message = r.assert_error(401, &format!("{path} without a token"));
        assert!(message.contains("--token-file"), "{message}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r:?}");
        for wrong in [
            "Bearer s3cret-Token_4",
            "Bearer s3cret-Token_43",
            "Basic czNjcmV0",
            "Bearer ",
        ] {
            server
                .call(method, path, &[("Authorization", wrong)], b"")
                .assert_error(401, &format!("{path} with {wrong:?}"));
        }
    }
    let r = server.call(
        "POST",
        "/data",
        &[("Content-Type", "text/csv")],
        data.as_bytes(),
    );
    r.assert_error(401, "POST /data without a token");
    assert_eq!(server.get("/healthz").status, 200);
    let r = server.call(
        "POST",
        "/data",
        &[
            ("Content-Type", "text/csv"),
            ("Authorization", "Bearer s3cret-Token_42"),
        ],
        data.as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = server.call(
        "GET",
        "/models",
        &[("Authorization", "bearer s3cret-Token_42")],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");

    let empty = dir.path("empty-token");
    std::fs::write(&empty, "  \n").unwrap();
    let e = Server::try_start(&dir, &["--token-file", &empty.display().to_string()]).err();
    let e = e.expect("an empty token file is refused");
    assert!(e.contains("--token-file") && e.contains("empty"), "{e}");
}

/// A prediction that overflows is an error (422 JSON), never `200` with `null`.
#[test]
fn predict_overflow_is_not_200() {
    let dir = TempDir::new("predict-overflow");
    let server = Server::start(&dir, &[]);
    let rows: Vec<(i64, &str, f64, f64)> = (0..10)
        .map(|i| {
            (
                T0 + 100 * i,
                "a",
                i as f64,
                1.0 + 2.0 * i as f64 + 0.01 * (i % 3) as f64,
            )
        })
        .collect();
    server.post_and_close(&rows);
    server.wait_for("a final model of a", || {
        let v = server.get("/model?key=a").json();
        (!v["final"].is_null()).then_some(()).ok_or(v.to_string())
    });
    let predict = |body: &str| {
        server.call(
            "POST",
            "/predict",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let r = predict(r#"{"key":"a","x":[1.0]}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["prediction"].as_f64().is_some(), "{r:?}");
    let r = predict(r#"{"key":"a","x":[1e308]}"#);
    let message = r.assert_error(422, "an overflowing prediction");
    assert!(message.contains("finite"), "{message}");
    let r = predict(r#"{"key":"a","rows":[[1.0],[-1e308]]}"#);
    let message = r.assert_error(422, "an overflowing row");
    assert!(message.contains("row 1"), "{message}");
}

// ---------------------------------------------------------------------------------------
// Measurements (docs/serving.md): `cargo build --release && TRIBUTARY_BIN=target/release/
// tributary cargo test --test serve_abuse -- --ignored --nocapture measure`
// ---------------------------------------------------------------------------------------

/// Records/s posted by 4 well-behaved clients for 8 s.
fn ingest_rate(server: &Server) -> f64 {
    let stop = Instant::now() + Duration::from_secs(8);
    let workers: Vec<_> = (0..4)
        .map(|c| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut batch = 0i64;
                while Instant::now() < stop {
                    let rows: Vec<(i64, String, f64, f64)> = (0..1000)
                        .map(|i| {
                            (
                                T0 + batch * 1000 + i,
                                format!("c{c}-{}", i % 16),
                                i as f64,
                                2.0 * i as f64,
                            )
                        })
                        .collect();
                    let mut body = String::from("ts,key,x0,y\n");
                    for (ts, k, x, y) in &rows {
                        body.push_str(&format!("{ts},{k},{x},{y}\n"));
                    }
                    let a = exchange(
                        &addr,
                        &request(
                            "POST",
                            "/data",
                            Some(&addr),
                            &[("Content-Type", "text/csv")],
                            body.as_bytes(),
                        ),
                    );
                    if a.map(|a| a.status == 200).unwrap_or(false) {
                        n += 1000;
                    }
                    batch += 1;
                }
                n
            })
        })
        .collect();
    let started = Instant::now();
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    total as f64 / started.elapsed().as_secs_f64()
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
#[ignore = "a measurement (docs/serving.md), not a check"]
fn measure_ingest_under_slow_connections_and_rss_of_400k_keys() {
    let dir = TempDir::new("measure");
    let server = Server::start(&dir, &["--max-pending", "100000000"]);
    let quiet = ingest_rate(&server);
    // 500 slow connections, kept open: each sends a partial head and is replaced when
    // the server cuts it off (--header-timeout, 10 s).
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr.clone();
    let holding = Arc::clone(&stop);
    let holder = std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        let mut opened = 0usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !holding.load(Ordering::SeqCst) && Instant::now() < deadline {
            held.retain(|s| {
                let mut b = [0u8; 1];
                s.set_nonblocking(true).unwrap();
                match (&*s).read(&mut b) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                }
            });
            while held.len() < 500 {
                let mut s = TcpStream::connect(&addr).unwrap();
                let _ = s.write_all(format!("POST /data HTTP/1.1\r\nHost: {addr}\r\n").as_bytes());
                held.push(s);
                opened += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        opened
    });
    server.wait_for("500 slow connections open", || {
        let open = server.metric("tributary_http_connections_open");
        (open >= Some(500.0))
            .then_some(())
            .ok_or(format!("{open:?}"))
    });
    let slow = ingest_rate(&server);
    let open = server
        .metric("tributary_http_connections_open")
        .unwrap_or(0.0);
    stop.store(true, Ordering::SeqCst);
    let opened = holder.join().unwrap();
    eprintln!(
        "ingest: {quiet:.0} records/s without slow connections, {slow:.0} records/s with 500 \
         held open ({open} connections open at the end, {opened} slow connections opened)"
    );
    drop(server);

    let capped = Server::start(&dir, &[]);
    let before = vm_hwm_kib(capped.pid());
    let mut body = String::from("ts,key,x0,y\n");
    for i in 0..400_000 {
        body.push_str(&format!("{},key-{i:07},{}.5,{}\n", T0 + i, i % 100, i % 7));
    }
    let started = Instant::now();
    let r = capped.post_csv(&body);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    eprintln!(
        "400k-key POST ({} bytes) with --max-keys 100000 (default): status {} in {took:?}; \
         peak RSS {} MiB before, {} MiB after; {}",
        body.len(),
        r.status,
        before / 1024,
        vm_hwm_kib(capped.pid()) / 1024,
        r.body.chars().take(200).collect::<String>()
    );
}
