//! Fault tests on real `taskraft serve` processes forming a three-node cluster:
//! SIGKILL of the leader under load, restart and catch-up, and loss of quorum.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskraft_proto::v1 as pb;
use taskraft_tests::*;
use tonic::Code;

/// A three-node cluster whose leader can be left without quorum (both followers
/// SIGKILLed) and given it back: calls on the leader then wait out their 1 s deadline.
struct Stall {
    cluster: ProcessCluster,
    leader: u64,
    followers: Vec<u64>,
}

impl Stall {
    async fn start() -> Self {
        let cluster = ProcessCluster::spawn(3, &["--request-timeout", "1s"]).await;
        for n in &cluster.nodes {
            n.wait_ready().await;
        }
        let leader = cluster.wait_leader().await;
        let followers = (1..=3).filter(|i| *i != leader).collect();
        Self {
            cluster,
            leader,
            followers,
        }
    }

    async fn leader_clients(&mut self) -> Clients {
        self.cluster.node(self.leader).clients().await
    }

    fn cut_quorum(&mut self) {
        for f in &self.followers {
            self.cluster.node(*f).kill9();
        }
    }

    /// Restarts the followers and returns clients of whoever leads then.
    async fn heal(&mut self) -> Clients {
        for f in &self.followers {
            self.cluster.node(*f).restart().await;
        }
        for n in &self.cluster.nodes {
            n.wait_ready().await;
        }
        self.leader = self.cluster.wait_leader().await;
        self.leader_clients().await
    }
}

#[derive(Default)]
struct Ledger {
    /// Enqueues the broker acknowledged: job id -> payload.
    enqueued: HashMap<String, String>,
    /// Successful acks per job id.
    acks: HashMap<String, u32>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_under_load_loses_nothing_and_the_node_catches_up_after_restart() {
    let mut cluster =
        ProcessCluster::spawn(3, &["--request-timeout", "3s", "--snapshot-every", "500"]).await;
    for n in &cluster.nodes {
        n.wait_ready().await;
    }
    let leader = cluster.wait_leader().await;
    let clients: Vec<Clients> =
        futures::future::join_all(cluster.nodes.iter().map(|n| n.clients())).await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_working = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..4usize {
        let clients = clients.clone();
        let (ledger, stop) = (ledger.clone(), stop_producing.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let mut c = clients[(p + i) % 3].clone();
                let payload = format!("p{p}-{i}");
                if let Ok(r) = c.broker.enqueue(job("ha", &payload)).await {
                    ledger
                        .lock()
                        .unwrap()
                        .enqueued
                        .insert(r.into_inner().job_id, payload);
                }
                i += 1;
            }
        }));
    }
    for w in 0..2usize {
        let clients = clients.clone();
        let (ledger, stop) = (ledger.clone(), stop_working.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let mut c = clients[i % 3].clone();
                let jobs = match c.broker.lease(lease("ha", 20, 5_000, 300)).await {
                    Ok(r) => r.into_inner().jobs,
                    Err(_) => continue,
                };
                for j in jobs {
                    let req = pb::AckRequest {
                        job_id: j.job_id.clone(),
                        lease_id: j.lease_id,
                        result: Default::default(),
                    };
                    if c.broker.ack(req).await.is_ok() {
                        *ledger.lock().unwrap().acks.entry(j.job_id).or_default() += 1;
                    }
                    // An ack lost in the failover leaves the lease to expire: the job is
                    // redelivered and acked again later, by design.
                }
            }
        }));
    }

    // Load under way: at least this many jobs enqueued and acked, however slowly the
    // machine goes.
    let load_reached = |enqueued: usize, acked: usize| {
        let ledger = ledger.clone();
        move || {
            let l = ledger.lock().unwrap();
            let (e, a) = (l.enqueued.len(), l.acks.len());
            std::future::ready(if e >= enqueued && a >= acked {
                Ok((e, a))
            } else {
                Err(format!("{e} jobs enqueued, {a} acked"))
            })
        }
    };
    let (before_kill, acked_before_kill) =
        eventually_ok("load to run", SOON, load_reached(100, 1)).await;
    cluster.node(leader).kill9();
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let killed_at = tokio::time::Instant::now();
    let probe = clients[survivors[0] as usize - 1].clone();
    eventually("a write to succeed after the leader died", SOON, || {
        let mut probe = probe.clone();
        async move { probe.broker.enqueue(job("ha-probe", "x")).await.ok() }
    })
    .await;
    eprintln!(
        "failover: first successful write {:?} after SIGKILL of leader {leader}",
        killed_at.elapsed()
    );
    let new_leader = cluster.wait_leader_among(&survivors).await;
    assert_ne!(new_leader, leader);

    // Load goes on through the new leader.
    eventually_ok(
        "load to go on after the failover",
        SOON,
        load_reached(before_kill + 100, acked_before_kill + 1),
    )
    .await;
    stop_producing.store(true, Ordering::SeqCst);
    // Let the workers drain everything that was acknowledged.
    let mut sc = clients[new_leader as usize - 1].clone();
    eventually_ok("the queue to drain", SOON * 2, || {
        let mut sc = sc.clone();
        async move {
            let st = stats(&mut sc, "ha").await;
            if st.ready + st.scheduled + st.leased == 0 {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        }
    })
    .await;
    stop_working.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        ledger.enqueued.len() > before_kill,
        "enqueues continued after failover"
    );
    for (id, payload) in &ledger.enqueued {
        let j = get_job(&mut sc, id).await;
        assert_eq!(
            j.state,
            pb::JobState::Succeeded as i32,
            "acknowledged job {id} completed"
        );
        assert_eq!(&j.payload[..], payload.as_bytes());
        assert!(
            ledger.acks.get(id).copied().unwrap_or(0) <= 1,
            "job {id} acked twice"
        );
    }
    assert!(ledger.acks.values().all(|n| *n == 1));

    // (b) The killed node comes back and catches up.
    cluster.node(leader).restart().await;
    cluster.node(leader).wait_ready().await;
    let target = cluster.status(new_leader).await.unwrap().commit_index;
    eventually_ok(
        &format!("the restarted node to apply up to {target}"),
        SOON,
        || async {
            let st = cluster.status(leader).await.unwrap();
            if st.applied_index >= target {
                Ok(())
            } else {
                Err(format!("stuck at {}", st.applied_index))
            }
        },
    )
    .await;
    let mut rc = cluster.node(leader).clients().await;
    assert_eq!(stats(&mut rc, "ha").await, stats(&mut sc, "ha").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_fail_fast_and_nothing_is_lost_after_restart() {
    let mut cluster = ProcessCluster::spawn(3, &["--request-timeout", "2s"]).await;
    for n in &cluster.nodes {
        n.wait_ready().await;
    }
    let leader = cluster.wait_leader().await;
    let mut c = cluster.node(leader).clients().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            c.broker
                .enqueue(job("q2", &format!("p{i}")))
                .await
                .unwrap()
                .into_inner()
                .job_id,
        );
    }
    // Kill the leader and one follower: the survivor has no quorum.
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let survivor = (1..=3).find(|i| *i != leader && *i != follower).unwrap();
    cluster.node(leader).kill9();
    cluster.node(follower).kill9();
    let mut s = cluster.node(survivor).clients().await;
    for _ in 0..2 {
        let started = tokio::time::Instant::now();
        let err = s.broker.enqueue(job("q2", "no quorum")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "took {:?}",
            started.elapsed()
        );
        let err = s
            .broker
            .get_job(pb::GetJobRequest {
                job_id: ids[0].clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }

    cluster.node(leader).restart().await;
    cluster.node(follower).restart().await;
    for n in &cluster.nodes {
        n.wait_ready().await;
    }
    let leader = cluster.wait_leader().await;
    let mut c = cluster.node(leader).clients().await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(get_job(&mut c, id).await.payload, format!("p{i}"));
    }
    assert_eq!(stats(&mut c, "q2").await.ready, 50);
}

/// Calls that gave up while the leader had no quorum are not written when it returns:
/// only what the leader had already put in its log (the proposer keeps at most two
/// entries in flight) may apply, not every call that queued behind them and timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_abandoned_during_a_stall_are_not_written_when_quorum_returns() {
    let mut stall = Stall::start().await;
    let mut c = stall.leader_clients().await;
    c.broker.enqueue(job("warm", "x")).await.unwrap();
    stall.cut_quorum();
    // One at a time: each waits out its deadline, and from the third on each waits in
    // the proposer's queue behind the two entries that cannot commit.
    let calls = 8;
    for i in 0..calls {
        let err = c
            .broker
            .enqueue(job("ghost", &format!("g{i}")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    let c = stall.heal().await;
    let stored = ready_after_a_write_commits(&c, "ghost").await;
    assert!(
        stored <= 2,
        "{stored} of {calls} abandoned enqueues were written after quorum returned"
    );
}

/// A Lease that applies after its caller gave up (it waited on a leader without quorum)
/// handed its job to nobody: the job comes back at once, ready and with the attempt not
/// counted, instead of staying leased for its 5-minute visibility timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_leased_for_a_caller_that_gave_up_comes_back_at_once() {
    let mut stall = Stall::start().await;
    let mut c = stall.leader_clients().await;
    let id = c
        .broker
        .enqueue(job("orphan", "x"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    stall.cut_quorum();
    let err = c
        .broker
        .lease(lease("orphan", 1, 300_000, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{err:?}"
    );
    let mut c = stall.heal().await;
    let job = eventually("the job is back", Duration::from_secs(30), || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let j = c
                .broker
                .get_job(pb::GetJobRequest { job_id: id })
                .await
                .ok()?
                .into_inner();
            (j.state == pb::JobState::Ready as i32).then_some(j)
        }
    })
    .await;
    assert_eq!(
        job.attempt, 0,
        "the orphaned delivery counted as an attempt"
    );
    // The lease did apply (the worker was seen leasing one job), and holds nothing now.
    let w = listed_worker(&mut c, "test-worker").await;
    assert_eq!((w.leased_total, w.jobs_in_hand), (1, 0), "{w:?}");
    let again = c
        .broker
        .lease(lease("orphan", 1, 30_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].job_id.as_str(), again[0].attempt),
        (id.as_str(), 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_command_starts_a_local_three_node_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // Nine ports (gRPC, HTTP and peer of three nodes) from a base whose neighbours are
    // free. A parallel test may take one of them before `taskraft dev` binds it; the
    // process then exits, and it is started again from another base.
    let mut attempts = 0;
    let (mut guard, base, printed) = 'launch: loop {
        attempts += 1;
        let base = loop {
            let p = free_port();
            if p < 60_000
                && (0..3).all(|n| {
                    (0..3)
                        .all(|k| std::net::TcpListener::bind(("127.0.0.1", p + 10 * n + k)).is_ok())
                })
            {
                break p;
            }
        };
        let child = std::process::Command::new(taskraft_bin())
            .args([
                "dev",
                "--nodes",
                "3",
                "--base-port",
                &base.to_string(),
                "--data-dir",
            ])
            .arg(dir.path().join(format!("attempt-{attempts}")))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut guard = ProcessGuard::new(child);
        // The process prints a line per node, then "cluster of 3 node(s) running".
        let stdout = guard.child().unwrap().stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut printed = Vec::new();
        let started = eventually_ok("taskraft dev to start its nodes", SOON, || {
            printed.extend(rx.try_iter());
            let up = printed
                .iter()
                .any(|l| l.starts_with("cluster of 3 node(s) running"));
            let exited = guard.child().unwrap().try_wait().unwrap();
            std::future::ready(match (up, exited) {
                (true, _) => Ok(true),
                (false, Some(_)) => Ok(false),
                (false, None) => Err(format!("it printed {printed:?}")),
            })
        })
        .await;
        if started {
            break 'launch (guard, base, printed.join("\n"));
        }
        let exited = guard.child().unwrap().try_wait().unwrap();
        assert!(
            attempts < 5,
            "taskraft dev exited {attempts} times: {exited:?}"
        );
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", base + 20).parse().unwrap();
    let c = connect(addr).await;
    let st = eventually("the dev cluster to elect a leader", SOON, || {
        let mut c = c.clone();
        async move {
            let st = c
                .admin
                .get_cluster_status(pb::GetClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (st.leader_id != 0).then_some(st)
        }
    })
    .await;
    assert_eq!(st.nodes.len(), 3);
    c.clone().broker.enqueue(job("dev", "x")).await.unwrap();
    guard.kill();
    for n in 1..=3 {
        assert!(
            printed.contains(&format!("node {n}: grpc 127.0.0.1:{}", base + 10 * (n - 1))),
            "{printed}"
        );
    }
}
