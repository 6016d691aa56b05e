//! The windows operator's own state (per key, the open panes' statistics accumulated as of
//! each epoch), checked against the independent oracle (tests/common/oracle.rs: nalgebra
//! SVD least squares over the exact rows of each window):
//!
//! - corrections: a user dataflow on the public operators (`window_panes`, then
//!   `windowed_regression`) whose pane collection carries negated copies of some panes at
//!   later epochs, before their windows close, on 1 and 2 workers: every final model is the
//!   oracle's on the records that remain, a key whose records are all retracted emits
//!   nothing, a key comes back after its panes were dropped, and the run ends;
//! - many keys: `tributary run` on 10 000 keys under `--checkpoint`, killed with SIGKILL
//!   after a checkpoint has committed and resumed: its final models are an uninterrupted
//!   run's, once per window, and the oracle's;
//! - session windows at many keys, on 1 and 2 workers, against the oracle.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use differential_dataflow::difference::Abelian;
use timely::dataflow::operators::vec::{Input, Map};
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use tributary::{Epoch, windowed_regression};
use tributary::{ModelLine, Record, RunContext, SetAside, WindowConfig, WindowPanes};

/// Features of the user-dataflow tests.
const D: usize = 2;
/// Sliding windows of two panes: every pane is in two windows.
const LENGTH: i64 = 20_000;
const SLIDE: i64 = 10_000;
/// Panes of event time; each pane's records come in two epochs (its two halves).
const PANES: u64 = 8;
const EPOCHS: Epoch = 2 * PANES;
/// Records of a key in one half pane.
const PER_HALF: usize = 12;
/// Bound on one user dataflow run (a hang fails the test).
const DATAFLOW_BOUND: Duration = Duration::from_secs(60);

/// What becomes of a key's pane updates of one epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    /// The key has no records at this epoch.
    Absent,
    /// Kept.
    Kept,
    /// Retracted `lag` epochs later by differential's `negate()` on the filtered pane
    /// collection, `delay`ed (capability and time move together).
    Delayed,
    /// Retracted `lag` epochs later by negative updates built by hand, at time `t + lag`
    /// in the message of time `t` (a collection's update later than its capability).
    ByHand,
}

/// A scenario: the keys, and the fate of each key's updates at each epoch.
type Plan = fn(&str, Epoch) -> Fate;

const KEYS: [&str; 5] = ["keep", "part", "gone", "phoenix", "back"];

/// `keep` is untouched; `part` loses the second half of every pane (built by hand);
/// `gone` loses everything (delayed negation); `phoenix` loses its first three panes
/// (delayed negation) and keeps its last three; `back` has panes 0–1 and 6–7 only, all
/// kept, so it returns after every pane of its first life was dropped.
fn corrections_plan(key: &str, epoch: Epoch) -> Fate {
    match key {
        "keep" => Fate::Kept,
        "part" if epoch % 2 == 1 => Fate::ByHand,
        "part" => Fate::Kept,
        "gone" => Fate::Delayed,
        "phoenix" if epoch < 6 => Fate::Delayed,
        "phoenix" if epoch >= 10 => Fate::Kept,
        "back" if !(4..12).contains(&epoch) => Fate::Kept,
        _ => Fate::Absent,
    }
}

/// The records of `key` at `epoch`: `PER_HALF` of them, at times in the epoch's half
/// pane `[T0 + 5 s·epoch, T0 + 5 s·(epoch + 1))`, in no order; y = b·[1, x] + noise with
/// coefficients of the key's own.
fn records(key_index: usize, key: &str, epoch: Epoch) -> Vec<Record> {
    let mut rng = SplitMix64::new(0x5EED ^ ((key_index as u64) << 20) ^ epoch);
    let beta = true_beta(17, key_index, D);
    let half = SLIDE / 2;
    let start = T0 + half * epoch as i64;
    (0..PER_HALF)
        .map(|_| {
            let x: Vec<f64> = (0..D).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let y = beta[0]
                + x.iter().zip(&beta[1..]).map(|(a, b)| a * b).sum::<f64>()
                + 0.1 * rng.normal();
            Record {
                time: start + rng.below(half as u64) as i64,
                key: key.into(),
                x,
                y,
            }
        })
        .collect()
}

/// Every record sent at `epoch`, in the order sent (record `i` goes to worker `i mod W`).
fn epoch_records(plan: Plan, epoch: Epoch) -> Vec<Record> {
    KEYS.iter()
        .enumerate()
        .filter(|(_, k)| plan(k, epoch) != Fate::Absent)
        .flat_map(|(i, k)| records(i, k, epoch))
        .collect()
}

/// The rows that remain once the corrections are applied, as the oracle reads them.
fn remaining_rows(plan: Plan) -> Vec<Row> {
    (0..EPOCHS)
        .flat_map(|e| epoch_records(plan, e))
        .filter(|r| {
            let epoch = ((r.time - T0) / (SLIDE / 2)) as Epoch;
            plan(&r.key, epoch) == Fate::Kept
        })
        .map(|r| Row {
            ts: r.time,
            key: r.key,
            x: r.x,
            y: r.y,
        })
        .collect()
}

/// What one user-dataflow run emitted: every model line, and the records set aside.
struct Emitted {
    models: Vec<ModelLine>,
    aside: Vec<SetAside>,
}

/// Runs the user dataflow on `workers` workers: records into `window_panes`, the pane
/// collection concatenated with the corrections `plan` asks for (`lag` epochs later), into
/// `windowed_regression`. Epochs are fed one at a time (each worker steps until the
/// models' frontier has passed it); then `lag` empty epochs (for the last corrections),
/// and the input closes. Fails the test if the run does not end within `DATAFLOW_BOUND`.
fn run_dataflow(workers: usize, lateness: i64, lag: Epoch, plan: Plan) -> Emitted {
    let models: Arc<Mutex<Vec<ModelLine>>> = Arc::default();
    let aside: Arc<Mutex<Vec<SetAside>>> = Arc::default();
    let (out, set_aside) = (Arc::clone(&models), Arc::clone(&aside));
    let config = WindowConfig::new(format!("sliding:{LENGTH}ms/{SLIDE}ms").parse().unwrap(), D)
        .lateness(lateness);
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let result = timely::execute(timely::Config::process(workers), move |worker| {
            let (index, peers) = (worker.index(), worker.peers());
            let mut input = InputHandleVec::new();
            let probe = ProbeHandle::new();
            let (out, set_aside) = (Arc::clone(&out), Arc::clone(&set_aside));
            let context = RunContext::default();
            worker.dataflow(|scope| {
                let panes = scope.input_from(&mut input).window_panes(&config);
                panes
                    .aside
                    .inspect(move |a| set_aside.lock().unwrap().push(a.clone()));
                let fate = move |key: &str, t: Epoch| plan(key, t);
                let delayed = panes
                    .panes
                    .inner
                    .clone()
                    .flat_map(move |(data, t, stats)| {
                        (fate(data.0.as_str(), t) == Fate::Delayed).then_some((data, t, stats))
                    })
                    .as_collection()
                    .delay(move |t| t + lag)
                    .negate();
                let by_hand = panes
                    .panes
                    .inner
                    .clone()
                    .flat_map(move |(data, t, mut stats)| {
                        (fate(data.0.as_str(), t) == Fate::ByHand).then(|| {
                            stats.negate();
                            (data, t + lag, stats)
                        })
                    })
                    .as_collection();
                let all = panes.panes.concat(delayed).concat(by_hand);
                let windows = windowed_regression(all, panes.control, &config, &context);
                windows
                    .models
                    .inspect(move |m| out.lock().unwrap().push(m.clone()))
                    .probe_with(&probe);
            });
            for epoch in 0..EPOCHS {
                for (i, r) in epoch_records(plan, epoch).into_iter().enumerate() {
                    if i % peers == index {
                        input.send(r);
                    }
                }
                input.advance_to(epoch + 1);
                // A correction at `t + lag` carried by a message of time `t` holds the
                // models' frontier at `t` until its own epoch is released: the models
                // are complete through `epoch - lag` here.
                while probe.less_than(&(epoch + 1).saturating_sub(lag)) {
                    worker.step();
                }
            }
            // The last corrections' epoch, held by the input until they have passed (its
            // end-of-input report comes at the last time its frontier held).
            input.advance_to(EPOCHS + lag);
            while probe.less_than(&(EPOCHS + lag)) {
                worker.step();
            }
            drop(input);
            while !probe.done() {
                worker.step();
            }
        });
        let _ = done.send(result.map(|_| ()));
    });
    match finished.recv_timeout(DATAFLOW_BOUND) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the dataflow failed: {e}"),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the dataflow on {workers} workers did not end within {DATAFLOW_BOUND:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a worker panicked"),
    }
    let models = std::mem::take(&mut *models.lock().unwrap());
    let aside = std::mem::take(&mut *aside.lock().unwrap());
    Emitted { models, aside }
}

/// The model lines as the engine's `--out` JSON lines, parsed by the tests' own parser.
fn emissions(models: &[ModelLine]) -> Vec<Emission> {
    let text: String = models
        .iter()
        .map(|m| serde_json::to_string(m).unwrap() + "\n")
        .collect();
    parse_emissions(&text)
}

/// Asserts every window was emitted final exactly once.
fn assert_final_once(ems: &[Emission], ctx: &str) {
    let mut finals: BTreeMap<&WinKey, usize> = BTreeMap::new();
    for e in ems.iter().filter(|e| e.model.is_final) {
        *finals.entry(&e.key).or_default() += 1;
    }
    let twice: Vec<_> = finals.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(twice.is_empty(), "{ctx}: windows final twice: {twice:?}");
}

/// Corrections before the windows close, lateness 0: each correction arrives at the epoch
/// that closes the first window of its pane, or before. On 1 and 2 workers (2: each key's
/// panes are updated from both workers and exchanged to one owner, and so are their
/// corrections, whose floating-point sums need not cancel exactly).
#[test]
fn negated_panes_leave_the_models_of_the_records_that_remain() {
    let want = oracle(
        &remaining_rows(corrections_plan),
        D,
        Win::Sliding(LENGTH, SLIDE),
        None,
    );
    // keep 9 windows, part 9, phoenix 4 (panes 5–7), back 3 + 3, gone none.
    assert_eq!(want.len(), 28, "the plan's windows: {:?}", want.keys());
    for workers in [1, 2] {
        let ctx = format!("corrections, -w {workers}");
        let run = run_dataflow(workers, 0, 1, corrections_plan);
        assert!(run.aside.is_empty(), "{ctx}: set aside: {:?}", run.aside);
        let ems = emissions(&run.models);
        let gone: Vec<_> = ems.iter().filter(|e| e.key.0 == "gone").collect();
        assert!(
            gone.is_empty(),
            "{ctx}: a key whose records are all retracted emitted models (window, n): {:?}",
            gone.iter().map(|e| (&e.key, e.model.n)).collect::<Vec<_>>()
        );
        assert!(
            ems.iter().all(|e| e.model.n > 0),
            "{ctx}: a model of no records"
        );
        assert!(ems.iter().all(|e| e.model.is_final), "{ctx}: lateness 0");
        assert_final_once(&ems, &ctx);
        assert_revisions(&ems, &ctx);
        assert_matches_oracle(&keep_final(&ems), &want, 28, &ctx);
    }
}

/// Corrections after a provisional model: lateness 10 s (a window is provisional one pane
/// after its end, final two panes after), corrections 3 epochs late, so `part`'s second
/// halves are in its windows' provisional models and out of their finals.
fn after_provisional_plan(key: &str, epoch: Epoch) -> Fate {
    match key {
        "keep" => Fate::Kept,
        "part" if epoch % 2 == 1 => Fate::ByHand,
        "part" => Fate::Kept,
        "back" if !(4..12).contains(&epoch) => Fate::Kept,
        _ => Fate::Absent,
    }
}

/// Corrections after the windows' provisional models, before their finals: each revised
/// window's final (one revision later) is the oracle's on the records that remain.
#[test]
fn corrections_after_a_provisional_model_revise_it_and_the_final_is_exact() {
    let want = oracle(
        &remaining_rows(after_provisional_plan),
        D,
        Win::Sliding(LENGTH, SLIDE),
        None,
    );
    // keep 9, part 9, back 6.
    assert_eq!(want.len(), 24, "the plan's windows: {:?}", want.keys());
    for workers in [1, 2] {
        let ctx = format!("corrections after provisional models, -w {workers}");
        let run = run_dataflow(workers, 10_000, 3, after_provisional_plan);
        assert!(run.aside.is_empty(), "{ctx}: set aside: {:?}", run.aside);
        let ems = emissions(&run.models);
        // The corrections really came after a provisional model: part's windows that hold
        // a second half retracted late were emitted with it, then revised.
        let revised = ems
            .iter()
            .filter(|e| e.key.0 == "part" && e.model.is_final && e.model.revision > 0)
            .count();
        assert!(
            ems.iter().all(|e| e.model.n > 0),
            "{ctx}: a model of no records"
        );
        assert_final_once(&ems, &ctx);
        assert_revisions(&ems, &ctx);
        assert_matches_oracle(&keep_final(&ems), &want, 24, &ctx);
        assert!(
            revised >= 7,
            "{ctx}: only {revised} of part's finals were revisions"
        );
    }
}

/// A key whose every record is retracted after its windows' provisional models: once the
/// last pane of a window has vanished (count zero) the window is found from the panes no
/// more, but a window emitted provisionally is still emitted `final` when the watermark
/// passes its end, here an empty one (n = 0, no coefficients), which supersedes the
/// provisional model that still showed the retracted records.
#[test]
fn a_provisional_window_whose_records_are_all_retracted_is_still_closed() {
    fn plan(key: &str, _epoch: Epoch) -> Fate {
        match key {
            "keep" => Fate::Kept,
            "gone" => Fate::Delayed,
            _ => Fate::Absent,
        }
    }
    let run = run_dataflow(1, 10_000, 3, plan);
    assert_emptied_windows_closed(&emissions(&run.models), "1 worker");
}

/// `gone`'s records were all retracted after some of its windows were emitted
/// provisionally: there were such models, each such window has a final too, and every
/// final of `gone` is empty (n = 0, no coefficients).
fn assert_emptied_windows_closed(ems: &[Emission], ctx: &str) {
    let gone: Vec<&Emission> = ems.iter().filter(|e| e.key.0 == "gone").collect();
    let windows = |is_final: bool| -> BTreeSet<&WinKey> {
        (gone.iter())
            .filter(|e| e.model.is_final == is_final)
            .map(|e| &e.key)
            .collect()
    };
    let provisional = windows(false);
    assert!(
        !provisional.is_empty(),
        "{ctx}: the scenario emits provisional models of gone"
    );
    let finals = windows(true);
    let open: Vec<_> = provisional.difference(&finals).collect();
    assert!(open.is_empty(), "{ctx}: provisional for ever: {open:?}");
    for e in gone.iter().filter(|e| e.model.is_final) {
        assert_eq!(
            e.model.n, 0,
            "{ctx}: the final of an emptied window is empty: {e:?}"
        );
        assert!(
            e.model.coef.is_none(),
            "{ctx}: no coefficients without records: {e:?}"
        );
    }
}

/// The same, when the last retraction lands well before the end of the input (the review's
/// case): `gone` has records only in epochs 0–2, all retracted three epochs later, while
/// `keep` runs on. When `gone`'s last pane vanishes, its provisional window `[0, 20 s)` is
/// not final yet and is found from no pane; it must still be due when the watermark passes
/// its end, and get its (empty) final then, not linger provisional for ever.
#[test]
fn a_provisional_window_emptied_before_its_final_time_is_still_closed() {
    fn plan(key: &str, epoch: Epoch) -> Fate {
        match key {
            "keep" => Fate::Kept,
            "gone" if epoch <= 2 => Fate::Delayed,
            _ => Fate::Absent,
        }
    }
    for workers in [1, 2] {
        let run = run_dataflow(workers, 10_000, 3, plan);
        let ems = emissions(&run.models);
        assert_emptied_windows_closed(&ems, &format!("{workers} workers"));
        assert_final_once(&ems, &format!("{workers} workers"));
    }
}

/// `tributary checkpoint inspect DIR`'s report (bounded in time).
fn inspect(checkpoint: &std::path::Path) -> String {
    let o = Reaped::spawn(
        Command::new(BIN)
            .args(["checkpoint", "inspect"])
            .arg(checkpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .finish(Duration::from_secs(30));
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// The final lines of an output file, sorted.
fn sorted_finals(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut finals: Vec<String> = complete_lines(&text)
        .lines()
        .filter(|l| l.contains("\"final\":true"))
        .map(str::to_owned)
        .collect();
    finals.sort();
    finals
}

/// 10 000 keys (each window of a key holds ~6 rows) on 2 workers under `--checkpoint`
/// every 20 ms, killed with SIGKILL once a checkpoint has committed and a third of the
/// final models are out, then resumed: the final lines, sorted, are byte for byte those of
/// an uninterrupted run, each window is final once, and 100 keys' models are the oracle's.
#[test]
fn ten_thousand_keys_killed_after_a_checkpoint_resume_to_the_uninterrupted_output() {
    let d = 1;
    let win = Win::Sliding(60_000, 20_000);
    let mut spec = GenSpec::new(400_000, 10_000, d, 29);
    spec.step = 1;
    spec.disorder = 200;
    let rows = generate(&spec);
    let dir = TempDir::new("keys10k_kill9");
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let mut cfg = RunCfg::csv(&csv, d, win);
    cfg.lateness = "1s".into();
    cfg.workers = 2;
    cfg.source = format!("csv:{},block=64KiB", csv.display());

    // The uninterrupted run.
    let reference = dir.path("reference.jsonl");
    let started = Instant::now();
    let run = run_engine(&dir, &cfg.args(&reference));
    run.assert_success();
    eprintln!("uninterrupted: {:?}", started.elapsed());
    let want_lines = sorted_finals(&reference);
    let keys: BTreeSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), 10_000);
    assert!(
        want_lines.len() > 10 * keys.len(),
        "{} finals",
        want_lines.len()
    );

    // Under --checkpoint, killed once a commit is in the store and a third is out.
    let out = dir.path("out.jsonl");
    let ckpt = dir.path("ckpt");
    let mut killed_cfg = cfg.clone();
    killed_cfg.extra = vec![
        "--checkpoint".into(),
        ckpt.display().to_string(),
        "--checkpoint-every".into(),
        "20ms".into(),
    ];
    let args = killed_cfg.args(&out);
    let finals_out = || {
        let text = std::fs::read(&out).unwrap_or_default();
        text.windows(12).filter(|w| w == b"\"final\":true").count()
    };
    // Killed once a fifth of the finals are out and `checkpoint inspect` shows a commit
    // (polled: never a sleep as the check). A run that ends first (the machine is fast,
    // or busy polling) is started again from nothing, at most 3 times.
    let mut killed = false;
    for attempt in 1..=3 {
        let _ = std::fs::remove_dir_all(&ckpt);
        let _ = std::fs::remove_file(&out);
        let mut child = Reaped::spawn(
            Command::new(BIN)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path("killed.stderr")).unwrap()),
        );
        killed = child.kill_when(Duration::from_secs(120), || {
            finals_out() >= want_lines.len() / 5 && inspect(&ckpt).contains("newest complete epoch")
        });
        if killed {
            break;
        }
        eprintln!("attempt {attempt}: the run ended before it could be killed");
    }
    assert!(killed, "3 runs ended before they could be killed");
    let at_kill = finals_out();
    assert!(
        at_kill < want_lines.len(),
        "killed after every final was out ({at_kill})"
    );
    // The store holds the panes of thousands of keys: folded (base) or not yet (deltas).
    let report = inspect(&ckpt);
    let count_after = |label: &str| -> usize {
        report
            .split(label)
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in {report}"))
    };
    let entries = count_after("base: ") + count_after("deltas not yet folded: ");
    assert!(
        entries >= 10_000,
        "{entries} pane entries in the store: {report}"
    );
    eprintln!(
        "killed at {at_kill} of {} finals; {report}",
        want_lines.len()
    );

    // Resumed to its end.
    let run = run_engine(&dir, &args);
    run.assert_success();
    assert!(
        run.stderr.contains("resuming from checkpoint"),
        "{}",
        run.stderr
    );
    assert_written_once(&out);
    let got_lines = sorted_finals(&out);
    assert_eq!(got_lines.len(), want_lines.len(), "numbers of final lines");
    let differ: Vec<_> = got_lines
        .iter()
        .zip(&want_lines)
        .filter(|(a, b)| a != b)
        .take(3)
        .collect();
    assert!(
        differ.is_empty(),
        "final lines differ (first 3): {differ:?}"
    );

    // Spot check: 100 keys' windows against the oracle.
    let (read_back, bad) = read_csv_oracle(&csv, d);
    assert_eq!((read_back.len(), bad), (rows.len(), 0));
    let chosen: BTreeSet<String> = (0..100).map(|i| key_name(i * 97)).collect();
    let sample: Vec<Row> = read_back
        .into_iter()
        .filter(|r| chosen.contains(&r.key))
        .collect();
    let want = oracle(&sample, d, win, None);
    let got: BTreeMap<WinKey, Model> = read_models(&out)
        .into_iter()
        .filter(|(k, _)| chosen.contains(&k.0))
        .collect();
    assert!(want.len() > 100 * 15, "{} oracle windows", want.len());
    assert_matches_oracle(&got, &want, want.len(), "10 000 keys, killed and resumed");
}

/// Session windows at 2 000 keys (a key's record every ~2 s, gap 3 s: tens of thousands
/// of sessions, each key's panes merged, closed and dropped many times over), on 1 and 2
/// workers: every session's model is the oracle's, each final once.
#[test]
fn sessions_at_many_keys_match_the_oracle() {
    let d = 1;
    let win = Win::Session(3_000);
    let mut spec = GenSpec::new(100_000, 2_000, d, 31);
    spec.step = 1;
    let rows = generate(&spec);
    let dir = TempDir::new("sessions_many_keys");
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let (read_back, bad) = read_csv_oracle(&csv, d);
    assert_eq!((read_back.len(), bad), (rows.len(), 0));
    let want = oracle(&read_back, d, win, None);
    assert!(want.len() > 20_000, "{} sessions", want.len());
    for workers in [1, 2] {
        let mut cfg = RunCfg::csv(&csv, d, win);
        cfg.workers = workers;
        cfg.source = format!("csv:{},block={}", csv.display(), block_for(&csv, workers));
        let out = format!("out-w{workers}.jsonl");
        let (run, _) = run_ok(&dir, &cfg, &out);
        let ctx = format!("sessions at 2 000 keys, -w {workers} ({})", run.cmdline);
        assert_eq!(run.summary("late"), Some(0), "{ctx}: {}", run.stderr);
        assert_written_once(&dir.path(&out));
        assert_out_matches(&dir.path(&out), &want, want.len(), &ctx);
    }
}
