//! The `bench` subcommands run the real engine on tiny sizes and print the documented
//! JSON fields (no timing assertions: these machines are noisy).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tributary");

fn json(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_incremental_reports_latencies_and_ratios() {
    let rows = json(&[
        "bench",
        "incremental",
        "--records",
        "3000",
        "--batch",
        "1,10",
        "--json",
    ]);
    assert_eq!(rows.len(), 3, "absorb ×2 and correct: {rows:?}");
    for r in &rows {
        for field in [
            "window_records",
            "batch",
            "incremental_p50_us",
            "incremental_p99_us",
            "recompute_ms",
            "ratio",
        ] {
            assert!(r[field].is_number(), "{field} missing in {r}");
        }
        assert_eq!(r["window_records"], 3000);
        assert!(
            r["incremental_p50_us"].as_f64().unwrap() <= r["incremental_p99_us"].as_f64().unwrap()
        );
    }
}

#[test]
fn bench_throughput_runs_the_engine() {
    let dir = std::env::temp_dir().join(format!("tributary-bench-cli-{}", std::process::id()));
    let rows = json(&[
        "bench",
        "throughput",
        "--rows",
        "50000",
        "--keys",
        "4",
        "--features",
        "2",
        "--window",
        "tumbling:10s",
        "--workers",
        "1,2",
        "--no-cluster",
        "--json",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        rows.len(),
        6,
        "gen, csv and csv9 on 1 and 2 workers: {rows:?}"
    );
    let sources: Vec<&str> = rows.iter().map(|r| r["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["gen", "gen", "csv", "csv", "csv9", "csv9"]);
    for r in &rows {
        assert_eq!(r["records"], 50000, "{r}");
        // 50 000 records 1 ms apart: 5 ten-second windows of each of 4 keys.
        assert_eq!(r["windows_final"], 20, "{r}");
        assert!(r["records_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["peak_rss_mib"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn bench_memory_samples_a_whole_run() {
    let out = Command::new(BIN)
        .args(["bench", "memory", "--rows", "300000", "--keys", "4"])
        .args([
            "--features",
            "2",
            "--window",
            "tumbling:10s",
            "--every-ms",
            "5",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["records"], 300_000, "{run}");
    // One record per ms from an aligned start, each up to 500 ms late (`disorder=500`):
    // 300.5 s of event time, so 31 windows of 10 s, for each of 4 keys.
    assert_eq!(run["windows_final"], 4 * 31, "{run}");
    for field in ["seconds", "records_per_s", "peak_rss_mib"] {
        assert!(run[field].as_f64().unwrap() > 0.0, "{field} in {run}");
    }
    assert!(!run["rss_mib"].as_array().unwrap().is_empty(), "{run}");
}
