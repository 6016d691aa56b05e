//! Timely cluster settings from the `-w -n -p -h` flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
        }
    }
}

impl ClusterConfig {
    /// Timely's configuration for these settings.
    pub fn timely_config(&self) -> Result<timely::Config, String> {
        use timely::CommunicationConfig as Comm;
        if self.workers == 0 {
            return Err("-w must be at least 1".into());
        }
        if self.process >= self.processes {
            return Err(format!(
                "-p {} is not below -n {}",
                self.process, self.processes
            ));
        }
        let communication = if self.processes > 1 {
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
            Comm::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: addresses[..self.processes].to_vec(),
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

    /// Total number of workers in the cluster.
    pub fn peers(&self) -> usize {
        self.workers * self.processes
    }
}
