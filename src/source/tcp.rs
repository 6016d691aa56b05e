//! The TCP line source: CSV or JSON lines read from a socket into the ingest log.
//!
//! `tcp:HOST:PORT` connects to a server that sends lines (client mode); the source ends
//! when the server closes the connection. `tcp:HOST:PORT,listen` listens there instead
//! and reads every connection that comes, until the process stops. `,format=jsonl` reads
//! JSON lines; the default, CSV, takes the first line of each connection as its header.
//!
//! Lines are parsed as they arrive and appended to the [`IngestLog`](super::IngestLog) in
//! batches by a [`Feed`] (at most [`BATCH_RECORDS`](super::feed::BATCH_RECORDS) records,
//! or what arrived within [`BATCH_WAIT`]). Delivery: a record is
//! safe once its batch is in the log — durable with `--checkpoint` — and from there it is
//! counted exactly once across crashes. TCP has no acknowledgement to the sender, so lines
//! received but not yet appended when the process dies are lost: the socket itself is
//! not replayable. When the dataflow falls behind, the reader stops reading and TCP's
//! flow control holds the sender back.

use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{TcpListener, TcpStream};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::FileFormat;
use super::feed::{BATCH_WAIT, Feed, FeedContext};

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

/// Starts reading `spec` into the log on background threads. Connecting (or binding) is
/// done here, so that an unreachable address is an error at once.
pub fn start(spec: &TcpSpec, context: FeedContext) -> Result<(), String> {
    let shown = format!("tcp:{}", spec.address);
    let format = spec.format;
    if spec.listen {
        let listener =
            TcpListener::bind(&spec.address).map_err(|e| format!("{shown}: cannot listen: {e}"))?;
        std::thread::Builder::new()
            .name("tcp-listen".into())
            .spawn(move || {
                for (n, stream) in listener.incoming().enumerate() {
                    match stream {
                        Ok(stream) => {
                            let context = context.clone();
                            let origin = format!("{shown} (connection {})", n + 1);
                            let _ = std::thread::Builder::new()
                                .name("tcp-read".into())
                                .spawn(move || read(stream, format, &origin, &context));
                        }
                        Err(e) => eprintln!("warning: {shown}: accept failed: {e}"),
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
                read(stream, format, &shown, &context);
                // The server closed the connection: the stream has ended.
                context.log.close();
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reads one connection to its end.
fn read(stream: TcpStream, format: FileFormat, origin: &str, context: &FeedContext) {
    let _ = stream.set_read_timeout(Some(BATCH_WAIT));
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut feed = Feed::new(format, origin.to_owned(), 0, context);
    let mut line = Vec::new();
    loop {
        let eof = match reader.read_until(b'\n', &mut line) {
            Ok(0) => true,
            Ok(_) if line.last() == Some(&b'\n') => false,
            Ok(_) => true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if feed.due() {
                    feed.flush(None);
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("warning: {origin}: read failed: {e}");
                true
            }
        };
        if !line.is_empty() {
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if let Err(e) = feed.line(text) {
                eprintln!("error: {e}; closing the connection");
                break;
            }
            line.clear();
        }
        if feed.full() || eof {
            feed.flush(None);
        }
        if eof {
            break;
        }
    }
    feed.flush(None);
}
