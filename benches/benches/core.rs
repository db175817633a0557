//! Micro-benchmarks of the pure queue core (`queue::State::apply`), without Raft,
//! storage or gRPC: the floor under every number the load generator reports.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use taskraft_broker::queue::{Command, Due, Envelope, NewJob, Outcome, Retention, State};

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

criterion_group!(benches, enqueue_100, lease_ack_one);
criterion_main!(benches);
