//! Micro-benchmarks of the pure queue core (`queue::State::apply`), without Raft,
//! storage or gRPC: the floor under every number the load generator reports.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use taskraft_broker::queue::{
    Command, Due, Envelope, LeasedJob, MemTables, NewJob, Outcome, Retention, State,
};

/// The broker's allocator (`broker/src/main.rs`), so the store benchmark measures what
/// a node runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RETENTION: Retention = Retention {
    result_ttl_ms: 86_400_000,
    failure_ttl_ms: 7 * 86_400_000,
};

fn new_job(i: usize) -> NewJob {
    NewJob {
        // Made at apply from the seq, as for every job the API enqueues.
        id: String::new(),
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
        cmd: Command::EnqueueNumbered((from..from + n).map(new_job).collect()),
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

/// One `Batch` entry acking every job of `leased` with an empty result.
fn ack_all(leased: Vec<LeasedJob>) -> Command {
    Command::Batch(
        leased
            .into_iter()
            .map(|l| Command::Ack {
                job_id: l.job_id,
                lease_id: l.lease_id,
                result: bytes::Bytes::new(),
            })
            .collect(),
    )
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
        cmd: Command::EnqueueNumbered(jobs),
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
    s.apply(&Envelope {
        now_ms: 1_002,
        cmd: ack_all(leased),
    })
    .expect("acks");
    s
}

/// One retention entry: a Tick that removes the 10,000 expired jobs it may remove.
fn retention_sweep_10k(c: &mut Criterion) {
    let tick = Envelope {
        now_ms: 10_000,
        cmd: Command::Tick,
    };
    c.bench_function("apply/retention_sweep_10k", |b| {
        // Built here, not above: criterion calls this only when the filter selects it.
        let template = expired_state(10_000);
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
    let tick = Envelope {
        now_ms: 10_000,
        cmd: Command::Tick,
    };
    group.bench_function("sweep_1m_all_entries", |b| {
        let template = expired_state(1_000_000);
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

/// The on-disk state machine (redb, as every node runs it): one `Enqueue` entry of
/// 100 jobs of 256 B, one `Lease` of 100 and one entry of 100 `Ack`s, each applied
/// as its own batch. This is the apply cost of the `lifecycle` load per 100 jobs,
/// without Raft's log, gRPC or the clock of a shared machine's other processes.
fn store_lifecycle_100(c: &mut Criterion) {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use taskraft_broker::raft::state_machine::StateMachineStore;
    use taskraft_broker::raft::types::Entry;

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // On tmpfs where there is one: this measures CPU per job, not the disk.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let mut sm = StateMachineStore::open(dir.path()).expect("store");
    let mut index = 0u64;
    let mut next = 0usize;
    let mut entry = |cmd: Command| {
        index += 1;
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Envelope {
                now_ms: 1_000 + index,
                cmd,
            }),
        }
    };
    c.bench_function("store/lifecycle_100", |b| {
        b.iter_custom(|iters| {
            let start = process_cpu_time();
            for _ in 0..iters {
                rt.block_on(async {
                    let mut jobs: Vec<NewJob> = (next..next + 100).map(new_job).collect();
                    next += 100;
                    for j in &mut jobs {
                        j.payload = bytes::Bytes::from(vec![b'x'; 256]);
                    }
                    sm.apply([entry(Command::Enqueue(jobs))])
                        .await
                        .expect("enqueue");
                    let lease = entry(Command::Lease {
                        queues: vec!["bench".into()],
                        worker_id: "w".into(),
                        max_jobs: 100,
                        visibility_timeout_ms: 30_000,
                    });
                    let leased = match sm.apply([lease]).await.expect("lease").pop() {
                        Some(Ok(Outcome::Leased(v))) => v,
                        other => panic!("lease: {other:?}"),
                    };
                    assert_eq!(leased.len(), 100);
                    black_box(sm.apply([entry(ack_all(leased))]).await.expect("acks"));
                })
            }
            process_cpu_time() - start
        })
    });
}

/// CPU time used by this process (all threads): the store benchmark reports it rather
/// than wall time, so that other work on a shared 2-core machine does not blur it
/// (apply runs on tokio's blocking threads, and the fsync of a durable commit is not
/// CPU time: the disk is `benches/README`'s end-to-end figures' business).
fn process_cpu_time() -> std::time::Duration {
    // Linux: nanoseconds on the CPU of each thread, in /proc/self/task/*/schedstat.
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("a task entry").path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(stat) = std::fs::read_to_string(path) {
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    std::time::Duration::from_nanos(ns)
}

criterion_group!(
    benches,
    store_lifecycle_100,
    enqueue_100,
    lease_ack_one,
    retention_sweep_10k,
    retention_sweep_1m
);
criterion_main!(benches);
