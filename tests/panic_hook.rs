//! A run's panic handling lasts as long as the run (`quarantine::install` and its guard):
//! during the run a worker's panic goes to the run's fatal-error hook, marks the run failed
//! and is recorded against the batch being read; after it, a panic goes to the hook the
//! process had before, and a second run starts with its own state. Its own test binary,
//! since the process's panic hook is process-wide; and the scenario runs in a child
//! process of it, which ends with `process::exit`: the run's hook holds a panicked thread
//! for good, inside the panic machinery, where the test harness's own exit would wait.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::TempDir;
use tributary::{Fatal, quarantine};

/// The fatal errors the run's hook was handed.
static HANDED: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

/// The run's hook: notes the error, then holds the panicking thread for good (a hook must
/// not return; the `tributary` command's ends the process instead).
fn note_and_hold(fatal: Fatal) -> ! {
    HANDED.lock().unwrap().push((fatal.code, fatal.message));
    loop {
        std::thread::park();
    }
}

fn handed() -> Vec<(i32, String)> {
    HANDED.lock().unwrap().clone()
}

/// Set in the child process that runs [`scenario`].
const CHILD: &str = "TRIBUTARY_PANIC_HOOK_CHILD";

#[test]
fn a_runs_panic_handling_ends_with_the_run() {
    if std::env::var_os(CHILD).is_some() {
        scenario();
        std::process::exit(0);
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_runs_panic_handling_ends_with_the_run",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the scenario failed or hung ({status:?}):\n{said}"
    );
}

/// The run, a worker's panic in it, its end, a panic after it, and a second run.
fn scenario() {
    let dir = TempDir::new("panic-hook");
    let guard = quarantine::install(Some(&dir.0), 0, None, note_and_hold).unwrap();
    assert_eq!(quarantine::failure(), None);
    assert!(!quarantine::begin_batch(7), "nothing quarantined yet");

    // A worker panics while batch 7 is being read: the run's hook gets exit 70.
    std::thread::Builder::new()
        .name("timely:work-0".into())
        .spawn(|| panic!("boom in batch 7"))
        .unwrap();
    let started = Instant::now();
    while handed().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the hook was not called"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, message) = handed()[0].clone();
    assert_eq!(code, quarantine::EXIT_PANIC);
    assert!(message.contains("boom in batch 7"), "{message}");
    assert!(
        quarantine::failure().is_some_and(|why| why.contains("boom in batch 7")),
        "{:?}",
        quarantine::failure()
    );
    let crashes = std::fs::read_to_string(dir.path("crashes-p0.json")).unwrap();
    assert!(crashes.contains("\"batch\": 7"), "{crashes}");

    // The run ends: the failure is the run's, and a panic now is an ordinary one.
    drop(guard);
    assert_eq!(quarantine::failure(), None);
    let after = std::thread::Builder::new()
        .name("timely:work-1".into())
        .spawn(|| panic!("after the run"))
        .unwrap()
        .join();
    assert!(after.is_err(), "the thread unwound as without a run");
    assert_eq!(
        handed().len(),
        1,
        "the run's hook is not called after the run"
    );

    // A second run on the same directory has its own state: batch 7 crashed once, which is
    // not enough to set it aside, and nothing has failed yet.
    let again = quarantine::install(Some(&dir.0), 0, None, note_and_hold).unwrap();
    assert_eq!(quarantine::failure(), None);
    assert!(!quarantine::begin_batch(7));
    assert_eq!(quarantine::batches_set_aside(), 0);
    drop(again);
}
