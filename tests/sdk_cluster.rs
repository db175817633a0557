//! SDK workers on a three-node cluster: the leader is stopped while they process, and
//! every job still completes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskraft::{Client, EnqueueOptions, HandlerError, Job, NewJob, Protocol, Worker};
use taskraft_proto::v1 as pb;
use taskraft_tests::*;

/// Stream workers hold a `Work` session on the leader: stopping it ends the sessions
/// (UNAVAILABLE), the workers open new ones on the survivors and settle the jobs in hand
/// through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_during_processing_loses_no_job_stream() {
    leader_failover_during_processing_loses_no_job(Protocol::Stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_during_processing_loses_no_job_poll() {
    leader_failover_during_processing_loses_no_job(Protocol::Poll).await
}

async fn leader_failover_during_processing_loses_no_job(protocol: Protocol) {
    let mut cluster = InProcCluster::start(3, |_| {}).await;
    let leader = cluster.wait_leader().await;
    let addrs: Vec<String> = (1..=3)
        .map(|id| cluster.node(id).grpc_addr.to_string())
        .collect();
    let client = Client::connect(addrs.clone()).await.expect("client");
    let jobs: Vec<NewJob> = (0..300)
        .map(|i| {
            NewJob::new("fo-sdk", format!("job-{i}"))
                .options(EnqueueOptions::new().job_type("slow"))
        })
        .collect();
    let ids: HashSet<String> = client
        .enqueue_batch(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job_id)
        .collect();
    assert_eq!(ids.len(), 300);

    let done: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut stops = Vec::new();
    for _ in 0..2 {
        let done = done.clone();
        let worker = Worker::builder(client.clone())
            .protocol(protocol)
            .queue("fo-sdk")
            .concurrency(8)
            .visibility_timeout(Duration::from_secs(3))
            .handler("slow", move |job: Job| {
                let done = done.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    done.lock().unwrap().insert(job.id().to_string());
                    Ok::<_, HandlerError>(())
                }
            })
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run_until(async move {
            let _ = rx.await;
        }));
        stops.push((tx, handle));
    }
    // Stop the leader once processing is under way.
    eventually("processing to get under way", SOON, || {
        let n = done.lock().unwrap().len();
        std::future::ready((n >= 50).then_some(()))
    })
    .await;
    cluster.stop(leader).await;

    // Every job ends SUCCEEDED (some may run twice if an ack was lost with the leader:
    // at-least-once execution, exactly-once completion).
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let new_leader = cluster.wait_leader_among(&survivors).await;
    let c = cluster.clients(new_leader).await;
    let st = eventually_ok("every job to complete", SOON * 2, || {
        let mut c = c.clone();
        async move {
            let req = pb::GetQueueStatsRequest {
                queue: "fo-sdk".into(),
            };
            match c.admin.get_queue_stats(req).await {
                Ok(r) => match r.into_inner() {
                    st if st.succeeded == 300 => Ok(st),
                    st => Err(format!("not all jobs completed: {st:?}")),
                },
                // Two nodes on a loaded machine may elect once more: a read that finds
                // no leader for a moment is retried like any other.
                Err(e) if e.code() == tonic::Code::Unavailable => Err(format!("no answer: {e}")),
                Err(e) => panic!("queue stats: {e}"),
            }
        }
    })
    .await;
    assert_eq!((st.ready, st.leased, st.scheduled, st.dead), (0, 0, 0, 0));
    assert_eq!(*done.lock().unwrap(), ids, "every job ran");
    for (tx, handle) in stops {
        let _ = tx.send(());
        let _ = tokio::time::timeout(SOON, handle).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_finds_the_leader_and_sends_calls_there() {
    let cluster = InProcCluster::start(3, |_| {}).await;
    let leader = cluster.wait_leader().await;
    // List a follower first: the client should move to the leader after asking it.
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut addrs = vec![cluster.node(follower).grpc_addr.to_string()];
    addrs.extend(
        (1..=3)
            .filter(|i| *i != follower)
            .map(|id| cluster.node(id).grpc_addr.to_string()),
    );
    let client = Client::connect(addrs).await.expect("client");
    for i in 0..20 {
        client
            .enqueue("leader-pick", format!("p{i}"))
            .await
            .unwrap();
    }
    // The leader's own API served all twenty: the RPC histogram counts the calls each
    // node's API answered (a forwarded call is counted by the node that received it).
    let enqueue_calls = |body: &str| -> f64 {
        body.lines()
            .filter(|l| {
                l.starts_with("taskraft_rpc_duration_seconds_count") && l.contains("/Enqueue\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for id in 1..=3 {
        let body = http_get(cluster.node(id).http_addr, "/metrics")
            .await
            .unwrap()
            .1;
        let want = if id == leader { 20.0 } else { 0.0 };
        assert_eq!(
            enqueue_calls(&body),
            want,
            "Enqueue calls on node {id}:\n{body}"
        );
    }
    // Job counters come from the applied log, so every node counts the cluster's jobs.
    for id in 1..=3 {
        eventually(
            &format!("node {id} to count 20 enqueued jobs"),
            SOON,
            || async {
                let body = http_get(cluster.node(id).http_addr, "/metrics").await?.1;
                let counted: f64 = body
                    .lines()
                    .filter(|l| {
                        l.starts_with("taskraft_jobs_enqueued_total") && l.contains("leader-pick")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                (counted == 20.0).then_some(())
            },
        )
        .await;
    }
}
