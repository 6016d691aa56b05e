//! Malformed input: reported (file, line, field), counted, skipped; fatal with
//! `--on-error fail`; empty and header-only files; a missing column; JSON lines input
//! equivalent to CSV.

mod common;

use common::*;

const TUMBLING: Win = Win::Tumbling(10_000);

/// Does `text` have a line containing `line N` (N not followed by another digit) and all
/// of `also`? Returns that line.
fn find_line_report<'a>(text: &'a str, n: usize, also: &[&str]) -> Option<&'a str> {
    let pat = format!("line {n}");
    text.lines().find(|l| {
        let mut ok = false;
        let mut from = 0;
        while let Some(i) = l[from..].find(&pat) {
            let after = l[from + i + pat.len()..].chars().next();
            if !after.is_some_and(|c| c.is_ascii_digit()) {
                ok = true;
                break;
            }
            from += i + pat.len();
        }
        ok && also.iter().all(|a| l.contains(a))
    })
}

struct BadFile {
    dir: TempDir,
    csv: std::path::PathBuf,
    /// (physical line number, header line = 1; field name or None for a column count error)
    bad: Vec<(usize, Option<&'static str>)>,
    d: usize,
}

/// 2000 good rows (d = 2, 2 keys, some disorder) with 5 malformed lines inserted:
/// x1 = "abc", a missing column, y = NaN, an extra column, an unparsable time.
fn bad_file(name: &str) -> BadFile {
    let d = 2;
    let mut s = GenSpec::new(2000, 2, d, 111);
    s.step = 20;
    s.disorder = 1000;
    let rows = generate(&s);
    let mut lines: Vec<String> = rows.iter().map(csv_line).collect();
    let mk = |r: &Row, f: &dyn Fn(&mut Vec<String>)| {
        let mut v: Vec<String> = csv_line(r).split(',').map(String::from).collect();
        f(&mut v);
        v.join(",")
    };
    // Columns: ts,key,x0,x1,y. (index in `lines` where inserted, line, field)
    let specs: Vec<(usize, String, Option<&'static str>)> = vec![
        (150, mk(&rows[150], &|v| v[3] = "abc".into()), Some("x1")),
        (
            400,
            mk(&rows[400], &|v| {
                v.pop();
            }),
            None,
        ),
        (777, mk(&rows[777], &|v| v[4] = "NaN".into()), Some("y")),
        (1200, mk(&rows[1200], &|v| v.push("0.5".into())), None),
        (
            1600,
            mk(&rows[1600], &|v| v[0] = "17000000x0000".into()),
            Some("ts"),
        ),
    ];
    // Insert from the last so earlier indices stay valid, then compute line numbers.
    for (i, l, _) in specs.iter().rev() {
        lines.insert(*i, l.clone());
    }
    let mut bad = Vec::new();
    for (k, (i, l, f)) in specs.iter().enumerate() {
        // After all insertions, specs[k] sits at index i + k (the k earlier ones shift it).
        assert_eq!(&lines[i + k], l);
        bad.push((i + k + 2, *f));
    }
    let dir = TempDir::new(name);
    let csv = dir.path("in.csv");
    let mut text = csv_header(d);
    text.push('\n');
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&csv, text).unwrap();
    BadFile { dir, csv, bad, d }
}

#[test]
fn malformed_lines_are_reported_counted_and_skipped() {
    let b = bad_file("malformed_skip");
    let (good, nbad) = read_csv_oracle(&b.csv, b.d);
    assert_eq!(nbad, 5);
    assert_eq!(good.len(), 2000);
    let want = oracle(&good, b.d, TUMBLING, None);

    // Read ahead of the workers or in place, the same lines are reported and the same
    // output written, byte for byte.
    for (w, ahead) in [(1usize, "on"), (1, "off"), (4, "on"), (4, "off")] {
        let mut cfg = RunCfg::csv(&b.csv, b.d, TUMBLING);
        cfg.workers = w;
        // Small blocks: every worker reads (and meets malformed lines of its own).
        cfg.source = format!("csv:{},block={}", b.csv.display(), block_for(&b.csv, w));
        cfg.extra = vec!["--read-ahead".into(), ahead.into()];
        let (run, text) = run_ok(&b.dir, &cfg, &format!("out-{w}-{ahead}.jsonl"));
        let ctx = format!("-w {w}, read ahead {ahead} ({})", run.cmdline);
        if ahead == "off" {
            let read_ahead = std::fs::read_to_string(b.dir.path(&format!("out-{w}-on.jsonl")));
            assert!(
                read_ahead.unwrap() == text,
                "{ctx}: the output differs read ahead"
            );
        }
        assert_every_worker_read(&run.stderr, w, good.len() as u64, &ctx);
        assert_eq!(
            run.summary("malformed"),
            Some(5),
            "{ctx}: stderr:\n{}",
            run.stderr
        );
        assert_eq!(
            run.summary("late"),
            Some(0),
            "{ctx}: stderr:\n{}",
            run.stderr
        );
        for (line, field) in &b.bad {
            let mut also = vec!["in.csv"];
            if let Some(f) = field {
                also.push(f);
            }
            assert!(
                find_line_report(&run.stderr, *line, &also).is_some(),
                "{ctx}: no stderr line naming the file, `line {line}` and {field:?}; stderr:\n{}",
                run.stderr
            );
        }
        let got = keep_final(&parse_emissions(&text));
        assert_matches_oracle(&got, &want, want.len(), &ctx);
    }
}

#[test]
fn on_error_fail_stops_with_file_line_field() {
    let b = bad_file("malformed_fail");
    for ahead in ["on", "off"] {
        on_error_fail_stops(&b, ahead);
    }
}

/// `--on-error fail` on `b`, read ahead (`--read-ahead on`) or in place (`off`).
fn on_error_fail_stops(b: &BadFile, ahead: &str) {
    let out = b.dir.path(&format!("out-{ahead}.jsonl"));
    let mut cfg = RunCfg::csv(&b.csv, b.d, TUMBLING);
    cfg.extra = ["--on-error", "fail", "--read-ahead", ahead]
        .map(String::from)
        .to_vec();
    let run = run_engine(&b.dir, &cfg.args(&out));
    assert!(
        !run.success(),
        "--on-error fail with malformed input exited {:?} ({})\nstderr:\n{}",
        run.code,
        run.cmdline,
        run.stderr
    );
    let (first_line, first_field) = b.bad[0];
    let field = first_field.unwrap();
    assert!(
        run.stderr.contains("in.csv")
            && find_line_report(&run.stderr, first_line, &[]).is_some()
            && run.stderr.contains(field),
        "stderr should name in.csv, `line {first_line}` and field {field} ({}):\n{}",
        run.cmdline,
        run.stderr
    );
    // Only the first error is reported as the failure: the later malformed lines are not.
    let (second_line, _) = b.bad[1];
    assert!(
        find_line_report(&run.stderr, second_line, &[]).is_none(),
        "failed on the first malformed line but reports line {second_line} too:\n{}",
        run.stderr
    );
}

fn assert_no_models(out: &std::path::Path, ctx: &str) {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let ems = parse_emissions(&text);
    assert!(
        ems.is_empty(),
        "{ctx}: models from an input without records: {text}"
    );
}

#[test]
fn empty_file_succeeds_with_no_models() {
    let dir = TempDir::new("empty_file");
    let csv = dir.path("in.csv");
    std::fs::write(&csv, b"").unwrap();
    for win in [TUMBLING, Win::Session(3_000)] {
        let cfg = RunCfg::csv(&csv, 2, win);
        let (run, _) = run_ok(&dir, &cfg, "out.jsonl");
        assert_no_models(&dir.path("out.jsonl"), &run.cmdline);
        assert_eq!(run.summary("malformed").unwrap_or(0), 0, "{}", run.stderr);
        assert_eq!(run.summary("late").unwrap_or(0), 0, "{}", run.stderr);
    }
}

#[test]
fn header_only_file_succeeds_with_no_models() {
    let dir = TempDir::new("header_only");
    for (name, text) in [
        ("nl.csv", format!("{}\n", csv_header(2))),
        ("nonl.csv", csv_header(2)),
    ] {
        let csv = dir.path(name);
        std::fs::write(&csv, text).unwrap();
        for w in [1usize, 4] {
            let mut cfg = RunCfg::csv(&csv, 2, TUMBLING);
            cfg.workers = w;
            let (run, _) = run_ok(&dir, &cfg, "out.jsonl");
            assert_no_models(&dir.path("out.jsonl"), &run.cmdline);
            assert_eq!(
                run.summary("malformed"),
                Some(0),
                "{}: {}",
                run.cmdline,
                run.stderr
            );
        }
    }
}

#[test]
fn missing_feature_column_is_an_error_naming_it() {
    let dir = TempDir::new("missing_column");
    let csv = dir.path("in.csv");
    let mut s = GenSpec::new(200, 2, 2, 121);
    s.step = 20;
    write_csv(&csv, &generate(&s), 2);
    let out = dir.path("out.jsonl");
    let mut cfg = RunCfg::csv(&csv, 2, TUMBLING);
    cfg.features = "x0,x1,x5".into();
    let run = run_engine(&dir, &cfg.args(&out));
    assert!(
        !run.success(),
        "a missing feature column must fail ({}), exit {:?}, stderr:\n{}",
        run.cmdline,
        run.code,
        run.stderr
    );
    assert!(
        run.stderr.contains("x5"),
        "stderr should name x5:\n{}",
        run.stderr
    );
    assert_no_models(&out, &run.cmdline);

    // The same for the target.
    let cfg = RunCfg::csv(&csv, 2, TUMBLING);
    let mut args = cfg.args(&out);
    let i = args.iter().position(|a| a == "--target").unwrap();
    args[i + 1] = "yy".into();
    let run = run_engine(&dir, &args);
    assert!(
        !run.success(),
        "a missing target column must fail ({})",
        run.cmdline
    );
    assert!(
        run.stderr.contains("yy"),
        "stderr should name yy:\n{}",
        run.stderr
    );
}

/// A header that names a column of the schema twice is an error at start naming the file
/// and the column (which of the two is meant would be a guess), and no model is written;
/// a column outside the schema may repeat.
#[test]
fn a_column_named_twice_is_an_error_at_start() {
    let dir = TempDir::new("duplicate_column");
    let csv = dir.path("in.csv");
    let mut s = GenSpec::new(200, 2, 2, 123);
    s.step = 20;
    let rows = generate(&s);
    let body: String = rows.iter().map(|r| csv_line(r) + ",1\n").collect();
    std::fs::write(&csv, format!("{},x0\n{body}", csv_header(2))).unwrap();
    let out = dir.path("out.jsonl");
    let cfg = RunCfg::csv(&csv, 2, TUMBLING);
    let run = run_engine(&dir, &cfg.args(&out));
    assert_eq!(run.code, Some(1), "{}: {}", run.cmdline, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "{}: line 1: column \"x0\" appears twice",
            csv.display()
        )),
        "the error names the file and the column:\n{}",
        run.stderr
    );
    assert_no_models(&out, &run.cmdline);

    let body: String = rows.iter().map(|r| csv_line(r) + ",1,2\n").collect();
    std::fs::write(&csv, format!("{},note,note\n{body}", csv_header(2))).unwrap();
    let run = run_engine(&dir, &cfg.args(&out));
    run.assert_success();
}

#[test]
fn jsonl_gives_the_same_models_as_csv() {
    let d = 3;
    let mut s = GenSpec::new(2000, 3, d, 131);
    s.step = 10;
    s.disorder = 2000;
    let rows = generate(&s);
    let dir = TempDir::new("jsonl_equiv");
    let csv = dir.path("in.csv");
    let jsonl = dir.path("in.jsonl");
    write_csv(&csv, &rows, d);
    write_jsonl(&jsonl, &rows);
    let win = Win::Sliding(10_000, 2_000);
    let (read_back, _) = read_csv_oracle(&csv, d);
    assert_eq!(read_back, rows);
    let want = oracle(&rows, d, win, None);

    for w in [1usize, 4] {
        let mut ccfg = RunCfg::csv(&csv, d, win);
        ccfg.workers = w;
        ccfg.source = format!("csv:{},block={}", csv.display(), block_for(&csv, w));
        let (crun, ctext) = run_ok(&dir, &ccfg, &format!("csv-{w}.jsonl"));
        let mut jcfg = ccfg.clone();
        jcfg.source = format!("jsonl:{},block={}", jsonl.display(), block_for(&jsonl, w));
        let (jrun, jtext) = run_ok(&dir, &jcfg, &format!("jsonl-{w}.jsonl"));
        for (run, what) in [(&crun, "csv"), (&jrun, "jsonl")] {
            assert_every_worker_read(&run.stderr, w, rows.len() as u64, &format!("{what} -w {w}"));
        }
        let cgot = keep_final(&parse_emissions(&ctext));
        let jgot = keep_final(&parse_emissions(&jtext));
        assert_matches_oracle(
            &cgot,
            &want,
            want.len(),
            &format!("csv -w {w} ({})", crun.cmdline),
        );
        assert_matches_oracle(
            &jgot,
            &want,
            want.len(),
            &format!("jsonl -w {w} ({})", jrun.cmdline),
        );
        assert_matches_oracle(
            &jgot,
            &with_oracle_cond(&cgot, &want),
            want.len(),
            &format!("jsonl vs csv -w {w}"),
        );
        assert_eq!(jrun.summary("malformed"), Some(0), "{}", jrun.stderr);
    }
}
