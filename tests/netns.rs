//! A cluster of hosts, simulated with Linux network namespaces: each process of a `-n 3`
//! cluster runs in a namespace of its own (its own network stack and address in
//! 198.18.0.0/24, on a bridge in a fourth namespace), with a hostfile of those addresses
//! (not loopback) and a followed CSV file on a directory all of them see, so the run lasts
//! until something breaks it.
//!
//! * A network partition: one host's port on the bridge is taken down. Every process must
//!   stop within the bound of `--peer-timeout` (10 s here; asserted under 30 s), with exit
//!   75 and a line naming the peer it lost; the partitioned one and at least one of the
//!   others must call theirs unreachable. Without keep-alive and `TCP_USER_TIMEOUT` they
//!   all stay silent for about 15 minutes.
//! * `kill -9` of one host's process: the others stop naming it.
//!
//! Needs root and `ip` (iproute2); skipped with a message otherwise. Every namespace and
//! child process is removed by a guard even when a test fails; the only traffic is
//! between the namespaces' own addresses.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tributary");

/// Hosts (processes) of the cluster.
const HOSTS: usize = 3;

/// The cluster port on every host (each host has its own network stack).
const PORT: u16 = 7101;

/// `--peer-timeout` of the processes.
const PEER_TIMEOUT_S: u64 = 10;

/// Longest a process may take to stop after a partition or a peer's death.
const STOP_BOUND: Duration = Duration::from_secs(30);

/// Longest wait for the cluster to start producing models.
const START_BOUND: Duration = Duration::from_secs(60);

fn address(i: usize) -> String {
    format!("198.18.0.{}", i + 1)
}

/// Runs `ip ARGS`; an error names the command and its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces of one test (hosts and a bridge) and the processes in them: all
/// killed and deleted on drop.
struct Net {
    hosts: Vec<String>,
    bridge: String,
    children: Vec<Option<Child>>,
}

impl Net {
    /// Creates the namespaces, or says why it cannot (then the test is skipped).
    fn create(tag: &str) -> Result<Net, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let id = std::process::id();
        let mut net = Net {
            hosts: Vec::new(),
            bridge: format!("trb{id}{tag}br"),
            children: Vec::new(),
        };
        // Registered before each `add`, so the guard deletes whatever was created.
        let bridge = net.bridge.clone();
        ip(&["netns", "add", &bridge])?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 0..HOSTS {
            let host = format!("trb{id}{tag}h{i}");
            net.hosts.push(host.clone());
            ip(&["netns", "add", &host])?;
            let port = format!("p{i}");
            // Both ends are created inside the namespaces: nothing in the caller's.
            ip(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &host,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", &port, "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{}/24", address(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// Starts process `i` of the cluster in host `i`'s namespace.
    fn start(&mut self, i: usize, args: &[String], dir: &TempDir) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i], BIN])
            .args(args)
            .args(["-p", &i.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path(&format!("p{i}.stdout"))).unwrap())
            .stderr(std::fs::File::create(dir.path(&format!("p{i}.stderr"))).unwrap())
            .spawn()
            .unwrap();
        self.children.push(Some(child));
    }

    /// Whether process `i` is still running.
    fn running(&mut self, i: usize) -> bool {
        self.children[i]
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Takes host `i`'s port on the bridge down: its packets go nowhere from now on.
    fn partition(&self, i: usize) {
        ip(&["-n", &self.bridge, "link", "set", &format!("p{i}"), "down"]).unwrap();
    }

    /// `kill -9` of process `i`.
    fn kill(&mut self, i: usize) {
        let child = self.children[i].as_mut().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits (up to `bound` from `since`) for process `i` to exit: its status and when.
    fn wait(
        &mut self,
        i: usize,
        since: Instant,
        bound: Duration,
        dir: &TempDir,
    ) -> (ExitStatus, Duration) {
        let child = self.children[i].as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, since.elapsed());
            }
            assert!(
                since.elapsed() < bound,
                "process {i} still running {bound:?} later:\n{}",
                stderr(dir, i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.hosts.iter().chain([&self.bridge]) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}

fn stderr(dir: &TempDir, i: usize) -> String {
    std::fs::read_to_string(dir.path(&format!("p{i}.stderr"))).unwrap_or_default()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Namespaces for the test, or `None` (with a message) where they cannot be made.
fn net_or_skip(tag: &str) -> Option<Net> {
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIPPED: no `ip` command (iproute2): network namespace tests need it");
        return None;
    }
    match Net::create(tag) {
        Ok(net) => Some(net),
        Err(e) => {
            eprintln!("SKIPPED: cannot create network namespaces ({e}): these tests need root");
            None
        }
    }
}

/// Starts the `-n 3` cluster on a followed CSV file in `dir` and waits until process 0
/// has written models (so every connection is up and data has crossed them).
fn start_cluster(net: &mut Net, dir: &TempDir) {
    let d = 2;
    let rows = generate(&GenSpec::new(20_000, 4, d, 18));
    let csv = dir.path("in.csv");
    write_csv(&csv, &rows, d);
    let hostfile = dir.path("hosts");
    std::fs::write(
        &hostfile,
        (0..HOSTS)
            .map(|i| format!("{}:{PORT}\n", address(i)))
            .collect::<String>(),
    )
    .unwrap();
    let out = dir.path("models.jsonl");
    let args: Vec<String> = [
        "run",
        "-q",
        "--source",
        &format!("csv:{},follow", csv.display()),
        "--features",
        &feature_list(d),
        "--window",
        &Win::Tumbling(10_000).arg(),
        "--lateness",
        "1s",
        "--out",
        &out.display().to_string(),
        "-n",
        &HOSTS.to_string(),
        "-h",
        &hostfile.display().to_string(),
        "--peer-timeout",
        &format!("{PEER_TIMEOUT_S}s"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..HOSTS {
        net.start(i, &args, dir);
    }
    let started = Instant::now();
    while lines(&out) == 0 {
        for i in 0..HOSTS {
            assert!(net.running(i), "process {i} ended:\n{}", stderr(dir, i));
        }
        assert!(
            started.elapsed() < START_BOUND,
            "no models within {START_BOUND:?}:\n{}",
            (0..HOSTS)
                .map(|i| stderr(dir, i))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..HOSTS {
        assert!(net.running(i), "process {i} ended:\n{}", stderr(dir, i));
    }
}

/// The line by which process `i` named the peer it lost.
fn lost_line(dir: &TempDir, i: usize) -> String {
    let text = stderr(dir, i);
    text.lines()
        .find(|l| l.contains(&format!("error: cluster: process {i} lost process")))
        .unwrap_or_else(|| panic!("process {i} did not name the peer it lost:\n{text}"))
        .to_owned()
}

#[test]
fn a_partitioned_host_is_detected_on_every_side() {
    let Some(mut net) = net_or_skip("a") else {
        return;
    };
    let dir = TempDir::new("netns-partition");
    start_cluster(&mut net, &dir);
    let cut = 1;
    net.partition(cut);
    let at = Instant::now();
    for i in 0..HOSTS {
        let (status, after) = net.wait(i, at, STOP_BOUND, &dir);
        eprintln!("process {i} stopped {after:.1?} after the partition: {status}");
        assert_eq!(status.code(), Some(75), "process {i}:\n{}", stderr(&dir, i));
        assert!(
            stderr(&dir, i).contains("lost the connection to another process of the cluster"),
            "process {i}:\n{}",
            stderr(&dir, i)
        );
    }
    // The partitioned host cannot hear anyone: whichever peer it gave up first is named
    // unreachable, by address.
    let line = lost_line(&dir, cut);
    assert!(line.contains("unreachable"), "{line}");
    assert!(
        (0..HOSTS)
            .any(|j| j != cut && line.contains(&format!("process {j} at {}:{PORT}", address(j)))),
        "{line}"
    );
    // The others: at least one gave up on the partitioned host (the other may instead
    // have seen that one's connection close when it stopped).
    let others: Vec<String> = (0..HOSTS)
        .filter(|&i| i != cut)
        .map(|i| lost_line(&dir, i))
        .collect();
    let named = format!("lost process {cut} at {}:{PORT}", address(cut));
    assert!(
        others
            .iter()
            .any(|l| l.contains(&named) && l.contains("unreachable")),
        "nobody named process {cut} unreachable: {others:#?}"
    );
    assert!(
        others
            .iter()
            .all(|l| l.contains("unreachable") || l.contains("connection closed")),
        "{others:#?}"
    );
}

#[test]
fn a_killed_host_process_is_named_by_the_others() {
    let Some(mut net) = net_or_skip("k") else {
        return;
    };
    let dir = TempDir::new("netns-kill");
    start_cluster(&mut net, &dir);
    let victim = 2;
    net.kill(victim);
    let at = Instant::now();
    for i in (0..HOSTS).filter(|&i| i != victim) {
        let (status, after) = net.wait(i, at, Duration::from_secs(10), &dir);
        eprintln!("process {i} stopped {after:.1?} after the kill: {status}");
        assert_eq!(status.code(), Some(75), "process {i}:\n{}", stderr(&dir, i));
    }
    // Each survivor named the dead one, or the other survivor whose stop it saw first.
    let named = format!("lost process {victim} at {}:{PORT}", address(victim));
    let said: Vec<String> = (0..HOSTS)
        .filter(|&i| i != victim)
        .map(|i| lost_line(&dir, i))
        .collect();
    assert!(said.iter().any(|l| l.contains(&named)), "{said:#?}");
    assert!(
        said.iter().all(|l| l.contains("connection closed")),
        "{said:#?}"
    );
}
