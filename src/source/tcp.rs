//! The TCP line source: CSV or JSON lines read from a socket into the ingest log.
//!
//! `tcp:HOST:PORT` connects to a server that sends lines (client mode); the source ends
//! when the server closes the connection. `tcp:HOST:PORT,listen` listens there instead
//! and reads every connection that comes, until the process stops. `,format=jsonl` reads
//! JSON lines; the default, CSV, takes the first line of each connection as its header.
//!
//! Lines are parsed as they arrive and appended to the [`IngestLog`](super::log::IngestLog) in
//! batches by a [`Feed`] (at most [`BATCH_RECORDS`](super::feed::BATCH_RECORDS) records,
//! or what arrived within [`BATCH_WAIT`]). Delivery: a record is
//! safe once its batch is in the log — durable with `--checkpoint` — and from there it is
//! counted exactly once across crashes. TCP has no acknowledgement to the sender, so lines
//! received but not yet appended when the process dies are lost: the socket itself is
//! not replayable. When the dataflow falls behind, the reader stops reading and TCP's
//! flow control holds the sender back.
//!
//! Limits ([`TcpLimits`]): a line is at most `--max-line-bytes` long (a longer one is
//! dropped as it arrives, never held whole, and counted malformed); a listening source
//! reads at most `--tcp-max-connections` connections at once (one more is closed at once,
//! with a warning) and closes a connection that sent nothing for `--tcp-idle-timeout`.
//! Under `--on-error fail`, a malformed line on a listening source closes that connection
//! (the lines before it are kept), not the process: any client can connect. In client
//! mode the one connection is the source, and a malformed line stops the run.

use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::feed::{BATCH_WAIT, Feed, FeedContext};
use super::lines::FileFormat;

/// `tcp:HOST:PORT[,listen][,format=csv|jsonl]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpSpec {
    /// `HOST:PORT`.
    pub address: String,
    /// Listen for connections instead of connecting.
    pub listen: bool,
    /// Line format.
    pub format: FileFormat,
}

impl FromStr for TcpSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',');
        let address = parts.next().unwrap_or_default().to_owned();
        if !address.contains(':') {
            return Err(format!("source tcp:{text}: expected tcp:HOST:PORT"));
        }
        let mut spec = TcpSpec {
            address,
            listen: false,
            format: FileFormat::Csv,
        };
        for option in parts {
            match option {
                "listen" => spec.listen = true,
                "format=csv" => spec.format = FileFormat::Csv,
                "format=jsonl" | "format=json" => spec.format = FileFormat::Jsonl,
                _ => {
                    return Err(format!(
                        "source tcp:{text}: unknown option {option:?} (listen, format=csv, format=jsonl)"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for TcpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.address)?;
        if self.listen {
            write!(f, ",listen")?;
        }
        match self.format {
            FileFormat::Csv => write!(f, ",format=csv"),
            FileFormat::Jsonl => write!(f, ",format=jsonl"),
        }
    }
}

/// Default of `--tcp-max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Default of `--tcp-idle-timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Refused connections reported on stderr one by one; after these, one in every
/// [`REPORT_EVERY`].
const REPORT_FIRST: u64 = 10;

/// See [`REPORT_FIRST`].
const REPORT_EVERY: u64 = 1000;

/// Bounds on what the clients of a listening source may hold (the line length is the
/// feed's, [`FeedContext::max_line`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpLimits {
    /// Connections read at once (`--tcp-max-connections`); more are closed on accept.
    pub max_connections: usize,
    /// A connection that sent nothing for this long is closed (`--tcp-idle-timeout`);
    /// `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// Counts a connection as open while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts reading `spec` into the log on background threads. Connecting (or binding) is
/// done here, so that an unreachable address is an error at once.
pub fn start(spec: &TcpSpec, limits: TcpLimits, context: FeedContext) -> Result<(), String> {
    let shown = format!("tcp:{}", spec.address);
    let format = spec.format;
    if spec.listen {
        let listener =
            TcpListener::bind(&spec.address).map_err(|e| format!("{shown}: cannot listen: {e}"))?;
        let open = Arc::new(AtomicUsize::new(0));
        let refused = AtomicU64::new(0);
        std::thread::Builder::new()
            .name("tcp-listen".into())
            .spawn(move || {
                for (n, stream) in listener.incoming().enumerate() {
                    let stream = match stream {
                        Ok(stream) => stream,
                        Err(e) => {
                            tracing::warn!("{shown}: accept failed: {e}");
                            // Out of file descriptors, say: let some connections end.
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let peer = stream
                        .peer_addr()
                        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
                    if open.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
                        open.fetch_sub(1, Ordering::SeqCst);
                        let r = refused.fetch_add(1, Ordering::Relaxed) + 1;
                        if r <= REPORT_FIRST || r.is_multiple_of(REPORT_EVERY) {
                            tracing::warn!(
                                "{shown}: closing connection {} from {peer}: {} \
                                 connections are open, the limit (--tcp-max-connections); \
                                 {r} refused so far",
                                n + 1,
                                limits.max_connections
                            );
                        }
                        continue;
                    }
                    let guard = Open(Arc::clone(&open));
                    let context = context.clone();
                    let origin = format!("{shown} (connection {} from {peer})", n + 1);
                    let spawned =
                        std::thread::Builder::new()
                            .name("tcp-read".into())
                            .spawn(move || {
                                let _guard = guard;
                                read(stream, format, &origin, &context, limits.idle_timeout, true);
                            });
                    if let Err(e) = spawned {
                        tracing::warn!("{shown}: connection {}: {e}", n + 1);
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    } else {
        let stream = TcpStream::connect(&spec.address)
            .map_err(|e| format!("{shown}: cannot connect: {e}"))?;
        std::thread::Builder::new()
            .name("tcp-read".into())
            .spawn(move || {
                read(stream, format, &shown, &context, None, false);
                // The server closed the connection: the stream has ended.
                context.log.close();
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reads one connection to its end (or until it idles for `idle`, or a line ends the
/// feed), then appends what it holds.
fn read(
    stream: TcpStream,
    format: FileFormat,
    origin: &str,
    context: &FeedContext,
    idle: Option<Duration>,
    listening: bool,
) {
    let _ = stream.set_read_timeout(Some(BATCH_WAIT));
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut feed = Feed::new(format, origin.to_owned(), 0, context);
    if listening {
        feed = feed.close_on_fail();
    }
    if let Err(e) = read_lines(&mut reader, &mut feed, origin, idle) {
        tracing::error!("{e}; closing the connection");
    }
    feed.flush(None);
}

/// Gives the lines of `reader` to `feed`, holding at most [`Feed::max_line`] bytes of a
/// line: the start of a longer one is dropped as it arrives, and the line is given to
/// [`Feed::too_long`] when its newline comes. Returns an error when the feed ends.
fn read_lines(
    reader: &mut BufReader<TcpStream>,
    feed: &mut Feed,
    origin: &str,
    idle: Option<Duration>,
) -> Result<(), String> {
    let max = feed.max_line();
    // The start of the current line, while it is at most `max` bytes long.
    let mut line: Vec<u8> = Vec::new();
    // Bytes of the current line dropped so far, once it is longer than `max`.
    let mut dropped: Option<u64> = None;
    let mut last_data = Instant::now();
    loop {
        let chunk = match reader.fill_buf() {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if feed.due() {
                    feed.flush(None);
                }
                if let Some(idle) = idle
                    && last_data.elapsed() >= idle
                {
                    tracing::warn!(
                        "{origin}: nothing received for {} s, the limit \
                         (--tcp-idle-timeout): closing the connection",
                        idle.as_secs_f64()
                    );
                    break;
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("{origin}: read failed: {e}");
                break;
            }
        };
        last_data = Instant::now();
        let n = chunk.len();
        let mut rest = chunk;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let end = &rest[..i];
            if let Some(d) = dropped.take() {
                feed.too_long(d + end.len() as u64)?;
            } else if line.len() + end.len() > max {
                feed.too_long((line.len() + end.len()) as u64)?;
                line.clear();
            } else if line.is_empty() {
                feed.line(end)?;
            } else {
                line.extend_from_slice(end);
                feed.line(&line)?;
                line.clear();
            }
            rest = &rest[i + 1..];
            if feed.full() {
                feed.flush(None);
            }
        }
        // `rest`: the start of a line whose newline has not come yet.
        match &mut dropped {
            Some(d) => *d += rest.len() as u64,
            None if line.len() + rest.len() > max => {
                dropped = Some((line.len() + rest.len()) as u64);
                line = Vec::new();
            }
            None => line.extend_from_slice(rest),
        }
        reader.consume(n);
        if feed.due() {
            feed.flush(None);
        }
    }
    // A last line without its newline.
    match dropped {
        Some(d) => feed.too_long(d),
        None if !line.is_empty() => feed.line(&line),
        None => Ok(()),
    }
}
