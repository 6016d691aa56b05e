//! `tributary launch`: a cluster of local processes of this binary, on loopback.
//!
//! `tributary launch -n P -w W -- run SPEC.toml …` writes a timely hostfile naming
//! `127.0.0.1:port` for each of the `P` processes, starts `P` copies of the running binary
//! with the forwarded arguments plus `-n P -p i -w W -h HOSTFILE`, and supervises them:
//!
//! * **Files.** The hostfile, and a random cluster token passed to every process with
//!   `--cluster-token-file` (unless the command names one), are written to a new directory
//!   of mode 0700 with an unguessable name (`mkdtemp`), as new files of mode 0600
//!   (`create_new`: nothing planted there is followed); it is removed at exit.
//! * **Output.** Every child's stderr line is written to the launcher's stderr prefixed
//!   with `[p<i>] `. Stdout lines are passed through *unprefixed* (whole lines, never
//!   interleaved mid-line), because process 0's stdout carries the model JSON lines when
//!   `--out -` (the default) and users pipe it into other tools; `--prefix-stdout`
//!   prefixes them too. Timely's networking prints its connection messages
//!   (`awaiting connections (at 0/1)`) on stdout; the launcher moves those to stderr.
//!   The launcher's own messages start with `launch: `.
//! * **Failure.** When a child fails (non-zero exit or killed by a signal), the launcher
//!   stops the others (SIGTERM, then SIGKILL after `--grace`), waits for every one, names
//!   the process that failed and how, and exits non-zero. Timely has no failover: a
//!   cluster that lost a process cannot go on.
//! * **Signals.** Ctrl-C (SIGINT), SIGTERM and SIGHUP stop every child the same way, and
//!   the launcher exits non-zero. Children run in their own process group, so a Ctrl-C on
//!   the terminal reaches the launcher only, and they are started with a parent-death
//!   signal (SIGKILL), so even a launcher killed with `kill -9` leaves no process behind.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Args;

use tributary::window::parse_duration;

/// `tributary launch` flags.
#[derive(Clone, Debug, Args)]
pub struct LaunchArgs {
    /// Number of processes to start.
    #[arg(short = 'n', long = "processes")]
    pub processes: usize,
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    pub workers: usize,
    /// Port of process 0; process i listens on base + i. Default: free loopback ports
    /// found by binding port 0.
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Prefix stdout lines with `[p<i>] ` too (by default only stderr lines are, so that
    /// model JSON lines on stdout stay pipeable).
    #[arg(long)]
    pub prefix_stdout: bool,
    /// How long stopped processes get to exit after SIGTERM before SIGKILL.
    #[arg(long, default_value = "5s")]
    pub grace: String,
    /// The command every process runs, after `--`: `run [SPEC.toml] [flags]` (without
    /// `-n -p -w -h`, which the launcher adds).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Flags the launcher sets itself and refuses to forward.
const CLUSTER_FLAGS: &[(&str, &str)] = &[
    ("-n", "--processes"),
    ("-p", "--process"),
    ("-w", "--workers"),
    ("-h", "--hostfile"),
];

impl LaunchArgs {
    /// Checks the settings; returns the grace period.
    fn validate(&self) -> Result<Duration, String> {
        if self.processes == 0 {
            return Err("launch: -n must be at least 1".into());
        }
        if self.workers == 0 {
            return Err("launch: -w must be at least 1".into());
        }
        match self.command.first().map(String::as_str) {
            Some("run") => {}
            Some(other) => {
                return Err(format!(
                    "launch: the command after -- must be `run ...`, not {other:?}"
                ));
            }
            None => return Err("launch: give the command after --, e.g. -- run SPEC.toml".into()),
        }
        for arg in &self.command[1..] {
            for (short, long) in CLUSTER_FLAGS {
                let clash = arg == short
                    || arg == long
                    || arg.starts_with(&format!("{long}="))
                    || (arg.starts_with(short) && !arg.starts_with("--") && arg.len() > 2);
                if clash {
                    return Err(format!(
                        "launch: {arg:?} is the launcher's to set: give -n and -w to launch, \
                         not to the forwarded command (it adds -n -p -w -h itself)"
                    ));
                }
            }
        }
        if let Some(base) = self.base_port
            && (base == 0 || base as usize + self.processes - 1 > u16::MAX as usize)
        {
            return Err(format!(
                "launch: --base-port {base} leaves no room for {} ports",
                self.processes
            ));
        }
        Ok(Duration::from_millis(
            parse_duration(&self.grace).map_err(|e| format!("launch: --grace: {e}"))? as u64,
        ))
    }
}

/// The signal that asked the launcher to stop (0: none yet).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Routes SIGINT, SIGTERM and SIGHUP to [`STOP_SIGNAL`].
fn install_signal_handlers() -> Result<(), String> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic; the sigaction struct is fully
        // initialised (zeroed, then the fields set).
        let ok = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut()) == 0
        };
        if !ok {
            return Err(format!(
                "launch: cannot install a handler for {}: {}",
                signal_name(signal),
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// A readable name of a signal number.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    format!("signal {signal} ({name})")
}

/// How long the launcher waits, after a process exits for a lost peer, for the failure
/// that caused it before it stops the others itself.
const PEER_LOST_GRACE: Duration = Duration::from_secs(2);

/// How a process ended, in words: `exited with code 2`, `was killed by signal 9 (SIGKILL)`.
pub fn describe_exit(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by {}", signal_name(signal)),
        _ => format!("ended with {status}"),
    }
}

/// Loopback ports for `n` processes: `base..base+n`, or free ones found by binding port 0
/// (all bound at once, so they are distinct; released just before the children bind them).
fn pick_ports(n: usize, base: Option<u16>) -> Result<Vec<u16>, String> {
    if let Some(base) = base {
        return Ok((0..n).map(|i| base + i as u16).collect());
    }
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("launch: cannot find a free loopback port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("launch: {e}"))
}

/// One child and what the launcher knows of it.
struct Proc {
    child: Child,
    pid: i32,
    status: Option<ExitStatus>,
    /// The launcher asked it to stop (so its exit is not a failure of its own).
    stopped: bool,
    forwarders: Vec<JoinHandle<()>>,
}

/// The children, stopped and reaped however the launcher leaves (error, panic).
struct Cluster {
    procs: Vec<Proc>,
    dir: PathBuf,
}

impl Cluster {
    /// Sends `signal` to every child not yet reaped. A child that exited but was not
    /// reaped is a zombie, whose pid cannot be reused: the signal never hits a stranger.
    fn signal_running(&mut self, signal: i32) {
        for p in self.procs.iter_mut().filter(|p| p.status.is_none()) {
            p.stopped = true;
            // SAFETY: plain syscall on a pid this process has not reaped.
            unsafe {
                libc::kill(p.pid, signal);
            }
        }
    }

    fn running(&self) -> usize {
        self.procs.iter().filter(|p| p.status.is_none()).count()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running() > 0 {
            self.signal_running(libc::SIGKILL);
        }
        for p in &mut self.procs {
            if p.status.is_none() {
                p.status = p.child.wait().ok();
            }
            for f in p.forwarders.drain(..) {
                let _ = f.join();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a line is one of the messages timely's networking prints on stdout while the
/// processes connect (`awaiting connections (at 0/1)`, `worker 1:\terror connecting to
/// worker 0: …; retrying`).
fn is_timely_chatter(line: &[u8]) -> bool {
    if line.starts_with(b"awaiting connections (at ") {
        return true;
    }
    let Some(rest) = line.strip_prefix(b"worker ") else {
        return false;
    };
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    digits > 0 && rest[digits..].starts_with(b":\terror connecting to worker ")
}

/// Copies `source` to stdout or stderr line by line, each line prefixed with `prefix`.
/// Lines are written whole (under the stream's lock), in batches of what is already
/// buffered. Stops at end of input, or when the destination is closed (then the child's
/// next write fails, as it would without the launcher in between). On stdout, timely's
/// connection messages are moved to stderr, with `stderr_prefix`.
fn forward(source: impl Read, prefix: Vec<u8>, stderr_prefix: Vec<u8>, to_stdout: bool) {
    let mut reader = BufReader::with_capacity(1 << 16, source);
    let mut line = Vec::new();
    let mut out = Vec::with_capacity(1 << 16);
    let write = |out: &mut Vec<u8>| -> io::Result<()> {
        let result = if to_stdout {
            let mut s = io::stdout().lock();
            s.write_all(out).and_then(|()| s.flush())
        } else {
            let mut s = io::stderr().lock();
            s.write_all(out).and_then(|()| s.flush())
        };
        out.clear();
        result
    };
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if to_stdout && is_timely_chatter(&line) {
            // Timely's connection messages go to stdout; keep stdout for the models.
            let mut e = io::stderr().lock();
            let _ = e
                .write_all(&stderr_prefix)
                .and_then(|()| e.write_all(&line));
            if !line.ends_with(b"\n") {
                let _ = e.write_all(b"\n");
            }
            continue;
        }
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
        // Write now unless another complete line is already waiting.
        if (!reader.buffer().contains(&b'\n') || out.len() >= 1 << 16) && write(&mut out).is_err() {
            return;
        }
    }
    if !out.is_empty() {
        let _ = write(&mut out);
    }
}

/// A new directory in `parent` that only this user can enter (mode 0700), with a name no
/// one can guess (`mkdtemp`): `tributary-launch-XXXXXX`. Nothing planted in `parent`
/// (a symlink at a predictable name) is followed or reused.
fn private_dir(parent: &Path) -> Result<PathBuf, String> {
    let template = parent.join("tributary-launch-XXXXXX");
    let mut bytes = CString::new(template.as_os_str().as_bytes())
        .map_err(|_| format!("launch: {}: a NUL in the path", template.display()))?
        .into_bytes_with_nul();
    // SAFETY: `bytes` is a NUL-terminated template ending in XXXXXX, which mkdtemp
    // rewrites in place.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(format!(
            "launch: cannot create a directory in {}: {}",
            parent.display(),
            io::Error::last_os_error()
        ));
    }
    bytes.pop();
    Ok(PathBuf::from(OsStr::from_bytes(&bytes)))
}

/// Writes `contents` to a new file `name` in `dir` (mode 0600): a file already there, or
/// a symlink, is an error, never followed or overwritten.
fn write_new(dir: &Path, name: &str, contents: &[u8]) -> Result<PathBuf, String> {
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| format!("launch: {}: {e}", path.display()))?;
    Ok(path)
}

/// Starts the cluster, supervises it until every process has ended, and reports.
///
/// Returns `Ok` when every process exited 0, and otherwise an error naming the process
/// that failed first and how (or the signal that stopped the launcher). In every case
/// every child has been waited for before this returns.
pub fn launch(args: LaunchArgs) -> Result<(), String> {
    let grace = args.validate()?;
    let exe = std::env::current_exe().map_err(|e| format!("launch: this executable: {e}"))?;
    let n = args.processes;
    let ports = pick_ports(n, args.base_port)?;
    let dir = private_dir(&std::env::temp_dir())?;
    // From here on, the directory is removed however the launcher leaves.
    let mut cluster = Cluster {
        procs: Vec::with_capacity(n),
        dir,
    };
    let hosts: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    let hostfile = write_new(&cluster.dir, "hostfile", hosts.as_bytes())?;
    // A cluster token of its own, unless the command names one.
    let token_file = if args
        .command
        .iter()
        .any(|a| a == "--cluster-token-file" || a.starts_with("--cluster-token-file="))
    {
        None
    } else {
        let mut token = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut token))
            .map_err(|e| format!("launch: /dev/urandom: {e}"))?;
        let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
        Some(write_new(&cluster.dir, "cluster-token", hex.as_bytes())?)
    };
    install_signal_handlers()?;

    let (exited_tx, exited_rx) = mpsc::channel::<usize>();
    // SAFETY: getpid has no preconditions.
    let launcher = unsafe { libc::getpid() };
    for (i, port) in ports.iter().enumerate() {
        let mut command = Command::new(&exe);
        command
            .args(&args.command)
            .args(["-n", &n.to_string(), "-p", &i.to_string()])
            .args(["-w", &args.workers.to_string()])
            .arg("-h")
            .arg(&hostfile)
            .args(
                token_file
                    .iter()
                    .flat_map(|t| [OsStr::new("--cluster-token-file"), t.as_os_str()]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid,
        // _exit), and no allocation.
        unsafe {
            command.pre_exec(move || {
                // Die with the launcher, even if it is killed with SIGKILL.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != launcher {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Err(format!("launch: starting process {i}: {e}")),
        };
        let pid = child.id() as i32;
        tracing::info!("launch: process {i} pid {pid} on 127.0.0.1:{port}");
        let prefix = format!("[p{i}] ").into_bytes();
        let stdout_prefix = if args.prefix_stdout {
            prefix.clone()
        } else {
            Vec::new()
        };
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let forwarders = vec![
            {
                let prefix = prefix.clone();
                std::thread::spawn(move || forward(stdout, stdout_prefix, prefix, true))
            },
            std::thread::spawn(move || forward(stderr, prefix, Vec::new(), false)),
        ];
        // Tells the supervisor when the child has ended, without reaping it (WNOWAIT):
        // only the supervisor reaps, so it never signals a reused pid.
        let tx = exited_tx.clone();
        std::thread::spawn(move || {
            loop {
                // SAFETY: waitid writes into the zeroed siginfo_t it is given.
                let r = unsafe {
                    let mut info: libc::siginfo_t = std::mem::zeroed();
                    libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
            let _ = tx.send(i);
        });
        cluster.procs.push(Proc {
            child,
            pid,
            status: None,
            stopped: false,
            forwarders,
        });
    }
    drop(exited_tx);

    // Supervise: the first failure (in the order the exits were seen) or a stop signal
    // stops the others.
    let mut failed: Option<usize> = None;
    let mut interrupted: Option<i32> = None;
    let mut kill_at: Option<Instant> = None;
    let stop = |cluster: &mut Cluster, kill_at: &mut Option<Instant>| {
        if kill_at.is_none() {
            cluster.signal_running(libc::SIGTERM);
            *kill_at = Some(Instant::now() + grace);
        }
    };
    // A process that exited because it lost a peer (EXIT_PEER_LOST) names no cause: the
    // peer's own failure, usually reaped a moment later, is the one to report.
    let mut peer_lost: Option<(usize, Instant)> = None;
    while cluster.running() > 0 {
        if let Some((i, at)) = peer_lost
            && failed.is_none()
            && interrupted.is_none()
            && at.elapsed() >= PEER_LOST_GRACE
        {
            failed = Some(i);
            tracing::info!(
                "launch: process {i} (pid {}) lost a peer: stopping the other processes",
                cluster.procs[i].pid
            );
            stop(&mut cluster, &mut kill_at);
        }
        let signal = STOP_SIGNAL.load(Ordering::SeqCst);
        if signal != 0 && interrupted.is_none() && failed.is_none() {
            interrupted = Some(signal);
            tracing::info!(
                "launch: received {}: stopping all processes",
                signal_name(signal)
            );
            stop(&mut cluster, &mut kill_at);
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            cluster.signal_running(libc::SIGKILL);
        }
        let i = match exited_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(i) => i,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Every waiter has reported; reap whatever is left.
                for p in cluster.procs.iter_mut().filter(|p| p.status.is_none()) {
                    p.status = Some(p.child.wait().map_err(|e| format!("launch: {e}"))?);
                }
                break;
            }
        };
        let p = &mut cluster.procs[i];
        let status = p.child.wait().map_err(|e| format!("launch: {e}"))?;
        p.status = Some(status);
        if status.success() {
            continue;
        }
        if p.stopped {
            tracing::info!(
                "launch: process {i} (pid {}) stopped: {}",
                p.pid,
                describe_exit(&status)
            );
        } else if status.code() == Some(tributary::quarantine::EXIT_PEER_LOST) && failed.is_none() {
            tracing::info!(
                "launch: process {i} (pid {}) {}",
                p.pid,
                describe_exit(&status)
            );
            peer_lost.get_or_insert((i, Instant::now()));
        } else if failed.is_none() && interrupted.is_none() {
            failed = Some(i);
            tracing::info!(
                "launch: process {i} (pid {}) {}: stopping the other processes",
                p.pid,
                describe_exit(&status)
            );
            stop(&mut cluster, &mut kill_at);
        }
    }
    // Every child is reaped; wait for the last of their output.
    for p in &mut cluster.procs {
        for f in p.forwarders.drain(..) {
            let _ = f.join();
        }
    }
    let statuses: BTreeMap<usize, (i32, ExitStatus)> = cluster
        .procs
        .iter()
        .enumerate()
        .map(|(i, p)| (i, (p.pid, p.status.expect("reaped"))))
        .collect();
    drop(cluster);
    if let Some(i) = failed.or(peer_lost.map(|(i, _)| i)) {
        let (pid, status) = statuses[&i];
        return Err(format!(
            "launch: process {i} (pid {pid}) {}; the other processes were stopped",
            describe_exit(&status)
        ));
    }
    if let Some(signal) = interrupted {
        return Err(format!(
            "launch: interrupted by {}; all {n} processes were stopped",
            signal_name(signal)
        ));
    }
    // A child that failed while the launcher was already stopping (cannot happen without
    // a failure or signal above), or that exited non-zero unnoticed: still an error.
    if let Some((i, (pid, status))) = statuses.iter().find(|(_, (_, s))| !s.success()) {
        return Err(format!(
            "launch: process {i} (pid {pid}) {}",
            describe_exit(status)
        ));
    }
    tracing::info!("launch: all {n} processes finished");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &[&str]) -> LaunchArgs {
        LaunchArgs {
            processes: 2,
            workers: 2,
            base_port: None,
            prefix_stdout: false,
            grace: "5s".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn refuses_cluster_flags_in_the_forwarded_command() {
        assert!(args(&["run", "spec.toml", "-q"]).validate().is_ok());
        for bad in ["-w", "-w2", "--workers=2", "-p", "-n", "-h", "--hostfile"] {
            let e = args(&["run", bad]).validate().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert!(args(&["gen"]).validate().unwrap_err().contains("run"));
        let mut a = args(&["run"]);
        a.base_port = Some(65535);
        assert!(a.validate().unwrap_err().contains("--base-port"));
    }

    #[test]
    fn recognises_timely_connection_messages() {
        assert!(is_timely_chatter(b"awaiting connections (at 0/1)\n"));
        assert!(is_timely_chatter(
            b"worker 12:\terror connecting to worker 0: Connection refused; retrying\n"
        ));
        assert!(!is_timely_chatter(b"{\"key\":\"worker 1:\"}\n"));
        assert!(!is_timely_chatter(
            b"worker :\terror connecting to worker 0\n"
        ));
    }

    /// The launcher's directory used to be `$TMPDIR/tributary-launch-<pid>`, made with
    /// `create_dir_all` (which follows a symlink planted there) and written with
    /// `fs::write` (which follows a symlink at `hostfile`). A planted symlink at that name,
    /// to a directory holding a `hostfile` of someone else, must be neither followed nor
    /// written through.
    #[test]
    fn the_temporary_directory_is_private_and_follows_no_planted_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let base =
            std::env::temp_dir().join(format!("tributary-launch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("victim")).unwrap();
        let victim = base.join("victim").join("hostfile");
        std::fs::write(&victim, "precious\n").unwrap();
        let planted = base.join(format!("tributary-launch-{}", std::process::id()));
        std::os::unix::fs::symlink(base.join("victim"), &planted).unwrap();

        let dir = private_dir(&base).unwrap();
        assert_ne!(dir, planted);
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir() && !meta.file_type().is_symlink());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        let hostfile = write_new(&dir, "hostfile", b"127.0.0.1:1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(std::fs::read_to_string(&hostfile).unwrap(), "127.0.0.1:1\n");
        let mode = std::fs::metadata(&hostfile).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A symlink where a file is to be written is refused, not followed.
        std::os::unix::fs::symlink(&victim, dir.join("cluster-token")).unwrap();
        let e = write_new(&dir, "cluster-token", b"x").unwrap_err();
        assert!(e.contains("cluster-token"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        // Two directories are distinct.
        assert_ne!(private_dir(&base).unwrap(), dir);
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// The ports picked are distinct, non-zero, and free again when picked (the probing
    /// listeners are closed, so each child can bind its own); `--base-port` gives
    /// consecutive ports, and a range past 65535 is refused before any is used.
    #[test]
    fn picked_ports_are_distinct_and_free_for_the_children() {
        let ports = pick_ports(4, None).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 4, "{ports:?}");
        assert!(ports.iter().all(|&p| p != 0), "{ports:?}");
        // Free: a child binds each of them (retried a few times, as another process may
        // take a port in between; all four taken at once would mean they were held).
        let bound = (0..20).any(|_| {
            let all: Result<Vec<_>, _> = pick_ports(4, None)
                .unwrap()
                .into_iter()
                .map(|p| TcpListener::bind(("127.0.0.1", p)))
                .collect();
            all.is_ok()
        });
        assert!(bound, "the picked ports are still held by the launcher");
        assert_eq!(pick_ports(3, Some(7000)).unwrap(), vec![7000, 7001, 7002]);
        let mut a = args(&["run"]);
        a.processes = 3;
        a.base_port = Some(65534);
        assert!(
            a.validate().unwrap_err().contains("--base-port"),
            "65534..65536 is not a port range"
        );
    }
}
