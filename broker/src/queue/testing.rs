//! Random command sequences for property tests: of the core alone (`tests.rs`), and of
//! the core over memory against the core over redb (`storage/tables.rs`).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Enqueue {
        queue: u8,
        priority: i8,
        delay: u16,
        key: Option<u8>,
    },
    Lease {
        queue: u8,
        max: u8,
        vis: u16,
    },
    Ack {
        pick: u16,
        stale: bool,
    },
    Nack {
        pick: u16,
        dead: bool,
        retry_after: Option<u16>,
    },
    Extend {
        pick: u16,
        vis: u16,
    },
    Cancel {
        pick: u16,
    },
    Retry {
        pick: u16,
    },
    Redrive {
        queue: u8,
    },
    Pause {
        queue: u8,
        paused: bool,
    },
    Release {
        pick: u16,
        n: u8,
    },
    Tick,
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, -2..3i8, prop_oneof![Just(0u16), 0..3000u16], proptest::option::of(0..4u8))
            .prop_map(|(queue, priority, delay, key)| Op::Enqueue { queue, priority, delay, key }),
        3 => (0..3u8, 1..4u8, 1..3000u16).prop_map(|(queue, max, vis)| Op::Lease { queue, max, vis }),
        2 => (any::<u16>(), any::<bool>()).prop_map(|(pick, stale)| Op::Ack { pick, stale }),
        2 => (any::<u16>(), any::<bool>(), proptest::option::of(0..2000u16))
            .prop_map(|(pick, dead, retry_after)| Op::Nack { pick, dead, retry_after }),
        1 => (any::<u16>(), 1..3000u16).prop_map(|(pick, vis)| Op::Extend { pick, vis }),
        1 => any::<u16>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<u16>().prop_map(|pick| Op::Retry { pick }),
        1 => (0..3u8).prop_map(|queue| Op::Redrive { queue }),
        1 => (0..3u8, any::<bool>()).prop_map(|(queue, paused)| Op::Pause { queue, paused }),
        1 => (any::<u16>(), 1..4u8).prop_map(|(pick, n)| Op::Release { pick, n }),
        2 => Just(Op::Tick),
    ]
}

const BACKOFF: Backoff = Backoff {
    base_ms: 1_000,
    max_ms: 3_600_000,
};

/// Turns [`Op`]s into log entries: advances time by 97 ms per op, and picks the jobs
/// and leases that acks, nacks and admin commands name from what earlier replies gave.
#[derive(Default)]
pub(crate) struct Driver {
    now: u64,
    n: u32,
    /// Leases handed out so far (some stale by now, on purpose).
    pub leases: Vec<LeasedJob>,
    /// Ids of every job enqueued so far.
    pub ids: Vec<String>,
}

impl Driver {
    /// The next entry.
    pub fn envelope(&mut self, op: Op) -> Envelope {
        self.now += 97;
        let queue = |q: u8| format!("q{q}");
        let leases = &self.leases;
        let ids = &self.ids;
        let cmd = match op {
            Op::Enqueue {
                queue: q,
                priority,
                delay,
                key,
            } => {
                self.n += 1;
                // Every other job gets its id at apply, from its seq: known from the
                // reply ([`Self::observe`]).
                let numbered = self.n.is_multiple_of(2);
                let id = format!("j{}", self.n);
                if !numbered {
                    self.ids.push(id.clone());
                }
                let job = NewJob {
                    id: if numbered { String::new() } else { id.clone() },
                    queue: queue(q),
                    job_type: "t".into(),
                    // Every fourth payload is too big to live in the record.
                    payload: bytes::Bytes::from(if self.n.is_multiple_of(4) {
                        format!("payload-{id}-{}", "p".repeat(INLINE_BLOB_MAX))
                    } else {
                        format!("payload-{id}")
                    }),
                    headers: BTreeMap::from([("h".to_string(), id)]),
                    priority: priority.into(),
                    due: Due::After(delay.into()),
                    max_attempts: 3,
                    idempotency_key: key.map(|k| format!("k{k}")).unwrap_or_default(),
                    dedup_window_ms: 2_000,
                    retention: Retention {
                        result_ttl_ms: 1_500,
                        failure_ttl_ms: 2_500,
                    },
                    webhook_url: if q == 0 {
                        "http://hook.invalid/".into()
                    } else {
                        String::new()
                    },
                };
                if numbered {
                    Command::EnqueueNumbered(vec![job])
                } else {
                    Command::Enqueue(vec![job])
                }
            }
            Op::Lease { queue: q, max, vis } => Command::Lease {
                queues: vec![queue(q), queue((q + 1) % 3)],
                worker_id: format!("w{q}"),
                max_jobs: max.into(),
                visibility_timeout_ms: vis.into(),
            },
            Op::Ack { pick, stale } if !leases.is_empty() => {
                let l = &leases[pick as usize % leases.len()];
                Command::Ack {
                    job_id: l.job_id.clone(),
                    lease_id: l.lease_id + u64::from(stale),
                    // Every third result is too big to live in the record.
                    result: if pick.is_multiple_of(3) {
                        bytes::Bytes::from(format!("r{pick}-{}", "r".repeat(INLINE_BLOB_MAX)))
                    } else {
                        format!("r{pick}").into()
                    },
                }
            }
            Op::Nack {
                pick,
                dead,
                retry_after,
            } if !leases.is_empty() => {
                let l = &leases[pick as usize % leases.len()];
                Command::Nack {
                    job_id: l.job_id.clone(),
                    lease_id: l.lease_id,
                    error: "e".into(),
                    retry_after_ms: retry_after.map(u64::from),
                    dead_letter: dead,
                    backoff: BACKOFF,
                }
            }
            Op::Extend { pick, vis } if !leases.is_empty() => {
                let l = &leases[pick as usize % leases.len()];
                Command::Extend {
                    job_id: l.job_id.clone(),
                    lease_id: l.lease_id,
                    visibility_timeout_ms: vis.into(),
                    progress: Some(50),
                    progress_message: None,
                }
            }
            Op::Cancel { pick } if !ids.is_empty() => Command::Cancel {
                job_id: ids[pick as usize % ids.len()].clone(),
            },
            Op::Retry { pick } if !ids.is_empty() => Command::Retry {
                job_id: ids[pick as usize % ids.len()].clone(),
            },
            Op::Release { pick, n } if !leases.is_empty() => Command::Release {
                leases: (0..usize::from(n))
                    .map(|i| &leases[(pick as usize + i) % leases.len()])
                    .map(|l| (l.job_id.clone(), l.lease_id))
                    .collect(),
            },
            Op::Redrive { queue: q } => Command::Redrive { queue: queue(q) },
            Op::Pause {
                queue: q,
                paused: true,
            } => Command::Pause { queue: queue(q) },
            Op::Pause {
                queue: q,
                paused: false,
            } => Command::Resume { queue: queue(q) },
            _ => Command::Tick,
        };
        Envelope {
            now_ms: self.now,
            cmd,
        }
    }

    /// Records what a reply handed out.
    pub fn observe(&mut self, reply: &Reply) {
        match reply {
            Ok(Outcome::Leased(got)) => self.leases.extend(got.iter().cloned()),
            Ok(Outcome::Enqueued(got)) => {
                for e in got {
                    if !e.duplicate && !self.ids.contains(&e.job_id) {
                        self.ids.push(e.job_id.clone());
                    }
                }
            }
            _ => {}
        }
    }
}

/// Everything a caller can observe of a state, as text, for comparing two stores.
pub(crate) fn observe<T: TablesRead>(s: &State<T>, ids: &[String]) -> String {
    let mut out = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "now {} jobs {} wakeup {:?}",
        s.now_ms(),
        s.job_count(),
        s.next_wakeup_ms()
    );
    let _ = writeln!(out, "stats {:?}", s.all_queue_stats());
    let _ = writeln!(out, "workers {:?}", s.workers());
    let _ = writeln!(
        out,
        "webhooks {} {:?}",
        s.pending_webhooks(),
        s.due_webhooks(u64::MAX, 1000)
    );
    for q in ["q0", "q1", "q2"] {
        let qs = [q.to_string()];
        let _ = writeln!(
            out,
            "{q} leasable {} {:?}",
            s.has_leasable(&qs),
            s.queue_stats(q)
        );
        for st in [None, Some(JobState::Ready), Some(JobState::Dead)] {
            let (page, next) = s.list_jobs(q, st, None, 5);
            let ids: Vec<&str> = page.iter().map(|j| j.id.as_str()).collect();
            let _ = writeln!(out, "{q} {st:?} {ids:?} {next:?}");
        }
    }
    for id in ids {
        let _ = writeln!(out, "{id} {:?}", s.job(id));
    }
    out
}
