//! Heartbeats and straggler visibility: a 2-process `launch` on loopback with `--serve` on
//! process 0; `/metrics` of process 0 lists both processes with a recent heartbeat and a
//! non-zero records/s, and the progress line names both. Then process 1 is stopped
//! (SIGSTOP): its age grows on process 0 while process 0's stays fresh. Every process is
//! continued and killed at the end, failed test or not; every wait has a deadline.

mod common;

use common::http::{agent, http_get};
use common::*;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The launcher and its children: continued (a stopped process ignores SIGTERM) and
/// killed on drop (the launcher is a [`Reaped`] told of its children).
struct Cluster {
    launcher: Reaped,
    pids: Vec<i32>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Cluster {
    fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (at most `limit`) until `find` finds something in the launcher's stderr.
    fn wait_line<T>(&mut self, what: &str, limit: Duration, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = self.lines.lock().unwrap().iter().find_map(|l| find(l)) {
                return found;
            }
            if Instant::now() > deadline || self.launcher.exited().is_some() {
                panic!("no {what} within {limit:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every `tributary_process_*{process="P"}` value of a scrape, as (P, value).
fn per_process(text: &str, family: &str) -> Vec<(usize, f64)> {
    let prefix = format!("tributary_{family}{{process=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (process, value) = rest.split_once("\"} ")?;
            Some((process.parse().ok()?, value.parse().ok()?))
        })
        .collect()
}

#[test]
fn process_0_shows_every_process_and_a_stopped_one_ages() {
    let dir = TempDir::new("heartbeats");
    let out = dir.path("out.jsonl");
    let mut launcher = Reaped::spawn(
        Command::new(BIN)
            .args(["launch", "-n", "2", "-w", "1", "--grace", "2s", "--"])
            .args([
                "run",
                "--source",
                "gen:rows=500000000,keys=8,features=3,seed=3",
                "--window",
                "sliding:20s/5s",
                "--serve",
                "127.0.0.1:0",
                "--progress",
                "--out",
            ])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let lines = lines_in_background(launcher.stderr.take().unwrap());
    let mut cluster = Cluster {
        launcher,
        pids: Vec::new(),
        lines,
    };
    for i in 0..2 {
        let prefix = format!("launch: process {i} pid ");
        let pid = cluster.wait_line("child pid", Duration::from_secs(30), |l| {
            l.strip_prefix(&prefix)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        cluster.launcher.also_kill(pid as u32);
        cluster.pids.push(pid);
    }
    let url = cluster.wait_line("serving line", Duration::from_secs(60), |l| {
        let at = l.find("serving on http://")?;
        Some(l[at + "serving on ".len()..].trim().to_owned())
    });
    let agent = agent();
    let scrape = || http_get(&agent, &format!("{url}/metrics")).map(|r| r.body);

    // Both processes heard, recently, each reading records.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = scrape().unwrap_or_default();
        let ages = per_process(&text, "process_last_report_age_seconds");
        let rates = per_process(&text, "process_records_per_second");
        let fresh = ages.len() == 2 && ages.iter().all(|(_, a)| *a < 2.0);
        let moving = rates.len() == 2 && rates.iter().all(|(_, r)| *r > 0.0);
        if fresh && moving {
            break text;
        }
        if Instant::now() > deadline {
            panic!(
                "/metrics never listed 2 fresh, moving processes: {ages:?} {rates:?}\n{text}\n{}",
                cluster.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let records = per_process(&text, "process_records");
    assert_eq!(records.len(), 2, "{text}");
    assert!(records.iter().all(|(_, r)| *r > 0.0), "{records:?}");

    // The progress line of process 0 names both.
    let progress = cluster.wait_line(
        "progress line with processes",
        Duration::from_secs(10),
        |l| {
            (l.starts_with("[p0] progress: ")
                && l.contains("processes=[p0 ")
                && l.contains(", p1 "))
            .then(|| l.to_owned())
        },
    );
    assert!(progress.contains("/s]"), "{progress}");

    // Process 1 stopped: process 0 sees its age grow past 3 s while its own stays fresh.
    let stopped = Command::new("kill")
        .args(["-STOP", &cluster.pids[1].to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let since = Instant::now();
    let deadline = since + Duration::from_secs(20);
    let (age0, age1) = loop {
        let text = scrape().unwrap_or_default();
        let ages = per_process(&text, "process_last_report_age_seconds");
        let age = |p| ages.iter().find(|(q, _)| *q == p).map(|(_, a)| *a);
        if let (Some(a0), Some(a1)) = (age(0), age(1))
            && a1 >= 3.0
        {
            break (a0, a1);
        }
        if Instant::now() > deadline {
            panic!("process 1's age did not grow past 3 s while stopped: {ages:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        age0 < 2.0,
        "process 0's own age grew too: {age0} (process 1: {age1})"
    );
    assert!(
        age1 <= since.elapsed().as_secs_f64() + 1.0,
        "process 1's age {age1} exceeds the time it was stopped"
    );
    // Once its heartbeats have left the 5 s rate window, its rate reads 0.
    let progress = cluster.wait_line(
        "progress line with a stale p1",
        Duration::from_secs(15),
        |l| {
            let part = l.strip_prefix("[p0] progress: ")?.split("p1 ").nth(1)?;
            let age: f64 = part.split('s').next()?.parse().ok()?;
            (age >= 6.0).then(|| l.to_owned())
        },
    );
    assert!(
        progress.contains(" 0/s]"),
        "a stopped process reads nothing: {progress}"
    );
}
