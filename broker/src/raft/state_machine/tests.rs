use openraft::{CommittedLeaderId, Entry as RaftEntry};

use super::*;
use crate::queue::{Command, Due, Envelope, NewJob, Retention};

fn enqueue(index: u64) -> Entry {
    let job = NewJob {
        id: format!("job-{index}"),
        queue: "q".into(),
        job_type: "t".into(),
        payload: bytes::Bytes::from(vec![7u8; 100]),
        headers: Default::default(),
        priority: 0,
        due: Due::After(0),
        max_attempts: 3,
        idempotency_key: String::new(),
        dedup_window_ms: 1000,
        retention: Retention {
            result_ttl_ms: 60_000,
            failure_ttl_ms: 60_000,
        },
        webhook_url: String::new(),
    };
    RaftEntry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Envelope {
            now_ms: index,
            cmd: Command::Enqueue(vec![job]),
        }),
    }
}

async fn store_with(dir: &Path, entries: u64) -> StateMachineStore {
    let mut sm = StateMachineStore::open(dir).unwrap();
    sm.apply((1..=entries).map(enqueue)).await.unwrap();
    sm.commit_applied().unwrap();
    sm
}

fn jobs(sm: &StateMachineStore) -> u64 {
    sm.commit_applied().unwrap();
    sm.read_side().read().state.job_count()
}

#[tokio::test]
async fn an_older_snapshot_never_replaces_a_newer_one() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut old = store_with(dirs[0].path(), 10).await;
    let mut new = store_with(dirs[1].path(), 20).await;
    let old_snap = old.build_snapshot().await.unwrap();
    let new_snap = new.build_snapshot().await.unwrap();

    let mut c = StateMachineStore::open(dirs[2].path()).unwrap();
    c.install_snapshot(&new_snap.meta, new_snap.snapshot)
        .await
        .unwrap();
    assert_eq!(jobs(&c), 20);
    // The older one arrives late (a build or an install that raced): ignored.
    c.install_snapshot(&old_snap.meta, old_snap.snapshot)
        .await
        .unwrap();
    assert_eq!(jobs(&c), 20);
    assert_eq!(c.applied_state().await.unwrap().0.unwrap().index, 20);
    // A build that began before the install and finishes after it does not replace it.
    let stale = old.snapshot_now(&old.read_side.db()).unwrap();
    c.set_current(&stale);
    let current = c.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id.unwrap().index, 20);

    // Restart: the installed state is what the store holds.
    drop(c);
    let mut c = StateMachineStore::open(dirs[2].path()).unwrap();
    assert_eq!(jobs(&c), 20);
    let current = c.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id.unwrap().index, 20);
}

/// A store of format 1 (a state index entry per job, no stamp) is converted at
/// open: its jobs are listed again and the stamp says 2.
#[tokio::test]
async fn a_format_1_store_is_converted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let sm = store_with(dir.path(), 5).await;
    drop(sm);
    {
        let db = open_store_unchecked(&dir.path().join("state.redb"));
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(crate::storage::tables::SM_META).unwrap();
            meta.remove(FORMAT_KEY).unwrap();
            let mut by_state = txn.open_table(crate::storage::tables::BY_STATE).unwrap();
            by_state.retain(|_, _| false).unwrap();
            // Format 1: queue key, state index (0 = Ready), seq.
            for seq in 0..5u64 {
                let mut k = vec![1, b'q', 0];
                k.extend_from_slice(&seq.to_be_bytes());
                by_state.insert(k.as_slice(), b"".as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let sm = StateMachineStore::open(dir.path()).unwrap();
    let view = sm.read_side().read();
    let (jobs, next) = view.state.list_jobs("q", None, None, 10);
    assert_eq!(jobs.len(), 5);
    assert_eq!(next, None);
    drop(view);
    drop(sm);
    let db = open_store_unchecked(&dir.path().join("state.redb"));
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(crate::storage::tables::SM_META).unwrap();
    let stamp = meta.get(FORMAT_KEY).unwrap().unwrap().value().to_vec();
    assert_eq!(stamp, FORMAT.to_le_bytes());
}

fn entry(index: u64, now_ms: u64, cmd: Command) -> Entry {
    RaftEntry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Envelope { now_ms, cmd }),
    }
}

/// A store of format 2 (blobs in their own tables, a lease deadline or expiry entry
/// per job) is converted at open: payloads read back, leases still expire and
/// finished jobs are still removed.
#[tokio::test]
async fn a_format_2_store_is_converted_at_open() {
    use crate::queue::{Job, JobState};
    use crate::storage::tables::{JOBS, PAYLOADS, RESULTS, SM_META, TIMERS};
    use redb::ReadableTable;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = store_with(dir.path(), 4).await;
    let lease = Command::Lease {
        queues: vec!["q".into()],
        worker_id: "w".into(),
        max_jobs: 2,
        visibility_timeout_ms: 1_000,
    };
    sm.apply([entry(5, 5, lease)]).await.unwrap();
    sm.commit_applied().unwrap();
    let lease_id = {
        let view = sm.read_side().read();
        let job = view.state.job("job-1").unwrap();
        job.held_lease().unwrap().id
    };
    let ack = Command::Ack {
        job_id: "job-1".into(),
        lease_id,
        result: bytes::Bytes::from_static(b"done"),
    };
    sm.apply([entry(6, 6, ack)]).await.unwrap();
    sm.commit_applied().unwrap();
    drop(sm);
    {
        let db = open_store_unchecked(&dir.path().join("state.redb"));
        let txn = db.begin_write().unwrap();
        {
            let mut jobs = txn.open_table(JOBS).unwrap();
            let mut payloads = txn.open_table(PAYLOADS).unwrap();
            let mut results = txn.open_table(RESULTS).unwrap();
            let mut timers = txn.open_table(TIMERS).unwrap();
            let records: Vec<(Vec<u8>, Job)> = jobs
                .iter()
                .unwrap()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    let (job, _) = postcard::take_from_bytes::<Job>(v.value()).unwrap();
                    (k.value().to_vec(), job)
                })
                .collect();
            for (k, job) in records {
                jobs.insert(k.as_slice(), postcard::to_stdvec(&job).unwrap().as_slice())
                    .unwrap();
                payloads
                    .insert(k.as_slice(), [7u8; 100].as_slice())
                    .unwrap();
                let old = match (job.held_lease(), job.state.is_terminal()) {
                    (Some(l), _) => Some((1u8, l.deadline_ms)),
                    (None, true) => {
                        results.insert(k.as_slice(), b"done".as_slice()).unwrap();
                        Some((2u8, job.expires_at_ms))
                    }
                    _ => None,
                };
                if let Some((kind, at)) = old {
                    let mut k = vec![kind];
                    k.extend_from_slice(&at.to_be_bytes());
                    k.extend_from_slice(&job.seq.to_be_bytes());
                    timers.insert(k.as_slice(), b"".as_slice()).unwrap();
                }
            }
            timers.retain(|k, _| k[0] < 4).unwrap();
            txn.open_table(SM_META)
                .unwrap()
                .insert(FORMAT_KEY, 2u32.to_le_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    {
        let view = sm.read_side().read();
        let job = view.state.job("job-1").unwrap();
        assert_eq!(job.payload.as_ref(), [7u8; 100]);
        assert_eq!(view.state.next_wakeup_ms(), Some(1_005));
    }
    sm.apply([entry(7, 1_005, Command::Tick)]).await.unwrap();
    sm.commit_applied().unwrap();
    {
        let view = sm.read_side().read();
        let job = view.state.job("job-2").unwrap();
        assert_eq!((job.state, job.expirations), (JobState::Ready, 1));
        let job = view.state.job("job-1").unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.result.as_ref(), b"done");
        assert_eq!(view.state.next_wakeup_ms(), Some(6 + 60_000));
    }
    sm.apply([entry(8, 6 + 60_000, Command::Tick)])
        .await
        .unwrap();
    sm.commit_applied().unwrap();
    let view = sm.read_side().read();
    assert!(view.state.job("job-1").is_none(), "removed by retention");
    assert_eq!(view.state.job_count(), 3);
}

fn open_store_unchecked(path: &Path) -> Database {
    redb::Database::create(path).unwrap()
}

#[tokio::test]
async fn an_install_that_died_half_way_leaves_the_old_state() {
    let dir = tempfile::tempdir().unwrap();
    let sm = store_with(dir.path(), 5).await;
    drop(sm);
    // What a crash during install leaves: a partial new store beside the old one.
    std::fs::write(installing_path(dir.path()), b"partial").unwrap();
    let sm = StateMachineStore::open(dir.path()).unwrap();
    assert_eq!(jobs(&sm), 5);
    assert!(!installing_path(dir.path()).exists());
}

/// A `Lease` entry proposed by `leader` at `index`.
fn lease(leader: NodeId, index: u64) -> Entry {
    RaftEntry {
        log_id: LogId::new(CommittedLeaderId::new(1, leader), index),
        payload: EntryPayload::Normal(Envelope {
            now_ms: index,
            cmd: Command::Lease {
                queues: vec!["q".into()],
                worker_id: "w".into(),
                max_jobs: 1,
                visibility_timeout_ms: 60_000,
            },
        }),
    }
}

#[tokio::test]
async fn only_the_proposer_reads_payloads_into_lease_replies() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::open(dir.path()).unwrap().with_node_id(2);
    sm.apply((1..=2).map(enqueue)).await.unwrap();
    let leased = |mut replies: Vec<Reply>| match replies.pop() {
        Some(Ok(Outcome::Leased(jobs))) => jobs,
        other => panic!("expected a lease, got {other:?}"),
    };
    // Proposed by node 1: this node drops the reply, so it carries no payload ...
    let other = leased(sm.apply([lease(1, 3)]).await.unwrap());
    assert_eq!(other.len(), 1);
    assert!(other[0].payload.is_empty());
    // ... but the job is leased all the same, and the proposer gets its payload.
    let own = leased(sm.apply([lease(2, 4)]).await.unwrap());
    assert_eq!(own.len(), 1);
    assert_ne!(own[0].job_id, other[0].job_id);
    assert_eq!(own[0].payload.as_ref(), &[7u8; 100][..]);
    assert_eq!(jobs(&sm), 2);
}
