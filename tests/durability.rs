//! SIGKILL a real `taskraft serve` process and check that every acknowledged call
//! survived: counts, payloads and live leases exactly as before.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use taskraft_proto::v1 as pb;
use taskraft_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_keeps_counts_payloads_and_live_leases() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let mut node = ProcessNode::spawn(&data, &["--snapshot-every", "50"]).await;
    node.wait_ready().await;
    let mut c = node.clients().await;

    let mut payloads = BTreeMap::new();
    for i in 0..200 {
        let mut j = job("dur", &format!("payload-{i}"));
        j.priority = i % 3;
        if i % 10 == 0 {
            j.delay_ms = 3_600_000;
        }
        let id = c.broker.enqueue(j).await.unwrap().into_inner().job_id;
        payloads.insert(id, format!("payload-{i}"));
    }
    let leased = c
        .broker
        .lease(lease("dur", 60, 600_000, 0))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(leased.len(), 60);
    for l in &leased[..20] {
        c.broker
            .ack(pb::AckRequest {
                job_id: l.job_id.clone(),
                lease_id: l.lease_id.clone(),
                result: "r".into(),
            })
            .await
            .unwrap();
    }
    for l in &leased[20..25] {
        c.broker
            .nack(pb::NackRequest {
                job_id: l.job_id.clone(),
                lease_id: l.lease_id.clone(),
                error: "later".into(),
                retry_after_ms: 3_600_000,
                dead_letter: false,
            })
            .await
            .unwrap();
    }
    for l in &leased[25..30] {
        c.broker
            .nack(pb::NackRequest {
                job_id: l.job_id.clone(),
                lease_id: l.lease_id.clone(),
                error: "fatal".into(),
                retry_after_ms: 0,
                dead_letter: true,
            })
            .await
            .unwrap();
    }
    c.admin
        .pause_queue(pb::PauseQueueRequest {
            queue: "paused-q".into(),
        })
        .await
        .unwrap();
    let before = stats(&mut c, "dur").await;
    assert_eq!((before.leased, before.succeeded, before.dead), (30, 20, 5));
    assert_eq!(before.scheduled, 20 + 5);

    node.kill9();
    node.restart().await;
    node.wait_ready().await;
    let mut c = node.clients().await;

    assert_eq!(stats(&mut c, "dur").await, before, "counts after SIGKILL");
    assert!(stats(&mut c, "paused-q").await.paused, "pause survives");
    for (id, payload) in &payloads {
        let j = get_job(&mut c, id).await;
        assert_eq!(&j.payload[..], payload.as_bytes(), "payload of {id}");
    }
    // Live leases are still held, with the same lease ids: their holders can ack them.
    for l in &leased[30..] {
        let j = get_job(&mut c, &l.job_id).await;
        assert_eq!(j.state, pb::JobState::Leased as i32);
        assert_eq!(j.lease_deadline_ms, l.lease_deadline_ms);
        c.broker
            .ack(pb::AckRequest {
                job_id: l.job_id.clone(),
                lease_id: l.lease_id.clone(),
                result: Default::default(),
            })
            .await
            .unwrap();
    }
    assert_eq!(stats(&mut c, "dur").await.succeeded, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_concurrent_load_loses_no_acknowledged_enqueue() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let mut node = ProcessNode::spawn(&data, &[]).await;
    node.wait_ready().await;
    let c = node.clients().await;

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut c = c.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let payload = format!("w{w}-{i}");
                match c.broker.enqueue(job("load", &payload)).await {
                    Ok(r) => acked.lock().unwrap().push((r.into_inner().job_id, payload)),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let load build up, then pull the plug mid-flight.
    eventually("load to get going", SOON, || {
        let n = acked.lock().unwrap().len();
        std::future::ready((n >= 500).then_some(()))
    })
    .await;
    node.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();

    node.restart().await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    let st = stats(&mut c, "load").await;
    assert!(
        st.ready >= acked.len() as u64,
        "{} ready < {} acknowledged",
        st.ready,
        acked.len()
    );
    for (id, payload) in &acked {
        let j = get_job(&mut c, id).await;
        assert_eq!(&j.payload[..], payload.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = ProcessNode::spawn(&dir.path().join("n"), &[]).await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    c.broker.enqueue(job("t", "x")).await.unwrap();
    let status = node.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        node.log_tail()
    );
}

/// The log kept behind a snapshot is bounded in bytes (`--keep-log-mb`), not only in
/// entries (`--keep-logs`): big batches are purged down to the byte bound, and a node
/// SIGKILLed after such purges restarts with every job and payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_behind_a_snapshot_is_bounded_in_bytes_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let flags = [
        "--snapshot-every",
        "5",
        "--keep-logs",
        "1000",
        "--keep-log-mb",
        "1",
    ];
    let mut node = ProcessNode::spawn(&data, &flags).await;
    node.wait_ready().await;
    let mut c = node.clients().await;

    // 30 sequential calls of 20 jobs x 30 KiB: 30 entries of about 600 KiB, where
    // 1000 kept entries would keep them all.
    let mut payloads = BTreeMap::new();
    for b in 0..30 {
        let jobs: Vec<_> = (0..20)
            .map(|i| {
                job(
                    "big-log",
                    &format!("{b:02}-{i:02}-{}", "x".repeat(30 << 10)),
                )
            })
            .collect();
        let ids = c
            .broker
            .enqueue_batch(pb::EnqueueBatchRequest { jobs: jobs.clone() })
            .await
            .unwrap()
            .into_inner()
            .results;
        for (r, j) in ids.into_iter().zip(jobs) {
            payloads.insert(r.job_id, j.payload);
        }
    }
    let gauge = |body: &str, name: &str| -> Option<u64> {
        body.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    // At most one 600 KiB entry stays behind the last snapshot (1 MiB), plus the
    // entries after it (under 5).
    let http = node.http;
    let (snapshot, entries) = eventually(
        "a snapshot past the burst and the log purged to 1 MiB behind it",
        SOON,
        || async move {
            let body = http_get(http, "/metrics").await?.1;
            let snapshot = gauge(&body, "taskraft_raft_snapshot_index")?;
            let entries = gauge(&body, "taskraft_raft_log_entries")?;
            (snapshot >= 25 && entries <= 8).then_some((snapshot, entries))
        },
    )
    .await;
    eprintln!("snapshot at {snapshot}, {entries} log entries kept");

    node.kill9();
    node.restart().await;
    node.wait_ready().await;
    let mut c = node.clients().await;
    assert_eq!(stats(&mut c, "big-log").await.ready, 600);
    for (id, payload) in &payloads {
        assert_eq!(&get_job(&mut c, id).await.payload, payload, "job {id}");
    }
}
