//! Snapshot events in a spawned node's log.
//!
//! The broker has no call that triggers or reports a snapshot, so `backlog` reads the
//! times from the node's (text) log, which `spawn.rs` keeps at `info` for these lines:
//!
//! ```text
//! <rfc3339>  INFO openraft::core::sm::worker: handle_cmd: build snapshot        build starts
//! <rfc3339>  INFO taskraft_broker::raft::state_machine: built snapshot snapshot_id=T1-N1-4711-0 bytes=123
//! <rfc3339>  INFO openraft::core::sm::worker: ...: BeginReceivingSnapshot     a follower starts receiving one
//! <rfc3339>  INFO taskraft_broker::raft::state_machine: installed snapshot snapshot_id=...
//! ```
//!
//! Both timestamps of a build come from the node's clock, so their difference is the
//! build time whatever the sampling of the load generator.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::SystemTime;

/// One snapshot-related line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// openraft asked the state machine for a snapshot.
    BuildStart,
    /// The state machine saved it.
    Built {
        /// Last log index it covers (from the snapshot id).
        index: Option<u64>,
        /// Serialized size.
        bytes: Option<u64>,
    },
    /// A follower started receiving a snapshot from the leader.
    InstallStart,
    /// A follower installed a received snapshot.
    Installed,
}

/// A snapshot build: start (if its line was seen) and end.
#[derive(Clone, Debug)]
pub struct Build {
    /// "build snapshot" line.
    pub started: Option<SystemTime>,
    /// "built snapshot" line.
    pub built: SystemTime,
    /// Last log index it covers.
    pub index: Option<u64>,
    /// Serialized size.
    pub bytes: Option<u64>,
}

impl Build {
    /// Start to end, when both lines were seen.
    pub fn took(&self) -> Option<std::time::Duration> {
        self.started.and_then(|s| self.built.duration_since(s).ok())
    }
}

/// The snapshot events in `log` after byte `from`, in order.
pub fn events(log: &Path, from: u64) -> Vec<(SystemTime, Event)> {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text.lines().filter_map(parse_line).collect()
}

/// The builds among `events`, each "built" paired with the "build" line before it.
pub fn builds(events: &[(SystemTime, Event)]) -> Vec<Build> {
    let mut out = Vec::new();
    let mut started = None;
    for (at, e) in events {
        match e {
            Event::BuildStart => started = Some(*at),
            Event::Built { index, bytes } => out.push(Build {
                started: started.take(),
                built: *at,
                index: *index,
                bytes: *bytes,
            }),
            _ => {}
        }
    }
    out
}

fn parse_line(raw: &str) -> Option<(SystemTime, Event)> {
    let line = strip_ansi(raw);
    let event = if line.contains("built snapshot") {
        Event::Built {
            index: field(&line, "snapshot_id=").and_then(|id| {
                // `{leader}-{index}-{seq}`, the leader written as `T<term>-N<node>`.
                let parts: Vec<&str> = id.split('-').collect();
                parts
                    .len()
                    .checked_sub(2)
                    .and_then(|i| parts[i].parse().ok())
            }),
            bytes: field(&line, "bytes=").and_then(|b| b.parse().ok()),
        }
    } else if line.contains(": build snapshot") {
        Event::BuildStart
    } else if line.contains("BeginReceivingSnapshot") {
        Event::InstallStart
    } else if line.contains("installed snapshot") {
        Event::Installed
    } else {
        return None;
    };
    let ts = line.split_whitespace().next()?;
    let at = humantime::parse_rfc3339_weak(ts.trim_end_matches('Z')).ok()?;
    Some((at, event))
}

/// The value after `key` up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()
}

/// Removes terminal colour sequences (`ESC [ ... letter`): current nodes write none to
/// a log file, but older binaries driven with `--taskraft-bin` do.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_build_and_built_lines_with_and_without_colours() {
        let start = "\u{1b}[2m2026-11-26T08:30:00.250000Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mopenraft::core::sm::worker\u{1b}[0m\u{1b}[2m:\u{1b}[0m handle_cmd: build snapshot";
        let built = "2026-11-26T08:30:01.750000Z  INFO taskraft_broker::raft::state_machine: built snapshot snapshot_id=T3-N2-4711-0 bytes=1234";
        let evs: Vec<_> = [start, built, "noise"]
            .iter()
            .filter_map(|l| parse_line(l))
            .collect();
        assert_eq!(evs[0].1, Event::BuildStart);
        assert_eq!(
            evs[1].1,
            Event::Built {
                index: Some(4711),
                bytes: Some(1234)
            }
        );
        let b = builds(&evs);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].took(), Some(std::time::Duration::from_millis(1500)));
    }
}
