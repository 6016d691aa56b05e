//! Store integrity and storage faults (docs/checkpoint-format.md): failed durable writes
//! (failpoints `ingest.append`, `checkpoint.part`, `checkpoint.commit` through
//! `TRIBUTARY_FAILPOINTS`) answer 500 or stop the run with exit 3 naming the write, and a
//! restart loses nothing acknowledged; a flipped byte in a real store's write-ahead log,
//! a damaged value and a missing identity record are refused at start with exit 4 naming
//! the directory, `tributary checkpoint verify` exits 4 naming the damage, and
//! `--resume-from` resumes from the older checkpoint it names. Everything on 127.0.0.1,
//! bounded in time, processes killed on drop.

mod common;

use common::http::*;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Exit code of a run whose checkpoint write failed.
const EXIT_WRITE_FAILED: i32 = 3;
/// Exit code of a run that refuses its checkpoint directory, and of `verify` on damage.
const EXIT_REFUSED: i32 = 4;
const D: usize = 2;
const LATENESS_MS: i64 = 1000;
const SENTINEL: &str = "zz";

/// `tributary run --source http --serve 127.0.0.1:0 …` with a checkpoint taken every
/// 50 ms.
fn checkpointed_args(out: &Path, ckpt: &Path, workers: usize) -> Vec<String> {
    with(
        http_args(out, D, Win::Tumbling(10_000), LATENESS_MS, workers),
        &[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--checkpoint-every",
            "50ms",
        ],
    )
}

/// Polls `/healthz` until a checkpoint is committed; returns its epoch.
fn wait_for_commit(server: &Server) -> u64 {
    server.wait_for("a committed checkpoint", || {
        let v = server.get("/healthz").json();
        v["checkpoint_epoch"]
            .as_u64()
            .filter(|&e| e > 0)
            .ok_or(v.to_string())
    })
}

/// Starts a server with `failpoints` in `TRIBUTARY_FAILPOINTS`; returns once it serves or
/// has exited.
fn spawn_with(dir: &TempDir, args: &[String], failpoints: &str) -> Server {
    Server::spawn_env(dir, args, &[("TRIBUTARY_FAILPOINTS", failpoints)])
}

fn rows() -> Vec<Row> {
    let mut spec = GenSpec::new(8_000, 3, D, 31);
    spec.disorder = 300;
    generate(&spec)
}

/// Posts the rest, closes every window with one sentinel (the ingest log is one
/// partition, whatever the worker count), and compares `--out` with the oracle over all
/// `rows`: nothing lost, nothing counted twice.
fn finish_and_compare(server: &Server, rows: &[Row], rest: &[&[Row]], out: &Path) {
    for chunk in rest {
        server.post_rows(chunk, D, false);
    }
    let want = oracle(rows, D, Win::Tumbling(10_000), None);
    let close = want.keys().map(|k| k.2).max().unwrap() + LATENESS_MS + 1000;
    let sentinel = Row {
        ts: close,
        key: SENTINEL.into(),
        x: vec![0.0; D],
        y: 0.0,
    };
    server.post_rows(&[sentinel], D, false);
    let wanted: BTreeSet<&WinKey> = want.keys().collect();
    let got = server.wait_for("the final windows in --out", || {
        let got: BTreeMap<WinKey, Model> = read_models(out)
            .into_iter()
            .filter(|(k, _)| k.0 != SENTINEL)
            .collect();
        if wanted.iter().all(|k| got.contains_key(*k)) {
            Ok(got)
        } else {
            Err(format!("{} of {}", got.len(), want.len()))
        }
    });
    assert_matches_oracle(&got, &want, want.len(), "after the fault and a restart");
    let total: usize = got.values().map(|m| m.n).sum();
    assert_eq!(total, rows.len(), "every record counted exactly once");
}

// ---------------------------------------------------------------------------------------
// Failpoints
// ---------------------------------------------------------------------------------------

#[test]
fn a_failed_ingest_append_answers_500_and_a_restart_loses_nothing() {
    let rows = rows();
    let chunks: Vec<&[Row]> = rows.chunks(1000).collect();
    let dir = TempDir::new("fp-append");
    let (out, ckpt) = (dir.path("out.jsonl"), dir.path("ckpt"));
    let args = checkpointed_args(&out, &ckpt, 2);
    let mut server = spawn_with(&dir, &args, "ingest.append=enospc*1");
    // The first append fails: 500, naming the write and the error; nothing accepted.
    let r = post_rows(&server.agent, &server.url("/data"), chunks[0], D, false).unwrap();
    assert_eq!(r.status, 500, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("{}", r.body));
    assert!(
        msg.contains("appending batch 0 to the ingest log") && msg.contains("No space left"),
        "{msg}"
    );
    assert!(msg.contains(ckpt.to_str().unwrap()), "{msg}");
    // The client retries; the service goes on.
    for chunk in &chunks[..4] {
        server.post_rows(chunk, D, false);
        std::thread::sleep(Duration::from_millis(60));
    }
    wait_for_commit(&server);
    server.post_rows(chunks[4], D, false);
    server.kill();
    let server = Server::start(&dir, &args);
    finish_and_compare(&server, &rows, &chunks[5..], &out);
}

/// A run that fails writing a checkpoint part or commit stops with exit 3 and a message
/// naming the write; every post it acknowledged is read after a restart.
fn checkpoint_write_fails(name: &str, failpoint: &str, names: &[&str]) {
    let rows = rows();
    let chunks: Vec<&[Row]> = rows.chunks(500).collect();
    let dir = TempDir::new(name);
    let (out, ckpt) = (dir.path("out.jsonl"), dir.path("ckpt"));
    let args = checkpointed_args(&out, &ckpt, 2);
    // A first run commits a checkpoint, then is killed.
    let mut server = Server::start(&dir, &args);
    let mut next = 0;
    while next < 4 {
        server.post_rows(chunks[next], D, false);
        next += 1;
        std::thread::sleep(Duration::from_millis(60));
    }
    wait_for_commit(&server);
    server.kill();
    // With the failpoint: posts go on until the failing write stops the process.
    let mut server = spawn_with(&dir, &args, failpoint);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = server.exited() {
            break status;
        }
        assert!(
            next < chunks.len() && Instant::now() < deadline,
            "the run did not stop: {}",
            server.stderr_text()
        );
        if !server.addr.is_empty() {
            match post_rows(&server.agent, &server.url("/data"), chunks[next], D, false) {
                Ok(r) if r.status == 200 => next += 1,
                // Not acknowledged (the process is going down): posted again later.
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(60));
    };
    let stderr = server.stderr_text();
    assert_eq!(status.code(), Some(EXIT_WRITE_FAILED), "{stderr}");
    for n in names {
        assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
    }
    assert!(stderr.contains(ckpt.to_str().unwrap()), "{stderr}");
    drop(server);
    // A restart without the failpoint resumes; nothing acknowledged is lost.
    let server = Server::start(&dir, &args);
    assert!(
        server
            .stderr_text()
            .contains("resuming from checkpoint epoch"),
        "{}",
        server.stderr_text()
    );
    finish_and_compare(&server, &rows, &chunks[next..], &out);
}

#[test]
fn a_failed_part_write_stops_the_run_with_exit_3_and_a_restart_recovers() {
    checkpoint_write_fails(
        "fp-part",
        "checkpoint.part=eio",
        &["part of checkpoint epoch", "Input/output error"],
    );
}

#[test]
fn a_failed_commit_write_stops_the_run_with_exit_3_and_a_restart_recovers() {
    checkpoint_write_fails(
        "fp-commit",
        "checkpoint.commit=enospc",
        &[
            "commit record of checkpoint epoch",
            "No space left on device",
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Damaged stores
// ---------------------------------------------------------------------------------------

/// `tributary checkpoint verify DIR`: (exit code, stdout).
fn verify(dir: &Path) -> (Option<i32>, String) {
    let o = Command::new(BIN)
        .args(["checkpoint", "verify"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!(
        "verify {}:\n{text}{}",
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), text)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The newest non-empty write-ahead log of a store.
fn newest_wal(store: &Path) -> PathBuf {
    std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .max_by_key(|p| {
            p.file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .unwrap_or_else(|| panic!("no write-ahead log in {store:?}"))
}

/// Payload ranges of the data records (full, first, middle, last fragments) of a RocksDB
/// write-ahead log: 32 KiB blocks of records `crc32c u32 | length u16 | type u8 | payload`.
fn wal_records(bytes: &[u8]) -> Vec<(u8, std::ops::Range<usize>)> {
    const BLOCK: usize = 32 * 1024;
    const HEADER: usize = 7;
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER <= bytes.len() {
        let left_in_block = BLOCK - at % BLOCK;
        if left_in_block < HEADER {
            at += left_in_block;
            continue;
        }
        let len = u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]) as usize;
        let kind = bytes[at + 6];
        if kind == 0 && len == 0 {
            break;
        }
        let payload = at + HEADER..at + HEADER + len;
        if payload.end > bytes.len() {
            break;
        }
        if (1..=4).contains(&kind) {
            out.push((kind, payload.clone()));
        }
        at = payload.end;
    }
    out
}

/// A copy of the store at `from` with one byte of the WAL's first or last data record
/// flipped.
fn with_flipped_wal_byte(from: &Path, to: &Path, last: bool) {
    copy_dir(from, to);
    let wal = newest_wal(&to.join("process-0"));
    let mut bytes = std::fs::read(&wal).unwrap();
    let records = wal_records(&bytes);
    assert!(records.len() >= 2, "{} records in {wal:?}", records.len());
    let (kind, range) = if last {
        records.last().unwrap().clone()
    } else {
        records.first().unwrap().clone()
    };
    let at = range.start + range.len() / 2;
    bytes[at] ^= 0x10;
    eprintln!(
        "flipped byte {at} of {wal:?} ({} bytes): record type {kind}, payload {range:?}",
        bytes.len()
    );
    std::fs::write(&wal, bytes).unwrap();
}

/// The epoch of "an older complete checkpoint is intact: epoch E" in verify's report.
fn older_epoch(report: &str) -> Option<u64> {
    report
        .split("an older complete checkpoint is intact: epoch ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A store written by a live HTTP run killed with -9 right after answering a post, so
/// that its write-ahead log holds the newest writes: (args, store, rows).
fn live_store(dir: &TempDir) -> (Vec<String>, PathBuf, Vec<Row>) {
    let rows = rows();
    let chunks: Vec<&[Row]> = rows.chunks(500).collect();
    let (out, ckpt) = (dir.path("out.jsonl"), dir.path("ckpt"));
    let args = checkpointed_args(&out, &ckpt, 1);
    let mut server = Server::start(dir, &args);
    for chunk in &chunks[..4] {
        server.post_rows(chunk, D, false);
        std::thread::sleep(Duration::from_millis(60));
    }
    wait_for_commit(&server);
    for chunk in &chunks[4..7] {
        server.post_rows(chunk, D, false);
        std::thread::sleep(Duration::from_millis(60));
    }
    wait_for_commit(&server);
    // The last write before the kill: an acknowledged batch.
    server.post_rows(chunks[7], D, false);
    server.kill();
    let (code, text) = verify(&ckpt);
    assert_eq!(code, Some(0), "the intact store: {text}");
    assert!(text.contains("result: intact"), "{text}");
    (args, ckpt, rows)
}

/// `args` with `--checkpoint` set to `dir`.
fn on_store(args: &[String], dir: &Path) -> Vec<String> {
    let mut args = args.to_vec();
    let at = args.iter().position(|a| a == "--checkpoint").unwrap() + 1;
    args[at] = dir.display().to_string();
    args
}

#[test]
fn a_write_cut_short_by_a_crash_is_dropped_and_reported() {
    let dir = TempDir::new("torn");
    let (args, ckpt, _) = live_store(&dir);
    // What a crash in the middle of writing the last record leaves: the file ends inside it.
    let copy = dir.path("ckpt-torn");
    copy_dir(&ckpt, &copy);
    let wal = newest_wal(&copy.join("process-0"));
    let bytes = std::fs::read(&wal).unwrap();
    let (_, last) = wal_records(&bytes).last().unwrap().clone();
    std::fs::write(&wal, &bytes[..last.start + last.len() / 2]).unwrap();
    let (code, text) = verify(&copy);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ends in an incomplete record"), "{text}");
    let server = Server::start(&dir, &on_store(&args, &copy));
    let stderr = server.stderr_text();
    assert!(stderr.contains("ends in an incomplete record"), "{stderr}");
    assert!(
        stderr.contains("resuming from checkpoint epoch"),
        "{stderr}"
    );
}

#[test]
fn a_flipped_byte_in_the_write_ahead_log_is_refused_and_verify_names_it() {
    let dir = TempDir::new("wal");
    let (args, ckpt, rows) = live_store(&dir);
    let chunks: Vec<&[Row]> = rows.chunks(500).collect();
    // --resume-from must name the newest intact complete checkpoint.
    let mut wrong = args.clone();
    wrong.extend(["--resume-from".into(), "999".into()]);
    let r = run_engine(&dir, &wrong);
    assert_eq!(r.code, Some(EXIT_REFUSED), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--resume-from 999: the newest complete checkpoint intact here is epoch"),
        "{}",
        r.stderr
    );
    for (name, last) in [("last", true), ("first", false)] {
        let copy = dir.path(&format!("ckpt-{name}"));
        with_flipped_wal_byte(&ckpt, &copy, last);
        let store = copy.join("process-0");
        // The run refuses it, naming the directory and the damage.
        let run_args = on_store(&args, &copy);
        let r = run_engine(&dir, &run_args);
        assert_eq!(r.code, Some(EXIT_REFUSED), "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains(store.to_str().unwrap()),
            "{name}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("write-ahead log (*.log) is damaged"),
            "{name}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("checkpoint verify"),
            "{name}: {}",
            r.stderr
        );
        // verify exits 4 and names it.
        let (code, text) = verify(&copy);
        assert_eq!(code, Some(EXIT_REFUSED), "{name}: {text}");
        assert!(text.contains("result: DAMAGED"), "{name}: {text}");
        assert!(
            text.contains("write-ahead log (*.log) is damaged"),
            "{name}: {text}"
        );
        assert!(text.contains(store.to_str().unwrap()), "{name}: {text}");
        if last {
            // The writes before the damage hold a complete checkpoint: --resume-from it.
            let epoch = older_epoch(&text).unwrap_or_else(|| panic!("no older checkpoint: {text}"));
            let mut resume = run_args.clone();
            resume.extend(["--resume-from".into(), epoch.to_string()]);
            let mut server = Server::start(&dir, &resume);
            let stderr = server.stderr_text();
            assert!(
                stderr.contains(&format!("resuming from checkpoint epoch {epoch} ")),
                "{stderr}"
            );
            assert!(stderr.contains("write-ahead log is damaged"), "{stderr}");
            server.post_rows(chunks[8], D, false);
            server.kill();
            // The damaged tail is gone: the store is intact again and starts without the flag.
            let (code, text) = verify(&copy);
            assert_eq!(code, Some(0), "after --resume-from: {text}");
            let server = Server::start(&dir, &run_args);
            assert!(
                server
                    .stderr_text()
                    .contains("resuming from checkpoint epoch")
            );
        }
    }
}

/// A finished CSV run's store.
fn finished_store(dir: &TempDir) -> (Vec<String>, PathBuf) {
    let rows = rows();
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, D);
    let ckpt = dir.path("ckpt");
    let mut cfg = RunCfg::csv(&csv, D, Win::Tumbling(10_000));
    cfg.extra = vec![
        "--checkpoint".into(),
        ckpt.display().to_string(),
        "--checkpoint-every".into(),
        "1ms".into(),
    ];
    let args = cfg.args(&dir.path("out.jsonl"));
    run_engine(dir, &args).assert_success();
    (args, ckpt)
}

#[test]
fn a_store_without_its_identity_record_is_refused() {
    let dir = TempDir::new("no-identity");
    let (args, ckpt) = finished_store(&dir);
    let store = ckpt.join("process-0");
    {
        let db = rocksdb::DB::open_default(&store).unwrap();
        assert!(
            db.get(b"M").unwrap().is_some(),
            "the store has its identity record"
        );
        db.delete(b"M").unwrap();
    }
    let r = run_engine(&dir, &args);
    assert_eq!(r.code, Some(EXIT_REFUSED), "{}", r.stderr);
    assert!(r.stderr.contains("identity record"), "{}", r.stderr);
    assert!(r.stderr.contains(store.to_str().unwrap()), "{}", r.stderr);
    let (code, text) = verify(&ckpt);
    assert_eq!(code, Some(EXIT_REFUSED), "{text}");
    assert!(
        text.contains("identity record (key M) is missing"),
        "{text}"
    );
}

#[test]
fn a_damaged_value_is_refused_and_verify_names_its_key() {
    let dir = TempDir::new("bad-value");
    let (args, ckpt) = finished_store(&dir);
    let store = ckpt.join("process-0");
    let key = {
        let db = rocksdb::DB::open_default(&store).unwrap();
        let (k, mut v) = db
            .prefix_iterator(b"C")
            .map(Result::unwrap)
            .find(|(k, _)| k[0] == b'C')
            .expect("a commit record");
        let last = v.len() - 1;
        v[last] ^= 1;
        db.put(&k, &v).unwrap();
        k
    };
    let printable: String = key
        .iter()
        .map(|b| match b.is_ascii_graphic() {
            true => (*b as char).to_string(),
            false => format!("\\x{b:02x}"),
        })
        .collect();
    let r = run_engine(&dir, &args);
    assert_eq!(r.code, Some(EXIT_REFUSED), "{}", r.stderr);
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);
    assert!(r.stderr.contains(store.to_str().unwrap()), "{}", r.stderr);
    let (code, text) = verify(&ckpt);
    assert_eq!(code, Some(EXIT_REFUSED), "{text}");
    assert!(
        text.contains(&format!("key {printable}: checksum mismatch")),
        "{printable}: {text}"
    );
    assert!(
        text.contains("no older complete checkpoint is intact"),
        "{text}"
    );
}
