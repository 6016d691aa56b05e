//! A logged source (HTTP, TCP, a followed file) is one partition, however many workers
//! read its batches: a single POST, or one TCP connection that sends a file and stays
//! open, gives the oracle's final models on any worker count, as soon as the data's own
//! watermark passes the windows. No sentinel batches per worker. Everything on
//! 127.0.0.1, bounded in time, processes killed on drop.

mod common;

use common::http::*;
use common::*;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

const WIN: Win = Win::Tumbling(10_000);
const LATENESS_MS: i64 = 1_000;

/// Two minutes of event time, 4 keys, 3 features.
fn two_minutes() -> Vec<Row> {
    let mut spec = GenSpec::new(6_000, 4, 3, 2024);
    spec.step = 20;
    spec.disorder = 300;
    generate(&spec)
}

/// The oracle's windows that the data's own watermark closes.
fn closed_by_the_data(rows: &[Row], d: usize) -> BTreeMap<WinKey, Model> {
    let watermark = rows.iter().map(|r| r.ts).max().unwrap() - LATENESS_MS;
    oracle(rows, d, WIN, None)
        .into_iter()
        .filter(|(k, _)| k.2 <= watermark)
        .collect()
}

/// Polls `out` until it holds `want.len()` final windows (or `WAIT` runs out).
fn wait_for_models(out: &std::path::Path, want: &BTreeMap<WinKey, Model>, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = read_models(out);
        if got.len() >= want.len() {
            assert_matches_oracle(&got, want, want.len(), what);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {} windows final after {WAIT:?}",
            got.len(),
            want.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_post_gives_the_final_models_on_any_worker_count() {
    let d = 3;
    let rows = two_minutes();
    let want = closed_by_the_data(&rows, d);
    assert!(want.len() >= 40, "{} windows", want.len());
    for workers in [2, 3] {
        let dir = TempDir::new(&format!("one_post_w{workers}"));
        let out = dir.path("out.jsonl");
        let server = Server::start(&dir, &http_args(&out, d, WIN, LATENESS_MS, workers));
        server.post_rows(&rows, d, false);
        let what = format!("-w {workers}: one POST");
        wait_for_models(&out, &want, &what);
        // Served too: the newest final model of a key, and a prediction from it.
        let r = server.get("/model?key=k0");
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        assert!(!r.json()["final"].is_null(), "{what}: {}", r.body);
        let p = server.post(
            "/predict",
            Some("application/json"),
            r#"{"key":"k0","x":[0.1,0.2,0.3]}"#,
        );
        assert_eq!(p.status, 200, "{what}: /predict: {}", p.body);
    }
}

#[test]
fn one_tcp_connection_that_stays_open_gives_the_final_models_on_two_workers() {
    let d = 3;
    let rows = two_minutes();
    let want = closed_by_the_data(&rows, d);
    let dir = TempDir::new("tcp_stays_open");
    let out = dir.path("out.jsonl");
    let features = feature_list(d);
    let window = WIN.arg();
    let lateness = format!("{LATENESS_MS}ms");
    // The engine is a `Reaped` child: killed and reaped on drop, a failed test included.
    let (child, mut stream, _) = spawn_tcp_client(
        &dir,
        &[
            "--features",
            &features,
            "--window",
            &window,
            "--lateness",
            &lateness,
            "--out",
            out.to_str().unwrap(),
            "-w",
            "2",
        ],
    );
    // The file in several writes, then the connection stays open.
    let text = csv_text(&rows, d);
    for chunk in text.as_bytes().chunks(64 << 10) {
        stream.write_all(chunk).unwrap();
    }
    stream.flush().unwrap();
    wait_for_models(&out, &want, "one TCP connection, still open, -w 2");
    drop(stream);
    drop(child);
}

/// `--close-after-idle`: once the source has been quiet that long, every window open is
/// final (`"closed_by":"idle"`), equal to the oracle over its records; a record that
/// comes later for a closed window is late (to `--late-out`), and the windows event time
/// closed before carry no mark.
#[test]
fn an_idle_source_closes_its_windows_and_later_records_are_late() {
    let d = 1;
    let dir = TempDir::new("close_after_idle");
    let out = dir.path("out.jsonl");
    let late = dir.path("late.jsonl");
    let args = with(
        http_args(&out, d, WIN, LATENESS_MS, 2),
        &[
            "--close-after-idle",
            "300ms",
            "--late-out",
            late.to_str().unwrap(),
        ],
    );
    let server = Server::start(&dir, &args);
    let mut spec = GenSpec::new(500, 2, d, 8);
    spec.step = 50; // 25 s: [0, 10 s) and [10 s, 20 s) close by event time, [20 s, 30 s) not
    let rows = generate(&spec);
    server.post_rows(&rows, d, false);
    let want = oracle(&rows, d, WIN, None);
    assert_eq!(want.len(), 6);
    wait_for_models(&out, &want, "closed by event time, then by idleness");
    let text = std::fs::read_to_string(&out).unwrap();
    for e in parse_emissions(&text).iter().filter(|e| e.model.is_final) {
        let line = text
            .lines()
            .find(|l| {
                l.contains(&format!("\"key\":\"{}\"", e.key.0))
                    && l.contains(&format!("\"window_start\":{}", e.key.1))
                    && l.contains("\"final\":true")
            })
            .unwrap();
        let by_idle = line.contains("\"closed_by\":\"idle\"");
        assert_eq!(by_idle, e.key.1 == T0 + 20_000, "{line}");
    }
    assert_eq!(
        server.metric("tributary_windows_closed_idle_total"),
        Some(2.0)
    );
    // A record for the window idleness closed is late now.
    let straggler = Row {
        ts: T0 + 24_000,
        key: "k0".into(),
        x: vec![0.5],
        y: 1.0,
    };
    server.post_rows(&[straggler], d, false);
    server.wait_for("the straggler set aside as late", || {
        let lines = late_lines(&late);
        (lines.len() == 1 && lines[0]["reason"] == "late")
            .then_some(())
            .ok_or(format!("{lines:?}"))
    });
}
