//! Behaviour tests and a property test of the pure core.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const BACKOFF: Backoff = Backoff {
    base_ms: 1_000,
    max_ms: 3_600_000,
};
const RETENTION: Retention = Retention {
    result_ttl_ms: 86_400_000,
    failure_ttl_ms: 7 * 86_400_000,
};

fn new_job(id: &str, queue: &str, priority: i32) -> NewJob {
    NewJob {
        id: id.into(),
        queue: queue.into(),
        job_type: "t".into(),
        payload: bytes::Bytes::from(format!("payload-{id}")),
        headers: BTreeMap::new(),
        priority,
        due: Due::After(0),
        max_attempts: 3,
        idempotency_key: String::new(),
        dedup_window_ms: 86_400_000,
        retention: RETENTION,
        webhook_url: String::new(),
    }
}

fn at(now_ms: u64, cmd: Command) -> Envelope {
    Envelope { now_ms, cmd }
}

fn lease_cmd(queues: &[&str], max_jobs: u32, vis: u64) -> Command {
    Command::Lease {
        queues: queues.iter().map(|s| s.to_string()).collect(),
        worker_id: "w1".into(),
        max_jobs,
        visibility_timeout_ms: vis,
    }
}

fn leased(reply: Reply) -> Vec<LeasedJob> {
    match reply {
        Ok(Outcome::Leased(v)) => v,
        other => panic!("expected Leased, got {other:?}"),
    }
}

/// A job id made at apply names its job by seq, without the id index; an id that only
/// decodes to a seq (another time's numbered id, or an API-chosen UUID with those bits)
/// never finds another job's record, and an ack through a numbered id settles the job.
#[test]
fn a_numbered_id_finds_its_own_job_and_no_other() {
    let mut s = State::new();
    // An id chosen by a proposer (an older version's entry) shaped like the numbered
    // id of seq 2 at time 5: the second job below has seq 2.
    let chosen = job_id::numbered(5, 2);
    s.apply(&at(1_000, Command::Enqueue(vec![new_job(&chosen, "q", 0)])))
        .unwrap();
    let reply = s.apply(&at(
        1_000,
        Command::EnqueueNumbered(vec![new_job("", "q", 0), new_job("", "q", 0)]),
    ));
    let ids: Vec<String> = match reply {
        Ok(Outcome::Enqueued(e)) => e.into_iter().map(|e| e.job_id).collect(),
        other => panic!("expected Enqueued, got {other:?}"),
    };
    let first_numbered = s.job(&ids[0]).expect("numbered id finds its job").job;
    assert_eq!(job_id::seq_in(&ids[0]), Some(first_numbered.seq));
    assert_eq!(ids[0], job_id::numbered(1_000, first_numbered.seq));
    assert_eq!(s.job(&chosen).expect("indexed id").job.id, chosen);
    assert_ne!(s.job(&chosen).unwrap().job.seq, first_numbered.seq);
    assert!(s.job(&job_id::numbered(999, first_numbered.seq)).is_none());
    assert!(matches!(
        s.apply(&at(
            1_001,
            Command::Cancel {
                job_id: job_id::numbered(999, 3)
            }
        )),
        Err(CoreError::JobNotFound(_))
    ));
    assert_eq!(s.tables().ids.len(), 1, "only the chosen id is indexed");

    let got = leased(s.apply(&at(1_002, lease_cmd(&["q"], 3, 30_000))));
    for l in &got {
        s.apply(&at(
            1_003,
            Command::Ack {
                job_id: l.job_id.clone(),
                lease_id: l.lease_id,
                result: bytes::Bytes::new(),
            },
        ))
        .unwrap();
    }
    for id in ids.iter().chain([&chosen]) {
        assert_eq!(s.job(id).unwrap().job.state, JobState::Succeeded, "{id}");
    }
}

/// A released job (its Lease reached nobody) is ready again at the front of its queue,
/// with the attempt undone and the worker holding nothing; a release naming a lease that
/// is no longer the job's (acked, or a stale id) changes nothing.
#[test]
fn released_jobs_are_ready_again_without_using_an_attempt() {
    let mut s = State::new();
    let jobs = vec![new_job("a", "q", 0), new_job("b", "q", 0)];
    s.apply(&at(1, Command::Enqueue(jobs))).unwrap();
    let got = leased(s.apply(&at(2, lease_cmd(&["q"], 2, 30_000))));
    let (a, b) = (&got[0], &got[1]);
    s.apply(&at(
        3,
        Command::Ack {
            job_id: b.job_id.clone(),
            lease_id: b.lease_id,
            result: bytes::Bytes::new(),
        },
    ))
    .unwrap();
    let reply = s.apply(&at(
        4,
        Command::Release {
            leases: vec![
                (a.job_id.clone(), a.lease_id),
                (b.job_id.clone(), b.lease_id),
                ("missing".into(), 1),
            ],
        },
    ));
    assert!(matches!(reply, Ok(Outcome::Released(1))), "{reply:?}");
    let job_a = s.job("a").expect("a");
    assert_eq!((job_a.state, job_a.attempt), (JobState::Ready, 0));
    assert!(job_a.lease.is_none());
    assert_eq!(s.job("b").expect("b").state, JobState::Succeeded);
    assert_eq!(s.workers()[0].1.jobs_in_hand, 0);
    // A stale lease id: nothing moves.
    let again = leased(s.apply(&at(5, lease_cmd(&["q"], 1, 30_000))));
    assert_eq!((again[0].job_id.as_str(), again[0].attempt), ("a", 1));
    let reply = s.apply(&at(
        6,
        Command::Release {
            leases: vec![(a.job_id.clone(), a.lease_id)],
        },
    ));
    assert!(matches!(reply, Ok(Outcome::Released(0))), "{reply:?}");
    assert_eq!(s.job("a").expect("a").state, JobState::Leased);
}

/// An Ack or Nack retried with the lease it ended (the first answer was lost) gets
/// the same answer and changes nothing; any other use of that lease stays stale.
#[test]
fn a_retried_ack_or_nack_of_the_same_lease_answers_alike() {
    let mut s = State::new();
    let jobs = vec![new_job("a", "q", 0), new_job("b", "q", 0)];
    s.apply(&at(1, Command::Enqueue(jobs))).unwrap();
    let got = leased(s.apply(&at(2, lease_cmd(&["q"], 2, 1_000))));
    let (a, b) = (got[0].clone(), got[1].clone());
    let ack = |l: &LeasedJob, result: &str| Command::Ack {
        job_id: l.job_id.clone(),
        lease_id: l.lease_id,
        result: bytes::Bytes::from(result.to_string()),
    };
    let nack = |l: &LeasedJob| Command::Nack {
        job_id: l.job_id.clone(),
        lease_id: l.lease_id,
        error: "boom".into(),
        retry_after_ms: Some(5_000),
        dead_letter: false,
        backoff: BACKOFF,
    };
    assert!(matches!(
        s.apply(&at(3, ack(&a, "first"))),
        Ok(Outcome::Acked)
    ));
    assert!(matches!(
        s.apply(&at(4, ack(&a, "second"))),
        Ok(Outcome::Acked)
    ));
    assert_eq!(&s.job("a").unwrap().result[..], b"first");
    assert!(matches!(
        s.apply(&at(5, nack(&a))),
        Err(CoreError::StaleLease { .. })
    ));
    let first = s.apply(&at(6, nack(&b))).unwrap();
    assert!(matches!(
        first,
        Outcome::Nacked {
            state: JobState::Scheduled,
            run_at_ms: 5_006
        }
    ));
    let again = s.apply(&at(7, nack(&b))).unwrap();
    assert!(matches!(
        again,
        Outcome::Nacked {
            state: JobState::Scheduled,
            run_at_ms: 5_006
        }
    ));
    assert_eq!(s.job("b").unwrap().attempt, 1);
    assert!(matches!(
        s.apply(&at(8, ack(&b, "late"))),
        Err(CoreError::StaleLease { .. })
    ));
    // Leased again: the old lease is stale for good.
    s.apply(&at(6_000, Command::Tick)).unwrap();
    let b2 = leased(s.apply(&at(6_001, lease_cmd(&["q"], 1, 1_000))));
    assert_eq!(b2[0].job_id, "b");
    assert!(matches!(
        s.apply(&at(6_002, nack(&b))),
        Err(CoreError::StaleLease { .. })
    ));
    // A lease that expired is not acked by a late retry either.
    s.apply(&at(9_000, Command::Tick)).unwrap();
    assert_eq!(s.job("b").unwrap().state, JobState::Ready);
    assert!(matches!(
        s.apply(&at(9_001, ack(&b2[0], "late"))),
        Err(CoreError::StaleLease { .. })
    ));
}

#[test]
fn serves_higher_priority_first_then_fifo() {
    let mut s = State::new();
    let jobs = vec![
        new_job("a", "q", 0),
        new_job("b", "q", 5),
        new_job("c", "q", 0),
        new_job("d", "q", 5),
    ];
    s.apply(&at(1, Command::Enqueue(jobs))).unwrap();
    let got: Vec<String> = leased(s.apply(&at(2, lease_cmd(&["q"], 10, 1000))))
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(got, ["b", "d", "a", "c"]);
}

#[test]
fn expired_lease_is_redelivered_with_new_lease_id_and_stale_ack_is_refused() {
    let mut s = State::new();
    s.apply(&at(0, Command::Enqueue(vec![new_job("a", "q", 0)])))
        .unwrap();
    let first = leased(s.apply(&at(10, lease_cmd(&["q"], 1, 100))))
        .pop()
        .unwrap();
    assert_eq!(first.attempt, 1);
    // Deadline 110 passes; a tick at 111 redelivers.
    s.apply(&at(111, Command::Tick)).unwrap();
    assert_eq!(s.job("a").unwrap().state, JobState::Ready);
    assert_eq!(s.job("a").unwrap().expirations, 1);
    let second = leased(s.apply(&at(112, lease_cmd(&["q"], 1, 100))))
        .pop()
        .unwrap();
    assert_eq!(second.attempt, 2);
    assert_ne!(first.lease_id, second.lease_id);
    let stale = s.apply(&at(
        113,
        Command::Ack {
            job_id: "a".into(),
            lease_id: first.lease_id,
            result: Default::default(),
        },
    ));
    assert!(
        matches!(stale, Err(CoreError::StaleLease { .. })),
        "{stale:?}"
    );
    assert_eq!(s.job("a").unwrap().state, JobState::Leased);
    s.apply(&at(
        114,
        Command::Ack {
            job_id: "a".into(),
            lease_id: second.lease_id,
            result: "ok".into(),
        },
    ))
    .unwrap();
    assert_eq!(s.job("a").unwrap().state, JobState::Succeeded);
    assert_eq!(&s.job("a").unwrap().result[..], b"ok");
}

#[test]
fn nack_backs_off_then_dies_when_attempts_are_used_up() {
    let mut s = State::new();
    s.apply(&at(0, Command::Enqueue(vec![new_job("a", "q", 0)])))
        .unwrap();
    let mut now = 0;
    for attempt in 1..=3u32 {
        now += 10_000;
        let l = leased(s.apply(&at(now, lease_cmd(&["q"], 1, 1000))))
            .pop()
            .unwrap_or_else(|| panic!("attempt {attempt} leasable"));
        assert_eq!(l.attempt, attempt);
        let r = s
            .apply(&at(
                now,
                Command::Nack {
                    job_id: "a".into(),
                    lease_id: l.lease_id,
                    error: format!("boom {attempt}"),
                    retry_after_ms: None,
                    dead_letter: false,
                    backoff: BACKOFF,
                },
            ))
            .unwrap();
        match (attempt, r) {
            (1 | 2, Outcome::Nacked { state, run_at_ms }) => {
                assert_eq!(state, JobState::Scheduled);
                let delay = run_at_ms - now;
                let base = 1000 * (1 << (attempt - 1));
                assert!(delay >= base * 8 / 10 && delay <= base * 12 / 10, "{delay}");
            }
            (3, Outcome::Nacked { state, .. }) => assert_eq!(state, JobState::Dead),
            other => panic!("{other:?}"),
        }
    }
    let job = s.job("a").unwrap();
    assert_eq!(job.last_error, "boom 3");
    assert_eq!(s.queue_stats("q").unwrap().dead, 1);
}

#[test]
fn delayed_job_is_scheduled_until_due() {
    let mut s = State::new();
    let mut j = new_job("a", "q", 0);
    j.due = Due::After(5_000);
    s.apply(&at(1_000, Command::Enqueue(vec![j]))).unwrap();
    assert_eq!(s.job("a").unwrap().state, JobState::Scheduled);
    assert!(leased(s.apply(&at(5_999, lease_cmd(&["q"], 1, 1000)))).is_empty());
    assert_eq!(s.next_wakeup_ms(), Some(6_000));
    s.apply(&at(6_000, Command::Tick)).unwrap();
    assert_eq!(s.job("a").unwrap().state, JobState::Ready);
}

#[test]
fn idempotency_key_dedups_within_window_and_batch() {
    let mut s = State::new();
    let mut a = new_job("a", "q", 0);
    a.idempotency_key = "k".into();
    a.dedup_window_ms = 1_000;
    let mut b = new_job("b", "q", 0);
    b.idempotency_key = "k".into();
    let r = s
        .apply(&at(0, Command::Enqueue(vec![a, b.clone()])))
        .unwrap();
    let Outcome::Enqueued(res) = r else { panic!() };
    assert_eq!(res[0].job_id, "a");
    assert!(!res[0].duplicate);
    assert_eq!(res[1].job_id, "a");
    assert!(res[1].duplicate);
    assert_eq!(s.job_count(), 1);
    // After the window a new job is created.
    let Outcome::Enqueued(res) = s.apply(&at(1_001, Command::Enqueue(vec![b]))).unwrap() else {
        panic!()
    };
    assert_eq!(res[0].job_id, "b");
    assert!(!res[0].duplicate);
}

#[test]
fn paused_queue_serves_nothing_and_lease_falls_through_to_next_queue() {
    let mut s = State::new();
    s.apply(&at(
        0,
        Command::Enqueue(vec![new_job("a", "q1", 0), new_job("b", "q2", 0)]),
    ))
    .unwrap();
    s.apply(&at(0, Command::Pause { queue: "q1".into() }))
        .unwrap();
    let got = leased(s.apply(&at(1, lease_cmd(&["q1", "q2"], 5, 1000))));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job_id, "b");
    assert!(s.queue_stats("q1").unwrap().paused);
    s.apply(&at(2, Command::Resume { queue: "q1".into() }))
        .unwrap();
    assert_eq!(
        leased(s.apply(&at(3, lease_cmd(&["q1"], 5, 1000)))).len(),
        1
    );
}

#[test]
fn cancel_leased_job_makes_its_ack_fail_with_cancelled() {
    let mut s = State::new();
    s.apply(&at(0, Command::Enqueue(vec![new_job("a", "q", 0)])))
        .unwrap();
    let l = leased(s.apply(&at(1, lease_cmd(&["q"], 1, 1000))))
        .pop()
        .unwrap();
    s.apply(&at(2, Command::Cancel { job_id: "a".into() }))
        .unwrap();
    let r = s.apply(&at(
        3,
        Command::Extend {
            job_id: "a".into(),
            lease_id: l.lease_id,
            visibility_timeout_ms: 1000,
            progress: None,
            progress_message: None,
        },
    ));
    assert_eq!(r.unwrap_err(), CoreError::Cancelled("a".into()));
    // Retry brings it back with fresh attempts.
    s.apply(&at(4, Command::Retry { job_id: "a".into() }))
        .unwrap();
    let job = s.job("a").unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Ready, 0));
}

#[test]
fn retention_removes_finished_jobs_in_bounded_steps() {
    let mut s = State::new();
    let n = state::MAX_TIME_MOVES_PER_ENTRY + 5;
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| {
            let mut j = new_job(&format!("j{i}"), "q", 0);
            j.retention.result_ttl_ms = 10;
            j
        })
        .collect();
    s.apply(&at(0, Command::Enqueue(jobs))).unwrap();
    let leases = leased(s.apply(&at(1, lease_cmd(&["q"], n as u32, 1_000_000))));
    for l in leases {
        s.apply(&at(
            2,
            Command::Ack {
                job_id: l.job_id,
                lease_id: l.lease_id,
                result: Default::default(),
            },
        ))
        .unwrap();
    }
    s.apply(&at(100, Command::Tick)).unwrap();
    assert_eq!(s.job_count(), 5, "one entry removes at most the bound");
    s.apply(&at(101, Command::Tick)).unwrap();
    assert_eq!(s.job_count(), 0);
    assert!(s.queue_stats("q").is_none(), "empty queue is forgotten");
    assert!(s.job("j0").is_none());
}

#[test]
fn a_tick_always_clears_what_next_wakeup_reports_due() {
    let mut s = State::new();
    s.apply(&at(0, Command::Enqueue(vec![new_job("a", "q", 0)])))
        .unwrap();
    leased(s.apply(&at(1, lease_cmd(&["q"], 1, 10_000_000))));
    // The worker is idle past the forget time but holds a job: nothing is due.
    let later = worker::WORKER_FORGET_AFTER_MS + 10;
    s.apply(&at(later, Command::Tick)).unwrap();
    assert!(
        s.next_wakeup_ms().is_none_or(|t| t > later),
        "{:?}",
        s.next_wakeup_ms()
    );
}

/// A worker polling an empty queue is registered by one Lease entry, refreshed at most
/// once per WORKER_REFRESH_MS, and forgotten once idle past WORKER_FORGET_AFTER_MS.
#[test]
fn polling_workers_are_registered_refreshed_and_forgotten() {
    let mut s = State::new();
    let q = vec!["empty".to_string()];
    assert!(s.worker_needs_refresh("w1", &q, 0), "unknown worker");
    assert!(leased(s.apply(&at(10, lease_cmd(&["empty"], 1, 1_000)))).is_empty());
    let w = s.workers();
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].0.as_str(), w[0].1.jobs_in_hand, w[0].1.last_seen_ms),
        ("w1", 0, 10)
    );
    assert!(!s.worker_needs_refresh("w1", &q, 10 + worker::WORKER_REFRESH_MS - 1));
    assert!(s.worker_needs_refresh("w1", &q, 10 + worker::WORKER_REFRESH_MS));
    assert!(
        s.worker_needs_refresh("w1", &["other".to_string()], 11),
        "new queues"
    );
    let later = 10 + worker::WORKER_FORGET_AFTER_MS + 1;
    s.apply(&at(later, Command::Tick)).unwrap();
    assert!(s.workers().is_empty(), "an idle worker is forgotten");
}

/// A state filter other than Dead reads the queue's jobs in order, at most
/// `LIST_SCAN_MAX` per page: a long run of other jobs yields short (even empty) pages
/// that still say where to continue, and following them finds every match once.
#[test]
fn filtered_listing_pages_through_long_runs_of_other_states() {
    let mut s = State::new();
    let n = super::state::LIST_SCAN_MAX * 2 + 500;
    let mut jobs: Vec<NewJob> = (0..n).map(|i| new_job(&format!("j{i}"), "q", 0)).collect();
    // The last three are served first, so the leased jobs are at the end of the queue.
    for j in jobs.iter_mut().rev().take(3) {
        j.priority = 9;
    }
    s.apply(&at(1, Command::Enqueue(jobs))).unwrap();
    let got = leased(s.apply(&at(2, lease_cmd(&["q"], 3, 60_000))));
    assert_eq!(got.len(), 3);

    let mut found = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let (page, next) = s.list_jobs("q", Some(JobState::Leased), after, 2);
        pages += 1;
        assert!(page.len() <= 2);
        assert!(page.iter().all(|j| j.job.state == JobState::Leased));
        found.extend(page.into_iter().map(|j| j.job.id));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
        assert!(pages < 10, "listing does not end");
    }
    let mut want: Vec<String> = got.into_iter().map(|l| l.job_id).collect();
    want.sort();
    found.sort();
    assert_eq!(found, want);
    // Two pages of reading past ready jobs, then the three leased ones (two pages of 2).
    assert!(pages >= 3, "{pages} pages");

    // Unfiltered and Dead listings page exactly by `limit`.
    let (page, next) = s.list_jobs("q", None, None, 7);
    assert_eq!(page.len(), 7);
    assert_eq!(next, Some(page[6].job.seq));
    let (dead, next) = s.list_jobs("q", Some(JobState::Dead), None, 7);
    assert!(dead.is_empty() && next.is_none());
}

#[test]
fn time_never_runs_backwards() {
    let mut s = State::new();
    s.apply(&at(1_000, Command::Tick)).unwrap();
    s.apply(&at(500, Command::Enqueue(vec![new_job("a", "q", 0)])))
        .unwrap();
    assert_eq!(s.job("a").unwrap().created_at_ms, 1_000);
}

/// A lease call files its jobs under their deadline once; the entry stays when a job is
/// acked or extended, and when it comes due only the jobs still held past their own
/// deadline expire: an extended one waits for its new deadline.
#[test]
fn one_deadline_entry_per_lease_call_expires_only_what_is_still_due() {
    fn grouped(t: &MemTables, group: Group) -> Vec<(u64, u64, Vec<u64>)> {
        t.groups_due(group, u64::MAX, usize::MAX)
    }
    let mut s = State::new();
    let jobs = ["a", "b", "c"].map(|id| new_job(id, "q", 0)).to_vec();
    s.apply(&at(1, Command::Enqueue(jobs))).unwrap();
    let got = leased(s.apply(&at(10, lease_cmd(&["q"], 3, 1_000))));
    assert_eq!(
        grouped(s.tables(), Group::Lease),
        vec![(1_010, got[0].lease_id, vec![0, 1, 2])],
        "one entry for the call"
    );
    s.apply(&at(
        20,
        Command::Ack {
            job_id: "a".into(),
            lease_id: got[0].lease_id,
            result: bytes::Bytes::new(),
        },
    ))
    .unwrap();
    s.apply(&at(
        30,
        Command::Extend {
            job_id: "b".into(),
            lease_id: got[1].lease_id,
            visibility_timeout_ms: 5_000,
            progress: None,
            progress_message: None,
        },
    ))
    .unwrap();
    assert_eq!(
        grouped(s.tables(), Group::Lease).len(),
        2,
        "b filed again at 5,030"
    );
    assert_eq!(
        grouped(s.tables(), Group::Expiring),
        vec![(20 + 86_400_000, 0, vec![0])],
        "a filed under its expiry"
    );
    assert_eq!(s.next_wakeup_ms(), Some(1_010));
    s.apply(&at(1_010, Command::Tick)).unwrap();
    let state = |s: &State<MemTables>, id: &str| s.job(id).expect(id).state;
    assert_eq!(state(&s, "a"), JobState::Succeeded);
    assert_eq!(state(&s, "b"), JobState::Leased, "extended past 1,010");
    assert_eq!(state(&s, "c"), JobState::Ready, "expired");
    assert_eq!(s.job("c").unwrap().expirations, 1);
    assert_eq!(
        grouped(s.tables(), Group::Lease),
        vec![(5_030, got[1].lease_id, vec![1])]
    );
    s.apply(&at(5_030, Command::Tick)).unwrap();
    assert_eq!(state(&s, "b"), JobState::Ready);
    assert!(grouped(s.tables(), Group::Lease).is_empty());
    assert!(
        s.next_wakeup_ms().unwrap_or(u64::MAX) > 5_030,
        "no lease left due"
    );
}

// ---------------- property test ----------------

use super::testing::{op, Driver};

fn check_invariants(s: &State<MemTables>) {
    let t = s.tables();
    // Each job is listed once under its queue; exactly the dead ones are in the dead
    // index; and each is in the right ready or time index.
    let mut seen = BTreeSet::new();
    for (name, seq) in &t.listed {
        assert!(seen.insert(*seq), "job {seq} listed twice");
        assert_eq!(&t.jobs[seq].queue, name);
    }
    assert_eq!(seen.len(), t.jobs.len(), "every job is listed once");
    let dead: BTreeSet<(String, u64)> = t
        .jobs
        .values()
        .filter(|j| j.state == JobState::Dead)
        .map(|j| (j.queue.clone(), j.seq))
        .collect();
    assert_eq!(t.dead, dead, "the dead index holds exactly the dead jobs");
    for (name, q) in &t.queues {
        // Counts equal a recount.
        let count = |st| {
            t.jobs
                .values()
                .filter(|j| &j.queue == name && j.state == st)
                .count() as u64
        };
        for st in JobState::ALL {
            assert_eq!(q.counts[st.index()], count(st), "{name} {st}");
        }
        assert!(!q.is_empty(), "empty queue {name} kept");
    }
    let filed = |g: Group, at: u64, seq: u64| {
        t.groups
            .iter()
            .any(|((k, a, _), seqs)| *k == g && *a == at && seqs.contains(&seq))
    };
    let mut lease_ids = BTreeSet::new();
    for job in t.jobs.values() {
        assert!(
            job.attempt <= job.max_attempts,
            "attempts exceed max: {job:?}"
        );
        if job.state == JobState::Leased {
            assert!(job.lease.is_some(), "a leased job without its lease");
        }
        if let Some(l) = job.held_lease() {
            assert!(lease_ids.insert(l.id), "lease id reused while held");
            assert!(
                filed(Group::Lease, l.deadline_ms, job.seq),
                "a held lease is filed under its deadline: {job:?}"
            );
        }
        match job.state {
            JobState::Scheduled => {
                assert!(t
                    .timers
                    .contains(&(Timer::Scheduled, job.run_at_ms, job.seq)))
            }
            JobState::Ready => assert!(t.ready.contains(&(
                job.queue.clone(),
                tables::ready_order(job.priority, job.seq)
            ))),
            s if s.is_terminal() => assert!(
                filed(Group::Expiring, job.expires_at_ms, job.seq),
                "a finished job is filed under its expiry: {job:?}"
            ),
            _ => {}
        }
        // A job is found by its id: through the index, or by the seq its id carries.
        if job_id::names(&job.id, job.seq) {
            assert_eq!(t.ids.get(&job.id), None, "a numbered id is not indexed");
        } else {
            assert_eq!(t.ids.get(&job.id), Some(&job.seq));
        }
        // A blob is in the record or in its table, never both, never neither.
        assert_eq!(
            job.inline_payload.is_some(),
            !t.payloads.contains_key(&job.seq),
            "payload of {}",
            job.id
        );
        assert_eq!(
            job.inline_result.is_some(),
            !t.results.contains_key(&job.seq),
            "result of {}",
            job.id
        );
    }
    let job_timers = t
        .timers
        .iter()
        .filter(|(k, _, _)| *k != Timer::Webhook)
        .count();
    let grouped = t
        .jobs
        .values()
        .filter(|j| j.held_lease().is_some() || j.state.is_terminal())
        .count();
    assert_eq!(
        job_timers + t.ready.len() + grouped,
        t.jobs.len(),
        "each job in one index, or leased, or finished"
    );
    let indexed = t
        .jobs
        .values()
        .filter(|j| !job_id::names(&j.id, j.seq))
        .count();
    assert_eq!(t.ids.len(), indexed);
    assert_eq!(s.job_count(), t.jobs.len() as u64);
    // Workers holding nothing, and only they, are in the idle index.
    for (id, w) in &t.workers {
        let held = t
            .jobs
            .values()
            .filter(|j| j.held_lease().is_some_and(|l| &l.worker_id == id))
            .count() as u64;
        assert_eq!(w.jobs_in_hand, held, "worker {id}");
        assert_eq!(
            t.idle_workers.contains(&(w.forget_at_ms(), id.clone())),
            held == 0,
            "idle index of {id}"
        );
    }
    assert_eq!(
        t.idle_workers.len(),
        t.workers.values().filter(|w| w.jobs_in_hand == 0).count()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_command_sequences_keep_invariants(ops in proptest::collection::vec(op(), 1..120)) {
        let mut s = State::new();
        let mut replica = State::new();
        let mut driver = Driver::default();
        // What the reported transitions say is there: jobs, and leases held.
        let mut live_jobs = 0u64;
        let mut held: BTreeSet<u64> = BTreeSet::new();
        for op in ops {
            let env = driver.envelope(op);
            let now = env.now_ms;
            let before = s.clone();
            let mut moves = Vec::new();
            let reply = s.apply_reporting(&env, &mut moves);
            for t in &moves {
                match t.kind {
                    TransitionKind::Enqueued => live_jobs += 1,
                    TransitionKind::Removed => live_jobs -= 1,
                    TransitionKind::Leased { lease_id, .. } => {
                        prop_assert!(held.insert(lease_id), "lease {lease_id} reported twice");
                    }
                    kind => {
                        if let Some(id) = kind.ended_lease() {
                            prop_assert!(held.remove(&id), "{kind:?} ends a lease never reported");
                        }
                    }
                }
                prop_assert_eq!(t.at_ms, s.now_ms());
            }
            prop_assert_eq!(live_jobs, s.job_count());
            let leased: u64 = s.all_queue_stats().iter().map(|q| q.leased).sum();
            prop_assert_eq!(held.len() as u64, leased);
            // A replica applying the same entries reaches the same state and reply.
            let reply2 = replica.apply(&env);
            prop_assert_eq!(format!("{reply:?}"), format!("{reply2:?}"));
            prop_assert_eq!(&s, &replica);
            driver.observe(&reply);
            if reply.is_err() {
                // A refused command changes nothing but the time-driven moves it made
                // first; check by replaying time alone on the previous state.
                let mut timed = before;
                timed.apply(&at(now, Command::Tick)).unwrap();
                prop_assert_eq!(&timed, &s);
            }
            check_invariants(&s);
            // Everything that was due has moved: a ticker never spins on stuck work.
            prop_assert!(s.next_wakeup_ms().is_none_or(|t| t > now), "wakeup {:?} <= now {now}", s.next_wakeup_ms());
        }
    }
}

/// The core reports each job's life as it applies it: enqueue, lease, a nack back to
/// ready, an expiry that uses up the attempts (then the dead-lettering), a revive, a
/// cancel of a held lease, removal by retention. A resent ack reports nothing again.
#[test]
fn applying_reports_every_transition_in_order() {
    use TransitionKind as K;
    let mut s = State::new();
    let mut j = new_job("a", "q", 0);
    j.max_attempts = 2;
    let kinds = |s: &mut State<MemTables>, now: u64, cmd: Command| {
        let mut out = Vec::new();
        s.apply_reporting(&at(now, cmd), &mut out).unwrap();
        assert!(
            out.iter().all(|t| t.queue == "q" && t.at_ms == now),
            "{out:?}"
        );
        out.into_iter().map(|t| t.kind).collect::<Vec<_>>()
    };
    assert_eq!(kinds(&mut s, 10, Command::Enqueue(vec![j])), [K::Enqueued]);
    let l1 = leased(s.apply(&at(15, lease_cmd(&["q"], 1, 1_000))))[0].clone();
    let nack = Command::Nack {
        job_id: "a".into(),
        lease_id: l1.lease_id,
        error: "boom".into(),
        retry_after_ms: Some(0),
        dead_letter: false,
        backoff: BACKOFF,
    };
    let to = JobState::Ready;
    let ended = [K::Nacked {
        lease_id: l1.lease_id,
        to,
    }];
    assert_eq!(kinds(&mut s, 20, nack.clone()), ended);
    assert_eq!(kinds(&mut s, 21, nack), [], "a resent nack reports nothing");
    let mut out = Vec::new();
    let l2 = leased(s.apply_reporting(&at(30, lease_cmd(&["q"], 1, 1_000)), &mut out))[0].clone();
    let waited = [K::Leased {
        lease_id: l2.lease_id,
        waited_ms: 10,
    }];
    assert_eq!(out.iter().map(|t| t.kind).collect::<Vec<_>>(), waited);
    let to = JobState::Dead;
    let expired = [
        K::Expired {
            lease_id: l2.lease_id,
            to,
        },
        K::DeadLettered,
    ];
    assert_eq!(kinds(&mut s, 2_000, Command::Tick), expired);
    let retry = Command::Retry { job_id: "a".into() };
    assert_eq!(kinds(&mut s, 2_001, retry), [K::Revived]);
    let l3 = leased(s.apply(&at(2_002, lease_cmd(&["q"], 1, 1_000))))[0].clone();
    let cancel = Command::Cancel { job_id: "a".into() };
    let cancelled = [K::Cancelled {
        lease_id: Some(l3.lease_id),
    }];
    assert_eq!(kinds(&mut s, 2_003, cancel), cancelled);
    let later = 2_003 + RETENTION.failure_ttl_ms;
    assert_eq!(kinds(&mut s, later, Command::Tick), [K::Removed]);
    assert_eq!(s.job_count(), 0);
}

#[test]
fn webhook_events_are_raised_on_success_and_death_and_retried_with_backoff() {
    let mut s = State::new();
    let mut a = new_job("a", "q", 0);
    a.webhook_url = "http://127.0.0.1:1/hook".into();
    let mut b = new_job("b", "q", 0);
    b.webhook_url = "http://127.0.0.1:1/hook".into();
    let c = new_job("c", "q", 0);
    s.apply(&at(0, Command::Enqueue(vec![a, b, c]))).unwrap();
    let ls = leased(s.apply(&at(1, lease_cmd(&["q"], 3, 1000))));
    for l in &ls {
        let cmd = if l.job_id == "b" {
            Command::Nack {
                job_id: l.job_id.clone(),
                lease_id: l.lease_id,
                error: "bad".into(),
                retry_after_ms: None,
                dead_letter: true,
                backoff: BACKOFF,
            }
        } else {
            Command::Ack {
                job_id: l.job_id.clone(),
                lease_id: l.lease_id,
                result: "ok".into(),
            }
        };
        s.apply(&at(2, cmd)).unwrap();
    }
    let due = s.due_webhooks(2, 10);
    assert_eq!(due.len(), 2, "no event for the job without a webhook");
    assert_eq!(
        (due[0].kind, &due[0].result[..]),
        (WebhookKind::Succeeded, &b"ok"[..])
    );
    assert_eq!(
        (due[1].kind, due[1].error.as_str()),
        (WebhookKind::Dead, "bad")
    );
    let id = due[0].id;
    s.apply(&at(
        10,
        Command::WebhookFailed {
            id,
            error: "503".into(),
        },
    ))
    .unwrap();
    assert!(s.due_webhooks(1_009, 10).iter().all(|e| e.id != id));
    assert!(s.due_webhooks(1_010, 10).iter().any(|e| e.id == id));
    s.apply(&at(
        1_010,
        Command::WebhookFailed {
            id,
            error: "503".into(),
        },
    ))
    .unwrap();
    assert!(
        s.due_webhooks(3_009, 10).iter().all(|e| e.id != id),
        "second retry waits 2 s"
    );
    s.apply(&at(3_010, Command::WebhookDelivered { id }))
        .unwrap();
    assert_eq!(s.pending_webhooks(), 1);
}

#[test]
fn a_batch_applies_in_order_with_one_reply_each_and_errors_stay_local() {
    let mut s = State::new();
    let batch = Command::Batch(vec![
        Command::Enqueue(vec![new_job("a", "q", 0)]),
        Command::Ack {
            job_id: "nope".into(),
            lease_id: 1,
            result: Default::default(),
        },
        lease_cmd(&["q"], 1, 1000),
    ]);
    let Ok(Outcome::Batch(replies)) = s.apply(&at(5, batch)) else {
        panic!("batch reply")
    };
    assert_eq!(replies.len(), 3);
    assert!(matches!(&replies[0], Ok(Outcome::Enqueued(e)) if e[0].job_id == "a"));
    assert!(matches!(&replies[1], Err(CoreError::JobNotFound(id)) if id == "nope"));
    assert!(matches!(&replies[2], Ok(Outcome::Leased(l)) if l.len() == 1 && l[0].job_id == "a"));
    assert_eq!(s.job("a").unwrap().state, JobState::Leased);
}
