//! Timely cluster settings from the `-w -n -p -h` flags, and the connections between the
//! processes of a cluster.
//!
//! Timely's own start-up (`CommunicationConfig::Cluster`) connects the processes with a
//! bare 8-byte process index and panics on anything else a stranger sends to the port
//! (`failed to decode worker index`). A cluster run here makes the connections itself and
//! hands the sockets to timely ([`initialize_networking_from_sockets`], then
//! [`timely::execute::execute_from`]), after a handshake of its own on every connection:
//!
//! * process `i` listens on its hostfile line's address from the start of
//!   [`ClusterConfig::execute`] until processes `i+1 … P−1` have connected (the last
//!   process does not listen), and connects to processes `0 … i−1`;
//! * on each accepted connection it sends a greeting (magic, its index, `P`, a random
//!   nonce) and reads the peer's (magic, index, `P`, nonce, and an HMAC-SHA256 over both
//!   greetings keyed with the cluster token of `--cluster-token-file`, or with the empty
//!   key without one); then it answers with its own HMAC, so both sides prove the token
//!   and neither sends it;
//! * a connection that sends something else, too little within [`HANDSHAKE_TIMEOUT`], a
//!   wrong HMAC, an index that is not expected or already connected, is dropped with a
//!   warning on stderr, and the process goes on waiting for its peers. A genuine process
//!   that is refused (another token, another `-n`) stops with an error saying why.
//!
//! Without a token the handshake only keeps strangers' bytes from crashing the start-up:
//! anyone who can reach the port and speaks the protocol can take a peer's place. With a
//! token, only holders of it can join. In both cases the traffic after the handshake is
//! neither encrypted nor authenticated (timely's), so the network between the processes
//! must be trusted (see docs/cluster.md).
//!
//! A peer that becomes unreachable (its host lost, a network partition) is noticed within
//! about `--peer-timeout` ([`DEFAULT_PEER_TIMEOUT`]): every cluster socket gets TCP
//! keep-alive and `TCP_USER_TIMEOUT` before timely has it ([`set_peer_timeout`]), so the
//! kernel ends a connection whose peer stops acknowledging, timely's network thread for
//! that peer fails, and the process stops (exit 75, see `quarantine`) after a line naming
//! the peer: `error: cluster: process 1 lost process 0 at 198.18.0.1:2101: …`.
//!
//! `handshake` makes the connections (and holds the hashes the handshake uses); `peers`
//! sets the peer timeout on them and names a lost peer.

mod handshake;
mod peers;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::{Hooks, WorkerGuards};
use timely::worker::Worker;

use handshake::connect_cluster;
pub use handshake::{HANDSHAKE_TIMEOUT, hmac_sha256, sha256};
use peers::name_lost_peers;
pub use peers::{DEFAULT_PEER_TIMEOUT, set_peer_timeout};

/// How many workers, in how many processes, and where they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Worker threads per process (`-w`).
    pub workers: usize,
    /// Number of processes (`-n`).
    pub processes: usize,
    /// This process's index (`-p`).
    pub process: usize,
    /// Timely hostfile: one `host:port` per line, process 0 first (`-h`).
    pub hostfile: Option<PathBuf>,
    /// A file holding the cluster's shared secret (`--cluster-token-file`): every process
    /// of the cluster must be given the same one.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// How long a peer process may leave this one's data unacknowledged, or fail to answer
    /// keep-alive probes, before the connection to it is given up and the process stops
    /// (`--peer-timeout DUR`); [`DEFAULT_PEER_TIMEOUT`] without one.
    #[serde(default)]
    pub peer_timeout: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            token_file: None,
            peer_timeout: None,
        }
    }
}

impl ClusterConfig {
    /// The process addresses: the hostfile's first `-n` lines (blank lines and `#`
    /// comments skipped), or `127.0.0.1:2101…` without one.
    pub fn addresses(&self) -> Result<Vec<String>, String> {
        let addresses = match &self.hostfile {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("hostfile {}: {e}", path.display()))?;
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            }
            None => (0..self.processes)
                .map(|i| format!("127.0.0.1:{}", 2101 + i))
                .collect(),
        };
        if addresses.len() < self.processes {
            return Err(format!(
                "the hostfile names {} processes but -n is {}",
                addresses.len(),
                self.processes
            ));
        }
        Ok(addresses[..self.processes].to_vec())
    }

    fn check(&self) -> Result<(), String> {
        if self.workers == 0 {
            return Err("-w must be at least 1".into());
        }
        if self.process >= self.processes {
            return Err(format!(
                "-p {} is not below -n {}",
                self.process, self.processes
            ));
        }
        Ok(())
    }

    /// Timely's configuration for these settings (a cluster's connections made by timely,
    /// without the handshake of [`execute`](Self::execute)).
    pub fn timely_config(&self) -> Result<timely::Config, String> {
        use timely::CommunicationConfig as Comm;
        self.check()?;
        let communication = if self.processes > 1 {
            Comm::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.addresses()?,
                report: false,
                zerocopy: false,
            }
        } else if self.workers > 1 {
            Comm::Process(self.workers)
        } else {
            Comm::Thread
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }

    /// The cluster token: the token file's bytes without trailing white space; empty
    /// without a token file.
    pub fn token(&self) -> Result<Vec<u8>, String> {
        let Some(path) = &self.token_file else {
            return Ok(Vec::new());
        };
        let shown = path.display();
        let bytes =
            std::fs::read(path).map_err(|e| format!("--cluster-token-file {shown}: {e}"))?;
        let token = bytes.trim_ascii_end().to_vec();
        if token.is_empty() {
            return Err(format!("--cluster-token-file {shown}: the file is empty"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    "--cluster-token-file {shown} can be read by other users (mode \
                     {:o}): chmod 600 it",
                    meta.permissions().mode() & 0o777
                );
            }
        }
        Ok(token)
    }

    /// The `--peer-timeout` in force: [`DEFAULT_PEER_TIMEOUT`] without one; from 1 s to
    /// 1 h.
    pub fn peer_timeout(&self) -> Result<Duration, String> {
        let Some(text) = &self.peer_timeout else {
            return Ok(DEFAULT_PEER_TIMEOUT);
        };
        let ms = crate::window::parse_duration(text).map_err(|e| format!("--peer-timeout: {e}"))?;
        if !(1_000..=3_600_000).contains(&ms) {
            return Err(format!(
                "--peer-timeout {text}: must be from 1s to 1h (the kernel's keep-alive \
                 probes count whole seconds)"
            ));
        }
        Ok(Duration::from_millis(ms as u64))
    }

    /// Runs `func` on every worker of this process, like `timely::execute`. With several
    /// processes, the connections between them are made here, with the handshake of this
    /// module, before timely gets them.
    pub fn execute<T, F>(&self, func: F) -> Result<WorkerGuards<T>, String>
    where
        T: Send + 'static,
        F: Fn(&mut Worker) -> T + Send + Sync + 'static,
    {
        let timeout = self.peer_timeout()?;
        if self.processes <= 1 {
            return timely::execute(self.timely_config()?, func);
        }
        self.check()?;
        let addresses = self.addresses()?;
        let token = self.token()?;
        let sockets = connect_cluster(&addresses, self.process, &token)?;
        let mut peers = vec![None; sockets.len()];
        for (j, socket) in sockets.iter().enumerate() {
            let Some(socket) = socket else { continue };
            set_peer_timeout(socket, timeout).map_err(|e| {
                format!(
                    "cluster: the connection to process {j} at {}: setting the peer timeout: {e}",
                    addresses[j]
                )
            })?;
            let connected = socket
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let mut described = format!("process {j} at {}", addresses[j]);
            if !connected.is_empty() && !addresses[j].split_whitespace().any(|a| a == connected) {
                described.push_str(&format!(" (connected from {connected})"));
            }
            peers[j] = Some(described);
        }
        name_lost_peers(self.process, peers, timeout);
        // What `CommunicationConfig::Cluster { zerocopy: false, .. }.try_build()` does after
        // timely's own `create_sockets`.
        let hooks = Hooks::default();
        let local = ProcessBuilder::new_typed_vector(
            self.workers,
            hooks.refill.clone(),
            hooks.spill.clone(),
        );
        let (builders, guard) =
            initialize_networking_from_sockets(local, sockets, self.process, self.workers, hooks)
                .map_err(|e| format!("failed to initialize networking: {e}"))?;
        timely::execute::execute_from(
            builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
            Box::new(guard),
            timely::WorkerConfig::default(),
            func,
        )
    }

    /// Total number of workers in the cluster.
    pub fn peers(&self) -> usize {
        self.workers * self.processes
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn peer_timeout_sets_keepalive_and_user_timeout() {
        fn get(s: &TcpStream, level: libc::c_int, name: libc::c_int) -> libc::c_int {
            use std::os::fd::AsRawFd;
            let mut value: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: reads one c_int option of an open socket into `value`.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    level,
                    name,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            value
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(get(&s, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        set_peer_timeout(&s, Duration::from_secs(12)).unwrap();
        assert_ne!(get(&s, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        assert_eq!(get(&s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 6);
        assert_eq!(get(&s, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 2);
        assert_eq!(get(&s, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
        assert_eq!(get(&s, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 12_000);
        let config = |t: &str| ClusterConfig {
            peer_timeout: Some(t.into()),
            ..ClusterConfig::default()
        };
        assert_eq!(
            config("10s").peer_timeout().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(
            ClusterConfig::default().peer_timeout().unwrap(),
            DEFAULT_PEER_TIMEOUT
        );
        assert!(
            config("500ms")
                .peer_timeout()
                .unwrap_err()
                .contains("--peer-timeout")
        );
        assert!(config("ten").peer_timeout().is_err());
    }
}
