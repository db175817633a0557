//! Checks a recorded history against the final state of the jobs.
//!
//! What must hold, whatever faults happened:
//!
//! - every enqueue that was answered OK names a job that exists;
//! - one job per idempotency key, per request id and per logical enqueue (each
//!   logical enqueue has its own payload), and no job nobody enqueued;
//! - no ack is accepted for a stale lease: once an ack of lease L (attempt a) was
//!   answered OK, no lease of a later attempt exists, and the job ended SUCCEEDED at
//!   attempt a; at most one lease is acked per job; one attempt is never delivered
//!   twice;
//! - no early expiry: an ack answered more than a second inside the visibility timeout
//!   of the lease it names (measured from when the Lease was sent) is not refused as
//!   stale;
//! - replicated time (a lease's deadline minus its visibility timeout) moves with real
//!   time: never hours ahead between two Lease calls, never backwards;
//! - a stale ack (sent well after the lease ran out) is refused when no fault slowed
//!   the cluster meanwhile, and its job is delivered again (or dies, if that was its
//!   last attempt);
//! - every job ends SUCCEEDED, or DEAD with its attempts used up; a SUCCEEDED job was
//!   acked by us at its final attempt.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use taskraft_proto::v1 as pb;
use tonic::Code;

use super::history::{Event, Fault, Op, Outcome};

/// A property that failed, with the job and time it is about.
#[derive(Debug)]
pub struct Violation {
    pub what: String,
    /// Jobs it is about: the excerpt shows every call naming one of them.
    pub jobs: Vec<String>,
    /// An enqueued payload it is about: the excerpt shows every enqueue of it.
    pub payload: Option<String>,
    pub at_ms: u64,
}

/// Counts worth printing next to the violations.
#[derive(Debug, Default)]
pub struct Stats {
    pub stale_acks_refused: u64,
    pub stale_acks_accepted_during_faults: u64,
    pub acked: u64,
    pub succeeded: u64,
    pub dead: u64,
}

struct LeaseRec<'a> {
    visibility_ms: u64,
    job_id: &'a str,
    lease_id: &'a str,
    attempt: u32,
    ev: &'a Event,
}

/// Checks `events` against `jobs` (every job of the queue, by id, as all nodes agree).
pub fn check(
    events: &[Event],
    faults: &[Fault],
    jobs: &BTreeMap<String, pb::Job>,
) -> (Vec<Violation>, Stats) {
    let mut v = Vec::new();
    let mut stats = Stats::default();
    let mut flag = |what: String, job: Option<&str>, at_ms: u64| {
        v.push(Violation {
            what,
            jobs: job.map(str::to_string).into_iter().collect(),
            payload: None,
            at_ms,
        })
    };

    // --- Enqueues.
    let mut sent_payloads = BTreeSet::new();
    let mut by_rid: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut by_key: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for e in events {
        let Op::Enqueue {
            payload,
            key,
            request_id,
            out,
            ..
        } = &e.op
        else {
            continue;
        };
        sent_payloads.insert(payload.as_str());
        let Outcome::Ok((id, _)) = out else { continue };
        if !jobs.contains_key(id) {
            flag(
                format!("enqueue of {payload:?} was answered with job {id}, which does not exist"),
                Some(id),
                e.end_ms,
            );
        }
        if let Some(r) = request_id {
            by_rid.entry(r).or_default().insert(id);
        }
        if let Some(k) = key {
            by_key.entry(k).or_default().insert(id);
        }
    }
    for (what, map) in [("request id", &by_rid), ("idempotency key", &by_key)] {
        for (name, ids) in map.iter().filter(|(_, ids)| ids.len() > 1) {
            let first = ids.iter().next().copied();
            flag(
                format!("{what} {name} was answered with several jobs: {ids:?}"),
                first,
                0,
            );
        }
    }
    // One job per logical enqueue (payload) and per key, and none unasked for.
    let mut per_logical: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (id, j) in jobs {
        let payload = String::from_utf8_lossy(&j.payload).into_owned();
        if !sent_payloads.contains(payload.as_str()) {
            flag(
                format!("job {id} holds payload {payload:?}, which no producer sent"),
                Some(id),
                0,
            );
        }
        let logical = match payload.split('|').collect::<Vec<_>>().as_slice() {
            ["key", k, ..] => format!("key {k}"),
            _ => format!("payload {payload}"),
        };
        per_logical.entry(logical).or_default().push(id);
    }
    let mut duplicates = Vec::new();
    for (logical, ids) in &per_logical {
        if ids.len() > 1 {
            duplicates.push(Violation {
                what: format!("{logical} is stored as {} jobs: {ids:?}", ids.len()),
                jobs: ids.iter().map(|s| s.to_string()).collect(),
                payload: jobs
                    .get(ids[0])
                    .map(|j| String::from_utf8_lossy(&j.payload).into_owned()),
                at_ms: 0,
            });
        }
    }

    // --- Leases.
    let mut leases: Vec<LeaseRec> = Vec::new();
    for e in events {
        if let Op::Lease {
            visibility_ms,
            out: Outcome::Ok(got),
        } = &e.op
        {
            for l in got {
                leases.push(LeaseRec {
                    visibility_ms: *visibility_ms,
                    job_id: &l.job_id,
                    lease_id: &l.lease_id,
                    attempt: l.attempt,
                    ev: e,
                });
            }
        }
    }
    let mut lease_by_id: HashMap<&str, &LeaseRec> = HashMap::new();
    let mut attempts_seen: HashMap<(&str, u32), &str> = HashMap::new();
    let mut last_attempt: HashMap<&str, u32> = HashMap::new();
    for l in &leases {
        if let Some(other) = lease_by_id.insert(l.lease_id, l) {
            flag(
                format!(
                    "lease id {} was granted twice (jobs {} and {})",
                    l.lease_id, other.job_id, l.job_id
                ),
                Some(l.job_id),
                l.ev.end_ms,
            );
        }
        if let Some(other) = attempts_seen.insert((l.job_id, l.attempt), l.lease_id) {
            flag(
                format!(
                    "attempt {} of job {} was delivered twice (leases {other} and {})",
                    l.attempt, l.job_id, l.lease_id
                ),
                Some(l.job_id),
                l.ev.end_ms,
            );
        }
        let a = last_attempt.entry(l.job_id).or_default();
        *a = (*a).max(l.attempt);
    }

    // --- Replicated time, as the lease deadlines show it (deadline - visibility):
    // between two Lease calls it advances about as much as real time did, never by
    // hours, and never backwards.
    let mut stamped: Vec<(&Event, u64)> = Vec::new();
    for e in events {
        if let Op::Lease {
            visibility_ms,
            out: Outcome::Ok(got),
        } = &e.op
        {
            if let Some(l) = got.first() {
                stamped.push((e, l.deadline_ms.saturating_sub(*visibility_ms)));
            }
        }
    }
    stamped.sort_by_key(|(e, _)| e.end_ms);
    for pair in stamped.windows(2) {
        let ((a, ta), (b, tb)) = (pair[0], pair[1]);
        // b was applied after a was sent; both before they were answered.
        let real_max = b.end_ms.saturating_sub(a.start_ms);
        if tb > ta + real_max + 2_000 {
            flag(
                format!(
                    "replicated time jumped ahead by {:.1} s between the Lease answered at {} ms \
                     (time {ta}) and the one answered at {} ms (time {tb}), while at most \
                     {real_max} ms passed",
                    (tb - ta - real_max) as f64 / 1000.0,
                    a.end_ms,
                    b.end_ms
                ),
                b.job_ids().first().copied(),
                b.end_ms,
            );
        }
        if b.start_ms > a.end_ms && tb + 1_000 < ta {
            flag(
                format!(
                    "replicated time ran back by {} ms between the Lease answered at {} ms \
                     and the one sent at {} ms",
                    ta - tb,
                    a.end_ms,
                    b.start_ms
                ),
                b.job_ids().first().copied(),
                b.end_ms,
            );
        }
    }

    // --- Acks.
    let mut acked_leases: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut ack_tried: BTreeSet<(&str, u32)> = BTreeSet::new();
    for e in events {
        let Op::Ack {
            job_id,
            lease_id,
            attempt,
            stale,
            out,
        } = &e.op
        else {
            continue;
        };
        ack_tried.insert((job_id, *attempt));
        let lease = lease_by_id.get(lease_id.as_str());
        if out.is_ok() {
            stats.acked += 1;
            acked_leases.entry(job_id).or_default().insert(lease_id);
            if let Some(later) = last_attempt.get(job_id.as_str()).filter(|a| **a > *attempt) {
                flag(
                    format!(
                        "ack of lease {lease_id} (attempt {attempt}) was accepted, but attempt \
                         {later} was delivered too: a stale ack was accepted or a finished job \
                         was delivered again"
                    ),
                    Some(job_id),
                    e.end_ms,
                );
            }
            match jobs.get(job_id) {
                Some(j) if j.state == pb::JobState::Succeeded as i32 && j.attempt == *attempt => {}
                Some(j) => flag(
                    format!(
                        "ack of lease {lease_id} (attempt {attempt}) was accepted, but the job \
                         ended {} at attempt {}",
                        state_name(j.state),
                        j.attempt
                    ),
                    Some(job_id),
                    e.end_ms,
                ),
                None => {}
            }
            if *stale {
                let Some(l) = lease else { continue };
                let quiet = !faults
                    .iter()
                    .any(|f| f.start_ms <= e.end_ms && f.end_ms + 2_000 >= l.ev.start_ms);
                let late = e.start_ms >= l.ev.end_ms + l.visibility_ms + 1_500;
                if quiet && late {
                    flag(
                        format!(
                            "ack of lease {lease_id} sent {} ms after the lease was granted \
                             (visibility {} ms), with no fault meanwhile, was accepted",
                            e.start_ms - l.ev.end_ms,
                            l.visibility_ms
                        ),
                        Some(job_id),
                        e.end_ms,
                    );
                } else {
                    stats.stale_acks_accepted_during_faults += 1;
                }
            }
        } else if out.code() == Some(Code::FailedPrecondition) {
            let Some(l) = lease else { continue };
            if *stale {
                stats.stale_acks_refused += 1;
                // Refused: the job must have been delivered again, or died.
                if let Some(j) = jobs.get(job_id) {
                    let dead_at_last =
                        j.state == pb::JobState::Dead as i32 && *attempt >= j.max_attempts;
                    if j.attempt <= *attempt && !dead_at_last {
                        flag(
                            format!(
                                "stale ack of lease {lease_id} (attempt {attempt}) was refused, \
                                 but the job was never delivered again (it ended {} at attempt {})",
                                state_name(j.state),
                                j.attempt
                            ),
                            Some(job_id),
                            e.end_ms,
                        );
                    }
                }
            } else if e.end_ms + 1_000 < l.ev.start_ms + l.visibility_ms {
                flag(
                    format!(
                        "ack of lease {lease_id} was refused as stale {} ms after the Lease call \
                         was sent, inside its {} ms visibility timeout: the lease expired early",
                        e.end_ms - l.ev.start_ms,
                        l.visibility_ms
                    ),
                    Some(job_id),
                    e.end_ms,
                );
            }
        }
    }
    for (job, ls) in &acked_leases {
        if ls.len() > 1 {
            flag(
                format!("acks of several leases of one job were accepted: {ls:?}"),
                Some(job),
                0,
            );
        }
    }

    // --- Final states.
    for (id, j) in jobs {
        let state = pb::JobState::try_from(j.state).unwrap_or(pb::JobState::Unspecified);
        match state {
            pb::JobState::Succeeded => {
                stats.succeeded += 1;
                if !ack_tried.contains(&(id.as_str(), j.attempt)) {
                    flag(
                        format!(
                            "job ended SUCCEEDED at attempt {} but no worker acked that attempt",
                            j.attempt
                        ),
                        Some(id),
                        0,
                    );
                }
            }
            pb::JobState::Dead => {
                stats.dead += 1;
                if j.attempt < j.max_attempts {
                    flag(
                        format!(
                            "job is DEAD after {} of {} attempts (last error {:?})",
                            j.attempt, j.max_attempts, j.last_error
                        ),
                        Some(id),
                        0,
                    );
                }
            }
            _ => flag(
                format!(
                    "job did not end: {} at attempt {}",
                    state_name(j.state),
                    j.attempt
                ),
                Some(id),
                0,
            ),
        }
    }
    v.extend(duplicates);
    (v, stats)
}

pub fn state_name(s: i32) -> String {
    pb::JobState::try_from(s).map_or_else(|_| format!("state {s}"), |s| format!("{s:?}"))
}

/// The part of the history about `v`: the calls that name its job, and the faults
/// around them (or, without a job, the faults and calls around its time).
pub fn excerpt(v: &Violation, events: &[Event], faults: &[Fault]) -> String {
    let mut out = String::new();
    let about = |e: &Event| {
        e.job_ids().iter().any(|id| v.jobs.iter().any(|j| j == id))
            || v.payload.as_ref().is_some_and(|p| match &e.op {
                Op::Enqueue { payload, key, .. } => {
                    payload == p
                        || key
                            .as_ref()
                            .is_some_and(|k| p.starts_with(&format!("key|{k}|")))
                }
                _ => false,
            })
    };
    let mine: Vec<&Event> = if v.jobs.is_empty() && v.payload.is_none() {
        events
            .iter()
            .filter(|e| e.start_ms + 1_000 >= v.at_ms && e.start_ms <= v.at_ms + 1_000)
            .take(40)
            .collect()
    } else {
        events.iter().filter(|e| about(e)).collect()
    };
    let from = mine.iter().map(|e| e.start_ms).min().unwrap_or(v.at_ms);
    let to = mine.iter().map(|e| e.end_ms).max().unwrap_or(v.at_ms);
    for f in faults {
        if f.start_ms <= to + 3_000 && f.end_ms + 3_000 >= from {
            out += &format!(
                "  fault {:>6}..{:>6} ms  {} node {} {}\n",
                f.start_ms,
                f.end_ms,
                f.kind.name(),
                f.node,
                f.detail
            );
        }
    }
    let mut sorted = mine;
    sorted.sort_by_key(|e| e.start_ms);
    for e in sorted {
        out += &format!(
            "  call  {:>6}..{:>6} ms  {:<9} node {} {} {}\n",
            e.start_ms,
            e.end_ms,
            e.client,
            e.node,
            e.kind(),
            describe(&e.op)
        );
    }
    out
}

/// The whole history, faults and calls in order of start.
pub fn dump(events: &[Event], faults: &[Fault]) -> String {
    let mut lines: Vec<(u64, String)> = faults
        .iter()
        .map(|f| {
            (
                f.start_ms,
                format!(
                    "fault {:>6}..{:>6} ms  {} node {} {}",
                    f.start_ms,
                    f.end_ms,
                    f.kind.name(),
                    f.node,
                    f.detail
                ),
            )
        })
        .collect();
    lines.extend(events.iter().map(|e| {
        (
            e.start_ms,
            format!(
                "call  {:>6}..{:>6} ms  {:<9} node {} {} {}",
                e.start_ms,
                e.end_ms,
                e.client,
                e.node,
                e.kind(),
                describe(&e.op)
            ),
        )
    }));
    lines.sort_by_key(|l| l.0);
    lines.into_iter().map(|l| l.1 + "\n").collect()
}

fn describe(op: &Op) -> String {
    fn res<T: std::fmt::Debug>(o: &Outcome<T>) -> String {
        match o {
            Outcome::Ok(t) => format!("-> ok {t:?}"),
            Outcome::Err(c, m) => format!("-> {c:?}: {m}"),
        }
    }
    match op {
        Op::Enqueue {
            payload,
            key,
            request_id,
            max_attempts,
            out,
        } => format!(
            "payload={payload} key={key:?} request_id={request_id:?} max_attempts={max_attempts} {}",
            res(out)
        ),
        Op::Lease { visibility_ms, out } => match out {
            Outcome::Ok(jobs) => format!(
                "visibility={visibility_ms}ms -> ok {:?}",
                jobs.iter()
                    .map(|j| format!("{} lease {} attempt {}", j.job_id, j.lease_id, j.attempt))
                    .collect::<Vec<_>>()
            ),
            Outcome::Err(..) => format!("visibility={visibility_ms}ms {}", res(out)),
        },
        Op::Ack {
            job_id,
            lease_id,
            attempt,
            stale,
            out,
        } => format!(
            "{job_id} lease {lease_id} attempt {attempt}{} {}",
            if *stale { " (stale on purpose)" } else { "" },
            res(out)
        ),
        Op::Nack {
            job_id,
            lease_id,
            attempt,
            out,
        } => format!("{job_id} lease {lease_id} attempt {attempt} {}", res(out)),
    }
}
