//! `--max-line-bytes` is one limit for every source: the same CSV input, with lines one
//! byte over the limit and far over it, one of exactly the limit and one a byte under it,
//! read (a) once by one worker, (b) once by two workers in byte ranges (and as JSON
//! lines), (c) followed while it is appended, (d) over TCP on 127.0.0.1 and (e) posted to
//! `POST /data` on 127.0.0.1: every run takes the same records and refuses the same lines
//! (counted malformed, each named by its line, its length, the limit and the flag), and
//! ends with the same final models, the oracle's over the lines taken. A line of exactly
//! the limit (its newline not counted) is taken. Under `--on-error fail` a file read once
//! stops at the first such line, as a followed file does.
//!
//! Fails on the old code: a file read once took every line, whatever its length. Every
//! wait is bounded; every process is killed when a test ends, failed or not.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use common::http::*;
use common::*;

/// The limit of these tests (`--max-line-bytes`).
const MAX: usize = 4096;
const D: usize = 1;
const WIN: Win = Win::Tumbling(5_000);
const LATENESS_MS: i64 = 1_000;

/// The test input: CSV lines `ts,key,x0,y,note` (the `note` column is not in the schema
/// and pads the special lines to their lengths).
struct Input {
    /// Data lines, without newlines, in order (the header is line 1, these 2, 3, …).
    lines: Vec<String>,
    /// The records that must be taken.
    taken: Vec<Row>,
    /// (line number, length) of every line that must be refused.
    refused: Vec<(usize, usize)>,
    /// The oracle's final models over `taken`.
    want: BTreeMap<WinKey, Model>,
}

const HEADER: &str = "ts,key,x0,y,note";

/// 1200 rows of 3 keys; four of them are padded to lengths MAX + 1, MAX, MAX - 1 and
/// 20 MAX + 7 bytes: the first and the last must be refused, the two others taken.
fn input() -> Input {
    let rows = generate(&GenSpec::new(1_200, 3, D, 23));
    let padded = [
        (200, MAX + 1),
        (500, MAX),
        (800, MAX - 1),
        (1_000, 20 * MAX + 7),
    ];
    let (mut lines, mut taken, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for (i, r) in rows.iter().enumerate() {
        let plain = csv_line(r) + ",";
        let line = match padded.iter().find(|(at, _)| *at == i) {
            Some(&(_, len)) => {
                let line = plain.clone() + &"n".repeat(len - plain.len());
                assert_eq!(line.len(), len);
                line
            }
            None => plain,
        };
        if line.len() > MAX {
            refused.push((lines.len() + 2, line.len()));
        } else {
            taken.push(r.clone());
        }
        lines.push(line);
    }
    let want = oracle(&taken, D, WIN, None);
    Input {
        lines,
        taken,
        refused,
        want,
    }
}

impl Input {
    /// The header and the data lines, each with its newline.
    fn text(&self) -> String {
        let mut text = String::from(HEADER) + "\n";
        for l in &self.lines {
            text.push_str(l);
            text.push('\n');
        }
        text
    }

    /// A line past every window plus the lateness, of the sentinel key: sent last to a
    /// live source, it closes every window of the data.
    fn sentinel_line(&self) -> String {
        csv_line(&sentinel(closing_time(&self.want, LATENESS_MS), D)) + ",\n"
    }

    /// Asserts `got` (final models, the sentinel's left out) are the oracle's over the
    /// lines taken, and returns their windows with their record counts, to compare runs.
    fn check_models(&self, got: &BTreeMap<WinKey, Model>, ctx: &str) -> Vec<(WinKey, usize)> {
        assert_matches_oracle(got, &self.want, self.want.len(), ctx);
        got.iter().map(|(k, m)| (k.clone(), m.n)).collect()
    }

    /// Asserts `text` (stderr) names every refused line of `origin`: its number, its
    /// length, the limit and the flag, on one line.
    fn check_messages(&self, text: &str, origin: &str, ctx: &str) {
        for (line, len) in &self.refused {
            let line_at = format!("{origin}: line {line}: ");
            let why =
                format!("{len} bytes, longer than the limit of {MAX} bytes (--max-line-bytes)");
            assert!(
                text.lines()
                    .any(|l| l.contains(&line_at) && l.contains(&why)),
                "{ctx}: no message `{line_at}{why}`; stderr:\n{text}"
            );
        }
    }
}

/// This test's schema, window and limit, `--out OUT`, `-w WORKERS`, then `extra`.
fn settings(out: &Path, workers: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--features",
        "x0",
        "--window",
        &WIN.arg(),
        "--lateness",
        &format!("{LATENESS_MS}ms"),
        "--max-line-bytes",
        &MAX.to_string(),
        "--out",
        &out.display().to_string(),
        "-w",
        &workers.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `tributary run --source SOURCE` with the [`settings`].
fn run_args(source: &str, out: &Path, workers: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["run", "-q", "--source", source]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(settings(out, workers, extra));
    args
}

/// [`run_args`] serving HTTP on a free port of 127.0.0.1.
fn serve_args(source: &str, out: &Path, workers: usize) -> Vec<String> {
    run_args(source, out, workers, &["--serve", "127.0.0.1:0"])
}

/// `/metrics`' count of malformed lines.
fn malformed(server: &Server) -> Option<f64> {
    server.metric("tributary_malformed_total")
}

/// (a), (b), (c), (d), (e): the same records taken, the same lines refused and named, the
/// same final models, whichever way the input is read.
#[test]
fn every_source_applies_the_line_limit_alike() {
    let input = input();
    let dir = TempDir::new("line-limits");
    let csv = dir.path("in.csv");
    std::fs::write(&csv, input.text()).unwrap();
    let refused = input.refused.len() as u64;
    let mut runs: Vec<(String, Vec<(WinKey, usize)>)> = Vec::new();

    // (a) and (b): read once, by one worker (parsed ahead of it), and by two in byte
    // ranges (in place; small blocks, so that both read and the long line falls across a
    // block's nominal start).
    for (workers, block, ahead) in [(1, None, "on"), (2, Some(3 * MAX), "off")] {
        let source = match block {
            None => format!("csv:{}", csv.display()),
            Some(b) => format!("csv:{},block={b}", csv.display()),
        };
        let out = dir.path(&format!("out-file-{workers}.jsonl"));
        let read_ahead = ["--read-ahead", ahead];
        let run = run_engine(&dir, &run_args(&source, &out, workers, &read_ahead));
        let ctx = format!("file read once, -w {workers}");
        run.assert_success();
        assert_eq!(run.summary("malformed"), Some(refused), "{ctx}");
        assert_eq!(
            run.summary("records"),
            Some(input.taken.len() as u64),
            "{ctx}: {}",
            run.stderr
        );
        input.check_messages(&run.stderr, &csv.display().to_string(), &ctx);
        let models = input.check_models(&read_models(&out), &ctx);
        runs.push((ctx, models));
    }

    // The same lines as JSON, read once by two workers: the same lines are refused (their
    // lengths differ: they are JSON).
    {
        let jsonl = dir.path("in.jsonl");
        let mut text = String::new();
        for line in &input.lines {
            let f: Vec<&str> = line.splitn(5, ',').collect();
            let json = |note: &str| {
                format!(
                    r#"{{"ts":{},"key":"{}","x0":{},"y":{},"note":"{note}"}}"#,
                    f[0], f[1], f[2], f[3]
                )
            };
            // A padded line keeps its length: its note is cut by what the JSON adds.
            let over = json("").len() - (line.len() - f[4].len());
            let json = match f[4].len() {
                0 => json(""),
                n => json(&f[4][..n - over]),
            };
            assert!(f[4].is_empty() || json.len() == line.len());
            text.push_str(&json);
            text.push('\n');
        }
        std::fs::write(&jsonl, &text).unwrap();
        let out = dir.path("out-jsonl.jsonl");
        let source = format!("jsonl:{},block={}", jsonl.display(), 3 * MAX);
        let run = run_engine(&dir, &run_args(&source, &out, 2, &[]));
        let ctx = "JSON lines read once, -w 2";
        run.assert_success();
        assert_eq!(run.summary("malformed"), Some(refused), "{ctx}");
        // No header: every line number is one less.
        for (line, len) in &input.refused {
            let want = format!(
                "in.jsonl: line {}: {len} bytes, longer than the limit of {MAX} bytes \
                 (--max-line-bytes)",
                line - 1
            );
            assert!(
                run.stderr.contains(&want),
                "{ctx}: no `{want}`:\n{}",
                run.stderr
            );
        }
        runs.push((ctx.into(), input.check_models(&read_models(&out), ctx)));
    }

    // (c) Followed: the header and the first lines, then the rest appended in parts.
    {
        let out = dir.path("out-follow.jsonl");
        let data = dir.path("followed.csv");
        std::fs::write(&data, String::from(HEADER) + "\n").unwrap();
        let source = format!("csv:{},follow", data.display());
        let server = Server::start(&dir, &serve_args(&source, &out, 2));
        for part in input.lines.chunks(150) {
            append(
                &data,
                &part.iter().map(|l| l.clone() + "\n").collect::<String>(),
            );
        }
        wait_for_records(&server, input.taken.len(), "the followed file's records");
        append(&data, &input.sentinel_line());
        let got = wait_for_out(&server, &out, &input.want);
        let ctx = "followed file";
        assert_eq!(malformed(&server), Some(refused as f64), "{ctx}");
        input.check_messages(&server.stderr_text(), &data.display().to_string(), ctx);
        runs.push((ctx.into(), input.check_models(&got, ctx)));
    }

    // (d) TCP, client mode: the test listens on 127.0.0.1 and sends the input; closing
    // the connection ends the run.
    {
        let out = dir.path("out-tcp.jsonl");
        let args = settings(&out, 2, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (mut child, mut stream, stderr) = spawn_tcp_client(&dir, &args);
        let origin = format!("tcp:{}", stream.local_addr().unwrap());
        let stderr_text = || std::fs::read_to_string(&stderr).unwrap_or_default();
        for part in input.text().as_bytes().chunks(50_000) {
            stream.write_all(part).unwrap();
        }
        drop(stream);
        let status = child
            .wait_within(WAIT)
            .unwrap_or_else(|| panic!("the TCP run did not end:\n{}", stderr_text()));
        let ctx = "tcp";
        let text = stderr_text();
        assert!(status.success(), "{ctx}: {status}\n{text}");
        assert_eq!(summary_token(&text, "malformed"), Some(refused), "{ctx}");
        input.check_messages(&text, &origin, ctx);
        runs.push((ctx.into(), input.check_models(&read_models(&out), ctx)));
    }

    // (e) POST /data: the whole input in one body; the answer lists the refused lines.
    {
        let out = dir.path("out-http.jsonl");
        let server = Server::start(&dir, &serve_args("http", &out, 2));
        let r = server.post("/data", Some("text/csv"), &input.text());
        let ctx = "POST /data";
        assert_eq!(r.status, 200, "{ctx}: {}", r.body);
        let v = r.json();
        assert_eq!(v["accepted"], input.taken.len() as u64, "{ctx}: {}", r.body);
        assert_eq!(v["rejected"], refused, "{ctx}");
        let errors: Vec<(usize, String)> = v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["line"].as_u64().unwrap() as usize,
                    e["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want: Vec<(usize, String)> = input
            .refused
            .iter()
            .map(|(line, len)| {
                let why =
                    format!("{len} bytes, longer than the limit of {MAX} bytes (--max-line-bytes)");
                (*line, why)
            })
            .collect();
        assert_eq!(errors, want, "{ctx}");
        let closing = String::from(HEADER) + "\n" + &input.sentinel_line();
        assert_eq!(server.post("/data", Some("text/csv"), &closing).status, 200);
        let got = wait_for_out(&server, &out, &input.want);
        assert_eq!(malformed(&server), Some(refused as f64), "{ctx}");
        runs.push((ctx.into(), input.check_models(&got, ctx)));
    }

    let (first, windows) = &runs[0];
    for (ctx, other) in &runs[1..] {
        assert!(
            other == windows,
            "{ctx} and {first} differ in their final windows or their record counts"
        );
    }
}

/// Under `--on-error fail`, a file read once stops at a line over the limit (the first
/// with one worker; the first any worker meets with two), with an error naming the file,
/// the line, its length, the limit and the flag (exit code 2).
#[test]
fn under_on_error_fail_a_long_line_stops_a_file_read_once() {
    let input = input();
    let dir = TempDir::new("line-limits-fail");
    let csv = dir.path("in.csv");
    std::fs::write(&csv, input.text()).unwrap();
    for workers in [1, 2] {
        let out = dir.path(&format!("out-{workers}.jsonl"));
        let source = format!("csv:{},block={}", csv.display(), 3 * MAX);
        // One worker reads ahead, two in place.
        let ahead = if workers == 1 { "on" } else { "off" };
        let run = run_engine(
            &dir,
            &run_args(
                &source,
                &out,
                workers,
                &["--on-error", "fail", "--read-ahead", ahead],
            ),
        );
        let refused = match workers {
            1 => &input.refused[..1],
            _ => &input.refused[..],
        };
        let named = |&(line, len): &(usize, usize)| {
            let want = format!(
                "error: malformed input: {}: line {line}: {len} bytes, longer than the limit \
                 of {MAX} bytes (--max-line-bytes)",
                csv.display()
            );
            run.stderr.contains(&want)
        };
        assert_eq!(run.code, Some(2), "-w {workers}: {}", run.stderr);
        assert!(
            refused.iter().any(named),
            "-w {workers}: no error naming a line of {refused:?}:\n{}",
            run.stderr
        );
    }
}
