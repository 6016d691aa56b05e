//! CSV lines into records: the vectorised fast path against the general parser, on the
//! same lines, side by side in each group; and lines whose numbers only the general
//! parser takes (17 significant digits), to show what falling back costs.
//!
//! `cargo bench --bench csv`; throughput is in bytes, so criterion reports GB/s.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tributary::record::Schema;
use tributary::source::{FileFormat, LineParser};

/// `lines` lines of `ts,key,x0..x7,y`, 16 keys, numbers written by `number` (a xorshift,
/// so the bench needs nothing else), after the header.
fn file(lines: usize, number: fn(f64) -> String) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 6.0
    };
    let mut text = String::from("ts,key,x0,x1,x2,x3,x4,x5,x6,x7,y\n");
    for i in 0..lines {
        text.push_str(&format!("{i},{}", i % 16));
        for _ in 0..9 {
            text.push(',');
            text.push_str(&number(next()));
        }
        text.push('\n');
    }
    text.into_bytes()
}

/// Nine significant digits, as the peers' data (`%.9g`).
fn short(v: f64) -> String {
    let digits = 9 - (v.abs().log10().floor() as i32 + 1).clamp(-8, 9);
    format!("{v:.*}", digits.max(0) as usize)
}

/// Shortest round trip: up to 17 significant digits.
fn long(v: f64) -> String {
    format!("{v}")
}

fn parser(header: &[u8]) -> LineParser {
    let schema = Schema {
        time: "ts".into(),
        key: "key".into(),
        features: (0..8).map(|i| format!("x{i}")).collect(),
        target: "y".into(),
    };
    let mut parser = LineParser::new(FileFormat::Csv, &schema);
    parser.header(header, "bench").unwrap();
    parser
}

/// Every line, the fast path first (as the file source reads), or the general parser only.
fn read(bytes: &[u8], fast: bool) -> f64 {
    let start = memchr::memchr(b'\n', bytes).unwrap() + 1;
    let mut parser = parser(&bytes[..start]);
    let (mut pos, mut sum) = (start, 0.0);
    while pos < bytes.len() {
        if fast && let Some((record, next)) = parser.parse_csv_at(bytes, pos) {
            sum += record.z[0];
            pos = next;
            continue;
        }
        let stop = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
        if let Ok(Some(record)) = parser.parse(&bytes[pos..stop]) {
            sum += record.z[0];
        }
        pos = stop + 1;
    }
    sum
}

fn lines(c: &mut Criterion) {
    let mut group = c.benchmark_group("csv_lines");
    for (name, number) in [
        ("short_decimals", short as fn(f64) -> String),
        ("17_digits", long),
    ] {
        let bytes = file(20_000, number);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("fast_path", name), &bytes, |b, bytes| {
            b.iter(|| read(black_box(bytes), true))
        });
        group.bench_with_input(BenchmarkId::new("general", name), &bytes, |b, bytes| {
            b.iter(|| read(black_box(bytes), false))
        });
    }
    group.finish();
}

criterion_group!(benches, lines);
criterion_main!(benches);
