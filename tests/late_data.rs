//! Late data: beyond the lateness it is counted, written to --late-out and kept out of the
//! models; within the lateness it revises the window; an absurd future timestamp is set
//! aside with --max-jump instead of making everything after it late.
//!
//! The runs use -w 1, where the watermark is the largest event time read so far minus the
//! lateness, so which record is late is deterministic; the last test, whose input has no
//! late record under any schedule, runs -w 2 as well.

use std::collections::BTreeMap;

mod common;

use common::*;

/// In-order stream: `rows` rows, keys k0/k1, d = 1, one every `step` ms from T0.
fn in_order(rows: usize, step: i64, seed: u64) -> Vec<Row> {
    let mut s = GenSpec::new(rows, 2, 1, seed);
    s.step = step;
    s.disorder = 0;
    generate(&s)
}

/// A record older than (largest time seen) - lateness - window length: its windows are
/// final already. Counted (late=1), written to --late-out, absent from the models.
fn too_late(name: &str, win: Win) {
    let d = 1;
    let mut rows = in_order(3000, 20, 81); // T0 .. T0 + 60 s
    if let Win::Session(_) = win {
        // A hole [T0 + 21 s, T0 + 28 s): the late record (T0 + 24.003 s) is alone in its
        // session [ts, ts + 3 s), which ends well before the watermark (T0 + 35 s) when it
        // arrives, so it is late under any reading of the contract.
        rows.retain(|r| r.ts < T0 + 21_000 || r.ts >= T0 + 28_000);
    }
    // Right after the row at T0 + 40 s.
    let pos = rows.iter().position(|r| r.ts > T0 + 40_000).unwrap();
    let max_before = rows[..pos].iter().map(|r| r.ts).max().unwrap();
    let late = Row {
        ts: T0 + 24_003,
        key: "k0".into(),
        x: vec![0.123],
        y: 1000.0, // an outlier: it would change the model visibly
    };
    assert!(late.ts < max_before - 5_000 - 10_000);
    rows.insert(pos, late.clone());

    let dir = TempDir::new(name);
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let (all, bad) = read_csv_oracle(&csv, d);
    assert_eq!(bad, 0);
    let without: Vec<Row> = all.iter().filter(|r| **r != late).cloned().collect();
    assert_eq!(without.len(), all.len() - 1);
    let want = oracle(&without, d, win, None);

    // Read ahead of the worker, batches of 4 KiB folded into panes on the reading thread
    // (the one with the late record refused and replayed record by record), and in place:
    // the same output and the same record set aside, byte for byte. The worker read ahead
    // of is made slow (20 ms a batch), so that the thread is always ahead and folds every
    // batch after the first few, the late record's among them.
    let mut outputs = Vec::new();
    for ahead in ["on", "off"] {
        let late_out = dir.path(&format!("late-{ahead}.jsonl"));
        let mut cfg = RunCfg::csv(&csv, d, win);
        cfg.source = format!("csv:{},block=4096", csv.display());
        cfg.extra = [
            "--late-out",
            late_out.to_str().unwrap(),
            "--read-ahead",
            ahead,
        ]
        .map(String::from)
        .to_vec();
        let slow = [("TRIBUTARY_FAILPOINTS", "ingest.batch=sleep:20")];
        let (run, text) = run_ok_env(&dir, &cfg, &format!("out-{ahead}.jsonl"), &slow);
        let ctx = format!("{name} ({})", run.cmdline);
        check_too_late(&run, &text, &late_out, &late, &want, &ctx);
        let (folded, refused) = (run.summary("folded_ahead"), run.summary("folds_refused"));
        if ahead == "on" {
            // Every batch but the late record's taken whole; that one refused, replayed.
            assert!(folded >= Some(1), "{ctx}: nothing folded: {}", run.stderr);
            assert_eq!(refused, Some(1), "{ctx}: {}", run.stderr);
        } else {
            assert_eq!((folded, refused), (None, None), "{ctx}: {}", run.stderr);
        }
        outputs.push((text, std::fs::read(&late_out).unwrap()));
    }
    assert!(
        outputs[0] == outputs[1],
        "{name}: read ahead and in place differ"
    );
}

/// Checks a run of [`too_late`] on its output `text` and records set aside.
fn check_too_late(
    run: &RunOutput,
    text: &str,
    late_out: &std::path::Path,
    late: &Row,
    want: &BTreeMap<WinKey, Model>,
    ctx: &str,
) {
    assert_eq!(
        run.summary("late"),
        Some(1),
        "{ctx}: stderr: {}",
        run.stderr
    );
    let lines = late_lines(late_out);
    assert_eq!(lines.len(), 1, "{ctx}: late-out: {lines:?}");
    assert_eq!(
        lines[0]["ts"].as_i64(),
        Some(late.ts),
        "{ctx}: {}",
        lines[0]
    );
    assert_eq!(lines[0]["key"].as_str(), Some("k0"), "{ctx}: {}", lines[0]);
    assert_eq!(lines[0]["reason"], "late", "{ctx}: {}", lines[0]);

    let ems = parse_emissions(text);
    let got = keep_final(&ems);
    assert_matches_oracle(&got, want, want.len(), ctx);
    // No emission at all (provisional or not) includes the late record: every emission of
    // a window has at most the oracle's n without it.
    for e in &ems {
        if let Some(w) = want.get(&e.key) {
            assert!(
                e.model.n <= w.n,
                "{ctx}: emission with n={} > {}: {}",
                e.model.n,
                w.n,
                e.raw
            );
        }
    }
}

#[test]
fn too_late_record_tumbling() {
    too_late("too_late_record_tumbling", Win::Tumbling(10_000));
}

#[test]
fn too_late_record_sliding() {
    too_late("too_late_record_sliding", Win::Sliding(10_000, 2_000));
}

#[test]
fn too_late_record_session() {
    too_late("too_late_record_session", Win::Session(3_000));
}

/// A record behind the largest time seen but within the lateness, for a window whose end
/// the stream has already passed (so the engine may have emitted it provisionally): the
/// window gets an emission with "revision" >= 1 equal to the oracle with the record, and
/// the kept final models equal the oracle over all records.
///
/// Lateness 20 s and 2 ms steps leave ~9750 records between the moment the largest time
/// passes the window's end and the late record, so an engine emitting provisional models
/// as event time passes a window's end has done so before it reads the late record.
#[test]
fn late_within_lateness_revises_window() {
    let d = 1;
    let name = "late_within_lateness";
    let mut rows = in_order(30_000, 2, 91); // T0 .. T0 + 60 s
    let w_end = T0 + 30_000;
    // Insert right after the last row with ts <= T0 + 49.6 s.
    let pos = rows.iter().position(|r| r.ts > T0 + 49_600).unwrap();
    let max_before = rows[..pos].iter().map(|r| r.ts).max().unwrap();
    let late = Row {
        ts: T0 + 29_900,
        key: "k1".into(),
        x: vec![0.5],
        y: 500.0, // an outlier: the model of its window changes visibly
    };
    // Not late (>= watermark = max - 20 s) but behind the end of its window by far.
    assert!(late.ts >= max_before - 20_000 && max_before > w_end + 19_000);
    rows.insert(pos, late.clone());

    let dir = TempDir::new(name);
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let (all, _) = read_csv_oracle(&csv, d);
    let win = Win::Tumbling(10_000);
    let want = oracle(&all, d, win, None);
    let wkey: WinKey = ("k1".into(), T0 + 20_000, w_end);
    let without: Vec<Row> = all.iter().filter(|r| **r != late).cloned().collect();
    let want_without = oracle(&without, d, win, None);
    assert_eq!(want[&wkey].n, want_without[&wkey].n + 1);

    let late_out = dir.path("late.jsonl");
    let mut cfg = RunCfg::csv(&csv, d, win);
    // Batches of 64 KiB (~1 600 records), so the ~9 750 records between the window's
    // end and the late record span several epochs (one 4 MiB batch would hold them all,
    // and the window would first close with the late record in it).
    cfg.source = format!("csv:{},block=64KiB", csv.display());
    cfg.lateness = "20s".into();
    cfg.extra = vec!["--late-out".into(), late_out.display().to_string()];
    let (run, text) = run_ok(&dir, &cfg, "out.jsonl");
    let ctx = format!("{name} ({})", run.cmdline);
    assert_eq!(
        run.summary("late"),
        Some(0),
        "{ctx}: stderr: {}",
        run.stderr
    );
    assert!(late_lines(&late_out).is_empty(), "{ctx}");

    let ems = parse_emissions(&text);
    let got = keep_final(&ems);
    assert_matches_oracle(&got, &want, want.len(), &ctx);

    let of_w: Vec<&Emission> = ems.iter().filter(|e| e.key == wkey).collect();
    let revised: Vec<&Emission> = of_w
        .iter()
        .copied()
        .filter(|e| e.model.revision >= 1)
        .collect();
    assert!(
        !revised.is_empty(),
        "{ctx}: no emission with revision >= 1 for window {wkey:?}; its emissions:\n{}",
        of_w.iter()
            .map(|e| e.raw.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let w = &want[&wkey];
    let matching = revised.iter().any(|e| {
        e.model.n == w.n
            && match (&e.model.coef, &w.coef) {
                (Some(a), Some(b)) => rel_err(a, b) <= COEF_TOL,
                _ => false,
            }
    });
    assert!(
        matching,
        "{ctx}: no revision of {wkey:?} matches the oracle with the late record (n={}, coef={:?}); \
         revisions:\n{}",
        w.n,
        w.coef,
        revised
            .iter()
            .map(|e| e.raw.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A record stamped 2099 in a 2023 stream, with --max-jump 1h: set aside (in --late-out
/// with a reason, counted), and the records after it are neither late nor lost.
#[test]
fn absurd_future_timestamp_is_set_aside() {
    let d = 1;
    let name = "absurd_future";
    let mut rows = in_order(3000, 20, 101);
    let future = Row {
        ts: 4_070_908_800_000, // 2099-01-01T00:00:00Z
        key: "k0".into(),
        x: vec![0.25],
        y: 3.0,
    };
    rows.insert(1500, future.clone());

    let dir = TempDir::new(name);
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let (all, _) = read_csv_oracle(&csv, d);
    let without: Vec<Row> = all.iter().filter(|r| **r != future).cloned().collect();
    let win = Win::Tumbling(10_000);
    let want = oracle(&without, d, win, None);

    let late_out = dir.path("late.jsonl");
    let mut cfg = RunCfg::csv(&csv, d, win);
    cfg.extra = vec![
        "--late-out".into(),
        late_out.display().to_string(),
        "--max-jump".into(),
        "1h".into(),
    ];
    let (run, text) = run_ok(&dir, &cfg, "out.jsonl");
    let ctx = format!("{name} ({})", run.cmdline);

    let lines = late_lines(&late_out);
    assert_eq!(
        lines.len(),
        1,
        "{ctx}: expected only the 2099 record in --late-out, got {} lines (first: {:?})",
        lines.len(),
        lines.first()
    );
    assert_eq!(
        lines[0]["ts"].as_i64(),
        Some(future.ts),
        "{ctx}: {}",
        lines[0]
    );
    assert_eq!(
        lines[0]["reason"], "too_far_ahead",
        "{ctx}: the reason of a record beyond --max-jump: {}",
        lines[0]
    );
    // Counted under its own counter, and not as late.
    assert_eq!(
        run.summary("too_far_ahead"),
        Some(1),
        "{ctx}: the set-aside record is not counted as too_far_ahead=1: {}",
        run.stderr
    );
    assert_eq!(run.summary("late"), Some(0), "{ctx}: {}", run.stderr);

    let got = keep_final(&parse_emissions(&text));
    assert_matches_oracle(&got, &want, want.len(), &ctx);
}

/// A key whose panes all expire and which comes back about one batch later (the 4 KiB
/// batches here are ~100 records, half a second of event time, and with tumbling windows
/// the key comes back half a second after its panes expire). Written when the panes were
/// in an arrangement and an expired pane left it only when its retraction looped back
/// (`4 × workers` epochs later), so the key came back while its expired panes were still
/// in the trace; the windows operator now drops them, and the key's state, at once. The
/// engine must neither emit their windows again nor count them twice: every window is
/// emitted final exactly once and equals the oracle, for one and two workers.
#[test]
fn key_returning_before_its_expired_panes_leave() {
    let d = 1;
    let mut rng = SplitMix64::new(17);
    let mut rows = Vec::new();
    for i in 0..6_000i64 {
        let ts = T0 + i * 10; // k0: T0 .. T0 + 60 s, every 10 ms
        let gap = (15_000..16_500).contains(&(i * 10)) || i * 10 >= 30_000;
        for key in ["k0", "k1"] {
            // k1: quiet from 15 s (its tumbling panes expire at 16 s) to 16.5 s, and after
            // 30 s.
            if key == "k1" && gap {
                continue;
            }
            let x = rng.normal();
            let y = if key == "k0" {
                1.0 + 2.0 * x
            } else {
                -3.0 + 0.5 * x
            } + 0.1 * rng.normal();
            rows.push(Row {
                ts,
                key: key.into(),
                x: vec![x],
                y,
            });
        }
    }
    let dir = TempDir::new("key_returning");
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    for win in [Win::Tumbling(5_000), Win::Sliding(5_000, 1_000)] {
        let want = oracle(&rows, d, win, None);
        for workers in [1, 2] {
            let mut cfg = RunCfg::csv(&csv, d, win);
            cfg.source = format!("csv:{},block=4KiB", csv.display());
            cfg.lateness = "1s".into();
            cfg.workers = workers;
            let (run, text) = run_ok(&dir, &cfg, "out.jsonl");
            let ctx = format!("{} ({})", win.arg(), run.cmdline);
            assert_eq!(run.summary("late"), Some(0), "{ctx}: {}", run.stderr);
            let ems = parse_emissions(&text);
            let mut finals: BTreeMap<WinKey, usize> = BTreeMap::new();
            for e in ems.iter().filter(|e| e.model.is_final) {
                *finals.entry(e.key.clone()).or_default() += 1;
            }
            let twice: Vec<_> = finals.iter().filter(|(_, n)| **n > 1).collect();
            assert!(
                twice.is_empty(),
                "{ctx}: windows emitted final more than once: {twice:?}"
            );
            assert_matches_oracle(&keep_final(&ems), &want, want.len(), &ctx);
        }
    }
}
