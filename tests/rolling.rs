//! Rolling restarts: SIGTERM hands leadership off, and restarting every node of a
//! 3-node cluster in turn under steady load fails no call (beyond the SDK's retries of
//! UNAVAILABLE) and loses no job. Real `taskraft serve` processes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskraft::{Client, EnqueueOptions, HandlerError, Job, NewJob, Worker};
use taskraft_tests::*;

/// SIGTERM on the leader: it drains, stops, and asks its most up-to-date follower to
/// campaign; that follower leads as soon as the others' leader lease (8 heartbeats)
/// runs out, instead of after the lease plus a random 4-8 heartbeat election timeout.
/// With a 1 s heartbeat: about 8 s after the old leader's exit, where an election
/// without hand-off takes at least 12 s. (The bound between them leaves 2.5 s for a
/// loaded machine; a shorter heartbeat would leave less.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_leader_hands_leadership_to_an_up_to_date_follower() {
    let mut cluster = ProcessCluster::spawn(3, &["--heartbeat", "1s"]).await;
    for id in 1..=3 {
        cluster.node(id).wait_ready().await;
    }
    let leader = cluster.wait_leader().await;
    let mut c = cluster.node(leader).clients().await;
    for i in 0..20 {
        c.broker
            .enqueue(job("handoff", &format!("job {i}")))
            .await
            .expect("enqueue");
    }
    drop(c);
    let status = tokio::task::block_in_place(|| cluster.node(leader).terminate());
    let stopped = Instant::now();
    assert!(status.success(), "leader exited with {status}");
    let log = cluster.node(leader).log_tail();
    let successor: u64 = log
        .lines()
        .find(|l| l.contains("handed leadership off"))
        .and_then(|l| l.split("successor=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no hand-off in the leader's log:\n{log}"));
    let rest: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_leader_among(&rest).await;
    let took = stopped.elapsed();
    assert_eq!(
        new_leader, successor,
        "the chosen successor did not take over"
    );
    assert!(
        took < Duration::from_millis(10_500),
        "new leader after {took:?}: no faster than an election without hand-off"
    );
    // Nothing acknowledged was lost.
    let mut c = cluster.node(new_leader).clients().await;
    assert_eq!(stats(&mut c, "handoff").await.ready, 20);
}

/// Each node of a 3-node cluster is stopped with SIGTERM and started again, one after
/// the other (the leader too), while a producer enqueues and a worker acks. No call
/// fails through the SDK's retries, and every enqueued job is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load_loses_no_job_and_fails_no_call() {
    let mut cluster = ProcessCluster::spawn(3, &[]).await;
    for id in 1..=3 {
        cluster.node(id).wait_ready().await;
    }
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    let client = Client::builder()
        .addrs(addrs.clone())
        .retry_for(Duration::from_secs(30))
        .connect()
        .await
        .expect("client");

    let stop = Arc::new(AtomicBool::new(false));
    let enqueued = Arc::new(AtomicUsize::new(0));
    // Four producers, each enqueueing one job at a time with its own idempotency keys
    // (so that a retried enqueue cannot store a job twice).
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (client, stop, enqueued) = (client.clone(), stop.clone(), enqueued.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let job = NewJob::new("rolling", format!("payload {p}-{i}")).options(
                        EnqueueOptions::new()
                            .job_type("roll")
                            .idempotency_key(format!("k{p}-{i}")),
                    );
                    match client.enqueue_job(job).await {
                        Ok(e) => {
                            ids.push(e.job_id);
                            enqueued.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => return Err(format!("enqueue {p}-{i} failed: {e}")),
                    }
                    i += 1;
                }
                Ok(ids)
            })
        })
        .collect();
    let done: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (worker_stop, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let done = done.clone();
        let worker = Worker::builder(client.clone())
            .queue("rolling")
            .concurrency(4)
            .visibility_timeout(Duration::from_secs(5))
            .handler("roll", move |job: Job| {
                let done = done.clone();
                async move {
                    done.lock().unwrap().insert(job.id().to_string());
                    Ok::<_, HandlerError>(())
                }
            })
            .build()
            .expect("worker");
        tokio::spawn(worker.run_until(async move {
            let _ = worker_stopped.await;
        }))
    };

    // Some load: this many more jobs enqueued, however slowly the machine goes.
    let more_load = |n: usize| {
        let enqueued = enqueued.clone();
        let want = enqueued.load(Ordering::SeqCst) + n;
        move || {
            let now = enqueued.load(Ordering::SeqCst);
            std::future::ready(if now >= want {
                Ok(())
            } else {
                Err(format!("{now} of {want} enqueued"))
            })
        }
    };
    for id in 1..=3u64 {
        eventually_ok("some load before the restart", SOON, more_load(50)).await;
        let status = tokio::task::block_in_place(|| cluster.node(id).terminate());
        assert!(status.success(), "node {id} exited with {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.node(id).restart().await;
        cluster.node(id).wait_ready().await;
        // Caught up before the next node goes: its applied index reaches the commit
        // index of the moment.
        let others: Vec<u64> = (1..=3).filter(|o| *o != id).collect();
        let target = cluster
            .status(others[0])
            .await
            .map_or(0, |s| s.commit_index);
        eventually(
            &format!("node {id} to catch up to index {target} after its restart"),
            SOON,
            || async {
                let s = cluster.status(id).await?;
                (s.applied_index >= target).then_some(())
            },
        )
        .await;
    }
    eventually_ok("some load after the last restart", SOON, more_load(50)).await;
    stop.store(true, Ordering::SeqCst);
    let mut ids = Vec::new();
    for p in producers {
        ids.extend(p.await.unwrap().unwrap_or_else(|e| panic!("{e}")));
    }
    assert!(ids.len() > 100, "only {} jobs enqueued", ids.len());
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an idempotency key gave two ids");

    // Every enqueued job processed; a worker that stopped, or jobs still missing after
    // SOON, fail with what is known.
    let missing = || {
        let d = done.lock().unwrap();
        ids.iter().filter(|id| !d.contains(*id)).count()
    };
    // Ok(true): all processed; Ok(false): the worker stopped; Err: still missing.
    let processed = poll_until(SOON, || {
        let (missing, stopped) = (missing(), worker.is_finished());
        std::future::ready(match (missing, stopped) {
            (0, _) => Ok(true),
            (_, true) => Ok(false),
            (n, false) => Err(n),
        })
    })
    .await;
    match processed {
        Ok(true) => {}
        Ok(false) => {
            let r = worker.await;
            panic!(
                "the worker stopped with {} jobs unprocessed: {r:?}",
                missing()
            );
        }
        Err(n) => {
            let s = client.queue_stats("rolling").await;
            let logs: Vec<String> = cluster.nodes.iter().map(|n| n.log_tail()).collect();
            panic!(
                "{n} of {} jobs unprocessed after {SOON:?}; stats {s:?}; logs:\n{}",
                ids.len(),
                logs.join("\n-----\n")
            );
        }
    }
    let _ = worker_stop.send(());
    worker.await.unwrap().expect("worker ran");
    let s = client.queue_stats("rolling").await.expect("stats");
    assert_eq!(s.succeeded, ids.len() as u64, "{s:?}");
    assert_eq!(s.ready + s.leased + s.scheduled + s.dead, 0, "{s:?}");
}
