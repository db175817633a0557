//! kill -9 at the moments the on-disk state store is most exposed: in the middle of
//! applying batches while snapshots (durable commits, log purges) happen every few
//! entries, right after a quiet point whose state was only committed without fsync,
//! and on a follower while it installs a snapshot. After each restart the node must
//! hold every acknowledged call: counts, payloads and live leases.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskraft_proto::v1 as pb;
use taskraft_tests::*;

/// Snapshot (durable commit + log purge) every few entries, so kills land during
/// snapshot builds too.
const CONSTANT_SNAPSHOTS: &[&str] = &["--snapshot-every", "10", "--keep-logs", "5"];

/// What the producers and the worker were told succeeded.
#[derive(Clone, Default)]
struct Acked {
    /// Enqueued job id -> payload.
    enqueued: BTreeMap<String, String>,
    /// Leased, no ack sent: job id -> lease id.
    leased: BTreeMap<String, String>,
    /// Ack sent, answer not (yet) seen: leased or succeeded after a kill.
    acking: Vec<String>,
    /// Acked job ids.
    acked: Vec<String>,
}

/// Producers (EnqueueBatch) and a worker (Lease, Ack every other job) that record
/// every call that was answered OK, until `stop` or the first error.
async fn load(node: std::net::SocketAddr, acked: Arc<Mutex<Acked>>, round: usize) {
    let mut producers = Vec::new();
    for p in 0..2 {
        let acked = acked.clone();
        producers.push(tokio::spawn(async move {
            let mut c = connect(node).await;
            for b in 0..400 {
                let jobs: Vec<_> = (0..25)
                    .map(|i| job("crash", &format!("r{round}-p{p}-b{b}-{i}")))
                    .collect();
                let payloads: Vec<String> = jobs
                    .iter()
                    .map(|j| String::from_utf8_lossy(&j.payload).into_owned())
                    .collect();
                let Ok(r) = c
                    .broker
                    .enqueue_batch(pb::EnqueueBatchRequest { jobs })
                    .await
                else {
                    return;
                };
                let mut a = acked.lock().unwrap();
                for (res, payload) in r.into_inner().results.into_iter().zip(payloads) {
                    a.enqueued.insert(res.job_id, payload);
                }
            }
        }));
    }
    let worker = tokio::spawn(async move {
        let mut c = connect(node).await;
        for _ in 0..400 {
            let Ok(r) = c.broker.lease(lease("crash", 20, 3_600_000, 0)).await else {
                return;
            };
            for (i, l) in r.into_inner().jobs.into_iter().enumerate() {
                acked
                    .lock()
                    .unwrap()
                    .leased
                    .insert(l.job_id.clone(), l.lease_id.clone());
                if i % 2 == 0 {
                    {
                        let mut a = acked.lock().unwrap();
                        a.leased.remove(&l.job_id);
                        a.acking.push(l.job_id.clone());
                    }
                    let ack = pb::AckRequest {
                        job_id: l.job_id.clone(),
                        lease_id: l.lease_id,
                        result: "done".into(),
                    };
                    if c.broker.ack(ack).await.is_err() {
                        return;
                    }
                    let mut a = acked.lock().unwrap();
                    a.acking.retain(|id| *id != l.job_id);
                    a.acked.push(l.job_id);
                }
            }
        }
    });
    for p in producers {
        let _ = p.await;
    }
    let _ = worker.await;
}

/// Checks that the restarted node holds everything in `acked`.
async fn check_acked(c: &mut Clients, acked: &Acked) {
    for (id, payload) in &acked.enqueued {
        let j = get_job(c, id).await;
        assert_eq!(
            j.payload,
            payload.as_bytes(),
            "payload of acknowledged job {id}"
        );
    }
    for id in &acked.acked {
        let j = get_job(c, id).await;
        assert_eq!(j.state, pb::JobState::Succeeded as i32, "acked job {id}");
        assert_eq!(j.result, "done".as_bytes());
    }
    for id in acked.leased.keys() {
        let j = get_job(c, id).await;
        assert_eq!(j.state, pb::JobState::Leased as i32, "leased job {id}");
    }
    for id in &acked.acking {
        let state = get_job(c, id).await.state;
        assert!(
            state == pb::JobState::Leased as i32 || state == pb::JobState::Succeeded as i32,
            "job {id} whose ack was in flight is {state}"
        );
    }
    let s = stats(c, "crash").await;
    assert!(
        s.ready + s.leased + s.succeeded >= acked.enqueued.len() as u64,
        "{s:?} holds fewer jobs than the {} acknowledged",
        acked.enqueued.len()
    );
    assert_eq!((s.scheduled, s.dead, s.cancelled), (0, 0, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_applying_and_snapshotting_keeps_every_acknowledged_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = ProcessNode::spawn(&dir.path().join("node"), CONSTANT_SNAPSHOTS).await;
    node.wait_ready().await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    for round in 0..3 {
        let load = tokio::spawn(load(node.addr, acked.clone(), round));
        // Kill once some work was acknowledged, while the load runs.
        let want = acked.lock().unwrap().enqueued.len() + 500;
        eventually("load to get going", SOON, || {
            let a = acked.clone();
            async move { (a.lock().unwrap().enqueued.len() >= want).then_some(()) }
        })
        .await;
        node.kill9();
        let _ = load.await;
        node.restart().await;
        node.wait_ready().await;
        let mut c = node.clients().await;
        let a = acked.lock().unwrap().clone();
        check_acked(&mut c, &a).await;
    }
    // The live leases still fence: each acks with its own lease id.
    let mut c = node.clients().await;
    let leased = std::mem::take(&mut acked.lock().unwrap().leased);
    assert!(!leased.is_empty(), "the worker held leases at the kills");
    for (job_id, lease_id) in leased {
        c.broker
            .ack(pb::AckRequest {
                job_id,
                lease_id,
                result: "late".into(),
            })
            .await
            .expect("a lease held at the kill is still the job's lease");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_right_after_a_quiet_point_restores_exact_counts() {
    // The state store commits without fsync between durable points; a kill right after
    // a quiet moment must come back to exactly that state (from the log).
    let dir = tempfile::tempdir().unwrap();
    let mut node = ProcessNode::spawn(&dir.path().join("node"), &[]).await;
    node.wait_ready().await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    load(node.addr, acked.clone(), 0).await;
    let mut c = node.clients().await;
    let before = stats(&mut c, "crash").await;
    node.kill9();
    node.restart().await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    assert_eq!(stats(&mut c, "crash").await, before);
    let a = acked.lock().unwrap().clone();
    check_acked(&mut c, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_while_installing_a_snapshot_catches_up_after_restart() {
    let mut cluster = ProcessCluster::spawn(3, CONSTANT_SNAPSHOTS).await;
    for id in 1..=3 {
        cluster.node(id).wait_ready().await;
    }
    let leader = cluster.wait_leader().await;
    let mut c = connect(cluster.node(leader).addr).await;
    // A state big enough that writing and loading its snapshot takes a while.
    let payload = "x".repeat(2048);
    for b in 0..40 {
        let jobs = (0..250)
            .map(|i| job("install", &format!("{b}-{i}-{payload}")))
            .collect();
        c.broker
            .enqueue_batch(pb::EnqueueBatchRequest { jobs })
            .await
            .unwrap();
    }
    let want = stats(&mut c, "install").await;
    assert_eq!(want.ready, 10_000);

    // Wipe a follower: it rejoins empty and must be sent a snapshot (the leader's log
    // behind it is purged).
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let node = cluster.node(follower);
    node.kill9();
    std::fs::remove_dir_all(&node.data_dir).unwrap();
    // Kill it at several points of the install, then let it finish.
    for delay_ms in [300, 900, 1800] {
        node.restart().await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        node.kill9();
    }
    node.restart().await;
    node.wait_ready().await;
    let mut f = node.clients().await;
    eventually("the follower to catch up", Duration::from_secs(120), || {
        let mut f = f.clone();
        let want = want.clone();
        async move {
            let got = f
                .admin
                .get_queue_stats(pb::GetQueueStatsRequest {
                    queue: "install".into(),
                })
                .await
                .ok()?
                .into_inner();
            (got == want).then_some(())
        }
    })
    .await;
    // The whole log: under load, vote errors logged after the install can push the
    // line out of the tail.
    assert!(
        node.log_text().contains("installed snapshot"),
        "the follower caught up without a snapshot:\n{}",
        node.log_tail()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&node.data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("installing"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let j = f
        .admin
        .list_jobs(pb::ListJobsRequest {
            queue: "install".into(),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(j.jobs[0].payload.ends_with(payload.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_right_after_acks_serves_them_after_restart() {
    // Acks answered just before the leader dies must read back from it after its
    // restart. The committed pointer is written lazily (`LogStore::save_committed`), and
    // the restarted leader retakes leadership in its old term, so it may start with a
    // committed index below those acks. Its followers are frozen while it restarts: the
    // read takes its read index before any replication round can commit again, and only
    // the floor in `RaftNode::leader_read_index` keeps it from being stale.
    let mut cluster = ProcessCluster::spawn(3, &[]).await;
    for id in 1..=3 {
        cluster.node(id).wait_ready().await;
    }
    for round in 0..2 {
        let leader = cluster.wait_leader().await;
        let queue = format!("acked-{round}");
        let mut c = connect(cluster.node(leader).addr).await;
        let jobs = (0..20).map(|i| job(&queue, &format!("{i}"))).collect();
        c.broker
            .enqueue_batch(pb::EnqueueBatchRequest { jobs })
            .await
            .unwrap();
        let leased = c
            .broker
            .lease(lease(&queue, 20, 600_000, 0))
            .await
            .unwrap()
            .into_inner()
            .jobs;
        for l in leased {
            c.broker
                .ack(pb::AckRequest {
                    job_id: l.job_id,
                    lease_id: l.lease_id,
                    result: "ok".into(),
                })
                .await
                .unwrap();
        }
        let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
        for &f in &followers {
            cluster.node(f).pause();
        }
        let node = cluster.node(leader);
        node.restart().await;
        // Ready means it knows a leader: itself, in its old term (the followers cannot
        // have voted for anybody while frozen).
        node.wait_ready().await;
        let r = node.clients().await;
        let stats = pb::GetQueueStatsRequest {
            queue: queue.clone(),
        };
        // Readers that keep asking from before the followers wake until one answer
        // came: the first answers race the first commit of the restarted leader.
        let served = Arc::new(Mutex::new(Vec::new()));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (mut r, stats, served) = (r.clone(), stats.clone(), served.clone());
                tokio::spawn(async move {
                    // Generous: waking followers may hold an election first.
                    let until = std::time::Instant::now() + SOON;
                    while std::time::Instant::now() < until {
                        if let Ok(s) = r.admin.get_queue_stats(stats.clone()).await {
                            served.lock().unwrap().push(s.into_inner());
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            served.lock().unwrap().is_empty(),
            "round {round}: a read was served without a quorum"
        );
        for &f in &followers {
            cluster.node(f).resume();
        }
        for reader in readers {
            reader.await.unwrap();
        }
        let served = served.lock().unwrap().clone();
        assert_eq!(served.len(), 4, "round {round}: every reader got an answer");
        for s in served {
            assert_eq!((s.succeeded, s.leased), (20, 0), "round {round}: {s:?}");
        }
    }
}
