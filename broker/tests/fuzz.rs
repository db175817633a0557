//! Fuzzing on stable Rust, without cargo-fuzz: random bytes and structured inputs built
//! with `arbitrary` go through everything that reads what a caller or a peer sends:
//! public request validation, the peer message decoder, command decoding, and the
//! snapshot stream loader. Nothing may panic; decoding allocates at most what the input
//! holds (postcard caps preallocation, the snapshot loader caps each record).
//!
//! `cargo test` runs a bounded number of cases per target (a few seconds). At length:
//! `TASKRAFT_FUZZ_CASES=1000000 cargo test --release -p taskraft-broker --test fuzz`;
//! `TASKRAFT_FUZZ_SEED=<n>` replays a run (every failure prints its seed).

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use rand::{Rng, RngCore, SeedableRng};
use taskraft_broker::api::validate;
use taskraft_broker::api::ApiSettings;
use taskraft_broker::queue::{Backoff, Command, Due, Envelope, NewJob, Reply, Retention};
use taskraft_broker::raft::node::ProposeError;
use taskraft_broker::raft::types::TypeConfig;
use taskraft_broker::storage::{decode, encode};
use taskraft_proto::v1 as pb;

/// Cases per target: `TASKRAFT_FUZZ_CASES`, or `default` (the bounded run).
fn cases(default: usize) -> usize {
    std::env::var("TASKRAFT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A seeded generator; the seed is printed if the test fails.
fn rng(target: &str) -> (rand::rngs::StdRng, Seed) {
    let seed = std::env::var("TASKRAFT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    (
        rand::rngs::StdRng::seed_from_u64(seed),
        Seed(target.to_string(), seed),
    )
}

/// Prints the seed when a fuzz target panics.
struct Seed(String, u64);

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "fuzz target {} failed; replay with TASKRAFT_FUZZ_SEED={}",
                self.0, self.1
            );
        }
    }
}

fn random_bytes(rng: &mut impl RngCore, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Flips, cuts or splices bytes of a valid encoding (inputs that get past the first
/// few bytes of the decoder).
fn mutate(rng: &mut impl RngCore, valid: &[u8]) -> Vec<u8> {
    let mut v = valid.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if v.is_empty() {
            break;
        }
        let i = rng.random_range(0..v.len());
        match rng.random_range(0..4) {
            0 => v[i] = rng.random(),
            1 => v.truncate(i),
            2 => v.insert(i, rng.random()),
            _ => v[i] = 0xff,
        }
    }
    v
}

// --- structured inputs -------------------------------------------------------------

/// Text that is mostly short and plausible, sometimes long or odd.
fn text(u: &mut Unstructured) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=9)? {
        0 => String::new(),
        1 => "x".repeat(u.int_in_range(100..=70_000)?),
        2 => String::arbitrary(u)?,
        _ => {
            let n = u.int_in_range(1..=12)?;
            (0..n)
                .map(|_| Ok(char::from(u.int_in_range(b' '..=b'~')?)))
                .collect::<arbitrary::Result<String>>()?
        }
    })
}

fn number(u: &mut Unstructured) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=3)? {
        0 => 0,
        1 => u64::MAX,
        2 => u.int_in_range(0..=100_000)?,
        _ => u64::arbitrary(u)?,
    })
}

fn headers(u: &mut Unstructured) -> arbitrary::Result<Vec<(String, String)>> {
    let n = u.int_in_range(0..=70)?;
    (0..n).map(|_| Ok((text(u)?, text(u)?))).collect()
}

fn new_job(u: &mut Unstructured) -> arbitrary::Result<NewJob> {
    Ok(NewJob {
        id: text(u)?,
        queue: text(u)?,
        job_type: text(u)?,
        payload: Bytes::from(vec![7u8; u.int_in_range(0..=4096)?]),
        headers: headers(u)?.into_iter().collect(),
        priority: i32::arbitrary(u)?,
        due: if bool::arbitrary(u)? {
            Due::After(number(u)?)
        } else {
            Due::At(number(u)?)
        },
        max_attempts: u32::arbitrary(u)?,
        idempotency_key: text(u)?,
        dedup_window_ms: number(u)?,
        retention: Retention {
            result_ttl_ms: number(u)?,
            failure_ttl_ms: number(u)?,
        },
        webhook_url: text(u)?,
    })
}

fn command(u: &mut Unstructured, depth: u32) -> arbitrary::Result<Command> {
    Ok(match u.int_in_range(0..=13)? {
        0 => Command::Enqueue(
            (0..u.int_in_range(0..=3)?)
                .map(|_| new_job(u))
                .collect::<arbitrary::Result<_>>()?,
        ),
        1 => Command::Lease {
            queues: queues(u)?,
            worker_id: text(u)?,
            max_jobs: u32::arbitrary(u)?,
            visibility_timeout_ms: number(u)?,
        },
        2 => Command::Ack {
            job_id: text(u)?,
            lease_id: u64::arbitrary(u)?,
            result: Bytes::from(Vec::<u8>::arbitrary(u)?),
        },
        3 => Command::Nack {
            job_id: text(u)?,
            lease_id: u64::arbitrary(u)?,
            error: text(u)?,
            retry_after_ms: Option::<u64>::arbitrary(u)?,
            dead_letter: bool::arbitrary(u)?,
            backoff: Backoff {
                base_ms: number(u)?,
                max_ms: number(u)?,
            },
        },
        4 => Command::Extend {
            job_id: text(u)?,
            lease_id: u64::arbitrary(u)?,
            visibility_timeout_ms: number(u)?,
            progress: Option::<u32>::arbitrary(u)?,
            progress_message: Option::<String>::arbitrary(u)?,
        },
        5 => Command::Cancel { job_id: text(u)? },
        6 => Command::Retry { job_id: text(u)? },
        7 => Command::Redrive { queue: text(u)? },
        8 => Command::Pause { queue: text(u)? },
        9 => Command::Resume { queue: text(u)? },
        10 => Command::WebhookDelivered {
            id: u64::arbitrary(u)?,
        },
        11 => Command::WebhookFailed {
            id: u64::arbitrary(u)?,
            error: text(u)?,
        },
        12 if depth < 3 => Command::Batch(
            (0..u.int_in_range(0..=4)?)
                .map(|_| command(u, depth + 1))
                .collect::<arbitrary::Result<_>>()?,
        ),
        _ => Command::Tick,
    })
}

fn nests_batches(cmd: &Command, inside: bool) -> bool {
    match cmd {
        Command::Batch(cmds) => inside || cmds.iter().any(|c| nests_batches(c, true)),
        _ => false,
    }
}

fn enqueue_request(u: &mut Unstructured) -> arbitrary::Result<pb::EnqueueRequest> {
    Ok(pb::EnqueueRequest {
        queue: text(u)?,
        payload: Bytes::from(vec![1u8; u.int_in_range(0..=2048)?]),
        job_type: text(u)?,
        priority: i32::arbitrary(u)?,
        delay_ms: number(u)?,
        run_at_ms: number(u)?,
        max_attempts: u32::arbitrary(u)?,
        idempotency_key: text(u)?,
        request_id: text(u)?,
        headers: headers(u)?.into_iter().collect::<HashMap<_, _>>(),
        webhook_url: text(u)?,
    })
}

/// Up to 80 queue names (the API allows 64 per Lease).
fn queues(u: &mut Unstructured) -> arbitrary::Result<Vec<String>> {
    (0..u.int_in_range(0..=80)?).map(|_| text(u)).collect()
}

fn lease_request(u: &mut Unstructured) -> arbitrary::Result<pb::LeaseRequest> {
    Ok(pb::LeaseRequest {
        queues: queues(u)?,
        worker_id: text(u)?,
        max_jobs: u32::arbitrary(u)?,
        visibility_timeout_ms: number(u)?,
        wait_ms: number(u)?,
    })
}

/// Runs `f` over `n` structured inputs drawn from random buffers.
fn structured(
    target: &str,
    n: usize,
    mut f: impl FnMut(&mut Unstructured) -> arbitrary::Result<()>,
) {
    let (mut rng, _seed) = rng(target);
    for _ in 0..n {
        let buf = random_bytes(&mut rng, 8192);
        let mut u = Unstructured::new(&buf);
        // Running out of bytes is a short input, not a failure.
        let _ = f(&mut u);
    }
}

// --- targets -----------------------------------------------------------------------

#[test]
fn public_request_validation_never_panics() {
    let settings = ApiSettings::default();
    structured("request validation", cases(3_000), |u| {
        let now = number(u)?;
        let r = enqueue_request(u)?;
        if validate::enqueue_request(&r, &settings, now).is_ok() {
            // What passes is within every limit.
            assert!(r.payload.len() <= settings.max_payload);
            assert!(r.headers.len() <= validate::MAX_HEADERS);
            assert!(r.run_at_ms <= now.saturating_add(validate::MAX_DELAY_MS));
        }
        let l = lease_request(u)?;
        if validate::lease_request(&l).is_ok() {
            assert!(!l.queues.is_empty() && l.queues.len() <= validate::MAX_LEASE_QUEUES);
        }
        let s = text(u)?;
        let _ = validate::queue_name("queue", &s);
        let _ = validate::job_id(&s);
        let _ = validate::lease_id(&s);
        let _ = validate::webhook_url(&s, &settings.webhook_targets);
        Ok(())
    });
}

#[test]
fn forwarded_commands_are_validated_and_decoded_without_panics() {
    let settings = ApiSettings::default();
    structured("command decoding", cases(3_000), |u| {
        let cmd = command(u, 0)?;
        let now = number(u)?;
        let _ = validate::forwarded(&cmd, &settings, now);
        let bytes = encode(&Envelope {
            now_ms: now,
            cmd: cmd.clone(),
        })
        .expect("encodes");
        let back = decode::<Envelope>(&bytes);
        if nests_batches(&cmd, false) {
            assert!(back.is_err(), "a nested batch decoded: {cmd:?}");
        } else {
            let back = back.expect("a flat command decodes");
            assert_eq!(encode(&back).unwrap(), bytes, "round trip of {cmd:?}");
        }
        Ok(())
    });
}

#[test]
fn peer_messages_never_panic_the_decoder() {
    let (mut rng, _seed) = rng("peer decoder");
    // Valid encodings to mutate: an append carrying a batch, a vote, a snapshot chunk.
    let mut valid = Vec::new();
    let mut buf = vec![0u8; 4096];
    rng.fill_bytes(&mut buf);
    let mut u = Unstructured::new(&buf);
    let cmds: Vec<Command> = (0..3).filter_map(|_| command(&mut u, 1).ok()).collect();
    let entry = openraft::Entry::<TypeConfig> {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 7),
        payload: openraft::EntryPayload::Normal(Envelope {
            now_ms: 1,
            cmd: Command::Batch(cmds),
        }),
    };
    let vote = openraft::Vote::new(3, 1);
    valid.push(
        encode(&AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: None,
            entries: vec![entry],
            leader_commit: None,
        })
        .unwrap(),
    );
    valid.push(encode(&VoteRequest::<u64>::new(vote, None)).unwrap());
    valid.push(
        encode(&InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta: Default::default(),
            offset: 0,
            data: vec![1, 2, 3],
            done: false,
        })
        .unwrap(),
    );
    for i in 0..cases(5_000) {
        let bytes = if i % 2 == 0 {
            random_bytes(&mut rng, 2048)
        } else {
            let v = &valid[rng.random_range(0..valid.len())];
            mutate(&mut rng, v)
        };
        let _ = decode::<AppendEntriesRequest<TypeConfig>>(&bytes);
        let _ = decode::<VoteRequest<u64>>(&bytes);
        let _ = decode::<InstallSnapshotRequest<TypeConfig>>(&bytes);
        let _ = decode::<Command>(&bytes);
        let _ = decode::<Result<Reply, ProposeError>>(&bytes);
        let _ = decode::<Result<u64, ProposeError>>(&bytes);
    }
}

#[test]
fn snapshot_restore_refuses_malformed_streams_without_panics() {
    use std::io::{Seek, Write};
    let (mut rng, _seed) = rng("snapshot restore");
    let dir = tempfile::tempdir().unwrap();
    // Each case opens a redb store, so this target runs fewer cases.
    for case in 0..cases(300).div_ceil(10) {
        let mut stream = b"TRSNAP01".to_vec();
        if case % 4 == 0 {
            stream = random_bytes(&mut rng, 512);
        } else {
            // Framed records with random tables, keys and values, sometimes cut short or
            // with lengths that lie.
            for _ in 0..rng.random_range(0..20) {
                stream.push(rng.random_range(0..24));
                for _ in 0..2 {
                    let blob = random_bytes(&mut rng, 64);
                    let len = if rng.random_range(0..10) == 0 {
                        rng.random::<u32>()
                    } else {
                        blob.len() as u32
                    };
                    stream.extend_from_slice(&len.to_le_bytes());
                    stream.extend_from_slice(&blob);
                }
            }
            if rng.random_range(0..3) > 0 {
                stream.push(0xff);
            }
        }
        let case_dir = dir.path().join(format!("case-{case}"));
        std::fs::create_dir_all(&case_dir).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&stream).unwrap();
        file.rewind().unwrap();
        let db = redb::Database::create(case_dir.join("state.redb")).unwrap();
        let loaded = taskraft_broker::raft::snapshot::load(file, &db);
        drop(db);
        if loaded.is_ok() {
            // A stream that loads must give a store that opens (or is refused), never a
            // panic.
            let _ = taskraft_broker::raft::state_machine::StateMachineStore::open(&case_dir);
        }
        std::fs::remove_dir_all(&case_dir).unwrap();
    }
}
