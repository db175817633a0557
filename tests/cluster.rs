//! Three (or more) nodes in one process replicating through Raft over real gRPC:
//! forwarding, linearizable reads, leases across failover, partitions, membership and
//! catch-up by snapshot.

use std::time::Duration;

use taskraft_proto::v1 as pb;
use taskraft_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_any_call_and_reads_are_linearizable() {
    let cluster = InProcCluster::start(3, |_| {}).await;
    let leader = cluster.wait_leader().await;
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();

    let mut f1 = cluster.clients(followers[0]).await;
    let mut f2 = cluster.clients(followers[1]).await;
    let mut l = cluster.clients(leader).await;
    // Enqueue on a follower, read back at once on the other follower.
    let id = f1
        .broker
        .enqueue(job("any", "x"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    assert_eq!(
        get_job(&mut f2, &id).await.state,
        pb::JobState::Ready as i32
    );
    let leased = f2
        .broker
        .lease(lease("any", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    l.broker
        .ack(pb::AckRequest {
            job_id: id.clone(),
            lease_id: leased.lease_id,
            result: "ok".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        get_job(&mut f1, &id).await.state,
        pb::JobState::Succeeded as i32
    );
    assert_eq!(stats(&mut f2, "any").await.succeeded, 1);

    for id in 1..=3 {
        let st = cluster
            .clients(id)
            .await
            .admin
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.leader_id, leader);
        assert_eq!(st.nodes.len(), 3);
        assert_eq!(st.nodes.iter().filter(|n| n.role == "leader").count(), 1);
        assert!(st.applied_index > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_failover_and_expired_ones_are_redelivered_by_the_new_leader() {
    let mut cluster = InProcCluster::start(3, |_| {}).await;
    let old = cluster.wait_leader().await;
    let other = (1..=3).find(|i| *i != old).unwrap();
    let mut c = cluster.clients(other).await;
    c.broker.enqueue(job("fo", "long")).await.unwrap();
    let long = c
        .broker
        .lease(lease("fo", 1, 120_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    c.broker.enqueue(job("fo", "short")).await.unwrap();
    let short = c
        .broker
        .lease(lease("fo", 1, 1_500, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);

    cluster.stop(old).await;
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    let new = cluster.wait_leader_among(&survivors).await;
    assert_ne!(new, old);
    let mut c = cluster.clients(new).await;
    // The lease taken under the old leader is still valid on the new one.
    c.broker
        .ack(pb::AckRequest {
            job_id: long.job_id.clone(),
            lease_id: long.lease_id.clone(),
            result: Default::default(),
        })
        .await
        .unwrap();
    // The short one expires and the new leader redelivers it.
    let again = c
        .broker
        .lease(lease("fo", 1, 30_000, 15_000))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    assert_eq!(
        (again.job_id.as_str(), again.attempt),
        (short.job_id.as_str(), 2)
    );
    let stale = c
        .broker
        .ack(pb::AckRequest {
            job_id: short.job_id.clone(),
            lease_id: short.lease_id.clone(),
            result: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_while_the_majority_continues() {
    let cluster = InProcCluster::start(3, |_| {}).await;
    let old = cluster.wait_leader().await;
    let mut old_c = cluster.clients(old).await;
    let before = old_c
        .broker
        .enqueue(job("part", "before"))
        .await
        .unwrap()
        .into_inner()
        .job_id;

    cluster.isolate(old);
    let majority: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    // The minority side cannot commit: the write fails with UNAVAILABLE in bounded time.
    let started = tokio::time::Instant::now();
    let err = old_c
        .broker
        .enqueue(job("part", "minority"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let new = cluster.wait_leader_among(&majority).await;
    let mut c = cluster.clients(new).await;
    let after = c
        .broker
        .enqueue(job("part", "majority"))
        .await
        .unwrap()
        .into_inner()
        .job_id;

    cluster.heal();
    // The old leader steps down, catches up, and serves the majority's writes.
    let leader = cluster.wait_leader().await;
    assert_ne!(leader, old);
    let mut old_c = cluster.clients(old).await;
    assert_eq!(
        get_job(&mut old_c, &after).await.state,
        pb::JobState::Ready as i32
    );
    assert_eq!(
        get_job(&mut old_c, &before).await.state,
        pb::JobState::Ready as i32
    );
    // What the minority wrote never committed: only "before" and "majority" exist.
    assert_eq!(stats(&mut old_c, "part").await.ready, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_node_joins_by_snapshot_and_any_node_can_be_removed() {
    let mut cluster = InProcCluster::start(3, |c| {
        c.snapshot_every = 50;
        c.keep_logs = 10;
    })
    .await;
    let leader = cluster.wait_leader().await;
    let mut c = cluster.clients(leader).await;
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(
            c.broker
                .enqueue(job("join", &format!("p{i}")))
                .await
                .unwrap()
                .into_inner()
                .job_id,
        );
    }

    // Wait until every node has compacted its log behind a snapshot, so whoever leads
    // must send node 4 a snapshot.
    eventually_ok("every log purged behind a snapshot", SOON, || async {
        let purged: Vec<u64> = (1..=3)
            .map(|id| cluster.node(id).node.cluster_view().purged_index)
            .collect();
        if purged.iter().all(|p| *p > 100) {
            Ok(())
        } else {
            Err(format!("purged up to {purged:?}"))
        }
    })
    .await;

    // Node 4 lists the cluster's peers (not itself): it forms nothing and waits.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = taskraft_broker::config::Config::ephemeral(dir.path());
    cfg.id = 4;
    cfg.peers = cluster.configs[0].peers.clone();
    cfg.request_timeout = Duration::from_secs(3);
    let n4 = taskraft_broker::server::start(cfg).await.unwrap();
    let mut c4 = connect(n4.grpc_addr).await;
    let err = c4.broker.enqueue(job("join", "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("not a member"), "{}", err.message());

    // Added through a follower, it catches up (the log behind the snapshot is purged).
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let st = cluster
        .clients(follower)
        .await
        .admin
        .add_node(pb::AddNodeRequest {
            node_id: 4,
            addr: n4.grpc_addr.to_string(),
            peer_addr: n4.peer_addr.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let four = st.nodes.iter().find(|n| n.id == 4).expect("node 4 listed");
    assert_eq!(four.role, "follower");
    // Its metrics may trail the leader's view of its progress by a moment.
    eventually_ok("node 4 to catch up through a snapshot", SOON, || async {
        let m4 = n4.node.cluster_view();
        match m4.snapshot_index {
            Some(_) => Ok(()),
            None => Err(format!("{m4:?}")),
        }
    })
    .await;
    assert_eq!(stats(&mut c4, "join").await.ready, 300);
    assert_eq!(get_job(&mut c4, &ids[0]).await.payload, "p0");

    // Remove the leader itself: the rest elect a new one and keep serving.
    c4.admin
        .remove_node(pb::RemoveNodeRequest { node_id: leader })
        .await
        .unwrap();
    let rest: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let new = eventually(
        &format!("a new leader after removing {leader}"),
        SOON,
        || async { n4.node.leader().filter(|l| *l != leader) },
    )
    .await;
    assert!(rest.contains(&new) || new == 4);
    c4.broker
        .enqueue(job("join", "after-remove"))
        .await
        .unwrap();
    let st = c4
        .admin
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.nodes.len(), 3);
    assert!(st.nodes.iter().all(|n| n.id != leader));
    cluster.stop(leader).await;
    n4.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_a_burst_of_big_batches_catches_up_from_the_log() {
    // Each entry is a 3 MiB EnqueueBatch; 64 of them used to go in one AppendEntries,
    // which cannot arrive within openraft's 100 ms, so the follower never caught up.
    let cluster = InProcCluster::start(3, |c| {
        c.snapshot_every = 100_000;
        c.keep_logs = 100_000;
        c.keep_log_bytes = u64::MAX;
        c.api.max_payload = 64 << 10;
    })
    .await;
    let leader = cluster.wait_leader().await;
    let behind = (1..=3).find(|i| *i != leader).unwrap();
    cluster.isolate(behind);
    let mut c = cluster.clients(leader).await;
    let blob = "b".repeat(30 << 10);
    for _ in 0..30 {
        let jobs = (0..100).map(|_| job("big", &blob)).collect();
        c.broker
            .enqueue_batch(pb::EnqueueBatchRequest { jobs })
            .await
            .unwrap();
    }
    let want = cluster.applied(leader);
    cluster.heal();
    eventually(
        "the follower to apply the burst",
        Duration::from_secs(60),
        || {
            let got = cluster.applied(behind);
            async move { (got >= want).then_some(()) }
        },
    )
    .await;
    let mut f = cluster.clients(behind).await;
    assert_eq!(stats(&mut f, "big").await.ready, 3000);
}

/// `EnqueueStream` on a follower forwards its jobs to the leader; when the leader dies
/// mid-stream, every job is answered either stored (and it is there after the failover)
/// or UNAVAILABLE (safe to retry), and none is answered twice or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_stream_through_a_follower_loses_no_answered_job_when_the_leader_dies() {
    let mut cluster = InProcCluster::start(3, |_| {}).await;
    let old = cluster.wait_leader().await;
    let follower = (1..=3).find(|i| *i != old).unwrap();
    let mut c = cluster.clients(follower).await;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut answers = c
        .broker
        .enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let send = |seq: u64| {
        let tx = tx.clone();
        async move {
            let msg = pb::EnqueueStreamRequest {
                seq,
                job: Some(job("streamed", &format!("s{seq}"))),
            };
            tx.send(msg).await.expect("stream open");
        }
    };
    let mut got = std::collections::BTreeMap::new();
    for seq in 0..300 {
        send(seq).await;
    }
    while got.len() < 300 {
        let a = answers.message().await.unwrap().expect("answers");
        got.insert(a.seq, a);
    }
    assert!(
        got.values().all(|a| a.code == 0),
        "all stored before the kill"
    );
    for seq in 300..600 {
        send(seq).await;
    }
    cluster.stop(old).await;
    drop(tx);
    while let Some(a) = tokio::time::timeout(SOON, answers.message())
        .await
        .expect("answers keep coming")
        .unwrap()
    {
        assert!(got.insert(a.seq, a).is_none(), "a seq answered twice");
    }
    assert_eq!(got.len(), 600, "every job is answered");
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    let new = cluster.wait_leader_among(&survivors).await;
    let mut n = cluster.clients(new).await;
    let mut stored = 0;
    for a in got.values() {
        match a.code {
            0 => {
                let j = get_job(&mut n, &a.job_id).await;
                assert_eq!(&j.payload[..], format!("s{}", a.seq).as_bytes());
                stored += 1;
            }
            c => assert_eq!(c, tonic::Code::Unavailable as i32, "{a:?}"),
        }
    }
    assert!(stored >= 300);
    assert!(stats(&mut n, "streamed").await.ready >= stored);
}

/// A `Work` session on a follower: its leases and acks go to the leader, and every
/// job pushed is acked on the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_session_on_a_follower_processes_every_job() {
    use pb::work_request::Kind as Up;
    use pb::work_response::Kind as Down;
    let cluster = InProcCluster::start(3, |_| {}).await;
    let leader = cluster.wait_leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut l = cluster.clients(leader).await;
    for i in 0..50 {
        l.broker.enqueue(job("wf", &format!("w{i}"))).await.unwrap();
    }
    let mut c = cluster.clients(follower).await;
    let up = |kind, seq| pb::WorkRequest {
        kind: Some(kind),
        seq,
    };
    let open = pb::WorkOpen {
        queues: vec!["wf".into()],
        worker_id: "follower-worker".into(),
        visibility_timeout_ms: 600_000,
        ..Default::default()
    };
    let (tx, mut down) = open_work(&mut c, open, 20, None).await.unwrap();
    let (mut seq, mut acked) = (0, 0);
    while acked < 50 {
        match next_push(&mut down).await {
            Down::Job(j) => {
                seq += 1;
                let ack = pb::AckRequest {
                    job_id: j.job_id,
                    lease_id: j.lease_id,
                    result: Default::default(),
                };
                tx.send(up(Up::Ack(ack), seq)).await.unwrap();
            }
            Down::Answer(a) => {
                assert_eq!(a.code, 0, "{a:?}");
                acked += 1;
                // Each push used a credit: grant one back per finished job.
                tx.send(up(Up::Credit(1), 0)).await.unwrap();
            }
            Down::Opened(_) => {}
        }
    }
    let s = stats(&mut l, "wf").await;
    assert_eq!((s.succeeded, s.ready, s.leased), (50, 0, 0));
}

/// A follower forwards its clients' writes to the leader on one long-lived stream: many
/// concurrent writes share it, and each gets its own answer (its own job id, or its own
/// error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_a_follower_share_one_forwarding_stream_and_each_gets_its_own_answer() {
    let cluster = InProcCluster::start(3, |_| {}).await;
    let leader = cluster.wait_leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let c = cluster.clients(follower).await;
    let calls = (0..300).map(|i| {
        let mut c = c.clone();
        async move {
            c.broker
                .enqueue(job("fwd", &format!("p{i}")))
                .await
                .map(|r| r.into_inner().job_id)
        }
    });
    let ids = futures::future::join_all(calls).await;
    let ids: std::collections::HashSet<String> = ids
        .into_iter()
        .map(|r| r.expect("a forwarded enqueue"))
        .collect();
    assert_eq!(ids.len(), 300, "every enqueue got its own job id");
    // An answer that is an error reaches its own caller: a lease on a job id that does
    // not exist, among writes that succeed.
    let (mut c2, mut c3) = (c.clone(), c.clone());
    let (bad, good) = tokio::join!(
        c2.broker.ack(pb::AckRequest {
            job_id: "no-such-job".into(),
            lease_id: "0000000000000001".into(),
            result: Default::default(),
        }),
        c3.broker.enqueue(job("fwd", "last")),
    );
    assert_eq!(bad.unwrap_err().code(), Code::NotFound);
    good.expect("the write next to the failed one");
    let mut l = cluster.clients(leader).await;
    assert_eq!(stats(&mut l, "fwd").await.ready, 301);
    assert_eq!(
        cluster.node(follower).node.forwarding_streams_opened(),
        1,
        "301 writes on one stream"
    );
}

/// A forwarded write whose caller gave up is not written later: the follower cancels
/// it on its stream, so the leader drops it before proposing, as it drops its own
/// callers' abandoned writes. The leader is cut off from both followers (it cannot
/// commit, and with 1 s heartbeats nobody campaigns within the test), so proposals
/// wait; the node's request timeout is 60 s, so without the cancellation every one of
/// them would still be proposed once the leader can commit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_whose_caller_gave_up_is_not_written_when_quorum_returns() {
    let cluster = InProcCluster::start(3, |c| {
        c.heartbeat = Duration::from_secs(1);
        c.request_timeout = Duration::from_secs(60);
    })
    .await;
    let leader = cluster.wait_leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut f = cluster.clients(follower).await;
    f.broker.enqueue(job("warm", "x")).await.expect("warm-up");
    // The leader's own messages are dropped: no append reaches a follower.
    cluster.node(leader).node.peers().isolate();
    let calls = 8;
    for i in 0..calls {
        let mut req = tonic::Request::new(job("ghost", &format!("g{i}")));
        req.set_timeout(Duration::from_millis(300));
        let res = tokio::time::timeout(Duration::from_secs(2), f.broker.enqueue(req)).await;
        assert!(
            !matches!(res, Ok(Ok(_))),
            "an enqueue succeeded without quorum"
        );
    }
    cluster.heal();
    let l = cluster.clients(leader).await;
    let stored = ready_after_a_write_commits(&l, "ghost").await;
    assert!(
        stored <= 2,
        "{stored} of {calls} abandoned forwarded enqueues were written after quorum returned"
    );
    assert_eq!(
        cluster.node(follower).node.forwarding_streams_opened(),
        1,
        "the stream outlived the stall"
    );
}
