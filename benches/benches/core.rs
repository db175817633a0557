//! Micro-benchmarks of the pure queue core (`queue::State::apply`), without Raft,
//! storage or gRPC: the floor under every number the load generator reports.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use taskraft_broker::queue::{
    Command, Due, Envelope, MemTables, NewJob, Outcome, Retention, State,
};

const RETENTION: Retention = Retention {
    result_ttl_ms: 86_400_000,
    failure_ttl_ms: 7 * 86_400_000,
};

fn new_job(i: usize) -> NewJob {
    NewJob {
        id: format!("job-{i:08}"),
        queue: "bench".into(),
        job_type: "bench".into(),
        payload: bytes::Bytes::from_static(&[b'x'; 64]),
        headers: BTreeMap::new(),
        priority: (i % 3) as i32,
        due: Due::After(0),
        max_attempts: 3,
        idempotency_key: String::new(),
        dedup_window_ms: 86_400_000,
        retention: RETENTION,
        webhook_url: String::new(),
    }
}

fn enqueue(from: usize, n: usize, now_ms: u64) -> Envelope {
    Envelope {
        now_ms,
        cmd: Command::Enqueue((from..from + n).map(new_job).collect()),
    }
}

fn lease_one(now_ms: u64) -> Envelope {
    Envelope {
        now_ms,
        cmd: Command::Lease {
            queues: vec!["bench".into()],
            worker_id: "w".into(),
            max_jobs: 1,
            visibility_timeout_ms: 30_000,
        },
    }
}

/// One `Enqueue` entry of 100 jobs into an empty state.
fn enqueue_100(c: &mut Criterion) {
    let env = enqueue(0, 100, 1_000);
    c.bench_function("apply/enqueue_100", |b| {
        b.iter_batched_ref(
            State::new,
            |s| black_box(s.apply(black_box(&env))),
            BatchSize::SmallInput,
        )
    });
}

/// Lease one job, then ack it, on a queue holding 1,000 ready jobs.
fn lease_ack_one(c: &mut Criterion) {
    let mut template = State::new();
    template.apply(&enqueue(0, 1_000, 1_000)).expect("enqueue");
    let lease = lease_one(2_000);
    c.bench_function("apply/lease_ack_1_of_1000", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |s| {
                let job = match s.apply(&lease) {
                    Ok(Outcome::Leased(mut v)) => v.pop().expect("a ready job"),
                    other => panic!("lease: {other:?}"),
                };
                let ack = Envelope {
                    now_ms: 2_001,
                    cmd: Command::Ack {
                        job_id: job.job_id,
                        lease_id: job.lease_id,
                        result: bytes::Bytes::new(),
                    },
                };
                black_box(s.apply(&ack)).expect("ack");
            },
            BatchSize::SmallInput,
        )
    });
}

/// A state holding `n` succeeded jobs whose result TTL has passed by time 10_000.
fn expired_state(n: usize) -> State<MemTables> {
    let mut s = State::new();
    let mut jobs: Vec<NewJob> = (0..n).map(new_job).collect();
    for j in &mut jobs {
        j.retention.result_ttl_ms = 1_000;
    }
    s.apply(&Envelope {
        now_ms: 1_000,
        cmd: Command::Enqueue(jobs),
    })
    .expect("enqueue");
    let mut leased = Vec::new();
    while leased.len() < n {
        let env = Envelope {
            now_ms: 1_001,
            cmd: Command::Lease {
                queues: vec!["bench".into()],
                worker_id: "w".into(),
                max_jobs: 1_000,
                visibility_timeout_ms: 1_000_000,
            },
        };
        match s.apply(&env) {
            Ok(Outcome::Leased(v)) => leased.extend(v),
            other => panic!("lease: {other:?}"),
        }
    }
    let acks = leased
        .into_iter()
        .map(|l| Command::Ack {
            job_id: l.job_id,
            lease_id: l.lease_id,
            result: bytes::Bytes::new(),
        })
        .collect();
    s.apply(&Envelope {
        now_ms: 1_002,
        cmd: Command::Batch(acks),
    })
    .expect("acks");
    s
}

/// One retention entry: a Tick that removes the 10,000 expired jobs it may remove.
fn retention_sweep_10k(c: &mut Criterion) {
    let template = expired_state(10_000);
    let tick = Envelope {
        now_ms: 10_000,
        cmd: Command::Tick,
    };
    c.bench_function("apply/retention_sweep_10k", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |s| {
                black_box(s.apply(&tick)).expect("tick");
                assert_eq!(s.job_count(), 0);
            },
            BatchSize::LargeInput,
        )
    });
}

/// The whole sweep of 1,000,000 expired jobs: ticks (100 entries of 10,000) until
/// none is left.
fn retention_sweep_1m(c: &mut Criterion) {
    let mut group = c.benchmark_group("retention");
    group.sample_size(10);
    let template = expired_state(1_000_000);
    let tick = Envelope {
        now_ms: 10_000,
        cmd: Command::Tick,
    };
    group.bench_function("sweep_1m_all_entries", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |s| {
                while s.job_count() > 0 {
                    black_box(s.apply(&tick)).expect("tick");
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    enqueue_100,
    lease_ack_one,
    retention_sweep_10k,
    retention_sweep_1m
);
criterion_main!(benches);
