//! The engine's final models equal an independent oracle (nalgebra SVD least squares on the
//! exact rows of each window), for tumbling, sliding and session windows, OLS and ridge,
//! d = 1 and d = 32, on 1 and 4 workers, with event-time disorder within the lateness.

mod common;

use common::*;
use std::collections::BTreeMap;

/// Writes the rows as CSV, runs the engine on 1 and 4 workers, checks both against the
/// oracle and against each other. Returns the oracle's models.
fn check_case(
    name: &str,
    rows: &[Row],
    d: usize,
    win: Win,
    ridge: Option<f64>,
) -> BTreeMap<WinKey, Model> {
    let dir = TempDir::new(name);
    let csv = dir.path("in.csv");
    write_csv(&csv, rows, d);
    // The oracle reads the file itself.
    let (read_back, bad) = read_csv_oracle(&csv, d);
    assert_eq!(bad, 0);
    assert_eq!(read_back.len(), rows.len());
    let want = oracle(&read_back, d, win, ridge);
    let (nwin, under, maxc) = oracle_stats(&want);
    assert!(nwin > 0);
    eprintln!("{name}: oracle has {nwin} windows, {under} underdetermined, max cond {maxc:e}");

    let mut results = Vec::new();
    // Blocks small enough for 2 per worker at -w 4: every worker really reads (block k
    // goes to worker k mod W).
    let block = (std::fs::metadata(&csv).unwrap().len() / 8).max(64);
    for w in [1usize, 4] {
        let mut cfg = RunCfg::csv(&csv, d, win);
        cfg.source = format!("csv:{},block={block}", csv.display());
        cfg.ridge = ridge;
        cfg.workers = w;
        let late = dir.path(&format!("late-w{w}.jsonl"));
        cfg.extra = vec!["--late-out".into(), late.display().to_string()];
        let (run, text) = run_ok(&dir, &cfg, &format!("out-w{w}.jsonl"));
        let ctx = format!("{name} -w {w} ({})", run.cmdline);
        // The disorder is within the lateness: nothing is late.
        assert_eq!(
            run.summary("late"),
            Some(0),
            "{ctx}: stderr: {}",
            run.stderr
        );
        assert!(
            late_lines(&late).is_empty(),
            "{ctx}: records written as late"
        );
        assert_eq!(
            run.summary("malformed"),
            Some(0),
            "{ctx}: stderr: {}",
            run.stderr
        );
        let per_worker = worker_records(&run.stderr);
        assert_eq!(per_worker.len(), w, "{ctx}: {}", run.stderr);
        assert!(
            per_worker.iter().all(|&n| n > 0),
            "{ctx}: a worker read nothing: {per_worker:?}"
        );
        assert_eq!(per_worker.iter().sum::<u64>(), rows.len() as u64, "{ctx}");
        let ems = parse_emissions(&text);
        assert_revisions(&ems, &ctx);
        let got = keep_final(&ems);
        assert_matches_oracle(&got, &want, want.len(), &ctx);
        results.push(got);
    }
    assert_matches_oracle(
        &results[1],
        &with_oracle_cond(&results[0], &want),
        want.len(),
        &format!("{name}: -w 4 vs -w 1"),
    );
    want
}

const TUMBLING: Win = Win::Tumbling(10_000);
const SLIDING: Win = Win::Sliding(10_000, 2_000);
const SESSION: Win = Win::Session(3_000);

/// d = 1: 3 keys, 3000 rows over 30 s, disorder up to 3 s (lateness 5 s).
fn data_d1(seed: u64) -> Vec<Row> {
    let mut s = GenSpec::new(3000, 3, 1, seed);
    s.step = 10;
    s.disorder = 3000;
    generate(&s)
}

/// d = 32: 2 keys, 3000 rows over 60 s, disorder up to 1 s.
fn data_d32(seed: u64) -> Vec<Row> {
    let mut s = GenSpec::new(3000, 2, 32, seed);
    s.step = 20;
    s.disorder = 1000;
    generate(&s)
}

/// Sessions: bursts separated by 6 s pauses (gap 3 s), disorder up to 2 s.
fn data_sessions(d: usize, seed: u64) -> Vec<Row> {
    let mut s = GenSpec::new(3000, if d == 1 { 3 } else { 2 }, d, seed);
    s.step = if d == 1 { 10 } else { 20 };
    s.disorder = 2000;
    s.pause_prob = 0.003;
    s.pause = 6000;
    generate(&s)
}

#[test]
fn tumbling_ols_d1() {
    check_case("tumbling_ols_d1", &data_d1(11), 1, TUMBLING, None);
}

#[test]
fn tumbling_ridge_d1() {
    check_case("tumbling_ridge_d1", &data_d1(12), 1, TUMBLING, Some(0.5));
}

#[test]
fn tumbling_ols_d32() {
    check_case("tumbling_ols_d32", &data_d32(13), 32, TUMBLING, None);
}

#[test]
fn tumbling_ridge_d32() {
    check_case("tumbling_ridge_d32", &data_d32(14), 32, TUMBLING, Some(2.5));
}

#[test]
fn sliding_ols_d1() {
    check_case("sliding_ols_d1", &data_d1(21), 1, SLIDING, None);
}

#[test]
fn sliding_ridge_d1() {
    check_case("sliding_ridge_d1", &data_d1(22), 1, SLIDING, Some(0.5));
}

#[test]
fn sliding_ols_d32() {
    check_case("sliding_ols_d32", &data_d32(23), 32, SLIDING, None);
}

#[test]
fn sliding_ridge_d32() {
    check_case("sliding_ridge_d32", &data_d32(24), 32, SLIDING, Some(2.5));
}

#[test]
fn session_ols_d1() {
    let want = check_case("session_ols_d1", &data_sessions(1, 31), 1, SESSION, None);
    // The data really has several sessions per key.
    assert!(want.len() >= 3 * 3, "only {} sessions", want.len());
}

#[test]
fn session_ridge_d1() {
    check_case(
        "session_ridge_d1",
        &data_sessions(1, 32),
        1,
        SESSION,
        Some(0.5),
    );
}

#[test]
fn session_ols_d32() {
    let want = check_case("session_ols_d32", &data_sessions(32, 33), 32, SESSION, None);
    assert!(want.len() >= 2 * 3, "only {} sessions", want.len());
}

#[test]
fn session_ridge_d32() {
    check_case(
        "session_ridge_d32",
        &data_sessions(32, 34),
        32,
        SESSION,
        Some(2.5),
    );
}

/// ~50k rows, 8 keys, d = 4, tumbling 10 s windows, disorder up to 1 s.
#[test]
fn large_50k_tumbling() {
    let mut s = GenSpec::new(50_000, 8, 4, 41);
    s.step = 2;
    s.disorder = 1000;
    let rows = generate(&s);
    let want = check_case("large_50k_tumbling", &rows, 4, TUMBLING, None);
    assert!(want.len() >= 8 * 10);
}

/// The estimates are close to the generating coefficients (sanity of the test data itself:
/// the oracle is solving the intended problem).
#[test]
fn oracle_recovers_true_beta() {
    let rows = data_d1(11);
    let want = oracle(&rows, 1, TUMBLING, None);
    for ((key, _, _), m) in &want {
        let k: usize = key[1..].parse().unwrap();
        let beta = true_beta(11, k, 1);
        let b = m.coef.as_ref().unwrap();
        assert!(rel_err(b, &beta) < 0.05, "{key}: {b:?} vs {beta:?}");
    }
}

/// `--features x0..x7` (inclusive range) is the same as listing x0,...,x7.
#[test]
fn feature_range_syntax() {
    let d = 8;
    let mut s = GenSpec::new(2000, 2, d, 51);
    s.step = 10;
    s.disorder = 500;
    let rows = generate(&s);
    let dir = TempDir::new("feature_range_syntax");
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let (read_back, _) = read_csv_oracle(&csv, d);
    let want = oracle(&read_back, d, TUMBLING, None);
    let mut cfg = RunCfg::csv(&csv, d, TUMBLING);
    cfg.features = "x0..x7".into();
    let (run, text) = run_ok(&dir, &cfg, "out.jsonl");
    let got = keep_final(&parse_emissions(&text));
    assert_matches_oracle(
        &got,
        &want,
        want.len(),
        &format!("range syntax ({})", run.cmdline),
    );
    for m in got.values() {
        assert_eq!(m.coef.as_ref().unwrap().len(), d + 1);
    }
}

/// Window boundaries: a tumbling window is [start, start + len); a record exactly at the
/// end belongs to the next one. Sessions: a gap of exactly `gap` splits, gap - 1 joins.
#[test]
fn window_boundaries() {
    let d = 1;
    let mk = |ts: i64, key: &str, x: f64, y: f64| Row {
        ts,
        key: key.into(),
        x: vec![x],
        y,
    };
    let rows = vec![
        mk(T0, "a", 0.0, 1.0),
        mk(T0 + 9_999, "a", 1.0, 3.0),
        mk(T0 + 10_000, "a", 2.0, 4.0),
        mk(T0 + 12_998, "a", 3.0, 7.5),
        mk(T0 + 15_998, "a", 4.0, 8.0),
        mk(T0 + 15_999, "a", 5.0, 11.0),
    ];
    let dir = TempDir::new("window_boundaries");
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);

    // Tumbling 10 s.
    let want = oracle(&rows, d, TUMBLING, None);
    let expect_keys: Vec<WinKey> = vec![
        ("a".into(), T0, T0 + 10_000),
        ("a".into(), T0 + 10_000, T0 + 20_000),
    ];
    assert_eq!(want.keys().cloned().collect::<Vec<_>>(), expect_keys);
    let (run, text) = run_ok(&dir, &RunCfg::csv(&csv, d, TUMBLING), "tumbling.jsonl");
    let got = keep_final(&parse_emissions(&text));
    assert_matches_oracle(
        &got,
        &want,
        want.len(),
        &format!("tumbling boundaries ({})", run.cmdline),
    );
    assert_eq!(got[&expect_keys[0]].n, 2);
    assert_eq!(got[&expect_keys[1]].n, 4);

    // Sessions, gap 3 s: 0, 9999 (gap 9999: split), 10000 (1: join), 12998 (2998: join),
    // 15998 (3000: split), 15999 (1: join).
    let want = oracle(&rows, d, SESSION, None);
    let expect_keys: Vec<WinKey> = vec![
        ("a".into(), T0, T0 + 3_000),
        ("a".into(), T0 + 9_999, T0 + 12_998 + 3_000),
        ("a".into(), T0 + 15_998, T0 + 15_999 + 3_000),
    ];
    assert_eq!(want.keys().cloned().collect::<Vec<_>>(), expect_keys);
    let (run, text) = run_ok(&dir, &RunCfg::csv(&csv, d, SESSION), "session.jsonl");
    let got = keep_final(&parse_emissions(&text));
    assert_matches_oracle(
        &got,
        &want,
        want.len(),
        &format!("session boundaries ({})", run.cmdline),
    );
    assert_eq!(got[&expect_keys[0]].n, 1);
    assert_eq!(got[&expect_keys[1]].n, 3);
    assert_eq!(got[&expect_keys[2]].n, 2);
    assert_eq!(
        got[&expect_keys[0]].status.as_deref(),
        Some("underdetermined")
    );
    assert!(got[&expect_keys[0]].coef.is_none());
    assert!(got[&expect_keys[1]].coef.is_some());
    assert!(got[&expect_keys[2]].coef.is_some());
}

/// n <= d gives status "underdetermined" and coef null; n = d + 1 is solved (exact fit).
#[test]
fn underdetermined_windows() {
    let d = 2;
    let mut r = SplitMix64::new(61);
    let mut rows = Vec::new();
    // One tumbling window [T0, T0 + 10 s). Key "a": 2 rows (n = d), "b": 3 rows (n = d + 1),
    // "c": 40 rows, "e": 1 row.
    for (key, n) in [("a", 2), ("b", 3), ("c", 40), ("e", 1)] {
        for i in 0..n {
            let x = vec![r.uniform(-1.0, 1.0), r.uniform(-1.0, 1.0)];
            let y = 1.0 + 2.0 * x[0] - 0.5 * x[1] + 0.01 * r.normal();
            rows.push(Row {
                ts: T0 + 100 * i as i64 + 7,
                key: key.into(),
                x,
                y,
            });
        }
    }
    rows.sort_by_key(|r| r.ts);
    let dir = TempDir::new("underdetermined_windows");
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let want = oracle(&rows, d, TUMBLING, None);
    for w in [1usize, 4] {
        let mut cfg = RunCfg::csv(&csv, d, TUMBLING);
        cfg.workers = w;
        let (run, text) = run_ok(&dir, &cfg, &format!("out-{w}.jsonl"));
        let ems = parse_emissions(&text);
        let got = keep_final(&ems);
        assert_matches_oracle(
            &got,
            &want,
            want.len(),
            &format!("underdetermined -w {w} ({})", run.cmdline),
        );
        let win = |k: &str| (k.to_string(), T0, T0 + 10_000);
        for k in ["a", "e"] {
            let m = &got[&win(k)];
            assert_eq!(m.status.as_deref(), Some("underdetermined"), "key {k}");
            assert!(m.coef.is_none(), "key {k}");
        }
        // The JSON really has "coef": null (not absent).
        let raw_a = ems
            .iter()
            .rev()
            .find(|e| e.key == win("a") && e.model.is_final)
            .unwrap();
        assert!(
            raw_a.raw.as_object().unwrap().contains_key("coef") && raw_a.raw["coef"].is_null(),
            "{}",
            raw_a.raw
        );
        assert_eq!(got[&win("a")].n, 2);
        assert_eq!(got[&win("e")].n, 1);
        assert_eq!(got[&win("b")].n, 3);
        assert_eq!(got[&win("b")].coef.as_ref().unwrap().len(), 3);
        assert_eq!(got[&win("c")].status.as_deref(), Some("ok"));
    }
}

/// Exactly collinear features (x1 = 2 x0): status "ill_conditioned", coefficients still
/// given, no crash; another key in the same run is unaffected.
#[test]
fn collinear_features_ill_conditioned() {
    let d = 2;
    let mut r = SplitMix64::new(71);
    let mut rows = Vec::new();
    for i in 0..100 {
        let key = if i % 2 == 0 { "col" } else { "fine" };
        let x0 = r.uniform(-1.0, 1.0);
        let x1 = if key == "col" {
            2.0 * x0
        } else {
            r.uniform(-1.0, 1.0)
        };
        let y = 0.5 + 1.5 * x0 + 0.25 * x1 + 0.05 * r.normal();
        rows.push(Row {
            ts: T0 + 50 * i as i64,
            key: key.into(),
            x: vec![x0, x1],
            y,
        });
    }
    let dir = TempDir::new("collinear_features");
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let want = oracle(&rows, d, TUMBLING, None);
    let wcol = ("col".to_string(), T0, T0 + 10_000);
    let wfine = ("fine".to_string(), T0, T0 + 10_000);
    assert!(
        want[&wcol].design_cond > 1e12,
        "test data not collinear: {}",
        want[&wcol].design_cond
    );
    for w in [1usize, 4] {
        let mut cfg = RunCfg::csv(&csv, d, TUMBLING);
        cfg.workers = w;
        let (run, text) = run_ok(&dir, &cfg, &format!("out-{w}.jsonl"));
        let ctx = format!("collinear -w {w} ({})", run.cmdline);
        let got = keep_final(&parse_emissions(&text));
        assert_matches_oracle(&got, &want, want.len(), &ctx);
        let m = &got[&wcol];
        assert_eq!(m.n, 50, "{ctx}");
        assert_eq!(m.status.as_deref(), Some("ill_conditioned"), "{ctx}");
        let c = m
            .coef
            .as_ref()
            .unwrap_or_else(|| panic!("{ctx}: coef null"));
        assert_eq!(c.len(), 3, "{ctx}");
        assert!(c.iter().all(|v| v.is_finite()), "{ctx}: {c:?}");
        assert_eq!(got[&wfine].status.as_deref(), Some("ok"), "{ctx}");
    }
}

/// `tributary gen` writes a CSV the oracle reads itself; the engine's models on it match.
#[test]
fn gen_csv_models_match_oracle() {
    gen_csv_matches_oracle("gen_csv", &[]);
}

/// The same with numbers of 6 significant digits (`gen --digits 6`), short enough for the
/// vectorised CSV path: its records give the oracle's models too.
#[test]
fn short_decimal_csv_models_match_oracle() {
    gen_csv_matches_oracle("gen_csv_short", &["--digits", "6"]);
}

/// Times written as date-times (RFC 3339 with `Z` or an offset, and without an offset,
/// taken as UTC) give the same models as the ms they stand for.
#[test]
fn date_time_stamps_match_oracle() {
    use chrono::{DateTime, FixedOffset, SecondsFormat};
    let d = 2;
    let mut spec = GenSpec::new(3000, 3, d, 17);
    spec.disorder = 700;
    let rows = generate(&spec);
    let dir = TempDir::new("datetimes");
    let csv = dir.path("datetimes.csv");
    let plus2 = FixedOffset::east_opt(2 * 3600).unwrap();
    let mut text = csv_header(d) + "\n";
    for (i, r) in rows.iter().enumerate() {
        let t = DateTime::from_timestamp_millis(r.ts).unwrap();
        let stamp = match i % 3 {
            0 => t.to_rfc3339_opts(SecondsFormat::Millis, true),
            1 => t
                .with_timezone(&plus2)
                .to_rfc3339_opts(SecondsFormat::Millis, false),
            _ => t.naive_utc().format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        };
        let line = csv_line(r);
        let (_, rest) = line.split_once(',').unwrap();
        text.push_str(&format!("{stamp},{rest}\n"));
    }
    std::fs::write(&csv, &text).unwrap();
    let win = SLIDING;
    let want = oracle(&rows, d, win, None);
    let cfg = RunCfg::csv(&csv, d, win);
    let (run, out) = run_ok(&dir, &cfg, "out.jsonl");
    assert_eq!(run.summary("malformed"), Some(0), "{}", run.stderr);
    let got = keep_final(&parse_emissions(&out));
    assert_matches_oracle(
        &got,
        &want,
        want.len(),
        &format!("date-time stamps ({})", run.cmdline),
    );
}

fn gen_csv_matches_oracle(name: &str, extra: &[&str]) {
    let dir = TempDir::new(name);
    let csv = dir.path("gen.csv");
    let d = 3;
    let g = run_engine(
        &dir,
        &[
            "gen",
            "--rows",
            "3000",
            "--keys",
            "3",
            "--features",
            "3",
            "--seed",
            "7",
            "--disorder",
            "1000",
        ]
        .iter()
        .chain(extra)
        .chain(&["--out"])
        .map(|s| s.to_string())
        .chain([csv.display().to_string()])
        .collect::<Vec<_>>(),
    );
    g.assert_success();
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().next(), Some(csv_header(d).as_str()));
    let (rows, bad) = read_csv_oracle(&csv, d);
    assert_eq!((rows.len(), bad), (3000, 0));
    for win in [TUMBLING, SLIDING] {
        let want = oracle(&rows, d, win, None);
        for w in [1usize, 4] {
            let mut cfg = RunCfg::csv(&csv, d, win);
            cfg.workers = w;
            let (run, out) = run_ok(&dir, &cfg, &format!("out-{w}.jsonl"));
            assert_eq!(run.summary("late"), Some(0), "{}", run.stderr);
            let got = keep_final(&parse_emissions(&out));
            assert_matches_oracle(
                &got,
                &want,
                want.len(),
                &format!("{name} -w {w} ({})", run.cmdline),
            );
        }
    }
}

/// The comparison is a witness: an engine output that differs from the oracle in any one
/// field (n, a coefficient, r2, rmse, cond outside its bracket, status, window end, a window
/// missing, a revision out of its history) fails it, naming the window.
#[test]
fn the_comparison_fails_on_any_wrong_field() {
    let rows = data_d1(11);
    let d = 1;
    let dir = TempDir::new("comparison_witness");
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let want = oracle(&rows, d, TUMBLING, None);
    let (_, text) = run_ok(&dir, &RunCfg::csv(&csv, d, TUMBLING), "out.jsonl");
    let ems = parse_emissions(&text);
    assert_revisions(&ems, "untouched");
    let got = keep_final(&ems);
    assert_eq!(
        assert_matches_oracle(&got, &want, want.len(), "untouched"),
        9
    );
    let k = want.keys().nth(4).unwrap().clone();
    let fails = |what: &str, f: &dyn Fn(&mut Model)| {
        let mut bad = got.clone();
        f(bad.get_mut(&k).unwrap());
        let r = std::panic::catch_unwind(|| {
            assert_matches_oracle(&bad, &want, want.len(), what);
        });
        let msg = r.expect_err(what);
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains(&format!("{k:?}")), "{what}: {msg}");
    };
    fails("n", &|m| m.n += 1);
    fails("coef", &|m| m.coef.as_mut().unwrap()[1] *= 1.0 + 1e-7);
    fails("r2", &|m| *m.r2.as_mut().unwrap() -= 1e-6);
    fails("rmse", &|m| *m.rmse.as_mut().unwrap() *= 1.0 + 1e-6);
    fails("rmse with n - d - 1", &|m| {
        let r = m.rmse.unwrap();
        m.rmse = Some(r * (m.n as f64 / (m.n as f64 - 2.0)).sqrt());
    });
    fails("r2 null", &|m| m.r2 = None);
    fails("cond", &|m| m.cond *= 11.0);
    fails("cond below the condition number", &|m| m.cond *= 0.5);
    fails("cond null", &|m| m.cond = f64::NAN);
    fails("status", &|m| m.status = Some("ill_conditioned".into()));
    // A window whose end is wrong is a window missing and one extra.
    let mut moved = got.clone();
    let m = moved.remove(&k).unwrap();
    moved.insert((k.0.clone(), k.1, k.2 + 1), m);
    assert!(
        std::panic::catch_unwind(|| assert_matches_oracle(&moved, &want, want.len(), "end"))
            .is_err()
    );
    // Fewer windows than expected.
    assert!(
        std::panic::catch_unwind(|| assert_matches_oracle(&got, &want, want.len() + 1, "count"))
            .is_err()
    );
    // A revision that its history does not explain.
    let mut ems2 = ems.clone();
    let last = ems2.iter_mut().rfind(|e| e.model.is_final).unwrap();
    last.model.revision += 1;
    assert!(std::panic::catch_unwind(|| assert_revisions(&ems2, "revision")).is_err());
}
