//! Key layout: a tag byte, then big-endian fields, so that prefixes scan in order (see
//! docs/checkpoint-format.md, "Keys").

use crate::types::Epoch;
use crate::window::{Pane, Time};

pub const META: &[u8] = b"M";
pub const SOURCE: &[u8] = b"S";

fn time(t: Time) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn commit(generation: u64, epoch: Epoch) -> Vec<u8> {
    [&b"C"[..], &generation.to_be_bytes(), &epoch.to_be_bytes()].concat()
}
pub fn part(generation: u64, epoch: Epoch, worker: usize) -> Vec<u8> {
    [
        &b"P"[..],
        &generation.to_be_bytes(),
        &epoch.to_be_bytes(),
        &(worker as u32).to_be_bytes(),
    ]
    .concat()
}
fn pane_suffix(key: &str, pane: Pane) -> Vec<u8> {
    [
        &(key.len() as u32).to_be_bytes()[..],
        key.as_bytes(),
        &time(pane.start),
        &time(pane.end),
    ]
    .concat()
}
pub fn delta_prefix(generation: u64, epoch: Epoch, worker: usize) -> Vec<u8> {
    [
        &b"D"[..],
        &generation.to_be_bytes(),
        &epoch.to_be_bytes(),
        &(worker as u32).to_be_bytes(),
    ]
    .concat()
}
pub fn delta(generation: u64, epoch: Epoch, worker: usize, key: &str, pane: Pane) -> Vec<u8> {
    [
        delta_prefix(generation, epoch, worker),
        pane_suffix(key, pane),
    ]
    .concat()
}
pub fn base_prefix(generation: u64, worker: usize) -> Vec<u8> {
    [
        &b"B"[..],
        &generation.to_be_bytes(),
        &(worker as u32).to_be_bytes(),
    ]
    .concat()
}
pub fn base(generation: u64, worker: usize, key: &str, pane: Pane) -> Vec<u8> {
    [base_prefix(generation, worker), pane_suffix(key, pane)].concat()
}
pub fn folded(generation: u64, worker: usize) -> Vec<u8> {
    [
        &b"F"[..],
        &generation.to_be_bytes(),
        &(worker as u32).to_be_bytes(),
    ]
    .concat()
}
pub fn ingest(seq: u64) -> Vec<u8> {
    [&b"I"[..], &seq.to_be_bytes()].concat()
}
pub fn model(key: &str) -> Vec<u8> {
    [&b"L"[..], key.as_bytes()].concat()
}
/// The (key, pane) at the end of a delta or base key.
pub fn parse_pane(suffix: &[u8]) -> Option<(String, Pane)> {
    let len = u32::from_be_bytes(suffix.get(..4)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(suffix.get(4..4 + len)?)
        .ok()?
        .to_owned();
    let rest = suffix.get(4 + len..)?;
    let t = |b: &[u8]| (u64::from_be_bytes(b.try_into().unwrap()) ^ (1 << 63)) as Time;
    if rest.len() != 16 {
        return None;
    }
    Some((
        key,
        Pane {
            start: t(&rest[..8]),
            end: t(&rest[8..]),
        },
    ))
}
pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}
pub fn printable(key: &[u8]) -> String {
    key.iter()
        .map(|b| {
            if b.is_ascii_graphic() {
                (*b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}
