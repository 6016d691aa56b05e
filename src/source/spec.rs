//! What a source is (`--source`): its kinds, and a file source's options.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::generator::GenSpec;
use super::tcp::TcpSpec;

/// Default size of one file batch (`csv:PATH,block=SIZE` sets another).
///
/// Every batch is a timely epoch, and an epoch costs the workers a round of progress
/// coordination however few records it holds: at 1 MiB (about 9 000 records of d = 8) that
/// overhead was 10–20 % of a CSV run, at 4 MiB it is a few per cent (benchmarks.md). Batch
/// numbers are checkpoint positions, so the size is part of a file dataflow's fingerprint.
/// Smaller blocks give the first models sooner; they matter little for a file read once.
pub const BLOCK_BYTES: usize = 4 << 20;

/// Where records come from (`--source`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SourceSpec {
    /// A CSV file with a header row.
    Csv(FileSpec),
    /// A file of JSON objects, one per line.
    Jsonl(FileSpec),
    /// The deterministic generator.
    Gen(GenSpec),
    /// Records posted to `POST /data` (needs `--serve`), through the ingest log.
    Http,
    /// Lines read from a TCP socket, through the ingest log.
    Tcp(TcpSpec),
}

/// A file source: the file, the size of its batches, and whether it is followed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileSpec {
    /// The file.
    pub path: PathBuf,
    /// Nominal batch size in bytes (batches end on line boundaries); [`BLOCK_BYTES`]
    /// unless the source says `,block=SIZE`.
    pub block: usize,
    /// `,follow`: read lines as they are appended, through the ingest log (see
    /// [`follow`](super::follow)); the source never ends.
    #[serde(default)]
    pub follow: bool,
    /// `,rotate` (with `,follow`): when the file is renamed away and a new one appears at
    /// the path, the old file is read to its end, then the new one from its start (see
    /// [`follow`](super::follow)).
    #[serde(default)]
    pub rotate: bool,
}

impl FileSpec {
    /// The file at `path`, read once, in batches of the default size.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSpec {
            path: path.into(),
            block: BLOCK_BYTES,
            follow: false,
            rotate: false,
        }
    }

    /// `PATH[,block=SIZE][,follow[,rotate]]`; SIZE in bytes, or with a suffix `KiB` / `MiB` (also
    /// `k`, `M`). Options are taken from the end, so a path may hold commas.
    fn parse(arg: &str, text: &str) -> Result<Self, String> {
        let mut spec = FileSpec::new(arg);
        let mut path = arg;
        let mut block = None;
        while let Some((rest, option)) = path.rsplit_once(',') {
            if option == "follow" {
                spec.follow = true;
            } else if option == "rotate" {
                spec.rotate = true;
            } else if let Some(size) = option.strip_prefix("block=") {
                block = Some(parse_size(size).ok_or_else(|| {
                    format!(
                        "source {text:?}: block must be a positive size such as 65536, 64KiB or 4MiB"
                    )
                })?);
            } else {
                break;
            }
            path = rest;
        }
        spec.path = PathBuf::from(path);
        if spec.rotate && !spec.follow {
            return Err(format!(
                "source {text:?}: `rotate` is for a followed file: add `,follow`"
            ));
        }
        match block {
            Some(_) if spec.follow => Err(format!(
                "source {text:?}: a followed file is read in batches of what arrived, not in \
                 blocks: drop `block=`"
            )),
            Some(block) => Ok(FileSpec { block, ..spec }),
            None => Ok(spec),
        }
    }
}

/// A positive size in bytes: digits, optionally followed by `k`/`K`/`KiB` or `M`/`MiB`.
fn parse_size(size: &str) -> Option<usize> {
    let (digits, unit) = size
        .find(|c: char| !c.is_ascii_digit())
        .map_or((size, ""), |i| size.split_at(i));
    let scale = match unit {
        "" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        _ => return None,
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&n| n > 0)
}

impl fmt::Display for FileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.block != BLOCK_BYTES {
            write!(f, ",block={}", self.block)?;
        }
        if self.follow {
            write!(f, ",follow")?;
        }
        if self.rotate {
            write!(f, ",rotate")?;
        }
        Ok(())
    }
}

impl SourceSpec {
    /// Whether records reach the dataflow through the [`IngestLog`](super::log::IngestLog) of process 0 (HTTP,
    /// TCP and followed files) rather than being read by every worker from the source.
    pub fn is_logged(&self) -> bool {
        match self {
            SourceSpec::Http | SourceSpec::Tcp(_) => true,
            SourceSpec::Csv(file) | SourceSpec::Jsonl(file) => file.follow,
            SourceSpec::Gen(_) => false,
        }
    }
}

impl FromStr for SourceSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "http" {
            return Ok(SourceSpec::Http);
        }
        let (kind, arg) = text.split_once(':').ok_or_else(|| {
            format!(
                "source {text:?}: expected csv:PATH, jsonl:PATH, gen:..., tcp:HOST:PORT or http"
            )
        })?;
        match kind {
            "csv" => Ok(SourceSpec::Csv(FileSpec::parse(arg, text)?)),
            "jsonl" | "json" => Ok(SourceSpec::Jsonl(FileSpec::parse(arg, text)?)),
            "gen" => Ok(SourceSpec::Gen(arg.parse()?)),
            "tcp" => Ok(SourceSpec::Tcp(arg.parse()?)),
            _ => Err(format!(
                "source {text:?}: kind must be csv, jsonl, gen, tcp or http"
            )),
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Csv(file) => write!(f, "csv:{file}"),
            SourceSpec::Jsonl(file) => write!(f, "jsonl:{file}"),
            SourceSpec::Gen(g) => write!(f, "gen:{g}"),
            SourceSpec::Http => write!(f, "http"),
            SourceSpec::Tcp(t) => write!(f, "tcp:{t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sources_their_block_size_and_follow() {
        let spec: SourceSpec = "csv:data/in.csv".parse().unwrap();
        assert_eq!(spec, SourceSpec::Csv(FileSpec::new("data/in.csv")));
        assert_eq!(spec.to_string(), "csv:data/in.csv");
        for (text, block) in [("64KiB", 64 << 10), ("4M", 4 << 20), ("1000", 1000)] {
            let spec: SourceSpec = format!("jsonl:a,b.json,block={text}").parse().unwrap();
            let want = FileSpec {
                path: "a,b.json".into(),
                block,
                follow: false,
                rotate: false,
            };
            assert_eq!(spec, SourceSpec::Jsonl(want));
            assert_eq!(spec.to_string().parse::<SourceSpec>().unwrap(), spec);
        }
        let spec: SourceSpec = "csv:logs/a,b.csv,follow".parse().unwrap();
        let want = FileSpec {
            path: "logs/a,b.csv".into(),
            block: BLOCK_BYTES,
            follow: true,
            rotate: false,
        };
        assert_eq!(spec, SourceSpec::Csv(want));
        assert!(spec.is_logged());
        assert_eq!(spec.to_string(), "csv:logs/a,b.csv,follow");
        for text in [
            "csv:logs/a,b.csv,follow,rotate",
            "csv:logs/a,b.csv,rotate,follow",
        ] {
            let spec: SourceSpec = text.parse().unwrap();
            let want = FileSpec {
                path: "logs/a,b.csv".into(),
                block: BLOCK_BYTES,
                follow: true,
                rotate: true,
            };
            assert_eq!(spec, SourceSpec::Csv(want));
            assert_eq!(spec.to_string(), "csv:logs/a,b.csv,follow,rotate");
        }
        for bad in [
            "csv:x,block=0",
            "csv:x,block=4GB",
            "csv:x,block=",
            "csv:x,block=1M,follow",
            "csv:x,follow,block=1M",
            "csv:x,rotate",
        ] {
            assert!(bad.parse::<SourceSpec>().is_err(), "{bad}");
        }
    }
}
