//! The settings of a job, each declared once ([`JobSpec`]: a SPEC.toml key and a flag of
//! `tributary run`), and their resolution into a [`Job`], checked.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dataflow::{OnError, WindowConfig};
use crate::model::SolveOptions;
use crate::record::{Schema, parse_features};
use crate::serve;
use crate::source::tcp;
use crate::source::{ReadAheadMode, SourceSpec};
use crate::window::{Time, WindowSpec, parse_duration};

/// Declares [`JobSpec`] and [`JobSpec::overridden_by`] from one list of fields, so that a
/// setting is written once (its key, flag, help and type) and no merge can forget it.
macro_rules! job_spec {
    (
        $(#[$meta:meta])*
        pub struct JobSpec {
            $( $(#[$field_meta:meta])* pub $name:ident: $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct JobSpec {
            $( $(#[$field_meta])* pub $name: $ty, )*
        }

        impl JobSpec {
            /// `self` with every field that `flags` sets replaced.
            pub fn overridden_by(self, flags: JobSpec) -> JobSpec {
                JobSpec {
                    $( $name: flags.$name.or(self.$name), )*
                }
            }
        }
    };
}

job_spec! {
    /// The settings of a job, each declared once here: a key of a SPEC.toml file (serde:
    /// the field's name) and a flag of `tributary run` (clap: the doc comment is its help;
    /// the command flattens this struct into its flags). Every field is optional in both;
    /// flags override the file ([`JobSpec::overridden_by`]), and [`JobSpec::resolve`] fills
    /// in the defaults. Relative `csv:`/`jsonl:` source paths in a file are relative to the
    /// file. docs/dataflow-spec.md has the table (a test holds it to these fields).
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct JobSpec {
        /// `csv:PATH[,block=SIZE]`, `jsonl:PATH[,block=SIZE]`, `csv:PATH,follow` (a growing file),
        /// `gen:rows=N,keys=K,features=D,seed=S[,disorder=MS][,step=MS]`,
        /// `tcp:HOST:PORT[,listen][,format=jsonl]` or `http` (with --serve)
        #[arg(long)]
        pub source: Option<String>,
        /// Time field (integer ms since the epoch, or an RFC 3339 date-time) [default: ts].
        #[arg(long)]
        pub time: Option<String>,
        /// Key field [default: key].
        #[arg(long)]
        pub key: Option<String>,
        /// Feature fields: a,b,c or x0..x7 [default: the generator's, or every other CSV column].
        #[arg(long)]
        pub features: Option<String>,
        /// Target field [default: y].
        #[arg(long)]
        pub target: Option<String>,
        /// tumbling:60s | sliding:60s/10s | session:30s [default: sliding:60s/10s].
        #[arg(long)]
        pub window: Option<String>,
        /// Allowed lateness: the watermark trails the largest event time by this much [default: 0s].
        #[arg(long)]
        pub lateness: Option<String>,
        /// Largest advance of the watermark by a single record; records further ahead are set aside [default: 1h].
        #[arg(long)]
        pub max_jump: Option<String>,
        /// Ridge penalty λ on the slopes (not the intercept, not scaled by n) [default: 0].
        #[arg(long)]
        pub ridge: Option<f64>,
        /// Model output, JSON lines; `-` is stdout [default: -].
        #[arg(long)]
        pub out: Option<PathBuf>,
        /// Where records set aside (late, too far ahead) are written, JSON lines.
        #[arg(long)]
        pub late_out: Option<PathBuf>,
        /// What a malformed line does [default: skip].
        #[arg(long, value_enum)]
        pub on_error: Option<OnError>,
        /// Worker threads per process [default: 1].
        #[arg(short = 'w', long = "workers")]
        pub workers: Option<usize>,
        /// Checkpoint directory: state and positions are saved there, and a run restarted
        /// with the same command resumes from the newest complete checkpoint.
        #[arg(long)]
        pub checkpoint: Option<PathBuf>,
        /// Time between checkpoints [default: 1s].
        #[arg(long)]
        pub checkpoint_every: Option<String>,
        /// Serve HTTP (POST /data, /model, /models, /predict, /metrics, /healthz) in process 0
        /// on HOST:PORT, or on 127.0.0.1 with a bare port or no value [default: 127.0.0.1:8080].
        #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:8080", value_name = "ADDRESS")]
        pub serve: Option<String>,
        /// Records the ingest log may hold unread before POST /data answers 503 [default: 1000000].
        #[arg(long)]
        pub max_pending: Option<u64>,
        /// Largest POST /data body, in bytes [default: 16777216].
        #[arg(long)]
        pub max_body: Option<usize>,
        /// Longest line of every source (file read once or followed, CSV or JSON lines, TCP,
        /// POST /data), in bytes without its newline; a line of exactly this is taken. A
        /// longer one is malformed under --on-error (skipped and counted, or the run fails),
        /// named by its line, and never held whole [default: 1048576].
        #[arg(long)]
        pub max_line_bytes: Option<usize>,
        /// Files read once: parse each worker's next blocks on a thread of its own while the
        /// worker folds the current one; `auto` does when the machine has more cores than the
        /// process has workers. The batches and output are the same either way [default: auto].
        #[arg(long, value_enum)]
        pub read_ahead: Option<ReadAheadMode>,
        /// Connections a `tcp:…,listen` source reads at once; more are closed [default: 64].
        #[arg(long)]
        pub tcp_max_connections: Option<usize>,
        /// A `tcp:…,listen` source closes a connection that sent nothing this long; `0s`:
        /// never [default: 5m].
        #[arg(long)]
        pub tcp_idle_timeout: Option<String>,
        /// Live sources: when nothing has arrived for this long, close every open window as
        /// if event time had passed it (finals marked `"closed_by":"idle"`) [default: off].
        #[arg(long, value_name = "DUR")]
        pub close_after_idle: Option<String>,
        /// Bytes the ingest log may hold unread (records' size in memory) before POST /data
        /// answers 503 [default: 268435456].
        #[arg(long)]
        pub max_pending_bytes: Option<u64>,
        /// HTTP: longest time from a request's first byte to the end of its head [default: 10s].
        #[arg(long)]
        pub header_timeout: Option<String>,
        /// HTTP: longest time to read a request body (POST /data, /predict) [default: 30s].
        #[arg(long)]
        pub body_timeout: Option<String>,
        /// HTTP: a connection with no request under way is closed after this [default: 10s].
        #[arg(long)]
        pub http_idle_timeout: Option<String>,
        /// HTTP: open connections; more are answered 503 and closed [default: 512].
        #[arg(long)]
        pub max_connections: Option<usize>,
        /// HTTP: bytes of request bodies held at once, over all requests; over it, 503
        /// [default: 67108864].
        #[arg(long)]
        pub max_inflight_bytes: Option<usize>,
        /// Longest key of a posted record, in bytes; a POST with a longer key is refused
        /// whole (400) [default: 256].
        #[arg(long)]
        pub max_key_bytes: Option<usize>,
        /// Live keys (whose windows are still open) POST /data may add to, and keys served;
        /// a POST that would go over is refused whole (503) [default: 100000].
        #[arg(long)]
        pub max_keys: Option<usize>,
        /// HTTP: a Host name accepted besides the loopback names and the bound address
        /// (repeatable; `*` accepts any).
        #[arg(long = "allow-host", value_name = "NAME")]
        pub allow_host: Option<Vec<String>>,
        /// HTTP: every endpoint but /healthz needs `Authorization: Bearer <the file's
        /// content>` (surrounding whitespace ignored).
        #[arg(long, value_name = "PATH")]
        pub token_file: Option<PathBuf>,
        /// HTTP: the live dashboard at `/` (default `true`); the flag `--no-dashboard` sets it
        /// `false`.
        #[arg(
            long = "no-dashboard",
            num_args = 0,
            default_missing_value = "false",
            help = "HTTP: no live dashboard at `/` (a 404 there, like any unknown path)"
        )]
        pub dashboard: Option<bool>,
    }
}

impl JobSpec {
    /// Reads a SPEC.toml file; relative source paths are made relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut spec: JobSpec =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(source) = &spec.source
            && let Some((kind, rest)) = source.split_once(':')
            && matches!(kind, "csv" | "jsonl" | "json")
            && Path::new(rest).is_relative()
        {
            let dir = path.parent().unwrap_or(Path::new("."));
            spec.source = Some(format!("{kind}:{}", dir.join(rest).display()));
        }
        Ok(spec)
    }

    /// Checks and completes the settings into a runnable [`Job`].
    pub fn resolve(self) -> Result<Job, String> {
        let http = http_limits(&self)?;
        let source: SourceSpec = self
            .source
            .as_deref()
            .unwrap_or("gen:rows=1000000,keys=16,features=8,seed=42,disorder=500")
            .parse()?;
        let time = self.time.unwrap_or_else(|| "ts".into());
        let key = self.key.unwrap_or_else(|| "key".into());
        let target = self.target.unwrap_or_else(|| "y".into());
        let features = match (&self.features, &source) {
            (Some(f), _) => parse_features(f)?,
            (None, SourceSpec::Gen(g)) => Schema::generated(g.features).features,
            (None, SourceSpec::Csv(file)) => {
                let path = &file.path;
                let header = csv_header(path)?;
                let f: Vec<String> = header
                    .into_iter()
                    .filter(|c| *c != time && *c != key && *c != target)
                    .collect();
                if f.is_empty() {
                    return Err(format!(
                        "{}: no feature columns besides {time}, {key}, {target}; name them with --features",
                        path.display()
                    ));
                }
                f
            }
            (None, SourceSpec::Jsonl(_) | SourceSpec::Http | SourceSpec::Tcp(_)) => {
                return Err(format!("--features is required for the source {source}"));
            }
        };
        let duration = |v: &Option<String>, default: &str, what: &str| -> Result<Time, String> {
            parse_duration(v.as_deref().unwrap_or(default)).map_err(|e| format!("{what}: {e}"))
        };
        let ridge = self.ridge.unwrap_or(0.0);
        let d = features.len();
        let serve = self.serve.as_deref().map(parse_serve).transpose()?;
        let window: WindowSpec = self
            .window
            .as_deref()
            .unwrap_or("sliding:60s/10s")
            .parse()?;
        let close_after_idle = match &self.close_after_idle {
            None => None,
            Some(t) => match parse_duration(t).map_err(|e| format!("--close-after-idle: {e}"))? {
                ms if ms <= 0 => return Err("--close-after-idle must be positive".into()),
                ms => Some(Duration::from_millis(ms as u64)),
            },
        };
        let schema = Schema {
            time,
            key,
            features,
            target,
        };
        let windows = WindowConfig {
            window,
            lateness: duration(&self.lateness, "0s", "--lateness")?,
            max_jump: duration(&self.max_jump, "1h", "--max-jump")?,
            solve: SolveOptions { ridge },
            features: d,
        };
        // What is not set takes the library's defaults (`Job::new`).
        let defaults = Job::new(source, schema, windows);
        let job = Job {
            out: self.out.unwrap_or(defaults.out.clone()),
            late_out: self.late_out,
            on_error: self.on_error.unwrap_or(defaults.on_error),
            checkpoint: self.checkpoint,
            checkpoint_every: match &self.checkpoint_every {
                None => defaults.checkpoint_every,
                Some(_) => Duration::from_millis(
                    duration(&self.checkpoint_every, "1s", "--checkpoint-every")?.max(1) as u64,
                ),
            },
            serve,
            max_pending: self.max_pending.unwrap_or(defaults.max_pending),
            max_body: self.max_body.unwrap_or(defaults.max_body),
            max_line: match self.max_line_bytes {
                Some(0) => return Err("--max-line-bytes must be at least 1".into()),
                n => n.unwrap_or(defaults.max_line),
            },
            read_ahead: self.read_ahead.unwrap_or(defaults.read_ahead),
            tcp: tcp::TcpLimits {
                max_connections: match self.tcp_max_connections {
                    Some(0) => return Err("--tcp-max-connections must be at least 1".into()),
                    n => n.unwrap_or(defaults.tcp.max_connections),
                },
                idle_timeout: match &self.tcp_idle_timeout {
                    None => defaults.tcp.idle_timeout,
                    Some(t) => {
                        match parse_duration(t).map_err(|e| format!("--tcp-idle-timeout: {e}"))? {
                            ms if ms <= 0 => None,
                            ms => Some(Duration::from_millis(ms as u64)),
                        }
                    }
                },
            },
            close_after_idle,
            max_pending_bytes: self.max_pending_bytes.unwrap_or(defaults.max_pending_bytes),
            http,
            ..defaults
        };
        // What a job must hold however it was made: checked once, in `Job::check`.
        job.check()?;
        Ok(job)
    }
}

/// `--serve`: `HOST:PORT`, or a bare port on 127.0.0.1.
fn parse_serve(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let full = if text.parse::<u16>().is_ok() {
        format!("127.0.0.1:{text}")
    } else {
        text.to_owned()
    };
    full.to_socket_addrs()
        .map_err(|e| format!("--serve {text}: {e}"))?
        .next()
        .ok_or_else(|| format!("--serve {text}: no address"))
}

/// Reads the header row of a CSV file.
fn csv_header(path: &Path) -> Result<Vec<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(file);
    let mut header = csv::StringRecord::new();
    match reader.read_record(&mut header) {
        Ok(true) => Ok(header.iter().map(|h| h.trim().to_owned()).collect()),
        Ok(false) => Ok(Vec::new()),
        Err(e) => Err(format!("{}: line 1 (header): {e}", path.display())),
    }
}

/// A resolved job, ready to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Where records come from.
    pub source: SourceSpec,
    /// Field names.
    pub schema: Schema,
    /// Windows, lateness, solver.
    pub windows: WindowConfig,
    /// Model output (`-` = stdout).
    pub out: PathBuf,
    /// Output of records set aside.
    pub late_out: Option<PathBuf>,
    /// Malformed-line policy.
    pub on_error: OnError,
    /// Checkpoint directory.
    pub checkpoint: Option<PathBuf>,
    /// Time between checkpoints.
    pub checkpoint_every: Duration,
    /// HTTP server address (process 0).
    pub serve: Option<SocketAddr>,
    /// Ingest-log bound: records appended and not yet read.
    pub max_pending: u64,
    /// Largest `POST /data` body (bytes).
    pub max_body: usize,
    /// Longest line of any source, in bytes without its newline (`--max-line-bytes`): a
    /// longer one is malformed.
    pub max_line: usize,
    /// Whether files read once are parsed ahead of the workers (`--read-ahead`).
    #[serde(default)]
    pub read_ahead: ReadAheadMode,
    /// Connection cap and idle timeout of a listening TCP source.
    pub tcp: tcp::TcpLimits,
    /// `--resume-from`: the checkpoint epoch to resume from (a command-line flag only).
    #[serde(default)]
    pub resume_from: Option<u64>,
    /// Close every open window of a live source idle this long (`--close-after-idle`).
    #[serde(default)]
    pub close_after_idle: Option<Duration>,
    /// Ingest-log bound: bytes of records appended and not yet read.
    pub max_pending_bytes: u64,
    /// The HTTP server's limits.
    pub http: serve::HttpLimits,
}

/// Default `--max-pending-bytes`: 256 MiB.
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 256 << 20;

/// Default `--max-pending`: records appended to the ingest log and not yet read.
pub const DEFAULT_MAX_PENDING: u64 = 1_000_000;

impl Job {
    /// A job reading `source` (fields named by `schema`) into the windows of `windows`,
    /// with every other setting at the default of `tributary run`: models to stdout (`-`),
    /// no output of records set aside, malformed lines skipped, no checkpoints (a
    /// checkpoint every second once a directory is set), no HTTP server, and the default
    /// limits of live sources and of the server. Set the fields to change them, or use the
    /// setters of [`Pipeline`](super::Pipeline).
    ///
    /// ```
    /// use tributary::{Job, Schema, WindowConfig};
    ///
    /// let job = Job::new(
    ///     "gen:rows=1000,keys=2,features=1".parse().unwrap(),
    ///     Schema::generated(1),
    ///     WindowConfig::new("tumbling:10s".parse().unwrap(), 1),
    /// );
    /// assert_eq!(job.out, std::path::Path::new("-"));
    /// assert!(job.checkpoint.is_none() && job.serve.is_none());
    /// ```
    pub fn new(source: SourceSpec, schema: Schema, windows: WindowConfig) -> Job {
        Job {
            source,
            schema,
            windows,
            out: PathBuf::from("-"),
            late_out: None,
            on_error: OnError::default(),
            checkpoint: None,
            checkpoint_every: Duration::from_secs(1),
            serve: None,
            max_pending: DEFAULT_MAX_PENDING,
            max_body: crate::serve::DEFAULT_MAX_BODY,
            max_line: crate::source::feed::DEFAULT_MAX_LINE,
            read_ahead: ReadAheadMode::Auto,
            tcp: tcp::TcpLimits::default(),
            resume_from: None,
            close_after_idle: None,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            http: serve::HttpLimits::default(),
        }
    }

    /// Checks what a job must hold before it runs, however it was made ([`JobSpec::resolve`]
    /// and [`Pipeline::run`](super::Pipeline::run) both call it; an error names the setting
    /// by its flag): one dimension for
    /// the schema, the windows and a generator; the fields of a record named once; a
    /// non-negative ridge; an HTTP source served; `resume_from` and `close_after_idle`
    /// only where they apply.
    ///
    /// ```
    /// use tributary::{Job, Schema, WindowConfig};
    ///
    /// let job = Job::new(
    ///     "gen:rows=1000,keys=2,features=2".parse().unwrap(),
    ///     Schema::generated(2),
    ///     WindowConfig::new("tumbling:10s".parse().unwrap(), 1), // one feature: wrong
    /// );
    /// let error = job.check().unwrap_err();
    /// assert!(error.contains("2 features") && error.contains("1"), "{error}");
    /// ```
    pub fn check(&self) -> Result<(), String> {
        let s = &self.schema;
        let named = s.features.len();
        if named == 0 {
            return Err("a job needs at least one feature (--features)".into());
        }
        if self.windows.features != named {
            return Err(format!(
                "the schema names {named} features ({}) but the windows are configured \
                 for {}",
                s.features.join(","),
                self.windows.features
            ));
        }
        // Every field of a record named once: a name used twice would read one column
        // into two places (or hide the other).
        let (time, key, target) = (&s.time, &s.key, &s.target);
        let mut names: Vec<&str> = vec![time, key, target];
        for name in s.features.iter().map(String::as_str) {
            if names.contains(&name) {
                return Err(format!(
                    "--features: {name:?} is named twice among the time ({time}), key ({key}), \
                     target ({target}) and features ({})",
                    s.features.join(",")
                ));
            }
            names.push(name);
        }
        if time == key || time == target || key == target {
            return Err(format!(
                "--time ({time}), --key ({key}) and --target ({target}) must be three fields"
            ));
        }
        if let SourceSpec::Gen(g) = &self.source
            && g.features != named
        {
            return Err(format!(
                "the generator makes {} features but {named} are named",
                g.features
            ));
        }
        let ridge = self.windows.solve.ridge;
        if !(ridge >= 0.0 && ridge.is_finite()) {
            return Err(format!(
                "--ridge must be a non-negative number, not {ridge}"
            ));
        }
        if self.source == SourceSpec::Http && self.serve.is_none() {
            return Err(
                "--source http needs --serve ADDRESS (records arrive by POST /data)".into(),
            );
        }
        if self.resume_from.is_some() && self.checkpoint.is_none() {
            return Err("--resume-from EPOCH needs --checkpoint DIR".into());
        }
        if self.close_after_idle.is_some() && !self.source.is_logged() {
            return Err(format!(
                "--close-after-idle applies to live sources (http, tcp, a followed file), \
                 not {}: it ends, and its last windows close then",
                self.source
            ));
        }
        Ok(())
    }

    /// What identifies the dataflow in a checkpoint: source, schema, windows and solver
    /// (not the worker count, which may change between runs).
    pub fn fingerprint(&self) -> String {
        let w = &self.windows;
        let mut print = serde_json::json!({
            "source": self.source.to_string(),
            "schema": self.schema,
            "window": w.window.to_string(),
            "lateness_ms": w.lateness,
            "max_jump_ms": w.max_jump,
            "ridge": w.solve.ridge,
            "features": w.features,
        });
        if let SourceSpec::Csv(file) | SourceSpec::Jsonl(file) = &self.source
            && !file.follow
        {
            // File batches are byte ranges: a checkpoint's batch number means nothing
            // under another block size (the default one included). A followed file's
            // batches are the ingest log's.
            print["file_block_bytes"] = file.block.into();
        }
        print.to_string()
    }
}

/// The HTTP limits a job's settings give (defaults for those unset), checked.
fn http_limits(spec: &JobSpec) -> Result<serve::HttpLimits, String> {
    use crate::serve::{
        DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY,
        DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_INFLIGHT_BYTES, DEFAULT_MAX_KEY_BYTES,
        DEFAULT_MAX_KEYS,
    };
    use std::time::Duration;
    let duration = |value: &Option<String>, default: Duration, flag: &str| match value {
        None => Ok(default),
        Some(text) => match parse_duration(text).map_err(|e| format!("{flag}: {e}"))? {
            ms if ms > 0 => Ok(Duration::from_millis(ms as u64)),
            _ => Err(format!("{flag} must be positive, not {text:?}")),
        },
    };
    let positive = |value: Option<usize>, default: usize, flag: &str| match value {
        Some(0) => Err(format!("{flag} must be at least 1")),
        v => Ok(v.unwrap_or(default)),
    };
    let max_body = spec.max_body.unwrap_or(DEFAULT_MAX_BODY);
    let limits = serve::HttpLimits {
        max_body,
        header_timeout: duration(
            &spec.header_timeout,
            DEFAULT_HEADER_TIMEOUT,
            "--header-timeout",
        )?,
        body_timeout: duration(&spec.body_timeout, DEFAULT_BODY_TIMEOUT, "--body-timeout")?,
        idle_timeout: duration(
            &spec.http_idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
            "--http-idle-timeout",
        )?,
        max_connections: positive(
            spec.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            "--max-connections",
        )?,
        max_inflight_bytes: positive(
            spec.max_inflight_bytes,
            DEFAULT_MAX_INFLIGHT_BYTES.max(max_body),
            "--max-inflight-bytes",
        )?,
        max_key_bytes: positive(spec.max_key_bytes, DEFAULT_MAX_KEY_BYTES, "--max-key-bytes")?,
        max_keys: positive(spec.max_keys, DEFAULT_MAX_KEYS, "--max-keys")?,
        allow_hosts: spec.allow_host.clone().unwrap_or_default(),
        token_file: spec.token_file.clone(),
        dashboard: spec.dashboard.unwrap_or(true),
    };
    if limits.max_inflight_bytes < max_body {
        return Err(format!(
            "--max-inflight-bytes {} is below --max-body {max_body}: a body of the largest \
             size could never be read; raise the one or lower the other",
            limits.max_inflight_bytes
        ));
    }
    for host in &limits.allow_hosts {
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(format!(
                "--allow-host {host:?}: expected a host name or address (no port, no path)"
            ));
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::Args;

    use super::{Job, JobSpec};
    use crate::record::Schema;
    use crate::types::Fatal;
    use crate::{Pipeline, WindowConfig};

    fn never(fatal: Fatal) -> ! {
        panic!("no run should start: {}", fatal.message)
    }

    /// A job made by hand is checked as the flags' are: each mistake is refused with a
    /// message naming it, by `check` and by `Pipeline::run` before anything starts.
    #[test]
    fn hand_built_jobs_are_checked_before_they_run() {
        let job = |source: &str, d: usize| {
            Job::new(
                source.parse().unwrap(),
                Schema::generated(2),
                WindowConfig::new("tumbling:10s".parse().unwrap(), d),
            )
        };
        assert_eq!(job("gen:rows=10,keys=1,features=2", 2).check(), Ok(()));
        let mut cases: Vec<(Job, &str)> = vec![
            (job("gen:rows=10,keys=1,features=2", 3), "configured for 3"),
            (job("gen:rows=10,keys=1,features=3", 2), "generator makes 3"),
            (job("http", 2), "needs --serve"),
        ];
        let mut resume = job("gen:rows=10,keys=1,features=2", 2);
        resume.resume_from = Some(3);
        cases.push((resume, "needs --checkpoint"));
        let mut ridge = job("gen:rows=10,keys=1,features=2", 2);
        ridge.windows.solve.ridge = -1.0;
        cases.push((ridge, "non-negative"));
        let mut idle = job("gen:rows=10,keys=1,features=2", 2);
        idle.close_after_idle = Some(std::time::Duration::from_secs(1));
        cases.push((idle, "live sources"));
        let mut twice = job("gen:rows=10,keys=1,features=2", 2);
        twice.schema.features[1] = twice.schema.key.clone();
        cases.push((twice, "named twice"));
        for (job, says) in cases {
            let error = job.check().unwrap_err();
            assert!(error.contains(says), "{error:?} should say {says:?}");
            let run = Pipeline::new(job, never).run().map(|_| ()).unwrap_err();
            assert_eq!(run, error);
        }
        let no_workers = Pipeline::new(job("gen:rows=10,keys=1,features=2", 2), never).workers(0);
        assert!(
            no_workers
                .run()
                .is_err_and(|e| e.contains("at least one worker"))
        );
    }

    /// docs/dataflow-spec.md's table of settings has one row per [`JobSpec`] field, once,
    /// naming its SPEC.toml key and its flag as clap declares them.
    #[test]
    fn the_settings_table_is_the_job_spec() {
        let doc = include_str!("../../docs/dataflow-spec.md");
        let mut rows: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for line in doc.lines().take_while(|l| !l.starts_with("## ")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            if let Some(key) = cells[0]
                .strip_prefix("| `")
                .and_then(|k| k.strip_suffix('`'))
                .filter(|_| cells.len() >= 3)
            {
                rows.entry(key).or_default().push(cells[1]);
            }
        }
        let command = JobSpec::augment_args(clap::Command::new("run"));
        let mut fields = Vec::new();
        for arg in command.get_arguments() {
            let key = arg.get_id().as_str();
            fields.push(key);
            let flags = rows
                .get(key)
                .unwrap_or_else(|| panic!("no row for `{key}` in docs/dataflow-spec.md"));
            assert_eq!(flags.len(), 1, "`{key}` has {} rows", flags.len());
            let long = format!("`--{}", arg.get_long().expect("every setting has a flag"));
            assert!(
                flags[0].contains(&long),
                "`{key}`: {} lacks {long}",
                flags[0]
            );
            if let Some(short) = arg.get_short() {
                assert!(
                    flags[0].contains(&format!("`-{short}`")),
                    "`{key}`: -{short}"
                );
            }
        }
        let documented: Vec<&str> = rows.keys().copied().collect();
        fields.sort();
        assert_eq!(
            documented, fields,
            "rows of the table against JobSpec's fields"
        );
    }

    /// Settings left unset resolve to [`Job::new`]'s defaults, those of the library's
    /// pipeline, and the defaults are the ones docs/dataflow-spec.md states.
    #[test]
    fn unset_settings_resolve_to_the_library_defaults() {
        let job = spec_with_gen().resolve().unwrap();
        let defaults = super::Job::new(job.source.clone(), job.schema.clone(), job.windows.clone());
        assert_eq!(job, defaults);
        assert_eq!(job.windows.window, "sliding:60s/10s".parse().unwrap());
        assert_eq!(job.checkpoint_every, std::time::Duration::from_secs(1));
        assert_eq!((job.max_pending, job.max_line), (1_000_000, 1 << 20));
        let flags = JobSpec {
            checkpoint_every: Some("250ms".into()),
            max_pending: Some(5),
            tcp_idle_timeout: Some("0s".into()),
            ..spec_with_gen()
        };
        let job = flags.resolve().unwrap();
        assert_eq!(job.checkpoint_every, std::time::Duration::from_millis(250));
        assert_eq!(job.max_pending, 5);
        assert_eq!(job.tcp.idle_timeout, None);
    }

    fn spec_with_gen() -> JobSpec {
        JobSpec {
            source: Some("gen:rows=100,keys=2,features=3".into()),
            ..JobSpec::default()
        }
    }

    /// A flag overrides the file's value of the same setting and leaves the others.
    #[test]
    fn flags_override_the_file_setting_by_setting() {
        let file: JobSpec = toml::from_str(
            "window = \"tumbling:1m\"\nridge = 0.5\nallow_host = [\"a\"]\ndashboard = false\n",
        )
        .unwrap();
        let run = clap::Command::new("run").no_binary_name(true);
        let matches = JobSpec::augment_args(run)
            .try_get_matches_from(["--ridge", "2", "--allow-host", "b", "-w", "3"])
            .unwrap();
        let flags = <JobSpec as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        let spec = file.overridden_by(flags);
        assert_eq!(spec.window.as_deref(), Some("tumbling:1m"));
        assert_eq!(spec.ridge, Some(2.0));
        assert_eq!(spec.allow_host, Some(vec!["b".to_owned()]));
        assert_eq!(spec.workers, Some(3));
        assert_eq!(spec.dashboard, Some(false), "no --no-dashboard: the file's");
        let matches = JobSpec::augment_args(clap::Command::new("run").no_binary_name(true))
            .try_get_matches_from(["--no-dashboard"])
            .unwrap();
        let flags = <JobSpec as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        assert_eq!(flags.dashboard, Some(false));
        assert_eq!(
            JobSpec::default().overridden_by(JobSpec::default()),
            JobSpec::default()
        );
    }
}
