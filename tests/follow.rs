//! A followed file (`csv:PATH,follow`, `jsonl:PATH,follow`) with the real binary: read as
//! it grows, exactly once across kill -9 (from the stored position or the ingest log); a
//! restart on another file, or a file that shrinks or is replaced while followed, is an
//! error naming it. Rotated by rename (`csv:PATH,follow,rotate`), as logrotate does it by
//! default: the old file is read to its end, then the new one from its start, exactly once
//! across kill -9 in every phase (writing the old file, just after the rename, reading the
//! new file). The final models equal the oracle's over both files' lines. And a followed
//! file is one partition: written in two bursts with `-w 2`, the first burst's windows are
//! final without the second. Everything on 127.0.0.1, bounded in time, processes killed
//! on drop.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::http::*;
use common::*;

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// `checkpoint inspect`'s account of the followed file's stored position.
fn stored_position(ckpt: &Path) -> String {
    let o = Command::new(BIN)
        .args(["checkpoint", "inspect", ckpt.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    text.lines()
        .find(|l| l.contains("followed file:"))
        .unwrap_or("no followed-file position")
        .trim()
        .to_owned()
}

/// Waits until the store says the reader stands at the end of `file` (every line of it
/// read and its position durable).
fn wait_position_at_end(server: &Server, ckpt: &Path, file: &Path, line: usize) {
    let want = format!(
        "followed file: read through byte {} (line {line}) of inode {}",
        std::fs::metadata(file).unwrap().len(),
        inode(file)
    );
    server.wait_for(&format!("stored position {want:?}"), || {
        let got = stored_position(ckpt);
        (got == want).then_some(()).ok_or(got)
    });
}

/// Write, rotate by rename, write the new file, with kill -9 in each phase (`-w 2`):
/// 1. the old file's header and first lines are read, more lines appended and read, kill;
/// 2. restart, more lines, the file renamed to `data.csv.1` and lines still appended to
///    it (a writer that has not reopened yet), kill within the rotation's grace;
/// 3. restart: the stored position names the old file, found by inode under its new name
///    and read to its end; then the new file (its own header) appears at the path and is
///    read, kill;
/// 4. restart: the new file's last lines and a closing record.
///
/// The final models equal the oracle's over both files' lines, each written once, and
/// their counts add up to every line (nothing lost, nothing twice).
#[test]
fn rotation_by_rename_is_read_exactly_once_across_kill_9() {
    let d = 2;
    let win = Win::Tumbling(5_000);
    let lateness = 1000;
    let mut spec = GenSpec::new(8_000, 3, d, 97);
    spec.disorder = 300;
    let rows = generate(&spec);
    let want = oracle(&rows, d, win, None);
    let dir = TempDir::new("follow_rotation");
    let data = dir.path("data.csv");
    let rotated = dir.path("data.csv.1");
    let out = dir.path("models.jsonl");
    let ckpt = dir.path("ckpt");
    let mut args = with(
        http_args(&out, d, win, lateness, 2),
        &[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--checkpoint-every",
            "50ms",
        ],
    );
    args[3] = format!("csv:{},follow,rotate", data.display());
    let parts: Vec<&[Row]> = rows.chunks(1_000).collect();
    let (a1, a2, a3, a4) = (parts[0], parts[1], parts[2], parts[3]);
    let (b1, b2) = (
        &rows[4_000..6_000],
        &rows[6_000..], // the new file's last lines, with the closing record
    );

    // 1. The old file.
    append(&data, &(csv_header(d) + "\n" + &csv_lines(a1)));
    let mut server = Server::start(&dir, &args);
    wait_position_at_end(&server, &ckpt, &data, 1 + a1.len());
    append(&data, &csv_lines(a2));
    wait_position_at_end(&server, &ckpt, &data, 1 + a1.len() + a2.len());
    server.kill();
    drop(server);

    // 2. More lines, the rename, lines still written to the renamed file, and a kill
    // before the grace has passed (no file at the path yet either).
    let mut server = Server::start(&dir, &args);
    append(&data, &csv_lines(a3));
    wait_position_at_end(&server, &ckpt, &data, 1 + a1.len() + a2.len() + a3.len());
    std::fs::rename(&data, &rotated).unwrap();
    append(&rotated, &csv_lines(a4));
    server.kill();
    assert!(
        !server.stderr_text().contains("rotated:"),
        "no new file at the path: the old one is still followed\n{}",
        server.stderr_text()
    );
    drop(server);

    // 3. The restart finds the old file by inode, reads it to its end, then the new one.
    let mut server = Server::start(&dir, &args);
    let old_lines = 1 + a1.len() + a2.len() + a3.len() + a4.len();
    wait_position_at_end(&server, &ckpt, &rotated, old_lines);
    let text = server.stderr_text();
    assert!(
        text.contains(&format!("{} (rotated away)", rotated.display())),
        "the restart says it reads the rotated file first:\n{text}"
    );
    append(&data, &(csv_header(d) + "\n" + &csv_lines(b1)));
    server.wait_for("the rotation message", || {
        let text = server.stderr_text();
        let said = format!(
            "rotated: {} was read to its end ({old_lines} lines)",
            rotated.display()
        );
        text.contains(&said).then_some(()).ok_or(text)
    });
    wait_position_at_end(&server, &ckpt, &data, 1 + b1.len());
    server.kill();
    drop(server);

    // 4. The new file's last lines, and a record past every window.
    let server = Server::start(&dir, &args);
    append(&data, &csv_lines(b2));
    append(
        &data,
        &csv_lines(&[sentinel(closing_time(&want, lateness), d)]),
    );
    let got = wait_for_out(&server, &out, &want);
    assert_models_match(&got, &want, "rotation by rename across kill -9");
    assert_written_once(&out);
    let total: usize = got.values().map(|m| m.n).sum();
    assert_eq!(total, rows.len(), "records over the final windows");
}

/// With `,rotate`, the grace and the hand-over while running: lines appended to the old
/// file after the rename (within the grace) are read before the new file's; and a restart
/// whose rotated file was removed is refused with a message naming the inode and the
/// directory (its unread lines would be lost).
#[test]
fn rotation_reads_late_lines_of_the_old_file_and_a_removed_one_is_an_error() {
    let d = 1;
    let win = Win::Tumbling(10_000);
    let lateness = 0;
    let rows = generate(&GenSpec::new(600, 2, d, 5));
    let want = oracle(&rows, d, win, None);
    let dir = TempDir::new("follow_rotation_grace");
    let data = dir.path("app.csv");
    let rotated = dir.path("app.csv.1");
    let out = dir.path("models.jsonl");
    let ckpt = dir.path("ckpt");
    let mut args = with(
        http_args(&out, d, win, lateness, 1),
        &["--checkpoint", ckpt.to_str().unwrap()],
    );
    args[3] = format!("csv:{},follow,rotate", data.display());
    let (old, new) = rows.split_at(300);
    let (old_a, old_b) = old.split_at(200);

    append(&data, &(csv_header(d) + "\n" + &csv_lines(old_a)));
    let mut server = Server::start(&dir, &args);
    wait_position_at_end(&server, &ckpt, &data, 1 + old_a.len());
    // logrotate's order: rename, create the new file; the writer reopens a little later.
    std::fs::rename(&data, &rotated).unwrap();
    append(&data, &(csv_header(d) + "\n"));
    append(&rotated, &csv_lines(old_b));
    server.wait_for("the hand-over to the new file", || {
        let text = server.stderr_text();
        let said = format!(
            "rotated: {} was read to its end ({} lines)",
            rotated.display(),
            1 + old.len()
        );
        text.contains(&said).then_some(()).ok_or(text)
    });
    let closing = sentinel(closing_time(&want, lateness), d);
    append(&data, &(csv_lines(new) + &csv_lines(&[closing])));
    let got = wait_for_out(&server, &out, &want);
    assert_models_match(&got, &want, "rotation while running");
    wait_position_at_end(&server, &ckpt, &data, 2 + new.len());
    server.kill();
    drop(server);

    // The position names the new file; rotate again while stopped, and remove it.
    let ino = inode(&data);
    std::fs::rename(&data, &rotated).unwrap();
    std::fs::remove_file(&rotated).unwrap();
    append(&data, &(csv_header(d) + "\n"));
    let run = run_engine(&dir, &args);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("(inode {ino}) is neither {}", data.display()))
            && run.stderr.contains("rotated away and removed"),
        "the refusal names the inode and the path:\n{}",
        run.stderr
    );
}

/// The issue's `--idle-timeout` scenario, which needs no timeout here since a followed file
/// is one partition: with `-w 2`, a file written in two bursts. After the first burst
/// alone, every window its own watermark closed is final (equal to the oracle), and
/// none of the second burst's; after the second, the windows it closes are final too.
#[test]
fn a_followed_file_in_two_bursts_closes_the_first_bursts_windows_on_two_workers() {
    let d = 2;
    let win = Win::Tumbling(10_000);
    let lateness = 1_000;
    let mut spec = GenSpec::new(6_000, 4, d, 31);
    spec.step = 20;
    spec.disorder = 300;
    let rows = generate(&spec);
    let (first, second) = rows.split_at(3_000);
    let closed = |rows: &[Row]| -> BTreeMap<WinKey, Model> {
        let watermark = rows.iter().map(|r| r.ts).max().unwrap() - lateness;
        oracle(rows, d, win, None)
            .into_iter()
            .filter(|(k, _)| k.2 <= watermark)
            .collect()
    };
    let dir = TempDir::new("follow_bursts");
    let data = dir.path("data.csv");
    let out = dir.path("models.jsonl");
    let mut args = http_args(&out, d, win, lateness, 2);
    args[3] = format!("csv:{},follow", data.display());
    append(&data, &(csv_header(d) + "\n" + &csv_lines(first)));
    let server = Server::start(&dir, &args);
    let want = closed(first);
    assert!(want.len() >= 8, "{} windows", want.len());
    let got = server.wait_for("the first burst's closed windows", || {
        let got = read_models(&out);
        (got.len() >= want.len())
            .then_some(got)
            .ok_or_else(|| format!("{} of {} final", read_models(&out).len(), want.len()))
    });
    assert_models_match(&got, &want, "after the first burst, -w 2");
    // The watermark stands at the first burst's end (event time), and the windows it
    // closed are exactly the oracle's: nothing of the second burst's.
    let watermark = first.iter().map(|r| r.ts).max().unwrap() - lateness;
    server.wait_for("the first burst's watermark", || {
        let v = server.get("/healthz").json();
        (v["watermark"] == watermark)
            .then_some(())
            .ok_or(v.to_string())
    });
    assert_eq!(
        read_models(&out).len(),
        want.len(),
        "no window past the watermark"
    );
    append(&data, &csv_lines(second));
    let want = closed(&rows);
    let got = server.wait_for("the second burst's closed windows", || {
        let got = read_models(&out);
        (got.len() >= want.len())
            .then_some(got)
            .ok_or_else(|| format!("{} of {} final", read_models(&out).len(), want.len()))
    });
    assert_models_match(&got, &want, "after the second burst, -w 2");
}

/// `--source csv:PATH,follow` with `--checkpoint`: the file grows in pieces (one of them
/// ending half-way through a line, which waits for its newline) and the engine is killed
/// (-9) twice: once after a checkpoint covered what it read (the restart goes on from the
/// stored file position), once with checkpoints an hour apart, so that what it read is
/// only in the ingest log (the restart replays it, and reads on after it). A malformed line
/// comes after the first restart: its warning names its true line number, and it is not
/// read again after the second. The final models equal the oracle's over every line
/// (exactly once across both kills: the counts n) and are written once.
#[test]
fn followed_file_is_read_as_it_grows_exactly_once_across_kill_9() {
    let d = 2;
    let workers = 2;
    let win = Win::Tumbling(5_000);
    let lateness = 1000;
    let mut spec = GenSpec::new(9_000, 3, d, 71);
    spec.disorder = 300;
    let rows = generate(&spec);
    let want = oracle(&rows, d, win, None);
    let dir = TempDir::new("follow");
    let data = dir.path("data.csv");
    let out = dir.path("models.jsonl");
    let ckpt = dir.path("ckpt");
    let args = |every: &str| {
        let mut args = with(
            http_args(&out, d, win, lateness, workers),
            &[
                "--checkpoint",
                ckpt.to_str().unwrap(),
                "--checkpoint-every",
                every,
            ],
        );
        args[3] = format!("csv:{},follow", data.display());
        args
    };
    let (first, rest) = rows.split_at(3_000);
    let (second, third) = rest.split_at(3_000);
    let (before, after) = third.split_at(1_000);

    // Run 1: the header and the first third, then half of the next line.
    let next = csv_line(&second[0]);
    let (half, other_half) = next.split_at(next.len() / 2);
    append(&data, &(csv_header(d) + "\n" + &csv_lines(first) + half));
    let mut server = Server::start(&dir, &args("50ms"));
    wait_for_records(&server, first.len(), "the first third, not the half line");
    append(
        &data,
        &(other_half.to_owned() + "\n" + &csv_lines(&second[1..])),
    );
    wait_for_records(&server, first.len() + second.len(), "the second third");
    // Had the half line been read before its newline, it (or its other half) would be a
    // malformed line, or a record with a cut number that the oracle comparison at the end
    // catches: no sleep is needed to prove it was not.
    assert_eq!(
        server.metric("tributary_malformed_total"),
        Some(0.0),
        "a line read before its newline was written"
    );
    server.wait_for("a checkpoint covering every batch read", || {
        let v = server.get("/healthz").json();
        let batches = v["ingest"]["next_batch"].as_u64().unwrap_or(0);
        (v["checkpoint_epoch"].as_u64().map(|e| e + 1) == Some(batches))
            .then_some(())
            .ok_or(v.to_string())
    });
    server.kill();
    drop(server);

    // Run 2, no checkpoint within the run: new lines, then a malformed line on its own
    // (it moves the stored position alone). Line 1 is the header, so the malformed line
    // is line 2 + the rows before it.
    let mut server = Server::start(&dir, &args("1h"));
    append(&data, &csv_lines(before));
    wait_for_records(&server, before.len(), "the new lines");
    let bad_line = 2 + first.len() + second.len() + before.len();
    append(&data, &format!("{},k0,1.0,oops,2.0\n", before[999].ts));
    let warning = format!("{}: line {bad_line}, field \"x1\"", data.display());
    server.wait_for("the malformed line's warning", || {
        let text = server.stderr_text();
        text.contains(&warning).then_some(()).ok_or(text)
    });
    let stored = format!("followed file: read through byte {} (line {bad_line})", {
        std::fs::metadata(&data).unwrap().len()
    });
    server.wait_for("the position past the malformed line, stored", || {
        let got = stored_position(&ckpt);
        got.contains(&stored).then_some(()).ok_or(got)
    });
    server.kill();
    drop(server);

    // Run 3 replays the log's batches of run 2 and reads on after them.
    let server = Server::start(&dir, &args("50ms"));
    let v = server.get("/healthz").json();
    assert_eq!(
        v["ingest"]["appended"],
        before.len(),
        "the restart replays the lines read after the last checkpoint: {v}"
    );
    append(&data, &csv_lines(after));
    wait_for_records(
        &server,
        before.len() + after.len(),
        "the replayed and the last lines",
    );
    // One sentinel line: the log is one partition, its watermark passes every window
    // whichever worker reads the sentinel's batch.
    append(
        &data,
        &csv_lines(&[sentinel(closing_time(&want, lateness), d)]),
    );
    let got = wait_for_out(&server, &out, &want);
    assert_matches_oracle(
        &got,
        &want,
        want.len(),
        "followed file: --out across kill -9 (n: exactly once)",
    );
    assert_written_once(&out);
    let total: usize = got.values().map(|m| m.n).sum();
    assert_eq!(total, rows.len(), "records over the final windows");
    assert!(
        !server.stderr_text().contains("malformed"),
        "the malformed line, read before the kill, is not read again"
    );
}

/// `--source jsonl:PATH,follow`: JSON lines (no header) read as they are appended, one
/// worker, a kill -9 between two appends: the final models equal the oracle's.
#[test]
fn followed_json_lines_resume_after_kill_9() {
    let d = 2;
    let win = Win::Sliding(6_000, 2_000);
    let lateness = 500;
    let mut spec = GenSpec::new(4_000, 2, d, 79);
    spec.disorder = 200;
    let rows = generate(&spec);
    let want = oracle(&rows, d, win, None);
    let dir = TempDir::new("follow-jsonl");
    let data = dir.path("data.jsonl");
    let out = dir.path("models.jsonl");
    let ckpt = dir.path("ckpt");
    let mut args = with(
        http_args(&out, d, win, lateness, 1),
        &[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--checkpoint-every",
            "20ms",
        ],
    );
    args[3] = format!("jsonl:{},follow", data.display());
    let lines = |rows: &[Row]| -> String { rows.iter().map(|r| jsonl_line(r) + "\n").collect() };
    let (first, second) = rows.split_at(2_500);
    // The first lines in five appends, each read before the next, so that checkpoints
    // (every 20 ms) mark batches among them; killed once one is committed.
    append(&data, &lines(&first[..500]));
    let mut server = Server::start(&dir, &args);
    wait_for_records(&server, 500, "the first lines");
    for (i, chunk) in first[500..].chunks(500).enumerate() {
        append(&data, &lines(chunk));
        wait_for_records(&server, 500 * (i + 2), "the first lines");
    }
    server.wait_for("a committed checkpoint", || {
        let v = server.get("/healthz").json();
        (v["checkpoint_epoch"].as_u64().is_some_and(|e| e > 0))
            .then_some(())
            .ok_or(v.to_string())
    });
    server.kill();
    drop(server);
    let server = Server::start(&dir, &args);
    let epoch = resumed_epoch(&server);
    append(&data, &lines(second));
    append(&data, &lines(&[sentinel(closing_time(&want, lateness), d)]));
    let got = wait_for_out(&server, &out, &want);
    // Resumed, not re-read: this process appended to its log (and read) the batches
    // after the checkpoint that the store kept, then only the new lines; a re-read from
    // the start would append every first line again.
    let v = server.get("/healthz").json();
    let appended = v["ingest"]["appended"].as_u64().unwrap();
    let new = (second.len() + 1) as u64;
    assert!(
        appended >= new && appended - new < first.len() as u64,
        "resumed from epoch {epoch}, but this process appended {appended} records: \
         the {} new lines and {} of the {} lines before the kill (all of them: read again \
         from the start): {v}",
        second.len() + 1,
        appended.saturating_sub(new),
        first.len()
    );
    assert_eq!(
        v["records"], appended,
        "records read = records appended: {v}"
    );
    assert_matches_oracle(
        &got,
        &want,
        want.len(),
        "followed JSON lines across kill -9",
    );
    assert_written_once(&out);
}

/// A restart on a file that is not the one the checkpoint followed (shorter than what was
/// read, beginning differently, or differing before the position) is refused with a
/// message naming the file; a file that shrinks, or is rotated, while followed stops the
/// run with an error naming it.
#[test]
fn followed_file_replaced_or_truncated_is_an_error() {
    let d = 2;
    let rows = generate(&GenSpec::new(500, 2, d, 73));
    let dir = TempDir::new("follow-replaced");
    let data = dir.path("data.csv");
    let out = dir.path("models.jsonl");
    let ckpt = dir.path("ckpt");
    let mut args = with(
        http_args(&out, d, Win::Tumbling(5_000), 1000, 1),
        &["--checkpoint", ckpt.to_str().unwrap()],
    );
    args[3] = format!("csv:{},follow", data.display());
    let text = csv_header(d) + "\n" + &csv_lines(&rows);
    append(&data, &text);
    let mut server = Server::start(&dir, &args);
    wait_for_records(&server, rows.len(), "the whole file");
    server.kill();
    drop(server);
    let exits = |child: &mut Reaped, what: &str| {
        child
            .wait_within(WAIT)
            .unwrap_or_else(|| panic!("{what}: still running after {WAIT:?}"))
    };
    let refused = |what: &str| {
        let run = run_engine(&dir, &args);
        // An error at start (exit 1) naming the file and what does not match the
        // checkpoint's position; not a failure that merely mentions a checkpoint.
        assert_eq!(run.code, Some(1), "{what}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("error: {}: ", data.display()))
                && run.stderr.contains("the checkpoint")
                && run
                    .stderr
                    .contains("remove the checkpoint directory to start over"),
            "{what}: the error names the file and the checkpoint: {}",
            run.stderr
        );
    };
    // Shorter than what the checkpoint read.
    std::fs::write(&data, &text[..text.len() / 2]).unwrap();
    refused("a truncated file");
    // As long, but with other first bytes.
    std::fs::write(&data, text.replacen("ts,key", "ts,kez", 1)).unwrap();
    refused("another file");
    // As long, the same first bytes, another last line.
    let mut other = text.clone().into_bytes();
    let last_digit = other.iter().rposition(u8::is_ascii_digit).unwrap();
    other[last_digit] = if other[last_digit] == b'1' {
        b'2'
    } else {
        b'1'
    };
    std::fs::write(&data, &other).unwrap();
    refused("a file that differs before the position");

    // While followed (from a fresh checkpoint each time): shrunk, then rotated (renamed,
    // a new file at the path).
    let shrink = |data: &Path| std::fs::write(data, csv_header(d) + "\n").unwrap();
    let rotate = |data: &Path| {
        std::fs::rename(data, dir.path("data.csv.1")).unwrap();
        std::fs::write(data, &text).unwrap();
    };
    type Change<'a> = &'a dyn Fn(&Path);
    let changes: [(&str, Change, &str); 2] = [
        ("a file that shrank", &shrink, "shrank"),
        ("a rotated file", &rotate, "another file"),
    ];
    for (what, change, says) in changes {
        let _ = std::fs::remove_dir_all(&ckpt);
        std::fs::write(&data, &text).unwrap();
        let mut server = Server::start(&dir, &args);
        wait_for_records(&server, rows.len(), what);
        change(&data);
        let status = exits(server.child.as_mut().unwrap(), what);
        assert!(!status.success(), "{what}: the run stops");
        let stderr = server.stderr_text();
        assert!(
            stderr.contains(&data.display().to_string()) && stderr.contains(says),
            "{what}: the error names the file and says {says:?}: {stderr}"
        );
    }
}
