//! A lost peer noticed and named: the peer timeout on every cluster socket, and the line
//! that says which process was lost, and why, when timely's network thread for it fails.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

/// How long a peer may be unreachable before this process gives it up, without
/// `--peer-timeout`.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// Keep-alive probes sent, `timeout / 6` apart after `timeout / 2` of silence, before
/// `TCP_USER_TIMEOUT` ends the connection (at `timeout` since the peer was last heard).
const KEEPALIVE_PROBES: u32 = 3;

/// Makes the kernel end `socket` when its peer has not been heard from for about
/// `timeout`: keep-alive probes after `timeout / 2` of silence, every `timeout / 6`
/// (whole seconds, at least 1), and `TCP_USER_TIMEOUT` of `timeout`, which ends the
/// connection both when probes go unanswered and when sent data stays unacknowledged
/// that long. A read or write then fails with `ETIMEDOUT`. Without this, Linux retransmits
/// for about 15 minutes (`tcp_retries2`) and keeps a silent idle connection for hours.
pub fn set_peer_timeout(socket: &TcpStream, timeout: Duration) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        let secs = timeout.as_secs().max(1);
        let idle = (secs / 2).max(1);
        let interval = (secs / 6).max(1);
        let user_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
            // SAFETY: `fd` is an open socket owned by `socket`; the value is a c_int whose
            // size is passed with it.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    name,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle as libc::c_int)?;
        set(
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            interval as libc::c_int,
        )?;
        set(
            libc::IPPROTO_TCP,
            libc::TCP_KEEPCNT,
            KEEPALIVE_PROBES as libc::c_int,
        )?;
        set(
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            user_ms.min(i32::MAX as u32) as libc::c_int,
        )?;
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (socket, timeout);
    }
    Ok(())
}

/// This process's peers, by process index, as the lost-peer message names them.
static PEERS: Mutex<Vec<Option<String>>> = Mutex::new(Vec::new());

/// Chains a panic hook (once per process) that, when one of timely's network threads
/// (`timely:recv-J`, `timely:send-J`: `J` is the remote process) fails, first prints
/// which peer was lost and why, then hands over to the hook before it (`quarantine`'s,
/// which stops the run with exit code 75).
pub(super) fn name_lost_peers(me: usize, peers: Vec<Option<String>>, timeout: Duration) {
    *PEERS.lock().unwrap_or_else(|p| p.into_inner()) = peers;
    static HOOK: Once = Once::new();
    static REPORTED: AtomicBool = AtomicBool::new(false);
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let remote = thread
                .name()
                .and_then(|n| {
                    n.strip_prefix("timely:recv-")
                        .or(n.strip_prefix("timely:send-"))
                })
                .and_then(|j| j.parse::<usize>().ok());
            if let Some(j) = remote
                && !REPORTED.swap(true, Ordering::SeqCst)
            {
                let peer = PEERS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(j)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| format!("process {j}"));
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    "cluster: process {me} lost {peer}: {} ({payload})",
                    lost_because(&payload, timeout)
                );
            }
            previous(info);
        }));
    });
}

/// What a network thread's failure means, for the operator.
fn lost_because(payload: &str, timeout: Duration) -> String {
    let t = timeout.as_secs_f64();
    if payload.contains("timed out") {
        format!(
            "unreachable: it acknowledged nothing for --peer-timeout {t} s (its host is down \
             or the network between them is partitioned)"
        )
    } else if payload.contains("No route to host") || payload.contains("Network is unreachable") {
        "unreachable: no route to its host (its host is down or the network between them \
         is partitioned)"
            .into()
    } else if payload.contains("socket closed")
        || payload.contains("reset")
        || payload.contains("Broken pipe")
    {
        "its connection closed (the process ended or was killed, or its host restarted)".into()
    } else {
        "its connection failed".into()
    }
}
