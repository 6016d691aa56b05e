//! The TCP line source (`--source tcp:HOST:PORT`, client mode, and `tcp:HOST:PORT,listen`)
//! with the real binary: CSV lines over one or several connections give the oracle's
//! models in `--out` (and in `/models`). Everything on 127.0.0.1, bounded in time,
//! processes killed on drop. (Abuse of the source: tests/tcp_abuse.rs.)

mod common;

use common::http::*;
use common::*;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

/// `--source tcp:HOST:PORT` (client mode) against a listener of the test: CSV lines in
/// several writes, a malformed line among them; when the test closes the socket the run
/// ends (exit 0) with every window final, equal to the oracle.
#[test]
fn tcp_client_source_gives_the_oracle_models() {
    let d = 3;
    let win = Win::Session(700);
    let mut spec = GenSpec::new(6_000, 3, d, 51);
    spec.disorder = 100;
    spec.pause_prob = 0.01;
    spec.pause = 2_000;
    let rows = generate(&spec);
    let want = oracle(&rows, d, win, None);
    let dir = TempDir::new("tcp-client");
    let out = dir.path("models.jsonl");
    let features = feature_list(d);
    let window = win.arg();
    let (mut child, mut stream, stderr) = spawn_tcp_client(
        &dir,
        &[
            "--features",
            &features,
            "--window",
            &window,
            "--lateness",
            "1s",
            "--out",
            out.to_str().unwrap(),
            "-w",
            "2",
        ],
    );
    let stderr_text = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let mut text = csv_header(d) + "\n";
    for (i, chunk) in rows.chunks(1500).enumerate() {
        for r in chunk {
            text.push_str(&csv_line(r));
            text.push('\n');
        }
        if i == 1 {
            text.push_str(&format!("{},k0,1.0,oops,2.0,3.0\n", T0 + 20_000));
        }
        stream.write_all(text.as_bytes()).unwrap();
        text.clear();
        std::thread::sleep(Duration::from_millis(30));
    }
    drop(stream);
    let status = child.wait_within(WAIT).unwrap_or_else(|| {
        panic!(
            "the run did not end after the socket closed\nstderr:\n{}",
            stderr_text()
        )
    });
    assert!(
        status.success(),
        "exit {status}\nstderr:\n{}",
        stderr_text()
    );
    let got = read_models(&out);
    assert_matches_oracle(&got, &want, want.len(), "tcp client source: --out");
    assert_written_once(&out);
}

/// `--source tcp:HOST:PORT,listen` with `--serve`: two connections one after the other
/// (each with its header), then a sentinel connection; the models in `--out` and
/// `/models` equal the oracle over both connections' lines.
#[test]
fn tcp_listen_source_reads_every_connection() {
    let d = 2;
    let win = Win::Tumbling(5_000);
    let lateness = 1000;
    let mut spec = GenSpec::new(8_000, 2, d, 61);
    spec.disorder = 300;
    let rows = generate(&spec);
    let want = oracle(&rows, d, win, None);
    let dir = TempDir::new("tcp-listen");
    let out = dir.path("models.jsonl");
    let (server, port) = Server::start_on_free_port(&dir, |port| {
        let mut args = http_args(&out, d, win, lateness, 1);
        args[3] = format!("tcp:127.0.0.1:{port},listen");
        args
    });
    let send = |rows: &[Row]| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| server.fail(&format!("connect to the tcp source: {e}")));
        s.write_all(csv_text(rows, d).as_bytes()).unwrap();
    };
    // Connections are read concurrently: each waits until the previous one is read, so
    // that the later lines (the sentinel above all) do not make earlier ones late.
    let read_through = |n: usize| {
        server.wait_for(&format!("{n} records read from the tcp source"), || {
            let v = server.get("/healthz").json();
            (v["records"] == n).then_some(()).ok_or(v.to_string())
        })
    };
    let (first, second) = rows.split_at(rows.len() / 2);
    send(first);
    read_through(first.len());
    send(second);
    read_through(rows.len());
    send(&[sentinel(closing_time(&want, lateness), d)]);
    let got = wait_for_out(&server, &out, &want);
    assert_matches_oracle(&got, &want, want.len(), "tcp listen source: --out");
    let (_, models) = served_models(&server);
    for (key, (fin, _)) in models.iter().filter(|(k, _)| *k != SENTINEL) {
        let f = fin
            .as_ref()
            .unwrap_or_else(|| panic!("no final model of {key}"));
        assert_matches_oracle(
            &one(f),
            &BTreeMap::from([(f.key.clone(), want[&f.key].clone())]),
            1,
            &format!("tcp listen: /models final of {key}"),
        );
    }
}
