//! Key encodings: built so that redb's byte order is the order the core needs (see
//! the table in `mod.rs`).

use super::*;

/// `sm_meta` key of the core's counters.
pub const COUNTERS_KEY: &[u8] = b"counters";

pub(super) fn qkey(queue: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + queue.len() + 13);
    k.push(queue.len().min(255) as u8);
    k.extend_from_slice(queue.as_bytes());
    k
}

pub(super) fn ready_key(queue: &str, priority: i32, seq: u64) -> Vec<u8> {
    let mut k = qkey(queue);
    // Flipping the sign bit orders i32 as u32; inverting makes higher priorities first.
    k.extend_from_slice(&(!((priority as u32) ^ 0x8000_0000)).to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `by_state` marker of the every-job listing (a state index is below 8).
pub(super) const LISTED: u8 = 0xff;
/// `by_state` marker of the dead-job index.
pub(super) const DEAD: u8 = JobState::Dead as u8;

pub(super) fn state_key(queue: &str, marker: u8, seq: u64) -> Vec<u8> {
    let mut k = qkey(queue);
    k.push(marker);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn timer_key(timer: Timer, at: u64, seq: u64) -> [u8; 17] {
    timer_key_raw(timer as u8, at, seq)
}

/// A `timers` key: kind, time, then a seq (or an id).
pub(super) fn timer_key_raw(kind: u8, at: u64, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = kind;
    k[1..9].copy_from_slice(&at.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `timers` kind bytes of format 2's per-job lease deadlines and expiries, converted
/// to [`crate::queue::Group`] entries at open.
pub(super) const LEASE_PER_JOB: u8 = 1;
pub(super) const EXPIRY_PER_JOB: u8 = 2;

/// A `timers` key of a group entry (kind byte = the group's number).
pub(super) fn group_key(group: Group, at: u64, key: u64) -> [u8; 17] {
    timer_key_raw(group as u8, at, key)
}

/// A group entry's seqs: u64be each.
pub(super) fn seqs_of(value: &[u8]) -> Vec<u64> {
    value
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

pub(super) fn dedup_key(queue: &str, key: &str) -> Vec<u8> {
    let mut k = qkey(queue);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(super) fn at_key(at: u64, rest: &[u8]) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.extend_from_slice(rest);
    k
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The first key after every key that starts with `prefix` (`None`: there is none).
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Splits `qkey . rest` into the queue name and the rest.
pub(super) fn split_qkey(b: &[u8]) -> Option<(String, &[u8])> {
    let len = *b.first()? as usize;
    let name = std::str::from_utf8(b.get(1..1 + len)?).ok()?.to_string();
    Some((name, &b[1 + len..]))
}
