//! The command line: `tributary run | gen`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use tributary::cluster::ClusterConfig;
use tributary::job::JobSpec;

/// `tributary --version`: the crate's version and the git commit it was built from
/// (`unknown` outside a git checkout; see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TRIBUTARY_GIT_COMMIT"),
    ")"
);

/// The exit codes of `tributary`, with what each means (the table of
/// docs/dataflow-spec.md, and the man page's EXIT STATUS).
pub const EXIT_CODES: &[(u8, &str)] = &[
    (
        0,
        "the run ended (every source read to its end, or a live source closed)",
    ),
    (
        1,
        "an error at start: bad flags or spec, a source that cannot be opened, a port taken",
    ),
    (
        2,
        "a source or output failed during the run: a malformed line under --on-error fail, \
         an unreadable file, an output that cannot be written",
    ),
    (
        3,
        "the checkpoint store failed during the run (a part, a commit, the ingest log)",
    ),
    (
        4,
        "the checkpoint store is refused at start (damaged, data without its identity \
         record, another dataflow's, held by another process, of another generation than \
         the newest commit, or missing where the checkpoint needs it); also checkpoint \
         verify on damage",
    ),
    (
        70,
        "the engine failed: a panic on any worker or source thread",
    ),
    (
        75,
        "a process of a cluster lost its connection to another process",
    ),
];

/// Streaming windowed linear regression on timely and differential dataflow.
#[derive(Debug, Parser)]
#[command(name = "tributary", version = VERSION, disable_help_flag = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help, global = true)]
    pub help: Option<bool>,
    /// Log lines on stderr: `text` for people, `json` (one object per line) for machines;
    /// `RUST_LOG` filters them (e.g. `warn`, `tributary=debug`) [default: info].
    #[arg(long, value_enum, global = true, default_value = "text")]
    pub log_format: tributary::logging::LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a dataflow: per key and window, regression models as the stream goes.
    #[command(disable_help_flag = true)]
    Run(Box<RunArgs>),
    /// Write the generator's stream as CSV (`ts,key,x0,…,y`).
    #[command(disable_help_flag = true)]
    Gen(GenArgs),
    /// Benchmarks of the real engine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Look into a checkpoint directory.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Run a command on a local cluster: P processes of this binary on loopback ports.
    #[command(disable_help_flag = true)]
    Launch(crate::launch::LaunchArgs),
    /// Print a shell completion script (e.g. `tributary completions bash >
    /// /etc/bash_completion.d/tributary`).
    #[command(disable_help_flag = true)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page in roff (`tributary man | man -l -`), of the whole command or of
    /// one subcommand (`tributary man run`).
    #[command(disable_help_flag = true)]
    Man {
        /// A subcommand (`run`, `gen`, `bench`, `checkpoint`, `launch`, ...).
        subcommand: Option<String>,
    },
}

/// `tributary checkpoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Print epochs, per-worker parts, completeness, keys and sizes of each store.
    #[command(disable_help_flag = true)]
    Inspect {
        /// The checkpoint directory (as given to `run --checkpoint`).
        dir: PathBuf,
    },
    /// Check every record's checksum and the chain of commits; exit 4 on damage, naming
    /// each damaged record, and say whether an older complete checkpoint is intact.
    #[command(disable_help_flag = true)]
    Verify {
        /// The checkpoint directory (as given to `run --checkpoint`).
        dir: PathBuf,
    },
}

/// `tributary bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Records/s on the generator and on CSV, for several worker counts.
    #[command(disable_help_flag = true)]
    Throughput(ThroughputArgs),
    /// Latency of one incremental update (and model) against recomputing the window.
    #[command(disable_help_flag = true)]
    Incremental {
        /// Records in the window.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Features.
        #[arg(long, default_value_t = 8)]
        features: usize,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,100,10000")]
        batch: Vec<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Resident set of one long generator run, sampled while it runs: memory is bounded
    /// by open windows × keys, not by the records read.
    #[command(disable_help_flag = true)]
    Memory {
        /// Records.
        #[arg(long, default_value_t = 100_000_000)]
        rows: u64,
        /// Keys.
        #[arg(long, default_value_t = 16)]
        keys: u64,
        /// Features.
        #[arg(long, default_value_t = 8)]
        features: usize,
        /// Window.
        #[arg(long, default_value = "sliding:60s/10s")]
        window: String,
        /// Time between samples (ms).
        #[arg(long, default_value_t = 500)]
        every_ms: u64,
        /// Many-keys mode: this many keys, one run per `--many-keys-rows` count, and the
        /// ratio of the largest peak RSS to the smallest (flat: memory follows the open
        /// windows, not the records read).
        #[arg(long)]
        many_keys: Option<u64>,
        /// Record counts of the many-keys mode, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
        many_keys_rows: Vec<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Scale in keys: the same generated records over several key counts (a child
    /// process per count): records/s, final windows/s, µs per final window, peak RSS.
    #[command(disable_help_flag = true)]
    Keys {
        /// Records per run.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Key counts, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "16,1000,10000,100000,1000000"
        )]
        keys: Vec<u64>,
        /// Features.
        #[arg(long, default_value_t = 8)]
        features: usize,
        /// Window.
        #[arg(long, default_value = "sliding:60s/10s")]
        window: String,
        /// Worker threads.
        #[arg(short = 'w', long, default_value_t = 1)]
        workers: usize,
        /// The engine to measure (default: this executable).
        #[arg(long)]
        engine: Option<PathBuf>,
        /// Stop a run whose resident set passes this many MiB (0: no limit).
        #[arg(long, default_value_t = 8192.0)]
        max_rss_mib: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cost of checkpoints: throughput with and without, write time vs changed panes,
    /// recovery time vs state size.
    #[command(disable_help_flag = true)]
    Checkpoint {
        /// Records of the throughput runs.
        #[arg(long, default_value_t = 20_000_000)]
        rows: u64,
        /// Worker threads of the throughput runs.
        #[arg(short = 'w', long, default_value_t = 2)]
        workers: usize,
        /// Scratch directory (deleted afterwards).
        #[arg(long, default_value = "target/bench-checkpoint")]
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `tributary bench throughput` flags.
#[derive(Debug, Args)]
pub struct ThroughputArgs {
    /// Records per run.
    #[arg(long, default_value_t = 20_000_000)]
    pub rows: u64,
    /// Keys.
    #[arg(long, default_value_t = 16)]
    pub keys: u64,
    /// Features.
    #[arg(long, default_value_t = 8)]
    pub features: usize,
    /// Window.
    #[arg(long, default_value = "sliding:60s/10s")]
    pub window: String,
    /// Worker counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// Skip the 2-process loopback cluster.
    #[arg(long)]
    pub no_cluster: bool,
    /// Skip the CSV sources.
    #[arg(long)]
    pub no_csv: bool,
    /// Directory for the generated CSV file.
    #[arg(long, default_value = "target/bench-data")]
    pub dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `tributary run` flags; they override the SPEC.toml file.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A dataflow spec (TOML); flags override it.
    pub spec: Option<PathBuf>,
    /// The job's settings (SPEC.toml keys as flags).
    #[command(flatten)]
    pub job: JobSpec,
    /// Resume from this checkpoint epoch, the newest complete one intact before damage
    /// that `tributary checkpoint verify` names; writes after the damage are dropped.
    #[arg(long, value_name = "EPOCH")]
    pub resume_from: Option<u64>,
    /// No progress line on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// The progress line on stderr even when stderr is not a terminal (by default it is
    /// printed only to a terminal).
    #[arg(long, conflicts_with = "quiet")]
    pub progress: bool,
    /// Number of processes.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// Index of this process.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// Hostfile: one host:port per line, process 0 first.
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
    /// A file holding the cluster's shared secret: every process must be given the same;
    /// a connection between processes that does not prove it is dropped.
    #[arg(long)]
    pub cluster_token_file: Option<PathBuf>,
    /// How long another process of the cluster may be unreachable (its data or keep-alive
    /// probes unacknowledged) before this process stops, naming it (e.g. 10s)
    /// [default: 20s].
    #[arg(long, value_name = "DUR")]
    pub peer_timeout: Option<String>,
}

impl RunArgs {
    /// The cluster settings, with the worker count from the flags or the spec.
    pub fn cluster(&self, workers: Option<usize>) -> ClusterConfig {
        ClusterConfig {
            workers: workers.unwrap_or(1),
            processes: self.processes,
            process: self.process,
            hostfile: self.hostfile.clone(),
            token_file: self.cluster_token_file.clone(),
            peer_timeout: self.peer_timeout.clone(),
        }
    }
}

/// `tributary gen` flags.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of records.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Number of keys.
    #[arg(long, default_value_t = 16)]
    pub keys: u64,
    /// Number of features.
    #[arg(long, default_value_t = 8)]
    pub features: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Largest displacement of a timestamp (e.g. 500ms, 2s).
    #[arg(long, default_value = "0")]
    pub disorder: String,
    /// Time between consecutive records.
    #[arg(long, default_value = "1ms")]
    pub step: String,
    /// Time of the first record (ms since the epoch).
    #[arg(long, default_value_t = 1_700_000_000_000)]
    pub start: i64,
    /// Significant digits of the numbers written (1–17), in plain decimal form like
    /// `%.9g` data (a number with more digits before its point keeps them); by default
    /// each number's shortest exact form (up to 17 digits).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=17))]
    pub digits: Option<u32>,
    /// Output CSV file; `-` is stdout.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
}
