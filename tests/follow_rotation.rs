//! A followed file rotated by rename (`csv:PATH,follow,rotate`), as logrotate does it by
//! default: the old file is read to its end, then the new one from its start, exactly once
//! across kill -9 in every phase (writing the old file, just after the rename, reading the
//! new file). The final models equal the oracle's over both files' lines. And a followed
//! file is one partition: written in two bursts with `-w 2`, the first burst's windows are
//! final without the second. Loopback only.

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
